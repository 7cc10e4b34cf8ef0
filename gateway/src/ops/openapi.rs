//! The OpenAPI 3.1 description of the REST + SSE contract, derived from the handlers' own
//! `#[utoipa::path]` rows and the JSON types they read and write, served at `/openapi.json`;
//! `docs` renders it at `/docs` from assets compiled into the binary.

mod docs;

use std::sync::LazyLock;

use axum::{
    body::Bytes,
    extract::State,
    response::{IntoResponse, Response},
};
use http::{HeaderValue, header};
use utoipa::{
    Modify, OpenApi, PartialSchema, ToSchema,
    openapi::{
        ContentBuilder, HeaderBuilder, OpenApi as Document, RefOr, ResponseBuilder,
        path::Operation,
        security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme},
    },
};

pub(crate) use docs::{docs_asset, docs_page};

use crate::{
    api::{ErrorBody, JSON_VALUE, json_value_schema},
    http::AppState,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "events",
        description = "CRUD on events, topic pub/sub with Server-Sent Events, through the \
            gateway that balances every request over the backends. Errors are \
            `{\"error\", \"message\", \"code\"}` (`code`: the gRPC status name). In token mode \
            every API request carries a JWT: `Authorization: Bearer`, or for GET only \
            `?access_token=`, or on the streams EventSource reads (`/subscribe…`, `/changes`) \
            the `events_token` cookie (set it `SameSite=Strict; HttpOnly; Secure`).",
    ),
    tags(
        (name = "events", description = "A user's events"),
        (name = "topics", description = "Publish, history and live streams"),
        (name = "changes", description = "Every create, update and delete of a user's events, live and as history"),
        (name = "operations", description = "Figures for operators (token mode: admin)"),
        (name = "probes", description = "Liveness and readiness; never authenticated"),
    ),
)]
struct ApiDoc;

/// The document, serialised once.
static DOCUMENT: LazyLock<Bytes> = LazyLock::new(|| {
    // The paths come from the routers themselves (`routes.rs`): what is served is described.
    let mut document = ApiDoc::openapi().merge_from(crate::http::described().into_openapi());
    Contract.modify(&mut document);
    let mut document = serde_json::to_value(document).expect("the API document serialises");
    document["components"]["schemas"][JSON_VALUE] = json_value_schema();
    Bytes::from(serde_json::to_vec_pretty(&document).expect("the API document serialises"))
});

/// The document as a token-mode gateway serves it: a change feed's `userId` may be left out
/// there (it is the token's subject), where anonymous mode requires it.
static TOKEN_MODE_DOCUMENT: LazyLock<Bytes> = LazyLock::new(|| {
    let mut document: serde_json::Value =
        serde_json::from_slice(&DOCUMENT).expect("the API document is JSON");
    for path in ["/changes", "/changes/history"] {
        if let Some(parameters) = document["paths"][path]["get"]["parameters"].as_array_mut() {
            for parameter in parameters.iter_mut().filter(|p| p["name"] == "userId") {
                parameter["required"] = serde_json::Value::Bool(false);
            }
        }
    }
    Bytes::from(serde_json::to_vec_pretty(&document).expect("the API document serialises"))
});

/// `GET /openapi.json`: the document of this gateway's mode.
pub(crate) async fn document(State(state): State<AppState>) -> Response {
    let document = if state.auth.token_mode() {
        TOKEN_MODE_DOCUMENT.clone()
    } else {
        DOCUMENT.clone()
    };
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        document,
    )
        .into_response()
}

/// What every operation shares and the rows cannot say once: the token schemes, the answers
/// of the guards and limits in front of every handler, and `x-backend` on what a backend served.
struct Contract;

impl Modify for Contract {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components
            .schemas
            .insert(ErrorBody::name().into_owned(), ErrorBody::schema());
        let jwt = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .bearer_format("JWT")
            .description(Some(
                "Token mode: `sub` is the user; claims `events.publish` and `events.subscribe` \
                 list topic patterns, `events.admin` opens the operations endpoints.",
            ))
            .build();
        components.add_security_scheme("bearer", SecurityScheme::Http(jwt));
        components.add_security_scheme(
            "access_token",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "access_token",
                "The JWT, for GET only (EventSource cannot set headers)",
            ))),
        );
        components.add_security_scheme(
            "cookie",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                "events_token",
                "The JWT, on the streams EventSource reads only (`/subscribe…`, `/changes`); \
                 set it `SameSite=Strict; HttpOnly; Secure`",
            ))),
        );
        for (path, item) in doc.paths.paths.iter_mut() {
            let probe = matches!(path.as_str(), "/healthz" | "/readyz");
            let served_by_backend = !probe && path.as_str() != "/metrics";
            let writes = [&mut item.post, &mut item.put];
            for operation in writes.into_iter().flatten() {
                add_error(operation, "413", "The body is over the limit (1 MiB)");
                add_error(
                    operation,
                    "415",
                    "A write from a browser page (`Origin` sent) whose body is not `application/json`",
                );
            }
            let all = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
            ];
            for operation in all.into_iter().flatten() {
                add_error(
                    operation,
                    "421",
                    "The `Host` is not one this gateway serves",
                );
                if probe {
                    continue;
                }
                add_error(
                    operation,
                    "401",
                    "Token mode: no token, or an invalid one (`WWW-Authenticate: Bearer`)",
                );
                add_error(operation, "403", "Token mode: the token lacks the right");
                add_error(
                    operation,
                    "429",
                    "Too many requests or open streams for this client, or in total (`Retry-After`)",
                );
                add_error(operation, "500", "An internal error (no details are given)");
                add_error(
                    operation,
                    "502",
                    "A backend sent a reply the gateway cannot read",
                );
                add_error(operation, "503", "No backend available");
                add_error(operation, "504", "The request's deadline passed");
                if served_by_backend {
                    tag_backend(operation);
                }
            }
        }
    }
}

/// Adds an error answer with the contract's body, unless the row already describes it.
fn add_error(operation: &mut Operation, status: &str, description: &str) {
    let responses = &mut operation.responses.responses;
    if responses.contains_key(status) {
        return;
    }
    let body = ContentBuilder::new()
        .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
            ErrorBody::name(),
        ))))
        .build();
    let mut response = ResponseBuilder::new()
        .description(description)
        .content("application/json", body);
    if status == "429" {
        response = response.header(
            "retry-after",
            HeaderBuilder::new()
                .schema(Some(u64::schema()))
                .description(Some("Seconds to wait"))
                .build(),
        );
    }
    responses.insert(status.to_owned(), RefOr::T(response.build()));
}

/// `x-backend` on each success: the backend that served it.
fn tag_backend(operation: &mut Operation) {
    for (status, response) in operation.responses.responses.iter_mut() {
        if let (true, RefOr::T(response)) = (status.starts_with('2'), response) {
            response.headers.insert(
                "x-backend".to_owned(),
                RefOr::T(
                    HeaderBuilder::new()
                        .schema(Some(String::schema()))
                        .description(Some("The backend (address) that served the request"))
                        .build(),
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_feeds_user_is_required_in_anonymous_mode_only() {
        let required = |document: &[u8], path: &str| {
            let doc: serde_json::Value = serde_json::from_slice(document).unwrap();
            doc["paths"][path]["get"]["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == "userId")
                .map(|p| p["required"].clone())
        };
        for path in ["/changes", "/changes/history"] {
            assert_eq!(required(&DOCUMENT, path), Some(serde_json::json!(true)));
            assert_eq!(
                required(&TOKEN_MODE_DOCUMENT, path),
                Some(serde_json::json!(false))
            );
        }
    }

    #[test]
    fn every_route_of_the_contract_is_described() {
        let doc: serde_json::Value = serde_json::from_slice(&DOCUMENT).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().unwrap();
        for path in [
            "/events",
            "/events/{id}",
            "/publish",
            "/topic-events/{topic}",
            "/subscribe/{topic}",
            "/changes",
            "/changes/history",
            "/load",
            "/benchmark",
            "/memstats",
            "/metrics",
            "/healthz",
            "/readyz",
        ] {
            assert!(paths.contains_key(path), "{path} is not described");
        }
        let sse = &paths["/subscribe/{topic}"]["get"]["responses"]["200"]["content"];
        assert!(sse.get("text/event-stream").is_some(), "{sse}");
        assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    }
}
