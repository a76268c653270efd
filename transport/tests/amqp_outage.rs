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

mod common;

use common::{Kind, amqp_config, delete_queues, options, queue_name};
use kessai_transport::testing::{self, RabbitOutage, broker_lock, rabbitmqctl};
use kessai_transport::{AmqpConfig, AmqpTransport, OutgoingMessage, Transport};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

fn payload(id: u64) -> OutgoingMessage {
    OutgoingMessage::new(id.to_string().into_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_broker_restart_without_losing_confirmed_messages() {
    let url = testing::amqp_url();
    if !testing::require_service("RabbitMQ", &testing::host_port(&url, 5672)) {
        return;
    }
    if let Err(e) = rabbitmqctl(&["status"]) {
        assert!(!testing::services_required(), "rabbitmqctl is required: {e}");
        eprintln!("skipping: cannot drive the broker: {e}");
        return;
    }
    let _exclusive = tokio::task::spawn_blocking(|| broker_lock("rabbit", true))
        .await
        .unwrap();
    let config = AmqpConfig {
        confirm_timeout: Duration::from_secs(5),
        reconnect_max_backoff: Duration::from_millis(500),
        ..amqp_config()
    };
    let transport = AmqpTransport::connect(config).await.expect("connect");
    let q = queue_name();
    transport.declare(&q).await.expect("declare");

    let stop_publishing = Arc::new(AtomicBool::new(false));
    let stop_consuming = Arc::new(AtomicBool::new(false));
    let confirmed = Arc::new(Mutex::new(BTreeSet::<u64>::new()));
    let consumed = Arc::new(Mutex::new(BTreeSet::<u64>::new()));
    let publish_errors = Arc::new(AtomicUsize::new(0));
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
    let single = tokio::spawn({
        let (transport, q, confirmed, errors, stop) = (
            transport.clone(),
            q.clone(),
            confirmed.clone(),
            publish_errors.clone(),
            stop_publishing.clone(),
        );
        async move {
            let mut id = 0;
            while !stop.load(Ordering::SeqCst) {
                match transport.publish(&q, payload(id)).await {
                    Ok(()) => {
                        confirmed.lock().unwrap().insert(id);
                        id += 2;
                    }
                    Err(e) => {
                        assert!(e.is_retryable(), "publish failed permanently: {e}");
                        errors.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    let batched = tokio::spawn({
        let (transport, q, confirmed, errors, stop) = (
            transport.clone(),
            q.clone(),
            confirmed.clone(),
            publish_errors.clone(),
            stop_publishing.clone(),
        );
        async move {
            let mut next = 1;
            while !stop.load(Ordering::SeqCst) {
                let ids: Vec<u64> = (0..5).map(|k| next + 2 * k).collect();
                match transport
                    .publish_batch(&q, ids.iter().copied().map(payload).collect())
                    .await
                {
                    Ok(()) => {
                        confirmed.lock().unwrap().extend(&ids);
                        next += 10;
                    }
                    Err(e) => {
                        // Some of the batch may have been stored: resending with new
                        // ids is what a relay would not do, but losses are what we
                        // check, and only Ok'ed ids count.
                        assert!(e.is_retryable(), "publish_batch failed permanently: {e}");
                        errors.fetch_add(1, Ordering::SeqCst);
                        next += 10;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });

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
    stop_publishing.store(true, Ordering::SeqCst);
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
        publish_errors.load(Ordering::SeqCst),
        consume_errors.load(Ordering::SeqCst),
    );
    assert!(
        publish_errors.load(Ordering::SeqCst) > 0,
        "publishes should have failed while the broker was down"
    );
    delete_queues(Kind::Amqp, &[q]).await;
}
