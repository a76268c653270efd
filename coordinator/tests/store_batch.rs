//! The store's batched writes on real databases: `insert_many` and `save_many` write
//! a whole batch in a few statements, and `save_many` still refuses, item by item, a
//! transition computed from a stale copy of its saga.
//!
//! Every case runs on a fresh SQLite file, and on a fresh PostgreSQL database
//! (`kcs_<random>`, dropped afterwards, `kessai_testkit::database`) when the server is
//! reachable; without one the
//! PostgreSQL half is skipped with a note, or fails when `KESSAI_REQUIRE_SERVICES=1`.

use kessai_coordinator::SagaState;
use kessai_coordinator::machine::{self, Action, Event, Saga};
use kessai_coordinator::store::entities::{outbox, saga, saga_event};
use kessai_coordinator::store::{self, Loaded, NewSaga, Routing};
use kessai_messages::{BranchId, Envelope, Operation, Outcome, SagaId};
use kessai_migrations::Service;
use kessai_testkit::{on_scratch_postgres, scratch_sqlite};
use kessai_transport::Topology;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    Statement, TransactionTrait,
};
use std::future::Future;

const NOW: i64 = 1_700_000_000_000;

fn routing() -> Routing {
    Routing {
        topology: Topology::default(),
    }
}

/// Runs `body` on a fresh, migrated SQLite file.
async fn on_sqlite<F, Fut>(body: F)
where
    F: FnOnce(DatabaseConnection) -> Fut,
    Fut: Future<Output = ()>,
{
    let (_dir, db) = scratch_sqlite(Service::Coordinator).await;
    body(db.clone()).await;
    db.close().await.expect("close");
}

/// Runs `body` on a fresh, migrated PostgreSQL database, dropped afterwards even when
/// `body` panics; skipped (after a note) when the server is unreachable.
async fn on_postgres<F, Fut>(body: F)
where
    F: FnOnce(DatabaseConnection) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    on_scratch_postgres("kcs_", Service::Coordinator, 2, body).await;
}

/// `n` new three-branch sagas as an intake would build them; every other one has an
/// idempotency key.
fn new_sagas(n: usize) -> Vec<(NewSaga, Saga, Vec<Action>)> {
    let policy = machine::Policy::default();
    (0..n)
        .map(|i| {
            let branches: Vec<(String, serde_json::Value)> = ["alpha", "beta", "gamma"]
                .iter()
                .map(|p| (p.to_string(), serde_json::json!({ "amount": i })))
                .collect();
            let (saga, actions) = Saga::new(SagaId::new(), branches.clone(), NOW, NOW + 60_000, &policy);
            let new = NewSaga {
                client: None,
                kind: "generic".into(),
                idempotency_key: (i % 2 == 0).then(|| format!("key-{i}-{}", saga.id)),
                request: serde_json::json!({ "i": i }).to_string(),
                branches,
                try_timeout_ms: 60_000,
                trace_parent: None,
            };
            (new, saga, actions)
        })
        .collect()
}

async fn insert_all(db: &DatabaseConnection, sagas: &[(NewSaga, Saga, Vec<Action>)]) {
    let items: Vec<(&NewSaga, &Saga, &[Action])> = sagas.iter().map(|(n, s, a)| (n, s, a.as_slice())).collect();
    let txn = db.begin().await.expect("begin");
    store::insert_many(&txn, &routing(), &items, NOW)
        .await
        .expect("insert_many");
    txn.commit().await.expect("commit");
}

fn sends(actions: &[Action]) -> usize {
    actions.iter().filter(|a| matches!(a, Action::Send { .. })).count()
}

fn logs(actions: &[Action]) -> usize {
    actions.iter().filter(|a| matches!(a, Action::Log(_))).count()
}

/// A reply to attempt 1 of `operation` on `branch`.
type Reply = (u32, Operation, Outcome);

/// `before` with `replies` applied: the saga after, and everything to write with it.
fn transition(before: &Loaded, replies: &[Reply], now: i64) -> (Saga, Vec<Action>) {
    let policy = machine::Policy::default();
    let start = (before.saga.clone(), Vec::new());
    replies
        .iter()
        .fold(start, |(saga, mut actions), (branch, operation, outcome)| {
            let event = Event::Reply {
                participant: saga.branches[*branch as usize].participant.clone(),
                branch: BranchId(*branch),
                operation: *operation,
                attempt: 1,
                outcome: outcome.clone(),
            };
            let t = machine::apply(&saga, &event, now, &policy).expect("apply");
            actions.extend(t.actions);
            (t.saga, actions)
        })
}

async fn save_all(db: &DatabaseConnection, items: &[(&Loaded, &Saga, &[Action])], now: i64) -> Vec<bool> {
    let txn = db.begin().await.expect("begin");
    let saved = store::save_many(&txn, &routing(), items, now).await.expect("save_many");
    txn.commit().await.expect("commit");
    saved
}

/// The commands in the outbox for saga `id`, in relay order: (operation, branch).
async fn outbox_of(db: &DatabaseConnection, id: SagaId) -> Vec<(Operation, u32)> {
    let rows = outbox::Entity::find()
        .filter(outbox::Column::SagaId.eq(id.to_string()))
        .order_by_asc(outbox::Column::Id)
        .all(db)
        .await
        .expect("outbox");
    let envelopes = rows
        .iter()
        .map(|row| Envelope::decode(row.payload.as_bytes()).expect("outbox envelope"));
    envelopes.map(|env| (env.operation, env.branch_id.0)).collect()
}

async fn events_of(db: &DatabaseConnection, id: SagaId) -> usize {
    saga_event::Entity::find()
        .filter(saga_event::Column::SagaId.eq(id.to_string()))
        .count(db)
        .await
        .expect("events") as usize
}

/// Everything stored about a saga that a save may change.
async fn snapshot(db: &DatabaseConnection, id: SagaId) -> (store::SagaView, Vec<(Operation, u32)>) {
    let view = store::view(db, id).await.expect("view").expect("saga exists");
    (view, outbox_of(db, id).await)
}

/// One batch inserts every saga with its branches, timeline and commands, in order.
async fn insert_many_writes_the_batch(db: DatabaseConnection) {
    let sagas = new_sagas(5);
    insert_all(&db, &sagas).await;
    for (new, saga, actions) in &sagas {
        let view = store::view(&db, saga.id).await.expect("view").expect("inserted");
        assert_eq!(view.state, SagaState::Trying);
        assert_eq!(view.version, 1);
        assert_eq!(view.idempotency_key, new.idempotency_key);
        assert_eq!(view.wake_at_ms, saga.wake_at());
        assert_eq!(view.finished_at_ms, None);
        assert_eq!(view.branches.len(), 3);
        assert!(view.branches.iter().all(|b| b.state == "trying" && b.attempt == 1));
        assert_eq!(view.timeline.len(), logs(actions));
        let commands = outbox_of(&db, saga.id).await;
        assert_eq!(commands.len(), sends(actions));
        assert!(commands.iter().all(|(op, _)| *op == Operation::Try));
        assert_eq!(store::state_of(&db, saga.id).await.unwrap(), Some(SagaState::Trying));
    }
    // The relay publishes in id order: the batch's order.
    let order: Vec<String> = outbox::Entity::find()
        .order_by_asc(outbox::Column::Id)
        .all(&db)
        .await
        .expect("outbox")
        .into_iter()
        .map(|r| r.saga_id)
        .collect();
    let expected: Vec<String> = sagas
        .iter()
        .flat_map(|(_, s, a)| std::iter::repeat_n(s.id.to_string(), sends(a)))
        .collect();
    assert_eq!(order, expected);
    let keys: Vec<String> = sagas.iter().filter_map(|(n, _, _)| n.idempotency_key.clone()).collect();
    assert_eq!(store::existing(&db, &keys).await.unwrap().len(), 3);
    assert_eq!(store::state_of(&db, SagaId::new()).await.unwrap(), None);
}

/// In one batch of several sagas, `save_many` saves exactly those still at the
/// version they were loaded at, and refuses the stale one without writing anything
/// for it.
async fn save_many_refuses_only_the_stale(db: DatabaseConnection) {
    let sagas = new_sagas(4);
    insert_all(&db, &sagas).await;
    let ids: Vec<SagaId> = sagas.iter().map(|(_, s, _)| s.id).collect();
    let loaded = store::load(&db, &ids).await.expect("load");
    assert_eq!(loaded.len(), 4);

    // Another writer moves saga 2 on after it was loaded.
    let stale = &loaded[&ids[2]];
    let (other, other_actions) = transition(stale, &[(1, Operation::Try, Outcome::Ok)], NOW + 5);
    assert!(save_all(&db, &[(stale, &other, &other_actions)], NOW + 5).await == [true]);
    let before_stale = snapshot(&db, ids[2]).await;
    assert_eq!(before_stale.0.version, 2);

    // Saga 0 is confirmed (try ok ×3, then confirm ok ×3), saga 1 is rejected (cancels),
    // saga 2 is stale, saga 3 has one branch prepared.
    let now = NOW + 10;
    let ok = Outcome::Ok;
    let finishing = [
        (0, Operation::Try, ok.clone()),
        (1, Operation::Try, ok.clone()),
        (2, Operation::Try, ok.clone()),
        (0, Operation::Confirm, ok.clone()),
        (1, Operation::Confirm, ok.clone()),
        (2, Operation::Confirm, ok.clone()),
    ];
    let rejected = [(
        1,
        Operation::Try,
        Outcome::Rejected {
            reason: "insufficient funds".into(),
        },
    )];
    let transitions = [
        transition(&loaded[&ids[0]], &finishing, now),
        transition(&loaded[&ids[1]], &rejected, now),
        transition(stale, &[(0, Operation::Try, ok.clone())], now),
        transition(&loaded[&ids[3]], &[(2, Operation::Try, ok)], now),
    ];
    assert_eq!(transitions[0].0.state, SagaState::Confirmed);
    assert_eq!(transitions[1].0.state, SagaState::Cancelling);
    let mut before = Vec::new();
    for id in &ids {
        before.push((events_of(&db, *id).await, outbox_of(&db, *id).await.len()));
    }
    let items: Vec<(&Loaded, &Saga, &[Action])> = ids
        .iter()
        .zip(&transitions)
        .map(|(id, (s, a))| (&loaded[id], s, a.as_slice()))
        .collect();
    let saved = save_all(&db, &items, now).await;
    assert_eq!(saved, [true, true, false, true]);

    // The stale saga: nothing changed, no timeline entry, no command.
    assert_eq!(snapshot(&db, ids[2]).await.0.version, before_stale.0.version);
    let after_stale = snapshot(&db, ids[2]).await;
    assert_eq!(after_stale.0.branches[0].state, "trying");
    assert_eq!(after_stale.0.timeline.len(), before_stale.0.timeline.len());
    assert_eq!(after_stale.1, before_stale.1);
    assert_eq!(after_stale.0.updated_at_ms, before_stale.0.updated_at_ms);

    // The saved ones: everything written.
    for (i, id) in ids.iter().enumerate() {
        if i == 2 {
            continue;
        }
        let (saga, actions) = &transitions[i];
        let (view, commands) = snapshot(&db, *id).await;
        assert_eq!(view.version, 2, "saga {i}");
        assert_eq!(view.state, saga.state, "saga {i}");
        assert_eq!(view.stuck, saga.stuck, "saga {i}");
        assert_eq!(view.reason, saga.reason, "saga {i}");
        assert_eq!(view.wake_at_ms, saga.wake_at(), "saga {i}");
        assert_eq!(view.updated_at_ms, now, "saga {i}");
        for (b, stored) in saga.branches.iter().zip(&view.branches) {
            assert_eq!(stored.state, b.state.name(), "saga {i} branch {}", b.id.0);
            assert_eq!(stored.last_error, b.last_error, "saga {i} branch {}", b.id.0);
            assert_eq!(
                stored.resend_at_ms,
                b.state.waiting().map(|(_, _, at)| at),
                "saga {i} branch {}",
                b.id.0
            );
        }
        assert_eq!(view.timeline.len(), before[i].0 + logs(actions), "saga {i}");
        assert_eq!(commands.len(), before[i].1 + sends(actions), "saga {i}");
        assert_eq!(store::state_of(&db, *id).await.unwrap(), Some(saga.state));
    }
    // Only the finishing transition stamps finished_at; NULLs elsewhere stay NULL.
    let finished: Vec<Option<i64>> = futures::future::join_all(ids.iter().map(|id| store::view(&db, *id)))
        .await
        .into_iter()
        .map(|v| v.unwrap().unwrap().finished_at_ms)
        .collect();
    assert_eq!(finished, [Some(now), None, None, None]);
    let (finished_view, _) = snapshot(&db, ids[0]).await;
    assert_eq!(finished_view.wake_at_ms, None);
    let (cancelling, commands) = snapshot(&db, ids[1]).await;
    assert_eq!(cancelling.branches[1].last_error.as_deref(), Some("insufficient funds"));
    assert!(commands.iter().any(|(op, _)| *op == Operation::Cancel));

    // A later save that does not finish keeps finished_at as it was.
    let reloaded = store::load(&db, &[ids[0]]).await.expect("load");
    let l0 = &reloaded[&ids[0]];
    let mut flagged = l0.saga.clone();
    flagged.stuck = true;
    assert!(save_all(&db, &[(l0, &flagged, &[])], now + 1).await == [true]);
    let view = store::view(&db, ids[0]).await.unwrap().unwrap();
    assert!(view.stuck);
    assert_eq!(view.finished_at_ms, Some(now));
    assert_eq!(view.version, 3);
}

/// The same saga twice in one batch at one version: the first lands, the second is
/// refused, as two saves in a row would be.
async fn save_many_same_saga_twice(db: DatabaseConnection) {
    let sagas = new_sagas(2);
    insert_all(&db, &sagas).await;
    let ids: Vec<SagaId> = sagas.iter().map(|(_, s, _)| s.id).collect();
    let loaded = store::load(&db, &ids).await.expect("load");
    let first = transition(&loaded[&ids[0]], &[(0, Operation::Try, Outcome::Ok)], NOW + 1);
    let second = transition(&loaded[&ids[0]], &[(1, Operation::Try, Outcome::Ok)], NOW + 1);
    let other = transition(&loaded[&ids[1]], &[(2, Operation::Try, Outcome::Ok)], NOW + 1);
    let events_before = events_of(&db, ids[0]).await;
    let items: Vec<(&Loaded, &Saga, &[Action])> = vec![
        (&loaded[&ids[0]], &first.0, &first.1),
        (&loaded[&ids[1]], &other.0, &other.1),
        (&loaded[&ids[0]], &second.0, &second.1),
    ];
    assert_eq!(save_all(&db, &items, NOW + 1).await, [true, true, false]);
    let view = store::view(&db, ids[0]).await.unwrap().unwrap();
    assert_eq!(view.version, 2);
    assert_eq!(view.branches[0].state, "prepared");
    assert_eq!(view.branches[1].state, "trying");
    assert_eq!(view.timeline.len(), events_before + logs(&first.1));
}

/// A batch past the bound-parameter limit is split into several statements, and
/// still writes (and then saves) every saga.
async fn big_batches_are_split(db: DatabaseConnection) {
    // 4500 sagas: 63000 saga parameters and 121500 branch parameters to insert, 31500
    // to update; each more than one statement may carry.
    let n = 4500;
    let sagas = new_sagas(n);
    insert_all(&db, &sagas).await;
    assert_eq!(saga::Entity::find().count(&db).await.unwrap(), n as u64);
    let expected_outbox: usize = sagas.iter().map(|(_, _, a)| sends(a)).sum();
    assert_eq!(store::outbox_len(&db).await.unwrap(), expected_outbox as u64);
    let ids: Vec<SagaId> = sagas.iter().map(|(_, s, _)| s.id).collect();
    let loaded = store::load(&db, &ids).await.expect("load");
    assert_eq!(loaded.len(), n);
    let transitions: Vec<(Saga, Vec<Action>)> = ids
        .iter()
        .map(|id| transition(&loaded[id], &[(0, Operation::Try, Outcome::Ok)], NOW + 1))
        .collect();
    let items: Vec<(&Loaded, &Saga, &[Action])> = ids
        .iter()
        .zip(&transitions)
        .map(|(id, (s, a))| (&loaded[id], s, a.as_slice()))
        .collect();
    let saved = save_all(&db, &items, NOW + 1).await;
    assert!(saved.iter().all(|s| *s));
    let reloaded = store::load(&db, &ids).await.expect("load");
    assert!(
        reloaded
            .values()
            .all(|l| l.version == 2 && l.saga.branches[0].state == machine::BranchState::Prepared)
    );
}

#[tokio::test]
async fn sqlite_bundles_update_from_and_returning() {
    on_sqlite(|db| async move {
        assert_eq!(db.get_database_backend(), DbBackend::Sqlite);
        let row = db
            .query_one_raw(Statement::from_string(DbBackend::Sqlite, "SELECT sqlite_version()"))
            .await
            .unwrap()
            .unwrap();
        let version: String = row.try_get_by_index(0).unwrap();
        let parts: Vec<u32> = version.split('.').map(|p| p.parse().unwrap()).collect();
        // UPDATE ... FROM needs 3.33, RETURNING 3.35.
        assert!(parts[0] > 3 || (parts[0] == 3 && parts[1] >= 35), "SQLite {version}");
        eprintln!("SQLite {version}");
    })
    .await;
}

#[tokio::test]
async fn insert_many_on_sqlite() {
    on_sqlite(insert_many_writes_the_batch).await;
}

#[tokio::test]
async fn insert_many_on_postgres() {
    on_postgres(insert_many_writes_the_batch).await;
}

#[tokio::test]
async fn save_many_refuses_stale_on_sqlite() {
    on_sqlite(save_many_refuses_only_the_stale).await;
}

#[tokio::test]
async fn save_many_refuses_stale_on_postgres() {
    on_postgres(save_many_refuses_only_the_stale).await;
}

#[tokio::test]
async fn save_many_same_saga_twice_on_sqlite() {
    on_sqlite(save_many_same_saga_twice).await;
}

#[tokio::test]
async fn save_many_same_saga_twice_on_postgres() {
    on_postgres(save_many_same_saga_twice).await;
}

#[tokio::test]
async fn big_batches_on_sqlite() {
    on_sqlite(big_batches_are_split).await;
}

#[tokio::test]
async fn big_batches_on_postgres() {
    on_postgres(big_batches_are_split).await;
}

/// The point of batching: a batch costs a fixed number of statements, whatever its
/// size. Counted with sea-orm's per-statement metric callback (transactions inherit
/// it from the connection).
#[tokio::test]
async fn a_batch_costs_four_statements() {
    use std::sync::{Arc, Mutex};
    let (_dir, mut db) = scratch_sqlite(Service::Coordinator).await;
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    {
        let seen = seen.clone();
        db.set_metric_callback(move |info| seen.lock().unwrap().push(info.statement.sql.clone()));
    }
    let taken = |seen: &Arc<Mutex<Vec<String>>>| std::mem::take(&mut *seen.lock().unwrap());

    let sagas = new_sagas(50);
    insert_all(&db, &sagas).await;
    let statements = taken(&seen);
    assert_eq!(statements.len(), 4, "insert_many of 50 sagas: {statements:#?}");
    assert!(statements.iter().all(|s| s.starts_with("INSERT")));

    let ids: Vec<SagaId> = sagas.iter().map(|(_, s, _)| s.id).collect();
    let loaded = store::load(&db, &ids).await.expect("load");
    assert_eq!(taken(&seen).len(), 2, "load: one query for sagas, one for branches");
    // Every branch prepares: each saga decides to confirm, logs and sends confirms.
    let all_ok = [
        (0, Operation::Try, Outcome::Ok),
        (1, Operation::Try, Outcome::Ok),
        (2, Operation::Try, Outcome::Ok),
    ];
    let transitions: Vec<(Saga, Vec<Action>)> =
        ids.iter().map(|id| transition(&loaded[id], &all_ok, NOW + 1)).collect();
    let items: Vec<(&Loaded, &Saga, &[Action])> = ids
        .iter()
        .zip(&transitions)
        .map(|(id, (s, a))| (&loaded[id], s, a.as_slice()))
        .collect();
    assert!(save_all(&db, &items, NOW + 1).await.iter().all(|s| *s));
    let statements = taken(&seen);
    assert_eq!(statements.len(), 4, "save_many of 50 sagas: {statements:#?}");
    assert!(statements[0].starts_with("WITH") && statements[0].contains("UPDATE sagas"));
    assert!(statements[1].starts_with("WITH") && statements[1].contains("UPDATE branches"));
    assert_eq!(store::state_of(&db, ids[0]).await.unwrap(), Some(SagaState::Confirming));
    assert_eq!(taken(&seen).len(), 1, "state_of: one query");
}
