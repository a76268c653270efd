//! What the three reference participants share: the hold life cycle, the audit
//! report the chaos checks read, bulk seeding, and the demo data set.

use crate::Error;
use crate::sdk::barrier::count_barrier_records;
use crate::sdk::{BranchRef, BusinessError, Participant, now_ms};
use kessai_messages::payment::Currency;
use kessai_messages::{BranchId, SagaId};
use sea_orm::entity::prelude::*;
use sea_orm::sea_query::{ExprTrait, IntoIden, OnConflict, Query};
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

pub(crate) fn demo_currency() -> Result<Currency, Error> {
    Currency::new(DEMO_CURRENCY).map_err(|e| Error::Invalid(e.to_string()))
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
    /// Still reserved: a leak once the system is quiet
    /// (docs/GUARANTEES.md#no-leaked-reservations).
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

/// A reference participant's ledger, as the hold life cycle sees it: account rows that
/// hold money, and a hold table with one row per branch whose try reserved some of it.
///
/// [`reserve_hold`] (try) and [`settle_hold`] (confirm, cancel) run the life cycle, and
/// [`audit`] reads it back; the participant's [`Participant`] methods only call them.
/// An implementation supplies what is its own: its tables, the conditional UPDATEs of
/// its account rows (its business rule), why it refuses a reservation, and its words.
pub(crate) trait HoldLedger: Participant {
    /// The participant's name, as [`Participant::name`] gives it.
    const NAME: &'static str;
    /// The account table, keyed by account id.
    type Account: EntityTrait<PrimaryKey: PrimaryKeyTrait<ValueType = String>>;
    /// The hold table, keyed by (saga id, branch id): the [`HoldColumn`]s, and
    /// [`Self::HOLD_ACCOUNT`].
    type Hold: EntityTrait<PrimaryKey: PrimaryKeyTrait<ValueType = (String, i32)>>;
    /// The hold table's column naming the account a hold is on.
    const HOLD_ACCOUNT: <Self::Hold as EntityTrait>::Column;
    const WORDS: HoldWords;

    /// The account `payload` draws on and the amount it asks for.
    fn request(payload: &Self::Payload) -> (&str, i64);

    /// The account a hold row is on and the amount try reserved (what confirm and
    /// cancel act on, not their payload).
    fn held(hold: &<Self::Hold as EntityTrait>::Model) -> (&str, i64);

    /// try: the conditional UPDATE that moves the requested amount from available to
    /// reserved on the payload's account, where the business rule allows it. Matching
    /// no row is a refusal.
    fn reserve(payload: &Self::Payload) -> UpdateMany<Self::Account>;

    /// Why [`Self::reserve`] matched no row, given the payload's account row (`None`:
    /// there is no such account).
    fn refusal(account: Option<<Self::Account as EntityTrait>::Model>, payload: &Self::Payload) -> String;

    /// confirm: the UPDATE that takes `amount` out of reserved on `account` (the money
    /// moves). It must match the account row.
    fn commit(account: &str, amount: i64) -> UpdateMany<Self::Account>;

    /// cancel: the UPDATE that returns `amount` from reserved to available on
    /// `account`. It must match the account row.
    fn release(account: &str, amount: i64) -> UpdateMany<Self::Account>;

    /// What moved and what is reserved, in that order, according to the account rows
    /// (see [`Audit::moved`], [`Audit::reserved`]).
    fn books(accounts: &[<Self::Account as EntityTrait>::Model]) -> Result<(i64, i64), Error>;
}

/// What a participant calls its holds and accounts in the answers of [`settle_hold`].
pub(crate) struct HoldWords {
    /// The hold confirm finds missing: "no {missing} for branch {branch}".
    pub missing: &'static str,
    /// The hold that "{hold} changed concurrently".
    pub hold: &'static str,
    /// confirm's refusal of a released hold.
    pub already_released: &'static str,
    /// cancel's refusal of a committed hold.
    pub already_committed: &'static str,
    /// The account row found holding less than the hold it settles: "ledger
    /// inconsistent: {account} {id} {shortfall} {branch}".
    pub account: &'static str,
    pub shortfall: &'static str,
}

/// The columns every hold table (`wallet_freezes`, `card_holds`, `transfers`) has under
/// these names; the one naming the account is each table's own
/// ([`HoldLedger::HOLD_ACCOUNT`]).
#[derive(Clone, Copy, Debug, DeriveIden)]
enum HoldColumn {
    SagaId,
    BranchId,
    Amount,
    State,
    UpdatedAtMs,
}

/// A hold row as [`settle_hold`] and [`audit`] read it (and any participant's audit
/// can, from a query selecting these four columns).
#[derive(Debug, FromQueryResult)]
pub struct HoldRow {
    pub saga_id: String,
    pub branch_id: i32,
    pub amount: i64,
    pub state: HoldState,
}

/// `SET column = column + amount` and `- amount`, for the UPDATEs of account rows.
pub(crate) trait Adjust {
    fn raise(self, column: impl ColumnTrait, amount: i64) -> Self;
    fn lower(self, column: impl ColumnTrait, amount: i64) -> Self;
}

impl<E: EntityTrait> Adjust for UpdateMany<E> {
    fn raise(self, column: impl ColumnTrait, amount: i64) -> Self {
        self.col_expr(column, Expr::col(column).add(amount))
    }

    fn lower(self, column: impl ColumnTrait, amount: i64) -> Self {
        self.col_expr(column, Expr::col(column).sub(amount))
    }
}

/// try: reserves the payload's amount on its account and records the hold, or refuses
/// (the account row's state says why). Two statements either way.
pub(crate) async fn reserve_hold<L: HoldLedger>(
    txn: &DatabaseTransaction,
    branch: &BranchRef,
    payload: &L::Payload,
) -> Result<(), BusinessError> {
    let (account, amount) = L::request(payload);
    // One conditional UPDATE both checks and reserves, so two concurrent
    // transactions cannot both pass the check on PostgreSQL.
    if L::reserve(payload).exec(txn).await?.rows_affected != 1 {
        let row = L::Account::find_by_id(account.to_owned()).one(txn).await?;
        return Err(BusinessError::rejected(L::refusal(row, payload)));
    }
    let columns = [
        HoldColumn::SagaId.into_iden(),
        HoldColumn::BranchId.into_iden(),
        L::HOLD_ACCOUNT.into_iden(),
        HoldColumn::Amount.into_iden(),
        HoldColumn::State.into_iden(),
        HoldColumn::UpdatedAtMs.into_iden(),
    ];
    let insert = Query::insert()
        .into_table(L::Hold::default().table_ref())
        .columns(columns)
        .values_panic([
            branch.saga_key().into(),
            branch.branch_key().into(),
            account.into(),
            amount.into(),
            HoldState::Reserved.into(),
            now_ms().into(),
        ])
        .take();
    txn.execute(&insert).await?;
    Ok(())
}

/// How confirm and cancel settle a hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Settlement {
    /// confirm: the reserved amount moves.
    Commit,
    /// cancel: the reserved amount is available again.
    Release,
}

impl Settlement {
    fn state(self) -> HoldState {
        match self {
            Settlement::Commit => HoldState::Committed,
            Settlement::Release => HoldState::Released,
        }
    }

    /// The answer when the branch had no reserved hold to settle, given the state of
    /// its hold row if it has one.
    fn unsettled(self, words: &HoldWords, branch: &BranchRef, found: Option<HoldState>) -> Result<(), BusinessError> {
        match (self, found) {
            (_, Some(state)) if state == self.state() => Ok(()),
            (_, Some(HoldState::Reserved)) => {
                Err(BusinessError::retryable(format!("{} changed concurrently", words.hold)))
            }
            (Settlement::Commit, None) => Err(BusinessError::rejected(format!(
                "no {} for branch {branch}",
                words.missing
            ))),
            (Settlement::Commit, Some(_)) => Err(BusinessError::rejected(words.already_released)),
            // Nothing was held, so there is nothing to release.
            (Settlement::Release, None) => Ok(()),
            (Settlement::Release, Some(_)) => Err(BusinessError::rejected(words.already_committed)),
        }
    }
}

/// confirm and cancel: moves the branch's hold from `reserved` to committed or released
/// and settles its amount on the account row, in two statements. The first, an
/// `UPDATE .. RETURNING` ([`update_returning`]), both checks that the hold is reserved
/// and returns what try stored; only when it matches nothing (the rare case) is the
/// hold read again to say why.
pub(crate) async fn settle_hold<L: HoldLedger>(
    txn: &DatabaseTransaction,
    branch: &BranchRef,
    how: Settlement,
) -> Result<(), BusinessError> {
    let hold_table = L::Hold::default();
    let settle = L::Hold::update_many()
        .col_expr(HoldColumn::State, Expr::value(how.state()))
        .col_expr(HoldColumn::UpdatedAtMs, Expr::value(now_ms()))
        .filter(Expr::col((hold_table, HoldColumn::SagaId)).eq(branch.saga_key()))
        .filter(Expr::col((hold_table, HoldColumn::BranchId)).eq(branch.branch_key()))
        .filter(Expr::col((hold_table, HoldColumn::State)).eq(HoldState::Reserved));
    let Some(hold) = update_returning(txn, settle).await? else {
        let found = L::Hold::find_by_id((branch.saga_key(), branch.branch_key()))
            .into_model::<HoldRow>()
            .one(txn)
            .await?;
        return how.unsettled(&L::WORDS, branch, found.map(|h| h.state));
    };
    let (account, amount) = L::held(&hold);
    let update = match how {
        Settlement::Commit => L::commit(account, amount),
        Settlement::Release => L::release(account, amount),
    };
    if update.exec(txn).await?.rows_affected != 1 {
        let words = &L::WORDS;
        return Err(BusinessError::rejected(format!(
            "ledger inconsistent: {} {account} {} {branch}",
            words.account, words.shortfall
        )));
    }
    Ok(())
}

/// Reads a participant's books (see [`Audit`]).
pub(crate) async fn audit<L: HoldLedger>(db: &DatabaseConnection) -> Result<Audit, Error> {
    let accounts = L::Account::find().all(db).await?;
    let holds = L::Hold::find().into_model::<HoldRow>().all(db).await?;
    let (moved, reserved) = L::books(&accounts)?;
    let (effects, branch_effects) = Audit::collect_holds(L::NAME, holds)?;
    Ok(Audit {
        participant: L::NAME,
        effects,
        branch_effects,
        moved,
        reserved,
        barrier_records: count_barrier_records(db).await?,
    })
}

/// Per-saga and per-branch effects, as [`Audit`] holds them.
pub type HoldEffects = (HashMap<SagaId, Effect>, HashMap<BranchRef, Effect>);

/// A participant's books, read through its own tables. The chaos harness combines the
/// three audits with the coordinator's saga outcomes to check the invariants
/// (docs/GUARANTEES.md#invariants).
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

    /// Builds the effect maps from hold rows.
    pub fn collect_holds(participant: &'static str, holds: Vec<HoldRow>) -> Result<HoldEffects, Error> {
        let mut effects: HashMap<SagaId, Effect> = HashMap::new();
        let mut branch_effects = HashMap::new();
        for HoldRow {
            saga_id: saga,
            branch_id: branch,
            amount,
            state,
        } in holds
        {
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
    fn an_unsettled_hold_is_answered_by_its_state() {
        use HoldState::*;
        use Settlement::*;
        let words = HoldWords {
            missing: "missing hold",
            hold: "hold",
            already_released: "released already",
            already_committed: "committed already",
            account: "account",
            shortfall: "is short",
        };
        let branch = BranchRef::new(SagaId(uuid::Uuid::nil()), BranchId(3));
        let answer = |how: Settlement, found| match how.unsettled(&words, &branch, found) {
            Ok(()) => "ok".to_owned(),
            Err(e) => e.to_string(),
        };
        let missing = format!("rejected: no missing hold for branch {branch}");
        assert_eq!(answer(Commit, None), missing);
        assert_eq!(answer(Commit, Some(Committed)), "ok");
        assert_eq!(answer(Commit, Some(Released)), "rejected: released already");
        assert_eq!(answer(Commit, Some(Reserved)), "retryable: hold changed concurrently");
        assert_eq!(answer(Release, None), "ok");
        assert_eq!(answer(Release, Some(Released)), "ok");
        assert_eq!(answer(Release, Some(Committed)), "rejected: committed already");
        assert_eq!(answer(Release, Some(Reserved)), "retryable: hold changed concurrently");
    }

    #[test]
    fn totals_do_not_wrap() {
        assert_eq!(total("t", "x", [1, 2, 3]).unwrap(), 6);
        assert!(matches!(total("t", "x", [i64::MAX, 1]), Err(Error::Corrupt(_))));
    }
}
