//! [`ClientError`]: what a call can fail with, and how an error response is read.

use kessai_messages::SagaId;
use serde::Deserialize;
use std::fmt;
use std::time::Duration;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error status (docs/API.md, "Errors").
    #[error("{}", ApiDisplay { status: *status, code, message, field: field.as_deref(), saga_id: *saga_id })]
    Api {
        /// The HTTP status: 4xx for the caller's mistakes, 429 and 503 for "retry later".
        status: u16,
        /// The stable machine-readable code: `invalid_request`, `saga_not_found`, …
        code: String,
        message: String,
        /// The offending input, where there is one.
        field: Option<String>,
        /// The saga a 409 is about (the original one of an idempotency conflict, or the
        /// finished one a retry named).
        saga_id: Option<SagaId>,
        /// The `Retry-After` header of a 429 or 503.
        retry_after: Option<Duration>,
    },
    /// The request did not get an answer: the server is unreachable, the connection
    /// broke, or the per-request timeout passed.
    #[error("{} {url}: {}", transport_what(error), error_chain(error))]
    Transport { url: String, error: reqwest::Error },
    /// The server answered, but not with what the API promises.
    #[error("unexpected answer from {url} (HTTP {status}): {message}")]
    Decode { url: String, status: u16, message: String },
    /// The client was given something it cannot send (a malformed base URL, a header
    /// value with control characters).
    #[error("{0}")]
    Invalid(String),
}

impl ClientError {
    /// Worth retrying as it is: 429 (overloaded, too many requests), 503 (unavailable,
    /// timeout, shutting down), or no answer at all (connection refused or broken, the
    /// request timed out). Submissions are idempotent, so a retry creates nothing twice.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Api { status, .. } => matches!(status, 429 | 503),
            ClientError::Transport { error, .. } => error.is_connect() || error.is_timeout() || error.is_request(),
            ClientError::Decode { .. } | ClientError::Invalid(_) => false,
        }
    }

    /// The HTTP status of an [`ClientError::Api`] or [`ClientError::Decode`] error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } | ClientError::Decode { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The API's error code, for an [`ClientError::Api`] error.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The caller's mistake (a 4xx other than 429): sending the same again will not help.
    pub fn is_client_error(&self) -> bool {
        self.status().is_some_and(|s| (400..500).contains(&s) && s != 429)
    }

    /// Reads an error response: the API's `{"error": {"code", "message", "field"}}`
    /// (with `saga_id` on a 409, in the object or beside it), the older
    /// `{"error": "<code>", "message": …}`, or anything else (a proxy's HTML page, an
    /// empty body), which keeps the status and the start of the body.
    pub fn from_response(status: u16, retry_after: Option<Duration>, body: &[u8]) -> ClientError {
        let parsed = serde_json::from_slice::<ErrorBody>(body).ok();
        let (code, message, field, saga_id) = match parsed {
            Some(ErrorBody {
                error: ErrorField::Object(e),
                message,
                field,
                saga_id,
            }) => (
                e.code,
                e.message.or(message).unwrap_or_default(),
                e.field.or(field),
                e.saga_id.or(saga_id),
            ),
            Some(ErrorBody {
                error: ErrorField::Code(code),
                message,
                field,
                saga_id,
            }) => (code, message.unwrap_or_default(), field, saga_id),
            None => (fallback_code(status), body_excerpt(body), None, None),
        };
        let message = if message.is_empty() {
            reason_phrase(status).to_owned()
        } else {
            message
        };
        ClientError::Api {
            status,
            code,
            message,
            field,
            saga_id,
            retry_after,
        }
    }
}

/// `Retry-After` in seconds (the HTTP-date form is not used by the API).
pub(crate) fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorField,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    field: Option<String>,
    #[serde(default)]
    saga_id: Option<SagaId>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ErrorField {
    Object(ErrorObject),
    Code(String),
}

#[derive(Deserialize)]
struct ErrorObject {
    code: String,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    field: Option<String>,
    #[serde(default)]
    saga_id: Option<SagaId>,
}

struct ApiDisplay<'a> {
    status: u16,
    code: &'a str,
    message: &'a str,
    field: Option<&'a str>,
    saga_id: Option<SagaId>,
}

impl fmt::Display for ApiDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (HTTP {}): {}", self.code, self.status, self.message)?;
        if let Some(field) = self.field {
            write!(f, " [field: {field}]")?;
        }
        if let Some(id) = self.saga_id {
            write!(f, " [saga: {id}]")?;
        }
        Ok(())
    }
}

fn transport_what(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "no answer in time from"
    } else if e.is_connect() {
        "cannot connect to"
    } else {
        "request failed to"
    }
}

/// The error and its causes on one line: reqwest's own message alone ("error sending
/// request") hides the useful part ("Connection refused").
fn error_chain(e: &reqwest::Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// A code for an error body that is not the API's: `not_found`, `bad_gateway`, …
fn fallback_code(status: u16) -> String {
    let reason = reason_phrase(status);
    if reason == "unknown status" {
        return format!("http_{status}");
    }
    reason
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

fn reason_phrase(status: u16) -> &'static str {
    reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("unknown status")
}

/// The start of a body, as text on one line.
fn body_excerpt(body: &[u8]) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(body);
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > MAX {
        format!("{}…", one_line.chars().take(MAX).collect::<String>())
    } else {
        one_line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(e: ClientError) -> (u16, String, String, Option<String>, Option<SagaId>, Option<Duration>) {
        match e {
            ClientError::Api {
                status,
                code,
                message,
                field,
                saga_id,
                retry_after,
            } => (status, code, message, field, saga_id, retry_after),
            other => panic!("not an API error: {other:?}"),
        }
    }

    #[test]
    fn reads_the_documented_error_body() {
        let body = br#"{"error": {"code": "invalid_request", "message": "amount: must be at most 100000000000", "field": "amount"}}"#;
        let e = ClientError::from_response(422, None, body);
        assert!(!e.is_retryable());
        assert!(e.is_client_error());
        assert_eq!(e.code(), Some("invalid_request"));
        assert_eq!(
            e.to_string(),
            "invalid_request (HTTP 422): amount: must be at most 100000000000 [field: amount]"
        );
        let (status, code, message, field, saga_id, retry_after) = api(e);
        assert_eq!(status, 422);
        assert_eq!(code, "invalid_request");
        assert_eq!(message, "amount: must be at most 100000000000");
        assert_eq!(field.as_deref(), Some("amount"));
        assert_eq!((saga_id, retry_after), (None, None));
    }

    #[test]
    fn a_null_field_is_none() {
        let body = br#"{"error": {"code": "unauthorized", "message": "no token", "field": null}}"#;
        let (status, code, _, field, _, _) = api(ClientError::from_response(401, None, body));
        assert_eq!((status, code.as_str(), field), (401, "unauthorized", None));
    }

    #[test]
    fn a_conflict_carries_the_saga_id_inside_or_beside_the_error() {
        let id: SagaId = "0196a3c1-7d2e-7a51-9c1e-2f4b8d6e0a13".parse().unwrap();
        for body in [
            format!(r#"{{"error": {{"code": "saga_finished", "message": "over", "field": null, "saga_id": "{id}"}}}}"#),
            format!(r#"{{"error": {{"code": "saga_finished", "message": "over", "field": null}}, "saga_id": "{id}"}}"#),
        ] {
            let e = ClientError::from_response(409, None, body.as_bytes());
            assert!(e.is_client_error() && !e.is_retryable());
            assert!(e.to_string().contains(&id.to_string()), "{e}");
            let (_, code, _, _, saga_id, _) = api(e);
            assert_eq!((code.as_str(), saga_id), ("saga_finished", Some(id)));
        }
    }

    #[test]
    fn overload_and_unavailability_are_retryable_with_their_retry_after() {
        for (status, code) in [(429, "overloaded"), (429, "too_many_requests"), (503, "unavailable")] {
            let body = format!(r#"{{"error": {{"code": "{code}", "message": "later", "field": null}}}}"#);
            let e = ClientError::from_response(status, parse_retry_after(" 3 "), body.as_bytes());
            assert!(e.is_retryable(), "{status} {code}");
            assert!(!e.is_client_error());
            let (_, c, _, _, _, retry_after) = api(e);
            assert_eq!((c.as_str(), retry_after), (code, Some(Duration::from_secs(3))));
        }
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }

    #[test]
    fn reads_the_older_flat_error_body() {
        let body = br#"{"error": "saga_not_found", "message": "no saga 0196a3c1-7d2e-7a51-9c1e-2f4b8d6e0a13"}"#;
        let (status, code, message, field, _, _) = api(ClientError::from_response(404, None, body));
        assert_eq!((status, code.as_str(), field), (404, "saga_not_found", None));
        assert!(message.starts_with("no saga"));
    }

    #[test]
    fn a_body_that_is_not_the_apis_keeps_the_status_and_the_text() {
        let (_, code, message, _, _, _) = api(ClientError::from_response(
            502,
            None,
            b"<html>\n<body>upstream   down</body></html>",
        ));
        assert_eq!(code, "bad_gateway");
        assert_eq!(message, "<html> <body>upstream down</body></html>");

        let (_, code, message, _, _, _) = api(ClientError::from_response(404, None, b""));
        assert_eq!((code.as_str(), message.as_str()), ("not_found", "Not Found"));

        // JSON, but not an error body.
        let (_, code, _, _, _, _) = api(ClientError::from_response(500, None, br#"{"oops": 1}"#));
        assert_eq!(code, "internal_server_error");

        let long = "x".repeat(1000);
        let (_, _, message, _, _, _) = api(ClientError::from_response(500, None, long.as_bytes()));
        assert_eq!(message.chars().count(), 201);
        assert!(message.ends_with('…'));
    }

    #[test]
    fn an_error_without_a_message_gets_the_reason_phrase() {
        let (_, code, message, _, _, _) = api(ClientError::from_response(
            403,
            None,
            br#"{"error": {"code": "forbidden"}}"#,
        ));
        assert_eq!((code.as_str(), message.as_str()), ("forbidden", "Forbidden"));
    }
}
