//! Shared test helpers: every test gets its own SQLite file in its own temp dir.

#![allow(dead_code)]

use kessai_messages::payment::Currency;
use kessai_messages::{BranchId, Command, Envelope, Operation, Outcome, SagaId};
use kessai_migrations::{Service, open, sqlite_url};
use kessai_participants::{Participant, handle_command};
use sea_orm::{DatabaseConnection, TransactionTrait};
use serde_json::Value;
use tempfile::TempDir;

pub const REPLY_QUEUE: &str = "test-coordinator-replies";

/// A migrated participant database in a fresh temp dir (kept alive by the `TempDir`).
pub async fn spawn_db(service: Service) -> (TempDir, DatabaseConnection) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = sqlite_url(&dir.path().join("participant.db"));
    let db = open(&url, service, 1).await.expect("open and migrate");
    (dir, db)
}

pub fn eur() -> Currency {
    Currency::new("EUR").expect("EUR")
}

pub fn command(
    participant: &str,
    saga: SagaId,
    branch: u32,
    operation: Operation,
    attempt: u32,
    payload: Value,
) -> Envelope {
    Envelope::command(
        saga,
        BranchId(branch),
        operation,
        attempt,
        None,
        Command {
            participant: participant.into(),
            reply_to: REPLY_QUEUE.into(),
            payload,
        },
    )
}

/// Runs one command through the barrier in its own committed transaction, the way the
/// runtime does for a batch of one.
pub async fn run<P: Participant>(participant: &P, db: &DatabaseConnection, envelope: &Envelope) -> Outcome {
    let txn = db.begin().await.expect("begin");
    let outcome = handle_command(participant, &txn, envelope).await.expect("handled");
    txn.commit().await.expect("commit");
    outcome
}

pub fn rejected(outcome: &Outcome) -> Option<&str> {
    match outcome {
        Outcome::Rejected { reason } => Some(reason),
        _ => None,
    }
}
