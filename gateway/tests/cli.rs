//! The standalone `gateway` binary's configuration errors, each a one-line reason.

use std::process::Command;

fn refused(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("BACKENDS")
        .env_remove("PORT")
        .output()
        .expect("run gateway");
    assert!(!out.status.success(), "{args:?} must be refused");
    String::from_utf8_lossy(&out.stderr).trim().to_owned()
}

#[test]
fn bad_configuration_exits_non_zero_with_a_one_line_reason() {
    assert_eq!(
        refused(&["--port", "0", "--backends", "no-port"]),
        "gateway: invalid --backends: \"no-port\" is not host:port"
    );
    assert_eq!(
        refused(&["--port", "0", "--backends", ""]),
        "gateway: invalid --backends: no backend given"
    );
    assert_eq!(
        refused(&["--port", "0", "--health-interval", "0s"]),
        "gateway: invalid --health-interval: must be more than zero"
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("address").port().to_string();
    let reason = refused(&["--port", &port]);
    let last = reason.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(&format!("gateway: cannot listen on 127.0.0.1:{port}")),
        "{reason}"
    );
}
