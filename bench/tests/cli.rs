//! The standalone `bench` binary's argument handling.

use std::process::Command;

#[test]
fn refuses_a_gateway_that_is_not_there_with_a_non_zero_exit() {
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args([
            "--gateway",
            &format!("http://{nowhere}"),
            "closed",
            "--endpoint",
            "list",
            "--requests",
            "5",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("5 × transport: connect"), "{stdout}");
}

#[test]
fn conflicting_limits_are_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["closed", "--duration", "1s", "--requests", "5"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
