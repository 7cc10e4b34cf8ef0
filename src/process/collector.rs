//! The process figures every Prometheus client exports under the same names, for both servers'
//! `/metrics`: CPU seconds (from `getrusage`, to the microsecond), resident memory and open
//! descriptors, read at each scrape. prometheus' own `ProcessCollector` counts CPU in clock
//! ticks (10 ms), which rounds a short run's CPU per request or delivery to nothing.

use std::sync::{Mutex, PoisonError};

use prometheus::{
    Counter, IntGauge,
    core::{Collector, Desc},
    proto::MetricFamily,
};

pub struct ProcessCollector {
    cpu_seconds: Counter,
    resident_memory: IntGauge,
    open_fds: IntGauge,
    /// One collection at a time: the CPU counter is brought up to date by adding what is new.
    collecting: Mutex<()>,
}

impl ProcessCollector {
    pub fn new() -> ProcessCollector {
        ProcessCollector {
            cpu_seconds: Counter::new(
                "process_cpu_seconds_total",
                "Total user and system CPU time spent in seconds",
            )
            .expect("valid metric"),
            resident_memory: IntGauge::new(
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
            )
            .expect("valid metric"),
            open_fds: IntGauge::new("process_open_fds", "Number of open file descriptors")
                .expect("valid metric"),
            collecting: Mutex::new(()),
        }
    }
}

impl Default for ProcessCollector {
    fn default() -> Self {
        Self::new()
    }
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        [
            self.cpu_seconds.desc(),
            self.resident_memory.desc(),
            self.open_fds.desc(),
        ]
        .concat()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _one = self
            .collecting
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let cpu = super::cpu_time().as_secs_f64();
        self.cpu_seconds
            .inc_by((cpu - self.cpu_seconds.get()).max(0.0));
        self.resident_memory.set(super::resident_memory() as i64);
        self.open_fds.set(super::open_fds() as i64);
        [
            self.cpu_seconds.collect(),
            self.resident_memory.collect(),
            self.open_fds.collect(),
        ]
        .concat()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_figures_are_collected_at_each_scrape() {
        let registry = prometheus::Registry::new();
        registry
            .register(Box::new(ProcessCollector::new()))
            .unwrap();
        let names: Vec<String> = registry
            .gather()
            .iter()
            .map(|f| f.name().to_owned())
            .collect();
        assert_eq!(
            names,
            [
                "process_cpu_seconds_total",
                "process_open_fds",
                "process_resident_memory_bytes"
            ]
        );
    }
}
