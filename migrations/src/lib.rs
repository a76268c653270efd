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

impl Service {
    pub async fn migrate(self, db: &DatabaseConnection) -> Result<(), DbErr> {
        match self {
            Service::Coordinator => CoordinatorMigrator::up(db, None).await,
            Service::Balance => BalanceMigrator::up(db, None).await,
            Service::CardIssuer => CardIssuerMigrator::up(db, None).await,
            Service::Bank => BankMigrator::up(db, None).await,
        }
    }
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
        options
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
    let db = connect(url, max_connections).await?;
    service.migrate(&db).await?;
    Ok(db)
}
