//! The front door's rules for the calls it passes on without reading them (`forward`). In
//! token mode it decodes each such request and applies, at the gateway, the rule REST applies
//! to the same request, before any backend sees it: a backend's own checks (which it applies
//! too) are then not the only ones between a caller and every user's events.

use eventsys::{topics::valid_topic, v1};
use prost::Message;

use crate::{
    api::{ApiError, Credentials},
    http::AppState,
};

/// A request the front door passes on, and what it asks of its caller.
pub(crate) trait Guarded: Message + Default {
    /// Ok when `who` may make this call; the refusal REST would give otherwise.
    fn guard(&self, who: &Credentials, state: &AppState) -> Result<(), ApiError>;
}

/// One user's events: the caller's own (a `user_id` naming someone else is 403).
fn owned_by_caller(who: &Credentials, user_id: &str) -> Result<(), ApiError> {
    who.caller()?.owner(user_id)?;
    Ok(())
}

/// A topic's history or presence: a subscribe right, or a public topic. A name that is no
/// topic is the backend's to refuse (400), before it reads anything.
fn topic_readable(who: &Credentials, state: &AppState, topic: &str) -> Result<(), ApiError> {
    if valid_topic(topic) {
        who.may_read(state, topic)
    } else {
        Ok(())
    }
}

/// Requests about one user's events (or change feed): the caller's own.
macro_rules! owned_by_caller {
    ($($request:ty),+) => {$(
        impl Guarded for $request {
            fn guard(&self, who: &Credentials, _: &AppState) -> Result<(), ApiError> {
                owned_by_caller(who, &self.user_id)
            }
        }
    )+};
}

owned_by_caller!(
    v1::GetEventRequest,
    v1::ListEventsRequest,
    v1::UpdateEventRequest,
    v1::DeleteEventRequest,
    v1::ListChangesRequest
);

impl Guarded for v1::ListAllEventsRequest {
    fn guard(&self, who: &Credentials, _: &AppState) -> Result<(), ApiError> {
        who.caller()?.may_list_everyone()?;
        Ok(())
    }
}

impl Guarded for v1::ListTopicEventsRequest {
    fn guard(&self, who: &Credentials, state: &AppState) -> Result<(), ApiError> {
        topic_readable(who, state, &self.topic)
    }
}

impl Guarded for v1::PresenceRequest {
    fn guard(&self, who: &Credentials, state: &AppState) -> Result<(), ApiError> {
        topic_readable(who, state, &self.topic)
    }
}

impl Guarded for v1::StatsRequest {
    fn guard(&self, who: &Credentials, state: &AppState) -> Result<(), ApiError> {
        who.may_operate(state)
    }
}

impl Guarded for v1::ReportPresenceRequest {
    fn guard(&self, who: &Credentials, state: &AppState) -> Result<(), ApiError> {
        who.may_operate(state)
    }
}
