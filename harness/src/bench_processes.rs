//! `kessai bench --processes`: the coordinator and each reference participant as its
//! own child process of this binary (as `kessai coordinator` / `kessai participant`),
//! each on its own fresh PostgreSQL database, over RabbitMQ or SQS; the load generator
//! talks to the coordinator over HTTP (`POST /v1/payments`, `GET /v1/sagas/{id}?wait=`)
//! and reads each child's CPU from `/proc`. The run's databases and queues are removed
//! at the end; the children's logs stay in a temporary folder only if the run fails.

use crate::bench::{BenchOptions, BenchReport, FirstPayments, Probe, Sample, Target};
use crate::demo::StoreKind;
use crate::invariants;
use crate::procstat::{self, ProcessGroup};
use crate::stack::open_service_db;
use anyhow::{Context, bail};
use kessai_coordinator::SagaState;
use kessai_messages::{Payment, SagaId};
use kessai_participants::Registry;
use kessai_service::config::Config;
use reqwest::StatusCode;
use sea_orm::DatabaseConnection;
use secrecy::ExposeSecret;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

const READY_WITHIN: Duration = Duration::from_secs(60);
const RUST_LOG: &str = "warn";
/// One `?wait=` long poll; repeated until the saga ends or the patience runs out.
const LONG_POLL: &str = "25s";
const SAGA_PATIENCE: Duration = Duration::from_secs(120);

/// One child service.
struct ChildService {
    name: &'static str,
    port: u16,
    child: Child,
}

pub(crate) async fn run(opts: BenchOptions) -> anyhow::Result<BenchReport> {
    if opts.store != StoreKind::Postgres {
        bail!("--processes runs on PostgreSQL");
    }
    let run_id = crate::demo::new_run_id();
    let dir = tempfile::Builder::new().prefix("kessai-bench-").tempdir()?;
    let config = child_config(&opts.config, &opts, &run_id);
    let config_file = dir.path().join("kessai.toml");
    crate::chaos::processes::write_private(&config_file, &toml::to_string(&config)?)?;
    let transport = config.transport().await.context("connecting to the broker")?;
    let server = config.store.postgres_url.expose_secret().to_owned();
    let registry = Registry::reference();
    let services = crate::stack::service_names(&registry);

    let mut children = Vec::new();
    let started = start_all(&services, &config_file, dir.path(), &mut children).await;
    let result = match started {
        Ok(()) => measure(&opts, &config, &run_id, &children).await,
        Err(e) => Err(e),
    };
    for c in &mut children {
        stop(c).await;
    }
    let passed = result.as_ref().is_ok_and(|r| r.invariants_ok);
    for service in &services {
        let db = config.database_name(service);
        if let Err(e) = kessai_migrations::drop_postgres_database(&server, &db).await {
            tracing::warn!(database = db, error = %e, "dropping a bench database failed");
        }
    }
    for q in crate::stack::service_queues(&config.topology(), &registry) {
        if let Err(e) = transport.delete(&q).await {
            tracing::warn!(queue = q, error = %e, "deleting a bench queue failed");
        }
    }
    if !passed {
        eprintln!("bench: the children's logs are kept in {}", dir.keep().display());
    }
    result
}

/// The children's shared config: the user's broker and server, this run's names.
fn child_config(base: &Config, opts: &BenchOptions, run_id: &str) -> Config {
    crate::chaos::processes::deployment_config(base, "bench", opts.transport, run_id)
}

async fn start_all(
    services: &[&'static str],
    config_file: &Path,
    dir: &Path,
    children: &mut Vec<ChildService>,
) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("finding the kessai binary")?;
    // Participants first: they seed their books before the coordinator sends anything.
    for name in services.iter().rev() {
        let port = crate::chaos::processes::free_port()?;
        let log = dir.join(format!("{name}.log"));
        let mut cmd = Command::new(&exe);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("KESSAI_") {
                cmd.env_remove(key);
            }
        }
        match *name {
            "coordinator" => cmd.arg("coordinator"),
            p => cmd.args(["participant", p]),
        };
        let file = std::fs::File::create(&log)?;
        cmd.arg("--config")
            .arg(config_file)
            .env("RUST_LOG", RUST_LOG)
            .env("KESSAI_HTTP__LISTEN", format!("127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true);
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        children.push(ChildService { name, port, child });
    }
    let http = reqwest::Client::new();
    for c in children.iter_mut() {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Some(status) = c.child.try_wait()? {
                let log = std::fs::read_to_string(dir.join(format!("{}.log", c.name))).unwrap_or_default();
                bail!("{} exited at start with {status}:\n{log}", c.name);
            }
            let ok = http
                .get(format!("http://127.0.0.1:{}/healthz", c.port))
                .timeout(Duration::from_secs(3))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                break;
            }
            if Instant::now() >= deadline {
                bail!("{} not ready within {READY_WITHIN:?}", c.name);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// SIGTERM (graceful: outbox flushed, batches finished), then SIGKILL if it lingers.
async fn stop(c: &mut ChildService) {
    if let Some(pid) = c.child.id() {
        // SAFETY: sending a signal to our own child, whose pid we hold.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
    }
    if tokio::time::timeout(Duration::from_secs(30), c.child.wait())
        .await
        .is_err()
    {
        let _ = c.child.start_kill();
        let _ = c.child.wait().await;
    }
}

/// The coordinator's HTTP API as the bench's target.
struct Http {
    client: reqwest::Client,
    base: String,
}

#[async_trait::async_trait]
impl Target for Http {
    async fn submit(&self, payment: &Payment) -> anyhow::Result<Option<(SagaId, bool)>> {
        let r = self
            .client
            .post(format!("{}/v1/payments", self.base))
            .json(payment)
            .timeout(Duration::from_secs(30))
            .send()
            .await?;
        let status = r.status();
        if status == StatusCode::TOO_MANY_REQUESTS {
            return Ok(None);
        }
        let body: serde_json::Value = r.json().await?;
        if !status.is_success() {
            bail!("POST /v1/payments answered {status}: {body}");
        }
        let id = body["saga_id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("no saga_id in {body}"))?;
        Ok(Some((id, body["created"].as_bool().unwrap_or(false))))
    }

    async fn wait(&self, id: SagaId) -> anyhow::Result<SagaState> {
        let deadline = Instant::now() + SAGA_PATIENCE;
        loop {
            let r = self
                .client
                .get(format!("{}/v1/sagas/{id}?wait={LONG_POLL}", self.base))
                .timeout(Duration::from_secs(60))
                .send()
                .await?;
            let status = r.status();
            let body: serde_json::Value = r.json().await?;
            if !status.is_success() {
                bail!("GET /v1/sagas/{id} answered {status}: {body}");
            }
            let state: SagaState =
                serde_json::from_value(body["state"].clone()).with_context(|| format!("no state in {body}"))?;
            if state.is_terminal() {
                return Ok(state);
            }
            if Instant::now() >= deadline {
                bail!("saga {id} not finished after {SAGA_PATIENCE:?} (state {state})");
            }
        }
    }
}

struct ProcessProbe {
    groups: Vec<ProcessGroup>,
    databases: Vec<(&'static str, DatabaseConnection)>,
    http: reqwest::Client,
    stats_url: String,
}

#[async_trait::async_trait]
impl Probe for ProcessProbe {
    async fn sample(&self) -> Sample {
        let mut transactions = BTreeMap::new();
        for (name, db) in &self.databases {
            if let Some(n) = crate::bench::pg_transactions(db).await {
                transactions.insert((*name).to_owned(), n);
            }
        }
        let commands = async {
            let body: serde_json::Value = self.http.get(&self.stats_url).send().await.ok()?.json().await.ok()?;
            body["commands_published"].as_u64()
        }
        .await;
        Sample {
            cpu: procstat::snapshot(&self.groups),
            statements: BTreeMap::new(),
            transactions,
            commands,
        }
    }

    fn groups(&self) -> Vec<ProcessGroup> {
        self.groups.clone()
    }
}

async fn measure(
    opts: &BenchOptions,
    config: &Config,
    run_id: &str,
    children: &[ChildService],
) -> anyhow::Result<BenchReport> {
    let server = config.store.postgres_url.expose_secret().to_owned();
    let registry = Registry::reference();
    let mut databases = Vec::new();
    for c in children {
        let url = kessai_migrations::postgres_database_url(&server, &config.database_name(c.name));
        databases.push((c.name, open_service_db(&registry, c.name, &url, 2).await?));
    }
    let mut groups: Vec<ProcessGroup> = children
        .iter()
        .filter_map(|c| Some(ProcessGroup::pids(c.name, vec![c.child.id()?])))
        .collect();
    groups.push(ProcessGroup::pids("bench clients", vec![std::process::id()]));
    groups.extend(procstat::servers());
    let coordinator_port = children
        .iter()
        .find(|c| c.name == "coordinator")
        .map(|c| c.port)
        .context("no coordinator")?;
    let base = format!("http://127.0.0.1:{coordinator_port}");
    let client = reqwest::Client::builder()
        .default_headers(crate::chaos::processes::api_headers(config)?)
        .pool_max_idle_per_host(opts.concurrency.max(64))
        .build()?;
    let probe = ProcessProbe {
        groups,
        databases,
        http: client.clone(),
        stats_url: format!("{base}/v1/stats"),
    };
    let target: Arc<dyn Target> = Arc::new(Http { client, base });
    let first = Arc::new(FirstPayments::default());
    let (records, window) = crate::bench::load(target.clone(), opts, run_id, &probe, &first).await?;
    let resubmissions = crate::bench::resubmit(&*target, &first).await?;

    // Quiet: nothing left in the outbox or the queues, then the books are final.
    let coordinator_db = &probe
        .databases
        .iter()
        .find(|(n, _)| *n == "coordinator")
        .context("db")?
        .1;
    let transport = config.transport().await?;
    let queues = crate::stack::service_queues(&config.topology(), &registry);
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let outbox = kessai_coordinator::store::outbox_len(coordinator_db).await.unwrap_or(1);
        let mut queued = 0;
        for q in &queues {
            queued += transport.pending(q).await.ok().flatten().unwrap_or(0);
        }
        if outbox == 0 && queued == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let outcomes = invariants::read_outcomes(coordinator_db, &registry).await?;
    let mut audits = Vec::new();
    for p in registry.iter() {
        let db = &probe.databases.iter().find(|(n, _)| *n == p.name()).context("db")?.1;
        audits.push(p.audit(db).await?);
    }
    let acknowledged: Vec<SagaId> = records.iter().filter_map(|r| r.saga).collect();
    let report = invariants::check_all(&outcomes, &audits, &acknowledged, &resubmissions);
    let (by_state, _) = kessai_coordinator::store::counts(coordinator_db).await?;
    let unfinished = [SagaState::Trying, SagaState::Confirming, SagaState::Cancelling]
        .iter()
        .map(|s| by_state.get(s).copied().unwrap_or(0))
        .sum();
    let deadline_cancels = crate::bench::cancelled_by_deadline(coordinator_db).await?;
    for (_, db) in &probe.databases {
        let _ = db.clone().close().await;
    }
    let mut summary = crate::bench::summarise(opts, &records, window, unfinished, deadline_cancels, report);
    summary.bare_transport_round_trips_per_s = crate::bench::bare_round_trips(&transport, run_id).await;
    Ok(summary)
}
