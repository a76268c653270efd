//! The typed timeline through a real database: written by `insert`/`save`, read by
//! `view` and `resend_summary`, next to a row from before its columns existed.
//!
//! Runs on a SQLite file, and on a scratch PostgreSQL database when one is reachable
//! (`KESSAI_TEST_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432`).

use super::*;
use crate::machine::{self, Event, Policy};
use kessai_messages::Outcome;
use kessai_migrations::{CoordinatorMigrator, MigratorTrait};
use sea_orm::{DatabaseConnection, TransactionTrait};

const NOW: i64 = 1_700_000_000_000;

fn routing() -> Routing {
    Routing {
        topology: kessai_transport::Topology::default(),
    }
}

/// A test body, given a database migrated up to (not including) the typed timeline
/// columns.
type Scenario = fn(DatabaseConnection) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>;

async fn on_sqlite(scenario: Scenario) {
    let dir = tempfile::tempdir().unwrap();
    let url = kessai_migrations::sqlite_url(&dir.path().join("coordinator.db"));
    let db = kessai_migrations::connect(&url, 1).await.unwrap();
    CoordinatorMigrator::up(&db, Some(2)).await.unwrap();
    scenario(db.clone()).await;
    db.close().await.unwrap();
}

async fn on_postgres(scenario: Scenario) {
    let server =
        std::env::var("KESSAI_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let reachable = server
        .rsplit_once('@')
        .map_or(server.as_str(), |(_, host)| host)
        .parse::<std::net::SocketAddr>()
        .is_ok_and(|addr| std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(1)).is_ok());
    if !reachable {
        eprintln!("PostgreSQL at {server} unreachable: the PostgreSQL half is skipped");
        return;
    }
    let name = format!("kct_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    kessai_migrations::ensure_postgres_database(&server, &name)
        .await
        .unwrap();
    let db = kessai_migrations::connect(&kessai_migrations::postgres_database_url(&server, &name), 1)
        .await
        .unwrap();
    CoordinatorMigrator::up(&db, Some(2)).await.unwrap();
    scenario(db.clone()).await;
    db.close().await.unwrap();
    kessai_migrations::drop_postgres_database(&server, &name).await.unwrap();
}

fn new_saga(participants: &[&str], try_timeout_ms: i64) -> (NewSaga, Saga, Vec<Action>) {
    let branches: Vec<(String, serde_json::Value)> = participants
        .iter()
        .map(|p| (p.to_string(), serde_json::json!({ "amount": 5 })))
        .collect();
    let (saga, actions) = Saga::new(
        SagaId::new(),
        branches.clone(),
        NOW,
        NOW + try_timeout_ms,
        &Policy::default(),
    );
    let new = NewSaga {
        client: None,
        kind: "generic".into(),
        idempotency_key: None,
        request: "{}".into(),
        branches,
        try_timeout_ms,
        trace_parent: None,
    };
    (new, saga, actions)
}

async fn insert_saga(db: &DatabaseConnection, new: &NewSaga, saga: &Saga, actions: &[Action]) {
    let txn = db.begin().await.unwrap();
    insert(&txn, &routing(), new, saga, actions, NOW).await.unwrap();
    txn.commit().await.unwrap();
}

/// Applies `events` to the stored saga `id` at `now` and saves the result.
async fn apply_and_save(db: &DatabaseConnection, id: SagaId, events: &[Event], now: i64) {
    let txn = db.begin().await.unwrap();
    let before = load(&txn, &[id]).await.unwrap().remove(&id).unwrap();
    let mut saga = before.saga.clone();
    let mut actions = Vec::new();
    for event in events {
        let t = machine::apply(&saga, event, now, &Policy::default()).unwrap();
        saga = t.saga;
        actions.extend(t.actions);
    }
    assert!(save(&txn, &routing(), &before, &saga, &actions, now).await.unwrap());
    txn.commit().await.unwrap();
}

/// A timeline row as a coordinator from before the typed columns wrote it.
async fn insert_old_row(db: &DatabaseConnection, saga: SagaId, kind: &str, branch: Option<i32>, detail: &str) {
    let mut sql = Sql::new(db.get_database_backend());
    sql.push("INSERT INTO saga_events (saga_id, at_ms, kind, branch_id, detail) VALUES (");
    sql.bind(saga.to_string().into(), "text");
    sql.push(", ");
    sql.bind(NOW.into(), "bigint");
    sql.push(", ");
    sql.bind(kind.into(), "text");
    sql.push(", ");
    sql.bind(branch.into(), "integer");
    sql.push(", ");
    sql.bind(detail.into(), "text");
    sql.push(")");
    db.execute_raw(sql.statement()).await.unwrap();
}

fn old_row_then_typed_rows(db: DatabaseConnection) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> {
    Box::pin(async move {
        // Before the migration: a saga and an entry of the old shape.
        let (new, saga, actions) = new_saga(&["alpha", "beta"], 10_000);
        let old_schema: Vec<Action> = actions.iter().filter(|a| a.as_send().is_some()).cloned().collect();
        let id = saga.id;
        // The old schema has no typed columns to write: only the commands go in now.
        insert_saga(&db, &new, &saga, &old_schema).await;
        insert_old_row(&db, id, "submitted", None, "2 branches").await;
        CoordinatorMigrator::up(&db, None).await.unwrap();

        // Beta refuses; at the next tick alpha's cancel is resent (it was due).
        let rejected = Event::Reply {
            participant: saga.branches[1].participant.clone(),
            branch: BranchId(1),
            operation: Operation::Try,
            attempt: 1,
            outcome: Outcome::rejected("frozen"),
        };
        apply_and_save(&db, id, &[rejected], NOW + 5).await;
        apply_and_save(&db, id, &[Event::Tick], NOW + 5 + 1_000).await;

        let view = view(&db, id).await.unwrap().unwrap();
        let kinds: Vec<EventKind> = view.timeline.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [
                EventKind::Submitted,
                EventKind::TryRejected,
                EventKind::Decided,
                EventKind::Resent
            ]
        );
        // The old row: its kind read back, the typed fields absent, also in JSON.
        let old = &view.timeline[0];
        assert_eq!(old.kind, "submitted");
        assert_eq!(old.detail, "2 branches");
        assert_eq!(
            (old.operation, old.attempt, old.outcome, &old.reason, &old.actor),
            (None, None, None, &None, &None)
        );
        assert_eq!(
            serde_json::to_value(old).unwrap(),
            serde_json::json!({"at_ms": NOW, "kind": "submitted", "branch_id": null, "detail": "2 branches"})
        );
        // The typed rows.
        let refusal = &view.timeline[1];
        assert_eq!(refusal.branch_id, Some(1));
        assert_eq!(refusal.detail, "frozen");
        assert_eq!((refusal.operation, refusal.attempt), (Some(Operation::Try), Some(1)));
        assert_eq!(refusal.outcome, Some(EventOutcome::Rejected));
        assert_eq!(refusal.reason.as_deref(), Some("frozen"));
        assert_eq!(refusal.actor, Some(Actor::Participant("beta".into())));
        let decided = &view.timeline[2];
        assert!(decided.detail.starts_with("cancel"), "{}", decided.detail);
        assert_eq!(decided.outcome, Some(EventOutcome::Cancel));
        assert_eq!(decided.reason.as_deref(), Some("branch 1 (beta) rejected: frozen"));
        let resent = &view.timeline[3];
        assert_eq!(resent.detail, "cancel send 2 to alpha");
        assert_eq!((resent.operation, resent.attempt), (Some(Operation::Cancel), Some(2)));
        assert_eq!(resent.actor, Some(Actor::Timer));
        assert_eq!(
            serde_json::to_value(resent).unwrap(),
            serde_json::json!({
                "at_ms": NOW + 1_005, "kind": "resent", "branch_id": 0, "detail": "cancel send 2 to alpha",
                "operation": "cancel", "attempt": 2, "actor": "timer",
            })
        );
        // A kind this version does not know is corrupt data, not a blank.
        insert_old_row(&db, id, "exploded", None, "?").await;
        assert!(super::view(&db, id).await.is_err());
    })
}

fn resends_summed_up(db: DatabaseConnection) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> {
    Box::pin(async move {
        CoordinatorMigrator::up(&db, None).await.unwrap();
        assert_eq!(
            resend_summary(&db).await.unwrap(),
            ResendSummary {
                max_attempt: 1,
                most_resent: None,
                most_resent_count: 0
            }
        );
        // Two one-branch sagas whose tries go unanswered: `a` is ticked three times,
        // `b` once; a third saga is never resent.
        let mut ids = Vec::new();
        for _ in 0..3 {
            let (new, saga, actions) = new_saga(&["slow"], 60_000);
            insert_saga(&db, &new, &saga, &actions).await;
            ids.push(saga.id);
        }
        ids.sort();
        // Equal counts go to the smaller id: give the larger one more, then as many.
        let (a, b) = (ids[1], ids[0]);
        let mut now = NOW;
        for _ in 0..3 {
            now += 10_000;
            apply_and_save(&db, a, &[Event::Tick], now).await;
        }
        apply_and_save(&db, b, &[Event::Tick], now).await;
        let summary = resend_summary(&db).await.unwrap();
        assert_eq!(
            summary,
            ResendSummary {
                max_attempt: 4,
                most_resent: Some(a),
                most_resent_count: 3
            }
        );
        // The column holds the plain name: a query by string still finds the entries.
        let by_name = saga_event::Entity::find()
            .filter(saga_event::Column::Kind.eq("resent"))
            .count(&db)
            .await
            .unwrap();
        assert_eq!(by_name, 4);
        // An old-style entry counts for its saga, without a send number.
        for _ in 0..2 {
            insert_old_row(&db, b, "resent", Some(0), "try send 9 to slow").await;
        }
        let summary = resend_summary(&db).await.unwrap();
        assert_eq!(
            summary,
            ResendSummary {
                max_attempt: 4,
                most_resent: Some(b),
                most_resent_count: 3
            }
        );
    })
}

#[tokio::test]
async fn typed_timeline_round_trip_on_sqlite() {
    on_sqlite(old_row_then_typed_rows).await;
}

#[tokio::test]
async fn typed_timeline_round_trip_on_postgres() {
    on_postgres(old_row_then_typed_rows).await;
}

#[tokio::test]
async fn resend_summary_on_sqlite() {
    on_sqlite(resends_summed_up).await;
}

#[tokio::test]
async fn resend_summary_on_postgres() {
    on_postgres(resends_summed_up).await;
}
