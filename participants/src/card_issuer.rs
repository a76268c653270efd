//! `card-issuer`: cards with a credit limit. try places an authorization hold within
//! the open-to-buy (`credit_limit - held - captured`); confirm captures it; cancel
//! releases it.

use crate::Error;
use crate::ledger::{self, Audit, DEMO_ACCOUNTS, DEMO_BALANCE, DEMO_CURRENCY, HoldState};
use crate::sdk::barrier::count_barrier_records;
use crate::sdk::{BranchRef, BusinessError, Participant, async_trait, now_ms};
use kessai_messages::payment::{CARD_ISSUER, CardAuthorization, Currency};
use sea_orm::ActiveValue::Set;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ColumnTrait, DatabaseConnection, DatabaseTransaction, EntityTrait, QueryFilter};

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
        let currency = Currency::new(DEMO_CURRENCY).map_err(|e| Error::Invalid(e.to_string()))?;
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
        let cards = card::Entity::find().all(db).await?;
        let holds = card_hold::Entity::find().all(db).await?;
        let (effects, branch_effects) = Audit::collect_holds(
            CARD_ISSUER,
            holds.into_iter().map(|h| (h.saga_id, h.branch_id, h.state, h.amount)),
        )?;
        Ok(Audit {
            participant: CARD_ISSUER,
            effects,
            branch_effects,
            moved: ledger::total(CARD_ISSUER, "captured", cards.iter().map(|c| c.captured))?,
            reserved: ledger::total(CARD_ISSUER, "held", cards.iter().map(|c| c.held))?,
            barrier_records: count_barrier_records(db).await?,
        })
    }

    /// One card, for tests and SRE tools.
    pub async fn card(db: &DatabaseConnection, card_id: &str) -> Result<Option<card::Model>, Error> {
        Ok(card::Entity::find_by_id(card_id.to_owned()).one(db).await?)
    }

    /// Why the conditional hold matched no row.
    async fn refusal(txn: &DatabaseTransaction, auth: &CardAuthorization) -> Result<BusinessError, BusinessError> {
        let Some(c) = card::Entity::find_by_id(auth.card_id.clone()).one(txn).await? else {
            return Ok(BusinessError::rejected(format!("unknown card {}", auth.card_id)));
        };
        if c.currency != auth.currency.as_str() {
            return Ok(BusinessError::rejected(format!(
                "currency mismatch: card {} is in {}, payment is in {}",
                auth.card_id, c.currency, auth.currency
            )));
        }
        Ok(BusinessError::rejected("credit limit exceeded"))
    }

    async fn hold_of(txn: &DatabaseTransaction, branch: &BranchRef) -> Result<Option<card_hold::Model>, BusinessError> {
        Ok(card_hold::Entity::find_by_id((branch.saga_key(), branch.branch_key()))
            .one(txn)
            .await?)
    }

    /// Moves the branch's authorization hold from `reserved` to `to` and returns it, in
    /// one statement; `None` if no hold of this branch was reserved (the rare case: the
    /// caller then reads the hold to say why).
    async fn settle(
        txn: &DatabaseTransaction,
        branch: &BranchRef,
        to: HoldState,
    ) -> Result<Option<card_hold::Model>, BusinessError> {
        let update = card_hold::Entity::update_many()
            .col_expr(card_hold::Column::State, Expr::value(to))
            .col_expr(card_hold::Column::UpdatedAtMs, Expr::value(now_ms()))
            .filter(card_hold::Column::SagaId.eq(branch.saga_key()))
            .filter(card_hold::Column::BranchId.eq(branch.branch_key()))
            .filter(card_hold::Column::State.eq(HoldState::Reserved));
        Ok(ledger::update_returning(txn, update).await?)
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
        let open_to_buy = Expr::col(card::Column::CreditLimit)
            .sub(Expr::col(card::Column::Held))
            .sub(Expr::col(card::Column::Captured));
        let held = card::Entity::update_many()
            .col_expr(card::Column::Held, Expr::col(card::Column::Held).add(auth.amount))
            .filter(card::Column::CardId.eq(auth.card_id.as_str()))
            .filter(card::Column::Currency.eq(auth.currency.as_str()))
            .filter(open_to_buy.gte(auth.amount))
            .exec(txn)
            .await?;
        if held.rows_affected != 1 {
            return Err(Self::refusal(txn, auth).await?);
        }
        card_hold::Entity::insert(card_hold::ActiveModel {
            saga_id: Set(branch.saga_key()),
            branch_id: Set(branch.branch_key()),
            card_id: Set(auth.card_id.clone()),
            amount: Set(auth.amount),
            state: Set(HoldState::Reserved),
            updated_at_ms: Set(now_ms()),
        })
        .exec_without_returning(txn)
        .await?;
        Ok(())
    }

    async fn confirm(
        &self,
        txn: &DatabaseTransaction,
        branch: &BranchRef,
        _: &CardAuthorization,
    ) -> Result<(), BusinessError> {
        let Some(hold) = Self::settle(txn, branch, HoldState::Committed).await? else {
            return match Self::hold_of(txn, branch).await?.map(|h| h.state) {
                None => Err(BusinessError::rejected(format!(
                    "no authorization hold for branch {branch}"
                ))),
                Some(HoldState::Committed) => Ok(()),
                Some(HoldState::Released) => Err(BusinessError::rejected("authorization was already released")),
                Some(HoldState::Reserved) => Err(BusinessError::retryable("authorization hold changed concurrently")),
            };
        };
        let captured = card::Entity::update_many()
            .col_expr(card::Column::Held, Expr::col(card::Column::Held).sub(hold.amount))
            .col_expr(
                card::Column::Captured,
                Expr::col(card::Column::Captured).add(hold.amount),
            )
            .filter(card::Column::CardId.eq(hold.card_id.as_str()))
            .filter(card::Column::Held.gte(hold.amount))
            .exec(txn)
            .await?;
        if captured.rows_affected != 1 {
            return Err(BusinessError::rejected(format!(
                "ledger inconsistent: card {} holds less than authorization {branch}",
                hold.card_id
            )));
        }
        Ok(())
    }

    async fn cancel(
        &self,
        txn: &DatabaseTransaction,
        branch: &BranchRef,
        _: &CardAuthorization,
    ) -> Result<(), BusinessError> {
        let Some(hold) = Self::settle(txn, branch, HoldState::Released).await? else {
            return match Self::hold_of(txn, branch).await?.map(|h| h.state) {
                // Nothing was held, so there is nothing to release.
                None | Some(HoldState::Released) => Ok(()),
                Some(HoldState::Committed) => Err(BusinessError::rejected("authorization was already captured")),
                Some(HoldState::Reserved) => Err(BusinessError::retryable("authorization hold changed concurrently")),
            };
        };
        let released = card::Entity::update_many()
            .col_expr(card::Column::Held, Expr::col(card::Column::Held).sub(hold.amount))
            .filter(card::Column::CardId.eq(hold.card_id.as_str()))
            .filter(card::Column::Held.gte(hold.amount))
            .exec(txn)
            .await?;
        if released.rows_affected != 1 {
            return Err(BusinessError::rejected(format!(
                "ledger inconsistent: card {} holds less than authorization {branch}",
                hold.card_id
            )));
        }
        Ok(())
    }
}
