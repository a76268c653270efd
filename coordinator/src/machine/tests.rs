//! Table tests and property tests of the protocol.

use super::*;
use proptest::prelude::*;

const T0: i64 = 1_000_000;

fn policy() -> Policy {
    Policy::default()
}

fn new_saga(n: usize) -> Saga {
    let branches = (0..n).map(|i| (format!("p{i}"), serde_json::json!({"i": i}))).collect();
    Saga::new(SagaId::new(), branches, T0, T0 + 10_000, &policy()).0
}

fn reply(branch: u32, operation: Operation, outcome: Outcome) -> Event {
    Event::Reply {
        participant: format!("p{branch}"),
        branch: BranchId(branch),
        operation,
        attempt: 1,
        outcome,
    }
}

fn step(s: &Saga, e: Event, now: i64) -> (Saga, Vec<Action>) {
    let t = apply(s, &e, now, &policy()).unwrap();
    (t.saga, t.actions)
}

fn sends(actions: &[Action]) -> Vec<(u32, Operation, u32)> {
    actions
        .iter()
        .filter_map(Action::as_send)
        .map(|(branch, operation, attempt)| (branch.0, operation, attempt))
        .collect()
}

fn notes(actions: &[Action]) -> Vec<&Note> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Log(note) => Some(note),
            Action::Send { .. } => None,
        })
        .collect()
}

/// The one entry of `kind` among `actions`.
fn note(actions: &[Action], kind: EventKind) -> &Note {
    let found: Vec<&Note> = notes(actions).into_iter().filter(|n| n.kind == kind).collect();
    assert_eq!(found.len(), 1, "{kind} in {actions:?}");
    found[0]
}

fn resend_now(why: &str) -> Event {
    Event::ResendNow {
        why: why.into(),
        by: Actor::Operator,
    }
}

#[test]
fn new_saga_sends_every_try() {
    let branches = vec![
        ("a".to_string(), serde_json::json!(1)),
        ("b".to_string(), serde_json::json!(2)),
    ];
    let (s, actions) = Saga::new(SagaId::new(), branches, T0, T0 + 10_000, &policy());
    assert_eq!(s.state, SagaState::Trying);
    assert_eq!(sends(&actions), vec![(0, Operation::Try, 1), (1, Operation::Try, 1)]);
    assert_eq!(s.wake_at(), Some(T0 + 2_000));
}

#[test]
fn all_prepared_confirms_then_finishes() {
    let mut s = new_saga(3);
    for b in 0..3 {
        let (n, a) = step(&s, reply(b, Operation::Try, Outcome::Ok), T0 + 1);
        s = n;
        if b < 2 {
            assert!(sends(&a).is_empty());
        } else {
            assert_eq!(s.state, SagaState::Confirming);
            assert_eq!(sends(&a).len(), 3);
            assert!(sends(&a).iter().all(|x| x.1 == Operation::Confirm));
        }
    }
    // A duplicate try reply changes nothing.
    let t = apply(&s, &reply(0, Operation::Try, Outcome::Ok), T0 + 2, &policy()).unwrap();
    assert!(!t.changed(&s));
    for b in 0..3 {
        s = step(&s, reply(b, Operation::Confirm, Outcome::Ok), T0 + 3).0;
    }
    assert_eq!(s.state, SagaState::Confirmed);
    assert_eq!(s.wake_at(), None);
}

#[test]
fn a_rejection_cancels_the_others_but_not_itself() {
    let s = new_saga(3);
    let (s, _) = step(&s, reply(0, Operation::Try, Outcome::Ok), T0 + 1);
    let (s, a) = step(&s, reply(2, Operation::Try, Outcome::rejected("frozen")), T0 + 2);
    assert_eq!(s.state, SagaState::Cancelling);
    assert_eq!(sends(&a), vec![(0, Operation::Cancel, 1), (1, Operation::Cancel, 1)]);
    assert!(s.reason.as_deref().unwrap().contains("frozen"));
    // The late try OK of branch 1 is absorbed: it is already being cancelled.
    let (s2, a2) = step(&s, reply(1, Operation::Try, Outcome::Ok), T0 + 3);
    assert!(a2.is_empty());
    assert_eq!(s2, s);
    let (s, _) = step(&s, reply(0, Operation::Cancel, Outcome::Ok), T0 + 4);
    let (s, _) = step(&s, reply(1, Operation::Cancel, Outcome::Ok), T0 + 5);
    assert_eq!(s.state, SagaState::Cancelled);
}

#[test]
fn deadline_cancels_and_resends_back_off() {
    let s = new_saga(2);
    let (s, _) = step(&s, reply(0, Operation::Try, Outcome::Ok), T0 + 1);
    // Before the deadline a tick resends the unanswered try.
    let (s, a) = step(&s, Event::Tick, T0 + 2_000);
    assert_eq!(sends(&a), vec![(1, Operation::Try, 2)]);
    assert_eq!(
        s.branches[1].state,
        BranchState::Trying {
            attempt: 2,
            resend_at: T0 + 6_000
        }
    );
    let (s, a) = step(&s, Event::Tick, T0 + 10_000);
    assert_eq!(s.state, SagaState::Cancelling);
    assert_eq!(sends(&a), vec![(0, Operation::Cancel, 1), (1, Operation::Cancel, 1)]);
    // Cancels are retried with growing delays and the saga is flagged stuck.
    let mut s = s;
    let mut now = T0 + 10_000;
    let mut delays = Vec::new();
    while !s.stuck {
        let wake = s.wake_at().unwrap();
        delays.push(wake - now);
        now = wake;
        s = step(&s, Event::Tick, now).0;
    }
    assert!(delays.windows(2).all(|w| w[1] >= w[0]), "{delays:?}");
    assert!(delays.last() > delays.first());
    assert_eq!(s.state, SagaState::Cancelling);
    let (s, _) = step(&s, reply(0, Operation::Cancel, Outcome::Ok), now);
    let (s, a) = step(&s, reply(1, Operation::Cancel, Outcome::Ok), now);
    assert_eq!(s.state, SagaState::Cancelled);
    assert!(!s.stuck);
    assert!(a.iter().any(|x| matches!(x, Action::Log(n) if n.kind == "finished")));
}

#[test]
fn backoff_is_capped() {
    let b = Backoff {
        initial_ms: 1_000,
        max_ms: 60_000,
    };
    assert_eq!(b.delay_ms(1), 1_000);
    assert_eq!(b.delay_ms(4), 8_000);
    assert_eq!(b.delay_ms(40), 60_000);
}

#[test]
fn unknown_branch_is_an_error() {
    let s = new_saga(1);
    assert!(matches!(
        apply(&s, &reply(7, Operation::Try, Outcome::Ok), T0, &policy()),
        Err(Error::UnknownBranch { .. })
    ));
}

#[test]
fn resend_now_resends_everything_waiting() {
    let s = new_saga(3);
    let (s, _) = step(&s, reply(0, Operation::Try, Outcome::Ok), T0 + 1);
    let (_, a) = step(&s, resend_now("sre"), T0 + 2);
    assert_eq!(sends(&a), vec![(1, Operation::Try, 2), (2, Operation::Try, 2)]);
}

#[test]
fn resend_now_sends_a_due_command_once() {
    let s = new_saga(2);
    let (s, _) = step(&s, reply(0, Operation::Try, Outcome::Ok), T0 + 1);
    // Branch 1's resend is due (T0 + 2 s) when the resend is asked for.
    let (s, a) = step(&s, resend_now("restart"), T0 + 2_500);
    assert_eq!(sends(&a), vec![(1, Operation::Try, 2)]);
    assert_eq!(resend_at(&s, 1), T0 + 2_500 + 4_000);
    // Past the try deadline: the cancels go out once each, not also "resent".
    let (s, a) = step(&s, resend_now("restart"), T0 + 10_000);
    assert_eq!(s.state, SagaState::Cancelling);
    assert_eq!(sends(&a), vec![(0, Operation::Cancel, 1), (1, Operation::Cancel, 1)]);
}

// ---- replies the saga never asked for ----

fn reply_from(from: &str, branch: u32, operation: Operation, attempt: u32) -> Event {
    Event::Reply {
        participant: from.into(),
        branch: BranchId(branch),
        operation,
        attempt,
        outcome: Outcome::Ok,
    }
}

fn reply_at(branch: u32, operation: Operation, attempt: u32, outcome: Outcome) -> Event {
    Event::Reply {
        participant: format!("p{branch}"),
        branch: BranchId(branch),
        operation,
        attempt,
        outcome,
    }
}

/// `new_saga(2)` with both tries answered: confirming, confirms sent once each.
fn confirming() -> Saga {
    let s = new_saga(2);
    let (s, _) = step(&s, reply(0, Operation::Try, Outcome::Ok), T0 + 1);
    let (s, _) = step(&s, reply(1, Operation::Try, Outcome::Ok), T0 + 2);
    assert_eq!(s.state, SagaState::Confirming);
    s
}

/// `new_saga(3)` where branch 2 refused its try: cancelling branches 0 and 1.
fn cancelling() -> Saga {
    let s = new_saga(3);
    let (s, _) = step(&s, reply(2, Operation::Try, Outcome::rejected("frozen")), T0 + 1);
    assert_eq!(s.state, SagaState::Cancelling);
    s
}

fn finish(mut s: Saga, op: Operation) -> Saga {
    for b in 0..s.branches.len() as u32 {
        if s.branches[b as usize].state.waiting().is_some() {
            s = step(&s, reply(b, op, Outcome::Ok), T0 + 50).0;
        }
    }
    assert!(s.state.is_terminal(), "{s:?}");
    s
}

/// The error `event` is on `s`, as the dead-letter reason reads.
fn refused(s: &Saga, event: Event) -> String {
    match apply(s, &event, T0 + 100, &policy()) {
        Err(e) => e.to_string(),
        Ok(t) => panic!("{event:?} was accepted on a {} saga: {:?}", s.state, t.actions),
    }
}

/// `event` on `s` is accepted and changes nothing.
fn absorbed(s: &Saga, event: Event) {
    let t = apply(s, &event, T0 + 100, &policy()).unwrap_or_else(|e| panic!("{event:?} refused: {e}"));
    assert!(!t.changed(s), "{event:?} changed a {} saga", s.state);
}

#[test]
fn a_reply_from_another_participant_is_refused() {
    let s = new_saga(2);
    let reason = refused(&s, reply_from("p1", 0, Operation::Try, 1));
    assert!(reason.starts_with("reply from p1 for a branch of p0"), "{reason}");
    assert!(matches!(
        apply(&s, &reply_from("mallory", 1, Operation::Try, 1), T0, &policy()),
        Err(Error::WrongParticipant { owner, from, .. }) if owner == "p1" && from == "mallory"
    ));
    // Even where the same reply from the right participant would change nothing.
    let c = confirming();
    refused(&c, reply_from("p1", 0, Operation::Try, 1));
    // From the branch's participant it is an ordinary reply.
    let t = apply(&s, &reply_from("p0", 0, Operation::Try, 1), T0 + 1, &policy()).unwrap();
    let plain = apply(&s, &reply(0, Operation::Try, Outcome::Ok), T0 + 1, &policy()).unwrap();
    assert_eq!(t, plain);
    assert_eq!(t.saga.branches[0].state, BranchState::Prepared);
}

#[test]
fn a_confirm_the_saga_never_sent_is_refused() {
    // Undecided, cancelling, cancelled: no confirm ever went out.
    let trying = new_saga(2);
    let cancelling = cancelling();
    let cancelled = finish(cancelling.clone(), Operation::Cancel);
    for (s, state) in [
        (&trying, "trying"),
        (&cancelling, "cancelling"),
        (&cancelled, "cancelled"),
    ] {
        for outcome in [Outcome::Ok, Outcome::retryable("busy")] {
            let reason = refused(s, reply_at(0, Operation::Confirm, 1, outcome));
            assert!(reason.starts_with("stale/forged: confirm reply"), "{reason}");
            assert!(
                reason.contains(&format!("the saga never confirmed (it is {state})")),
                "{reason}"
            );
        }
    }
    assert!(matches!(
        apply(&trying, &reply(1, Operation::Confirm, Outcome::Ok), T0, &policy()),
        Err(Error::NeverSent {
            operation: Operation::Confirm,
            ..
        })
    ));
}

#[test]
fn a_cancel_the_saga_never_sent_is_refused() {
    let trying = new_saga(2);
    let confirming = confirming();
    let confirmed = finish(confirming.clone(), Operation::Confirm);
    for (s, state) in [
        (&trying, "trying"),
        (&confirming, "confirming"),
        (&confirmed, "confirmed"),
    ] {
        let reason = refused(s, reply_at(1, Operation::Cancel, 1, Outcome::Ok));
        assert!(reason.starts_with("stale/forged: cancel reply"), "{reason}");
        assert!(
            reason.contains(&format!("the saga never cancelled (it is {state})")),
            "{reason}"
        );
    }
    // Cancelling, but not that branch: its try was rejected, nothing to undo.
    let c = cancelling();
    let reason = refused(&c, reply_at(2, Operation::Cancel, 1, Outcome::Ok));
    assert!(reason.contains("try was rejected"), "{reason}");
    refused(
        &finish(c, Operation::Cancel),
        reply_at(2, Operation::Cancel, 1, Outcome::Ok),
    );
}

#[test]
fn an_answer_to_a_send_not_yet_made_is_refused() {
    let s = new_saga(2);
    let reason = refused(&s, reply_at(0, Operation::Try, 2, Outcome::Ok));
    assert!(
        reason.contains("only 1 sends of it were made (the reply answers send 2)"),
        "{reason}"
    );
    // After a resend, send 2 is real; send 3 is not.
    let (s, _) = step(&s, Event::Tick, T0 + 2_000);
    refused(&s, reply_at(0, Operation::Try, 3, Outcome::Ok));
    let (s2, _) = step(&s, reply_at(0, Operation::Try, 2, Outcome::Ok), T0 + 2_001);
    assert_eq!(s2.branches[0].state, BranchState::Prepared);
    // Confirms likewise.
    let c = confirming();
    refused(&c, reply_at(1, Operation::Confirm, 2, Outcome::Ok));
    let (c, _) = step(&c, Event::Tick, T0 + 10_000);
    let (c, _) = step(&c, reply_at(1, Operation::Confirm, 2, Outcome::Ok), T0 + 10_001);
    assert_eq!(c.branches[1].state, BranchState::Confirmed);
}

#[test]
fn legitimate_duplicates_and_late_answers_are_absorbed() {
    // A try answer is always plausible: every branch was sent one.
    let c = confirming();
    absorbed(&c, reply(0, Operation::Try, Outcome::Ok));
    absorbed(&c, reply_at(0, Operation::Try, 9, Outcome::rejected("late")));
    absorbed(&c, reply_from("p1", 1, Operation::Try, 1));
    let confirmed = finish(c, Operation::Confirm);
    absorbed(&confirmed, reply(1, Operation::Confirm, Outcome::Ok));
    absorbed(&confirmed, reply_at(1, Operation::Confirm, 5, Outcome::Ok));
    // A late try answer to a branch being cancelled, and a duplicate cancel answer.
    let s = cancelling();
    absorbed(&s, reply(0, Operation::Try, Outcome::Ok));
    let (s, _) = step(&s, reply(0, Operation::Cancel, Outcome::Ok), T0 + 3);
    absorbed(&s, reply(0, Operation::Cancel, Outcome::Ok));
    absorbed(&s, reply(2, Operation::Try, Outcome::rejected("frozen")));
    let cancelled = finish(s, Operation::Cancel);
    absorbed(&cancelled, reply(1, Operation::Cancel, Outcome::Ok));
    // An answer to an earlier send of what a branch still waits on.
    let s = new_saga(2);
    let (s, _) = step(&s, Event::Tick, T0 + 2_000);
    let (s2, _) = step(&s, reply_at(0, Operation::Try, 1, Outcome::Ok), T0 + 2_001);
    assert_eq!(s2.branches[0].state, BranchState::Prepared);
}

// ---- the typed timeline ----

#[test]
fn a_resend_is_logged_with_its_command_and_send_number() {
    let s = new_saga(2);
    let (s, _) = step(&s, reply(0, Operation::Try, Outcome::Ok), T0 + 1);
    let (s, a) = step(&s, Event::Tick, T0 + 2_000);
    let resent = note(&a, EventKind::Resent);
    assert_eq!(resent.kind, "resent");
    assert_eq!(resent.branch, Some(BranchId(1)));
    assert_eq!(resent.operation, Some(Operation::Try));
    assert_eq!(resent.attempt, Some(2));
    assert_eq!(resent.outcome, None);
    assert_eq!(resent.actor, Some(Actor::Timer));
    assert_eq!(resent.detail, "try send 2 to p1");
    // Asked for by an SRE: the SRE is the actor, with the why as the reason.
    let (_, a) = step(&s, resend_now("stuck payment"), T0 + 2_001);
    let requested = note(&a, EventKind::ResendRequested);
    assert_eq!(requested.reason.as_deref(), Some("stuck payment"));
    assert_eq!(requested.actor, Some(Actor::Operator));
    let resent = note(&a, EventKind::Resent);
    assert_eq!((resent.operation, resent.attempt), (Some(Operation::Try), Some(3)));
    assert_eq!(resent.actor, Some(Actor::Operator));
}

#[test]
fn a_rejection_is_logged_with_its_reason_and_participant() {
    let s = new_saga(3);
    let (_, a) = step(&s, reply(2, Operation::Try, Outcome::rejected("frozen")), T0 + 2);
    let rejected = note(&a, EventKind::TryRejected);
    assert_eq!(rejected.branch, Some(BranchId(2)));
    assert_eq!(rejected.detail, "frozen");
    assert_eq!(rejected.reason.as_deref(), Some("frozen"));
    assert_eq!(rejected.outcome, Some(EventOutcome::Rejected));
    assert_eq!((rejected.operation, rejected.attempt), (Some(Operation::Try), Some(1)));
    assert_eq!(rejected.actor, Some(Actor::Participant("p2".into())));
    let decided = note(&a, EventKind::Decided);
    assert!(decided.detail.starts_with("cancel"), "{}", decided.detail);
    assert_eq!(decided.outcome, Some(EventOutcome::Cancel));
    assert_eq!(decided.operation, Some(Operation::Cancel));
    assert_eq!(decided.reason.as_deref(), Some("branch 2 (p2) rejected: frozen"));
    assert_eq!(decided.actor, Some(Actor::Participant("p2".into())));
}

#[test]
fn a_confirmed_saga_logs_outcomes_and_actors() {
    let branches = vec![("p0".to_string(), serde_json::json!(1))];
    let (s, a) = Saga::new(SagaId::new(), branches, T0, T0 + 10_000, &policy());
    let submitted = note(&a, EventKind::Submitted);
    assert_eq!(submitted.actor, Some(Actor::Client));
    assert_eq!(submitted.detail, "1 branches");
    let (s, a) = step(&s, reply(0, Operation::Try, Outcome::Ok), T0 + 1);
    let ok = note(&a, EventKind::TryOk);
    assert_eq!(ok.outcome, Some(EventOutcome::Prepared));
    assert_eq!((ok.operation, ok.attempt), (Some(Operation::Try), Some(1)));
    assert_eq!(ok.detail, "p0 (send 1)");
    let decided = note(&a, EventKind::Decided);
    assert_eq!(decided.outcome, Some(EventOutcome::Confirm));
    assert_eq!(decided.reason, None);
    assert_eq!(decided.actor, Some(Actor::Participant("p0".into())));
    let (_, a) = step(&s, reply(0, Operation::Confirm, Outcome::retryable("busy")), T0 + 2);
    let failed = note(&a, EventKind::ConfirmFailed);
    assert_eq!(failed.outcome, Some(EventOutcome::Failed));
    assert_eq!(failed.reason.as_deref(), Some("busy"));
    let (_, a) = step(&s, reply(0, Operation::Confirm, Outcome::Ok), T0 + 2);
    assert_eq!(note(&a, EventKind::ConfirmOk).outcome, Some(EventOutcome::Confirmed));
    let finished = note(&a, EventKind::Finished);
    assert_eq!(finished.detail, "confirmed");
    assert_eq!(finished.outcome, Some(EventOutcome::Confirmed));
    assert_eq!(finished.actor, Some(Actor::Participant("p0".into())));
}

#[test]
fn the_deadline_is_the_actor_of_its_cancel() {
    let s = new_saga(1);
    let (s, a) = step(&s, resend_now("restart"), T0 + 10_000);
    assert_eq!(note(&a, EventKind::ResendRequested).actor, Some(Actor::Operator));
    let decided = note(&a, EventKind::Decided);
    assert_eq!(decided.detail, "cancel: try deadline passed");
    assert_eq!(decided.reason.as_deref(), Some("try deadline passed"));
    assert_eq!(decided.actor, Some(Actor::Timer));
    // Cancels resent until the saga is flagged stuck: that entry names the operation
    // and the send count that crossed the line.
    let mut s = s;
    let mut stuck = None;
    while stuck.is_none() {
        let now = s.wake_at().unwrap();
        let (next, a) = step(&s, Event::Tick, now);
        stuck = notes(&a).into_iter().find(|n| n.kind == EventKind::Stuck).cloned();
        s = next;
    }
    let stuck = stuck.unwrap();
    assert_eq!(stuck.operation, Some(Operation::Cancel));
    assert_eq!(stuck.attempt, Some(policy().stuck_after));
    assert_eq!(stuck.actor, Some(Actor::Timer));
}

#[test]
fn timeline_kinds_keep_their_stored_names() {
    use sea_orm::{ActiveEnum, Iterable};
    let names: Vec<&str> = EventKind::iter().map(EventKind::as_str).collect();
    assert_eq!(
        names,
        [
            "submitted",
            "try_ok",
            "try_rejected",
            "try_failed",
            "confirm_ok",
            "confirm_failed",
            "cancel_ok",
            "cancel_failed",
            "decided",
            "resent",
            "resend_requested",
            "stuck",
            "unstuck",
            "finished",
        ]
    );
    for kind in EventKind::iter() {
        assert_eq!(kind.to_value(), kind.as_str());
        assert_eq!(EventKind::try_from_value(&kind.as_str().to_owned()).unwrap(), kind);
        assert_eq!(kind.to_string(), kind.as_str());
        assert_eq!(serde_json::to_value(kind).unwrap(), serde_json::json!(kind.as_str()));
        assert!(kind == kind.as_str());
    }
    assert!(EventKind::try_from_value(&"exploded".to_owned()).is_err());
    for outcome in EventOutcome::iter() {
        assert_eq!(outcome.to_value(), outcome.as_str());
        assert_eq!(
            serde_json::to_value(outcome).unwrap(),
            serde_json::json!(outcome.as_str())
        );
    }
}

#[test]
fn actors_read_back_as_written() {
    for actor in [
        Actor::Client,
        Actor::Coordinator,
        Actor::Timer,
        Actor::Operator,
        Actor::Participant("card-issuer".into()),
    ] {
        assert_eq!(actor.to_string().parse::<Actor>(), Ok(actor));
    }
    assert_eq!(Actor::Participant("bank".into()).to_string(), "participant:bank");
    assert_eq!(
        serde_json::to_value(Actor::Participant("bank".into())).unwrap(),
        serde_json::json!({"participant": "bank"})
    );
    assert_eq!(serde_json::to_value(Actor::Timer).unwrap(), serde_json::json!("timer"));
    assert!("someone".parse::<Actor>().is_err());
}

// ---- pacing: resends stretched while a participant's queue is backed up ----

fn resend_at(s: &Saga, branch: usize) -> i64 {
    s.branches[branch].state.waiting().expect("waiting").2
}

#[test]
fn pacing_stretches_first_tries_per_participant() {
    let branches = (0..3).map(|i| (format!("p{i}"), serde_json::json!(i))).collect();
    let pacing = Pacing::none().with_floor("p1", 5_000).with_floor("p2", 500);
    let (s, actions) = Saga::new_paced(SagaId::new(), branches, T0, T0 + 10_000, &policy(), &pacing);
    assert_eq!(sends(&actions).len(), 3);
    assert_eq!(resend_at(&s, 0), T0 + 2_000, "no floor: the plain backoff");
    assert_eq!(resend_at(&s, 1), T0 + 5_000, "stretched to the floor");
    assert_eq!(
        resend_at(&s, 2),
        T0 + 2_000,
        "a floor below the backoff changes nothing"
    );
    assert_eq!(s.wake_at(), Some(T0 + 2_000));
}

#[test]
fn pacing_stretches_resends_but_only_of_the_backed_up_participant() {
    let s = new_saga(2);
    let pacing = Pacing::none().with_floor("p1", 7_000);
    let t = apply_paced(&s, &Event::Tick, T0 + 2_000, &policy(), &pacing).unwrap();
    assert_eq!(sends(&t.actions), vec![(0, Operation::Try, 2), (1, Operation::Try, 2)]);
    // Attempt 2's backoff is 4 s; p1's queue needs 7 s.
    assert_eq!(resend_at(&t.saga, 0), T0 + 6_000);
    assert_eq!(resend_at(&t.saga, 1), T0 + 9_000);
    // The next tick resends p0 only: p1's command is not due yet.
    let t = apply_paced(&t.saga, &Event::Tick, T0 + 6_000, &policy(), &pacing).unwrap();
    assert_eq!(sends(&t.actions), vec![(0, Operation::Try, 3)]);
}

#[test]
fn pacing_is_capped_at_the_backoff_max() {
    let p = policy();
    let pacing = Pacing::none().with_floor("slow", 10 * 60_000);
    assert_eq!(
        p.resend_delay_ms(Operation::Try, 1, "slow", &pacing),
        p.try_resend.max_ms
    );
    assert_eq!(
        p.resend_delay_ms(Operation::Confirm, 1, "slow", &pacing),
        p.finish_resend.max_ms
    );
    assert_eq!(
        p.resend_delay_ms(Operation::Cancel, 3, "slow", &pacing),
        p.finish_resend.max_ms
    );
    assert_eq!(p.resend_delay_ms(Operation::Confirm, 3, "other", &pacing), 4_000);
    assert_eq!(p.resend_delay_ms(Operation::Confirm, 3, "slow", &Pacing::none()), 4_000);
}

#[test]
fn pacing_stretches_confirms_and_cancels() {
    let pacing = Pacing::none().with_floor("p0", 3_000).with_floor("p1", 90_000);
    // All prepared: the confirms' first resend follows the pacing.
    let mut s = new_saga(3);
    for b in 0..3 {
        s = apply_paced(&s, &reply(b, Operation::Try, Outcome::Ok), T0 + 10, &policy(), &pacing)
            .unwrap()
            .saga;
    }
    assert_eq!(s.state, SagaState::Confirming);
    assert_eq!(resend_at(&s, 0), T0 + 10 + 3_000);
    assert_eq!(resend_at(&s, 1), T0 + 10 + 60_000, "capped at the finish backoff's max");
    assert_eq!(resend_at(&s, 2), T0 + 10 + 1_000);
    // The try deadline: the cancels too.
    let s = new_saga(3);
    let t = apply_paced(&s, &Event::Tick, T0 + 10_000, &policy(), &pacing).unwrap();
    assert_eq!(t.saga.state, SagaState::Cancelling);
    assert_eq!(resend_at(&t.saga, 0), T0 + 10_000 + 3_000);
    assert_eq!(resend_at(&t.saga, 2), T0 + 10_000 + 1_000);
}

#[test]
fn pacing_floors_can_be_cleared() {
    let mut pacing = Pacing::none().with_floor("a", 4_000);
    assert_eq!(pacing.floor_ms("a"), 4_000);
    assert_eq!(pacing.floors().collect::<Vec<_>>(), vec![("a", 4_000)]);
    pacing.set_floor("a", 0);
    assert!(pacing.is_empty());
    assert_eq!(pacing.floor_ms("a"), 0);
    assert_eq!(Pacing::none().with_floor("b", -5), Pacing::none());
}

#[test]
fn apply_is_apply_paced_without_floors() {
    let s = new_saga(3);
    for (e, now) in [
        (Event::Tick, T0 + 2_000),
        (reply(1, Operation::Try, Outcome::Ok), T0 + 5),
        (resend_now("x"), T0 + 7),
    ] {
        assert_eq!(
            apply(&s, &e, now, &policy()),
            apply_paced(&s, &e, now, &policy(), &Pacing::none())
        );
    }
}

// ---- property tests ----

/// What the fuzzer throws at a saga.
#[derive(Clone, Debug)]
enum Input {
    /// Any reply at all: forged, stale, or by chance one the saga asked for.
    Reply {
        branch: u32,
        op: Operation,
        attempt: u32,
        outcome: u8,
    },
    /// A reply off the queue naming participant `p<from>`, right or wrong.
    ReplyFrom {
        from: u32,
        branch: u32,
        op: Operation,
        attempt: u32,
        outcome: u8,
    },
    /// An answer to one of the commands sent so far (the `pick`th, modulo): a
    /// duplicate, a late or reordered answer, or the first.
    Answer {
        pick: usize,
        outcome: u8,
    },
    Tick {
        advance_ms: i64,
    },
    ResendNow,
}

fn op_strategy() -> impl Strategy<Value = Operation> {
    prop_oneof![Just(Operation::Try), Just(Operation::Confirm), Just(Operation::Cancel)]
}

fn input_strategy(branches: u32) -> impl Strategy<Value = Input> {
    prop_oneof![
        3 => (0..branches, op_strategy(), 1u32..5, 0u8..4).prop_map(|(branch, op, attempt, outcome)| Input::Reply { branch, op, attempt, outcome }),
        2 => (0..branches, 0..branches, op_strategy(), 1u32..5, 0u8..4).prop_map(|(from, branch, op, attempt, outcome)| Input::ReplyFrom { from, branch, op, attempt, outcome }),
        4 => (0usize..64, 0u8..4).prop_map(|(pick, outcome)| Input::Answer { pick, outcome }),
        3 => (0i64..6_000).prop_map(|advance_ms| Input::Tick { advance_ms }),
        1 => Just(Input::ResendNow),
    ]
}

fn outcome_of(code: u8) -> Outcome {
    match code {
        0 | 1 => Outcome::Ok,
        2 => Outcome::rejected("no"),
        _ => Outcome::retryable("busy"),
    }
}

/// Checks the safety rule on everything sent so far.
fn assert_safe(sent: &[(u32, Operation, u32)]) {
    let first_cancel = sent.iter().position(|s| s.1 == Operation::Cancel);
    let first_confirm = sent.iter().position(|s| s.1 == Operation::Confirm);
    if let (Some(c), Some(k)) = (first_cancel, first_confirm) {
        panic!("saga sent both confirm (at {k}) and cancel (at {c}): {sent:?}");
    }
}

/// The event `input` stands for on a saga of `n` branches that sent `sent` so far; a
/// tick first moves `now`.
fn event_of(input: Input, n: usize, sent: &[(u32, Operation, u32)], now: &mut i64) -> Event {
    match input {
        Input::Reply {
            branch,
            op,
            attempt,
            outcome,
        } => Event::Reply {
            participant: format!("p{}", branch % n as u32),
            branch: BranchId(branch % n as u32),
            operation: op,
            attempt,
            outcome: outcome_of(outcome),
        },
        Input::ReplyFrom {
            from,
            branch,
            op,
            attempt,
            outcome,
        } => Event::Reply {
            participant: format!("p{}", from % n as u32),
            branch: BranchId(branch % n as u32),
            operation: op,
            attempt,
            outcome: outcome_of(outcome),
        },
        Input::Answer { pick, outcome } => {
            // At least the first tries were sent.
            let (branch, operation, attempt) = sent[pick % sent.len()];
            Event::Reply {
                participant: format!("p{branch}"),
                branch: BranchId(branch),
                operation,
                attempt,
                outcome: outcome_of(outcome),
            }
        }
        Input::Tick { advance_ms } => {
            *now += advance_ms;
            Event::Tick
        }
        Input::ResendNow => resend_now("prop"),
    }
}

/// Applies `event` as the engine does: a refused reply is dead-lettered and leaves the
/// saga as it was. Checks the refusal against what was really sent: a reply to a
/// command in `sent`, from its branch's participant, is never refused; a reply that
/// changes the saga always answers one.
fn apply_checked(
    saga: &Saga,
    event: &Event,
    now: i64,
    sent: &[(u32, Operation, u32)],
    apply: impl Fn(&Saga, &Event, i64) -> Result<Transition, Error>,
) -> Result<Transition, TestCaseError> {
    let answered = match event {
        Event::Reply {
            participant,
            branch,
            operation,
            attempt,
            ..
        } => Some((branch.0, *operation, *attempt, participant.as_str())),
        _ => None,
    };
    let Some((branch, op, attempt, from)) = answered else {
        return apply(saga, event, now).map_err(|e| TestCaseError::fail(format!("{event:?}: {e}")));
    };
    let was_sent = sent.contains(&(branch, op, attempt));
    let right_sender = from == saga.branches[branch as usize].participant;
    match apply(saga, event, now) {
        Ok(t) => {
            prop_assert!(
                right_sender,
                "a reply from the wrong participant was accepted: {event:?}"
            );
            if t.changed(saga) {
                prop_assert!(
                    was_sent,
                    "a reply to a command never sent changed the saga: {event:?}, sent {sent:?}"
                );
            }
            Ok(t)
        }
        Err(e) => {
            prop_assert!(
                !(was_sent && right_sender),
                "a reply to a command the saga sent was refused ({e}): {event:?}"
            );
            match e {
                Error::WrongParticipant { .. } => prop_assert!(!right_sender),
                Error::NeverSent { .. } => prop_assert!(!was_sent),
                Error::UnknownBranch { .. } => prop_assert!(false, "branches are in range"),
            }
            Ok(Transition {
                saga: saga.clone(),
                actions: Vec::new(),
            })
        }
    }
}

fn pacing_of(floors: &[i64]) -> Pacing {
    floors
        .iter()
        .enumerate()
        .fold(Pacing::none(), |pacing, (i, f)| pacing.with_floor(format!("p{i}"), *f))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever the pacing, every command sent is next due after its backoff stretched
    /// to its participant's floor: never sooner than the plain backoff, never later
    /// than the larger of that and the backoff's cap.
    #[test]
    fn pacing_only_ever_stretches_up_to_the_cap(
        n in 1usize..5,
        inputs in proptest::collection::vec(input_strategy(4), 0..40),
        floors in proptest::collection::vec(0i64..200_000, 4),
    ) {
        let p = policy();
        let pacing = pacing_of(&floors);
        let check = |saga: &Saga, actions: &[Action], now: i64| -> Result<(), TestCaseError> {
            for (branch, op, attempt) in sends(actions) {
                let b = &saga.branches[branch as usize];
                let Some((waiting, last, at)) = b.state.waiting() else { continue };
                if waiting != op || last != attempt {
                    continue; // superseded within the same transition
                }
                let backoff = p.backoff(op);
                let delay = at - now;
                prop_assert_eq!(delay, p.resend_delay_ms(op, attempt, &b.participant, &pacing));
                prop_assert!(delay >= backoff.delay_ms(attempt));
                prop_assert!(delay <= backoff.delay_ms(attempt).max(backoff.max_ms));
                prop_assert!(delay >= pacing.floor_ms(&b.participant).min(backoff.max_ms));
            }
            Ok(())
        };
        let (mut saga, actions) = Saga::new_paced(SagaId::new(), (0..n).map(|i| (format!("p{i}"), serde_json::json!(i))).collect(), T0, T0 + 10_000, &p, &pacing);
        check(&saga, &actions, T0)?;
        let mut sent = sends(&actions);
        let mut now = T0;
        for input in inputs {
            let event = event_of(input, n, &sent, &mut now);
            let t = apply_checked(&saga, &event, now, &sent, |s, e, now| apply_paced(s, e, now, &p, &pacing))?;
            check(&t.saga, &t.actions, now)?;
            sent.extend(sends(&t.actions));
            saga = t.saga;
        }
    }

    /// For any interleaving of duplicated, reordered, stale and delayed replies, forged
    /// ones among them (dead-lettered: they leave the saga as it was), timer firings
    /// and forced resends: a saga never sends a confirm after a cancel (nor the
    /// reverse), a terminal saga never changes, a reply is refused exactly when it
    /// answers nothing the saga sent or names the wrong participant, and once messages
    /// flow every saga ends terminal.
    #[test]
    fn decides_once_and_always_finishes(
        n in 1usize..5,
        inputs in proptest::collection::vec(input_strategy(4), 0..60),
        fates in proptest::collection::vec(proptest::bool::weighted(0.8), 4),
        floors in proptest::collection::vec(prop_oneof![2 => Just(0i64), 1 => 0i64..120_000], 4),
    ) {
        let p = policy();
        let pacing = pacing_of(&floors);
        let apply = |s: &Saga, e: &Event, now: i64, p: &Policy| apply_paced(s, e, now, p, &pacing);
        let (mut saga, actions) = Saga::new_paced(SagaId::new(), (0..n).map(|i| (format!("p{i}"), serde_json::json!(i))).collect(), T0, T0 + 10_000, &p, &pacing);
        let mut sent = sends(&actions);
        let mut now = T0;
        for input in inputs {
            let event = event_of(input, n, &sent, &mut now);
            let before = saga.clone();
            let t = apply_checked(&saga, &event, now, &sent, |s, e, now| apply(s, e, now, &p))?;
            if before.state.is_terminal() {
                prop_assert!(!t.changed(&before), "terminal saga changed");
            }
            if before.state == SagaState::Confirming || before.state == SagaState::Confirmed {
                prop_assert!(matches!(t.saga.state, SagaState::Confirming | SagaState::Confirmed));
            }
            if before.state == SagaState::Cancelling || before.state == SagaState::Cancelled {
                prop_assert!(matches!(t.saga.state, SagaState::Cancelling | SagaState::Cancelled));
            }
            sent.extend(sends(&t.actions));
            assert_safe(&sent);
            saga = t.saga;
        }

        // Messages now flow: a well-behaved participant answers every outstanding
        // command (tries by their fate), time advances to each wake-up.
        let mut rounds = 0;
        while !saga.state.is_terminal() {
            rounds += 1;
            prop_assert!(rounds < 100, "saga did not finish: {saga:?}");
            let waiting: Vec<(BranchId, Operation, u32)> = saga.branches.iter().filter_map(|b| b.state.waiting().map(|w| (b.id, w.0, w.1))).collect();
            for (branch, op, attempt) in waiting {
                let outcome = if op == Operation::Try && !fates[branch.0 as usize] { Outcome::rejected("fate") } else { Outcome::Ok };
                let t = apply(&saga, &Event::Reply { participant: saga.branches[branch.0 as usize].participant.clone(), branch, operation: op, attempt, outcome }, now, &p).unwrap();
                sent.extend(sends(&t.actions));
                saga = t.saga;
            }
            if let Some(w) = saga.wake_at() {
                now = now.max(w);
                let t = apply(&saga, &Event::Tick, now, &p).unwrap();
                sent.extend(sends(&t.actions));
                saga = t.saga;
            }
            assert_safe(&sent);
        }
        // Atomicity as the coordinator sees it.
        match saga.state {
            SagaState::Confirmed => prop_assert!(saga.branches.iter().all(|b| b.state == BranchState::Confirmed)),
            SagaState::Cancelled => {
                let undone = saga.branches.iter().all(|b| matches!(b.state, BranchState::Cancelled | BranchState::Rejected { .. }));
                prop_assert!(undone, "cancelled saga with a branch not undone");
            }
            _ => unreachable!(),
        }
    }
}
