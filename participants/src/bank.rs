//! `bank`: settlement. try reserves a transfer from the issuer's settlement account
//! (refused if the account is frozen or short); confirm executes it (the balance
//! goes down); cancel voids it.

use crate::Error;
use crate::ledger::{
    self, Adjust, Audit, DEMO_SETTLEMENT_BALANCE, FROZEN_SETTLEMENT_ACCOUNT, HoldLedger, HoldWords, Settlement,
};
use crate::sdk::{BranchRef, BusinessError, Participant, async_trait};
use kessai_messages::payment::{BANK, Currency, DEFAULT_SETTLEMENT_ACCOUNT, SettlementTransfer};
use sea_orm::ActiveValue::Set;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ColumnTrait, DatabaseConnection, DatabaseTransaction, EntityTrait, QueryFilter, UpdateMany};

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
        let currency = ledger::demo_currency()?;
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
        ledger::audit::<Self>(db).await
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
}

impl HoldLedger for BankParticipant {
    const NAME: &'static str = BANK;
    type Account = settlement_account::Entity;
    type Hold = transfer::Entity;
    const HOLD_ACCOUNT: transfer::Column = transfer::Column::SettlementAccount;
    const WORDS: HoldWords = HoldWords {
        missing: "reserved transfer",
        hold: "transfer",
        already_released: "transfer was already voided",
        already_committed: "transfer was already executed",
        account: "settlement account",
        shortfall: "has less reserved than transfer",
    };

    fn request(t: &SettlementTransfer) -> (&str, i64) {
        (&t.settlement_account, t.amount)
    }

    fn held(transfer: &transfer::Model) -> (&str, i64) {
        (&transfer.settlement_account, transfer.amount)
    }

    fn reserve(t: &SettlementTransfer) -> UpdateMany<settlement_account::Entity> {
        let available =
            Expr::col(settlement_account::Column::Balance).sub(Expr::col(settlement_account::Column::Reserved));
        settlement_account::Entity::update_many()
            .raise(settlement_account::Column::Reserved, t.amount)
            .filter(settlement_account::Column::AccountId.eq(t.settlement_account.as_str()))
            .filter(settlement_account::Column::Frozen.eq(false))
            .filter(settlement_account::Column::Currency.eq(t.currency.as_str()))
            .filter(available.gte(t.amount))
    }

    fn refusal(account: Option<settlement_account::Model>, t: &SettlementTransfer) -> String {
        match account {
            None => format!("unknown settlement account {}", t.settlement_account),
            Some(a) if a.frozen => format!("settlement account {} is frozen", t.settlement_account),
            Some(a) if a.currency != t.currency.as_str() => format!(
                "currency mismatch: settlement account {} is in {}, payment is in {}",
                t.settlement_account, a.currency, t.currency
            ),
            Some(_) => format!("insufficient settlement funds in {}", t.settlement_account),
        }
    }

    /// The transfer executes: the balance goes down.
    fn commit(account: &str, amount: i64) -> UpdateMany<settlement_account::Entity> {
        settlement_account::Entity::update_many()
            .lower(settlement_account::Column::Balance, amount)
            .lower(settlement_account::Column::Reserved, amount)
            .filter(settlement_account::Column::AccountId.eq(account))
            .filter(settlement_account::Column::Reserved.gte(amount))
            .filter(settlement_account::Column::Balance.gte(amount))
    }

    /// The transfer is voided.
    fn release(account: &str, amount: i64) -> UpdateMany<settlement_account::Entity> {
        settlement_account::Entity::update_many()
            .lower(settlement_account::Column::Reserved, amount)
            .filter(settlement_account::Column::AccountId.eq(account))
            .filter(settlement_account::Column::Reserved.gte(amount))
    }

    /// Moved: Σopening − Σbalance; reserved: Σreserved.
    fn books(accounts: &[settlement_account::Model]) -> Result<(i64, i64), Error> {
        let opening = ledger::total(BANK, "opening", accounts.iter().map(|a| a.opening))?;
        let balance = ledger::total(BANK, "balance", accounts.iter().map(|a| a.balance))?;
        let reserved = ledger::total(BANK, "reserved", accounts.iter().map(|a| a.reserved))?;
        Ok((opening - balance, reserved))
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
        ledger::reserve_hold::<Self>(txn, branch, t).await
    }

    async fn confirm(
        &self,
        txn: &DatabaseTransaction,
        branch: &BranchRef,
        _: &SettlementTransfer,
    ) -> Result<(), BusinessError> {
        ledger::settle_hold::<Self>(txn, branch, Settlement::Commit).await
    }

    async fn cancel(
        &self,
        txn: &DatabaseTransaction,
        branch: &BranchRef,
        _: &SettlementTransfer,
    ) -> Result<(), BusinessError> {
        ledger::settle_hold::<Self>(txn, branch, Settlement::Release).await
    }
}
