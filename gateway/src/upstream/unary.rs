//! Unary gRPC calls framed here rather than by tonic's generic client: the request encoded
//! once, with its 5-byte prefix, into the one buffer every attempt sends (a retry re-sends it
//! without cloning the message); the reply's frames gathered, bounded and decoded; the status
//! read from the trailers. tonic's client does this through an encoder stream, a decoder with
//! buffers of its own and metadata conversions, which cost more than the rest of the call
//! (BENCHMARKS.md); subscriptions still go through it.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderValue, Method, Uri, header};
use http_body_util::{BodyExt, Full};
use tonic::{Code, Status, body::Body};
use tower::Service;

use eventsys::{
    trace::TRACEPARENT,
    write_key::{KEY_HEADER, REPLAYED_HEADER},
};

use super::{
    Backend,
    balancer::BalancedChannel,
    call::{self, Bearer, MAX_REPLY, Outcome},
    endpoint::CallFailure,
};

/// A request message framed for the wire: compression flag, length, message.
pub(crate) fn frame(message: &impl prost::Message) -> Bytes {
    let len = message.encoded_len();
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    // Requests are bounded by the HTTP side's body limit, far below 4 GiB.
    buf.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    message.encode_raw(&mut buf);
    buf.freeze()
}

/// `grpc-timeout`: at most 8 digits, in the finest unit that fits.
fn grpc_timeout(timeout: Duration) -> HeaderValue {
    let micros = timeout.as_micros();
    let text = if micros < 100_000_000 {
        format!("{micros}u")
    } else if timeout.as_millis() < 100_000_000 {
        format!("{}m", timeout.as_millis())
    } else {
        format!("{}S", timeout.as_secs().min(99_999_999))
    };
    let mut value = HeaderValue::try_from(text).expect("digits and a unit letter");
    value.set_sensitive(true);
    value
}

/// Sends `framed` to `path` through `channel` and decodes the reply.
pub(crate) async fn call<R: prost::Message + Default>(
    channel: BalancedChannel,
    path: &'static str,
    framed: Bytes,
    bearer: Option<&Bearer>,
    timeout: Option<Duration>,
) -> Result<(R, Option<Backend>), Status> {
    let (reply, backend) = call_framed(channel, path, framed, bearer, timeout).await?;
    Ok((Reply::decode(reply)?, backend))
}

/// As `call`, for a write sent with the client's idempotency key; the reply says whether the
/// backend answered it or replayed the answer an earlier request with the key got.
pub(crate) async fn call_keyed<R: prost::Message + Default>(
    channel: BalancedChannel,
    path: &'static str,
    framed: Bytes,
    key: Option<HeaderValue>,
    bearer: Option<&Bearer>,
    timeout: Option<Duration>,
) -> Result<((R, Outcome), Option<Backend>), Status> {
    let exchanged = exchange(channel, path, framed, key, bearer, timeout).await?;
    let message = Reply::decode(exchanged.reply)?;
    Ok(((message, exchanged.outcome), exchanged.backend))
}

/// As `call`, with the reply as the backend framed it (checked, not decoded): what a gRPC
/// client of the gateway is sent as it is.
pub(crate) async fn call_framed(
    channel: BalancedChannel,
    path: &'static str,
    framed: Bytes,
    bearer: Option<&Bearer>,
    timeout: Option<Duration>,
) -> Result<(Bytes, Option<Backend>), Status> {
    let exchanged = exchange(channel, path, framed, None, bearer, timeout).await?;
    Ok((exchanged.reply, exchanged.backend))
}

/// A call's checked reply frame, who sent it, and whether it was a replayed answer.
struct Exchanged {
    reply: Bytes,
    backend: Option<Backend>,
    outcome: Outcome,
}

async fn exchange(
    mut channel: BalancedChannel,
    path: &'static str,
    framed: Bytes,
    key: Option<HeaderValue>,
    bearer: Option<&Bearer>,
    timeout: Option<Duration>,
) -> Result<Exchanged, Status> {
    let mut request = http::Request::new(Body::new(Full::new(framed)));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = Uri::from_static(path);
    let headers = request.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(header::TE, HeaderValue::from_static("trailers"));
    if let Some(timeout) = timeout {
        headers.insert("grpc-timeout", grpc_timeout(timeout));
    }
    // Values that differ on every call are sent as "never indexed": added to HPACK's table
    // they would only push out the entries that repeat (path, content type, token), which
    // both ends would then encode and decode in full again.
    if let Some(bearer) = bearer {
        headers.insert(header::AUTHORIZATION, bearer.header().clone());
    }
    // Only a keyed write can be a replay: other calls never look for the mark.
    let keyed = key.is_some();
    if let Some(key) = key {
        headers.insert(KEY_HEADER, key);
    }
    if let Some(trace) = call::trace()
        && let Ok(mut value) = HeaderValue::try_from(trace.to_string())
    {
        value.set_sensitive(true);
        headers.insert(TRACEPARENT, value);
    }
    let response = channel.call(request).await?;
    let backend = response.extensions().get::<Backend>().copied();
    let outcome = match keyed.then(|| response.headers().get(REPLAYED_HEADER)) {
        Some(Some(value)) if value == "true" => Outcome::Replayed,
        _ => Outcome::Answered,
    };
    let mut body = response.into_body();
    let mut message = Reply::default();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = match frame?.into_data() {
            Ok(data) => {
                message.push(data)?;
                continue;
            }
            Err(frame) => frame,
        };
        if let Ok(map) = frame.into_trailers() {
            trailers = Some(map);
            break;
        }
    }
    match trailers.as_ref().and_then(Status::from_header_map) {
        Some(status) if status.code() == Code::Ok => {}
        Some(status) => {
            return Err(match backend {
                Some(backend) => CallFailure::Answered(backend).into_status(status),
                None => status,
            });
        }
        None => return Err(Status::internal("reply without a gRPC status")),
    }
    Ok(Exchanged {
        reply: message.framed()?,
        backend,
        outcome,
    })
}

/// A reply's bytes as they arrive: usually one data frame, kept as it is.
#[derive(Default)]
struct Reply {
    first: Bytes,
    more: Option<BytesMut>,
}

impl Reply {
    fn len(&self) -> usize {
        self.more.as_ref().map_or(self.first.len(), BytesMut::len)
    }

    fn push(&mut self, data: Bytes) -> Result<(), Status> {
        if self.len() + data.len() > 5 + MAX_REPLY {
            return Err(Status::out_of_range("reply over the size limit"));
        }
        match &mut self.more {
            Some(more) => more.extend_from_slice(&data),
            None if self.first.is_empty() => self.first = data,
            None => {
                let mut more = BytesMut::with_capacity(self.first.len() + data.len());
                more.extend_from_slice(&self.first);
                more.extend_from_slice(&data);
                self.more = Some(more);
            }
        }
        Ok(())
    }

    /// Exactly one uncompressed message.
    /// The one reply frame, its header checked (uncompressed, the length it says).
    fn framed(self) -> Result<Bytes, Status> {
        let bytes = match self.more {
            Some(more) => more.freeze(),
            None => self.first,
        };
        if bytes.len() < 5 {
            return Err(Status::internal("reply without a message"));
        }
        let mut header = &bytes[..5];
        let compressed = header.get_u8();
        let len = header.get_u32() as usize;
        if compressed != 0 || len != bytes.len() - 5 {
            return Err(Status::internal("malformed reply frame"));
        }
        Ok(bytes)
    }

    /// A checked frame's message.
    fn decode<R: prost::Message + Default>(mut framed: Bytes) -> Result<R, Status> {
        framed.advance(5);
        R::decode(framed).map_err(|_| Status::internal("undecodable reply"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use eventsys::v1;

    #[test]
    fn a_framed_message_decodes_back() {
        let event = v1::Event {
            id: "x".into(),
            title: "t".into(),
            ..Default::default()
        };
        let framed = frame(&event);
        assert_eq!(&framed[..5], &[0, 0, 0, 0, (framed.len() - 5) as u8]);
        let mut reply = Reply::default();
        reply.push(framed.slice(..3)).unwrap();
        reply.push(framed.slice(3..)).unwrap();
        let framed_again = reply.framed().unwrap();
        assert_eq!(framed_again, framed);
        assert_eq!(Reply::decode::<v1::Event>(framed_again).unwrap(), event);
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        for bytes in [&b""[..], &[0, 0, 0], &[1, 0, 0, 0, 0], &[0, 0, 0, 0, 9, 1]] {
            let mut reply = Reply::default();
            reply.push(Bytes::copy_from_slice(bytes)).unwrap();
            assert_eq!(reply.framed().unwrap_err().code(), Code::Internal);
        }
    }

    #[test]
    fn timeouts_fit_eight_digits() {
        assert_eq!(grpc_timeout(Duration::from_secs(30)), "30000000u");
        assert_eq!(grpc_timeout(Duration::from_secs(1000)), "1000000m");
        assert_eq!(grpc_timeout(Duration::from_secs(10_000_000)), "10000000S");
    }
}
