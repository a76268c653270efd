//! # kessai-messages — the wire contract
//!
//! Pure types, no I/O: everything a coordinator and a participant say to each other.
//!
//! ## Layout
//! - [`ids`]: `SagaId`, `BranchId`, `MessageId` — newtypes so a branch index is never
//!   passed where a saga id belongs.
//! - [`envelope`]: the [`Envelope`] every queue message is wrapped in (schema version,
//!   ids, operation, attempt, deadline, W3C trace headers) with its [`Body`]: a TCC
//!   [`Command`] or a [`Reply`] carrying an [`Outcome`].
//! - [`codec`]: `Envelope::encode` / [`Envelope::decode`]; decoding checks the schema
//!   version first and validates the envelope, returning a typed [`DecodeError`] that the
//!   transports turn into a dead-letter reason.
//! - [`limits`]: bounds on headers (count, name, value), shared by the envelope's own
//!   headers and the broker-level ones each service checks on receipt.
//! - [`signing`]: optional HMAC-SHA256 signatures of payloads with a shared
//!   [`MessageKey`], carried in the [`SIGNATURE_HEADER`] broker header.
//! - [`payment`]: the payment request and the payloads the reference participants
//!   (balance, card-issuer, bank) understand, with their validation.
//!
//! Data flow: the coordinator builds a `Command` envelope per branch and operation, a
//! transport carries its encoded bytes, the participant decodes it, applies it, and
//! answers with `Envelope::reply` — same saga, branch, operation and attempt — which the
//! coordinator decodes and feeds to its state machine.

pub mod codec;
pub mod envelope;
pub mod ids;
pub mod limits;
pub mod payment;
pub mod signing;

pub use codec::DecodeError;
pub use envelope::{Body, Command, Envelope, Operation, Outcome, Reply, SCHEMA_VERSION};
pub use ids::{BranchId, MessageId, SagaId};
pub use payment::{Currency, Payment, PaymentError};
pub use signing::{KeyTooShort, MessageKey, SIGNATURE_HEADER};
