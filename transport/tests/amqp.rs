//! RabbitMQ-specific behaviour beyond the shared contract (`contract.rs`): publisher
//! confirms really decide `publish`'s answer, messages are persistent on durable
//! queues, `basic_qos` bounds unsettled deliveries, and refusals map to the right
//! errors. Skips without RabbitMQ unless `KESSAI_REQUIRE_SERVICES=1`.

#![cfg(feature = "amqp")]

mod common;

use common::{Kind, amqp, amqp_config, amqp_queue, delete_queues, options, prefetch_of_three, queue_name, raw_channel};
use kessai_testkit::receive;
use kessai_transport::{AmqpConfig, AmqpTransport, Error, OutgoingMessage, Transport};
use lapin::options::{BasicGetOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use std::time::Duration;

/// Publish goes through a confirm-mode channel: a message is persistent
/// (delivery_mode 2) on a durable queue once `publish` returned Ok.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_publish_is_persistent_on_a_durable_queue() {
    let Some((transport, q, cleanup)) = amqp_queue(amqp_config()).await else {
        return;
    };
    let mut message = OutgoingMessage::new(b"durable".to_vec());
    message.headers.insert("traceparent".into(), "00-1-2-01".into());
    transport.publish(&q, message).await.unwrap();

    let (connection, channel) = raw_channel().await;
    let got = channel
        .basic_get(q.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("the confirmed message is in the queue");
    assert_eq!(got.delivery.data, b"durable");
    assert_eq!(*got.delivery.properties.delivery_mode(), Some(2));
    // Re-declaring as non-durable is refused (406): the queue is durable.
    let redeclare = channel
        .queue_declare(q.as_str().into(), QueueDeclareOptions::default(), FieldTable::default())
        .await;
    assert!(redeclare.is_err(), "queue should be durable");
    let _ = connection.close(200, "bye".into()).await;
    cleanup.done().await;
}

/// A broker Nack (here: a full queue with `reject-publish` overflow) is an error,
/// retryable, never Ok — for `publish` and `publish_batch`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_nack_is_not_accepted() {
    let Some((_lock, transport)) = amqp(amqp_config()).await else {
        return;
    };
    let q = queue_name();
    let (connection, channel) = raw_channel().await;
    let mut arguments = FieldTable::default();
    arguments.insert("x-max-length".into(), AMQPValue::LongInt(0));
    arguments.insert(
        "x-overflow".into(),
        AMQPValue::LongString(LongString::from("reject-publish")),
    );
    channel
        .queue_declare(q.as_str().into(), QueueDeclareOptions::durable(), arguments)
        .await
        .unwrap();
    let refused = transport.publish(&q, OutgoingMessage::new(b"x".to_vec())).await;
    assert!(matches!(refused, Err(Error::NotAccepted(_))), "{refused:?}");
    assert!(refused.unwrap_err().is_retryable());
    let batch = (0..5).map(|i| OutgoingMessage::new(vec![i])).collect();
    let refused = transport.publish_batch(&q, batch).await;
    assert!(matches!(refused, Err(Error::NotAccepted(_))), "{refused:?}");
    // The channel survives a nack: the next publish elsewhere works.
    let ok = queue_name();
    transport.declare(&ok).await.unwrap();
    transport
        .publish(&ok, OutgoingMessage::new(b"y".to_vec()))
        .await
        .unwrap();
    let _ = connection.close(200, "bye".into()).await;
    delete_queues(Kind::Amqp, &[q, ok]).await;
}

/// Publishing to a queue nobody declared is reported (mandatory + return), not lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_to_an_undeclared_queue_is_not_accepted() {
    let Some((_lock, transport)) = amqp(amqp_config()).await else {
        return;
    };
    let refused = transport
        .publish(&queue_name(), OutgoingMessage::new(b"lost?".to_vec()))
        .await;
    assert!(matches!(refused, Err(Error::NotAccepted(_))), "{refused:?}");
}

/// Consuming a queue that does not exist is a permanent error, reported at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consuming_an_undeclared_queue_is_a_config_error() {
    let Some((_lock, transport)) = amqp(amqp_config()).await else {
        return;
    };
    let refused = transport.consume(&queue_name(), options(8)).await;
    assert!(matches!(refused, Err(Error::Config(_))), "{:?}", refused.err());
}

/// `basic_qos`: a consumer never holds more unsettled deliveries than its prefetch;
/// settling makes room for more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_bounds_unsettled_deliveries() {
    let Some((transport, q, cleanup)) = amqp_queue(amqp_config()).await else {
        return;
    };
    let (consumer, more) = prefetch_of_three(&transport, &q, Duration::from_secs(2)).await;
    drop(more); // unsettled: requeued
    drop(consumer);
    cleanup.done().await;
}

/// The configured cap wins over a consumer asking for more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_prefetch_caps_the_consumers() {
    let config = AmqpConfig {
        prefetch: 2,
        ..amqp_config()
    };
    let Some((transport, q, cleanup)) = amqp_queue(config).await else {
        return;
    };
    let batch = (0..5u8).map(|i| OutgoingMessage::new(vec![i])).collect();
    transport.publish_batch(&q, batch).await.unwrap();
    let mut consumer = transport.consume(&q, options(100)).await.unwrap();
    let held = receive(&mut consumer, 5, Duration::from_secs(2)).await;
    assert_eq!(held.len(), 2);
    drop(held);
    drop(consumer);
    cleanup.done().await;
}

/// A bad URL or refused login fails at connect as a config error; a port with
/// nothing listening is `Unavailable` (retryable).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_errors_say_whether_to_retry() {
    let bad = AmqpTransport::connect(AmqpConfig::new("not a url")).await;
    assert!(matches!(bad, Err(Error::Config(_))), "{bad:?}");
    let down = AmqpTransport::connect(AmqpConfig::new("amqp://guest:guest@127.0.0.1:1/%2f")).await;
    assert!(matches!(down, Err(Error::Unavailable(_))), "{down:?}");
}

/// `close` ends the transport: publishing and consuming then say `Closed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_transport_says_closed() {
    let Some((transport, q, cleanup)) = amqp_queue(amqp_config()).await else {
        return;
    };
    let mut consumer = transport.consume(&q, options(8)).await.unwrap();
    transport.close().await;
    let published = transport.publish(&q, OutgoingMessage::new(b"z".to_vec())).await;
    assert!(matches!(published, Err(Error::Closed)), "{published:?}");
    let next = consumer.next_batch(1).await;
    assert!(matches!(next, Err(Error::Closed)), "{next:?}");
    cleanup.done().await;
}
