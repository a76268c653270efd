//! A hung database turns into an error within our bounds, not a call that waits
//! forever: statement and lock timeouts on PostgreSQL, the pool's acquire timeout, the
//! connect timeout against a server that never answers, SQLite's busy timeout.
//!
//! The PostgreSQL tests follow the skip-or-fail rule (`kessai_testkit::require_postgres`)
//! and use the server's `postgres` database without creating anything.

use kessai_migrations::sea_orm_migration::sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement, TransactionTrait,
};
use kessai_migrations::{DbTimeouts, connect, connect_with, postgres_database_url, sqlite_url};
use std::time::{Duration, Instant};

/// Short bounds, so each test takes a second or two.
fn short() -> DbTimeouts {
    DbTimeouts {
        acquire: Duration::from_millis(500),
        statement: Duration::from_millis(300),
        lock: Duration::from_millis(200),
        sqlite_busy: Duration::from_millis(300),
    }
}

/// Well above every bound in [`short`], well below a hang.
const QUICKLY: Duration = Duration::from_secs(5);

fn postgres() -> Option<String> {
    kessai_testkit::require_postgres().then(|| postgres_database_url(&kessai_testkit::postgres_url(), "postgres"))
}

async fn show(db: &DatabaseConnection, setting: &str) -> String {
    let row = db
        .query_one_raw(Statement::from_string(DbBackend::Postgres, format!("SHOW {setting}")))
        .await
        .unwrap()
        .expect("a row");
    row.try_get::<String>("", setting).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cancels_a_statement_past_its_timeout() {
    let Some(url) = postgres() else {
        return;
    };
    let db = connect_with(&url, 1, short()).await.expect("connect");
    let started = Instant::now();
    let slept = db.execute_unprepared("SELECT pg_sleep(20)").await;
    let elapsed = started.elapsed();
    let error = slept.expect_err("pg_sleep(20) must be cancelled");
    assert!(error.to_string().contains("statement timeout"), "{error}");
    assert!(elapsed < QUICKLY, "cancelled only after {elapsed:?}");
    // The session stays usable: the timeout cancels the statement, not the connection.
    db.execute_unprepared("SELECT 1").await.expect("still usable");
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_gives_up_waiting_for_a_lock_past_its_timeout() {
    let Some(url) = postgres() else {
        return;
    };
    let key: i64 = 0x6b65_7373_0000 + i64::from(std::process::id() % 0xffff);
    let holder = connect(&url, 1).await.expect("connect holder");
    holder
        .execute_unprepared(&format!("SELECT pg_advisory_lock({key})"))
        .await
        .unwrap();
    let waiter = connect_with(&url, 1, short()).await.expect("connect waiter");
    let started = Instant::now();
    let waited = waiter
        .execute_unprepared(&format!("SELECT pg_advisory_lock({key})"))
        .await;
    let elapsed = started.elapsed();
    holder
        .execute_unprepared(&format!("SELECT pg_advisory_unlock({key})"))
        .await
        .unwrap();
    let error = waited.expect_err("the lock is held elsewhere");
    assert!(error.to_string().contains("lock timeout"), "{error}");
    assert!(elapsed < QUICKLY, "gave up only after {elapsed:?}");
    holder.close().await.unwrap();
    waiter.close().await.unwrap();
}

/// Every session gets the default bounds, and a URL's own `options` win over them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sessions_carry_the_bounds_unless_the_url_overrides_them() {
    let Some(url) = postgres() else {
        return;
    };
    let db = connect(&url, 2).await.expect("connect");
    assert_eq!(show(&db, "statement_timeout").await, "30s");
    assert_eq!(show(&db, "lock_timeout").await, "10s");
    db.close().await.unwrap();

    let overridden = format!("{url}?options=-c%20statement_timeout%3D5min");
    let db = connect(&overridden, 1).await.expect("connect");
    assert_eq!(show(&db, "statement_timeout").await, "5min");
    assert_eq!(show(&db, "lock_timeout").await, "10s");
    db.close().await.unwrap();
}

/// With every pooled connection taken, a call waits for one only as long as the
/// acquire timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_pool_waits_only_as_long_as_its_acquire_timeout() {
    let Some(url) = postgres() else {
        return;
    };
    let db = connect_with(&url, 1, short()).await.expect("connect");
    let txn = db.begin().await.expect("takes the one connection");
    let started = Instant::now();
    let waited = db.execute_unprepared("SELECT 1").await;
    let elapsed = started.elapsed();
    assert!(matches!(waited, Err(DbErr::ConnectionAcquire(_))), "{waited:?}");
    assert!(elapsed < QUICKLY, "gave up only after {elapsed:?}");
    txn.rollback().await.unwrap();
    db.close().await.unwrap();
}

/// A server that accepts the TCP connection and never answers: connecting fails
/// within the bound. Needs no PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_to_a_silent_server_fails_within_the_bound() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let started = Instant::now();
    let connected = connect_with(&format!("postgres://root@127.0.0.1:{port}/postgres"), 1, short()).await;
    let elapsed = started.elapsed();
    assert!(connected.is_err(), "connected to a server that never answered");
    assert!(elapsed < QUICKLY, "gave up only after {elapsed:?}");
    silent.abort();
}

/// SQLite: a write waits for another connection's write lock only as long as the busy
/// timeout; and `connect` sets the default one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_waits_for_a_locked_file_only_as_long_as_its_busy_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir.path().join("busy.db"));
    let default = connect(&url, 1).await.expect("connect");
    let row = default
        .query_one_raw(Statement::from_string(DbBackend::Sqlite, "PRAGMA busy_timeout"))
        .await
        .unwrap()
        .expect("a row");
    let busy_ms: i64 = row.try_get_by_index(0).unwrap();
    assert_eq!(busy_ms, 30_000);
    default
        .execute_unprepared("CREATE TABLE t (id INTEGER PRIMARY KEY)")
        .await
        .unwrap();

    let waiter = connect_with(&url, 1, short()).await.expect("connect");
    let txn = default.begin().await.unwrap();
    txn.execute_unprepared("INSERT INTO t (id) VALUES (1)").await.unwrap();
    let started = Instant::now();
    let written = waiter.execute_unprepared("INSERT INTO t (id) VALUES (2)").await;
    let elapsed = started.elapsed();
    txn.rollback().await.unwrap();
    let error = written.expect_err("the file is locked by the other connection");
    assert!(error.to_string().contains("locked"), "{error}");
    assert!(
        elapsed >= Duration::from_millis(250),
        "did not wait at all: {elapsed:?}"
    );
    assert!(elapsed < QUICKLY, "gave up only after {elapsed:?}");
    waiter.close().await.unwrap();
    default.close().await.unwrap();
}
