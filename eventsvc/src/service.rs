//! The `events.v1.EventService` implementation: validates each request, calls the store, and
//! maps store errors to gRPC statuses (the one place that mapping lives).

use std::sync::Arc;

use eventsys::{
    auth::Auth,
    gap::{Gap, TopicGap},
    v1::{self, event_service_server::EventService},
    write_key::{IdempotencyKey, KeyConflict},
};
use tonic::{Request, Response, Status};

/// Subscribe's events (WatchChanges' changes) decoded back into messages, for tonic's
/// generated path.
pub(crate) type DecodedStream<M> = futures::stream::Map<
    EventStream,
    fn(Result<crate::subscribe::Encoded, Status>) -> Result<M, Status>,
>;

use futures::StreamExt;

use crate::{
    auth::{Who, denied},
    convert,
    feed::{EventStream, Feed, StreamOf},
    keyed::{self, KeyPolicy, Write, Written},
    presence::{self, PresencePolicy},
    stats::Stats,
    store::{EventStore, StoreError},
    validate::{self, FieldError, Subscribing},
};

mod history;

use history::{fitting, history};

/// The service: validation and rights here, history pages in `history`, subscriptions in the
/// feed.
pub(crate) struct EventsApi {
    store: Arc<dyn EventStore>,
    stats: Arc<Stats>,
    feed: Feed,
    auth: Arc<Auth>,
    keys: KeyPolicy,
    presence: PresencePolicy,
}

impl EventsApi {
    pub(crate) fn new(
        store: Arc<dyn EventStore>,
        stats: Arc<Stats>,
        feed: Feed,
        auth: Arc<Auth>,
        keys: KeyPolicy,
        presence: PresencePolicy,
    ) -> Self {
        Self {
            store,
            stats,
            feed,
            auth,
            keys,
            presence,
        }
    }

    /// Subscribe: checks the topic (patterns) and the caller's right, refuses a start
    /// retention no longer covers, then streams the events, each encoded once.
    pub(crate) async fn subscription(
        &self,
        request: Request<v1::SubscribeRequest>,
    ) -> Result<EventStream, Status> {
        let who = Who::of(&request);
        let (selection, at, one_topic) = match validate::subscription(request.into_inner())? {
            Subscribing::Topic { topic, after_seq } => {
                self.may_read(&who, &topic)?;
                let dropped = self.store.dropped_through(&topic).await?;
                if after_seq < dropped {
                    return Err(Gap {
                        requested_after: after_seq,
                        oldest_available: dropped + 1,
                    }
                    .into_status());
                }
                return Ok(self
                    .feed
                    .subscribe(StreamOf::Topic(topic), after_seq, who.remaining()));
            }
            Subscribing::Selected {
                selection,
                at,
                one_topic,
            } => (selection, at, one_topic),
        };
        for pattern in selection.patterns().iter() {
            match &who.0 {
                Some(caller) => self
                    .auth
                    .may_read_pattern(caller, pattern)
                    .map_err(denied)?,
                None if self.auth.public_pattern(pattern) => {}
                None => return Err(Status::unauthenticated("a token is required")),
            }
        }
        // Only places the request names can be passed by retention: a topic it does not
        // name starts at its oldest kept event.
        let gaps: Vec<TopicGap> = self
            .feed
            .topics_of(selection.patterns())
            .await?
            .into_iter()
            .filter_map(|head| {
                let asked = at.named(&head.topic)?;
                (asked < head.dropped_through).then(|| TopicGap {
                    topic: head.topic,
                    gap: Gap {
                        requested_after: asked,
                        oldest_available: head.dropped_through + 1,
                    },
                })
            })
            .collect();
        match gaps.first() {
            Some(first) if one_topic => return Err(first.gap.into_status()),
            Some(_) => return Err(TopicGap::into_status(&gaps)),
            None => {}
        }
        Ok(self
            .feed
            .subscribe_selection(selection, at, who.remaining()))
    }

    /// WatchChanges: checks whose feed the caller may read, refuses a start retention no
    /// longer covers, then streams the feed's changes, each encoded once.
    pub(crate) async fn watching(
        &self,
        request: Request<v1::WatchChangesRequest>,
    ) -> Result<EventStream, Status> {
        let who = Who::of(&request);
        let req = request.into_inner();
        let user = self.feed_user(&who, req.user_id)?;
        let dropped = self.store.changes_dropped_through(&user).await?;
        if req.after_position < dropped {
            return Err(Gap {
                requested_after: req.after_position,
                oldest_available: dropped + 1,
            }
            .into_status());
        }
        Ok(self
            .feed
            .subscribe(StreamOf::Changes(user), req.after_position, who.remaining()))
    }

    /// The user whose change feed a request names: in token mode the caller (another user is
    /// denied), else the one given, which is required.
    fn feed_user(&self, who: &Who, user_id: String) -> Result<String, Status> {
        let user = who.caller()?.owner(&user_id).map_err(denied)?;
        Ok(validate::feed_user(user)?)
    }

    /// One page of events (of `owner`, or everyone's), for ListEvents and ListAllEvents.
    async fn list_page(
        &self,
        owner: Option<String>,
        limit: u32,
        page_token: String,
    ) -> Result<Response<v1::ListEventsResponse>, Status> {
        let limit = validate::limit(limit)?;
        let cursor = Some(page_token).filter(|t| !t.is_empty());
        let mut page = self
            .store
            .list(owner.clone(), limit, cursor.clone())
            .await?;
        let mut events: Vec<v1::Event> = page.events.into_iter().map(convert::event).collect();
        let fits = fitting(&events);
        if fits < events.len() {
            // Cut by size: the same first events again, with the store's cursor after them.
            page = self.store.list(owner, fits, cursor).await?;
            events = page.events.into_iter().map(convert::event).collect();
        }
        Ok(Response::new(v1::ListEventsResponse {
            events,
            next_page_token: page.next.unwrap_or_default(),
        }))
    }

    /// A write's reply, its replays counted.
    fn answer(&self, written: Written) -> Response<v1::Event> {
        if written.is_replay() {
            self.stats.replayed();
        }
        written.into_response()
    }

    /// Topic history and subscriptions: a subscribe right, or a public topic.
    fn may_read(&self, who: &Who, topic: &str) -> Result<(), Status> {
        match &who.0 {
            Some(caller) => self.auth.may_read(caller, topic).map_err(denied),
            None if self.auth.public_topic(topic) => Ok(()),
            None => Err(Status::unauthenticated("a token is required")),
        }
    }
}

impl From<StoreError> for Status {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound => Status::not_found("event not found"),
            StoreError::AlreadyExists => {
                Status::already_exists("an event with this id exists with other content")
            }
            StoreError::Unsupported(reason) => Status::failed_precondition(reason),
            StoreError::Full { .. } => {
                tracing::error!(error = %err, "store full: refusing writes");
                Status::unavailable("store is full")
            }
            StoreError::KeyReused => KeyConflict::Reused.status(),
            StoreError::KeyInFlight => KeyConflict::InFlight.status(),
            StoreError::PreconditionFailed { current } => {
                let mut status = Status::failed_precondition(match current {
                    Some(revision) => format!("the event is at revision {revision}"),
                    None => "event not found".to_owned(),
                });
                status.metadata_mut().insert(
                    eventsys::REVISION_METADATA,
                    current.unwrap_or(0).to_string().parse().expect("digits"),
                );
                status
            }
            StoreError::InvalidCursor => {
                Status::invalid_argument("page_token is not a token this service issued")
            }
            // Details stay in the log: driver messages and file paths are not for clients.
            StoreError::Unavailable { .. } => {
                tracing::warn!(error = %err, "store unavailable");
                Status::unavailable("store unavailable, try again")
            }
            StoreError::Corrupt { .. } | StoreError::Internal { .. } => {
                tracing::error!(error = %err, "store failure");
                Status::internal("internal error")
            }
        }
    }
}

impl From<FieldError> for Status {
    fn from(err: FieldError) -> Self {
        Status::invalid_argument(err.0)
    }
}

#[tonic::async_trait]
impl EventService for EventsApi {
    async fn create_event(
        &self,
        request: Request<v1::CreateEventRequest>,
    ) -> Result<Response<v1::Event>, Status> {
        let who = Who::of(&request);
        let key = IdempotencyKey::from_metadata(request.metadata())?;
        let mut req = request.into_inner();
        let caller = who.caller()?;
        req.user_id = caller.owner(&req.user_id).map_err(denied)?;
        let new = validate::create(req)?;
        let key = key.map(|key| (key, keyed::scope(caller, &new.user_id)));
        let written = self.keys.write(&*self.store, Write::Create, new, key);
        Ok(self.answer(written.await?))
    }

    async fn get_event(
        &self,
        request: Request<v1::GetEventRequest>,
    ) -> Result<Response<v1::Event>, Status> {
        let who = Who::of(&request);
        let req = request.into_inner();
        let id = validate::id(&req.id)?;
        let owner = validate::owner(who.caller()?.owner(&req.user_id).map_err(denied)?)?;
        let event = self.store.get(id, owner).await?;
        Ok(Response::new(convert::event(event)))
    }

    async fn list_events(
        &self,
        request: Request<v1::ListEventsRequest>,
    ) -> Result<Response<v1::ListEventsResponse>, Status> {
        let who = Who::of(&request);
        let req = request.into_inner();
        let owner = validate::owner(who.caller()?.owner(&req.user_id).map_err(denied)?)?;
        self.list_page(owner, req.limit, req.page_token).await
    }

    async fn list_all_events(
        &self,
        request: Request<v1::ListAllEventsRequest>,
    ) -> Result<Response<v1::ListEventsResponse>, Status> {
        Who::of(&request)
            .caller()?
            .may_list_everyone()
            .map_err(denied)?;
        let req = request.into_inner();
        self.list_page(None, req.limit, req.page_token).await
    }

    async fn update_event(
        &self,
        request: Request<v1::UpdateEventRequest>,
    ) -> Result<Response<v1::Event>, Status> {
        let who = Who::of(&request);
        let req = request.into_inner();
        let id = validate::id(&req.id)?;
        let owner = validate::owner(who.caller()?.owner(&req.user_id).map_err(denied)?)?;
        let patch = validate::patch(req.title, req.description, req.completed)?;
        let when = validate::precondition(req.if_revision, req.if_exists);
        let event = self.store.update(id, owner, patch, when).await?;
        Ok(Response::new(convert::event(event)))
    }

    async fn delete_event(
        &self,
        request: Request<v1::DeleteEventRequest>,
    ) -> Result<Response<v1::DeleteEventResponse>, Status> {
        let who = Who::of(&request);
        let req = request.into_inner();
        let id = validate::id(&req.id)?;
        let owner = validate::owner(who.caller()?.owner(&req.user_id).map_err(denied)?)?;
        let when = validate::precondition(req.if_revision, req.if_exists);
        self.store.delete(id, owner, when).await?;
        Ok(Response::new(v1::DeleteEventResponse {}))
    }

    async fn publish(
        &self,
        request: Request<v1::PublishRequest>,
    ) -> Result<Response<v1::Event>, Status> {
        let who = Who::of(&request);
        let key = IdempotencyKey::from_metadata(request.metadata())?;
        let mut req = request.into_inner();
        let caller = who.caller()?;
        caller.may_publish(&req.topic).map_err(denied)?;
        req.user_id = caller.owner(&req.user_id).map_err(denied)?;
        let new = validate::publish(req)?;
        let key = key.map(|key| (key, keyed::scope(caller, &new.user_id)));
        let written = self.keys.write(&*self.store, Write::Publish, new, key);
        Ok(self.answer(written.await?))
    }

    async fn list_topic_events(
        &self,
        request: Request<v1::ListTopicEventsRequest>,
    ) -> Result<Response<v1::ListTopicEventsResponse>, Status> {
        let who = Who::of(&request);
        let req = request.into_inner();
        validate::readable_topic(&req.topic)?;
        self.may_read(&who, &req.topic)?;
        let limit = validate::limit(req.limit)?;
        let filter = validate::filter(&req.filter)?;
        let page = history::topic_events(&*self.store, &req.topic, req.after_seq, limit, filter);
        Ok(Response::new(page.await?))
    }

    async fn list_changes(
        &self,
        request: Request<v1::ListChangesRequest>,
    ) -> Result<Response<v1::ListChangesResponse>, Status> {
        let who = Who::of(&request);
        let req = request.into_inner();
        let user = self.feed_user(&who, req.user_id)?;
        let limit = validate::limit(req.limit)?;
        let store = &self.store;
        let user = user.as_str();
        let page = history(
            req.after_position,
            limit,
            || store.changes_dropped_through(user),
            |after, n| async move {
                let stored = store.changes_after(user, after, n).await?;
                Ok(stored.into_iter().map(convert::change).collect())
            },
            |change: &v1::Change| change.position,
        )
        .await?;
        Ok(Response::new(v1::ListChangesResponse {
            changes: page.items,
            more: page.more,
            oldest_available: page.oldest_available,
        }))
    }

    /// Reached only by a server composed without `SharedSubscribe`, which serves this
    /// method with each event encoded once; here every event is decoded back for tonic.
    type SubscribeStream = DecodedStream<v1::Event>;

    async fn subscribe(
        &self,
        request: Request<v1::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let stream = self.subscription(request).await?;
        Ok(Response::new(stream.map(|item| item?.decode())))
    }

    /// As `subscribe`: reached only without `SharedSubscribe`.
    type WatchChangesStream = DecodedStream<v1::Change>;

    async fn watch_changes(
        &self,
        request: Request<v1::WatchChangesRequest>,
    ) -> Result<Response<Self::WatchChangesStream>, Status> {
        let stream = self.watching(request).await?;
        Ok(Response::new(stream.map(|item| item?.decode())))
    }

    async fn presence(
        &self,
        request: Request<v1::PresenceRequest>,
    ) -> Result<Response<v1::PresenceResponse>, Status> {
        let who = Who::of(&request);
        let v1::PresenceRequest { topic, count_only } = request.into_inner();
        validate::topic(&topic)?;
        self.may_read(&who, &topic)?;
        let alive_since = chrono::Utc::now() - self.presence.ttl;
        let now = self
            .store
            .presence(&topic, alive_since, !count_only)
            .await?;
        let crate::store::presence::Presence {
            count,
            subjects,
            gateways,
        } = now;
        Ok(Response::new(v1::PresenceResponse {
            topic,
            count,
            subjects: subjects
                .into_iter()
                .map(|p| v1::PresentSubject {
                    user_id: p.user_id,
                    connections: p.connections,
                    since: Some(convert::timestamp(p.since)),
                })
                .collect(),
            gateways,
        }))
    }

    async fn report_presence(
        &self,
        request: Request<v1::ReportPresenceRequest>,
    ) -> Result<Response<v1::ReportPresenceResponse>, Status> {
        // Gateways report; in token mode with an admin token.
        if !self.auth.public_ops() {
            let who = Who::of(&request);
            self.auth.may_operate(who.caller()?).map_err(denied)?;
        }
        let report = presence::report(request.into_inner())?;
        let reported = self.store.report_presence(report).await?;
        Ok(Response::new(v1::ReportPresenceResponse {
            resync: reported.resync,
        }))
    }

    async fn stats(
        &self,
        request: Request<v1::StatsRequest>,
    ) -> Result<Response<v1::StatsResponse>, Status> {
        if !self.auth.public_ops() {
            let who = Who::of(&request);
            self.auth.may_operate(who.caller()?).map_err(denied)?;
        }
        let uptime = self.stats.uptime();
        Ok(Response::new(v1::StatsResponse {
            in_flight: self.stats.in_flight(),
            request_count: self.stats.requests(),
            uptime: Some(prost_types::Duration {
                seconds: uptime.as_secs() as i64,
                nanos: uptime.subsec_nanos() as i32,
            }),
            resident_memory_bytes: eventsys::process::resident_memory(),
            subscribers: self.stats.subscribers(),
        }))
    }
}
