//! `sagas.trace_parent`: the W3C `traceparent` of the span that submitted the saga.
//! Every later span of the saga (the commands the coordinator dispatches, the replies it
//! handles, the saga's end) is made a child of it, so one saga is one trace across all
//! services and restarts. `sagas.trace_id`, already there, holds its trace id for SREs.
//!
//! Nullable: sagas from before tracing, or submitted with tracing off, have none.

use crate::schema;
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Sagas {
    Table,
    TraceParent,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let column = ColumnDef::new(Sagas::TraceParent).string_len(64).null().take();
        schema::add_column(manager, Sagas::Table, column).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Sagas::Table)
                    .drop_column(Sagas::TraceParent)
                    .to_owned(),
            )
            .await
    }
}
