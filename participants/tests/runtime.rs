//! The runtime over the in-process transport and a real SQLite file: replies, poison
//! messages, redeliveries, retries and shutdown.

mod common;

use common::{
    REPLY_QUEUE, assert_tries_took_effect_once, balance_cmd, balance_queue, balance_then, command, seed_wallets,
    send_all, spawn_db, wallet_hold,
};
use futures::FutureExt;
use kessai_messages::payment::BALANCE;
use kessai_messages::{Envelope, Operation, Outcome, SagaId};
use kessai_migrations::Service;
use kessai_participants::{
    BalanceParticipant, BusinessError, Participant, ParticipantRuntime, RuntimeConfig, handle_command,
};
use kessai_transport::{
    ConsumeOptions, DEAD_LETTER_REASON, Delivery, MemoryTransport, OutgoingMessage, Transport, dead_letter_queue,
};
use sea_orm::{DatabaseConnection, TransactionTrait};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const OPENING: i64 = 1_000_000;

struct Harness {
    _dir: tempfile::TempDir,
    db: DatabaseConnection,
    transport: MemoryTransport,
    queue: String,
}

impl Harness {
    async fn new() -> Self {
        let (dir, db) = spawn_db(Service::Balance).await;
        seed_wallets(&db, 3, OPENING).await;
        let (transport, queue) = balance_queue().await;
        transport.declare(REPLY_QUEUE).await.unwrap();
        Self {
            _dir: dir,
            db,
            transport,
            queue,
        }
    }

    fn config() -> RuntimeConfig {
        RuntimeConfig {
            poll_wait: Duration::from_millis(50),
            retry_delay: Duration::from_millis(20),
            error_backoff: Duration::from_millis(10),
            // The commands these tests send answer to the test's own reply queue.
            extra_reply_queues: vec![REPLY_QUEUE.into()],
            ..RuntimeConfig::default()
        }
    }

    fn runtime_of<P: Participant>(&self, participant: P, config: RuntimeConfig) -> ParticipantRuntime<P> {
        ParticipantRuntime::with_config(participant, self.db.clone(), Arc::new(self.transport.clone()), config)
    }

    fn start<P: Participant>(
        &self,
        participant: P,
        config: RuntimeConfig,
    ) -> (CancellationToken, JoinHandle<Result<(), kessai_participants::Error>>) {
        let cancel = CancellationToken::new();
        let runtime = self.runtime_of(participant, config);
        let handle = tokio::spawn(runtime.run(cancel.clone()));
        (cancel, handle)
    }

    async fn send_bytes(&self, bytes: Vec<u8>) {
        self.transport
            .publish(&self.queue, OutgoingMessage::new(bytes))
            .await
            .unwrap();
    }

    async fn send(&self, envelope: &Envelope) {
        send_all(&self.transport, &self.queue, std::slice::from_ref(envelope)).await;
    }

    /// Waits for `n` deliveries on `queue`, acks them and returns them.
    async fn take(&self, queue: &str, n: usize) -> Vec<Delivery> {
        let mut consumer = self
            .transport
            .consume(
                queue,
                ConsumeOptions {
                    prefetch: 1024,
                    poll_wait: Duration::from_millis(50),
                },
            )
            .await
            .unwrap();
        kessai_testkit::receive_exactly(&mut consumer, n, Duration::from_secs(20), queue).await
    }

    /// Waits for `n` replies and decodes them.
    async fn replies(&self, n: usize) -> Vec<Envelope> {
        let mut out = Vec::new();
        for d in self.take(REPLY_QUEUE, n).await {
            out.push(Envelope::decode(&d.payload).expect("a reply decodes"));
            d.ack().await.unwrap();
        }
        out
    }

    async fn wallet(&self, account: &str) -> (i64, i64) {
        common::wallet(&self.db, account).await
    }
}

fn try_cmd(saga: SagaId, account: &str, amount: i64, attempt: u32) -> Envelope {
    let mut e = balance_cmd(saga, account, Operation::Try, amount);
    e.attempt = attempt;
    e.headers.insert(
        "traceparent".into(),
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
    );
    e
}

fn outcome(reply: &Envelope) -> &Outcome {
    &reply.as_reply().expect("a reply body").outcome
}

#[tokio::test]
async fn commands_in_replies_out() {
    let h = Harness::new().await;
    let (cancel, handle) = h.start(BalanceParticipant, Harness::config());

    let ok = SagaId::new();
    let short = SagaId::new();
    h.send(&try_cmd(ok, "acct-1", 100, 1)).await;
    h.send(&try_cmd(short, "acct-2", OPENING + 1, 3)).await;

    let replies = h.replies(2).await;
    let ok_reply = replies.iter().find(|r| r.saga_id == ok).unwrap();
    assert_eq!(outcome(ok_reply), &Outcome::Ok);
    assert_eq!(ok_reply.attempt, 1);
    assert_eq!(ok_reply.operation, Operation::Try);
    assert_eq!(ok_reply.as_reply().unwrap().participant, BALANCE);
    assert!(ok_reply.headers.contains_key("traceparent"));
    let short_reply = replies.iter().find(|r| r.saga_id == short).unwrap();
    assert_eq!(outcome(short_reply), &Outcome::rejected("insufficient funds"));
    assert_eq!(short_reply.attempt, 3);

    h.send(&balance_cmd(ok, "acct-1", Operation::Confirm, 100)).await;
    let confirm = h.replies(1).await;
    assert_eq!(confirm[0].operation, Operation::Confirm);
    assert_eq!(outcome(&confirm[0]), &Outcome::Ok);

    cancel.cancel();
    handle.await.unwrap().unwrap();
    assert_eq!(h.wallet("acct-1").await, (OPENING - 100, 0));
    assert_eq!(h.wallet("acct-2").await, (OPENING, 0));
    assert_eq!(h.transport.ready_len(&h.queue), 0);
    assert_eq!(h.transport.unsettled_len(&h.queue), 0);
}

#[tokio::test]
async fn poison_is_dead_lettered_and_service_continues() {
    let h = Harness::new().await;
    let (cancel, handle) = h.start(BalanceParticipant, Harness::config());

    let saga = SagaId::new();
    h.send_bytes(b"{not json".to_vec()).await;
    let mut future_version = serde_json::to_value(try_cmd(saga, "acct-1", 1, 1)).unwrap();
    future_version["v"] = json!(99);
    h.send_bytes(serde_json::to_vec(&future_version).unwrap()).await;
    let lots = json!({"account_id": "acct-1", "amount": "lots", "currency": "EUR"});
    h.send(&command(BALANCE, saga, 0, Operation::Try, 1, lots)).await;
    h.send(&command(
        "bank",
        saga,
        0,
        Operation::Try,
        1,
        wallet_hold("acct-1", 1, "EUR"),
    ))
    .await;
    h.send(&try_cmd(saga, "acct-1", 1, 1).reply(BALANCE, Outcome::Ok)).await;
    // A valid command after all that is still served.
    let good = SagaId::new();
    h.send(&try_cmd(good, "acct-3", 250, 1)).await;

    let replies = h.replies(1).await;
    assert_eq!(replies[0].saga_id, good);
    assert_eq!(outcome(&replies[0]), &Outcome::Ok);

    let dead = h.take(&dead_letter_queue(&h.queue), 5).await;
    let reasons: Vec<String> = dead
        .iter()
        .map(|d| d.headers.get(DEAD_LETTER_REASON).cloned().expect("a reason header"))
        .collect();
    assert_eq!(dead[0].payload, b"{not json");
    assert!(
        reasons[0].starts_with("undecodable envelope: not a JSON object"),
        "{reasons:?}"
    );
    assert!(reasons[1].contains("unsupported schema version 99"), "{reasons:?}");
    assert!(reasons[2].contains("bad balance payload"), "{reasons:?}");
    assert!(
        reasons[3].contains("command is for participant \"bank\""),
        "{reasons:?}"
    );
    assert!(reasons[4].contains("a reply arrived"), "{reasons:?}");

    cancel.cancel();
    handle.await.unwrap().unwrap();
    assert_eq!(h.wallet("acct-1").await, (OPENING, 0));
    assert_eq!(h.wallet("acct-3").await, (OPENING - 250, 250));
    // Nothing of the poison was recorded.
    assert!(
        kessai_participants::barrier_records(&h.db, saga)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn duplicates_get_the_same_reply_and_one_effect() {
    let h = Harness::new().await;
    let saga = SagaId::new();
    let envelope = try_cmd(saga, "acct-1", 400, 1);

    // Crash after commit, before the reply and the ack: the command is applied through
    // the barrier, the delivery is dropped unsettled and so comes back redelivered.
    {
        let mut consumer = h.transport.consume(&h.queue, ConsumeOptions::default()).await.unwrap();
        h.send(&envelope).await;
        let delivery = consumer.next_batch(1).await.unwrap().pop().unwrap();
        let txn = h.db.begin().await.unwrap();
        let applied = handle_command(&BalanceParticipant, &txn, &Envelope::decode(&delivery.payload).unwrap())
            .await
            .unwrap();
        assert_eq!(applied, Outcome::Ok);
        txn.commit().await.unwrap();
        drop(delivery);
    }
    // The coordinator resent it too (attempt 2), and the broker duplicated that.
    let mut resent = envelope.clone();
    resent.attempt = 2;
    h.send(&resent).await;
    h.send(&resent).await;

    let (cancel, handle) = h.start(BalanceParticipant, Harness::config());
    let replies = h.replies(3).await;
    assert!(replies.iter().all(|r| r.saga_id == saga && outcome(r) == &Outcome::Ok));
    let mut attempts: Vec<u32> = replies.iter().map(|r| r.attempt).collect();
    attempts.sort();
    assert_eq!(attempts, [1, 2, 2]);
    cancel.cancel();
    handle.await.unwrap().unwrap();

    assert_eq!(h.wallet("acct-1").await, (OPENING - 400, 400));
    let audit = BalanceParticipant::audit(&h.db).await.unwrap();
    assert_eq!(audit.barrier_records, 1);
    assert_eq!(audit.effects.len(), 1);
}

#[tokio::test]
async fn process_batch_by_hand_reports_settlement() {
    let h = Harness::new().await;
    let runtime = h.runtime_of(BalanceParticipant, Harness::config());
    let sagas: Vec<SagaId> = (0..10).map(|_| SagaId::new()).collect();
    for s in &sagas {
        h.send(&try_cmd(*s, "acct-2", 10, 1)).await;
    }
    h.send_bytes(b"garbage".to_vec()).await;
    let mut consumer = h
        .transport
        .consume(runtime.queue(), runtime.consume_options())
        .await
        .unwrap();
    let batch = consumer.next_batch(100).await.unwrap();
    assert_eq!(batch.len(), 11);
    let report = runtime.process_batch(batch).await.unwrap();
    assert_eq!((report.replied, report.dead_lettered, report.requeued), (10, 1, 0));
    assert_eq!(h.transport.ready_len(REPLY_QUEUE), 10);
    assert_eq!(h.transport.unsettled_len(runtime.queue()), 0);
    assert_eq!(h.wallet("acct-2").await, (OPENING - 100, 100));
}

/// Refuses retryably the first `failures` times, then behaves like `balance`.
fn flaky(failures: usize) -> impl Participant {
    let failures = AtomicUsize::new(failures);
    balance_then(Operation::Try, move |tried| {
        let fail = tried.is_ok()
            && failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
        async move {
            tried?;
            if fail {
                return Err(BusinessError::retryable("fraud check unavailable"));
            }
            Ok(())
        }
        .boxed()
    })
}

#[tokio::test]
async fn retryable_failures_are_requeued_until_they_succeed() {
    let h = Harness::new().await;
    let (cancel, handle) = h.start(flaky(3), Harness::config());
    let saga = SagaId::new();
    let other = SagaId::new();
    h.send(&try_cmd(saga, "acct-1", 70, 1)).await;
    h.send(&try_cmd(other, "acct-2", 30, 1)).await;
    let replies = h.replies(2).await;
    assert!(replies.iter().all(|r| outcome(r) == &Outcome::Ok), "{replies:?}");
    cancel.cancel();
    handle.await.unwrap().unwrap();
    // Each frozen exactly once despite the failed attempts.
    assert_eq!(h.wallet("acct-1").await, (OPENING - 70, 70));
    assert_eq!(h.wallet("acct-2").await, (OPENING - 30, 30));
    assert_eq!(h.transport.ready_len(&h.queue), 0);
}

#[tokio::test]
async fn several_workers_share_one_sqlite_connection() {
    let h = Harness::new().await;
    let config = RuntimeConfig {
        workers: 3,
        batch_size: 16,
        ..Harness::config()
    };
    let (cancel, handle) = h.start(BalanceParticipant, config);
    let sagas: Vec<SagaId> = (0..300).map(|_| SagaId::new()).collect();
    for (i, s) in sagas.iter().enumerate() {
        h.send(&try_cmd(*s, &format!("acct-{}", i % 3 + 1), 1, 1)).await;
    }
    // And a third of them again, as a redelivering broker would.
    for (i, s) in sagas.iter().enumerate().take(100) {
        h.send(&try_cmd(*s, &format!("acct-{}", i % 3 + 1), 1, 1)).await;
    }
    let replies = h.replies(400).await;
    assert!(replies.iter().all(|r| outcome(r) == &Outcome::Ok));
    cancel.cancel();
    handle.await.unwrap().unwrap();
    assert_tries_took_effect_once(&h.db, 300).await;
}

#[tokio::test]
async fn stops_promptly_when_cancelled() {
    let h = Harness::new().await;
    let (cancel, handle) = h.start(BalanceParticipant, Harness::config());
    tokio::time::sleep(Duration::from_millis(100)).await;
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(2), handle)
        .await
        .expect("run returns after cancellation")
        .unwrap()
        .unwrap();
}
