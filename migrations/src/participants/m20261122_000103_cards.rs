//! `card-issuer`'s ledger: cards with a credit limit and the authorization holds on
//! them. Open to buy is `credit_limit - held - captured`.

use super::non_negative;
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone)]
enum Cards {
    Table,
    CardId,
    Currency,
    CreditLimit,
    Held,
    Captured,
}

#[derive(DeriveIden)]
enum CardHolds {
    Table,
    SagaId,
    BranchId,
    CardId,
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
                    .table(Cards::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Cards::CardId).string().not_null().primary_key())
                    .col(ColumnDef::new(Cards::Currency).string_len(3).not_null())
                    .col(
                        ColumnDef::new(Cards::CreditLimit)
                            .big_integer()
                            .not_null()
                            .check(non_negative("cards_credit_limit", Cards::CreditLimit)),
                    )
                    .col(
                        ColumnDef::new(Cards::Held)
                            .big_integer()
                            .not_null()
                            .default(0)
                            .check(non_negative("cards_held", Cards::Held)),
                    )
                    .col(
                        ColumnDef::new(Cards::Captured)
                            .big_integer()
                            .not_null()
                            .default(0)
                            .check(non_negative("cards_captured", Cards::Captured)),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(CardHolds::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(CardHolds::SagaId).string_len(36).not_null())
                    .col(ColumnDef::new(CardHolds::BranchId).integer().not_null())
                    .col(ColumnDef::new(CardHolds::CardId).string().not_null())
                    .col(ColumnDef::new(CardHolds::Amount).big_integer().not_null())
                    .col(ColumnDef::new(CardHolds::State).string_len(16).not_null())
                    .col(ColumnDef::new(CardHolds::UpdatedAtMs).big_integer().not_null())
                    .primary_key(Index::create().col(CardHolds::SagaId).col(CardHolds::BranchId))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for t in [CardHolds::Table.into_iden(), Cards::Table.into_iden()] {
            manager
                .drop_table(Table::drop().table(t).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}
