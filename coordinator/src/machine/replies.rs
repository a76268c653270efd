//! A participant answered.
//!
//! Whoever can write to the reply queue can publish a reply, so a reply counts only if
//! it answers a command this saga could have sent: to that branch's participant, of an
//! operation the saga sent that branch, of a send number it reached. Anything else is
//! an [`Error`], and the engine dead-letters it. Legitimate duplicates and late answers
//! always pass that test and are then absorbed without effect.

use super::{Action, BranchState, Error, EventKind, EventOutcome, Note, Saga, SagaState, Timing, decide};
use kessai_messages::{BranchId, Operation, Outcome};

/// Refuses a reply to a command the saga never sent, or from anyone but the branch's
/// participant (`from` is the participant the reply names).
fn check_sent(saga: &Saga, from: &str, branch: BranchId, operation: Operation, attempt: u32) -> Result<(), Error> {
    let b = saga
        .branches
        .get(branch.0 as usize)
        .ok_or(Error::UnknownBranch { saga: saga.id, branch })?;
    if from != b.participant {
        return Err(Error::WrongParticipant {
            saga: saga.id,
            branch,
            owner: b.participant.clone(),
            from: from.to_owned(),
        });
    }
    let never = |why: String| {
        Err(Error::NeverSent {
            saga: saga.id,
            branch,
            operation,
            why,
        })
    };
    // A saga decides once: confirms go out only once it decided to confirm, cancels only
    // once it decided to cancel, and then to every branch but one whose try was
    // rejected. Tries go to every branch at the start.
    match operation {
        Operation::Try => {}
        Operation::Confirm if !matches!(saga.state, SagaState::Confirming | SagaState::Confirmed) => {
            return never(format!("the saga never confirmed (it is {})", saga.state));
        }
        Operation::Cancel if !matches!(saga.state, SagaState::Cancelling | SagaState::Cancelled) => {
            return never(format!("the saga never cancelled (it is {})", saga.state));
        }
        Operation::Cancel if matches!(b.state, BranchState::Rejected { .. }) => {
            return never("the branch's try was rejected, so it was never sent a cancel".into());
        }
        Operation::Confirm | Operation::Cancel => {}
    }
    // Send numbers of an operation count up from 1 with every resend, and each is
    // committed before it is published: an answer to a higher one answers nothing sent.
    if let Some((waiting_op, sent, _)) = b.state.waiting()
        && waiting_op == operation
        && attempt > sent
    {
        return never(format!(
            "only {sent} sends of it were made (the reply answers send {attempt})"
        ));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub(super) fn on_reply(
    saga: &mut Saga,
    from: &str,
    branch: BranchId,
    operation: Operation,
    attempt: u32,
    outcome: &Outcome,
    now: i64,
    timing: &Timing,
    actions: &mut Vec<Action>,
) -> Result<(), Error> {
    check_sent(saga, from, branch, operation, attempt)?;
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
