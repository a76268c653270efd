//! What the three reference participants share: the hold life cycle, the audit
//! report the chaos checks read, bulk seeding, and the demo data set.

use crate::Error;
use crate::sdk::BranchRef;
use kessai_messages::{BranchId, SagaId};
use sea_orm::entity::prelude::*;
use sea_orm::sea_query::{IntoIden, OnConflict};
use sea_orm::{DatabaseConnection, DatabaseTransaction, FromQueryResult, QueryTrait, TransactionTrait, UpdateMany};
use std::collections::HashMap;

/// The currency of the demo data set.
pub const DEMO_CURRENCY: &str = "EUR";
/// Demo wallets are `acct-1..=acct-N`, demo cards `card-1..=card-N`.
pub const DEMO_ACCOUNTS: u32 = 10_000;
/// Opening balance of every demo wallet and credit limit of every demo card, in minor
/// units: large enough that a benchmark never runs a wallet dry.
pub const DEMO_BALANCE: i64 = 1_000_000_000_000;
/// Opening balance of the demo settlement account: every payment draws on it.
pub const DEMO_SETTLEMENT_BALANCE: i64 = 1_000_000_000_000_000;
/// A settlement account the demo seeds frozen: a payment settled from it fails at the
/// bank's try, which is how `--fail-rate` injects failures.
pub const FROZEN_SETTLEMENT_ACCOUNT: &str = "settlement-frozen";

pub fn demo_account_id(i: u32) -> String {
    format!("acct-{i}")
}

pub fn demo_card_id(i: u32) -> String {
    format!("card-{i}")
}

/// Where a hold (a wallet freeze, a card authorization, a reserved transfer) is in its
/// life: reserved by try, then committed by confirm or released by cancel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
pub enum HoldState {
    #[sea_orm(string_value = "reserved")]
    Reserved,
    #[sea_orm(string_value = "committed")]
    Committed,
    #[sea_orm(string_value = "released")]
    Released,
}

/// A saga's net effect at one participant, as its hold rows tell it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Still reserved: a leak once the system is quiet (SPEC §4.3).
    Reserved(i64),
    /// Confirmed: the money moved.
    Committed(i64),
    /// Cancelled: no net effect.
    Released(i64),
}

impl Effect {
    pub fn new(state: HoldState, amount: i64) -> Self {
        match state {
            HoldState::Reserved => Effect::Reserved(amount),
            HoldState::Committed => Effect::Committed(amount),
            HoldState::Released => Effect::Released(amount),
        }
    }

    pub fn amount(self) -> i64 {
        match self {
            Effect::Reserved(a) | Effect::Committed(a) | Effect::Released(a) => a,
        }
    }

    fn rank(self) -> u8 {
        match self {
            Effect::Reserved(_) => 2,
            Effect::Committed(_) => 1,
            Effect::Released(_) => 0,
        }
    }

    /// Folds two branches of one saga at the same participant: same state → amounts
    /// add; different states → the more alarming one wins (a leak over a movement over
    /// a release), since that is what an invariant check must see.
    pub fn combine(self, other: Effect) -> Effect {
        if std::mem::discriminant(&self) == std::mem::discriminant(&other) {
            Effect::new(self.state(), self.amount().saturating_add(other.amount()))
        } else if other.rank() > self.rank() {
            other
        } else {
            self
        }
    }

    fn state(self) -> HoldState {
        match self {
            Effect::Reserved(_) => HoldState::Reserved,
            Effect::Committed(_) => HoldState::Committed,
            Effect::Released(_) => HoldState::Released,
        }
    }
}

/// Runs a conditional `UPDATE` of a hold row with `RETURNING *` and returns the row it
/// changed, if any. This is how confirm and cancel settle a hold in one round trip:
/// the `state = 'reserved'` condition checks, the `SET` moves the state, and what try
/// stored (account, amount) comes back with it.
///
/// `RETURNING` is added to the statement here rather than left to sea-orm's
/// `exec_with_returning`, which emits it on SQLite only with sea-orm's
/// `sqlite-use-returning-for-3_35` feature (on in this workspace only through another
/// crate's feature list). SQLite has had `RETURNING` since 3.35, PostgreSQL always.
pub(crate) async fn update_returning<E>(
    txn: &DatabaseTransaction,
    update: UpdateMany<E>,
) -> Result<Option<E::Model>, DbErr>
where
    E: EntityTrait,
    E::Model: FromQueryResult,
{
    let mut query = update.into_query();
    query.returning_all();
    let statement = txn.get_database_backend().build(&query);
    E::Model::find_by_statement(statement).one(txn).await
}

/// Per-saga and per-branch effects, as [`Audit`] holds them.
pub(crate) type HoldEffects = (HashMap<SagaId, Effect>, HashMap<BranchRef, Effect>);

/// A participant's books, read through its own tables. The chaos harness combines the
/// three audits with the coordinator's saga outcomes to check SPEC §4.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Audit {
    pub participant: &'static str,
    /// Per saga, from the hold rows (see [`Effect::combine`] for sagas with several
    /// branches here).
    pub effects: HashMap<SagaId, Effect>,
    /// Per branch, exact.
    pub branch_effects: HashMap<BranchRef, Effect>,
    /// Money moved according to the account rows — balance: Σopening − Σ(available +
    /// frozen); card-issuer: Σcaptured; bank: Σopening − Σbalance.
    pub moved: i64,
    /// Money reserved according to the account rows: Σfrozen / Σheld / Σreserved.
    pub reserved: i64,
    pub barrier_records: u64,
}

impl Audit {
    /// Σ amounts of hold rows still reserved.
    pub fn reserved_by_holds(&self) -> i64 {
        self.sum_of(|e| matches!(e, Effect::Reserved(_)))
    }

    /// Σ amounts of committed hold rows.
    pub fn committed_by_holds(&self) -> i64 {
        self.sum_of(|e| matches!(e, Effect::Committed(_)))
    }

    /// The account rows agree with the hold rows: what they say moved is exactly what
    /// was committed, what they say is reserved is exactly what is still held.
    pub fn is_consistent(&self) -> bool {
        self.moved == self.committed_by_holds() && self.reserved == self.reserved_by_holds()
    }

    fn sum_of(&self, pick: impl Fn(&Effect) -> bool) -> i64 {
        self.branch_effects
            .values()
            .filter(|e| pick(e))
            .map(|e| e.amount())
            .fold(0i64, i64::saturating_add)
    }

    /// Builds the effect maps from hold rows given as (saga id, branch id, state, amount).
    pub(crate) fn collect_holds(
        participant: &'static str,
        holds: impl IntoIterator<Item = (String, i32, HoldState, i64)>,
    ) -> Result<HoldEffects, Error> {
        let mut effects: HashMap<SagaId, Effect> = HashMap::new();
        let mut branch_effects = HashMap::new();
        for (saga, branch, state, amount) in holds {
            let saga_id: SagaId = saga
                .parse()
                .map_err(|e| Error::Corrupt(format!("{participant} hold saga id {saga:?}: {e}")))?;
            let branch_id = u32::try_from(branch)
                .map(BranchId)
                .map_err(|_| Error::Corrupt(format!("{participant} hold branch id {branch}")))?;
            let effect = Effect::new(state, amount);
            branch_effects.insert(BranchRef::new(saga_id, branch_id), effect);
            effects
                .entry(saga_id)
                .and_modify(|e| *e = e.combine(effect))
                .or_insert(effect);
        }
        Ok((effects, branch_effects))
    }
}

/// Adds up i64 columns without overflow surprises: sums go through i128 and an
/// out-of-range total is reported rather than wrapped.
pub(crate) fn total(participant: &str, what: &str, values: impl IntoIterator<Item = i64>) -> Result<i64, Error> {
    let sum: i128 = values.into_iter().map(i128::from).sum();
    i64::try_from(sum).map_err(|_| Error::Corrupt(format!("{participant}: {what} total {sum} overflows i64")))
}

/// Rows per INSERT when seeding: well under SQLite's and PostgreSQL's bind-parameter
/// limits for tables of up to six columns.
const SEED_CHUNK: usize = 1_000;

/// Inserts `rows` in chunks, in one transaction, skipping keys that exist (so seeding
/// an existing database is a no-op). Returns how many rows were inserted.
pub(crate) async fn seed_rows<A>(
    db: &DatabaseConnection,
    primary_key: impl IntoIden + Clone,
    rows: Vec<A>,
) -> Result<u64, Error>
where
    A: ActiveModelTrait + Send,
{
    let txn = db.begin().await?;
    let mut inserted = 0;
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let chunk: Vec<A> = rows.by_ref().take(SEED_CHUNK).collect();
        inserted += A::Entity::insert_many(chunk)
            .on_conflict(OnConflict::column(primary_key.clone()).do_nothing().to_owned())
            .exec_without_returning(&txn)
            .await?;
    }
    txn.commit().await?;
    Ok(inserted)
}

pub(crate) fn check_seed_amount(participant: &str, id: &str, what: &str, amount: i64) -> Result<(), Error> {
    if amount < 0 {
        Err(Error::Invalid(format!(
            "{participant} seed {id}: {what} must not be negative, got {amount}"
        )))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effects_combine_towards_the_alarming_one() {
        use Effect::*;
        assert_eq!(Reserved(2).combine(Reserved(3)), Reserved(5));
        assert_eq!(Released(9).combine(Committed(4)), Committed(4));
        assert_eq!(Committed(4).combine(Reserved(1)), Reserved(1));
        assert_eq!(Reserved(1).combine(Released(7)), Reserved(1));
    }

    #[test]
    fn totals_do_not_wrap() {
        assert_eq!(total("t", "x", [1, 2, 3]).unwrap(), 6);
        assert!(matches!(total("t", "x", [i64::MAX, 1]), Err(Error::Corrupt(_))));
    }
}
