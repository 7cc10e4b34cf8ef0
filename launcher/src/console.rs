//! The launcher's terminal: every line of every child, and the launcher's own log, behind an
//! aligned name prefix (`backend-5001 | …`), coloured per process when stdout is a terminal;
//! with `LOG_FORMAT=json`, one JSON object per line with the name as its `process` field.
//! Lines go through a bounded queue to one writer thread: when nobody reads stdout, lines are
//! dropped and counted, and the system keeps serving (a child blocked on a full pipe would not).

use std::{
    io::{self, IsTerminal, Write},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{Receiver, SyncSender, TrySendError, sync_channel},
    },
    time::Duration,
};

use eventsys::process::LogFormat;

const COLOURS: [&str; 6] = ["36", "33", "35", "32", "34", "91"];

/// Lines waiting for stdout; beyond them lines are dropped.
const QUEUED_LINES: usize = 4096;

/// Who a line comes from.
#[derive(Debug, Clone)]
pub(crate) struct Label {
    name: String,
    colour: &'static str,
}

enum Out {
    Line(String),
    /// Answered once every line queued before it is written.
    Flushed(SyncSender<()>),
}

pub(crate) struct Console {
    /// `LOG_FORMAT=json`: a child's JSON line gets a `process` field instead of the prefix.
    json: bool,
    colour: bool,
    width: usize,
    queue: SyncSender<Out>,
    dropped: Arc<AtomicU64>,
}

impl Console {
    /// `names`: every label that will be used, so prefixes line up.
    pub(crate) fn new(names: &[String], format: LogFormat) -> Arc<Console> {
        let json = format == LogFormat::Json;
        let colour = !json && io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        let width = names.iter().map(String::len).max().unwrap_or(0);
        let (queue, lines) = sync_channel(QUEUED_LINES);
        let dropped = Arc::new(AtomicU64::new(0));
        let writer = dropped.clone();
        std::thread::Builder::new()
            .name("console".into())
            .spawn(move || write_out(&lines, &writer))
            .expect("a thread for the console");
        Arc::new(Console {
            json,
            colour,
            width,
            queue,
            dropped,
        })
    }

    /// The label for the `index`-th name, with its colour.
    pub(crate) fn label(&self, name: &str, index: usize) -> Label {
        Label {
            name: name.to_owned(),
            colour: COLOURS[index % COLOURS.len()],
        }
    }

    /// Queues a line; never waits for stdout.
    pub(crate) fn line(&self, label: &Label, text: &str) {
        let prefix = format!("{:>width$} |", label.name, width = self.width);
        let line = if self.json {
            // Still one JSON object per line: the name goes in as a field (names are ours,
            // plain ASCII without quotes); a line that is not JSON (the banner, a panic's
            // words) becomes the message of one.
            match text.strip_prefix('{') {
                Some(object) => format!("{{\"process\":\"{}\",{object}\n", label.name),
                None => format!(
                    "{}\n",
                    serde_json::json!({"process": label.name, "message": text})
                ),
            }
        } else if self.colour {
            format!("\x1b[{}m{prefix}\x1b[0m {text}\n", label.colour)
        } else {
            format!("{prefix} {text}\n")
        };
        if let Err(TrySendError::Full(_)) = self.queue.try_send(Out::Line(line)) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Waits up to `timeout` for queued lines to be written (at exit, so the last words are
    /// seen when someone reads).
    pub(crate) fn flush(&self, timeout: Duration) {
        let (done, flushed) = sync_channel(1);
        if self.queue.try_send(Out::Flushed(done)).is_ok() {
            let _ = flushed.recv_timeout(timeout);
        }
    }
}

fn write_out(lines: &Receiver<Out>, dropped: &AtomicU64) {
    let mut out = io::stdout();
    while let Ok(next) = lines.recv() {
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            let _ = writeln!(out, "… {lost} lines dropped (stdout was not being read)");
        }
        match next {
            // A closed stdout (the launcher piped into `head`) must not stop the system.
            Out::Line(line) => {
                let _ = out.write_all(line.as_bytes());
            }
            Out::Flushed(done) => {
                let _ = out.flush();
                let _ = done.try_send(());
            }
        }
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
