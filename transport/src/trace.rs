//! Trace context in message headers, and the span and attribute names every service
//! uses, so one saga is one OpenTelemetry trace from its HTTP submission to its end,
//! across the coordinator and every participant.
//!
//! Context travels as a W3C `traceparent` header (`00-<trace id>-<span id>-<flags>`):
//! in AMQP headers, SQS message attributes and the in-process queues' headers alike
//! (each transport carries a message's headers). The header is parsed and written here
//! rather than through OpenTelemetry's global propagator so that it works the same
//! whether or not a service installed one, and so that the coordinator can keep a
//! saga's context in its database as this one string.
//!
//! Spans are made through OpenTelemetry's global tracer: with no provider installed
//! (tracing off, library use) they cost next to nothing and a parent's context passes
//! through unchanged.

use crate::Headers;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer,
};
use opentelemetry::{Context, KeyValue, global};
use std::borrow::Cow;

/// The W3C trace context header.
pub const TRACEPARENT: &str = "traceparent";

/// Span names. Stable: dashboards and alerts select on them.
pub mod span {
    /// Coordinator: a saga is submitted (the saga's root; a client's `traceparent`,
    /// when given, is its parent).
    pub const SUBMIT: &str = "saga.submit";
    /// Coordinator: a command is decided and written to the outbox for a participant
    /// (producer). The participant's operation span is its child.
    pub const DISPATCH: &str = "tcc.dispatch";
    /// Participant: a command is handled (consumer): barrier and business code in the
    /// participant's transaction.
    pub const TRY: &str = "tcc.try";
    pub const CONFIRM: &str = "tcc.confirm";
    pub const CANCEL: &str = "tcc.cancel";
    /// Coordinator: a participant's reply is applied to its saga (consumer).
    pub const REPLY: &str = "tcc.reply";
    /// Coordinator: the saga's whole life, from creation to its terminal state; made
    /// when it ends.
    pub const SAGA: &str = "saga";
}

/// Attribute keys.
pub mod attr {
    pub const SAGA_ID: &str = "saga.id";
    pub const SAGA_KIND: &str = "saga.kind";
    pub const SAGA_STATE: &str = "saga.state";
    pub const SAGA_REASON: &str = "saga.reason";
    pub const BRANCH: &str = "tcc.branch";
    pub const PARTICIPANT: &str = "tcc.participant";
    pub const OPERATION: &str = "tcc.operation";
    pub const ATTEMPT: &str = "tcc.attempt";
    pub const OUTCOME: &str = "tcc.outcome";
    /// What the participant's barrier made of a command: `first`, `duplicate`,
    /// `empty_cancel`, `hanging_try`.
    pub const BARRIER: &str = "tcc.barrier";
    pub const MESSAGING_SYSTEM: &str = "messaging.system";
    pub const MESSAGING_DESTINATION: &str = "messaging.destination.name";
    pub const MESSAGING_OPERATION: &str = "messaging.operation";
}

/// The `messaging.system` value (OpenTelemetry's names) of a transport's
/// [`system`](crate::Transport::system): `rabbitmq`, `aws_sqs`, or `memory`.
pub fn messaging_system(system: &'static str) -> &'static str {
    match system {
        "amqp" => "rabbitmq",
        "sqs" => "aws_sqs",
        other => other,
    }
}

/// The span name of a participant's operation (`try`, `confirm`, `cancel`).
pub fn operation_span(operation: &str) -> &'static str {
    match operation {
        "try" => span::TRY,
        "confirm" => span::CONFIRM,
        _ => span::CANCEL,
    }
}

/// Formats a span context as a `traceparent` value; `None` when it is not valid.
pub fn format_traceparent(sc: &SpanContext) -> Option<String> {
    sc.is_valid()
        .then(|| format!("00-{}-{}-{:02x}", sc.trace_id(), sc.span_id(), sc.trace_flags().to_u8()))
}

/// Parses a `traceparent` value into a remote span context; `None` unless it is
/// well formed with non-zero ids (any version but `ff`, as W3C requires of readers).
pub fn parse_traceparent(value: &str) -> Option<SpanContext> {
    let mut parts = value.trim().split('-');
    let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2 || version == "ff" || trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    if !(hex(version) && hex(trace) && hex(span) && hex(flags)) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let sc = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    sc.is_valid().then_some(sc)
}

/// The context a `traceparent` names, as a parent for new spans; the empty context
/// when absent or malformed (a bad header never fails a message).
pub fn context_from(traceparent: Option<&str>) -> Context {
    match traceparent.and_then(parse_traceparent) {
        Some(sc) => Context::new().with_remote_span_context(sc),
        None => Context::new(),
    }
}

/// The parent context carried by a message's headers.
pub fn extract(headers: &Headers) -> Context {
    context_from(headers.get(TRACEPARENT).map(String::as_str))
}

/// Writes `cx`'s span into `headers` as `traceparent` (replacing any); removes the
/// header when `cx` has no valid span, so a stale parent is never passed on.
pub fn inject(cx: &Context, headers: &mut Headers) {
    match format_traceparent(&cx.span().span_context().clone()) {
        Some(value) => {
            headers.insert(TRACEPARENT.to_owned(), value);
        }
        None => {
            headers.remove(TRACEPARENT);
        }
    }
}

/// The trace id of `cx`'s span, as 32 lower-case hex digits; `None` without one.
pub fn trace_id(cx: &Context) -> Option<String> {
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// Starts a span named `name` under `parent` with `attributes`, and returns the
/// context holding it: pass that on (inject it, parent children on it) and end the
/// span with [`end`] or [`end_with`].
pub fn start(
    name: impl Into<Cow<'static, str>>,
    kind: SpanKind,
    parent: &Context,
    attributes: Vec<KeyValue>,
) -> Context {
    start_from(name, kind, parent, None, attributes)
}

/// Like [`start`], with the span's start time given (a span that covers something
/// that began before it could be made, such as a saga's whole life).
pub fn start_at(
    name: &'static str,
    kind: SpanKind,
    parent: &Context,
    start: std::time::SystemTime,
    attributes: Vec<KeyValue>,
) -> Context {
    start_from(name, kind, parent, Some(start), attributes)
}

fn start_from(
    name: impl Into<Cow<'static, str>>,
    kind: SpanKind,
    parent: &Context,
    start: Option<std::time::SystemTime>,
    attributes: Vec<KeyValue>,
) -> Context {
    let tracer = global::tracer("kessai");
    let mut builder = tracer.span_builder(name).with_kind(kind).with_attributes(attributes);
    builder.start_time = start;
    parent.with_span(builder.start_with_context(&tracer, parent))
}

/// Ends `cx`'s span.
pub fn end(cx: &Context) {
    cx.span().end();
}

/// Ends `cx`'s span after setting `attributes` and, when `error` is given, an error
/// status with that description (and an `exception` event carrying it).
pub fn end_with(cx: &Context, attributes: Vec<KeyValue>, error: Option<Cow<'static, str>>) {
    let span = cx.span();
    if span.is_recording() {
        span.set_attributes(attributes);
        if let Some(description) = error {
            span.add_event(
                "exception",
                vec![KeyValue::new("exception.message", description.clone())],
            );
            span.set_status(Status::error(description));
        }
    }
    span.end();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_round_trips() {
        let value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let sc = parse_traceparent(value).expect("valid");
        assert!(sc.is_remote() && sc.is_sampled());
        assert_eq!(format_traceparent(&sc).as_deref(), Some(value));
        let unsampled = parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert!(!unsampled.is_sampled());
    }

    #[test]
    fn malformed_traceparents_are_ignored() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-xyz92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad:?}");
            assert!(!context_from(Some(bad)).has_active_span(), "{bad:?}");
        }
    }

    #[test]
    fn without_a_provider_a_parent_passes_through_and_nothing_else_appears() {
        let value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut headers = Headers::new();
        headers.insert(TRACEPARENT.into(), value.into());
        let cx = start(span::TRY, SpanKind::Consumer, &extract(&headers), vec![]);
        assert_eq!(trace_id(&cx).as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        let mut out = Headers::new();
        inject(&cx, &mut out);
        assert_eq!(out[TRACEPARENT], value);
        end(&cx);
        // No parent, no provider: no context, and a stale header is removed.
        let none = start(span::TRY, SpanKind::Consumer, &Context::new(), vec![]);
        assert_eq!(trace_id(&none), None);
        inject(&none, &mut out);
        assert!(!out.contains_key(TRACEPARENT));
    }
}
