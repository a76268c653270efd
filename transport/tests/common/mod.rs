//! Shared by the transport test binaries: builds each transport built in against its
//! server (skipping or failing by `kessai_testkit::require_service`), hands out random
//! queue names, deletes them afterwards, and runs a property on every transport
//! ([`per_transport!`]). Collecting deliveries is `kessai_testkit::queues`.
#![allow(dead_code)]

use futures::FutureExt;
use kessai_testkit::BrokerLock;
#[cfg(any(feature = "amqp", feature = "sqs"))]
use kessai_transport::Delivery;
#[cfg(feature = "amqp")]
use kessai_transport::{AmqpConfig, AmqpTransport};
use kessai_transport::{ConsumeOptions, Consumer, MemoryTransport, OutgoingMessage, Transport};
#[cfg(feature = "sqs")]
use kessai_transport::{SqsConfig, SqsTransport};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Memory,
    #[cfg(feature = "amqp")]
    Amqp,
    #[cfg(feature = "sqs")]
    Sqs,
}

impl Kind {
    /// SQS: no per-message expiry, and an undeleted message reappears only after its
    /// visibility timeout.
    #[cfg(feature = "sqs")]
    pub fn is_sqs(self) -> bool {
        self == Kind::Sqs
    }

    #[cfg(not(feature = "sqs"))]
    pub fn is_sqs(self) -> bool {
        false
    }
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

    /// A fresh queue holding `sent`, and a consumer of it.
    pub async fn queue_with(&self, sent: OutgoingMessage) -> (String, Box<dyn Consumer>) {
        let q = self.queue().await;
        self.transport.publish(&q, sent).await.expect("publish");
        let consumer = self.consume(&q).await;
        (q, consumer)
    }

    /// How long to watch a queue to be sure nothing (more) arrives. On SQS an
    /// undeleted message reappears only after its visibility timeout.
    pub fn quiet(&self) -> Duration {
        if self.kind.is_sqs() {
            SQS_VISIBILITY + Duration::from_secs(1)
        } else {
            Duration::from_secs(1)
        }
    }

    pub async fn consume(&self, queue: &str) -> Box<dyn Consumer> {
        self.transport.consume(queue, options(64)).await.expect("consume")
    }
}

pub fn queue_name() -> String {
    kessai_testkit::unique_name("kessai-test-")
}

pub fn message(payload: &str) -> OutgoingMessage {
    OutgoingMessage::new(payload.as_bytes().to_vec())
}

pub fn options(prefetch: u16) -> ConsumeOptions {
    ConsumeOptions {
        prefetch,
        poll_wait: Duration::from_millis(500),
    }
}

#[cfg(feature = "amqp")]
pub fn amqp_config() -> AmqpConfig {
    AmqpConfig {
        connection_name: "kessai-transport-tests".into(),
        ..AmqpConfig::new(kessai_testkit::amqp_url())
    }
}

#[cfg(feature = "sqs")]
pub fn sqs_config() -> SqsConfig {
    SqsConfig {
        endpoint_url: Some(kessai_testkit::sqs_endpoint()),
        region: "us-east-1".into(),
        access_key_id: Some("test".into()),
        secret_access_key: Some("test".into()),
        visibility_timeout: SQS_VISIBILITY,
        wait_time: Duration::from_secs(20),
        max_receive_count: 10,
        ..SqsConfig::default()
    }
}

/// A plain lapin connection and channel to RabbitMQ, to look behind the transport.
#[cfg(feature = "amqp")]
pub async fn raw_channel() -> (lapin::Connection, lapin::Channel) {
    let connection = lapin::Connection::connect(&kessai_testkit::amqp_url(), lapin::ConnectionProperties::default())
        .await
        .expect("raw connection");
    let channel = connection.create_channel().await.expect("raw channel");
    (connection, channel)
}

/// `kind`'s transport with the default test configuration (and, for RabbitMQ, the
/// shared broker lock), or `None` to skip: its server is not reachable.
pub async fn connect(kind: Kind) -> Option<(Arc<dyn Transport>, Option<BrokerLock>)> {
    Some(match kind {
        Kind::Memory => (Arc::new(MemoryTransport::new()), None),
        #[cfg(feature = "amqp")]
        Kind::Amqp => {
            let (lock, transport) = amqp(amqp_config()).await?;
            (Arc::new(transport), Some(lock))
        }
        #[cfg(feature = "sqs")]
        Kind::Sqs => (Arc::new(sqs(sqs_config()).await?), None),
    })
}

/// RabbitMQ with `config`, and the shared broker lock; `None` to skip.
#[cfg(feature = "amqp")]
pub async fn amqp(config: AmqpConfig) -> Option<(BrokerLock, AmqpTransport)> {
    let lock = kessai_testkit::rabbitmq_available()?;
    let transport = AmqpTransport::connect(config).await.expect("connect to RabbitMQ");
    Some((lock, transport))
}

/// The SQS emulator with `config`; `None` to skip.
#[cfg(feature = "sqs")]
pub async fn sqs(config: SqsConfig) -> Option<SqsTransport> {
    if !kessai_testkit::require_sqs() {
        return None;
    }
    Some(SqsTransport::connect(config).await.expect("SQS client"))
}

/// The end of a broker test: deletes its queues, and holds the broker lock till then.
pub struct Cleanup {
    kind: Kind,
    queues: Vec<String>,
    _lock: Option<BrokerLock>,
}

impl Cleanup {
    pub async fn done(self) {
        delete_queues(self.kind, &self.queues).await;
    }
}

/// RabbitMQ with `config` and a fresh queue declared on it; `None` to skip.
#[cfg(feature = "amqp")]
pub async fn amqp_queue(config: AmqpConfig) -> Option<(AmqpTransport, String, Cleanup)> {
    let (lock, transport) = amqp(config).await?;
    let q = declared(&transport).await;
    let cleanup = Cleanup {
        kind: Kind::Amqp,
        queues: vec![q.clone()],
        _lock: Some(lock),
    };
    Some((transport, q, cleanup))
}

/// The SQS emulator with `config` and a fresh queue declared on it; `None` to skip.
#[cfg(feature = "sqs")]
pub async fn sqs_queue(config: SqsConfig) -> Option<(SqsTransport, String, Cleanup)> {
    let transport = sqs(config).await?;
    let q = declared(&transport).await;
    let cleanup = Cleanup {
        kind: Kind::Sqs,
        queues: vec![q.clone()],
        _lock: None,
    };
    Some((transport, q, cleanup))
}

async fn declared(transport: &dyn Transport) -> String {
    let q = queue_name();
    transport.declare(&q).await.expect("declare");
    q
}

/// Runs `property` against `kind` (or skips it), then deletes the queues it declared,
/// also when it panicked.
pub async fn run<F, Fut>(kind: Kind, property: F)
where
    F: FnOnce(Ctx) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some((transport, _lock)) = connect(kind).await else {
        return;
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
    let Some(transport) = reconnect(kind).await else {
        return;
    };
    for q in queues {
        if let Err(e) = transport.delete(q).await {
            eprintln!("deleting {q}: {e}");
        }
    }
}

/// A new connection to `kind`'s server if one can be had; `None` for the in-process
/// transport, whose queues go with it.
async fn reconnect(kind: Kind) -> Option<Arc<dyn Transport>> {
    match kind {
        Kind::Memory => None,
        #[cfg(feature = "amqp")]
        Kind::Amqp => {
            let transport = AmqpTransport::connect(amqp_config()).await.ok()?;
            Some(Arc::new(transport))
        }
        #[cfg(feature = "sqs")]
        Kind::Sqs => {
            let transport = SqsTransport::connect(sqs_config()).await.ok()?;
            Some(Arc::new(transport))
        }
    }
}

/// A broker's prefetch at work: of 10 messages on `q`, a consumer with prefetch 3 holds
/// 3 unsettled deliveries (`within` to receive them), and once it acked them 3 more, no
/// more. Returns the consumer and those three, unsettled.
#[cfg(any(feature = "amqp", feature = "sqs"))]
pub async fn prefetch_of_three(
    transport: &dyn Transport,
    q: &str,
    within: Duration,
) -> (Box<dyn Consumer>, Vec<Delivery>) {
    let batch = (0..10u8).map(|i| OutgoingMessage::new(vec![b'0' + i])).collect();
    transport.publish_batch(q, batch).await.expect("publish_batch");
    let mut consumer = transport.consume(q, options(3)).await.expect("consume");
    let held = kessai_testkit::receive(&mut consumer, 10, within).await;
    assert_eq!(held.len(), 3, "prefetch 3 caps unsettled deliveries");
    for d in held {
        d.ack().await.expect("ack");
    }
    let more = kessai_testkit::receive(&mut consumer, 10, within).await;
    assert_eq!(more.len(), 3, "acking made room for 3 more, no more");
    (consumer, more)
}

/// Instantiates each property (an `async fn(Ctx)` of the including test file) once per
/// transport built in: `memory::<property>`, `amqp::<property>`, `sqs::<property>`.
#[allow(unused_macros)] // Not every test binary runs properties.
macro_rules! per_transport {
    ($($property:ident),* $(,)?) => {
        $crate::common::per_transport!(@on memory, Memory, $($property),*);
        #[cfg(feature = "amqp")]
        $crate::common::per_transport!(@on amqp, Amqp, $($property),*);
        #[cfg(feature = "sqs")]
        $crate::common::per_transport!(@on sqs, Sqs, $($property),*);
    };
    (@on $module:ident, $kind:ident, $($property:ident),*) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $property() {
                    $crate::common::run($crate::common::Kind::$kind, super::$property).await;
                }
            )*
        }
    };
}
#[allow(unused_imports)]
pub(crate) use per_transport;
