//! The saga state machine: pure code, no I/O.
//!
//! [`apply`] takes a saga, an [`Event`] and the current time, and returns the new saga
//! with the [`Action`]s the outer loop must carry out (send a command, write a timeline
//! entry). Timers are not actions: a saga's next wake-up is derived from its state
//! ([`Saga::wake_at`]) and stored with it, so they live in the database.
//!
//! One module per transition family: [`replies`] (a participant answered), [`timers`]
//! (a deadline or a resend came due; an SRE or a restart asked to resend now), and
//! [`decide`] (the one-way switch from trying to confirming or cancelling). What they
//! log is typed: [`timeline`] holds the kinds, outcomes and actors of timeline entries.
//!
//! Resend timing has two inputs: the [`Policy`] (configured backoff) and a [`Pacing`]
//! (how far behind each participant's command queue runs, as the engine measured it).
//! Both are plain values passed in ([`apply_paced`], [`Saga::new_paced`]): the machine
//! never looks at a queue itself.
//!
//! The rule everything else serves: a saga decides once. `Trying` moves to
//! `Confirming` only when every branch is prepared, to `Cancelling` on any rejection or
//! at the try deadline, and neither of those ever moves to the other.

mod decide;
mod replies;
pub mod timeline;
mod timers;

pub use timeline::{Actor, EventKind, EventOutcome};

use kessai_messages::{BranchId, Operation, Outcome, SagaId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where a saga is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SagaState {
    /// Tries sent; waiting for every branch to prepare.
    Trying,
    /// Decided to commit: confirms sent, retried until every branch confirms.
    Confirming,
    /// Decided to roll back: cancels sent, retried until every branch cancels.
    Cancelling,
    Confirmed,
    Cancelled,
}

impl SagaState {
    pub const ALL: [SagaState; 5] = [
        SagaState::Trying,
        SagaState::Confirming,
        SagaState::Cancelling,
        SagaState::Confirmed,
        SagaState::Cancelled,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(self, SagaState::Confirmed | SagaState::Cancelled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SagaState::Trying => "trying",
            SagaState::Confirming => "confirming",
            SagaState::Cancelling => "cancelling",
            SagaState::Confirmed => "confirmed",
            SagaState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        SagaState::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl std::fmt::Display for SagaState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where one branch is. Waiting states carry their send count and next resend time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BranchState {
    Trying {
        attempt: u32,
        resend_at: i64,
    },
    /// The try succeeded: resources are reserved at the participant.
    Prepared,
    /// The try was refused; nothing is reserved, so it needs no cancel.
    Rejected {
        reason: String,
    },
    Confirming {
        attempt: u32,
        resend_at: i64,
    },
    Confirmed,
    Cancelling {
        attempt: u32,
        resend_at: i64,
    },
    Cancelled,
}

impl BranchState {
    pub fn name(&self) -> &'static str {
        match self {
            BranchState::Trying { .. } => "trying",
            BranchState::Prepared => "prepared",
            BranchState::Rejected { .. } => "rejected",
            BranchState::Confirming { .. } => "confirming",
            BranchState::Confirmed => "confirmed",
            BranchState::Cancelling { .. } => "cancelling",
            BranchState::Cancelled => "cancelled",
        }
    }

    /// The operation this branch waits on an answer for, its send count and resend time.
    pub fn waiting(&self) -> Option<(Operation, u32, i64)> {
        match *self {
            BranchState::Trying { attempt, resend_at } => Some((Operation::Try, attempt, resend_at)),
            BranchState::Confirming { attempt, resend_at } => Some((Operation::Confirm, attempt, resend_at)),
            BranchState::Cancelling { attempt, resend_at } => Some((Operation::Cancel, attempt, resend_at)),
            _ => None,
        }
    }

    fn waiting_for(op: Operation, attempt: u32, resend_at: i64) -> BranchState {
        match op {
            Operation::Try => BranchState::Trying { attempt, resend_at },
            Operation::Confirm => BranchState::Confirming { attempt, resend_at },
            Operation::Cancel => BranchState::Cancelling { attempt, resend_at },
        }
    }
}

/// One participant's part of a saga.
#[derive(Clone, Debug, PartialEq)]
pub struct Branch {
    pub id: BranchId,
    pub participant: String,
    /// The participant's payload, sent with every command of this branch.
    pub payload: serde_json::Value,
    pub state: BranchState,
    /// The last refusal or failure a participant reported, for SREs.
    pub last_error: Option<String>,
}

/// A saga as the state machine sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Saga {
    pub id: SagaId,
    pub state: SagaState,
    pub branches: Vec<Branch>,
    /// Unix ms after which a saga still trying is cancelled.
    pub try_deadline: i64,
    /// Set once confirm or cancel has been resent `stuck_after` times; SREs look here.
    /// Retries go on regardless; cleared when the saga ends.
    pub stuck: bool,
    /// Why the saga is cancelling or cancelled.
    pub reason: Option<String>,
}

impl Saga {
    /// A fresh saga whose tries are about to be sent (attempt 1 each).
    pub fn new(
        id: SagaId,
        branches: Vec<(String, serde_json::Value)>,
        now: i64,
        try_deadline: i64,
        policy: &Policy,
    ) -> (Saga, Vec<Action>) {
        Saga::new_paced(id, branches, now, try_deadline, policy, &Pacing::default())
    }

    /// [`Saga::new`], each try's first resend no sooner than `pacing` allows for its
    /// participant.
    pub fn new_paced(
        id: SagaId,
        branches: Vec<(String, serde_json::Value)>,
        now: i64,
        try_deadline: i64,
        policy: &Policy,
        pacing: &Pacing,
    ) -> (Saga, Vec<Action>) {
        let timing = Timing { policy, pacing };
        let mut actions = vec![Action::Log(
            Note::new(EventKind::Submitted, None, format!("{} branches", branches.len())).by(Actor::Client),
        )];
        let branches = branches
            .into_iter()
            .enumerate()
            .map(|(i, (participant, payload))| {
                let id = BranchId(i as u32);
                actions.push(Action::Send {
                    branch: id,
                    operation: Operation::Try,
                    attempt: 1,
                });
                let resend_at = timing.resend_at(now, Operation::Try, 1, &participant);
                Branch {
                    id,
                    participant,
                    payload,
                    state: BranchState::Trying { attempt: 1, resend_at },
                    last_error: None,
                }
            })
            .collect();
        let saga = Saga {
            id,
            state: SagaState::Trying,
            branches,
            try_deadline,
            stuck: false,
            reason: None,
        };
        (saga, actions)
    }

    /// When the timer loop must next look at this saga; `None` once it is terminal.
    pub fn wake_at(&self) -> Option<i64> {
        if self.state.is_terminal() {
            return None;
        }
        let resend = self
            .branches
            .iter()
            .filter_map(|b| b.state.waiting().map(|w| w.2))
            .min();
        let deadline = (self.state == SagaState::Trying).then_some(self.try_deadline);
        match (resend, deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn branch_mut(&mut self, id: BranchId) -> Result<&mut Branch, Error> {
        let saga = self.id;
        self.branches
            .get_mut(id.0 as usize)
            .ok_or(Error::UnknownBranch { saga, branch: id })
    }
}

/// What happened to a saga.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// `participant` answered `operation` (send number `attempt`) for `branch`.
    ///
    /// The answer must be one the saga could have been sent: from the branch's own
    /// participant, an operation it sent to that branch, a send number it reached;
    /// anything else is an [`Error`] (a forged or misrouted reply, dead-lettered).
    Reply {
        participant: String,
        branch: BranchId,
        operation: Operation,
        attempt: u32,
        outcome: Outcome,
    },
    /// The saga's wake-up time passed: check the try deadline and resend what is due.
    Tick,
    /// Resend everything the saga waits on now (an SRE's retry, a coordinator start):
    /// `by` asked, for `why`.
    ResendNow { why: String, by: Actor },
}

impl Event {
    /// Who caused this event, as its timeline entries name it: the participant that
    /// answered (a name `saga` holds), the timer loop, or whoever asked to resend.
    fn actor(&self, saga: &Saga) -> Option<Actor> {
        Some(match self {
            Event::Reply { branch, .. } => {
                Actor::Participant(saga.branches.get(branch.0 as usize)?.participant.clone())
            }
            Event::Tick => Actor::Timer,
            Event::ResendNow { by, .. } => by.clone(),
        })
    }
}

/// A timeline entry: what SREs read in `kessai saga show`. `detail` is the sentence a
/// human reads; the other fields say the same in a form to query on, each `None`
/// where it does not apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub kind: EventKind,
    pub branch: Option<BranchId>,
    pub detail: String,
    /// The command the entry is about.
    pub operation: Option<Operation>,
    /// That command's send number (1 = first send).
    pub attempt: Option<u32>,
    pub outcome: Option<EventOutcome>,
    /// Why: a participant's refusal or failure, a cancel's cause, a resend request's.
    pub reason: Option<String>,
    /// Who caused it. [`apply`] fills it in from the event where a transition left it
    /// out.
    pub actor: Option<Actor>,
}

impl Note {
    pub fn new(kind: EventKind, branch: Option<BranchId>, detail: impl Into<String>) -> Self {
        Note {
            kind,
            branch,
            detail: detail.into(),
            operation: None,
            attempt: None,
            outcome: None,
            reason: None,
            actor: None,
        }
    }

    /// About send number `attempt` of `operation`.
    pub fn command(mut self, operation: Operation, attempt: u32) -> Self {
        self.operation = Some(operation);
        self.attempt = Some(attempt);
        self
    }

    /// About `operation`, whatever the send.
    pub fn operation(mut self, operation: Operation) -> Self {
        self.operation = Some(operation);
        self
    }

    pub fn outcome(mut self, outcome: EventOutcome) -> Self {
        self.outcome = Some(outcome);
        self
    }

    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    pub fn by(mut self, actor: Actor) -> Self {
        self.actor = Some(actor);
        self
    }
}

/// What the outer loop must do after a transition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send `operation` for `branch` (via the outbox, in the same transaction).
    Send {
        branch: BranchId,
        operation: Operation,
        attempt: u32,
    },
    /// Append to the saga's timeline.
    Log(Note),
}

impl Action {
    /// `(branch, operation, attempt)` of a [`Action::Send`]; `None` for a log entry.
    pub fn as_send(&self) -> Option<(BranchId, Operation, u32)> {
        match *self {
            Action::Send {
                branch,
                operation,
                attempt,
            } => Some((branch, operation, attempt)),
            Action::Log(_) => None,
        }
    }
}

/// Capped exponential backoff: `initial_ms * 2^(attempt-1)`, at most `max_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backoff {
    pub initial_ms: i64,
    pub max_ms: i64,
}

impl Backoff {
    /// Delay before resending after send number `attempt` (1-based).
    pub fn delay_ms(&self, attempt: u32) -> i64 {
        let shift = attempt.saturating_sub(1).min(30);
        self.initial_ms.saturating_mul(1i64 << shift).min(self.max_ms)
    }
}

/// The timing rules of the protocol.
///
/// The backoff is what a participant that keeps up gets. When its command queue backs
/// up, the engine stretches the delays with a [`Pacing`] (see
/// [`Policy::resend_delay_ms`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Resend of an unanswered try.
    pub try_resend: Backoff,
    /// Resend of an unanswered or failed confirm / cancel. Never gives up.
    pub finish_resend: Backoff,
    /// After this many sends of a confirm or cancel, the saga is flagged `stuck`.
    pub stuck_after: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            try_resend: Backoff {
                initial_ms: 2_000,
                max_ms: 8_000,
            },
            finish_resend: Backoff {
                initial_ms: 1_000,
                max_ms: 60_000,
            },
            stuck_after: 8,
        }
    }
}

impl Policy {
    /// The backoff of resends of `op`.
    pub fn backoff(&self, op: Operation) -> Backoff {
        match op {
            Operation::Try => self.try_resend,
            Operation::Confirm | Operation::Cancel => self.finish_resend,
        }
    }

    /// Delay before resending `op` to `participant` after send number `attempt`: the
    /// backoff, stretched to the participant's [`Pacing`] floor, but never past the
    /// backoff's cap.
    ///
    /// Why stretch: a resend is meant for a command that was lost, not for one still
    /// queued behind a backlog. While a participant's queue takes longer to drain than
    /// the backoff, resending on the backoff only adds copies the participant must
    /// wade through. Why cap: the cap is the operator's bound on how long a lost
    /// command may go unnoticed, backlog or not.
    pub fn resend_delay_ms(&self, op: Operation, attempt: u32, participant: &str, pacing: &Pacing) -> i64 {
        let backoff = self.backoff(op);
        let floor = pacing.floor_ms(participant).min(backoff.max_ms);
        backoff.delay_ms(attempt).max(floor)
    }
}

/// Per participant, the least delay before a command to it may be resent: how long
/// its command queue currently takes to drain, with a margin. The engine measures the
/// queues and passes the result in; a participant without an entry (the usual case)
/// gets the plain [`Policy`] backoff.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pacing {
    floors_ms: BTreeMap<String, i64>,
}

impl Pacing {
    /// No floors: every participant gets the plain backoff.
    pub fn none() -> Self {
        Self::default()
    }

    /// With `participant`'s floor set to `floor_ms` (none if not positive).
    pub fn with_floor(mut self, participant: impl Into<String>, floor_ms: i64) -> Self {
        self.set_floor(participant, floor_ms);
        self
    }

    /// Sets `participant`'s floor; a floor that is not positive removes it.
    pub fn set_floor(&mut self, participant: impl Into<String>, floor_ms: i64) {
        let participant = participant.into();
        if floor_ms > 0 {
            self.floors_ms.insert(participant, floor_ms);
        } else {
            self.floors_ms.remove(&participant);
        }
    }

    /// `participant`'s floor in ms; 0 when it has none.
    pub fn floor_ms(&self, participant: &str) -> i64 {
        self.floors_ms.get(participant).copied().unwrap_or(0)
    }

    /// Whether no participant has a floor.
    pub fn is_empty(&self) -> bool {
        self.floors_ms.is_empty()
    }

    /// Every floor, by participant.
    pub fn floors(&self) -> impl Iterator<Item = (&str, i64)> {
        self.floors_ms.iter().map(|(p, f)| (p.as_str(), *f))
    }
}

/// The timing one transition runs under: the policy and the pacing, together.
#[derive(Clone, Copy)]
struct Timing<'a> {
    policy: &'a Policy,
    pacing: &'a Pacing,
}

impl Timing<'_> {
    /// When `op` to `participant`, just sent as send number `attempt`, is due again.
    fn resend_at(&self, now: i64, op: Operation, attempt: u32, participant: &str) -> i64 {
        now + self.policy.resend_delay_ms(op, attempt, participant, self.pacing)
    }
}

/// An event the state machine cannot place. Permanent: the message carrying it is
/// dead-lettered.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Error {
    #[error("saga {saga} has no branch {branch}")]
    UnknownBranch { saga: SagaId, branch: BranchId },
    /// A reply naming another participant than the branch's.
    #[error("reply from {from} for a branch of {owner} (saga {saga}, branch {branch})")]
    WrongParticipant {
        saga: SagaId,
        branch: BranchId,
        owner: String,
        from: String,
    },
    /// A reply to a command the saga never sent: forged, or from a confused
    /// participant. A legitimate duplicate or late answer is never one.
    #[error("stale/forged: {operation} reply for saga {saga}, branch {branch}, but {why}")]
    NeverSent {
        saga: SagaId,
        branch: BranchId,
        operation: Operation,
        why: String,
    },
}

/// The new saga and what to do about it.
#[derive(Debug, PartialEq)]
pub struct Transition {
    pub saga: Saga,
    pub actions: Vec<Action>,
}

impl Transition {
    /// Whether anything is to be written.
    pub fn changed(&self, before: &Saga) -> bool {
        !self.actions.is_empty() || self.saga != *before
    }
}

/// Applies one event. Pure: the same inputs always give the same transition.
/// Duplicated, reordered and late events are absorbed (no change, no action); a reply
/// to a command the saga never sent, or from another participant, is an [`Error`].
pub fn apply(saga: &Saga, event: &Event, now: i64, policy: &Policy) -> Result<Transition, Error> {
    apply_paced(saga, event, now, policy, &Pacing::default())
}

/// [`apply`], with every command it sends (first sends and resends alike) given a
/// resend delay no shorter than `pacing` asks for its participant. Still pure: the
/// pacing is an input like the time.
pub fn apply_paced(
    saga: &Saga,
    event: &Event,
    now: i64,
    policy: &Policy,
    pacing: &Pacing,
) -> Result<Transition, Error> {
    let timing = Timing { policy, pacing };
    let mut next = saga.clone();
    let mut actions = Vec::new();
    match event {
        Event::Reply {
            participant,
            branch,
            operation,
            attempt,
            outcome,
        } => replies::on_reply(
            &mut next,
            participant,
            *branch,
            *operation,
            *attempt,
            outcome,
            now,
            &timing,
            &mut actions,
        )?,
        Event::Tick => timers::on_tick(&mut next, now, &timing, &mut actions),
        Event::ResendNow { why, .. } => timers::resend_now(&mut next, why, now, &timing, &mut actions),
    }
    // Entries that name no actor of their own were caused by the event. (The last
    // one takes the actor, the others a copy: most transitions log one entry.)
    let mut unnamed = actions
        .iter_mut()
        .filter_map(|a| match a {
            Action::Log(note) if note.actor.is_none() => Some(&mut note.actor),
            _ => None,
        })
        .peekable();
    if unnamed.peek().is_some() {
        let mut actor = event.actor(&next);
        while let Some(slot) = unnamed.next() {
            *slot = match unnamed.peek() {
                Some(_) => actor.clone(),
                None => actor.take(),
            };
        }
    }
    Ok(Transition { saga: next, actions })
}

#[cfg(test)]
mod tests;
