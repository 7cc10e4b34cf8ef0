//! Database servers the tests start for themselves: a real server process on a free port with
//! its data in a temporary folder, gone when the test is (even when the test process is killed).
//! A test that needs a server this machine lacks gets `None` and says SKIPPED loudly.

mod log;
mod mongo;
mod postgres;
mod watchdog;

pub use mongo::{MongoServer, mongo_uri};
pub use postgres::PostgresServer;
