//! The gateway's traffic as the dashboard charts it, read from the counters `/metrics` already
//! keeps (the request latency histogram, requests by status): nothing is counted twice on the
//! request path, and the page and Prometheus tell the same story.

use std::collections::BTreeMap;

use prometheus::core::Collector;

use crate::ops::Metrics;

/// Cumulative counts at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Sample {
    /// Every route's latency histogram summed: (upper bound in seconds, requests at most that
    /// slow); the last bound is infinite.
    buckets: Vec<(f64, u64)>,
    /// Error answers by status.
    errors: BTreeMap<u16, u64>,
}

impl Sample {
    pub(crate) fn of(metrics: &Metrics) -> Sample {
        let mut buckets: Vec<(f64, u64)> = Vec::new();
        let mut total = 0;
        for family in metrics.latency.collect() {
            for metric in family.get_metric() {
                let histogram = metric.get_histogram();
                total += histogram.get_sample_count();
                for (i, bucket) in histogram.get_bucket().iter().enumerate() {
                    if buckets.len() <= i {
                        buckets.push((bucket.upper_bound(), 0));
                    }
                    buckets[i].1 += bucket.cumulative_count();
                }
            }
        }
        buckets.push((f64::INFINITY, total));
        let mut errors = BTreeMap::new();
        for family in metrics.requests.collect() {
            for metric in family.get_metric() {
                let status = metric
                    .get_label()
                    .iter()
                    .find(|l| l.name() == "status")
                    .and_then(|l| l.value().parse::<u16>().ok())
                    .filter(|s| *s >= 400);
                if let Some(status) = status {
                    *errors.entry(status).or_default() += metric.get_counter().get_value() as u64;
                }
            }
        }
        Sample { buckets, errors }
    }

    pub(crate) fn requests(&self) -> u64 {
        self.buckets.last().map_or(0, |(_, n)| *n)
    }

    /// What happened between `earlier` and this sample.
    pub(crate) fn since(&self, earlier: &Sample) -> Sample {
        let before = |i: usize| earlier.buckets.get(i).map_or(0, |(_, n)| *n);
        Sample {
            buckets: self
                .buckets
                .iter()
                .enumerate()
                .map(|(i, (bound, n))| (*bound, n.saturating_sub(before(i))))
                .collect(),
            errors: self
                .errors
                .iter()
                .map(|(s, n)| {
                    (
                        *s,
                        n.saturating_sub(earlier.errors.get(s).copied().unwrap_or(0)),
                    )
                })
                .filter(|(_, n)| *n > 0)
                .collect(),
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
        let mut below = (0.0, 0u64);
        for &(bound, count) in &self.buckets {
            if count as f64 >= rank && count > below.1 {
                // The open last bucket reports its lower bound.
                if bound.is_infinite() {
                    return Some(below.0 * 1000.0);
                }
                let within = (rank - below.1 as f64) / (count - below.1) as f64;
                return Some((below.0 + (bound - below.0) * within.clamp(0.0, 1.0)) * 1000.0);
            }
            below = (bound, count);
        }
        None
    }

    /// Error answers by status, those that occurred.
    pub(crate) fn errors(&self) -> impl Iterator<Item = (u16, u64)> + '_ {
        self.errors.iter().map(|(s, n)| (*s, *n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_errors_of_an_interval() {
        let metrics = Metrics::new();
        let before = Sample::of(&metrics);
        let latency = metrics.latency.with_label_values(&["/events/{id}"]);
        for _ in 0..99 {
            latency.observe(0.0007);
        }
        metrics
            .latency
            .with_label_values(&["/events"])
            .observe(0.04);
        metrics
            .requests
            .with_label_values(&["/events", "POST", "503"])
            .inc();
        metrics
            .requests
            .with_label_values(&["/events/{id}", "GET", "200"])
            .inc_by(99);
        let interval = Sample::of(&metrics).since(&before);
        assert_eq!(interval.requests(), 100);
        let p50 = interval.quantile_ms(0.5).unwrap();
        assert!((0.5..=1.0).contains(&p50), "{p50}");
        let p99 = interval.quantile_ms(0.99).unwrap();
        assert!((0.5..=1.0).contains(&p99), "{p99}");
        assert!(interval.quantile_ms(1.0).unwrap() > 25.0);
        assert_eq!(interval.errors().collect::<Vec<_>>(), vec![(503, 1)]);
        let nothing = Sample::of(&metrics);
        assert_eq!(nothing.since(&nothing).quantile_ms(0.5), None);
    }
}
