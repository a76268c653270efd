//! `card-issuer`'s ledger: cards with a credit limit and the authorization holds on
//! them. Open to buy is `credit_limit - held - captured`.

use crate::schema;
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// `cards`: the columns [`schema::account_table`] does not add.
#[derive(DeriveIden, Clone)]
enum Cards {
    Table,
    CardId,
    CreditLimit,
    Held,
    Captured,
}

/// `card_holds`: the column naming the account; [`schema::hold_table`] adds the rest.
#[derive(DeriveIden)]
enum CardHolds {
    Table,
    CardId,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                schema::account_table(Cards::Table, Cards::CardId)
                    .col(schema::non_negative("cards_credit_limit", Cards::CreditLimit))
                    .col(schema::non_negative("cards_held", Cards::Held).default(0))
                    .col(schema::non_negative("cards_captured", Cards::Captured).default(0))
                    .take(),
            )
            .await?;
        manager
            .create_table(schema::hold_table(CardHolds::Table, CardHolds::CardId))
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        schema::drop_tables(manager, [CardHolds::Table.into_iden(), Cards::Table.into_iden()]).await
    }
}
