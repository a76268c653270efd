//! Time passed: the try deadline, resends with backoff (stretched by the pacing while
//! a participant's queue is backed up), the stuck flag.

use super::{Action, BranchState, EventKind, Note, Saga, SagaState, Timing, decide};
use kessai_messages::Operation;

pub(super) fn on_tick(saga: &mut Saga, now: i64, timing: &Timing, actions: &mut Vec<Action>) {
    if saga.state == SagaState::Trying && now >= saga.try_deadline {
        decide::cancel_at_deadline(saga, now, timing, actions);
        return;
    }
    resend_due(saga, now, timing, actions, |resend_at| resend_at <= now);
}

pub(super) fn resend_now(saga: &mut Saga, why: &str, now: i64, timing: &Timing, actions: &mut Vec<Action>) {
    if saga.state.is_terminal() {
        return;
    }
    actions.push(Action::Log(
        Note::new(EventKind::ResendRequested, None, why.to_owned()).reason(why),
    ));
    if saga.state == SagaState::Trying && now >= saga.try_deadline {
        // The cancels this sends are fresh: nothing older to resend.
        decide::cancel_at_deadline(saga, now, timing, actions);
        return;
    }
    // Every waiting command once, due or not. (A tick followed by a pass over what it
    // left would send a due command twice: the tick's resend is no longer due.)
    resend_due(saga, now, timing, actions, |_| true);
}

fn resend_due(saga: &mut Saga, now: i64, timing: &Timing, actions: &mut Vec<Action>, due: impl Fn(i64) -> bool) {
    let policy = timing.policy;
    let mut newly_stuck = None;
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
        actions.push(Action::Log(
            Note::new(
                EventKind::Resent,
                Some(b.id),
                format!("{op} send {attempt} to {}", b.participant),
            )
            .command(op, attempt),
        ));
        if op != Operation::Try && attempt >= policy.stuck_after && !saga.stuck {
            newly_stuck = Some(op);
        }
    }
    if let Some(op) = newly_stuck {
        saga.stuck = true;
        actions.push(Action::Log(
            Note::new(
                EventKind::Stuck,
                None,
                format!("{} sends without success; retries continue", policy.stuck_after),
            )
            .command(op, policy.stuck_after),
        ));
    }
}
