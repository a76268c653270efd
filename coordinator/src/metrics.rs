//! The coordinator's Prometheus metrics. Counters and histograms are updated where
//! things happen (intake, drive, replies); gauges that describe the database (sagas by
//! state, stuck sagas, the outbox) and the broker (queue depths) are read when
//! `/metrics` is scraped ([`crate::Coordinator::refresh_metrics`]), so they are true of
//! every coordinator sharing the database, not of this process alone.
//!
//! Clones share their values: the service registers one set and hands it to the
//! coordinator through [`crate::CoordinatorConfig::metrics`].

use kessai_transport::metrics::DeadLetters;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FinishedLabels {
    pub kind: String,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub participant: String,
    pub operation: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResendLabels {
    pub participant: String,
    pub operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    pub queue: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn saga_buckets() -> Histogram {
    // 5 ms … about 164 s.
    Histogram::new(exponential_buckets(0.005, 2.0, 16))
}

fn operation_buckets() -> Histogram {
    // 1 ms … about 33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

#[derive(Clone, Debug)]
pub struct CoordinatorMetrics {
    pub started: Family<KindLabels, Counter>,
    pub finished: Family<FinishedLabels, Counter>,
    pub duration: HistogramFamily<FinishedLabels>,
    pub operations: HistogramFamily<OperationLabels>,
    pub resends: Family<ResendLabels, Counter>,
    pub dead_letters: DeadLetters,
    pub sagas: Family<StateLabels, Gauge>,
    pub stuck: Gauge,
    pub outbox_depth: Gauge,
    pub outbox_oldest_age: Gauge<f64, AtomicU64>,
    pub queue_depth: Family<QueueLabels, Gauge>,
    pub refused: Counter,
    pub unfinished: Gauge,
    pub admission_bound: Gauge,
}

impl Default for CoordinatorMetrics {
    fn default() -> Self {
        Self::with_dead_letters(DeadLetters::default())
    }
}

impl CoordinatorMetrics {
    /// Metrics whose dead-letter counts go to `dead_letters` (shared with the
    /// participants of the same process).
    pub fn with_dead_letters(dead_letters: DeadLetters) -> Self {
        Self {
            started: Family::default(),
            finished: Family::default(),
            duration: Family::new_with_constructor(saga_buckets),
            operations: Family::new_with_constructor(operation_buckets),
            resends: Family::default(),
            dead_letters,
            sagas: Family::default(),
            stuck: Gauge::default(),
            outbox_depth: Gauge::default(),
            outbox_oldest_age: Gauge::default(),
            queue_depth: Family::default(),
            refused: Counter::default(),
            unfinished: Gauge::default(),
            admission_bound: Gauge::default(),
        }
    }

    /// Registers every family except the dead letters (the process registers those
    /// once, for all its consumers).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "kessai_sagas_started",
            "Sagas created, by kind (repeated idempotency keys excluded)",
            self.started.clone(),
        );
        registry.register(
            "kessai_sagas_finished",
            "Sagas that reached a terminal state, by kind and outcome (confirmed, cancelled)",
            self.finished.clone(),
        );
        registry.register_with_unit(
            "kessai_saga_duration",
            "Time from a saga's creation to its terminal state, by kind and outcome",
            Unit::Seconds,
            self.duration.clone(),
        );
        registry.register_with_unit(
            "kessai_branch_operation_duration",
            "Time from the coordinator deciding a command to it applying the reply, by participant, operation and outcome",
            Unit::Seconds,
            self.operations.clone(),
        );
        registry.register(
            "kessai_resends",
            "Commands sent again because their answer did not come in time, by participant and operation",
            self.resends.clone(),
        );
        registry.register(
            "kessai_sagas",
            "Unfinished sagas by state, and finished ones, in the coordinator database (read at scrape)",
            self.sagas.clone(),
        );
        registry.register(
            "kessai_sagas_stuck",
            "Unfinished sagas flagged stuck (confirm or cancel resent past the threshold; retries go on)",
            self.stuck.clone(),
        );
        registry.register(
            "kessai_outbox_depth",
            "Commands committed but not yet confirmed by the broker",
            self.outbox_depth.clone(),
        );
        registry.register_with_unit(
            "kessai_outbox_oldest_age",
            "Age of the oldest outbox row (0 when empty)",
            Unit::Seconds,
            self.outbox_oldest_age.clone(),
        );
        registry.register(
            "kessai_queue_depth",
            "Messages waiting in a queue this coordinator publishes to or consumes (consumer lag), where the transport can tell",
            self.queue_depth.clone(),
        );
        registry.register(
            "kessai_admission_refused",
            "Submissions refused by admission control since start (HTTP 429)",
            self.refused.clone(),
        );
        registry.register(
            "kessai_admission_unfinished",
            "Unfinished sagas this coordinator counts against its admission bound",
            self.unfinished.clone(),
        );
        registry.register(
            "kessai_admission_bound",
            "The admission bound in force",
            self.admission_bound.clone(),
        );
    }

    pub(crate) fn saga_started(&self, kind: &str) {
        self.started.get_or_create(&KindLabels { kind: kind.to_owned() }).inc();
    }

    pub(crate) fn saga_finished(&self, kind: &str, outcome: &'static str, seconds: f64) {
        let labels = FinishedLabels {
            kind: kind.to_owned(),
            outcome,
        };
        self.finished.get_or_create(&labels).inc();
        self.duration.get_or_create(&labels).observe(seconds);
    }

    pub(crate) fn operation(&self, participant: &str, operation: &'static str, outcome: &'static str, seconds: f64) {
        self.operations
            .get_or_create(&OperationLabels {
                participant: participant.to_owned(),
                operation,
                outcome,
            })
            .observe(seconds);
    }

    pub(crate) fn resent(&self, participant: &str, operation: &'static str) {
        self.resends
            .get_or_create(&ResendLabels {
                participant: participant.to_owned(),
                operation,
            })
            .inc();
    }
}
