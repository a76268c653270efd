//! A participant answered.

use super::{Action, BranchState, Error, Note, Saga, SagaState, Timing, decide};
use kessai_messages::{BranchId, Operation, Outcome};

#[allow(clippy::too_many_arguments)]
pub(super) fn on_reply(
    saga: &mut Saga,
    branch: BranchId,
    operation: Operation,
    attempt: u32,
    outcome: &Outcome,
    now: i64,
    timing: &Timing,
    actions: &mut Vec<Action>,
) -> Result<(), Error> {
    let state = saga.state;
    let b = saga.branch_mut(branch)?;
    // Only an answer to what the branch waits on counts. Anything else is a duplicate,
    // a late answer to an earlier phase, or a reordering: absorbed without effect.
    let Some((waiting_op, _, _)) = b.state.waiting() else {
        return Ok(());
    };
    if waiting_op != operation {
        return Ok(());
    }
    let id = b.id;
    match outcome {
        Outcome::Ok => {
            b.state = match operation {
                Operation::Try => BranchState::Prepared,
                Operation::Confirm => BranchState::Confirmed,
                Operation::Cancel => BranchState::Cancelled,
            };
            b.last_error = None;
            actions.push(Action::Log(Note::new(
                ok_kind(operation),
                Some(id),
                format!("{} (send {attempt})", b.participant),
            )));
            match state {
                SagaState::Trying => {
                    if saga.branches.iter().all(|b| b.state == BranchState::Prepared) {
                        decide::confirm(saga, now, timing, actions);
                    }
                }
                _ => decide::finish_if_done(saga, actions),
            }
        }
        Outcome::Rejected { reason } if operation == Operation::Try => {
            let why = format!("branch {id} ({}) rejected: {reason}", b.participant);
            b.state = BranchState::Rejected { reason: reason.clone() };
            b.last_error = Some(reason.clone());
            actions.push(Action::Log(Note::new("try_rejected", Some(id), reason.clone())));
            decide::cancel(saga, why, now, timing, actions);
        }
        Outcome::Rejected { reason } | Outcome::Retryable { reason } => {
            // A confirm or cancel must not fail under TCC; a participant that says so
            // is retried on the branch's schedule until it stops saying so. A
            // retryable try is resent the same way, until the deadline.
            if b.last_error.as_deref() != Some(reason.as_str()) {
                actions.push(Action::Log(Note::new(
                    fail_kind(operation),
                    Some(id),
                    format!("{} (send {attempt}): {reason}", b.participant),
                )));
            }
            b.last_error = Some(reason.clone());
        }
    }
    Ok(())
}

fn ok_kind(op: Operation) -> &'static str {
    match op {
        Operation::Try => "try_ok",
        Operation::Confirm => "confirm_ok",
        Operation::Cancel => "cancel_ok",
    }
}

fn fail_kind(op: Operation) -> &'static str {
    match op {
        Operation::Try => "try_failed",
        Operation::Confirm => "confirm_failed",
        Operation::Cancel => "cancel_failed",
    }
}
