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
    let branches = vec![("a".to_string(), serde_json::json!(1))];
    let (s, a) = Saga::new(SagaId::new(), branches, T0, T0 + 10_000, &policy());
    let submitted = note(&a, EventKind::Submitted);
    assert_eq!(submitted.actor, Some(Actor::Client));
    assert_eq!(submitted.detail, "1 branches");
    let (s, a) = step(&s, reply(0, Operation::Try, Outcome::Ok), T0 + 1);
    let ok = note(&a, EventKind::TryOk);
    assert_eq!(ok.outcome, Some(EventOutcome::Prepared));
    assert_eq!((ok.operation, ok.attempt), (Some(Operation::Try), Some(1)));
    assert_eq!(ok.detail, "a (send 1)");
    let decided = note(&a, EventKind::Decided);
    assert_eq!(decided.outcome, Some(EventOutcome::Confirm));
    assert_eq!(decided.reason, None);
    assert_eq!(decided.actor, Some(Actor::Participant("a".into())));
    let (_, a) = step(&s, reply(0, Operation::Confirm, Outcome::retryable("busy")), T0 + 2);
    let failed = note(&a, EventKind::ConfirmFailed);
    assert_eq!(failed.outcome, Some(EventOutcome::Failed));
    assert_eq!(failed.reason.as_deref(), Some("busy"));
    let (_, a) = step(&s, reply(0, Operation::Confirm, Outcome::Ok), T0 + 2);
    assert_eq!(note(&a, EventKind::ConfirmOk).outcome, Some(EventOutcome::Confirmed));
    let finished = note(&a, EventKind::Finished);
    assert_eq!(finished.detail, "confirmed");
    assert_eq!(finished.outcome, Some(EventOutcome::Confirmed));
    assert_eq!(finished.actor, Some(Actor::Participant("a".into())));
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
    Reply {
        branch: u32,
        op: Operation,
        attempt: u32,
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
        6 => (0..branches, op_strategy(), 1u32..5, 0u8..4).prop_map(|(branch, op, attempt, outcome)| Input::Reply { branch, op, attempt, outcome }),
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

/// The event `input` stands for on a saga of `n` branches; a tick first moves `now`.
fn event_of(input: Input, n: usize, now: &mut i64) -> Event {
    match input {
        Input::Reply {
            branch,
            op,
            attempt,
            outcome,
        } => Event::Reply {
            branch: BranchId(branch % n as u32),
            operation: op,
            attempt,
            outcome: outcome_of(outcome),
        },
        Input::Tick { advance_ms } => {
            *now += advance_ms;
            Event::Tick
        }
        Input::ResendNow => resend_now("prop"),
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
        let mut now = T0;
        for input in inputs {
            let event = event_of(input, n, &mut now);
            let t = apply_paced(&saga, &event, now, &p, &pacing).unwrap();
            check(&t.saga, &t.actions, now)?;
            saga = t.saga;
        }
    }

    /// For any interleaving of duplicated, reordered, stale and delayed replies, timer
    /// firings and forced resends: a saga never sends a confirm after a cancel (nor
    /// the reverse), a terminal saga never changes, and once messages flow every saga
    /// ends terminal.
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
            let event = event_of(input, n, &mut now);
            let before = saga.clone();
            let t = apply(&saga, &event, now, &p).unwrap();
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
                let t = apply(&saga, &Event::Reply { branch, operation: op, attempt, outcome }, now, &p).unwrap();
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
