//! Per-client bounds, refused with 429 + `Retry-After` and the contract's JSON error: the
//! request rate (off unless configured) and open SSE streams, in total and per client. A
//! client is its token's subject when it sent one, else its address (an IPv6 /64, which one
//! host can fill alone).

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    num::NonZeroU32,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use eventsys::auth::Caller;
use governor::{
    DefaultKeyedRateLimiter, Quota, RateLimiter,
    clock::{Clock, DefaultClock},
};
use tonic::Code;

use crate::api::ApiError;

/// Who a limit counts against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum ClientKey {
    Subject(Arc<str>),
    Address(IpAddr),
}

impl ClientKey {
    pub(crate) fn of(caller: Option<&Caller>, peer: Option<SocketAddr>) -> ClientKey {
        if let Some(Caller::User(identity)) = caller {
            return ClientKey::Subject(identity.user.as_str().into());
        }
        let ip = peer.map_or(IpAddr::from([0, 0, 0, 0]), |p| p.ip().to_canonical());
        ClientKey::Address(match ip {
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
            v4 => v4,
        })
    }
}

/// The configured bounds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LimitSettings {
    /// Requests per second per client (bursts of as many); `None`: no rate limit.
    pub(crate) rate: Option<NonZeroU32>,
    /// Open SSE streams in all.
    pub(crate) max_streams: usize,
    /// Open SSE streams per client.
    pub(crate) max_streams_per_client: usize,
}

/// How often the rate limiter forgets clients that have been quiet for a whole period.
const FORGET_EVERY: u64 = 4096;
/// What a client refused for too many streams is told to wait.
const STREAMS_RETRY_AFTER: Duration = Duration::from_secs(5);

/// Why a request or stream was refused, as `gateway_limit_refusals_total{kind}` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    Rate,
    ClientStreams,
    TotalStreams,
}

impl Refusal {
    pub(crate) const ALL: [Refusal; 3] =
        [Refusal::Rate, Refusal::ClientStreams, Refusal::TotalStreams];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Refusal::Rate => "rate",
            Refusal::ClientStreams => "client_streams",
            Refusal::TotalStreams => "total_streams",
        }
    }
}

pub(crate) struct Limiters {
    settings: LimitSettings,
    /// Refusals so far, by `Refusal` (its index in `Refusal::ALL`).
    refused: [AtomicU64; 3],
    rate: Option<DefaultKeyedRateLimiter<ClientKey>>,
    checks: AtomicU64,
    streams: Mutex<Streams>,
}

#[derive(Default)]
struct Streams {
    total: usize,
    per_client: HashMap<ClientKey, usize>,
}

/// An open SSE stream's place in the counts; dropping it frees the place.
pub(crate) struct StreamSlot {
    limiters: Arc<Limiters>,
    key: ClientKey,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut streams = self.limiters.streams();
        streams.total -= 1;
        if let Some(count) = streams.per_client.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                streams.per_client.remove(&self.key);
            }
        }
    }
}

fn too_many(message: &str, retry_after: Duration) -> ApiError {
    ApiError {
        retry_after: Some(retry_after),
        ..ApiError::new(Code::ResourceExhausted, message)
    }
}

impl Limiters {
    pub(crate) fn new(settings: LimitSettings) -> Self {
        Self {
            settings,
            rate: settings
                .rate
                .map(|per_second| RateLimiter::keyed(Quota::per_second(per_second))),
            checks: AtomicU64::new(0),
            streams: Mutex::default(),
            refused: Default::default(),
        }
    }

    fn refuse(&self, why: Refusal, message: &str, retry_after: Duration) -> ApiError {
        self.refused[why as usize].fetch_add(1, Ordering::Relaxed);
        too_many(message, retry_after)
    }

    /// Refusals so far, by kind.
    pub(crate) fn refusals(&self) -> impl Iterator<Item = (Refusal, u64)> + '_ {
        Refusal::ALL
            .into_iter()
            .map(|why| (why, self.refused[why as usize].load(Ordering::Relaxed)))
    }

    /// SSE streams open now.
    pub(crate) fn open_streams(&self) -> usize {
        self.streams().total
    }

    fn streams(&self) -> std::sync::MutexGuard<'_, Streams> {
        self.streams.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One request of `client` (asked for only when a rate is set: it costs an allocation
    /// for a token's subject); 429 when it is over its rate.
    pub(crate) fn request(&self, client: impl FnOnce() -> ClientKey) -> Result<(), ApiError> {
        let Some(rate) = &self.rate else {
            return Ok(());
        };
        let client = client();
        // The limiter keeps a cell per client it has seen; quiet ones are dropped regularly
        // so that many clients cannot grow it without bound.
        if self.checks.fetch_add(1, Ordering::Relaxed) % FORGET_EVERY == FORGET_EVERY - 1 {
            rate.retain_recent();
            rate.shrink_to_fit();
        }
        rate.check_key(&client).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            self.refuse(Refusal::Rate, "too many requests", wait)
        })
    }

    /// A place for one more SSE stream of `client`; 429 when it or everyone has too many.
    pub(crate) fn open_stream(self: &Arc<Self>, client: ClientKey) -> Result<StreamSlot, ApiError> {
        let mut streams = self.streams();
        if streams.total >= self.settings.max_streams {
            return Err(self.refuse(
                Refusal::TotalStreams,
                "too many open streams",
                STREAMS_RETRY_AFTER,
            ));
        }
        let count = streams.per_client.entry(client.clone()).or_default();
        if *count >= self.settings.max_streams_per_client {
            return Err(self.refuse(
                Refusal::ClientStreams,
                "too many open streams for this client",
                STREAMS_RETRY_AFTER,
            ));
        }
        *count += 1;
        streams.total += 1;
        Ok(StreamSlot {
            limiters: self.clone(),
            key: client,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(rate: Option<u32>, max: usize, per_client: usize) -> LimitSettings {
        LimitSettings {
            rate: rate.and_then(NonZeroU32::new),
            max_streams: max,
            max_streams_per_client: per_client,
        }
    }

    fn addr(ip: &str) -> ClientKey {
        ClientKey::of(None, Some(SocketAddr::new(ip.parse().unwrap(), 1)))
    }

    #[test]
    fn streams_are_counted_per_client_and_in_total_and_freed_on_drop() {
        let limiters = Arc::new(Limiters::new(settings(None, 3, 2)));
        let a1 = limiters.open_stream(addr("10.0.0.1")).unwrap();
        let _a2 = limiters.open_stream(addr("10.0.0.1")).unwrap();
        let err = limiters.open_stream(addr("10.0.0.1")).err().unwrap();
        assert_eq!(err.status.as_u16(), 429);
        assert_eq!(err.retry_after, Some(STREAMS_RETRY_AFTER));
        let _b = limiters.open_stream(addr("10.0.0.2")).unwrap();
        assert!(limiters.open_stream(addr("10.0.0.3")).is_err(), "total");
        drop(a1);
        let _a3 = limiters.open_stream(addr("10.0.0.1")).unwrap();
        assert_eq!(limiters.streams().per_client.len(), 2);
        assert_eq!(limiters.open_streams(), 3);
        let refused: Vec<_> = limiters.refusals().collect();
        assert_eq!(
            refused,
            [
                (Refusal::Rate, 0),
                (Refusal::ClientStreams, 1),
                (Refusal::TotalStreams, 1)
            ]
        );
    }

    #[test]
    fn the_rate_is_per_client_and_says_when_to_come_back() {
        let limiters = Limiters::new(settings(Some(2), 1, 1));
        let (a, b) = (addr("10.0.0.1"), addr("10.0.0.2"));
        assert!(limiters.request(|| a.clone()).is_ok());
        assert!(limiters.request(|| a.clone()).is_ok());
        let err = limiters.request(|| a.clone()).unwrap_err();
        assert_eq!(err.status.as_u16(), 429);
        assert!(err.retry_after.unwrap() <= Duration::from_secs(1));
        assert!(
            limiters.request(|| b.clone()).is_ok(),
            "another client has its own rate"
        );
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64_prefix() {
        assert_eq!(addr("2001:db8::1"), addr("2001:db8::ffff:1"));
        assert_ne!(addr("2001:db8::1"), addr("2001:db8:0:1::1"));
        assert_eq!(addr("::ffff:10.0.0.1"), addr("10.0.0.1"));
    }
}
