//! `sagas.client`: the API client (its token's name) that submitted the saga, `NULL`
//! for sagas submitted in-process (the embedded demo, the benchmark) or before this
//! migration. Idempotency keys are scoped to it, clients with only the `submit` scope
//! read only their own sagas, and SREs filter on it.
//!
//! Nullable, so rows written before it, or by an older coordinator during a rolling
//! upgrade, stay valid.

use crate::schema;
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Sagas {
    Table,
    Client,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let client = ColumnDef::new(Sagas::Client).string_len(128).null().take();
        schema::add_column(manager, Sagas::Table, client).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(Table::alter().table(Sagas::Table).drop_column(Sagas::Client).to_owned())
            .await
    }
}
