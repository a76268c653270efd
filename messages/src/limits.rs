//! Limits on headers, the same for the envelope's own `headers` and for broker-level
//! headers (AMQP headers, SQS message attributes).
//!
//! Why: headers are copied from message to message (a command's onto its reply, a
//! delivery's onto its dead letter) and into logs and spans. Bounding their number and
//! size, and keeping their names to a plain alphabet, keeps whoever can write to the
//! broker from growing every message, log line or span after it.
//!
//! Brokers add headers of their own (RabbitMQ's `x-delivery-count`, our transports'
//! `x-kessai-dead-letter-*`); their names and values keep to these limits.

use std::collections::BTreeMap;

/// Most headers a message may carry.
pub const MAX_HEADERS: usize = 32;
/// Longest header name, in bytes.
pub const MAX_HEADER_NAME_LEN: usize = 128;
/// Longest header value, in bytes.
pub const MAX_HEADER_VALUE_LEN: usize = 4096;

/// Whether `c` may appear in a header name: ASCII letters, digits and `-_.:`.
fn name_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':')
}

/// A header name as a reason may quote it: at most 40 characters, escaped.
fn quoted(name: &str) -> String {
    let mut short: String = name.chars().take(40).collect();
    if short.len() < name.len() {
        short.push('…');
    }
    format!("{short:?}")
}

/// Checks one header; `Err` holds why it is refused.
pub fn check_header(name: &str, value: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a header has an empty name".into());
    }
    if name.len() > MAX_HEADER_NAME_LEN {
        return Err(format!(
            "header name {} is {} bytes (at most {MAX_HEADER_NAME_LEN})",
            quoted(name),
            name.len()
        ));
    }
    if !name.bytes().all(name_char) {
        return Err(format!(
            "header name {} has characters other than ASCII letters, digits and -_.:",
            quoted(name)
        ));
    }
    if value.len() > MAX_HEADER_VALUE_LEN {
        return Err(format!(
            "header {} has a {}-byte value (at most {MAX_HEADER_VALUE_LEN})",
            quoted(name),
            value.len()
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("header {} has control characters in its value", quoted(name)));
    }
    Ok(())
}

/// Checks a message's headers against the limits above; `Err` holds why they are
/// refused, fit for a dead-letter reason.
pub fn check_headers(headers: &BTreeMap<String, String>) -> Result<(), String> {
    if headers.len() > MAX_HEADERS {
        return Err(format!("{} headers (at most {MAX_HEADERS})", headers.len()));
    }
    headers.iter().try_for_each(|(name, value)| check_header(name, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(name: &str, value: &str) -> BTreeMap<String, String> {
        BTreeMap::from([(name.to_owned(), value.to_owned())])
    }

    #[test]
    fn ordinary_headers_pass() {
        let mut headers = BTreeMap::new();
        headers.insert(
            "traceparent".into(),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
        );
        headers.insert("tracestate".into(), "vendor=opaque,other=x:y".into());
        headers.insert("x-kessai-dead-letter-reason".into(), "undecodable envelope: …".into());
        headers.insert("x-kessai-signature".into(), "ab".repeat(32));
        headers.insert("x-delivery-count".into(), "3".into());
        headers.insert("ns:key.v_1".into(), String::new());
        headers.insert("note".into(), "ключ=значение".into());
        assert_eq!(check_headers(&headers), Ok(()));
        assert_eq!(check_headers(&BTreeMap::new()), Ok(()));
    }

    #[test]
    fn names_are_bounded_and_plain() {
        assert!(check_headers(&one("", "v")).unwrap_err().contains("empty name"));
        assert_eq!(check_headers(&one(&"n".repeat(MAX_HEADER_NAME_LEN), "v")), Ok(()));
        let long = check_headers(&one(&"n".repeat(300), "v")).unwrap_err();
        assert!(long.contains("300 bytes"), "{long}");
        assert!(long.len() < 120, "the reason quotes a short prefix: {long}");
        for bad in ["bad name", "tab\tname", "ключ", "a/b", "a=b", "a\u{0}b"] {
            let reason = check_headers(&one(bad, "v")).unwrap_err();
            assert!(reason.contains("characters"), "{bad:?}: {reason}");
        }
    }

    #[test]
    fn values_are_bounded_and_free_of_control_characters() {
        assert_eq!(check_headers(&one("v", &"x".repeat(MAX_HEADER_VALUE_LEN))), Ok(()));
        let long = check_headers(&one("v", &"x".repeat(MAX_HEADER_VALUE_LEN + 1))).unwrap_err();
        assert!(long.contains("4097-byte"), "{long}");
        for bad in ["a\nb", "a\rb", "\t", "a\u{0}", "\u{7f}", "\u{85}"] {
            let reason = check_headers(&one("v", bad)).unwrap_err();
            assert!(reason.contains("control"), "{bad:?}: {reason}");
        }
    }

    #[test]
    fn the_count_is_bounded() {
        let many = |n: usize| (0..n).map(|i| (format!("h{i}"), "v".to_owned())).collect();
        assert_eq!(check_headers(&many(MAX_HEADERS)), Ok(()));
        let reason = check_headers(&many(MAX_HEADERS + 1)).unwrap_err();
        assert!(reason.contains("33 headers"), "{reason}");
    }
}
