//! PostgreSQL (Debian's): a throw-away cluster per server, `initdb` into a temporary folder and
//! `postgres` on a free port with its socket in that folder. PostgreSQL refuses to run as root,
//! so when the tests are root (CI) the server runs as the `postgres` user. `kill -9` and a
//! restart on the same data are there for durability and outage tests.

use std::{
    net::{IpAddr, Ipv4Addr},
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::Duration,
};

use crate::{log::Tail, watchdog::Watchdog};

/// How long a cluster may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Says SKIPPED where it is seen (stderr directly: the test harness captures `eprintln!`).
fn skipped(what: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: {what} (no PostgreSQL here: {why}; Debian's `postgresql` package provides it)"
    );
}

/// The folder of `initdb` and `postgres`: `PG_BINDIR` when set, else the newest
/// `/usr/lib/postgresql/N/bin` (Debian keeps them off the PATH).
fn bin_dir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("PG_BINDIR") {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// The user and group the server runs as: the `postgres` user's when this process is root.
fn server_user() -> Option<(u32, u32)> {
    let id = |flag: &str, user: Option<&str>| -> Option<u32> {
        let out = Command::new("id").arg(flag).args(user).output().ok()?;
        String::from_utf8(out.stdout).ok()?.trim().parse().ok()
    };
    (id("-u", None)? == 0)
        .then(|| Some((id("-u", Some("postgres"))?, id("-g", Some("postgres"))?)))?
}

/// A free port now (PostgreSQL cannot be given port 0); another process could take it before the
/// server binds, which start-up then reports.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// How a cluster is set up beyond `initdb`'s defaults.
pub struct Setup {
    /// The address it listens on (and its URIs name).
    pub host: IpAddr,
    /// A network namespace to run in (`ip netns exec`), for tests across hosts.
    pub netns: Option<String>,
    /// `postgresql.conf` settings, `name=value`, given on its command line (restarts keep them).
    pub settings: Vec<String>,
    /// `pg_hba.conf` in place of initdb's (which trusts loopback only).
    pub hba: Option<String>,
    /// Files copied into the data folder, readable by the server's user only (a TLS key):
    /// (name there, source).
    pub files: Vec<(&'static str, PathBuf)>,
}

impl Default for Setup {
    fn default() -> Setup {
        Setup {
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            netns: None,
            settings: Vec::new(),
            hba: None,
            files: Vec::new(),
        }
    }
}

/// A PostgreSQL cluster of this test's own; killed and its folder removed when dropped.
pub struct PostgresServer {
    host: IpAddr,
    port: u16,
    netns: Option<String>,
    settings: Vec<String>,
    dir: PathBuf,
    bin: PathBuf,
    user: Option<(u32, u32)>,
    process: Option<Child>,
    /// The server's last log lines, for a failure message.
    logs: Tail,
    watchdog: Watchdog,
}

impl PostgresServer {
    /// Creates and starts a cluster, or says SKIPPED (naming `what`) and returns `None` when
    /// PostgreSQL is not installed here.
    pub fn start(what: &str) -> Option<PostgresServer> {
        PostgresServer::start_with(what, Setup::default())
    }

    /// `start`, set up as `setup` says.
    pub fn start_with(what: &str, setup: Setup) -> Option<PostgresServer> {
        let Setup {
            host,
            netns,
            settings,
            hba,
            files,
        } = setup;
        let Some(bin) = bin_dir() else {
            skipped(what, "no /usr/lib/postgresql/*/bin");
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("postgres-")
            .tempdir()
            .expect("temporary folder")
            .keep();
        let watchdog = Watchdog::new(&dir).expect("start the watchdog shell");
        let user = server_user();
        if user.is_some() {
            let owned = Command::new("chown")
                .arg("postgres:postgres")
                .arg(&dir)
                .status();
            assert!(owned.is_ok_and(|s| s.success()), "chown {}", dir.display());
        }
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some((uid, gid)) = user {
            initdb.uid(uid).gid(gid);
        }
        let out = initdb.output().expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let data = dir.join("data");
        if let Some(hba) = hba {
            std::fs::write(data.join("pg_hba.conf"), hba).expect("write pg_hba.conf");
        }
        for (name, source) in files {
            let target = data.join(name);
            std::fs::copy(&source, &target).expect("copy into the data folder");
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600))
                .expect("chmod 600");
            if let Some((uid, gid)) = user {
                std::os::unix::fs::chown(&target, Some(uid), Some(gid)).expect("chown");
            }
        }
        let mut server = PostgresServer {
            host,
            port: free_port(),
            netns,
            settings,
            dir,
            bin,
            user,
            process: None,
            logs: Tail::default(),
            watchdog,
        };
        server.spawn();
        Some(server)
    }

    /// The cluster every test of this process shares (each in a database of its own), started
    /// on first use; `None` after saying SKIPPED when PostgreSQL is not installed.
    pub fn shared(what: &str) -> Option<&'static PostgresServer> {
        static SHARED: OnceLock<Option<PostgresServer>> = OnceLock::new();
        let shared = SHARED
            .get_or_init(|| PostgresServer::start("PostgreSQL tests"))
            .as_ref();
        if shared.is_none() {
            skipped(what, "see above");
        }
        shared
    }

    /// Creates database `name` (owned by `postgres`) and returns its URI.
    pub fn database(&self, name: &str) -> String {
        self.sql("postgres", &format!("CREATE DATABASE \"{name}\""));
        self.uri(name)
    }

    /// Runs `sql` in `database` as `postgres` (psql), and returns what it printed.
    pub fn sql(&self, database: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-h", &self.host.to_string(), "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", database, "-At"])
            .args(["-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The URI of `database` on this cluster.
    pub fn uri(&self, database: &str) -> String {
        format!("postgres://postgres@{}/{database}", self.address())
    }

    /// `host:port`.
    pub fn address(&self) -> String {
        std::net::SocketAddr::new(self.host, self.port).to_string()
    }

    /// `kill -9` of the postmaster, as on a crash (its backends exit when they notice).
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    /// Starts the server again on the same port and data, and waits until it accepts
    /// connections (after recovering from its write-ahead log).
    pub fn restart(&mut self) {
        self.kill();
        // The killed postmaster's backends may hold the data folder for a moment.
        let pid_file = self.dir.join("data/postmaster.pid");
        let _ = std::fs::remove_file(&pid_file);
        self.spawn();
    }

    fn spawn(&mut self) {
        let binary = self.bin.join("postgres");
        let mut postgres = match &self.netns {
            // `ip netns exec` then `setpriv` exec in turn, so the child is the postmaster.
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns]);
                if let Some((uid, gid)) = self.user {
                    command
                        .arg("setpriv")
                        .args(["--reuid", &uid.to_string(), "--regid", &gid.to_string()])
                        .arg("--clear-groups");
                }
                command.arg(&binary);
                command
            }
            None => {
                let mut command = Command::new(&binary);
                if let Some((uid, gid)) = self.user {
                    command.uid(uid).gid(gid);
                }
                command
            }
        };
        postgres
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-p", &self.port.to_string()])
            .arg("-k")
            .arg(&self.dir)
            .args(["-c", &format!("listen_addresses={}", self.host)])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for setting in &self.settings {
            postgres.args(["-c", setting]);
        }
        let mut process = postgres.spawn().expect("start postgres");
        self.watchdog.watch(process.id());
        let stderr = process.stderr.take().expect("piped stderr");
        let accepting = self.logs.follow(stderr, |line| {
            line.contains("ready to accept connections").then_some(())
        });
        self.process = Some(process);
        if accepting.recv_timeout(START_TIMEOUT).is_err() {
            let status = self
                .process
                .as_mut()
                .and_then(|p| p.try_wait().ok().flatten());
            self.kill();
            let logs = self.logs.text();
            panic!("postgres never accepted connections (exit: {status:?}); its log:\n{logs}");
        }
    }

    /// The server's last log lines.
    pub fn log(&self) -> String {
        self.logs.text()
    }

    /// The cluster's folder (its data is `data/` in it).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_starts_serves_survives_kill_9_and_is_removed() {
        let Some(mut server) = PostgresServer::start("the PostgreSQL helper") else {
            return;
        };
        let psql = |server: &PostgresServer, sql: &str| server.sql("t", sql);
        let uri = server.database("t");
        assert!(uri.ends_with("/t"), "{uri}");
        psql(
            &server,
            "CREATE TABLE kept (n int); INSERT INTO kept VALUES (7)",
        );
        server.kill();
        server.restart();
        assert_eq!(
            psql(&server, "SELECT n FROM kept"),
            "7",
            "committed, so kept"
        );
        let dir = server.dir().to_owned();
        drop(server);
        // The watchdog removes the folder once the server is gone.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while dir.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "{} left",
                dir.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
