//! A shell that outlives nothing: it holds the pid of the server a test started and, when the
//! test process goes away (its end of a pipe closes, even on `kill -9` or a panic in a static),
//! kills that server and removes its data folder. Statics are never dropped, so a shared server
//! needs this; owned ones use it as a backstop.

use std::{
    io::Write,
    path::Path,
    process::{Child, ChildStdin, Command, Stdio},
};

pub(crate) struct Watchdog {
    /// Each line is the pid of the server now running on the folder.
    pids: ChildStdin,
    _shell: Child,
}

impl Watchdog {
    /// Watches `dir`'s servers; removes `dir` when the test process is gone.
    pub(crate) fn new(dir: &Path) -> std::io::Result<Watchdog> {
        let mut shell = Command::new("sh")
            .arg("-c")
            .arg(
                r#"while read -r pid; do last=$pid; done
                   [ -n "$last" ] && kill -9 "$last" 2>/dev/null
                   rm -rf "$0""#,
            )
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let pids = shell.stdin.take().expect("piped stdin");
        Ok(Watchdog {
            pids,
            _shell: shell,
        })
    }

    /// The server now running is `pid`.
    pub(crate) fn watch(&mut self, pid: u32) {
        // The shell only exits when this pipe closes, so the write cannot fail but by a bug.
        let _ = writeln!(self.pids, "{pid}");
    }
}
