//! Our own PeakEwma, the algorithm of tower's `load::PeakEwma` and linkerd2-proxy's `ewma`: a
//! peak-sensitive, exponentially decaying estimate of a backend's round-trip time. Owning it
//! lets the balancer read the estimate as a number instead of through tower's private `Cost`.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use tokio::time::Instant;

/// One backend's RTT estimate, shared by the calls that update it.
#[derive(Debug, Clone)]
pub(crate) struct PeakEwma {
    estimate: Arc<Mutex<Estimate>>,
    decay_ns: f64,
}

#[derive(Debug)]
struct Estimate {
    rtt_ns: f64,
    updated: Instant,
}

impl Estimate {
    /// A sample above the estimate replaces it at once (the peak); one below pulls it down by
    /// a weight that grows with the time since the last update.
    fn observe(&mut self, rtt_ns: f64, decay_ns: f64) -> f64 {
        let now = Instant::now();
        self.rtt_ns = if self.rtt_ns < rtt_ns {
            rtt_ns
        } else {
            let elapsed = nanos(now.saturating_duration_since(self.updated));
            let decay = (-elapsed / decay_ns).exp();
            self.rtt_ns * decay + rtt_ns * (1.0 - decay)
        };
        self.updated = now;
        self.rtt_ns
    }
}

impl PeakEwma {
    /// `default_rtt` is the estimate before any call completes; `decay` how quickly a slow
    /// sample is forgotten.
    pub(crate) fn new(default_rtt: Duration, decay: Duration) -> Self {
        Self {
            estimate: Arc::new(Mutex::new(Estimate {
                rtt_ns: nanos(default_rtt),
                updated: Instant::now(),
            })),
            decay_ns: nanos(decay).max(1.0),
        }
    }

    /// The estimate now, in nanoseconds. Reading it decays it as an instant sample would, so
    /// a backend that stopped getting calls is not judged forever by its last slow one.
    pub(crate) fn rtt_ns(&self) -> f64 {
        self.lock().observe(0.0, self.decay_ns)
    }

    /// Starts timing one call: the sample is taken when the handle is dropped.
    pub(crate) fn start(&self) -> Handle {
        Handle {
            sent: Instant::now(),
            ewma: self.clone(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Estimate> {
        self.estimate.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Times one call from `PeakEwma::start` to its drop.
#[derive(Debug)]
pub(crate) struct Handle {
    sent: Instant,
    ewma: PeakEwma,
}

impl Drop for Handle {
    fn drop(&mut self) {
        let rtt = nanos(self.sent.elapsed());
        self.ewma.lock().observe(rtt, self.ewma.decay_ns);
    }
}

fn nanos(d: Duration) -> f64 {
    d.as_nanos() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: f64 = 1e6;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6 * b.max(1.0)
    }

    #[tokio::test(start_paused = true)]
    async fn starts_at_the_default_and_decays_towards_zero_when_idle() {
        let ewma = PeakEwma::new(Duration::from_millis(10), Duration::from_millis(500));
        assert!(close(ewma.rtt_ns(), 10.0 * MS));
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(close(ewma.rtt_ns(), 10.0 * MS / std::f64::consts::E));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slower_sample_is_taken_at_once_a_faster_one_by_the_time_elapsed() {
        let ewma = PeakEwma::new(Duration::from_millis(1), Duration::from_millis(500));
        let slow = ewma.start();
        tokio::time::advance(Duration::from_millis(40)).await;
        drop(slow);
        assert!(close(ewma.rtt_ns(), 40.0 * MS), "the peak is taken as is");

        // An instant sample 250 ms later weighs 1 - e^(-1/2).
        tokio::time::advance(Duration::from_millis(250)).await;
        drop(ewma.start());
        let expected = 40.0 * MS * (-0.5f64).exp();
        assert!(close(ewma.rtt_ns(), expected), "{}", ewma.rtt_ns());
    }
}
