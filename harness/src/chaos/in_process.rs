//! The in-process deployment: the coordinator and every participant of the options'
//! registry in this process (an [`EmbeddedStack`] on SQLite files), over a [`FaultyTransport`] wrapping
//! the configured transport — the in-process one, or a real broker with
//! `--in-process`. A "kill" aborts one service's tasks with no shutdown step (its
//! unacknowledged deliveries go back to the queue, its in-memory state is lost) and
//! restarts it on the same database files after a short pause.

use super::{
    Books, CLIENT_WAIT, ChaosOptions, ChaosReport, ClientOutcome, FaultReport, RESUBMISSIONS, SUBMIT_TIMEOUT, Workload,
    Workspace, assess, broker, client_seed, clients_start, faults_for, quiescence_bound, quiescence_check, set_resends,
};
use crate::demo::TransportKind;
use crate::invariants::Resubmission;
use crate::stack::{DatabaseUrls, EmbeddedStack, StackConfig, service_queues};
use anyhow::Context;
use kessai_coordinator::{Coordinator, GenericSaga, SagaDefinitions, SystemClock};
use kessai_transport::{FaultyTransport, MemoryTransport, Transport};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::RwLock;
use tokio_util::sync::CancellationToken;

type Faulty = FaultyTransport<dyn Transport>;

/// How long a killed service may take to come back (a broker outage may be under way).
const RESTART_WITHIN: Duration = Duration::from_secs(60);

pub(super) async fn run(opts: ChaosOptions) -> anyhow::Result<ChaosReport> {
    let workspace = Workspace::prepare(&opts).await?;
    let mut config = opts.config.clone();
    config.queue_prefix = format!("kessai-chaos-{}", workspace.run_id);
    config.transport.kind = opts.transport;
    set_resends(&mut config.coordinator, opts.transport, true);
    let inner: Arc<dyn Transport> = match opts.transport {
        TransportKind::Memory => Arc::new(MemoryTransport::new()),
        _ => config.transport().await?,
    };
    let mut coordinator = config.coordinator_config();
    coordinator.relay_poll = Duration::from_millis(100);
    // Generic sagas may name this run's participants, whichever are registered.
    coordinator.definitions = SagaDefinitions::default().with(GenericSaga::checked(opts.registry.branch_check()));
    let faulty: Faulty = FaultyTransport::new(inner.clone(), opts.fault_config())?;
    let stack_config = StackConfig {
        registry: opts.registry.clone(),
        urls: DatabaseUrls::sqlite(&workspace.dir, &opts.registry),
        coordinator,
        participant: config.participant_config(),
        clock: Arc::new(SystemClock),
        max_connections: 1,
        statements: None,
    };
    let stack = EmbeddedStack::start(stack_config, Arc::new(faulty.clone())).await?;
    let stack = Arc::new(RwLock::new(stack));
    let result = drive(&stack, &faulty, &opts, &workspace.run_id).await;
    if let Ok(lock) = Arc::try_unwrap(stack) {
        for (task, r) in lock.into_inner().shutdown().await {
            if let Err(e) = r {
                tracing::debug!(task, error = %e, "task ended with an error");
            }
        }
    }
    let passed = result.as_ref().is_ok_and(|r| r.invariants_ok);
    if opts.transport != TransportKind::Memory && passed && !opts.keep {
        for q in service_queues(&config.topology(), &opts.registry) {
            if let Err(e) = inner.delete(&q).await {
                tracing::warn!(queue = q, error = %e, "deleting a chaos queue failed");
            }
        }
    }
    let mut report = result?;
    report.data_dir = workspace.dir.display().to_string();
    workspace.finish(passed);
    Ok(report)
}

async fn drive(
    stack: &Arc<RwLock<EmbeddedStack>>,
    faulty: &Faulty,
    opts: &ChaosOptions,
    run_id: &str,
) -> anyhow::Result<ChaosReport> {
    let (stop, submit_errors) = clients_start(opts);
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..opts.concurrency {
        let (stack, stop, errors) = (stack.clone(), stop.clone(), submit_errors.clone());
        let (seed, fail_rate, prefix) = (client_seed(opts, c), opts.fail_rate, format!("chaos-{run_id}-{c}"));
        let workload = opts.workload.clone();
        clients.spawn(async move { client(stack, stop, errors, workload, seed, fail_rate, prefix).await });
    }
    let kills = opts.kill_every.map(|every| {
        let (stack, stop, seed, names) = (stack.clone(), stop.clone(), opts.seed, opts.registry.names());
        tokio::spawn(async move { killer(stack, stop, every, seed, names).await })
    });
    let restarts = opts
        .broker_restart_every
        .map(|every| broker::spawn(stop.clone(), every, opts.broker_outage));

    let (kills_by_service, broker_restarts) = faults_for(opts.duration, &stop, kills, restarts).await?;
    faulty.set_enabled(false);
    faulty.release_held().await?;
    let quiet_from = Instant::now();
    let mut outcomes = Vec::new();
    while let Some(r) = clients.join_next().await {
        outcomes.push(r.context("client task")?);
    }
    let (acknowledged, samples) = ClientOutcome::merge(outcomes);
    opts.note(format!(
        "faults stopped after {} acknowledged submissions; waiting for quiescence",
        acknowledged.len()
    ));

    let stack = stack.read().await;
    let quiesced = wait_quiescent(&stack, faulty, quiet_from + quiescence_bound(opts.transport)).await?;
    let quiescence_s = quiet_from.elapsed().as_secs_f64();
    opts.note(format!("quiescent after {quiescence_s:.2} s; checking invariants"));

    // Resubmitting acknowledged requests must create nothing new.
    let mut resubmissions = Vec::new();
    for (request, first) in samples.iter().take(RESUBMISSIONS) {
        let again = stack
            .coordinator()
            .submit_saga(opts.workload.kind, request, None)
            .await?;
        resubmissions.push(Resubmission {
            first: *first,
            again: again.saga_id,
            created: again.created,
        });
    }
    let mut participants = Vec::new();
    for p in opts.registry.iter() {
        let db = stack
            .participant_db(p.name())
            .with_context(|| format!("participant {} is not running", p.name()))?;
        participants.push((p.clone(), db));
    }
    let books = Books {
        coordinator: stack.coordinator().db(),
        registry: &opts.registry,
        participants,
    };
    let mut a = assess(
        &books,
        &acknowledged,
        &resubmissions,
        quiescence_check(opts, quiesced).into_iter().collect(),
    )
    .await?;
    a.sagas.submit_errors = submit_errors.load(Ordering::Relaxed);
    let counters = faulty.counters();
    let faults = FaultReport {
        process_kills: kills_by_service.values().sum(),
        kills_by_service,
        broker_restarts,
        dropped: counters.dropped,
        duplicated: counters.duplicated,
        delayed: counters.delayed,
        reordered: counters.reordered,
    };
    Ok(ChaosReport::new(opts, a, faults, quiescence_s, quiesced))
}

/// One client: submit (retrying the same request after an error or a timeout, so a
/// kill never duplicates it), wait a little for the outcome, next — until stopped.
async fn client(
    stack: Arc<RwLock<EmbeddedStack>>,
    stop: CancellationToken,
    errors: Arc<AtomicU64>,
    workload: Workload,
    seed: u64,
    fail_rate: f64,
    prefix: String,
) -> ClientOutcome<serde_json::Value> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut out = ClientOutcome::default();
    let mut n = 0u64;
    'payments: while !stop.is_cancelled() {
        let request = (workload.request)(&mut rng, format!("{prefix}-{n}"), fail_rate);
        n += 1;
        let (coordinator, saga_id) = loop {
            if stop.is_cancelled() {
                break 'payments;
            }
            let coordinator: Coordinator = stack.read().await.coordinator().clone();
            match tokio::time::timeout(SUBMIT_TIMEOUT, coordinator.submit_saga(workload.kind, &request, None)).await {
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
            out.sample = Some((request, saga_id));
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
    participants: Vec<&'static str>,
) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x6b69_6c6c);
    let mut kills: BTreeMap<String, u64> = BTreeMap::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(kills),
            _ = tokio::time::sleep(every) => {}
        }
        let victim = rng.random_range(0..=participants.len());
        let pause = Duration::from_millis(rng.random_range(100..=700));
        let name = match victim {
            0 => {
                stack.write().await.kill_coordinator().await;
                "coordinator"
            }
            i => {
                let p = participants[i - 1];
                stack.write().await.kill_participant(p).await;
                p
            }
        };
        *kills.entry(name.to_owned()).or_default() += 1;
        tracing::debug!(service = name, ?pause, "killed");
        tokio::time::sleep(pause).await;
        // A restart during a broker outage fails until the broker is back.
        let give_up = Instant::now() + RESTART_WITHIN;
        loop {
            let r = {
                let mut s = stack.write().await;
                match victim {
                    0 => s.restart_coordinator().await,
                    i => s.restart_participant(participants[i - 1]).await,
                }
            };
            match r {
                Ok(()) => break,
                Err(e) if Instant::now() < give_up => {
                    tracing::warn!(service = name, error = %e, "restart failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e.context(format!("restarting {name}"))),
            }
        }
    }
}

/// Waits until every saga is terminal and no message is queued, held or in flight.
async fn wait_quiescent(stack: &EmbeddedStack, faulty: &Faulty, deadline: Instant) -> anyhow::Result<bool> {
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
