//! The participant runtime: consume, barrier, commit, reply, ack.
//!
//! One worker loop, per batch of deliveries:
//! 1. check, decode and validate each delivery; poison (broker headers beyond the
//!    limits, a missing or bad signature when a message key is configured,
//!    undecodable bytes, a reply on a command queue, a command for another
//!    participant, a `reply_to` this participant does not answer to, a bad payload) is
//!    dead-lettered with its reason straight away, and changes nothing;
//! 2. open ONE database transaction for the rest — group commit: one fsync per batch
//!    instead of per command, which is what a single-writer SQLite needs — and run
//!    each command through the barrier in its own savepoint;
//! 3. commit; then publish the replies (one `publish_batch` per reply queue); then ack.
//!
//! The order is the point: a delivery is acked only once its effect and its barrier row
//! are durable and its reply is with the broker. A crash anywhere before the ack gets
//! the command redelivered and the barrier replays the stored answer.
//!
//! Failures: a retryable command (business `Retryable`, a database error confined to
//! its savepoint) is requeued after `retry_delay` without holding up the rest of the
//! batch. A failure of the batch transaction itself (begin, commit, a savepoint that
//! cannot be rolled back, a deadlock with another worker's batch) requeues the whole
//! batch and the worker backs off. A reply that cannot be published requeues its
//! delivery.
//!
//! Observability: each command gets an OpenTelemetry span (`tcc.try`, `tcc.confirm`,
//! `tcc.cancel`; see [`kessai_transport::trace`]), the child of the coordinator's
//! `tcc.dispatch` span the command carries, and its reply carries this span back; its
//! log span has the `saga_id` and `trace_id`. Durations, barrier hits and dead
//! letters are counted in [`RuntimeConfig::metrics`] ([`super::metrics`]).

use super::barrier::{self, PreparedCommand};
use super::{BranchRef, Participant};
use crate::Error;
use kessai_messages::{Envelope, MessageKey, Operation, Outcome, SIGNATURE_HEADER, limits, signing};
use kessai_transport::trace;
use kessai_transport::{ConsumeOptions, Consumer, Delivery, Headers, OutgoingMessage, Tasks, Topology, Transport};
use opentelemetry::trace::{SpanKind, TraceContextExt};
use opentelemetry::{Context, KeyValue};
use sea_orm::{DatabaseConnection, DatabaseTransaction, SqliteTransactionMode, TransactionOptions, TransactionTrait};
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use std::time::Instant;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, Span, field};

/// How a [`ParticipantRuntime`] consumes and batches.
#[derive(Clone)]
pub struct RuntimeConfig {
    /// Queue naming; the runtime consumes `topology.command_queue(participant.name())`.
    pub topology: Topology,
    /// Most commands per database transaction. Larger batches amortise the commit's
    /// fsync; smaller ones answer sooner under light load.
    pub batch_size: usize,
    /// Concurrent consume → transaction loops. 1 suits SQLite (one writer, one pooled
    /// connection); PostgreSQL benefits from a few, up to its pool size.
    pub workers: usize,
    /// How long a worker waits for a first message; bounds how late it notices
    /// cancellation.
    pub poll_wait: Duration,
    /// Unsettled deliveries per worker; `None` = twice `batch_size`, leaving room for
    /// deliveries waiting out `retry_delay`.
    pub prefetch: Option<u16>,
    /// How long a command that failed retryably waits before it is requeued, so a
    /// persistent failure does not spin.
    pub retry_delay: Duration,
    /// First pause after a batch-level failure (database or broker down); doubles up
    /// to `max_error_backoff` while failures continue.
    pub error_backoff: Duration,
    pub max_error_backoff: Duration,
    /// Where the runtime counts what it does; register it to expose it.
    pub metrics: super::metrics::ParticipantMetrics,
    /// Queues, besides `topology.reply_queue()`, that a command may name as its
    /// `reply_to`. A command naming any other is dead-lettered: whoever can write to
    /// the command queue must not make this participant publish where they choose.
    pub extra_reply_queues: Vec<String>,
    /// The key shared with the coordinators: with one, a command without a valid
    /// signature is dead-lettered and every reply is signed. `None`: nothing is signed.
    pub message_key: Option<MessageKey>,
}

impl RuntimeConfig {
    /// Whether a command may be answered on `queue`.
    pub fn answers_to(&self, queue: &str) -> bool {
        queue == self.topology.reply_queue() || self.extra_reply_queues.iter().any(|q| q == queue)
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            topology: Topology::default(),
            batch_size: 128,
            workers: 1,
            poll_wait: Duration::from_millis(500),
            prefetch: None,
            retry_delay: Duration::from_millis(250),
            error_backoff: Duration::from_millis(100),
            max_error_backoff: Duration::from_secs(5),
            metrics: super::metrics::ParticipantMetrics::default(),
            extra_reply_queues: Vec::new(),
            message_key: None,
        }
    }
}

impl fmt::Debug for RuntimeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuntimeConfig")
            .field("topology", &self.topology)
            .field("batch_size", &self.batch_size)
            .field("workers", &self.workers)
            .field("poll_wait", &self.poll_wait)
            .field("prefetch", &self.prefetch)
            .field("retry_delay", &self.retry_delay)
            .field("error_backoff", &self.error_backoff)
            .field("max_error_backoff", &self.max_error_backoff)
            .field("extra_reply_queues", &self.extra_reply_queues)
            .field("message_key", &self.message_key)
            .finish()
    }
}

/// How one batch was settled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Answered (reply published) and acked.
    pub replied: usize,
    /// Moved to the dead-letter queue.
    pub dead_lettered: usize,
    /// Handed back for redelivery (now or after `retry_delay`).
    pub requeued: usize,
}

/// Runs a [`Participant`]: consumes its command queue and answers every command
/// through the barrier. See the module docs for the order of effects.
pub struct ParticipantRuntime<P: Participant> {
    inner: Arc<Inner<P>>,
}

impl<P: Participant> Clone for ParticipantRuntime<P> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<P> {
    participant: P,
    db: DatabaseConnection,
    transport: Arc<dyn Transport>,
    config: RuntimeConfig,
    queue: String,
    /// Reply queues already declared, so each is declared once per process.
    declared: Mutex<HashSet<String>>,
    /// Deliveries waiting out `retry_delay`; `run` waits for them before returning.
    delayed: TaskTracker,
}

/// One command on its way through a batch.
struct Pending<T> {
    delivery: Delivery,
    envelope: Envelope,
    command: PreparedCommand<T>,
    span: Span,
    /// The command's OpenTelemetry span.
    otel: Context,
}

impl<P: Participant> ParticipantRuntime<P> {
    pub fn new(participant: P, db: DatabaseConnection, transport: Arc<dyn Transport>) -> Self {
        Self::with_config(participant, db, transport, RuntimeConfig::default())
    }

    pub fn with_config(
        participant: P,
        db: DatabaseConnection,
        transport: Arc<dyn Transport>,
        config: RuntimeConfig,
    ) -> Self {
        let queue = config.topology.command_queue(participant.name());
        Self {
            inner: Arc::new(Inner {
                participant,
                db,
                transport,
                config,
                queue,
                declared: Mutex::new(HashSet::new()),
                delayed: TaskTracker::new(),
            }),
        }
    }

    pub fn participant(&self) -> &P {
        &self.inner.participant
    }

    /// The command queue this runtime consumes.
    pub fn queue(&self) -> &str {
        &self.inner.queue
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.inner.config
    }

    /// The consume options each worker uses.
    pub fn consume_options(&self) -> ConsumeOptions {
        let config = &self.inner.config;
        let prefetch = config
            .prefetch
            .unwrap_or_else(|| u16::try_from(config.batch_size.max(1).saturating_mul(2)).unwrap_or(u16::MAX));
        ConsumeOptions {
            prefetch: prefetch.max(1),
            poll_wait: config.poll_wait,
        }
    }

    /// Starts [`run`](Self::run) as a supervised task named after the participant:
    /// `shutdown()` on the result stops it gracefully, `kill()` (or dropping it) aborts.
    pub fn start(self) -> Tasks<Error> {
        let mut tasks = Tasks::new();
        let cancel = tasks.cancel_token();
        tasks.spawn(self.inner.participant.name(), async move { self.run(cancel).await });
        tasks
    }

    /// Consumes until `cancel` fires, with `config.workers` concurrent loops. A batch
    /// in flight when it fires is finished (committed, answered, acked) first.
    ///
    /// Transient failures (broker or database down) are logged and retried with
    /// backoff; `Err` only for permanent ones (misconfiguration, a closed transport).
    pub async fn run(self, cancel: CancellationToken) -> Result<(), Error> {
        let inner = &self.inner;
        let mut backoff = Backoff::new(&inner.config);
        loop {
            match inner.transport.declare(&inner.queue).await {
                Ok(()) => break,
                Err(e) if e.is_retryable() => {
                    tracing::warn!(messaging.destination.name = %inner.queue, error = %e, "declaring the command queue failed; retrying");
                    if sleep_or_cancel(backoff.next(), &cancel).await {
                        return Ok(());
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        let stop = cancel.child_token();
        let mut workers = JoinSet::new();
        for worker in 0..inner.config.workers.max(1) {
            let runtime = self.clone();
            let stop = stop.clone();
            let span = tracing::info_span!(
                "participant_worker",
                participant = runtime.inner.participant.name(),
                worker,
                messaging.system = runtime.inner.transport.system(),
                messaging.destination.name = %runtime.inner.queue,
            );
            workers.spawn(async move { runtime.worker(stop).await }.instrument(span));
        }
        let mut first_error = None;
        while let Some(joined) = workers.join_next().await {
            let result = joined.unwrap_or_else(|e| Err(Error::Retryable(format!("participant worker panicked: {e}"))));
            if let Err(e) = result {
                tracing::error!(participant = inner.participant.name(), error = %e, "participant worker stopped");
                stop.cancel();
                first_error.get_or_insert(e);
            }
        }
        inner.delayed.close();
        inner.delayed.wait().await;
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn worker(&self, cancel: CancellationToken) -> Result<(), Error> {
        let inner = &self.inner;
        let mut backoff = Backoff::new(&inner.config);
        let mut consumer: Option<Box<dyn Consumer>> = None;
        while !cancel.is_cancelled() {
            let current = match consumer.as_mut() {
                Some(c) => c,
                None => match inner.transport.consume(&inner.queue, self.consume_options()).await {
                    Ok(c) => consumer.insert(c),
                    Err(e) if e.is_retryable() => {
                        tracing::warn!(error = %e, "consuming the command queue failed; retrying");
                        sleep_or_cancel(backoff.next(), &cancel).await;
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                },
            };
            let batch = match current.next_batch(inner.config.batch_size.max(1)).await {
                Ok(batch) => batch,
                Err(kessai_transport::Error::Closed) if cancel.is_cancelled() => break,
                Err(e) if e.is_retryable() => {
                    // Start over with a fresh consumer: after a broker outage the old
                    // one may never deliver again.
                    tracing::warn!(error = %e, "receiving commands failed; reconnecting");
                    consumer = None;
                    sleep_or_cancel(backoff.next(), &cancel).await;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            if batch.is_empty() {
                continue;
            }
            match self.process_batch(batch).await {
                Ok(_) => backoff.reset(),
                Err(e) => {
                    tracing::warn!(error = %e, "batch failed and was requeued; backing off");
                    sleep_or_cancel(backoff.next(), &cancel).await;
                }
            }
        }
        Ok(())
    }

    /// Settles one batch of deliveries (see the module docs). Public so tests and
    /// tools can drive the runtime by hand.
    ///
    /// `Err` means the batch transaction failed: its commands were all requeued and
    /// nothing of them was committed or answered (dead-letters stand). The caller
    /// should back off before the next batch.
    pub async fn process_batch(&self, deliveries: Vec<Delivery>) -> Result<BatchReport, Error> {
        let inner = &self.inner;
        let mut report = BatchReport::default();
        let batch_span = tracing::debug_span!(
            "participant_batch",
            participant = inner.participant.name(),
            messaging.system = inner.transport.system(),
            messaging.destination.name = %inner.queue,
            messaging.batch.message_count = deliveries.len(),
        );

        let mut pending = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            match self.prepare(delivery, &batch_span) {
                Ok(p) => pending.push(p),
                Err((delivery, reason, span)) => {
                    self.dead_letter(delivery, &reason, &span, None).await;
                    report.dead_lettered += 1;
                }
            }
        }
        if pending.is_empty() {
            return Ok(report);
        }
        // Every worker takes barrier keys in the same order, so a duplicate of one of
        // these commands in another worker's batch waits for this one to commit
        // instead of deadlocking with it (PostgreSQL; see `lock_order`).
        pending.sort_by_key(|p| lock_order(&p.command));

        // The transaction: every command, each in its own savepoint.
        let txn = match begin_batch(&inner.db).instrument(batch_span.clone()).await {
            Ok(txn) => txn,
            Err(e) => {
                requeue_all(pending).await;
                return Err(e.into());
            }
        };
        let mut answered = Vec::with_capacity(pending.len());
        let mut retry = Vec::new();
        let name = inner.participant.name();
        for p in pending.into_iter() {
            let started = Instant::now();
            let result = barrier::execute(&inner.participant, &txn, &p.command)
                .instrument(p.span.clone())
                .await;
            match result {
                Ok((outcome, hit)) => {
                    let metrics = &inner.config.metrics;
                    let label = outcome_label(&outcome);
                    metrics.operation(
                        name,
                        p.command.operation.as_str(),
                        label,
                        started.elapsed().as_secs_f64(),
                    );
                    metrics.barrier_hit(name, hit);
                    p.otel
                        .span()
                        .set_attribute(KeyValue::new(trace::attr::BARRIER, hit.as_str()));
                    answered.push((p, outcome));
                }
                Err(failure) if failure.poisoned || lock_conflict(&failure.error) => {
                    let _ = txn.rollback().await;
                    p.span.in_scope(|| {
                        tracing::warn!(error = %failure.error, "the batch transaction broke or lost a lock conflict; abandoning the batch")
                    });
                    let all = answered
                        .into_iter()
                        .map(|(p, _)| p)
                        .chain(retry)
                        .chain(std::iter::once(p));
                    requeue_all(all.collect()).await;
                    return Err(failure.error);
                }
                Err(failure) if !failure.error.is_retryable() => {
                    // Stored data this build cannot read: no redelivery will help.
                    let reason = failure.error.to_string();
                    self.dead_letter(p.delivery, &reason, &p.span, Some(&p.otel)).await;
                    report.dead_lettered += 1;
                }
                Err(failure) => {
                    p.span.record("tcc.outcome", "requeued");
                    p.span
                        .in_scope(|| tracing::warn!(error = %failure.error, "command failed retryably; requeueing"));
                    trace::end_with(
                        &p.otel,
                        vec![KeyValue::new(trace::attr::OUTCOME, "requeued")],
                        Some(failure.error.to_string().into()),
                    );
                    retry.push(p);
                }
            }
        }
        if let Err(e) = commit_batch(txn).instrument(batch_span.clone()).await {
            let all = answered.into_iter().map(|(p, _)| p).chain(retry);
            requeue_all(all.collect()).await;
            return Err(e.into());
        }

        for p in retry {
            self.requeue_later(p.delivery);
            report.requeued += 1;
        }
        let (replied, requeued) = self.answer(answered).instrument(batch_span).await;
        report.replied += replied;
        report.requeued += requeued;
        Ok(report)
    }

    /// Decodes and checks one delivery; on failure returns it with the dead-letter reason.
    #[allow(clippy::result_large_err)]
    fn prepare(&self, delivery: Delivery, batch_span: &Span) -> Result<Pending<P::Payload>, (Delivery, String, Span)> {
        let inner = &self.inner;
        let span = tracing::info_span!(
            parent: batch_span,
            "participant_handle",
            participant = inner.participant.name(),
            saga_id = field::Empty,
            saga.branch = field::Empty,
            tcc.operation = field::Empty,
            tcc.attempt = field::Empty,
            tcc.outcome = field::Empty,
            trace_id = field::Empty,
            messaging.system = inner.transport.system(),
            messaging.destination.name = %inner.queue,
            messaging.message.id = field::Empty,
            messaging.redelivered = delivery.redelivered,
        );
        // Before a byte of the payload is parsed: the broker headers, the signature.
        if let Err(reason) = signing::admit(inner.config.message_key.as_ref(), &delivery.payload, &delivery.headers) {
            return Err((delivery, reason, span));
        }
        let envelope = match Envelope::decode(&delivery.payload) {
            Ok(e) => e,
            Err(e) => return Err((delivery, format!("undecodable envelope: {e}"), span)),
        };
        span.record("saga_id", field::display(envelope.saga_id));
        span.record("saga.branch", envelope.branch_id.0);
        span.record("tcc.operation", envelope.operation.as_str());
        span.record("tcc.attempt", envelope.attempt);
        span.record("messaging.message.id", field::display(envelope.message_id));
        if let Some(command) = envelope.as_command()
            && !inner.config.answers_to(&command.reply_to)
        {
            let reason = format!(
                "reply_to {:?} is not a queue {} answers to",
                command.reply_to,
                inner.participant.name()
            );
            return Err((delivery, reason, span));
        }
        match barrier::prepare(&inner.participant, &envelope) {
            Ok(command) => {
                let otel = self.start_span(&envelope);
                if let Some(id) = trace::trace_id(&otel) {
                    span.record("trace_id", id);
                }
                Ok(Pending {
                    delivery,
                    envelope,
                    command,
                    span,
                    otel,
                })
            }
            Err(e) => Err((delivery, e.to_string(), span)),
        }
    }

    /// The command's span, under the coordinator's dispatch span it carries.
    fn start_span(&self, envelope: &Envelope) -> Context {
        let inner = &self.inner;
        let op = envelope.operation.as_str();
        trace::start(
            trace::operation_span(op),
            SpanKind::Consumer,
            &trace::extract(&envelope.headers),
            vec![
                KeyValue::new(trace::attr::SAGA_ID, envelope.saga_id.to_string()),
                KeyValue::new(trace::attr::BRANCH, i64::from(envelope.branch_id.0)),
                KeyValue::new(trace::attr::PARTICIPANT, inner.participant.name().to_owned()),
                KeyValue::new(trace::attr::OPERATION, op),
                KeyValue::new(trace::attr::ATTEMPT, i64::from(envelope.attempt)),
                KeyValue::new(
                    trace::attr::MESSAGING_SYSTEM,
                    trace::messaging_system(inner.transport.system()),
                ),
                KeyValue::new(trace::attr::MESSAGING_DESTINATION, inner.queue.clone()),
                KeyValue::new(trace::attr::MESSAGING_OPERATION, "process"),
            ],
        )
    }

    /// Dead-letters `delivery` with `reason`, counting it and ending its span.
    async fn dead_letter(&self, delivery: Delivery, reason: &str, span: &Span, otel: Option<&Context>) {
        self.inner.config.metrics.dead_letters.record(&self.inner.queue, reason);
        if let Some(cx) = otel {
            trace::end_with(
                cx,
                vec![KeyValue::new(trace::attr::OUTCOME, "dead_lettered")],
                Some(format!("dead-lettered: {reason}").into()),
            );
        }
        dead_letter(delivery, reason, span).await;
    }

    /// Publishes the replies of a committed batch, then acks what was answered.
    /// Returns (replied, requeued).
    async fn answer(&self, answered: Vec<(Pending<P::Payload>, Outcome)>) -> (usize, usize) {
        let inner = &self.inner;
        let mut by_queue: BTreeMap<String, Vec<(Delivery, OutgoingMessage, Span)>> = BTreeMap::new();
        for (p, outcome) in answered {
            record_outcome(&p.span, &outcome);
            let error = match &outcome {
                Outcome::Ok => None,
                Outcome::Rejected { reason } | Outcome::Retryable { reason } => Some(reason.clone().into()),
            };
            let label = outcome_label(&outcome);
            let mut reply = p.envelope.reply(inner.participant.name(), outcome);
            // The reply carries this command's span: the coordinator's is its child.
            trace::inject(&p.otel, &mut reply.headers);
            trace::end_with(&p.otel, vec![KeyValue::new(trace::attr::OUTCOME, label)], error);
            // The envelope's headers (trace context) are copied for brokers' tools,
            // leaving room for the signature within the header limit.
            let mut headers: Headers = reply
                .headers
                .iter()
                .filter(|(name, _)| name.as_str() != SIGNATURE_HEADER)
                .take(limits::MAX_HEADERS - 1)
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect();
            let payload = reply.encode();
            signing::seal(inner.config.message_key.as_ref(), &payload, &mut headers);
            let message = OutgoingMessage {
                payload,
                headers,
                // A reply never goes stale: the coordinator needs every answer.
                expires_in: None,
            };
            let reply_to = p.envelope.as_command().map(|c| c.reply_to.clone()).unwrap_or_default();
            by_queue
                .entry(reply_to)
                .or_default()
                .push((p.delivery, message, p.span));
        }
        let (mut replied, mut requeued) = (0, 0);
        for (queue, entries) in by_queue {
            let (settles, messages): (Vec<_>, Vec<_>) = entries.into_iter().map(|(d, m, s)| ((d, s), m)).unzip();
            let published = match self.declare_reply_queue(&queue).await {
                Ok(()) => inner.transport.publish_batch(&queue, messages).await,
                Err(e) => Err(e),
            };
            match published {
                Ok(()) => {
                    for (delivery, span) in settles {
                        if let Err(e) = delivery.ack().await {
                            // The broker will redeliver; the barrier replays the answer.
                            span.in_scope(|| tracing::warn!(error = %e, "ack failed"));
                        }
                        replied += 1;
                    }
                }
                Err(e) => {
                    tracing::warn!(messaging.destination.name = %queue, error = %e, "publishing replies failed; requeueing their commands");
                    for (delivery, span) in settles {
                        span.record("tcc.outcome", "requeued");
                        requeue_now(delivery).await;
                        requeued += 1;
                    }
                }
            }
        }
        (replied, requeued)
    }

    async fn declare_reply_queue(&self, queue: &str) -> Result<(), kessai_transport::Error> {
        let inner = &self.inner;
        if inner.declared.lock().map(|d| d.contains(queue)).unwrap_or(false) {
            return Ok(());
        }
        inner.transport.declare(queue).await?;
        if let Ok(mut declared) = inner.declared.lock() {
            declared.insert(queue.to_owned());
        }
        Ok(())
    }

    /// Requeues after `retry_delay` without holding up the worker.
    fn requeue_later(&self, delivery: Delivery) {
        let delay = self.inner.config.retry_delay;
        self.inner.delayed.spawn(async move {
            tokio::time::sleep(delay).await;
            requeue_now(delivery).await;
        });
    }
}

/// The order a batch applies its commands in: by branch, and within a branch cancel,
/// confirm, try — the order each operation takes its own barrier keys in (a cancel
/// claims its row, then the try's; a confirm claims its row, then locks the try's).
///
/// Why: a claim (`INSERT .. ON CONFLICT DO NOTHING`) of a key another open transaction
/// inserted waits for that transaction. Redeliveries and resends put duplicates of the
/// same commands into two workers' concurrent batches; applied in delivery order, each
/// worker could hold a key the other waits for. PostgreSQL then kills one statement per
/// `deadlock_timeout` (1 s), and as the victim's transaction goes on to its next
/// duplicate, a large batch stalled both workers for up to `batch_size` seconds. In one
/// global order the later batch simply waits for the earlier one to commit. The
/// protocol does not depend on the order: the broker never promised one.
fn lock_order<T>(command: &PreparedCommand<T>) -> (BranchRef, u8) {
    let rank = match command.operation {
        Operation::Cancel => 0,
        Operation::Confirm => 1,
        Operation::Try => 2,
    };
    (command.branch, rank)
}

/// A lock cycle with another transaction (PostgreSQL `40P01` deadlock, `40001`
/// serialization failure). The savepoint rollback undid this command, but the batch
/// still holds the locks that closed the cycle: the other transaction keeps waiting on
/// them, and each later command of this batch that needs a lock the other holds (a hot
/// row such as the bank's settlement account) deadlocks again, one `deadlock_timeout`
/// (1 s) each. Abandoning the whole batch releases them at once; it is redelivered.
fn lock_conflict(error: &Error) -> bool {
    use sea_orm::{DbErr, RuntimeErr};
    let Error::Db(DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e))) = error else {
        return false;
    };
    match e.as_ref() {
        sea_orm::sqlx::Error::Database(db) => matches!(db.code().as_deref(), Some("40P01" | "40001")),
        _ => false,
    }
}

/// SQLite: `BEGIN IMMEDIATE`, taking the write lock up front so a batch never fails
/// half-way on a lock upgrade. PostgreSQL ignores the mode.
async fn begin_batch(db: &DatabaseConnection) -> Result<DatabaseTransaction, sea_orm::DbErr> {
    db.begin_with_options(TransactionOptions {
        sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
        ..Default::default()
    })
    .await
}

async fn commit_batch(txn: DatabaseTransaction) -> Result<(), sea_orm::DbErr> {
    txn.commit().await
}

fn outcome_label(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Ok => "ok",
        Outcome::Rejected { .. } => "rejected",
        Outcome::Retryable { .. } => "retryable",
    }
}

fn record_outcome(span: &Span, outcome: &Outcome) {
    span.record("tcc.outcome", outcome_label(outcome));
}

async fn dead_letter(delivery: Delivery, reason: &str, span: &Span) {
    span.record("tcc.outcome", "dead_lettered");
    span.in_scope(|| tracing::warn!(reason, "dead-lettering a command"));
    if let Err(e) = delivery.dead_letter(reason).await {
        // Unsettled, so the broker redelivers it and it is dead-lettered again.
        span.in_scope(|| tracing::error!(error = %e, "dead-lettering failed"));
    }
}

async fn requeue_now(delivery: Delivery) {
    if let Err(e) = delivery.requeue().await {
        // Dropped unsettled instead: the broker redelivers it all the same.
        tracing::warn!(error = %e, "requeue failed");
    }
}

async fn requeue_all<T>(pending: Vec<Pending<T>>) {
    for p in pending {
        p.span.record("tcc.outcome", "requeued");
        requeue_now(p.delivery).await;
    }
}

/// Sleeps unless cancelled first; `true` if cancelled.
async fn sleep_or_cancel(duration: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => true,
        _ = tokio::time::sleep(duration) => false,
    }
}

/// Capped exponential backoff for batch-level failures.
struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(config: &RuntimeConfig) -> Self {
        Self {
            first: config.error_backoff,
            max: config.max_error_backoff.max(config.error_backoff),
            next: config.error_backoff,
        }
    }

    fn next(&mut self) -> Duration {
        let current = self.next;
        self.next = (self.next * 2).min(self.max);
        current
    }

    fn reset(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BalanceParticipant;
    use kessai_messages::payment::BALANCE;
    use kessai_messages::{BranchId, Command, SagaId};
    use kessai_migrations::Service;
    use kessai_transport::{DEAD_LETTER_REASON, MemoryTransport, dead_letter_queue};

    const KEY: &[u8] = b"a shared key of 16+ bytes";

    struct Fixture {
        _dir: tempfile::TempDir,
        transport: MemoryTransport,
        runtime: ParticipantRuntime<BalanceParticipant>,
        topology: Topology,
    }

    impl Fixture {
        async fn new(config: RuntimeConfig) -> Self {
            let (dir, db) = kessai_testkit::scratch_sqlite(Service::Balance).await;
            BalanceParticipant::seed_demo(&db).await.unwrap();
            let transport = MemoryTransport::new();
            let topology = config.topology.clone();
            let runtime = ParticipantRuntime::with_config(BalanceParticipant, db, Arc::new(transport.clone()), config);
            transport.declare(runtime.queue()).await.unwrap();
            Self {
                _dir: dir,
                transport,
                runtime,
                topology,
            }
        }

        fn try_to(&self, reply_to: &str) -> Envelope {
            Envelope::command(
                SagaId::new(),
                BranchId(0),
                Operation::Try,
                1,
                None,
                Command {
                    participant: BALANCE.into(),
                    reply_to: reply_to.into(),
                    payload: serde_json::json!({"account_id": "acct-1", "amount": 5, "currency": "EUR"}),
                },
            )
        }

        fn try_(&self) -> Envelope {
            self.try_to(&self.topology.reply_queue())
        }

        /// Publishes `message` on the command queue and runs one batch over it.
        async fn process(&self, message: OutgoingMessage) -> BatchReport {
            self.transport.publish(self.runtime.queue(), message).await.unwrap();
            let mut consumer = self
                .transport
                .consume(self.runtime.queue(), self.runtime.consume_options())
                .await
                .unwrap();
            let batch = kessai_testkit::receive_exactly(&mut consumer, 1, Duration::from_secs(5), "commands").await;
            self.runtime.process_batch(batch).await.unwrap()
        }

        /// The payload and headers of the one message waiting on `queue`, acked.
        async fn take(&self, queue: &str) -> (Vec<u8>, Headers) {
            let mut consumer = self.transport.consume(queue, ConsumeOptions::default()).await.unwrap();
            let d = kessai_testkit::receive_one(&mut consumer, Duration::from_secs(5)).await;
            let taken = (d.payload.clone(), d.headers.clone());
            d.ack().await.unwrap();
            taken
        }

        async fn dead_letter_reason(&self) -> String {
            let (_, headers) = self.take(&dead_letter_queue(self.runtime.queue())).await;
            headers[DEAD_LETTER_REASON].clone()
        }
    }

    fn keyed() -> RuntimeConfig {
        RuntimeConfig {
            message_key: Some(MessageKey::new(KEY).unwrap()),
            ..RuntimeConfig::default()
        }
    }

    const DEAD: BatchReport = BatchReport {
        replied: 0,
        dead_lettered: 1,
        requeued: 0,
    };
    const REPLIED: BatchReport = BatchReport {
        replied: 1,
        dead_lettered: 0,
        requeued: 0,
    };

    #[test]
    fn answers_only_to_configured_reply_queues() {
        let config = RuntimeConfig {
            topology: Topology::new("acme"),
            ..RuntimeConfig::default()
        };
        assert!(config.answers_to("acme-coordinator-replies"));
        assert!(!config.answers_to("kessai-coordinator-replies"));
        assert!(!config.answers_to("attacker"));
        let config = RuntimeConfig {
            extra_reply_queues: vec!["audit-replies".into()],
            ..config
        };
        assert!(config.answers_to("audit-replies"));
        assert!(config.answers_to("acme-coordinator-replies"));
    }

    #[test]
    fn the_key_is_never_printed() {
        let shown = format!("{:?}", keyed());
        assert!(!shown.contains("shared key"), "{shown}");
        assert!(shown.contains("message_key"), "{shown}");
    }

    #[tokio::test]
    async fn a_foreign_reply_to_is_dead_lettered_and_an_allowed_one_answered() {
        let f = Fixture::new(RuntimeConfig {
            extra_reply_queues: vec!["audit-replies".into()],
            ..RuntimeConfig::default()
        })
        .await;
        let foreign = f.try_to("attacker-queue");
        assert_eq!(f.process(OutgoingMessage::new(foreign.encode())).await, DEAD);
        let reason = f.dead_letter_reason().await;
        assert!(reason.contains("reply_to \"attacker-queue\""), "{reason}");
        assert_eq!(f.transport.ready_len("attacker-queue"), 0);
        assert_eq!(
            f.process(OutgoingMessage::new(f.try_to("audit-replies").encode()))
                .await,
            REPLIED
        );
        assert_eq!(f.process(OutgoingMessage::new(f.try_().encode())).await, REPLIED);
        assert_eq!(f.transport.ready_len(&f.topology.reply_queue()), 1);
    }

    #[tokio::test]
    async fn headers_beyond_the_limits_are_dead_lettered() {
        let f = Fixture::new(RuntimeConfig::default()).await;
        // Broker-level headers.
        let mut message = OutgoingMessage::new(f.try_().encode());
        message.headers.insert("n".repeat(200), "v".into());
        assert_eq!(f.process(message).await, DEAD);
        let reason = f.dead_letter_reason().await;
        assert!(reason.starts_with("headers: header name"), "{reason}");
        let mut message = OutgoingMessage::new(f.try_().encode());
        message.headers.insert("note".into(), "a\nb".into());
        assert_eq!(f.process(message).await, DEAD);
        assert!(f.dead_letter_reason().await.contains("control characters"));
        // The envelope's own.
        let mut envelope = f.try_();
        envelope.headers.insert("n".repeat(300), "v".into());
        assert_eq!(f.process(OutgoingMessage::new(envelope.encode())).await, DEAD);
        let reason = f.dead_letter_reason().await;
        assert!(reason.contains("undecodable envelope: invalid envelope"), "{reason}");
        assert!(reason.contains("300 bytes"), "{reason}");
        // Nothing was answered; the next command is.
        assert_eq!(f.transport.ready_len(&f.topology.reply_queue()), 0);
        assert_eq!(f.process(OutgoingMessage::new(f.try_().encode())).await, REPLIED);
    }

    #[tokio::test]
    async fn with_a_key_commands_must_be_signed_and_replies_are() {
        let f = Fixture::new(keyed()).await;
        let key = MessageKey::new(KEY).unwrap();
        let command = f.try_().encode();
        assert_eq!(f.process(OutgoingMessage::new(command.clone())).await, DEAD);
        assert_eq!(f.dead_letter_reason().await, "unsigned message");
        let mut forged = OutgoingMessage::new(command.clone());
        let other = MessageKey::new(*b"not the shared key!!").unwrap();
        forged
            .headers
            .insert(SIGNATURE_HEADER.into(), signing::sign(&other, &command));
        assert_eq!(f.process(forged).await, DEAD);
        assert_eq!(f.dead_letter_reason().await, "bad signature");
        assert_eq!(f.transport.ready_len(&f.topology.reply_queue()), 0);

        let mut envelope = f.try_();
        envelope
            .headers
            .insert(SIGNATURE_HEADER.into(), "not mine to set".into());
        envelope.headers.insert(
            "traceparent".into(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        );
        let payload = envelope.encode();
        let mut signed = OutgoingMessage::new(payload.clone());
        signed
            .headers
            .insert(SIGNATURE_HEADER.into(), signing::sign(&key, &payload));
        assert_eq!(f.process(signed).await, REPLIED);
        let (payload, headers) = f.take(&f.topology.reply_queue()).await;
        assert_eq!(signing::verify(&key, &payload, &headers), Ok(()));
        assert_eq!(
            headers["traceparent"],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        let decoded = Envelope::decode(&payload).unwrap();
        assert_eq!(decoded.as_reply().unwrap().outcome, Outcome::Ok);
    }

    #[tokio::test]
    async fn barrier_hits_and_dead_letters_are_counted() {
        use super::super::barrier::BarrierHit;
        let f = Fixture::new(RuntimeConfig::default()).await;
        let metrics = f.runtime.config().metrics.clone();
        let try_ = f.try_();
        let mut cancel = try_.clone();
        cancel.operation = Operation::Cancel;
        // A cancel with no try before it (empty), then its try (hanging: refused), then
        // the try again (a duplicate of a refused try replays the refusal: hanging).
        for envelope in [&cancel, &try_, &try_, &cancel] {
            let report = f.process(OutgoingMessage::new(envelope.encode())).await;
            assert_eq!(report.replied, 1);
        }
        let name = BALANCE;
        assert_eq!(metrics.barrier_hits(name, BarrierHit::EmptyCancel), 1);
        assert_eq!(metrics.barrier_hits(name, BarrierHit::HangingTry), 2);
        assert_eq!(metrics.barrier_hits(name, BarrierHit::Duplicate), 1);
        assert_eq!(
            metrics.barrier_hits(name, BarrierHit::First),
            0,
            "first runs are not hits"
        );
        assert_eq!(f.process(OutgoingMessage::new(b"{oops".to_vec())).await, DEAD);
        assert_eq!(metrics.dead_letters.count(f.runtime.queue(), "undecodable"), 1);
    }

    #[tokio::test]
    async fn without_a_key_signatures_are_ignored_and_nothing_is_signed() {
        let f = Fixture::new(RuntimeConfig::default()).await;
        let mut message = OutgoingMessage::new(f.try_().encode());
        message.headers.insert(SIGNATURE_HEADER.into(), "whatever".into());
        assert_eq!(f.process(message).await, REPLIED);
        let (_, headers) = f.take(&f.topology.reply_queue()).await;
        assert!(!headers.contains_key(SIGNATURE_HEADER));
    }
}
