//! SQS-specific behaviour beyond the shared contract (`contract.rs`): the visibility
//! heartbeat, the redrive policy `declare` sets, prefetch, and error mapping. Runs
//! against the SQS emulator; skips without it unless `KESSAI_REQUIRE_SERVICES=1`.

#![cfg(feature = "sqs")]

mod common;

use aws_sdk_sqs::types::QueueAttributeName;
use common::{options, prefetch_of_three, queue_name, sqs, sqs_config, sqs_queue};
use kessai_testkit::{expect_nothing, receive_one};
use kessai_transport::{
    DEAD_LETTER_REASON, Error, OutgoingMessage, SqsConfig, SqsTransport, Transport, dead_letter_queue,
};
use std::time::Duration;

/// SQS with its visibility timeout cut to `visibility`, and a fresh queue.
async fn with_visibility(visibility: Duration) -> Option<(SqsTransport, String, common::Cleanup)> {
    sqs_queue(SqsConfig {
        visibility_timeout: visibility,
        ..sqs_config()
    })
    .await
}

/// A delivery held (unsettled) for well over its visibility timeout is not handed to
/// another consumer: the heartbeat keeps extending it. After ack it never comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_keeps_a_slow_delivery_hidden() {
    let visibility = Duration::from_secs(2);
    let Some((t, q, cleanup)) = with_visibility(visibility).await else {
        return;
    };
    t.publish(&q, OutgoingMessage::new(b"slow".to_vec())).await.unwrap();
    let mut slow = t.consume(&q, options(8)).await.unwrap();
    let held = receive_one(&mut slow, Duration::from_secs(10)).await;
    let mut other = t.consume(&q, options(8)).await.unwrap();
    expect_nothing(&mut other, visibility * 3).await;
    held.ack().await.unwrap();
    expect_nothing(&mut other, visibility * 2).await;
    cleanup.done().await;
}

/// Without the heartbeat (the delivery's process died: simulated by forgetting the
/// delivery), the message reappears after the visibility timeout, marked redelivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_holder_s_message_reappears_after_the_timeout() {
    let visibility = Duration::from_secs(2);
    let Some((t, q, cleanup)) = with_visibility(visibility).await else {
        return;
    };
    t.publish(&q, OutgoingMessage::new(b"orphan".to_vec())).await.unwrap();
    // Receive with a raw client so no heartbeat or drop handler runs: as if the
    // process had been killed.
    let url = t.queue_url(&q).await.unwrap();
    let raw = t
        .client()
        .receive_message()
        .queue_url(&url)
        .wait_time_seconds(5)
        .send()
        .await
        .unwrap();
    assert_eq!(raw.messages().len(), 1);
    let mut consumer = t.consume(&q, options(8)).await.unwrap();
    let d = receive_one(&mut consumer, visibility * 4).await;
    assert_eq!(d.payload, b"orphan");
    assert!(d.redelivered);
    d.ack().await.unwrap();
    cleanup.done().await;
}

/// `declare` creates `<q>-dlq` and points the main queue's RedrivePolicy at it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declare_sets_the_redrive_policy() {
    let Some((t, q, cleanup)) = sqs_queue(sqs_config()).await else {
        return;
    };
    t.declare(&q).await.expect("declare is idempotent");
    let url = t.queue_url(&q).await.unwrap();
    let attributes = t
        .client()
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::All)
        .send()
        .await
        .unwrap();
    let attributes = attributes.attributes().unwrap();
    let policy: String = attributes[&QueueAttributeName::RedrivePolicy]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    assert!(policy.contains(&format!(":{}\"", dead_letter_queue(&q))), "{policy}");
    assert!(
        policy.contains("\"maxReceiveCount\":\"10\"") || policy.contains("\"maxReceiveCount\":10"),
        "{policy}"
    );
    assert_eq!(attributes[&QueueAttributeName::VisibilityTimeout], "4");
    cleanup.done().await;
}

/// A message received more than `max_receive_count` times without being settled for
/// good lands in `<q>-dlq` by SQS's own redrive (no reason header: nobody gave one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_moves_a_message_that_keeps_coming_back() {
    let config = SqsConfig {
        max_receive_count: 2,
        ..sqs_config()
    };
    let Some((t, q, cleanup)) = sqs_queue(config).await else {
        return;
    };
    t.publish(&q, OutgoingMessage::new(b"flaky".to_vec())).await.unwrap();
    let mut consumer = t.consume(&q, options(8)).await.unwrap();
    for _ in 0..2 {
        receive_one(&mut consumer, Duration::from_secs(10))
            .await
            .requeue()
            .await
            .unwrap();
    }
    expect_nothing(&mut consumer, Duration::from_secs(2)).await;
    let mut dlq = t.consume(&dead_letter_queue(&q), options(8)).await.unwrap();
    let dead = receive_one(&mut dlq, Duration::from_secs(10)).await;
    assert_eq!(dead.payload, b"flaky");
    assert!(!dead.headers.contains_key(DEAD_LETTER_REASON));
    dead.ack().await.unwrap();
    cleanup.done().await;
}

/// A consumer holds at most `prefetch` unsettled deliveries; settling frees room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_bounds_unsettled_deliveries() {
    let Some((t, q, cleanup)) = sqs_queue(sqs_config()).await else {
        return;
    };
    let (_consumer, more) = prefetch_of_three(&t, &q, Duration::from_secs(5)).await;
    for d in more {
        d.ack().await.unwrap();
    }
    cleanup.done().await;
}

/// Publishing to a queue that does not exist is an error (retryable: it may be
/// declared by another service shortly); consuming one is a config error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undeclared_queues_are_refused() {
    let Some(t) = sqs(sqs_config()).await else {
        return;
    };
    let published = t.publish(&queue_name(), OutgoingMessage::new(b"x".to_vec())).await;
    assert!(matches!(published, Err(Error::NotAccepted(_))), "{published:?}");
    let consumed = t.consume(&queue_name(), options(8)).await;
    assert!(matches!(consumed, Err(Error::Config(_))), "{:?}", consumed.err());
}

/// An endpoint with nothing listening is `Unavailable` (retryable), not a config error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_endpoint_is_unavailable() {
    let t = SqsTransport::connect(SqsConfig {
        endpoint_url: Some("http://127.0.0.1:1".into()),
        ..sqs_config()
    })
    .await
    .expect("SQS client");
    let published = t.publish("nowhere", OutgoingMessage::new(b"x".to_vec())).await;
    assert!(matches!(published, Err(Error::Unavailable(_))), "{published:?}");
}

/// Half-given credentials are refused up front.
#[tokio::test]
async fn credentials_come_in_pairs() {
    let refused = SqsTransport::connect(SqsConfig {
        access_key_id: Some("id".into()),
        secret_access_key: None,
        ..sqs_config()
    })
    .await;
    assert!(matches!(refused, Err(Error::Config(_))));
}
