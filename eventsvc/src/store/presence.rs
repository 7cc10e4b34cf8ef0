//! Presence: who is subscribed to which topic, through which gateway, as every store keeps it.
//! Each gateway reports what changed among its members (one write per gateway per interval,
//! which also renews it); a subject's first connection anywhere and its last one gone are
//! recorded, in the same transaction, as `join` and `leave` events on the topic's presence
//! topic (`$presence.<topic>`), so they are stored, followed and resumed as any topic's. A
//! gateway that stops reporting is expired by whichever backend notices first, its members'
//! leaves recorded once (the gateway's row goes in the same transaction).

use chrono::{DateTime, Utc};

use super::{JsonObject, NewEvent};

pub use eventsys::topics::PRESENCE_PREFIX;

/// The presence topic of `topic`: where its joins and leaves are stored.
pub fn presence_topic(topic: &str) -> String {
    format!("{PRESENCE_PREFIX}{topic}")
}

/// One subject's connections to a topic through one gateway, as the gateway reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub topic: String,
    /// The token's `sub`; empty for anonymous subscribers (counted, never named).
    pub subject: String,
    /// 0: gone from this gateway.
    pub connections: u64,
    /// When its first connection through this gateway opened.
    pub since: DateTime<Utc>,
}

/// A gateway's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceReport {
    pub gateway: String,
    pub at: DateTime<Utc>,
    /// Every member the gateway has (members of it not listed are gone), rather than what
    /// changed: its first report, and any after the store asked for one.
    pub full: bool,
    pub members: Vec<Member>,
}

/// What a report did.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Reported {
    /// Joins and leaves it recorded, as stored (published) events.
    pub events: Vec<super::Event>,
    /// The store did not know the gateway (it had been expired): send every member next.
    pub resync: bool,
}

/// Who is on a topic now.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Presence {
    /// Open connections, anonymous ones included.
    pub count: u64,
    /// Named subjects, by id (empty when not asked for).
    pub subjects: Vec<Present>,
    /// Gateways with members on the topic.
    pub gateways: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Present {
    pub user_id: String,
    pub connections: u64,
    /// Its earliest connection's.
    pub since: DateTime<Utc>,
}

/// A subject's join or leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Join,
    Leave,
}

impl Change {
    /// What a subject's total connections going from `before` to `after` is, if anything.
    pub fn of(subject: &str, before: u64, after: u64) -> Option<Change> {
        if subject.is_empty() {
            return None;
        }
        match (before, after) {
            (0, 1..) => Some(Change::Join),
            (1.., 0) => Some(Change::Leave),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Change::Join => "join",
            Change::Leave => "leave",
        }
    }

    /// The event that records it, to be published on the presence topic.
    pub fn event(self, topic: &str, subject: &str) -> NewEvent {
        let mut data = JsonObject::new();
        data.insert("topic".into(), topic.into());
        NewEvent {
            user_id: subject.to_owned(),
            title: self.name().to_owned(),
            topic: presence_topic(topic),
            data: Some(data),
            ..NewEvent::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_named_subjects_first_and_last_connections_are_changes() {
        assert_eq!(Change::of("ann", 0, 1), Some(Change::Join));
        assert_eq!(Change::of("ann", 0, 3), Some(Change::Join));
        assert_eq!(Change::of("ann", 2, 0), Some(Change::Leave));
        assert_eq!(Change::of("ann", 1, 2), None);
        assert_eq!(Change::of("ann", 0, 0), None);
        assert_eq!(Change::of("", 0, 1), None);
        let event = Change::Leave.event("orders", "ann");
        assert_eq!(event.topic, "$presence.orders");
        assert_eq!(
            (event.title.as_str(), event.user_id.as_str()),
            ("leave", "ann")
        );
        assert_eq!(event.data.unwrap()["topic"], "orders");
    }
}
