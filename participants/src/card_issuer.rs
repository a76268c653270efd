//! `card-issuer`: cards with a credit limit. try places an authorization hold within
//! the open-to-buy (`credit_limit - held - captured`); confirm captures it; cancel
//! releases it.

use crate::Error;
use crate::ledger::{self, Adjust, Audit, DEMO_ACCOUNTS, DEMO_BALANCE, HoldLedger, HoldWords, Settlement};
use crate::sdk::{BranchRef, BusinessError, Participant, async_trait};
use kessai_messages::payment::{CARD_ISSUER, CardAuthorization, Currency};
use sea_orm::ActiveValue::Set;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ColumnTrait, DatabaseConnection, DatabaseTransaction, EntityTrait, QueryFilter, UpdateMany};

/// The `cards` and `card_holds` tables.
pub mod entity {
    pub mod card {
        use sea_orm::entity::prelude::*;

        #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
        #[sea_orm(table_name = "cards")]
        pub struct Model {
            #[sea_orm(primary_key, auto_increment = false)]
            pub card_id: String,
            pub currency: String,
            pub credit_limit: i64,
            /// Σ of this card's reserved authorization holds.
            pub held: i64,
            /// Σ of captured (confirmed) authorizations: the money that moved.
            pub captured: i64,
        }

        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}

        impl ActiveModelBehavior for ActiveModel {}
    }

    pub mod card_hold {
        use crate::ledger::HoldState;
        use sea_orm::entity::prelude::*;

        #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
        #[sea_orm(table_name = "card_holds")]
        pub struct Model {
            #[sea_orm(primary_key, auto_increment = false)]
            pub saga_id: String,
            #[sea_orm(primary_key, auto_increment = false)]
            pub branch_id: i32,
            pub card_id: String,
            /// What try authorised: confirm and cancel use this, not their payload.
            pub amount: i64,
            pub state: HoldState,
            pub updated_at_ms: i64,
        }

        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}

        impl ActiveModelBehavior for ActiveModel {}
    }
}

use entity::{card, card_hold};

/// A card to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CardSeed {
    pub card_id: String,
    pub currency: Currency,
    pub credit_limit: i64,
}

/// The `card-issuer` reference participant.
#[derive(Clone, Copy, Debug, Default)]
pub struct CardIssuerParticipant;

impl CardIssuerParticipant {
    pub fn new() -> Self {
        Self
    }

    /// Creates cards with nothing held or captured (existing card ids are left
    /// untouched). Returns how many were created.
    pub async fn seed(db: &DatabaseConnection, cards: impl IntoIterator<Item = CardSeed>) -> Result<u64, Error> {
        let mut rows = Vec::new();
        for c in cards {
            ledger::check_seed_amount(CARD_ISSUER, &c.card_id, "credit_limit", c.credit_limit)?;
            rows.push(card::ActiveModel {
                card_id: Set(c.card_id),
                currency: Set(c.currency.as_str().to_owned()),
                credit_limit: Set(c.credit_limit),
                held: Set(0),
                captured: Set(0),
            });
        }
        ledger::seed_rows(db, card::Column::CardId, rows).await
    }

    /// The demo data set: cards `card-1..=card-10000`, each with a [`DEMO_BALANCE`]
    /// EUR credit limit.
    pub async fn seed_demo(db: &DatabaseConnection) -> Result<u64, Error> {
        let currency = ledger::demo_currency()?;
        Self::seed(
            db,
            (1..=DEMO_ACCOUNTS).map(|i| CardSeed {
                card_id: ledger::demo_card_id(i),
                currency: currency.clone(),
                credit_limit: DEMO_BALANCE,
            }),
        )
        .await
    }

    /// Reads the books (see [`Audit`]).
    pub async fn audit(db: &DatabaseConnection) -> Result<Audit, Error> {
        ledger::audit::<Self>(db).await
    }

    /// One card, for tests and SRE tools.
    pub async fn card(db: &DatabaseConnection, card_id: &str) -> Result<Option<card::Model>, Error> {
        Ok(card::Entity::find_by_id(card_id.to_owned()).one(db).await?)
    }
}

impl HoldLedger for CardIssuerParticipant {
    const NAME: &'static str = CARD_ISSUER;
    type Account = card::Entity;
    type Hold = card_hold::Entity;
    const HOLD_ACCOUNT: card_hold::Column = card_hold::Column::CardId;
    const WORDS: HoldWords = HoldWords {
        missing: "authorization hold",
        hold: "authorization hold",
        already_released: "authorization was already released",
        already_committed: "authorization was already captured",
        account: "card",
        shortfall: "holds less than authorization",
    };

    fn request(auth: &CardAuthorization) -> (&str, i64) {
        (&auth.card_id, auth.amount)
    }

    fn held(hold: &card_hold::Model) -> (&str, i64) {
        (&hold.card_id, hold.amount)
    }

    fn reserve(auth: &CardAuthorization) -> UpdateMany<card::Entity> {
        let open_to_buy = Expr::col(card::Column::CreditLimit)
            .sub(Expr::col(card::Column::Held))
            .sub(Expr::col(card::Column::Captured));
        card::Entity::update_many()
            .raise(card::Column::Held, auth.amount)
            .filter(card::Column::CardId.eq(auth.card_id.as_str()))
            .filter(card::Column::Currency.eq(auth.currency.as_str()))
            .filter(open_to_buy.gte(auth.amount))
    }

    fn refusal(card: Option<card::Model>, auth: &CardAuthorization) -> String {
        match card {
            None => format!("unknown card {}", auth.card_id),
            Some(c) if c.currency != auth.currency.as_str() => format!(
                "currency mismatch: card {} is in {}, payment is in {}",
                auth.card_id, c.currency, auth.currency
            ),
            Some(_) => "credit limit exceeded".to_owned(),
        }
    }

    fn commit(card_id: &str, amount: i64) -> UpdateMany<card::Entity> {
        card::Entity::update_many()
            .lower(card::Column::Held, amount)
            .raise(card::Column::Captured, amount)
            .filter(card::Column::CardId.eq(card_id))
            .filter(card::Column::Held.gte(amount))
    }

    fn release(card_id: &str, amount: i64) -> UpdateMany<card::Entity> {
        card::Entity::update_many()
            .lower(card::Column::Held, amount)
            .filter(card::Column::CardId.eq(card_id))
            .filter(card::Column::Held.gte(amount))
    }

    /// Moved: Σcaptured; reserved: Σheld.
    fn books(cards: &[card::Model]) -> Result<(i64, i64), Error> {
        Ok((
            ledger::total(CARD_ISSUER, "captured", cards.iter().map(|c| c.captured))?,
            ledger::total(CARD_ISSUER, "held", cards.iter().map(|c| c.held))?,
        ))
    }
}

#[async_trait]
impl Participant for CardIssuerParticipant {
    type Payload = CardAuthorization;

    fn name(&self) -> &'static str {
        CARD_ISSUER
    }

    async fn try_(
        &self,
        txn: &DatabaseTransaction,
        branch: &BranchRef,
        auth: &CardAuthorization,
    ) -> Result<(), BusinessError> {
        ledger::reserve_hold::<Self>(txn, branch, auth).await
    }

    async fn confirm(
        &self,
        txn: &DatabaseTransaction,
        branch: &BranchRef,
        _: &CardAuthorization,
    ) -> Result<(), BusinessError> {
        ledger::settle_hold::<Self>(txn, branch, Settlement::Commit).await
    }

    async fn cancel(
        &self,
        txn: &DatabaseTransaction,
        branch: &BranchRef,
        _: &CardAuthorization,
    ) -> Result<(), BusinessError> {
        ledger::settle_hold::<Self>(txn, branch, Settlement::Release).await
    }
}
