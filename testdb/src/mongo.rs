//! SecantusDB (PyPI `secantusdb`): a MongoDB wire-protocol server over WiredTiger that answers
//! as a single-node replica set named `secantus` (transactions, change streams). Started with
//! `--sync-on-commit` unless a test says otherwise: without it the server puts a commit on disk
//! only when the write asks (`j: true`), as a mongod with the journal default off.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::Duration,
};

use crate::{log::Tail, watchdog::Watchdog};

/// The server's program: `SECANTUSD` when set, else `secantusd-py` on the PATH.
fn program() -> String {
    std::env::var("SECANTUSD").unwrap_or_else(|_| "secantusd-py".to_owned())
}

/// How long a (Python) server may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Says SKIPPED where it is seen: stderr directly, as the test harness captures `eprintln!`.
fn skipped(what: &str) {
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: {what} (no MongoDB here: install SecantusDB with `pip install secantusdb`, \
         or set EVENTSVC_TEST_MONGO_URI to a replica set)"
    );
}

/// A SecantusDB server of this test's own, on a free port over a temporary folder; killed and
/// its folder removed when dropped.
pub struct MongoServer {
    port: u16,
    dir: PathBuf,
    process: Option<Child>,
    /// The server's last log lines, for a failure message.
    logs: Tail,
    watchdog: Watchdog,
    /// `--sync-on-commit`: every commit on disk, whatever a write asked for.
    sync_on_commit: bool,
}

impl MongoServer {
    /// Starts a server, or says SKIPPED (naming `what`) and returns `None` when SecantusDB is
    /// not installed here.
    pub fn start(what: &str) -> Option<MongoServer> {
        Self::start_with(what, true)
    }

    /// As `start`, without `--sync-on-commit`: like a mongod whose journal default is off, the
    /// server puts a commit on disk only when the write asks for it (`j: true`), so a `kill -9`
    /// loses what was acknowledged otherwise. Proves a client asks for what it needs.
    pub fn start_syncing_only_when_asked(what: &str) -> Option<MongoServer> {
        Self::start_with(what, false)
    }

    fn start_with(what: &str, sync_on_commit: bool) -> Option<MongoServer> {
        let dir = tempfile::Builder::new()
            .prefix("secantus-")
            .tempdir()
            .expect("temporary folder")
            .keep();
        let watchdog = Watchdog::new(&dir).expect("start the watchdog shell");
        let mut server = MongoServer {
            port: 0,
            dir,
            process: None,
            logs: Tail::default(),
            watchdog,
            sync_on_commit,
        };
        match server.spawn() {
            Ok(()) => Some(server),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                skipped(what);
                None
            }
            Err(err) => panic!("cannot start {}: {err}", program()),
        }
    }

    /// The server every test of this process shares (each in a database of its own), started
    /// on first use; `None` after saying SKIPPED when SecantusDB is not installed.
    pub fn shared(what: &str) -> Option<&'static MongoServer> {
        static SHARED: OnceLock<Option<MongoServer>> = OnceLock::new();
        let shared = SHARED
            .get_or_init(|| MongoServer::start("MongoDB tests"))
            .as_ref();
        if shared.is_none() {
            skipped(what);
        }
        shared
    }

    /// The URI of `database` on this server.
    pub fn uri(&self, database: &str) -> String {
        format!(
            "mongodb://127.0.0.1:{}/{database}?replicaSet=secantus",
            self.port
        )
    }

    /// `kill -9`: the server stops between two instructions, as on a crash or power cut (with
    /// `--sync-on-commit`, what it acknowledged is on disk).
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    /// Starts the server again on the same port and data, and waits until it listens.
    pub fn restart(&mut self) {
        self.kill();
        if let Err(err) = self.spawn() {
            panic!("cannot restart {}: {err}", program());
        }
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        let mut process = Command::new(program())
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .arg("--storage-path")
            .arg(self.dir.join("data"))
            .args(self.sync_on_commit.then_some("--sync-on-commit"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        self.watchdog.watch(process.id());
        let stderr = process.stderr.take().expect("piped stderr");
        let listening = self.logs.follow(stderr, listening_port);
        self.process = Some(process);
        match listening.recv_timeout(START_TIMEOUT) {
            Ok(port) => {
                self.port = port;
                Ok(())
            }
            Err(_) => {
                let status = self
                    .process
                    .as_mut()
                    .and_then(|p| p.try_wait().ok().flatten());
                self.kill();
                let logs = self.logs.text();
                panic!(
                    "{} never listened (exit: {status:?}); its log:\n{logs}",
                    program()
                )
            }
        }
    }
}

impl Drop for MongoServer {
    fn drop(&mut self) {
        self.kill();
        // The watchdog removes the folder once its pipe closes, right after this.
    }
}

/// `secantus listening on 127.0.0.1:PORT`, its readiness line.
fn listening_port(line: &str) -> Option<u16> {
    let (_, address) = line.split_once("listening on ")?;
    address.trim().rsplit_once(':')?.1.parse().ok()
}

/// A MongoDB URI for `database`, for a test named by `what`: on the replica set
/// `EVENTSVC_TEST_MONGO_URI` names when set (a real MongoDB), else on the shared SecantusDB;
/// `None` after saying SKIPPED when there is neither.
pub fn mongo_uri(what: &str, database: &str) -> Option<String> {
    match std::env::var("EVENTSVC_TEST_MONGO_URI") {
        Ok(uri) => Some(with_database(&uri, database)),
        Err(_) => MongoServer::shared(what).map(|server| server.uri(database)),
    }
}

/// `uri` with its database (the path after the hosts) set to `database`.
fn with_database(uri: &str, database: &str) -> String {
    let (scheme, rest) = uri.split_once("://").unwrap_or(("mongodb", uri));
    let hosts_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (hosts, tail) = rest.split_at(hosts_end);
    let options = tail.split_once('?').map_or("", |(_, options)| options);
    let options = if options.is_empty() {
        String::new()
    } else {
        format!("?{options}")
    };
    format!("{scheme}://{hosts}/{database}{options}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uri_gets_the_database_whatever_it_named() {
        for (uri, expected) in [
            ("mongodb://h:1", "mongodb://h:1/db"),
            ("mongodb://h:1/", "mongodb://h:1/db"),
            ("mongodb://h:1/other", "mongodb://h:1/db"),
            (
                "mongodb://a:1,b:2/?replicaSet=rs0",
                "mongodb://a:1,b:2/db?replicaSet=rs0",
            ),
            (
                "mongodb+srv://u:p@c.example/x?w=majority",
                "mongodb+srv://u:p@c.example/db?w=majority",
            ),
        ] {
            assert_eq!(with_database(uri, "db"), expected, "{uri}");
        }
    }

    #[test]
    fn the_listening_line_gives_the_port() {
        assert_eq!(
            listening_port(
                "2026-12-06 INFO secantus.server: secantus listening on 127.0.0.1:32787"
            ),
            Some(32787)
        );
        assert_eq!(listening_port("other"), None);
    }
}
