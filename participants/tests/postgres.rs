//! The barrier and the ledgers under concurrent PostgreSQL transactions: duplicate
//! commands racing each other, a try racing its own cancel, many tries racing for the
//! same wallet. SQLite has one writer, so only PostgreSQL can show these races.
//!
//! Runs against the PostgreSQL server of `kessai_transport::testing::postgres_url()`
//! (`KESSAI_TEST_POSTGRES_URL`, default `postgres://root@127.0.0.1:5432`), whose user
//! may create databases; each test gets a database of its own, dropped at the end.
//! A server that is not reachable skips the tests with a note, or fails them when
//! `KESSAI_REQUIRE_SERVICES=1` (CI), so they can never pass vacuously there.

mod common;

use common::{command, eur};
use kessai_messages::payment::{BALANCE, WalletHold};
use kessai_messages::{Envelope, Operation, Outcome, SagaId};
use kessai_migrations::{Service, connect, open};
use kessai_participants::balance::WalletSeed;
use kessai_participants::sdk::barrier::{ALREADY_CANCELLED, ALREADY_CONFIRMED};
use kessai_participants::{
    BalanceParticipant, BranchRef, BusinessError, Error, Participant, ParticipantRuntime, RuntimeConfig, handle_command,
};
use kessai_transport::testing;
use kessai_transport::{ConsumeOptions, MemoryTransport, OutgoingMessage, Topology, Transport};
use sea_orm::{ConnectionTrait, DatabaseConnection, DatabaseTransaction, TransactionTrait};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const OPENING: i64 = 1_000;

struct PgDb {
    admin: DatabaseConnection,
    name: String,
    db: DatabaseConnection,
}

impl PgDb {
    async fn spawn() -> Option<Self> {
        let server = testing::postgres_url();
        if !testing::require_service("PostgreSQL", &testing::host_port(&server, 5432)) {
            return None;
        }
        // The server URL may name no database; administration happens in `postgres`.
        let admin = connect(&with_database(&server, "postgres"), 1)
            .await
            .expect("admin connection");
        let name = format!("kessai_participants_{}", uuid::Uuid::new_v4().simple());
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create database");
        let url = with_database(&server, &name);
        let db = open(&url, Service::Balance, 16).await.expect("open and migrate");
        BalanceParticipant::seed(
            &db,
            (1..=4).map(|i| WalletSeed {
                account_id: format!("acct-{i}"),
                currency: eur(),
                opening: OPENING,
            }),
        )
        .await
        .unwrap();
        Some(Self { admin, name, db })
    }

    async fn drop_db(self) {
        self.db.close().await.ok();
        self.admin
            .execute_unprepared(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name))
            .await
            .ok();
    }
}

/// Replaces the database name in a `postgres://…/name?…` URL.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[scheme_end..].find('/').map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{}", &base[..path_start], name);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

fn cmd(saga: SagaId, account: &str, op: Operation, amount: i64) -> Envelope {
    command(
        BALANCE,
        saga,
        0,
        op,
        1,
        json!({"account_id": account, "amount": amount, "currency": "EUR"}),
    )
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

async fn wallet(db: &DatabaseConnection, account: &str) -> (i64, i64) {
    let w = BalanceParticipant::wallet(db, account).await.unwrap().unwrap();
    (w.available, w.frozen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_duplicates_take_effect_once() {
    let Some(pg) = PgDb::spawn().await else {
        return;
    };
    let db = pg.db.clone();
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
    pg.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn try_racing_its_cancel_never_leaks_a_freeze() {
    let Some(pg) = PgDb::spawn().await else {
        return;
    };
    let db = pg.db.clone();
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
    pg.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_tries_never_overdraw() {
    let Some(pg) = PgDb::spawn().await else {
        return;
    };
    let db = pg.db.clone();
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
    pg.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runtime_with_several_workers() {
    let Some(pg) = PgDb::spawn().await else {
        return;
    };
    let transport = MemoryTransport::new();
    let queue = Topology::default().command_queue(BALANCE);
    transport.declare(&queue).await.unwrap();
    let config = RuntimeConfig {
        workers: 4,
        batch_size: 8,
        poll_wait: Duration::from_millis(50),
        retry_delay: Duration::from_millis(10),
        ..RuntimeConfig::default()
    };
    let runtime =
        ParticipantRuntime::with_config(BalanceParticipant, pg.db.clone(), Arc::new(transport.clone()), config);
    let cancel = CancellationToken::new();
    let handle = tokio::spawn(runtime.run(cancel.clone()));
    let sagas: Vec<SagaId> = (0..200).map(|_| SagaId::new()).collect();
    // Every command twice, and each saga's wallet shared with many others.
    for _ in 0..2 {
        for (i, s) in sagas.iter().enumerate() {
            let e = cmd(*s, &format!("acct-{}", i % 4 + 1), Operation::Try, 1);
            transport
                .publish(&queue, OutgoingMessage::new(e.encode()))
                .await
                .unwrap();
        }
    }
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
    let audit = BalanceParticipant::audit(&pg.db).await.unwrap();
    assert_eq!(audit.reserved, 200);
    assert_eq!(audit.barrier_records, 200);
    assert!(audit.is_consistent());
    pg.drop_db().await;
}

/// Two workers' concurrent batches holding the same commands in opposite orders (a
/// redelivery and a resend land in different batches): the runtime applies every batch
/// in one lock order, so the second waits for the first instead of deadlocking. Each
/// deadlock cost a `deadlock_timeout` (1 s) per command of the losing batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_batches_with_the_same_commands_do_not_deadlock() {
    let Some(pg) = PgDb::spawn().await else {
        return;
    };
    let transport = MemoryTransport::new();
    let queue = Topology::default().command_queue(BALANCE);
    transport.declare(&queue).await.unwrap();
    let runtime = ParticipantRuntime::with_config(
        BalanceParticipant,
        pg.db.clone(),
        Arc::new(transport.clone()),
        RuntimeConfig::default(),
    );
    const N: usize = 12;
    let commands: Vec<Envelope> = (0..N)
        .map(|i| cmd(SagaId::new(), &format!("acct-{}", i % 4 + 1), Operation::Try, 1))
        .collect();
    for e in commands.iter().chain(commands.iter().rev()) {
        transport
            .publish(&queue, OutgoingMessage::new(e.encode()))
            .await
            .unwrap();
    }
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
    let audit = BalanceParticipant::audit(&pg.db).await.unwrap();
    assert_eq!(audit.reserved, N as i64);
    assert_eq!(audit.barrier_records, N as u64);
    pg.drop_db().await;
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
    let Some(pg) = PgDb::spawn().await else {
        return;
    };
    let transport = MemoryTransport::new();
    let queue = Topology::default().command_queue(BALANCE);
    transport.declare(&queue).await.unwrap();
    let runtime = ParticipantRuntime::with_config(
        BalanceParticipant,
        pg.db.clone(),
        Arc::new(transport.clone()),
        RuntimeConfig::default(),
    );
    // Saga ids sort in creation order: the batch applies `shared` first.
    let (first, shared) = (SagaId::new(), SagaId::new());
    let later: Vec<SagaId> = (0..6).map(|_| SagaId::new()).collect();
    let batch: Vec<Envelope> = std::iter::once(cmd(shared, "acct-2", Operation::Try, 1))
        .chain(later.iter().map(|s| cmd(*s, "acct-1", Operation::Try, 1)))
        .collect();
    for e in &batch {
        transport
            .publish(&queue, OutgoingMessage::new(e.encode()))
            .await
            .unwrap();
    }
    let mut consumer = transport.consume(&queue, ConsumeOptions::default()).await.unwrap();
    let deliveries = consumer.next_batch(batch.len()).await.unwrap();
    assert_eq!(deliveries.len(), batch.len());

    // The other transaction takes `acct-1`...
    let other = pg.db.begin().await.unwrap();
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
    let audit = BalanceParticipant::audit(&pg.db).await.unwrap();
    assert_eq!(audit.reserved, 8);
    assert_eq!(audit.barrier_records, 8);
    assert!(audit.is_consistent());
    pg.drop_db().await;
}

/// Confirm and cancel of one branch racing in two transactions: the second waits for
/// the first's lock on the try row and must then see the first's barrier row, answering
/// "already cancelled" / "already confirmed" without running its business code. A single
/// statement reading both rows would take its snapshot before that wait and miss the row
/// committed during it (see `decisive_rows` in the barrier).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn confirm_and_cancel_waiting_on_each_other_stay_exclusive() {
    let Some(pg) = PgDb::spawn().await else {
        return;
    };
    let db = pg.db.clone();
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
    let audit = BalanceParticipant::audit(&db).await.unwrap();
    assert_eq!(audit.moved, 10);
    assert_eq!(audit.reserved, 0);
    assert!(audit.is_consistent());
    pg.drop_db().await;
}

/// Balance, but slow to refuse: holds the command's claim for a while after deciding.
struct SlowToRefuse;

#[kessai_participants::sdk::async_trait]
impl Participant for SlowToRefuse {
    type Payload = WalletHold;
    fn name(&self) -> &'static str {
        BALANCE
    }
    async fn try_(
        &self,
        txn: &DatabaseTransaction,
        branch: &BranchRef,
        hold: &WalletHold,
    ) -> Result<(), BusinessError> {
        let result = BalanceParticipant.try_(txn, branch, hold).await;
        if result.is_err() {
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        result
    }
    async fn confirm(
        &self,
        txn: &DatabaseTransaction,
        branch: &BranchRef,
        hold: &WalletHold,
    ) -> Result<(), BusinessError> {
        BalanceParticipant.confirm(txn, branch, hold).await
    }
    async fn cancel(
        &self,
        txn: &DatabaseTransaction,
        branch: &BranchRef,
        hold: &WalletHold,
    ) -> Result<(), BusinessError> {
        BalanceParticipant.cancel(txn, branch, hold).await
    }
}

/// A try refused by business code while a duplicate of it, in another transaction,
/// waits for its claim. The refusal keeps the claim until its transaction commits, and
/// the duplicate then replays it. Had the refusal given the claim up to record itself
/// afresh, the duplicate would have taken it and waited for the wallet an earlier
/// command of the first transaction had locked, while the first waited for the claim:
/// a deadlock, broken only after `deadlock_timeout` (1 s) by aborting one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_try_keeps_its_claim_from_a_waiting_duplicate() {
    let Some(pg) = PgDb::spawn().await else {
        return;
    };
    let db = pg.db.clone();
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
    let outcome = handle_command(&SlowToRefuse, &batch, &refused).await.unwrap();
    assert_eq!(outcome, Outcome::rejected("insufficient funds"));
    batch.commit().await.unwrap();
    let (replayed, waited) = duplicate.await.unwrap();
    assert_eq!(replayed.expect("the duplicate was not a deadlock victim"), outcome);
    assert!(waited < Duration::from_secs(1), "the duplicate waited {waited:?}");
    assert_eq!(wallet(&db, "acct-1").await, (OPENING - 600, 600));
    pg.drop_db().await;
}

#[test]
fn database_name_is_replaced_in_urls() {
    assert_eq!(
        with_database("postgres:///postgres?host=/var/run/postgresql", "x"),
        "postgres:///x?host=/var/run/postgresql"
    );
    assert_eq!(
        with_database("postgres://u:p@h:5432/db", "x"),
        "postgres://u:p@h:5432/x"
    );
    assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
}
