//! `kessai demo`: the embedded stack under a payment workload, then the invariants.

use crate::invariants::{self, InvariantReport, Resubmission};
use crate::stack::{DatabaseUrls, EmbeddedStack, StackConfig};
use anyhow::{Context, bail};
use kessai_coordinator::{AdmissionLimit, Coordinator, CoordinatorConfig, SagaState, SystemClock};
use kessai_messages::payment::DEFAULT_SETTLEMENT_ACCOUNT;
use kessai_messages::{Currency, Payment, SagaId};
use kessai_participants::Registry;
use kessai_participants::ledger::{DEMO_ACCOUNTS, FROZEN_SETTLEMENT_ACCOUNT, demo_account_id, demo_card_id};
use kessai_service::config::Config;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use secrecy::ExposeSecret;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long one payment may take before the demo calls the run a failure.
const PAYMENT_PATIENCE: Duration = Duration::from_secs(120);

pub use kessai_service::config::{StoreKind, TransportKind};

#[derive(Clone, Debug)]
pub struct DemoOptions {
    pub payments: u64,
    pub fail_rate: f64,
    pub concurrency: usize,
    pub transport: TransportKind,
    pub store: StoreKind,
    pub data_dir: Option<PathBuf>,
    pub seed: u64,
    pub progress: bool,
    /// Broker and database settings (URLs, credentials); the flags above win.
    pub config: Config,
}

#[derive(Clone, Debug, Serialize)]
pub struct DemoSummary {
    pub submitted: u64,
    pub confirmed: u64,
    pub cancelled: u64,
    pub stuck: u64,
    pub unfinished: u64,
    pub invariants_ok: bool,
    pub elapsed_s: f64,
    pub sagas_per_s: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub concurrency: usize,
    pub fail_rate: f64,
    pub transport: TransportKind,
    pub store: StoreKind,
    pub data_dir: String,
    pub invariants: InvariantReport,
}

/// A payment between random demo accounts. With probability `fail_rate` it draws on
/// the bank's frozen settlement account, so the bank's try refuses it: a real business
/// rejection, not a test hook.
pub fn random_payment(rng: &mut SmallRng, payment_id: String, fail_rate: f64) -> Payment {
    let fail = rng.random_bool(fail_rate);
    Payment {
        payment_id,
        account_id: demo_account_id(rng.random_range(1..=DEMO_ACCOUNTS)),
        card_id: demo_card_id(rng.random_range(1..=DEMO_ACCOUNTS)),
        amount: rng.random_range(100..=50_000),
        currency: Currency::new("EUR").expect("valid code"),
        settlement_account: if fail {
            FROZEN_SETTLEMENT_ACCOUNT
        } else {
            DEFAULT_SETTLEMENT_ACCOUNT
        }
        .to_owned(),
    }
}

/// The demo's workload, reproducible from its seed.
fn payments(opts: &DemoOptions, run: &str) -> Vec<Payment> {
    let mut rng = SmallRng::seed_from_u64(opts.seed);
    (0..opts.payments)
        .map(|i| random_payment(&mut rng, format!("demo-{run}-{i}"), opts.fail_rate))
        .collect()
}

/// A fresh id for one run's queue names, database names and payment ids: random (not
/// a time-ordered UUID v7, whose leading characters are the same for every run started
/// within a minute — two runs on one broker would then share queues).
pub fn new_run_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// An embedded stack set up for one demo or bench run, with what it takes to clean
/// up after it: its temporary folder and its queue names.
pub struct RunStack {
    pub stack: EmbeddedStack,
    pub run_id: String,
    /// Where the data is, for the report.
    pub where_: String,
    /// Held so the temporary folder lives as long as the run.
    _temp: Option<tempfile::TempDir>,
}

/// What a run's stack is made of.
pub struct RunSetup<'a> {
    pub transport: TransportKind,
    pub store: StoreKind,
    pub data_dir: Option<&'a std::path::Path>,
    pub config: &'a Config,
    /// Count database statements per service (see [`crate::stack::StatementCounts`]).
    pub count_statements: bool,
    /// The participants to run.
    pub registry: Registry,
}

impl RunStack {
    /// Fresh databases (a temporary SQLite folder, or `kessai_demo_*` PostgreSQL
    /// databases dropped and recreated) and a fresh queue namespace, then the stack.
    pub async fn start(setup: RunSetup<'_>) -> anyhow::Result<Self> {
        let run_id = new_run_id();
        let mut config = setup.config.clone();
        config.transport.kind = setup.transport;
        config.store.kind = setup.store;
        // A fresh queue namespace per run: a message left over from an earlier run can
        // never reach this run's participants.
        config.queue_prefix = format!("{}-demo-{run_id}", config.queue_prefix);
        let mut temp = None;
        let urls = match setup.store {
            StoreKind::Sqlite => {
                let dir = match setup.data_dir {
                    Some(d) => d.to_path_buf(),
                    None => temp
                        .insert(tempfile::Builder::new().prefix("kessai-demo-").tempdir()?)
                        .path()
                        .to_path_buf(),
                };
                std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
                DatabaseUrls::sqlite(&dir, &setup.registry)
            }
            StoreKind::Postgres => {
                // The demo starts from empty books: its databases are dropped and recreated.
                config.store.database_prefix = format!("{}_demo", config.store.database_prefix);
                let server = config.store.postgres_url.expose_secret().to_owned();
                for n in crate::stack::service_names(&setup.registry) {
                    let db = config.database_name(n);
                    kessai_migrations::drop_postgres_database(&server, &db)
                        .await
                        .with_context(|| format!("resetting database {db} on the configured PostgreSQL server"))?;
                }
                let mut urls = DatabaseUrls {
                    coordinator: config.database_url("coordinator").await?,
                    participants: Default::default(),
                };
                for p in setup.registry.iter() {
                    urls.participants.insert(p.name(), config.database_url(p.name()).await?);
                }
                urls
            }
        };
        let where_ = match setup.store {
            StoreKind::Sqlite => urls
                .coordinator
                .trim_start_matches("sqlite://")
                .trim_end_matches("?mode=rwc")
                .to_owned(),
            StoreKind::Postgres => format!("databases {}_*", config.store.database_prefix),
        };
        let transport = config.transport().await?;
        let mut coordinator = config.coordinator_config();
        let mut participant = config.participant_config();
        if setup.store == StoreKind::Postgres {
            // Row locks, not a single writer: several consumers pay off. Participants
            // commit each command on its own (PostgreSQL group-commits concurrent
            // transactions itself), so two batches never lock accounts in opposite orders.
            coordinator.reply_workers = coordinator.reply_workers.max(4);
            participant.workers = participant.workers.max(8);
            participant.batch_size = 1;
        }
        if setup.transport == TransportKind::Sqs {
            // SQS answers in tens of milliseconds per call (the local emulator in hundreds):
            // resending as eagerly as on RabbitMQ only floods the queues with duplicates.
            // Unless the config says otherwise, wait longer before a resend and give the
            // try phase longer before the deadline cancels it.
            let defaults = CoordinatorConfig::default();
            if coordinator.policy == defaults.policy {
                coordinator.policy.try_resend.initial_ms = 10_000;
                coordinator.policy.try_resend.max_ms = 20_000;
                coordinator.policy.finish_resend.initial_ms = 10_000;
                coordinator.policy.finish_resend.max_ms = 60_000;
            }
            if coordinator.try_timeout == defaults.try_timeout {
                coordinator.try_timeout = std::time::Duration::from_secs(30);
            }
            if config.coordinator.max_unfinished == 0 {
                coordinator.admission = AdmissionLimit::adaptive_for(
                    coordinator.try_timeout,
                    Duration::from_millis(coordinator.policy.try_resend.initial_ms as u64),
                );
            }
        }
        // One coordinator on its own database: it wakes every waiter itself.
        coordinator.wait_poll = None;
        let stack_config = StackConfig {
            registry: setup.registry.clone(),
            urls,
            coordinator,
            participant,
            clock: Arc::new(SystemClock),
            max_connections: config.store.max_connections,
            statements: setup.count_statements.then(Default::default),
        };
        let stack = EmbeddedStack::start(stack_config, transport).await?;
        Ok(RunStack {
            stack,
            run_id,
            where_,
            _temp: temp,
        })
    }

    /// Graceful stop, then the run's queues are deleted from the broker: a demo or
    /// bench leaves nothing behind on a shared RabbitMQ or SQS.
    pub async fn finish(self) {
        let transport = self.stack.transport().clone();
        let queues =
            crate::stack::service_queues(&self.stack.config().coordinator.topology, &self.stack.config().registry);
        for (task, r) in self.stack.shutdown().await {
            if let Err(e) = r {
                tracing::warn!(task, error = %e, "task ended with an error");
            }
        }
        for q in queues {
            if let Err(e) = transport.delete(&q).await {
                tracing::warn!(queue = q, error = %e, "could not delete the run's queue");
            }
        }
    }
}

pub async fn run(opts: DemoOptions) -> anyhow::Result<DemoSummary> {
    let run = RunStack::start(RunSetup {
        transport: opts.transport,
        store: opts.store,
        data_dir: opts.data_dir.as_deref(),
        config: &opts.config,
        count_statements: false,
        registry: Registry::reference(),
    })
    .await?;
    let result = drive(&run.stack, &opts, &run.run_id).await;
    let where_ = run.where_.clone();
    run.finish().await;
    let mut summary = result?;
    summary.data_dir = where_;
    Ok(summary)
}

async fn drive(stack: &EmbeddedStack, opts: &DemoOptions, run_id: &str) -> anyhow::Result<DemoSummary> {
    let work = Arc::new(payments(opts, run_id));
    let next = Arc::new(AtomicUsize::new(0));
    let bar = progress_bar(opts);
    let started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..opts.concurrency.min(work.len().max(1)) {
        let (coordinator, work, next, bar) = (stack.coordinator().clone(), work.clone(), next.clone(), bar.clone());
        clients.spawn(async move { client(coordinator, work, next, bar).await });
    }
    let mut latencies = Vec::with_capacity(work.len());
    let mut acknowledged: Vec<(usize, SagaId)> = Vec::with_capacity(work.len());
    while let Some(r) = clients.join_next().await {
        let (lat, ids) = r.context("client task")??;
        latencies.extend(lat);
        acknowledged.extend(ids);
    }
    acknowledged.sort_unstable();
    let elapsed = started.elapsed();
    bar.finish_and_clear();

    // Resubmitting acknowledged payments must create nothing new.
    let mut resubmissions = Vec::new();
    for &(i, first) in acknowledged.iter().take(10) {
        let again = stack.coordinator().submit_payment(&work[i], None).await?;
        resubmissions.push(Resubmission {
            first,
            again: again.saga_id,
            created: again.created,
        });
    }

    // Quiescence: every in-flight duplicate consumed, so the books are final.
    wait_quiet(stack).await;
    let acknowledged: Vec<SagaId> = acknowledged.into_iter().map(|(_, id)| id).collect();
    let report = check(stack, &acknowledged, &resubmissions).await?;
    let (by_state, stuck) = kessai_coordinator::store::counts(stack.coordinator().db()).await?;
    let count = |s: SagaState| by_state.get(&s).copied().unwrap_or(0);
    latencies.sort_unstable();
    let pct = |q: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let i = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i].as_secs_f64() * 1000.0
    };
    Ok(DemoSummary {
        submitted: acknowledged.len() as u64,
        confirmed: count(SagaState::Confirmed),
        cancelled: count(SagaState::Cancelled),
        stuck,
        unfinished: count(SagaState::Trying) + count(SagaState::Confirming) + count(SagaState::Cancelling),
        invariants_ok: report.ok(),
        elapsed_s: elapsed.as_secs_f64(),
        sagas_per_s: acknowledged.len() as f64 / elapsed.as_secs_f64().max(1e-9),
        p50_ms: pct(0.50),
        p95_ms: pct(0.95),
        p99_ms: pct(0.99),
        max_ms: pct(1.0),
        concurrency: opts.concurrency,
        fail_rate: opts.fail_rate,
        transport: opts.transport,
        store: opts.store,
        data_dir: String::new(),
        invariants: report,
    })
}

/// Latencies, and (payment index, saga id) of every acknowledged submission.
type ClientResult = anyhow::Result<(Vec<Duration>, Vec<(usize, SagaId)>)>;

/// One client: submit, wait for the outcome, next.
async fn client(
    coordinator: Coordinator,
    work: Arc<Vec<Payment>>,
    next: Arc<AtomicUsize>,
    bar: indicatif::ProgressBar,
) -> ClientResult {
    let mut latencies = Vec::new();
    let mut ids = Vec::new();
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(p) = work.get(i) else { break };
        let t0 = Instant::now();
        let submitted = coordinator.submit_payment(p, None).await?;
        let state = coordinator.wait(submitted.saga_id, PAYMENT_PATIENCE).await?;
        if !state.is_some_and(SagaState::is_terminal) {
            bail!(
                "payment {} not finished after {PAYMENT_PATIENCE:?} (state {state:?})",
                p.payment_id
            );
        }
        latencies.push(t0.elapsed());
        ids.push((i, submitted.saga_id));
        bar.inc(1);
    }
    Ok((latencies, ids))
}

fn progress_bar(opts: &DemoOptions) -> indicatif::ProgressBar {
    if !opts.progress {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(opts.payments);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} payments ({per_sec}, eta {eta})",
        )
        .expect("valid template"),
    );
    bar
}

/// Waits (bounded) until no command or reply is queued or being handled.
pub(crate) async fn wait_quiet(stack: &EmbeddedStack) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let db = stack.coordinator().db();
    while Instant::now() < deadline {
        let outbox = kessai_coordinator::store::outbox_len(db).await.unwrap_or(1);
        let queued = stack.queued_messages().await;
        if outbox == 0 && queued == Some(0) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads the coordinator's outcomes and every participant's books, checks the invariants.
pub async fn check(
    stack: &EmbeddedStack,
    acknowledged: &[SagaId],
    resubmissions: &[Resubmission],
) -> anyhow::Result<InvariantReport> {
    let outcomes = invariants::read_outcomes(stack.coordinator().db(), &stack.config().registry).await?;
    let audits = stack.audits().await?;
    Ok(invariants::check_all(&outcomes, &audits, acknowledged, resubmissions))
}
