//! What a verified caller may do: act on its own events only, publish and read the topics its
//! `events` claim names (`orders` exact, `orders.*` under `orders.`, `*` all), reach the
//! operational endpoints when it is an admin. Anonymous mode allows everything, as before.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use super::keys::{LEEWAY_SECS, Rejected, Verifier};
use crate::topics::{Pattern, matches, rights_topic};

/// The claims a token carries (`sub` and `exp` required).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
    #[serde(default)]
    pub events: EventsClaim,
}

/// The `aud` claim: one audience, or several (RFC 7519, 4.1.3); with `--jwt-audience`, a token
/// is accepted when ours is among them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl From<String> for Audience {
    fn from(audience: String) -> Self {
        Audience::One(audience)
    }
}

impl From<&str> for Audience {
    fn from(audience: &str) -> Self {
        Audience::One(audience.to_owned())
    }
}

/// The `events` claim: topic patterns and the admin flag.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsClaim {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscribe: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admin: bool,
}

/// A verified token's user and rights.
#[derive(Debug, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub rights: EventsClaim,
    /// When the token stops being accepted (its `exp` and the clock-skew leeway every check
    /// allows): a stream opened with it ends then.
    pub valid_until: SystemTime,
}

/// Who a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Anonymous mode: anyone may act as anyone.
    Anyone,
    User(Arc<Identity>),
}

/// A valid caller without the right: 403 / PERMISSION_DENIED. The text is for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

/// The token of an `Authorization` value (`Bearer <token>`, scheme case-insensitive); `None`
/// for any other scheme.
pub fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn any_match(patterns: &[String], topic: &str) -> bool {
    patterns.iter().any(|p| matches(p, topic))
}

impl Caller {
    /// The owner a request acts for. Anonymous: as given (empty: everyone's, for lists). Token:
    /// the caller; naming another user is denied.
    pub fn owner(&self, requested: &str) -> Result<String, Denied> {
        match self {
            Caller::Anyone => Ok(requested.to_owned()),
            Caller::User(who) if requested.is_empty() || requested == who.user => {
                Ok(who.user.clone())
            }
            Caller::User(_) => Err(Denied("userId names another user".into())),
        }
    }

    pub fn may_publish(&self, topic: &str) -> Result<(), Denied> {
        match self {
            Caller::Anyone => Ok(()),
            Caller::User(who) if any_match(&who.rights.publish, topic) => Ok(()),
            Caller::User(_) => Err(Denied(format!("token may not publish to {topic:?}"))),
        }
    }

    fn may_subscribe(&self, topic: &str) -> bool {
        match self {
            Caller::Anyone => true,
            Caller::User(who) => any_match(&who.rights.subscribe, topic),
        }
    }

    /// Whether every topic `pattern` matches is within the subscribe rights.
    fn may_subscribe_all(&self, pattern: &Pattern) -> bool {
        match self {
            Caller::Anyone => true,
            Caller::User(who) => who.rights.subscribe.iter().any(|r| pattern.within(r)),
        }
    }

    /// Listing every user's events: an admin (anyone, in anonymous mode).
    pub fn may_list_everyone(&self) -> Result<(), Denied> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(Denied(
                "listing every user's events needs an admin token".into(),
            ))
        }
    }

    /// How long the caller's token is still accepted: `None` in anonymous mode (no token to
    /// expire), zero once it has expired.
    pub fn remaining(&self) -> Option<Duration> {
        match self {
            Caller::Anyone => None,
            Caller::User(who) => Some(
                who.valid_until
                    .duration_since(SystemTime::now())
                    .unwrap_or_default(),
            ),
        }
    }

    /// Anonymous mode's anyone, or a token with the admin claim.
    pub fn is_admin(&self) -> bool {
        match self {
            Caller::Anyone => true,
            Caller::User(who) => who.rights.admin,
        }
    }
}

/// The configured mode, keys and public exceptions.
#[derive(Debug)]
pub struct Auth {
    pub(super) verifier: Option<Verifier>,
    pub(super) public_topics: Vec<String>,
    pub(super) public_ops: bool,
}

impl Auth {
    /// Anonymous mode: every request is `Caller::Anyone`.
    pub fn anonymous() -> Auth {
        Auth {
            verifier: None,
            public_topics: Vec::new(),
            public_ops: true,
        }
    }

    /// Whether requests need a token.
    pub fn token_mode(&self) -> bool {
        self.verifier.is_some()
    }

    /// The caller a request's token (if any) names. In anonymous mode the token is ignored.
    pub fn caller(&self, token: Option<&str>) -> Result<Caller, Rejected> {
        let Some(verifier) = &self.verifier else {
            return Ok(Caller::Anyone);
        };
        let token = token.ok_or(Rejected::Missing)?;
        let claims = verifier.verify(token)?;
        Ok(Caller::User(Arc::new(Identity {
            user: claims.sub,
            rights: claims.events,
            // Checks compare whole seconds: a token is accepted through the second of
            // `exp` plus the leeway, and refused from the next one.
            valid_until: UNIX_EPOCH
                + Duration::from_secs(claims.exp.saturating_add(LEEWAY_SECS).saturating_add(1)),
        })))
    }

    /// Whether `topic` may be read without a token (a presence topic as its topic).
    pub fn public_topic(&self, topic: &str) -> bool {
        any_match(&self.public_topics, rights_topic(topic))
    }

    /// Topic history and subscriptions: a subscribe match, or a public topic (a presence
    /// topic's rights are its topic's).
    pub fn may_read(&self, caller: &Caller, topic: &str) -> Result<(), Denied> {
        if caller.may_subscribe(rights_topic(topic)) || self.public_topic(topic) {
            Ok(())
        } else {
            Err(Denied(format!("token may not read {topic:?}")))
        }
    }

    /// A multi-topic stream's pattern: every topic it matches within the subscribe rights or
    /// the public topics (a pattern wider than both is denied, named).
    pub fn may_read_pattern(&self, caller: &Caller, pattern: &Pattern) -> Result<(), Denied> {
        if caller.may_subscribe_all(pattern) || self.public_pattern(pattern) {
            Ok(())
        } else {
            Err(Denied(format!(
                "token may not read every topic of {:?}",
                pattern.as_str()
            )))
        }
    }

    /// Whether every topic of `pattern` may be read without a token.
    pub fn public_pattern(&self, pattern: &Pattern) -> bool {
        self.public_topics.iter().any(|p| pattern.within(p))
    }

    /// `/load`, `/benchmark`, `/memstats`, `/metrics` and the `Stats` rpc.
    pub fn may_operate(&self, caller: &Caller) -> Result<(), Denied> {
        if self.public_ops || caller.is_admin() {
            Ok(())
        } else {
            Err(Denied("operational endpoints need an admin token".into()))
        }
    }

    /// Whether the operational endpoints are open without a token.
    pub fn public_ops(&self) -> bool {
        self.public_ops || !self.token_mode()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(publish: &[&str], subscribe: &[&str]) -> Caller {
        Caller::User(Arc::new(Identity {
            user: "alice".into(),
            rights: EventsClaim {
                publish: publish.iter().map(|s| s.to_string()).collect(),
                subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
                admin: false,
            },
            valid_until: SystemTime::now() + Duration::from_secs(60),
        }))
    }

    #[test]
    fn topic_patterns() {
        assert!(matches("orders", "orders"));
        assert!(!matches("orders", "orders.eu"));
        assert!(matches("orders.*", "orders.eu"));
        assert!(matches("orders.*", "orders.eu.north"));
        assert!(!matches("orders.*", "orders"));
        assert!(!matches("orders.*", "ordersx"));
        assert!(matches("*", "anything"));
        // A star anywhere else is a literal character, not a wildcard.
        assert!(!matches("ord*", "orders"));
    }

    #[test]
    fn owners_are_the_caller_or_denied() {
        let alice = user(&[], &[]);
        assert_eq!(alice.owner("").unwrap(), "alice");
        assert_eq!(alice.owner("alice").unwrap(), "alice");
        assert!(alice.owner("bob").is_err());
        assert_eq!(Caller::Anyone.owner("bob").unwrap(), "bob");
        assert_eq!(Caller::Anyone.owner("").unwrap(), "");
    }

    #[test]
    fn topic_rights_and_public_topics() {
        let auth = Auth {
            verifier: None,
            public_topics: vec!["news.*".into()],
            public_ops: false,
        };
        let alice = user(&["orders.*"], &["orders"]);
        assert!(alice.may_publish("orders.eu").is_ok());
        assert!(alice.may_publish("orders").is_err());
        assert!(auth.may_read(&alice, "orders").is_ok());
        assert!(auth.may_read(&alice, "orders.eu").is_err());
        assert!(auth.may_read(&alice, "news.today").is_ok());
        assert!(auth.may_operate(&alice).is_err());
        assert!(auth.may_operate(&Caller::Anyone).is_ok());
    }
}
