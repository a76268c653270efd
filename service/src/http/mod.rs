//! The coordinator's HTTP API, `/v1` (described for clients in `docs/API.md`; the
//! OpenAPI document is served at `/v1/openapi.json`):
//!
//! - `POST /v1/payments`, `POST /v1/sagas` — submit (scope `submit`), idempotent per
//!   client: the same key and body → the original saga (200), another body → 409;
//! - `GET /v1/sagas/{id}[?wait=5s]` — a saga (`read`, or `submit` for one's own);
//! - `GET /v1/sagas` — filtered, paginated list (`read`);
//! - `POST /v1/sagas/{id}/retry` — resend what a saga waits on (`admin`), recorded in
//!   its timeline with the operator's name;
//! - `GET /v1/stats` (`read`).
//!
//! Layout: [`auth`] (bearer tokens and scopes), [`input`] (strict decoding of bodies),
//! [`error`] (the one error shape), [`limits`] (in-flight bound and request timeout),
//! `routes` (the handlers), `trace` (a server span per request, under the client's
//! `traceparent`), `ui` (the web UI's embedded files at `/ui`, outside the API's
//! token and limits). The router and the OpenAPI document are built together from the
//! handlers' annotations ([`router`], [`openapi`]), so they cannot drift.

pub mod auth;
pub mod error;
pub mod input;
pub mod limits;
mod routes;
mod trace;
mod ui;

pub use auth::{Auth, Principal, Scope, TokenSettings};
pub use error::ApiError;
pub use limits::Limits;
pub use routes::{MAX_PAGE, SagaPage};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use kessai_coordinator::Coordinator;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Longest `?wait=` a request may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

/// How the API is set up: who may call it, its limits, the participants generic
/// sagas may name.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    pub auth: Auth,
    pub limits: Limits,
    /// Participants a generic saga may name (anything else is 422 at the edge).
    pub participants: BTreeSet<String>,
    /// The trace viewer's link template (`{trace_id}` replaced): `trace_url` of a saga.
    pub trace_url: Option<String>,
}

impl ApiConfig {
    /// One token `token`, named `admin`, with every scope; default limits; the
    /// reference participants. For `kessai serve` and tests.
    pub fn dev_admin(token: &str) -> ApiConfig {
        ApiConfig {
            auth: Auth::dev_admin(token),
            limits: Limits::default(),
            participants: kessai_participants::Registry::reference()
                .names()
                .into_iter()
                .map(str::to_owned)
                .collect(),
            trace_url: None,
        }
    }
}

pub(crate) struct Api {
    coordinator: Coordinator,
    auth: Auth,
    participants: BTreeSet<String>,
    trace_url: Option<String>,
}

impl Api {
    /// The link to a trace, from the configured template.
    pub(crate) fn trace_url(&self, trace_id: Option<&str>) -> Option<String> {
        Some(self.trace_url.as_ref()?.replace("{trace_id}", trace_id?))
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "kessai",
        description = "Message-driven TCC saga coordinator: submit payments and generic sagas, inspect and retry them."
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "sagas", description = "Submit and read sagas"),
        (name = "operations", description = "SRE operations"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

fn documented() -> OpenApiRouter<Arc<Api>> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(routes::submit_payment))
        .routes(routes!(routes::submit_saga, routes::list))
        .routes(routes!(routes::saga))
        .routes(routes!(routes::retry))
        .routes(routes!(routes::stats))
}

/// The OpenAPI document of every `/v1` route.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, mut doc) = documented().split_for_parts();
    doc.paths.paths.insert(
        "/v1/openapi.json".into(),
        utoipa::openapi::path::PathItem::new(
            utoipa::openapi::HttpMethod::Get,
            utoipa::openapi::path::OperationBuilder::new()
                .summary(Some("This document"))
                .response("200", utoipa::openapi::Response::new("The OpenAPI document")),
        ),
    );
    doc
}

/// The API routes on a running coordinator, with their limits; `/v1/openapi.json`
/// is served without a token.
pub fn router(coordinator: Coordinator, config: ApiConfig) -> Router {
    if config.auth.is_empty() {
        tracing::warn!("no [[auth.tokens]] configured: the API refuses every request with 401");
    }
    let api = Arc::new(Api {
        coordinator,
        auth: config.auth,
        participants: config.participants,
        trace_url: config.trace_url,
    });
    let (routes, _) = documented().split_for_parts();
    let doc = Arc::new(openapi());
    let gate = limits::Gate::new(&config.limits);
    routes
        .with_state(api)
        .route(
            "/v1/openapi.json",
            get(move || {
                let doc = doc.clone();
                async move { axum::Json(doc.as_ref().clone()) }
            }),
        )
        // Each API request is a server span, the child of a client's `traceparent`.
        .route_layer(axum::middleware::from_fn(trace::request_span))
        .layer(DefaultBodyLimit::max(config.limits.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(gate, limits::gate))
        // The operators' web UI: static files, no token, outside the API's limits and
        // its OpenAPI document.
        .merge(ui::routes())
}

/// A layer that lets through only requests whose token holds `scope` (for routes
/// outside this module, such as the chaos fault switch).
pub fn require_scope(router: Router, auth: Auth, scope: Scope) -> Router {
    router.route_layer(axum::middleware::from_fn(
        move |request: axum::extract::Request, next: axum::middleware::Next| {
            let auth = auth.clone();
            async move {
                use axum::response::IntoResponse;
                match auth.require(request.headers(), scope) {
                    Ok(_) => next.run(request).await,
                    Err(e) => e.into_response(),
                }
            }
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// Every `$ref` in `value`, with where it was found.
    fn refs<'a>(value: &'a Value, at: String, out: &mut Vec<(String, &'a str)>) {
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    if k == "$ref" {
                        out.push((at.clone(), v.as_str().unwrap_or("<not a string>")));
                    }
                    refs(v, format!("{at}/{k}"), out);
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    refs(v, format!("{at}/{i}"), out);
                }
            }
            _ => {}
        }
    }

    #[test]
    fn the_openapi_document_is_valid_and_lists_every_route() {
        let text = serde_json::to_string(&openapi()).unwrap();
        // An independent OpenAPI 3.1 model must accept it.
        let spec = oas3::from_json(&text).unwrap_or_else(|e| panic!("not a valid OpenAPI 3.1 document: {e}"));
        assert_eq!(spec.paths.as_ref().map(|p| p.len()), Some(6));
        let doc: Value = serde_json::from_str(&text).unwrap();
        assert!(
            doc["openapi"].as_str().unwrap().starts_with("3.1"),
            "{}",
            doc["openapi"]
        );
        assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
        let paths = doc["paths"].as_object().unwrap();
        let mut routes: Vec<String> = Vec::new();
        for (path, item) in paths {
            for (method, op) in item.as_object().unwrap() {
                routes.push(format!("{} {path}", method.to_uppercase()));
                let responses = op["responses"]
                    .as_object()
                    .unwrap_or_else(|| panic!("{method} {path}: no responses"));
                assert!(!responses.is_empty(), "{method} {path}");
                for (code, r) in responses {
                    assert!(code.parse::<u16>().is_ok(), "{method} {path}: response {code}");
                    assert!(r["description"].is_string(), "{method} {path} {code}: no description");
                }
                // Path parameters are declared.
                for name in path.split('{').skip(1).filter_map(|s| s.split('}').next()) {
                    let declared = op["parameters"]
                        .as_array()
                        .is_some_and(|ps| ps.iter().any(|p| p["name"] == name && p["in"] == "path"));
                    assert!(declared, "{method} {path}: path parameter {name} undeclared");
                }
            }
        }
        routes.sort();
        assert_eq!(
            routes,
            [
                "GET /v1/openapi.json",
                "GET /v1/sagas",
                "GET /v1/sagas/{id}",
                "GET /v1/stats",
                "POST /v1/payments",
                "POST /v1/sagas",
                "POST /v1/sagas/{id}/retry",
            ]
        );
        // Every reference resolves to a component.
        let mut found = Vec::new();
        refs(&doc, String::new(), &mut found);
        assert!(!found.is_empty());
        for (at, r) in found {
            let name = r
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("{at}: unexpected $ref {r}"));
            assert!(
                doc["components"]["schemas"][name].is_object(),
                "{at}: $ref {r} resolves to nothing"
            );
        }
        assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    }
}
