//! What the load is sent to: the gateway's REST API, or the backends directly over gRPC
//! (round robin, for comparing the gateway's cost). Every operation times itself and says
//! which backend served it.

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::Instant,
};

use eventsys::v1::{self, event_service_client::EventServiceClient};
use serde_json::{Value, json};
use tonic::transport::Channel;

use crate::report::Outcome;

pub(crate) struct Target {
    via: Via,
    /// Every create and publish carries a fresh `Idempotency-Key`.
    keyed: bool,
}

enum Via {
    Rest {
        base: String,
        client: reqwest::Client,
        /// A token is sent: requests name no user, so they act as the token's.
        as_caller: bool,
    },
    Grpc {
        backends: Vec<(String, EventServiceClient<Channel>)>,
        next: AtomicUsize,
    },
}

/// A fresh key for one write.
fn fresh_key() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// An operation's outcome and, for a create, the new event's id.
pub(crate) type Done = (Outcome, Option<String>);

impl Target {
    /// The gateway at `base`; with `token`, every request carries it as a Bearer token; with
    /// `ca`, HTTPS is verified against that CA (PEM).
    pub(crate) fn rest(
        base: &str,
        token: Option<&str>,
        ca: Option<&std::path::Path>,
    ) -> Result<Target, String> {
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(1024);
        if let Some(token) = token {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| "the token is not a valid header value".to_owned())?;
            value.set_sensitive(true);
            let headers = [(reqwest::header::AUTHORIZATION, value)]
                .into_iter()
                .collect();
            builder = builder.default_headers(headers);
        }
        if let Some(ca) = ca {
            let pem = std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
            let ca = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| format!("{}: {e}", ca.display()))?;
            builder = builder.use_rustls_tls().add_root_certificate(ca);
        }
        let client = builder.build().map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Target::new(Via::Rest {
            base: base.trim_end_matches('/').to_owned(),
            client,
            as_caller: token.is_some(),
        }))
    }

    fn new(via: Via) -> Target {
        Target { via, keyed: false }
    }

    /// Sends a fresh `Idempotency-Key` with every create and publish (to measure its cost).
    pub(crate) fn keyed(mut self, on: bool) -> Target {
        self.keyed = on;
        self
    }

    /// `request` with a fresh key, when keys are on.
    fn rest_key(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        if self.keyed {
            request.header("idempotency-key", fresh_key())
        } else {
            request
        }
    }

    /// `message` as a request, with a fresh key in its metadata when keys are on.
    fn grpc_request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if self.keyed
            && let Ok(key) = fresh_key().parse()
        {
            request.metadata_mut().insert("idempotency-key", key);
        }
        request
    }

    pub(crate) async fn grpc(addrs: &[String]) -> Result<Target, String> {
        let mut backends = Vec::new();
        for addr in addrs {
            let channel = Channel::from_shared(format!("http://{addr}"))
                .map_err(|e| format!("{addr}: {e}"))?
                .tcp_nodelay(true)
                .connect()
                .await
                .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
            backends.push((addr.clone(), EventServiceClient::new(channel)));
        }
        Ok(Target::new(Via::Grpc {
            backends,
            next: AtomicUsize::new(0),
        }))
    }

    /// The user a REST request names: none when a token is sent (it acts as the token's).
    fn rest_user<'a>(&self, user: &'a str) -> &'a str {
        match self.via {
            Via::Rest {
                as_caller: true, ..
            } => "",
            _ => user,
        }
    }

    /// The REST client (with the token, if any).
    pub(crate) fn client(&self) -> Option<&reqwest::Client> {
        match &self.via {
            Via::Rest { client, .. } => Some(client),
            Via::Grpc { .. } => None,
        }
    }

    pub(crate) fn base(&self) -> Option<&str> {
        match &self.via {
            Via::Rest { base, .. } => Some(base),
            Via::Grpc { .. } => None,
        }
    }

    async fn http(
        &self,
        request: reqwest::RequestBuilder,
        expect: u16,
    ) -> (Outcome, Option<Value>) {
        let started = Instant::now();
        let sent = request.send().await;
        let (error, backend, body) = match sent {
            Err(err) => (Some(format!("transport: {}", short(&err))), None, None),
            Ok(response) => {
                let status = response.status().as_u16();
                let backend = response
                    .headers()
                    .get("x-backend")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let body = response.json::<Value>().await.ok();
                let error = (status != expect).then(|| format!("HTTP {status}"));
                (error, backend, body)
            }
        };
        let outcome = Outcome {
            latency: started.elapsed(),
            error,
            backend,
        };
        (outcome, body)
    }

    async fn rpc<T, F, Fut>(&self, call: F) -> (Outcome, Option<T>)
    where
        F: FnOnce(EventServiceClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let Via::Grpc { backends, next } = &self.via else {
            unreachable!("rpc on a REST target");
        };
        let (addr, client) = &backends[next.fetch_add(1, Ordering::Relaxed) % backends.len()];
        let started = Instant::now();
        let result = call(client.clone()).await;
        let outcome = Outcome {
            latency: started.elapsed(),
            error: result
                .as_ref()
                .err()
                .map(|s| format!("gRPC {:?}", s.code())),
            backend: Some(addr.clone()),
        };
        (outcome, result.ok().map(tonic::Response::into_inner))
    }

    pub(crate) async fn create(&self, user: &str, title: &str) -> Done {
        match &self.via {
            Via::Rest { base, client, .. } => {
                let user = self.rest_user(user);
                let body = json!({"userId": user, "title": title, "description": "bench"});
                let request = self.rest_key(client.post(format!("{base}/events")).json(&body));
                let (outcome, body) = self.http(request, 201).await;
                let id = body.and_then(|b| b["id"].as_str().map(str::to_owned));
                (outcome, id)
            }
            Via::Grpc { .. } => {
                let request = v1::CreateEventRequest {
                    user_id: user.into(),
                    title: title.into(),
                    description: "bench".into(),
                    ..Default::default()
                };
                let request = self.grpc_request(request);
                let (outcome, event) = self
                    .rpc(|mut c| async move { c.create_event(request).await })
                    .await;
                (outcome, event.map(|e| e.id))
            }
        }
    }

    pub(crate) async fn get(&self, id: &str, user: &str) -> Outcome {
        match &self.via {
            Via::Rest { base, client, .. } => {
                let user = self.rest_user(user);
                self.http(client.get(format!("{base}/events/{id}?userId={user}")), 200)
                    .await
                    .0
            }
            Via::Grpc { .. } => {
                let request = v1::GetEventRequest {
                    id: id.into(),
                    user_id: user.into(),
                };
                self.rpc(|mut c| async move { c.get_event(request).await })
                    .await
                    .0
            }
        }
    }

    pub(crate) async fn update(&self, id: &str, user: &str) -> Outcome {
        self.update_titled(id, user, "updated").await
    }

    /// An update that sets `title`.
    pub(crate) async fn update_titled(&self, id: &str, user: &str, title: &str) -> Outcome {
        match &self.via {
            Via::Rest { base, client, .. } => {
                let user = self.rest_user(user);
                let body = json!({"title": title, "description": "bench", "completed": true});
                let request = client
                    .put(format!("{base}/events/{id}?userId={user}"))
                    .json(&body);
                self.http(request, 200).await.0
            }
            Via::Grpc { .. } => {
                let request = v1::UpdateEventRequest {
                    id: id.into(),
                    user_id: user.into(),
                    title: title.into(),
                    description: "bench".into(),
                    completed: true,
                    // Unconditional, as the REST request (no `If-Match`).
                    if_revision: 0,
                    if_exists: false,
                };
                self.rpc(|mut c| async move { c.update_event(request).await })
                    .await
                    .0
            }
        }
    }

    pub(crate) async fn delete(&self, id: &str, user: &str) -> Outcome {
        match &self.via {
            Via::Rest { base, client, .. } => {
                let user = self.rest_user(user);
                self.http(
                    client.delete(format!("{base}/events/{id}?userId={user}")),
                    204,
                )
                .await
                .0
            }
            Via::Grpc { .. } => {
                let request = v1::DeleteEventRequest {
                    id: id.into(),
                    user_id: user.into(),
                    if_revision: 0,
                    if_exists: false,
                };
                self.rpc(|mut c| async move { c.delete_event(request).await })
                    .await
                    .0
            }
        }
    }

    pub(crate) async fn list(&self, user: &str) -> Outcome {
        match &self.via {
            Via::Rest { base, client, .. } => {
                let user = self.rest_user(user);
                self.http(client.get(format!("{base}/events?userId={user}")), 200)
                    .await
                    .0
            }
            Via::Grpc { .. } => {
                let request = v1::ListEventsRequest {
                    user_id: user.into(),
                    ..Default::default()
                };
                self.rpc(|mut c| async move { c.list_events(request).await })
                    .await
                    .0
            }
        }
    }

    /// How many events `user` has (REST only): not timed, for end-of-run checks.
    pub(crate) async fn listed(&self, user: &str) -> Result<u64, String> {
        let Via::Rest { base, client, .. } = &self.via else {
            return Err("listing needs the gateway".into());
        };
        let user = self.rest_user(user);
        let response = client
            .get(format!("{base}/events?userId={user}"))
            .send()
            .await
            .map_err(|e| format!("cannot list {user}'s events: {}", short(&e)))?;
        if !response.status().is_success() {
            return Err(format!(
                "cannot list {user}'s events: HTTP {}",
                response.status()
            ));
        }
        let events: Vec<Value> = response.json().await.map_err(|e| e.to_string())?;
        Ok(events.len() as u64)
    }

    /// Publishes with `data.sentAtMicros`, so subscribers can time delivery.
    pub(crate) async fn publish(&self, topic: &str, sent_at_micros: u128) -> Outcome {
        match &self.via {
            Via::Rest { base, client, .. } => {
                let body = json!({"topic": topic, "title": "bench", "data": {"sentAtMicros": sent_at_micros as u64}});
                let request = self.rest_key(client.post(format!("{base}/publish")).json(&body));
                self.http(request, 200).await.0
            }
            Via::Grpc { .. } => {
                let data = json!({"sentAtMicros": sent_at_micros as u64});
                let request = v1::PublishRequest {
                    topic: topic.into(),
                    title: "bench".into(),
                    data: data.as_object().map(eventsys::json::to_struct),
                    ..Default::default()
                };
                let request = self.grpc_request(request);
                self.rpc(|mut c| async move { c.publish(request).await })
                    .await
                    .0
            }
        }
    }
}

/// A transport error's gist, without the URL it repeats.
fn short(err: &reqwest::Error) -> String {
    if err.is_connect() {
        "connect".into()
    } else if err.is_timeout() {
        "timeout".into()
    } else {
        "request".into()
    }
}
