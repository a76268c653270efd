//! kessai on real brokers, end to end.
//!
//! - **Poison input** on RabbitMQ and on SQS (the moto emulator): undecodable or
//!   invalid messages on a participant's command queue and on the coordinator's reply
//!   queue land in `<queue>-dlq` with a [`DEAD_LETTER_REASON`] naming the problem, and
//!   the consumer keeps serving (a valid command is answered, a payment completes).
//! - **Broker outage** (RabbitMQ + PostgreSQL): the embedded stack, each service on a
//!   fresh database of its own, under 16 concurrent clients; RabbitMQ is stopped
//!   (`rabbitmqctl stop_app`) for ~5 s with sagas in flight and started again. No
//!   service is restarted; every saga must end terminal and the invariants must hold.
//!
//! Services follow the suite's rule (`kessai_testkit`): reachable → run;
//! unreachable → skip with a note, unless `KESSAI_REQUIRE_SERVICES=1`, which makes it
//! a failure. RabbitMQ tests hold the broker lock shared; the outage test holds it
//! exclusively and starts the broker again from a drop guard, also when it fails.
//! Every test uses its own queue prefix (and databases) and removes them afterwards.

use futures::FutureExt;
use kessai_coordinator::machine::Backoff;
use kessai_coordinator::{Coordinator, CoordinatorConfig, Policy, SagaState, SystemClock};
use kessai_harness::demo::check;
use kessai_harness::invariants::Resubmission;
use kessai_harness::stack::{DatabaseUrls, EmbeddedStack, StackConfig, service_names, service_queues};
use kessai_messages::payment::{BALANCE, DEFAULT_SETTLEMENT_ACCOUNT};
use kessai_messages::{BranchId, Command, Currency, Envelope, Operation, Outcome, Payment, Reply, SagaId};
use kessai_migrations::Service;
use kessai_participants::ledger::{DEMO_ACCOUNTS, FROZEN_SETTLEMENT_ACCOUNT, demo_account_id, demo_card_id};
use kessai_participants::{BalanceParticipant, ParticipantRuntime, Registry, RuntimeConfig, database_name};
use kessai_testkit::{self as testing, BrokerLock, RabbitOutage, broker_lock, rabbitmqctl};
use kessai_transport::{
    AmqpConfig, AmqpTransport, ConsumeOptions, Consumer, DEAD_LETTER_REASON, DEAD_LETTER_SOURCE, Delivery,
    OutgoingMessage, SqsConfig, SqsTransport, Topology, Transport, dead_letter_queue,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::process::Command as Process;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

mod common;

// ---------------------------------------------------------------------------------
// Brokers
// ---------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Broker {
    Rabbit,
    Sqs,
}

/// A connected real transport, with the RabbitMQ broker lock held if it is RabbitMQ.
struct Real {
    broker: Broker,
    transport: Arc<dyn Transport>,
    /// Unique per test: every queue the test touches starts with it.
    topology: Topology,
    _lock: Option<BrokerLock>,
}

fn unique(prefix: &str) -> String {
    kessai_testkit::unique_name(prefix)
}

/// The broker, or `None` (with a note) to skip. Fails instead of skipping when
/// `KESSAI_REQUIRE_SERVICES=1`.
async fn connect(broker: Broker) -> Option<Real> {
    let topology = Topology::new(unique("kessai-it-"));
    match broker {
        Broker::Rabbit => {
            let url = testing::amqp_url();
            if !testing::require_service("RabbitMQ", &testing::host_port(&url, 5672)) {
                return None;
            }
            let lock = tokio::task::spawn_blocking(|| broker_lock("rabbit", false))
                .await
                .expect("broker lock");
            let transport = AmqpTransport::connect(amqp_config(&url))
                .await
                .expect("connect to RabbitMQ");
            Some(Real {
                broker,
                transport: Arc::new(transport),
                topology,
                _lock: Some(lock),
            })
        }
        Broker::Sqs => {
            let endpoint = testing::sqs_endpoint();
            if !testing::require_service("SQS emulator", &testing::host_port(&endpoint, 80)) {
                return None;
            }
            let config = SqsConfig {
                visibility_timeout: Duration::from_secs(10),
                ..common::sqs_config()
            };
            let transport = SqsTransport::connect(config).await.expect("SQS client");
            Some(Real {
                broker,
                transport: Arc::new(transport),
                topology,
                _lock: None,
            })
        }
    }
}

fn amqp_config(url: &str) -> AmqpConfig {
    AmqpConfig {
        connection_name: "kessai-broker-tests".into(),
        confirm_timeout: Duration::from_secs(5),
        reconnect_max_backoff: Duration::from_millis(500),
        ..AmqpConfig::new(url)
    }
}

/// Every queue of a stack under `topology`, with their dead-letter queues.
fn stack_queues(topology: &Topology) -> Vec<String> {
    service_queues(topology, &Registry::reference())
        .into_iter()
        .flat_map(|q| [dead_letter_queue(&q), q])
        .collect()
}

/// Best-effort removal of the test's queues.
async fn delete_queues(real: &Real, queues: &[String]) {
    match real.broker {
        Broker::Rabbit => {
            // kessai's transport has no queue deletion; `rabbitmqctl` does, for a local
            // broker (a remote `KESSAI_TEST_AMQP_URL` keeps its queues).
            let queues = queues.to_vec();
            let _ = tokio::task::spawn_blocking(move || {
                let children: Vec<_> = queues
                    .iter()
                    .filter_map(|q| {
                        Process::new("rabbitmqctl")
                            .args(["-q", "delete_queue", q])
                            .stdout(std::process::Stdio::null())
                            .stderr(std::process::Stdio::null())
                            .spawn()
                            .ok()
                    })
                    .collect();
                for mut c in children {
                    let _ = c.wait();
                }
            })
            .await;
        }
        Broker::Sqs => {
            let Ok(sqs) = SqsTransport::connect(common::sqs_config()).await else {
                return;
            };
            for q in queues {
                if let Ok(url) = sqs.queue_url(q).await {
                    let _ = sqs.client().delete_queue().queue_url(url).send().await;
                }
            }
        }
    }
}

/// Runs `body`, then `cleanup` — also when `body` panicked — then re-raises.
async fn with_cleanup<B, C>(body: B, cleanup: C)
where
    B: Future<Output = ()>,
    C: Future<Output = ()>,
{
    let outcome = AssertUnwindSafe(body).catch_unwind().await;
    cleanup.await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

// ---------------------------------------------------------------------------------
// Messages and helpers
// ---------------------------------------------------------------------------------

fn eur() -> Currency {
    Currency::new("EUR").expect("EUR")
}

/// A payment on the demo data set; `fail` routes it to the bank's frozen settlement
/// account, a business rejection at the bank's try.
fn payment(id: String, rng: &mut SmallRng, fail: bool) -> Payment {
    Payment {
        payment_id: id,
        account_id: demo_account_id(rng.random_range(1..=DEMO_ACCOUNTS)),
        card_id: demo_card_id(rng.random_range(1..=DEMO_ACCOUNTS)),
        amount: rng.random_range(100..=50_000),
        currency: eur(),
        settlement_account: if fail {
            FROZEN_SETTLEMENT_ACCOUNT
        } else {
            DEFAULT_SETTLEMENT_ACCOUNT
        }
        .to_owned(),
    }
}

fn balance_command(saga: SagaId, operation: Operation, reply_to: &str, payload: serde_json::Value) -> Envelope {
    Envelope::command(
        saga,
        BranchId(0),
        operation,
        1,
        None,
        Command {
            participant: BALANCE.into(),
            reply_to: reply_to.into(),
            payload,
        },
    )
}

fn consume_options() -> ConsumeOptions {
    ConsumeOptions {
        prefetch: 16,
        poll_wait: Duration::from_millis(500),
    }
}

/// Collects `n` deliveries from `queue` within `within` (fewer if they do not come).
async fn receive(transport: &Arc<dyn Transport>, queue: &str, n: usize, within: Duration) -> Vec<Delivery> {
    let mut consumer: Box<dyn Consumer> = transport.consume(queue, consume_options()).await.expect("consume");
    testing::receive(&mut consumer, n, within).await
}

/// Reads `expected.len()` messages from `<queue>-dlq`, acks them, and checks each
/// expected reason fragment names one of them, with its payload and source queue.
async fn expect_dead_letters(transport: &Arc<dyn Transport>, queue: &str, expected: &[(&[u8], &str)]) {
    let dlq = dead_letter_queue(queue);
    let got = receive(transport, &dlq, expected.len(), Duration::from_secs(30)).await;
    let mut seen: Vec<(Vec<u8>, String)> = Vec::new();
    for d in got {
        let reason = d.headers.get(DEAD_LETTER_REASON).cloned().unwrap_or_default();
        assert_eq!(
            d.headers.get(DEAD_LETTER_SOURCE).map(String::as_str),
            Some(queue),
            "dead letter from {queue} names its source; headers {:?}",
            d.headers
        );
        seen.push((d.payload.clone(), reason));
        d.ack().await.expect("ack the dead letter");
    }
    for (payload, fragment) in expected {
        assert!(
            seen.iter().any(|(p, r)| p == payload && r.contains(fragment)),
            "no dead letter on {dlq} with reason containing {fragment:?} for payload {:?}; got {:?}",
            String::from_utf8_lossy(payload),
            seen.iter()
                .map(|(p, r)| (String::from_utf8_lossy(p).into_owned(), r.clone()))
                .collect::<Vec<_>>()
        );
    }
    assert_eq!(seen.len(), expected.len(), "dead letters on {dlq}: {seen:?}");
}

/// An embedded stack on SQLite in `dir`, over `real`'s transport and queue prefix.
fn sqlite_stack_config(dir: &std::path::Path, topology: &Topology) -> StackConfig {
    StackConfig::sqlite(dir).with_topology(topology)
}

/// Graceful stop, bounded: every task must end, and end well.
async fn shutdown_cleanly(stack: EmbeddedStack) {
    let ended = tokio::time::timeout(Duration::from_secs(60), stack.shutdown())
        .await
        .expect("the stack did not shut down within 60 s");
    for (task, ended) in ended {
        assert!(ended.is_ok(), "task {task} ended with {ended:?}");
    }
}

// ---------------------------------------------------------------------------------
// Poison input
// ---------------------------------------------------------------------------------

/// Undecodable bytes, a command for another participant and a bad payload on the
/// balance participant's command queue are dead-lettered with their reasons; a valid
/// try sent afterwards is answered.
async fn participant_dead_letters_poison_and_keeps_serving(broker: Broker) {
    let Some(real) = connect(broker).await else {
        return;
    };
    let queue = real.topology.command_queue(BALANCE);
    let reply_queue = real.topology.reply_queue();
    let queues = stack_queues(&real.topology);
    let dir = tempfile::tempdir().expect("temp dir");
    let body = async {
        let url = kessai_migrations::sqlite_url(&dir.path().join("balance.db"));
        let db = kessai_migrations::open(&url, Service::Balance, 1)
            .await
            .expect("open and migrate");
        BalanceParticipant::seed_demo(&db).await.expect("seed");
        let config = RuntimeConfig {
            topology: real.topology.clone(),
            ..RuntimeConfig::default()
        };
        // Declared here too, so the test can publish before the runtime is up.
        real.transport.declare(&queue).await.expect("declare the command queue");
        real.transport
            .declare(&reply_queue)
            .await
            .expect("declare the reply queue");
        let cancel = CancellationToken::new();
        let runtime = tokio::spawn(
            ParticipantRuntime::with_config(BalanceParticipant, db.clone(), real.transport.clone(), config)
                .run(cancel.clone()),
        );

        let garbage: &[u8] = b"\xff\xfe this is not an envelope";
        let foreign = Envelope::command(
            SagaId::new(),
            BranchId(0),
            Operation::Try,
            1,
            None,
            Command {
                participant: "wallet-service".into(),
                reply_to: reply_queue.clone(),
                payload: serde_json::json!({"account_id": "acct-1", "amount": 5, "currency": "EUR"}),
            },
        )
        .encode();
        let bad_payload = balance_command(
            SagaId::new(),
            Operation::Try,
            &reply_queue,
            serde_json::json!({"account_id": "acct-1", "amount": "five euros"}),
        )
        .encode();
        for poison in [garbage, &foreign, &bad_payload] {
            real.transport
                .publish(&queue, OutgoingMessage::new(poison.to_vec()))
                .await
                .expect("publish poison");
        }
        expect_dead_letters(
            &real.transport,
            &queue,
            &[
                (garbage, "undecodable"),
                (&foreign, "wallet-service"),
                (&bad_payload, "bad balance payload"),
            ],
        )
        .await;

        // The consumer is still serving: a valid try is answered.
        let saga = SagaId::new();
        let p = payment("poison-check".into(), &mut SmallRng::seed_from_u64(1), false);
        let [(participant, wallet_hold), ..] = p.branches();
        assert_eq!(participant, BALANCE);
        let try_ = balance_command(saga, Operation::Try, &reply_queue, wallet_hold);
        real.transport
            .publish(&queue, OutgoingMessage::new(try_.encode()))
            .await
            .expect("publish a valid try");
        let replies = receive(&real.transport, &reply_queue, 1, Duration::from_secs(30)).await;
        assert_eq!(replies.len(), 1, "the valid try was not answered");
        let reply = Envelope::decode(&replies[0].payload).expect("a reply envelope");
        assert_eq!(reply.saga_id, saga);
        assert_eq!(reply.operation, Operation::Try);
        let Some(Reply { outcome, .. }) = reply.as_reply() else {
            panic!("not a reply: {reply:?}");
        };
        assert_eq!(*outcome, Outcome::Ok);
        for d in replies {
            d.ack().await.expect("ack the reply");
        }
        // Nothing is left behind on the command queue: the poison is not redelivered.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let pending = real.transport.pending(&queue).await.expect("pending");
            if pending.is_none_or(|n| n == 0) {
                break;
            }
            assert!(Instant::now() < deadline, "{pending:?} messages stay on {queue}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        cancel.cancel();
        runtime.await.expect("runtime task").expect("the runtime ends cleanly");
        let _ = db.close().await;
    };
    with_cleanup(body, delete_queues(&real, &queues)).await;
}

/// Undecodable bytes, a command and a reply for an unknown saga on the coordinator's
/// reply queue are dead-lettered with their reasons; payments still complete.
async fn coordinator_dead_letters_poison_and_keeps_serving(broker: Broker) {
    let Some(real) = connect(broker).await else {
        return;
    };
    let reply_queue = real.topology.reply_queue();
    let queues = stack_queues(&real.topology);
    let dir = tempfile::tempdir().expect("temp dir");
    let body = async {
        let config = sqlite_stack_config(dir.path(), &real.topology);
        let stack = EmbeddedStack::start(config, real.transport.clone())
            .await
            .expect("start the stack");

        let garbage: &[u8] = b"{\"v\": 1, \"this is\": \"not an envelope\"";
        let command = balance_command(SagaId::new(), Operation::Try, &reply_queue, serde_json::json!({})).encode();
        let stray = balance_command(SagaId::new(), Operation::Confirm, &reply_queue, serde_json::json!({}));
        let stray = stray.reply(BALANCE, Outcome::Ok).encode();
        for poison in [garbage, &command, &stray] {
            real.transport
                .publish(&reply_queue, OutgoingMessage::new(poison.to_vec()))
                .await
                .expect("publish poison");
        }
        expect_dead_letters(
            &real.transport,
            &reply_queue,
            &[
                (garbage, "JSON"),
                (&command, "command on the reply queue"),
                (&stray, "unknown saga"),
            ],
        )
        .await;

        // Still serving: a payment goes all the way, and the books agree.
        let p = payment(unique("after-poison-"), &mut SmallRng::seed_from_u64(2), false);
        let submitted = stack.coordinator().submit_payment(&p, None).await.expect("submit");
        let state = stack
            .coordinator()
            .wait(submitted.saga_id, Duration::from_secs(60))
            .await
            .expect("wait");
        assert_eq!(state, Some(SagaState::Confirmed));
        let report = check(&stack, &[submitted.saga_id], &[]).await.expect("check");
        assert!(report.ok(), "{report:#?}");
        shutdown_cleanly(stack).await;
    };
    with_cleanup(body, delete_queues(&real, &queues)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participant_dead_letters_poison_and_keeps_serving_on_rabbitmq() {
    participant_dead_letters_poison_and_keeps_serving(Broker::Rabbit).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participant_dead_letters_poison_and_keeps_serving_on_sqs() {
    participant_dead_letters_poison_and_keeps_serving(Broker::Sqs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_dead_letters_poison_and_keeps_serving_on_rabbitmq() {
    coordinator_dead_letters_poison_and_keeps_serving(Broker::Rabbit).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_dead_letters_poison_and_keeps_serving_on_sqs() {
    coordinator_dead_letters_poison_and_keeps_serving(Broker::Sqs).await;
}

// ---------------------------------------------------------------------------------
// Broker outage
// ---------------------------------------------------------------------------------

const CLIENTS: usize = 16;
const BEFORE_OUTAGE: Duration = Duration::from_secs(4);
const OUTAGE: Duration = Duration::from_secs(5);
const AFTER_OUTAGE: Duration = Duration::from_secs(4);
/// Bound on "every saga terminal" once the broker is back (docs/GUARANTEES.md#liveness).
const LIVENESS_BOUND: Duration = Duration::from_secs(120);

/// What the clients saw.
#[derive(Default)]
struct ClientLog {
    /// (payment, saga) of every acknowledged submission, in order.
    acknowledged: Vec<(Payment, SagaId)>,
    /// Submissions that returned an error (never acknowledged).
    failed: Vec<String>,
}

/// Submits back-to-back until `stop`: each payment is waited on for at most 2 s, so
/// sagas keep piling up while the broker is away.
async fn client(
    coordinator: Coordinator,
    run: String,
    next: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<ClientLog>>,
) {
    while !stop.load(Ordering::SeqCst) {
        let i = next.fetch_add(1, Ordering::SeqCst);
        let mut rng = SmallRng::seed_from_u64(i);
        let fail = rng.random_bool(0.1);
        let p = payment(format!("outage-{run}-{i}"), &mut rng, fail);
        match coordinator.submit_payment(&p, None).await {
            Ok(s) => {
                log.lock().unwrap().acknowledged.push((p, s.saga_id));
                let _ = coordinator.wait(s.saga_id, Duration::from_secs(2)).await;
            }
            Err(e) => {
                log.lock().unwrap().failed.push(e.to_string());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn unfinished(coordinator: &Coordinator) -> u64 {
    let (by_state, _) = kessai_coordinator::store::counts(coordinator.db())
        .await
        .expect("saga counts");
    [SagaState::Trying, SagaState::Confirming, SagaState::Cancelling]
        .iter()
        .map(|s| by_state.get(s).copied().unwrap_or(0))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_in_flight_survive_a_rabbitmq_outage_over_postgres() {
    // `RUST_LOG=warn cargo test --test brokers -- --nocapture` shows the services' logs.
    if std::env::var_os("RUST_LOG").is_some() {
        kessai_service::telemetry::init_logging();
    }
    let url = testing::amqp_url();
    if !testing::require_service("RabbitMQ", &testing::host_port(&url, 5672)) {
        return;
    }
    let server = testing::postgres_url();
    if !testing::require_service("PostgreSQL", &testing::host_port(&server, 5432)) {
        return;
    }
    if let Err(e) = rabbitmqctl(&["status"]) {
        assert!(!testing::services_required(), "rabbitmqctl is required: {e}");
        eprintln!("skipping: cannot drive the broker: {e}");
        return;
    }
    let lock = tokio::task::spawn_blocking(|| broker_lock("rabbit", true))
        .await
        .expect("broker lock");
    let transport = AmqpTransport::connect(amqp_config(&url))
        .await
        .expect("connect to RabbitMQ");
    let real = Real {
        broker: Broker::Rabbit,
        transport: Arc::new(transport),
        topology: Topology::new(unique("kessai-it-")),
        _lock: Some(lock),
    };
    let db_prefix = unique("kessai_it_");
    let database = |service: &str| database_name(&db_prefix, service);
    let services = service_names(&Registry::reference());
    for s in &services {
        kessai_migrations::ensure_postgres_database(&server, &database(s))
            .await
            .expect("create a database");
    }
    let queues = stack_queues(&real.topology);
    let cleanup = async {
        for s in &services {
            if let Err(e) = kessai_migrations::drop_postgres_database(&server, &database(s)).await {
                eprintln!("dropping {}: {e}", database(s));
            }
        }
        delete_queues(&real, &queues).await;
    };
    with_cleanup(outage_run(&real, &server, &database), cleanup).await;
}

async fn outage_run(real: &Real, server: &str, database: &dyn Fn(&str) -> String) {
    let db_url = |service: &str| kessai_migrations::postgres_database_url(server, &database(service));
    let config = StackConfig {
        registry: Registry::reference(),
        urls: DatabaseUrls::each(&Registry::reference(), db_url),
        coordinator: CoordinatorConfig {
            topology: real.topology.clone(),
            // Shorter resends than production, so recovery after the outage is quick.
            policy: Policy {
                try_resend: Backoff {
                    initial_ms: 500,
                    max_ms: 2_000,
                },
                finish_resend: Backoff {
                    initial_ms: 200,
                    max_ms: 2_000,
                },
                ..Policy::default()
            },
            reply_workers: 2,
            ..CoordinatorConfig::default()
        },
        participant: RuntimeConfig {
            topology: real.topology.clone(),
            workers: 2,
            max_error_backoff: Duration::from_secs(1),
            ..RuntimeConfig::default()
        },
        clock: Arc::new(SystemClock),
        max_connections: 8,
        statements: None,
    };
    let started = Instant::now();
    let stack = EmbeddedStack::start(config, real.transport.clone())
        .await
        .expect("start the stack");
    eprintln!("stack up on PostgreSQL + RabbitMQ in {:.1?}", started.elapsed());

    let run = unique("");
    let next = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(ClientLog::default()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            tokio::spawn(client(
                stack.coordinator().clone(),
                run.clone(),
                next.clone(),
                stop.clone(),
                log.clone(),
            ))
        })
        .collect();

    tokio::time::sleep(BEFORE_OUTAGE).await;
    let outage = tokio::task::spawn_blocking(RabbitOutage::begin)
        .await
        .expect("rabbitmqctl task")
        .expect("stop the broker");
    let stopped_at = Instant::now();
    let in_flight_at_stop = unfinished(stack.coordinator()).await;
    let acknowledged_at_stop = log.lock().unwrap().acknowledged.len();
    eprintln!("broker stopped: {acknowledged_at_stop} submissions acknowledged, {in_flight_at_stop} sagas in flight");
    tokio::time::sleep(OUTAGE).await;
    let during_outage = log.lock().unwrap().acknowledged.len() - acknowledged_at_stop;
    tokio::task::spawn_blocking(move || outage.end())
        .await
        .expect("rabbitmqctl task");
    let restarted_at = Instant::now();
    eprintln!(
        "broker started again after {:.1?}; {during_outage} submissions acknowledged while it was down",
        stopped_at.elapsed()
    );
    let acknowledged_at_restart = log.lock().unwrap().acknowledged.len();

    tokio::time::sleep(AFTER_OUTAGE).await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.expect("client task");
    }
    let (acknowledged, failed) = {
        let log = log.lock().unwrap();
        (log.acknowledged.clone(), log.failed.clone())
    };

    // Liveness: every saga terminal, no service restarted.
    let deadline = restarted_at + LIVENESS_BOUND;
    loop {
        let left = unfinished(stack.coordinator()).await;
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} sagas still unfinished {LIVENESS_BOUND:?} after the broker came back"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let quiescence = restarted_at.elapsed();
    wait_quiet(&stack).await;

    // No lost submission, and resubmitting creates nothing new.
    let mut resubmissions = Vec::new();
    for (p, first) in acknowledged.iter().step_by((acknowledged.len() / 10).max(1)) {
        let again = stack.coordinator().submit_payment(p, None).await.expect("resubmit");
        resubmissions.push(Resubmission {
            first: *first,
            again: again.saga_id,
            created: again.created,
        });
    }
    let ids: Vec<SagaId> = acknowledged.iter().map(|(_, id)| *id).collect();
    let report = check(&stack, &ids, &resubmissions).await.expect("check the invariants");
    let (by_state, stuck) = kessai_coordinator::store::counts(stack.coordinator().db())
        .await
        .expect("saga counts");
    let count = |s: SagaState| by_state.get(&s).copied().unwrap_or(0);

    // Sagas submitted after the restart went through the healed broker.
    let mut confirmed_after_restart = 0;
    for (_, id) in &acknowledged[acknowledged_at_restart..] {
        let view = stack
            .coordinator()
            .saga(*id)
            .await
            .expect("saga view")
            .expect("saga exists");
        if view.state == SagaState::Confirmed {
            confirmed_after_restart += 1;
        }
    }

    eprintln!(
        "outage run: {} acknowledged ({} during the outage), {} failed submissions{}; \
         confirmed {}, cancelled {}, stuck {}; {} sagas in flight at the stop; \
         all terminal {:.1?} after the restart; {} confirmed after the restart",
        acknowledged.len(),
        during_outage,
        failed.len(),
        failed.first().map(|e| format!(" (first: {e})")).unwrap_or_default(),
        count(SagaState::Confirmed),
        count(SagaState::Cancelled),
        stuck,
        in_flight_at_stop,
        quiescence,
        confirmed_after_restart,
    );
    for c in &report.checks {
        eprintln!("  [{}] {:<24} {}", if c.ok { "pass" } else { "FAIL" }, c.name, c.detail);
    }
    assert!(report.ok(), "invariants violated after the outage: {report:#?}");
    assert!(in_flight_at_stop > 0, "no saga was in flight when the broker stopped");
    assert!(
        confirmed_after_restart > 0,
        "no saga submitted after the restart was confirmed"
    );
    shutdown_cleanly(stack).await;
}

/// Waits (bounded) until no command or reply is queued or in hand and the outbox is
/// empty, so late duplicates are consumed before the books are read.
async fn wait_quiet(stack: &EmbeddedStack) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let outbox = kessai_coordinator::store::outbox_len(stack.coordinator().db())
            .await
            .unwrap_or(1);
        if outbox == 0 && stack.queued_messages().await == Some(0) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let topology = &stack.config().coordinator.topology;
    let queues = service_queues(topology, &stack.config().registry);
    let mut left = Vec::new();
    for q in queues {
        left.push(format!("{q}: {:?}", stack.transport().pending(&q).await));
    }
    let outbox = kessai_coordinator::store::outbox_len(stack.coordinator().db()).await;
    eprintln!(
        "not quiet after 30 s (outbox {outbox:?}; {}); checking anyway",
        left.join(", ")
    );
}
