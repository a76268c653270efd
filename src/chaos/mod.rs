//! `kessai chaos`: break things on purpose, then prove SPEC §4.
//!
//! With `--transport memory` the coordinator and the three participants share one
//! process (an [`EmbeddedStack`] on SQLite) over a [`FaultyTransport`] wrapping the
//! in-process transport. Clients submit payments back-to-back for `--duration` while
//! the transport drops, duplicates, delays and reorders messages and a fault task
//! "kill -9"s a random service every `--kill-every` (aborting its tasks with no
//! shutdown step, then restarting it on the same database files after a short pause).
//! Then faults stop, the run waits for quiescence (every saga terminal, nothing queued
//! or in flight), checks every invariant of §4 from each participant's own books, and
//! checks the participants' barrier records: no branch confirmed twice, no confirm
//! after (or alongside) a cancel.
//!
//! `--transport amqp|sqs` needs the multi-process deployment and is not built yet.

use crate::demo::{self, TransportKind};
use crate::invariants::{Check, InvariantReport, Resubmission};
use crate::stack::{DatabaseUrls, EmbeddedStack, StackConfig};
use anyhow::{Context, bail};
use clap::Args;
use kessai_coordinator::machine::Backoff;
use kessai_coordinator::store::entities::saga_event;
use kessai_coordinator::{Coordinator, SagaState, SystemClock};
use kessai_messages::{Operation, Payment, SagaId};
use kessai_participants::ReferenceParticipant;
use kessai_transport::{FaultConfig, FaultyTransport, MemoryTransport, Transport};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QuerySelect};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::RwLock;
use tokio_util::sync::CancellationToken;

/// Longest wait for quiescence once the faults stopped.
pub const QUIESCENCE_BOUND: Duration = Duration::from_secs(120);
/// How long a client waits for one saga before it moves on.
const CLIENT_WAIT: Duration = Duration::from_secs(3);
/// How long one submission may take (a killed coordinator may never answer).
const SUBMIT_TIMEOUT: Duration = Duration::from_secs(5);
/// Most sagas whose barrier records are read (a deterministic stride sample beyond).
const BARRIER_SAMPLE: usize = 20_000;
const MAX_OFFENDERS: usize = 20;

#[derive(Debug, Args)]
pub struct ChaosArgs {
    /// memory: every service in this process; amqp|sqs: the multi-process deployment.
    #[arg(long, value_enum, default_value = "memory")]
    pub transport: TransportKind,
    /// How long clients submit payments while faults are injected (e.g. 30s, 2m).
    #[arg(long, default_value = "30s", value_parser = parse_run_duration, allow_hyphen_values = true)]
    pub duration: Duration,
    /// Chance each message is lost, from 0 to 1.
    #[arg(long, default_value = "0.05", value_parser = parse_probability, allow_hyphen_values = true)]
    pub drop: f64,
    /// Chance each message is sent twice, from 0 to 1.
    #[arg(long, default_value = "0.05", value_parser = parse_probability, allow_hyphen_values = true)]
    pub duplicate: f64,
    /// Chance each message is sent late (up to --delay-max), from 0 to 1.
    #[arg(long, default_value = "0.05", value_parser = parse_probability, allow_hyphen_values = true)]
    pub delay: f64,
    /// Longest delay of a delayed message (e.g. 200ms, 1s).
    #[arg(long, default_value = "200ms", value_parser = parse_delay_max, allow_hyphen_values = true)]
    pub delay_max: Duration,
    /// Chance each message swaps places with the next one to its queue, from 0 to 1.
    #[arg(long, default_value = "0.02", value_parser = parse_probability, allow_hyphen_values = true)]
    pub reorder: f64,
    /// Kill a random service this often (e.g. 3s); 0 or "off" for no kills.
    #[arg(long, default_value = "3s", value_parser = parse_kill_every, allow_hyphen_values = true)]
    pub kill_every: Duration,
    /// Concurrent clients submitting payments back-to-back.
    #[arg(long, default_value = "32", value_parser = parse_concurrency, allow_hyphen_values = true)]
    pub concurrency: usize,
    /// Fraction of payments routed to a frozen settlement account (they must cancel).
    #[arg(long, default_value = "0.1", value_parser = parse_probability, allow_hyphen_values = true)]
    pub fail_rate: f64,
    /// Seed of the faults, the kills and the workload.
    #[arg(long, default_value = "42")]
    pub seed: u64,
    /// Print one JSON object instead of the report.
    #[arg(long)]
    pub json: bool,
    /// Folder for the SQLite files (one per service); default: a fresh temporary folder.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// Parses "30s", "2m", "1h", "500ms", "1m30s" or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty duration; use e.g. 30s, 2m, 500ms".into());
    }
    let bad = || format!("invalid duration {s:?}; use e.g. 30s, 2m, 500ms, 1m30s");
    if let Ok(secs) = t.parse::<f64>() {
        return if (0.0..1e9).contains(&secs) {
            Ok(Duration::from_secs_f64(secs))
        } else {
            Err(bad())
        };
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let value: f64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let secs = match unit {
            "ms" => value / 1000.0,
            "s" | "sec" | "secs" => value,
            "m" | "min" | "mins" => value * 60.0,
            "h" | "hr" | "hours" => value * 3600.0,
            _ => return Err(bad()),
        };
        if !secs.is_finite() || secs >= 1e9 {
            return Err(bad());
        }
        total += Duration::from_secs_f64(secs);
    }
    Ok(total)
}

fn parse_run_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_secs(1) || d > Duration::from_secs(24 * 3600) {
        return Err(format!("must be between 1s and 24h, got {s:?}"));
    }
    Ok(d)
}

fn parse_delay_max(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() || d > Duration::from_secs(60) {
        return Err(format!("must be between 1ms and 60s, got {s:?}"));
    }
    Ok(d)
}

/// Zero means no kills.
fn parse_kill_every(s: &str) -> Result<Duration, String> {
    if s.trim().eq_ignore_ascii_case("off") {
        return Ok(Duration::ZERO);
    }
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Ok(d);
    }
    if d < Duration::from_millis(200) {
        return Err(format!("must be at least 200ms (or 0/off for no kills), got {s:?}"));
    }
    Ok(d)
}

fn parse_probability(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        Ok(f) => Err(format!("must be a probability between 0 and 1, got {f}")),
        Err(_) => Err(format!("must be a number between 0 and 1, got {s:?}")),
    }
}

fn parse_concurrency(s: &str) -> Result<usize, String> {
    match s.trim().parse::<i128>() {
        Ok(n) if (1..=1000).contains(&n) => Ok(n as usize),
        Ok(n) => Err(format!("must be between 1 and 1000, got {n}")),
        Err(_) => Err(format!("must be a whole number between 1 and 1000, got {s:?}")),
    }
}

#[derive(Clone, Debug)]
pub struct ChaosOptions {
    pub transport: TransportKind,
    pub duration: Duration,
    pub drop: f64,
    pub duplicate: f64,
    pub delay: f64,
    pub delay_max: Duration,
    pub reorder: f64,
    /// `None`: no process kills.
    pub kill_every: Option<Duration>,
    pub concurrency: usize,
    pub fail_rate: f64,
    pub seed: u64,
    pub data_dir: Option<PathBuf>,
    /// Print phase lines to stderr.
    pub progress: bool,
}

impl Default for ChaosOptions {
    fn default() -> Self {
        ChaosOptions {
            transport: TransportKind::Memory,
            duration: Duration::from_secs(30),
            drop: 0.0,
            duplicate: 0.0,
            delay: 0.0,
            delay_max: Duration::from_millis(200),
            reorder: 0.0,
            kill_every: None,
            concurrency: 32,
            fail_rate: 0.1,
            seed: 42,
            data_dir: None,
            progress: false,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct SagaCounts {
    /// Sagas acknowledged to a client (each recorded and checked).
    pub submitted: u64,
    /// Every saga in the coordinator's database (includes submissions whose
    /// acknowledgement a kill swallowed).
    pub total: u64,
    pub confirmed: u64,
    pub cancelled: u64,
    pub unfinished: u64,
    pub stuck: u64,
    /// Submissions that errored or timed out (then retried with the same key).
    pub submit_errors: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct FaultReport {
    pub process_kills: u64,
    pub kills_by_service: BTreeMap<String, u64>,
    /// Always 0 in memory mode (there is no broker to restart).
    pub broker_restarts: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub delayed: u64,
    pub reordered: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ChaosReport {
    pub invariants_ok: bool,
    pub transport: TransportKind,
    pub duration_s: f64,
    pub seed: u64,
    pub sagas: SagaCounts,
    pub faults: FaultReport,
    /// From the faults stopping until every saga was terminal and nothing was queued.
    pub quiescence_s: f64,
    /// False if quiescence was not reached within the bound.
    pub quiesced: bool,
    /// Most sends of one command (try, confirm or cancel) to one branch.
    pub max_sends: u32,
    /// Most resends any one saga needed, over all its branches and phases.
    pub max_resends_per_saga: u64,
    pub max_resends_saga: Option<SagaId>,
    /// Sagas whose barrier records were checked.
    pub barrier_sagas_checked: u64,
    /// SPEC §4 checks plus the barrier check, each with offending saga ids.
    pub invariants: InvariantReport,
    pub data_dir: String,
}

/// The CLI entry point: runs, prints, exit code.
pub async fn run_cli(args: ChaosArgs) -> anyhow::Result<ExitCode> {
    let json = args.json;
    let report = run(ChaosOptions {
        transport: args.transport,
        duration: args.duration,
        drop: args.drop,
        duplicate: args.duplicate,
        delay: args.delay,
        delay_max: args.delay_max,
        reorder: args.reorder,
        kill_every: Some(args.kill_every).filter(|d| !d.is_zero()),
        concurrency: args.concurrency,
        fail_rate: args.fail_rate,
        seed: args.seed,
        data_dir: args.data_dir,
        progress: !json && std::io::stderr().is_terminal(),
    })
    .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(if report.invariants_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_report(r: &ChaosReport) {
    println!(
        "kessai chaos — {:?} transport, {:.0} s of load, seed {}, data in {}",
        r.transport, r.duration_s, r.seed, r.data_dir
    );
    let s = &r.sagas;
    println!(
        "  sagas: submitted {}  (in database {})  confirmed {}  cancelled {}  unfinished {}  stuck {}  submit errors {}",
        s.submitted, s.total, s.confirmed, s.cancelled, s.unfinished, s.stuck, s.submit_errors
    );
    let f = &r.faults;
    let by: Vec<String> = f.kills_by_service.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!(
        "  faults: process kills {} ({})  broker restarts {}  dropped {}  duplicated {}  delayed {}  reordered {}",
        f.process_kills,
        by.join(", "),
        f.broker_restarts,
        f.dropped,
        f.duplicated,
        f.delayed,
        f.reordered
    );
    println!(
        "  quiescence: {:.2} s{}; most sends of one command {}; most resends of one saga {}{}",
        r.quiescence_s,
        if r.quiesced { "" } else { " (NOT reached)" },
        r.max_sends,
        r.max_resends_per_saga,
        r.max_resends_saga.map(|id| format!(" (saga {id})")).unwrap_or_default()
    );
    println!("  invariants:");
    r.invariants.print();
    println!("  result: {}", if r.invariants_ok { "OK" } else { "VIOLATIONS" });
}

/// Runs one chaos session and reports. Errors are set-up failures, not violations.
pub async fn run(opts: ChaosOptions) -> anyhow::Result<ChaosReport> {
    match opts.transport {
        TransportKind::Memory => {}
        TransportKind::Amqp | TransportKind::Sqs => bail!(
            "`kessai chaos --transport {}` is not available yet: it needs the multi-process \
             deployment (coordinators and participants as child processes); use --transport memory",
            match opts.transport {
                TransportKind::Amqp => "amqp",
                _ => "sqs",
            }
        ),
    }
    let fault_config = FaultConfig {
        drop: opts.drop,
        duplicate: opts.duplicate,
        delay: opts.delay,
        delay_max: opts.delay_max,
        reorder: opts.reorder,
        seed: opts.seed,
    };
    fault_config.validate().context("fault settings")?;
    anyhow::ensure!(opts.concurrency >= 1, "concurrency must be at least 1");
    anyhow::ensure!(
        (0.0..=1.0).contains(&opts.fail_rate),
        "fail rate must be between 0 and 1"
    );

    let run_id = SagaId::new().to_string()[..8].to_owned();
    let temp;
    let dir = match &opts.data_dir {
        Some(d) => d.clone(),
        None => {
            temp = tempfile::Builder::new().prefix("kessai-chaos-").tempdir()?;
            temp.path().to_path_buf()
        }
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let urls = DatabaseUrls::sqlite(&dir);

    let mut config = crate::config::Config {
        queue_prefix: format!("kessai-chaos-{run_id}"),
        ..Default::default()
    };
    config.transport.kind = TransportKind::Memory;
    let mut coordinator = config.coordinator_config();
    // Brisk resends, so a lost message or a killed service costs seconds, not minutes.
    coordinator.policy.try_resend = Backoff {
        initial_ms: 300,
        max_ms: 1_000,
    };
    coordinator.policy.finish_resend = Backoff {
        initial_ms: 300,
        max_ms: 2_000,
    };
    coordinator.relay_poll = Duration::from_millis(100);
    let faulty = FaultyTransport::new(Arc::new(MemoryTransport::new()), fault_config)?;
    let transport: Arc<dyn Transport> = Arc::new(faulty.clone());
    let stack_config = StackConfig {
        urls,
        coordinator,
        participant: config.participant_config(),
        clock: Arc::new(SystemClock),
        max_connections: 1,
    };
    let stack = EmbeddedStack::start(stack_config, transport).await?;
    let stack = Arc::new(RwLock::new(stack));
    let result = drive(&stack, &faulty, &opts, &run_id).await;
    let stack = match Arc::try_unwrap(stack) {
        Ok(lock) => Some(lock.into_inner()),
        Err(_) => None,
    };
    if let Some(stack) = stack {
        for (task, r) in stack.shutdown().await {
            if let Err(e) = r {
                tracing::debug!(task, error = %e, "task ended with an error");
            }
        }
    }
    let mut report = result?;
    report.data_dir = dir.display().to_string();
    Ok(report)
}

/// What the clients hand back.
#[derive(Default)]
struct ClientOutcome {
    acknowledged: Vec<SagaId>,
    /// The first acknowledged payment, for the idempotency check.
    sample: Option<(Payment, SagaId)>,
}

async fn drive(
    stack: &Arc<RwLock<EmbeddedStack>>,
    faulty: &FaultyTransport<MemoryTransport>,
    opts: &ChaosOptions,
    run_id: &str,
) -> anyhow::Result<ChaosReport> {
    let note = |msg: String| {
        if opts.progress {
            eprintln!("chaos: {msg}");
        }
    };
    let stop = CancellationToken::new();
    let submit_errors = Arc::new(AtomicU64::new(0));
    note(format!(
        "{} clients submitting for {:?}; faults on",
        opts.concurrency, opts.duration
    ));
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..opts.concurrency {
        let (stack, stop, errors) = (stack.clone(), stop.clone(), submit_errors.clone());
        let (seed, fail_rate, run) = (
            opts.seed.wrapping_mul(1_000_003).wrapping_add(c as u64),
            opts.fail_rate,
            run_id.to_owned(),
        );
        clients.spawn(async move { client(stack, stop, errors, seed, fail_rate, format!("chaos-{run}-{c}")).await });
    }
    let kills = opts.kill_every.map(|every| {
        let (stack, stop, seed) = (stack.clone(), stop.clone(), opts.seed);
        tokio::spawn(async move { killer(stack, stop, every, seed).await })
    });

    tokio::time::sleep(opts.duration).await;
    stop.cancel();
    // Every killed service is back before the fault task ends.
    let kills_by_service = match kills {
        Some(k) => k.await.context("fault task")??,
        None => BTreeMap::new(),
    };
    faulty.set_enabled(false);
    faulty.release_held().await?;
    let quiet_from = Instant::now();
    let mut outcome = ClientOutcome::default();
    let mut samples = Vec::new();
    while let Some(r) = clients.join_next().await {
        let o = r.context("client task")?;
        outcome.acknowledged.extend(o.acknowledged);
        samples.extend(o.sample);
    }
    note(format!(
        "faults stopped after {} acknowledged submissions; waiting for quiescence",
        outcome.acknowledged.len()
    ));

    let stack = stack.read().await;
    let quiesced = wait_quiescent(&stack, faulty, quiet_from + QUIESCENCE_BOUND).await?;
    let quiescence_s = quiet_from.elapsed().as_secs_f64();
    note(format!("quiescent after {quiescence_s:.2} s; checking invariants"));

    // Resubmitting acknowledged payments must create nothing new.
    let mut resubmissions = Vec::new();
    for (payment, first) in samples.iter().take(10) {
        let again = stack.coordinator().submit_payment(payment, None).await?;
        resubmissions.push(Resubmission {
            first: *first,
            again: again.saga_id,
            created: again.created,
        });
    }
    let mut report = demo::check(&stack, &outcome.acknowledged, &resubmissions).await?;
    let outcomes: Vec<(SagaId, SagaState)> = kessai_coordinator::store::outcomes(stack.coordinator().db())
        .await?
        .into_iter()
        .map(|(id, state, _)| (id, state))
        .collect();
    let (barrier, checked) = barrier_check(&stack, &outcomes).await?;
    report.checks.push(barrier);
    if !quiesced {
        report.checks.push(Check {
            name: "quiescence",
            ok: false,
            detail: format!("not quiescent within {QUIESCENCE_BOUND:?} of the faults stopping"),
            offending: vec![],
        });
    }
    let (max_sends, max_resends_per_saga, max_resends_saga) = send_counts(stack.coordinator().db()).await?;
    let (by_state, stuck) = kessai_coordinator::store::counts(stack.coordinator().db()).await?;
    let count = |s: SagaState| by_state.get(&s).copied().unwrap_or(0);
    let counters = faulty.counters();
    Ok(ChaosReport {
        invariants_ok: report.ok(),
        transport: opts.transport,
        duration_s: opts.duration.as_secs_f64(),
        seed: opts.seed,
        sagas: SagaCounts {
            submitted: outcome.acknowledged.len() as u64,
            total: by_state.values().sum(),
            confirmed: count(SagaState::Confirmed),
            cancelled: count(SagaState::Cancelled),
            unfinished: count(SagaState::Trying) + count(SagaState::Confirming) + count(SagaState::Cancelling),
            stuck,
            submit_errors: submit_errors.load(Ordering::Relaxed),
        },
        faults: FaultReport {
            process_kills: kills_by_service.values().sum(),
            kills_by_service,
            broker_restarts: 0,
            dropped: counters.dropped,
            duplicated: counters.duplicated,
            delayed: counters.delayed,
            reordered: counters.reordered,
        },
        quiescence_s,
        quiesced,
        max_sends,
        max_resends_per_saga,
        max_resends_saga,
        barrier_sagas_checked: checked,
        invariants: report,
        data_dir: String::new(),
    })
}

/// One client: submit (retrying the same payment after an error or a timeout, so a
/// kill never duplicates it), wait a little for the outcome, next — until stopped.
async fn client(
    stack: Arc<RwLock<EmbeddedStack>>,
    stop: CancellationToken,
    errors: Arc<AtomicU64>,
    seed: u64,
    fail_rate: f64,
    prefix: String,
) -> ClientOutcome {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut out = ClientOutcome::default();
    let mut n = 0u64;
    'payments: while !stop.is_cancelled() {
        let payment = crate::demo::random_payment(&mut rng, format!("{prefix}-{n}"), fail_rate);
        n += 1;
        let (coordinator, saga_id) = loop {
            if stop.is_cancelled() {
                break 'payments;
            }
            let coordinator: Coordinator = stack.read().await.coordinator().clone();
            match tokio::time::timeout(SUBMIT_TIMEOUT, coordinator.submit_payment(&payment, None)).await {
                Ok(Ok(s)) => break (coordinator, s.saga_id),
                Ok(Err(_)) | Err(_) => {
                    errors.fetch_add(1, Ordering::Relaxed);
                    tokio::select! {
                        _ = stop.cancelled() => break 'payments,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
            }
        };
        out.acknowledged.push(saga_id);
        if out.sample.is_none() {
            out.sample = Some((payment, saga_id));
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::timeout(CLIENT_WAIT, coordinator.wait(saga_id, CLIENT_WAIT)) => {}
        }
    }
    out
}

/// Every `every`, kills a random service and restarts it after a short random pause.
/// Returns the kills by service; every service is running again when it returns.
async fn killer(
    stack: Arc<RwLock<EmbeddedStack>>,
    stop: CancellationToken,
    every: Duration,
    seed: u64,
) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x6b69_6c6c);
    let mut kills: BTreeMap<String, u64> = BTreeMap::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(kills),
            _ = tokio::time::sleep(every) => {}
        }
        let victim = rng.random_range(0..=ReferenceParticipant::ALL.len());
        let pause = Duration::from_millis(rng.random_range(100..=700));
        let name = match victim {
            0 => {
                stack.write().await.kill_coordinator().await;
                "coordinator"
            }
            i => {
                let p = ReferenceParticipant::ALL[i - 1];
                stack.write().await.kill_participant(p).await;
                p.name()
            }
        };
        *kills.entry(name.to_owned()).or_default() += 1;
        tracing::debug!(service = name, ?pause, "killed");
        tokio::time::sleep(pause).await;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let r = {
                let mut s = stack.write().await;
                match victim {
                    0 => s.restart_coordinator().await,
                    i => s.restart_participant(ReferenceParticipant::ALL[i - 1]).await,
                }
            };
            match r {
                Ok(()) => break,
                Err(e) if attempt < 10 => {
                    tracing::warn!(service = name, error = %e, "restart failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e.context(format!("restarting {name}"))),
            }
        }
    }
}

/// Waits until every saga is terminal and no message is queued, held or in flight.
async fn wait_quiescent(
    stack: &EmbeddedStack,
    faulty: &FaultyTransport<MemoryTransport>,
    deadline: Instant,
) -> anyhow::Result<bool> {
    let db = stack.coordinator().db();
    loop {
        let (by_state, _) = kessai_coordinator::store::counts(db).await?;
        let unfinished: u64 = by_state.iter().filter(|(s, _)| !s.is_terminal()).map(|(_, n)| *n).sum();
        let outbox = kessai_coordinator::store::outbox_len(db).await?;
        let queued = stack.queued_messages().await;
        if unfinished == 0 && outbox == 0 && queued == Some(0) && faulty.in_flight() == 0 {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// From each participant's barrier records: no branch confirmed twice, no confirm
/// taking effect after (or alongside) a cancel, and each outcome matches the saga's.
async fn barrier_check(stack: &EmbeddedStack, outcomes: &[(SagaId, SagaState)]) -> anyhow::Result<(Check, u64)> {
    let stride = outcomes.len().div_ceil(BARRIER_SAMPLE).max(1);
    let sample: Vec<&(SagaId, SagaState)> = outcomes.iter().step_by(stride).collect();
    let mut offending = Vec::new();
    let mut problems = Vec::new();
    for p in ReferenceParticipant::ALL {
        let db = stack
            .participant_db(p)
            .with_context(|| format!("participant {} is not running", p.name()))?;
        for &&(saga, state) in &sample {
            let records = kessai_participants::barrier_records(db, saga).await?;
            let mut by_branch: BTreeMap<u32, Vec<&kessai_participants::BarrierRecord>> = BTreeMap::new();
            for r in &records {
                by_branch.entry(r.branch_id.0).or_default().push(r);
            }
            let mut bad = false;
            for (branch, rs) in by_branch {
                let confirms: Vec<_> = rs.iter().filter(|r| r.operation == Operation::Confirm).collect();
                let cancels: Vec<_> = rs.iter().filter(|r| r.operation == Operation::Cancel).collect();
                let confirmed = confirms.iter().any(|r| r.took_effect());
                let cancelled = cancels.iter().any(|r| r.took_effect());
                let why = if confirms.len() > 1 {
                    Some("two confirms of one branch")
                } else if confirmed && cancelled {
                    Some("both confirm and cancel took effect")
                } else if confirmed
                    && cancels
                        .iter()
                        .any(|c| confirms.iter().any(|f| c.created_at_ms < f.created_at_ms))
                {
                    Some("confirm after cancel")
                } else if confirmed && state == SagaState::Cancelled {
                    Some("confirm took effect in a cancelled saga")
                } else if cancelled && state == SagaState::Confirmed {
                    Some("cancel took effect in a confirmed saga")
                } else {
                    None
                };
                if let Some(why) = why {
                    bad = true;
                    if problems.len() < MAX_OFFENDERS {
                        problems.push(format!("{}: saga {saga} branch {branch}: {why}", p.name()));
                    }
                }
            }
            if bad && !offending.contains(&saga) {
                offending.push(saga);
            }
        }
    }
    let n = sample.len() as u64;
    let ok = offending.is_empty();
    let detail = if ok {
        format!("{n} sagas' barrier records at every participant: no branch confirmed twice, no confirm after a cancel")
    } else {
        let mut d = problems;
        d.push(format!("{} sagas", offending.len()));
        d.join("; ")
    };
    offending.truncate(MAX_OFFENDERS);
    Ok((
        Check {
            name: "barrier_no_confirm_after_cancel",
            ok,
            detail,
            offending,
        },
        n,
    ))
}

/// (most sends of one command to one branch, most resends of one saga, that saga),
/// from the coordinator's timeline: each `resent` entry reads "<op> send <n> to <p>".
async fn send_counts(db: &sea_orm::DatabaseConnection) -> anyhow::Result<(u32, u64, Option<SagaId>)> {
    let rows: Vec<(String, String)> = saga_event::Entity::find()
        .select_only()
        .column(saga_event::Column::SagaId)
        .column(saga_event::Column::Detail)
        .filter(saga_event::Column::Kind.eq("resent"))
        .into_tuple()
        .all(db)
        .await?;
    let mut max_sends = 1u32;
    let mut per_saga: HashMap<String, u64> = HashMap::new();
    for (saga, detail) in rows {
        if let Some(n) = detail
            .split_whitespace()
            .skip_while(|w| *w != "send")
            .nth(1)
            .and_then(|n| n.parse::<u32>().ok())
        {
            max_sends = max_sends.max(n);
        }
        *per_saga.entry(saga).or_default() += 1;
    }
    let top = per_saga
        .into_iter()
        .max_by_key(|(id, n)| (*n, std::cmp::Reverse(id.clone())));
    Ok(match top {
        Some((id, n)) => (max_sends, n, id.parse().ok()),
        None => (max_sends, 0, None),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert!(parse_duration("xyz").is_err());
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("").is_err());
        assert_eq!(parse_kill_every("off"), Ok(Duration::ZERO));
        assert_eq!(parse_kill_every("0"), Ok(Duration::ZERO));
        assert!(parse_kill_every("10ms").is_err());
        assert!(parse_run_duration("0s").is_err());
        assert!(parse_probability("2").is_err());
        assert!(parse_probability("nan").is_err());
    }
}
