//! The barrier and the ledgers under concurrent PostgreSQL transactions: duplicate
//! commands racing each other, a try racing its own cancel, many tries racing for the
//! same wallet. SQLite has one writer, so only PostgreSQL can show these races.
//!
//! Runs against the PostgreSQL server of `kessai_testkit::postgres_url()`
//! (`KESSAI_TEST_POSTGRES_URL`, default `postgres://root@127.0.0.1:5432`), whose user
//! may create databases; each test gets a database of its own, dropped at the end.
//! A server that is not reachable skips the tests with a note, or fails them when
//! `KESSAI_REQUIRE_SERVICES=1` (CI), so they can never pass vacuously there.

mod common;

use common::{
    assert_settled, assert_tries_took_effect_once, balance_cmd as cmd, balance_queue, balance_then, seed_wallets,
    send_all, wallet,
};
use futures::FutureExt;
use kessai_messages::{Envelope, Operation, Outcome, SagaId};
use kessai_migrations::Service;
use kessai_participants::sdk::barrier::{ALREADY_CANCELLED, ALREADY_CONFIRMED};
use kessai_participants::{BalanceParticipant, Error, Participant, ParticipantRuntime, RuntimeConfig, handle_command};
use kessai_testkit::ScratchPostgres;
use kessai_transport::{ConsumeOptions, MemoryTransport, Transport};
use sea_orm::{DatabaseConnection, TransactionTrait};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const OPENING: i64 = 1_000;

/// Runs `body` on a PostgreSQL database of its own (a pool of 16) holding wallets
/// acct-1 … acct-4 with `OPENING` each, dropped afterwards even when `body` panics.
/// Skipped when the server is not reachable (or failed: `KESSAI_REQUIRE_SERVICES=1`).
async fn on_postgres<F, Fut>(body: F)
where
    F: FnOnce(DatabaseConnection) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(pg) = ScratchPostgres::create("kessai_participants_", Service::Balance, 16).await else {
        return;
    };
    seed_wallets(&pg.db, 4, OPENING).await;
    pg.run(body).await;
}

/// A balance runtime with `config` on `db` over a fresh in-process broker; the broker
/// and balance's command queue.
async fn balance_runtime(
    db: &DatabaseConnection,
    mut config: RuntimeConfig,
) -> (ParticipantRuntime<BalanceParticipant>, MemoryTransport, String) {
    // The commands these tests send answer to the test's own reply queue.
    config.extra_reply_queues.push(common::REPLY_QUEUE.into());
    let (transport, queue) = balance_queue().await;
    let runtime = ParticipantRuntime::with_config(BalanceParticipant, db.clone(), Arc::new(transport.clone()), config);
    (runtime, transport, queue)
}

/// One command in its own transaction, retried the way a redelivery would be when
/// the database reports a conflict (serialisation, a duplicate key from a racing twin).
async fn apply(db: &DatabaseConnection, envelope: &Envelope) -> Outcome {
    for _ in 0..50 {
        let txn = db.begin().await.unwrap();
        match handle_command(&BalanceParticipant, &txn, envelope).await {
            Ok(outcome) => match txn.commit().await {
                Ok(()) => return outcome,
                Err(_) => continue,
            },
            Err(e) if e.is_retryable() => {
                txn.rollback().await.ok();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => panic!("permanent error: {e}"),
        }
    }
    panic!("command never went through");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_duplicates_take_effect_once() {
    on_postgres(|db| async move {
        for _ in 0..20 {
            let saga = SagaId::new();
            for op in [Operation::Try, Operation::Confirm] {
                let envelope = cmd(saga, "acct-1", op, 5);
                let mut set = tokio::task::JoinSet::new();
                for _ in 0..4 {
                    let (db, envelope) = (db.clone(), envelope.clone());
                    set.spawn(async move { apply(&db, &envelope).await });
                }
                while let Some(outcome) = set.join_next().await {
                    assert_eq!(outcome.unwrap(), Outcome::Ok);
                }
            }
        }
        assert_eq!(wallet(&db, "acct-1").await, (OPENING - 100, 0));
        let audit = BalanceParticipant::audit(&db).await.unwrap();
        assert_eq!(audit.moved, 100);
        assert!(audit.is_consistent());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn try_racing_its_cancel_never_leaks_a_freeze() {
    on_postgres(|db| async move {
        for _ in 0..40 {
            let saga = SagaId::new();
            let (try_db, cancel_db) = (db.clone(), db.clone());
            let t = tokio::spawn(async move { apply(&try_db, &cmd(saga, "acct-2", Operation::Try, 7)).await });
            let c = tokio::spawn(async move { apply(&cancel_db, &cmd(saga, "acct-2", Operation::Cancel, 7)).await });
            let (tried, cancelled) = (t.await.unwrap(), c.await.unwrap());
            assert_eq!(cancelled, Outcome::Ok);
            assert!(matches!(tried, Outcome::Ok | Outcome::Rejected { .. }), "{tried:?}");
        }
        // Whichever won each race, nothing stays frozen and nothing moved.
        assert_eq!(wallet(&db, "acct-2").await, (OPENING, 0));
        let audit = BalanceParticipant::audit(&db).await.unwrap();
        assert_eq!(audit.reserved_by_holds(), 0);
        assert_eq!(audit.moved, 0);
        assert!(audit.is_consistent());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_tries_never_overdraw() {
    on_postgres(|db| async move {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..30 {
            let db = db.clone();
            // 30 × 60 = 1800 asked of a 1000 wallet: exactly 16 fit.
            set.spawn(async move { apply(&db, &cmd(SagaId::new(), "acct-3", Operation::Try, 60)).await });
        }
        let mut ok = 0;
        while let Some(outcome) = set.join_next().await {
            match outcome.unwrap() {
                Outcome::Ok => ok += 1,
                Outcome::Rejected { reason } => assert_eq!(reason, "insufficient funds"),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(ok, 16);
        assert_eq!(wallet(&db, "acct-3").await, (OPENING - 960, 960));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runtime_with_several_workers() {
    on_postgres(|db| async move {
        let config = RuntimeConfig {
            workers: 4,
            batch_size: 8,
            poll_wait: Duration::from_millis(50),
            retry_delay: Duration::from_millis(10),
            ..RuntimeConfig::default()
        };
        let (runtime, transport, queue) = balance_runtime(&db, config).await;
        let cancel = CancellationToken::new();
        let handle = tokio::spawn(runtime.run(cancel.clone()));
        let sagas: Vec<SagaId> = (0..200).map(|_| SagaId::new()).collect();
        // Every command twice, and each saga's wallet shared with many others.
        let commands: Vec<Envelope> = sagas
            .iter()
            .enumerate()
            .map(|(i, s)| cmd(*s, &format!("acct-{}", i % 4 + 1), Operation::Try, 1))
            .collect();
        send_all(&transport, &queue, &[commands.clone(), commands].concat()).await;
        let mut consumer = transport
            .consume(common::REPLY_QUEUE, ConsumeOptions::default())
            .await
            .unwrap();
        let mut replies = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while replies < 400 {
            assert!(tokio::time::Instant::now() < deadline, "only {replies} replies");
            for d in consumer.next_batch(400).await.unwrap() {
                let reply = Envelope::decode(&d.payload).unwrap();
                assert_eq!(reply.as_reply().unwrap().outcome, Outcome::Ok);
                d.ack().await.unwrap();
                replies += 1;
            }
        }
        cancel.cancel();
        let result: Result<(), Error> = handle.await.unwrap();
        result.unwrap();
        assert_tries_took_effect_once(&db, 200).await;
    })
    .await;
}

/// Two workers' concurrent batches holding the same commands in opposite orders (a
/// redelivery and a resend land in different batches): the runtime applies every batch
/// in one lock order, so the second waits for the first instead of deadlocking. Each
/// deadlock cost a `deadlock_timeout` (1 s) per command of the losing batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_batches_with_the_same_commands_do_not_deadlock() {
    on_postgres(|db| async move {
        let (runtime, transport, queue) = balance_runtime(&db, RuntimeConfig::default()).await;
        const N: usize = 12;
        let commands: Vec<Envelope> = (0..N)
            .map(|i| cmd(SagaId::new(), &format!("acct-{}", i % 4 + 1), Operation::Try, 1))
            .collect();
        let both_ways: Vec<Envelope> = commands.iter().chain(commands.iter().rev()).cloned().collect();
        send_all(&transport, &queue, &both_ways).await;
        let mut consumer = transport.consume(&queue, ConsumeOptions::default()).await.unwrap();
        let forward = consumer.next_batch(N).await.unwrap();
        let backward = consumer.next_batch(N).await.unwrap();
        assert_eq!((forward.len(), backward.len()), (N, N));

        let started = std::time::Instant::now();
        let (a, b) = tokio::join!(runtime.process_batch(forward), runtime.process_batch(backward));
        let elapsed = started.elapsed();
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!((a.replied, b.replied), (N, N), "{a:?} {b:?}");
        assert!(
            elapsed < Duration::from_secs(3),
            "two batches of {N} took {elapsed:?}: they deadlocked"
        );
        assert_tries_took_effect_once(&db, N as i64).await;
    })
    .await;
}

/// A batch that loses a deadlock gives up its locks at once. Here another
/// transaction holds the wallet `acct-1` and waits for a barrier key the batch claimed
/// in an earlier command; the batch then needs `acct-1`. PostgreSQL makes the batch the
/// victim. Carrying on with the same transaction would keep the key, and every later
/// command of the batch on `acct-1` would close the cycle again, one
/// `deadlock_timeout` (1 s) each (a hot row, like the bank's settlement account, makes
/// that every command); abandoning the batch lets the other transaction through.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_that_loses_a_deadlock_releases_its_locks() {
    on_postgres(|db| async move {
        let (runtime, transport, queue) = balance_runtime(&db, RuntimeConfig::default()).await;
        // Saga ids sort in creation order: the batch applies `shared` first.
        let (first, shared) = (SagaId::new(), SagaId::new());
        let later: Vec<SagaId> = (0..6).map(|_| SagaId::new()).collect();
        let batch: Vec<Envelope> = std::iter::once(cmd(shared, "acct-2", Operation::Try, 1))
            .chain(later.iter().map(|s| cmd(*s, "acct-1", Operation::Try, 1)))
            .collect();
        send_all(&transport, &queue, &batch).await;
        let mut consumer = transport.consume(&queue, ConsumeOptions::default()).await.unwrap();
        let deliveries = consumer.next_batch(batch.len()).await.unwrap();
        assert_eq!(deliveries.len(), batch.len());

        // The other transaction takes `acct-1`...
        let other = db.begin().await.unwrap();
        let outcome = handle_command(&BalanceParticipant, &other, &cmd(first, "acct-1", Operation::Try, 1)).await;
        assert_eq!(outcome.unwrap(), Outcome::Ok);
        // ...the batch claims `shared`, then waits for `acct-1`...
        let worker = {
            let runtime = runtime.clone();
            tokio::spawn(async move { runtime.process_batch(deliveries).await })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        // ...and the other transaction needs `shared`: a cycle, the batch is the victim.
        let started = std::time::Instant::now();
        let claimed = handle_command(&BalanceParticipant, &other, &cmd(shared, "acct-2", Operation::Try, 1)).await;
        let waited = started.elapsed();
        assert_eq!(
            claimed.expect("the batch let go of its locks after losing the deadlock"),
            Outcome::Ok
        );
        assert!(
            waited < Duration::from_secs(3),
            "the other transaction waited {waited:?}"
        );
        other.commit().await.unwrap();
        assert!(worker.await.unwrap().is_err(), "the batch was abandoned");

        // Redelivered, the batch goes through; `shared` took effect once.
        let again = consumer.next_batch(batch.len()).await.unwrap();
        assert_eq!(again.len(), batch.len());
        let report = runtime.process_batch(again).await.unwrap();
        assert_eq!(report.replied, batch.len());
        assert_tries_took_effect_once(&db, 8).await;
    })
    .await;
}

/// Confirm and cancel of one branch racing in two transactions: the second waits for
/// the first's lock on the try row and must then see the first's barrier row, answering
/// "already cancelled" / "already confirmed" without running its business code. A single
/// statement reading both rows would take its snapshot before that wait and miss the row
/// committed during it (see `decisive_rows` in the barrier).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn confirm_and_cancel_waiting_on_each_other_stay_exclusive() {
    on_postgres(|db| async move {
        let orders = [
            (Operation::Cancel, Operation::Confirm, ALREADY_CANCELLED),
            (Operation::Confirm, Operation::Cancel, ALREADY_CONFIRMED),
        ];
        for (first, second, refusal) in orders {
            let saga = SagaId::new();
            assert_eq!(apply(&db, &cmd(saga, "acct-4", Operation::Try, 10)).await, Outcome::Ok);
            let holder = db.begin().await.unwrap();
            let outcome = handle_command(&BalanceParticipant, &holder, &cmd(saga, "acct-4", first, 10)).await;
            assert_eq!(outcome.unwrap(), Outcome::Ok);
            let waiter = {
                let db = db.clone();
                tokio::spawn(async move {
                    let txn = db.begin().await.unwrap();
                    let outcome = handle_command(&BalanceParticipant, &txn, &cmd(saga, "acct-4", second, 10)).await;
                    txn.commit().await.unwrap();
                    outcome
                })
            };
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(!waiter.is_finished(), "the {second} did not wait for the {first}");
            holder.commit().await.unwrap();
            assert_eq!(
                waiter.await.unwrap().unwrap(),
                Outcome::rejected(refusal),
                "{first} then {second}"
            );
        }
        assert_settled(&BalanceParticipant::audit(&db).await.unwrap(), 10);
    })
    .await;
}

/// Balance, but slow to refuse: holds the command's claim for a while after deciding.
fn slow_to_refuse() -> impl Participant {
    balance_then(Operation::Try, |tried| {
        async move {
            if tried.is_err() {
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
            tried
        }
        .boxed()
    })
}

/// A try refused by business code while a duplicate of it, in another transaction,
/// waits for its claim. The refusal keeps the claim until its transaction commits, and
/// the duplicate then replays it. Had the refusal given the claim up to record itself
/// afresh, the duplicate would have taken it and waited for the wallet an earlier
/// command of the first transaction had locked, while the first waited for the claim:
/// a deadlock, broken only after `deadlock_timeout` (1 s) by aborting one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_try_keeps_its_claim_from_a_waiting_duplicate() {
    on_postgres(|db| async move {
        let batch = db.begin().await.unwrap();
        // An earlier command of the batch locks the wallet (600 of 1000 frozen)...
        let earlier = cmd(SagaId::new(), "acct-1", Operation::Try, 600);
        assert_eq!(
            handle_command(&BalanceParticipant, &batch, &earlier).await.unwrap(),
            Outcome::Ok
        );
        // ...the next one asks more than is left, while its duplicate arrives elsewhere.
        let refused = cmd(SagaId::new(), "acct-1", Operation::Try, 500);
        let duplicate = {
            let (db, refused) = (db.clone(), refused.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(150)).await;
                let started = std::time::Instant::now();
                let txn = db.begin().await.unwrap();
                let outcome = handle_command(&BalanceParticipant, &txn, &refused).await;
                txn.commit().await.unwrap();
                (outcome, started.elapsed())
            })
        };
        let outcome = handle_command(&slow_to_refuse(), &batch, &refused).await.unwrap();
        assert_eq!(outcome, Outcome::rejected("insufficient funds"));
        batch.commit().await.unwrap();
        let (replayed, waited) = duplicate.await.unwrap();
        assert_eq!(replayed.expect("the duplicate was not a deadlock victim"), outcome);
        assert!(waited < Duration::from_secs(1), "the duplicate waited {waited:?}");
        assert_eq!(wallet(&db, "acct-1").await, (OPENING - 600, 600));
    })
    .await;
}
