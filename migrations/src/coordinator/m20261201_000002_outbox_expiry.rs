//! Two nullable outbox columns for the relay: `expires_at_ms`, when the command stops
//! being worth delivering (its resend is due then, so a copy still queued would only be
//! a redundant duplicate — the relay turns it into the message's time-to-live), and
//! `attempt`, the command's send number (so resends can be told from first sends).
//!
//! Nullable, so rows written before this migration — or by an older coordinator during
//! a rolling upgrade — still relay: without an expiry, as before. One `ALTER TABLE` per
//! column, as SQLite allows only one change per statement.

use crate::schema;
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Outbox {
    Table,
    ExpiresAtMs,
    Attempt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let expires_at_ms = ColumnDef::new(Outbox::ExpiresAtMs).big_integer().null().take();
        let attempt = ColumnDef::new(Outbox::Attempt).integer().null().take();
        schema::add_column(manager, Outbox::Table, expires_at_ms).await?;
        schema::add_column(manager, Outbox::Table, attempt).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [Outbox::Attempt, Outbox::ExpiresAtMs] {
            manager
                .alter_table(Table::alter().table(Outbox::Table).drop_column(column).to_owned())
                .await?;
        }
        Ok(())
    }
}
