//! `bank`: settlement. try reserves a transfer from the issuer's settlement account
//! (refused if the account is frozen or short); confirm executes it (the balance
//! goes down); cancel voids it.

use crate::Error;
use crate::ledger::{self, Audit, DEMO_CURRENCY, DEMO_SETTLEMENT_BALANCE, FROZEN_SETTLEMENT_ACCOUNT, HoldState};
use crate::sdk::barrier::count_barrier_records;
use crate::sdk::{BranchRef, BusinessError, Participant, async_trait, now_ms};
use kessai_messages::payment::{BANK, Currency, DEFAULT_SETTLEMENT_ACCOUNT, SettlementTransfer};
use sea_orm::ActiveValue::Set;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ColumnTrait, DatabaseConnection, DatabaseTransaction, EntityTrait, QueryFilter};

/// The `settlement_accounts` and `transfers` tables.
pub mod entity {
    pub mod settlement_account {
        use sea_orm::entity::prelude::*;

        #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
        #[sea_orm(table_name = "settlement_accounts")]
        pub struct Model {
            #[sea_orm(primary_key, auto_increment = false)]
            pub account_id: String,
            pub currency: String,
            /// What the account was seeded with; the audit's reference point.
            pub opening: i64,
            pub balance: i64,
            /// Σ of this account's reserved transfers (still part of `balance`).
            pub reserved: i64,
            /// A frozen account refuses new transfers; reserved ones still complete.
            pub frozen: bool,
        }

        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}

        impl ActiveModelBehavior for ActiveModel {}
    }

    pub mod transfer {
        use crate::ledger::HoldState;
        use sea_orm::entity::prelude::*;

        #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
        #[sea_orm(table_name = "transfers")]
        pub struct Model {
            #[sea_orm(primary_key, auto_increment = false)]
            pub saga_id: String,
            #[sea_orm(primary_key, auto_increment = false)]
            pub branch_id: i32,
            pub settlement_account: String,
            /// What try reserved: confirm and cancel use this, not their payload.
            pub amount: i64,
            pub state: HoldState,
            pub updated_at_ms: i64,
        }

        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}

        impl ActiveModelBehavior for ActiveModel {}
    }
}

use entity::{settlement_account, transfer};

/// A settlement account to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SettlementAccountSeed {
    pub account_id: String,
    pub currency: Currency,
    pub opening: i64,
    pub frozen: bool,
}

/// The `bank` reference participant.
#[derive(Clone, Copy, Debug, Default)]
pub struct BankParticipant;

impl BankParticipant {
    pub fn new() -> Self {
        Self
    }

    /// Creates settlement accounts with nothing reserved (existing account ids are
    /// left untouched). Returns how many were created.
    pub async fn seed(
        db: &DatabaseConnection,
        accounts: impl IntoIterator<Item = SettlementAccountSeed>,
    ) -> Result<u64, Error> {
        let mut rows = Vec::new();
        for a in accounts {
            ledger::check_seed_amount(BANK, &a.account_id, "opening", a.opening)?;
            rows.push(settlement_account::ActiveModel {
                account_id: Set(a.account_id),
                currency: Set(a.currency.as_str().to_owned()),
                opening: Set(a.opening),
                balance: Set(a.opening),
                reserved: Set(0),
                frozen: Set(a.frozen),
            });
        }
        ledger::seed_rows(db, settlement_account::Column::AccountId, rows).await
    }

    /// The demo data set: `settlement-main` with [`DEMO_SETTLEMENT_BALANCE`] EUR, and
    /// `settlement-frozen` (same balance, frozen) for failure injection.
    pub async fn seed_demo(db: &DatabaseConnection) -> Result<u64, Error> {
        let currency = Currency::new(DEMO_CURRENCY).map_err(|e| Error::Invalid(e.to_string()))?;
        Self::seed(
            db,
            [(DEFAULT_SETTLEMENT_ACCOUNT, false), (FROZEN_SETTLEMENT_ACCOUNT, true)].map(|(id, frozen)| {
                SettlementAccountSeed {
                    account_id: id.to_owned(),
                    currency: currency.clone(),
                    opening: DEMO_SETTLEMENT_BALANCE,
                    frozen,
                }
            }),
        )
        .await
    }

    /// Reads the books (see [`Audit`]).
    pub async fn audit(db: &DatabaseConnection) -> Result<Audit, Error> {
        let accounts = settlement_account::Entity::find().all(db).await?;
        let transfers = transfer::Entity::find().all(db).await?;
        let opening = ledger::total(BANK, "opening", accounts.iter().map(|a| a.opening))?;
        let balance = ledger::total(BANK, "balance", accounts.iter().map(|a| a.balance))?;
        let (effects, branch_effects) = Audit::collect_holds(
            BANK,
            transfers
                .into_iter()
                .map(|t| (t.saga_id, t.branch_id, t.state, t.amount)),
        )?;
        Ok(Audit {
            participant: BANK,
            effects,
            branch_effects,
            moved: opening - balance,
            reserved: ledger::total(BANK, "reserved", accounts.iter().map(|a| a.reserved))?,
            barrier_records: count_barrier_records(db).await?,
        })
    }

    /// One settlement account, for tests and SRE tools.
    pub async fn account(
        db: &DatabaseConnection,
        account_id: &str,
    ) -> Result<Option<settlement_account::Model>, Error> {
        Ok(settlement_account::Entity::find_by_id(account_id.to_owned())
            .one(db)
            .await?)
    }

    /// Freezes or unfreezes a settlement account (an SRE / test operation).
    pub async fn set_frozen(db: &DatabaseConnection, account_id: &str, frozen: bool) -> Result<bool, Error> {
        let result = settlement_account::Entity::update_many()
            .col_expr(settlement_account::Column::Frozen, Expr::value(frozen))
            .filter(settlement_account::Column::AccountId.eq(account_id))
            .exec(db)
            .await?;
        Ok(result.rows_affected == 1)
    }

    /// Why the conditional reservation matched no row.
    async fn refusal(txn: &DatabaseTransaction, t: &SettlementTransfer) -> Result<BusinessError, BusinessError> {
        let Some(a) = settlement_account::Entity::find_by_id(t.settlement_account.clone())
            .one(txn)
            .await?
        else {
            return Ok(BusinessError::rejected(format!(
                "unknown settlement account {}",
                t.settlement_account
            )));
        };
        if a.frozen {
            return Ok(BusinessError::rejected(format!(
                "settlement account {} is frozen",
                t.settlement_account
            )));
        }
        if a.currency != t.currency.as_str() {
            return Ok(BusinessError::rejected(format!(
                "currency mismatch: settlement account {} is in {}, payment is in {}",
                t.settlement_account, a.currency, t.currency
            )));
        }
        Ok(BusinessError::rejected(format!(
            "insufficient settlement funds in {}",
            t.settlement_account
        )))
    }

    async fn transfer_of(
        txn: &DatabaseTransaction,
        branch: &BranchRef,
    ) -> Result<Option<transfer::Model>, BusinessError> {
        Ok(transfer::Entity::find_by_id((branch.saga_key(), branch.branch_key()))
            .one(txn)
            .await?)
    }

    /// Moves the branch's transfer from `reserved` to `to` and returns it, in one
    /// statement; `None` if no transfer of this branch was reserved (the rare case: the
    /// caller then reads the transfer to say why).
    async fn settle(
        txn: &DatabaseTransaction,
        branch: &BranchRef,
        to: HoldState,
    ) -> Result<Option<transfer::Model>, BusinessError> {
        let update = transfer::Entity::update_many()
            .col_expr(transfer::Column::State, Expr::value(to))
            .col_expr(transfer::Column::UpdatedAtMs, Expr::value(now_ms()))
            .filter(transfer::Column::SagaId.eq(branch.saga_key()))
            .filter(transfer::Column::BranchId.eq(branch.branch_key()))
            .filter(transfer::Column::State.eq(HoldState::Reserved));
        Ok(ledger::update_returning(txn, update).await?)
    }
}

#[async_trait]
impl Participant for BankParticipant {
    type Payload = SettlementTransfer;

    fn name(&self) -> &'static str {
        BANK
    }

    async fn try_(
        &self,
        txn: &DatabaseTransaction,
        branch: &BranchRef,
        t: &SettlementTransfer,
    ) -> Result<(), BusinessError> {
        let available =
            Expr::col(settlement_account::Column::Balance).sub(Expr::col(settlement_account::Column::Reserved));
        let reserved = settlement_account::Entity::update_many()
            .col_expr(
                settlement_account::Column::Reserved,
                Expr::col(settlement_account::Column::Reserved).add(t.amount),
            )
            .filter(settlement_account::Column::AccountId.eq(t.settlement_account.as_str()))
            .filter(settlement_account::Column::Frozen.eq(false))
            .filter(settlement_account::Column::Currency.eq(t.currency.as_str()))
            .filter(available.gte(t.amount))
            .exec(txn)
            .await?;
        if reserved.rows_affected != 1 {
            return Err(Self::refusal(txn, t).await?);
        }
        transfer::Entity::insert(transfer::ActiveModel {
            saga_id: Set(branch.saga_key()),
            branch_id: Set(branch.branch_key()),
            settlement_account: Set(t.settlement_account.clone()),
            amount: Set(t.amount),
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
        _: &SettlementTransfer,
    ) -> Result<(), BusinessError> {
        let Some(transfer) = Self::settle(txn, branch, HoldState::Committed).await? else {
            return match Self::transfer_of(txn, branch).await?.map(|h| h.state) {
                None => Err(BusinessError::rejected(format!(
                    "no reserved transfer for branch {branch}"
                ))),
                Some(HoldState::Committed) => Ok(()),
                Some(HoldState::Released) => Err(BusinessError::rejected("transfer was already voided")),
                Some(HoldState::Reserved) => Err(BusinessError::retryable("transfer changed concurrently")),
            };
        };
        let executed = settlement_account::Entity::update_many()
            .col_expr(
                settlement_account::Column::Balance,
                Expr::col(settlement_account::Column::Balance).sub(transfer.amount),
            )
            .col_expr(
                settlement_account::Column::Reserved,
                Expr::col(settlement_account::Column::Reserved).sub(transfer.amount),
            )
            .filter(settlement_account::Column::AccountId.eq(transfer.settlement_account.as_str()))
            .filter(settlement_account::Column::Reserved.gte(transfer.amount))
            .filter(settlement_account::Column::Balance.gte(transfer.amount))
            .exec(txn)
            .await?;
        if executed.rows_affected != 1 {
            return Err(BusinessError::rejected(format!(
                "ledger inconsistent: settlement account {} has less reserved than transfer {branch}",
                transfer.settlement_account
            )));
        }
        Ok(())
    }

    async fn cancel(
        &self,
        txn: &DatabaseTransaction,
        branch: &BranchRef,
        _: &SettlementTransfer,
    ) -> Result<(), BusinessError> {
        let Some(transfer) = Self::settle(txn, branch, HoldState::Released).await? else {
            return match Self::transfer_of(txn, branch).await?.map(|h| h.state) {
                // Nothing was held, so there is nothing to release.
                None | Some(HoldState::Released) => Ok(()),
                Some(HoldState::Committed) => Err(BusinessError::rejected("transfer was already executed")),
                Some(HoldState::Reserved) => Err(BusinessError::retryable("transfer changed concurrently")),
            };
        };
        let voided = settlement_account::Entity::update_many()
            .col_expr(
                settlement_account::Column::Reserved,
                Expr::col(settlement_account::Column::Reserved).sub(transfer.amount),
            )
            .filter(settlement_account::Column::AccountId.eq(transfer.settlement_account.as_str()))
            .filter(settlement_account::Column::Reserved.gte(transfer.amount))
            .exec(txn)
            .await?;
        if voided.rows_affected != 1 {
            return Err(BusinessError::rejected(format!(
                "ledger inconsistent: settlement account {} has less reserved than transfer {branch}",
                transfer.settlement_account
            )));
        }
        Ok(())
    }
}
