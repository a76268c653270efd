//! Scratch databases: a migrated SQLite file in a temp dir, or a migrated PostgreSQL
//! database of its own on the test server ([`postgres_url`]), dropped afterwards.
//!
//! A PostgreSQL server that is not reachable skips the test with a note, or fails it
//! with `KESSAI_REQUIRE_SERVICES=1` (the [`require_service`](crate::require_service)
//! rule).

use crate::services::{postgres_url, require_postgres, unique_name};
use kessai_migrations::{Service, connect, open, sqlite_url};
use sea_orm::{ConnectionTrait, DatabaseConnection};
use std::future::Future;
use tempfile::TempDir;

/// A migrated `service` database in a fresh SQLite file, in a temp dir that the
/// returned [`TempDir`] keeps alive. One connection, as the services use SQLite.
pub async fn scratch_sqlite(service: Service) -> (TempDir, DatabaseConnection) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = sqlite_url(&dir.path().join("scratch.db"));
    let db = open(&url, service, 1).await.expect("open and migrate SQLite");
    (dir, db)
}

/// A PostgreSQL database of one test's own (`<prefix><random>`), migrated for a service.
pub struct ScratchPostgres {
    admin: DatabaseConnection,
    name: String,
    url: String,
    /// A pool on the database.
    pub db: DatabaseConnection,
}

impl ScratchPostgres {
    /// Creates `<prefix><16 random hex digits>` on [`postgres_url`] and opens it with a
    /// pool of `max_connections`, migrated for `service`. `None` (after a skip note)
    /// when the server is not reachable.
    ///
    /// `prefix` is of `a-z`, `0-9` and `_`, at most 47 characters (PostgreSQL keeps 63).
    pub async fn create(prefix: &str, service: Service, max_connections: u32) -> Option<Self> {
        if !require_postgres() {
            return None;
        }
        let server = postgres_url();
        // The server URL may name no database; administration happens in `postgres`.
        let admin = connect(&database_url(&server, "postgres"), 1)
            .await
            .expect("admin connection");
        let name = unique_name(prefix);
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("creating {name}: {e}"));
        let url = database_url(&server, &name);
        let db = open(&url, service, max_connections)
            .await
            .unwrap_or_else(|e| panic!("opening {name}: {e}"));
        Some(Self { admin, name, url, db })
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The database's URL (for a process the test starts).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Closes the pool and drops the database (best effort: a leftover is only noted).
    pub async fn drop_database(self) {
        self.db.close().await.ok();
        if let Err(e) = self
            .admin
            .execute_unprepared(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name))
            .await
        {
            eprintln!("could not drop {}: {e}", self.name);
        }
    }

    /// Runs `body` on the database, then drops it, also when `body` panics (the panic
    /// then carries on once the database is gone).
    pub async fn run<F, Fut>(self, body: F)
    where
        F: FnOnce(DatabaseConnection) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let result = tokio::spawn(body(self.db.clone())).await;
        self.drop_database().await;
        if let Err(e) = result {
            match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(e) => panic!("test body did not finish: {e}"),
            }
        }
    }
}

/// [`ScratchPostgres::create`], then [`ScratchPostgres::run`] `body` on it; nothing when
/// the server is not reachable (after the skip note).
pub async fn on_scratch_postgres<F, Fut>(prefix: &str, service: Service, max_connections: u32, body: F)
where
    F: FnOnce(DatabaseConnection) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    if let Some(scratch) = ScratchPostgres::create(prefix, service, max_connections).await {
        scratch.run(body).await;
    }
}

/// `url` (`postgres://…[/db][?…]`) naming database `name` instead, query kept: works for
/// a server URL without a database and for socket URLs (`postgres:///db?host=/run/…`).
pub fn database_url(url: &str, name: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use std::panic::AssertUnwindSafe;

    #[test]
    fn database_name_is_replaced_in_urls() {
        assert_eq!(
            database_url("postgres:///postgres?host=/var/run/postgresql", "x"),
            "postgres:///x?host=/var/run/postgresql"
        );
        assert_eq!(database_url("postgres://u:p@h:5432/db", "x"), "postgres://u:p@h:5432/x");
        assert_eq!(database_url("postgres://h", "x"), "postgres://h/x");
    }

    #[tokio::test]
    async fn a_scratch_sqlite_database_is_migrated() {
        let (dir, db) = scratch_sqlite(Service::Balance).await;
        assert!(dir.path().join("scratch.db").exists());
        db.execute_unprepared("SELECT count(*) FROM barriers")
            .await
            .expect("migrated");
    }

    #[tokio::test]
    async fn a_scratch_postgres_database_is_dropped_after_a_panic() {
        let Some(scratch) = ScratchPostgres::create("kessai_testkit_", Service::Bank, 1).await else {
            return;
        };
        let name = scratch.name().to_owned();
        let admin = connect(&database_url(&postgres_url(), "postgres"), 1).await.unwrap();
        let exists = |admin: DatabaseConnection, name: String| async move {
            let sql = format!("SELECT 1 FROM pg_database WHERE datname = '{name}'");
            admin
                .query_all_raw(sea_orm::Statement::from_string(admin.get_database_backend(), sql))
                .await
                .unwrap()
                .len()
                == 1
        };
        assert!(exists(admin.clone(), name.clone()).await);
        let ran = AssertUnwindSafe(scratch.run(|_| async { panic!("on purpose") }))
            .catch_unwind()
            .await;
        assert!(ran.is_err(), "the panic carries on");
        assert!(!exists(admin, name).await, "dropped");
    }
}
