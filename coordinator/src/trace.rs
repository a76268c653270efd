//! The coordinator's spans (names and attributes in [`kessai_transport::trace`]):
//! `saga.submit` (the saga's root; stored as the saga's `trace_parent`), one
//! `tcc.dispatch` per command it sends, one `tcc.reply` per reply it applies, and
//! `saga`, spanning the saga's whole life, made when it ends.

use crate::machine::{Branch, SagaState};
use kessai_messages::{Operation, SagaId};
use kessai_transport::trace::{self, attr, span};
use opentelemetry::trace::SpanKind;
use opentelemetry::{Context, KeyValue};
use std::time::{Duration, SystemTime};

/// The `tcc.dispatch` span of a command, under the saga's context (`parent`, from its
/// stored `traceparent`).
pub(crate) fn dispatch(
    parent: &Context,
    saga: SagaId,
    branch: &Branch,
    operation: Operation,
    attempt: u32,
    queue: &str,
) -> Context {
    trace::start(
        span::DISPATCH,
        SpanKind::Producer,
        parent,
        vec![
            KeyValue::new(attr::SAGA_ID, saga.to_string()),
            KeyValue::new(attr::BRANCH, i64::from(branch.id.0)),
            KeyValue::new(attr::PARTICIPANT, branch.participant.clone()),
            KeyValue::new(attr::OPERATION, operation.as_str()),
            KeyValue::new(attr::ATTEMPT, i64::from(attempt)),
            KeyValue::new(attr::MESSAGING_DESTINATION, queue.to_owned()),
            KeyValue::new(attr::MESSAGING_OPERATION, "send"),
        ],
    )
}

/// The `saga` span of a saga that just ended: from its creation to now, under its
/// context, with its final state and reason.
pub(crate) fn finished(
    trace_parent: Option<&str>,
    saga: SagaId,
    kind: &str,
    created_at_ms: i64,
    state: SagaState,
    reason: Option<&str>,
) {
    if trace_parent.is_none() {
        return;
    }
    let parent = trace::context_from(trace_parent);
    let start = SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(created_at_ms).unwrap_or(0));
    let mut attributes = vec![
        KeyValue::new(attr::SAGA_ID, saga.to_string()),
        KeyValue::new(attr::SAGA_KIND, kind.to_owned()),
        KeyValue::new(attr::SAGA_STATE, state.as_str()),
    ];
    if let Some(reason) = reason {
        attributes.push(KeyValue::new(attr::SAGA_REASON, reason.to_owned()));
    }
    let cx = trace::start_at(span::SAGA, SpanKind::Internal, &parent, start, attributes);
    trace::end(&cx);
}

/// Starts the `saga.submit` span of a submission, under the caller's current context
/// (the HTTP request's span, itself the child of a client's `traceparent`).
pub(crate) fn submit(kind: &str, client: Option<&str>) -> Context {
    let mut attributes = vec![KeyValue::new(attr::SAGA_KIND, kind.to_owned())];
    if let Some(client) = client {
        attributes.push(KeyValue::new("kessai.client", client.to_owned()));
    }
    trace::start(span::SUBMIT, SpanKind::Internal, &Context::current(), attributes)
}

/// Ends a `saga.submit` span with what became of the submission.
pub(crate) fn submitted(cx: &Context, result: &Result<crate::Submitted, crate::Error>) {
    match result {
        Ok(s) => trace::end_with(
            cx,
            vec![
                KeyValue::new(attr::SAGA_ID, s.saga_id.to_string()),
                KeyValue::new("saga.created", s.created),
            ],
            None,
        ),
        Err(e) => trace::end_with(cx, vec![], Some(e.to_string().into())),
    }
}

/// Starts the `tcc.reply` span of a reply, under the participant's span the reply
/// carries.
pub(crate) fn reply(
    headers: &kessai_transport::Headers,
    saga: SagaId,
    event: &crate::machine::Event,
    system: &'static str,
    queue: &str,
) -> Context {
    let crate::machine::Event::Reply {
        participant,
        branch,
        operation,
        attempt,
        outcome,
    } = event
    else {
        return Context::new();
    };
    trace::start(
        span::REPLY,
        SpanKind::Consumer,
        &trace::extract(headers),
        vec![
            KeyValue::new(attr::SAGA_ID, saga.to_string()),
            KeyValue::new(attr::BRANCH, i64::from(branch.0)),
            KeyValue::new(attr::PARTICIPANT, participant.clone()),
            KeyValue::new(attr::OPERATION, operation.as_str()),
            KeyValue::new(attr::ATTEMPT, i64::from(*attempt)),
            KeyValue::new(attr::OUTCOME, outcome_label(outcome)),
            KeyValue::new(attr::MESSAGING_SYSTEM, trace::messaging_system(system)),
            KeyValue::new(attr::MESSAGING_DESTINATION, queue.to_owned()),
            KeyValue::new(attr::MESSAGING_OPERATION, "process"),
        ],
    )
}

/// `ok`, `rejected` or `retryable`.
pub(crate) fn outcome_label(outcome: &kessai_messages::Outcome) -> &'static str {
    match outcome {
        kessai_messages::Outcome::Ok => "ok",
        kessai_messages::Outcome::Rejected { .. } => "rejected",
        kessai_messages::Outcome::Retryable { .. } => "retryable",
    }
}
