//! How backends come and go: names are re-resolved periodically (a DNS name may stand for many
//! backends), and every address is health-checked (`grpc.health.v1` Check with a deadline, and
//! a Watch that reports NOT_SERVING the moment a backend starts draining); their outcomes insert
//! the backend into the balancers or remove it. A healthy backend is also asked whether it
//! commits every backend's writes (`WRITER_HEALTH`), which steers the writes balancer.

use std::{collections::HashSet, sync::Arc, time::Duration};

use eventsys::{WRITER_HEALTH, v1::event_service_server::SERVICE_NAME};
use tokio_util::sync::CancellationToken;
use tonic_health::pb::{
    HealthCheckRequest, HealthCheckResponse, health_check_response::ServingStatus,
    health_client::HealthClient,
};

use super::{
    Backend, UpstreamConfig,
    backend::{Down, Health},
    link::{Link, LinkSettings},
    membership::Membership,
};

/// Health checks in a row that must miss their deadline before a backend that still accepts
/// connections is taken out.
const SLOW_ANSWERS_TO_REMOVE: u32 = 3;

/// Resolves and checks backends until `shutdown`.
pub(crate) async fn run(
    membership: Arc<Membership>,
    config: Arc<UpstreamConfig>,
    shutdown: CancellationToken,
) {
    let links = Arc::new(link_settings(&config));
    let mut tick = tokio::time::interval(config.resolve_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => resolve(&membership, &config, &links, &shutdown).await,
        }
    }
    membership.stop_checkers();
}

/// Resolves every configured name; adds addresses that appeared and drops those that went.
/// A name that fails to resolve keeps its previous addresses: DNS trouble must not empty the
/// pool.
async fn resolve(
    membership: &Arc<Membership>,
    config: &Arc<UpstreamConfig>,
    links: &Arc<LinkSettings>,
    shutdown: &CancellationToken,
) {
    let mut seen = HashSet::new();
    let mut failed = false;
    for name in &config.backends {
        match tokio::net::lookup_host(name.as_str()).await {
            Ok(addrs) => seen.extend(addrs.map(Backend)),
            Err(err) => {
                failed = true;
                tracing::warn!(backend = %name, error = %err, "cannot resolve backend");
            }
        }
    }
    for &backend in &seen {
        if membership.contains(backend) {
            continue;
        }
        let link = Link::new(backend, links.clone());
        let checker = shutdown.child_token();
        tracing::info!(%backend, "backend discovered");
        membership.add(backend, link.clone(), checker.clone());
        tokio::spawn(watch(
            membership.clone(),
            config.clone(),
            backend,
            link.clone(),
            checker.clone(),
        ));
        tokio::spawn(check(
            membership.clone(),
            config.clone(),
            backend,
            link,
            checker,
        ));
    }
    if !failed {
        membership.retain(|b| seen.contains(&b));
    }
}

/// An HTTP/2 ping this often on every backend connection, answered within the timeout.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// How links to the backends connect.
fn link_settings(config: &UpstreamConfig) -> LinkSettings {
    LinkSettings {
        connect_timeout: config.connect_timeout,
        keepalive_interval: KEEPALIVE_INTERVAL,
        keepalive_timeout: KEEPALIVE_TIMEOUT,
        tls: config.tls.clone(),
    }
}

/// Follows one backend's `grpc.health.v1` Watch until cancelled: a backend that starts draining
/// says NOT_SERVING on it at once, and is taken out then rather than at the next Check. Only
/// Check puts a backend back: a quiet Watch proves nothing about a backend that stopped
/// answering, so the Check deadline stays the rule for that. The Watch is open only while the
/// backend is in: an open stream would hold a draining backend until its drain timeout.
async fn watch(
    membership: Arc<Membership>,
    config: Arc<UpstreamConfig>,
    backend: Backend,
    link: Link,
    stop: CancellationToken,
) {
    let mut health = HealthClient::new(link);
    loop {
        let request = HealthCheckRequest {
            service: SERVICE_NAME.into(),
        };
        let followed = async {
            let mut answers = health.watch(request).await?.into_inner();
            while let Some(answer) = answers.message().await? {
                if answer.status != ServingStatus::Serving as i32 {
                    if membership.set_health(backend, Health::Down(Down::NotServing)) {
                        let status = answer.status();
                        tracing::warn!(%backend, reason = ?status, "backend unhealthy: removed (health watch)");
                    }
                    break;
                }
            }
            Ok::<_, tonic::Status>(())
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = followed => {}
        }
        // Out, or the stream ended (the backend restarted or went away): open it again once
        // Check has the backend in, looking as often as Check runs.
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(config.health_interval) => {}
            }
            if membership.is_healthy(backend) {
                break;
            }
        }
    }
}

/// Health-checks one address until cancelled: `grpc.health.v1` Check of the event service
/// with a short deadline. A failed check removes the backend (a missed deadline only the third
/// in a row), one passed check restores it.
async fn check(
    membership: Arc<Membership>,
    config: Arc<UpstreamConfig>,
    backend: Backend,
    link: Link,
    stop: CancellationToken,
) {
    let mut health = HealthClient::new(link.clone());
    let mut slow_answers = 0;
    let mut refused_anonymous = false;
    let mut tick = tokio::time::interval(config.health_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
            // Its connection dropped (a crash resets it): out now, until a check passes. A
            // backend restarted on a socket kept open would otherwise never fail a check.
            () = link.lost() => {
                // (One already out keeps the reason it was taken out for.)
                if membership.is_healthy(backend)
                    && membership.set_health(backend, Health::Down(Down::Unreachable))
                {
                    tracing::warn!(%backend, "backend connection lost: removed until it answers health checks");
                }
                continue;
            }
        }
        let request = HealthCheckRequest {
            service: SERVICE_NAME.into(),
        };
        let outcome = tokio::time::timeout(config.health_timeout, health.check(request)).await;
        let anonymous = config.token_mode && serving(&outcome) && !says_token_mode(&outcome);
        let healthy = serving(&outcome) && !anonymous;
        // A backend that refuses or says NOT_SERVING is out at once; one that is only slow to
        // answer may just be busy (a burst of fan-out on a loaded machine), and taking every
        // busy backend out would turn load into an outage.
        slow_answers = if outcome.is_err() {
            slow_answers + 1
        } else {
            0
        };
        if outcome.is_err() && slow_answers < SLOW_ANSWERS_TO_REMOVE {
            continue;
        }
        // A backend that stopped answering (deadlines missed, or the connection failing)
        // still holds the calls sent to it before: on a network that drops packets they would
        // wait for their deadline. Cut them loose to be retried elsewhere. A backend saying
        // NOT_SERVING is draining and finishes what it has.
        let stopped_answering = !matches!(&outcome, Ok(Ok(_)));
        if !healthy && stopped_answering {
            link.sever();
        }
        let verdict = match &outcome {
            _ if healthy => Health::Up,
            _ if anonymous => Health::Down(Down::Anonymous),
            Ok(Ok(_)) => Health::Down(Down::NotServing),
            Ok(Err(_)) => Health::Down(Down::Refused),
            Err(_) => Health::Down(Down::MissedDeadlines),
        };
        // Said once as it starts (a backend not yet checked is already out: no change).
        if anonymous && !refused_anonymous {
            tracing::error!(
                %backend,
                "backend in anonymous mode behind a gateway in token mode: refused (it would \
                 serve calls without a token); start it with --auth jwt"
            );
        }
        refused_anonymous = anonymous;
        if membership.set_health(backend, verdict) {
            if healthy {
                tracing::info!(%backend, "backend healthy: receiving traffic");
            } else if !anonymous {
                let reason = match outcome {
                    Ok(Ok(response)) => format!("status {:?}", response.get_ref().status()),
                    Ok(Err(status)) => format!("{:?}: {}", status.code(), status.message()),
                    Err(_) => format!("no answer within {:?}", config.health_timeout),
                };
                tracing::warn!(%backend, %reason, "backend unhealthy: removed");
            }
        }
        if healthy {
            // Whether it commits every backend's writes: a backend that does not know the
            // name (another store, an older build) answers NOT_FOUND, which is "no".
            let request = HealthCheckRequest {
                service: WRITER_HEALTH.into(),
            };
            let answer = tokio::time::timeout(config.health_timeout, health.check(request)).await;
            membership.set_writer(backend, serving(&answer));
        }
    }
}

/// How a health check went: an answer in time, a refusal, or no answer within the deadline.
type Checked = Result<
    Result<tonic::Response<HealthCheckResponse>, tonic::Status>,
    tokio::time::error::Elapsed,
>;

/// Whether a health answer says its backend is in token mode.
fn says_token_mode(outcome: &Checked) -> bool {
    matches!(
        outcome,
        Ok(Ok(response)) if response
            .metadata()
            .get(eventsys::AUTH_MODE_METADATA)
            .is_some_and(|mode| mode == "jwt")
    )
}

/// Whether a health check answered in time, and SERVING.
fn serving(outcome: &Checked) -> bool {
    matches!(
        outcome,
        Ok(Ok(response)) if response.get_ref().status == ServingStatus::Serving as i32
    )
}

#[cfg(test)]
mod tests {
    //! Health checks under paused time, over backends whose answers the test decides: when a
    //! backend goes out of the balancers, and when it comes back.

    use super::*;
    use crate::testing::{self, Checks, FakeBackend, advance};

    const MS: Duration = Duration::from_millis(1);

    /// How many backends the balancers hold now.
    fn held(state: &crate::http::AppState) -> usize {
        *state.upstream.health_changes().borrow()
    }

    fn is_in(state: &crate::http::AppState, backend: &FakeBackend) -> bool {
        state
            .upstream
            .inner
            .membership
            .is_healthy(Backend(backend.addr))
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_backend_goes_out_at_its_third_missed_deadline_and_back_at_one_answer() {
        testing::bounded(async {
            // Checks every 250 ms, each answered within 500 ms or missed.
            let (a, b) = (FakeBackend::start().await, FakeBackend::start().await);
            let (state, _stop) = testing::gateway(&[&a, &b], &[]).await;
            a.checks(Checks::Silent);

            // Two missed deadlines (the second ends 1.25 s on at the latest): a busy backend is
            // not a dead one.
            advance(Duration::from_millis(1300)).await;
            assert!(is_in(&state, &a), "out before its third missed deadline");
            // The third (by 2 s): out, the other backend still in.
            advance(Duration::from_millis(700)).await;
            assert!(!is_in(&state, &a), "still in after three missed deadlines");
            assert_eq!(held(&state), 1);

            // It answers again: back at the next check, within one interval.
            a.checks(Checks::Serving);
            advance(Duration::from_millis(250) + MS).await;
            assert!(is_in(&state, &a), "not back one interval after answering");
            assert_eq!(held(&state), 2);
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_backend_saying_not_serving_goes_out_at_once_by_its_health_watch() {
        testing::bounded(async {
            let a = FakeBackend::start().await;
            // A long check interval: only the health Watch can see it first.
            let (state, _stop) = testing::gateway(&[&a], &["--health-interval", "30s"]).await;
            a.checks(Checks::NotServing);
            // The Watch reports NOT_SERVING the moment it changes: out without waiting for a Check.
            advance(MS).await;
            assert!(
                !is_in(&state, &a),
                "a draining backend kept traffic until the next Check"
            );

            // Only a passing Check puts it back, at the next interval.
            a.checks(Checks::Serving);
            advance(Duration::from_secs(29)).await;
            assert!(!is_in(&state, &a), "back before a Check passed");
            advance(Duration::from_secs(2)).await;
            assert!(is_in(&state, &a));
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn an_ejected_backend_is_out_at_once_and_back_at_its_next_passing_check() {
        testing::bounded(async {
            let (a, b) = (FakeBackend::start().await, FakeBackend::start().await);
            let (state, _stop) = testing::gateway(&[&a, &b], &[]).await;
            // A call found it unreachable.
            state.upstream.inner.membership.eject(Backend(a.addr));
            assert!(!is_in(&state, &a));
            assert_eq!(held(&state), 1);
            advance(Duration::from_millis(250) + MS).await;
            assert!(is_in(&state, &a), "not back after a passing check");
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_backend_is_held_only_from_its_first_passing_check() {
        testing::bounded(async {
            let (a, b) = (FakeBackend::start().await, FakeBackend::start().await);
            b.checks(Checks::NotServing);
            let (state, _stop) = testing::starting(&[&a, &b], &[]);
            testing::healthy(&state, 1).await;
            assert!(is_in(&state, &a) && !is_in(&state, &b));
            // Discovered, checked, refused: it stays out as long as it says so.
            advance(Duration::from_secs(5)).await;
            assert!(!is_in(&state, &b));
            b.checks(Checks::Serving);
            advance(Duration::from_millis(250) + MS).await;
            assert!(is_in(&state, &b), "not taken in at its first passing check");
            assert_eq!(held(&state), 2);
        })
        .await;
    }

    /// Calls each backend took since it was discovered, in the order given.
    fn attempts(state: &crate::http::AppState, backends: &[&FakeBackend]) -> Vec<u64> {
        let all = state.upstream.backends();
        backends
            .iter()
            .map(|b| {
                all.iter()
                    .find(|s| s.backend == Backend(b.addr))
                    .map_or(0, |s| s.attempts)
            })
            .collect()
    }

    /// Sends `n` of `request` through the upstream (the fakes refuse them: only where they
    /// went counts).
    async fn send<R: crate::upstream::Rpc + Clone>(
        state: &crate::http::AppState,
        request: R,
        n: usize,
    ) {
        for _ in 0..n {
            let _ = state.upstream.call(request.clone(), None).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn writes_go_to_the_backend_that_commits_them_and_to_all_when_none_does() {
        use eventsys::v1;
        testing::bounded(async {
            let (a, b, c) = (
                FakeBackend::start().await,
                FakeBackend::start().await,
                FakeBackend::start().await,
            );
            a.writer(true);
            let (state, _stop) = testing::gateway(&[&a, &b, &c], &[]).await;
            // The writer check follows the health check that let them in.
            advance(MS * 10).await;
            let all = [&a, &b, &c];
            let create = v1::CreateEventRequest::default();
            send(&state, create.clone(), 30).await;
            assert_eq!(
                attempts(&state, &all),
                [30, 0, 0],
                "every write to the writer"
            );
            // Reads still go to every backend.
            send(&state, v1::GetEventRequest::default(), 30).await;
            let [to_a, to_b, to_c] = attempts(&state, &all)[..] else {
                unreachable!()
            };
            assert_eq!(to_a + to_b + to_c, 60);
            assert!(to_b + to_c > 0, "reads pinned to the writer");

            // Another backend is elected: writes follow at its next check.
            a.writer(false);
            b.writer(true);
            advance(Duration::from_millis(250) + MS * 10).await;
            let before = attempts(&state, &all);
            send(&state, v1::UpdateEventRequest::default(), 20).await;
            send(&state, v1::DeleteEventRequest::default(), 10).await;
            let after = attempts(&state, &all);
            assert_eq!(
                [
                    after[0] - before[0],
                    after[1] - before[1],
                    after[2] - before[2]
                ],
                [0, 30, 0],
                "updates and deletes to the new writer"
            );

            // The writer goes: no healthy backend says it writes, so writes go to all.
            b.checks(Checks::NotServing);
            advance(MS).await;
            let before = attempts(&state, &all);
            send(&state, v1::PublishRequest::default(), 30).await;
            let after = attempts(&state, &all);
            assert_eq!(after[1], before[1], "a backend that is out got writes");
            assert_eq!((after[0] - before[0]) + (after[2] - before[2]), 30);
        })
        .await;
    }
}
