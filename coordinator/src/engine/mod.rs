//! The running coordinator: a handle ([`Coordinator`]) and its tasks
//! ([`CoordinatorTasks`]).

mod admission;
mod drive;
mod intake;
mod relay;
mod replies;
mod stats;
mod timers;
mod waiters;

use crate::Error;
use crate::clock::Clock;
use crate::definitions::{PaymentSaga, SagaDefinitions, SagaPlan};
use crate::machine::{Actor, Event, Policy, SagaState};
use crate::store::{self, NewSaga, Routing, SagaView};
use kessai_messages::{Payment, SagaId};
use kessai_transport::{Tasks, Topology, Transport};
use sea_orm::DatabaseConnection;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// How often [`Coordinator::wait`] re-reads a saga another coordinator may finish.
pub const WAIT_POLL: Duration = Duration::from_millis(250);
/// The longest gap between two such re-reads.
pub const WAIT_POLL_MAX: Duration = Duration::from_secs(2);

pub use admission::{Admission, AdmissionLimit};
pub use drive::Driven;
pub use stats::EngineStats;

/// How a coordinator behaves. Defaults are production-sane.
#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    pub policy: Policy,
    /// Try deadline of a saga that names none.
    pub try_timeout: Duration,
    pub topology: Topology,
    /// Most replies, submissions or due sagas handled in one transaction.
    pub batch_size: usize,
    /// How often the timer task looks for due sagas.
    pub tick_interval: Duration,
    /// How often the relay looks at the outbox when nobody nudged it.
    pub relay_poll: Duration,
    /// Concurrent reply consumers (1 for SQLite; more pay off on PostgreSQL).
    pub reply_workers: usize,
    /// Resend what every unfinished saga waits on at start.
    pub resume_on_start: bool,
    /// The bound on unfinished sagas beyond which submissions are refused (see
    /// [`admission`](AdmissionLimit)).
    pub admission: AdmissionLimit,
    /// How soon [`Coordinator::wait`] first re-reads a saga another coordinator on the
    /// same database may finish (then at doubling intervals up to [`WAIT_POLL_MAX`]).
    /// `None` when this coordinator is alone on its database (the embedded stack):
    /// it wakes every waiter itself, and re-reading would only load the database.
    pub wait_poll: Option<Duration>,
    /// The saga kinds [`Coordinator::submit_saga`] accepts.
    pub definitions: SagaDefinitions,
    /// The key shared with the participants: with one, every command is signed and a
    /// reply without a valid signature is dead-lettered. `None`: nothing is signed.
    pub message_key: Option<kessai_messages::MessageKey>,
    /// Where the coordinator counts what it does; register it to expose it.
    pub metrics: crate::metrics::CoordinatorMetrics,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self {
            policy: Policy::default(),
            try_timeout: Duration::from_secs(10),
            topology: Topology::default(),
            batch_size: 256,
            tick_interval: Duration::from_millis(100),
            relay_poll: Duration::from_millis(250),
            reply_workers: 1,
            resume_on_start: true,
            admission: AdmissionLimit::adaptive_for(
                Duration::from_secs(10),
                Duration::from_millis(Policy::default().try_resend.initial_ms as u64),
            ),
            wait_poll: Some(WAIT_POLL),
            definitions: SagaDefinitions::default(),
            message_key: None,
            metrics: crate::metrics::CoordinatorMetrics::default(),
        }
    }
}

/// A submission's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Submitted {
    pub saga_id: SagaId,
    /// False when the idempotency key named an existing saga.
    pub created: bool,
}

pub(crate) struct Inner {
    pub db: DatabaseConnection,
    pub transport: Arc<dyn Transport>,
    pub routing: Routing,
    pub clock: Arc<dyn Clock>,
    pub config: CoordinatorConfig,
    pub waiters: waiters::Waiters,
    /// Nudges the relay when a transaction added outbox rows.
    pub outbox_ready: Notify,
    pub admission: Admission,
    pub stats: EngineStats,
}

/// A handle to a running coordinator: submit, inspect, wait. Cheap to clone.
#[derive(Clone)]
pub struct Coordinator {
    inner: Arc<Inner>,
    intake: mpsc::Sender<intake::Request>,
}

/// The coordinator's tasks (intake, relay, replies, timers, admission, resume).
/// `shutdown` stops gracefully (finish in-flight batches, flush the outbox); `kill`
/// or dropping it aborts every task at once, the in-process equivalent of `kill -9`.
pub type CoordinatorTasks = Tasks<Error>;

impl Coordinator {
    /// Starts the coordinator's tasks on a migrated database.
    pub async fn start(
        db: DatabaseConnection,
        transport: Arc<dyn Transport>,
        config: CoordinatorConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<(Coordinator, CoordinatorTasks), Error> {
        transport.declare(&config.topology.reply_queue()).await?;
        let inner = Arc::new(Inner {
            db,
            transport,
            routing: Routing {
                topology: config.topology.clone(),
            },
            clock,
            config: config.clone(),
            waiters: waiters::Waiters::default(),
            outbox_ready: Notify::new(),
            admission: Admission::new(config.admission),
            stats: EngineStats::default(),
        });
        inner.admission.resync(store::count_unfinished(&inner.db).await?);
        let mut tasks = Tasks::new();
        let cancel = tasks.cancel_token();
        let (tx, rx) = mpsc::channel(config.batch_size.max(1) * 4);
        {
            let (inner, cancel) = (inner.clone(), cancel.clone());
            tasks.spawn("intake", async move { intake::run(inner, rx, cancel).await });
        }
        {
            let (inner, cancel) = (inner.clone(), cancel.clone());
            tasks.spawn("relay", async move { relay::run(inner, cancel).await });
        }
        for _ in 0..config.reply_workers.max(1) {
            let (inner, cancel) = (inner.clone(), cancel.clone());
            tasks.spawn("replies", async move { replies::run(inner, cancel).await });
        }
        {
            let (inner, cancel) = (inner.clone(), cancel.clone());
            tasks.spawn("timers", async move { timers::run(inner, cancel).await });
        }
        {
            let (inner, cancel) = (inner.clone(), cancel.clone());
            tasks.spawn("admission", async move { admission_loop(inner, cancel).await });
        }
        if config.resume_on_start {
            let (inner, cancel) = (inner.clone(), cancel.clone());
            tasks.spawn("resume", async move { timers::resume(inner, cancel).await });
        }
        Ok((Coordinator { inner, intake: tx }, tasks))
    }

    /// Submits a payment; its `payment_id` is the idempotency key.
    pub async fn submit_payment(&self, payment: &Payment, try_timeout: Option<Duration>) -> Result<Submitted, Error> {
        self.submit_payment_as(None, payment, try_timeout).await
    }

    /// [`submit_payment`](Self::submit_payment) on behalf of an API client: the
    /// idempotency key is scoped to `client`, and the saga records it.
    pub async fn submit_payment_as(
        &self,
        client: Option<&str>,
        payment: &Payment,
        try_timeout: Option<Duration>,
    ) -> Result<Submitted, Error> {
        let plan = PaymentSaga::plan_payment(payment).map_err(Error::Invalid)?;
        let request = serde_json::to_string(payment).expect("serialises");
        self.submit_plan(client, PaymentSaga::KIND, plan, request, try_timeout)
            .await
    }

    /// Submits a saga of any kind in [`CoordinatorConfig::definitions`]: the
    /// definition validates `request` and turns it into branches.
    pub async fn submit_saga(
        &self,
        kind: &str,
        request: &serde_json::Value,
        try_timeout: Option<Duration>,
    ) -> Result<Submitted, Error> {
        self.submit_saga_as(None, kind, request, try_timeout).await
    }

    /// [`submit_saga`](Self::submit_saga) on behalf of an API client (see
    /// [`submit_payment_as`](Self::submit_payment_as)).
    pub async fn submit_saga_as(
        &self,
        client: Option<&str>,
        kind: &str,
        request: &serde_json::Value,
        try_timeout: Option<Duration>,
    ) -> Result<Submitted, Error> {
        let definition = self.inner.config.definitions.get(kind).ok_or_else(|| {
            let known: Vec<_> = self.inner.config.definitions.kinds().collect();
            Error::Invalid(format!("unknown saga kind {kind:?} (known: {})", known.join(", ")))
        })?;
        let plan = definition.plan(request).map_err(Error::Invalid)?;
        self.submit_plan(client, definition.kind(), plan, request.to_string(), try_timeout)
            .await
    }

    async fn submit_plan(
        &self,
        client: Option<&str>,
        kind: &'static str,
        plan: SagaPlan,
        request: String,
        try_timeout: Option<Duration>,
    ) -> Result<Submitted, Error> {
        let try_timeout = plan
            .try_timeout
            .or(try_timeout)
            .unwrap_or(self.inner.config.try_timeout);
        self.submit(NewSaga {
            kind: kind.into(),
            client: client.map(str::to_owned),
            idempotency_key: plan.idempotency_key.map(|key| scoped_key(client, &key)),
            request,
            branches: plan.branches,
            try_timeout_ms: try_timeout.as_millis() as i64,
            trace_parent: None,
        })
        .await
    }

    /// Submits any TCC saga. A repeated idempotency key returns the saga it names
    /// (`created: false`) if the request is the same, and
    /// [`Error::IdempotencyConflict`] if it is not; either way nothing is created.
    ///
    /// The submission gets a `saga.submit` span under the caller's current
    /// OpenTelemetry context; a new saga keeps that span's context as its trace.
    pub async fn submit(&self, mut new: NewSaga) -> Result<Submitted, Error> {
        let cx = crate::trace::submit(&new.kind, new.client.as_deref());
        if new.trace_parent.is_none() {
            use opentelemetry::trace::TraceContextExt;
            new.trace_parent = kessai_transport::trace::format_traceparent(cx.span().span_context());
        }
        let result = self.submit_traced(new).await;
        crate::trace::submitted(&cx, &result);
        result
    }

    async fn submit_traced(&self, new: NewSaga) -> Result<Submitted, Error> {
        if new.branches.is_empty() {
            return Err(Error::Invalid("a saga needs at least one branch".into()));
        }
        if new.try_timeout_ms <= 0 {
            return Err(Error::Invalid("the try timeout must be positive".into()));
        }
        if let Some((p, _)) = new.branches.iter().find(|(p, _)| p.trim().is_empty()) {
            return Err(Error::Invalid(format!("branch participant {p:?} is empty")));
        }
        let admission = &self.inner.admission;
        if let Err(refused) = admission.try_admit() {
            // A repeated key is not new work: it names its saga even when the door is
            // shut (read-only; no transaction, nothing created).
            if let Some(key) = &new.idempotency_key
                && let Some(existing) = store::existing(&self.inner.db, std::slice::from_ref(key))
                    .await?
                    .get(key)
            {
                return repeated(existing, &new);
            }
            return Err(Error::Overloaded {
                retry_after: admission.refuse(refused).retry_after,
            });
        }
        let result = self.enqueue(new).await;
        if !matches!(result, Ok(Submitted { created: true, .. })) {
            // A duplicate key or a failure created nothing: give the slot back.
            admission.release();
        }
        result
    }

    async fn enqueue(&self, new: NewSaga) -> Result<Submitted, Error> {
        let (tx, rx) = oneshot::channel();
        self.intake
            .send(intake::Request { new, reply: tx })
            .await
            .map_err(|_| Error::ShuttingDown)?;
        rx.await.map_err(|_| Error::ShuttingDown)?
    }

    /// The metrics this coordinator updates (see [`crate::metrics`]).
    pub fn metrics(&self) -> &crate::metrics::CoordinatorMetrics {
        &self.inner.config.metrics
    }

    /// Reads the gauges that describe the database and the broker into
    /// [`metrics`](Self::metrics): sagas by state, stuck sagas, the outbox, the depth
    /// of the reply queue and of every command queue published to (a queue whose depth
    /// cannot be read in a second is left as it was), and admission. Call it before
    /// encoding a scrape.
    pub async fn refresh_metrics(&self) -> Result<(), Error> {
        let inner = &self.inner;
        let m = &inner.config.metrics;
        let counts = self.state_counts().await?;
        for (state, n) in [
            (SagaState::Trying, counts.trying),
            (SagaState::Confirming, counts.confirming),
            (SagaState::Cancelling, counts.cancelling),
            (SagaState::Confirmed, counts.confirmed),
            (SagaState::Cancelled, counts.cancelled),
        ] {
            m.sagas
                .get_or_create(&crate::metrics::StateLabels { state: state.as_str() })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        m.stuck.set(i64::try_from(counts.stuck).unwrap_or(i64::MAX));
        let (depth, oldest) = store::outbox_depth(&inner.db).await?;
        m.outbox_depth.set(i64::try_from(depth).unwrap_or(i64::MAX));
        let age = oldest.map_or(0.0, |t| (inner.clock.now_ms() - t).max(0) as f64 / 1000.0);
        m.outbox_oldest_age.set(age);
        let mut queues: Vec<String> = inner.stats.published_by_queue().into_iter().map(|(q, _)| q).collect();
        queues.push(inner.config.topology.reply_queue());
        for queue in queues {
            if let Ok(Ok(Some(n))) = tokio::time::timeout(Duration::from_secs(1), inner.transport.pending(&queue)).await
            {
                m.queue_depth
                    .get_or_create(&crate::metrics::QueueLabels { queue })
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
        // A counter that follows admission's own count of refusals.
        let refused = inner.admission.refused();
        m.refused.inc_by(refused.saturating_sub(m.refused.get()));
        m.unfinished
            .set(i64::try_from(inner.admission.unfinished()).unwrap_or(i64::MAX));
        m.admission_bound
            .set(i64::try_from(inner.admission.bound()).unwrap_or(i64::MAX));
        Ok(())
    }

    /// What the engine did so far (commands published, resends).
    pub fn stats(&self) -> &EngineStats {
        &self.inner.stats
    }

    /// Admission control's state: unfinished sagas, the bound, refusals.
    pub fn admission(&self) -> &Admission {
        &self.inner.admission
    }

    /// Sagas some request is waiting on right now ([`wait`](Self::wait)).
    pub fn waiters(&self) -> usize {
        self.inner.waiters.len()
    }

    /// The API client that submitted a saga (`None`: no such saga; `Some(None)`:
    /// submitted in-process).
    pub async fn client_of(&self, id: SagaId) -> Result<Option<Option<String>>, Error> {
        store::client_of(&self.inner.db, id).await
    }

    /// A saga with its branches and timeline.
    pub async fn saga(&self, id: SagaId) -> Result<Option<SagaView>, Error> {
        store::view(&self.inner.db, id).await
    }

    /// Waits until the saga is terminal or `timeout` passes; returns its state then.
    ///
    /// Woken at once when this coordinator finishes the saga; another coordinator on
    /// the same database may finish it instead, so unless this coordinator is alone on
    /// its database (`wait_poll: None`) the state is also re-read, first after
    /// `wait_poll` and then at doubling intervals up to [`WAIT_POLL_MAX`] — many clients
    /// waiting on long sagas must not turn into a stream of reads.
    pub async fn wait(&self, id: SagaId, timeout: Duration) -> Result<Option<SagaState>, Error> {
        let mut rx = self.inner.waiters.register(id);
        let deadline = tokio::time::Instant::now() + timeout;
        let mut poll = self.inner.config.wait_poll;
        loop {
            let current = match store::state_of(&self.inner.db, id).await {
                Ok(current) => current,
                Err(e) => {
                    drop(rx);
                    self.inner.waiters.forget(id);
                    return Err(e);
                }
            };
            let now = tokio::time::Instant::now();
            if current.is_none_or(SagaState::is_terminal) || now >= deadline {
                // Unknown, already over, or out of time: nothing this call registered
                // may outlive it.
                drop(rx);
                self.inner.waiters.forget(id);
                return Ok(current);
            }
            let nap = (deadline - now).min(poll.unwrap_or(Duration::MAX));
            poll = poll.map(|p| (p * 2).min(WAIT_POLL_MAX));
            tokio::select! {
                woken = &mut rx, if !rx.is_terminated() => {
                    if let Ok(state) = woken {
                        return Ok(Some(state));
                    }
                }
                _ = tokio::time::sleep(nap) => {}
            }
        }
    }

    /// Resends what a saga waits on now (SRE retry).
    pub async fn retry(&self, id: SagaId, why: &str) -> Result<Driven, Error> {
        self.retry_by(id, why, Actor::Operator).await
    }

    /// [`retry`](Self::retry), recorded in the timeline as done by `by`.
    pub async fn retry_by(&self, id: SagaId, why: &str, by: Actor) -> Result<Driven, Error> {
        let resend = Event::ResendNow {
            why: why.to_owned(),
            by,
        };
        drive::drive(&self.inner, vec![(id, vec![(resend, None)])]).await
    }

    /// Sagas matching `filter`, newest first, at most `limit`.
    pub async fn list(&self, filter: &store::SagaFilter, limit: u64) -> Result<Vec<store::SagaSummary>, Error> {
        store::list(&self.inner.db, filter, limit).await
    }

    pub fn db(&self) -> &DatabaseConnection {
        &self.inner.db
    }
}

/// The idempotency key as stored: scoped to the API client, so two clients may use
/// the same key and neither can reach the other's saga through it. Client names
/// cannot contain `/` (the API refuses such token names).
pub(crate) fn scoped_key(client: Option<&str>, key: &str) -> String {
    match client {
        Some(client) => format!("{client}/{key}"),
        None => key.to_owned(),
    }
}

/// The answer to a submission whose key names `existing`.
pub(crate) fn repeated(existing: &store::Existing, new: &NewSaga) -> Result<Submitted, Error> {
    if existing.same_request(&new.request) {
        Ok(Submitted {
            saga_id: existing.id,
            created: false,
        })
    } else {
        Err(Error::IdempotencyConflict { saga_id: existing.id })
    }
}

/// Re-reads the unfinished count and recomputes the admission bound every
/// [`admission::RESYNC`].
async fn admission_loop(inner: Arc<Inner>, cancel: CancellationToken) -> Result<(), Error> {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tokio::time::sleep(admission::RESYNC) => {}
        }
        match store::count_unfinished(&inner.db).await {
            Ok(n) => inner.admission.resync(n),
            Err(e) => tracing::warn!(error = %e, "counting unfinished sagas failed; will retry"),
        }
    }
}
