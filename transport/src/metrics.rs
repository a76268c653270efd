//! `kessai_dead_lettered_total{queue, reason}`: one counter family shared by every
//! consumer in a process (the coordinator's reply consumer, each participant runtime),
//! so that one name answers "what was dead-lettered, where, and why".
//!
//! Dead-letter reasons are free text (they name the field, the participant, the
//! bytes); the label is its class, from a fixed set, so a flood of odd messages
//! cannot grow the number of series.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeadLetterLabels {
    pub queue: String,
    pub reason: &'static str,
}

/// Counts dead-lettered messages by queue and reason class. Clones share the counts.
#[derive(Clone, Debug, Default)]
pub struct DeadLetters(Family<DeadLetterLabels, Counter>);

impl DeadLetters {
    /// Counts one message dead-lettered from `queue` for `reason`.
    pub fn record(&self, queue: &str, reason: &str) {
        self.0
            .get_or_create(&DeadLetterLabels {
                queue: queue.to_owned(),
                reason: reason_class(reason),
            })
            .inc();
    }

    /// How many were dead-lettered from `queue` with a reason of class `class`.
    pub fn count(&self, queue: &str, class: &'static str) -> u64 {
        self.0
            .get(&DeadLetterLabels {
                queue: queue.to_owned(),
                reason: class,
            })
            .map_or(0, |c| c.get())
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "kessai_dead_lettered",
            "Messages dead-lettered, by queue and reason class",
            self.0.clone(),
        );
    }
}

/// The class of a dead-letter reason: `signature`, `headers`, `undecodable`,
/// `reply_to`, `not_sent` (a reply its saga never asked for), `unknown_saga`,
/// `wrong_queue` or `invalid` (anything else a message failed).
pub fn reason_class(reason: &str) -> &'static str {
    let r = reason.to_ascii_lowercase();
    if r.contains("signature") || r.contains("unsigned") {
        "signature"
    } else if r.contains("header") {
        "headers"
    } else if r.contains("undecodable") || r.contains("decode") || r.contains("expected") || r.contains("json") {
        "undecodable"
    } else if r.contains("reply_to") {
        "reply_to"
    } else if r.contains("unknown saga") || r.contains("has no branch") {
        "unknown_saga"
    } else if r.starts_with("stale/forged") || r.starts_with("reply from ") {
        "not_sent"
    } else if r.contains("queue") {
        "wrong_queue"
    } else {
        "invalid"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_fall_into_a_few_classes_and_are_counted_per_queue() {
        let d = DeadLetters::default();
        d.record("q", "bad signature");
        d.record("q", "unsigned message");
        d.record("q", "undecodable envelope: expected value at line 1");
        d.record("r", "reply_to \"x\" is not a queue bank answers to");
        assert_eq!(d.count("q", "signature"), 2);
        assert_eq!(d.count("q", "undecodable"), 1);
        assert_eq!(d.count("r", "reply_to"), 1);
        assert_eq!(d.count("r", "signature"), 0);
        let mut registry = Registry::default();
        d.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("kessai_dead_lettered_total{queue=\"q\",reason=\"signature\"} 2"),
            "{text}"
        );
    }
}
