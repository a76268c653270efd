//! `bank`'s ledger: the issuers' settlement accounts and the transfers reserved on
//! them. A frozen account refuses new transfers (the demo's failure injection uses one).

use crate::schema;
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// `settlement_accounts`: the columns [`schema::account_table`] does not add.
#[derive(DeriveIden, Clone)]
enum SettlementAccounts {
    Table,
    AccountId,
    Opening,
    Balance,
    Reserved,
    Frozen,
}

/// `transfers`: the column naming the account; [`schema::hold_table`] adds the rest.
#[derive(DeriveIden)]
enum Transfers {
    Table,
    SettlementAccount,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                schema::account_table(SettlementAccounts::Table, SettlementAccounts::AccountId)
                    .col(schema::big_integer(SettlementAccounts::Opening))
                    .col(schema::non_negative("settlement_balance", SettlementAccounts::Balance))
                    .col(schema::non_negative("settlement_reserved", SettlementAccounts::Reserved).default(0))
                    .col(
                        ColumnDef::new(SettlementAccounts::Frozen)
                            .boolean()
                            .not_null()
                            .default(false),
                    )
                    .take(),
            )
            .await?;
        manager
            .create_table(schema::hold_table(Transfers::Table, Transfers::SettlementAccount))
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let tables = [Transfers::Table.into_iden(), SettlementAccounts::Table.into_iden()];
        schema::drop_tables(manager, tables).await
    }
}
