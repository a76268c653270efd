//! The barrier table (docs/GUARANTEES.md#barrier): one row per (saga, branch, operation) a participant
//! has answered, holding that answer so a redelivered command gets the same reply.
//!
//! The primary key is what makes the barrier safe under concurrent PostgreSQL
//! transactions: two workers handling the same command both insert the same key, and
//! the second waits for the first and then finds its row. A cancel also inserts the
//! branch's `try` key (as rejected, "cancelled before try") when no try ran, so a late
//! try and its cancel contend on one key instead of missing each other.

use crate::schema;
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
                schema::table(Barriers::Table)
                    .col(schema::saga_id(Barriers::SagaId))
                    .col(schema::branch_id(Barriers::BranchId))
                    .col(schema::state_name(Barriers::Operation))
                    // "ok" | "rejected"; retryable answers are never stored.
                    .col(schema::state_name(Barriers::Outcome))
                    .col(ColumnDef::new(Barriers::Reason).text().null())
                    .col(schema::big_integer(Barriers::CreatedAtMs))
                    .primary_key(
                        Index::create()
                            .col(Barriers::SagaId)
                            .col(Barriers::BranchId)
                            .col(Barriers::Operation),
                    )
                    .take(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        schema::drop_tables(manager, [Barriers::Table.into_iden()]).await
    }
}
