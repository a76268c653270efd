//! The coordinator's schema.

use sea_orm_migration::prelude::*;

mod m20261122_000001_sagas;
mod m20261201_000002_outbox_expiry;
mod m20261201_000003_typed_timeline;
mod m20261201_000004_saga_client;
mod m20261201_000005_saga_trace;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261122_000001_sagas::Migration),
            Box::new(m20261201_000002_outbox_expiry::Migration),
            Box::new(m20261201_000003_typed_timeline::Migration),
            Box::new(m20261201_000004_saga_client::Migration),
            Box::new(m20261201_000005_saga_trace::Migration),
        ]
    }
}
