//! The backend's gRPC health says whether it can serve: SERVING while its store answers,
//! NOT_SERVING while it does not (a database that went away: the gateway then sends nothing here
//! and its `/readyz` says so, rather than every request waiting for the database) and from the
//! start of a shutdown on. Beside it, `WRITER_HEALTH` is SERVING while this backend serves and
//! commits the writes of every backend on its store (SQLite's elected writer): the gateway
//! sends writes there first.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::store::StoreError;
use eventsys::{WRITER_HEALTH, v1::event_service_server::SERVICE_NAME};

/// How often the store is asked whether it answers.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// A store that has not answered by then is down (the MongoDB driver gives up on a server it
/// cannot reach after 2 s).
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The health reporter and what it reports. The lock guards the pair, so a probe that ends
/// after a shutdown began cannot report SERVING again.
#[derive(Clone)]
pub(crate) struct Readiness(Arc<Mutex<State>>);

struct State {
    health: HealthReporter,
    /// Shutting down: NOT_SERVING for good.
    leaving: bool,
    /// The store answered the last probe.
    store_answers: bool,
    /// The store said at the last probe that this process commits every backend's writes.
    writer: bool,
}

impl State {
    async fn report(&self) {
        let status = |on| {
            if on {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            }
        };
        let serving = !self.leaving && self.store_answers;
        // The event API by name (what the gateway watches) and the server as a whole ("").
        self.health
            .set_service_status(SERVICE_NAME, status(serving))
            .await;
        self.health.set_service_status("", status(serving)).await;
        self.health
            .set_service_status(WRITER_HEALTH, status(serving && self.writer))
            .await;
    }
}

impl Readiness {
    /// SERVING from now on, until the store stops answering or `leave`.
    pub(crate) async fn new(health: HealthReporter) -> Readiness {
        let state = State {
            health,
            leaving: false,
            store_answers: true,
            writer: false,
        };
        state.report().await;
        Readiness(Arc::new(Mutex::new(state)))
    }

    /// NOT_SERVING for good: the backend is shutting down.
    pub(crate) async fn leave(&self) {
        let mut state = self.0.lock().await;
        state.leaving = true;
        state.report().await;
    }

    /// What the last probe found: whether the store answers, and whether this process commits
    /// every backend's writes.
    async fn probed(&self, answers: bool, writer: bool) {
        let mut state = self.0.lock().await;
        if state.leaving || (state.store_answers, state.writer) == (answers, writer) {
            return;
        }
        state.store_answers = answers;
        state.writer = writer;
        state.report().await;
    }
}

/// Asks the store once a second until `stop` whether it answers (`ping`) and whether this
/// process commits every backend's writes (`writer`), and reports what it finds. Logs only the
/// changes.
pub(crate) async fn probe<F, P, W>(
    readiness: Readiness,
    ping: P,
    writer: W,
    stop: CancellationToken,
) where
    P: Fn() -> F,
    F: Future<Output = Result<(), StoreError>>,
    W: Fn() -> bool,
{
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut answered = true;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let answer = match tokio::time::timeout(PROBE_TIMEOUT, ping()).await {
            Ok(answer) => answer,
            Err(_) => Err(StoreError::Unavailable {
                op: "ping",
                reason: format!("no answer within {PROBE_TIMEOUT:?}"),
            }),
        };
        match (&answer, answered) {
            (Err(err), true) => tracing::warn!(
                error = %err,
                "the store does not answer: NOT_SERVING until it does"
            ),
            (Ok(()), false) => tracing::info!("the store answers again: SERVING"),
            _ => {}
        }
        answered = answer.is_ok();
        readiness.probed(answered, writer()).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use tonic::Request;
    use tonic_health::pb::{HealthCheckRequest, health_server::Health};

    use super::*;

    async fn status(service: &impl Health) -> i32 {
        status_of(service, SERVICE_NAME).await
    }

    async fn status_of(service: &impl Health, name: &str) -> i32 {
        let request = Request::new(HealthCheckRequest {
            service: name.to_owned(),
        });
        service.check(request).await.unwrap().into_inner().status
    }

    /// What a probed backend reports: its health service, its readiness, the switches for
    /// whether its store answers (a store that does not never answers at all) and whether it
    /// commits every backend's writes, and the probe's stop.
    struct Probed {
        service: tonic_health::server::HealthService,
        readiness: Readiness,
        answers: Arc<AtomicBool>,
        writer: Arc<AtomicBool>,
        stop: CancellationToken,
    }

    async fn probed() -> Probed {
        let health = HealthReporter::new();
        let service = tonic_health::server::HealthService::from_health_reporter(health.clone());
        let readiness = Readiness::new(health).await;
        let (answers, writer) = (
            Arc::new(AtomicBool::new(true)),
            Arc::new(AtomicBool::new(false)),
        );
        let stop = CancellationToken::new();
        let ping = {
            let answers = answers.clone();
            move || {
                let answers = answers.load(Ordering::SeqCst);
                async move {
                    if answers {
                        Ok(())
                    } else {
                        std::future::pending().await
                    }
                }
            }
        };
        let leads = {
            let writer = writer.clone();
            move || writer.load(Ordering::SeqCst)
        };
        tokio::spawn(probe(readiness.clone(), ping, leads, stop.clone()));
        Probed {
            service,
            readiness,
            answers,
            writer,
            stop,
        }
    }

    const SERVING: i32 = ServingStatus::Serving as i32;
    const NOT_SERVING: i32 = ServingStatus::NotServing as i32;

    #[tokio::test(start_paused = true)]
    async fn not_serving_while_the_store_does_not_answer_and_for_good_once_leaving() {
        let Probed {
            service,
            readiness,
            answers,
            writer: _,
            stop,
        } = probed().await;
        tokio::time::sleep(PROBE_INTERVAL * 2).await;
        assert_eq!(status(&service).await, SERVING);

        answers.store(false, Ordering::SeqCst);
        tokio::time::sleep(PROBE_INTERVAL + PROBE_TIMEOUT + PROBE_INTERVAL).await;
        assert_eq!(status(&service).await, NOT_SERVING, "store gone");

        answers.store(true, Ordering::SeqCst);
        tokio::time::sleep(PROBE_INTERVAL + PROBE_TIMEOUT).await;
        assert_eq!(status(&service).await, SERVING, "store back");

        readiness.leave().await;
        tokio::time::sleep(PROBE_INTERVAL * 3).await;
        assert_eq!(status(&service).await, NOT_SERVING, "leaving is for good");
        stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn the_writer_status_follows_the_store_and_the_backends_own_health() {
        let Probed {
            service,
            readiness,
            answers,
            writer,
            stop,
        } = probed().await;
        let says = || status_of(&service, WRITER_HEALTH);
        tokio::time::sleep(PROBE_INTERVAL * 2).await;
        assert_eq!(says().await, NOT_SERVING, "not elected");

        writer.store(true, Ordering::SeqCst);
        tokio::time::sleep(PROBE_INTERVAL * 2).await;
        assert_eq!(says().await, SERVING, "elected");

        answers.store(false, Ordering::SeqCst);
        tokio::time::sleep(PROBE_INTERVAL + PROBE_TIMEOUT + PROBE_INTERVAL).await;
        assert_eq!(says().await, NOT_SERVING, "store gone");

        answers.store(true, Ordering::SeqCst);
        tokio::time::sleep(PROBE_INTERVAL + PROBE_TIMEOUT).await;
        assert_eq!(says().await, SERVING, "store back");

        readiness.leave().await;
        assert_eq!(says().await, NOT_SERVING, "leaving");
        stop.cancel();
    }
}
