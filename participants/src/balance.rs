//! `balance`: wallets. try freezes `amount` out of `available`; confirm deducts the
//! frozen amount; cancel releases it back to `available`.

use crate::Error;
use crate::ledger::{self, Adjust, Audit, DEMO_ACCOUNTS, DEMO_BALANCE, HoldLedger, HoldWords, Settlement};
use crate::sdk::{BranchRef, BusinessError, Participant, async_trait};
use kessai_messages::payment::{BALANCE, Currency, WalletHold};
use sea_orm::ActiveValue::Set;
use sea_orm::{ColumnTrait, DatabaseConnection, DatabaseTransaction, EntityTrait, QueryFilter, UpdateMany};

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
        let currency = ledger::demo_currency()?;
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
        ledger::audit::<Self>(db).await
    }

    /// One wallet, for tests and SRE tools.
    pub async fn wallet(db: &DatabaseConnection, account_id: &str) -> Result<Option<wallet::Model>, Error> {
        Ok(wallet::Entity::find_by_id(account_id.to_owned()).one(db).await?)
    }
}

impl HoldLedger for BalanceParticipant {
    const NAME: &'static str = BALANCE;
    type Account = wallet::Entity;
    type Hold = wallet_freeze::Entity;
    const HOLD_ACCOUNT: wallet_freeze::Column = wallet_freeze::Column::AccountId;
    const WORDS: HoldWords = HoldWords {
        missing: "freeze",
        hold: "freeze",
        already_released: "freeze was already released",
        already_committed: "freeze was already committed",
        account: "wallet",
        shortfall: "has less frozen than freeze",
    };

    fn request(hold: &WalletHold) -> (&str, i64) {
        (&hold.account_id, hold.amount)
    }

    fn held(freeze: &wallet_freeze::Model) -> (&str, i64) {
        (&freeze.account_id, freeze.amount)
    }

    fn reserve(hold: &WalletHold) -> UpdateMany<wallet::Entity> {
        wallet::Entity::update_many()
            .lower(wallet::Column::Available, hold.amount)
            .raise(wallet::Column::Frozen, hold.amount)
            .filter(wallet::Column::AccountId.eq(hold.account_id.as_str()))
            .filter(wallet::Column::Currency.eq(hold.currency.as_str()))
            .filter(wallet::Column::Available.gte(hold.amount))
    }

    fn refusal(wallet: Option<wallet::Model>, hold: &WalletHold) -> String {
        match wallet {
            None => format!("unknown account {}", hold.account_id),
            Some(w) if w.currency != hold.currency.as_str() => format!(
                "currency mismatch: account {} holds {}, payment is in {}",
                hold.account_id, w.currency, hold.currency
            ),
            Some(_) => "insufficient funds".to_owned(),
        }
    }

    fn commit(account: &str, amount: i64) -> UpdateMany<wallet::Entity> {
        wallet::Entity::update_many()
            .lower(wallet::Column::Frozen, amount)
            .filter(wallet::Column::AccountId.eq(account))
            .filter(wallet::Column::Frozen.gte(amount))
    }

    fn release(account: &str, amount: i64) -> UpdateMany<wallet::Entity> {
        wallet::Entity::update_many()
            .lower(wallet::Column::Frozen, amount)
            .raise(wallet::Column::Available, amount)
            .filter(wallet::Column::AccountId.eq(account))
            .filter(wallet::Column::Frozen.gte(amount))
    }

    /// Moved: Σopening − Σ(available + frozen); reserved: Σfrozen.
    fn books(wallets: &[wallet::Model]) -> Result<(i64, i64), Error> {
        let opening = ledger::total(BALANCE, "opening", wallets.iter().map(|w| w.opening))?;
        let held = ledger::total(
            BALANCE,
            "available + frozen",
            wallets.iter().flat_map(|w| [w.available, w.frozen]),
        )?;
        let frozen = ledger::total(BALANCE, "frozen", wallets.iter().map(|w| w.frozen))?;
        Ok((opening - held, frozen))
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
        ledger::reserve_hold::<Self>(txn, branch, hold).await
    }

    async fn confirm(
        &self,
        txn: &DatabaseTransaction,
        branch: &BranchRef,
        _: &WalletHold,
    ) -> Result<(), BusinessError> {
        ledger::settle_hold::<Self>(txn, branch, Settlement::Commit).await
    }

    async fn cancel(&self, txn: &DatabaseTransaction, branch: &BranchRef, _: &WalletHold) -> Result<(), BusinessError> {
        ledger::settle_hold::<Self>(txn, branch, Settlement::Release).await
    }
}
