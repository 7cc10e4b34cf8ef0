//! Retention's seam between backends and gateway: a subscription asked to start before the
//! oldest event a topic still keeps is refused with OUT_OF_RANGE carrying that oldest `seq` in
//! one typed metadata entry, so the gateway can tell its client and resume from there.

use tonic::{Code, Status, metadata::MetadataValue};

/// The metadata entry with the oldest kept `seq`.
const OLDEST_AVAILABLE: &str = "events-oldest-available";
/// A multi-topic subscription's entries, one per topic: `<oldest kept seq> <topic>`.
const TOPIC_OLDEST_AVAILABLE: &str = "events-topic-oldest-available";
/// Topics one refusal names at most (the rest are named when the client asks again).
const MAX_TOPIC_GAPS: usize = 64;

/// What a reader asked for and what is still kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// The `seq` the reader wanted to resume after.
    pub requested_after: u64,
    /// The oldest `seq` kept; everything from it on is there.
    pub oldest_available: u64,
}

impl Gap {
    /// The backend's refusal of a subscription that would miss events.
    pub fn into_status(self) -> Status {
        let mut status = Status::out_of_range(format!(
            "events after seq {} are no longer kept: the oldest kept is {}; subscribe again after seq {}",
            self.requested_after,
            self.oldest_available,
            self.oldest_available - 1
        ));
        status
            .metadata_mut()
            .insert(OLDEST_AVAILABLE, MetadataValue::from(self.oldest_available));
        status
    }

    /// The gap a refusal names, if it is one.
    pub fn from_status(status: &Status, requested_after: u64) -> Option<Gap> {
        if status.code() != Code::OutOfRange {
            return None;
        }
        let oldest_available = status
            .metadata()
            .get(OLDEST_AVAILABLE)?
            .to_str()
            .ok()?
            .parse()
            .ok()?;
        Some(Gap {
            requested_after,
            oldest_available,
        })
    }

    /// Where to resume: just before the oldest kept event.
    pub fn resume_after(&self) -> u64 {
        self.oldest_available.saturating_sub(1)
    }
}

/// A topic of a multi-topic subscription whose place retention has passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicGap {
    pub topic: String,
    pub gap: Gap,
}

impl TopicGap {
    /// The backend's refusal of a multi-topic subscription that would miss events of these
    /// topics (the first `MAX_TOPIC_GAPS`; a client that resumes them is told of the rest).
    pub fn into_status(gaps: &[TopicGap]) -> Status {
        let mut status = Status::out_of_range(format!(
            "events of {} topic(s) after the places asked for are no longer kept: subscribe \
             again after each one's oldest kept seq - 1",
            gaps.len()
        ));
        for TopicGap { topic, gap } in gaps.iter().take(MAX_TOPIC_GAPS) {
            // Topic names are ASCII without spaces (`[A-Za-z0-9._:-]`).
            if let Ok(value) = format!("{} {topic}", gap.oldest_available).parse() {
                status.metadata_mut().append(TOPIC_OLDEST_AVAILABLE, value);
            }
        }
        status
    }

    /// The topics a refusal names, each with the place asked for (`asked`).
    pub fn from_status(status: &Status, asked: impl Fn(&str) -> u64) -> Vec<TopicGap> {
        if status.code() != Code::OutOfRange {
            return Vec::new();
        }
        status
            .metadata()
            .get_all(TOPIC_OLDEST_AVAILABLE)
            .iter()
            .filter_map(|value| {
                let (oldest, topic) = value.to_str().ok()?.split_once(' ')?;
                Some(TopicGap {
                    topic: topic.to_owned(),
                    gap: Gap {
                        requested_after: asked(topic),
                        oldest_available: oldest.parse().ok()?,
                    },
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_survives_the_status_round_trip() {
        let gap = Gap {
            requested_after: 3,
            oldest_available: 41,
        };
        assert_eq!(Gap::from_status(&gap.into_status(), 3), Some(gap));
        assert_eq!(gap.resume_after(), 40);
        assert_eq!(Gap::from_status(&Status::out_of_range("other"), 3), None);
        assert_eq!(Gap::from_status(&Status::not_found("x"), 3), None);
    }

    #[test]
    fn topic_gaps_survive_the_status_round_trip() {
        let gaps = vec![
            TopicGap {
                topic: "orders.eu".into(),
                gap: Gap {
                    requested_after: 2,
                    oldest_available: 10,
                },
            },
            TopicGap {
                topic: "alerts".into(),
                gap: Gap {
                    requested_after: 0,
                    oldest_available: 4,
                },
            },
        ];
        let status = TopicGap::into_status(&gaps);
        let asked = |topic: &str| if topic == "alerts" { 0 } else { 2 };
        assert_eq!(TopicGap::from_status(&status, asked), gaps);
        assert!(TopicGap::from_status(&Status::out_of_range("x"), asked).is_empty());
    }
}
