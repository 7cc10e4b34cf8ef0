//! Unary calls of gRPC clients passed on as they are framed: the request's frame goes to the
//! backend the balancer picks, its reply frame comes back, and the gateway decodes neither
//! (but in token mode, where it reads the request to apply REST's rule: `guard`). Used for
//! every unary method the gateway need not read otherwise (creates and publishes are decoded:
//! the gateway names their event, see `service`).

use std::{convert::Infallible, net::SocketAddr};

use axum::{
    body::{Body, Bytes},
    extract::{ConnectInfo, Request, State},
    response::{IntoResponse, Response},
};
use http::{HeaderMap, HeaderValue, header};
use http_body_util::{BodyExt, Limited, StreamBody};
use prost::Message;
use tonic::{Status, metadata::MetadataMap};

use super::{MAX_MESSAGE, grpc_timeout, guard::Guarded, within};
use crate::{
    api::Credentials,
    http::AppState,
    upstream::{self, Forwarded, Method},
};

/// `POST /events.v1.EventService/{M}` from a gRPC client.
pub(crate) async fn forward<M: Method<Request: Guarded>>(
    State(state): State<AppState>,
    request: Request,
) -> Response {
    match call::<M>(&state, request).await {
        Ok((reply, backend)) => answer(reply, backend),
        Err(status) => status.into_http(),
    }
}

async fn call<M: Method<Request: Guarded>>(
    state: &AppState,
    request: Request,
) -> Result<(Bytes, Option<upstream::Backend>), Status> {
    let (parts, body) = request.into_parts();
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let metadata = MetadataMap::from_headers(parts.headers);
    let who = Credentials::of_grpc(&metadata, peer, state)?;
    let framed = Limited::new(body, 5 + MAX_MESSAGE)
        .collect()
        .await
        .map_err(|_| Status::resource_exhausted("request message over the size limit"))?
        .to_bytes();
    check(&framed)?;
    if state.auth.token_mode() {
        let request = M::Request::decode(&framed[5..])
            .map_err(|_| Status::invalid_argument("the request message does not decode"))?;
        request.guard(&who, state)?;
    }
    let call = state
        .upstream
        .call(Forwarded::<M>::new(framed), who.bearer.as_ref());
    let answer = within(grpc_timeout(&metadata), call).await?;
    Ok((answer.message, answer.backend))
}

/// One uncompressed frame holding the whole message, as a unary request is.
fn check(framed: &[u8]) -> Result<(), Status> {
    let header = framed
        .get(..5)
        .ok_or_else(|| Status::invalid_argument("no request message"))?;
    if header[0] != 0 {
        return Err(Status::unimplemented(
            "compressed messages are not accepted",
        ));
    }
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if len != framed.len() - 5 {
        return Err(Status::invalid_argument("one request message expected"));
    }
    Ok(())
}

/// The reply frame, then `grpc-status: 0` in the trailers; `x-backend` names who answered.
fn answer(reply: Bytes, backend: Option<upstream::Backend>) -> Response {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let frames = futures::stream::iter([
        Ok::<_, Infallible>(http_body::Frame::data(reply)),
        Ok(http_body::Frame::trailers(trailers)),
    ]);
    let content_type = [(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    )];
    (content_type, backend, Body::new(StreamBody::new(frames))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_one_uncompressed_whole_frame_passes() {
        assert!(check(&[0, 0, 0, 0, 2, 8, 1]).is_ok());
        assert!(check(&[0, 0, 0, 0, 0]).is_ok());
        assert!(check(&[]).is_err());
        assert!(check(&[1, 0, 0, 0, 0]).is_err());
        assert!(check(&[0, 0, 0, 0, 3, 8, 1]).is_err());
    }
}
