//! Database servers the tests start for themselves: a real server process on a free port with
//! its data in a temporary folder, gone when the test is (even when the test process is killed).
//! A test that needs a server this machine lacks gets `None` and says SKIPPED loudly; one that
//! drives a tool this machine lacks (grpcurl, Chromium, a validator) asks [`needs`] first.

mod certs;
mod log;
mod mongo;
mod postgres;
mod tools;
mod watchdog;

pub use certs::certificates;
pub use mongo::{MongoServer, mongo_uri};
pub use postgres::{PostgresServer, Setup as PostgresSetup};
pub use tools::{REQUIRE_ALL, Tool, needs};

/// What a test does with a database server it owns, whatever the engine.
pub trait Server {
    /// The URI of a new, empty database `name` on it.
    fn fresh(&self, name: &str) -> String;
    /// `kill -9`, as on a crash.
    fn kill(&mut self);
    /// Starts it again on the same port and data, and waits until it serves.
    fn restart(&mut self);
}

impl Server for MongoServer {
    fn fresh(&self, name: &str) -> String {
        self.uri(name)
    }

    fn kill(&mut self) {
        MongoServer::kill(self);
    }

    fn restart(&mut self) {
        MongoServer::restart(self);
    }
}

impl Server for PostgresServer {
    fn fresh(&self, name: &str) -> String {
        self.database(name)
    }

    fn kill(&mut self) {
        PostgresServer::kill(self);
    }

    fn restart(&mut self) {
        PostgresServer::restart(self);
    }
}
