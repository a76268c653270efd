//! Collecting deliveries in tests, on any transport: up to `n` within a time, exactly
//! one, or none at all for a while.

use kessai_transport::{Consumer, Delivery};
use std::time::Duration;
use tokio::time::Instant;

/// Collects up to `n` deliveries, giving up after `within`. A retryable error (the
/// broker is away for now) is noted and the consumer asked again; any other fails.
pub async fn receive(consumer: &mut Box<dyn Consumer>, n: usize, within: Duration) -> Vec<Delivery> {
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    while out.len() < n && Instant::now() < deadline {
        match consumer.next_batch(n - out.len()).await {
            Ok(batch) => out.extend(batch),
            Err(e) if e.is_retryable() => eprintln!("next_batch: {e} (retrying)"),
            Err(e) => panic!("next_batch failed permanently: {e}"),
        }
    }
    out
}

/// Exactly `n` deliveries within `within`, or a panic saying how many came from `what`.
pub async fn receive_exactly(
    consumer: &mut Box<dyn Consumer>,
    n: usize,
    within: Duration,
    what: &str,
) -> Vec<Delivery> {
    let got = receive(consumer, n, within).await;
    assert!(got.len() == n, "only {} of {n} messages arrived on {what}", got.len());
    got
}

/// Exactly one delivery within `within`, or a panic naming what came instead.
pub async fn receive_one(consumer: &mut Box<dyn Consumer>, within: Duration) -> Delivery {
    let mut got = receive(consumer, 1, within).await;
    assert_eq!(got.len(), 1, "expected one delivery within {within:?}");
    got.pop().unwrap()
}

/// Watches the queue for `within` and fails if anything arrives.
pub async fn expect_nothing(consumer: &mut Box<dyn Consumer>, within: Duration) {
    let got = receive(consumer, 1, within).await;
    let payloads: Vec<String> = got
        .iter()
        .map(|d| String::from_utf8_lossy(&d.payload).into_owned())
        .collect();
    assert!(got.is_empty(), "expected nothing, got {payloads:?}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use kessai_transport::{ConsumeOptions, MemoryTransport, OutgoingMessage, Transport};

    #[tokio::test]
    async fn receives_what_is_there_and_no_more() {
        let t = MemoryTransport::new();
        t.declare("q").await.unwrap();
        let options = ConsumeOptions {
            prefetch: 8,
            poll_wait: Duration::from_millis(10),
        };
        let mut consumer = t.consume("q", options).await.unwrap();
        expect_nothing(&mut consumer, Duration::from_millis(50)).await;
        for p in ["a", "b", "c"] {
            t.publish("q", OutgoingMessage::new(p.into())).await.unwrap();
        }
        let two = receive_exactly(&mut consumer, 2, Duration::from_secs(1), "q").await;
        assert_eq!(two.len(), 2);
        let last = receive_one(&mut consumer, Duration::from_secs(1)).await;
        assert_eq!(last.payload, b"c");
        assert!(receive(&mut consumer, 5, Duration::from_millis(50)).await.is_empty());
    }
}
