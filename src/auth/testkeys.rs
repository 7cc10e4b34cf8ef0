//! Test key pairs made by the openssl CLI, so no key is ever committed.

use std::{path::Path, process::Command};

/// Generates a key pair (`genpkey` arguments) under `dir`: (private PEM bytes, public PEM path).
pub(super) fn pair(dir: &Path, name: &str, genpkey: &[&str]) -> (Vec<u8>, String) {
    let private = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    let run = |args: Vec<&str>| {
        let status = Command::new("openssl")
            .args(&args)
            .status()
            .expect("openssl CLI");
        assert!(status.success(), "openssl {args:?}");
    };
    let mut generate = vec!["genpkey"];
    generate.extend_from_slice(genpkey);
    generate.extend(["-out", private.to_str().unwrap()]);
    run(generate);
    run(vec![
        "pkey",
        "-in",
        private.to_str().unwrap(),
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    (
        std::fs::read(private).unwrap(),
        public.display().to_string(),
    )
}

/// An EC P-256 pair.
pub(super) const EC_P256: &[&str] = &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"];
