//! The decision: the one place a saga leaves `Trying`.

use super::{Action, Actor, Branch, BranchState, EventKind, EventOutcome, Note, Saga, SagaState, Timing};
use kessai_messages::Operation;

/// All branches prepared: confirm every one.
pub(super) fn confirm(saga: &mut Saga, now: i64, timing: &Timing, actions: &mut Vec<Action>) {
    debug_assert_eq!(saga.state, SagaState::Trying);
    saga.state = SagaState::Confirming;
    actions.push(Action::Log(
        Note::new(EventKind::Decided, None, "confirm: every branch prepared")
            .operation(Operation::Confirm)
            .outcome(EventOutcome::Confirm),
    ));
    for b in &mut saga.branches {
        send_first(b, Operation::Confirm, now, timing, actions);
    }
}

/// A branch refused or the deadline passed: cancel every branch that may hold a
/// reservation. A rejected try reserved nothing and is left alone; a branch still
/// trying is cancelled too, since its try may yet land (the participant's barrier
/// then refuses it, or the cancel undoes it).
pub(super) fn cancel(saga: &mut Saga, why: String, now: i64, timing: &Timing, actions: &mut Vec<Action>) {
    debug_assert_eq!(saga.state, SagaState::Trying);
    saga.state = SagaState::Cancelling;
    actions.push(Action::Log(
        Note::new(EventKind::Decided, None, format!("cancel: {why}"))
            .operation(Operation::Cancel)
            .outcome(EventOutcome::Cancel)
            .reason(why.clone()),
    ));
    saga.reason = Some(why);
    for b in &mut saga.branches {
        if matches!(b.state, BranchState::Rejected { .. }) {
            continue;
        }
        send_first(b, Operation::Cancel, now, timing, actions);
    }
    finish_if_done(saga, actions);
}

/// The try deadline passed: cancel. Caused by the clock, whichever event noticed.
pub(super) fn cancel_at_deadline(saga: &mut Saga, now: i64, timing: &Timing, actions: &mut Vec<Action>) {
    let first = actions.len();
    cancel(saga, "try deadline passed".to_owned(), now, timing, actions);
    if let Some(Action::Log(note)) = actions.get_mut(first) {
        note.actor = Some(Actor::Timer);
    }
}

/// Sends `op` to `b` for the first time (the decision's confirm or cancel).
fn send_first(b: &mut Branch, op: Operation, now: i64, timing: &Timing, actions: &mut Vec<Action>) {
    let resend_at = timing.resend_at(now, op, 1, &b.participant);
    b.state = BranchState::waiting_for(op, 1, resend_at);
    actions.push(Action::Send {
        branch: b.id,
        operation: op,
        attempt: 1,
    });
}

/// Ends the saga when no branch waits any more.
pub(super) fn finish_if_done(saga: &mut Saga, actions: &mut Vec<Action>) {
    let done = match saga.state {
        SagaState::Confirming => saga.branches.iter().all(|b| b.state == BranchState::Confirmed),
        SagaState::Cancelling => saga
            .branches
            .iter()
            .all(|b| matches!(b.state, BranchState::Cancelled | BranchState::Rejected { .. })),
        _ => false,
    };
    if !done {
        return;
    }
    let outcome;
    (saga.state, outcome) = match saga.state {
        SagaState::Confirming => (SagaState::Confirmed, EventOutcome::Confirmed),
        _ => (SagaState::Cancelled, EventOutcome::Cancelled),
    };
    if saga.stuck {
        saga.stuck = false;
        actions.push(Action::Log(Note::new(
            EventKind::Unstuck,
            None,
            "every branch answered",
        )));
    }
    actions.push(Action::Log(
        Note::new(EventKind::Finished, None, saga.state.as_str()).outcome(outcome),
    ));
}
