//! The decision: the one place a saga leaves `Trying`.

use super::{Action, BranchState, Note, Saga, SagaState, Timing};
use kessai_messages::Operation;

/// All branches prepared: confirm every one.
pub(super) fn confirm(saga: &mut Saga, now: i64, timing: &Timing, actions: &mut Vec<Action>) {
    debug_assert_eq!(saga.state, SagaState::Trying);
    saga.state = SagaState::Confirming;
    actions.push(Action::Log(Note::new(
        "decided",
        None,
        "confirm: every branch prepared",
    )));
    for b in &mut saga.branches {
        let resend_at = timing.resend_at(now, Operation::Confirm, 1, &b.participant);
        b.state = BranchState::Confirming { attempt: 1, resend_at };
        actions.push(Action::Send {
            branch: b.id,
            operation: Operation::Confirm,
            attempt: 1,
        });
    }
}

/// A branch refused or the deadline passed: cancel every branch that may hold a
/// reservation. A rejected try reserved nothing and is left alone; a branch still
/// trying is cancelled too, since its try may yet land (the participant's barrier
/// then refuses it, or the cancel undoes it).
pub(super) fn cancel(saga: &mut Saga, why: String, now: i64, timing: &Timing, actions: &mut Vec<Action>) {
    debug_assert_eq!(saga.state, SagaState::Trying);
    saga.state = SagaState::Cancelling;
    actions.push(Action::Log(Note::new("decided", None, format!("cancel: {why}"))));
    saga.reason = Some(why);
    for b in &mut saga.branches {
        if matches!(b.state, BranchState::Rejected { .. }) {
            continue;
        }
        let resend_at = timing.resend_at(now, Operation::Cancel, 1, &b.participant);
        b.state = BranchState::Cancelling { attempt: 1, resend_at };
        actions.push(Action::Send {
            branch: b.id,
            operation: Operation::Cancel,
            attempt: 1,
        });
    }
    finish_if_done(saga, actions);
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
    saga.state = match saga.state {
        SagaState::Confirming => SagaState::Confirmed,
        _ => SagaState::Cancelled,
    };
    if saga.stuck {
        saga.stuck = false;
        actions.push(Action::Log(Note::new("unstuck", None, "every branch answered")));
    }
    actions.push(Action::Log(Note::new("finished", None, saga.state.as_str())));
}
