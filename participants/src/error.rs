//! The crate's one error type.

use sea_orm::DbErr;

/// Why the participant SDK could not act on a command or a request.
///
/// [`Error::is_retryable`] is what the runtime decides on: a retryable failure puts the
/// delivery back on its queue (the barrier makes the redelivery safe), a permanent one
/// dead-letters it — redelivering the same bytes can never help.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command cannot be acted on as sent: a reply on a command queue, a command
    /// for another participant, a payload that fails validation. Permanent.
    #[error("invalid command: {0}")]
    Invalid(String),
    /// The business code asked for a redelivery (a dependency is down, a lock timed
    /// out). Nothing was recorded.
    #[error("retryable failure: {0}")]
    Retryable(String),
    /// The database failed; the transaction was rolled back. Retryable: databases
    /// come back, and nothing partial was committed.
    #[error("database error: {0}")]
    Db(#[from] DbErr),
    /// The broker failed; retryable when the transport says so.
    #[error("transport error: {0}")]
    Transport(#[from] kessai_transport::Error),
    /// A stored row does not parse (an unknown operation, a malformed saga id).
    /// Permanent: someone wrote the table by hand or a newer version did.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
}

impl Error {
    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Retryable(_) | Error::Db(_) => true,
            Error::Transport(e) => e.is_retryable(),
            Error::Invalid(_) | Error::Corrupt(_) => false,
        }
    }
}
