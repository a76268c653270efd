//! Sagas, their branches, the event log and the outbox.
//!
//! Times are Unix milliseconds in BIGINT columns: portable across SQLite and
//! PostgreSQL and comparable between coordinator processes.

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
                Table::create()
                    .table(Sagas::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Sagas::Id).string_len(36).not_null().primary_key())
                    .col(ColumnDef::new(Sagas::Kind).string_len(32).not_null())
                    .col(
                        ColumnDef::new(Sagas::IdempotencyKey)
                            .string_len(255)
                            .null()
                            .unique_key(),
                    )
                    .col(ColumnDef::new(Sagas::State).string_len(16).not_null())
                    .col(ColumnDef::new(Sagas::Version).big_integer().not_null())
                    .col(ColumnDef::new(Sagas::Stuck).boolean().not_null().default(false))
                    .col(ColumnDef::new(Sagas::TryDeadlineMs).big_integer().not_null())
                    .col(ColumnDef::new(Sagas::WakeAtMs).big_integer().null())
                    .col(ColumnDef::new(Sagas::CreatedAtMs).big_integer().not_null())
                    .col(ColumnDef::new(Sagas::UpdatedAtMs).big_integer().not_null())
                    .col(ColumnDef::new(Sagas::FinishedAtMs).big_integer().null())
                    .col(ColumnDef::new(Sagas::Reason).text().null())
                    .col(ColumnDef::new(Sagas::Request).text().not_null())
                    .col(ColumnDef::new(Sagas::TraceId).string_len(32).null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("idx_sagas_wake_at")
                    .table(Sagas::Table)
                    .col(Sagas::WakeAtMs)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("idx_sagas_state")
                    .table(Sagas::Table)
                    .col(Sagas::State)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Branches::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Branches::SagaId).string_len(36).not_null())
                    .col(ColumnDef::new(Branches::BranchId).integer().not_null())
                    .col(ColumnDef::new(Branches::Participant).string_len(64).not_null())
                    .col(ColumnDef::new(Branches::Payload).text().not_null())
                    .col(ColumnDef::new(Branches::State).string_len(16).not_null())
                    .col(ColumnDef::new(Branches::Attempt).integer().not_null())
                    .col(ColumnDef::new(Branches::ResendAtMs).big_integer().null())
                    .col(ColumnDef::new(Branches::LastError).text().null())
                    .col(ColumnDef::new(Branches::UpdatedAtMs).big_integer().not_null())
                    .primary_key(Index::create().col(Branches::SagaId).col(Branches::BranchId))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(SagaEvents::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(SagaEvents::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(SagaEvents::SagaId).string_len(36).not_null())
                    .col(ColumnDef::new(SagaEvents::AtMs).big_integer().not_null())
                    .col(ColumnDef::new(SagaEvents::Kind).string_len(32).not_null())
                    .col(ColumnDef::new(SagaEvents::BranchId).integer().null())
                    .col(ColumnDef::new(SagaEvents::Detail).text().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("idx_saga_events_saga")
                    .table(SagaEvents::Table)
                    .col(SagaEvents::SagaId)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Outbox::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(Outbox::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Outbox::SagaId).string_len(36).not_null())
                    .col(ColumnDef::new(Outbox::Queue).string_len(255).not_null())
                    .col(ColumnDef::new(Outbox::Payload).text().not_null())
                    .col(ColumnDef::new(Outbox::Headers).text().not_null())
                    .col(ColumnDef::new(Outbox::CreatedAtMs).big_integer().not_null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for t in [
            Outbox::Table.into_iden(),
            SagaEvents::Table.into_iden(),
            Branches::Table.into_iden(),
            Sagas::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(t).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}
