//! `events.v1.EventService` on the gateway: every method is the backends' own, sent through
//! `Upstream::call` (the same balancer, retry policy, deadline and limits as REST), with the
//! caller's token checked here and forwarded, and `x-backend` naming the backend that answered.

use std::net::SocketAddr;

use axum::extract::ConnectInfo;
use bytes::Bytes;
use eventsys::{
    v1::{self, event_service_server::EventService},
    write_key::{IdempotencyKey, REPLAYED_HEADER},
};
use tonic::{Request, Response, Status, metadata::MetadataValue};

use super::{grpc_timeout, subscribe, within};
use crate::{
    api::{ApiError, Credentials},
    http::AppState,
    middleware::mark,
    upstream::{Keyed, NewEvent, Outcome, Rpc},
};

pub(crate) struct FrontDoor {
    state: AppState,
}

impl FrontDoor {
    pub(super) fn new(state: AppState) -> FrontDoor {
        FrontDoor { state }
    }

    /// The caller, verified and counted against its rate.
    pub(super) fn caller<T>(&self, request: &Request<T>) -> Result<Credentials, Status> {
        let peer = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0);
        Ok(Credentials::of_grpc(request.metadata(), peer, &self.state)?)
    }

    /// One unary rpc through the balancer, within the client's `grpc-timeout` when it sent one.
    async fn unary<R>(&self, request: Request<R>) -> Result<Response<R::Reply>, Status>
    where
        R: Rpc<Reply: Send>,
    {
        let who = self.caller(&request)?;
        let timeout = grpc_timeout(request.metadata());
        let call = self
            .state
            .upstream
            .call(request.into_inner(), who.bearer.as_ref());
        let answer = within(timeout, call).await?;
        let mut response = Response::new(answer.message);
        mark(&mut response, answer.backend);
        Ok(response)
    }

    /// A create or publish, with the client's `idempotency-key` metadata passed on and the
    /// backend's `idempotent-replayed: true` passed back.
    async fn write<R>(&self, request: Request<R>) -> Result<Response<v1::Event>, Status>
    where
        R: Rpc<Prepared = Bytes, Reply = v1::Event> + NewEvent,
    {
        let key = IdempotencyKey::from_metadata(request.metadata())?;
        let (metadata, extensions, message) = request.into_parts();
        let keyed = Keyed {
            request: message,
            key,
        };
        let answered = self
            .unary(Request::from_parts(metadata, extensions, keyed))
            .await?;
        let (mut metadata, (event, outcome), extensions) = answered.into_parts();
        if outcome == Outcome::Replayed {
            metadata.insert(REPLAYED_HEADER, MetadataValue::from_static("true"));
        }
        Ok(Response::from_parts(metadata, event, extensions))
    }
}

/// Every method, as tonic's server wants them; the unary ones the gateway need not read are
/// routed to `forward` before they reach this (see `grpc::router`), so only creates, publishes
/// and `Subscribe` arrive here in practice.
#[tonic::async_trait]
impl EventService for FrontDoor {
    async fn create_event(
        &self,
        request: Request<v1::CreateEventRequest>,
    ) -> Result<Response<v1::Event>, Status> {
        self.write(request).await
    }

    async fn get_event(
        &self,
        request: Request<v1::GetEventRequest>,
    ) -> Result<Response<v1::Event>, Status> {
        self.unary(request).await
    }

    async fn list_events(
        &self,
        request: Request<v1::ListEventsRequest>,
    ) -> Result<Response<v1::ListEventsResponse>, Status> {
        self.unary(request).await
    }

    async fn list_all_events(
        &self,
        request: Request<v1::ListAllEventsRequest>,
    ) -> Result<Response<v1::ListEventsResponse>, Status> {
        self.unary(request).await
    }

    async fn update_event(
        &self,
        request: Request<v1::UpdateEventRequest>,
    ) -> Result<Response<v1::Event>, Status> {
        self.unary(request).await
    }

    async fn delete_event(
        &self,
        request: Request<v1::DeleteEventRequest>,
    ) -> Result<Response<v1::DeleteEventResponse>, Status> {
        self.unary(request).await
    }

    async fn publish(
        &self,
        request: Request<v1::PublishRequest>,
    ) -> Result<Response<v1::Event>, Status> {
        self.write(request).await
    }

    async fn list_topic_events(
        &self,
        request: Request<v1::ListTopicEventsRequest>,
    ) -> Result<Response<v1::ListTopicEventsResponse>, Status> {
        self.unary(request).await
    }

    type SubscribeStream = subscribe::Events;

    async fn subscribe(
        &self,
        request: Request<v1::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let who = self.caller(&request)?;
        subscribe::open(&self.state, who, request.into_inner()).await
    }

    async fn list_changes(
        &self,
        request: Request<v1::ListChangesRequest>,
    ) -> Result<Response<v1::ListChangesResponse>, Status> {
        self.unary(request).await
    }

    type WatchChangesStream = subscribe::Items<v1::Change>;

    async fn watch_changes(
        &self,
        request: Request<v1::WatchChangesRequest>,
    ) -> Result<Response<Self::WatchChangesStream>, Status> {
        let who = self.caller(&request)?;
        subscribe::open(&self.state, who, request.into_inner()).await
    }

    async fn presence(
        &self,
        request: Request<v1::PresenceRequest>,
    ) -> Result<Response<v1::PresenceResponse>, Status> {
        self.unary(request).await
    }

    async fn report_presence(
        &self,
        request: Request<v1::ReportPresenceRequest>,
    ) -> Result<Response<v1::ReportPresenceResponse>, Status> {
        self.unary(request).await
    }

    /// One backend's figures (the balancer's pick); `/load` has them all.
    async fn stats(
        &self,
        request: Request<v1::StatsRequest>,
    ) -> Result<Response<v1::StatsResponse>, Status> {
        self.unary(request).await
    }
}

/// The gateway's own refusals (a token, a rate, a limit) in gRPC terms: the code they stand for.
impl From<ApiError> for Status {
    fn from(err: ApiError) -> Status {
        Status::new(err.code, err.message)
    }
}
