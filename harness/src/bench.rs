//! `kessai bench`: the benchmark workload — payments across the three reference
//! participants, a fraction made to fail at the bank — with durability on, measured.
//!
//! - **Closed loop** (default): `--concurrency` clients each submit a payment, wait for
//!   its outcome, and submit the next, for `--warmup` then `--duration`.
//! - **Open loop** (`--open-rate R`): R payments a second arrive whatever happens to
//!   the earlier ones, as backend services submit; each is then followed to its
//!   outcome. Admission control may refuse some (429): they are counted, not retried.
//!
//! Only the measurement window (after the warm-up) counts: throughput is sagas that
//! finished in it, latencies are theirs (submission to terminal state), CPU is each
//! process's `/proc` time over it. Afterwards every accepted saga is waited for, the
//! queues drained, and the invariants checked from every service's own books, as
//! `kessai demo` does. The run's queues and databases are its own (fresh names), and
//! its queues are deleted at the end.
//!
//! In-process (default) every service runs in this process, so "kessai" CPU includes
//! the load generator's clients. `--processes` runs the coordinator and each
//! participant as its own child process (over RabbitMQ or SQS, on PostgreSQL) and the
//! clients talk HTTP to the coordinator.

use crate::demo::{RunSetup, RunStack, StoreKind, TransportKind, random_payment};
use crate::invariants::{InvariantReport, Resubmission};
use crate::procstat::{self, ProcessGroup};
use anyhow::{Context, bail};
use kessai_coordinator::{Coordinator, SagaState};
use kessai_messages::SagaId;
use kessai_participants::ledger::FROZEN_SETTLEMENT_ACCOUNT;
use kessai_service::config::Config;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// How long an accepted saga may take before the bench calls the run a failure.
const SAGA_PATIENCE: Duration = Duration::from_secs(120);

#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub transport: TransportKind,
    pub store: StoreKind,
    pub concurrency: usize,
    /// Open loop: arrivals per second. `None`: closed loop at `concurrency`.
    pub open_rate: Option<f64>,
    pub duration: Duration,
    pub warmup: Duration,
    pub fail_rate: f64,
    pub processes: bool,
    pub seed: u64,
    pub progress: bool,
    pub config: Config,
}

/// One process (or group of processes) and what it spent over the window.
#[derive(Clone, Debug, Serialize)]
pub struct ProcessCost {
    pub process: String,
    pub cpu_ms: f64,
    pub cpu_ms_per_saga: f64,
    /// Share of one core over the window.
    pub cores: f64,
    pub peak_rss_mib: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub transport: TransportKind,
    pub store: StoreKind,
    pub processes: bool,
    /// `closed` or `open`.
    pub mode: &'static str,
    pub concurrency: usize,
    pub open_rate: Option<f64>,
    pub fail_rate: f64,
    pub warmup_s: f64,
    pub duration_s: f64,
    /// Sagas that reached a terminal state in the window, per second.
    pub sagas_per_s: f64,
    pub completed: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Submissions in the window: accepted, and refused by admission control (429).
    pub accepted: u64,
    pub refused_429: u64,
    /// Of the sagas accepted in the window: confirmed, cancelled, and the confirmed
    /// share of those that could succeed (not made to fail on purpose).
    pub confirmed: u64,
    pub cancelled: u64,
    pub confirmed_share: f64,
    pub confirmed_share_of_succeedable: f64,
    /// Sagas of the whole run cancelled because their try deadline passed.
    pub cancelled_by_deadline: u64,
    /// Commands the coordinator published per saga finished in the window (6 when
    /// nothing is resent: three tries, three confirms or cancels).
    pub commands_per_saga: Option<f64>,
    /// Database statements per saga, by service (sea-orm's count; no BEGIN/COMMIT).
    pub statements_per_saga: BTreeMap<String, f64>,
    /// PostgreSQL transactions (commits + rollbacks) per saga, by service database.
    pub transactions_per_saga: BTreeMap<String, f64>,
    pub cpu: Vec<ProcessCost>,
    /// The transport alone: one message sent, received and acknowledged at a time on a
    /// throwaway queue, as fast as it goes (for SQS: the emulator's own ceiling).
    pub bare_transport_round_trips_per_s: Option<f64>,
    /// CPU of every process listed, per saga.
    pub cpu_ms_per_saga_total: f64,
    pub unfinished: u64,
    pub invariants_ok: bool,
    pub invariants: InvariantReport,
}

impl BenchReport {
    pub fn print(&self) {
        let load = match self.open_rate {
            Some(r) => format!("open loop at {r:.0}/s"),
            None => format!("closed loop, concurrency {}", self.concurrency),
        };
        println!(
            "kessai bench — {:?} transport, {:?} store, {}{}; fail rate {}; {:.0} s after {:.0} s warm-up",
            self.transport,
            self.store,
            load,
            if self.processes {
                ", one process per service"
            } else {
                ", in one process"
            },
            self.fail_rate,
            self.duration_s,
            self.warmup_s
        );
        println!(
            "  {:.0} sagas/s ({} finished); latency p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.sagas_per_s, self.completed, self.p50_ms, self.p95_ms, self.p99_ms, self.max_ms
        );
        println!(
            "  accepted {}, refused (429) {}; confirmed {} ({:.1} % of accepted, {:.1} % of those that could succeed), cancelled {} ({} by try deadline)",
            self.accepted,
            self.refused_429,
            self.confirmed,
            self.confirmed_share * 100.0,
            self.confirmed_share_of_succeedable * 100.0,
            self.cancelled,
            self.cancelled_by_deadline
        );
        if let Some(r) = self.bare_transport_round_trips_per_s {
            println!("  bare transport: {r:.0} send → receive → ack round trips/s, one at a time");
        }
        if let Some(c) = self.commands_per_saga {
            println!("  commands sent per saga: {c:.2}");
        }
        let fmt_map = |m: &BTreeMap<String, f64>| {
            m.iter()
                .map(|(k, v)| format!("{k} {v:.1}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !self.statements_per_saga.is_empty() {
            println!("  statements per saga: {}", fmt_map(&self.statements_per_saga));
        }
        if !self.transactions_per_saga.is_empty() {
            println!("  transactions per saga: {}", fmt_map(&self.transactions_per_saga));
        }
        println!(
            "  CPU per saga: {:.3} ms in all; peak RSS per process:",
            self.cpu_ms_per_saga_total
        );
        for c in &self.cpu {
            println!(
                "    {:<14} {:>8.3} ms/saga  {:>5.2} cores  peak RSS {:>7.1} MiB",
                c.process, c.cpu_ms_per_saga, c.cores, c.peak_rss_mib
            );
        }
        println!("  unfinished {}; invariants:", self.unfinished);
        self.invariants.print();
    }
}

/// What happened to one submission.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Record {
    /// Since the run started.
    submitted: Duration,
    finished: Option<Duration>,
    /// `None`: refused by admission control.
    pub saga: Option<SagaId>,
    state: Option<SagaState>,
    /// Drawn on the bank's frozen account: cancels by design.
    made_to_fail: bool,
}

/// The load generator's view of the service: submit, follow to the outcome.
#[async_trait::async_trait]
pub(crate) trait Target: Send + Sync + 'static {
    /// The saga and whether this call created it; `Ok(None)`: refused by admission
    /// control.
    async fn submit(&self, payment: &kessai_messages::Payment) -> anyhow::Result<Option<(SagaId, bool)>>;
    async fn wait(&self, id: SagaId) -> anyhow::Result<SagaState>;
}

#[async_trait::async_trait]
impl Target for Coordinator {
    async fn submit(&self, payment: &kessai_messages::Payment) -> anyhow::Result<Option<(SagaId, bool)>> {
        match self.submit_payment(payment, None).await {
            Ok(s) => Ok(Some((s.saga_id, s.created))),
            Err(kessai_coordinator::Error::Overloaded { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn wait(&self, id: SagaId) -> anyhow::Result<SagaState> {
        match Coordinator::wait(self, id, SAGA_PATIENCE).await? {
            Some(s) if s.is_terminal() => Ok(s),
            other => bail!("saga {id} not finished after {SAGA_PATIENCE:?} (state {other:?})"),
        }
    }
}

/// Samples taken at the window's edges.
#[derive(Clone, Debug, Default)]
pub(crate) struct Sample {
    pub cpu: procstat::CpuSnapshot,
    pub statements: BTreeMap<String, u64>,
    pub transactions: BTreeMap<String, u64>,
    pub commands: Option<u64>,
}

/// What a deployment offers the bench besides its [`Target`].
#[async_trait::async_trait]
pub(crate) trait Probe: Send + Sync {
    async fn sample(&self) -> Sample;
    fn groups(&self) -> Vec<ProcessGroup>;
}

pub async fn run(opts: BenchOptions) -> anyhow::Result<BenchReport> {
    if opts.processes {
        return crate::bench_processes::run(opts).await;
    }
    let run = RunStack::start(RunSetup {
        transport: opts.transport,
        store: opts.store,
        data_dir: None,
        config: &opts.config,
        count_statements: true,
        registry: kessai_participants::Registry::reference(),
    })
    .await?;
    let result = in_process(&run, &opts).await;
    let ceiling = bare_round_trips(run.stack.transport(), &run.run_id).await;
    run.finish().await;
    let mut report = result?;
    report.bare_transport_round_trips_per_s = ceiling;
    Ok(report)
}

/// What the transport alone sustains: send one message, receive it, ack it, for two
/// seconds on a throwaway queue (deleted afterwards). `None` if the loop failed.
pub(crate) async fn bare_round_trips(transport: &Arc<dyn kessai_transport::Transport>, run_id: &str) -> Option<f64> {
    let queue = format!("kessai-bench-{run_id}-bare");
    let result = async {
        transport.declare(&queue).await?;
        let mut consumer = transport
            .consume(
                &queue,
                kessai_transport::ConsumeOptions {
                    prefetch: 1,
                    poll_wait: Duration::from_secs(5),
                },
            )
            .await?;
        let started = Instant::now();
        let mut n = 0u64;
        while started.elapsed() < Duration::from_secs(2) {
            transport
                .publish(&queue, kessai_transport::OutgoingMessage::new(b"ping".to_vec()))
                .await?;
            for d in consumer.next_batch(1).await? {
                d.ack().await?;
                n += 1;
            }
        }
        Ok::<f64, kessai_transport::Error>(n as f64 / started.elapsed().as_secs_f64())
    }
    .await;
    let _ = transport.delete(&queue).await;
    match result {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(error = %e, "the bare transport loop failed");
            None
        }
    }
}

struct InProcessProbe<'a> {
    run: &'a RunStack,
    groups: Vec<ProcessGroup>,
}

#[async_trait::async_trait]
impl Probe for InProcessProbe<'_> {
    async fn sample(&self) -> Sample {
        let stack = &self.run.stack;
        let mut transactions = BTreeMap::new();
        if stack.config().urls.coordinator.starts_with("postgres") {
            for (service, db) in stack.databases() {
                if let Some(n) = pg_transactions(db).await {
                    transactions.insert(service.to_owned(), n);
                }
            }
        }
        Sample {
            cpu: procstat::snapshot(&self.groups),
            statements: stack
                .config()
                .statements
                .as_ref()
                .map(|s| s.snapshot().into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
                .unwrap_or_default(),
            transactions,
            commands: Some(stack.coordinator().stats().commands_published.load(Ordering::Relaxed)),
        }
    }

    fn groups(&self) -> Vec<ProcessGroup> {
        self.groups.clone()
    }
}

async fn in_process(run: &RunStack, opts: &BenchOptions) -> anyhow::Result<BenchReport> {
    let mut groups = vec![ProcessGroup::pids("kessai", vec![std::process::id()])];
    groups.extend(procstat::servers());
    let probe = InProcessProbe { run, groups };
    let coordinator: Arc<dyn Target> = Arc::new(run.stack.coordinator().clone());
    let first = Arc::new(FirstPayments::default());
    let (records, window) = load(coordinator.clone(), opts, &run.run_id, &probe, &first).await?;

    // Every accepted saga has finished (the clients waited for each); let in-flight
    // duplicates drain so the books are final, then check them.
    let resubmissions = resubmit(&*coordinator, &first).await?;
    crate::demo::wait_quiet(&run.stack).await;
    let acknowledged: Vec<SagaId> = records.iter().filter_map(|r| r.saga).collect();
    let db = run.stack.coordinator().db();
    let report = crate::demo::check(&run.stack, &acknowledged, &resubmissions).await?;
    let (by_state, _) = kessai_coordinator::store::counts(db).await?;
    let unfinished = [SagaState::Trying, SagaState::Confirming, SagaState::Cancelling]
        .iter()
        .map(|s| by_state.get(s).copied().unwrap_or(0))
        .sum();
    let deadline = cancelled_by_deadline(db).await?;
    Ok(summarise(opts, &records, window, unfinished, deadline, report))
}

/// Sagas cancelled because their try deadline passed.
pub(crate) async fn cancelled_by_deadline<C: ConnectionTrait>(db: &C) -> anyhow::Result<u64> {
    let backend = db.get_database_backend();
    let sql = match backend {
        DbBackend::Postgres => "SELECT count(*) AS n FROM sagas WHERE state = 'cancelled' AND reason = $1",
        _ => "SELECT count(*) AS n FROM sagas WHERE state = 'cancelled' AND reason = ?",
    };
    let row = db
        .query_one_raw(Statement::from_sql_and_values(
            backend,
            sql,
            ["try deadline passed".into()],
        ))
        .await?
        .context("count(*) returns a row")?;
    Ok(row.try_get::<i64>("", "n")?.max(0) as u64)
}

/// Commits + rollbacks of the connection's own database so far.
pub(crate) async fn pg_transactions<C: ConnectionTrait>(db: &C) -> Option<u64> {
    let row = db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT (xact_commit + xact_rollback)::bigint AS n FROM pg_stat_database WHERE datname = current_database()",
        ))
        .await
        .ok()??;
    row.try_get::<i64>("", "n").ok().map(|n| n.max(0) as u64)
}

/// The measurement window, and the samples at its edges.
pub(crate) struct Window {
    start: Duration,
    end: Duration,
    before: Sample,
    after: Sample,
    peak_rss: BTreeMap<String, f64>,
}

/// Runs the clients (closed or open loop) for warm-up + duration, samples the window,
/// then waits for every accepted saga to finish.
pub(crate) async fn load(
    target: Arc<dyn Target>,
    opts: &BenchOptions,
    run_id: &str,
    probe: &dyn Probe,
    first: &Arc<FirstPayments>,
) -> anyhow::Result<(Vec<Record>, Window)> {
    let t0 = Instant::now();
    let window_start = t0 + opts.warmup;
    let window_end = window_start + opts.duration;
    let bar = progress_bar(opts);
    let ids = Arc::new(AtomicU64::new(0));
    let mut tasks: JoinSet<anyhow::Result<Vec<Record>>> = JoinSet::new();
    match opts.open_rate {
        None => {
            for c in 0..opts.concurrency {
                let (target, ids, bar, run_id, first) = (
                    target.clone(),
                    ids.clone(),
                    bar.clone(),
                    run_id.to_owned(),
                    first.clone(),
                );
                let (fail_rate, seed) = (opts.fail_rate, opts.seed ^ ((c as u64 + 1) << 20));
                tasks.spawn(async move {
                    let mut rng = SmallRng::seed_from_u64(seed);
                    let mut out = Vec::new();
                    while Instant::now() < window_end {
                        let n = ids.fetch_add(1, Ordering::Relaxed);
                        let payment = random_payment(&mut rng, format!("bench-{run_id}-{n}"), fail_rate);
                        let r = follow(&*target, &payment, t0, &first).await?;
                        if r.saga.is_none() {
                            // Refused: a closed-loop client backs off a little.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        bar.inc(1);
                        out.push(r);
                    }
                    Ok(out)
                });
            }
        }
        Some(rate) => {
            let (target, first) = (target.clone(), first.clone());
            let (bar, run_id, fail_rate, seed) = (bar.clone(), run_id.to_owned(), opts.fail_rate, opts.seed);
            tasks.spawn(async move {
                let mut rng = SmallRng::seed_from_u64(seed);
                let mut arrivals: JoinSet<anyhow::Result<Record>> = JoinSet::new();
                let mut sent = 0u64;
                let mut out = Vec::new();
                loop {
                    let now = Instant::now();
                    if now >= window_end {
                        break;
                    }
                    let due = ((now - t0).as_secs_f64() * rate) as u64;
                    while sent < due {
                        let payment = random_payment(&mut rng, format!("bench-{run_id}-{sent}"), fail_rate);
                        let (target, bar, first) = (target.clone(), bar.clone(), first.clone());
                        arrivals.spawn(async move {
                            let r = follow(&*target, &payment, t0, &first).await;
                            bar.inc(1);
                            r
                        });
                        sent += 1;
                    }
                    while let Some(done) = arrivals.try_join_next() {
                        out.push(done.context("arrival task")??);
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                while let Some(done) = arrivals.join_next().await {
                    out.push(done.context("arrival task")??);
                }
                Ok(out)
            });
        }
    }
    tokio::time::sleep_until(window_start.into()).await;
    let before = probe.sample().await;
    tokio::time::sleep_until(window_end.into()).await;
    let after = probe.sample().await;
    let peak_rss = procstat::peak_rss(&probe.groups());
    let mut records = Vec::new();
    while let Some(done) = tasks.join_next().await {
        records.extend(done.context("client task")??);
    }
    bar.finish_and_clear();
    Ok((
        records,
        Window {
            start: opts.warmup,
            end: opts.warmup + opts.duration,
            before,
            after,
            peak_rss,
        },
    ))
}

/// Submits acknowledged payments again: each must name its first saga and create
/// nothing (no lost submission, idempotency).
pub(crate) async fn resubmit(target: &dyn Target, payments: &FirstPayments) -> anyhow::Result<Vec<Resubmission>> {
    let mut out = Vec::new();
    let kept = payments.lock().expect("first payments lock").clone();
    for (payment, first) in kept {
        let again = target
            .submit(&payment)
            .await?
            .context("a resubmission was refused by admission control")?;
        out.push(Resubmission {
            first,
            again: again.0,
            created: again.1,
        });
    }
    Ok(out)
}

/// The first few acknowledged payments, kept to be submitted again at the end.
pub(crate) type FirstPayments = std::sync::Mutex<Vec<(kessai_messages::Payment, SagaId)>>;
const RESUBMISSIONS: usize = 10;

/// Submits one payment and follows it to its outcome.
async fn follow(
    target: &dyn Target,
    payment: &kessai_messages::Payment,
    t0: Instant,
    first: &FirstPayments,
) -> anyhow::Result<Record> {
    let submitted = t0.elapsed();
    let made_to_fail = payment.settlement_account == FROZEN_SETTLEMENT_ACCOUNT;
    let Some((id, _)) = target.submit(payment).await? else {
        return Ok(Record {
            submitted,
            finished: None,
            saga: None,
            state: None,
            made_to_fail,
        });
    };
    {
        let mut kept = first.lock().expect("first payments lock");
        if kept.len() < RESUBMISSIONS {
            kept.push((payment.clone(), id));
        }
    }
    let state = target.wait(id).await?;
    Ok(Record {
        submitted,
        finished: Some(t0.elapsed()),
        saga: Some(id),
        state: Some(state),
        made_to_fail,
    })
}

pub(crate) fn summarise(
    opts: &BenchOptions,
    records: &[Record],
    window: Window,
    unfinished: u64,
    cancelled_by_deadline: u64,
    invariants: InvariantReport,
) -> BenchReport {
    let in_window = |t: Duration| t >= window.start && t < window.end;
    let mut latencies: Vec<Duration> = records
        .iter()
        .filter_map(|r| r.finished.filter(|f| in_window(*f)).map(|f| f - r.submitted))
        .collect();
    latencies.sort_unstable();
    let completed = latencies.len() as u64;
    let pct = |q: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let i = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i].as_secs_f64() * 1000.0
    };
    let submitted_in_window: Vec<&Record> = records.iter().filter(|r| in_window(r.submitted)).collect();
    let accepted: Vec<&&Record> = submitted_in_window.iter().filter(|r| r.saga.is_some()).collect();
    let refused = (submitted_in_window.len() - accepted.len()) as u64;
    let confirmed = accepted
        .iter()
        .filter(|r| r.state == Some(SagaState::Confirmed))
        .count() as u64;
    let cancelled = accepted
        .iter()
        .filter(|r| r.state == Some(SagaState::Cancelled))
        .count() as u64;
    let succeedable: Vec<&&&Record> = accepted.iter().filter(|r| !r.made_to_fail).collect();
    let succeeded = succeedable
        .iter()
        .filter(|r| r.state == Some(SagaState::Confirmed))
        .count();
    let share = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let secs = opts.duration.as_secs_f64();
    let per_saga = |v: f64| share(v, completed as f64);
    let diff = |a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>| -> BTreeMap<String, f64> {
        b.iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    per_saga(v.saturating_sub(a.get(k).copied().unwrap_or(0)) as f64),
                )
            })
            .collect()
    };
    let cpu: Vec<ProcessCost> = procstat::cpu_between(&window.before.cpu, &window.after.cpu)
        .into_iter()
        .map(|(name, spent)| ProcessCost {
            cpu_ms: spent * 1000.0,
            cpu_ms_per_saga: per_saga(spent * 1000.0),
            cores: spent / secs,
            peak_rss_mib: window.peak_rss.get(&name).copied().unwrap_or(0.0),
            process: name,
        })
        .collect();
    let commands_per_saga = match (window.before.commands, window.after.commands) {
        (Some(a), Some(b)) => Some(per_saga(b.saturating_sub(a) as f64)),
        _ => None,
    };
    BenchReport {
        transport: opts.transport,
        store: opts.store,
        processes: opts.processes,
        mode: if opts.open_rate.is_some() { "open" } else { "closed" },
        concurrency: opts.concurrency,
        open_rate: opts.open_rate,
        fail_rate: opts.fail_rate,
        warmup_s: opts.warmup.as_secs_f64(),
        duration_s: secs,
        sagas_per_s: completed as f64 / secs,
        completed,
        p50_ms: pct(0.50),
        p95_ms: pct(0.95),
        p99_ms: pct(0.99),
        max_ms: pct(1.0),
        accepted: accepted.len() as u64,
        refused_429: refused,
        confirmed,
        cancelled,
        confirmed_share: share(confirmed as f64, accepted.len() as f64),
        confirmed_share_of_succeedable: share(succeeded as f64, succeedable.len() as f64),
        cancelled_by_deadline,
        commands_per_saga,
        statements_per_saga: diff(&window.before.statements, &window.after.statements),
        transactions_per_saga: diff(&window.before.transactions, &window.after.transactions),
        cpu_ms_per_saga_total: cpu.iter().map(|c| c.cpu_ms_per_saga).sum(),
        cpu,
        bare_transport_round_trips_per_s: None,
        unfinished,
        invariants_ok: invariants.ok(),
        invariants,
    }
}

fn progress_bar(opts: &BenchOptions) -> indicatif::ProgressBar {
    if !opts.progress {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {pos} sagas ({per_sec})")
            .expect("valid template"),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}
