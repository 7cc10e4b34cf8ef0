//! The whole system on each database server users scale on, as a user runs it: `eventsys up`
//! with two backends, the store named the way its users name it (`MONGO_URI`, `DATABASE_URL`).
//! Each case is written once and runs per engine (`mongo::`, `postgres::`), SKIPPED where the
//! machine lacks the server. The REST contract runs the same way in `gateway_contract`; what
//! only MongoDB has (the old service's documents) is in `mongo`.

mod access;
mod outage;
mod streams;

/// One `#[tokio::test]` per case and engine.
macro_rules! per_engine {
    ($($module:ident :: $case:ident),+ $(,)?) => {
        mod mongo {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    super::$module::$case(crate::support::Engine::Mongo).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    super::$module::$case(crate::support::Engine::Postgres).await;
                }
            )+
        }
    };
}

per_engine!(
    streams::subscribers_on_both_backends_get_every_event_once_in_order,
    streams::lists_are_in_creation_order_whichever_backend_created,
    streams::a_backend_kill_9_under_load_fails_nothing_and_loses_nothing,
    streams::retention_keeps_the_newest_and_tells_readers_of_the_gap,
    streams::a_change_watcher_sees_every_change_once_across_a_kill_9,
    access::idempotency_keys_answer_once_across_backends,
    access::token_mode_scopes_events_to_the_tokens_subject,
    outage::the_database_killed_under_load_gives_503s_and_everything_recovers,
);
