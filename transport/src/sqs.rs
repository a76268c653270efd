//! The Amazon SQS transport (`aws-sdk-sqs`), tested against a local emulator (moto).
//!
//! ## Why it is built this way
//! - **`publish` returns after SQS answered `SendMessage`**: SQS stores a message
//!   redundantly before it answers, which is its equivalent of a publisher confirm.
//!   `publish_batch` uses `SendMessageBatch` in chunks of ten and fails if any entry
//!   failed (the caller resends all; at-least-once).
//! - **Delete after commit.** Receiving only hides a message for the visibility
//!   timeout; [`Delivery::ack`] deletes it, and kessai acks after the message's effects
//!   are committed. Deletes from concurrent acks are coalesced into `DeleteMessageBatch`
//!   calls per consumer.
//! - **A visibility heartbeat per unsettled delivery.** SQS has no channel to notice a
//!   dead consumer; instead a hidden message reappears when its visibility timeout
//!   runs out. So that a slow (but alive) handler does not get a duplicate, a background
//!   task extends the timeout every third of it until the delivery is settled or
//!   dropped. Dropping a delivery unsettled stops the heartbeat and sets its visibility
//!   to 0, so it is redelivered at once; if the whole process dies, the timeout expires
//!   and SQS redelivers it. `redelivered` is `ApproximateReceiveCount > 1`.
//! - **Requeue** is `ChangeMessageVisibility(0)`. **Dead-lettering** sends a copy to
//!   `<queue>-dlq` with [`DEAD_LETTER_REASON`] / [`DEAD_LETTER_SOURCE`] attributes, then
//!   deletes the original. `declare` also sets a `RedrivePolicy` (`maxReceiveCount`) on
//!   the main queue, so a message that keeps failing without being dead-lettered by
//!   kessai (a crash loop) ends up in the same dead-letter queue, reason-less.
//! - **Headers are String message attributes**, so trace context survives the broker.
//!   SQS allows ten attributes per message; kessai keeps two free for dead-lettering.
//!   SQS refuses empty values, so an empty header travels as type `String.empty`.
//! - **Bodies must be text for SQS.** A payload that is not valid UTF-8 in SQS's
//!   character set (or is empty) travels base64-encoded, flagged by the
//!   `x-kessai-body-encoding` attribute; JSON stays readable in the console.
//! - **No message expiry.** SQS has no per-message time-to-live (only a queue-wide
//!   retention period of at least a minute), so [`OutgoingMessage::expires_in`] is
//!   ignored here: the message is delivered like any other. The coordinator still
//!   spaces its resends by the queue depth `pending` reports, which is what keeps
//!   redundant copies few on SQS.
//! - **Long polling**: `WaitTimeSeconds` is the smaller of `SqsConfig::wait_time`, the
//!   consumer's `poll_wait` (rounded to whole seconds) and 20 s; up to ten messages per
//!   call, and never more unsettled deliveries than the consumer's prefetch.
//! - **No call waits forever.** The client [`SqsTransport::connect`] builds has the
//!   SDK's timeouts set: TCP/TLS connect (`connect_timeout`), each HTTP attempt
//!   (`attempt_timeout`; the SDK retries one that times out) and the whole call with
//!   its retries (`op_timeout`). A `ReceiveMessage` long poll gets its wait time on
//!   top of both, so an empty queue is never mistaken for a dead endpoint. Behind
//!   those, every call also runs under a tokio timeout of ours, a backstop that holds
//!   for a client built elsewhere ([`SqsTransport::with_client`]) too. Running out of
//!   time is [`Error::Unavailable`], which callers retry.

use crate::{
    ConsumeOptions, Consumer, DEAD_LETTER_REASON, DEAD_LETTER_SOURCE, Delivery, Error, Headers, OutgoingMessage,
    Settle, Transport, dead_letter_queue,
};
use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::config::http::HttpResponse;
use aws_sdk_sqs::config::timeout::TimeoutConfig;
use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName,
    SendMessageBatchRequestEntry,
};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures::StreamExt;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Message attribute flagging how the body encodes the payload (absent: as is).
pub const BODY_ENCODING_ATTRIBUTE: &str = "x-kessai-body-encoding";
/// SQS's limit on message attributes per message.
const MAX_ATTRIBUTES: usize = 10;
/// Attributes a publisher may use: two stay free for the dead-letter reason and source.
const MAX_PUBLISHED_ATTRIBUTES: usize = MAX_ATTRIBUTES - 2;
/// Custom type label carrying an empty header value (SQS refuses empty values).
const EMPTY_STRING_TYPE: &str = "String.empty";
/// `SendMessageBatch` request size limit is 256 KiB; stay under it with room for JSON.
const MAX_BATCH_BYTES: usize = 200 * 1024;
/// Longest `WaitTimeSeconds` SQS accepts.
const MAX_WAIT: Duration = Duration::from_secs(20);
/// How much longer than the SDK's own operation timeout our backstop waits, so the
/// SDK's (more telling) timeout error is the one normally seen.
const BACKSTOP_GRACE: Duration = Duration::from_secs(1);

/// How to reach SQS and how messages are held.
#[derive(Clone)]
pub struct SqsConfig {
    /// Override of the SQS endpoint (the emulator in tests: `http://127.0.0.1:4566`);
    /// `None` uses AWS's endpoint for `region`.
    pub endpoint_url: Option<String>,
    pub region: String,
    /// Static credentials. `None` for both uses the AWS default chain (environment,
    /// profile, instance or task role). Never printed: `Debug` redacts the secret.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// How long a received message stays hidden. The per-delivery heartbeat extends it
    /// while the delivery is unsettled, so this bounds how soon a message held by a
    /// crashed process is redelivered, not how long a handler may take.
    pub visibility_timeout: Duration,
    /// Longest long poll (SQS caps it at 20 s); a consumer's `poll_wait` caps it further.
    pub wait_time: Duration,
    /// Receives after which SQS itself moves a message to `<queue>-dlq` (the queue's
    /// `RedrivePolicy`). Each requeue counts as a receive. `0` sets no policy.
    pub max_receive_count: u32,
    /// Longest wait for a TCP (and TLS) connection to the endpoint (the SDK's
    /// connect timeout).
    pub connect_timeout: Duration,
    /// Longest one HTTP attempt may take (the SDK's operation attempt timeout); the
    /// SDK retries an attempt that runs out. SQS answers in tens of milliseconds.
    pub attempt_timeout: Duration,
    /// Longest one call may take, the SDK's retries included (the SDK's operation
    /// timeout, and a little more for the tokio timeout of ours behind it). A
    /// `ReceiveMessage` long poll gets its wait time on top of this and of
    /// `attempt_timeout`.
    pub op_timeout: Duration,
}

impl Default for SqsConfig {
    fn default() -> Self {
        Self {
            endpoint_url: None,
            region: "us-east-1".into(),
            access_key_id: None,
            secret_access_key: None,
            visibility_timeout: Duration::from_secs(30),
            wait_time: MAX_WAIT,
            max_receive_count: 10,
            connect_timeout: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(10),
            op_timeout: Duration::from_secs(30),
        }
    }
}

impl SqsConfig {
    /// The SDK's timeouts for a call that may wait `wait` on purpose (a long poll).
    fn sdk_timeouts(&self, wait: Duration) -> TimeoutConfig {
        TimeoutConfig::builder()
            .connect_timeout(self.connect_timeout)
            .operation_attempt_timeout(wait + self.attempt_timeout)
            .operation_timeout(wait + self.op_timeout)
            .build()
    }

    /// Our own bound on a call that may wait `wait` on purpose: a backstop behind the
    /// SDK's timeouts.
    fn backstop(&self, wait: Duration) -> Duration {
        wait + self.op_timeout + BACKSTOP_GRACE
    }
}

impl fmt::Debug for SqsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqsConfig")
            .field("endpoint_url", &self.endpoint_url)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key.as_ref().map(|_| "***"))
            .field("visibility_timeout", &self.visibility_timeout)
            .field("wait_time", &self.wait_time)
            .field("max_receive_count", &self.max_receive_count)
            .field("connect_timeout", &self.connect_timeout)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("op_timeout", &self.op_timeout)
            .finish()
    }
}

/// SQS behind the [`Transport`] seam. Cheap to clone; clones share the client and the
/// queue-URL cache.
#[derive(Clone)]
pub struct SqsTransport {
    shared: Arc<Shared>,
}

impl fmt::Debug for SqsTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqsTransport")
            .field("config", &self.shared.config)
            .finish()
    }
}

struct Shared {
    client: Client,
    config: SqsConfig,
    /// Queue name → URL. URLs never change for a name, so entries never expire.
    urls: RwLock<HashMap<String, String>>,
}

impl SqsTransport {
    /// Builds the client, with the SDK's timeouts from `config`. Makes no call: SQS is
    /// reached on first use.
    pub async fn connect(config: SqsConfig) -> Result<Self, Error> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(config.region.clone()))
            .timeout_config(config.sdk_timeouts(Duration::ZERO));
        if let Some(url) = &config.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        match (&config.access_key_id, &config.secret_access_key) {
            (Some(id), Some(secret)) => {
                loader = loader.credentials_provider(Credentials::new(id, secret, None, None, "kessai-config"));
            }
            (None, None) => {}
            _ => {
                return Err(Error::Config(
                    "SQS access_key_id and secret_access_key must be given together".into(),
                ));
            }
        }
        let sdk = loader.load().await;
        Ok(Self::with_client(Client::new(&sdk), config))
    }

    /// Uses a client built elsewhere (custom retry or HTTP settings). Its own timeouts
    /// stay as they are, except on `ReceiveMessage` (which needs room for its long
    /// poll); `config.op_timeout` still bounds every call from outside.
    pub fn with_client(client: Client, config: SqsConfig) -> Self {
        Self {
            shared: Arc::new(Shared {
                client,
                config,
                urls: RwLock::new(HashMap::new()),
            }),
        }
    }

    /// The underlying client, for operations outside the seam (tests, tooling).
    pub fn client(&self) -> &Client {
        &self.shared.client
    }

    /// The URL of `queue`, which must exist.
    pub async fn queue_url(&self, queue: &str) -> Result<String, Error> {
        self.shared.url(queue).await
    }
}

impl Shared {
    fn cached(&self, queue: &str) -> Option<String> {
        self.urls.read().expect("url cache").get(queue).cloned()
    }

    fn remember(&self, queue: &str, url: &str) {
        self.urls
            .write()
            .expect("url cache")
            .insert(queue.to_owned(), url.to_owned());
    }

    /// One SDK call, bounded by our backstop; SDK errors mapped by [`map_sdk`].
    async fn call<T, E>(
        &self,
        what: &str,
        request: impl Future<Output = Result<T, SdkError<E, HttpResponse>>>,
    ) -> Result<T, Error>
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        bounded(self.config.backstop(Duration::ZERO), what, request)
            .await?
            .map_err(|e| map_sdk(e, what))
    }

    async fn url(&self, queue: &str) -> Result<String, Error> {
        if let Some(url) = self.cached(queue) {
            return Ok(url);
        }
        let request = self.client.get_queue_url().queue_name(queue).send();
        let out = bounded(self.config.backstop(Duration::ZERO), "GetQueueUrl", request)
            .await?
            .map_err(|e| {
                if e.as_service_error().is_some_and(|s| s.is_queue_does_not_exist()) {
                    Error::NotAccepted(format!("no queue `{queue}`; declare it first"))
                } else {
                    map_sdk(e, "GetQueueUrl")
                }
            })?;
        let url = out
            .queue_url()
            .ok_or_else(|| Error::Unavailable("GetQueueUrl answered without a URL".into()))?;
        self.remember(queue, url);
        Ok(url.to_owned())
    }

    async fn create(&self, queue: &str) -> Result<String, Error> {
        let out = self
            .call("CreateQueue", self.client.create_queue().queue_name(queue).send())
            .await?;
        let url = out
            .queue_url()
            .ok_or_else(|| Error::Unavailable("CreateQueue answered without a URL".into()))?;
        self.remember(queue, url);
        Ok(url.to_owned())
    }

    async fn publish(&self, queue: &str, message: &OutgoingMessage) -> Result<(), Error> {
        let url = self.url(queue).await?;
        let (body, attributes) = encode(message)?;
        self.send(&url, body, attributes).await
    }

    async fn send(
        &self,
        url: &str,
        body: String,
        attributes: HashMap<String, MessageAttributeValue>,
    ) -> Result<(), Error> {
        let request = self
            .client
            .send_message()
            .queue_url(url)
            .message_body(body)
            .set_message_attributes(Some(attributes))
            .send();
        self.call("SendMessage", request).await?;
        Ok(())
    }

    async fn send_chunk(
        &self,
        url: &str,
        chunk: Vec<(String, HashMap<String, MessageAttributeValue>)>,
    ) -> Result<(), Error> {
        let n = chunk.len();
        let mut request = self.client.send_message_batch().queue_url(url);
        for (i, (body, attributes)) in chunk.into_iter().enumerate() {
            let entry = SendMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .message_body(body)
                .set_message_attributes(Some(attributes))
                .build()
                .map_err(|e| Error::Config(format!("SendMessageBatch entry: {e}")))?;
            request = request.entries(entry);
        }
        let out = self.call("SendMessageBatch", request.send()).await?;
        if let Some(failed) = out.failed().first() {
            return Err(entry_error(
                "SendMessageBatch",
                failed.code(),
                failed.sender_fault(),
                failed.message(),
            ));
        }
        if out.successful().len() != n {
            return Err(Error::Unavailable(format!(
                "SendMessageBatch confirmed {} of {n} messages",
                out.successful().len()
            )));
        }
        Ok(())
    }

    async fn set_visibility(&self, url: &str, receipt: &str, timeout: Duration) -> Result<(), Error> {
        let request = self
            .client
            .change_message_visibility()
            .queue_url(url)
            .receipt_handle(receipt)
            .visibility_timeout(secs(timeout))
            .send();
        self.call("ChangeMessageVisibility", request).await?;
        Ok(())
    }
}

/// `call` bounded by `limit`: its own output, or [`Error::Unavailable`] saying what
/// got no answer in time.
async fn bounded<T>(limit: Duration, what: &str, call: impl Future<Output = T>) -> Result<T, Error> {
    tokio::time::timeout(limit, call)
        .await
        .map_err(|_| Error::Unavailable(format!("{what}: no answer within {limit:?}")))
}

fn secs(d: Duration) -> i32 {
    i32::try_from(d.as_secs()).unwrap_or(i32::MAX)
}

/// Maps an SDK error: no answer or a server-side failure is [`Error::Unavailable`],
/// a request SQS will never accept is [`Error::Config`], the rest
/// [`Error::NotAccepted`].
fn map_sdk<E>(error: SdkError<E, HttpResponse>, what: &str) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let text = format!("{what}: {}", DisplayErrorContext(&error));
    match &error {
        SdkError::ConstructionFailure(_) => Error::Config(text),
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            classify(service.err().code(), status >= 500, text)
        }
        _ => Error::Unavailable(text),
    }
}

fn entry_error(what: &str, code: &str, sender_fault: bool, message: Option<&str>) -> Error {
    let text = format!("{what}: {code}: {}", message.unwrap_or(""));
    classify(Some(code), !sender_fault, text)
}

fn classify(code: Option<&str>, server_fault: bool, text: String) -> Error {
    match code.unwrap_or("") {
        "AWS.SimpleQueueService.NonExistentQueue" | "QueueDoesNotExist" => Error::NotAccepted(text),
        "InvalidParameterValue"
        | "InvalidAttributeName"
        | "InvalidAttributeValue"
        | "InvalidMessageContents"
        | "MessageTooLong"
        | "BatchRequestTooLong"
        | "InvalidBatchEntryId"
        | "BatchEntryIdsNotDistinct"
        | "TooManyEntriesInBatchRequest"
        | "MissingParameter"
        | "AccessDenied"
        | "AccessDeniedException"
        | "InvalidAddress"
        | "InvalidSecurity"
        | "InvalidClientTokenId"
        | "SignatureDoesNotMatch"
        | "UnrecognizedClientException"
        | "UnsupportedOperation"
        | "AWS.SimpleQueueService.UnsupportedOperation" => Error::Config(text),
        c if server_fault
            || c.contains("Throttl")
            || c.contains("Unavailable")
            || c.contains("InternalError")
            || c.contains("InternalFailure")
            || c == "RequestThrottled"
            || c == "OverLimit" =>
        {
            Error::Unavailable(text)
        }
        _ => Error::NotAccepted(text),
    }
}

/// Characters SQS accepts in bodies and string attributes.
fn sqs_text(s: &str) -> bool {
    s.chars()
        .all(|c| matches!(c, '\t' | '\n' | '\r') || (c >= ' ' && c != '\u{FFFE}' && c != '\u{FFFF}'))
}

/// SQS attribute names: `[A-Za-z0-9_.-]`, at most 256, no leading/trailing or double
/// dot, not starting with `AWS.` or `Amazon.`.
fn valid_attribute_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    !name.is_empty()
        && name.len() <= 256
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !name.starts_with('.')
        && !name.ends_with('.')
        && !name.contains("..")
        && !lower.starts_with("aws.")
        && !lower.starts_with("amazon.")
}

fn string_attribute(value: &str) -> MessageAttributeValue {
    let (data_type, value) = if value.is_empty() {
        (EMPTY_STRING_TYPE, "-")
    } else {
        ("String", value)
    };
    MessageAttributeValue::builder()
        .data_type(data_type)
        .string_value(value)
        .build()
        .expect("data_type is set")
}

/// Replaces what SQS refuses, for text kessai writes itself (dead-letter reasons).
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if matches!(c, '\t' | '\n' | '\r') || (c >= ' ' && c != '\u{FFFE}' && c != '\u{FFFF}') {
                c
            } else {
                '\u{FFFD}'
            }
        })
        .collect()
}

/// The SQS body and attributes carrying `message`. Its `expires_in` is not carried:
/// SQS cannot expire one message (see the module docs).
fn encode(message: &OutgoingMessage) -> Result<(String, HashMap<String, MessageAttributeValue>), Error> {
    let mut attributes = HashMap::new();
    for (name, value) in &message.headers {
        if !valid_attribute_name(name) || name == BODY_ENCODING_ATTRIBUTE {
            return Err(Error::Config(format!(
                "header `{name}` cannot be an SQS message attribute name"
            )));
        }
        if !sqs_text(value) {
            return Err(Error::Config(format!("header `{name}` holds characters SQS refuses")));
        }
        attributes.insert(name.clone(), string_attribute(value));
    }
    let body = match std::str::from_utf8(&message.payload) {
        Ok(text) if !text.is_empty() && sqs_text(text) => text.to_owned(),
        Ok("") => {
            attributes.insert(BODY_ENCODING_ATTRIBUTE.into(), string_attribute("empty"));
            "-".to_owned()
        }
        _ => {
            attributes.insert(BODY_ENCODING_ATTRIBUTE.into(), string_attribute("base64"));
            BASE64.encode(&message.payload)
        }
    };
    if attributes.len() > MAX_PUBLISHED_ATTRIBUTES {
        return Err(Error::Config(format!(
            "{} headers: SQS carries at most {MAX_PUBLISHED_ATTRIBUTES} on a kessai message",
            attributes.len()
        )));
    }
    Ok((body, attributes))
}

fn attribute_text(value: &MessageAttributeValue) -> Option<String> {
    if value.data_type() == EMPTY_STRING_TYPE {
        return Some(String::new());
    }
    if value.data_type().starts_with("String") || value.data_type().starts_with("Number") {
        return value.string_value().map(str::to_owned);
    }
    None
}

/// The payload and headers carried by an SQS body and attributes.
fn decode(body: &str, attributes: &HashMap<String, MessageAttributeValue>) -> (Vec<u8>, Headers) {
    let encoding = attributes.get(BODY_ENCODING_ATTRIBUTE).and_then(attribute_text);
    let payload = match encoding.as_deref() {
        Some("empty") => Vec::new(),
        // Undecodable base64 is handed over as is: the consumer dead-letters it.
        Some("base64") => BASE64.decode(body).unwrap_or_else(|_| body.as_bytes().to_vec()),
        _ => body.as_bytes().to_vec(),
    };
    let headers = attributes
        .iter()
        .filter(|(name, _)| name.as_str() != BODY_ENCODING_ATTRIBUTE)
        .filter_map(|(name, value)| attribute_text(value).map(|v| (name.clone(), v)))
        .collect();
    (payload, headers)
}

/// Splits encoded messages into `SendMessageBatch` chunks: ten entries, bounded bytes.
fn chunks(
    encoded: Vec<(String, HashMap<String, MessageAttributeValue>)>,
) -> Vec<Vec<(String, HashMap<String, MessageAttributeValue>)>> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for (body, attributes) in encoded {
        let size = body.len()
            + attributes
                .iter()
                .map(|(k, v)| k.len() + v.data_type().len() + v.string_value().map_or(0, str::len))
                .sum::<usize>();
        if !current.is_empty() && (current.len() == 10 || bytes + size > MAX_BATCH_BYTES) {
            out.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push((body, attributes));
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

#[async_trait]
impl Transport for SqsTransport {
    fn system(&self) -> &'static str {
        "sqs"
    }

    async fn declare(&self, queue: &str) -> Result<(), Error> {
        let shared = &self.shared;
        let dlq_url = shared.create(&dead_letter_queue(queue)).await?;
        let retention = shared
            .client
            .set_queue_attributes()
            .queue_url(&dlq_url)
            // The longest SQS keeps anything: 14 days for SREs to look.
            .attributes(QueueAttributeName::MessageRetentionPeriod, "1209600")
            .send();
        shared.call("SetQueueAttributes", retention).await?;
        let url = shared.create(queue).await?;
        let mut request = shared.client.set_queue_attributes().queue_url(&url).attributes(
            QueueAttributeName::VisibilityTimeout,
            secs(shared.config.visibility_timeout).to_string(),
        );
        if shared.config.max_receive_count > 0 {
            let arn_request = shared
                .client
                .get_queue_attributes()
                .queue_url(&dlq_url)
                .attribute_names(QueueAttributeName::QueueArn)
                .send();
            let out = shared.call("GetQueueAttributes", arn_request).await?;
            let arn = out
                .attributes()
                .and_then(|a| a.get(&QueueAttributeName::QueueArn))
                .ok_or_else(|| Error::Unavailable("GetQueueAttributes answered without QueueArn".into()))?;
            let policy = format!(
                r#"{{"deadLetterTargetArn":"{arn}","maxReceiveCount":"{}"}}"#,
                shared.config.max_receive_count
            );
            request = request.attributes(QueueAttributeName::RedrivePolicy, policy);
        }
        shared.call("SetQueueAttributes", request.send()).await?;
        Ok(())
    }

    async fn publish(&self, queue: &str, message: OutgoingMessage) -> Result<(), Error> {
        self.shared.publish(queue, &message).await
    }

    /// `ApproximateNumberOf{Messages,MessagesNotVisible,MessagesDelayed}`: waiting,
    /// in flight (received, unsettled — any process) and delayed. SQS updates these
    /// lazily, so a few seconds of zeros are what "empty" looks like.
    async fn pending(&self, queue: &str) -> Result<Option<u64>, Error> {
        let url = self.shared.url(queue).await?;
        let request = self
            .shared
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send();
        let out = self.shared.call("GetQueueAttributes", request).await?;
        let total = out
            .attributes()
            .map(|a| a.values().filter_map(|v| v.parse::<u64>().ok()).sum())
            .unwrap_or(0);
        Ok(Some(total))
    }

    async fn publish_batch(&self, queue: &str, messages: Vec<OutgoingMessage>) -> Result<(), Error> {
        if messages.is_empty() {
            return Ok(());
        }
        let url = self.shared.url(queue).await?;
        let encoded = messages.iter().map(encode).collect::<Result<Vec<_>, _>>()?;
        let results: Vec<Result<(), Error>> = futures::stream::iter(chunks(encoded))
            .map(|chunk| self.shared.send_chunk(&url, chunk))
            .buffer_unordered(8)
            .collect()
            .await;
        results.into_iter().collect()
    }

    async fn delete(&self, queue: &str) -> Result<(), Error> {
        for name in [queue.to_owned(), dead_letter_queue(queue)] {
            let url = match self.shared.url(&name).await {
                Ok(url) => url,
                Err(Error::NotAccepted(_)) => continue,
                Err(e) => return Err(e),
            };
            let request = self.shared.client.delete_queue().queue_url(&url).send();
            self.shared.call("DeleteQueue", request).await?;
            self.shared.urls.write().expect("url cache").remove(&name);
        }
        Ok(())
    }

    async fn consume(&self, queue: &str, options: ConsumeOptions) -> Result<Box<dyn Consumer>, Error> {
        let url = self.shared.url(queue).await.map_err(|e| match e {
            Error::NotAccepted(m) => Error::Config(m),
            other => other,
        })?;
        let (acks, requests) = mpsc::channel(1024);
        let runtime = Handle::current();
        runtime.spawn(run_deletes(self.shared.clone(), url.clone(), requests));
        Ok(Box::new(SqsConsumer {
            shared: self.shared.clone(),
            queue: queue.to_owned(),
            url,
            permits: Arc::new(Semaphore::new(usize::from(options.prefetch.max(1)))),
            options,
            acks,
            runtime,
        }))
    }
}

/// A delete waiting to be batched.
struct DeleteRequest {
    receipt: String,
    done: oneshot::Sender<Result<(), Error>>,
}

/// Coalesces the consumer's acks into `DeleteMessageBatch` calls: whatever is waiting
/// when a call can start goes in it (up to ten), a few calls in flight at once. Ends
/// when the consumer and all its deliveries are gone.
async fn run_deletes(shared: Arc<Shared>, url: String, mut requests: mpsc::Receiver<DeleteRequest>) {
    let in_flight = Arc::new(Semaphore::new(4));
    while let Some(first) = requests.recv().await {
        let permit = in_flight.clone().acquire_owned().await.expect("semaphore never closed");
        let mut batch = vec![first];
        while batch.len() < 10 {
            match requests.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let shared = shared.clone();
        let url = url.clone();
        tokio::spawn(async move {
            delete_batch(&shared, &url, batch).await;
            drop(permit);
        });
    }
}

async fn delete_batch(shared: &Shared, url: &str, batch: Vec<DeleteRequest>) {
    let mut request = shared.client.delete_message_batch().queue_url(url);
    for (i, r) in batch.iter().enumerate() {
        let entry = DeleteMessageBatchRequestEntry::builder()
            .id(i.to_string())
            .receipt_handle(&r.receipt)
            .build()
            .expect("id and receipt are set");
        request = request.entries(entry);
    }
    match shared.call("DeleteMessageBatch", request.send()).await {
        Err(error) => {
            for r in batch {
                let _ = r.done.send(Err(clone_error(&error)));
            }
        }
        Ok(out) => {
            let mut results: Vec<Option<Result<(), Error>>> = (0..batch.len()).map(|_| None).collect();
            for ok in out.successful() {
                if let Some(slot) = ok.id().parse::<usize>().ok().and_then(|i| results.get_mut(i)) {
                    *slot = Some(Ok(()));
                }
            }
            for failed in out.failed() {
                if let Some(slot) = failed.id().parse::<usize>().ok().and_then(|i| results.get_mut(i)) {
                    *slot = Some(Err(entry_error(
                        "DeleteMessage",
                        failed.code(),
                        failed.sender_fault(),
                        failed.message(),
                    )));
                }
            }
            for (r, result) in batch.into_iter().zip(results) {
                let result = result
                    .unwrap_or_else(|| Err(Error::Unavailable("DeleteMessageBatch left an entry unanswered".into())));
                let _ = r.done.send(result);
            }
        }
    }
}

fn clone_error(e: &Error) -> Error {
    match e {
        Error::Unavailable(m) => Error::Unavailable(m.clone()),
        Error::NotAccepted(m) => Error::NotAccepted(m.clone()),
        Error::Closed => Error::Closed,
        Error::Config(m) => Error::Config(m.clone()),
    }
}

struct SqsConsumer {
    shared: Arc<Shared>,
    queue: String,
    url: String,
    options: ConsumeOptions,
    /// One per unsettled delivery: the consumer's prefetch.
    permits: Arc<Semaphore>,
    acks: mpsc::Sender<DeleteRequest>,
    runtime: Handle,
}

impl SqsConsumer {
    /// Long-poll seconds for what is left of this call's `poll_wait`.
    fn wait_seconds(&self, remaining: Duration) -> i32 {
        let cap = self.shared.config.wait_time.min(MAX_WAIT);
        let rounded = Duration::from_secs_f64(remaining.as_secs_f64().round());
        secs(rounded.min(cap))
    }
}

#[async_trait]
impl Consumer for SqsConsumer {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Delivery>, Error> {
        let deadline = Instant::now() + self.options.poll_wait;
        let want = max.clamp(1, 10);
        // Wait for room under the prefetch limit, then take what more is free.
        let Ok(first) = tokio::time::timeout_at(deadline, self.permits.clone().acquire_owned()).await else {
            return Ok(Vec::new());
        };
        let mut permits = first.expect("semaphore never closed");
        let more = (want - 1).min(self.permits.available_permits());
        if more > 0
            && let Ok(extra) = self.permits.clone().try_acquire_many_owned(more as u32)
        {
            permits.merge(extra);
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        let wait_seconds = self.wait_seconds(remaining);
        // The long poll is waiting on purpose: it gets its wait on top of every bound.
        let wait = Duration::from_secs(u64::try_from(wait_seconds).unwrap_or(0));
        let config = &self.shared.config;
        let request = self
            .shared
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(permits.num_permits() as i32)
            .wait_time_seconds(wait_seconds)
            .visibility_timeout(secs(config.visibility_timeout))
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .customize()
            .config_override(aws_sdk_sqs::config::Builder::new().timeout_config(config.sdk_timeouts(wait)))
            .send();
        let received = bounded(config.backstop(wait), "ReceiveMessage", request)
            .await
            .and_then(|result| result.map_err(|e| map_sdk(e, "ReceiveMessage")));
        let out = match received {
            Ok(out) => out,
            Err(error) => {
                if error.is_retryable() {
                    // Do not let a caller that retries at once spin against a dead endpoint.
                    tokio::time::sleep_until(deadline).await;
                }
                return Err(error);
            }
        };
        let mut batch = Vec::new();
        for message in out.messages() {
            let Some(receipt) = message.receipt_handle() else {
                continue;
            };
            let attributes = message.message_attributes().cloned().unwrap_or_default();
            let body = message.body().unwrap_or_default().to_owned();
            let (payload, headers) = decode(&body, &attributes);
            let receives = message
                .attributes()
                .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                .and_then(|n| n.parse::<u32>().ok())
                .unwrap_or(1);
            let settle = SqsSettle {
                shared: self.shared.clone(),
                queue: self.queue.clone(),
                url: self.url.clone(),
                receipt: receipt.to_owned(),
                body,
                attributes,
                heartbeat: Some(Heartbeat::start(
                    &self.runtime,
                    self.shared.clone(),
                    self.url.clone(),
                    receipt.to_owned(),
                )),
                acks: self.acks.clone(),
                _permit: permits.split(1),
                runtime: self.runtime.clone(),
            };
            batch.push(Delivery::new(payload, headers, receives > 1, Box::new(settle)));
        }
        Ok(batch)
    }
}

/// Keeps one unsettled delivery hidden by extending its visibility timeout.
struct Heartbeat {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Heartbeat {
    fn start(runtime: &Handle, shared: Arc<Shared>, url: String, receipt: String) -> Self {
        let stop = CancellationToken::new();
        let timeout = shared.config.visibility_timeout;
        let every = (timeout / 3).max(Duration::from_secs(1));
        let task = runtime.spawn({
            let stop = stop.clone();
            async move {
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(every) => {}
                    }
                    // Not raced against `stop`: an extension under way finishes, so a
                    // requeue (visibility 0) issued after `stop()` is never overtaken.
                    if let Err(e) = shared.set_visibility(&url, &receipt, timeout).await {
                        tracing::warn!(
                            messaging.system = "sqs",
                            error = %e,
                            "could not extend a delivery's visibility timeout"
                        );
                        if !matches!(e, Error::Unavailable(_)) {
                            return; // the receipt is stale: nothing left to keep hidden
                        }
                    }
                }
            }
        });
        Self { stop, task }
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

struct SqsSettle {
    shared: Arc<Shared>,
    queue: String,
    url: String,
    receipt: String,
    /// The message as received, re-sent as is (plus reason) when dead-lettered.
    body: String,
    attributes: HashMap<String, MessageAttributeValue>,
    /// `None` once settled.
    heartbeat: Option<Heartbeat>,
    acks: mpsc::Sender<DeleteRequest>,
    /// Returned to the consumer's prefetch budget when this delivery goes.
    _permit: Option<OwnedSemaphorePermit>,
    runtime: Handle,
}

impl SqsSettle {
    async fn delete(&mut self) -> Result<(), Error> {
        if let Some(heartbeat) = self.heartbeat.take() {
            heartbeat.stop().await;
        }
        let (done, answer) = oneshot::channel();
        let request = DeleteRequest {
            receipt: self.receipt.clone(),
            done,
        };
        if self.acks.send(request).await.is_err() {
            return Err(Error::Closed);
        }
        answer
            .await
            .unwrap_or_else(|_| Err(Error::Unavailable("delete batcher stopped".into())))
    }
}

#[async_trait]
impl Settle for SqsSettle {
    async fn ack(mut self: Box<Self>) -> Result<(), Error> {
        self.delete().await
    }

    async fn requeue(mut self: Box<Self>) -> Result<(), Error> {
        if let Some(heartbeat) = self.heartbeat.take() {
            heartbeat.stop().await;
        }
        self.shared
            .set_visibility(&self.url, &self.receipt, Duration::ZERO)
            .await
    }

    async fn dead_letter(mut self: Box<Self>, reason: &str) -> Result<(), Error> {
        let dlq = self.shared.url(&dead_letter_queue(&self.queue)).await?;
        let mut attributes = std::mem::take(&mut self.attributes);
        // Make room for the reason and source if a foreign producer used all ten.
        let reserved = [BODY_ENCODING_ATTRIBUTE, DEAD_LETTER_REASON, DEAD_LETTER_SOURCE];
        while attributes.len() > MAX_ATTRIBUTES - 2 {
            let Some(victim) = attributes.keys().find(|k| !reserved.contains(&k.as_str())).cloned() else {
                break;
            };
            attributes.remove(&victim);
        }
        attributes.insert(DEAD_LETTER_REASON.into(), string_attribute(&sanitize(reason)));
        attributes.insert(DEAD_LETTER_SOURCE.into(), string_attribute(&self.queue));
        // If this fails the original stays unsettled and Drop makes it visible again.
        let body = std::mem::take(&mut self.body);
        self.shared.send(&dlq, body, attributes).await?;
        self.delete().await
    }
}

impl Drop for SqsSettle {
    fn drop(&mut self) {
        let Some(heartbeat) = self.heartbeat.take() else {
            return;
        };
        let shared = self.shared.clone();
        let url = std::mem::take(&mut self.url);
        let receipt = std::mem::take(&mut self.receipt);
        self.runtime.spawn(async move {
            heartbeat.stop().await;
            if let Err(e) = shared.set_visibility(&url, &receipt, Duration::ZERO).await {
                tracing::debug!(
                    messaging.system = "sqs",
                    error = %e,
                    "could not release a dropped delivery; it reappears after its timeout"
                );
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(message: OutgoingMessage) -> (Vec<u8>, Headers, bool) {
        let (body, attributes) = encode(&message).unwrap();
        assert!(!body.is_empty());
        assert!(sqs_text(&body));
        let encoded = attributes.contains_key(BODY_ENCODING_ATTRIBUTE);
        let (payload, headers) = decode(&body, &attributes);
        (payload, headers, encoded)
    }

    #[test]
    fn json_travels_as_text_and_binary_as_base64() {
        let json = OutgoingMessage::new(br#"{"v":1}"#.to_vec());
        assert_eq!(round_trip(json.clone()), (json.payload, Headers::new(), false));
        for payload in [vec![0xff, 0xfe, 0x00, b'{'], vec![], b"nul\0inside".to_vec()] {
            let (back, headers, encoded) = round_trip(OutgoingMessage::new(payload.clone()));
            assert_eq!(back, payload);
            assert!(headers.is_empty());
            assert!(encoded);
        }
    }

    #[test]
    fn headers_survive_including_empty_ones() {
        let mut message = OutgoingMessage::new(b"x".to_vec());
        message.headers.insert("traceparent".into(), "00-1-2-01".into());
        message.headers.insert("tracestate".into(), String::new());
        let (_, headers, _) = round_trip(message.clone());
        assert_eq!(headers, message.headers);
    }

    #[test]
    fn refuses_what_sqs_would() {
        let mut message = OutgoingMessage::new(b"x".to_vec());
        message.headers.insert("bad name".into(), "v".into());
        assert!(matches!(encode(&message), Err(Error::Config(_))));
        let mut message = OutgoingMessage::new(b"x".to_vec());
        for i in 0..9 {
            message.headers.insert(format!("h{i}"), "v".into());
        }
        assert!(matches!(encode(&message), Err(Error::Config(_))));
        assert!(!valid_attribute_name("AWS.TraceHeader"));
        assert!(valid_attribute_name("x-kessai-dead-letter-reason"));
        assert_eq!(sanitize("a\0b"), "a\u{FFFD}b");
    }

    #[test]
    fn batches_hold_ten_and_bounded_bytes() {
        let small: Vec<_> = (0..25)
            .map(|i| encode(&OutgoingMessage::new(format!("m{i}").into_bytes())).unwrap())
            .collect();
        let sizes: Vec<usize> = chunks(small).iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![10, 10, 5]);
        let big: Vec<_> = (0..3)
            .map(|_| encode(&OutgoingMessage::new(vec![b'a'; 150 * 1024])).unwrap())
            .collect();
        assert_eq!(chunks(big).len(), 3);
    }

    #[test]
    fn errors_say_whether_to_retry() {
        assert!(matches!(
            classify(Some("RequestThrottled"), false, String::new()),
            Error::Unavailable(_)
        ));
        assert!(matches!(
            classify(Some("Whatever"), true, String::new()),
            Error::Unavailable(_)
        ));
        assert!(matches!(
            classify(Some("InvalidParameterValue"), false, String::new()),
            Error::Config(_)
        ));
        assert!(matches!(
            classify(Some("AWS.SimpleQueueService.NonExistentQueue"), false, String::new()),
            Error::NotAccepted(_)
        ));
        assert!(matches!(
            classify(Some("ReceiptHandleIsInvalid"), false, String::new()),
            Error::NotAccepted(_)
        ));
    }

    #[test]
    fn a_long_poll_gets_its_wait_on_top_of_every_bound() {
        let config = SqsConfig::default();
        let plain = config.sdk_timeouts(Duration::ZERO);
        assert_eq!(plain.connect_timeout(), Some(config.connect_timeout));
        assert_eq!(plain.operation_attempt_timeout(), Some(config.attempt_timeout));
        assert_eq!(plain.operation_timeout(), Some(config.op_timeout));
        let polling = config.sdk_timeouts(MAX_WAIT);
        assert_eq!(
            polling.operation_attempt_timeout(),
            Some(MAX_WAIT + config.attempt_timeout)
        );
        assert_eq!(polling.operation_timeout(), Some(MAX_WAIT + config.op_timeout));
        // Our backstop only fires after the SDK's own operation timeout.
        assert!(config.backstop(Duration::ZERO) > config.op_timeout);
        assert!(config.backstop(MAX_WAIT) > MAX_WAIT + config.op_timeout);
        // And in normal operation none fires: SQS answers in tens of milliseconds.
        assert!(config.attempt_timeout >= Duration::from_secs(5));
    }

    #[test]
    fn secrets_are_redacted() {
        let config = SqsConfig {
            access_key_id: Some("AKIA".into()),
            secret_access_key: Some("s3cr3t".into()),
            ..SqsConfig::default()
        };
        assert!(!format!("{config:?}").contains("s3cr3t"));
    }
}
