//! # kessai-transport — the queue seam
//!
//! At-least-once queues with explicit acknowledgement, behind one trait so the
//! coordinator and the participant runtime never know which broker they run on.
//!
//! ## Layout
//! - this file: the [`Transport`] and [`Consumer`] traits, [`Delivery`] (a received
//!   message that must be settled: ack, requeue or dead-letter), [`OutgoingMessage`],
//!   the crate [`Error`] (which says whether a failure is retryable), and queue naming
//!   ([`Topology`]).
//! - [`memory`]: the in-process transport used by the embedded stack and the tests.
//! - [`tasks`]: [`Tasks`], the one supervision shape of every service's loops
//!   (named tasks, one cancellation token; `shutdown`, `kill`, `join_next`).
//! - [`faults`]: [`FaultyTransport`], a wrapper around any transport that drops,
//!   duplicates, delays and reorders published messages (seeded), for chaos tests.
//! - `amqp` (feature `amqp`): RabbitMQ through lapin — publisher confirms, durable
//!   queues, manual acks, reconnection with backoff.
//! - `sqs` (feature `sqs`): Amazon SQS through aws-sdk-sqs — long polling,
//!   delete-on-ack, a visibility heartbeat per unsettled delivery, a redrive policy to
//!   `<queue>-dlq`.
//!
//! ## Features
//! `amqp` and `sqs` (both on by default) each bring one broker adapter and its client
//! library; without them the crate is the seam, the in-process transport and the fault
//! wrapper, which are always there. Test support (the skip-or-fail rule for real
//! services, the broker lock, RabbitMQ outages) lives in the `kessai-testkit` crate.
//!
//! Data flows one way per queue: a producer calls [`Transport::publish`]; a consumer
//! task loops on [`Consumer::next_batch`], handles each [`Delivery`] and settles it.
//!
//! ## The contract every adapter keeps
//! - `publish` returns only when the broker has taken responsibility for the message
//!   (AMQP publisher confirm, SQS `SendMessage` answer, an in-memory push). A caller that
//!   gets an error must assume the message may or may not have been sent.
//! - A delivery stays owned by its consumer until it is settled. One that is dropped
//!   unsettled — its consumer task died, panicked or was aborted — is redelivered with
//!   `redelivered = true`.
//! - `dead_letter(reason)` moves a message to `<queue>-dlq` with the reason in the
//!   [`DEAD_LETTER_REASON`] header, then settles the original; it is never lost.
//! - Ordering is not guaranteed (SQS standard queues and redeliveries reorder); kessai's
//!   protocol does not rely on it.
//! - A message published with [`OutgoingMessage::expires_in`] that is still queued
//!   unconsumed when it expires is discarded, not dead-lettered, where the broker can
//!   expire messages (RabbitMQ, in-process; SQS cannot and delivers it regardless). A
//!   delivery already handed to a consumer does not expire.

#[cfg(feature = "amqp")]
pub mod amqp;
pub mod faults;
pub mod memory;
pub mod metrics;
#[cfg(feature = "sqs")]
pub mod sqs;
pub mod tasks;
pub mod trace;

use async_trait::async_trait;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

#[cfg(feature = "amqp")]
pub use amqp::{AmqpConfig, AmqpTransport};
pub use faults::{FaultConfig, FaultCounters, FaultyTransport};
pub use memory::MemoryTransport;
#[cfg(feature = "sqs")]
pub use sqs::{SqsConfig, SqsTransport};
pub use tasks::{TaskEnd, TaskError, Tasks};

/// Header naming why a message was dead-lettered.
pub const DEAD_LETTER_REASON: &str = "x-kessai-dead-letter-reason";
/// Header naming the queue a dead-lettered message came from.
pub const DEAD_LETTER_SOURCE: &str = "x-kessai-dead-letter-source";

pub type Headers = BTreeMap<String, String>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The broker is unreachable or refused for now: try again later.
    #[error("transport unavailable: {0}")]
    Unavailable(String),
    /// The broker refused the message (AMQP nack, SQS error on that entry).
    #[error("message not accepted by the broker: {0}")]
    NotAccepted(String),
    /// The transport was shut down; no more deliveries will come.
    #[error("transport closed")]
    Closed,
    /// Misconfiguration: retrying cannot help.
    #[error("transport misconfigured: {0}")]
    Config(String),
}

impl Error {
    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable(_) | Error::NotAccepted(_))
    }
}

/// A message to publish.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutgoingMessage {
    pub payload: Vec<u8>,
    /// Broker-level headers (AMQP headers, SQS message attributes). kessai copies the
    /// trace context here so brokers' own tools can see it.
    pub headers: Headers,
    /// How long the message stays worth delivering, counted from when the broker takes
    /// it. A message still queued unconsumed when it expires is discarded where it
    /// stands — never delivered, never dead-lettered. `None`: it never expires.
    ///
    /// Why: the coordinator resends an unanswered command on a schedule; the copy it
    /// resends supersedes the one still queued. Expiring each copy when its successor
    /// is due keeps a backed-up queue from filling with redundant copies.
    ///
    /// Per transport: RabbitMQ sets the per-message `expiration` property (the broker
    /// drops the message once it reaches the head of the queue expired); the
    /// in-process transport does the same at the head of its queue; SQS has no
    /// per-message expiry and ignores it (delivery is not affected).
    pub expires_in: Option<Duration>,
}

impl OutgoingMessage {
    pub fn new(payload: Vec<u8>) -> Self {
        Self {
            payload,
            headers: Headers::new(),
            expires_in: None,
        }
    }

    /// The same message, discarded if still queued unconsumed after `ttl`.
    pub fn expiring_in(mut self, ttl: Duration) -> Self {
        self.expires_in = Some(ttl);
        self
    }
}

/// How a consumer wants its deliveries.
#[derive(Clone, Debug)]
pub struct ConsumeOptions {
    /// Most unsettled deliveries this consumer holds at once (AMQP `basic_qos`).
    pub prefetch: u16,
    /// How long `next_batch` waits for a first message before returning empty, so a
    /// loop can notice cancellation. SQS long polls up to this (max 20 s).
    pub poll_wait: Duration,
}

impl Default for ConsumeOptions {
    fn default() -> Self {
        Self {
            prefetch: 256,
            poll_wait: Duration::from_secs(1),
        }
    }
}

/// A broker, seen from kessai.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// `memory`, `amqp` or `sqs`: the OpenTelemetry `messaging.system`.
    fn system(&self) -> &'static str;

    /// Creates `queue` and its dead-letter queue if missing. Idempotent.
    async fn declare(&self, queue: &str) -> Result<(), Error>;

    /// Publishes one message durably (see the crate docs).
    async fn publish(&self, queue: &str, message: OutgoingMessage) -> Result<(), Error>;

    /// Publishes several messages; `Ok` means all were accepted. On `Err` some may
    /// have been: at-least-once, so the caller resends them all.
    async fn publish_batch(&self, queue: &str, messages: Vec<OutgoingMessage>) -> Result<(), Error> {
        for m in messages {
            self.publish(queue, m).await?;
        }
        Ok(())
    }

    /// Messages in `queue` that are waiting or delivered but unsettled, if the broker
    /// can tell (used to wait for quiescence, and by the coordinator to see how far
    /// behind a participant's command queue runs; approximate on SQS). `Ok(None)`: the
    /// transport cannot tell.
    async fn pending(&self, queue: &str) -> Result<Option<u64>, Error> {
        let _ = queue;
        Ok(None)
    }

    /// Starts consuming `queue`.
    async fn consume(&self, queue: &str, options: ConsumeOptions) -> Result<Box<dyn Consumer>, Error>;

    /// Deletes `queue` and its dead-letter queue with whatever they hold; a queue that
    /// does not exist is not an error. For tooling that makes throwaway queues (the
    /// chaos harness, tests) — never called by the services themselves.
    async fn delete(&self, queue: &str) -> Result<(), Error>;
}

/// A subscription to one queue.
#[async_trait]
pub trait Consumer: Send {
    /// Waits up to the `poll_wait` of its options for a first delivery, then returns
    /// it with any others already available, `max` at most. Empty when nothing came.
    ///
    /// An error that [`Error::is_retryable`] means the broker is away for now: the
    /// consumer reconnects by itself on the next call, so log and call again (the
    /// real adapters spend up to `poll_wait` before returning it, so a loop that
    /// retries at once does not spin). Any other error is permanent (e.g. the queue
    /// does not exist).
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Delivery>, Error>;
}

/// How a delivery is settled; each adapter implements it.
#[async_trait]
pub trait Settle: Send + Sync {
    async fn ack(self: Box<Self>) -> Result<(), Error>;
    async fn requeue(self: Box<Self>) -> Result<(), Error>;
    async fn dead_letter(self: Box<Self>, reason: &str) -> Result<(), Error>;
}

/// A received message. Settle it exactly once; dropping it unsettled makes the
/// broker redeliver it.
pub struct Delivery {
    pub payload: Vec<u8>,
    pub headers: Headers,
    /// The broker delivered this message before (to this or another consumer).
    pub redelivered: bool,
    settle: Box<dyn Settle>,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("len", &self.payload.len())
            .field("headers", &self.headers)
            .field("redelivered", &self.redelivered)
            .finish()
    }
}

impl Delivery {
    pub fn new(payload: Vec<u8>, headers: Headers, redelivered: bool, settle: Box<dyn Settle>) -> Self {
        Self {
            payload,
            headers,
            redelivered,
            settle,
        }
    }

    /// Call only after the message's effects are durably committed.
    pub async fn ack(self) -> Result<(), Error> {
        self.settle.ack().await
    }

    /// Hands the message back for redelivery (a retryable failure).
    pub async fn requeue(self) -> Result<(), Error> {
        self.settle.requeue().await
    }

    /// Moves the message to the dead-letter queue with `reason` (a permanent failure).
    pub async fn dead_letter(self, reason: &str) -> Result<(), Error> {
        self.settle.dead_letter(reason).await
    }
}

/// Queue names. The prefix lets several kessai installs share one broker.
#[derive(Clone, Debug)]
pub struct Topology {
    pub prefix: String,
}

impl Default for Topology {
    fn default() -> Self {
        Self {
            prefix: "kessai".into(),
        }
    }
}

impl Topology {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into() }
    }
    /// Where `participant` receives its commands.
    pub fn command_queue(&self, participant: &str) -> String {
        format!("{}-{}-commands", self.prefix, participant)
    }
    /// The participant whose command queue `queue` is, if it is one (the inverse of
    /// [`Topology::command_queue`]).
    pub fn participant_of<'q>(&self, queue: &'q str) -> Option<&'q str> {
        queue
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix('-')?
            .strip_suffix("-commands")
            .filter(|p| !p.is_empty())
    }
    /// Where the coordinators receive replies.
    pub fn reply_queue(&self) -> String {
        format!("{}-coordinator-replies", self.prefix)
    }
    /// The dead-letter queue of `queue`.
    pub fn dead_letter_queue(queue: &str) -> String {
        dead_letter_queue(queue)
    }
}

/// The dead-letter queue of `queue`.
pub fn dead_letter_queue(queue: &str) -> String {
    format!("{queue}-dlq")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_queues_name_their_participant() {
        let t = Topology::new("kessai");
        assert_eq!(t.participant_of(&t.command_queue("card-issuer")), Some("card-issuer"));
        assert_eq!(t.participant_of(&t.command_queue("bank")), Some("bank"));
        assert_eq!(t.participant_of(&t.reply_queue()), None);
        assert_eq!(t.participant_of("other-bank-commands"), None);
        assert_eq!(t.participant_of("kessai--commands"), None);
        assert_eq!(Topology::new("a-b").participant_of("a-b-bank-commands"), Some("bank"));
    }
}
