//! The deployment files, made correct by validation (no container runtime or cluster here):
//! the Dockerfile under `hadolint`, the compose files under the compose-spec schema, every
//! Kubernetes manifest and the kustomization's whole output (secrets generated, the HTTPS
//! component applied) under `kubernetes-validate` for a current Kubernetes, and every flag and
//! variable the files give the servers one the servers take.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::support::EVENTSYS;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Runs a validator; its output, or a failure naming it (`.ci/run` installs them all).
fn validate(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (.ci/run installs it): {e}"));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{program} {args:?}:\n{said}");
    said
}

#[test]
fn the_dockerfile_passes_hadolint() {
    if !testdb::needs("the_dockerfile_passes_hadolint", &[testdb::Tool::Hadolint]) {
        return;
    }
    let dockerfile = deploy().join("Dockerfile");
    validate("hadolint", &[dockerfile.to_str().unwrap()]);
}

/// The compose files: MongoDB's and PostgreSQL's.
const COMPOSE: [&str; 2] = ["compose.yaml", "compose.postgres.yaml"];

#[test]
fn the_compose_files_match_the_compose_spec() {
    if !testdb::needs(
        "the_compose_files_match_the_compose_spec",
        &[testdb::Tool::CheckJsonschema],
    ) {
        return;
    }
    for file in COMPOSE {
        let compose = deploy().join(file);
        validate(
            "check-jsonschema",
            &[
                "--builtin-schema",
                "vendor.compose-spec",
                compose.to_str().unwrap(),
            ],
        );
    }
}

const MANIFESTS: [&str; 4] = [
    "namespace.yaml",
    "backend.yaml",
    "gateway.yaml",
    "policy.yaml",
];

#[test]
fn the_kubernetes_manifests_validate() {
    if !testdb::needs(
        "the_kubernetes_manifests_validate",
        &[testdb::Tool::KubernetesValidate],
    ) {
        return;
    }
    let k8s = deploy().join("k8s");
    let files: Vec<String> = MANIFESTS
        .iter()
        .map(|f| k8s.join(f).display().to_string())
        .collect();
    let mut args = vec!["--strict"];
    args.extend(files.iter().map(String::as_str));
    let said = validate("kubernetes-validate", &args);
    assert!(!said.contains("ERROR"), "{said}");

    // The kustomization as an operator applies it: secrets from files, the HTTPS component on.
    let Ok(kubectl) = which("kubectl") else {
        // Straight to stderr: the harness captures a passing test's `println!`.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: kustomize build of deploy/k8s (no kubectl here); the manifests were validated one by one"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("k8s");
    copy_tree(&k8s, &copy);
    std::fs::write(
        copy.join("secrets/jwt-secret"),
        "a secret of at least thirty-two bytes for the check",
    )
    .unwrap();
    std::fs::write(
        copy.join("secrets/store-uri"),
        "postgres://events:a-password@db:5432/events?sslmode=verify-full&sslrootcert=system",
    )
    .unwrap();
    std::fs::write(copy.join("https/secrets/tls.crt"), "not a real certificate").unwrap();
    std::fs::write(copy.join("https/secrets/tls.key"), "not a real key").unwrap();
    let mut kustomization = std::fs::read_to_string(copy.join("kustomization.yaml")).unwrap();
    kustomization.push_str("components:\n  - https\n");
    std::fs::write(copy.join("kustomization.yaml"), kustomization).unwrap();
    let built = validate(&kubectl, &["kustomize", copy.to_str().unwrap()]);
    let output = dir.path().join("built.yaml");
    std::fs::write(&output, &built).unwrap();
    let said = validate(
        "kubernetes-validate",
        &["--strict", output.to_str().unwrap()],
    );
    for kind in [
        "secret/eventsys-auth",
        "secret/eventsys-store",
        "secret/eventsys-tls",
        "deployment/eventsys-gateway",
        "deployment/eventsys-backend",
        "service/eventsys-backend",
        "poddisruptionbudget/eventsys-backend",
    ] {
        assert!(said.contains(kind), "{kind} not built:\n{said}");
    }
    assert!(
        built.contains("TLS_CERT") && built.contains("scheme: HTTPS"),
        "{built}"
    );
    // The store's URI reaches the backends as a file, never in their environment.
    assert!(built.contains("STORE_URI_FILE"), "{built}");
    assert!(
        !built.contains("a-password"),
        "a secret's value in plain text:\n{built}"
    );
}

/// Every `--flag` and variable (`NAME: value`, `- name: NAME`) the compose file and the
/// manifests give the servers is one they take: a typo would only show on a cluster.
#[test]
fn the_files_pass_only_flags_and_variables_the_servers_take() {
    let help = |server: &str| {
        let out = Command::new(EVENTSYS)
            .args([server, "--", "--help"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let known = format!("{}\n{}", help("gateway"), help("backend"));
    // Read by the logging set-up, not by flags; mongosh's and pg_isready's own flags, and the
    // postgres image's own variables.
    let not_ours = [
        "RUST_LOG",
        "LOG_FORMAT",
        "--quiet",
        "--eval",
        "--username",
        "--dbname",
        "POSTGRES_USER",
        "POSTGRES_DB",
        "POSTGRES_PASSWORD_FILE",
    ];
    let upper = |w: &str| w.len() >= 4 && w.chars().all(|c| c.is_ascii_uppercase() || c == '_');
    let mut files: Vec<_> = COMPOSE.iter().map(|f| deploy().join(f)).collect();
    files.extend(MANIFESTS.iter().map(|f| deploy().join("k8s").join(f)));
    files.push(deploy().join("k8s/https/gateway-https.yaml"));
    let mut checked = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
            let flags = line.split(['"', ' ', ',', '[', ']']).filter(|w| {
                w.len() > 2
                    && w.starts_with("--")
                    && w[2..].starts_with(|c: char| c.is_ascii_lowercase())
                    && w[2..].chars().all(|c| c.is_ascii_lowercase() || c == '-')
            });
            for flag in flags.filter(|f| !not_ours.contains(f)) {
                checked += 1;
                assert!(
                    known.contains(&format!("{flag} ")) || known.contains(&format!("{flag}\n")),
                    "{}: {flag} is no flag of the servers",
                    file.display()
                );
            }
            let trimmed = line.trim();
            let variable = match trimmed.strip_prefix("- name: ") {
                Some(name) => Some(name),
                None => trimmed.split_once(':').map(|(name, _)| name),
            };
            if let Some(name) = variable.filter(|n| upper(n) && !not_ours.contains(n)) {
                checked += 1;
                assert!(
                    // (`[env: NAME]` where the value is hidden: a secret's.)
                    known.contains(&format!("[env: {name}="))
                        || known.contains(&format!("[env: {name}]")),
                    "{}: {name} is no variable of the servers",
                    file.display()
                );
            }
        }
    }
    assert!(checked > 20, "{checked} flags and variables checked");
}

fn which(program: &str) -> Result<String, ()> {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .map_err(|_| ())?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if out.status.success() && !path.is_empty() {
        Ok(path)
    } else {
        Err(())
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
