//! Exponential backoff with jitter: the one rule for every "wait, then try again" in the
//! system (the gateway's resubscribes and catch-ups, the launcher's restarts). The shape is
//! linkerd2-proxy's `exp-backoff`: a pause that doubles from `min` up to `max`, of which a
//! `jitter` share is random so that many clients that failed together do not retry together.
//! Its bounds are checked once, when it is made, so no caller can build a pause of zero that
//! spins or a cap below its start.

use std::time::Duration;

/// How long to wait before each retry. Validated at construction ([`Backoff::new`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    jitter: f64,
}

/// Why a backoff's bounds were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidBackoff {
    /// A first pause of zero would retry in a tight loop.
    #[error("the backoff's first pause must be more than zero")]
    ZeroMin,
    /// The cap is below the first pause.
    #[error("the backoff's longest pause must be at least its first")]
    MaxBelowMin,
    /// The random share is outside 0..=1 (or not a number).
    #[error("the backoff's jitter must be a share from 0 to 1")]
    Jitter,
}

impl Backoff {
    /// Pauses doubling from `min` to `max`; a `jitter` share (0: none, 1: "full jitter") of each
    /// is random. The pause is never below `min` nor above `max`.
    pub const fn new(min: Duration, max: Duration, jitter: f64) -> Result<Self, InvalidBackoff> {
        if min.is_zero() {
            return Err(InvalidBackoff::ZeroMin);
        }
        if max.as_nanos() < min.as_nanos() {
            return Err(InvalidBackoff::MaxBelowMin);
        }
        // `!(a <= b)` so that NaN is refused too.
        if !(jitter >= 0.0 && jitter <= 1.0) {
            return Err(InvalidBackoff::Jitter);
        }
        Ok(Backoff { min, max, jitter })
    }

    /// The first pause.
    pub const fn min(&self) -> Duration {
        self.min
    }

    /// The longest pause.
    pub const fn max(&self) -> Duration {
        self.max
    }

    /// The pause before retry number `attempt` (0 for the first) without jitter: `min` doubled
    /// `attempt` times, capped at `max`.
    pub fn base(&self, attempt: u32) -> Duration {
        let factor = 2u32.checked_pow(attempt.min(31)).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// The pause before retry number `attempt`, given a uniform random `draw` in `0..1`: the
    /// base less a random part of its `jitter` share, never below `min`.
    pub fn pause(&self, attempt: u32, draw: f64) -> Duration {
        let base = self.base(attempt);
        let off = base.mul_f64(self.jitter * draw.clamp(0.0, 1.0));
        base.saturating_sub(off).max(self.min)
    }

    /// A fresh sequence of pauses, for one run of retries.
    pub fn attempts(&self) -> Attempts {
        Attempts {
            backoff: *self,
            attempt: 0,
        }
    }
}

/// The pauses of one run of retries: each [`next_pause`](Attempts::next_pause) is longer (up to the cap)
/// until [`reset`](Attempts::reset) after a success.
#[derive(Debug, Clone)]
pub struct Attempts {
    backoff: Backoff,
    attempt: u32,
}

impl Attempts {
    /// The pause before the next retry (random within its jitter share).
    pub fn next_pause(&mut self) -> Duration {
        let pause = self.backoff.pause(self.attempt, fastrand::f64());
        self.attempt = self.attempt.saturating_add(1);
        pause
    }

    /// The retry succeeded: the next failure starts again from the first pause.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn valid() -> impl Strategy<Value = Backoff> {
        (1u64..10_000, 0u64..100_000, 0.0f64..=1.0).prop_map(|(min, extra, jitter)| {
            let min = Duration::from_millis(min);
            Backoff::new(min, min + Duration::from_millis(extra), jitter).expect("valid")
        })
    }

    proptest! {
        #[test]
        fn every_pause_is_within_its_bounds(backoff in valid(), attempt in 0u32..200, draw in 0.0f64..1.0) {
            let pause = backoff.pause(attempt, draw);
            prop_assert!(pause >= backoff.min() && pause <= backoff.max(), "{pause:?} for {backoff:?}");
            prop_assert!(pause <= backoff.base(attempt));
        }

        #[test]
        fn the_base_doubles_until_the_cap(backoff in valid(), attempt in 0u32..200) {
            let (now, next) = (backoff.base(attempt), backoff.base(attempt + 1));
            prop_assert!(next >= now);
            prop_assert!(next == backoff.max() || next == now * 2, "{now:?} then {next:?}");
        }

        #[test]
        fn jitter_takes_at_most_its_share(backoff in valid(), attempt in 0u32..64, draw in 0.0f64..1.0) {
            let base = backoff.base(attempt);
            let floor = base.mul_f64(1.0 - backoff.jitter).max(backoff.min());
            // One nanosecond of float rounding either way.
            prop_assert!(backoff.pause(attempt, draw) + Duration::from_nanos(1) >= floor);
        }

        #[test]
        fn a_bad_jitter_is_refused(jitter in prop_oneof![-1e9f64..-1e-9, 1.000_001f64..1e9]) {
            prop_assert_eq!(
                Backoff::new(Duration::from_millis(1), Duration::from_millis(2), jitter),
                Err(InvalidBackoff::Jitter)
            );
        }
    }

    #[test]
    fn bad_bounds_are_refused() {
        let ms = Duration::from_millis;
        assert_eq!(
            Backoff::new(Duration::ZERO, ms(1), 0.5),
            Err(InvalidBackoff::ZeroMin)
        );
        assert_eq!(
            Backoff::new(ms(2), ms(1), 0.5),
            Err(InvalidBackoff::MaxBelowMin)
        );
        assert_eq!(
            Backoff::new(ms(1), ms(2), f64::NAN),
            Err(InvalidBackoff::Jitter)
        );
    }

    #[test]
    fn no_jitter_is_the_plain_doubling_and_reset_starts_over() {
        let ms = Duration::from_millis;
        let backoff = Backoff::new(ms(250), ms(5000), 0.0).expect("valid");
        let mut attempts = backoff.attempts();
        let pauses: Vec<_> = (0..7).map(|_| attempts.next_pause()).collect();
        assert_eq!(
            pauses,
            [250, 500, 1000, 2000, 4000, 5000, 5000].map(ms).to_vec()
        );
        attempts.reset();
        assert_eq!(attempts.next_pause(), ms(250));
    }

    #[test]
    fn full_jitter_spreads_pauses_over_the_whole_range() {
        let ms = Duration::from_millis;
        let backoff = Backoff::new(ms(10), ms(1000), 1.0).expect("valid");
        assert_eq!(backoff.pause(6, 0.0), ms(640));
        assert_eq!(backoff.pause(6, 0.5), ms(320));
        // Never below the first pause, however large the draw.
        assert_eq!(backoff.pause(6, 0.999_999_9), ms(10));
    }
}
