//! The coordinator's HTTP API (SPEC §5), as far as it exists yet:
//!
//! - `POST /v1/payments` `{payment_id, account_id, card_id, amount, currency}` → 202
//!   `{"saga_id", "created"}` (and a `Location` header). `payment_id` is the
//!   idempotency key: the same id again answers with the same saga and
//!   `"created": false`.
//! - `GET /v1/sagas/{id}[?wait=5s]` → the saga's
//!   [`SagaView`](kessai_coordinator::SagaView) (state, branches, timeline), 404 if
//!   unknown. With `wait` (at most [`MAX_WAIT`]) the answer comes once the saga is
//!   terminal or the wait is over, whichever is first — a client needs no poll loop.
//!
//! Errors are JSON `{"error": <code>, "message": <text>}` with a 4xx status for the
//! client's mistakes (malformed JSON 400, wrong content type 415, a payment that does
//! not validate 422, unknown saga 404) and 503 when the coordinator cannot take work
//! right now; a bad request never panics a handler.
//!
//! This module grows into the full API of SPEC §5: bearer-token auth with scopes,
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
        .with_state(coordinator)
}

/// An API error: status, a stable machine-readable code, a human message.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({"error": self.code, "message": self.message}))).into_response()
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
