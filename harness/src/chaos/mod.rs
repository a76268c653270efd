//! `kessai chaos`: break things on purpose, then prove the invariants (docs/GUARANTEES.md#invariants).
//!
//! Two deployments, one report:
//!
//! - **processes** (`--transport amqp|sqs`, the default for a real broker): 2+
//!   `kessai coordinator` processes and the three `kessai participant` processes, each
//!   on its own PostgreSQL database, started as child processes of this one
//!   ([`processes`]). Faults: `kill -9` of a random process every `--kill-every`, then a
//!   restart; RabbitMQ stopped and started every `--broker-restart-every`
//!   (`rabbitmqctl stop_app` / `start_app`, [`broker`]); and message drop / duplicate /
//!   delay / reorder injected *inside* every service (`[faults]`,
//!   [`kessai_service::fault_control`]) on what it publishes.
//! - **in-process** (`--transport memory`, or `--in-process` with a broker): the
//!   coordinator and the participants share this process on SQLite files over a
//!   [`FaultyTransport`]; a "kill" aborts one service's tasks with no shutdown step,
//!   drops its in-memory state and unacknowledged deliveries, and restarts it on the
//!   same database files ([`in_process`]).
//!
//! Clients submit payments back-to-back for `--duration` while the faults run. Then
//! the faults stop, the run waits for quiescence (every saga terminal, the outbox
//! empty, nothing queued or held back), checks every invariant (docs/GUARANTEES.md) from each
//! participant's own database, checks the participants' barrier records (no branch
//! confirmed twice, no confirm after or beside a cancel), and reports.

mod broker;
mod in_process;
pub(crate) mod processes;

use crate::demo::TransportKind;
use crate::invariants::{self, Check, InvariantReport, Resubmission};
use anyhow::Context;
use clap::Args;
use kessai_coordinator::SagaState;
use kessai_messages::{Operation, SagaId};
use kessai_participants::{RegisteredParticipant, Registry};
use kessai_service::config::{Config, CoordinatorSettings};
use kessai_service::units::parse_duration;
use kessai_transport::FaultConfig;
use rand::rngs::SmallRng;
use sea_orm::DatabaseConnection;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Longest wait for quiescence once the faults stopped.
pub const QUIESCENCE_BOUND: Duration = Duration::from_secs(120);
/// The same over SQS, whose resends are spaced ten times wider (see [`set_resends`]).
pub const SQS_QUIESCENCE_BOUND: Duration = Duration::from_secs(300);

/// How eagerly the coordinators resend under chaos: a lost message or a killed
/// service should cost about a second, not minutes. Over SQS much less eagerly: it
/// answers in tens of milliseconds a call (the local emulator in hundreds, slower as
/// queues grow), and resending as often as on RabbitMQ floods the queues with
/// duplicates faster than they drain — sagas then never finish.
fn set_resends(c: &mut CoordinatorSettings, transport: TransportKind, in_process: bool) {
    let (try_initial, try_max, finish_initial, finish_max) = match (transport, in_process) {
        (TransportKind::Sqs, _) => {
            c.try_timeout_ms = 30_000;
            (10_000, 20_000, 10_000, 30_000)
        }
        (_, true) => (300, 1_000, 300, 2_000),
        (_, false) => (1_000, 4_000, 1_000, 5_000),
    };
    c.try_resend_initial_ms = try_initial;
    c.try_resend_max_ms = try_max;
    c.finish_resend_initial_ms = finish_initial;
    c.finish_resend_max_ms = finish_max;
}

/// What both deployments set up first: the broker check, a fresh run id (queue and
/// database names, payment ids) and the folder for files and logs.
struct Workspace {
    run_id: String,
    dir: PathBuf,
    /// Set when no `--data-dir` was given.
    temp: Option<tempfile::TempDir>,
}

impl Workspace {
    async fn prepare(opts: &ChaosOptions) -> anyhow::Result<Self> {
        if opts.broker_restart_every.is_some() {
            broker::preflight().await?;
        }
        let temp = match &opts.data_dir {
            Some(_) => None,
            None => Some(tempfile::Builder::new().prefix("kessai-chaos-").tempdir()?),
        };
        let dir = match (&opts.data_dir, &temp) {
            (Some(d), _) => d.clone(),
            (None, t) => t.as_ref().expect("made above").path().to_path_buf(),
        };
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Workspace {
            run_id: crate::demo::new_run_id(),
            dir,
            temp,
        })
    }

    /// Removes a temporary folder after a passing run; keeps it as evidence otherwise.
    fn finish(self, passed: bool) {
        if let Some(temp) = self.temp.filter(|_| !passed) {
            let _ = temp.keep();
        }
    }
}

fn quiescence_bound(transport: TransportKind) -> Duration {
    if transport == TransportKind::Sqs {
        SQS_QUIESCENCE_BOUND
    } else {
        QUIESCENCE_BOUND
    }
}
/// How long a client waits for one saga's outcome before it submits the next.
const CLIENT_WAIT: Duration = Duration::from_secs(3);
/// How long one submission may take (a killed coordinator may never answer).
const SUBMIT_TIMEOUT: Duration = Duration::from_secs(5);
/// Most sagas whose barrier records are read (a deterministic stride sample beyond).
const BARRIER_SAMPLE: usize = 20_000;
const MAX_OFFENDERS: usize = 20;
/// Acknowledged payments submitted again at the end (each must create nothing).
const RESUBMISSIONS: usize = 10;

#[derive(Debug, Args)]
pub struct ChaosArgs {
    /// memory: every service in this process; amqp|sqs: the multi-process deployment
    /// (PostgreSQL databases, child processes), unless --in-process.
    #[arg(long, value_enum, default_value = "memory")]
    pub transport: TransportKind,
    /// With amqp|sqs: run every service inside this process (SQLite files) instead of
    /// as child processes; "kills" then abort a service's tasks.
    #[arg(long)]
    pub in_process: bool,
    /// Coordinator processes sharing one database (multi-process deployment only).
    #[arg(long, default_value = "2", value_parser = parse_coordinators, allow_hyphen_values = true)]
    pub coordinators: usize,
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
    /// Stop and start RabbitMQ this often (amqp only; needs `rabbitmqctl` for the
    /// broker's node); 0 or "off" for none. Default: 15s with amqp.
    #[arg(long, value_parser = parse_kill_every, allow_hyphen_values = true)]
    pub broker_restart_every: Option<Duration>,
    /// How long each broker outage lasts.
    #[arg(long, default_value = "3s", value_parser = parse_delay_max, allow_hyphen_values = true)]
    pub broker_outage: Duration,
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
    /// Folder for the SQLite files (in-process) or the services' logs and shared
    /// config (processes); default: a fresh temporary folder, kept if a check fails.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Keep the run's databases and queues after a passing run (a failing run always
    /// keeps them, for inspection).
    #[arg(long)]
    pub keep: bool,
    /// TOML config for broker and database settings (then `KESSAI_*` env vars).
    #[arg(long)]
    pub config: Option<PathBuf>,
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

fn parse_coordinators(s: &str) -> Result<usize, String> {
    match s.trim().parse::<i128>() {
        Ok(n) if (1..=16).contains(&n) => Ok(n as usize),
        Ok(n) => Err(format!("must be between 1 and 16, got {n}")),
        Err(_) => Err(format!("must be a whole number between 1 and 16, got {s:?}")),
    }
}

#[derive(Clone, Debug)]
pub struct ChaosOptions {
    pub transport: TransportKind,
    /// Every service in this process (always so for `memory`).
    pub in_process: bool,
    /// Coordinator processes (multi-process deployment).
    pub coordinators: usize,
    pub duration: Duration,
    pub drop: f64,
    pub duplicate: f64,
    pub delay: f64,
    pub delay_max: Duration,
    pub reorder: f64,
    /// `None`: no process kills.
    pub kill_every: Option<Duration>,
    /// `None`: no broker restarts (only amqp has them).
    pub broker_restart_every: Option<Duration>,
    pub broker_outage: Duration,
    pub concurrency: usize,
    pub fail_rate: f64,
    pub seed: u64,
    pub data_dir: Option<PathBuf>,
    pub keep: bool,
    /// Broker URLs, the PostgreSQL server, credentials.
    pub config: Config,
    /// Print phase lines to stderr.
    pub progress: bool,
    /// The participants of the in-process deployment (the multi-process one runs the
    /// `kessai participant` services, the reference three).
    pub registry: Registry,
    /// What the in-process clients submit (the multi-process clients submit payments
    /// over HTTP).
    pub workload: Workload,
}

/// What chaos clients submit: a saga kind and how to make one request of it from
/// the client's random source, a unique id and the fail rate.
#[derive(Clone)]
pub struct Workload {
    pub kind: &'static str,
    pub request: MakeRequest,
}

/// Makes one request from a client's random source, a unique id and the fail rate.
pub type MakeRequest = Arc<dyn Fn(&mut SmallRng, String, f64) -> serde_json::Value + Send + Sync>;

impl Workload {
    /// Payments across balance, card-issuer and bank; a `fail_rate` share draws on the
    /// frozen settlement account and must cancel.
    pub fn payments() -> Self {
        Workload {
            kind: kessai_coordinator::PaymentSaga::KIND,
            request: Arc::new(|rng, id, fail_rate| {
                serde_json::to_value(crate::demo::random_payment(rng, id, fail_rate)).expect("serialises")
            }),
        }
    }
}

impl std::fmt::Debug for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workload")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl Default for ChaosOptions {
    fn default() -> Self {
        ChaosOptions {
            transport: TransportKind::Memory,
            in_process: true,
            coordinators: 2,
            duration: Duration::from_secs(30),
            drop: 0.0,
            duplicate: 0.0,
            delay: 0.0,
            delay_max: Duration::from_millis(200),
            reorder: 0.0,
            kill_every: None,
            broker_restart_every: None,
            broker_outage: Duration::from_secs(3),
            concurrency: 32,
            fail_rate: 0.1,
            seed: 42,
            data_dir: None,
            keep: false,
            config: Config::default(),
            progress: false,
            registry: Registry::reference(),
            workload: Workload::payments(),
        }
    }
}

impl ChaosOptions {
    fn fault_config(&self) -> FaultConfig {
        FaultConfig {
            drop: self.drop,
            duplicate: self.duplicate,
            delay: self.delay,
            delay_max: self.delay_max,
            reorder: self.reorder,
            seed: self.seed,
        }
    }

    fn note(&self, msg: impl std::fmt::Display) {
        if self.progress {
            eprintln!("chaos: {msg}");
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        self.fault_config().validate().context("fault settings")?;
        anyhow::ensure!(self.concurrency >= 1, "concurrency must be at least 1");
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.fail_rate),
            "fail rate must be between 0 and 1"
        );
        anyhow::ensure!(
            self.in_process || self.transport != TransportKind::Memory,
            "the in-process transport cannot connect separate processes: --transport memory runs in-process"
        );
        anyhow::ensure!(
            self.in_process || self.coordinators >= 1,
            "at least one coordinator process is needed"
        );
        anyhow::ensure!(
            self.broker_restart_every.is_none() || self.transport == TransportKind::Amqp,
            "broker restarts are for --transport amqp only: the in-process transport has no broker, \
             and restarting the SQS emulator would wipe its queues (real SQS does not restart)"
        );
        Ok(())
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
    /// RabbitMQ stopped and started again (amqp only: the in-process transport has no
    /// broker, and the SQS emulator loses its queues when restarted).
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
    /// `in-process` or `processes`.
    pub deployment: &'static str,
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
    /// The invariant checks plus the barrier check, each with offending saga ids.
    pub invariants: InvariantReport,
    /// SQLite files (in-process) or the services' logs (processes).
    pub data_dir: String,
}

/// The CLI entry point: runs, prints, exit code.
pub async fn run_cli(args: ChaosArgs) -> anyhow::Result<ExitCode> {
    let json = args.json;
    let broker_restart_every = match (args.broker_restart_every, args.transport) {
        (Some(d), _) => Some(d).filter(|d| !d.is_zero()),
        (None, TransportKind::Amqp) => Some(Duration::from_secs(15)),
        (None, _) => None,
    };
    let report = run(ChaosOptions {
        transport: args.transport,
        in_process: args.in_process || args.transport == TransportKind::Memory,
        coordinators: args.coordinators,
        duration: args.duration,
        drop: args.drop,
        duplicate: args.duplicate,
        delay: args.delay,
        delay_max: args.delay_max,
        reorder: args.reorder,
        kill_every: Some(args.kill_every).filter(|d| !d.is_zero()),
        broker_restart_every,
        broker_outage: args.broker_outage,
        concurrency: args.concurrency,
        fail_rate: args.fail_rate,
        seed: args.seed,
        data_dir: args.data_dir,
        keep: args.keep,
        config: Config::load(args.config.as_deref())?,
        progress: !json && std::io::stderr().is_terminal(),
        ..ChaosOptions::default()
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
        "kessai chaos — {:?} transport, {}, {:.0} s of load, seed {}, data in {}",
        r.transport, r.deployment, r.duration_s, r.seed, r.data_dir
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
    opts.validate()?;
    if opts.in_process {
        in_process::run(opts).await
    } else {
        processes::run(opts).await
    }
}

/// What the clients share: the token that stops them and their count of failed
/// submissions (announced, when progress is on).
fn clients_start(opts: &ChaosOptions) -> (tokio_util::sync::CancellationToken, Arc<std::sync::atomic::AtomicU64>) {
    opts.note(format!(
        "{} clients submitting for {:?}; faults on",
        opts.concurrency, opts.duration
    ));
    (Default::default(), Default::default())
}

/// A fault task: process kills (by service) or broker restarts (a count).
type FaultTask<T> = Option<tokio::task::JoinHandle<anyhow::Result<T>>>;

/// Lets the faults run for `duration`, then stops them and waits until the broker is
/// up and every killed service back: the broker first, so that whatever else failed,
/// it is not left stopped. Returns (kills by service, broker restarts).
async fn faults_for(
    duration: Duration,
    stop: &tokio_util::sync::CancellationToken,
    kills: FaultTask<BTreeMap<String, u64>>,
    restarts: FaultTask<u64>,
) -> anyhow::Result<(BTreeMap<String, u64>, u64)> {
    tokio::time::sleep(duration).await;
    stop.cancel();
    let broker_restarts = match restarts {
        Some(r) => r.await.context("broker task")?,
        None => Ok(0),
    };
    let kills_by_service = match kills {
        Some(k) => k.await.context("fault task")??,
        None => BTreeMap::new(),
    };
    Ok((kills_by_service, broker_restarts?))
}

/// What the clients hand back; `R` is what they submit.
struct ClientOutcome<R> {
    acknowledged: Vec<SagaId>,
    /// The first acknowledged request, for the idempotency check.
    sample: Option<(R, SagaId)>,
}

impl<R> Default for ClientOutcome<R> {
    fn default() -> Self {
        ClientOutcome {
            acknowledged: Vec::new(),
            sample: None,
        }
    }
}

impl<R> ClientOutcome<R> {
    fn merge(outcomes: impl IntoIterator<Item = ClientOutcome<R>>) -> (Vec<SagaId>, Vec<(R, SagaId)>) {
        let mut acknowledged = Vec::new();
        let mut samples = Vec::new();
        for o in outcomes {
            acknowledged.extend(o.acknowledged);
            samples.extend(o.sample);
        }
        (acknowledged, samples)
    }
}

/// A client's workload seed and payment-id prefix.
fn client_seed(opts: &ChaosOptions, client: usize) -> u64 {
    opts.seed.wrapping_mul(1_000_003).wrapping_add(client as u64)
}

/// Everything the checks read, once the run is quiet: the coordinator's database and
/// each participant's own.
struct Books<'a> {
    coordinator: &'a DatabaseConnection,
    registry: &'a Registry,
    participants: Vec<(Arc<dyn RegisteredParticipant>, &'a DatabaseConnection)>,
}

/// What the databases say after the run.
struct Assessment {
    invariants: InvariantReport,
    sagas: SagaCounts,
    max_sends: u32,
    max_resends_per_saga: u64,
    max_resends_saga: Option<SagaId>,
    barrier_sagas_checked: u64,
}

/// The invariants from each participant's books, the barrier check, the saga counts and the
/// resend statistics. `extra` checks (quiescence, clean stops) join the report.
async fn assess(
    books: &Books<'_>,
    acknowledged: &[SagaId],
    resubmissions: &[Resubmission],
    extra: Vec<Check>,
) -> anyhow::Result<Assessment> {
    let outcomes = invariants::read_outcomes(books.coordinator, books.registry).await?;
    let mut audits = Vec::new();
    for (p, db) in &books.participants {
        audits.push(p.audit(db).await.with_context(|| format!("auditing {}", p.name()))?);
    }
    let mut report = invariants::check_all(&outcomes, &audits, acknowledged, resubmissions);
    let states: Vec<(SagaId, SagaState)> = outcomes.iter().map(|o| (o.id, o.state)).collect();
    let (barrier, barrier_sagas_checked) = barrier_check(&books.participants, &states).await?;
    report.checks.push(barrier);
    report.checks.extend(extra);
    // Read from the typed timeline (each `resent` entry carries its send number).
    let resends = kessai_coordinator::store::resend_summary(books.coordinator).await?;
    let (max_sends, max_resends_per_saga, max_resends_saga) =
        (resends.max_attempt, resends.most_resent_count, resends.most_resent);
    let (by_state, stuck) = kessai_coordinator::store::counts(books.coordinator).await?;
    let count = |s: SagaState| by_state.get(&s).copied().unwrap_or(0);
    Ok(Assessment {
        invariants: report,
        sagas: SagaCounts {
            submitted: acknowledged.len() as u64,
            total: by_state.values().sum(),
            confirmed: count(SagaState::Confirmed),
            cancelled: count(SagaState::Cancelled),
            unfinished: count(SagaState::Trying) + count(SagaState::Confirming) + count(SagaState::Cancelling),
            stuck,
            submit_errors: 0,
        },
        max_sends,
        max_resends_per_saga,
        max_resends_saga,
        barrier_sagas_checked,
    })
}

impl ChaosReport {
    fn new(opts: &ChaosOptions, a: Assessment, faults: FaultReport, quiescence_s: f64, quiesced: bool) -> Self {
        ChaosReport {
            invariants_ok: a.invariants.ok(),
            transport: opts.transport,
            deployment: if opts.in_process { "in-process" } else { "processes" },
            duration_s: opts.duration.as_secs_f64(),
            seed: opts.seed,
            sagas: a.sagas,
            faults,
            quiescence_s,
            quiesced,
            max_sends: a.max_sends,
            max_resends_per_saga: a.max_resends_per_saga,
            max_resends_saga: a.max_resends_saga,
            barrier_sagas_checked: a.barrier_sagas_checked,
            invariants: a.invariants,
            data_dir: String::new(),
        }
    }
}

fn quiescence_check(opts: &ChaosOptions, quiesced: bool) -> Option<Check> {
    (!quiesced).then(|| Check {
        name: "quiescence",
        ok: false,
        detail: format!(
            "not quiescent within {:?} of the faults stopping",
            quiescence_bound(opts.transport)
        ),
        offending: vec![],
    })
}

/// From each participant's barrier records: no branch confirmed twice, no confirm
/// taking effect after (or alongside) a cancel, and each outcome matches the saga's.
async fn barrier_check(
    participants: &[(Arc<dyn RegisteredParticipant>, &DatabaseConnection)],
    outcomes: &[(SagaId, SagaState)],
) -> anyhow::Result<(Check, u64)> {
    let stride = outcomes.len().div_ceil(BARRIER_SAMPLE).max(1);
    let sample: Vec<&(SagaId, SagaState)> = outcomes.iter().step_by(stride).collect();
    let mut offending = Vec::new();
    let mut problems = Vec::new();
    for (p, db) in participants {
        for &&(saga, state) in &sample {
            let records = kessai_participants::barrier_records(*db, saga).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags() {
        assert_eq!(parse_kill_every("off"), Ok(Duration::ZERO));
        assert_eq!(parse_kill_every("0"), Ok(Duration::ZERO));
        assert!(parse_kill_every("10ms").is_err());
        assert!(parse_run_duration("0s").is_err());
        assert!(parse_probability("2").is_err());
        assert!(parse_probability("nan").is_err());
        assert!(parse_coordinators("0").is_err());
        assert_eq!(parse_coordinators("3"), Ok(3));
    }

    #[test]
    fn options_that_cannot_work_are_refused() {
        let memory_processes = ChaosOptions {
            in_process: false,
            ..ChaosOptions::default()
        };
        assert!(memory_processes.validate().is_err());
        let sqs_restarts = ChaosOptions {
            transport: TransportKind::Sqs,
            broker_restart_every: Some(Duration::from_secs(5)),
            ..ChaosOptions::default()
        };
        assert!(format!("{:#}", sqs_restarts.validate().unwrap_err()).contains("amqp only"));
        assert!(ChaosOptions::default().validate().is_ok());
    }
}
