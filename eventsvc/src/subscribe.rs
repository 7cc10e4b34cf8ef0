//! `Subscribe` and `WatchChanges` served with each live event (change) encoded once: the feed
//! hands every subscriber of a stream the same protobuf bytes (`Encoded`), which these routes'
//! codec copies into the stream as they are. Every other method goes to the generated
//! `EventServiceServer` unchanged.

use std::{
    convert::Infallible,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::{BufMut, Bytes};
use eventsys::v1::{self, event_service_server::SERVICE_NAME};
use tonic::{
    Request, Response, Status,
    body::Body,
    codec::{Codec, EncodeBuf, Encoder},
    server::{Grpc, NamedService, ServerStreamingService},
};
use tonic_prost::ProstDecoder;
use tower::Service;

use crate::{feed::EventStream, service::EventsApi};

/// One message of a stream, encoded: an `events.v1.Event` of a topic and its `seq`, or an
/// `events.v1.Change` of a user's feed and its `position`.
#[derive(Debug, Clone)]
pub(crate) struct Encoded {
    pub(crate) seq: u64,
    bytes: Bytes,
}

impl From<v1::Event> for Encoded {
    fn from(event: v1::Event) -> Self {
        Encoded {
            seq: event.seq,
            bytes: prost::Message::encode_to_vec(&event).into(),
        }
    }
}

impl From<v1::Change> for Encoded {
    fn from(change: v1::Change) -> Self {
        Encoded {
            seq: change.position,
            bytes: prost::Message::encode_to_vec(&change).into(),
        }
    }
}

impl Encoded {
    /// The message again (for a server composed without [`SharedSubscribe`]).
    pub(crate) fn decode<M: prost::Message + Default>(&self) -> Result<M, Status> {
        M::decode(self.bytes.clone()).map_err(|_| Status::internal("cannot decode a stored event"))
    }
}

/// Reads requests `R` with prost, writes `Encoded` messages as they are.
#[derive(Debug, Default, Clone, Copy)]
struct EncodedCodec<R>(std::marker::PhantomData<R>);

#[derive(Debug, Default, Clone, Copy)]
struct EncodedEncoder;

impl Encoder for EncodedEncoder {
    type Item = Encoded;
    type Error = Status;

    fn encode(&mut self, item: Encoded, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item.bytes);
        Ok(())
    }
}

impl<R: prost::Message + Default + Send + 'static> Codec for EncodedCodec<R> {
    type Encode = Encoded;
    type Decode = R;
    type Encoder = EncodedEncoder;
    type Decoder = ProstDecoder<R>;

    fn encoder(&mut self) -> EncodedEncoder {
        EncodedEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(Default::default())
    }
}

/// `S` (the generated server) with `/events.v1.EventService/Subscribe` and `…/WatchChanges`
/// taken by the shared-bytes path.
#[derive(Clone)]
pub(crate) struct SharedSubscribe<S> {
    inner: S,
    api: Arc<EventsApi>,
    max_request: usize,
}

impl<S> SharedSubscribe<S> {
    pub(crate) fn new(inner: S, api: Arc<EventsApi>, max_request: usize) -> Self {
        Self {
            inner,
            api,
            max_request,
        }
    }
}

const SUBSCRIBE: &str = "/events.v1.EventService/Subscribe";
const WATCH_CHANGES: &str = "/events.v1.EventService/WatchChanges";

impl<S> NamedService for SharedSubscribe<S> {
    const NAME: &'static str = SERVICE_NAME;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> Service<http::Request<B>> for SharedSubscribe<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let max_request = self.max_request;
        let api = self.api.clone();
        match request.uri().path() {
            SUBSCRIBE => Box::pin(async move {
                let mut grpc = Grpc::new(EncodedCodec::<v1::SubscribeRequest>::default())
                    .apply_max_message_size_config(Some(max_request), None);
                Ok(grpc.server_streaming(Subscribe(api), request).await)
            }),
            WATCH_CHANGES => Box::pin(async move {
                let mut grpc = Grpc::new(EncodedCodec::<v1::WatchChangesRequest>::default())
                    .apply_max_message_size_config(Some(max_request), None);
                Ok(grpc.server_streaming(WatchChanges(api), request).await)
            }),
            _ => Box::pin(self.inner.call(request)),
        }
    }
}

struct Subscribe(Arc<EventsApi>);

impl ServerStreamingService<v1::SubscribeRequest> for Subscribe {
    type Response = Encoded;
    type ResponseStream = EventStream;
    type Future = BoxFuture<Result<Response<EventStream>, Status>>;

    fn call(&mut self, request: Request<v1::SubscribeRequest>) -> Self::Future {
        let api = self.0.clone();
        Box::pin(async move { api.subscription(request).await.map(Response::new) })
    }
}

struct WatchChanges(Arc<EventsApi>);

impl ServerStreamingService<v1::WatchChangesRequest> for WatchChanges {
    type Response = Encoded;
    type ResponseStream = EventStream;
    type Future = BoxFuture<Result<Response<EventStream>, Status>>;

    fn call(&mut self, request: Request<v1::WatchChangesRequest>) -> Self::Future {
        let api = self.0.clone();
        Box::pin(async move { api.watching(request).await.map(Response::new) })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use eventsys::{auth::Auth, v1::event_service_server::EventService};
    use futures::StreamExt;
    use tokio_util::sync::CancellationToken;
    use tonic::service::Interceptor;

    use super::*;
    use crate::{
        auth::Verify,
        feed::{Feed, FeedSettings},
        stats::Stats,
        store::{StoreLimits, StoreUri, open},
    };

    /// Both ways of serving Subscribe hand out the same events: the shared bytes decode to
    /// what the generated path sends, stored and live alike.
    #[tokio::test]
    async fn shared_frames_are_the_events_the_generated_path_sends() {
        let dir = tempfile::tempdir().unwrap();
        let uri = StoreUri::Sqlite(dir.path().join("events.db"));
        let store = open(&uri, StoreLimits::default()).await.unwrap();
        let stats = Arc::new(Stats::default());
        let feed = Feed::new(
            store.clone(),
            stats.clone(),
            FeedSettings::default(),
            CancellationToken::new(),
            crate::metrics::RpcMetrics::new().feed_delay(),
        );
        let auth = Arc::new(Auth::anonymous());
        let keys = crate::keyed::KeyPolicy {
            ttl: Duration::from_secs(60),
            lease: Duration::from_secs(30),
        };
        let api = EventsApi::new(
            store,
            stats,
            feed,
            auth.clone(),
            keys,
            crate::presence::PresencePolicy::default(),
        );
        // As the server's interceptor passes them on.
        fn verified<T>(auth: &Arc<Auth>, message: T) -> Request<T> {
            let checked = Verify(auth.clone()).call(Request::new(())).unwrap();
            let (metadata, extensions, ()) = checked.into_parts();
            Request::from_parts(metadata, extensions, message)
        }
        let publish = |title: &str| {
            verified(
                &auth,
                v1::PublishRequest {
                    topic: "t".into(),
                    title: title.into(),
                    ..Default::default()
                },
            )
        };
        let stored = api.publish(publish("stored")).await.unwrap().into_inner();
        let subscribe = || {
            verified(
                &auth,
                v1::SubscribeRequest {
                    topic: "t".into(),
                    after_seq: 0,
                    ..Default::default()
                },
            )
        };
        let mut shared = api.subscription(subscribe()).await.unwrap();
        let mut generated = api.subscribe(subscribe()).await.unwrap().into_inner();
        let next = Duration::from_secs(10);
        let first = tokio::time::timeout(next, shared.next()).await.unwrap();
        let first = first.unwrap().unwrap();
        assert_eq!(first.seq, stored.seq);
        assert_eq!(first.decode::<v1::Event>().unwrap(), stored);
        let from_generated = tokio::time::timeout(next, generated.next()).await.unwrap();
        assert_eq!(from_generated.unwrap().unwrap(), stored);

        let live = api.publish(publish("live")).await.unwrap().into_inner();
        let second = tokio::time::timeout(next, shared.next()).await.unwrap();
        assert_eq!(
            second.unwrap().unwrap().decode::<v1::Event>().unwrap(),
            live
        );
        let from_generated = tokio::time::timeout(next, generated.next()).await.unwrap();
        assert_eq!(from_generated.unwrap().unwrap(), live);
    }
}
