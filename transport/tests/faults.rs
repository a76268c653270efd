//! The fault-injecting transport over the in-process one: each fault kind on its own,
//! all of them together, reproducibility from the seed, switching faults off, and
//! configuration validation. Time is paused, so delays cost nothing and the tests
//! are deterministic.

use kessai_transport::faults::REORDER_WINDOW;
use kessai_transport::{
    ConsumeOptions, Consumer, Error, FaultConfig, FaultCounters, FaultyTransport, MemoryTransport, OutgoingMessage,
    Transport,
};
use std::sync::Arc;
use std::time::Duration;

const Q: &str = "faults-q";
const DELAY_MAX: Duration = Duration::from_secs(1);

fn message(payload: &str) -> OutgoingMessage {
    OutgoingMessage::new(payload.as_bytes().to_vec())
}

fn config() -> FaultConfig {
    FaultConfig {
        delay_max: DELAY_MAX,
        seed: 42,
        ..FaultConfig::default()
    }
}

/// [`config`] changed by `set` (say, one fault made certain).
fn with(set: impl FnOnce(&mut FaultConfig)) -> FaultConfig {
    let mut config = config();
    set(&mut config);
    config
}

/// Counters at zero but what `set` sets.
fn counted(set: impl FnOnce(&mut FaultCounters)) -> FaultCounters {
    let mut counters = FaultCounters::default();
    set(&mut counters);
    counters
}

/// Publishes each of `payloads` with its own `publish`.
async fn publish_each<T: Transport + ?Sized>(transport: &T, payloads: &[&str]) {
    for p in payloads {
        transport.publish(Q, message(p)).await.expect("publish");
    }
}

/// Publishes `m0`, `m1`, … `m<n-1>`, one `publish` each.
async fn publish_numbered<T: Transport + ?Sized>(transport: &T, n: u64) {
    for i in 0..n {
        transport.publish(Q, message(&format!("m{i}"))).await.expect("publish");
    }
}

/// Publishes `payloads` in one `publish_batch`.
async fn publish_batch<T: Transport + ?Sized>(transport: &T, payloads: &[impl AsRef<str>]) {
    let batch = payloads.iter().map(|p| message(p.as_ref())).collect();
    transport.publish_batch(Q, batch).await.expect("publish_batch");
}

async fn spawn(config: FaultConfig) -> (MemoryTransport, FaultyTransport<MemoryTransport>) {
    let memory = MemoryTransport::new();
    let faulty = FaultyTransport::new(Arc::new(memory.clone()), config).expect("valid config");
    faulty.declare(Q).await.expect("declare");
    (memory, faulty)
}

/// Everything currently deliverable on `Q`, acked, in delivery order.
async fn drain<T: Transport + ?Sized>(transport: &T) -> Vec<String> {
    let mut consumer: Box<dyn Consumer> = transport
        .consume(
            Q,
            ConsumeOptions {
                prefetch: 1000,
                poll_wait: Duration::from_millis(10),
            },
        )
        .await
        .expect("consume");
    let mut got = Vec::new();
    loop {
        let batch = consumer.next_batch(1000).await.expect("next_batch");
        if batch.is_empty() {
            return got;
        }
        for d in batch {
            got.push(String::from_utf8(d.payload.clone()).expect("utf-8"));
            d.ack().await.expect("ack");
        }
    }
}

/// Lets every delayed or held message reach the inner transport.
async fn quiesce(faulty: &FaultyTransport<MemoryTransport>) {
    tokio::time::sleep(DELAY_MAX + REORDER_WINDOW + Duration::from_millis(1)).await;
    assert_eq!(faulty.in_flight(), 0, "nothing may stay in flight");
}

#[tokio::test(start_paused = true)]
async fn drop_loses_every_message_and_counts_it() {
    let (memory, faulty) = spawn(with(|c| c.drop = 1.0)).await;
    // Each publish answers Ok.
    publish_numbered(&faulty, 10).await;
    publish_batch(&faulty, &["b1", "b2"]).await;
    assert_eq!(faulty.pending(Q).await.expect("pending"), Some(0));
    assert!(drain(&faulty).await.is_empty());
    assert_eq!(memory.ready_len(Q), 0);
    assert_eq!(faulty.counters(), counted(|c| c.dropped = 12));
}

#[tokio::test(start_paused = true)]
async fn duplicate_sends_each_message_twice() {
    let (_memory, faulty) = spawn(with(|c| c.duplicate = 1.0)).await;
    publish_each(&faulty, &["a"]).await;
    publish_batch(&faulty, &["b", "c"]).await;
    assert_eq!(drain(&faulty).await, ["a", "a", "b", "b", "c", "c"]);
    assert_eq!(faulty.counters(), counted(|c| c.duplicated = 3));
}

#[tokio::test(start_paused = true)]
async fn delay_delivers_later_and_pending_counts_the_message_meanwhile() {
    let (memory, faulty) = spawn(with(|c| c.delay = 1.0)).await;
    let started = tokio::time::Instant::now();
    publish_each(&faulty, &["late-1", "late-2"]).await;
    // `publish` answered at once, yet nothing has reached the broker.
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(memory.ready_len(Q), 0);
    assert_eq!(faulty.in_flight(), 2);
    assert_eq!(
        faulty.pending(Q).await.expect("pending"),
        Some(2),
        "in flight counts as pending"
    );
    assert_eq!(memory.pending(Q).await.expect("pending"), Some(0));

    quiesce(&faulty).await;
    assert_eq!(memory.ready_len(Q), 2);
    assert_eq!(
        faulty.pending(Q).await.expect("pending"),
        Some(2),
        "now waiting in the broker"
    );
    let mut got = drain(&faulty).await;
    got.sort();
    assert_eq!(got, ["late-1", "late-2"]);
    assert_eq!(faulty.pending(Q).await.expect("pending"), Some(0));
    assert_eq!(faulty.counters().delayed, 2);
}

#[tokio::test(start_paused = true)]
async fn delay_is_never_longer_than_delay_max() {
    let (memory, faulty) = spawn(with(|c| c.delay = 1.0)).await;
    publish_numbered(&faulty, 50).await;
    tokio::time::sleep(DELAY_MAX + Duration::from_millis(1)).await;
    assert_eq!(memory.ready_len(Q), 50);
    assert_eq!(faulty.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn reorder_swaps_a_message_with_its_successor() {
    let (memory, faulty) = spawn(with(|c| c.reorder = 1.0)).await;
    publish_each(&faulty, &["first"]).await;
    assert_eq!(memory.ready_len(Q), 0, "held back");
    assert_eq!(faulty.pending(Q).await.expect("pending"), Some(1));
    publish_each(&faulty, &["second"]).await;
    assert_eq!(drain(&faulty).await, ["second", "first"]);

    // Within a batch too: pairs swap.
    publish_batch(&faulty, &["a", "b", "c", "d"]).await;
    assert_eq!(drain(&faulty).await, ["b", "a", "d", "c"]);
    assert_eq!(faulty.counters().reordered, 3);
    assert_eq!(faulty.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_held_message_without_successor_is_sent_after_the_window() {
    let (memory, faulty) = spawn(with(|c| c.reorder = 1.0)).await;
    publish_each(&faulty, &["lonely"]).await;
    tokio::time::sleep(REORDER_WINDOW / 2).await;
    assert_eq!(memory.ready_len(Q), 0);
    assert_eq!(faulty.pending(Q).await.expect("pending"), Some(1));
    tokio::time::sleep(REORDER_WINDOW).await;
    assert_eq!(memory.ready_len(Q), 1);
    assert_eq!(faulty.in_flight(), 0);
    assert_eq!(drain(&faulty).await, ["lonely"]);
}

#[tokio::test(start_paused = true)]
async fn release_held_sends_held_messages_at_once() {
    let (memory, faulty) = spawn(with(|c| c.reorder = 1.0)).await;
    publish_each(&faulty, &["held"]).await;
    faulty.release_held().await.expect("release");
    assert_eq!(memory.ready_len(Q), 1);
    assert_eq!(faulty.in_flight(), 0);
    // The window timer finds the slot empty and sends nothing twice.
    tokio::time::sleep(REORDER_WINDOW * 2).await;
    assert_eq!(drain(&faulty).await, ["held"]);
}

/// Every fault at once: whatever is not dropped arrives, duplicates once more, and
/// nothing stays in flight.
#[tokio::test(start_paused = true)]
async fn all_faults_together_account_for_every_message() {
    let (_memory, faulty) = spawn(every_fault(0.2, 42)).await;
    let n = 500;
    publish_numbered(&faulty, n).await;
    quiesce(&faulty).await;
    let got = drain(&faulty).await;
    let c = faulty.counters();
    assert!(
        c.dropped > 0 && c.duplicated > 0 && c.delayed > 0 && c.reordered > 0,
        "{c:?}"
    );
    assert_eq!(got.len() as u64, n - c.dropped + c.duplicated, "{c:?}");
    let distinct: std::collections::BTreeSet<_> = got.iter().collect();
    assert_eq!(distinct.len() as u64, n - c.dropped);
}

/// Every fault with probability `p`, seeded with `seed`.
fn every_fault(p: f64, seed: u64) -> FaultConfig {
    FaultConfig {
        drop: p,
        duplicate: p,
        delay: p,
        reorder: p,
        seed,
        ..config()
    }
}

/// Runs one fixed sequence of calls and returns the counters and what arrived.
async fn replay(seed: u64) -> (FaultCounters, Vec<String>) {
    let (_memory, faulty) = spawn(every_fault(0.3, seed)).await;
    publish_numbered(&faulty, 100).await;
    let batch: Vec<String> = (0..20).map(|i| format!("b{i}")).collect();
    publish_batch(&faulty, &batch).await;
    quiesce(&faulty).await;
    let mut got = drain(&faulty).await;
    got.sort();
    (faulty.counters(), got)
}

#[tokio::test(start_paused = true)]
async fn same_seed_same_faults() {
    let (a, got_a) = replay(7).await;
    let (b, got_b) = replay(7).await;
    assert_eq!(a, b);
    assert_eq!(got_a, got_b);
    let (c, _) = replay(8).await;
    assert_ne!(a, c, "another seed makes other decisions");
}

#[tokio::test(start_paused = true)]
async fn set_config_reseeds() {
    let (_memory, faulty) = spawn(with(|c| c.drop = 0.5)).await;
    let run = || async {
        let before = faulty.counters().dropped;
        publish_numbered(&faulty, 64).await;
        faulty.counters().dropped - before
    };
    let first = run().await;
    faulty.set_config(with(|c| c.drop = 0.5)).expect("valid");
    assert_eq!(run().await, first, "same seed again, same drops");
}

#[tokio::test(start_paused = true)]
async fn disabled_faults_pass_through() {
    let (memory, faulty) = spawn(every_fault(1.0, 42)).await;
    assert!(faulty.is_enabled());
    faulty.set_enabled(false);
    publish_each(&faulty, &["a"]).await;
    publish_batch(&faulty, &["b", "c"]).await;
    assert_eq!(memory.ready_len(Q), 3, "sent at once");
    assert_eq!(drain(&faulty).await, ["a", "b", "c"]);
    assert_eq!(faulty.counters(), FaultCounters::default());

    // And back on: the very next message is lost.
    faulty.set_enabled(true);
    publish_each(&faulty, &["d"]).await;
    assert!(drain(&faulty).await.is_empty());
    assert_eq!(faulty.counters().dropped, 1);
}

#[tokio::test]
async fn invalid_probabilities_are_rejected() {
    for bad in [
        with(|c| c.drop = 1.5),
        with(|c| c.duplicate = -0.1),
        with(|c| c.delay = f64::NAN),
        with(|c| c.reorder = 5.0),
    ] {
        let err = FaultyTransport::new(Arc::new(MemoryTransport::new()), bad.clone())
            .err()
            .expect("rejected");
        assert!(matches!(err, Error::Config(_)), "{err}");
    }

    let faulty = FaultyTransport::new(Arc::new(MemoryTransport::new()), config()).expect("valid");
    let err = faulty.set_config(with(|c| c.drop = 2.0)).expect_err("rejected");
    assert!(matches!(err, Error::Config(_)), "{err}");
    assert_eq!(faulty.config(), config(), "the old configuration stays");
}

#[tokio::test(start_paused = true)]
async fn wraps_a_dyn_transport_and_passes_through_the_rest() {
    let memory = MemoryTransport::new();
    let inner: Arc<dyn Transport> = Arc::new(memory.clone());
    let faulty: Arc<dyn Transport> = Arc::new(FaultyTransport::new(inner, config()).expect("valid"));
    assert_eq!(faulty.system(), "memory");
    faulty.declare(Q).await.expect("declare");
    publish_each(&*faulty, &["x"]).await;
    assert_eq!(faulty.pending(Q).await.expect("pending"), Some(1));
    assert_eq!(drain(&*faulty).await, ["x"]);
}
