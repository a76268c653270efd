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
//!   (SQLite: WAL, `synchronous=FULL`, one writer connection) and migrates it.

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

/// Opens `url` (`sqlite://path?mode=rwc` or `postgres://...`).
///
/// SQLite gets WAL with `synchronous=FULL` (every commit is fsynced: durability is not
/// traded for speed) and a single pooled connection: SQLite has one writer anyway, and
/// one connection avoids `SQLITE_BUSY` upgrade failures between pooled writers.
/// PostgreSQL gets a pool of `max_connections`.
pub async fn connect(url: &str, max_connections: u32) -> Result<DatabaseConnection, DbErr> {
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .sqlx_logging(false)
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(30));
    if url.starts_with("sqlite:") {
        use sea_orm_migration::sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
        // Waiting for the one connection is queueing behind the single writer, not a
        // fault: no short acquire timeout (one would also fire spuriously in tests on
        // tokio's paused clock, which jumps ahead while SQLite works on its thread).
        options
            .connect_timeout(Duration::from_secs(3600))
            .acquire_timeout(Duration::from_secs(3600))
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .map_sqlx_sqlite_opts(|o| {
                o.create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Full)
                    .busy_timeout(Duration::from_secs(30))
            });
    } else {
        options.max_connections(Ord::max(max_connections, 1));
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
    let session = connect(url, 1).await?;
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
