//! The launcher's terminal: every line of every child, and the launcher's own log, behind an
//! aligned name prefix (`backend-5001 | …`), coloured per process when stdout is a terminal.

use std::{
    io::{self, IsTerminal, Write},
    sync::{Arc, Mutex, PoisonError},
};

const COLOURS: [&str; 6] = ["36", "33", "35", "32", "34", "91"];

/// Who a line comes from.
#[derive(Debug, Clone)]
pub(crate) struct Label {
    name: String,
    colour: &'static str,
}

pub(crate) struct Console {
    colour: bool,
    width: usize,
    out: Mutex<io::Stdout>,
}

impl Console {
    /// `names`: every label that will be used, so prefixes line up.
    pub(crate) fn new(names: &[String]) -> Arc<Console> {
        let colour = io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        let width = names.iter().map(String::len).max().unwrap_or(0);
        Arc::new(Console {
            colour,
            width,
            out: Mutex::new(io::stdout()),
        })
    }

    /// The label for the `index`-th name, with its colour.
    pub(crate) fn label(&self, name: &str, index: usize) -> Label {
        Label {
            name: name.to_owned(),
            colour: COLOURS[index % COLOURS.len()],
        }
    }

    pub(crate) fn line(&self, label: &Label, text: &str) {
        let prefix = format!("{:>width$} |", label.name, width = self.width);
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        // A closed stdout (the launcher piped into `head`) must not stop the system.
        let _ = if self.colour {
            writeln!(out, "\x1b[{}m{prefix}\x1b[0m {text}", label.colour)
        } else {
            writeln!(out, "{prefix} {text}")
        };
        let _ = out.flush();
    }
}

/// `io::Write` for the launcher's own `tracing` output: whole lines go to the console.
pub(crate) struct LabelledWriter {
    console: Arc<Console>,
    label: Label,
    pending: Vec<u8>,
}

impl LabelledWriter {
    pub(crate) fn new(console: Arc<Console>, label: Label) -> Self {
        Self {
            console,
            label,
            pending: Vec::new(),
        }
    }
}

impl Write for LabelledWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buf);
        while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            let text = String::from_utf8_lossy(&line[..line.len() - 1]);
            self.console.line(&self.label, &text);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.pending.is_empty() {
            let text = String::from_utf8_lossy(&self.pending).into_owned();
            self.pending.clear();
            self.console.line(&self.label, &text);
        }
        Ok(())
    }
}

impl Drop for LabelledWriter {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}
