//! The REST + SSE gateway (issue 3): axum on :3000, balancing over the eventsvc backends.
#![forbid(unsafe_code)]
