//! A participant answered.

use super::{Action, BranchState, Error, EventKind, EventOutcome, Note, Saga, SagaState, Timing, decide};
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
    // The entry of this answer.
    let answer = |kind: EventKind, detail: String, reached: EventOutcome| {
        Note::new(kind, Some(id), detail)
            .command(operation, attempt)
            .outcome(reached)
    };
    match outcome {
        Outcome::Ok => {
            let reached;
            (b.state, reached) = match operation {
                Operation::Try => (BranchState::Prepared, EventOutcome::Prepared),
                Operation::Confirm => (BranchState::Confirmed, EventOutcome::Confirmed),
                Operation::Cancel => (BranchState::Cancelled, EventOutcome::Cancelled),
            };
            b.last_error = None;
            let detail = format!("{} (send {attempt})", b.participant);
            actions.push(Action::Log(answer(EventKind::ok(operation), detail, reached)));
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
            let note = answer(EventKind::TryRejected, reason.clone(), EventOutcome::Rejected);
            actions.push(Action::Log(note.reason(reason)));
            decide::cancel(saga, why, now, timing, actions);
        }
        Outcome::Rejected { reason } | Outcome::Retryable { reason } => {
            // A confirm or cancel must not fail under TCC; a participant that says so
            // is retried on the branch's schedule until it stops saying so. A
            // retryable try is resent the same way, until the deadline.
            if b.last_error.as_deref() != Some(reason.as_str()) {
                let detail = format!("{} (send {attempt}): {reason}", b.participant);
                let note = answer(EventKind::failed(operation), detail, EventOutcome::Failed);
                actions.push(Action::Log(note.reason(reason)));
            }
            b.last_error = Some(reason.clone());
        }
    }
    Ok(())
}
