//! `kessai coordinator` and `kessai participant <name>`: one service per process, the
//! way kessai is deployed.
//!
//! Every process goes through the same steps:
//! 1. load the layered [`Config`] (defaults ← `--config FILE` ← `KESSAI_*`), and refuse
//!    the in-process transport, which cannot connect separate processes;
//! 2. open its own database — created if missing on PostgreSQL — and migrate it; a
//!    participant seeds the demo data if `participant.seed_demo` says so;
//! 3. connect the transport and declare the queue it consumes, **waiting with backoff
//!    while the broker is unreachable** (containers start in any order);
//! 4. start the service, then serve `/healthz` and `/metrics` (and on the coordinator
//!    the HTTP API and the web UI) on `http.listen`;
//! 5. run until SIGTERM or SIGINT, then stop gracefully: stop taking HTTP requests,
//!    stop consuming, finish in-flight batches, flush the outbox. A second signal
//!    exits at once (nothing is lost: unacknowledged messages are redelivered and the
//!    outbox lives in the database).
//!
//! How each task ended is logged. A task that fails, or the last one ending before a
//! signal, stops the service with a non-zero exit status; a task that merely finished
//! its work (the coordinator's one-shot `resume`) does not.

use crate::config::Config;
use crate::config::TransportKind;
use crate::fault_control;
use crate::health::{self, Health};
use crate::metrics::{ProcessMetrics, Runs};
use anyhow::Context;
use clap::Args;
use clap::builder::PossibleValuesParser;
use kessai_coordinator::{Coordinator, CoordinatorConfig, GenericSaga, SagaDefinitions, SystemClock};
use kessai_migrations::CoordinatorMigrator;
use kessai_participants::Registry;
use kessai_participants::RuntimeConfig;
use kessai_transport::{TaskEnd, Tasks, Transport};
use sea_orm::DatabaseConnection;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// First wait before retrying an unreachable broker at start; doubles up to
/// [`MAX_CONNECT_BACKOFF`].
const MIN_CONNECT_BACKOFF: Duration = Duration::from_millis(250);
const MAX_CONNECT_BACKOFF: Duration = Duration::from_secs(10);
/// How long in-flight HTTP requests get to finish once shutdown starts.
const HTTP_DRAIN: Duration = Duration::from_secs(10);

#[derive(Debug, Args)]
pub struct CoordinatorArgs {
    /// TOML configuration file; `KESSAI_*` environment variables override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ParticipantArgs {
    /// Which registered participant this process runs.
    #[arg(value_name = "NAME", value_parser = participant_name())]
    pub name: String,
    /// TOML configuration file; `KESSAI_*` environment variables override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

fn participant_name() -> PossibleValuesParser {
    PossibleValuesParser::new(Registry::reference().names())
}

/// `kessai coordinator`.
pub async fn run_coordinator(args: CoordinatorArgs) -> anyhow::Result<ExitCode> {
    run_coordinator_in(&Registry::reference(), args).await
}

/// `kessai coordinator` for a deployment whose participants are `registry` (a binary
/// of its own that registers more than the reference three): generic sagas may name
/// any of them.
pub async fn run_coordinator_in(registry: &Registry, args: CoordinatorArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(args.config, "coordinator")?;
    let stop = watch_signals()?;
    let url = config.database_url("coordinator").await?;
    let db = kessai_migrations::open_migrated::<CoordinatorMigrator>(&url, config.store.max_connections)
        .await
        .context("opening the coordinator database")?;
    let reply_queue = config.topology().reply_queue();
    let Some(transport) = connect_transport(&config, &reply_queue, &stop).await? else {
        return Ok(stopped_before_start("coordinator"));
    };
    let (transport, faults) = fault_control::wrap("coordinator", transport, config.faults.fault_config()?)?;
    let listener = bind(&config.http.listen).await?;
    let metrics = ProcessMetrics::new(Runs {
        coordinator: true,
        participants: false,
    });
    let (coordinator, tasks) = Coordinator::start(
        db.clone(),
        transport.clone(),
        CoordinatorConfig {
            definitions: SagaDefinitions::default().with(GenericSaga::checked(registry.branch_check())),
            metrics: metrics.coordinator.clone(),
            ..config.coordinator_config()
        },
        Arc::new(SystemClock),
    )
    .await
    .context("starting the coordinator")?;
    let api = config.api_config(registry)?;
    let admin = api.auth.clone();
    let metrics = Arc::new(metrics.on_scrape(crate::metrics::coordinator_refresh(coordinator.clone())));
    let scrape_auth = (!config.auth.metrics_public).then(|| admin.clone());
    let router = health::router(Health::new("coordinator", db.clone(), transport, reply_queue))
        .merge(crate::http::router(coordinator, api))
        .merge(crate::metrics::router(metrics, scrape_auth))
        .merge(fault_router(faults, admin));
    supervise("coordinator", tasks, listener, router, stop, db).await
}

/// `kessai participant <name>`.
pub async fn run_participant(args: ParticipantArgs) -> anyhow::Result<ExitCode> {
    run_participant_in(&Registry::reference(), args).await
}

/// `kessai participant <name>` for a participant of `registry` (a deployment's own
/// binary with participants of its own).
pub async fn run_participant_in(registry: &Registry, args: ParticipantArgs) -> anyhow::Result<ExitCode> {
    let p = registry.require(&args.name)?.clone();
    let config = load_config(args.config, p.name())?;
    let stop = watch_signals()?;
    let url = config.database_url(p.name()).await?;
    let db = p
        .open(&url, config.store.max_connections)
        .await
        .with_context(|| format!("opening the {} database", p.name()))?;
    if config.participant.seed_demo {
        let seeded = p
            .seed_demo(&db)
            .await
            .with_context(|| format!("seeding the {} demo data", p.name()))?;
        tracing::info!(service = p.name(), rows = seeded, "demo data seeded");
    }
    let queue = config.topology().command_queue(p.name());
    let Some(transport) = connect_transport(&config, &queue, &stop).await? else {
        return Ok(stopped_before_start(p.name()));
    };
    let (transport, faults) = fault_control::wrap(p.name(), transport, config.faults.fault_config()?)?;
    let listener = bind(&config.http.listen).await?;
    let metrics = ProcessMetrics::new(Runs {
        coordinator: false,
        participants: true,
    });
    let runtime_config = RuntimeConfig {
        metrics: metrics.participants.clone(),
        ..config.participant_config()
    };
    let tasks = p.start(db.clone(), transport.clone(), runtime_config);
    let admin = config.api_auth().map_err(|e| anyhow::anyhow!(e))?;
    let refresh = crate::metrics::queue_refresh(metrics.participants.clone(), transport.clone(), vec![queue.clone()]);
    let scrape_auth = (!config.auth.metrics_public).then(|| admin.clone());
    let router = health::router(Health::new(p.name(), db.clone(), transport, queue))
        .merge(crate::metrics::router(
            Arc::new(metrics.on_scrape(refresh)),
            scrape_auth,
        ))
        .merge(fault_router(faults, admin));
    supervise(p.name(), tasks, listener, router, stop, db).await
}

/// The chaos fault switch, if faults are configured: behind the `admin` scope.
fn fault_router(faults: Option<fault_control::Faults>, auth: crate::http::Auth) -> axum::Router {
    match faults {
        Some(faults) => crate::http::require_scope(fault_control::router(faults), auth, crate::http::Scope::Admin),
        None => axum::Router::new(),
    }
}

fn load_config(file: Option<PathBuf>, service: &str) -> anyhow::Result<Config> {
    let config = Config::load(file.as_deref())?;
    anyhow::ensure!(
        config.transport.kind != TransportKind::Memory,
        "transport.kind = \"memory\" only connects services inside one process (kessai demo); \
         a separate {service} process needs a broker: set transport.kind to \"amqp\" or \"sqs\" \
         (e.g. KESSAI_TRANSPORT__KIND=amqp)"
    );
    Ok(config)
}

/// Fires the returned token on the first SIGTERM or SIGINT; a second one exits at once.
/// (Also `kessai serve`'s.)
pub fn watch_signals() -> anyhow::Result<CancellationToken> {
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let stop = CancellationToken::new();
    let fire = stop.clone();
    tokio::spawn(async move {
        let which = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(
            signal = which,
            "stopping gracefully: no new work, finishing what is in flight"
        );
        fire.cancel();
        let which = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::error!(
            signal = which,
            "second signal: exiting without finishing (unacknowledged messages will be redelivered)"
        );
        std::process::exit(1);
    });
    Ok(stop)
}

/// Connects the transport and declares `queue`, retrying with capped exponential
/// backoff while the broker is unreachable. `None` if `stop` fired while waiting;
/// an error at once if retrying cannot help (a bad URL, bad credentials).
async fn connect_transport(
    config: &Config,
    queue: &str,
    stop: &CancellationToken,
) -> anyhow::Result<Option<Arc<dyn Transport>>> {
    let Some(transport) =
        retry_while_unreachable("connecting to the broker", stop, async || config.transport().await).await?
    else {
        return Ok(None);
    };
    let declared = retry_while_unreachable("declaring the queue", stop, async || {
        transport
            .declare(queue)
            .await
            .with_context(|| format!("declaring queue {queue}"))
    })
    .await?;
    Ok(declared.map(|()| transport))
}

async fn retry_while_unreachable<T>(
    what: &str,
    stop: &CancellationToken,
    mut attempt: impl AsyncFnMut() -> anyhow::Result<T>,
) -> anyhow::Result<Option<T>> {
    let mut backoff = MIN_CONNECT_BACKOFF;
    for attempts in 1u32.. {
        let error = match attempt().await {
            Ok(v) => {
                if attempts > 1 {
                    tracing::info!(attempts, "{what}: succeeded");
                }
                return Ok(Some(v));
            }
            Err(e) => e,
        };
        let retryable = error
            .downcast_ref::<kessai_transport::Error>()
            .is_some_and(kessai_transport::Error::is_retryable);
        if !retryable {
            return Err(error);
        }
        tracing::warn!(attempts, retry_in = ?backoff, error = %format!("{error:#}"), "{what}: broker unreachable; waiting for it");
        tokio::select! {
            _ = stop.cancelled() => return Ok(None),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_CONNECT_BACKOFF);
    }
    unreachable!("the attempt counter does not run out")
}

fn stopped_before_start(service: &str) -> ExitCode {
    tracing::info!(service, "stopped before the service started");
    ExitCode::SUCCESS
}

async fn bind(listen: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on http.listen = {listen:?}"))
}

/// How one task ended: its name and its error, if any.
type Ended = (String, Result<(), String>);

fn end_of<E: std::error::Error>((name, r): TaskEnd<E>) -> Ended {
    (name.to_owned(), r.map_err(|e| e.to_string()))
}

fn joined<E: std::fmt::Display>(r: Result<Result<(), E>, tokio::task::JoinError>) -> Result<(), String> {
    match r {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(e) => Err(format!("task panicked: {e}")),
    }
}

/// Serves HTTP and waits for a signal or a task's own end, then shuts down in order
/// (HTTP first, so no new work arrives while the service drains) and reports.
async fn supervise<E: std::error::Error + Send + 'static>(
    service: &str,
    mut running: Tasks<E>,
    listener: tokio::net::TcpListener,
    router: axum::Router,
    stop: CancellationToken,
    db: DatabaseConnection,
) -> anyhow::Result<ExitCode> {
    let address = listener.local_addr().ok();
    let http_stop = CancellationToken::new();
    let mut http = {
        let http_stop = http_stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { http_stop.cancelled().await })
                .await
        })
    };
    tracing::info!(service, http.listen = ?address, "ready");

    // Until a signal: a task that finishes its work (the coordinator's one-shot
    // `resume`) is fine; one that fails, or nothing left running, stops the service.
    let mut ended: Vec<Ended> = Vec::new();
    let mut http_done = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            end = running.join_next() => match end.map(end_of) {
                Some((task, Ok(()))) => {
                    tracing::info!(service, task, "task finished its work");
                    ended.push((task, Ok(())));
                }
                Some((task, Err(error))) => {
                    tracing::error!(service, task, error, "a task failed; shutting the service down");
                    ended.push((task, Err(error)));
                    break;
                }
                None => {
                    tracing::error!(service, "no task is left running; shutting the service down");
                    ended.push(("service".into(), Err("every task ended before shutdown was asked".into())));
                    break;
                }
            },
            r = &mut http => {
                http_done = true;
                let r = joined(r).and_then(|()| Err("the HTTP server ended before shutdown was asked".to_owned()));
                tracing::error!(service, "the HTTP server stopped; shutting the service down");
                ended.push(("http".into(), r));
                break;
            }
        }
    }

    http_stop.cancel();
    if !http_done {
        let r = match tokio::time::timeout(HTTP_DRAIN, &mut http).await {
            Ok(r) => joined(r),
            Err(_) => {
                http.abort();
                Err(format!(
                    "in-flight requests still running after {HTTP_DRAIN:?}; dropped"
                ))
            }
        };
        ended.push(("http".into(), r));
    }
    ended.extend(running.shutdown().await.into_iter().map(end_of));
    if let Err(e) = db.close().await {
        tracing::warn!(service, error = %e, "closing the database pool failed");
    }

    let mut ok = true;
    for (task, r) in &ended {
        match r {
            Ok(()) => tracing::info!(service, task, "task ended"),
            Err(error) => {
                ok = false;
                tracing::error!(service, task, error, "task failed");
            }
        }
    }
    if ok {
        tracing::info!(service, "stopped cleanly");
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::FAILURE)
    }
}
