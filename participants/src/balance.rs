//! `balance`: wallets. try freezes `amount` out of `available`; confirm deducts the
//! frozen amount; cancel releases it back to `available`.

use crate::Error;
use crate::ledger::{self, Audit, DEMO_ACCOUNTS, DEMO_BALANCE, DEMO_CURRENCY, HoldState};
use crate::sdk::barrier::count_barrier_records;
use crate::sdk::{BranchRef, BusinessError, Participant, async_trait, now_ms};
use kessai_messages::payment::{BALANCE, Currency, WalletHold};
use sea_orm::ActiveValue::Set;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ColumnTrait, DatabaseConnection, DatabaseTransaction, EntityTrait, QueryFilter};

/// The `wallets` and `wallet_freezes` tables.
pub mod entity {
    pub mod wallet {
        use sea_orm::entity::prelude::*;

        #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
        #[sea_orm(table_name = "wallets")]
        pub struct Model {
            #[sea_orm(primary_key, auto_increment = false)]
            pub account_id: String,
            pub currency: String,
            /// What the wallet was seeded with; the audit's reference point.
            pub opening: i64,
            pub available: i64,
            /// Σ of this wallet's reserved freezes.
            pub frozen: i64,
        }

        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}

        impl ActiveModelBehavior for ActiveModel {}
    }

    pub mod wallet_freeze {
        use crate::ledger::HoldState;
        use sea_orm::entity::prelude::*;

        #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
        #[sea_orm(table_name = "wallet_freezes")]
        pub struct Model {
            #[sea_orm(primary_key, auto_increment = false)]
            pub saga_id: String,
            #[sea_orm(primary_key, auto_increment = false)]
            pub branch_id: i32,
            pub account_id: String,
            /// What try froze: confirm and cancel use this, not their payload.
            pub amount: i64,
            pub state: HoldState,
            pub updated_at_ms: i64,
        }

        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}

        impl ActiveModelBehavior for ActiveModel {}
    }
}

use entity::{wallet, wallet_freeze};

/// A wallet to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalletSeed {
    pub account_id: String,
    pub currency: Currency,
    /// Opening balance in minor units, all of it available.
    pub opening: i64,
}

/// The `balance` reference participant.
#[derive(Clone, Copy, Debug, Default)]
pub struct BalanceParticipant;

impl BalanceParticipant {
    pub fn new() -> Self {
        Self
    }

    /// Creates wallets (existing account ids are left untouched). Returns how many
    /// were created.
    pub async fn seed(db: &DatabaseConnection, wallets: impl IntoIterator<Item = WalletSeed>) -> Result<u64, Error> {
        let mut rows = Vec::new();
        for w in wallets {
            ledger::check_seed_amount(BALANCE, &w.account_id, "opening", w.opening)?;
            rows.push(wallet::ActiveModel {
                account_id: Set(w.account_id),
                currency: Set(w.currency.as_str().to_owned()),
                opening: Set(w.opening),
                available: Set(w.opening),
                frozen: Set(0),
            });
        }
        ledger::seed_rows(db, wallet::Column::AccountId, rows).await
    }

    /// The demo data set: wallets `acct-1..=acct-10000`, each [`DEMO_BALANCE`] EUR.
    pub async fn seed_demo(db: &DatabaseConnection) -> Result<u64, Error> {
        let currency = Currency::new(DEMO_CURRENCY).map_err(|e| Error::Invalid(e.to_string()))?;
        Self::seed(
            db,
            (1..=DEMO_ACCOUNTS).map(|i| WalletSeed {
                account_id: ledger::demo_account_id(i),
                currency: currency.clone(),
                opening: DEMO_BALANCE,
            }),
        )
        .await
    }

    /// Reads the books (see [`Audit`]).
    pub async fn audit(db: &DatabaseConnection) -> Result<Audit, Error> {
        let wallets = wallet::Entity::find().all(db).await?;
        let freezes = wallet_freeze::Entity::find().all(db).await?;
        let opening = ledger::total(BALANCE, "opening", wallets.iter().map(|w| w.opening))?;
        let held = ledger::total(
            BALANCE,
            "available + frozen",
            wallets.iter().flat_map(|w| [w.available, w.frozen]),
        )?;
        let reserved = ledger::total(BALANCE, "frozen", wallets.iter().map(|w| w.frozen))?;
        let (effects, branch_effects) = Audit::collect_holds(
            BALANCE,
            freezes.into_iter().map(|f| (f.saga_id, f.branch_id, f.state, f.amount)),
        )?;
        Ok(Audit {
            participant: BALANCE,
            effects,
            branch_effects,
            moved: opening - held,
            reserved,
            barrier_records: count_barrier_records(db).await?,
        })
    }

    /// One wallet, for tests and SRE tools.
    pub async fn wallet(db: &DatabaseConnection, account_id: &str) -> Result<Option<wallet::Model>, Error> {
        Ok(wallet::Entity::find_by_id(account_id.to_owned()).one(db).await?)
    }

    /// Why the conditional freeze matched no row.
    async fn refusal(txn: &DatabaseTransaction, hold: &WalletHold) -> Result<BusinessError, BusinessError> {
        let Some(w) = wallet::Entity::find_by_id(hold.account_id.clone()).one(txn).await? else {
            return Ok(BusinessError::rejected(format!("unknown account {}", hold.account_id)));
        };
        if w.currency != hold.currency.as_str() {
            return Ok(BusinessError::rejected(format!(
                "currency mismatch: account {} holds {}, payment is in {}",
                hold.account_id, w.currency, hold.currency
            )));
        }
        Ok(BusinessError::rejected("insufficient funds"))
    }

    async fn freeze_of(
        txn: &DatabaseTransaction,
        branch: &BranchRef,
    ) -> Result<Option<wallet_freeze::Model>, BusinessError> {
        Ok(
            wallet_freeze::Entity::find_by_id((branch.saga_key(), branch.branch_key()))
                .one(txn)
                .await?,
        )
    }

    /// Moves the branch's freeze from `reserved` to `to` and returns it, in one
    /// statement; `None` if no freeze of this branch was reserved (the rare case: the
    /// caller then reads the freeze to say why).
    async fn settle(
        txn: &DatabaseTransaction,
        branch: &BranchRef,
        to: HoldState,
    ) -> Result<Option<wallet_freeze::Model>, BusinessError> {
        let update = wallet_freeze::Entity::update_many()
            .col_expr(wallet_freeze::Column::State, Expr::value(to))
            .col_expr(wallet_freeze::Column::UpdatedAtMs, Expr::value(now_ms()))
            .filter(wallet_freeze::Column::SagaId.eq(branch.saga_key()))
            .filter(wallet_freeze::Column::BranchId.eq(branch.branch_key()))
            .filter(wallet_freeze::Column::State.eq(HoldState::Reserved));
        Ok(ledger::update_returning(txn, update).await?)
    }
}

#[async_trait]
impl Participant for BalanceParticipant {
    type Payload = WalletHold;

    fn name(&self) -> &'static str {
        BALANCE
    }

    async fn try_(
        &self,
        txn: &DatabaseTransaction,
        branch: &BranchRef,
        hold: &WalletHold,
    ) -> Result<(), BusinessError> {
        // One conditional UPDATE both checks and reserves, so two concurrent
        // transactions cannot both pass the check on PostgreSQL.
        let frozen = wallet::Entity::update_many()
            .col_expr(
                wallet::Column::Available,
                Expr::col(wallet::Column::Available).sub(hold.amount),
            )
            .col_expr(
                wallet::Column::Frozen,
                Expr::col(wallet::Column::Frozen).add(hold.amount),
            )
            .filter(wallet::Column::AccountId.eq(hold.account_id.as_str()))
            .filter(wallet::Column::Currency.eq(hold.currency.as_str()))
            .filter(wallet::Column::Available.gte(hold.amount))
            .exec(txn)
            .await?;
        if frozen.rows_affected != 1 {
            return Err(Self::refusal(txn, hold).await?);
        }
        wallet_freeze::Entity::insert(wallet_freeze::ActiveModel {
            saga_id: Set(branch.saga_key()),
            branch_id: Set(branch.branch_key()),
            account_id: Set(hold.account_id.clone()),
            amount: Set(hold.amount),
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
        _: &WalletHold,
    ) -> Result<(), BusinessError> {
        let Some(freeze) = Self::settle(txn, branch, HoldState::Committed).await? else {
            return match Self::freeze_of(txn, branch).await?.map(|f| f.state) {
                None => Err(BusinessError::rejected(format!("no freeze for branch {branch}"))),
                Some(HoldState::Committed) => Ok(()),
                Some(HoldState::Released) => Err(BusinessError::rejected("freeze was already released")),
                Some(HoldState::Reserved) => Err(BusinessError::retryable("freeze changed concurrently")),
            };
        };
        let deducted = wallet::Entity::update_many()
            .col_expr(
                wallet::Column::Frozen,
                Expr::col(wallet::Column::Frozen).sub(freeze.amount),
            )
            .filter(wallet::Column::AccountId.eq(freeze.account_id.as_str()))
            .filter(wallet::Column::Frozen.gte(freeze.amount))
            .exec(txn)
            .await?;
        if deducted.rows_affected != 1 {
            return Err(BusinessError::rejected(format!(
                "ledger inconsistent: wallet {} has less frozen than freeze {branch}",
                freeze.account_id
            )));
        }
        Ok(())
    }

    async fn cancel(&self, txn: &DatabaseTransaction, branch: &BranchRef, _: &WalletHold) -> Result<(), BusinessError> {
        let Some(freeze) = Self::settle(txn, branch, HoldState::Released).await? else {
            return match Self::freeze_of(txn, branch).await?.map(|f| f.state) {
                // Nothing was frozen, so there is nothing to release.
                None | Some(HoldState::Released) => Ok(()),
                Some(HoldState::Committed) => Err(BusinessError::rejected("freeze was already committed")),
                Some(HoldState::Reserved) => Err(BusinessError::retryable("freeze changed concurrently")),
            };
        };
        let released = wallet::Entity::update_many()
            .col_expr(
                wallet::Column::Frozen,
                Expr::col(wallet::Column::Frozen).sub(freeze.amount),
            )
            .col_expr(
                wallet::Column::Available,
                Expr::col(wallet::Column::Available).add(freeze.amount),
            )
            .filter(wallet::Column::AccountId.eq(freeze.account_id.as_str()))
            .filter(wallet::Column::Frozen.gte(freeze.amount))
            .exec(txn)
            .await?;
        if released.rows_affected != 1 {
            return Err(BusinessError::rejected(format!(
                "ledger inconsistent: wallet {} has less frozen than freeze {branch}",
                freeze.account_id
            )));
        }
        Ok(())
    }
}
