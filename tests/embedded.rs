//! The embedded engine end to end, on real SQLite files and the in-process transport:
//! crash recovery, timeouts on a test-driven clock, bad input.

use kessai_coordinator::{Clock, CoordinatorConfig, ManualClock, SagaState, SagaView, SystemClock};
use kessai_harness::demo;
use kessai_harness::stack::{EmbeddedStack, StackConfig};
use kessai_messages::payment::WalletHold;
use kessai_messages::{BranchId, Envelope, Operation, Outcome, Payment, SagaId};
use kessai_participants::sdk::{BranchRef, BusinessError, Participant, async_trait};
use kessai_participants::{BalanceParticipant, ParticipantRuntime};
use kessai_transport::{ConsumeOptions, DEAD_LETTER_REASON, MemoryTransport, OutgoingMessage, Transport};
use sea_orm::DatabaseTransaction;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

mod common;

fn payment(i: usize, fail: bool) -> Payment {
    common::payment(format!("p-{i}"), 1 + i % 50, 1 + i % 50, 100 + i as i64, fail)
}

fn stack_config(dir: &Path, clock: Arc<dyn Clock>, coordinator: CoordinatorConfig) -> StackConfig {
    StackConfig {
        coordinator,
        clock,
        ..StackConfig::sqlite(dir)
    }
}

/// Short resend intervals so recovery after a crash takes seconds, not minutes.
fn brisk() -> CoordinatorConfig {
    common::brisk(CoordinatorConfig::default(), 300)
}

/// Default protocol timings, but the timer task looks for due sagas every 2 ms.
fn ticking_fast() -> CoordinatorConfig {
    CoordinatorConfig {
        tick_interval: Duration::from_millis(2),
        ..CoordinatorConfig::default()
    }
}

async fn wait_all(stack: &EmbeddedStack, ids: &[SagaId], patience: Duration) {
    for id in ids {
        let state = stack.coordinator().wait(*id, patience).await.unwrap();
        assert!(
            state.is_some_and(SagaState::is_terminal),
            "saga {id} not terminal: {state:?}"
        );
    }
}

async fn assert_invariants(stack: &EmbeddedStack, ids: &[SagaId]) {
    // Let duplicates still in flight land before reading the books.
    for _ in 0..100 {
        if stack.queued_messages().await == Some(0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let report = demo::check(stack, ids, &[]).await.unwrap();
    assert!(report.ok(), "{report:#?}");
}

async fn submit_many(stack: &EmbeddedStack, n: usize) -> Vec<SagaId> {
    let mut ids = Vec::new();
    for i in 0..n {
        let s = stack
            .coordinator()
            .submit_payment(&payment(i, i % 7 == 0), None)
            .await
            .unwrap();
        assert!(s.created);
        ids.push(s.saga_id);
    }
    ids
}

async fn terminal_count(stack: &EmbeddedStack) -> u64 {
    terminal_in(stack.coordinator().db()).await
}

/// Sagas confirmed or cancelled according to a coordinator database.
async fn terminal_in(db: &sea_orm::DatabaseConnection) -> u64 {
    let (by_state, _) = kessai_coordinator::store::counts(db).await.unwrap();
    by_state.get(&SagaState::Confirmed).copied().unwrap_or(0)
        + by_state.get(&SagaState::Cancelled).copied().unwrap_or(0)
}

/// A stack with 300 payments submitted and the first 30 finished: sagas are in every
/// phase, the moment to pull the plug.
async fn busy_stack(dir: &Path) -> (EmbeddedStack, Vec<SagaId>) {
    let transport: Arc<dyn Transport> = Arc::new(MemoryTransport::new());
    let stack = EmbeddedStack::start(stack_config(dir, Arc::new(SystemClock), brisk()), transport)
        .await
        .unwrap();
    let ids = submit_many(&stack, 300).await;
    while terminal_count(&stack).await < 30 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (stack, ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_killed_mid_way_resumes_every_saga() {
    let dir = tempfile::tempdir().unwrap();
    let (mut stack, ids) = busy_stack(dir.path()).await;
    stack.kill_coordinator().await;
    let done_at_kill = terminal_count_from_file(dir.path()).await;
    assert!(done_at_kill < 300, "the kill came too late to test anything");
    stack.restart_coordinator().await.unwrap();
    wait_all(&stack, &ids, Duration::from_secs(60)).await;
    // The resumed sagas were driven by the new coordinator: their timelines say so.
    let resumed = count_timeline(&stack, &ids, "resend_requested").await;
    assert!(resumed > 0, "no saga was resumed");
    assert_invariants(&stack, &ids).await;
    stack.shutdown().await;
}

async fn terminal_count_from_file(dir: &Path) -> u64 {
    let db = kessai_migrations::connect(&kessai_migrations::sqlite_url(&dir.join("coordinator.db")), 1)
        .await
        .unwrap();
    let n = terminal_in(&db).await;
    db.close().await.unwrap();
    n
}

async fn count_timeline(stack: &EmbeddedStack, ids: &[SagaId], kind: &str) -> usize {
    let mut n = 0;
    for id in ids {
        let v = stack.coordinator().saga(*id).await.unwrap().unwrap();
        n += v.timeline.iter().filter(|e| e.kind == kind).count();
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participant_killed_mid_way_recovers_without_double_effects() {
    let dir = tempfile::tempdir().unwrap();
    let (mut stack, ids) = busy_stack(dir.path()).await;
    // Abort the bank mid-batch: its unacked deliveries go back to the queue, its
    // uncommitted transaction is lost, replies it had not sent are never sent.
    stack.kill_participant("bank").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack.restart_participant("bank").await.unwrap();
    stack.kill_participant("balance").await;
    stack.restart_participant("balance").await.unwrap();
    wait_all(&stack, &ids, Duration::from_secs(60)).await;
    assert_invariants(&stack, &ids).await;
    // Exactly-once effects: one barrier record per (saga, branch, operation) at most.
    let db = stack.participant_db("bank").unwrap();
    for id in ids.iter().take(50) {
        let records = kessai_participants::barrier_records(db, *id).await.unwrap();
        let mut keys: Vec<_> = records.iter().map(|r| (r.branch_id, r.operation)).collect();
        let n = keys.len();
        keys.dedup();
        assert_eq!(keys.len(), n, "duplicate barrier records for {id}");
    }
    stack.shutdown().await;
}

/// The timeout tests' time: the coordinator reads a [`ManualClock`] that the test
/// moves, in steps, giving the services a few real milliseconds per step to do what
/// became due (its timer task ticks every 2 ms of real time in these tests).
async fn run_for(clock: &ManualClock, span: Duration, step: Duration) {
    let mut elapsed = Duration::ZERO;
    while elapsed < span {
        clock.advance(step);
        elapsed += step;
        tokio::time::sleep(Duration::from_millis(8)).await;
    }
}

/// Runs the manual clock forward until the saga is in `state`, at most `limit`.
async fn run_until(
    stack: &EmbeddedStack,
    clock: &ManualClock,
    id: SagaId,
    state: SagaState,
    limit: Duration,
) -> SagaView {
    let step = Duration::from_millis(100);
    let mut waited = Duration::ZERO;
    loop {
        let v = stack.coordinator().saga(id).await.unwrap().unwrap();
        if v.state == state {
            return v;
        }
        assert!(waited < limit, "saga still {} after {limit:?}: {v:#?}", v.state);
        run_for(clock, step * 5, step).await;
        waited += step * 5;
    }
}

fn timeline_at(view: &SagaView, kind: &str) -> Vec<i64> {
    view.timeline
        .iter()
        .filter(|e| e.kind == kind)
        .map(|e| e.at_ms)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_participant_leads_to_cancel_after_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let transport: Arc<dyn Transport> = Arc::new(MemoryTransport::new());
    let clock = ManualClock::new();
    let mut stack = EmbeddedStack::start(
        stack_config(dir.path(), Arc::new(clock.clone()), ticking_fast()),
        transport,
    )
    .await
    .unwrap();
    stack.kill_participant("bank").await;
    let before = BalanceParticipant::wallet(stack.participant_db("balance").unwrap(), "acct-1")
        .await
        .unwrap()
        .unwrap();

    let id = stack
        .coordinator()
        .submit_payment(&payment(0, false), None)
        .await
        .unwrap()
        .saga_id;
    // The bank never answers: tried until the deadline, then cancelled; the others
    // release their holds; the bank's cancel is resent (nobody answers that either).
    run_for(&clock, Duration::from_secs(9), Duration::from_millis(100)).await;
    let v = stack.coordinator().saga(id).await.unwrap().unwrap();
    assert_eq!(v.state, SagaState::Trying, "cancelled before the deadline");
    assert!(v.branches[2].attempt >= 2, "the unanswered try was not resent");
    run_for(&clock, Duration::from_secs(30), Duration::from_millis(100)).await;
    let v = stack.coordinator().saga(id).await.unwrap().unwrap();
    assert_eq!(v.state, SagaState::Cancelling);
    assert_eq!(v.reason.as_deref(), Some("try deadline passed"));
    let decided = timeline_at(&v, "decided")[0];
    assert!(
        decided - v.created_at_ms >= 10_000,
        "cancelled before the 10 s deadline"
    );
    assert!(decided - v.created_at_ms < 11_000, "cancelled long after the deadline");
    assert_eq!(v.branches[0].state, "cancelled");
    assert_eq!(v.branches[1].state, "cancelled");
    assert_eq!(v.branches[2].state, "cancelling");
    assert!(v.branches[2].attempt > 2, "the bank's cancel was not resent");
    let during = BalanceParticipant::wallet(stack.participant_db("balance").unwrap(), "acct-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(during.available, before.available, "the freeze was not released");
    assert_eq!(during.frozen, 0);

    // The bank comes back: its queued tries and cancels meet its barrier; the saga
    // ends cancelled and nothing stays reserved.
    stack.restart_participant("bank").await.unwrap();
    run_until(&stack, &clock, id, SagaState::Cancelled, Duration::from_secs(120)).await;
    assert_invariants(&stack, &[id]).await;
    stack.shutdown().await;
}

/// The balance service whose confirm keeps failing (its ledger is "locked").
struct LockedLedger;

#[async_trait]
impl Participant for LockedLedger {
    type Payload = WalletHold;
    fn name(&self) -> &'static str {
        "balance"
    }
    async fn try_(&self, txn: &DatabaseTransaction, b: &BranchRef, p: &WalletHold) -> Result<(), BusinessError> {
        BalanceParticipant.try_(txn, b, p).await
    }
    async fn confirm(&self, _: &DatabaseTransaction, _: &BranchRef, _: &WalletHold) -> Result<(), BusinessError> {
        Err(BusinessError::Retryable("ledger locked for maintenance".into()))
    }
    async fn cancel(&self, txn: &DatabaseTransaction, b: &BranchRef, p: &WalletHold) -> Result<(), BusinessError> {
        BalanceParticipant.cancel(txn, b, p).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_confirm_is_retried_with_growing_delays_and_flagged_stuck() {
    let dir = tempfile::tempdir().unwrap();
    let transport: Arc<dyn Transport> = Arc::new(MemoryTransport::new());
    let coordinator = ticking_fast();
    let policy = coordinator.policy;
    let clock = ManualClock::new();
    let mut stack = EmbeddedStack::start(
        stack_config(dir.path(), Arc::new(clock.clone()), coordinator),
        transport.clone(),
    )
    .await
    .unwrap();
    stack.kill_participant("balance").await;
    let url = stack.config().urls.participants["balance"].clone();
    let db = kessai_migrations::open(&url, kessai_migrations::Service::Balance, 1)
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let locked = tokio::spawn(ParticipantRuntime::new(LockedLedger, db.clone(), transport).run(cancel.clone()));

    // A generous try timeout: this test is about confirm, not the try deadline.
    let id = stack
        .coordinator()
        .submit_payment(&payment(1, false), Some(Duration::from_secs(600)))
        .await
        .unwrap()
        .saga_id;
    // Eight sends at 1, 2, 4, 8, 16, 32, 60, 60 s: about three minutes of clock time.
    run_for(&clock, Duration::from_secs(240), Duration::from_millis(250)).await;
    let v = stack.coordinator().saga(id).await.unwrap().unwrap();
    assert_eq!(v.state, SagaState::Confirming);
    assert!(v.stuck, "not flagged stuck: {v:#?}");
    assert_eq!(timeline_at(&v, "stuck").len(), 1);
    // Resends of branch 0's confirm: never before due, and the gaps grow to the cap.
    let decided = timeline_at(&v, "decided")[0];
    let mut sends = vec![decided];
    sends.extend(
        v.timeline
            .iter()
            .filter(|e| e.kind == "resent" && e.branch_id == Some(0))
            .map(|e| e.at_ms),
    );
    assert!(sends.len() as u32 >= policy.stuck_after, "{sends:?}");
    let gaps: Vec<i64> = sends.windows(2).map(|w| w[1] - w[0]).collect();
    for (i, gap) in gaps.iter().enumerate() {
        assert!(
            *gap >= policy.finish_resend.delay_ms(i as u32 + 1),
            "resend {i} came early: {gaps:?}"
        );
    }
    assert!(gaps.last().unwrap() >= &(gaps[0] * 8), "delays did not grow: {gaps:?}");
    // Each resend comes within a step or two of its due time, so no gap passes the cap.
    assert!(
        gaps.iter().all(|g| *g <= policy.finish_resend.max_ms + 1_000),
        "delay beyond the cap: {gaps:?}"
    );

    // The ledger is unlocked: the next resend confirms, the flag clears.
    cancel.cancel();
    let _ = locked.await;
    db.close().await.unwrap();
    stack.restart_participant("balance").await.unwrap();
    let v = run_until(&stack, &clock, id, SagaState::Confirmed, Duration::from_secs(120)).await;
    assert!(!v.stuck);
    assert_invariants(&stack, &[id]).await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_submission_and_poison_replies() {
    let dir = tempfile::tempdir().unwrap();
    let transport = MemoryTransport::new();
    let stack = EmbeddedStack::start(
        stack_config(dir.path(), Arc::new(SystemClock), brisk()),
        Arc::new(transport.clone()),
    )
    .await
    .unwrap();
    let c = stack.coordinator();
    let first = c.submit_payment(&payment(7, false), None).await.unwrap();
    let again = c.submit_payment(&payment(7, false), None).await.unwrap();
    assert!(first.created && !again.created);
    assert_eq!(first.saga_id, again.saga_id);
    let mut bad = payment(8, false);
    bad.amount = -1;
    assert!(c.submit_payment(&bad, None).await.is_err());

    // Garbage and a reply for a saga nobody knows land in the reply DLQ with reasons.
    let queue = kessai_transport::Topology::default().reply_queue();
    transport
        .publish(&queue, OutgoingMessage::new(b"{oops".to_vec()))
        .await
        .unwrap();
    let stranger = Envelope::command(
        SagaId::new(),
        BranchId(0),
        Operation::Try,
        1,
        None,
        kessai_messages::Command {
            participant: "bank".into(),
            reply_to: queue.clone(),
            payload: serde_json::json!({}),
        },
    )
    .reply("bank", Outcome::Ok);
    transport
        .publish(&queue, OutgoingMessage::new(stranger.encode()))
        .await
        .unwrap();
    let mut dlq = transport
        .consume(&format!("{queue}-dlq"), ConsumeOptions::default())
        .await
        .unwrap();
    let mut reasons = Vec::new();
    while reasons.len() < 2 {
        for d in dlq.next_batch(10).await.unwrap() {
            reasons.push(d.headers[DEAD_LETTER_REASON].clone());
            d.ack().await.unwrap();
        }
    }
    reasons.sort();
    assert!(reasons[0].contains("not a JSON object"), "{reasons:?}");
    assert!(reasons[1].contains("unknown saga"), "{reasons:?}");
    // And the coordinator keeps serving.
    let s = c.submit_payment(&payment(9, false), None).await.unwrap();
    assert_eq!(
        c.wait(s.saga_id, Duration::from_secs(30)).await.unwrap(),
        Some(SagaState::Confirmed)
    );
    wait_all(&stack, &[first.saga_id], Duration::from_secs(30)).await;
    assert_invariants(&stack, &[first.saga_id, s.saga_id]).await;
    stack.shutdown().await;
}

fn kessai(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_kessai"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn demo_rejects_bad_flags_with_a_clear_error() {
    for (args, needle) in [
        (&["demo", "--payments", "-5"][..], "positive"),
        (&["demo", "--payments", "lots"][..], "positive"),
        (&["demo", "--fail-rate", "2"][..], "between 0 and 1"),
        (&["demo", "--fail-rate", "-0.1"][..], "between 0 and 1"),
        (&["demo", "--concurrency", "0"][..], "positive"),
        (&["demo", "--transport", "pigeon"][..], "pigeon"),
    ] {
        let out = kessai(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

#[test]
fn demo_runs_and_reports_json() {
    let out = kessai(&[
        "demo",
        "--payments",
        "300",
        "--fail-rate",
        "0.2",
        "--concurrency",
        "16",
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["submitted"], 300);
    assert_eq!(v["invariants_ok"], true);
    assert_eq!(v["stuck"], 0);
    let (confirmed, cancelled) = (v["confirmed"].as_u64().unwrap(), v["cancelled"].as_u64().unwrap());
    assert_eq!(confirmed + cancelled, 300);
    assert!(
        (30..=90).contains(&cancelled),
        "cancelled {cancelled} of 300 at fail rate 0.2"
    );
    for k in ["elapsed_s", "sagas_per_s", "p50_ms", "p99_ms"] {
        assert!(v[k].as_f64().unwrap() > 0.0, "{k}");
    }
}
