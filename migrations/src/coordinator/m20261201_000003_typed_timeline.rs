//! Typed timeline columns on `saga_events`, beside the human-readable `detail`: the
//! command an entry is about (`operation`, `attempt`: its send number), how it turned
//! out (`outcome`), why (`reason`: a refusal, a failure, a cancel's cause) and who
//! caused it (`actor`). Readers query these instead of parsing `detail`.
//!
//! Nullable, so rows written before this migration (or by an older coordinator during
//! a rolling upgrade) still read: with the fields absent. One `ALTER TABLE` per column,
//! as SQLite allows only one change per statement.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum SagaEvents {
    Table,
    Operation,
    Attempt,
    Outcome,
    Reason,
    Actor,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let columns = [
            ColumnDef::new(SagaEvents::Operation).string_len(16).null().to_owned(),
            ColumnDef::new(SagaEvents::Attempt).integer().null().to_owned(),
            ColumnDef::new(SagaEvents::Outcome).string_len(16).null().to_owned(),
            ColumnDef::new(SagaEvents::Reason).text().null().to_owned(),
            // `participant:<name>`, names being at most 64 characters.
            ColumnDef::new(SagaEvents::Actor).string_len(128).null().to_owned(),
        ];
        for column in columns {
            manager
                .alter_table(Table::alter().table(SagaEvents::Table).add_column(column).to_owned())
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [
            SagaEvents::Actor,
            SagaEvents::Reason,
            SagaEvents::Outcome,
            SagaEvents::Attempt,
            SagaEvents::Operation,
        ] {
            manager
                .alter_table(Table::alter().table(SagaEvents::Table).drop_column(column).to_owned())
                .await?;
        }
        Ok(())
    }
}
