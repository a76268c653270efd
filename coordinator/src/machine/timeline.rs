//! The typed vocabulary of the saga timeline: what happened ([`EventKind`]), how it
//! ended ([`EventOutcome`]) and who caused it ([`Actor`]).
//!
//! Each type is stored as a short string (the `saga_events` columns `kind`, `outcome`
//! and `actor`), so rows written before these types existed read back unchanged.

use kessai_messages::Operation;
use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// What a timeline entry records. Stored and serialised as its snake_case name.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize, utoipa::ToSchema,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(32))")]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The saga was created; its tries are about to be sent.
    #[sea_orm(string_value = "submitted")]
    Submitted,
    /// A participant prepared its branch (answered the try OK).
    #[sea_orm(string_value = "try_ok")]
    TryOk,
    /// A participant refused the try: the saga cancels.
    #[sea_orm(string_value = "try_rejected")]
    TryRejected,
    /// A try failed in a way worth retrying.
    #[sea_orm(string_value = "try_failed")]
    TryFailed,
    /// A participant confirmed its branch.
    #[sea_orm(string_value = "confirm_ok")]
    ConfirmOk,
    /// A confirm failed; it is retried.
    #[sea_orm(string_value = "confirm_failed")]
    ConfirmFailed,
    /// A participant cancelled its branch.
    #[sea_orm(string_value = "cancel_ok")]
    CancelOk,
    /// A cancel failed; it is retried.
    #[sea_orm(string_value = "cancel_failed")]
    CancelFailed,
    /// The saga decided to confirm or to cancel.
    #[sea_orm(string_value = "decided")]
    Decided,
    /// An unanswered command was sent again.
    #[sea_orm(string_value = "resent")]
    Resent,
    /// An SRE or a coordinator start asked to resend everything the saga waits on.
    #[sea_orm(string_value = "resend_requested")]
    ResendRequested,
    /// Confirm or cancel was sent the policy's `stuck_after` times without success.
    #[sea_orm(string_value = "stuck")]
    Stuck,
    /// A stuck saga's branches all answered at last.
    #[sea_orm(string_value = "unstuck")]
    Unstuck,
    /// The saga ended, confirmed or cancelled.
    #[sea_orm(string_value = "finished")]
    Finished,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Submitted => "submitted",
            EventKind::TryOk => "try_ok",
            EventKind::TryRejected => "try_rejected",
            EventKind::TryFailed => "try_failed",
            EventKind::ConfirmOk => "confirm_ok",
            EventKind::ConfirmFailed => "confirm_failed",
            EventKind::CancelOk => "cancel_ok",
            EventKind::CancelFailed => "cancel_failed",
            EventKind::Decided => "decided",
            EventKind::Resent => "resent",
            EventKind::ResendRequested => "resend_requested",
            EventKind::Stuck => "stuck",
            EventKind::Unstuck => "unstuck",
            EventKind::Finished => "finished",
        }
    }

    /// The kind of a participant's OK to `op`.
    pub fn ok(op: Operation) -> Self {
        match op {
            Operation::Try => EventKind::TryOk,
            Operation::Confirm => EventKind::ConfirmOk,
            Operation::Cancel => EventKind::CancelOk,
        }
    }

    /// The kind of a participant's failure of `op` (anything but a refused try).
    pub fn failed(op: Operation) -> Self {
        match op {
            Operation::Try => EventKind::TryFailed,
            Operation::Confirm => EventKind::ConfirmFailed,
            Operation::Cancel => EventKind::CancelFailed,
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for EventKind {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for EventKind {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// How the thing an entry records turned out: a branch's new state after a reply,
/// the decision, or the state a saga finished in. Stored and serialised snake_case.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize, utoipa::ToSchema,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum EventOutcome {
    /// A try succeeded: the branch holds a reservation.
    Prepared,
    /// A try was refused (business refusal, final).
    Rejected,
    /// A command failed and will be sent again.
    Failed,
    /// The decision: confirm every branch.
    Confirm,
    /// The decision: cancel every branch that may hold a reservation.
    Cancel,
    /// A branch's confirm took effect, or the saga finished confirmed.
    Confirmed,
    /// A branch's cancel took effect, or the saga finished cancelled.
    Cancelled,
}

impl EventOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            EventOutcome::Prepared => "prepared",
            EventOutcome::Rejected => "rejected",
            EventOutcome::Failed => "failed",
            EventOutcome::Confirm => "confirm",
            EventOutcome::Cancel => "cancel",
            EventOutcome::Confirmed => "confirmed",
            EventOutcome::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for EventOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who or what caused a timeline entry.
///
/// Stored as a short string: `client`, `coordinator`, `timer`, `operator`,
/// `operator:<name>` or `participant:<name>`. Serialised by serde's default:
/// `"timer"`, `{"named_operator": "<name>"}` or `{"participant": "<name>"}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, DeriveValueType)]
#[sea_orm(value_type = "String", column_type = "String(StringLen::N(128))")]
#[serde(rename_all = "snake_case")]
pub enum Actor {
    /// A client's submission.
    Client,
    /// The coordinator itself, e.g. resending what sagas wait on when it starts.
    Coordinator,
    /// The timer loop: a resend or the try deadline came due.
    Timer,
    /// An SRE, through the retry command or endpoint.
    Operator,
    /// A named SRE through the HTTP API: the name of the token used.
    NamedOperator(String),
    /// The named participant's reply.
    Participant(String),
}

const PARTICIPANT_PREFIX: &str = "participant:";
const OPERATOR_PREFIX: &str = "operator:";

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::Client => f.write_str("client"),
            Actor::Coordinator => f.write_str("coordinator"),
            Actor::Timer => f.write_str("timer"),
            Actor::Operator => f.write_str("operator"),
            Actor::NamedOperator(name) => write!(f, "{OPERATOR_PREFIX}{name}"),
            Actor::Participant(name) => write!(f, "{PARTICIPANT_PREFIX}{name}"),
        }
    }
}

/// A stored actor string this version does not know.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown timeline actor {0:?}")]
pub struct UnknownActor(pub String);

impl FromStr for Actor {
    type Err = UnknownActor;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "client" => Actor::Client,
            "coordinator" => Actor::Coordinator,
            "timer" => Actor::Timer,
            "operator" => Actor::Operator,
            _ => match (s.strip_prefix(PARTICIPANT_PREFIX), s.strip_prefix(OPERATOR_PREFIX)) {
                (Some(name), _) => Actor::Participant(name.to_owned()),
                (None, Some(name)) => Actor::NamedOperator(name.to_owned()),
                (None, None) => return Err(UnknownActor(s.to_owned())),
            },
        })
    }
}
