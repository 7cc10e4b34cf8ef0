//! What a run measured: every request's latency in an HDR histogram, outcomes by status, and
//! which backend served each; printed as a table or as JSON.

use std::{
    collections::BTreeMap,
    sync::{Mutex, PoisonError},
    time::Duration,
};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies are kept in microseconds, from 1 µs to 60 s at 3 significant figures.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// One finished request.
pub(crate) struct Outcome {
    pub latency: Duration,
    /// `None` when it succeeded; otherwise what went wrong (an HTTP status, a gRPC code, a
    /// transport error).
    pub error: Option<String>,
    pub backend: Option<String>,
}

#[derive(Default)]
struct Tally {
    latency: Option<Histogram<u64>>,
    ok: u64,
    errors: BTreeMap<String, u64>,
    backends: BTreeMap<String, u64>,
}

/// Collects outcomes from many tasks.
#[derive(Default)]
pub(crate) struct Recorder {
    tally: Mutex<Tally>,
}

impl Recorder {
    pub(crate) fn record(&self, outcome: Outcome) {
        let mut tally = self.tally.lock().unwrap_or_else(PoisonError::into_inner);
        let micros = (outcome.latency.as_micros() as u64).clamp(1, 60_000_000);
        tally
            .latency
            .get_or_insert_with(histogram)
            .saturating_record(micros);
        match outcome.error {
            None => tally.ok += 1,
            Some(error) => *tally.errors.entry(error).or_default() += 1,
        }
        if let Some(backend) = outcome.backend {
            *tally.backends.entry(backend).or_default() += 1;
        }
    }

    /// Adds `latency`, successes all, recorded elsewhere (by one task, without a lock each).
    pub(crate) fn absorb(&self, latency: &Histogram<u64>) {
        let mut tally = self.tally.lock().unwrap_or_else(PoisonError::into_inner);
        tally.ok += latency.len();
        let _ = tally.latency.get_or_insert_with(histogram).add(latency);
    }

    pub(crate) fn completed(&self) -> u64 {
        let tally = self.tally.lock().unwrap_or_else(PoisonError::into_inner);
        tally.ok + tally.errors.values().sum::<u64>()
    }

    pub(crate) fn report(&self, mode: &str, elapsed: Duration) -> Report {
        let tally = self.tally.lock().unwrap_or_else(PoisonError::into_inner);
        let latency = tally.latency.clone().unwrap_or_else(histogram);
        let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
        let requests = tally.ok + tally.errors.values().sum::<u64>();
        Report {
            mode: mode.to_owned(),
            requests,
            ok: tally.ok,
            errors: tally.errors.clone(),
            seconds: elapsed.as_secs_f64(),
            throughput: requests as f64 / elapsed.as_secs_f64().max(1e-9),
            latency_ms: Latency {
                p50: ms(0.5),
                p90: ms(0.9),
                p99: ms(0.99),
                p999: ms(0.999),
                max: latency.max() as f64 / 1000.0,
                mean: latency.mean() / 1000.0,
            },
            backends: tally.backends.clone(),
            extra: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub mode: String,
    pub requests: u64,
    pub ok: u64,
    /// Failed requests by what went wrong.
    pub errors: BTreeMap<String, u64>,
    pub seconds: f64,
    /// Requests per second.
    pub throughput: f64,
    pub latency_ms: Latency,
    /// Requests served per backend.
    pub backends: BTreeMap<String, u64>,
    /// Mode-specific figures (fan-out delivery, …).
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Report {
    pub(crate) fn failed(&self) -> u64 {
        self.errors.values().sum()
    }

    pub(crate) fn table(&self) -> String {
        let mut out = String::new();
        let mut line = |s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        let l = &self.latency_ms;
        line(format!("mode          {}", self.mode));
        line(format!(
            "requests      {} in {:.2} s ({} ok, {} failed)",
            self.requests,
            self.seconds,
            self.ok,
            self.failed()
        ));
        line(format!("throughput    {:.0} req/s", self.throughput));
        line(format!(
            "latency (ms)  p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  mean {:.2}",
            l.p50, l.p90, l.p99, l.p999, l.max, l.mean
        ));
        for (error, n) in &self.errors {
            line(format!("errors        {n} × {error}"));
        }
        let served: u64 = self.backends.values().sum();
        for (backend, n) in &self.backends {
            line(format!(
                "backend       {backend}  {n} ({:.1}%)",
                *n as f64 * 100.0 / served.max(1) as f64
            ));
        }
        for (key, value) in &self.extra {
            line(format!("{key:<13} {value}"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_percentiles() {
        let recorder = Recorder::default();
        for i in 1..=100 {
            recorder.record(Outcome {
                latency: Duration::from_millis(i),
                error: (i % 10 == 0).then(|| "503".to_owned()),
                backend: Some(format!("b{}", i % 2)),
            });
        }
        let report = recorder.report("t", Duration::from_secs(2));
        assert_eq!((report.requests, report.ok, report.failed()), (100, 90, 10));
        assert_eq!(report.errors["503"], 10);
        assert_eq!(report.backends["b0"] + report.backends["b1"], 100);
        assert!(
            (report.latency_ms.p50 - 50.0).abs() < 0.5,
            "{:?}",
            report.latency_ms
        );
        assert!((report.latency_ms.max - 100.0).abs() < 0.5);
        assert_eq!(report.throughput, 50.0);
        assert!(report.table().contains("errors        10 × 503"));
    }
}
