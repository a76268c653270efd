//! The in-process transport: queues in memory, shared by every service of one process.
//!
//! It keeps the contract of the real brokers so that code tested here behaves the same
//! over RabbitMQ and SQS: deliveries must be settled, an unsettled delivery that is
//! dropped (its task died) goes back to the front of its queue marked redelivered, and
//! dead-lettering moves the message to `<queue>-dlq` with its reason. It is not
//! durable across the process — the coordinator's resend timers recover from that.
//!
//! Message expiry ([`OutgoingMessage::expires_in`]) follows RabbitMQ: the clock starts
//! when the message is queued, a requeued or redelivered message keeps its original
//! expiry, and an expired message is discarded when it reaches the head of its queue
//! (also when counted, as RabbitMQ's own expiry timer drops an expired head without a
//! consumer) — never delivered, never dead-lettered. Once delivered, a message does
//! not expire. Expiry runs on tokio's clock, so paused-time tests see it move with
//! their time.

use crate::{ConsumeOptions, Consumer, Delivery, Error, Headers, OutgoingMessage, Settle, Transport};
use crate::{DEAD_LETTER_REASON, DEAD_LETTER_SOURCE, dead_letter_queue};
use async_trait::async_trait;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;
use tokio::time::Instant;

#[derive(Clone, Debug)]
struct Message {
    payload: Vec<u8>,
    headers: Headers,
    redelivered: bool,
    /// When the message stops being worth delivering (set at publish).
    expires_at: Option<Instant>,
}

impl Message {
    fn expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }
}

#[derive(Default)]
struct Queue {
    ready: Mutex<VecDeque<Message>>,
    unsettled: Mutex<usize>,
    notify: Notify,
    /// Messages discarded because they expired before being delivered.
    expired: AtomicU64,
}

impl Queue {
    /// Drops expired messages from the head of `ready`, as RabbitMQ does.
    fn drop_expired_head(&self, ready: &mut VecDeque<Message>, now: Instant) {
        let mut dropped = 0;
        while ready.front().is_some_and(|m| m.expired(now)) {
            ready.pop_front();
            dropped += 1;
        }
        if dropped > 0 {
            self.expired.fetch_add(dropped, Ordering::Relaxed);
        }
    }

    fn push_back(&self, m: Message) {
        self.ready.lock().expect("queue lock").push_back(m);
        self.notify.notify_one();
    }
    fn push_front(&self, m: Message) {
        self.ready.lock().expect("queue lock").push_front(m);
        self.notify.notify_one();
    }
}

#[derive(Default)]
struct Broker {
    queues: Mutex<HashMap<String, Arc<Queue>>>,
}

impl Broker {
    fn queue(&self, name: &str) -> Arc<Queue> {
        self.queues
            .lock()
            .expect("broker lock")
            .entry(name.to_owned())
            .or_default()
            .clone()
    }
}

/// Cheap to clone; clones share the same queues.
#[derive(Clone, Default)]
pub struct MemoryTransport {
    broker: Arc<Broker>,
}

impl MemoryTransport {
    pub fn new() -> Self {
        Self::default()
    }

    /// Messages waiting in `queue` (not counting unsettled deliveries). Expired
    /// messages at the head are discarded first.
    pub fn ready_len(&self, queue: &str) -> usize {
        let q = self.broker.queue(queue);
        let mut ready = q.ready.lock().expect("queue lock");
        q.drop_expired_head(&mut ready, Instant::now());
        ready.len()
    }

    /// Messages of `queue` discarded so far because they expired undelivered.
    pub fn expired_count(&self, queue: &str) -> u64 {
        self.broker.queue(queue).expired.load(Ordering::Relaxed)
    }

    /// Deliveries of `queue` handed out and not yet settled.
    pub fn unsettled_len(&self, queue: &str) -> usize {
        *self.broker.queue(queue).unsettled.lock().expect("queue lock")
    }
}

#[async_trait]
impl Transport for MemoryTransport {
    fn system(&self) -> &'static str {
        "memory"
    }

    async fn declare(&self, queue: &str) -> Result<(), Error> {
        self.broker.queue(queue);
        self.broker.queue(&dead_letter_queue(queue));
        Ok(())
    }

    async fn publish(&self, queue: &str, message: OutgoingMessage) -> Result<(), Error> {
        self.broker.queue(queue).push_back(Message {
            payload: message.payload,
            headers: message.headers,
            redelivered: false,
            expires_at: message.expires_in.map(|ttl| Instant::now() + ttl),
        });
        Ok(())
    }

    async fn pending(&self, queue: &str) -> Result<Option<u64>, Error> {
        Ok(Some((self.ready_len(queue) + self.unsettled_len(queue)) as u64))
    }

    async fn delete(&self, queue: &str) -> Result<(), Error> {
        let mut queues = self.broker.queues.lock().expect("broker lock");
        queues.remove(queue);
        queues.remove(&dead_letter_queue(queue));
        Ok(())
    }

    async fn consume(&self, queue: &str, options: ConsumeOptions) -> Result<Box<dyn Consumer>, Error> {
        Ok(Box::new(MemoryConsumer {
            broker: self.broker.clone(),
            name: queue.to_owned(),
            queue: self.broker.queue(queue),
            options,
        }))
    }
}

struct MemoryConsumer {
    broker: Arc<Broker>,
    name: String,
    queue: Arc<Queue>,
    options: ConsumeOptions,
}

impl MemoryConsumer {
    fn take(&self, max: usize) -> Vec<Delivery> {
        let now = Instant::now();
        let mut ready = self.queue.ready.lock().expect("queue lock");
        let mut taken: Vec<Message> = Vec::with_capacity(max.min(ready.len()));
        // Each message reaches the head in turn: an expired one is discarded there.
        while taken.len() < max {
            self.queue.drop_expired_head(&mut ready, now);
            match ready.pop_front() {
                Some(m) => taken.push(m),
                None => break,
            }
        }
        drop(ready);
        if !taken.is_empty() {
            *self.queue.unsettled.lock().expect("queue lock") += taken.len();
            // Wake another consumer of the same queue if messages remain.
            self.queue.notify.notify_one();
        }
        taken
            .into_iter()
            .map(|m| {
                let settle = MemorySettle {
                    broker: self.broker.clone(),
                    queue_name: self.name.clone(),
                    queue: self.queue.clone(),
                    message: Some(m.clone()),
                };
                Delivery::new(m.payload, m.headers, m.redelivered, Box::new(settle))
            })
            .collect()
    }
}

#[async_trait]
impl Consumer for MemoryConsumer {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Delivery>, Error> {
        let max = max.clamp(1, usize::from(self.options.prefetch.max(1)));
        let deadline = tokio::time::Instant::now() + self.options.poll_wait;
        loop {
            let notified = self.queue.notify.notified();
            let batch = self.take(max);
            if !batch.is_empty() {
                return Ok(batch);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }
}

/// Holds a copy of the message until it is settled; dropping it unsettled requeues.
struct MemorySettle {
    broker: Arc<Broker>,
    queue_name: String,
    queue: Arc<Queue>,
    message: Option<Message>,
}

impl MemorySettle {
    fn settle(&mut self) -> Option<Message> {
        let m = self.message.take();
        if m.is_some() {
            let mut unsettled = self.queue.unsettled.lock().expect("queue lock");
            *unsettled = unsettled.saturating_sub(1);
        }
        m
    }
}

#[async_trait]
impl Settle for MemorySettle {
    async fn ack(mut self: Box<Self>) -> Result<(), Error> {
        self.settle();
        Ok(())
    }

    async fn requeue(mut self: Box<Self>) -> Result<(), Error> {
        if let Some(mut m) = self.settle() {
            m.redelivered = true;
            self.queue.push_back(m);
        }
        Ok(())
    }

    async fn dead_letter(mut self: Box<Self>, reason: &str) -> Result<(), Error> {
        if let Some(mut m) = self.settle() {
            m.headers.insert(DEAD_LETTER_REASON.into(), reason.to_owned());
            m.headers.insert(DEAD_LETTER_SOURCE.into(), self.queue_name.clone());
            m.redelivered = false;
            // A dead letter is kept for inspection, never expired away.
            m.expires_at = None;
            self.broker.queue(&dead_letter_queue(&self.queue_name)).push_back(m);
        }
        Ok(())
    }
}

impl Drop for MemorySettle {
    fn drop(&mut self) {
        if let Some(mut m) = self.settle() {
            m.redelivered = true;
            self.queue.push_front(m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn opts() -> ConsumeOptions {
        ConsumeOptions {
            prefetch: 10,
            poll_wait: Duration::from_millis(50),
        }
    }

    #[tokio::test]
    async fn dropped_delivery_is_redelivered_and_ack_removes() {
        let t = MemoryTransport::new();
        t.declare("q").await.unwrap();
        t.publish("q", OutgoingMessage::new(b"a".to_vec())).await.unwrap();
        let mut c = t.consume("q", opts()).await.unwrap();
        let batch = c.next_batch(10).await.unwrap();
        assert_eq!(batch.len(), 1);
        assert!(!batch[0].redelivered);
        assert_eq!(t.unsettled_len("q"), 1);
        drop(batch);
        drop(c);
        let mut c2 = t.consume("q", opts()).await.unwrap();
        let batch = c2.next_batch(10).await.unwrap();
        assert_eq!(batch.len(), 1);
        assert!(batch[0].redelivered);
        for d in batch {
            d.ack().await.unwrap();
        }
        assert_eq!(t.unsettled_len("q"), 0);
        assert!(c2.next_batch(10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn dead_letter_carries_reason() {
        let t = MemoryTransport::new();
        t.declare("q").await.unwrap();
        t.publish("q", OutgoingMessage::new(b"junk".to_vec())).await.unwrap();
        let mut c = t.consume("q", opts()).await.unwrap();
        let d = c.next_batch(1).await.unwrap().pop().unwrap();
        d.dead_letter("not json").await.unwrap();
        let mut dlq = t.consume("q-dlq", opts()).await.unwrap();
        let d = dlq.next_batch(1).await.unwrap().pop().unwrap();
        assert_eq!(d.payload, b"junk");
        assert_eq!(d.headers[DEAD_LETTER_REASON], "not json");
        assert_eq!(d.headers[DEAD_LETTER_SOURCE], "q");
    }
}
