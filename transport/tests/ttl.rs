//! Message expiry ([`OutgoingMessage::expires_in`]) on each transport: a message still
//! queued unconsumed when its time-to-live runs out is never delivered and is not
//! dead-lettered (it is a stale copy, not a poison message), while messages without
//! one, or with a long one, are delivered as usual. SQS cannot expire a message: there
//! the same messages are all delivered.
//!
//! RabbitMQ and the SQS emulator skip when unreachable, or fail with
//! `KESSAI_REQUIRE_SERVICES=1`; every test uses fresh queues and deletes them.

mod common;

use common::{Ctx, per_transport};
use kessai_testkit::{expect_nothing, receive};
use kessai_transport::{MemoryTransport, OutgoingMessage, Transport, dead_letter_queue};
use std::collections::BTreeSet;
use std::time::Duration;

const SHORT_TTL: Duration = Duration::from_millis(300);

fn message(payload: &str, ttl: Option<Duration>) -> OutgoingMessage {
    let m = common::message(payload);
    match ttl {
        Some(ttl) => m.expiring_in(ttl),
        None => m,
    }
}

fn payloads(deliveries: &[kessai_transport::Delivery]) -> BTreeSet<String> {
    deliveries
        .iter()
        .map(|d| String::from_utf8_lossy(&d.payload).into_owned())
        .collect()
}

/// Messages whose TTL passed while nobody consumed them are discarded, not
/// dead-lettered; the ones without a TTL or with a long one arrive.
async fn expired_messages_are_dropped_not_dead_lettered(ctx: Ctx) {
    let q = ctx.queue().await;
    // The stale ones first, so they sit at the head (where brokers expire messages),
    // one single and two from a batch.
    ctx.transport
        .publish(&q, message("stale-1", Some(SHORT_TTL)))
        .await
        .expect("publish");
    ctx.transport
        .publish_batch(
            &q,
            vec![
                message("stale-2", Some(SHORT_TTL)),
                message("lasting", Some(Duration::from_secs(600))),
                message("stale-3", Some(SHORT_TTL)),
                message("forever", None),
            ],
        )
        .await
        .expect("publish_batch");
    tokio::time::sleep(SHORT_TTL * 4).await;

    let expected: &[&str] = if ctx.kind.is_sqs() {
        &["stale-1", "stale-2", "stale-3", "lasting", "forever"]
    } else {
        &["lasting", "forever"]
    };
    let expected: BTreeSet<String> = expected.iter().map(|p| (*p).to_owned()).collect();
    let mut consumer = ctx.consume(&q).await;
    let got = receive(&mut consumer, 5, Duration::from_secs(10)).await;
    assert_eq!(payloads(&got), expected);
    for d in got {
        d.ack().await.expect("ack");
    }
    expect_nothing(&mut consumer, ctx.quiet()).await;

    let dlq = dead_letter_queue(&q);
    let mut dead = ctx.consume(&dlq).await;
    expect_nothing(&mut dead, ctx.quiet()).await;
    if !ctx.kind.is_sqs() {
        assert_eq!(ctx.transport.pending(&dlq).await.expect("pending"), Some(0));
        assert_eq!(ctx.transport.pending(&q).await.expect("pending"), Some(0));
    }
}

/// A message taken by a consumer before its TTL ran out is not taken back when the
/// TTL passes while it is being handled: it is settled as usual.
async fn a_delivered_message_does_not_expire(ctx: Ctx) {
    let q = ctx.queue().await;
    let mut consumer = ctx.consume(&q).await;
    ctx.transport
        .publish(&q, message("in hand", Some(Duration::from_secs(1))))
        .await
        .expect("publish");
    let mut got = receive(&mut consumer, 1, Duration::from_secs(10)).await;
    assert_eq!(payloads(&got), BTreeSet::from(["in hand".to_owned()]));
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    got.pop().unwrap().ack().await.expect("ack after the TTL passed");
    expect_nothing(&mut consumer, ctx.quiet()).await;
}

per_transport!(
    expired_messages_are_dropped_not_dead_lettered,
    a_delivered_message_does_not_expire,
);

/// RabbitMQ: the TTL travels as the per-message `expiration` property in whole
/// milliseconds, a message without one has none, and the queue kessai declares has no
/// dead-letter exchange that expired messages could go to.
#[cfg(feature = "amqp")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_sets_the_expiration_property() {
    use lapin::options::{BasicGetOptions, QueueDeclareOptions};
    use lapin::types::{AMQPValue, FieldTable, LongString};

    let Some((transport, q, cleanup)) = common::amqp_queue(common::amqp_config()).await else {
        return;
    };
    transport
        .publish(&q, message("with", Some(Duration::from_millis(60_000))))
        .await
        .expect("publish");
    transport.publish(&q, message("without", None)).await.expect("publish");

    let (connection, channel) = common::raw_channel().await;
    let mut seen = Vec::new();
    for _ in 0..2 {
        let got = channel
            .basic_get(q.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
            .expect("a message");
        seen.push((
            String::from_utf8_lossy(&got.delivery.data).into_owned(),
            got.delivery
                .properties
                .expiration()
                .as_ref()
                .map(|e| e.as_str().to_owned()),
        ));
    }
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("with".to_owned(), Some("60000".to_owned())),
            ("without".to_owned(), None)
        ]
    );
    // Re-declaring with a dead-letter exchange is refused (406 inequivalent arg): the
    // queue has none, so expiry cannot move messages anywhere.
    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(LongString::from("")),
    );
    let redeclare = channel
        .queue_declare(q.as_str().into(), QueueDeclareOptions::durable(), args)
        .await;
    assert!(redeclare.is_err(), "the queue was declared with a dead-letter exchange");
    let _ = connection.close(200, "bye".into()).await;
    cleanup.done().await;
}

/// In-process: expiry follows tokio's clock (paused-time tests see it), a requeued
/// message keeps its original expiry, and discarded messages are counted.
#[tokio::test(start_paused = true)]
async fn memory_expiry_runs_on_tokio_time_and_survives_requeue() {
    let t = MemoryTransport::new();
    t.declare("q").await.unwrap();
    t.publish("q", message("requeued", Some(Duration::from_secs(5))))
        .await
        .unwrap();
    t.publish("q", message("stale", Some(Duration::from_secs(2))))
        .await
        .unwrap();
    t.publish("q", message("kept", None)).await.unwrap();
    let options = kessai_transport::ConsumeOptions {
        prefetch: 10,
        poll_wait: Duration::from_millis(10),
    };
    let mut c = t.consume("q", options).await.unwrap();
    let first = c.next_batch(1).await.unwrap().pop().unwrap();
    assert_eq!(first.payload, b"requeued");
    tokio::time::advance(Duration::from_secs(3)).await;
    // `stale` expired at the head: the pending count no longer includes it.
    assert_eq!(t.pending("q").await.unwrap(), Some(2));
    assert_eq!(t.expired_count("q"), 1);
    first.requeue().await.unwrap();
    tokio::time::advance(Duration::from_secs(3)).await;
    // The requeued copy (back at the tail) kept its 5 s expiry, which has passed too:
    // it is discarded when it reaches the head.
    let got = c.next_batch(10).await.unwrap();
    assert_eq!(payloads(&got), BTreeSet::from(["kept".to_owned()]));
    assert_eq!(t.expired_count("q"), 2);
    assert_eq!(t.ready_len("q-dlq"), 0);
}
