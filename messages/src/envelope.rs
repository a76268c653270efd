//! The envelope and its bodies.

use crate::ids::{BranchId, MessageId, SagaId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The schema version this build writes and the only one it reads. A message with any
/// other version is dead-lettered rather than guessed at.
pub const SCHEMA_VERSION: u16 = 1;

/// The three TCC operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    Try,
    Confirm,
    Cancel,
}

impl Operation {
    pub const ALL: [Operation; 3] = [Operation::Try, Operation::Confirm, Operation::Cancel];

    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Try => "try",
            Operation::Confirm => "confirm",
            Operation::Cancel => "cancel",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "try" => Some(Operation::Try),
            "confirm" => Some(Operation::Confirm),
            "cancel" => Some(Operation::Cancel),
            _ => None,
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a participant answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    /// The operation took effect (or had already taken effect: barrier replay).
    Ok,
    /// A business refusal (insufficient funds, frozen account, try after cancel).
    /// Final: resending the same command yields the same refusal.
    Rejected { reason: String },
    /// A transient failure (database busy, dependency down). The coordinator resends.
    Retryable { reason: String },
}

impl Outcome {
    pub fn rejected(reason: impl Into<String>) -> Self {
        Outcome::Rejected { reason: reason.into() }
    }
    pub fn retryable(reason: impl Into<String>) -> Self {
        Outcome::Retryable { reason: reason.into() }
    }
}

/// A TCC command for one branch of one saga.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// The participant the command is for (`balance`, `card-issuer`, `bank`, ...).
    pub participant: String,
    /// The queue the participant must answer on.
    pub reply_to: String,
    /// The participant's own payload; opaque to the coordinator and the transports.
    pub payload: serde_json::Value,
}

/// A participant's answer to one command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub participant: String,
    pub outcome: Outcome,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Body {
    Command(Command),
    Reply(Reply),
}

/// Every message kessai puts on a queue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Schema version ([`SCHEMA_VERSION`]); checked before anything else is read.
    pub v: u16,
    pub message_id: MessageId,
    pub saga_id: SagaId,
    pub branch_id: BranchId,
    pub operation: Operation,
    /// 1 for the first send of (saga, branch, operation); resends count up. Replies echo
    /// it so the coordinator's timeline shows which send was answered.
    pub attempt: u32,
    /// Unix milliseconds after which a try is pointless (the saga will cancel). `None`
    /// for confirm and cancel, which never give up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<i64>,
    /// Propagated context, W3C `traceparent` / `tracestate` among it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    pub body: Body,
}

impl Envelope {
    /// A command for one branch operation.
    pub fn command(
        saga_id: SagaId,
        branch_id: BranchId,
        operation: Operation,
        attempt: u32,
        deadline_ms: Option<i64>,
        command: Command,
    ) -> Self {
        Envelope {
            v: SCHEMA_VERSION,
            message_id: MessageId::new(),
            saga_id,
            branch_id,
            operation,
            attempt,
            deadline_ms,
            headers: BTreeMap::new(),
            body: Body::Command(command),
        }
    }

    /// The reply to this command: same saga, branch, operation, attempt and headers.
    pub fn reply(&self, participant: impl Into<String>, outcome: Outcome) -> Envelope {
        Envelope {
            v: SCHEMA_VERSION,
            message_id: MessageId::new(),
            saga_id: self.saga_id,
            branch_id: self.branch_id,
            operation: self.operation,
            attempt: self.attempt,
            deadline_ms: None,
            headers: self.headers.clone(),
            body: Body::Reply(Reply {
                participant: participant.into(),
                outcome,
            }),
        }
    }

    pub fn as_command(&self) -> Option<&Command> {
        match &self.body {
            Body::Command(c) => Some(c),
            Body::Reply(_) => None,
        }
    }

    pub fn as_reply(&self) -> Option<&Reply> {
        match &self.body {
            Body::Reply(r) => Some(r),
            Body::Command(_) => None,
        }
    }
}
