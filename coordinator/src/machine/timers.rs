//! Time passed: the try deadline, resends with backoff (stretched by the pacing while
//! a participant's queue is backed up), the stuck flag.

use super::{Action, BranchState, Note, Saga, SagaState, Timing, decide};
use kessai_messages::Operation;

pub(super) fn on_tick(saga: &mut Saga, now: i64, timing: &Timing, actions: &mut Vec<Action>) {
    if saga.state == SagaState::Trying && now >= saga.try_deadline {
        decide::cancel(saga, "try deadline passed".to_owned(), now, timing, actions);
        return;
    }
    resend_due(saga, now, timing, actions, |resend_at| resend_at <= now);
}

pub(super) fn resend_now(saga: &mut Saga, why: &str, now: i64, timing: &Timing, actions: &mut Vec<Action>) {
    if saga.state.is_terminal() {
        return;
    }
    actions.push(Action::Log(Note::new("resend_requested", None, why.to_owned())));
    if saga.state == SagaState::Trying && now >= saga.try_deadline {
        // The cancels this sends are fresh: nothing older to resend.
        decide::cancel(saga, "try deadline passed".to_owned(), now, timing, actions);
        return;
    }
    // Every waiting command once, due or not. (A tick followed by a pass over what it
    // left would send a due command twice: the tick's resend is no longer due.)
    resend_due(saga, now, timing, actions, |_| true);
}

fn resend_due(saga: &mut Saga, now: i64, timing: &Timing, actions: &mut Vec<Action>, due: impl Fn(i64) -> bool) {
    let policy = timing.policy;
    let mut newly_stuck = false;
    for b in &mut saga.branches {
        let Some((op, attempt, resend_at)) = b.state.waiting() else {
            continue;
        };
        if !due(resend_at) {
            continue;
        }
        let attempt = attempt + 1;
        b.state = BranchState::waiting_for(op, attempt, timing.resend_at(now, op, attempt, &b.participant));
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
