//! The participant SDK: what a team implements ([`Participant`]) and what it gets for
//! free (the [`barrier`] and the [`runtime`]).
//!
//! A participant's business code sees one database transaction and a decoded,
//! validated payload. It never sees duplicates, an empty cancel or a try that arrives
//! after its cancel: the barrier answers those from its table, in the same transaction
//! as the business write, so "effect applied" and "answer recorded" commit together.

pub mod barrier;
pub mod metrics;
pub mod runtime;

pub use async_trait::async_trait;
use kessai_messages::payment::BranchPayload;
use kessai_messages::{BranchId, SagaId};
use sea_orm::{DatabaseTransaction, DbErr};
use std::fmt;

/// Which branch of which saga a command is about: the key of every hold a participant
/// keeps, so confirm and cancel find what their try reserved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BranchRef {
    pub saga_id: SagaId,
    pub branch_id: BranchId,
}

impl BranchRef {
    pub fn new(saga_id: SagaId, branch_id: BranchId) -> Self {
        Self { saga_id, branch_id }
    }

    /// The saga id as stored in `saga_id` columns.
    pub fn saga_key(&self) -> String {
        self.saga_id.to_string()
    }

    /// The branch id as stored in `branch_id` columns (INTEGER). Branch ids come off
    /// the wire as `u32`; the runtime refuses (dead-letters) ids above `i32::MAX`, so
    /// for a command that reached business code this conversion is exact.
    pub fn branch_key(&self) -> i32 {
        i32::try_from(self.branch_id.0).unwrap_or(i32::MAX)
    }
}

impl fmt::Display for BranchRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.saga_id, self.branch_id)
    }
}

/// How business code refuses or fails.
#[derive(Debug, thiserror::Error)]
pub enum BusinessError {
    /// A final business refusal (insufficient funds, frozen account, unknown card).
    /// The barrier records it, rolls back the operation's writes and answers it to
    /// every redelivery of the command.
    #[error("rejected: {0}")]
    Rejected(String),
    /// A transient failure. Nothing is recorded; the command is redelivered later.
    #[error("retryable: {0}")]
    Retryable(String),
    /// A database failure: treated as retryable, nothing is recorded.
    #[error("database error: {0}")]
    Db(#[from] DbErr),
}

impl BusinessError {
    pub fn rejected(reason: impl Into<String>) -> Self {
        BusinessError::Rejected(reason.into())
    }
    pub fn retryable(reason: impl Into<String>) -> Self {
        BusinessError::Retryable(reason.into())
    }
}

/// A TCC participant's business logic.
///
/// Each operation runs inside the runtime's database transaction (in its own
/// savepoint): write through `txn` only, never through another connection, or the
/// barrier's exactly-once guarantee is lost (and on SQLite, whose pool has one
/// connection, the call deadlocks).
///
/// Contract the barrier relies on:
/// - `try_` reserves (or refuses with [`BusinessError::Rejected`]; its writes are then
///   rolled back). It runs at most once per branch, and never after that branch's
///   cancel.
/// - `confirm` and `cancel` run only after a successful try of the same branch, at
///   most once each, never both. They should act on what the try stored (the hold
///   row), not on the payload, which a buggy or malicious sender could change.
#[async_trait]
pub trait Participant: Send + Sync + 'static {
    /// The command payload, decoded and validated before any database work. A payload
    /// that does not decode is dead-lettered: resending it cannot help.
    type Payload: BranchPayload + Send + Sync;

    /// The participant's name on the wire (`Command::participant`) and in queue names.
    fn name(&self) -> &'static str;

    async fn try_(
        &self,
        txn: &DatabaseTransaction,
        branch: &BranchRef,
        payload: &Self::Payload,
    ) -> Result<(), BusinessError>;

    async fn confirm(
        &self,
        txn: &DatabaseTransaction,
        branch: &BranchRef,
        payload: &Self::Payload,
    ) -> Result<(), BusinessError>;

    async fn cancel(
        &self,
        txn: &DatabaseTransaction,
        branch: &BranchRef,
        payload: &Self::Payload,
    ) -> Result<(), BusinessError>;
}

/// Wall-clock Unix milliseconds, for `created_at_ms` / `updated_at_ms` columns.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
