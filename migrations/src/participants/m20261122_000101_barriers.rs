//! The barrier table (SPEC §3): one row per (saga, branch, operation) a participant
//! has answered, holding that answer so a redelivered command gets the same reply.
//!
//! The primary key is what makes the barrier safe under concurrent PostgreSQL
//! transactions: two workers handling the same command both insert the same key, and
//! the second waits for the first and then finds its row. A cancel also inserts the
//! branch's `try` key (as rejected, "cancelled before try") when no try ran, so a late
//! try and its cancel contend on one key instead of missing each other.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Barriers {
    Table,
    SagaId,
    BranchId,
    Operation,
    Outcome,
    Reason,
    CreatedAtMs,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Barriers::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Barriers::SagaId).string_len(36).not_null())
                    .col(ColumnDef::new(Barriers::BranchId).integer().not_null())
                    .col(ColumnDef::new(Barriers::Operation).string_len(16).not_null())
                    // "ok" | "rejected"; retryable answers are never stored.
                    .col(ColumnDef::new(Barriers::Outcome).string_len(16).not_null())
                    .col(ColumnDef::new(Barriers::Reason).text().null())
                    .col(ColumnDef::new(Barriers::CreatedAtMs).big_integer().not_null())
                    .primary_key(
                        Index::create()
                            .col(Barriers::SagaId)
                            .col(Barriers::BranchId)
                            .col(Barriers::Operation),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Barriers::Table).if_exists().to_owned())
            .await
    }
}
