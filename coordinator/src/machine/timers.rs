//! Time passed: the try deadline, resends with backoff, the stuck flag.

use super::{Action, BranchState, Note, Policy, Saga, SagaState, decide};
use kessai_messages::Operation;

pub(super) fn on_tick(saga: &mut Saga, now: i64, policy: &Policy, actions: &mut Vec<Action>) {
    if saga.state == SagaState::Trying && now >= saga.try_deadline {
        decide::cancel(saga, "try deadline passed".to_owned(), now, policy, actions);
        return;
    }
    resend_due(saga, now, policy, actions, |resend_at| resend_at <= now);
}

pub(super) fn resend_now(saga: &mut Saga, why: &str, now: i64, policy: &Policy, actions: &mut Vec<Action>) {
    if saga.state.is_terminal() {
        return;
    }
    actions.push(Action::Log(Note::new("resend_requested", None, why.to_owned())));
    on_tick(saga, now, policy, actions);
    // Whatever the tick did not resend (not yet due), resend now.
    resend_due(saga, now, policy, actions, |resend_at| resend_at > now);
}

fn resend_due(saga: &mut Saga, now: i64, policy: &Policy, actions: &mut Vec<Action>, due: impl Fn(i64) -> bool) {
    let mut newly_stuck = false;
    for b in &mut saga.branches {
        let Some((op, attempt, resend_at)) = b.state.waiting() else {
            continue;
        };
        if !due(resend_at) {
            continue;
        }
        let attempt = attempt + 1;
        let backoff = match op {
            Operation::Try => policy.try_resend,
            Operation::Confirm | Operation::Cancel => policy.finish_resend,
        };
        b.state = BranchState::waiting_for(op, attempt, now + backoff.delay_ms(attempt));
        actions.push(Action::Send {
            branch: b.id,
            operation: op,
            attempt,
        });
        actions.push(Action::Log(Note::new(
            "resent",
            Some(b.id),
            format!("{op} send {attempt} to {}", b.participant),
        )));
        if op != Operation::Try && attempt >= policy.stuck_after {
            newly_stuck |= !saga.stuck;
        }
    }
    if newly_stuck {
        saga.stuck = true;
        actions.push(Action::Log(Note::new(
            "stuck",
            None,
            format!("{} sends without success; retries continue", policy.stuck_after),
        )));
    }
}
