//! A server's log as the tests keep it: read for the process's whole life (so it never blocks
//! on a full pipe), the last lines kept for a failure message, and its readiness line noticed.

use std::{
    collections::VecDeque,
    io::{BufRead, BufReader},
    process::ChildStderr,
    sync::{Arc, Mutex, mpsc},
};

/// Log lines kept for a failure message.
const KEPT_LINES: usize = 40;

/// The last lines of a server's log (shared with the thread reading it).
#[derive(Clone, Default)]
pub(crate) struct Tail(Arc<Mutex<VecDeque<String>>>);

impl Tail {
    /// Reads `stderr` on a thread of its own until it closes, keeping the last lines; each line
    /// `ready` maps to a value sends it on the returned channel.
    pub(crate) fn follow<T: Send + 'static>(
        &self,
        stderr: ChildStderr,
        ready: impl Fn(&str) -> Option<T> + Send + 'static,
    ) -> mpsc::Receiver<T> {
        let (sender, receiver) = mpsc::channel();
        let tail = self.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(value) = ready(&line) {
                    let _ = sender.send(value);
                }
                let mut lines = tail.0.lock().unwrap_or_else(|e| e.into_inner());
                if lines.len() == KEPT_LINES {
                    lines.pop_front();
                }
                lines.push_back(line);
            }
        });
        receiver
    }

    /// The lines kept, for a failure message.
    pub(crate) fn text(&self) -> String {
        let lines = self.0.lock().unwrap_or_else(|e| e.into_inner());
        lines.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}
