//! The gateway's traffic as the dashboard charts it: every routed request's time to its response
//! head in fixed buckets, and error answers by status, as plain counters that `track` bumps
//! (two atomic adds a request) and a stats stream samples once a second.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use http::StatusCode;

/// Upper bounds of the latency buckets, microseconds (the last one holds the rest).
const BOUNDS_US: [u64; 18] = [
    50,
    100,
    250,
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    u64::MAX,
];

/// Error statuses counted one by one: 400 to 599.
const FIRST_ERROR: u16 = 400;
const ERRORS: usize = 200;

pub(crate) struct Traffic {
    buckets: [AtomicU64; BOUNDS_US.len()],
    errors: [AtomicU64; ERRORS],
}

/// Counts at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sample {
    buckets: [u64; BOUNDS_US.len()],
    errors: [u64; ERRORS],
}

impl Default for Traffic {
    fn default() -> Self {
        Traffic {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            errors: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Traffic {
    pub(crate) fn observe(&self, elapsed: Duration, status: StatusCode) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_US.partition_point(|bound| *bound < micros);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        if let Some(error) = status.as_u16().checked_sub(FIRST_ERROR)
            && let Some(count) = self.errors.get(usize::from(error))
        {
            count.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn sample(&self) -> Sample {
        Sample {
            buckets: std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
            errors: std::array::from_fn(|i| self.errors[i].load(Ordering::Relaxed)),
        }
    }
}

impl Sample {
    pub(crate) fn requests(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// What happened between `earlier` and this sample.
    pub(crate) fn since(&self, earlier: &Sample) -> Sample {
        Sample {
            buckets: std::array::from_fn(|i| self.buckets[i].saturating_sub(earlier.buckets[i])),
            errors: std::array::from_fn(|i| self.errors[i].saturating_sub(earlier.errors[i])),
        }
    }

    /// The `q` quantile of the latencies, milliseconds, interpolated within its bucket as
    /// Prometheus's `histogram_quantile` does; `None` without requests.
    pub(crate) fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total = self.requests();
        if total == 0 {
            return None;
        }
        let rank = q * total as f64;
        let mut below = 0u64;
        for (i, count) in self.buckets.iter().enumerate() {
            if *count > 0 && (below + count) as f64 >= rank {
                let low = if i == 0 { 0 } else { BOUNDS_US[i - 1] };
                // The open last bucket reports its lower bound.
                let high = BOUNDS_US[i].min(BOUNDS_US[BOUNDS_US.len() - 2]).max(low);
                let within = ((rank - below as f64) / *count as f64).clamp(0.0, 1.0);
                return Some((low as f64 + (high - low) as f64 * within) / 1000.0);
            }
            below += count;
        }
        None
    }

    /// Error answers by status, those that occurred.
    pub(crate) fn errors(&self) -> impl Iterator<Item = (u16, u64)> + '_ {
        self.errors
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(i, n)| (FIRST_ERROR + i as u16, *n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_errors_of_an_interval() {
        let traffic = Traffic::default();
        let before = traffic.sample();
        for _ in 0..99 {
            traffic.observe(Duration::from_micros(700), StatusCode::OK);
        }
        traffic.observe(Duration::from_millis(40), StatusCode::SERVICE_UNAVAILABLE);
        let interval = traffic.sample().since(&before);
        assert_eq!(interval.requests(), 100);
        let p50 = interval.quantile_ms(0.5).unwrap();
        assert!((0.5..=1.0).contains(&p50), "{p50}");
        let p99 = interval.quantile_ms(0.99).unwrap();
        assert!((0.5..=1.0).contains(&p99), "{p99}");
        assert!(interval.quantile_ms(1.0).unwrap() > 25.0);
        assert_eq!(interval.errors().collect::<Vec<_>>(), vec![(503, 1)]);
        assert_eq!(Sample::since(&before, &before).quantile_ms(0.5), None);
    }
}
