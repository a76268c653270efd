//! The API's errors: `{"error": {"code", "message", "field"}}` with a 4xx status for
//! the client's mistakes, 429 / 503 with `Retry-After` when trying again later helps,
//! and never a database's or broker's own text in the message.

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use kessai_messages::SagaId;
use serde::Serialize;
use std::time::Duration;

/// An API error: status, a stable machine-readable code, a human message, the field
/// at fault if there is one.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    /// The saga a 409 is about.
    pub saga_id: Option<SagaId>,
    /// Sent as `Retry-After` (whole seconds) with 429 and 503.
    pub retry_after: Option<Duration>,
}

/// The body of every error response.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `unauthorized`, `invalid_request`, `idempotency_conflict`, …
    pub code: &'static str,
    /// For humans.
    pub message: String,
    /// The input at fault (`amount`, `branches[1].participant`, `Idempotency-Key`), if any.
    pub field: Option<String>,
    /// With `idempotency_conflict`: the saga the key already names.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub saga_id: Option<SagaId>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            saga_id: None,
            retry_after: None,
        }
    }

    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message).field(field)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn saga_not_found(id: impl std::fmt::Display) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "saga_not_found", format!("no saga {id}"))
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message).retry_after(Duration::from_secs(1))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
                field: self.field,
                saga_id: self.saga_id,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
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

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                status,
                "payload_too_large",
                "the request body is larger than this API accepts",
            )
        } else {
            ApiError::new(status, "bad_request", rejection.body_text())
        }
    }
}

impl From<kessai_coordinator::Error> for ApiError {
    fn from(e: kessai_coordinator::Error) -> Self {
        use kessai_coordinator::Error;
        match e {
            Error::Invalid(m) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", m),
            Error::IdempotencyConflict { saga_id } => {
                let mut e = ApiError::new(
                    StatusCode::CONFLICT,
                    "idempotency_conflict",
                    format!("this idempotency key already names saga {saga_id}, submitted with another body"),
                );
                e.saga_id = Some(saga_id);
                e
            }
            Error::Overloaded { retry_after } => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "overloaded",
                format!(
                    "too many sagas in flight; nothing was created, retry in {} s",
                    retry_after.as_secs().max(1)
                ),
            )
            .retry_after(retry_after),
            Error::ShuttingDown => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the coordinator is shutting down; retry on another instance",
            )
            .retry_after(Duration::from_secs(1)),
            e if e.is_retryable() => {
                // The detail (SQL, broker text) goes to the log, not to the client.
                tracing::warn!(error = %e, "request failed; the client may retry");
                ApiError::unavailable("the coordinator cannot reach its database or broker right now; retry")
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
