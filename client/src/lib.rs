//! # kessai-client — a typed client of the coordinator's HTTP API
//!
//! One [`Client`] per base URL and token; each method is one route of docs/API.md:
//!
//! | method | route | scope |
//! |---|---|---|
//! | [`Client::submit_payment`] | `POST /v1/payments` | `submit` |
//! | [`Client::submit_saga`] | `POST /v1/sagas` (with `Idempotency-Key`) | `submit` |
//! | [`Client::saga`], [`Client::saga_json`] | `GET /v1/sagas/{id}[?wait=]` | `submit` (own) / `read` |
//! | [`Client::list`], [`Client::list_json`] | `GET /v1/sagas` | `read` |
//! | [`Client::retry`] | `POST /v1/sagas/{id}/retry` | `admin` |
//! | [`Client::stats`] | `GET /v1/stats` | `read` |
//! | [`Client::health`] | `GET /healthz` | none |
//!
//! Every call has a timeout ([`DEFAULT_TIMEOUT`], see [`Client::with_timeout`]); a
//! `wait` on [`Client::saga`] is added to it. An error response becomes
//! [`ClientError::Api`] with the API's code, message and field;
//! [`ClientError::is_retryable`] says whether sending the same again may succeed
//! (submissions are idempotent, so it never creates a saga twice).
//!
//! ```no_run
//! # async fn demo() -> Result<(), kessai_client::ClientError> {
//! use kessai_client::{Client, PaymentRequest};
//! use std::time::Duration;
//!
//! let client = Client::from_env()?; // KESSAI_URL, KESSAI_TOKEN
//! let submitted = client
//!     .submit_payment(&PaymentRequest {
//!         payment_id: "p-1".into(),
//!         account_id: "acct-1".into(),
//!         card_id: "card-1".into(),
//!         amount: 1250,
//!         currency: "EUR".into(),
//!         settlement_account: None,
//!     })
//!     .await?;
//! let saga = client.saga(submitted.saga_id, Some(Duration::from_secs(10))).await?;
//! println!("{} is {}", saga.id, saga.state);
//! # Ok(()) }
//! ```
//!
//! The `_json` forms return the body exactly as the server sent it; [`render`] turns
//! a saga or a page of sagas into the plain text `kessai saga show|list` prints.
//!
//! Plain HTTP only (reqwest without TLS): reach an HTTPS endpoint through a
//! TLS-terminating proxy.

mod error;
pub mod render;
mod types;

pub use error::ClientError;
pub use kessai_messages::SagaId;
pub use types::{
    Actor, BranchRequest, BranchView, Health, ListFilter, PaymentRequest, RetryResult, SagaPage, SagaRequest,
    SagaSummary, SagaView, Submission, TimelineEntry, is_finished_state,
};

use reqwest::header::{HeaderValue, RETRY_AFTER};
use reqwest::{Method, RequestBuilder, Url};
use serde::de::DeserializeOwned;
use std::fmt;
use std::time::Duration;

/// Where the API is when `KESSAI_URL` is not set.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";
/// How long one call may take, unless [`Client::with_timeout`] says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting may take (within the call's timeout).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A client of one coordinator's API. Cheap to clone (the connection pool is shared).
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    /// Always ends with `/`, so route paths join under it.
    base: Url,
    /// `Bearer <token>`, marked sensitive.
    authorization: Option<HeaderValue>,
    timeout: Duration,
}

/// The token stays out of logs.
impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base.as_str())
            .field("token", &self.authorization.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Client {
    /// A client of the API at `base_url` (e.g. `http://127.0.0.1:8080`, or with a path
    /// prefix behind a proxy), sending `token` as `Authorization: Bearer <token>`
    /// (an empty token counts as none).
    pub fn new(base_url: &str, token: Option<String>) -> Result<Self, ClientError> {
        let mut base = Url::parse(base_url.trim())
            .map_err(|e| ClientError::Invalid(format!("invalid API URL {base_url:?}: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(ClientError::Invalid(format!(
                "invalid API URL {base_url:?}: expected http://host:port"
            )));
        }
        base.set_query(None);
        base.set_fragment(None);
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let authorization = match token.filter(|t| !t.is_empty()) {
            None => None,
            Some(t) => {
                let mut v = HeaderValue::from_str(&format!("Bearer {t}"))
                    .map_err(|_| ClientError::Invalid("the token has characters a header cannot carry".into()))?;
                v.set_sensitive(true);
                Some(v)
            }
        };
        let http = reqwest::Client::builder()
            .user_agent(concat!("kessai-client/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| ClientError::Invalid(format!("cannot build the HTTP client: {e}")))?;
        Ok(Client {
            http,
            base,
            authorization,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// `KESSAI_URL` (default [`DEFAULT_URL`]) and `KESSAI_TOKEN`.
    pub fn from_env() -> Result<Self, ClientError> {
        let url = std::env::var("KESSAI_URL")
            .ok()
            .filter(|u| !u.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_URL.to_owned());
        Client::new(&url, std::env::var("KESSAI_TOKEN").ok())
    }

    /// How long each call may take (a `wait` on [`Client::saga`] comes on top).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The API's base URL, ending with `/`.
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// `POST /v1/payments`: 202 and `created` for a new payment, 200 and not `created`
    /// for the same `payment_id` and body again; 409 `idempotency_conflict` (with the
    /// original `saga_id`) for the same `payment_id` with another body.
    pub async fn submit_payment(&self, payment: &PaymentRequest) -> Result<Submission, ClientError> {
        let request = self.request(Method::POST, "v1/payments")?.json(payment);
        self.submission(request).await
    }

    /// `POST /v1/sagas` with `Idempotency-Key: <idempotency_key>` (1 to 128
    /// characters; the same rules as a payment's `payment_id`).
    pub async fn submit_saga(&self, idempotency_key: &str, saga: &SagaRequest) -> Result<Submission, ClientError> {
        let key = HeaderValue::from_str(idempotency_key).map_err(|_| {
            ClientError::Invalid(format!(
                "idempotency key {idempotency_key:?} has characters a header cannot carry"
            ))
        })?;
        let request = self
            .request(Method::POST, "v1/sagas")?
            .header("Idempotency-Key", key)
            .json(saga);
        self.submission(request).await
    }

    /// `GET /v1/sagas/{id}`. With `wait` (at most 30 s), the answer comes once the saga
    /// is over or the wait ends, whichever is first.
    pub async fn saga(&self, id: SagaId, wait: Option<Duration>) -> Result<SagaView, ClientError> {
        Ok(self.call(self.saga_request(id, wait)?).await?.1)
    }

    /// [`Client::saga`], but the body exactly as the API sent it (checked to be JSON):
    /// every field in the server's order, including those this client does not know.
    pub async fn saga_json(&self, id: SagaId, wait: Option<Duration>) -> Result<String, ClientError> {
        self.call_json(self.saga_request(id, wait)?).await
    }

    fn saga_request(&self, id: SagaId, wait: Option<Duration>) -> Result<RequestBuilder, ClientError> {
        let mut url = self.url(&format!("v1/sagas/{id}"))?;
        let mut request_timeout = self.timeout;
        if let Some(wait) = wait {
            url.query_pairs_mut()
                .append_pair("wait", &format!("{}ms", wait.as_millis()));
            request_timeout += wait;
        }
        Ok(self.request_to(Method::GET, url).timeout(request_timeout))
    }

    /// `GET /v1/sagas`: a page of sagas, newest first.
    pub async fn list(&self, filter: &ListFilter) -> Result<SagaPage, ClientError> {
        Ok(self.call(self.list_request(filter)?).await?.1)
    }

    /// [`Client::list`], but the body exactly as the API sent it (checked to be JSON).
    pub async fn list_json(&self, filter: &ListFilter) -> Result<String, ClientError> {
        self.call_json(self.list_request(filter)?).await
    }

    fn list_request(&self, filter: &ListFilter) -> Result<RequestBuilder, ClientError> {
        let mut url = self.url("v1/sagas")?;
        let pairs = filter.query_pairs();
        if !pairs.is_empty() {
            url.query_pairs_mut().extend_pairs(pairs);
        }
        Ok(self.request_to(Method::GET, url))
    }

    /// `POST /v1/sagas/{id}/retry`: resend at once what the saga waits on, recording
    /// the operator and `reason` in its timeline. 409 `saga_finished` once it is over.
    pub async fn retry(&self, id: SagaId, reason: Option<&str>) -> Result<RetryResult, ClientError> {
        let body = match reason {
            Some(r) => serde_json::json!({ "reason": r }),
            None => serde_json::json!({}),
        };
        let request = self.request(Method::POST, &format!("v1/sagas/{id}/retry"))?.json(&body);
        Ok(self.call(request).await?.1)
    }

    /// `GET /v1/stats`: commands published, resends, unfinished sagas, the admission
    /// bound and refusals.
    pub async fn stats(&self) -> Result<serde_json::Value, ClientError> {
        Ok(self.call(self.request(Method::GET, "v1/stats")?).await?.1)
    }

    /// `GET /healthz`: a 200 is healthy, a 503 names the failing check; both are `Ok`.
    pub async fn health(&self) -> Result<Health, ClientError> {
        let url = self.url("healthz")?;
        let response = self
            .http
            .get(url.clone())
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|error| transport(&url, error))?;
        let status = response.status().as_u16();
        let retry_after = retry_after(&response);
        let body = response.bytes().await.map_err(|error| transport(&url, error))?;
        if status != 200 && status != 503 {
            return Err(ClientError::from_response(status, retry_after, &body));
        }
        let value: serde_json::Value = serde_json::from_slice(&body).map_err(|e| ClientError::Decode {
            url: url.to_string(),
            status,
            message: format!("not JSON: {e}"),
        })?;
        Ok(Health {
            healthy: status == 200,
            service: value.get("service").and_then(|s| s.as_str()).map(str::to_owned),
            checks: value.get("checks").cloned().unwrap_or_default(),
        })
    }

    fn url(&self, path: &str) -> Result<Url, ClientError> {
        self.base
            .join(path)
            .map_err(|e| ClientError::Invalid(format!("cannot build the URL of {path}: {e}")))
    }

    fn request(&self, method: Method, path: &str) -> Result<RequestBuilder, ClientError> {
        Ok(self.request_to(method, self.url(path)?))
    }

    fn request_to(&self, method: Method, url: Url) -> RequestBuilder {
        let mut request = self.http.request(method, url).timeout(self.timeout);
        if let Some(auth) = &self.authorization {
            request = request.header(reqwest::header::AUTHORIZATION, auth.clone());
        }
        request
    }

    async fn submission(&self, request: RequestBuilder) -> Result<Submission, ClientError> {
        let (status_code, body): (u16, types::SubmissionBody) = self.call(request).await?;
        Ok(Submission {
            saga_id: body.saga_id,
            created: body.created,
            status_code,
        })
    }

    /// Sends, then reads a 2xx body as `T` or any other answer as an error.
    async fn call<T: DeserializeOwned>(&self, request: RequestBuilder) -> Result<(u16, T), ClientError> {
        let (url, status, body) = self.call_raw(request).await?;
        serde_json::from_slice(&body)
            .map(|value| (status, value))
            .map_err(|e| ClientError::Decode {
                url: url.to_string(),
                status,
                message: format!("{e}"),
            })
    }

    /// Sends, then returns a 2xx body as text, once checked to be JSON.
    async fn call_json(&self, request: RequestBuilder) -> Result<String, ClientError> {
        let (url, status, body) = self.call_raw(request).await?;
        let decode = |message: String| ClientError::Decode {
            url: url.to_string(),
            status,
            message,
        };
        serde_json::from_slice::<serde::de::IgnoredAny>(&body).map_err(|e| decode(format!("not JSON: {e}")))?;
        String::from_utf8(body).map_err(|e| decode(format!("not UTF-8: {e}")))
    }

    /// Sends; a 2xx answer's URL, status and body, any other answer as an error.
    async fn call_raw(&self, request: RequestBuilder) -> Result<(Url, u16, Vec<u8>), ClientError> {
        let (client, request) = request.build_split();
        let request = request.map_err(|e| ClientError::Invalid(format!("cannot build the request: {e}")))?;
        let url = request.url().clone();
        let response = client.execute(request).await.map_err(|error| transport(&url, error))?;
        let status = response.status();
        let retry_after = retry_after(&response);
        let body = response.bytes().await.map_err(|error| transport(&url, error))?;
        if !status.is_success() {
            return Err(ClientError::from_response(status.as_u16(), retry_after, &body));
        }
        Ok((url, status.as_u16(), body.to_vec()))
    }
}

fn transport(url: &Url, error: reqwest::Error) -> ClientError {
    ClientError::Transport {
        url: url.to_string(),
        error,
    }
}

fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(error::parse_retry_after)
}

#[cfg(test)]
mod tests;
