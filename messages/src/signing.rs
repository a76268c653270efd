//! HMAC-SHA256 signatures of messages with a key shared by the coordinators and the
//! participants.
//!
//! The signature covers the exact payload bytes a transport carries and travels beside
//! them as the broker-level header [`SIGNATURE_HEADER`] (lowercase hex). A receiver
//! checks it before decoding anything, so bytes nobody with the key wrote are never
//! parsed, let alone acted on.
//!
//! What it does not do: hide the payload, or tell one key holder from another (a
//! participant holding the key could sign a command). Replaying a signed message is
//! possible and harmless: every duplicate is absorbed by the protocol.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::collections::BTreeMap;
use std::fmt;

/// The broker-level header holding a message's signature.
pub const SIGNATURE_HEADER: &str = "x-kessai-signature";
/// Shortest key accepted, in bytes: shorter keys are guessable.
pub const MIN_KEY_LEN: usize = 16;

/// Why a key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a message key must be at least {MIN_KEY_LEN} bytes (got {0})")]
pub struct KeyTooShort(pub usize);

/// The shared secret. Its `Debug` never shows the key.
#[derive(Clone)]
pub struct MessageKey {
    key: Vec<u8>,
}

impl MessageKey {
    /// A key of at least [`MIN_KEY_LEN`] bytes.
    pub fn new(key: impl Into<Vec<u8>>) -> Result<Self, KeyTooShort> {
        let key = key.into();
        if key.len() < MIN_KEY_LEN {
            return Err(KeyTooShort(key.len()));
        }
        Ok(Self { key })
    }

    fn mac(&self, payload: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(payload);
        mac
    }
}

impl fmt::Debug for MessageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MessageKey(<redacted>)")
    }
}

/// The signature of `payload`: the value of its [`SIGNATURE_HEADER`].
pub fn sign(key: &MessageKey, payload: &[u8]) -> String {
    let tag = key.mac(payload).finalize().into_bytes();
    let mut out = String::with_capacity(tag.len() * 2);
    for b in tag.iter() {
        out.push(char::from_digit(u32::from(b >> 4), 16).expect("a nibble"));
        out.push(char::from_digit(u32::from(b & 0xf), 16).expect("a nibble"));
    }
    out
}

/// Checks that `headers` hold a valid signature of `payload`, in constant time. `Err`
/// holds the dead-letter reason: `unsigned message` or `bad signature`.
pub fn verify(key: &MessageKey, payload: &[u8], headers: &BTreeMap<String, String>) -> Result<(), String> {
    let Some(signature) = headers.get(SIGNATURE_HEADER) else {
        return Err("unsigned message".into());
    };
    let Some(tag) = from_hex(signature) else {
        return Err("bad signature".into());
    };
    key.mac(payload)
        .verify_slice(&tag)
        .map_err(|_| "bad signature".to_owned())
}

/// Signs an outgoing message when a key is configured: adds the signature of
/// `payload` to its broker `headers`. With no key, leaves them as they are.
pub fn seal(key: Option<&MessageKey>, payload: &[u8], headers: &mut BTreeMap<String, String>) {
    if let Some(key) = key {
        headers.insert(SIGNATURE_HEADER.to_owned(), sign(key, payload));
    }
}

/// What every consumer checks before it parses a byte of a received message: its
/// broker headers are within [`crate::limits`], and, when a key is configured, it is
/// signed with it. `Err` holds the dead-letter reason.
pub fn admit(key: Option<&MessageKey>, payload: &[u8], headers: &BTreeMap<String, String>) -> Result<(), String> {
    crate::limits::check_headers(headers).map_err(|e| format!("headers: {e}"))?;
    match key {
        Some(key) => verify(key, payload, headers),
        None => Ok(()),
    }
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.as_bytes()
        .chunks(2)
        .map(|pair| {
            let hi = char::from(pair[0]).to_digit(16)?;
            let lo = char::from(pair[1]).to_digit(16)?;
            Some((hi * 16 + lo) as u8)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> MessageKey {
        MessageKey::new(*b"0123456789abcdef-shared").unwrap()
    }

    fn signed(payload: &[u8], key: &MessageKey) -> BTreeMap<String, String> {
        BTreeMap::from([(SIGNATURE_HEADER.to_owned(), sign(key, payload))])
    }

    #[test]
    fn a_signature_verifies_with_its_key_only() {
        let payload = br#"{"v":1}"#;
        let headers = signed(payload, &key());
        assert_eq!(headers[SIGNATURE_HEADER].len(), 64);
        assert_eq!(verify(&key(), payload, &headers), Ok(()));
        let other = MessageKey::new(*b"another key, 16+ bytes").unwrap();
        assert_eq!(verify(&other, payload, &headers), Err("bad signature".into()));
    }

    #[test]
    fn it_covers_every_byte() {
        let payload = br#"{"v":1,"amount":5}"#.to_vec();
        let headers = signed(&payload, &key());
        for i in 0..payload.len() {
            let mut tampered = payload.clone();
            tampered[i] ^= 1;
            assert_eq!(
                verify(&key(), &tampered, &headers),
                Err("bad signature".into()),
                "byte {i}"
            );
        }
        assert!(verify(&key(), &payload[..payload.len() - 1], &headers).is_err());
    }

    #[test]
    fn missing_or_malformed_signatures_are_refused() {
        let payload = b"x";
        assert_eq!(
            verify(&key(), payload, &BTreeMap::new()),
            Err("unsigned message".into())
        );
        let good = sign(&key(), payload);
        for bad in [
            "",
            "zz",
            "abc",
            &good[..62],
            &good.to_uppercase()[..60],
            &format!("{good}00"),
        ] {
            let headers = BTreeMap::from([(SIGNATURE_HEADER.to_owned(), bad.to_owned())]);
            assert_eq!(
                verify(&key(), payload, &headers),
                Err("bad signature".into()),
                "{bad:?}"
            );
        }
        // Hex is read case-insensitively: the same bytes.
        let headers = BTreeMap::from([(SIGNATURE_HEADER.to_owned(), good.to_uppercase())]);
        assert_eq!(verify(&key(), payload, &headers), Ok(()));
    }

    #[test]
    fn known_answer() {
        // RFC 4231, test case 2 ("Jefe" is shorter than our minimum, so build the MAC
        // directly to check the hex encoding against the published value).
        let k = MessageKey { key: b"Jefe".to_vec() };
        assert_eq!(
            sign(&k, b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn keys_are_never_printed_and_short_ones_refused() {
        let k = MessageKey::new("super-secret-value-123").unwrap();
        let shown = format!("{k:?}");
        assert!(!shown.contains("super"), "{shown}");
        assert_eq!(MessageKey::new("short").unwrap_err(), KeyTooShort(5));
    }
}
