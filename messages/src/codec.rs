//! Encoding and decoding. JSON: readable in a broker's management UI and in a
//! dead-letter queue, which is where SREs meet a message that went wrong.

use crate::envelope::{Body, Envelope, Outcome, SCHEMA_VERSION};
use thiserror::Error;

/// Why bytes from a queue are not a message kessai can act on. Every variant is
/// permanent: redelivering the same bytes cannot help, so the message is dead-lettered
/// with `to_string()` as its reason.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    #[error("not a JSON object: {0}")]
    NotJson(String),
    #[error("no schema version field `v`")]
    MissingVersion,
    #[error("unsupported schema version {found} (this build reads {supported})")]
    UnsupportedVersion { found: u64, supported: u16 },
    #[error("malformed envelope: {0}")]
    Malformed(String),
    #[error("invalid envelope: {0}")]
    Invalid(String),
}

impl Envelope {
    pub fn encode(&self) -> Vec<u8> {
        // Serialising these types cannot fail: every map key is a string.
        serde_json::to_vec(self).expect("envelope serialises")
    }

    /// Decodes and validates. The version is read before the rest, so a future
    /// version with a different shape is reported as such, not as "malformed".
    pub fn decode(bytes: &[u8]) -> Result<Envelope, DecodeError> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| DecodeError::NotJson(e.to_string()))?;
        let object = value
            .as_object()
            .ok_or_else(|| DecodeError::NotJson("top level is not an object".into()))?;
        let version = match object.get("v") {
            None => return Err(DecodeError::MissingVersion),
            Some(v) => v
                .as_u64()
                .ok_or_else(|| DecodeError::Malformed("`v` is not an unsigned integer".into()))?,
        };
        if version != u64::from(SCHEMA_VERSION) {
            return Err(DecodeError::UnsupportedVersion {
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        let envelope: Envelope = serde_json::from_value(value).map_err(|e| DecodeError::Malformed(e.to_string()))?;
        envelope.validate()?;
        Ok(envelope)
    }

    /// Checks what serde's types cannot express.
    pub fn validate(&self) -> Result<(), DecodeError> {
        if self.attempt == 0 {
            return Err(DecodeError::Invalid("attempt must be at least 1".into()));
        }
        crate::limits::check_headers(&self.headers).map_err(DecodeError::Invalid)?;
        match &self.body {
            Body::Command(c) => {
                if c.participant.trim().is_empty() {
                    return Err(DecodeError::Invalid("command has an empty participant".into()));
                }
                if c.reply_to.trim().is_empty() {
                    return Err(DecodeError::Invalid("command has an empty reply_to".into()));
                }
            }
            Body::Reply(r) => {
                if r.participant.trim().is_empty() {
                    return Err(DecodeError::Invalid("reply has an empty participant".into()));
                }
                if let Outcome::Rejected { reason } | Outcome::Retryable { reason } = &r.outcome
                    && reason.trim().is_empty()
                {
                    return Err(DecodeError::Invalid("a refusal must give its reason".into()));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BranchId, Command, Operation, SagaId};

    fn sample() -> Envelope {
        let mut e = Envelope::command(
            SagaId::new(),
            BranchId(2),
            Operation::Try,
            1,
            Some(1_700_000_000_000),
            Command {
                participant: "bank".into(),
                reply_to: "kessai.coordinator.replies".into(),
                payload: serde_json::json!({"amount": 5}),
            },
        );
        e.headers.insert(
            "traceparent".into(),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
        );
        e
    }

    #[test]
    fn round_trips() {
        let e = sample();
        assert_eq!(Envelope::decode(&e.encode()).unwrap(), e);
        let r = e.reply("bank", Outcome::rejected("frozen"));
        let back = Envelope::decode(&r.encode()).unwrap();
        assert_eq!(back.saga_id, e.saga_id);
        assert_eq!(back.attempt, 1);
        assert_eq!(back.headers, e.headers);
        assert_eq!(back.as_reply().unwrap().outcome, Outcome::rejected("frozen"));
    }

    #[test]
    fn rejects_unknown_version_before_shape() {
        let err = Envelope::decode(br#"{"v": 2, "whatever": true}"#).unwrap_err();
        assert_eq!(err, DecodeError::UnsupportedVersion { found: 2, supported: 1 });
    }

    #[test]
    fn rejects_garbage_with_typed_errors() {
        assert!(matches!(
            Envelope::decode(b"\xff\x00not json"),
            Err(DecodeError::NotJson(_))
        ));
        assert!(matches!(Envelope::decode(b"[1,2]"), Err(DecodeError::NotJson(_))));
        assert_eq!(Envelope::decode(br#"{"saga_id": 1}"#), Err(DecodeError::MissingVersion));
        assert!(matches!(
            Envelope::decode(br#"{"v": 1, "saga_id": "nope"}"#),
            Err(DecodeError::Malformed(_))
        ));
        let mut e = sample();
        e.attempt = 0;
        assert!(matches!(Envelope::decode(&e.encode()), Err(DecodeError::Invalid(_))));
    }

    #[test]
    fn headers_beyond_the_limits_are_invalid() {
        let mut e = sample();
        e.headers.insert("n".repeat(300), "v".into());
        let err = Envelope::decode(&e.encode()).unwrap_err();
        assert!(
            matches!(&err, DecodeError::Invalid(r) if r.contains("300 bytes")),
            "{err}"
        );
        let mut e = sample();
        e.headers.insert("note".into(), "line\nbreak".into());
        assert!(matches!(Envelope::decode(&e.encode()), Err(DecodeError::Invalid(_))));
        let mut e = sample();
        e.headers.extend((0..40).map(|i| (format!("h{i}"), "v".to_owned())));
        assert!(matches!(Envelope::decode(&e.encode()), Err(DecodeError::Invalid(_))));
        // A reply carries its command's headers: the same limits.
        let mut r = sample().reply("bank", Outcome::Ok);
        r.headers.insert("bad name".into(), "v".into());
        assert!(matches!(Envelope::decode(&r.encode()), Err(DecodeError::Invalid(_))));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = Envelope::decode(&bytes);
        }
    }
}
