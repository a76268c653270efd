//! `balance`'s ledger: wallets and the freezes a try places on them.
//!
//! A wallet's money is `available + frozen`; `opening` is what it was seeded with, so
//! `opening - (available + frozen)` is what confirmed payments took from it.

use super::non_negative;
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone)]
enum Wallets {
    Table,
    AccountId,
    Currency,
    Opening,
    Available,
    Frozen,
}

#[derive(DeriveIden)]
enum WalletFreezes {
    Table,
    SagaId,
    BranchId,
    AccountId,
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
                    .table(Wallets::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Wallets::AccountId).string().not_null().primary_key())
                    .col(ColumnDef::new(Wallets::Currency).string_len(3).not_null())
                    .col(ColumnDef::new(Wallets::Opening).big_integer().not_null())
                    .col(
                        ColumnDef::new(Wallets::Available)
                            .big_integer()
                            .not_null()
                            .check(non_negative("wallets_available", Wallets::Available)),
                    )
                    .col(
                        ColumnDef::new(Wallets::Frozen)
                            .big_integer()
                            .not_null()
                            .default(0)
                            .check(non_negative("wallets_frozen", Wallets::Frozen)),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(WalletFreezes::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(WalletFreezes::SagaId).string_len(36).not_null())
                    .col(ColumnDef::new(WalletFreezes::BranchId).integer().not_null())
                    .col(ColumnDef::new(WalletFreezes::AccountId).string().not_null())
                    .col(ColumnDef::new(WalletFreezes::Amount).big_integer().not_null())
                    .col(ColumnDef::new(WalletFreezes::State).string_len(16).not_null())
                    .col(ColumnDef::new(WalletFreezes::UpdatedAtMs).big_integer().not_null())
                    .primary_key(Index::create().col(WalletFreezes::SagaId).col(WalletFreezes::BranchId))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for t in [WalletFreezes::Table.into_iden(), Wallets::Table.into_iden()] {
            manager
                .drop_table(Table::drop().table(t).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}
