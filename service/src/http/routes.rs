//! The coordinator's HTTP API, as far as it exists yet:
//!
//! - `POST /v1/payments` `{payment_id, account_id, card_id, amount, currency}` → 202
//!   `{"saga_id", "created"}` (and a `Location` header). `payment_id` is the
//!   idempotency key: the same id again answers with the same saga and
//!   `"created": false`.
//! - `GET /v1/stats` → commands published, resends, unfinished sagas, the admission
//!   bound and refusals of this coordinator.
//! - `GET /v1/sagas/{id}[?wait=5s]` → the saga's
//!   [`SagaView`](kessai_coordinator::SagaView) (state, branches, timeline), 404 if
//!   unknown. With `wait` (at most [`MAX_WAIT`]) the answer comes once the saga is
//!   terminal or the wait is over, whichever is first — a client needs no poll loop.
//!
//! Errors are JSON `{"error": <code>, "message": <text>}` with a 4xx status for the
//! client's mistakes (malformed JSON 400, wrong content type 415, a payment that does
//! not validate 422, unknown saga 404), 429 with `Retry-After` when admission control
//! refuses a new saga (too many unfinished; nothing is created), and 503 when the
//! coordinator cannot take work right now; a bad request never panics a handler.
//!
//! This module grows into the full /v1 API: bearer-token auth with scopes,
//! `POST /v1/sagas`, `GET /v1/sagas?state=`, retry,
//! `/metrics` and `/ui`. New routes go into [`router`]; processes merge it with
//! [`crate::health::router`].

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use kessai_coordinator::Coordinator;
use kessai_messages::{Payment, SagaId};
use serde::Deserialize;
use serde_json::json;
use std::time::Duration;

/// Longest `?wait=` a request may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

/// The API routes, on a running coordinator.
pub fn router(coordinator: Coordinator) -> Router {
    Router::new()
        .route("/v1/payments", post(submit_payment))
        .route("/v1/sagas/{id}", get(saga))
        .route("/v1/stats", get(stats))
        .with_state(coordinator)
}

/// An API error: status, a stable machine-readable code, a human message.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Sent as `Retry-After` (whole seconds) with 429 and 503.
    pub retry_after: Option<Duration>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(json!({"error": self.code, "message": self.message}))).into_response();
        if let Some(after) = self.retry_after {
            let secs = after.as_secs().max(1).to_string();
            response.headers_mut().insert(
                header::RETRY_AFTER,
                secs.parse().expect("digits are a valid header value"),
            );
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let code = match &rejection {
            JsonRejection::JsonDataError(_) => "invalid_request",
            JsonRejection::JsonSyntaxError(_) => "malformed_json",
            JsonRejection::MissingJsonContentType(_) => "unsupported_media_type",
            _ => "bad_request",
        };
        ApiError::new(rejection.status(), code, rejection.body_text())
    }
}

impl From<kessai_coordinator::Error> for ApiError {
    fn from(e: kessai_coordinator::Error) -> Self {
        use kessai_coordinator::Error;
        match e {
            Error::Invalid(m) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", m),
            Error::Overloaded { retry_after } => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "overloaded",
                format!(
                    "too many payments in flight; nothing was created, retry in {} s",
                    retry_after.as_secs().max(1)
                ),
            )
            .retry_after(retry_after),
            Error::ShuttingDown => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the coordinator is shutting down; retry on another instance",
            ),
            e if e.is_retryable() => {
                tracing::warn!(error = %e, "request failed; the client may retry");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the coordinator cannot reach its database right now; retry",
                )
            }
            e => {
                tracing::error!(error = %e, "request failed");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; see the coordinator's log",
                )
            }
        }
    }
}

/// `POST /v1/payments`.
async fn submit_payment(
    State(coordinator): State<Coordinator>,
    body: Result<Json<Payment>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(payment) = body?;
    payment
        .validate()
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", e.to_string()))?;
    let submitted = coordinator.submit_payment(&payment, None).await?;
    let location = format!("/v1/sagas/{}", submitted.saga_id);
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(json!({"saga_id": submitted.saga_id, "created": submitted.created})),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SagaQuery {
    wait: Option<String>,
}

/// `GET /v1/stats`: what this coordinator did so far and its admission state (the
/// benchmark reads commands per saga here; Prometheus metrics will carry the same).
async fn stats(State(coordinator): State<Coordinator>) -> Json<serde_json::Value> {
    use std::sync::atomic::Ordering::Relaxed;
    let (stats, admission) = (coordinator.stats(), coordinator.admission());
    Json(json!({
        "commands_published": stats.commands_published.load(Relaxed),
        "resends": stats.resends.load(Relaxed),
        "unfinished": admission.unfinished(),
        "admission_bound": admission.bound(),
        "refused": admission.refused(),
        "completion_rate_per_s": admission.rate(),
    }))
}

/// `GET /v1/sagas/{id}[?wait=5s]`.
async fn saga(
    State(coordinator): State<Coordinator>,
    Path(id): Path<String>,
    query: Result<Query<SagaQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
    let id: SagaId = id.parse().map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_saga_id",
            format!("saga id {id:?} is not a UUID: {e}"),
        )
    })?;
    if let Some(wait) = query.wait {
        let wait = crate::units::parse_duration(&wait)
            .ok()
            .filter(|w| *w <= MAX_WAIT)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_wait",
                    format!("wait={wait:?} must be a duration of at most {MAX_WAIT:?}, e.g. 5s or 500ms"),
                )
            })?;
        coordinator.wait(id, wait).await?;
    }
    match coordinator.saga(id).await? {
        Some(view) => Ok(Json(view).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "saga_not_found",
            format!("no saga {id}"),
        )),
    }
}
