//! The barrier (docs/GUARANTEES.md#barrier; DTM's branch barrier, Seata's TCC fence).
//!
//! Every command runs in a savepoint of the caller's transaction, and the barrier row
//! for (saga, branch, operation) is written in that same savepoint as the business
//! effect — so either both commit or neither does, and a redelivered command finds the
//! row and gets the stored answer without a second effect.
//!
//! Each operation first *claims* its key (`INSERT .. ON CONFLICT DO NOTHING`). The
//! primary key serialises concurrent handlers of the same command on PostgreSQL (the
//! second insert waits for the first transaction, then finds its row); on SQLite there
//! is one writer anyway. A claim that finds an existing row replays it.
//!
//! | arrives | finds | answer | effect |
//! |---|---|---|---|
//! | try | nothing | business result (`Rejected` rolls back its writes) | reserve |
//! | try | its own row, or the placeholder a cancel left | stored answer | none |
//! | confirm | no try, or a rejected try | `Retryable`, nothing recorded | none |
//! | confirm | an ok cancel | `Rejected("already cancelled")` | none |
//! | confirm | an ok try | business result | commit |
//! | cancel | no try (**empty cancel**) | `Ok`; also records the try as rejected, "cancelled before try" — **anti-hanging**: that row is what a late try finds | none |
//! | cancel | a rejected try | `Ok` | none |
//! | cancel | an ok confirm | `Rejected("already confirmed")` | none |
//! | cancel | an ok try | business result | release |
//!
//! Recording the try row at cancel time (rather than having a late try look for the
//! cancel row) is what makes anti-hanging hold under concurrent PostgreSQL
//! transactions: a try and its cancel contend on the same key instead of each checking
//! for the other's uncommitted row and both missing it. Confirm and cancel lock the try
//! row (`FOR UPDATE`; a no-op on SQLite) so they cannot both take effect either.
//!
//! `Retryable` from business code and database errors record nothing: the savepoint is
//! rolled back and the caller requeues the delivery.
//!
//! ## Round trips
//!
//! Each statement and each savepoint operation is a round trip to the database (with
//! sqlx's SQLite, a hand-off to its worker thread and back), so the barrier spends as
//! few as its guarantees allow. On the success path, with the reference participants:
//!
//! | operation | SQLite | PostgreSQL |
//! |---|---|---|
//! | try | `SAVEPOINT`, claim, business (2), `RELEASE`: 5 | + nested `SAVEPOINT` / `RELEASE`: 7 |
//! | confirm | `SAVEPOINT`, claim, one SELECT of the try and cancel rows, business (2), `RELEASE`: 6 | + nested savepoint, + a second SELECT: 9 |
//! | cancel | as confirm, + the try placeholder: 7 | 10 |
//!
//! The two backends differ where concurrency needs it (see `Writers`). SQLite has one
//! writer: business code runs directly in the command's savepoint, and a refusal rolls
//! the savepoint back and records itself in a fresh one (`record_refusal`); confirm and
//! cancel read both rows they decide on in one SELECT. PostgreSQL keeps the nested
//! business savepoint, so a refusal never gives up the claim (`run_business`), and
//! reads the opposite operation's row only after it holds the try row's lock
//! (`decisive_rows`).

use super::{BranchRef, BusinessError, Participant, now_ms};
use crate::Error;
use kessai_messages::payment::BranchPayload;
use kessai_messages::{Body, BranchId, Envelope, Operation, Outcome, SagaId};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, DbErr, EntityTrait, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};

/// The `barriers` table (see `kessai_migrations::participants`).
pub mod entity {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "barriers")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub saga_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub branch_id: i32,
        #[sea_orm(primary_key, auto_increment = false)]
        pub operation: String,
        /// `ok` or `rejected`.
        pub outcome: String,
        /// The refusal for `rejected`; for `ok`, why there was no effect, if there was
        /// none (empty cancel).
        pub reason: Option<String>,
        pub created_at_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

const OUTCOME_OK: &str = "ok";
const OUTCOME_REJECTED: &str = "rejected";
/// The reason stored on the try row a cancel writes when no try ran; a late try replays it.
pub const CANCELLED_BEFORE_TRY: &str = "cancelled before try";
/// The note stored on an empty cancel's row.
pub const EMPTY_CANCEL: &str = "empty cancel: try never ran";
/// The note stored on a cancel whose try had been rejected.
pub const CANCEL_AFTER_REJECTED_TRY: &str = "try was rejected: nothing to cancel";
pub const ALREADY_CONFIRMED: &str = "already confirmed";
pub const ALREADY_CANCELLED: &str = "already cancelled";

/// One stored barrier row: which answer a participant gave to one operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BarrierRecord {
    pub saga_id: SagaId,
    pub branch_id: BranchId,
    pub operation: Operation,
    /// The answer every redelivery gets: `Ok` or `Rejected`.
    pub outcome: Outcome,
    /// For an `Ok` that had no effect, why ([`EMPTY_CANCEL`], [`CANCEL_AFTER_REJECTED_TRY`]).
    pub note: Option<String>,
    pub created_at_ms: i64,
}

impl BarrierRecord {
    fn from_row(row: entity::Model) -> Result<Self, Error> {
        let saga_id = row
            .saga_id
            .parse::<SagaId>()
            .map_err(|e| Error::Corrupt(format!("barrier saga id {:?}: {e}", row.saga_id)))?;
        let branch_id = u32::try_from(row.branch_id)
            .map(BranchId)
            .map_err(|_| Error::Corrupt(format!("barrier branch id {}", row.branch_id)))?;
        let operation = Operation::parse(&row.operation)
            .ok_or_else(|| Error::Corrupt(format!("barrier operation {:?}", row.operation)))?;
        let (outcome, note) = stored_outcome(&row)?;
        Ok(BarrierRecord {
            saga_id,
            branch_id,
            operation,
            outcome,
            note,
            created_at_ms: row.created_at_ms,
        })
    }

    /// Whether this operation took effect (or may have): an `Ok` with no "no effect" note.
    pub fn took_effect(&self) -> bool {
        self.outcome == Outcome::Ok && self.note.is_none()
    }
}

fn stored_outcome(row: &entity::Model) -> Result<(Outcome, Option<String>), Error> {
    match row.outcome.as_str() {
        OUTCOME_OK => Ok((Outcome::Ok, row.reason.clone())),
        OUTCOME_REJECTED => Ok((
            Outcome::rejected(row.reason.clone().unwrap_or_else(|| "rejected".into())),
            None,
        )),
        other => Err(Error::Corrupt(format!("barrier outcome {other:?}"))),
    }
}

/// The barrier rows of one saga, ordered by branch then operation name. The chaos
/// checks use this to prove, e.g., that no branch was confirmed after a cancel.
pub async fn barrier_records<C: ConnectionTrait>(db: &C, saga_id: SagaId) -> Result<Vec<BarrierRecord>, Error> {
    entity::Entity::find()
        .filter(entity::Column::SagaId.eq(saga_id.to_string()))
        .order_by_asc(entity::Column::BranchId)
        .order_by_asc(entity::Column::Operation)
        .all(db)
        .await?
        .into_iter()
        .map(BarrierRecord::from_row)
        .collect()
}

/// How many barrier rows a participant holds.
pub async fn count_barrier_records<C: ConnectionTrait>(db: &C) -> Result<u64, Error> {
    Ok(entity::Entity::find().count(db).await?)
}

/// A command that passed every check that does not need the database.
#[derive(Clone, Debug)]
pub struct PreparedCommand<T> {
    pub branch: BranchRef,
    pub operation: Operation,
    pub payload: T,
}

/// Checks that `envelope` is a command this participant can act on and decodes its
/// payload. Every failure is [`Error::Invalid`]: permanent, the runtime dead-letters it.
pub fn prepare<P: Participant>(participant: &P, envelope: &Envelope) -> Result<PreparedCommand<P::Payload>, Error> {
    let command = match &envelope.body {
        Body::Command(c) => c,
        Body::Reply(_) => {
            return Err(Error::Invalid(format!(
                "a reply arrived on {}'s command queue",
                participant.name()
            )));
        }
    };
    if command.participant != participant.name() {
        return Err(Error::Invalid(format!(
            "command is for participant {:?}, this is {:?}",
            command.participant,
            participant.name()
        )));
    }
    if i32::try_from(envelope.branch_id.0).is_err() {
        return Err(Error::Invalid(format!(
            "branch id {} is out of range",
            envelope.branch_id
        )));
    }
    let payload = P::Payload::from_value(&command.payload)
        .map_err(|e| Error::Invalid(format!("bad {} payload: {e}", participant.name())))?;
    Ok(PreparedCommand {
        branch: BranchRef::new(envelope.saga_id, envelope.branch_id),
        operation: envelope.operation,
        payload,
    })
}

/// Applies one command through the barrier inside `txn` and returns the answer to send.
///
/// The command runs in its own savepoint, so `txn` stays usable whatever happens: an
/// `Err` means nothing of this command was written. [`Error::Invalid`] → dead-letter;
/// [`Error::Retryable`] / [`Error::Db`] → requeue the delivery. The caller commits `txn`
/// and only then sends the answer.
pub async fn handle_command<P: Participant>(
    participant: &P,
    txn: &DatabaseTransaction,
    envelope: &Envelope,
) -> Result<Outcome, Error> {
    let command = prepare(participant, envelope)?;
    execute(participant, txn, &command)
        .await
        .map(|(outcome, _)| outcome)
        .map_err(|f| f.error)
}

/// A failed command. `poisoned` means even rolling back its savepoint failed: the
/// enclosing transaction cannot be trusted (on PostgreSQL it may be aborted, and its
/// COMMIT would silently roll back), so the whole batch must be abandoned.
#[derive(Debug)]
pub(crate) struct CommandFailure {
    pub error: Error,
    pub poisoned: bool,
}

/// What to do with the command's savepoint once its answer is known.
/// What the barrier made of a command, for metrics and traces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarrierHit {
    /// The first delivery of the command: it ran.
    First,
    /// A redelivery: the stored answer was replayed, nothing ran.
    Duplicate,
    /// A cancel whose try never ran: answered `Ok`, nothing to undo, recorded.
    EmptyCancel,
    /// A try that arrived after its branch's cancel: refused, nothing ran.
    HangingTry,
}

impl BarrierHit {
    pub fn as_str(self) -> &'static str {
        match self {
            BarrierHit::First => "first",
            BarrierHit::Duplicate => "duplicate",
            BarrierHit::EmptyCancel => "empty_cancel",
            BarrierHit::HangingTry => "hanging_try",
        }
    }
}

enum Decision {
    /// Release it: the barrier row (and any effect) commits with the transaction.
    Record(Outcome),
    /// Roll it back: answer without recording anything (a protocol anomaly the
    /// coordinator will resolve by resending).
    Discard(Outcome),
    /// Business code refused, possibly after writing, in the command's own savepoint
    /// ([`Writers::One`]): roll it back, which undoes the claim with the partial writes,
    /// then record the refusal in a fresh savepoint (`record_refusal`).
    Undo(String),
}

/// What the barrier may assume about other transactions writing while a command runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Writers {
    /// SQLite: one writer at a time. A command's first statement is its claim, a write,
    /// and from then on its transaction holds the database's write lock until it
    /// commits: no other transaction can insert, change or lock a barrier row (or a
    /// ledger row) before this command is done.
    One,
    /// PostgreSQL: concurrent transactions at READ COMMITTED, a fresh snapshot per
    /// statement. Rows are serialised only by what the barrier claims and locks.
    Many,
}

impl Writers {
    fn of(txn: &DatabaseTransaction) -> Self {
        match txn.get_database_backend() {
            DbBackend::Sqlite => Writers::One,
            _ => Writers::Many,
        }
    }
}

/// [`handle_command`] for an already prepared command.
pub(crate) async fn execute<P: Participant>(
    participant: &P,
    txn: &DatabaseTransaction,
    command: &PreparedCommand<P::Payload>,
) -> Result<(Outcome, BarrierHit), CommandFailure> {
    let savepoint = open_savepoint(txn).await?;
    let mut hit = BarrierHit::First;
    let outcome = match apply(participant, &savepoint, command, &mut hit).await {
        Ok(Decision::Record(outcome)) => finish(savepoint.commit().await, Ok(outcome)),
        Ok(Decision::Discard(outcome)) => finish(savepoint.rollback().await, Ok(outcome)),
        Ok(Decision::Undo(reason)) => {
            finish(savepoint.rollback().await, Ok(()))?;
            record_refusal(txn, command, &reason).await
        }
        Err(error) => finish(savepoint.rollback().await, Err(error)),
    }?;
    Ok((outcome, hit))
}

async fn open_savepoint(txn: &DatabaseTransaction) -> Result<DatabaseTransaction, CommandFailure> {
    txn.begin().await.map_err(|e| CommandFailure {
        error: e.into(),
        poisoned: true,
    })
}

/// Combines how a savepoint ended with the command's answer: a savepoint that could
/// not be released or rolled back poisons the batch whatever the answer was.
fn finish<T>(ended: Result<(), DbErr>, answer: Result<T, Error>) -> Result<T, CommandFailure> {
    match (ended, answer) {
        (Ok(()), Ok(value)) => Ok(value),
        (Ok(()), Err(error)) => Err(CommandFailure { error, poisoned: false }),
        (Err(e), _) => Err(CommandFailure {
            error: e.into(),
            poisoned: true,
        }),
    }
}

/// Records business code's refusal after [`Decision::Undo`] rolled back the command's
/// savepoint, claim included.
///
/// Why claim again instead of keeping the first claim: business code ran in the
/// command's own savepoint (no nested one, two round trips fewer on every command), so
/// undoing its partial writes undoes the claim with them. The new claim carries the
/// refusal. If it finds a row after all, that row is the answer: every delivery of a
/// command must get the one stored answer, so it is replayed rather than overwritten
/// (with one writer nothing can get in between; the rule holds unconditionally anyway).
async fn record_refusal<T>(
    txn: &DatabaseTransaction,
    command: &PreparedCommand<T>,
    reason: &str,
) -> Result<Outcome, CommandFailure> {
    let (branch, op) = (&command.branch, command.operation);
    let savepoint = open_savepoint(txn).await?;
    let result = match claim(&savepoint, branch, op, OUTCOME_REJECTED, Some(reason)).await {
        Ok(true) => Ok(Outcome::rejected(reason)),
        Ok(false) => replay(&savepoint, branch, op).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(outcome) => finish(savepoint.commit().await, Ok(outcome)),
        Err(error) => finish(savepoint.rollback().await, Err(error)),
    }
}

async fn apply<P: Participant>(
    participant: &P,
    txn: &DatabaseTransaction,
    command: &PreparedCommand<P::Payload>,
    hit: &mut BarrierHit,
) -> Result<Decision, Error> {
    let branch = &command.branch;
    let op = command.operation;
    if !claim(txn, branch, op, OUTCOME_OK, None).await? {
        let outcome = replay(txn, branch, op).await?;
        let hanging =
            op == Operation::Try && matches!(&outcome, Outcome::Rejected { reason } if reason == CANCELLED_BEFORE_TRY);
        *hit = if hanging {
            BarrierHit::HangingTry
        } else {
            BarrierHit::Duplicate
        };
        return Ok(Decision::Record(outcome));
    }
    let writers = Writers::of(txn);
    match op {
        Operation::Try => {}
        Operation::Confirm => {
            let rows = decisive_rows(txn, branch, Operation::Cancel, writers).await?;
            match &rows.tried {
                None => {
                    return Ok(Decision::Discard(Outcome::retryable(
                        "confirm arrived before any try of this branch",
                    )));
                }
                Some(t) if t.outcome != OUTCOME_OK => {
                    return Ok(Decision::Discard(Outcome::retryable(
                        "confirm arrived for a branch whose try was rejected",
                    )));
                }
                Some(_) => {}
            }
            if rows.opposite_took_place() {
                return refuse(txn, branch, op, ALREADY_CANCELLED).await;
            }
        }
        Operation::Cancel => {
            // The try placeholder: if no try ran, this both makes the cancel empty and
            // blocks the try from ever taking effect.
            let reason = Some(CANCELLED_BEFORE_TRY);
            if claim(txn, branch, Operation::Try, OUTCOME_REJECTED, reason).await? {
                note(txn, branch, op, EMPTY_CANCEL).await?;
                *hit = BarrierHit::EmptyCancel;
                return Ok(Decision::Record(Outcome::Ok));
            }
            let rows = decisive_rows(txn, branch, Operation::Confirm, writers).await?;
            let Some(tried) = &rows.tried else {
                return Err(Error::Retryable("try row vanished during cancel".into()));
            };
            if tried.outcome != OUTCOME_OK {
                note(txn, branch, op, CANCEL_AFTER_REJECTED_TRY).await?;
                return Ok(Decision::Record(Outcome::Ok));
            }
            if rows.opposite_took_place() {
                return refuse(txn, branch, op, ALREADY_CONFIRMED).await;
            }
        }
    }
    run_business(participant, txn, command, writers).await
}

/// The barrier rows a confirm or cancel decides on.
struct DecisiveRows {
    /// The try's row, locked on PostgreSQL.
    tried: Option<entity::Model>,
    /// The opposite operation's row (cancel for a confirm, confirm for a cancel). Read
    /// only when the try took effect: otherwise it does not matter.
    opposite: Option<entity::Model>,
}

impl DecisiveRows {
    fn opposite_took_place(&self) -> bool {
        self.opposite.as_ref().is_some_and(|row| row.outcome == OUTCOME_OK)
    }
}

/// Reads the try row and the `opposite` operation's row of `branch`.
///
/// With [`Writers::One`], one SELECT of both: nothing can change between it and the
/// end of the command.
///
/// With [`Writers::Many`], two statements, and the order matters: first lock the try
/// row (`FOR UPDATE`), which is what makes confirm and cancel of one branch exclusive,
/// then read the opposite row in a statement of its own. The opposite operation
/// inserts its row *before* locking the try row and commits it while holding that
/// lock. A single `SELECT .. FOR UPDATE` of both rows would take its snapshot before
/// waiting for (or just missing) that lock; when it gets the lock, READ COMMITTED
/// re-reads only the locked row, not rows committed since its snapshot, so it would not
/// see the opposite row and both operations could take effect. The second statement
/// gets a snapshot taken after the lock.
async fn decisive_rows(
    txn: &DatabaseTransaction,
    branch: &BranchRef,
    opposite: Operation,
    writers: Writers,
) -> Result<DecisiveRows, Error> {
    match writers {
        Writers::One => {
            let operations = [Operation::Try.as_str(), opposite.as_str()];
            let rows = entity::Entity::find()
                .filter(entity::Column::SagaId.eq(branch.saga_key()))
                .filter(entity::Column::BranchId.eq(branch.branch_key()))
                .filter(entity::Column::Operation.is_in(operations))
                .all(txn)
                .await?;
            let (tried, others): (Vec<_>, Vec<_>) = rows
                .into_iter()
                .partition(|row| row.operation == Operation::Try.as_str());
            let tried = tried.into_iter().next();
            let opposite = match &tried {
                Some(t) if t.outcome == OUTCOME_OK => others.into_iter().next(),
                _ => None,
            };
            Ok(DecisiveRows { tried, opposite })
        }
        Writers::Many => {
            let tried = find(txn, branch, Operation::Try, true).await?;
            let opposite = match &tried {
                Some(t) if t.outcome == OUTCOME_OK => find(txn, branch, opposite, false).await?,
                _ => None,
            };
            Ok(DecisiveRows { tried, opposite })
        }
    }
}

/// Runs business code and turns its result into the command's decision.
///
/// With [`Writers::One`], directly in the command's savepoint; a refusal becomes
/// [`Decision::Undo`].
///
/// With [`Writers::Many`], in a nested savepoint, so that a refusal rolls back the
/// business writes but keeps the claim. Giving the claim up (as `Undo` does) would let
/// a duplicate of this command waiting on it in another transaction through; that
/// duplicate's business code would then wait for ledger rows this transaction locked in
/// earlier commands of its batch, while the claim of the refusal waits for the
/// duplicate: a lock cycle (a `deadlock_timeout` stall and an abandoned batch) that
/// holding the claim rules out.
async fn run_business<P: Participant>(
    participant: &P,
    txn: &DatabaseTransaction,
    command: &PreparedCommand<P::Payload>,
    writers: Writers,
) -> Result<Decision, Error> {
    match writers {
        Writers::One => match invoke(participant, txn, command).await {
            Ok(()) => Ok(Decision::Record(Outcome::Ok)),
            Err(BusinessError::Rejected(reason)) => Ok(Decision::Undo(refusal_reason(reason, participant.name()))),
            Err(BusinessError::Retryable(reason)) => Err(Error::Retryable(reason)),
            Err(BusinessError::Db(e)) => Err(Error::Db(e)),
        },
        Writers::Many => {
            let savepoint = txn.begin().await?;
            let result = invoke(participant, &savepoint, command).await;
            match end_business(savepoint, result).await? {
                None => Ok(Decision::Record(Outcome::Ok)),
                Some(reason) => {
                    let reason = refusal_reason(reason, participant.name());
                    refuse(txn, &command.branch, command.operation, &reason).await
                }
            }
        }
    }
}

async fn invoke<P: Participant>(
    participant: &P,
    txn: &DatabaseTransaction,
    command: &PreparedCommand<P::Payload>,
) -> Result<(), BusinessError> {
    let (branch, payload) = (&command.branch, &command.payload);
    match command.operation {
        Operation::Try => participant.try_(txn, branch, payload).await,
        Operation::Confirm => participant.confirm(txn, branch, payload).await,
        Operation::Cancel => participant.cancel(txn, branch, payload).await,
    }
}

/// Ends the nested savepoint business code ran in, so a rejection leaves no partial
/// write. `Ok(None)`: it took effect. `Ok(Some(reason))`: it refused, writes rolled back.
async fn end_business(
    savepoint: DatabaseTransaction,
    result: Result<(), BusinessError>,
) -> Result<Option<String>, Error> {
    match result {
        Ok(()) => {
            savepoint.commit().await?;
            Ok(None)
        }
        Err(BusinessError::Rejected(reason)) => {
            savepoint.rollback().await?;
            Ok(Some(reason))
        }
        Err(BusinessError::Retryable(reason)) => {
            savepoint.rollback().await?;
            Err(Error::Retryable(reason))
        }
        Err(BusinessError::Db(e)) => {
            // The command's savepoint is rolled back next and covers this one; an error
            // from this rollback would only hide the original one.
            let _ = savepoint.rollback().await;
            Err(Error::Db(e))
        }
    }
}

/// A refusal reaches the coordinator's timeline; never send it blank.
fn refusal_reason(reason: String, participant: &str) -> String {
    if reason.trim().is_empty() {
        format!("rejected by {participant}")
    } else {
        reason
    }
}

/// Rewrites the claimed row as a refusal and answers it.
async fn refuse(txn: &DatabaseTransaction, branch: &BranchRef, op: Operation, reason: &str) -> Result<Decision, Error> {
    update(txn, branch, op, OUTCOME_REJECTED, Some(reason)).await?;
    Ok(Decision::Record(Outcome::rejected(reason)))
}

/// Annotates the claimed `ok` row with why it had no effect.
async fn note(txn: &DatabaseTransaction, branch: &BranchRef, op: Operation, note: &str) -> Result<(), Error> {
    update(txn, branch, op, OUTCOME_OK, Some(note)).await
}

/// Inserts the barrier row unless one exists. `true` when this call inserted it.
async fn claim(
    txn: &DatabaseTransaction,
    branch: &BranchRef,
    op: Operation,
    outcome: &str,
    reason: Option<&str>,
) -> Result<bool, Error> {
    let row = entity::ActiveModel {
        created_at_ms: Set(now_ms()),
        ..answer(branch, op, outcome, reason)
    };
    let inserted = entity::Entity::insert(row)
        .on_conflict(
            OnConflict::columns([
                entity::Column::SagaId,
                entity::Column::BranchId,
                entity::Column::Operation,
            ])
            .do_nothing()
            .to_owned(),
        )
        .exec_without_returning(txn)
        .await?;
    Ok(inserted == 1)
}

async fn update(
    txn: &DatabaseTransaction,
    branch: &BranchRef,
    op: Operation,
    outcome: &str,
    reason: Option<&str>,
) -> Result<(), Error> {
    // Without RETURNING: one statement on every backend (reading the row back would
    // be a second one where sea-orm does not use RETURNING).
    entity::Entity::update(answer(branch, op, outcome, reason))
        .exec_without_returning(txn)
        .await?;
    Ok(())
}

/// The barrier row of `op` on `branch` holding an answer, for [`claim`] and [`update`]
/// (`created_at_ms` is left unset: only a claim writes it).
fn answer(branch: &BranchRef, op: Operation, outcome: &str, reason: Option<&str>) -> entity::ActiveModel {
    entity::ActiveModel {
        saga_id: Set(branch.saga_key()),
        branch_id: Set(branch.branch_key()),
        operation: Set(op.as_str().to_owned()),
        outcome: Set(outcome.to_owned()),
        reason: Set(reason.map(str::to_owned)),
        ..Default::default()
    }
}

async fn find(
    txn: &DatabaseTransaction,
    branch: &BranchRef,
    op: Operation,
    lock: bool,
) -> Result<Option<entity::Model>, Error> {
    let mut query = entity::Entity::find_by_id((branch.saga_key(), branch.branch_key(), op.as_str().to_owned()));
    if lock {
        query = query.lock_exclusive();
    }
    Ok(query.one(txn).await?)
}

/// The stored answer to a command seen before.
async fn replay(txn: &DatabaseTransaction, branch: &BranchRef, op: Operation) -> Result<Outcome, Error> {
    let row = find(txn, branch, op, false)
        .await?
        .ok_or_else(|| Error::Retryable(format!("barrier row for {branch} {op} vanished")))?;
    stored_outcome(&row).map(|(outcome, _)| outcome)
}
