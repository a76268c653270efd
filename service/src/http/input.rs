//! Strict input at the edge: what is not exactly right is refused here with a 4xx
//! that names the field — unknown fields, over-long or blank ids, control characters
//! (a NUL that reached a participant's PostgreSQL would fail there on every
//! redelivery), amounts out of range — before anything is created anywhere.

use super::error::ApiError;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use kessai_messages::payment::DEFAULT_SETTLEMENT_ACCOUNT;
use kessai_messages::{Currency, Payment};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Longest id (payment, account, card, idempotency key), in characters.
pub const MAX_ID_LEN: usize = 128;
/// Longest string anywhere in a request body, in characters.
pub const MAX_STRING_LEN: usize = 4096;
/// Largest amount, in minor units (a billion in a two-decimal currency): larger is a
/// bug or an attack, not a payment.
pub const MAX_AMOUNT: i64 = 100_000_000_000;

/// Decodes a JSON body into `T`: `Content-Type: application/json` required (415), the
/// body must parse (400), hold no control character and no string over
/// [`MAX_STRING_LEN`] (422), and match `T` exactly — `T` denies unknown fields (422
/// naming the field).
pub fn json_body<T: DeserializeOwned>(headers: &HeaderMap, body: &Bytes) -> Result<T, ApiError> {
    require_json(headers)?;
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("the body is not valid JSON: {e}"),
        )
    })?;
    check_strings(&value, &mut String::new())?;
    decode(value)
}

/// Decodes an already checked JSON value into `T`, naming the field at fault.
pub fn decode<T: DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        // The path ends at an unknown field, but at the struct that misses a field.
        let field = match quoted_field(&message) {
            Some(missing) if message.starts_with("missing field") && path == "." => missing,
            Some(missing) if message.starts_with("missing field") => format!("{path}.{missing}"),
            _ if path == "." => String::new(),
            _ => path,
        };
        let mut err = ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message);
        if !field.is_empty() {
            err = err.field(field);
        }
        err
    })
}

/// The name serde quotes in "unknown field `x`" / "missing field `x`".
fn quoted_field(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(message[start..start + len].to_owned())
}

fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json")) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as Content-Type: application/json",
        ))
    }
}

/// Refuses control characters and over-long strings anywhere in `value`, keys included.
fn check_strings(value: &Value, path: &mut String) -> Result<(), ApiError> {
    let check = |s: &str, path: &str| -> Result<(), ApiError> {
        let field = if path.is_empty() { "." } else { path };
        if s.chars().any(char::is_control) {
            return Err(ApiError::invalid(
                field,
                "control characters (NUL, newlines, …) are not accepted",
            ));
        }
        if s.chars().count() > MAX_STRING_LEN {
            return Err(ApiError::invalid(
                field,
                format!("strings are at most {MAX_STRING_LEN} characters"),
            ));
        }
        Ok(())
    };
    match value {
        Value::String(s) => check(s, path),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                check_strings(item, path)?;
                path.truncate(len);
            }
            Ok(())
        }
        Value::Object(map) => {
            for (key, item) in map {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                check(key, path)?;
                check_strings(item, path)?;
                path.truncate(len);
            }
            Ok(())
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => Ok(()),
    }
}

/// An id: 1 to [`MAX_ID_LEN`] characters, not blank, no control characters.
pub fn check_id(field: &str, value: &str) -> Result<(), ApiError> {
    if value.trim().is_empty() {
        return Err(ApiError::invalid(field, format!("{field} must not be empty")));
    }
    if value.chars().count() > MAX_ID_LEN {
        return Err(ApiError::invalid(
            field,
            format!("{field} is at most {MAX_ID_LEN} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            field,
            format!("{field} must not contain control characters"),
        ));
    }
    Ok(())
}

/// `POST /v1/payments`' body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentRequest {
    /// The idempotency key (scoped to the client), 1 to 128 characters.
    pub payment_id: String,
    /// The wallet at the balance service.
    pub account_id: String,
    /// The card at the card issuer.
    pub card_id: String,
    /// Integer, in the currency's minor unit: 1 to 100 000 000 000.
    pub amount: i64,
    /// ISO 4217: three upper-case letters.
    pub currency: String,
    /// The issuer's settlement account at the bank (default `settlement-main`).
    #[serde(default)]
    pub settlement_account: Option<String>,
}

impl PaymentRequest {
    /// The payment, if every field is acceptable.
    pub fn into_payment(self) -> Result<Payment, ApiError> {
        check_id("payment_id", &self.payment_id)?;
        check_id("account_id", &self.account_id)?;
        check_id("card_id", &self.card_id)?;
        if let Some(s) = &self.settlement_account {
            check_id("settlement_account", s)?;
        }
        if !(1..=MAX_AMOUNT).contains(&self.amount) {
            return Err(ApiError::invalid(
                "amount",
                format!(
                    "amount must be 1 to {MAX_AMOUNT} (an integer in minor units), got {}",
                    self.amount
                ),
            ));
        }
        let currency = Currency::new(&self.currency).map_err(|e| ApiError::invalid("currency", e.to_string()))?;
        Ok(Payment {
            payment_id: self.payment_id,
            account_id: self.account_id,
            card_id: self.card_id,
            amount: self.amount,
            currency,
            settlement_account: self
                .settlement_account
                .unwrap_or_else(|| DEFAULT_SETTLEMENT_ACCOUNT.to_owned()),
        })
    }
}

/// `POST /v1/sagas`' body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SagaRequest {
    /// 1 to 64 branches, tried in parallel, confirmed or cancelled together.
    pub branches: Vec<BranchRequest>,
    /// The try deadline, 1 to 300 000 ms (default: the coordinator's).
    #[serde(default)]
    pub try_timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BranchRequest {
    /// A participant the coordinator knows (`balance`, `card-issuer`, `bank`, …).
    pub participant: String,
    /// What that participant expects.
    #[schema(value_type = Object)]
    pub payload: Value,
}

/// The `Idempotency-Key` header: required, 1 to [`MAX_ID_LEN`] visible characters.
pub fn idempotency_key(headers: &HeaderMap) -> Result<String, ApiError> {
    const FIELD: &str = "Idempotency-Key";
    let value = headers
        .get(FIELD)
        .ok_or_else(|| ApiError::invalid(FIELD, "the Idempotency-Key header is required"))?;
    let key = value
        .to_str()
        .map_err(|_| ApiError::invalid(FIELD, "the Idempotency-Key header must be visible ASCII"))?;
    check_id(FIELD, key)?;
    Ok(key.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn json() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h
    }

    fn payment(body: &str) -> Result<Payment, ApiError> {
        json_body::<PaymentRequest>(&json(), &Bytes::from(body.to_owned()))?.into_payment()
    }

    #[test]
    fn strict_payment_input_names_the_field() {
        let ok = r#"{"payment_id":"p1","account_id":"acct-1","card_id":"card-1","amount":5,"currency":"EUR"}"#;
        assert_eq!(payment(ok).unwrap().settlement_account, DEFAULT_SETTLEMENT_ACCOUNT);
        let cases = [
            (
                r#"{"payment_id":"p1","account_id":"a","card_id":"c","amount":5,"currency":"EUR","x":1}"#,
                "x",
            ),
            (
                r#"{"payment_id":"p1","account_id":"a","card_id":"c","currency":"EUR"}"#,
                "amount",
            ),
            (
                r#"{"payment_id":"p\u0000","account_id":"a","card_id":"c","amount":5,"currency":"EUR"}"#,
                "payment_id",
            ),
            (
                r#"{"payment_id":"p1","account_id":"a","card_id":"c","amount":5.5,"currency":"EUR"}"#,
                "amount",
            ),
            (
                r#"{"payment_id":"p1","account_id":"a","card_id":"c","amount":0,"currency":"EUR"}"#,
                "amount",
            ),
            (
                r#"{"payment_id":"p1","account_id":"a","card_id":"c","amount":100000000001,"currency":"EUR"}"#,
                "amount",
            ),
            (
                r#"{"payment_id":"p1","account_id":"a","card_id":"c","amount":5,"currency":"eur"}"#,
                "currency",
            ),
            (
                r#"{"payment_id":" ","account_id":"a","card_id":"c","amount":5,"currency":"EUR"}"#,
                "payment_id",
            ),
        ];
        for (body, field) in cases {
            let e = payment(body).unwrap_err();
            assert_eq!(
                (e.status.as_u16(), e.field.as_deref()),
                (422, Some(field)),
                "{body}: {e:?}"
            );
        }
        let long = format!(
            r#"{{"payment_id":"{}","account_id":"a","card_id":"c","amount":5,"currency":"EUR"}}"#,
            "p".repeat(129)
        );
        assert_eq!(payment(&long).unwrap_err().field.as_deref(), Some("payment_id"));
        assert_eq!(payment("{not json").unwrap_err().status, 400);
        let e = json_body::<PaymentRequest>(&HeaderMap::new(), &Bytes::from_static(b"{}")).unwrap_err();
        assert_eq!(e.status, 415);
    }

    #[test]
    fn saga_bodies_name_nested_fields() {
        let body = r#"{"branches":[{"participant":"bank","payload":{"a":"x\ny"}}]}"#;
        let e = json_body::<SagaRequest>(&json(), &Bytes::from_static(body.as_bytes())).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("branches[0].payload.a"));
        let body = r#"{"branches":[{"participant":"bank","payload":{},"extra":1}]}"#;
        let e = json_body::<SagaRequest>(&json(), &Bytes::from_static(body.as_bytes())).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("branches[0].extra"), "{e:?}");
    }
}
