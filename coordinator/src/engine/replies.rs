//! Consumes participants' replies in batches: check, decode, apply in one transaction,
//! commit, then ack. A reply is dead-lettered with the reason, changing nothing, when
//! its broker headers break the limits, its signature is missing or wrong (when a
//! message key is configured), it does not decode, or it answers nothing its saga sent
//! (unknown saga or branch, another participant, an operation or send the saga never
//! made). A batch whose transaction fails is requeued.

use super::Inner;
use super::drive::{self, Tag};
use crate::Error;
use crate::machine::Event;
use crate::trace;
use kessai_messages::{Body, Envelope, SagaId, signing};
use kessai_transport::{ConsumeOptions, Consumer, Delivery};
use opentelemetry::Context;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug_span, warn};

pub(crate) async fn run(inner: Arc<Inner>, cancel: CancellationToken) -> Result<(), Error> {
    let queue = inner.config.topology.reply_queue();
    let options = ConsumeOptions {
        prefetch: inner.config.batch_size.clamp(1, u16::MAX as usize) as u16,
        poll_wait: Duration::from_millis(500),
    };
    let mut backoff = Duration::from_millis(100);
    let mut consumer: Option<Box<dyn Consumer>> = None;
    while !cancel.is_cancelled() {
        let c = match &mut consumer {
            Some(c) => c,
            None => match inner.transport.consume(&queue, options.clone()).await {
                Ok(c) => consumer.insert(c),
                Err(e) => {
                    warn!(error = %e, queue, "cannot consume replies; retrying");
                    sleep_or_cancel(&cancel, &mut backoff).await;
                    continue;
                }
            },
        };
        let batch = tokio::select! {
            _ = cancel.cancelled() => break,
            b = c.next_batch(inner.config.batch_size) => b,
        };
        match batch {
            Ok(batch) if batch.is_empty() => {}
            Ok(batch) => {
                backoff = Duration::from_millis(100);
                let span = debug_span!(
                    "reply_batch",
                    messaging.system = inner.transport.system(),
                    messaging.batch.message_count = batch.len()
                );
                if let Err(e) = handle(&inner, batch).instrument(span).await {
                    warn!(error = %e, "reply batch failed; requeued");
                    sleep_or_cancel(&cancel, &mut backoff).await;
                }
            }
            Err(e) => {
                warn!(error = %e, queue, "reply consumer failed; reconnecting");
                consumer = None;
                sleep_or_cancel(&cancel, &mut backoff).await;
            }
        }
    }
    Ok(())
}

async fn sleep_or_cancel(cancel: &CancellationToken, backoff: &mut Duration) {
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = tokio::time::sleep(*backoff) => {}
    }
    *backoff = (*backoff * 2).min(Duration::from_secs(5));
}

async fn handle(inner: &Inner, batch: Vec<Delivery>) -> Result<(), Error> {
    let mut events: Vec<(SagaId, Event, Tag)> = Vec::with_capacity(batch.len());
    let mut rejected: Vec<(usize, String)> = Vec::new();
    // Each decoded reply's `tcc.reply` span, ended once its fate is known.
    let mut spans: Vec<Option<(SagaId, Context)>> = vec![None; batch.len()];
    // Each decoded reply's branch operation, outcome and round trip, for the metrics.
    let mut timings: Vec<Option<Timing>> = vec![None; batch.len()];
    let queue = inner.config.topology.reply_queue();
    for (i, d) in batch.iter().enumerate() {
        match decode(inner, d) {
            Ok((saga, event, env_headers)) => {
                // From the envelope's headers: covered by the signature, unlike the
                // broker's copy.
                let sent_at = env_headers
                    .get(crate::store::SENT_AT_HEADER)
                    .and_then(|v| v.parse().ok());
                spans[i] = Some((
                    saga,
                    trace::reply(&env_headers, saga, &event, inner.transport.system(), &queue),
                ));
                timings[i] = Timing::of(&event, sent_at);
                events.push((saga, event, Some(i)));
            }
            Err(reason) => rejected.push((i, reason)),
        }
    }
    let n = batch.len();
    let driven = match drive::drive(inner, drive::group(events)).await {
        Ok(d) => d,
        Err(e) => {
            for (_, cx) in spans.iter().flatten() {
                kessai_transport::trace::end_with(cx, vec![], Some(format!("not applied: {e}").into()));
            }
            // Nothing committed: every delivery goes back, except those that are
            // poison whatever happens.
            let mut slots: Vec<Option<Delivery>> = batch.into_iter().map(Some).collect();
            for (i, reason) in rejected {
                if let Some(d) = slots[i].take() {
                    inner.config.metrics.dead_letters.record(&queue, &reason);
                    dead_letter(d, &reason).await;
                }
            }
            for d in slots.into_iter().flatten() {
                let _ = d.requeue().await;
            }
            return Err(e);
        }
    };
    end_spans(&mut spans, &driven);
    let now = inner.clock.now_ms();
    for i in drive::settled_ok(n, &driven) {
        if let Some(t) = &timings[i] {
            let seconds = (now - t.sent_at_ms).max(0) as f64 / 1000.0;
            inner
                .config
                .metrics
                .operation(&t.participant, t.operation, t.outcome, seconds);
        }
    }
    let mut slots: Vec<Option<Delivery>> = batch.into_iter().map(Some).collect();
    for (i, reason) in rejected.iter().chain(driven.invalid.iter()) {
        if let Some(d) = slots[*i].take() {
            inner.config.metrics.dead_letters.record(&queue, reason);
            dead_letter(d, reason).await;
        }
    }
    for i in &driven.conflicts {
        if let Some(d) = slots[*i].take() {
            let _ = d.requeue().await;
        }
    }
    for i in drive::settled_ok(n, &driven) {
        if let Some(d) = slots[i].take()
            && let Err(e) = d.ack().await
        {
            // The commit stands; the broker will redeliver and the machine absorbs it.
            warn!(error = %e, "ack failed after commit");
        }
    }
    Ok(())
}

/// A reply's branch operation, for `kessai_branch_operation_duration_seconds`.
#[derive(Clone)]
struct Timing {
    participant: String,
    operation: &'static str,
    outcome: &'static str,
    sent_at_ms: i64,
}

impl Timing {
    fn of(event: &Event, sent_at_ms: Option<i64>) -> Option<Timing> {
        let Event::Reply {
            participant,
            operation,
            outcome,
            ..
        } = event
        else {
            return None;
        };
        Some(Timing {
            participant: participant.clone(),
            operation: operation.as_str(),
            outcome: trace::outcome_label(outcome),
            sent_at_ms: sent_at_ms?,
        })
    }
}

/// Ends the replies' spans: dead-lettered ones with an error, requeued ones marked so,
/// and those that ended their saga with its final state.
fn end_spans(spans: &mut [Option<(SagaId, Context)>], driven: &drive::Driven) {
    use kessai_transport::trace::{attr, end_with};
    use opentelemetry::KeyValue;
    for (i, reason) in &driven.invalid {
        if let Some((_, cx)) = spans[*i].take() {
            end_with(&cx, vec![], Some(format!("dead-lettered: {reason}").into()));
        }
    }
    for i in &driven.conflicts {
        if let Some((_, cx)) = spans[*i].take() {
            end_with(&cx, vec![KeyValue::new("kessai.requeued", true)], None);
        }
    }
    let finished: std::collections::HashMap<SagaId, &'static str> = driven
        .finished
        .iter()
        .map(|(id, state)| (*id, state.as_str()))
        .collect();
    for (saga, cx) in spans.iter_mut().filter_map(Option::take) {
        let attributes = match finished.get(&saga) {
            Some(state) => vec![KeyValue::new(attr::SAGA_STATE, *state)],
            None => Vec::new(),
        };
        end_with(&cx, attributes, None);
    }
}

/// The event a delivery stands for, with its envelope headers (trace context, send
/// time), or why it is dead-lettered. The signature is
/// checked before a byte of the payload is parsed.
fn decode(inner: &Inner, d: &Delivery) -> Result<(SagaId, Event, kessai_transport::Headers), String> {
    signing::admit(inner.config.message_key.as_ref(), &d.payload, &d.headers)?;
    let env = Envelope::decode(&d.payload).map_err(|e| e.to_string())?;
    match env.body {
        Body::Reply(r) => Ok((
            env.saga_id,
            Event::Reply {
                participant: r.participant,
                branch: env.branch_id,
                operation: env.operation,
                attempt: env.attempt,
                outcome: r.outcome,
            },
            env.headers,
        )),
        Body::Command(_) => Err("a command on the reply queue".into()),
    }
}

async fn dead_letter(d: Delivery, reason: &str) {
    warn!(reason, "dead-lettering reply");
    if let Err(e) = d.dead_letter(reason).await {
        warn!(error = %e, "dead-lettering failed; the broker will redeliver");
    }
}
