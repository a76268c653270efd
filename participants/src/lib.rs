//! # kessai-participants — the participant SDK and the reference participants
//!
//! ## Layout
//! - [`sdk`]: what a team writing a participant uses.
//!   - [`Participant`] (in `sdk`): the trait — `try_` / `confirm` / `cancel` on the
//!     participant's own database transaction, with a decoded, validated payload.
//!   - [`sdk::barrier`]: the barrier table and [`handle_command`], which applies one
//!     command exactly once inside a caller's transaction (duplicates, empty cancel,
//!     anti-hanging) and returns the answer to send.
//!   - [`sdk::runtime`]: [`ParticipantRuntime`], which consumes the participant's
//!     command queue in batches, runs each batch in one transaction, publishes the
//!     replies and only then acks.
//! - [`ledger`]: what the reference participants share — hold states, the [`Audit`]
//!   report the chaos checks read, seeding helpers and the demo data set.
//! - [`balance`], [`card_issuer`], [`bank`]: the three reference participants, each
//!   with its ledger entities, `seed` / `seed_demo` and `audit`.
//! - [`registry`]: [`Registry`] — one descriptor per participant (name, payload,
//!   migrator, demo seed, audit, how to run it) that services, the harness and the
//!   tests iterate; [`Registrable`] is what a participant type implements to join it.
//! - [`reference`](mod@reference): the three reference participants' registrations.
//! - [`Error`]: the crate's error, which says retryable (requeue) or permanent
//!   (dead-letter).
//!
//! ## Data flow
//! ```text
//! command queue ──next_batch──▶ ParticipantRuntime
//!    │ undecodable / invalid ──▶ <queue>-dlq (with reason)
//!    ▼
//! BEGIN ─▶ per command: SAVEPOINT ─▶ barrier claim ─▶ Participant::try_/confirm/cancel
//!        ─▶ barrier outcome ─▶ RELEASE
//!        (Rejected: SQLite rolls the SAVEPOINT back and records the refusal in a new
//!        one; PostgreSQL runs business code in a nested SAVEPOINT and rolls that back)
//! COMMIT ─▶ publish_batch(reply_to, Envelope::reply(..)) ─▶ ack
//! ```
//! Database schemas live in `kessai-migrations` (`BalanceMigrator`, ...); this crate
//! only reads and writes them.

pub mod balance;
pub mod bank;
pub mod card_issuer;
mod error;
pub mod ledger;
pub mod reference;
pub mod registry;
pub mod sdk;

pub use balance::BalanceParticipant;
pub use bank::BankParticipant;
pub use card_issuer::CardIssuerParticipant;
pub use error::Error;
pub use ledger::{Audit, Effect, HoldState};
pub use registry::{RegisteredParticipant, Registrable, Registry, database_name};
pub use sdk::barrier::{BarrierRecord, barrier_records, handle_command};
pub use sdk::runtime::{BatchReport, ParticipantRuntime, RuntimeConfig};
pub use sdk::{BranchRef, BusinessError, Participant};
