//! RabbitMQ goes away and comes back under load; the transport heals without being
//! recreated and nothing confirmed is lost.
//!
//! With a consumer running and publishers (single and batch) in flight, the broker
//! is stopped (`rabbitmqctl stop_app`) for ~3 s and started again. Every message
//! whose publish returned `Ok` must then be consumed (at-least-once: duplicates are
//! fine, losses are not), and publishing must work again after the restart.
//!
//! Stopping the broker would break any other RabbitMQ test running at that moment,
//! in this binary or another one (nextest runs binaries in parallel), so this test
//! takes the broker lock exclusively (`/tmp/kessai-rabbit.lock`); the others take it
//! shared. The broker is started again by a drop guard, also when the test fails.
//! Needs `rabbitmqctl` on the PATH with rights to stop the local node; skips without
//! it (or fails, with `KESSAI_REQUIRE_SERVICES=1`).

#![cfg(feature = "amqp")]

mod common;

use common::{Kind, amqp_config, delete_queues, options, queue_name};
use kessai_testkit::{RabbitOutage, rabbitmq_for_outages};
use kessai_transport::{AmqpConfig, AmqpTransport, OutgoingMessage, Transport};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

fn payload(id: u64) -> OutgoingMessage {
    OutgoingMessage::new(id.to_string().into_bytes())
}

/// What the publishers share: when to stop, the ids the broker confirmed, how many
/// publishes failed.
#[derive(Clone, Default)]
struct Publishing {
    stop: Arc<AtomicBool>,
    confirmed: Arc<Mutex<BTreeSet<u64>>>,
    errors: Arc<AtomicUsize>,
}

/// A publisher task: rounds of `batch` messages (one `publish` for 1, else one
/// `publish_batch`) with ids `first`, `first + 2`, … until told to stop, `pause` apart.
/// An Ok'ed round's ids are confirmed; a failed one must be retryable and is counted.
/// Some of a failed batch may have been stored: resending it with new ids is what a
/// relay would not do, but losses are what we check, and only Ok'ed ids count.
fn publisher(
    transport: &AmqpTransport,
    q: &str,
    publishing: &Publishing,
    first: u64,
    batch: u64,
    pause: Duration,
) -> tokio::task::JoinHandle<()> {
    let (transport, q, publishing) = (transport.clone(), q.to_owned(), publishing.clone());
    tokio::spawn(async move {
        let mut next = first;
        while !publishing.stop.load(Ordering::SeqCst) {
            let ids: Vec<u64> = (0..batch).map(|k| next + 2 * k).collect();
            let (sent, call) = if batch == 1 {
                (transport.publish(&q, payload(next)).await, "publish")
            } else {
                let messages = ids.iter().copied().map(payload).collect();
                (transport.publish_batch(&q, messages).await, "publish_batch")
            };
            match sent {
                Ok(()) => {
                    publishing.confirmed.lock().unwrap().extend(&ids);
                    next += 2 * batch;
                }
                Err(e) => {
                    assert!(e.is_retryable(), "{call} failed permanently: {e}");
                    publishing.errors.fetch_add(1, Ordering::SeqCst);
                    if batch > 1 {
                        next += 2 * batch;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            tokio::time::sleep(pause).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_broker_restart_without_losing_confirmed_messages() {
    let Some(_exclusive) = rabbitmq_for_outages().await else {
        return;
    };
    let config = AmqpConfig {
        confirm_timeout: Duration::from_secs(5),
        reconnect_max_backoff: Duration::from_millis(500),
        ..amqp_config()
    };
    let transport = AmqpTransport::connect(config).await.expect("connect");
    let q = queue_name();
    transport.declare(&q).await.expect("declare");

    let publishing = Publishing::default();
    let stop_consuming = Arc::new(AtomicBool::new(false));
    let consumed = Arc::new(Mutex::new(BTreeSet::<u64>::new()));
    let consume_errors = Arc::new(AtomicUsize::new(0));

    let consumer = tokio::spawn({
        let transport = transport.clone();
        let (q, consumed, errors, stop) = (
            q.clone(),
            consumed.clone(),
            consume_errors.clone(),
            stop_consuming.clone(),
        );
        async move {
            let mut consumer = transport.consume(&q, options(64)).await.expect("consume");
            while !stop.load(Ordering::SeqCst) {
                match consumer.next_batch(64).await {
                    Ok(batch) => {
                        for d in batch {
                            let id: u64 = String::from_utf8_lossy(&d.payload).parse().expect("an id");
                            // An ack lost with the channel means a redelivery: fine.
                            if d.ack().await.is_ok() {
                                consumed.lock().unwrap().insert(id);
                            }
                        }
                    }
                    Err(e) => {
                        assert!(e.is_retryable(), "consumer failed permanently: {e}");
                        errors.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }
    });

    // Two publishers: single publishes (ids 0, 2, 4, ...) and batches of 5 (odd ids).
    let single = publisher(&transport, &q, &publishing, 0, 1, Duration::from_millis(5));
    let batched = publisher(&transport, &q, &publishing, 1, 5, Duration::from_millis(20));
    let confirmed = &publishing.confirmed;

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let outage = tokio::task::spawn_blocking(RabbitOutage::begin)
        .await
        .unwrap()
        .expect("stop the broker");
    let before = confirmed.lock().unwrap().len();
    eprintln!("broker stopped after {before} confirmed publishes");
    tokio::time::sleep(Duration::from_secs(3)).await;
    tokio::task::spawn_blocking(move || outage.end()).await.unwrap();
    let at_restart = confirmed.lock().unwrap().len();
    eprintln!("broker started again ({at_restart} confirmed so far)");

    // Publishing must resume without recreating the transport.
    let resumed = Instant::now() + Duration::from_secs(30);
    while confirmed.lock().unwrap().len() < at_restart + 50 {
        assert!(Instant::now() < resumed, "publishing did not resume after the restart");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    publishing.stop.store(true, Ordering::SeqCst);
    single.await.unwrap();
    batched.await.unwrap();

    let confirmed = confirmed.lock().unwrap().clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let missing: Vec<u64> = confirmed.difference(&consumed.lock().unwrap()).copied().collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} confirmed messages never consumed, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(10)]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop_consuming.store(true, Ordering::SeqCst);
    consumer.await.unwrap();
    eprintln!(
        "confirmed {}, consumed {}, publish errors {}, consumer errors {}",
        confirmed.len(),
        consumed.lock().unwrap().len(),
        publishing.errors.load(Ordering::SeqCst),
        consume_errors.load(Ordering::SeqCst),
    );
    assert!(
        publishing.errors.load(Ordering::SeqCst) > 0,
        "publishes should have failed while the broker was down"
    );
    delete_queues(Kind::Amqp, &[q]).await;
}
