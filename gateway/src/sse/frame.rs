//! Server-Sent Events frames as the bytes a client receives: each event is encoded once, by its
//! topic's hub, and the same bytes are written to every subscriber.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use eventsys::{gap::Gap, topics::PRESENCE_PREFIX, v1};
use utoipa::ToSchema;

use crate::api::{ChangeJson, ErrorBody, EventJson};

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
    /// A subject's first stream of the topic opened (`$presence.<topic>`, `?presence=1`).
    Join,
    /// A subject's last stream of the topic closed, or its gateway was lost.
    Leave,
    /// Sent once, first, when retention already dropped events the client asked for.
    Gap,
}

/// One frame of a stream: an event with its `seq`, or a keep-alive comment.
#[derive(Debug, Clone)]
pub(crate) struct Frame {
    /// The event's `seq`; `None` for a comment.
    pub(crate) seq: Option<u64>,
    pub(crate) bytes: Bytes,
    /// In a multi-topic stream: the event's topic and what comes before it.
    pub(crate) placed: Option<Placed>,
}

/// A multi-topic stream's frame, as readers whose places differ from the hub's need it.
#[derive(Debug, Clone)]
pub(crate) struct Placed {
    pub(crate) topic: Arc<str>,
    /// The topic's place before this frame: a reader there (or past it) misses nothing
    /// between; one behind it reads the topic from the store first.
    pub(crate) prev: u64,
    /// A gap's frame (the topic's place jumps to `seq`), not an event's.
    pub(crate) gap: bool,
    /// Its `event:` name.
    pub(crate) kind: &'static str,
    /// The frame from its `data:` line on, to be sent after another `id:`.
    pub(crate) data: Bytes,
}

/// An event's `event:` name: `join` or `leave` on a presence topic, else `message`.
fn kind_of(event: &v1::Event) -> &'static str {
    match event.title.as_str() {
        "join" if event.topic.starts_with(PRESENCE_PREFIX) => "join",
        "leave" if event.topic.starts_with(PRESENCE_PREFIX) => "leave",
        _ => "message",
    }
}

impl Frame {
    /// `event: message`, `id: <seq>`, `data: <event JSON>`: the JSON is one line (serde_json
    /// escapes control characters in strings), so one `data:` field carries it.
    pub(crate) fn event(event: v1::Event) -> Option<Frame> {
        let (seq, kind) = (event.seq, kind_of(&event));
        let json = match serde_json::to_vec(&EventJson::from(event)) {
            Ok(json) => json,
            Err(err) => {
                tracing::error!(seq, error = %err, "cannot encode event");
                return None;
            }
        };
        let mut bytes = BytesMut::with_capacity(json.len() + 48);
        bytes.put_slice(b"event: ");
        bytes.put_slice(kind.as_bytes());
        bytes.put_slice(b"\nid: ");
        bytes.put_slice(seq.to_string().as_bytes());
        bytes.put_slice(b"\ndata: ");
        bytes.put_slice(&json);
        bytes.put_slice(b"\n\n");
        Some(Frame {
            seq: Some(seq),
            bytes: bytes.freeze(),
            placed: None,
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
            placed: None,
        })
    }

    /// A comment that keeps idle connections (and proxies' timers) alive.
    pub(crate) fn keep_alive() -> Frame {
        Frame {
            seq: None,
            bytes: Bytes::from_static(b":\n\n"),
            placed: None,
        }
    }

    /// `event: error`, the last frame of a stream whose token has expired: the contract's
    /// error body, code `UNAUTHENTICATED`. The client reconnects with a fresh token and
    /// `Last-Event-ID` (its old token now gets 401).
    pub(crate) fn token_expired() -> Bytes {
        let body = ErrorBody::of("token expired".into(), tonic::Code::Unauthenticated);
        let data = serde_json::to_string(&body).unwrap_or_default();
        Bytes::from(format!("event: error\ndata: {data}\n\n"))
    }

    /// `event: gap`, sent before the first event after a gap retention left.
    pub(crate) fn gap(gap: Gap) -> Bytes {
        let data = serde_json::json!({
            "requestedAfter": gap.requested_after,
            "oldestAvailable": gap.oldest_available,
        });
        Bytes::from(format!("event: gap\ndata: {data}\n\n"))
    }

    /// A multi-topic stream's event: `event: message`, `id: <the stream's cursor after it>`,
    /// `data: <event JSON>`.
    pub(crate) fn selected(event: v1::Event, prev: u64, id: &str) -> Option<Frame> {
        let (seq, topic, kind) = (event.seq, Arc::from(event.topic.as_str()), kind_of(&event));
        let json = match serde_json::to_vec(&EventJson::from(event)) {
            Ok(json) => json,
            Err(err) => {
                tracing::error!(seq, error = %err, "cannot encode event");
                return None;
            }
        };
        let mut data = BytesMut::with_capacity(json.len() + 8);
        data.put_slice(b"data: ");
        data.put_slice(&json);
        data.put_slice(b"\n\n");
        Some(Frame::placed(
            kind,
            seq,
            id,
            topic,
            prev,
            false,
            data.freeze(),
        ))
    }

    /// A multi-topic stream's gap in one topic: `event: gap`, `id: <cursor>`, `data:
    /// {"topic", "requestedAfter", "oldestAvailable"}`.
    pub(crate) fn topic_gap(topic: &str, gap: Gap, id: &str) -> Frame {
        let data = serde_json::json!({
            "topic": topic,
            "requestedAfter": gap.requested_after,
            "oldestAvailable": gap.oldest_available,
        });
        let data = Bytes::from(format!("data: {data}\n\n"));
        let through = gap.resume_after();
        let prev = gap.requested_after;
        Frame::placed("gap", through, id, topic.into(), prev, true, data)
    }

    fn placed(
        kind: &'static str,
        seq: u64,
        id: &str,
        topic: Arc<str>,
        prev: u64,
        gap: bool,
        data: Bytes,
    ) -> Frame {
        Frame {
            seq: Some(seq),
            bytes: Frame::with_id(kind, id, &data),
            placed: Some(Placed {
                topic,
                prev,
                gap,
                kind,
                data,
            }),
        }
    }

    /// `event: <kind>`, `id: <id>`, then `data`.
    pub(crate) fn with_id(kind: &str, id: &str, data: &Bytes) -> Bytes {
        let mut bytes = BytesMut::with_capacity(kind.len() + id.len() + data.len() + 16);
        bytes.put_slice(b"event: ");
        bytes.put_slice(kind.as_bytes());
        bytes.put_slice(b"\nid: ");
        bytes.put_slice(id.as_bytes());
        bytes.put_slice(b"\n");
        bytes.put_slice(data);
        bytes.freeze()
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
