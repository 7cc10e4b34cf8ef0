//! Server-Sent Events frames as the bytes a client receives: each event is encoded once, by its
//! topic's hub, and the same bytes are written to every subscriber.

use bytes::{BufMut, Bytes, BytesMut};
use eventsys::{gap::Gap, v1};
use utoipa::ToSchema;

use crate::api::{ChangeJson, EventJson};

/// A frame as an SSE client parses it, for the API description (`Frame` writes these bytes).
#[derive(ToSchema)]
#[allow(dead_code, reason = "only describes the stream")]
pub(crate) struct ServerEvent {
    event: FrameKind,
    /// The event's `seq` (`message` frames), the change's position (`created`, `updated`,
    /// `deleted`): what `Last-Event-ID` resumes from.
    #[schema(pattern = "^[0-9]+$", required = false, nullable = false)]
    id: Option<String>,
    /// `message`, `created`, `updated`: the Event as JSON (one line). `deleted`:
    /// `{"id", "userId", "revision"}`. `gap`: `{"requestedAfter": N, "oldestAvailable": M}`.
    #[schema(content_media_type = "application/json")]
    data: String,
}

/// The `event:` field of a frame.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code, reason = "only describes the stream")]
enum FrameKind {
    /// A published event (`/subscribe/{topic}`).
    Message,
    /// An event created (`/changes`).
    Created,
    /// An event updated (`/changes`).
    Updated,
    /// An event deleted (`/changes`).
    Deleted,
    /// Sent once, first, when retention already dropped events the client asked for.
    Gap,
}

/// One frame of a topic's stream: an event with its `seq`, or a keep-alive comment.
#[derive(Debug, Clone)]
pub(crate) struct Frame {
    /// The event's `seq`; `None` for a comment.
    pub(crate) seq: Option<u64>,
    pub(crate) bytes: Bytes,
}

impl Frame {
    /// `event: message`, `id: <seq>`, `data: <event JSON>`: the JSON is one line (serde_json
    /// escapes control characters in strings), so one `data:` field carries it.
    pub(crate) fn event(event: v1::Event) -> Option<Frame> {
        let seq = event.seq;
        let json = match serde_json::to_vec(&EventJson::from(event)) {
            Ok(json) => json,
            Err(err) => {
                tracing::error!(seq, error = %err, "cannot encode event");
                return None;
            }
        };
        let mut bytes = BytesMut::with_capacity(json.len() + 48);
        bytes.put_slice(b"event: message\nid: ");
        bytes.put_slice(seq.to_string().as_bytes());
        bytes.put_slice(b"\ndata: ");
        bytes.put_slice(&json);
        bytes.put_slice(b"\n\n");
        Some(Frame {
            seq: Some(seq),
            bytes: bytes.freeze(),
        })
    }

    /// `event: created|updated|deleted`, `id: <position>`, `data: <the event JSON>` (of a
    /// deleted event: its `id`, `userId` and last `revision`).
    pub(crate) fn change(change: v1::Change) -> Option<Frame> {
        let position = change.position;
        let change = ChangeJson::of(change)?;
        let json = match serde_json::to_vec(&change.event) {
            Ok(json) => json,
            Err(err) => {
                tracing::error!(position, error = %err, "cannot encode change");
                return None;
            }
        };
        let kind = change.kind.name();
        let mut bytes = BytesMut::with_capacity(json.len() + 48);
        bytes.put_slice(b"event: ");
        bytes.put_slice(kind.as_bytes());
        bytes.put_slice(
            b"
id: ",
        );
        bytes.put_slice(position.to_string().as_bytes());
        bytes.put_slice(
            b"
data: ",
        );
        bytes.put_slice(&json);
        bytes.put_slice(
            b"

",
        );
        Some(Frame {
            seq: Some(position),
            bytes: bytes.freeze(),
        })
    }

    /// A comment that keeps idle connections (and proxies' timers) alive.
    pub(crate) fn keep_alive() -> Frame {
        Frame {
            seq: None,
            bytes: Bytes::from_static(b":\n\n"),
        }
    }

    /// `event: gap`, sent before the first event after a gap retention left.
    pub(crate) fn gap(gap: Gap) -> Bytes {
        let data = serde_json::json!({
            "requestedAfter": gap.requested_after,
            "oldestAvailable": gap.oldest_available,
        });
        Bytes::from(format!("event: gap\ndata: {data}\n\n"))
    }

    pub(crate) fn len(&self) -> usize {
        self.bytes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_one_sse_frame_with_its_seq_as_id() {
        let event = v1::Event {
            id: "e1".into(),
            title: "line one\nline two".into(),
            topic: "t".into(),
            seq: 42,
            ..Default::default()
        };
        let frame = Frame::event(event).unwrap();
        assert_eq!(frame.seq, Some(42));
        let text = std::str::from_utf8(&frame.bytes).unwrap();
        let lines: Vec<&str> = text.split('\n').collect();
        assert_eq!(lines[0], "event: message");
        assert_eq!(lines[1], "id: 42");
        assert!(lines[2].starts_with("data: {"), "{text}");
        assert!(text.ends_with("}\n\n"), "{text}");
        assert_eq!(lines.len(), 5, "the JSON stays on one line: {text:?}");
        let json: serde_json::Value = serde_json::from_str(&lines[2]["data: ".len()..]).unwrap();
        assert_eq!(json["title"], "line one\nline two");
        assert_eq!(json["seq"], 42);
    }

    #[test]
    fn a_gap_names_both_ends() {
        let gap = Frame::gap(Gap {
            requested_after: 3,
            oldest_available: 41,
        });
        let text = std::str::from_utf8(&gap).unwrap();
        let data = text
            .strip_prefix("event: gap\ndata: ")
            .and_then(|rest| rest.strip_suffix("\n\n"))
            .unwrap_or_else(|| panic!("{text:?}"));
        let data: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(
            data,
            serde_json::json!({"requestedAfter": 3, "oldestAvailable": 41})
        );
    }
}
