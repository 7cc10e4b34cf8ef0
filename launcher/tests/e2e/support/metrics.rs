//! Reading Prometheus expositions (the gateway's `/metrics`, a backend's), and the one matcher
//! that waits for a series: it reads again until the value satisfies the test or its patience
//! runs out, instead of sleeping a fixed window and hoping the figure has settled.

use std::{net::SocketAddr, time::Duration};

use super::clients::http;

/// How often a waiting matcher reads the exposition again.
const EVERY: Duration = Duration::from_millis(20);

/// An exposition to read.
pub(crate) struct Scrape {
    url: String,
    /// Token mode: an admin token (the gateway's `/metrics` needs one).
    token: Option<String>,
}

impl Scrape {
    /// A gateway's `/metrics`.
    pub(crate) fn gateway(addr: SocketAddr) -> Scrape {
        Scrape::url(format!("http://{addr}/metrics"))
    }

    /// The exposition at `url` (a backend's metrics endpoint).
    pub(crate) fn url(url: String) -> Scrape {
        Scrape { url, token: None }
    }

    /// Read with `token` (`Authorization: Bearer`), when there is one.
    pub(crate) fn token(mut self, token: Option<&str>) -> Scrape {
        self.token = token.map(str::to_owned);
        self
    }

    /// The exposition now; empty while the server does not answer.
    pub(crate) async fn text(&self) -> String {
        let mut request = http().get(&self.url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        match request.send().await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// One series now (named with its labels); 0 when it is not there yet.
    pub(crate) async fn value(&self, series: &str) -> u64 {
        series_value(&self.text().await, series)
    }

    /// Waits until the exposition satisfies `want`, reading it again every 20 ms for at most
    /// `patience`; the text that did. `what` says what was awaited when it never came.
    pub(crate) async fn until(
        &self,
        what: &str,
        patience: Duration,
        want: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let text = self.text().await;
            if want(&text) {
                return text;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not within {patience:?} at {}; last exposition:\n{text}",
                self.url
            );
            tokio::time::sleep(EVERY).await;
        }
    }

    /// Waits until `series` satisfies `want` (see `until`); its value then.
    pub(crate) async fn until_value(
        &self,
        series: &str,
        patience: Duration,
        want: impl Fn(u64) -> bool,
    ) -> u64 {
        let text = self
            .until(series, patience, |text| want(series_value(text, series)))
            .await;
        series_value(&text, series)
    }
}

/// One series of the gateway's `/metrics`, named as Prometheus prints it (with its labels);
/// 0 when the gateway has not counted anything for it yet.
pub(crate) async fn metric(gateway: SocketAddr, series: &str) -> u64 {
    Scrape::gateway(gateway).value(series).await
}

/// One series of an exposition, named with its labels; 0 when it is not there (yet).
pub(crate) fn series_value(exposition: &str, series: &str) -> u64 {
    let prefix = format!("{series} ");
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |n| n.trim().parse().expect("a whole-number series"))
}

/// How many backends a gateway's exposition says its balancer holds.
pub(crate) fn healthy_backends(exposition: &str) -> usize {
    exposition
        .lines()
        .filter(|l| l.starts_with("gateway_backend_healthy{") && l.ends_with(" 1"))
        .count()
}
