//! Retention's seam between backends and gateway: a subscription asked to start before the
//! oldest event a topic still keeps is refused with OUT_OF_RANGE carrying that oldest `seq` in
//! one typed metadata entry, so the gateway can tell its client and resume from there.

use tonic::{Code, Status, metadata::MetadataValue};

/// The metadata entry with the oldest kept `seq`.
const OLDEST_AVAILABLE: &str = "events-oldest-available";

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
}
