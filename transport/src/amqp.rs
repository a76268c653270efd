//! The RabbitMQ transport (AMQP 0-9-1 through `lapin` 4).
//!
//! ## Why it is built this way
//! - **Publisher confirms on every publishing channel.** `publish` returns `Ok` only
//!   after the broker has confirmed the message, which for a persistent message on a
//!   durable queue means it is on disk. A `Nack`, an unroutable return (we publish
//!   `mandatory`, so a missing queue is reported instead of silently dropped), a
//!   confirm that never comes (`confirm_timeout`) or a channel that dies with the
//!   confirm outstanding is an error, never `Ok`: the outbox relay keeps the row and
//!   resends. Durable queues and `delivery_mode = 2` make the broker's side of that
//!   promise survive a broker restart.
//! - **Manual ack, after the caller says so.** Consumers never use `no_ack`; a delivery
//!   is acked only when [`Delivery::ack`] is called, which kessai does after the
//!   message's effects are committed. `basic_qos` bounds how many unsettled deliveries
//!   a consumer holds (its prefetch).
//! - **Unsettled means redelivered, explicitly.** A [`Delivery`] dropped unsettled
//!   spawns a `basic.nack(requeue = true)`; a dropped consumer cancels itself and
//!   requeues what lapin had prefetched but not yet handed out; and if the process or
//!   connection dies instead, the broker requeues everything unacked on the channel.
//!   RabbitMQ marks all of these `redelivered`.
//! - **Dead-lettering is a confirmed publish, then an ack.** The copy carries
//!   [`DEAD_LETTER_REASON`] and [`DEAD_LETTER_SOURCE`]; if the copy is not confirmed
//!   the original is not acked, so a poison message is never lost (at worst it
//!   appears twice in the dead-letter queue).
//! - **Reconnect with backoff, without a restart.** One connection per transport,
//!   replaced when it dies (`rabbitmqctl stop_app`, network loss seen by heartbeats).
//!   While the broker is away `publish` fails fast with [`Error::Unavailable`] (callers
//!   retry; the outbox keeps the message), connection attempts are spaced with
//!   exponential backoff, and consumers re-open their channel and `basic.consume` on
//!   their own. Deliveries from the dead channel cannot be settled any more: their
//!   `ack` returns [`Error::Unavailable`] and the broker redelivers them, which
//!   at-least-once with idempotent handlers absorbs. Every ack and nack is bounded
//!   (`settle_timeout`, [`SETTLE_TIMEOUT`] by default): one lapin accepted just as the
//!   connection died may never resolve, and must not stall a batch or a graceful
//!   shutdown.
//! - **No broker call waits forever.** Connecting (`connect_timeout`), every channel
//!   operation — open, `confirm.select`, queue declare and delete, `basic.qos`,
//!   `basic.consume`, handing a publish to the connection, close — (`op_timeout`),
//!   every publisher confirm (`confirm_timeout`) and every ack, nack and cancel
//!   (`settle_timeout`) has a bound of ours, and running past it is
//!   [`Error::Unavailable`], which callers retry. A broker that accepts the TCP
//!   connection and then stops answering (blocked by a resource alarm, a half-dead
//!   link heartbeats have not caught yet) leaves the channel and the connection in an
//!   unknown state, so an operation that timed out retires the connection: the next
//!   call opens a new one rather than queueing behind the wedged one. Only waiting for
//!   the next delivery is unbounded here: that is long polling, bounded by the
//!   consumer's `poll_wait`.
//! - **Expiry discards, it does not dead-letter.** [`OutgoingMessage::expires_in`]
//!   becomes the per-message `expiration` property (milliseconds). Queues are
//!   declared without arguments — no `x-dead-letter-exchange`, no `x-message-ttl` — so
//!   RabbitMQ simply drops a message that reaches the head of its queue expired. That
//!   is the point: an expired command is a stale copy its resend supersedes, not a
//!   poison message. kessai's own dead-lettering is an explicit, confirmed publish to
//!   `<queue>-dlq` (below) whose copy carries no expiration, so dead letters stay.
//! - **Throughput.** Publishes go round-robin over a small pool of confirm-mode
//!   channels (lapin channels are safe to share between tasks, RabbitMQ runs one
//!   process per channel), and `publish_batch` pipelines: it sends every message, then
//!   awaits all the confirms.

use crate::{
    ConsumeOptions, Consumer, DEAD_LETTER_REASON, DEAD_LETTER_SOURCE, Delivery, Error, Headers, OutgoingMessage,
    Settle, Transport, dead_letter_queue,
};
use async_trait::async_trait;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::AMQPUri;
use lapin::{Acker, BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How to reach RabbitMQ and how hard to lean on it.
#[derive(Clone)]
pub struct AmqpConfig {
    /// `amqp://user:password@host:port/vhost` (`%2f` is the default vhost). The password
    /// is never printed: `Debug` redacts it.
    pub url: String,
    /// The most unsettled deliveries any one consumer may hold (`basic_qos`). A
    /// consumer's own [`ConsumeOptions::prefetch`] is capped by this, so operators can
    /// bound memory per process whatever the code asks for.
    pub prefetch: u16,
    /// Confirm-mode channels publishes are spread over. One channel is one Erlang
    /// process in RabbitMQ, so a few let the broker use more than one core.
    pub publisher_channels: usize,
    /// How long a publish waits for its confirm before reporting
    /// [`Error::Unavailable`] (a blocked or overloaded broker). A confirm of a
    /// persistent message waits for the broker's fsync, well under a second even under
    /// load; the default leaves a wide margin so it never fires in normal operation.
    pub confirm_timeout: Duration,
    /// How long one connection attempt may take (TCP connect and the AMQP handshake).
    pub connect_timeout: Duration,
    /// How long any other broker operation may take: opening a channel,
    /// `confirm.select`, declaring, counting or deleting queues, `basic.qos`,
    /// `basic.consume`, handing a publish to the connection (which waits while the
    /// broker applies flow control), closing. Each normally answers within
    /// milliseconds. Past this the call is [`Error::Unavailable`] and the connection it
    /// ran on is retired (the next call opens a new one).
    pub op_timeout: Duration,
    /// How long an ack, nack or consumer cancel may take ([`SETTLE_TIMEOUT`] by
    /// default, see there). Past it the delivery counts as not settled and its
    /// channel as dead: the broker redelivers.
    pub settle_timeout: Duration,
    /// AMQP heartbeat in seconds: how fast a silently dead TCP connection is noticed.
    /// `0` keeps the broker's value (60 s by default).
    pub heartbeat_secs: u16,
    /// First wait between reconnection attempts; doubles up to `reconnect_max_backoff`.
    pub reconnect_min_backoff: Duration,
    /// Longest wait between reconnection attempts.
    pub reconnect_max_backoff: Duration,
    /// Shown in the RabbitMQ management UI, so an operator can tell services apart.
    pub connection_name: String,
}

impl AmqpConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }
}

impl Default for AmqpConfig {
    fn default() -> Self {
        Self {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            prefetch: 256,
            publisher_channels: 4,
            confirm_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            op_timeout: Duration::from_secs(30),
            settle_timeout: SETTLE_TIMEOUT,
            heartbeat_secs: 10,
            reconnect_min_backoff: Duration::from_millis(100),
            reconnect_max_backoff: Duration::from_secs(5),
            connection_name: "kessai".into(),
        }
    }
}

impl fmt::Debug for AmqpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpConfig")
            .field("url", &redact_url(&self.url))
            .field("prefetch", &self.prefetch)
            .field("publisher_channels", &self.publisher_channels)
            .field("confirm_timeout", &self.confirm_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("op_timeout", &self.op_timeout)
            .field("settle_timeout", &self.settle_timeout)
            .field("heartbeat_secs", &self.heartbeat_secs)
            .field("reconnect_min_backoff", &self.reconnect_min_backoff)
            .field("reconnect_max_backoff", &self.reconnect_max_backoff)
            .field("connection_name", &self.connection_name)
            .finish()
    }
}

/// `amqp://user:secret@host/` → `amqp://user:***@host/`.
fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => match rest[..at].find(':') {
            Some(colon) => format!("{}{}:***{}", &url[..scheme_end], &rest[..colon], &rest[at..]),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// RabbitMQ behind the [`Transport`] seam. Cheap to clone; clones share the connection
/// and the publishing channels.
#[derive(Clone)]
pub struct AmqpTransport {
    shared: Arc<Shared>,
}

impl fmt::Debug for AmqpTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpTransport")
            .field("config", &self.shared.config)
            .finish()
    }
}

struct Shared {
    config: AmqpConfig,
    uri: AMQPUri,
    link: tokio::sync::Mutex<Link>,
    /// Which connection is current: bumped for every new connection and when the
    /// current one is retired ([`Shared::suspect`]). Channels remember the epoch they
    /// were opened in; one of an older epoch is not reused.
    epoch: AtomicU64,
    /// Confirm-mode publishing channels (with their epoch), each replaced when found
    /// dead or of a retired connection.
    publishers: Vec<Mutex<Option<(u64, Channel)>>>,
    next_publisher: AtomicUsize,
    closed: AtomicBool,
    /// Per queue: deliveries received by this process and not yet settled.
    in_flight: Mutex<HashMap<String, Arc<AtomicUsize>>>,
}

/// The one connection and the reconnection backoff.
#[derive(Default)]
struct Link {
    connection: Option<Arc<Connection>>,
    /// The epoch `connection` was opened in: it is current while this equals
    /// [`Shared::epoch`].
    epoch: u64,
    failures: u32,
    retry_at: Option<Instant>,
}

/// A confirm-mode channel from the pool, with the epoch of its connection.
struct Publisher {
    epoch: u64,
    channel: Channel,
}

/// `op` bounded by `limit`: its own output, or [`Error::Unavailable`] saying what
/// timed out. Every awaited lapin call goes through here (most through
/// [`Shared::op`], which also retires the connection on a timeout).
async fn timed<T>(limit: Duration, what: &str, op: impl Future<Output = T>) -> Result<T, Error> {
    tokio::time::timeout(limit, op)
        .await
        .map_err(|_| Error::Unavailable(format!("{what} timed out after {limit:?}")))
}

impl AmqpTransport {
    /// Connects once, so a wrong URL or credentials fail at start-up. A broker that is
    /// merely down gives [`Error::Unavailable`]; later outages are healed inside.
    pub async fn connect(config: AmqpConfig) -> Result<Self, Error> {
        let mut uri: AMQPUri = config
            .url
            .parse()
            .map_err(|e| Error::Config(format!("bad AMQP url {}: {e}", redact_url(&config.url))))?;
        if config.heartbeat_secs > 0 {
            uri.query.heartbeat = Some(config.heartbeat_secs);
        }
        // lapin connects on a thread of its own, which our bound on `connect` does not
        // stop: bound its TCP connect as well (milliseconds), unless the URL says.
        if uri.query.connection_timeout.is_none() {
            uri.query.connection_timeout = Some(u64::try_from(config.connect_timeout.as_millis()).unwrap_or(u64::MAX));
        }
        let channels = config.publisher_channels.max(1);
        let shared = Arc::new(Shared {
            config,
            uri,
            link: tokio::sync::Mutex::new(Link::default()),
            epoch: AtomicU64::new(0),
            publishers: (0..channels).map(|_| Mutex::new(None)).collect(),
            next_publisher: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            in_flight: Mutex::new(HashMap::new()),
        });
        shared.connection().await?;
        Ok(Self { shared })
    }

    /// Whether the connection is up right now (for health checks; it heals itself).
    pub async fn is_connected(&self) -> bool {
        let link = self.shared.link.lock().await;
        link.epoch == self.shared.epoch.load(Ordering::SeqCst)
            && link.connection.as_ref().is_some_and(|c| c.status().connected())
    }

    /// Closes the connection. Publishes and consumers return [`Error::Closed`] after
    /// this; unsettled deliveries go back to their queues.
    pub async fn close(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        for slot in &self.shared.publishers {
            slot.lock().expect("publisher slot").take();
        }
        let connection = self.shared.link.lock().await.connection.take();
        if let Some(connection) = connection {
            let closing = connection.close(200, "kessai transport closed".into());
            let _ = timed(self.shared.config.op_timeout, "connection.close", closing).await;
        }
    }
}

impl Shared {
    fn in_flight(&self, queue: &str) -> Arc<AtomicUsize> {
        self.in_flight
            .lock()
            .expect("in-flight counters")
            .entry(queue.to_owned())
            .or_default()
            .clone()
    }

    fn check_open(&self) -> Result<(), Error> {
        if self.closed.load(Ordering::SeqCst) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    /// A broker operation on a channel of the connection opened in `epoch`, bounded
    /// by `op_timeout`. One that runs past it leaves its channel and the connection in
    /// an unknown state (a blocked broker, a half-dead link the heartbeats have not
    /// caught yet), so the connection is retired: the next call opens a new one.
    async fn op<T>(&self, epoch: u64, what: &str, op: impl Future<Output = lapin::Result<T>>) -> Result<T, Error> {
        match timed(self.config.op_timeout, what, op).await {
            Ok(result) => result.map_err(|e| map_lapin(e, what)),
            Err(timed_out) => {
                self.suspect(epoch, &timed_out);
                Err(timed_out)
            }
        }
    }

    /// Retires the connection opened in `epoch` (if it is still the current one):
    /// publishers stop using its channels and the next [`Shared::connection`] opens a
    /// new one. Channels still open on it (consumers, unsettled deliveries) carry on
    /// until they end; lapin closes the connection with the last of them.
    fn suspect(&self, epoch: u64, why: &Error) {
        if self
            .epoch
            .compare_exchange(epoch, epoch.wrapping_add(1), Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            tracing::warn!(
                messaging.system = "amqp",
                error = %why,
                "amqp connection retired after a timeout; the next call opens a new one"
            );
        }
    }

    /// A new channel on the live connection, with the connection's epoch. Declares,
    /// counts and deletes each take one of their own: a refused call (e.g. 406) closes
    /// the channel it ran on.
    async fn open_channel(&self) -> Result<(Channel, u64), Error> {
        let (connection, epoch) = self.connection().await?;
        let channel = self.op(epoch, "channel.open", connection.create_channel()).await?;
        Ok((channel, epoch))
    }

    /// The live connection and its epoch, reconnecting if it died (or was retired) and
    /// the backoff allows.
    async fn connection(&self) -> Result<(Arc<Connection>, u64), Error> {
        self.check_open()?;
        let mut link = self.link.lock().await;
        if let Some(connection) = &link.connection {
            let current = self.epoch.load(Ordering::SeqCst);
            if link.epoch == current && connection.status().connected() {
                return Ok((connection.clone(), current));
            }
            if link.epoch == current {
                tracing::warn!(
                    messaging.system = "amqp",
                    status = ?connection.status(),
                    "amqp connection lost; reconnecting"
                );
            }
            link.connection = None;
        }
        let now = Instant::now();
        if let Some(at) = link.retry_at
            && now < at
        {
            return Err(Error::Unavailable(format!(
                "broker unreachable; next connection attempt in {:?}",
                at - now
            )));
        }
        let properties =
            ConnectionProperties::default().with_connection_name(LongString::from(self.config.connection_name.clone()));
        let attempt = timed(
            self.config.connect_timeout,
            "connecting to the broker",
            Connection::connect_uri(self.uri.clone(), properties),
        )
        .await;
        let error = match attempt {
            Ok(Ok(connection)) => {
                if link.failures > 0 {
                    tracing::info!(
                        messaging.system = "amqp",
                        attempts = link.failures + 1,
                        "amqp connection re-established"
                    );
                }
                link.failures = 0;
                link.retry_at = None;
                let connection = Arc::new(connection);
                let epoch = self.epoch.fetch_add(1, Ordering::SeqCst).wrapping_add(1);
                link.connection = Some(connection.clone());
                link.epoch = epoch;
                return Ok((connection, epoch));
            }
            Ok(Err(e)) => map_lapin(e, "connect"),
            Err(timed_out) => timed_out,
        };
        link.failures = link.failures.saturating_add(1);
        let backoff = backoff(
            self.config.reconnect_min_backoff,
            self.config.reconnect_max_backoff,
            link.failures,
        );
        link.retry_at = Some(Instant::now() + backoff);
        tracing::warn!(
            messaging.system = "amqp",
            error = %error,
            failures = link.failures,
            retry_in = ?backoff,
            "amqp connection attempt failed"
        );
        Err(error)
    }

    /// A confirm-mode channel from the pool (round-robin), re-created if it died or
    /// its connection was retired.
    async fn publisher(&self) -> Result<Publisher, Error> {
        self.check_open()?;
        let slot = self.next_publisher.fetch_add(1, Ordering::Relaxed) % self.publishers.len();
        if let Some(publisher) = self.live_publisher(slot) {
            return Ok(publisher);
        }
        let (channel, epoch) = self.open_channel().await?;
        self.op(
            epoch,
            "confirm.select",
            channel.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
        let mut held = self.publishers[slot].lock().expect("publisher slot");
        // Another task refilled the slot meanwhile: use that one, ours closes on drop.
        if let Some(publisher) = self.usable(held.as_ref()) {
            return Ok(publisher);
        }
        *held = Some((epoch, channel.clone()));
        Ok(Publisher { epoch, channel })
    }

    /// The channel in `slot`, if it is open and on the current connection.
    fn live_publisher(&self, slot: usize) -> Option<Publisher> {
        self.usable(self.publishers[slot].lock().expect("publisher slot").as_ref())
    }

    fn usable(&self, held: Option<&(u64, Channel)>) -> Option<Publisher> {
        let (epoch, channel) = held?;
        (*epoch == self.epoch.load(Ordering::SeqCst) && channel.status().connected()).then(|| Publisher {
            epoch: *epoch,
            channel: channel.clone(),
        })
    }

    /// Sends one message; the returned future resolves with the broker's confirm.
    async fn send(
        &self,
        publisher: &Publisher,
        queue: &ShortString,
        message: &OutgoingMessage,
    ) -> Result<lapin::PublisherConfirm, Error> {
        let mut properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_headers(to_field_table(&message.headers)?);
        if let Some(ttl) = message.expires_in {
            properties = properties.with_expiration(expiration(ttl));
        }
        // Resolves once the frames are handed to the connection: it waits while the
        // broker holds publishers back (flow control, a resource alarm).
        let publish = publisher.channel.basic_publish(
            ShortString::from(""),
            queue.clone(),
            // mandatory: a message no queue takes comes back instead of vanishing.
            BasicPublishOptions {
                mandatory: true,
                immediate: false,
            },
            &message.payload,
            properties,
        );
        self.op(publisher.epoch, "basic.publish", publish).await
    }

    async fn confirmed(
        &self,
        publisher: &Publisher,
        queue: &str,
        confirm: lapin::PublisherConfirm,
    ) -> Result<(), Error> {
        match timed(self.config.confirm_timeout, "publisher confirm", confirm).await {
            Err(timed_out) => {
                // The message may still be confirmed (or not): the caller resends it.
                // A confirm this late means the connection is in an unknown state: the
                // next publishes go to a fresh one.
                self.suspect(publisher.epoch, &timed_out);
                Err(timed_out)
            }
            Ok(Err(e)) => Err(map_lapin(e, "publisher confirm")),
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(returned)))) => Err(Error::NotAccepted(format!(
                "unroutable: no queue `{queue}` ({} {}); declare it first",
                returned.reply_code, returned.reply_text
            ))),
            Ok(Ok(Confirmation::Nack(_))) => {
                Err(Error::NotAccepted(format!("broker nacked the message for `{queue}`")))
            }
            Ok(Ok(Confirmation::NotRequested)) => {
                Err(Error::NotAccepted("publisher confirms are off on this channel".into()))
            }
        }
    }

    async fn publish(&self, queue: &str, message: &OutgoingMessage) -> Result<(), Error> {
        let name = short(queue)?;
        let publisher = self.publisher().await?;
        let confirm = self.send(&publisher, &name, message).await?;
        self.confirmed(&publisher, queue, confirm).await
    }

    async fn publish_batch(&self, queue: &str, messages: &[OutgoingMessage]) -> Result<(), Error> {
        if messages.is_empty() {
            return Ok(());
        }
        let name = short(queue)?;
        let publisher = self.publisher().await?;
        let mut confirms = Vec::with_capacity(messages.len());
        for message in messages {
            confirms.push(self.send(&publisher, &name, message).await?);
        }
        let results =
            futures::future::join_all(confirms.into_iter().map(|c| self.confirmed(&publisher, queue, c))).await;
        results.into_iter().collect()
    }
}

fn backoff(min: Duration, max: Duration, failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    min.saturating_mul(1 << exponent).min(max)
}

/// The AMQP `expiration` property: whole milliseconds as a decimal string. RabbitMQ
/// caps it at 2^32 - 1 ms (about 49 days); longer is sent as that.
fn expiration(ttl: Duration) -> ShortString {
    let ms = ttl.as_millis().min(u128::from(u32::MAX));
    ShortString::from(ms.to_string())
}

fn short(name: &str) -> Result<ShortString, Error> {
    ShortString::try_new(name).map_err(|e| Error::Config(format!("name `{name}`: {e}")))
}

/// Maps a lapin error to the crate error: refusals that retrying cannot fix are
/// [`Error::Config`], everything else (I/O, closed channels, forced closes) is
/// [`Error::Unavailable`].
fn map_lapin(error: lapin::Error, what: &str) -> Error {
    use lapin::ErrorKind;
    match error.kind() {
        ErrorKind::ProtocolError(amqp) => match amqp.kind() {
            AMQPErrorKind::Soft(
                AMQPSoftError::ACCESSREFUSED | AMQPSoftError::NOTFOUND | AMQPSoftError::PRECONDITIONFAILED,
            )
            | AMQPErrorKind::Hard(
                AMQPHardError::NOTALLOWED | AMQPHardError::INVALIDPATH | AMQPHardError::NOTIMPLEMENTED,
            ) => Error::Config(format!("{what}: {error}")),
            _ => Error::Unavailable(format!("{what}: {error}")),
        },
        ErrorKind::AuthProviderError(_) | ErrorKind::InvalidProtocolVersion(_) => {
            Error::Config(format!("{what}: {error}"))
        }
        _ => Error::Unavailable(format!("{what}: {error}")),
    }
}

fn to_field_table(headers: &Headers) -> Result<FieldTable, Error> {
    let mut table = FieldTable::default();
    for (key, value) in headers {
        table.insert(short(key)?, AMQPValue::LongString(LongString::from(value.as_bytes())));
    }
    Ok(table)
}

/// Scalar AMQP header values as strings; nested tables and arrays (RabbitMQ's
/// `x-death`, for one) are not kessai's and are left out.
fn from_field_table(table: Option<&FieldTable>) -> Headers {
    let mut headers = Headers::new();
    let Some(table) = table else {
        return headers;
    };
    for (key, value) in table.inner() {
        let value = match value {
            AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
            AMQPValue::ShortString(s) => s.as_str().to_owned(),
            AMQPValue::Boolean(b) => b.to_string(),
            AMQPValue::ShortShortInt(n) => n.to_string(),
            AMQPValue::ShortShortUInt(n) => n.to_string(),
            AMQPValue::ShortInt(n) => n.to_string(),
            AMQPValue::ShortUInt(n) => n.to_string(),
            AMQPValue::LongInt(n) => n.to_string(),
            AMQPValue::LongUInt(n) => n.to_string(),
            AMQPValue::LongLongInt(n) => n.to_string(),
            AMQPValue::Timestamp(n) => n.to_string(),
            AMQPValue::ByteArray(b) => String::from_utf8_lossy(b.as_slice()).into_owned(),
            _ => continue,
        };
        headers.insert(key.as_str().to_owned(), value);
    }
    headers
}

#[async_trait]
impl Transport for AmqpTransport {
    fn system(&self) -> &'static str {
        "amqp"
    }

    /// Durable, with no queue arguments: in particular no dead-letter exchange, so a
    /// message that expires in the queue is discarded rather than moved to the DLQ.
    async fn declare(&self, queue: &str) -> Result<(), Error> {
        let dlq = dead_letter_queue(queue);
        let names = [short(&dlq)?, short(queue)?];
        let (channel, epoch) = self.shared.open_channel().await?;
        for name in names {
            let declare = channel.queue_declare(name, QueueDeclareOptions::durable(), FieldTable::default());
            self.shared.op(epoch, "queue.declare", declare).await?;
        }
        let _ = self
            .shared
            .op(epoch, "channel.close", channel.close(200, "declared".into()))
            .await;
        Ok(())
    }

    async fn publish(&self, queue: &str, message: OutgoingMessage) -> Result<(), Error> {
        self.shared.publish(queue, &message).await
    }

    /// Ready messages (from a passive `queue.declare`) plus the deliveries this
    /// process holds unsettled, prefetched ones included. AMQP does not report other
    /// processes' unacknowledged messages, so this is exact only when every consumer
    /// of `queue` runs in this process (the embedded stack).
    async fn pending(&self, queue: &str) -> Result<Option<u64>, Error> {
        let name = short(queue)?;
        let (channel, epoch) = self.shared.open_channel().await?;
        let declare = channel.queue_declare(
            name,
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        );
        let declared = self.shared.op(epoch, "queue.declare (passive)", declare).await?;
        let _ = self
            .shared
            .op(epoch, "channel.close", channel.close(200, "counted".into()))
            .await;
        let held = self.shared.in_flight(queue).load(Ordering::SeqCst);
        Ok(Some(u64::from(declared.message_count()) + held as u64))
    }

    async fn publish_batch(&self, queue: &str, messages: Vec<OutgoingMessage>) -> Result<(), Error> {
        self.shared.publish_batch(queue, &messages).await
    }

    async fn delete(&self, queue: &str) -> Result<(), Error> {
        let dlq = dead_letter_queue(queue);
        let names = [short(queue)?, short(&dlq)?];
        let (channel, epoch) = self.shared.open_channel().await?;
        for name in names {
            // Deleting a queue that does not exist is a no-op in RabbitMQ 3.x+.
            let delete = channel.queue_delete(name, QueueDeleteOptions::default());
            self.shared.op(epoch, "queue.delete", delete).await?;
        }
        let _ = self
            .shared
            .op(epoch, "channel.close", channel.close(200, "deleted".into()))
            .await;
        Ok(())
    }

    async fn consume(&self, queue: &str, options: ConsumeOptions) -> Result<Box<dyn Consumer>, Error> {
        let prefetch = options.prefetch.clamp(1, self.shared.config.prefetch.max(1));
        let mut consumer = AmqpConsumer {
            shared: self.shared.clone(),
            queue: queue.to_owned(),
            name: short(queue)?,
            options,
            prefetch,
            live: None,
            in_flight: self.shared.in_flight(queue),
            runtime: Handle::current(),
        };
        // Open now so a missing queue or a refused login is reported here.
        consumer.live = Some(consumer.open().await?);
        Ok(Box::new(consumer))
    }
}

/// A subscription; re-opens its channel and `basic.consume` after a connection loss.
struct AmqpConsumer {
    shared: Arc<Shared>,
    queue: String,
    name: ShortString,
    options: ConsumeOptions,
    prefetch: u16,
    live: Option<Live>,
    /// This process's deliveries of the queue not yet settled (see `pending`).
    in_flight: Arc<AtomicUsize>,
    runtime: Handle,
}

/// One delivery received from the broker and not yet settled; counted in
/// [`AmqpConsumer::in_flight`] until dropped.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn new(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Self(counter.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

type Received = Result<(lapin::message::Delivery, InFlight), lapin::Error>;

/// The open subscription: a pump task moves lapin's deliveries (up to the prefetch)
/// into `deliveries` as soon as they arrive, so every delivery this process holds
/// is counted, and a dead channel shows up as the channel's end.
struct Live {
    channel: Channel,
    /// The epoch of the connection `channel` is on.
    epoch: u64,
    tag: ShortString,
    deliveries: mpsc::UnboundedReceiver<Received>,
    /// Set once a settle on this channel stalled (see [`settle_bounded`]).
    stalled: Arc<AtomicBool>,
}

const REQUEUE: BasicNackOptions = BasicNackOptions {
    multiple: false,
    requeue: true,
};

/// The default `settle_timeout`: longest an ack, nack or cancel may take. lapin
/// resolves one once its frame is handed to the connection, normally at once; but one
/// issued just as the connection dies (a broker stop) can stay unresolved forever,
/// and with it whatever awaits it: a participant's batch, a graceful shutdown. Past
/// this bound the delivery counts as not settled: the broker redelivers it when it
/// drops the dead connection.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// An ack or nack bounded by `limit` (`settle_timeout`). Once one on a channel
/// stalls, `stalled` marks that channel dead, so the rest of its deliveries fail at
/// once instead of each waiting out the bound (and its consumer re-opens).
async fn settle_bounded(
    stalled: &AtomicBool,
    limit: Duration,
    what: &str,
    settle: impl Future<Output = lapin::Result<bool>>,
) -> Result<(), Error> {
    if stalled.load(Ordering::SeqCst) {
        return Err(Error::Unavailable(format!(
            "{what}: the delivery's channel stalled; the broker will redeliver it"
        )));
    }
    match timed(limit, what, settle).await {
        Ok(result) => settled(result, what),
        Err(timed_out) => {
            stalled.store(true, Ordering::SeqCst);
            Err(Error::Unavailable(format!(
                "{timed_out}; the broker will redeliver the delivery"
            )))
        }
    }
}

/// Moves deliveries from lapin to the consumer until the subscription ends (cancel,
/// channel or connection loss). A delivery the consumer is no longer there to take
/// goes back to the queue (the nack bounded by `settle_timeout`).
async fn pump(
    mut stream: lapin::Consumer,
    deliveries: mpsc::UnboundedSender<Received>,
    in_flight: Arc<AtomicUsize>,
    settle_timeout: Duration,
) {
    while let Some(item) = stream.next().await {
        let failed = item.is_err();
        let item = item.map(|d| (d, InFlight::new(&in_flight)));
        if let Err(mpsc::error::SendError(Ok((d, _in_flight)))) = deliveries.send(item) {
            let _ = timed(settle_timeout, "basic.nack", d.acker.nack(REQUEUE)).await;
        }
        if failed {
            break;
        }
    }
}

impl AmqpConsumer {
    async fn open(&self) -> Result<Live, Error> {
        let (channel, epoch) = self.shared.open_channel().await?;
        let qos = channel.basic_qos(self.prefetch, BasicQosOptions::default());
        self.shared.op(epoch, "basic.qos", qos).await?;
        let tag = ShortString::from(format!("kessai-{}", uuid::Uuid::new_v4().simple()));
        let consume = channel.basic_consume(
            self.name.clone(),
            tag.clone(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        );
        let stream = self
            .shared
            .op(epoch, &format!("basic.consume on `{}`", self.queue), consume)
            .await?;
        let (sender, deliveries) = mpsc::unbounded_channel();
        let settle_timeout = self.shared.config.settle_timeout;
        self.runtime
            .spawn(pump(stream, sender, self.in_flight.clone(), settle_timeout));
        tracing::debug!(
            messaging.system = "amqp",
            messaging.destination.name = %self.queue,
            prefetch = self.prefetch,
            "amqp consumer started"
        );
        Ok(Live {
            channel,
            epoch,
            tag,
            deliveries,
            stalled: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Ends the subscription: cancels it and requeues what was received but not handed
    /// out. The channel stays open while handed-out deliveries hold it, so they can
    /// still be settled; it closes with the last of them.
    fn shut(&mut self) {
        let Some(Live {
            channel,
            tag,
            mut deliveries,
            ..
        }) = self.live.take()
        else {
            return;
        };
        let mut held = Vec::new();
        while let Ok(Ok(received)) = deliveries.try_recv() {
            held.push(received);
        }
        // From here the pump requeues whatever still arrives, until the cancel lands.
        drop(deliveries);
        let limit = self.shared.config.settle_timeout;
        self.runtime.spawn(async move {
            if channel.status().connected() {
                let cancel = channel.basic_cancel(tag, BasicCancelOptions::default());
                let _ = timed(limit, "basic.cancel", cancel).await;
            }
            for (d, _in_flight) in held {
                let _ = timed(limit, "basic.nack", d.acker.nack(REQUEUE)).await;
            }
        });
    }

    fn delivery(
        &self,
        (channel, stalled): (&Channel, &Arc<AtomicBool>),
        (d, in_flight): (lapin::message::Delivery, InFlight),
    ) -> Delivery {
        let headers = from_field_table(d.properties.headers().as_ref());
        let settle = AmqpSettle {
            shared: self.shared.clone(),
            queue: self.queue.clone(),
            acker: Some(d.acker),
            channel: Some(channel.clone()),
            stalled: stalled.clone(),
            payload: d.data.clone(),
            headers: headers.clone(),
            runtime: self.runtime.clone(),
            in_flight: Some(in_flight),
        };
        Delivery::new(d.data, headers, d.redelivered, Box::new(settle))
    }
}

#[async_trait]
impl Consumer for AmqpConsumer {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Delivery>, Error> {
        let max = max.clamp(1, usize::from(self.prefetch));
        let deadline = Instant::now() + self.options.poll_wait;
        loop {
            self.shared.check_open()?;
            if let Some(live) = &self.live {
                let stalled = live.stalled.load(Ordering::SeqCst);
                if stalled || live.epoch != self.shared.epoch.load(Ordering::SeqCst) {
                    if stalled {
                        // A settle on this channel went unanswered: its state is
                        // unknown, and so is its connection's.
                        let why = Error::Unavailable(format!("a settle on the channel of `{}` stalled", self.queue));
                        self.shared.suspect(live.epoch, &why);
                    }
                    // The channel's connection is retired (or already replaced): start
                    // over on the current one. What the old channel still holds
                    // unsettled the broker redelivers.
                    tracing::warn!(
                        messaging.system = "amqp",
                        messaging.destination.name = %self.queue,
                        stalled,
                        "amqp consumer leaving a retired connection; re-opening"
                    );
                    self.shut();
                    continue;
                }
            }
            let Some(live) = self.live.as_mut() else {
                match self.open().await {
                    Ok(live) => {
                        tracing::info!(
                            messaging.system = "amqp",
                            messaging.destination.name = %self.queue,
                            "amqp consumer re-established"
                        );
                        self.live = Some(live);
                        continue;
                    }
                    Err(e) if e.is_retryable() => {
                        let now = Instant::now();
                        if now >= deadline {
                            return Err(e);
                        }
                        tokio::time::sleep((deadline - now).min(Duration::from_millis(250))).await;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            };
            match tokio::time::timeout_at(deadline, live.deliveries.recv()).await {
                Err(_) => return Ok(Vec::new()),
                Ok(Some(Ok(first))) => {
                    let (channel, stalled) = (live.channel.clone(), live.stalled.clone());
                    let mut batch = vec![first];
                    // A failure behind these ends the pump: the next call sees the end.
                    while batch.len() < max {
                        match live.deliveries.try_recv() {
                            Ok(Ok(received)) => batch.push(received),
                            _ => break,
                        }
                    }
                    return Ok(batch
                        .into_iter()
                        .map(|received| self.delivery((&channel, &stalled), received))
                        .collect());
                }
                Ok(Some(Err(e))) => {
                    tracing::warn!(
                        messaging.system = "amqp",
                        messaging.destination.name = %self.queue,
                        error = %e,
                        "amqp consumer channel failed; re-opening"
                    );
                    self.live = None;
                }
                Ok(None) => {
                    tracing::warn!(
                        messaging.system = "amqp",
                        messaging.destination.name = %self.queue,
                        "amqp subscription ended; re-opening"
                    );
                    self.live = None;
                }
            }
        }
    }
}

impl Drop for AmqpConsumer {
    /// Cancels the subscription and requeues what was received but not handed out
    /// (see [`AmqpConsumer::shut`]).
    fn drop(&mut self) {
        self.shut();
    }
}

/// Settles one delivery on the channel it came from.
struct AmqpSettle {
    shared: Arc<Shared>,
    queue: String,
    /// `None` once settled.
    acker: Option<Acker>,
    /// Keeps the channel open until this delivery is settled (lapin closes a channel
    /// when its last handle goes).
    channel: Option<Channel>,
    /// Shared by the deliveries of one channel (see [`settle_bounded`]).
    stalled: Arc<AtomicBool>,
    /// Copies for dead-lettering, which republishes the message.
    payload: Vec<u8>,
    headers: Headers,
    runtime: Handle,
    /// Counts this delivery in `pending` until it is settled (or handed back).
    in_flight: Option<InFlight>,
}

fn settled(result: lapin::Result<bool>, what: &str) -> Result<(), Error> {
    match result {
        Ok(true) => Ok(()),
        Ok(false) => Err(Error::Unavailable(format!(
            "{what}: the delivery's channel is gone; the broker will redeliver it"
        ))),
        Err(e) => Err(map_lapin(e, what)),
    }
}

#[async_trait]
impl Settle for AmqpSettle {
    async fn ack(mut self: Box<Self>) -> Result<(), Error> {
        let acker = self.acker.take().expect("a delivery is settled once");
        let limit = self.shared.config.settle_timeout;
        settle_bounded(&self.stalled, limit, "basic.ack", acker.ack(BasicAckOptions::default())).await
    }

    async fn requeue(mut self: Box<Self>) -> Result<(), Error> {
        let acker = self.acker.take().expect("a delivery is settled once");
        let limit = self.shared.config.settle_timeout;
        settle_bounded(&self.stalled, limit, "basic.nack", acker.nack(REQUEUE)).await
    }

    async fn dead_letter(mut self: Box<Self>, reason: &str) -> Result<(), Error> {
        let usable = self.acker.as_ref().is_some_and(Acker::usable);
        if !usable {
            // The broker redelivers it; dead-lettering now would only make a duplicate.
            return Err(Error::Unavailable(
                "dead-letter: the delivery's channel is gone; the broker will redeliver it".into(),
            ));
        }
        let mut headers = std::mem::take(&mut self.headers);
        headers.insert(DEAD_LETTER_REASON.into(), reason.to_owned());
        headers.insert(DEAD_LETTER_SOURCE.into(), self.queue.clone());
        // No expiration: a dead letter waits for an operator, however long.
        let copy = OutgoingMessage {
            payload: std::mem::take(&mut self.payload),
            headers,
            expires_in: None,
        };
        // If this fails the original stays unsettled and Drop requeues it.
        self.shared.publish(&dead_letter_queue(&self.queue), &copy).await?;
        let acker = self.acker.take().expect("a delivery is settled once");
        let limit = self.shared.config.settle_timeout;
        settle_bounded(&self.stalled, limit, "basic.ack", acker.ack(BasicAckOptions::default())).await
    }
}

impl Drop for AmqpSettle {
    fn drop(&mut self) {
        let channel = self.channel.take();
        let in_flight = self.in_flight.take();
        let Some(acker) = self.acker.take() else {
            return;
        };
        if !acker.usable() {
            return; // the channel died: the broker has requeued it already
        }
        let limit = self.shared.config.settle_timeout;
        self.runtime.spawn(async move {
            let _held = (channel, in_flight);
            let _ = timed(limit, "basic.nack", acker.nack(REQUEUE)).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact_url("amqp://host/%2f"), "amqp://host/%2f");
        let debug = format!("{:?}", AmqpConfig::new("amqps://u:p4ss@h/v"));
        assert!(!debug.contains("p4ss"), "{debug}");
    }

    #[test]
    fn headers_round_trip_through_field_tables() {
        let mut headers = Headers::new();
        headers.insert("traceparent".into(), "00-abc-def-01".into());
        headers.insert("tracestate".into(), String::new());
        headers.insert("note".into(), "ключ=значение".into());
        let table = to_field_table(&headers).unwrap();
        assert_eq!(from_field_table(Some(&table)), headers);
        assert!(from_field_table(None).is_empty());
    }

    #[test]
    fn over_long_names_are_config_errors() {
        let long = "q".repeat(300);
        assert!(matches!(short(&long), Err(Error::Config(_))));
        let mut headers = Headers::new();
        headers.insert(long, "v".into());
        assert!(matches!(to_field_table(&headers), Err(Error::Config(_))));
    }

    #[test]
    fn expiration_is_whole_milliseconds_capped() {
        assert_eq!(expiration(Duration::from_millis(1_500)).as_str(), "1500");
        assert_eq!(expiration(Duration::from_micros(2_999)).as_str(), "2");
        assert_eq!(expiration(Duration::ZERO).as_str(), "0");
        assert_eq!(expiration(Duration::from_secs(u64::MAX)).as_str(), "4294967295");
    }

    #[test]
    fn backoff_doubles_then_caps() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(5));
        assert_eq!(backoff(min, max, 1), Duration::from_millis(100));
        assert_eq!(backoff(min, max, 2), Duration::from_millis(200));
        assert_eq!(backoff(min, max, 4), Duration::from_millis(800));
        assert_eq!(backoff(min, max, 30), max);
    }
}
