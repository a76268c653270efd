//! `bank`'s ledger: the issuers' settlement accounts and the transfers reserved on
//! them. A frozen account refuses new transfers (the demo's failure injection uses one).

use super::non_negative;
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone)]
enum SettlementAccounts {
    Table,
    AccountId,
    Currency,
    Opening,
    Balance,
    Reserved,
    Frozen,
}

#[derive(DeriveIden)]
enum Transfers {
    Table,
    SagaId,
    BranchId,
    SettlementAccount,
    Amount,
    /// reserved | committed | released
    State,
    UpdatedAtMs,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(SettlementAccounts::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(SettlementAccounts::AccountId)
                            .string()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(SettlementAccounts::Currency).string_len(3).not_null())
                    .col(ColumnDef::new(SettlementAccounts::Opening).big_integer().not_null())
                    .col(
                        ColumnDef::new(SettlementAccounts::Balance)
                            .big_integer()
                            .not_null()
                            .check(non_negative("settlement_balance", SettlementAccounts::Balance)),
                    )
                    .col(
                        ColumnDef::new(SettlementAccounts::Reserved)
                            .big_integer()
                            .not_null()
                            .default(0)
                            .check(non_negative("settlement_reserved", SettlementAccounts::Reserved)),
                    )
                    .col(
                        ColumnDef::new(SettlementAccounts::Frozen)
                            .boolean()
                            .not_null()
                            .default(false),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Transfers::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Transfers::SagaId).string_len(36).not_null())
                    .col(ColumnDef::new(Transfers::BranchId).integer().not_null())
                    .col(ColumnDef::new(Transfers::SettlementAccount).string().not_null())
                    .col(ColumnDef::new(Transfers::Amount).big_integer().not_null())
                    .col(ColumnDef::new(Transfers::State).string_len(16).not_null())
                    .col(ColumnDef::new(Transfers::UpdatedAtMs).big_integer().not_null())
                    .primary_key(Index::create().col(Transfers::SagaId).col(Transfers::BranchId))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for t in [Transfers::Table.into_iden(), SettlementAccounts::Table.into_iden()] {
            manager
                .drop_table(Table::drop().table(t).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}
