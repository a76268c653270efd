//! Shared by the transport test binaries: builds each transport against its server
//! (skipping or failing by `kessai_transport::testing::require_service`), hands out
//! random queue names, deletes them afterwards, and collects deliveries.
#![allow(dead_code)]

use futures::FutureExt;
use kessai_transport::testing::{self, BrokerLock};
use kessai_transport::{
    AmqpConfig, AmqpTransport, ConsumeOptions, Consumer, Delivery, MemoryTransport, SqsConfig, SqsTransport, Transport,
};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Memory,
    Amqp,
    Sqs,
}

/// SQS visibility timeout in these tests: short, so "ack really deleted" can be
/// observed by waiting past it; the heartbeat keeps held deliveries hidden.
pub const SQS_VISIBILITY: Duration = Duration::from_secs(4);

/// What a property test gets: a transport and the queues it declared.
#[derive(Clone)]
pub struct Ctx {
    pub kind: Kind,
    pub transport: Arc<dyn Transport>,
    declared: Arc<Mutex<Vec<String>>>,
}

impl Ctx {
    /// Declares a fresh randomly named queue (and its `-dlq`).
    pub async fn queue(&self) -> String {
        let name = queue_name();
        self.transport.declare(&name).await.expect("declare");
        self.declared.lock().unwrap().push(name.clone());
        name
    }

    /// How long to watch a queue to be sure nothing (more) arrives. On SQS an
    /// undeleted message reappears only after its visibility timeout.
    pub fn quiet(&self) -> Duration {
        match self.kind {
            Kind::Sqs => SQS_VISIBILITY + Duration::from_secs(1),
            _ => Duration::from_secs(1),
        }
    }

    pub async fn consume(&self, queue: &str) -> Box<dyn Consumer> {
        self.transport.consume(queue, options(64)).await.expect("consume")
    }
}

pub fn queue_name() -> String {
    format!("kessai-test-{}", uuid::Uuid::new_v4().simple())
}

pub fn options(prefetch: u16) -> ConsumeOptions {
    ConsumeOptions {
        prefetch,
        poll_wait: Duration::from_millis(500),
    }
}

pub fn amqp_config() -> AmqpConfig {
    AmqpConfig {
        connection_name: "kessai-transport-tests".into(),
        ..AmqpConfig::new(testing::amqp_url())
    }
}

pub fn sqs_config() -> SqsConfig {
    SqsConfig {
        endpoint_url: Some(testing::sqs_endpoint()),
        region: "us-east-1".into(),
        access_key_id: Some("test".into()),
        secret_access_key: Some("test".into()),
        visibility_timeout: SQS_VISIBILITY,
        wait_time: Duration::from_secs(20),
        max_receive_count: 10,
    }
}

/// `Some(lock)` if RabbitMQ is there (shared broker lock taken), `None` to skip.
pub fn rabbit_available() -> Option<BrokerLock> {
    let url = testing::amqp_url();
    testing::require_service("RabbitMQ", &testing::host_port(&url, 5672)).then(|| testing::broker_lock("rabbit", false))
}

pub fn sqs_available() -> bool {
    testing::require_service("SQS emulator", &testing::host_port(&testing::sqs_endpoint(), 80))
}

/// Runs `property` against `kind` (or skips it), then deletes the queues it declared,
/// also when it panicked.
pub async fn run<F, Fut>(kind: Kind, property: F)
where
    F: FnOnce(Ctx) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut _lock = None;
    let transport: Arc<dyn Transport> = match kind {
        Kind::Memory => Arc::new(MemoryTransport::new()),
        Kind::Amqp => {
            let Some(lock) = rabbit_available() else {
                return;
            };
            _lock = Some(lock);
            Arc::new(
                AmqpTransport::connect(amqp_config())
                    .await
                    .expect("connect to RabbitMQ"),
            )
        }
        Kind::Sqs => {
            if !sqs_available() {
                return;
            }
            Arc::new(SqsTransport::connect(sqs_config()).await.expect("SQS client"))
        }
    };
    let ctx = Ctx {
        kind,
        transport,
        declared: Arc::default(),
    };
    let outcome = AssertUnwindSafe(property(ctx.clone())).catch_unwind().await;
    let declared = std::mem::take(&mut *ctx.declared.lock().unwrap());
    delete_queues(kind, &declared).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Best-effort removal of test queues and their dead-letter queues.
pub async fn delete_queues(kind: Kind, queues: &[String]) {
    let transport: Arc<dyn Transport> = match kind {
        Kind::Memory => return,
        Kind::Amqp => match AmqpTransport::connect(amqp_config()).await {
            Ok(t) => Arc::new(t),
            Err(_) => return,
        },
        Kind::Sqs => match SqsTransport::connect(sqs_config()).await {
            Ok(t) => Arc::new(t),
            Err(_) => return,
        },
    };
    for q in queues {
        if let Err(e) = transport.delete(q).await {
            eprintln!("deleting {q}: {e}");
        }
    }
}

/// Collects up to `n` deliveries, giving up after `within`.
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
