//! W3C Trace Context: the `traceparent` that carries a request's trace from its client through
//! the gateway into the backend, so one trace id names it in every log line of both. Parsed
//! and written here (one fixed 55-byte format) rather than through the OpenTelemetry SDK,
//! which the processes need only when they export spans.

use std::fmt;

/// The header's name, in HTTP and in gRPC metadata alike.
pub const TRACEPARENT: &str = "traceparent";

/// A trace id: 16 bytes, never all zero, written as 32 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub u128);

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// A span id: 8 bytes, never all zero, 16 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(pub u64);

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// One hop of a trace: the trace, the span that is the parent of the next hop, and whether
/// the caller samples it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub sampled: bool,
}

impl TraceParent {
    /// A new trace (no valid `traceparent` came in), sampled.
    pub fn start() -> TraceParent {
        TraceParent {
            trace_id: TraceId(fastrand::u128(1..)),
            span_id: SpanId(fastrand::u64(1..)),
            sampled: true,
        }
    }

    /// The next hop: the same trace under a new span of ours.
    pub fn child(&self) -> TraceParent {
        TraceParent {
            span_id: SpanId(fastrand::u64(1..)),
            ..*self
        }
    }

    /// `00-<trace id>-<span id>-<flags>`; `None` for anything else, as the specification says
    /// to treat a malformed header (a later version's longer header is read by its prefix).
    pub fn parse(value: &[u8]) -> Option<TraceParent> {
        let text = std::str::from_utf8(value).ok()?;
        let version = text.get(..2)?;
        if text.len() < 55 || version == "ff" || (version == "00" && text.len() != 55) {
            return None;
        }
        let bytes = text.as_bytes();
        if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
            return None;
        }
        if text.len() > 55 && bytes[55] != b'-' {
            return None;
        }
        let hex = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        let (trace, span, flags) = (&text[3..35], &text[36..52], &text[53..55]);
        if !(hex(version) && hex(trace) && hex(span) && hex(flags)) {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok().filter(|t| *t != 0)?;
        let span_id = u64::from_str_radix(span, 16).ok().filter(|s| *s != 0)?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        Some(TraceParent {
            trace_id: TraceId(trace_id),
            span_id: SpanId(span_id),
            sampled: flags & 1 == 1,
        })
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            self.trace_id,
            self.span_id,
            u8::from(self.sampled)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_specifications_example_round_trips() {
        let parsed = TraceParent::parse(EXAMPLE.as_bytes()).unwrap();
        assert_eq!(
            parsed.trace_id.to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(parsed.span_id.to_string(), "00f067aa0ba902b7");
        assert!(parsed.sampled);
        assert_eq!(parsed.to_string(), EXAMPLE);
        let child = parsed.child();
        assert_eq!(child.trace_id, parsed.trace_id);
        assert_ne!(child.span_id, parsed.span_id);
    }

    #[test]
    fn malformed_headers_are_ignored() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad.as_bytes()), None, "{bad:?}");
        }
        // A later version may append fields; its prefix is read.
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-what-comes";
        assert!(!TraceParent::parse(later.as_bytes()).unwrap().sampled);
        assert_ne!(TraceParent::start().trace_id.0, 0);
    }
}
