//! Several coordinators on one PostgreSQL database (issue 4): a coordinator killed
//! with sagas in flight leaves a second one to finish them all, and a stale
//! coordinator cannot apply a transition computed from an outdated copy of a saga.
//!
//! Each test creates its own PostgreSQL databases (`kc_<random>_*`) and drops them at
//! the end; without a reachable server the tests are skipped with a note (or fail
//! when `KESSAI_REQUIRE_SERVICES=1`).

use kessai_coordinator::machine::{self, Action, Event, Saga};
use kessai_coordinator::store::entities::{outbox, saga_event};
use kessai_coordinator::store::{self, NewSaga, Routing};
use kessai_coordinator::{Clock, Coordinator, CoordinatorConfig, CoordinatorTasks, SagaState, SystemClock};
use kessai_harness::invariants;
use kessai_harness::stack::service_queues;
use kessai_messages::{BranchId, Envelope, Operation, Outcome, Payment, SagaId};
use kessai_migrations::Service;
use kessai_participants::{Registry, RuntimeConfig, barrier_records, database_name};
use kessai_testkit::{host_port, postgres_url, require_service};
use kessai_transport::{ConsumeOptions, MemoryTransport, OutgoingMessage, Topology, Transport};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, TransactionTrait};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The coordinator database of the running-coordinator race.
const RACE: &str = "coordinator_race";

/// Fresh databases on the test server, named `kc_<random8>_<name>`.
#[derive(Clone)]
struct Databases {
    server: String,
    prefix: String,
}

impl Databases {
    /// `None` (after a skip note) when the server is unreachable.
    fn new() -> Option<Self> {
        let server = postgres_url();
        if !require_service("PostgreSQL", &host_port(&server, 5432)) {
            return None;
        }
        let random = uuid::Uuid::new_v4().simple().to_string();
        Some(Databases {
            server,
            prefix: format!("kc_{}", &random[..8]),
        })
    }

    fn name(&self, service: &str) -> String {
        database_name(&self.prefix, service)
    }

    /// Creates the database if needed, opens a pool on it and migrates it.
    async fn open(&self, service: &str, kind: Service, max_connections: u32) -> DatabaseConnection {
        let name = self.name(service);
        kessai_migrations::ensure_postgres_database(&self.server, &name)
            .await
            .unwrap_or_else(|e| panic!("creating {name}: {e}"));
        let url = kessai_migrations::postgres_database_url(&self.server, &name);
        kessai_migrations::open(&url, kind, max_connections)
            .await
            .unwrap_or_else(|e| panic!("opening {name}: {e}"))
    }

    async fn drop_all(&self) {
        let mut names = vec!["coordinator", RACE];
        names.extend(Registry::reference().names());
        for n in names {
            let name = self.name(n);
            if let Err(e) = kessai_migrations::drop_postgres_database(&self.server, &name).await {
                eprintln!("could not drop {name}: {e}");
            }
        }
    }

    /// Runs `body` and drops the databases afterwards, even when `body` panics.
    async fn run<F, Fut>(self, body: F)
    where
        F: FnOnce(Databases) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let result = tokio::spawn(body(self.clone())).await;
        self.drop_all().await;
        if let Err(e) = result {
            match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(e) => panic!("test body did not finish: {e}"),
            }
        }
    }
}

/// Several coordinators starting at once on a database nobody created yet: every one
/// creates-if-missing and migrates, and none fails (the loser of the CREATE DATABASE
/// race accepts the winner's database; migrations take an advisory lock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinators_starting_together_all_open_the_database() {
    let Some(dbs) = Databases::new() else { return };
    dbs.run(|dbs| async move {
        let opened = futures::future::join_all((0..6).map(|_| {
            let dbs = dbs.clone();
            tokio::spawn(async move { dbs.open("coordinator", Service::Coordinator, 2).await })
        }))
        .await;
        for db in opened {
            let db = db.expect("every coordinator opened and migrated its database");
            assert_eq!(store::outbox_len(&db).await.unwrap(), 0);
            db.close().await.unwrap();
        }
    })
    .await;
}

/// Short resends so the survivor's timers pick up the dead coordinator's sagas fast.
fn brisk(topology: &Topology) -> CoordinatorConfig {
    let c = CoordinatorConfig {
        topology: topology.clone(),
        try_timeout: Duration::from_secs(10),
        tick_interval: Duration::from_millis(50),
        relay_poll: Duration::from_millis(50),
        reply_workers: 2,
        ..CoordinatorConfig::default()
    };
    common::brisk(c, 200)
}

mod common;

fn payment(run: &str, i: usize, fail: bool) -> Payment {
    common::payment(format!("{run}-{i}"), 1 + i % 97, 1 + i % 89, 100 + i as i64, fail)
}

async fn state_counts(db: &DatabaseConnection) -> BTreeMap<SagaState, u64> {
    store::counts(db).await.expect("counts").0
}

fn terminal(counts: &BTreeMap<SagaState, u64>) -> u64 {
    counts.iter().filter(|(s, _)| s.is_terminal()).map(|(_, n)| *n).sum()
}

/// Waits (bounded) until the outbox is empty and no command or reply is queued or in hand.
async fn wait_quiet(db: &DatabaseConnection, transport: &MemoryTransport, queues: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let outbox = store::outbox_len(db).await.unwrap_or(1);
        let queued: usize = queues
            .iter()
            .map(|q| transport.ready_len(q) + transport.unsettled_len(q))
            .sum();
        if outbox == 0 && queued == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the system did not quiesce within 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_coordinator_leaves_the_other_to_finish_every_saga() {
    let Some(dbs) = Databases::new() else { return };
    dbs.run(takeover).await;
}

async fn takeover(dbs: Databases) {
    const PAYMENTS: usize = 200;
    let started = Instant::now();
    let memory = MemoryTransport::new();
    let transport: Arc<dyn Transport> = Arc::new(memory.clone());
    let topology = Topology::new(format!("{}-q", dbs.prefix));
    let participant_config = RuntimeConfig {
        topology: topology.clone(),
        workers: 4,
        batch_size: 1,
        poll_wait: Duration::from_millis(100),
        ..RuntimeConfig::default()
    };

    // Three participants, each on its own database.
    let mut participant_dbs = Vec::new();
    let mut participant_tasks = Vec::new();
    for p in Registry::reference().iter() {
        let name = dbs.name(p.name());
        kessai_migrations::ensure_postgres_database(&dbs.server, &name)
            .await
            .expect("create a database");
        let db = p
            .open(&kessai_migrations::postgres_database_url(&dbs.server, &name), 6)
            .await
            .expect("open a participant database");
        p.seed_demo(&db).await.expect("seeding");
        participant_tasks.push(p.start(db.clone(), transport.clone(), participant_config.clone()));
        participant_dbs.push((p.name(), p.clone(), db));
    }

    // Two coordinators on one database, each with its own pool.
    let config = brisk(&topology);
    let db_a = dbs.open("coordinator", Service::Coordinator, 8).await;
    let db_b = dbs.open("coordinator", Service::Coordinator, 8).await;
    let clock = Arc::new(SystemClock);
    let (coord_a, tasks_a): (Coordinator, CoordinatorTasks) =
        Coordinator::start(db_a.clone(), transport.clone(), config.clone(), clock.clone())
            .await
            .expect("coordinator A");
    let (coord_b, tasks_b) = Coordinator::start(db_b.clone(), transport.clone(), config, clock)
        .await
        .expect("coordinator B");

    // Every payment goes through A; every fifth is refused by the bank.
    let run = &dbs.prefix;
    let work: Vec<(Payment, bool)> = (0..PAYMENTS)
        .map(|i| {
            let fail = i % 5 == 3;
            (payment(run, i, fail), fail)
        })
        .collect();
    let submissions = futures::future::join_all(work.iter().map(|(p, _)| coord_a.submit_payment(p, None))).await;
    let mut failing: HashMap<SagaId, bool> = HashMap::new();
    let mut acknowledged = Vec::with_capacity(PAYMENTS);
    for (s, (_, fail)) in submissions.into_iter().zip(&work) {
        let s = s.expect("submission through A");
        assert!(s.created);
        failing.insert(s.saga_id, *fail);
        acknowledged.push(s.saga_id);
    }

    // Once some have finished, kill A: no shutdown step, its pool closed.
    let patience = Instant::now() + Duration::from_secs(15);
    loop {
        let done = terminal(&state_counts(&db_b).await);
        if done >= 10 {
            break;
        }
        assert!(
            Instant::now() < patience,
            "no saga finished within 15 s ({done} terminal)"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tasks_a.kill().await;
    drop(coord_a);
    db_a.close().await.expect("closing A's pool");
    let at_kill = state_counts(&db_b).await;
    let in_flight = PAYMENTS as u64 - terminal(&at_kill);
    eprintln!("killed A at {:?}: {at_kill:?}", started.elapsed());
    assert!(in_flight > 0, "A was killed with no saga in flight: {at_kill:?}");

    // B alone finishes every saga.
    let patience = Instant::now() + Duration::from_secs(25);
    loop {
        let counts = state_counts(&db_b).await;
        if terminal(&counts) == PAYMENTS as u64 {
            break;
        }
        assert!(
            Instant::now() < patience,
            "B did not finish every saga within 25 s of the kill: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let queues = service_queues(&topology, &Registry::reference());
    wait_quiet(&db_b, &memory, &queues).await;
    let finished_at = started.elapsed();

    // Outcomes: the refused payments cancelled, the others confirmed (no deadline could
    // pass: every try is answered within the 10 s try timeout).
    for id in &acknowledged {
        let view = coord_b.saga(*id).await.expect("view").expect("saga exists");
        let want = if failing[id] {
            SagaState::Cancelled
        } else {
            SagaState::Confirmed
        };
        assert_eq!(view.state, want, "saga {id}: {view:?}");
    }

    // The invariants (docs/GUARANTEES.md), from the coordinator's outcomes and each participant's own books.
    let outcomes = invariants::read_outcomes(&db_b, &Registry::reference())
        .await
        .expect("outcomes");
    assert_eq!(outcomes.len(), PAYMENTS);
    let mut audits = Vec::new();
    for (_, p, db) in &participant_dbs {
        audits.push(p.audit(db).await.expect("audit"));
    }
    let report = invariants::check_all(&outcomes, &audits, &acknowledged, &[]);
    assert!(report.ok(), "invariants violated: {:#?}", report.checks);

    // The barrier records: at most one confirm per branch, never a confirm and a cancel
    // that both took effect, no cancel effect for a confirmed saga, no confirm at all
    // for a cancelled one.
    let states: HashMap<SagaId, SagaState> = outcomes.iter().map(|o| (o.id, o.state)).collect();
    let mut records_seen = 0usize;
    for id in &acknowledged {
        for (p, _, db) in &participant_dbs {
            let records = barrier_records(db, *id).await.expect("barrier records");
            records_seen += records.len();
            let mut by_branch: BTreeMap<BranchId, Vec<_>> = BTreeMap::new();
            for r in &records {
                by_branch.entry(r.branch_id).or_default().push(r);
            }
            for (branch, rs) in by_branch {
                let confirms = rs.iter().filter(|r| r.operation == Operation::Confirm).count();
                assert!(confirms <= 1, "saga {id} {p} branch {branch:?}: {confirms} confirms");
                let confirmed = rs.iter().any(|r| r.operation == Operation::Confirm && r.took_effect());
                let cancelled = rs.iter().any(|r| r.operation == Operation::Cancel && r.took_effect());
                assert!(
                    !(confirmed && cancelled),
                    "saga {id} {p} branch {branch:?}: confirm and cancel both took effect: {rs:?}"
                );
            }
            match states[id] {
                SagaState::Confirmed => assert!(
                    !records
                        .iter()
                        .any(|r| r.operation == Operation::Cancel && r.took_effect()),
                    "confirmed saga {id} has a cancel effect at {p}: {records:?}"
                ),
                SagaState::Cancelled => assert!(
                    !records.iter().any(|r| r.operation == Operation::Confirm),
                    "cancelled saga {id} has a confirm at {p}: {records:?}"
                ),
                other => panic!("saga {id} is {other}"),
            }
        }
    }
    assert!(records_seen >= PAYMENTS * 3, "only {records_seen} barrier records");
    eprintln!("{PAYMENTS} sagas, {in_flight} in flight at the kill, all terminal and quiet after {finished_at:?}");

    for (name, r) in tasks_b.shutdown().await {
        r.unwrap_or_else(|e| panic!("coordinator B task {name}: {e}"));
    }
    for t in participant_tasks {
        for (name, r) in t.shutdown().await {
            r.unwrap_or_else(|e| panic!("participant task {name} did not end cleanly: {e}"));
        }
    }
    let _ = db_b.close().await;
    for (_, _, db) in participant_dbs {
        let _ = db.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_coordinator_cannot_apply_an_outdated_transition() {
    let Some(dbs) = Databases::new() else { return };
    dbs.run(stale_writes).await;
}

fn routing() -> Routing {
    Routing {
        topology: Topology::default(),
    }
}

/// Inserts a three-branch saga trying since `now`, as an intake would.
async fn insert_saga(db: &DatabaseConnection, now: i64, try_deadline: i64) -> SagaId {
    let id = SagaId::new();
    let branches: Vec<(String, serde_json::Value)> = ["alpha", "beta", "gamma"]
        .iter()
        .map(|p| (p.to_string(), serde_json::json!({ "amount": 1 })))
        .collect();
    let policy = machine::Policy::default();
    let (saga, actions) = Saga::new(id, branches.clone(), now, try_deadline, &policy);
    let new = NewSaga {
        client: None,
        kind: "generic".into(),
        idempotency_key: None,
        request: "{}".into(),
        branches,
        try_timeout_ms: try_deadline - now,
        trace_parent: None,
    };
    store::insert(db, &routing(), &new, &saga, &actions, now)
        .await
        .expect("insert");
    id
}

fn try_ok(branch: u32) -> Event {
    Event::Reply {
        participant: ["alpha", "beta", "gamma"][branch as usize].to_owned(),
        branch: BranchId(branch),
        operation: Operation::Try,
        attempt: 1,
        outcome: Outcome::Ok,
    }
}

/// Applies `events` to a loaded copy and saves the result in its own transaction.
async fn apply_and_save(
    db: &DatabaseConnection,
    before: &store::Loaded,
    events: &[Event],
    now: i64,
) -> (Saga, Vec<Action>, bool) {
    let policy = machine::Policy::default();
    let mut saga = before.saga.clone();
    let mut actions = Vec::new();
    for e in events {
        let t = machine::apply(&saga, e, now, &policy).expect("apply");
        saga = t.saga;
        actions.extend(t.actions);
    }
    let txn = db.begin().await.expect("begin");
    let saved = store::save(&txn, &routing(), before, &saga, &actions, now)
        .await
        .expect("save");
    txn.commit().await.expect("commit");
    (saga, actions, saved)
}

/// Everything the database holds about a saga, to compare before and after.
#[derive(Debug, PartialEq)]
struct Snapshot {
    state: SagaState,
    version: i64,
    reason: Option<String>,
    wake_at_ms: Option<i64>,
    branches: Vec<(String, u32, Option<i64>)>,
    timeline: Vec<(String, String)>,
    outbox: Vec<(String, Operation, u32)>,
}

async fn snapshot(db: &DatabaseConnection, id: SagaId) -> Snapshot {
    let view = store::view(db, id).await.expect("view").expect("saga exists");
    let outbox = outbox::Entity::find()
        .filter(outbox::Column::SagaId.eq(id.to_string()))
        .all(db)
        .await
        .expect("outbox")
        .into_iter()
        .map(|row| {
            let env = Envelope::decode(row.payload.as_bytes()).expect("outbox envelope");
            (row.queue, env.operation, env.attempt)
        })
        .collect();
    let events = saga_event::Entity::find()
        .filter(saga_event::Column::SagaId.eq(id.to_string()))
        .all(db)
        .await
        .expect("timeline")
        .len();
    assert_eq!(events, view.timeline.len());
    Snapshot {
        state: view.state,
        version: view.version,
        reason: view.reason,
        wake_at_ms: view.wake_at_ms,
        branches: view
            .branches
            .into_iter()
            .map(|b| (b.state, b.attempt, b.resend_at_ms))
            .collect(),
        timeline: view
            .timeline
            .into_iter()
            .map(|e| (e.kind.to_string(), e.detail))
            .collect(),
        outbox,
    }
}

async fn stale_writes(dbs: Databases) {
    // Two coordinators' pools on one database.
    let db_a = dbs.open("coordinator", Service::Coordinator, 2).await;
    let db_b = dbs.open("coordinator", Service::Coordinator, 2).await;
    let now = SystemClock.now_ms();

    // 1. Any transition: A loads, B moves the saga on, A saves from its stale copy.
    let id = insert_saga(&db_b, now, now + 60_000).await;
    let stale = store::load(&db_a, &[id]).await.expect("load")[&id].clone();
    let fresh = store::load(&db_b, &[id]).await.expect("load")[&id].clone();
    let (_, _, saved) = apply_and_save(&db_b, &fresh, &[try_ok(0)], now + 10).await;
    assert!(saved, "B's save on the current version must land");
    let after_b = snapshot(&db_b, id).await;
    assert_eq!(after_b.version, stale.version + 1);
    assert_eq!(after_b.branches[0].0, "prepared");
    let (a_saga, _, saved) = apply_and_save(&db_a, &stale, &[try_ok(1)], now + 20).await;
    assert_eq!(a_saga.branches[1].state, machine::BranchState::Prepared);
    assert!(!saved, "A's save from a stale copy must be refused");
    let after_a = snapshot(&db_a, id).await;
    assert_eq!(after_a, after_b, "A's refused save changed the saga");
    assert_eq!(after_a.branches[1].0, "trying", "A's branch update landed");

    // 2. A decides cancel on a stale copy (its try deadline passed while it was
    // paused) after B moved the saga to confirming: A's cancel must not land.
    let id = insert_saga(&db_b, now, now + 1_000).await;
    let stale = store::load(&db_a, &[id]).await.expect("load")[&id].clone();
    let fresh = store::load(&db_b, &[id]).await.expect("load")[&id].clone();
    let (b_saga, b_actions, saved) = apply_and_save(&db_b, &fresh, &[try_ok(0), try_ok(1), try_ok(2)], now + 500).await;
    assert!(saved);
    assert_eq!(b_saga.state, SagaState::Confirming);
    assert!(b_actions.iter().any(|a| matches!(
        a,
        Action::Send {
            operation: Operation::Confirm,
            ..
        }
    )));
    let after_b = snapshot(&db_b, id).await;
    let (a_saga, a_actions, saved) = apply_and_save(&db_a, &stale, &[Event::Tick], now + 5_000).await;
    assert_eq!(a_saga.state, SagaState::Cancelling, "A's stale copy must decide cancel");
    assert!(a_actions.iter().any(|a| matches!(
        a,
        Action::Send {
            operation: Operation::Cancel,
            ..
        }
    )));
    assert!(!saved, "A's stale cancel must be refused");
    let after_a = snapshot(&db_a, id).await;
    assert_eq!(after_a, after_b, "A's refused cancel changed the saga");
    assert_eq!(after_a.state, SagaState::Confirming);
    assert!(after_a.reason.is_none());
    assert!(
        after_a.outbox.iter().all(|(_, op, _)| *op != Operation::Cancel),
        "a cancel reached the outbox: {:?}",
        after_a.outbox
    );
    assert_eq!(
        after_a
            .outbox
            .iter()
            .filter(|(_, op, _)| *op == Operation::Confirm)
            .count(),
        3
    );
    assert!(after_a.timeline.iter().all(|(_, detail)| !detail.starts_with("cancel")));

    let _ = db_a.close().await;
    let _ = db_b.close().await;

    // 3. The same race against a real running coordinator B.
    running_coordinator_race(&dbs).await;
}

/// A real coordinator B drives a saga to confirmed (the test answers as participants)
/// while a paused coordinator A holds a copy loaded when the saga was still trying;
/// A wakes after the try deadline, decides cancel, and its save is refused: no cancel
/// is ever written or sent.
async fn running_coordinator_race(dbs: &Databases) {
    let memory = MemoryTransport::new();
    let transport: Arc<dyn Transport> = Arc::new(memory.clone());
    let topology = Topology::new(format!("{}-race", dbs.prefix));
    // Its own database: B resumes every unfinished saga it finds at start.
    let db_a = dbs.open(RACE, Service::Coordinator, 2).await;
    let db_b = dbs.open(RACE, Service::Coordinator, 4).await;
    let config = CoordinatorConfig {
        try_timeout: Duration::from_secs(30),
        ..brisk(&topology)
    };
    let (coord_b, tasks_b) = Coordinator::start(db_b.clone(), transport.clone(), config, Arc::new(SystemClock))
        .await
        .expect("coordinator B");
    let participants = ["alpha", "beta"];
    let submitted = coord_b
        .submit(NewSaga {
            client: None,
            kind: "generic".into(),
            idempotency_key: Some(format!("{}-race", dbs.prefix)),
            request: "{}".into(),
            branches: participants
                .iter()
                .map(|p| (p.to_string(), serde_json::json!({ "amount": 5 })))
                .collect(),
            try_timeout_ms: 30_000,
            trace_parent: None,
        })
        .await
        .expect("submit");
    let id = submitted.saga_id;
    // A, paused: a copy loaded while the saga is trying.
    let stale = store::load(&db_a, &[id]).await.expect("load")[&id].clone();
    assert_eq!(stale.saga.state, SagaState::Trying);

    // The test answers every command as the participants would, and records them.
    let mut consumers = Vec::new();
    for p in participants {
        let q = topology.command_queue(p);
        transport.declare(&q).await.expect("declare");
        consumers.push((
            p,
            transport
                .consume(
                    &q,
                    ConsumeOptions {
                        prefetch: 16,
                        poll_wait: Duration::from_millis(20),
                    },
                )
                .await
                .expect("consume"),
        ));
    }
    let mut seen: Vec<(String, Operation)> = Vec::new();
    let patience = Instant::now() + Duration::from_secs(10);
    let mut answered_a = false;
    loop {
        for (p, c) in consumers.iter_mut() {
            for d in c.next_batch(16).await.expect("next batch") {
                let env = Envelope::decode(&d.payload).expect("command");
                assert_eq!(env.saga_id, id);
                seen.push((p.to_string(), env.operation));
                let reply = env.reply(*p, Outcome::Ok);
                transport
                    .publish(&topology.reply_queue(), OutgoingMessage::new(reply.encode()))
                    .await
                    .expect("reply");
                d.ack().await.expect("ack");
            }
        }
        let state = coord_b.saga(id).await.expect("view").expect("saga").state;
        if state != SagaState::Trying && !answered_a {
            answered_a = true;
            // B has decided; now the paused A wakes past the try deadline.
            let policy = machine::Policy::default();
            let late = stale.saga.try_deadline + 1;
            let t = machine::apply(&stale.saga, &Event::Tick, late, &policy).expect("tick");
            assert_eq!(t.saga.state, SagaState::Cancelling, "A's stale copy decides cancel");
            let txn = db_a.begin().await.expect("begin");
            let loaded = store::load(&txn, &[id]).await.expect("load")[&id].clone();
            assert!(loaded.version > stale.version, "B moved the saga on");
            let saved = store::save(&txn, &routing(), &stale, &t.saga, &t.actions, late)
                .await
                .expect("save");
            txn.commit().await.expect("commit");
            assert!(!saved, "A's stale cancel must be refused");
        }
        if state == SagaState::Confirmed {
            break;
        }
        assert!(Instant::now() < patience, "saga not confirmed in 10 s: {state}");
    }
    assert!(answered_a, "A never tried its stale transition");
    let view = coord_b.saga(id).await.expect("view").expect("saga");
    assert_eq!(view.state, SagaState::Confirmed);
    assert!(view.reason.is_none());
    assert!(view.branches.iter().all(|b| b.state == "confirmed"), "{view:?}");
    assert!(
        view.timeline
            .iter()
            .all(|e| !(e.kind == "decided" && e.detail.starts_with("cancel"))),
        "{:?}",
        view.timeline
    );
    // Drain whatever is still queued (resends), then: no cancel was ever sent.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (p, c) in consumers.iter_mut() {
        for d in c.next_batch(64).await.expect("next batch") {
            let env = Envelope::decode(&d.payload).expect("command");
            seen.push((p.to_string(), env.operation));
            d.ack().await.expect("ack");
        }
    }
    let outbox_left = outbox::Entity::find()
        .filter(outbox::Column::SagaId.eq(id.to_string()))
        .all(&db_b)
        .await
        .expect("outbox");
    for row in &outbox_left {
        let env = Envelope::decode(row.payload.as_bytes()).expect("envelope");
        seen.push((row.queue.clone(), env.operation));
    }
    assert!(
        seen.iter().all(|(_, op)| *op != Operation::Cancel),
        "a cancel was sent: {seen:?}"
    );
    for p in participants {
        assert!(seen.contains(&(p.to_string(), Operation::Confirm)), "{seen:?}");
    }
    for (name, r) in tasks_b.shutdown().await {
        r.unwrap_or_else(|e| panic!("coordinator B task {name}: {e}"));
    }
    let _ = db_a.close().await;
    let _ = db_b.close().await;
}
