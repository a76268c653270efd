//! One OpenTelemetry server span per API request (`POST /v1/payments`, …), the child of
//! the client's `traceparent` when it sends one. The handler runs in its context, so a
//! submission's `saga.submit` span, and with it the whole saga, joins the client's
//! trace.

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use kessai_transport::trace;
use opentelemetry::KeyValue;
use opentelemetry::trace::{FutureExt, SpanKind, Status, TraceContextExt};

pub(super) async fn request_span(request: Request, next: Next) -> Response {
    let parent = trace::context_from(request.headers().get(trace::TRACEPARENT).and_then(|v| v.to_str().ok()));
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| request.uri().path().to_owned(), |p| p.as_str().to_owned());
    let cx = trace::start(
        format!("{method} {route}"),
        SpanKind::Server,
        &parent,
        vec![
            KeyValue::new("http.request.method", method),
            KeyValue::new("http.route", route),
        ],
    );
    let response = next.run(request).with_context(cx.clone()).await;
    let span = cx.span();
    let status = response.status();
    span.set_attribute(KeyValue::new("http.response.status_code", i64::from(status.as_u16())));
    if status.is_server_error() {
        span.set_status(Status::error(status.to_string()));
    }
    span.end();
    response
}
