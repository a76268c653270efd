//! `balance`'s ledger: wallets and the freezes a try places on them.
//!
//! A wallet's money is `available + frozen`; `opening` is what it was seeded with, so
//! `opening - (available + frozen)` is what confirmed payments took from it.

use crate::schema;
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// `wallets`: the columns [`schema::account_table`] does not add.
#[derive(DeriveIden, Clone)]
enum Wallets {
    Table,
    AccountId,
    Opening,
    Available,
    Frozen,
}

/// `wallet_freezes`: the column naming the account; [`schema::hold_table`] adds the rest.
#[derive(DeriveIden)]
enum WalletFreezes {
    Table,
    AccountId,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                schema::account_table(Wallets::Table, Wallets::AccountId)
                    .col(schema::big_integer(Wallets::Opening))
                    .col(schema::non_negative("wallets_available", Wallets::Available))
                    .col(schema::non_negative("wallets_frozen", Wallets::Frozen).default(0))
                    .take(),
            )
            .await?;
        manager
            .create_table(schema::hold_table(WalletFreezes::Table, WalletFreezes::AccountId))
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        schema::drop_tables(manager, [WalletFreezes::Table.into_iden(), Wallets::Table.into_iden()]).await
    }
}
