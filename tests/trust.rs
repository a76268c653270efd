//! Message trust over real RabbitMQ: whoever can write to the broker cannot move money
//! with a message the services did not send.
//!
//! - **Forged replies** published straight to the coordinator's reply queue — from the
//!   wrong participant, for an operation the saga never sent, for a send it never
//!   made, with headers beyond the limits; with signing on, unsigned or badly signed —
//!   change no saga (same state and version before and after) and land in the reply
//!   queue's dead-letter queue with their reason.
//! - **Poisoned commands** on a participant's command queue — a 300-byte header name,
//!   an over-long broker header name, a `reply_to` it does not answer to; with signing
//!   on, unsigned or badly signed — are dead-lettered with their reason, nothing is
//!   published where they asked, and the participant keeps serving.
//! - **Signed end to end**: with the key on both sides payments confirm and cancel, on
//!   RabbitMQ and on SQS (the moto emulator), whose brokers add headers of their own.
//!
//! Each test runs the embedded stack (SQLite files) over the broker with a queue
//! prefix of its own, and deletes its queues afterwards. Brokers follow the suite's
//! rule (`kessai_testkit`): reachable → run; unreachable → skip with a note, unless
//! `KESSAI_REQUIRE_SERVICES=1`, which makes it a failure.

mod common;

use futures::FutureExt;
use kessai_coordinator::{Coordinator, SagaState};
use kessai_harness::demo::check;
use kessai_harness::stack::{EmbeddedStack, StackConfig, service_queues};
use kessai_messages::payment::{BALANCE, BANK, CARD_ISSUER};
use kessai_messages::{BranchId, Command, Envelope, MessageKey, Operation, Outcome, SIGNATURE_HEADER, SagaId, signing};
use kessai_participants::Registry;
use kessai_testkit::{self as testing, BrokerLock};
use kessai_transport::{
    AmqpConfig, AmqpTransport, ConsumeOptions, DEAD_LETTER_REASON, DEAD_LETTER_SOURCE, OutgoingMessage, SqsConfig,
    SqsTransport, Topology, Transport, dead_letter_queue,
};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// A real broker with a queue prefix of the test's own (RabbitMQ: its lock held
/// shared).
struct Broker {
    transport: Arc<dyn Transport>,
    topology: Topology,
    _lock: Option<BrokerLock>,
}

/// RabbitMQ, or `None` (with a note) to skip.
async fn rabbit() -> Option<Broker> {
    let lock = tokio::task::spawn_blocking(testing::rabbitmq_available)
        .await
        .expect("broker lock")?;
    let transport = AmqpTransport::connect(AmqpConfig::new(testing::amqp_url()))
        .await
        .expect("connect to RabbitMQ");
    Some(Broker {
        transport: Arc::new(transport),
        topology: Topology::new(testing::unique_name("kessai-trust-")),
        _lock: Some(lock),
    })
}

/// The SQS emulator, or `None` (with a note) to skip.
async fn sqs() -> Option<Broker> {
    if !testing::require_sqs() {
        return None;
    }
    let config = SqsConfig {
        visibility_timeout: Duration::from_secs(10),
        ..common::sqs_config()
    };
    let transport = SqsTransport::connect(config).await.expect("SQS client");
    Some(Broker {
        transport: Arc::new(transport),
        topology: Topology::new(testing::unique_name("kessai-trust-")),
        _lock: None,
    })
}

fn key() -> MessageKey {
    MessageKey::new(*b"kessai trust test key, shared by all").expect("a key")
}

/// The embedded stack over `broker`, every service with `key`. Tries are resent only
/// after two minutes and their deadline is as far, so a saga left waiting on a stopped
/// participant stays exactly as it is while forged replies arrive.
async fn start_stack(broker: &Broker, dir: &std::path::Path, key: Option<MessageKey>) -> EmbeddedStack {
    let mut config = StackConfig::sqlite(dir).with_topology(&broker.topology);
    config.coordinator.policy.try_resend.initial_ms = 120_000;
    config.coordinator.policy.try_resend.max_ms = 120_000;
    config.coordinator.try_timeout = Duration::from_secs(120);
    config.coordinator.message_key = key.clone();
    config.participant.message_key = key;
    EmbeddedStack::start(config, broker.transport.clone())
        .await
        .expect("start the stack")
}

/// Runs `body`, then deletes `queues` (and their dead-letter queues) — also when
/// `body` panicked — then re-raises.
async fn with_queues_deleted(broker: &Broker, queues: Vec<String>, body: impl Future<Output = ()>) {
    let outcome = AssertUnwindSafe(body).catch_unwind().await;
    for q in &queues {
        if let Err(e) = broker.transport.delete(q).await {
            eprintln!("deleting {q}: {e}");
        }
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

fn stack_queues(topology: &Topology) -> Vec<String> {
    service_queues(topology, &Registry::reference())
}

/// Submits a payment and waits for it to end; returns its saga.
async fn pay(coordinator: &Coordinator, id: &str, fail: bool) -> (SagaId, Option<SagaState>) {
    let p = common::payment(testing::unique_name(id), 3, 4, 1_250, fail);
    let s = coordinator.submit_payment(&p, None).await.expect("submit");
    let state = coordinator
        .wait(s.saga_id, Duration::from_secs(60))
        .await
        .expect("wait");
    (s.saga_id, state)
}

/// Submits a payment while the bank is stopped and waits until the other two branches
/// are prepared: the saga then waits on the bank's try and nothing else changes it.
async fn pay_without_the_bank(coordinator: &Coordinator) -> SagaId {
    let p = common::payment(testing::unique_name("waiting-"), 5, 6, 990, false);
    let s = coordinator.submit_payment(&p, None).await.expect("submit");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let view = coordinator.saga(s.saga_id).await.expect("view").expect("the saga");
        let states: Vec<&str> = view.branches.iter().map(|b| b.state.as_str()).collect();
        if states == ["prepared", "prepared", "trying"] {
            assert_eq!(view.state, SagaState::Trying);
            return s.saga_id;
        }
        assert!(Instant::now() < deadline, "branches did not settle: {states:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// (state, version) of each saga.
async fn snapshot(coordinator: &Coordinator, sagas: &[SagaId]) -> Vec<(SagaState, i64)> {
    let mut out = Vec::new();
    for id in sagas {
        let view = coordinator.saga(*id).await.expect("view").expect("the saga");
        out.push((view.state, view.version));
    }
    out
}

/// A reply to `operation` send `attempt` of `branch` of `saga`, naming `participant`.
fn reply(saga: SagaId, branch: u32, operation: Operation, attempt: u32, participant: &str) -> Envelope {
    let command = Command {
        participant: participant.into(),
        reply_to: "unused".into(),
        payload: serde_json::json!({}),
    };
    Envelope::command(saga, BranchId(branch), operation, attempt, None, command).reply(participant, Outcome::Ok)
}

/// The balance participant's try for a fresh saga, answering to `reply_to`.
fn balance_try(reply_to: &str) -> Envelope {
    let p = common::payment("cmd", 7, 7, 100, false);
    let [(participant, wallet_hold), ..] = p.branches();
    let command = Command {
        participant: participant.into(),
        reply_to: reply_to.into(),
        payload: wallet_hold,
    };
    Envelope::command(SagaId::new(), BranchId(0), Operation::Try, 1, None, command)
}

fn message(envelope: &Envelope) -> OutgoingMessage {
    OutgoingMessage::new(envelope.encode())
}

fn signed_with(key: &MessageKey, envelope: &Envelope) -> OutgoingMessage {
    let mut m = message(envelope);
    m.headers
        .insert(SIGNATURE_HEADER.into(), signing::sign(key, &m.payload));
    m
}

/// Publishes each message on `queue`.
async fn publish_all(broker: &Broker, queue: &str, messages: &[&OutgoingMessage]) {
    for m in messages {
        broker
            .transport
            .publish(queue, (*m).clone())
            .await
            .expect("publish a forged message");
    }
}

/// Reads exactly `expected.len()` dead letters of `queue` and checks that each expected
/// payload is among them with a reason containing its fragment and `queue` as its
/// source; then that no other dead letter follows.
async fn expect_dead_letters(broker: &Broker, queue: &str, expected: &[(&OutgoingMessage, &str)]) {
    let dlq = dead_letter_queue(queue);
    let options = ConsumeOptions {
        prefetch: 16,
        poll_wait: Duration::from_millis(200),
    };
    let mut consumer = broker.transport.consume(&dlq, options).await.expect("consume the DLQ");
    let got = testing::receive_exactly(&mut consumer, expected.len(), Duration::from_secs(30), &dlq).await;
    let mut seen = Vec::new();
    for d in got {
        assert_eq!(
            d.headers.get(DEAD_LETTER_SOURCE).map(String::as_str),
            Some(queue),
            "{:?}",
            d.headers
        );
        let reason = d.headers.get(DEAD_LETTER_REASON).cloned().unwrap_or_default();
        seen.push((d.payload.clone(), reason));
        d.ack().await.expect("ack the dead letter");
    }
    for (m, fragment) in expected {
        assert!(
            seen.iter().any(|(p, r)| *p == m.payload && r.contains(fragment)),
            "no dead letter with reason containing {fragment:?} for {}; got {:#?}",
            String::from_utf8_lossy(&m.payload),
            seen.iter().map(|(_, r)| r).collect::<Vec<_>>()
        );
    }
    testing::expect_nothing(&mut consumer, Duration::from_secs(2)).await;
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

/// Restarts the bank and waits for `saga` to confirm; then checks every invariant
/// over `sagas`.
async fn finish_with_the_bank(stack: &mut EmbeddedStack, saga: SagaId, sagas: &[SagaId]) {
    stack.restart_participant(BANK).await.expect("restart the bank");
    let state = stack
        .coordinator()
        .wait(saga, Duration::from_secs(60))
        .await
        .expect("wait");
    assert_eq!(
        state,
        Some(SagaState::Confirmed),
        "the waiting saga, once the bank is back"
    );
    let report = check(stack, sagas, &[]).await.expect("check");
    assert!(report.ok(), "{report:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_replies_change_no_saga_and_are_dead_lettered() {
    let Some(rabbit) = rabbit().await else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let queues = stack_queues(&rabbit.topology);
    let body = async {
        let mut stack = start_stack(&rabbit, dir.path(), None).await;
        let c = stack.coordinator().clone();
        let (confirmed, state) = pay(&c, "confirmed-", false).await;
        assert_eq!(state, Some(SagaState::Confirmed));
        let (cancelled, state) = pay(&c, "cancelled-", true).await;
        assert_eq!(state, Some(SagaState::Cancelled));
        stack.kill_participant(BANK).await;
        let waiting = pay_without_the_bank(&c).await;
        let sagas = [confirmed, cancelled, waiting];
        let before = snapshot(&c, &sagas).await;

        // The first three, accepted, would have prepared the bank's branch and so
        // confirmed a payment the bank never saw; the others answer what was never sent.
        let wrong_participant = message(&reply(waiting, 2, Operation::Try, 1, BALANCE));
        let unsent_attempt = message(&reply(waiting, 2, Operation::Try, 7, BANK));
        let mut bad_headers = message(&reply(waiting, 2, Operation::Try, 1, BANK));
        bad_headers.headers.insert("n".repeat(200), "v".into());
        let confirm_while_trying = message(&reply(waiting, 0, Operation::Confirm, 1, BALANCE));
        let confirm_after_cancel = message(&reply(cancelled, 0, Operation::Confirm, 1, BALANCE));
        let cancel_after_confirm = message(&reply(confirmed, 1, Operation::Cancel, 1, CARD_ISSUER));
        let queue = rabbit.topology.reply_queue();
        publish_all(
            &rabbit,
            &queue,
            &[
                &wrong_participant,
                &unsent_attempt,
                &bad_headers,
                &confirm_while_trying,
                &confirm_after_cancel,
                &cancel_after_confirm,
            ],
        )
        .await;
        expect_dead_letters(
            &rabbit,
            &queue,
            &[
                (&wrong_participant, "reply from balance for a branch of bank"),
                (&unsent_attempt, "only 1 sends of it were made"),
                (&bad_headers, "headers: header name"),
                (&confirm_while_trying, "stale/forged: confirm reply"),
                (&confirm_after_cancel, "the saga never confirmed (it is cancelled)"),
                (&cancel_after_confirm, "the saga never cancelled (it is confirmed)"),
            ],
        )
        .await;
        assert_eq!(snapshot(&c, &sagas).await, before, "a forged reply changed a saga");

        finish_with_the_bank(&mut stack, waiting, &sagas).await;
        shutdown_cleanly(stack).await;
    };
    with_queues_deleted(&rabbit, queues, body).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poisoned_commands_are_dead_lettered_and_the_participant_keeps_serving() {
    let Some(rabbit) = rabbit().await else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let attacker = format!("{}-attacker-replies", rabbit.topology.prefix);
    let mut queues = stack_queues(&rabbit.topology);
    queues.push(attacker.clone());
    let body = async {
        let stack = start_stack(&rabbit, dir.path(), None).await;
        rabbit.transport.declare(&attacker).await.expect("declare");
        let replies = rabbit.topology.reply_queue();
        // AMQP caps a header name at 255 bytes, so the 300-byte name travels in the
        // envelope's own headers; the broker-level one is 200 bytes.
        let mut long_name = balance_try(&replies);
        long_name.headers.insert("h".repeat(300), "v".into());
        let long_name = message(&long_name);
        let mut long_broker_name = message(&balance_try(&replies));
        long_broker_name.headers.insert("b".repeat(200), "v".into());
        let foreign_reply_to = message(&balance_try(&attacker));
        let queue = rabbit.topology.command_queue(BALANCE);
        publish_all(&rabbit, &queue, &[&long_name, &long_broker_name, &foreign_reply_to]).await;
        expect_dead_letters(
            &rabbit,
            &queue,
            &[
                (&long_name, "is 300 bytes"),
                (&long_broker_name, "headers: header name"),
                (
                    &foreign_reply_to,
                    &format!("reply_to {attacker:?} is not a queue balance answers to"),
                ),
            ],
        )
        .await;
        assert_eq!(
            rabbit.transport.pending(&attacker).await.expect("pending"),
            Some(0),
            "the participant answered where a forged command asked"
        );

        // Still serving: a payment goes all the way, and the books agree.
        let (saga, state) = pay(stack.coordinator(), "after-poison-", false).await;
        assert_eq!(state, Some(SagaState::Confirmed));
        let report = check(&stack, &[saga], &[]).await.expect("check");
        assert!(report.ok(), "{report:#?}");
        shutdown_cleanly(stack).await;
    };
    with_queues_deleted(&rabbit, queues, body).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_shared_key_only_signed_messages_count() {
    let Some(rabbit) = rabbit().await else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let queues = stack_queues(&rabbit.topology);
    let body = async {
        let mut stack = start_stack(&rabbit, dir.path(), Some(key())).await;
        let c = stack.coordinator().clone();
        // Signed end to end: commands by the coordinator, replies by the participants.
        let (confirmed, state) = pay(&c, "signed-", false).await;
        assert_eq!(state, Some(SagaState::Confirmed));
        let (cancelled, state) = pay(&c, "signed-refused-", true).await;
        assert_eq!(state, Some(SagaState::Cancelled));

        // Replies: the bank's answer to the waiting saga's try — the right participant,
        // the right operation and send — but not signed with the key.
        stack.kill_participant(BANK).await;
        let waiting = pay_without_the_bank(&c).await;
        let sagas = [confirmed, cancelled, waiting];
        let before = snapshot(&c, &sagas).await;
        let forged = reply(waiting, 2, Operation::Try, 1, BANK);
        let unsigned = message(&forged);
        let other_key = MessageKey::new(*b"a key the services do not share").unwrap();
        let badly_signed = signed_with(&other_key, &forged);
        let mut garbled = signed_with(&key(), &forged);
        garbled.payload.push(b' ');
        let queue = rabbit.topology.reply_queue();
        publish_all(&rabbit, &queue, &[&unsigned, &badly_signed, &garbled]).await;
        expect_dead_letters(
            &rabbit,
            &queue,
            &[
                (&unsigned, "unsigned message"),
                (&badly_signed, "bad signature"),
                (&garbled, "bad signature"),
            ],
        )
        .await;
        assert_eq!(snapshot(&c, &sagas).await, before, "a forged reply changed a saga");

        // Commands: a valid try, unsigned or signed with another key.
        let command = balance_try(&rabbit.topology.reply_queue());
        let unsigned = message(&command);
        let badly_signed = signed_with(&other_key, &command);
        let queue = rabbit.topology.command_queue(BALANCE);
        publish_all(&rabbit, &queue, &[&unsigned, &badly_signed]).await;
        expect_dead_letters(
            &rabbit,
            &queue,
            &[(&unsigned, "unsigned message"), (&badly_signed, "bad signature")],
        )
        .await;

        finish_with_the_bank(&mut stack, waiting, &sagas).await;
        shutdown_cleanly(stack).await;
    };
    with_queues_deleted(&rabbit, queues, body).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_shared_key_payments_run_on_sqs() {
    let Some(sqs) = sqs().await else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let queues = stack_queues(&sqs.topology);
    let body = async {
        let stack = start_stack(&sqs, dir.path(), Some(key())).await;
        let c = stack.coordinator().clone();
        let (confirmed, state) = pay(&c, "signed-", false).await;
        assert_eq!(state, Some(SagaState::Confirmed));
        let (cancelled, state) = pay(&c, "signed-refused-", true).await;
        assert_eq!(state, Some(SagaState::Cancelled));
        let sagas = [confirmed, cancelled];
        let before = snapshot(&c, &sagas).await;
        let unsigned = message(&reply(cancelled, 2, Operation::Try, 1, BANK));
        let queue = sqs.topology.reply_queue();
        publish_all(&sqs, &queue, &[&unsigned]).await;
        expect_dead_letters(&sqs, &queue, &[(&unsigned, "unsigned message")]).await;
        assert_eq!(snapshot(&c, &sagas).await, before, "a forged reply changed a saga");
        let report = check(&stack, &sagas, &[]).await.expect("check");
        assert!(report.ok(), "{report:#?}");
        shutdown_cleanly(stack).await;
    };
    with_queues_deleted(&sqs, queues, body).await;
}
