//! Time and concurrency limits of the API, as one middleware: at most
//! `max_in_flight` requests are served at once (beyond that 429 with `Retry-After`,
//! answered at once rather than queued, so a flood cannot pile up waiting requests
//! and their memory), and a request still running after `request_timeout` is dropped
//! with 503.
//!
//! Written here rather than with tower's `ConcurrencyLimit` + `LoadShed` and
//! tower-http's `Timeout`: those answer with bodies and statuses of their own, and
//! every error of this API is the same JSON shape; the whole thing is a semaphore and
//! a `tokio::time::timeout`.

use super::error::ApiError;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// The API's limits.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Requests served at once.
    pub max_in_flight: usize,
    /// Longest a request may take (longer than the longest `?wait=`).
    pub request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 64 * 1024,
            max_in_flight: 1024,
            request_timeout: Duration::from_secs(35),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Gate {
    permits: Arc<Semaphore>,
    timeout: Duration,
}

impl Gate {
    pub fn new(limits: &Limits) -> Self {
        Gate {
            permits: Arc::new(Semaphore::new(limits.max_in_flight.max(1))),
            timeout: limits.request_timeout,
        }
    }
}

pub(crate) async fn gate(State(gate): State<Gate>, request: Request, next: Next) -> Response {
    let Ok(_permit) = gate.permits.clone().try_acquire_owned() else {
        return ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            "too many requests in flight; retry shortly",
        )
        .retry_after(Duration::from_secs(1))
        .into_response();
    };
    match tokio::time::timeout(gate.timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            format!(
                "the request took longer than {:?}; it may or may not have taken effect: retry with the same idempotency key",
                gate.timeout
            ),
        )
        .retry_after(Duration::from_secs(1))
        .into_response(),
    }
}
