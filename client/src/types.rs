//! What the API takes and answers (docs/API.md), as Rust types.
//!
//! Responses ignore fields they do not know, so the server can add fields without
//! breaking older clients; sets that may grow (saga states, timeline kinds, outcomes)
//! are plain strings.

use kessai_messages::SagaId;
use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;

/// `POST /v1/payments`. `payment_id` is the idempotency key (scoped to the client).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentRequest {
    pub payment_id: String,
    pub account_id: String,
    pub card_id: String,
    /// In the currency's minor unit, 1 to 100 000 000 000.
    pub amount: i64,
    /// Three upper-case letters (ISO 4217).
    pub currency: String,
    /// The issuer's settlement account at the bank; the server's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settlement_account: Option<String>,
}

/// `POST /v1/sagas`: a generic TCC saga over the participants the coordinator knows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SagaRequest {
    /// 1 to 64 branches.
    pub branches: Vec<BranchRequest>,
    /// 1 to 300 000; the coordinator's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub try_timeout_ms: Option<u64>,
}

/// One branch of a [`SagaRequest`]: the participant and what its try needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BranchRequest {
    pub participant: String,
    pub payload: serde_json::Value,
}

/// The answer to a submission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Submission {
    pub saga_id: SagaId,
    /// `false` when the idempotency key named an existing saga with the same body.
    pub created: bool,
    /// 202 for a new saga, 200 for the existing one.
    pub status_code: u16,
}

/// The body of a submission's answer.
#[derive(Deserialize)]
pub(crate) struct SubmissionBody {
    pub saga_id: SagaId,
    pub created: bool,
}

/// `GET /v1/sagas/{id}`: one saga, its branches and its timeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SagaView {
    pub id: SagaId,
    /// `payment`, `generic`, …
    pub kind: String,
    /// The name of the token that submitted it.
    #[serde(default)]
    pub client: Option<String>,
    /// `trying`, `confirming`, `cancelling`, `confirmed`, `cancelled`.
    pub state: String,
    #[serde(default)]
    pub stuck: bool,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Unix ms.
    pub created_at_ms: i64,
    #[serde(default)]
    pub updated_at_ms: Option<i64>,
    #[serde(default)]
    pub finished_at_ms: Option<i64>,
    #[serde(default)]
    pub try_deadline_ms: Option<i64>,
    /// The trace this saga's spans belong to, when tracing recorded one.
    #[serde(default)]
    pub trace_id: Option<String>,
    /// A link to that trace in the tracing backend, when the server knows one (servers
    /// that predate it leave it out).
    #[serde(default)]
    pub trace_url: Option<String>,
    /// What was submitted.
    #[serde(default)]
    pub request: serde_json::Value,
    #[serde(default)]
    pub branches: Vec<BranchView>,
    #[serde(default)]
    pub timeline: Vec<TimelineEntry>,
    /// Fields this client does not know yet, kept as they came.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl SagaView {
    /// Confirmed or cancelled: nothing more will happen to it.
    pub fn is_finished(&self) -> bool {
        is_finished_state(&self.state)
    }
}

/// `confirmed` or `cancelled`.
pub fn is_finished_state(state: &str) -> bool {
    matches!(state, "confirmed" | "cancelled")
}

/// One branch of a saga.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BranchView {
    pub branch_id: u32,
    pub participant: String,
    pub state: String,
    /// Sends of the command it waits on (1 = first send).
    #[serde(default)]
    pub attempt: u32,
    #[serde(default)]
    pub resend_at_ms: Option<i64>,
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub payload: serde_json::Value,
    /// Fields this client does not know yet, kept as they came.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// One entry of a saga's timeline. `detail` is the sentence for humans; the other
/// fields say the same for programs, and are absent where they do not apply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimelineEntry {
    pub at_ms: i64,
    /// `submitted`, `try_ok`, `try_rejected`, `decided`, `resend_requested`, …
    pub kind: String,
    #[serde(default)]
    pub branch_id: Option<u32>,
    #[serde(default)]
    pub detail: String,
    /// `try`, `confirm` or `cancel`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<Actor>,
    /// Fields this client does not know yet, kept as they came.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// Who caused a timeline entry: `client`, `coordinator`, `timer`, `operator`,
/// `operator:<name>`, `participant:<name>`, … The server may send it as a string
/// (`"timer"`, `"participant:bank"`) or as a one-key object (`{"participant": "bank"}`,
/// `{"named_operator": "sre-oncall"}`); both read as the `kind:name` string.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Actor(pub String);

impl Actor {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Actor {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde_json::Value;
        Ok(Actor(match Value::deserialize(d)? {
            Value::String(s) => s,
            Value::Object(m) if m.len() == 1 => {
                let (k, v) = m.into_iter().next().expect("one entry");
                // The coordinator's `NamedOperator(name)` is the operator `name`.
                let k = if k == "named_operator" {
                    "operator".to_owned()
                } else {
                    k
                };
                match v {
                    Value::String(name) => format!("{k}:{name}"),
                    Value::Null => k,
                    other => format!("{k}:{other}"),
                }
            }
            other => other.to_string(),
        }))
    }
}

/// One saga of a [`SagaPage`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaSummary {
    pub id: SagaId,
    pub kind: String,
    #[serde(default)]
    pub client: Option<String>,
    pub state: String,
    #[serde(default)]
    pub stuck: bool,
    #[serde(default)]
    pub reason: Option<String>,
    pub created_at_ms: i64,
    #[serde(default)]
    pub updated_at_ms: Option<i64>,
    #[serde(default)]
    pub finished_at_ms: Option<i64>,
    /// Fields this client does not know yet, kept as they came.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl SagaSummary {
    pub fn is_finished(&self) -> bool {
        is_finished_state(&self.state)
    }
}

/// `GET /v1/sagas`: newest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaPage {
    pub sagas: Vec<SagaSummary>,
    /// Pass it as [`ListFilter::cursor`] for the next page; `None` on the last.
    #[serde(default)]
    pub next_cursor: Option<String>,
}

/// The filters of `GET /v1/sagas`; `None` leaves a filter out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// One of the states, or `stuck`.
    pub state: Option<String>,
    pub stuck: Option<bool>,
    pub kind: Option<String>,
    /// The client (token name) that submitted the sagas.
    pub client: Option<String>,
    /// Unix ms.
    pub created_after: Option<i64>,
    /// Unix ms.
    pub created_before: Option<i64>,
    /// 1 to 500 (server default 50).
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

impl ListFilter {
    /// The query parameters, in a fixed order.
    pub(crate) fn query_pairs(&self) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        if let Some(s) = &self.state {
            q.push(("state", s.clone()));
        }
        if let Some(s) = self.stuck {
            q.push(("stuck", s.to_string()));
        }
        if let Some(k) = &self.kind {
            q.push(("kind", k.clone()));
        }
        if let Some(c) = &self.client {
            q.push(("client", c.clone()));
        }
        if let Some(t) = self.created_after {
            q.push(("created_after", t.to_string()));
        }
        if let Some(t) = self.created_before {
            q.push(("created_before", t.to_string()));
        }
        if let Some(l) = self.limit {
            q.push(("limit", l.to_string()));
        }
        if let Some(c) = &self.cursor {
            q.push(("cursor", c.clone()));
        }
        q
    }
}

/// `POST /v1/sagas/{id}/retry`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryResult {
    pub saga_id: SagaId,
    pub state: String,
    /// Commands resent.
    pub resent: u64,
    /// Fields this client does not know yet, kept as they came.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// `GET /healthz`: 200 when the service's database and broker answer, 503 naming the
/// failing check otherwise. Both read as a `Health`.
#[derive(Clone, Debug, PartialEq)]
pub struct Health {
    /// The status was 200.
    pub healthy: bool,
    /// `coordinator`, `balance`, …
    pub service: Option<String>,
    /// Each check (`database`, `transport`) with its `status` and details.
    pub checks: serde_json::Value,
}
