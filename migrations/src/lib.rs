//! # kessai-migrations — one schema per service
//!
//! Every service owns its own database; no table is shared. Each has its own migrator,
//! written with sea-query's schema builder so the same migration runs on SQLite and on
//! PostgreSQL.
//!
//! ## Layout
//! - [`coordinator`]: sagas, branches, the saga event log (the SRE timeline) and the
//!   transactional outbox.
//! - [`participants`]: the barrier table every participant has, and the ledgers of the
//!   reference participants (balance, card-issuer, bank).
//! - [`connect`]: opens a service's database with the settings kessai relies on
//!   (SQLite: WAL, `synchronous=FULL`, one writer connection; timeouts on everything,
//!   see [`DbTimeouts`]) and migrates it.

pub mod coordinator;
pub mod participants;
mod schema;

/// For participants outside this crate that write their own migrations.
pub use sea_orm_migration;
pub use sea_orm_migration::MigratorTrait;
use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectOptions, Database, DatabaseConnection};
use std::time::Duration;

pub use coordinator::Migrator as CoordinatorMigrator;
pub use participants::{BalanceMigrator, BankMigrator, CardIssuerMigrator};

/// Which service's schema a database holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    Coordinator,
    Balance,
    CardIssuer,
    Bank,
}

/// How long connecting to PostgreSQL, or waiting for a pooled connection, may take
/// before the call fails. A healthy server connects in milliseconds; the pool waits
/// only while every connection is busy, which past this long means the database (or
/// a leak) is stuck, not that it is busy. The error is retryable, and the HTTP API
/// answers 503 instead of holding the request.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest any one PostgreSQL statement may run (`statement_timeout`, set for every
/// session). kessai's statements touch a handful of rows by key and take
/// milliseconds; one still running after this is stuck behind something, and
/// cancelling it turns a hung request or task into a retryable error.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest a PostgreSQL statement may wait for a lock (`lock_timeout`, every session).
/// The locks kessai takes (saga rows `FOR UPDATE`) are held by short write
/// transactions, so a wait this long means the holder is stuck. Shorter than
/// [`STATEMENT_TIMEOUT`] so the error names the lock.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// Statement and lock bound of the session migrations run on. A migration may
/// rewrite or index a large table, and it waits for another process's migration to
/// finish (the advisory lock), so it gets far longer than a request does; but not
/// forever: a wedged server fails the start-up instead of hanging it.
pub const MIGRATION_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// How long an SQLite statement waits for another connection's lock on the file
/// (`busy_timeout`) before failing with `SQLITE_BUSY`. kessai opens one connection per
/// database, so this is only another process (a backup, an operator's shell)
/// touching the file.
pub const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Bounds on database calls, so a hung database turns into a (retryable) error
/// instead of a request or task that waits forever. [`connect`] uses the defaults
/// (the constants above); [`connect_with`] takes others (tests, tools).
///
/// On SQLite the one connection is never waited for with a bound: waiting for it is
/// queueing behind the single writer, not a fault (and a bound would fire spuriously
/// in tests on tokio's paused clock, which jumps ahead while SQLite works on its
/// thread). SQLite has no statement timeout; its statements run in-process and only
/// wait on file locks, which `sqlite_busy` bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DbTimeouts {
    /// Connecting, and waiting for a free pooled connection (PostgreSQL). sea-orm
    /// hands both to sqlx's pool acquire timeout, which also covers opening a new
    /// connection.
    pub acquire: Duration,
    /// PostgreSQL `statement_timeout`; zero means none.
    pub statement: Duration,
    /// PostgreSQL `lock_timeout`; zero means none.
    pub lock: Duration,
    /// SQLite `busy_timeout`.
    pub sqlite_busy: Duration,
}

impl Default for DbTimeouts {
    fn default() -> Self {
        Self {
            acquire: ACQUIRE_TIMEOUT,
            statement: STATEMENT_TIMEOUT,
            lock: LOCK_TIMEOUT,
            sqlite_busy: SQLITE_BUSY_TIMEOUT,
        }
    }
}

impl DbTimeouts {
    /// The bounds of the session migrations run on ([`MIGRATION_TIMEOUT`]).
    pub fn migrations() -> Self {
        Self {
            statement: MIGRATION_TIMEOUT,
            lock: MIGRATION_TIMEOUT,
            ..Self::default()
        }
    }

    /// `statement_timeout` and `lock_timeout` as PostgreSQL session settings, each
    /// left out where `existing` (the URL's own `options`) already sets it: an
    /// operator's setting in the URL wins.
    fn postgres_settings(&self, existing: Option<&str>) -> Vec<(&'static str, String)> {
        let existing = existing.unwrap_or("");
        [("statement_timeout", self.statement), ("lock_timeout", self.lock)]
            .into_iter()
            .filter(|(name, _)| !existing.contains(name))
            .map(|(name, bound)| (name, format!("{}ms", bound.as_millis())))
            .collect()
    }
}

/// Opens `url` (`sqlite://path?mode=rwc` or `postgres://...`) with the default
/// [`DbTimeouts`].
///
/// SQLite gets WAL with `synchronous=FULL` (every commit is fsynced: durability is not
/// traded for speed) and a single pooled connection: SQLite has one writer anyway, and
/// one connection avoids `SQLITE_BUSY` upgrade failures between pooled writers.
/// PostgreSQL gets a pool of `max_connections`.
pub async fn connect(url: &str, max_connections: u32) -> Result<DatabaseConnection, DbErr> {
    connect_with(url, max_connections, DbTimeouts::default()).await
}

/// [`connect`] with other [`DbTimeouts`].
pub async fn connect_with(url: &str, max_connections: u32, timeouts: DbTimeouts) -> Result<DatabaseConnection, DbErr> {
    let mut options = ConnectOptions::new(url.to_owned());
    options.sqlx_logging(false);
    if url.starts_with("sqlite:") {
        use sea_orm_migration::sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
        // Waiting for the one connection is queueing behind the single writer, not a
        // fault: no short acquire timeout (see `DbTimeouts`).
        options
            .connect_timeout(Duration::from_secs(3600))
            .acquire_timeout(Duration::from_secs(3600))
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .map_sqlx_sqlite_opts(move |o| {
                o.create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Full)
                    .busy_timeout(timeouts.sqlite_busy)
            });
    } else {
        options
            .max_connections(Ord::max(max_connections, 1))
            .connect_timeout(timeouts.acquire)
            .acquire_timeout(timeouts.acquire)
            // Sent in the startup packet: every session of the pool has them from its
            // first statement on, with no extra round trip.
            .map_sqlx_postgres_opts(move |o| {
                let settings = timeouts.postgres_settings(o.get_options());
                o.options(settings)
            });
    }
    Database::connect(options).await
}

/// A `sqlite://` URL for a database file, created if missing.
pub fn sqlite_url(path: &std::path::Path) -> String {
    format!("sqlite://{}?mode=rwc", path.display())
}

/// Opens and migrates a service's database.
pub async fn open(url: &str, service: Service, max_connections: u32) -> Result<DatabaseConnection, DbErr> {
    match service {
        Service::Coordinator => open_migrated::<CoordinatorMigrator>(url, max_connections).await,
        Service::Balance => open_migrated::<BalanceMigrator>(url, max_connections).await,
        Service::CardIssuer => open_migrated::<CardIssuerMigrator>(url, max_connections).await,
        Service::Bank => open_migrated::<BankMigrator>(url, max_connections).await,
    }
}

/// [`open`] for any service's migrator `M` (a registered participant's own).
pub async fn open_migrated<M: MigratorTrait>(url: &str, max_connections: u32) -> Result<DatabaseConnection, DbErr> {
    let db = connect(url, max_connections).await?;
    if db.get_database_backend() == sea_orm_migration::sea_orm::DbBackend::Postgres {
        migrate_locked::<M>(url).await?;
    } else {
        // SQLite: one writer per file anyway (and one connection per service).
        M::up(&db, None).await?;
    }
    Ok(db)
}

/// Key of the PostgreSQL advisory lock held while migrating ("kessai").
const MIGRATION_LOCK: i64 = 0x6b65_7373_6169;

/// Migrates under a session advisory lock, on a connection of its own: several
/// processes of one service (coordinators sharing a database) may start together,
/// and two migrators creating the same tables at once would fail one of them.
async fn migrate_locked<M: MigratorTrait>(url: &str) -> Result<(), DbErr> {
    use sea_orm_migration::sea_orm::ConnectionTrait;
    let session = connect_with(url, 1, DbTimeouts::migrations()).await?;
    session
        .execute_unprepared(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"))
        .await?;
    let migrated = M::up(&session, None).await;
    let unlocked = session
        .execute_unprepared(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})"))
        .await;
    // Closing the session releases the lock in any case.
    let _ = session.close().await;
    migrated?;
    unlocked.map(|_| ())
}

/// `server` (`postgres://user@host:port`, no database) with `database` appended.
pub fn postgres_database_url(server: &str, database: &str) -> String {
    format!("{}/{}", server.trim_end_matches('/'), database)
}

fn check_database_name(database: &str) -> Result<(), DbErr> {
    if database.is_empty()
        || database.len() > 63
        || !database
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(DbErr::Custom(format!(
            "database name {database:?} must be 1-63 characters of a-z, 0-9 and _"
        )));
    }
    Ok(())
}

/// Creates `database` on the PostgreSQL `server` if it does not exist. Setup, not a
/// migration: a service's database must exist before its migrator can run.
pub async fn ensure_postgres_database(server: &str, database: &str) -> Result<(), DbErr> {
    use sea_orm_migration::sea_orm::{ConnectionTrait, Statement};
    check_database_name(database)?;
    let admin = connect(&postgres_database_url(server, "postgres"), 1).await?;
    let exists = admin
        .query_one_raw(Statement::from_sql_and_values(
            sea_orm_migration::sea_orm::DbBackend::Postgres,
            "SELECT 1 FROM pg_database WHERE datname = $1",
            [database.into()],
        ))
        .await?
        .is_some();
    if !exists {
        // Two processes may race here; losing the race is fine.
        // The loser sees 42P04 (`already exists`) or, when both passed PostgreSQL's
        // own check at once, a unique violation on `pg_database`.
        if let Err(e) = admin
            .execute_unprepared(&format!("CREATE DATABASE \"{database}\""))
            .await
            && !e.to_string().contains("already exists")
            && !matches!(
                e.sql_err(),
                Some(sea_orm_migration::sea_orm::SqlErr::UniqueConstraintViolation(_))
            )
        {
            return Err(e);
        }
    }
    admin.close().await
}

/// Drops `database` on the PostgreSQL `server` if it exists (tests, `demo`).
pub async fn drop_postgres_database(server: &str, database: &str) -> Result<(), DbErr> {
    use sea_orm_migration::sea_orm::ConnectionTrait;
    check_database_name(database)?;
    let admin = connect(&postgres_database_url(server, "postgres"), 1).await?;
    admin
        .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"))
        .await?;
    admin.close().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_sessions_get_both_bounds_unless_the_url_sets_them() {
        let timeouts = DbTimeouts {
            statement: Duration::from_millis(1_500),
            lock: Duration::from_secs(2),
            ..DbTimeouts::default()
        };
        assert_eq!(
            timeouts.postgres_settings(None),
            vec![
                ("statement_timeout", "1500ms".into()),
                ("lock_timeout", "2000ms".into())
            ]
        );
        assert_eq!(
            timeouts.postgres_settings(Some("-c statement_timeout=5min")),
            vec![("lock_timeout", "2000ms".to_owned())]
        );
        assert!(
            timeouts
                .postgres_settings(Some("-c lock_timeout=0 -c statement_timeout=0"))
                .is_empty()
        );
    }

    #[test]
    fn migrations_get_longer_bounds_than_requests() {
        let migrations = DbTimeouts::migrations();
        assert!(migrations.statement > STATEMENT_TIMEOUT && migrations.lock > LOCK_TIMEOUT);
        assert_eq!(migrations.acquire, ACQUIRE_TIMEOUT);
        assert!(LOCK_TIMEOUT < STATEMENT_TIMEOUT);
    }
}
