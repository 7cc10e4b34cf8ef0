//! Command lines refused before anything is served: the gateway's configuration errors, each
//! a one-line reason; a handed-over socket that is not there; and the load tool's arguments.

use std::process::Command;

use crate::support::EVENTSYS;

fn refused(subcommand: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(EVENTSYS)
        .arg(subcommand)
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("BACKENDS")
        .env_remove("PORT")
        .env_remove("LISTEN_FDS")
        .envs(env.iter().copied())
        .output()
        .expect("run eventsys");
    assert!(!out.status.success(), "{args:?} must be refused");
    String::from_utf8_lossy(&out.stderr).trim().to_owned()
}

#[test]
fn bad_gateway_configuration_exits_non_zero_with_a_one_line_reason() {
    let gateway = |args: &[&str]| refused("gateway", args, &[]);
    assert_eq!(
        gateway(&["--port", "0", "--backends", "no-port"]),
        "gateway: invalid --backends: \"no-port\" is not host:port"
    );
    assert_eq!(
        gateway(&["--port", "0", "--backends", ""]),
        "gateway: invalid --backends: no backend given"
    );
    assert_eq!(
        gateway(&["--port", "0", "--health-interval", "0s"]),
        "gateway: invalid --health-interval: must be more than zero"
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("address").port().to_string();
    let reason = gateway(&["--port", &port]);
    let last = reason.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(&format!("gateway: cannot listen on 127.0.0.1:{port}")),
        "{reason}"
    );
}

/// `.env` is read from the working directory only, never from a folder above it; what it sets
/// is named on stderr, never its values.
#[test]
fn dot_env_is_read_from_the_working_directory_only_and_named_not_shown() {
    let above = tempfile::tempdir().unwrap();
    let here = above.path().join("here");
    std::fs::create_dir(&here).unwrap();
    let gateway = |args: &[&str]| {
        let out = Command::new(EVENTSYS)
            .current_dir(&here)
            .arg("gateway")
            .args(["--port", "0"])
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("BACKENDS")
            .env_remove("PORT")
            .env_remove("LISTEN_FDS")
            .env_remove("PASSWORDISH")
            .output()
            .expect("run eventsys");
        assert!(!out.status.success(), "{args:?} must be refused");
        String::from_utf8_lossy(&out.stderr).trim().to_owned()
    };
    // The folder above's BACKENDS would be refused first; its own flag is refused instead.
    std::fs::write(above.path().join(".env"), "BACKENDS=from-above\n").unwrap();
    let said = gateway(&["--health-interval", "0s"]);
    assert_eq!(
        said,
        "gateway: invalid --health-interval: must be more than zero"
    );
    // The working directory's is read, and what it set is named.
    std::fs::write(
        here.join(".env"),
        "BACKENDS=from-here\nPASSWORDISH=hunter2\n",
    )
    .unwrap();
    let said = gateway(&[]);
    assert!(
        said.contains("read from .env in the working directory: BACKENDS, PASSWORDISH"),
        "{said}"
    );
    assert!(
        said.ends_with("gateway: invalid --backends: \"from-here\" is not host:port"),
        "{said}"
    );
    assert!(!said.contains("hunter2"), "{said}");
}

#[test]
fn a_backend_refuses_to_keep_idempotency_keys_for_no_time() {
    let reason = refused("backend", &["--port", "0", "--idempotency-ttl", "0s"], &[]);
    assert!(
        reason.contains("invalid value '0s' for '--idempotency-ttl")
            && reason.contains("must be more than zero"),
        "{reason}"
    );
}

#[test]
fn a_socket_promised_but_not_handed_over_is_a_one_line_reason() {
    // `LISTEN_FDS=1` with nothing at fd 3: neither server may fall back to binding a port the
    // supervisor did not give it.
    for (subcommand, name) in [("gateway", "gateway"), ("backend", "eventsvc")] {
        let reason = refused(subcommand, &[], &[("LISTEN_FDS", "1")]);
        assert!(
            reason.starts_with(&format!(
                "{name}: cannot use the listening socket handed over:"
            )) && !reason.contains('\n'),
            "{reason}"
        );
    }
}

#[test]
fn the_load_tool_fails_against_a_gateway_that_is_not_there() {
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = Command::new(EVENTSYS)
        .args(["bench", "--gateway", &format!("http://{nowhere}")])
        .args(["closed", "--endpoint", "list", "--requests", "5"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("5 × transport: connect"), "{stdout}");
}

#[test]
fn the_load_tool_refuses_conflicting_limits() {
    let out = Command::new(EVENTSYS)
        .args(["bench", "closed", "--duration", "1s", "--requests", "5"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// Issue 12: a server started under a low soft open-file limit raises it to the hard limit.
#[tokio::test]
async fn servers_raise_the_open_file_limit_to_the_hard_limit() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut child = tokio::process::Command::new("sh")
        .args([
            "-c",
            "ulimit -Sn 256 && exec \"$0\" gateway --port 0 --backends 127.0.0.1:9",
        ])
        .arg(EVENTSYS)
        .env("RUST_LOG", "info")
        .env_remove("LISTEN_FDS")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let raised = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("open-file limit raised") {
                return line;
            }
        }
        panic!("the gateway ended without raising its limit");
    })
    .await
    .expect("the gateway starts");
    assert!(raised.contains("from=256"), "{raised}");
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id().unwrap())).unwrap();
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let numbers: Vec<&str> = open_files.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers[0], numbers[1], "soft = hard: {open_files}");
    child.start_kill().unwrap();
    child.wait().await.unwrap();
}
