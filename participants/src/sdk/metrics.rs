//! A participant runtime's Prometheus metrics. One set serves every runtime of a
//! process (each series is labelled with its participant): clones share their values.

use super::barrier::BarrierHit;
use kessai_transport::metrics::DeadLetters;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub participant: String,
    pub operation: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BarrierLabels {
    pub participant: String,
    pub hit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    pub queue: String,
}

fn operation_buckets() -> Histogram {
    // 0.1 ms … about 3.3 s: one command's barrier and business code.
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

#[derive(Clone, Debug)]
pub struct ParticipantMetrics {
    pub operations: Family<OperationLabels, Histogram, fn() -> Histogram>,
    pub barrier: Family<BarrierLabels, Counter>,
    pub dead_letters: DeadLetters,
    pub queue_depth: Family<QueueLabels, Gauge>,
}

impl Default for ParticipantMetrics {
    fn default() -> Self {
        Self::with_dead_letters(DeadLetters::default())
    }
}

impl ParticipantMetrics {
    /// Metrics whose dead-letter counts go to `dead_letters` (shared with the other
    /// consumers of the same process).
    pub fn with_dead_letters(dead_letters: DeadLetters) -> Self {
        Self {
            operations: Family::new_with_constructor(operation_buckets),
            barrier: Family::default(),
            dead_letters,
            queue_depth: Family::default(),
        }
    }

    /// Registers every family except the dead letters (registered once per process).
    pub fn register(&self, registry: &mut Registry) {
        registry.register_with_unit(
            "kessai_participant_operation_duration",
            "Time a participant spent on one command (barrier and business code, in the batch transaction), by participant, operation and outcome",
            Unit::Seconds,
            self.operations.clone(),
        );
        registry.register(
            "kessai_barrier_hits",
            "Commands the barrier answered without running them: duplicate (redelivery replayed), empty_cancel (cancel with no try), hanging_try (try after its cancel, refused)",
            self.barrier.clone(),
        );
        registry.register(
            "kessai_participant_queue_depth",
            "Commands waiting in a participant's queue (consumer lag), where the transport can tell",
            self.queue_depth.clone(),
        );
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

    pub(crate) fn barrier_hit(&self, participant: &str, hit: BarrierHit) {
        if hit != BarrierHit::First {
            self.barrier
                .get_or_create(&BarrierLabels {
                    participant: participant.to_owned(),
                    hit: hit.as_str(),
                })
                .inc();
        }
    }

    /// How many commands `participant`'s barrier answered as `hit`.
    pub fn barrier_hits(&self, participant: &str, hit: BarrierHit) -> u64 {
        self.barrier
            .get(&BarrierLabels {
                participant: participant.to_owned(),
                hit: hit.as_str(),
            })
            .map_or(0, |c| c.get())
    }
}
