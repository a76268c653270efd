//! Sagas, their branches, the event log and the outbox.
//!
//! Times are Unix milliseconds in BIGINT columns: portable across SQLite and
//! PostgreSQL and comparable between coordinator processes.

use crate::schema;
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Sagas {
    Table,
    Id,
    Kind,
    IdempotencyKey,
    State,
    Version,
    Stuck,
    TryDeadlineMs,
    WakeAtMs,
    CreatedAtMs,
    UpdatedAtMs,
    FinishedAtMs,
    Reason,
    Request,
    TraceId,
}

#[derive(DeriveIden)]
enum Branches {
    Table,
    SagaId,
    BranchId,
    Participant,
    Payload,
    State,
    Attempt,
    ResendAtMs,
    LastError,
    UpdatedAtMs,
}

#[derive(DeriveIden)]
enum SagaEvents {
    Table,
    Id,
    SagaId,
    AtMs,
    Kind,
    BranchId,
    Detail,
}

#[derive(DeriveIden)]
enum Outbox {
    Table,
    Id,
    SagaId,
    Queue,
    Payload,
    Headers,
    CreatedAtMs,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                schema::table(Sagas::Table)
                    .col(schema::saga_id(Sagas::Id).primary_key())
                    .col(ColumnDef::new(Sagas::Kind).string_len(32).not_null())
                    .col(
                        ColumnDef::new(Sagas::IdempotencyKey)
                            .string_len(255)
                            .null()
                            .unique_key(),
                    )
                    .col(schema::state_name(Sagas::State))
                    .col(schema::big_integer(Sagas::Version))
                    .col(ColumnDef::new(Sagas::Stuck).boolean().not_null().default(false))
                    .col(schema::big_integer(Sagas::TryDeadlineMs))
                    .col(ColumnDef::new(Sagas::WakeAtMs).big_integer().null())
                    .col(schema::big_integer(Sagas::CreatedAtMs))
                    .col(schema::big_integer(Sagas::UpdatedAtMs))
                    .col(ColumnDef::new(Sagas::FinishedAtMs).big_integer().null())
                    .col(ColumnDef::new(Sagas::Reason).text().null())
                    .col(ColumnDef::new(Sagas::Request).text().not_null())
                    .col(ColumnDef::new(Sagas::TraceId).string_len(32).null())
                    .take(),
            )
            .await?;
        schema::create_index(manager, "idx_sagas_wake_at", Sagas::Table, Sagas::WakeAtMs).await?;
        schema::create_index(manager, "idx_sagas_state", Sagas::Table, Sagas::State).await?;
        manager
            .create_table(
                schema::table(Branches::Table)
                    .col(schema::saga_id(Branches::SagaId))
                    .col(schema::branch_id(Branches::BranchId))
                    .col(ColumnDef::new(Branches::Participant).string_len(64).not_null())
                    .col(ColumnDef::new(Branches::Payload).text().not_null())
                    .col(schema::state_name(Branches::State))
                    .col(ColumnDef::new(Branches::Attempt).integer().not_null())
                    .col(ColumnDef::new(Branches::ResendAtMs).big_integer().null())
                    .col(ColumnDef::new(Branches::LastError).text().null())
                    .col(schema::big_integer(Branches::UpdatedAtMs))
                    .primary_key(Index::create().col(Branches::SagaId).col(Branches::BranchId))
                    .take(),
            )
            .await?;
        manager
            .create_table(
                schema::table(SagaEvents::Table)
                    .col(schema::serial_id(SagaEvents::Id))
                    .col(schema::saga_id(SagaEvents::SagaId))
                    .col(schema::big_integer(SagaEvents::AtMs))
                    .col(ColumnDef::new(SagaEvents::Kind).string_len(32).not_null())
                    .col(ColumnDef::new(SagaEvents::BranchId).integer().null())
                    .col(ColumnDef::new(SagaEvents::Detail).text().not_null())
                    .take(),
            )
            .await?;
        schema::create_index(manager, "idx_saga_events_saga", SagaEvents::Table, SagaEvents::SagaId).await?;
        manager
            .create_table(
                schema::table(Outbox::Table)
                    .col(schema::serial_id(Outbox::Id))
                    .col(schema::saga_id(Outbox::SagaId))
                    .col(ColumnDef::new(Outbox::Queue).string_len(255).not_null())
                    .col(ColumnDef::new(Outbox::Payload).text().not_null())
                    .col(ColumnDef::new(Outbox::Headers).text().not_null())
                    .col(schema::big_integer(Outbox::CreatedAtMs))
                    .take(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let tables = [
            Outbox::Table.into_iden(),
            SagaEvents::Table.into_iden(),
            Branches::Table.into_iden(),
            Sagas::Table.into_iden(),
        ];
        schema::drop_tables(manager, tables).await
    }
}
