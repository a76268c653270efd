//! # kessai-coordinator — the saga engine
//!
//! Drives each saga through try → confirm, or try → cancel, across its participants,
//! and survives crashes: all state, timers included, lives in its database.
//!
//! ## Layout
//! - [`machine`]: the pure state machine. `apply(saga, event, now) -> (saga, actions)`;
//!   no I/O, tested by tables and property tests.
//! - [`store`]: sea-orm persistence. A transition, its timeline entries and its
//!   outgoing commands (the transactional outbox) commit together, guarded by the
//!   saga's version so a stale writer changes nothing.
//! - [`engine`]: the running coordinator. Its tasks:
//!   - *intake* — batches submissions into one transaction (group commit);
//!   - *relay* — publishes outbox rows, deletes them once the broker confirmed;
//!   - *replies* — consumes the reply queue, applies replies in batches, acks after
//!     commit, dead-letters what it cannot decode or place;
//!   - *timers* — wakes sagas whose `wake_at` passed: try deadlines, resends, `stuck`;
//!   - *resume* — at start, resends what every unfinished saga waits on;
//!   - *admission* — re-reads the unfinished count and re-sizes the bound on it from
//!     the measured completion rate: beyond the bound a submission is refused
//!     ([`Error::Overloaded`], HTTP 429) and creates nothing.
//! - [`definitions`]: saga kinds — how a request of a kind (`payment`, `generic`, or a
//!   deployment's own) is validated and becomes branches.
//! - [`clock`]: the time seam, so tests run on tokio's paused clock.
//!
//! One payment: `Coordinator::submit_payment` → intake commits the saga and three try
//! commands in the outbox → relay publishes them → participants answer on the reply
//! queue → replies task applies them; the last prepared branch makes the machine
//! decide and emit confirms into the outbox → ... → `finished`, and waiters wake.

pub mod clock;
pub mod definitions;
pub mod engine;
pub mod inspect;
pub mod machine;
pub mod metrics;
pub mod store;
mod trace;

pub use clock::{Clock, ManualClock, SystemClock, TokioClock};
pub use definitions::{BranchCheck, GenericSaga, PaymentSaga, SagaDefinition, SagaDefinitions, SagaPlan};
pub use engine::{Admission, AdmissionLimit, Coordinator, CoordinatorConfig, CoordinatorTasks, EngineStats, Submitted};
pub use machine::{Policy, SagaState};
pub use store::{NewSaga, SagaFilter, SagaSummary, SagaView};

/// The coordinator's errors. [`Error::is_retryable`] decides requeue versus
/// dead-letter for the message being handled.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database: {0}")]
    Db(#[from] sea_orm::DbErr),
    #[error(transparent)]
    Transport(#[from] kessai_transport::Error),
    #[error("stored data is not what this version expects: {0}")]
    Corrupt(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("the coordinator is shutting down")]
    ShuttingDown,
    /// Admission control refused a new saga: too many are unfinished. Nothing was
    /// created; the client may try again after `retry_after`.
    #[error("too many unfinished sagas; retry in {retry_after:?}")]
    Overloaded { retry_after: std::time::Duration },
    /// The idempotency key names saga `saga_id`, created from another request.
    /// Nothing was created.
    #[error("the idempotency key names saga {saga_id}, submitted with another request")]
    IdempotencyConflict { saga_id: kessai_messages::SagaId },
}

impl Error {
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Db(_) | Error::ShuttingDown | Error::Overloaded { .. } => true,
            Error::Transport(e) => e.is_retryable(),
            Error::Corrupt(_) | Error::Invalid(_) | Error::IdempotencyConflict { .. } => false,
        }
    }
}
