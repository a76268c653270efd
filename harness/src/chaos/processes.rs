//! The multi-process deployment under chaos: `--coordinators` × `kessai coordinator`
//! and `kessai participant balance|card-issuer|bank`, started from this very binary
//! as child processes, each on its own PostgreSQL database (the coordinators share
//! theirs), over RabbitMQ or SQS.
//!
//! - Every child reads one generated config file (`<data dir>/kessai.toml`: broker,
//!   database server, a fresh queue prefix and database prefix, brisk resends, the
//!   message faults) plus a few `KESSAI_*` variables of its own (its HTTP port, its
//!   fault seed). Inherited `KESSAI_*` variables are removed, so the file is the truth.
//! - Clients submit payments over `POST /v1/payments`, spreading over the
//!   coordinators and failing over to the next one when a coordinator does not answer
//!   (the payment id is the idempotency key, so a retry never doubles a payment), then
//!   wait for the outcome with `GET /v1/sagas/{id}?wait=`.
//! - The killer `kill -9`s a random child every `--kill-every` — after reading its fault
//!   counters — and starts it again after a short pause; a watcher restarts any child
//!   that exits by itself and records it (a service must survive broker outages).
//! - Afterwards: faults off (`PUT /v1/faults`), quiescence, idempotent resubmissions,
//!   SIGTERM to every child (each must exit 0), then the checks read every database.
//!   A passing run drops its databases and queues; a failing one keeps them and the
//!   logs, and says where.

use super::{
    Books, CLIENT_WAIT, ChaosOptions, ChaosReport, ClientOutcome, FaultReport, RESUBMISSIONS, SUBMIT_TIMEOUT,
    Workspace, assess, broker, client_seed, clients_start, faults_for, quiescence_bound, quiescence_check, set_resends,
};
use crate::demo::{StoreKind, TransportKind};
use crate::invariants::{Check, Resubmission};
use crate::stack::open_service_db;
use crate::stack::service_queues;
use anyhow::{Context, bail};
use kessai_messages::{Payment, SagaId};
use kessai_participants::Registry;
use kessai_service::config::Config;
use kessai_service::fault_control::FaultStatus;
use kessai_service::http::{Scope, TokenSettings};
use kessai_transport::{FaultCounters, Transport};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use secrecy::ExposeSecret;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// How long a (re)started child may take to answer `/healthz` with 200. Covers a
/// broker outage in progress: a service waits for its broker before it listens.
const READY_WITHIN: Duration = Duration::from_secs(60);
/// How long a child may take to exit after SIGTERM.
const STOP_WITHIN: Duration = Duration::from_secs(30);
const RUST_LOG: &str = "info,sqlx=warn,sea_orm=warn,sea_orm_migration=warn,lapin=warn,aws=warn";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Coordinator,
    Participant(&'static str),
}

/// One service of the deployment, across its incarnations.
struct Slot {
    /// `coordinator-1`, `balance`, …: the name in the report and of its log file.
    name: String,
    role: Role,
    /// Kept across restarts, so clients find a restarted coordinator where it was.
    port: u16,
    log: PathBuf,
    child: Option<Child>,
    incarnation: u32,
    /// Faults injected by earlier incarnations (read just before each kill).
    past: FaultCounters,
}

/// The child processes, and how to start one.
struct Fleet {
    exe: PathBuf,
    config_file: PathBuf,
    /// Authenticates the harness's calls to the children's HTTP API.
    api_headers: reqwest::header::HeaderMap,
    slots: Vec<Slot>,
    /// Off once the faults stop: a child started after that injects none.
    faults_on: bool,
    seed: u64,
}

impl Fleet {
    fn start(&mut self, i: usize) -> anyhow::Result<()> {
        let seed = self.seed;
        let faults_on = self.faults_on;
        let slot = &mut self.slots[i];
        slot.incarnation += 1;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&slot.log)
            .with_context(|| format!("opening {}", slot.log.display()))?;
        writeln!(
            log,
            "==== kessai chaos: {} incarnation {} ====",
            slot.name, slot.incarnation
        )?;
        let mut cmd = Command::new(&self.exe);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("KESSAI_") {
                cmd.env_remove(key);
            }
        }
        match slot.role {
            Role::Coordinator => cmd.arg("coordinator"),
            Role::Participant(p) => cmd.args(["participant", p]),
        };
        cmd.arg("--config")
            .arg(&self.config_file)
            .env("RUST_LOG", RUST_LOG)
            .env("KESSAI_HTTP__LISTEN", format!("127.0.0.1:{}", slot.port))
            .env(
                "KESSAI_STORE__MAX_CONNECTIONS",
                if slot.role == Role::Coordinator { "8" } else { "4" },
            )
            // One random stream per incarnation, reproducible from --seed.
            .env(
                "KESSAI_FAULTS__SEED",
                (seed ^ ((i as u64 + 1) << 32) ^ u64::from(slot.incarnation)).to_string(),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        if !faults_on {
            for kind in ["DROP", "DUPLICATE", "DELAY", "REORDER"] {
                cmd.env(format!("KESSAI_FAULTS__{kind}"), "0");
            }
        }
        slot.child = Some(
            cmd.spawn()
                .with_context(|| format!("starting {} ({})", slot.name, self.exe.display()))?,
        );
        Ok(())
    }

    /// `kill -9`, and reaps it.
    async fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.slots[i].child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// Children that ended without being killed: their slot index and exit status.
    fn exited(&mut self) -> Vec<(usize, ExitStatus)> {
        let mut out = Vec::new();
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if let Some(child) = &mut slot.child
                && let Ok(Some(status)) = child.try_wait()
            {
                slot.child = None;
                out.push((i, status));
            }
        }
        out
    }
}

pub(super) async fn run(opts: ChaosOptions) -> anyhow::Result<ChaosReport> {
    let workspace = Workspace::prepare(&opts).await?;
    let dir = workspace.dir.clone();
    let config = child_config(&opts, &workspace.run_id);
    let config_file = dir.join("kessai.toml");
    write_private(
        &config_file,
        &toml::to_string(&config).context("writing the children's config")?,
    )?;
    let transport = config.transport().await.context("connecting to the broker")?;
    let server = config.store.postgres_url.expose_secret().to_owned();
    let registry = Registry::reference();
    let database = |service: &str| config.database_name(service);

    let mut slots = Vec::new();
    let roles = (1..=opts.coordinators)
        .map(|n| (format!("coordinator-{n}"), Role::Coordinator))
        .chain(
            registry
                .names()
                .into_iter()
                .map(|p| (p.to_owned(), Role::Participant(p))),
        );
    for (name, role) in roles {
        slots.push(Slot {
            log: dir.join(format!("{name}.log")),
            name,
            role,
            port: free_port()?,
            child: None,
            incarnation: 0,
            past: FaultCounters::default(),
        });
    }
    let fleet = Arc::new(Mutex::new(Fleet {
        exe: std::env::current_exe().context("finding the kessai binary")?,
        config_file,
        api_headers: api_headers(&config)?,
        slots,
        faults_on: true,
        seed: opts.seed,
    }));
    opts.note(format!(
        "starting {} coordinators and 3 participants over {:?}; logs in {}",
        opts.coordinators,
        opts.transport,
        dir.display()
    ));

    let queues = service_queues(&config.topology(), &registry);
    let result = drive(
        &fleet,
        &opts,
        &workspace.run_id,
        &transport,
        &queues,
        &server,
        &database,
    )
    .await;

    // Whatever happened, no child outlives the run.
    {
        let mut fleet = fleet.lock().await;
        for i in 0..fleet.slots.len() {
            fleet.kill(i).await;
        }
    }
    let passed = result.as_ref().is_ok_and(|r| r.invariants_ok);
    if passed && !opts.keep {
        clean_up(&transport, &queues, &server, &database).await;
    } else {
        let prefix = &config.store.database_prefix;
        eprintln!(
            "chaos: kept databases {prefix}_*, queues {}-*, logs in {}",
            config.queue_prefix,
            dir.display()
        );
    }
    let mut report = result?;
    report.data_dir = dir.display().to_string();
    workspace.finish(passed);
    Ok(report)
}

/// The configuration every child shares: the user's broker and database settings,
/// with this run's names, PostgreSQL, demo data, brisk resends and the faults.
fn child_config(opts: &ChaosOptions, run_id: &str) -> Config {
    let mut config = deployment_config(&opts.config, "chaos", opts.transport, run_id);
    set_resends(&mut config.coordinator, opts.transport, false);
    let f = opts.fault_config();
    config.faults.drop = f.drop;
    config.faults.duplicate = f.duplicate;
    config.faults.delay = f.delay;
    config.faults.delay_max_ms = Some((f.delay_max.as_millis() as u64).max(1));
    config.faults.reorder = f.reorder;
    config.faults.seed = f.seed;
    config
}

/// The API client name of the harness's own token (every scope), which
/// [`deployment_config`] adds to the children's config.
pub(crate) const HARNESS_CLIENT: &str = "harness";

/// Headers that authenticate the harness's HTTP calls to the children of `config`.
pub(crate) fn api_headers(config: &Config) -> anyhow::Result<reqwest::header::HeaderMap> {
    let token = config
        .auth
        .tokens
        .iter()
        .find(|t| t.name == HARNESS_CLIENT)
        .and_then(|t| t.token.as_ref())
        .context("the deployment config has no harness token")?;
    let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.expose_secret()))?;
    value.set_sensitive(true);
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, value);
    Ok(headers)
}

/// What every child of a multi-process run (chaos, bench) shares: the user's broker
/// and database server, with this run's queue and database names (`kessai-<what>-<run>`,
/// `kessai_<what>_<run>_*`), PostgreSQL and the demo data.
pub(crate) fn deployment_config(base: &Config, what: &str, transport: TransportKind, run_id: &str) -> Config {
    let mut config = base.clone();
    config.queue_prefix = format!("kessai-{what}-{run_id}");
    config.transport.kind = transport;
    config.store.kind = StoreKind::Postgres;
    config.store.database_prefix = format!("kessai_{what}_{run_id}");
    config.participant.seed_demo = true;
    config.auth.tokens.retain(|t| t.name != HARNESS_CLIENT);
    config.auth.tokens.push(TokenSettings {
        name: HARNESS_CLIENT.into(),
        scopes: Scope::ALL.to_vec(),
        token: Some(format!("kessai-{what}-{run_id}-{}", uuid::Uuid::new_v4().simple()).into()),
        sha256: None,
    });
    // Every message signed: the chaos checks cover signing under faults too.
    config.security.message_key = Some(format!("kessai-{what}-{run_id}-{}", uuid::Uuid::new_v4().simple()).into());
    // As the PostgreSQL demo: several workers, one command per transaction.
    config.participant.workers = config.participant.workers.max(8);
    config.participant.batch_size = 1;
    config.coordinator.reply_workers = config.coordinator.reply_workers.max(4);
    config
}

/// Writes `text` readable by this user only: the file holds broker credentials.
pub(crate) fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The last lines of a child's log, for an error message.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

async fn drive(
    fleet: &Arc<Mutex<Fleet>>,
    opts: &ChaosOptions,
    run_id: &str,
    transport: &Arc<dyn Transport>,
    queues: &[String],
    server: &str,
    database: &dyn Fn(&str) -> String,
) -> anyhow::Result<ChaosReport> {
    // The `kessai participant` services: the reference participants.
    let registry = &Registry::reference();
    let api_headers = fleet.lock().await.api_headers.clone();
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .default_headers(api_headers)
        .build()?;
    let n = fleet.lock().await.slots.len();
    {
        let mut f = fleet.lock().await;
        for i in 0..n {
            f.start(i)?;
        }
    }
    for i in 0..n {
        wait_ready(fleet, &http, i, Ready::Healthy).await?;
    }
    let coordinator_db = open_service_db(
        registry,
        "coordinator",
        &kessai_migrations::postgres_database_url(server, &database("coordinator")),
        4,
    )
    .await?;
    let ports: Arc<Vec<u16>> = Arc::new({
        let f = fleet.lock().await;
        f.slots
            .iter()
            .filter(|s| s.role == Role::Coordinator)
            .map(|s| s.port)
            .collect()
    });

    let (stop, submit_errors) = clients_start(opts);
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..opts.concurrency {
        let client = Client {
            http: http.clone(),
            ports: ports.clone(),
            stop: stop.clone(),
            errors: submit_errors.clone(),
        };
        let (seed, fail_rate, prefix) = (client_seed(opts, c), opts.fail_rate, format!("chaos-{run_id}-{c}"));
        clients.spawn(async move { client.run(c, seed, fail_rate, prefix).await });
    }
    let killer = opts.kill_every.map(|every| {
        let (fleet, http, stop, seed) = (fleet.clone(), http.clone(), stop.clone(), opts.seed);
        tokio::spawn(async move { killer(fleet, http, stop, every, seed).await })
    });
    let restarts = opts
        .broker_restart_every
        .map(|every| broker::spawn(stop.clone(), every, opts.broker_outage));
    let watch_stop = CancellationToken::new();
    let watcher = {
        let (fleet, stop) = (fleet.clone(), watch_stop.clone());
        tokio::spawn(async move { watcher(fleet, stop).await })
    };

    let (kills_by_service, broker_restarts) = faults_for(opts.duration, &stop, killer, restarts).await?;
    // Faults off everywhere; a child restarted from now on starts without them.
    fleet.lock().await.faults_on = false;
    for i in 0..n {
        switch_faults_off(fleet, &http, i).await?;
    }
    let quiet_from = Instant::now();
    let mut outcomes = Vec::new();
    while let Some(r) = clients.join_next().await {
        outcomes.push(r.context("client task")??);
    }
    let (acknowledged, samples) = ClientOutcome::merge(outcomes);
    opts.note(format!(
        "faults stopped after {} acknowledged submissions; waiting for quiescence",
        acknowledged.len()
    ));
    let quiesced = wait_quiescent(
        fleet,
        &http,
        &coordinator_db,
        transport,
        queues,
        quiet_from + quiescence_bound(opts.transport),
    )
    .await?;
    let quiescence_s = quiet_from.elapsed().as_secs_f64();
    opts.note(format!("quiescent after {quiescence_s:.2} s; checking invariants"));

    let mut resubmissions = Vec::new();
    for (payment, first) in samples.iter().take(RESUBMISSIONS) {
        let (again, created) = submit(&http, ports[0], payment)
            .await
            .map_err(|e| anyhow::anyhow!("resubmitting {}: {e}", payment.payment_id))?;
        resubmissions.push(Resubmission {
            first: *first,
            again,
            created,
        });
    }
    let faults = {
        let mut f = fleet.lock().await;
        let mut total = FaultCounters::default();
        for slot in &mut f.slots {
            total += slot.past;
            if let Some(s) = fault_status(&http, slot.port).await {
                total += s.counters;
            }
        }
        FaultReport {
            process_kills: kills_by_service.values().sum(),
            kills_by_service,
            broker_restarts,
            dropped: total.dropped,
            duplicated: total.duplicated,
            delayed: total.delayed,
            reordered: total.reordered,
        }
    };
    watch_stop.cancel();
    let unexpected = watcher.await.context("watcher task")?;
    let stops = stop_gracefully(fleet).await;

    let mut participant_dbs = Vec::new();
    for p in registry.iter() {
        let url = kessai_migrations::postgres_database_url(server, &database(p.name()));
        let db = open_service_db(registry, p.name(), &url, 2).await?;
        participant_dbs.push((p.clone(), db));
    }
    let books = Books {
        coordinator: &coordinator_db,
        registry,
        participants: participant_dbs.iter().map(|(p, db)| (p.clone(), db)).collect(),
    };
    let mut extra: Vec<Check> = quiescence_check(opts, quiesced).into_iter().collect();
    extra.push(unexpected);
    extra.push(stops);
    let mut a = assess(&books, &acknowledged, &resubmissions, extra).await?;
    a.sagas.submit_errors = submit_errors.load(Ordering::Relaxed);
    for (_, db) in participant_dbs {
        let _ = db.close().await;
    }
    let _ = coordinator_db.close().await;
    Ok(ChaosReport::new(opts, a, faults, quiescence_s, quiesced))
}

/// How much of `/healthz` counts as started.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ready {
    /// 200: database and broker answer (the first start, on quiet queues).
    Healthy,
    /// Any answer: the service serves HTTP only once it has opened its database and
    /// connected to its broker, so it runs. Used for restarts under load, where a
    /// slow broker (the SQS emulator takes seconds to count a long queue) can fail
    /// the health check's 2 s deadline of a service that works.
    Listening,
}

/// Waits for slot `i`'s `/healthz` to answer as `ready` asks; fails with its log if
/// the process exits.
async fn wait_ready(fleet: &Mutex<Fleet>, http: &reqwest::Client, i: usize, ready: Ready) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_WITHIN;
    loop {
        let (port, name, log) = {
            let mut f = fleet.lock().await;
            let slot = &mut f.slots[i];
            if let Some(child) = &mut slot.child
                && let Some(status) = child.try_wait()?
            {
                slot.child = None;
                bail!("{} exited at start with {status}:\n{}", slot.name, tail(&slot.log));
            }
            (slot.port, slot.name.clone(), slot.log.clone())
        };
        let healthy = http
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .timeout(Duration::from_secs(3))
            .send()
            .await
            .is_ok_and(|r| ready == Ready::Listening || r.status().is_success());
        if healthy {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{name} not ready within {READY_WITHIN:?}:\n{}", tail(&log));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn fault_status(http: &reqwest::Client, port: u16) -> Option<FaultStatus> {
    let r = http
        .get(format!("http://127.0.0.1:{port}/v1/faults"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().await.ok()
}

/// `PUT /v1/faults {"enabled": false}` on slot `i`, retried while it restarts. A
/// child started with faults off has no such route (404): nothing to switch.
async fn switch_faults_off(fleet: &Mutex<Fleet>, http: &reqwest::Client, i: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_WITHIN;
    loop {
        let (port, name) = {
            let f = fleet.lock().await;
            (f.slots[i].port, f.slots[i].name.clone())
        };
        let answer = http
            .put(format!("http://127.0.0.1:{port}/v1/faults"))
            .json(&serde_json::json!({"enabled": false}))
            .timeout(Duration::from_secs(3))
            .send()
            .await;
        match answer {
            Ok(r) if r.status().is_success() || r.status() == reqwest::StatusCode::NOT_FOUND => return Ok(()),
            _ if Instant::now() >= deadline => bail!("could not switch the faults off in {name}"),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// A client of the coordinators' HTTP API.
struct Client {
    http: reqwest::Client,
    ports: Arc<Vec<u16>>,
    stop: CancellationToken,
    errors: Arc<AtomicU64>,
}

/// Why a submission did not get a saga id.
enum SubmitError {
    /// No answer, a 5xx, a timeout: try again (on another coordinator).
    Retry(String),
    /// The coordinator refused the payment itself: the harness is wrong.
    Refused(String),
}

impl std::fmt::Display for SubmitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubmitError::Retry(e) | SubmitError::Refused(e) => f.write_str(e),
        }
    }
}

/// `POST /v1/payments`: the saga id and whether this call created it.
async fn submit(http: &reqwest::Client, port: u16, payment: &Payment) -> Result<(SagaId, bool), SubmitError> {
    let r = http
        .post(format!("http://127.0.0.1:{port}/v1/payments"))
        .json(payment)
        .timeout(SUBMIT_TIMEOUT)
        .send()
        .await
        .map_err(|e| SubmitError::Retry(e.to_string()))?;
    let status = r.status();
    let body: serde_json::Value = r.json().await.map_err(|e| SubmitError::Retry(e.to_string()))?;
    if status.is_client_error() {
        return Err(SubmitError::Refused(format!("{status}: {body}")));
    }
    if !status.is_success() {
        return Err(SubmitError::Retry(format!("{status}: {body}")));
    }
    let saga = body["saga_id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| SubmitError::Refused(format!("no saga_id in {body}")))?;
    Ok((saga, body["created"].as_bool().unwrap_or(false)))
}

impl Client {
    /// Submits back-to-back until stopped: a failed submission is retried (same
    /// payment, next coordinator) so a kill never loses or doubles it; then the
    /// client waits (bounded) for the outcome.
    async fn run(
        self,
        index: usize,
        seed: u64,
        fail_rate: f64,
        prefix: String,
    ) -> anyhow::Result<ClientOutcome<Payment>> {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut out = ClientOutcome::default();
        let mut turn = index;
        let mut n = 0u64;
        'payments: while !self.stop.is_cancelled() {
            let payment = crate::demo::random_payment(&mut rng, format!("{prefix}-{n}"), fail_rate);
            n += 1;
            let (port, saga_id) = loop {
                if self.stop.is_cancelled() {
                    break 'payments;
                }
                let port = self.ports[turn % self.ports.len()];
                match submit(&self.http, port, &payment).await {
                    Ok((saga, _)) => break (port, saga),
                    Err(SubmitError::Refused(e)) => bail!("coordinator refused payment {}: {e}", payment.payment_id),
                    Err(SubmitError::Retry(_)) => {
                        self.errors.fetch_add(1, Ordering::Relaxed);
                        turn += 1;
                        tokio::select! {
                            _ = self.stop.cancelled() => break 'payments,
                            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                        }
                    }
                }
            };
            out.acknowledged.push(saga_id);
            if out.sample.is_none() {
                out.sample = Some((payment, saga_id));
            }
            let wait = self
                .http
                .get(format!(
                    "http://127.0.0.1:{port}/v1/sagas/{saga_id}?wait={}ms",
                    CLIENT_WAIT.as_millis()
                ))
                .timeout(CLIENT_WAIT + Duration::from_secs(2))
                .send();
            tokio::select! {
                _ = self.stop.cancelled() => break,
                _ = wait => {}
            }
        }
        Ok(out)
    }
}

/// Every `every`: reads a random child's fault counters, `kill -9`s it, and starts it
/// again after a short random pause, waiting until it is healthy. Returns the kills by
/// service; every child is running again when it returns.
async fn killer(
    fleet: Arc<Mutex<Fleet>>,
    http: reqwest::Client,
    stop: CancellationToken,
    every: Duration,
    seed: u64,
) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x6b69_6c6c);
    let mut kills: BTreeMap<String, u64> = BTreeMap::new();
    // Kills are `every` apart from one kill to the next, restart time included, so a
    // slow restart (during a broker outage) does not thin out the kills.
    let mut next = tokio::time::Instant::now() + every;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(kills),
            _ = tokio::time::sleep_until(next) => {}
        }
        next = tokio::time::Instant::now() + every;
        let (victim, pause) = {
            let f = fleet.lock().await;
            (
                rng.random_range(0..f.slots.len()),
                Duration::from_millis(rng.random_range(100..=700)),
            )
        };
        let port = fleet.lock().await.slots[victim].port;
        // Read outside the lock: the child may be slow to answer; a kill is abrupt anyway.
        let counters = fault_status(&http, port).await.map(|s| s.counters);
        let name = {
            let mut f = fleet.lock().await;
            f.kill(victim).await;
            let slot = &mut f.slots[victim];
            if let Some(c) = counters {
                slot.past += c;
            }
            slot.name.clone()
        };
        *kills.entry(name.clone()).or_default() += 1;
        tracing::info!(service = name, ?pause, "killed (SIGKILL)");
        tokio::time::sleep(pause).await;
        fleet.lock().await.start(victim)?;
        wait_ready(&fleet, &http, victim, Ready::Listening)
            .await
            .with_context(|| format!("restarting {name}"))?;
    }
}

/// Restarts any child that exits by itself (a crash, or giving up on its broker)
/// until `stop`; the check it returns fails if there was any.
async fn watcher(fleet: Arc<Mutex<Fleet>>, stop: CancellationToken) -> Check {
    let mut exits = Vec::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        let mut f = fleet.lock().await;
        for (i, status) in f.exited() {
            let slot = &f.slots[i];
            tracing::error!(service = slot.name, %status, log = tail(&slot.log), "a service exited by itself; restarting it");
            exits.push(format!("{} exited with {status}", slot.name));
            if let Err(e) = f.start(i) {
                exits.push(format!("restarting {}: {e:#}", f.slots[i].name));
            }
        }
    }
    Check {
        name: "no_unexpected_exits",
        ok: exits.is_empty(),
        detail: if exits.is_empty() {
            "no service exited except when killed".into()
        } else {
            exits.join("; ")
        },
        offending: vec![],
    }
}

/// Waits until every saga is terminal, the outbox is empty, no child holds a delayed
/// or held-back message and the queues are empty.
async fn wait_quiescent(
    fleet: &Mutex<Fleet>,
    http: &reqwest::Client,
    db: &sea_orm::DatabaseConnection,
    transport: &Arc<dyn Transport>,
    queues: &[String],
    deadline: Instant,
) -> anyhow::Result<bool> {
    let ports: Vec<u16> = fleet.lock().await.slots.iter().map(|s| s.port).collect();
    loop {
        let quiet = async {
            let (by_state, _) = kessai_coordinator::store::counts(db).await.ok()?;
            let unfinished: u64 = by_state.iter().filter(|(s, _)| !s.is_terminal()).map(|(_, n)| *n).sum();
            if unfinished > 0 || kessai_coordinator::store::outbox_len(db).await.ok()? > 0 {
                return Some(false);
            }
            for &port in &ports {
                let held = fault_status(http, port).await.map_or(0, |s| s.in_flight);
                if held > 0 {
                    return Some(false);
                }
            }
            for q in queues {
                if transport.pending(q).await.ok()?.unwrap_or(0) > 0 {
                    return Some(false);
                }
            }
            Some(true)
        }
        .await;
        if quiet == Some(true) {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// SIGTERM to every child; the check fails unless each exits 0 within [`STOP_WITHIN`].
async fn stop_gracefully(fleet: &Mutex<Fleet>) -> Check {
    let mut f = fleet.lock().await;
    for slot in &f.slots {
        if let Some(pid) = slot.child.as_ref().and_then(Child::id) {
            // SAFETY: kill(2) on a child we spawned and have not reaped yet.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
    }
    let mut problems = Vec::new();
    for slot in &mut f.slots {
        let Some(mut child) = slot.child.take() else {
            problems.push(format!("{} was not running", slot.name));
            continue;
        };
        match tokio::time::timeout(STOP_WITHIN, child.wait()).await {
            Ok(Ok(status)) if status.success() => {}
            Ok(Ok(status)) => problems.push(format!("{} exited with {status}:\n{}", slot.name, tail(&slot.log))),
            Ok(Err(e)) => problems.push(format!("{}: {e}", slot.name)),
            Err(_) => {
                let _ = child.kill().await;
                problems.push(format!("{} still running {STOP_WITHIN:?} after SIGTERM", slot.name));
            }
        }
    }
    Check {
        name: "services_stopped_cleanly",
        ok: problems.is_empty(),
        detail: if problems.is_empty() {
            format!("all {} services exited 0 on SIGTERM after the run", f.slots.len())
        } else {
            problems.join("; ")
        },
        offending: vec![],
    }
}

/// Drops the run's databases and deletes its queues. Best effort: a failure is logged.
async fn clean_up(transport: &Arc<dyn Transport>, queues: &[String], server: &str, database: &dyn Fn(&str) -> String) {
    for service in ["coordinator", "balance", "card-issuer", "bank"] {
        if let Err(e) = kessai_migrations::drop_postgres_database(server, &database(service)).await {
            tracing::warn!(database = database(service), error = %e, "dropping a chaos database failed");
        }
    }
    for q in queues {
        if let Err(e) = transport.delete(q).await {
            tracing::warn!(queue = q, error = %e, "deleting a chaos queue failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::TransportKind;

    /// The children read back exactly what the harness meant: names, store, faults.
    #[test]
    fn the_children_config_round_trips() {
        let opts = ChaosOptions {
            transport: TransportKind::Amqp,
            in_process: false,
            drop: 0.05,
            duplicate: 0.1,
            seed: 7,
            ..ChaosOptions::default()
        };
        let config = child_config(&opts, "abc123");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kessai.toml");
        write_private(&file, &toml::to_string(&config).unwrap()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        let back = Config::load(Some(&file)).unwrap();
        assert_eq!(back.queue_prefix, "kessai-chaos-abc123");
        assert_eq!(back.store.database_prefix, "kessai_chaos_abc123");
        assert_eq!(back.store.kind, StoreKind::Postgres);
        assert_eq!(back.transport.kind, TransportKind::Amqp);
        assert!(back.participant.seed_demo);
        let faults = back.faults.fault_config().unwrap().expect("faults on");
        assert_eq!((faults.drop, faults.duplicate, faults.seed), (0.05, 0.1, 7));
        assert_eq!(
            back.transport.amqp_url.expose_secret(),
            config.transport.amqp_url.expose_secret()
        );
    }
}
