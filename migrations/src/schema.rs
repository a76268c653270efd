//! The schema conventions every migration follows, written once: how a saga id, a
//! branch id, a state name, a time or an amount is stored, the hold table every
//! reference participant keeps, and the statements the migrations repeat.
//!
//! Each builder emits exactly the SQL the migrations wrote out by hand before it
//! existed: these migrations are applied in deployed databases, so what they create
//! must not change.

use sea_orm_migration::prelude::*;

/// The columns every hold table has under the same names (see [`hold_table`]).
#[derive(DeriveIden)]
enum Hold {
    SagaId,
    BranchId,
    Amount,
    /// reserved | committed | released
    State,
    UpdatedAtMs,
}

/// The column of an account table holding its currency (see [`account_table`]).
#[derive(DeriveIden)]
enum Account {
    Currency,
}

/// `CREATE TABLE IF NOT EXISTS table`, for the columns to be added to.
pub(crate) fn table(table: impl IntoIden) -> TableCreateStatement {
    Table::create().table(table).if_not_exists().take()
}

/// A saga id: UUID text, `VARCHAR(36) NOT NULL`.
pub(crate) fn saga_id(column: impl IntoIden) -> ColumnDef {
    ColumnDef::new(column).string_len(36).not_null().take()
}

/// A branch id: `INTEGER NOT NULL`.
pub(crate) fn branch_id(column: impl IntoIden) -> ColumnDef {
    ColumnDef::new(column).integer().not_null().take()
}

/// A state, operation or outcome name (`reserved`, `try`, `ok`, ...): `VARCHAR(16) NOT NULL`.
pub(crate) fn state_name(column: impl IntoIden) -> ColumnDef {
    ColumnDef::new(column).string_len(16).not_null().take()
}

/// `BIGINT NOT NULL`: Unix milliseconds, an amount in minor units, a counter.
pub(crate) fn big_integer(column: impl IntoIden) -> ColumnDef {
    ColumnDef::new(column).big_integer().not_null().take()
}

/// An auto-incremented `BIGINT` primary key.
pub(crate) fn serial_id(column: impl IntoIden) -> ColumnDef {
    ColumnDef::new(column)
        .big_integer()
        .not_null()
        .auto_increment()
        .primary_key()
        .take()
}

/// An amount that must not go negative: `BIGINT NOT NULL` with the CHECK constraint
/// `ck_{name}_non_negative`, named so a violation says which column broke.
pub(crate) fn non_negative(name: &str, column: impl IntoIden + Clone + 'static) -> ColumnDef {
    let check = (format!("ck_{name}_non_negative"), Expr::col(column.clone()).gte(0));
    big_integer(column).check(check).take()
}

/// A reference participant's account table: its string id as primary key and its
/// three-letter currency, for the participant's own columns to be added to.
pub(crate) fn account_table(table: impl IntoIden, id: impl IntoIden) -> TableCreateStatement {
    self::table(table)
        .col(ColumnDef::new(id).string().not_null().primary_key())
        .col(ColumnDef::new(Account::Currency).string_len(3).not_null())
        .take()
}

/// A reference participant's hold table: one row per branch whose try reserved an
/// amount on an account (`account`), keyed by saga and branch.
pub(crate) fn hold_table(table: impl IntoIden, account: impl IntoIden) -> TableCreateStatement {
    self::table(table)
        .col(saga_id(Hold::SagaId))
        .col(branch_id(Hold::BranchId))
        .col(ColumnDef::new(account).string().not_null())
        .col(big_integer(Hold::Amount))
        .col(state_name(Hold::State))
        .col(big_integer(Hold::UpdatedAtMs))
        .primary_key(Index::create().col(Hold::SagaId).col(Hold::BranchId))
        .take()
}

/// `CREATE INDEX IF NOT EXISTS name ON table (column)`.
pub(crate) async fn create_index(
    manager: &SchemaManager<'_>,
    name: &str,
    table: impl IntoIden,
    column: impl IntoIden,
) -> Result<(), DbErr> {
    let index = Index::create()
        .if_not_exists()
        .name(name)
        .table(table)
        .col(column)
        .take();
    manager.create_index(index).await
}

/// `ALTER TABLE table ADD COLUMN ...`: one statement per column, as SQLite allows only
/// one change per statement.
pub(crate) async fn add_column(
    manager: &SchemaManager<'_>,
    table: impl IntoIden,
    column: impl IntoColumnDef,
) -> Result<(), DbErr> {
    manager
        .alter_table(Table::alter().table(table).add_column(column).take())
        .await
}

/// `DROP TABLE IF EXISTS`, one table after the other, in the order given.
pub(crate) async fn drop_tables(
    manager: &SchemaManager<'_>,
    tables: impl IntoIterator<Item = DynIden>,
) -> Result<(), DbErr> {
    for table in tables {
        manager
            .drop_table(Table::drop().table(table).if_exists().take())
            .await?;
    }
    Ok(())
}
