//! What the engine counts and measures while it runs: commands published (for
//! "commands sent per saga" in benchmarks), and how far behind each participant's
//! command queue runs (which the timer task turns into a resend [`Pacing`]).
//!
//! Plain atomics and short-held locks: the relay updates it once per published batch,
//! the timer task once per queue sample, and readers take a snapshot.

use crate::machine::Pacing;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

#[derive(Debug, Default)]
pub struct EngineStats {
    /// Commands the relay published that the broker confirmed, resends included. A
    /// command published twice (the relay crashed or its delete failed after the
    /// confirm) counts twice: it was sent twice.
    pub commands_published: AtomicU64,
    /// Of [`EngineStats::commands_published`], the resends (send number 2 and up).
    pub resends: AtomicU64,
    /// Confirmed publishes per command queue, ever: with the queue's depth, the timer
    /// task derives how fast the participant consumes.
    published_by_queue: Mutex<HashMap<String, u64>>,
    /// The resend floors the timer task last derived from the queues' backlog.
    pacing: RwLock<Arc<Pacing>>,
}

impl EngineStats {
    /// Counts `n` commands the broker confirmed on `queue`, `resends` of them resends.
    pub(crate) fn record_published(&self, queue: &str, n: u64, resends: u64) {
        self.commands_published.fetch_add(n, Ordering::Relaxed);
        self.resends.fetch_add(resends, Ordering::Relaxed);
        let mut by_queue = self.published_by_queue.lock().expect("stats lock");
        match by_queue.get_mut(queue) {
            Some(total) => *total += n,
            None => {
                by_queue.insert(queue.to_owned(), n);
            }
        }
    }

    /// Every queue the relay has published to, with its confirmed publishes so far.
    pub(crate) fn published_by_queue(&self) -> Vec<(String, u64)> {
        let by_queue = self.published_by_queue.lock().expect("stats lock");
        by_queue.iter().map(|(q, n)| (q.clone(), *n)).collect()
    }

    /// The resend pacing in force: pass it to `machine::apply_paced` and
    /// `Saga::new_paced` so commands to a backed-up participant are resent no sooner
    /// than its queue drains. Empty while every queue keeps up.
    pub fn pacing(&self) -> Arc<Pacing> {
        self.pacing.read().expect("stats lock").clone()
    }

    pub(crate) fn set_pacing(&self, pacing: Pacing) {
        *self.pacing.write().expect("stats lock") = Arc::new(pacing);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishes_are_counted_in_total_and_per_queue() {
        let stats = EngineStats::default();
        stats.record_published("a", 3, 1);
        stats.record_published("b", 2, 0);
        stats.record_published("a", 4, 2);
        assert_eq!(stats.commands_published.load(Ordering::Relaxed), 9);
        assert_eq!(stats.resends.load(Ordering::Relaxed), 3);
        let mut by_queue = stats.published_by_queue();
        by_queue.sort();
        assert_eq!(by_queue, vec![("a".to_owned(), 7), ("b".to_owned(), 2)]);
        assert!(stats.pacing().is_empty());
        stats.set_pacing(Pacing::none().with_floor("bank", 3_000));
        assert_eq!(stats.pacing().floor_ms("bank"), 3_000);
    }
}
