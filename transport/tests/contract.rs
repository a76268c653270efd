//! The transport contract, written once and run against every transport: the
//! in-process one, RabbitMQ and SQS (`memory::*`, `amqp::*`, `sqs::*` test names).
//!
//! Each property is a generic `async fn(Ctx)`; `per_transport!` instantiates it per
//! transport built in (the broker features). A real server that is not reachable makes its tests skip with a note,
//! or fail when `KESSAI_REQUIRE_SERVICES=1`. Every test uses fresh random queue names
//! and deletes them afterwards, so runs do not interfere.
//!
//! **Ordering is not assumed anywhere**: SQS standard queues and redeliveries reorder
//! messages, and kessai's protocol does not depend on order, so batches are compared
//! as sets. Delivery is at-least-once, so where a duplicate would be legal the tests
//! say so.

mod common;

use common::{Ctx, Kind, message, per_transport};
use kessai_messages::Envelope;
use kessai_testkit::{expect_nothing, receive, receive_one};
use kessai_transport::{DEAD_LETTER_REASON, DEAD_LETTER_SOURCE, Headers, OutgoingMessage, dead_letter_queue};
use std::collections::BTreeSet;
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(10);

/// A published message is delivered once, not marked redelivered, with its payload.
async fn delivers_a_published_message(ctx: Ctx) {
    let (_, mut consumer) = ctx.queue_with(message("hello")).await;
    let d = receive_one(&mut consumer, WITHIN).await;
    assert_eq!(d.payload, b"hello");
    assert!(!d.redelivered);
    d.ack().await.expect("ack");
}

/// A consumer task that dies (aborted) holding an unsettled delivery: the message
/// comes back to a new consumer, marked redelivered.
async fn redelivers_after_consumer_dies(ctx: Ctx) {
    let q = ctx.queue().await;
    ctx.transport.publish(&q, message("survivor")).await.expect("publish");
    let (got, received) = tokio::sync::oneshot::channel();
    let transport = ctx.transport.clone();
    let queue = q.clone();
    let doomed = tokio::spawn(async move {
        let mut consumer = transport.consume(&queue, common::options(8)).await.expect("consume");
        let d = receive_one(&mut consumer, WITHIN).await;
        let _ = got.send(d.payload.clone());
        // Hold the delivery (and the consumer) until aborted.
        let _held = (d, consumer);
        std::future::pending::<()>().await;
    });
    assert_eq!(received.await.expect("first consumer received"), b"survivor");
    doomed.abort();
    let _ = doomed.await;

    let mut consumer = ctx.consume(&q).await;
    let d = receive_one(&mut consumer, WITHIN).await;
    assert_eq!(d.payload, b"survivor");
    assert!(
        d.redelivered,
        "a message back from a dead consumer is marked redelivered"
    );
    d.ack().await.expect("ack");
    expect_nothing(&mut consumer, ctx.quiet()).await;
}

/// Dropping one delivery unsettled (its handler panicked) while the consumer lives
/// on: the message comes back, marked redelivered.
async fn redelivers_a_dropped_delivery(ctx: Ctx) {
    let (_, mut consumer) = ctx.queue_with(message("dropped")).await;
    drop(receive_one(&mut consumer, WITHIN).await);
    let d = receive_one(&mut consumer, WITHIN).await;
    assert_eq!(d.payload, b"dropped");
    assert!(d.redelivered);
    d.ack().await.expect("ack");
}

/// An acked message is gone: neither this consumer nor a new one sees it again.
async fn ack_removes(ctx: Ctx) {
    let (q, mut consumer) = ctx.queue_with(message("once")).await;
    receive_one(&mut consumer, WITHIN).await.ack().await.expect("ack");
    drop(consumer);
    let mut consumer = ctx.consume(&q).await;
    expect_nothing(&mut consumer, ctx.quiet()).await;
}

/// A requeued message is delivered again, marked redelivered.
async fn requeue_redelivers(ctx: Ctx) {
    let (_, mut consumer) = ctx.queue_with(message("again")).await;
    let first = receive_one(&mut consumer, WITHIN).await;
    assert!(!first.redelivered);
    first.requeue().await.expect("requeue");
    let second = receive_one(&mut consumer, WITHIN).await;
    assert_eq!(second.payload, b"again");
    assert!(second.redelivered);
    second.ack().await.expect("ack");
}

/// Headers (trace context among them) arrive exactly as sent, empty values included.
async fn headers_round_trip(ctx: Ctx) {
    let mut headers = Headers::new();
    headers.insert(
        "traceparent".into(),
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
    );
    headers.insert("tracestate".into(), String::new());
    headers.insert("x-kessai-message-id".into(), uuid::Uuid::new_v4().to_string());
    headers.insert("note".into(), "ключ = значение, 決済".into());
    let sent = OutgoingMessage {
        payload: b"{}".to_vec(),
        headers: headers.clone(),
        expires_in: None,
    };
    let (_, mut consumer) = ctx.queue_with(sent).await;
    let d = receive_one(&mut consumer, WITHIN).await;
    assert_eq!(d.headers, headers);
    d.ack().await.expect("ack");
}

/// `dead_letter(reason)` moves the message to `<q>-dlq` with the reason and source
/// headers (and its own headers kept), and removes it from `q`.
async fn dead_letter_carries_reason_and_source(ctx: Ctx) {
    let mut sent = message("cannot pay");
    sent.headers.insert("traceparent".into(), "00-aa-bb-01".into());
    let (q, mut consumer) = ctx.queue_with(sent).await;
    let d = receive_one(&mut consumer, WITHIN).await;
    d.dead_letter("amount must be positive").await.expect("dead_letter");

    let mut dlq = ctx.consume(&dead_letter_queue(&q)).await;
    let dead = receive_one(&mut dlq, WITHIN).await;
    assert_eq!(dead.payload, b"cannot pay");
    assert_eq!(dead.headers[DEAD_LETTER_REASON], "amount must be positive");
    assert_eq!(dead.headers[DEAD_LETTER_SOURCE], q);
    assert_eq!(dead.headers["traceparent"], "00-aa-bb-01");
    dead.ack().await.expect("ack");
    expect_nothing(&mut consumer, ctx.quiet()).await;
}

/// All 25 messages of one `publish_batch` arrive (in any order).
async fn publish_batch_of_25_all_arrive(ctx: Ctx) {
    let q = ctx.queue().await;
    let sent: BTreeSet<String> = (0..25).map(|i| format!("m-{i:02}")).collect();
    ctx.transport
        .publish_batch(&q, sent.iter().map(|p| message(p)).collect())
        .await
        .expect("publish_batch");
    let mut consumer = ctx.consume(&q).await;
    let mut got = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while got.len() < sent.len() && tokio::time::Instant::now() < deadline {
        for d in receive(&mut consumer, 25, Duration::from_secs(1)).await {
            got.insert(String::from_utf8(d.payload.clone()).unwrap());
            d.ack().await.expect("ack");
        }
    }
    assert_eq!(got, sent);
}

/// Undecodable input (binary, empty, not JSON) is dead-lettered with the decoder's
/// reason, byte for byte, never dropped.
async fn poison_payload_is_dead_lettered(ctx: Ctx) {
    let q = ctx.queue().await;
    let poison: Vec<Vec<u8>> = vec![vec![0xff, 0xfe, 0x00, b'{'], Vec::new(), b"not json".to_vec()];
    for p in &poison {
        ctx.transport
            .publish(&q, OutgoingMessage::new(p.clone()))
            .await
            .expect("publish");
    }
    let mut consumer = ctx.consume(&q).await;
    for d in receive(&mut consumer, poison.len(), WITHIN).await {
        let reason = Envelope::decode(&d.payload)
            .expect_err("poison does not decode")
            .to_string();
        d.dead_letter(&reason).await.expect("dead_letter");
    }
    let mut dlq = ctx.consume(&dead_letter_queue(&q)).await;
    let dead = receive(&mut dlq, poison.len(), WITHIN).await;
    let mut payloads = Vec::new();
    for d in dead {
        let expected = Envelope::decode(&d.payload).unwrap_err().to_string();
        assert_eq!(d.headers[DEAD_LETTER_REASON], expected);
        assert_eq!(d.headers[DEAD_LETTER_SOURCE], q);
        payloads.push(d.payload.clone());
        d.ack().await.expect("ack");
    }
    payloads.sort();
    let mut expected = poison.clone();
    expected.sort();
    assert_eq!(payloads, expected);
}

async fn eventually_pending(ctx: &Ctx, queue: &str, expected: u64) {
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let now = ctx.transport.pending(queue).await.expect("pending");
        if now == Some(expected) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "pending({queue}) is {now:?}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `pending` counts waiting and delivered-but-unsettled messages (what a quiescence
/// check needs), and reaches zero once everything is settled.
async fn pending_counts_waiting_and_unsettled(ctx: Ctx) {
    let q = ctx.queue().await;
    eventually_pending(&ctx, &q, 0).await;
    let batch = ["a", "b", "c"].iter().map(|p| message(p)).collect();
    ctx.transport.publish_batch(&q, batch).await.expect("publish");
    eventually_pending(&ctx, &q, 3).await;
    let mut consumer = ctx.consume(&q).await;
    let first = receive_one(&mut consumer, WITHIN).await;
    eventually_pending(&ctx, &q, 3).await;
    first.ack().await.expect("ack");
    eventually_pending(&ctx, &q, 2).await;
    for d in receive(&mut consumer, 2, WITHIN).await {
        d.ack().await.expect("ack");
    }
    eventually_pending(&ctx, &q, 0).await;
}

/// `delete` removes a queue and its dead-letter queue with their messages, and
/// deleting what is already gone is not an error.
async fn delete_removes_the_queue_and_its_dead_letters(ctx: Ctx) {
    let (q, mut consumer) = ctx.queue_with(message("doomed")).await;
    receive_one(&mut consumer, WITHIN)
        .await
        .dead_letter("to fill the dlq")
        .await
        .expect("dead-letter");
    drop(consumer);
    ctx.transport.publish(&q, message("doomed too")).await.expect("publish");
    eventually_pending(&ctx, &q, 1).await;
    ctx.transport.delete(&q).await.expect("delete");
    ctx.transport.delete(&q).await.expect("deleting again is a no-op");
    for gone in [q.clone(), dead_letter_queue(&q)] {
        // Gone: the broker no longer knows it (the in-process one forgets it and would
        // make a fresh, empty one on use).
        match ctx.transport.pending(&gone).await {
            Err(_) => {}
            Ok(n) => {
                assert_eq!(ctx.kind, Kind::Memory, "{gone} still exists ({n:?} pending)");
                assert_eq!(n, Some(0), "{gone} kept its messages");
            }
        }
    }
}

per_transport!(
    delivers_a_published_message,
    redelivers_after_consumer_dies,
    redelivers_a_dropped_delivery,
    ack_removes,
    requeue_redelivers,
    headers_round_trip,
    dead_letter_carries_reason_and_source,
    publish_batch_of_25_all_arrive,
    poison_payload_is_dead_lettered,
    pending_counts_waiting_and_unsettled,
    delete_removes_the_queue_and_its_dead_letters,
);
