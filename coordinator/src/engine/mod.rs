//! The running coordinator: a handle ([`Coordinator`]) and its tasks
//! ([`CoordinatorTasks`]).

mod drive;
mod intake;
mod relay;
mod replies;
mod timers;
mod waiters;

use crate::Error;
use crate::clock::Clock;
use crate::machine::{Event, Policy, SagaState};
use crate::store::{self, NewSaga, Routing, SagaView};
use kessai_messages::{Payment, SagaId};
use kessai_transport::{Topology, Transport};
use sea_orm::DatabaseConnection;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How often [`Coordinator::wait`] re-reads a saga another coordinator may finish.
pub const WAIT_POLL: Duration = Duration::from_millis(250);

pub use drive::Driven;

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
}

/// A handle to a running coordinator: submit, inspect, wait. Cheap to clone.
#[derive(Clone)]
pub struct Coordinator {
    inner: Arc<Inner>,
    intake: mpsc::Sender<intake::Request>,
}

/// The coordinator's tasks. [`CoordinatorTasks::shutdown`] stops gracefully (finish
/// in-flight batches, flush the outbox); dropping it aborts every task at once, the
/// in-process equivalent of `kill -9`.
pub struct CoordinatorTasks {
    cancel: CancellationToken,
    tasks: JoinSet<(&'static str, Result<(), Error>)>,
}

impl CoordinatorTasks {
    pub async fn shutdown(mut self) -> Vec<(&'static str, Result<(), Error>)> {
        self.cancel.cancel();
        let mut ended = Vec::new();
        while let Some(r) = self.tasks.join_next().await {
            match r {
                Ok(done) => ended.push(done),
                Err(e) => ended.push(("unknown", Err(Error::Invalid(format!("task panicked: {e}"))))),
            }
        }
        ended
    }

    /// Aborts every task without any shutdown step.
    pub fn kill(mut self) {
        self.tasks.abort_all();
    }

    /// Waits for the first task to end (they only end on cancellation or failure).
    pub async fn join_next(&mut self) -> Option<(&'static str, Result<(), Error>)> {
        self.tasks.join_next().await.map(|r| match r {
            Ok(done) => done,
            Err(e) => ("unknown", Err(Error::Invalid(format!("task panicked: {e}")))),
        })
    }
}

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
        });
        let cancel = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let (tx, rx) = mpsc::channel(config.batch_size.max(1) * 4);
        {
            let (inner, cancel) = (inner.clone(), cancel.clone());
            tasks.spawn(async move { ("intake", intake::run(inner, rx, cancel).await) });
        }
        {
            let (inner, cancel) = (inner.clone(), cancel.clone());
            tasks.spawn(async move { ("relay", relay::run(inner, cancel).await) });
        }
        for _ in 0..config.reply_workers.max(1) {
            let (inner, cancel) = (inner.clone(), cancel.clone());
            tasks.spawn(async move { ("replies", replies::run(inner, cancel).await) });
        }
        {
            let (inner, cancel) = (inner.clone(), cancel.clone());
            tasks.spawn(async move { ("timers", timers::run(inner, cancel).await) });
        }
        if config.resume_on_start {
            let (inner, cancel) = (inner.clone(), cancel.clone());
            tasks.spawn(async move { ("resume", timers::resume(inner, cancel).await) });
        }
        Ok((Coordinator { inner, intake: tx }, CoordinatorTasks { cancel, tasks }))
    }

    /// Submits a payment; its `payment_id` is the idempotency key.
    pub async fn submit_payment(&self, payment: &Payment, try_timeout: Option<Duration>) -> Result<Submitted, Error> {
        payment.validate().map_err(|e| Error::Invalid(e.to_string()))?;
        let branches = payment
            .branches()
            .into_iter()
            .map(|(participant, payload)| (participant.to_owned(), payload))
            .collect();
        self.submit(NewSaga {
            kind: "payment".into(),
            idempotency_key: Some(format!("payment:{}", payment.payment_id)),
            request: serde_json::to_string(payment).expect("serialises"),
            branches,
            try_timeout_ms: try_timeout.unwrap_or(self.inner.config.try_timeout).as_millis() as i64,
        })
        .await
    }

    /// Submits any TCC saga.
    pub async fn submit(&self, new: NewSaga) -> Result<Submitted, Error> {
        if new.branches.is_empty() {
            return Err(Error::Invalid("a saga needs at least one branch".into()));
        }
        if new.try_timeout_ms <= 0 {
            return Err(Error::Invalid("the try timeout must be positive".into()));
        }
        if let Some((p, _)) = new.branches.iter().find(|(p, _)| p.trim().is_empty()) {
            return Err(Error::Invalid(format!("branch participant {p:?} is empty")));
        }
        let (tx, rx) = oneshot::channel();
        self.intake
            .send(intake::Request { new, reply: tx })
            .await
            .map_err(|_| Error::ShuttingDown)?;
        rx.await.map_err(|_| Error::ShuttingDown)?
    }

    /// A saga with its branches and timeline.
    pub async fn saga(&self, id: SagaId) -> Result<Option<SagaView>, Error> {
        store::view(&self.inner.db, id).await
    }

    /// Waits until the saga is terminal or `timeout` passes; returns its state then.
    ///
    /// Woken at once when this coordinator finishes the saga; another coordinator on
    /// the same database may finish it instead, so the state is also re-read every
    /// [`WAIT_POLL`].
    pub async fn wait(&self, id: SagaId, timeout: Duration) -> Result<Option<SagaState>, Error> {
        let mut rx = self.inner.waiters.register(id);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let loaded = store::load(&self.inner.db, &[id]).await?;
            let Some(current) = loaded.get(&id).map(|l| l.saga.state) else {
                return Ok(None);
            };
            let now = tokio::time::Instant::now();
            if current.is_terminal() || now >= deadline {
                return Ok(Some(current));
            }
            let nap = (deadline - now).min(WAIT_POLL);
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
        drive::drive(
            &self.inner,
            vec![(id, vec![(Event::ResendNow { why: why.to_owned() }, None)])],
        )
        .await
    }

    pub fn db(&self) -> &DatabaseConnection {
        &self.inner.db
    }
}
