//! Admission control: a bound on unfinished sagas, so a burst is refused at the door
//! (HTTP 429 with `Retry-After`, nothing created) instead of being accepted and then
//! cancelled by try deadlines it spent waiting in queues.
//!
//! The bound is either fixed by config or, by default, sized from measured capacity:
//! Little's law says the unfinished sagas a coordinator holds are its completion rate
//! times how long each waits, so allowing `rate × window` unfinished sagas keeps the
//! work queued ahead of a new saga to about `window` — well inside the try timeout and
//! the first resend — and a saga that is admitted has time to finish. While the coordinator is not
//! saturated, sagas finish as fast as they are admitted and the bound grows with the
//! load (each window admits more than the last); once it is saturated, the completion
//! rate is its capacity and the bound settles there. Before anything has finished, a
//! cold start admits up to a fixed number.
//!
//! The count is this process's view: incremented on every saga it creates,
//! decremented on every saga it finishes, and re-read from the database every
//! [`RESYNC`] so sagas finished by another coordinator sharing the database (or left
//! unfinished by a crash) are counted right. Coordinators sharing a database therefore
//! share one bound on the database's unfinished sagas — which is what protects the
//! participants they all feed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The smallest adaptive bound once a completion rate has been measured.
const MIN_MEASURED: u64 = 64;

/// How often the unfinished count is re-read from the database and the adaptive bound
/// recomputed.
pub const RESYNC: Duration = Duration::from_secs(1);

/// How the bound is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdmissionLimit {
    /// At most this many unfinished sagas.
    Fixed(u64),
    /// `completion rate × window`, between `min` and `max`.
    Adaptive {
        /// How much queued work a new saga may find ahead of it.
        window: Duration,
        /// The bound before any completion rate has been measured (a cold start's
        /// burst is admitted up to this).
        min: u64,
        /// The ceiling (memory: each unfinished saga costs a few rows, not RAM).
        max: u64,
    },
}

impl AdmissionLimit {
    /// The default for a given try timeout and first try resend: the window is a
    /// quarter of the timeout, so queueing can never eat the try deadline, and at most
    /// half the first resend interval, so an admitted saga is normally answered before
    /// its first resend — waiting longer would only add duplicate commands to the
    /// queues it waits in.
    pub fn adaptive_for(try_timeout: Duration, first_try_resend: Duration) -> Self {
        AdmissionLimit::Adaptive {
            window: (try_timeout / 4).min(first_try_resend / 2),
            min: 1_000,
            max: 1_000_000,
        }
    }
}

/// A submission refused by admission control.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused {
    /// When the client should try again.
    pub retry_after: Duration,
}

/// The running admission state. Lock-free: every submission touches it.
#[derive(Debug)]
pub struct Admission {
    limit: AdmissionLimit,
    /// Unfinished sagas as this process last knew them.
    unfinished: AtomicU64,
    /// The bound in force.
    bound: AtomicU64,
    /// Sagas this process finished, ever (rate sampling).
    finished: AtomicU64,
    /// Submissions refused, ever.
    refused: AtomicU64,
    /// Smoothed completion rate, sagas per second × 1000 (integer, for atomics).
    rate_milli: AtomicU64,
    last_sample: std::sync::Mutex<(Instant, u64)>,
}

impl Admission {
    pub fn new(limit: AdmissionLimit) -> Self {
        let bound = match limit {
            AdmissionLimit::Fixed(n) => n,
            AdmissionLimit::Adaptive { min, .. } => min,
        };
        Admission {
            limit,
            unfinished: AtomicU64::new(0),
            bound: AtomicU64::new(bound),
            finished: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            rate_milli: AtomicU64::new(0),
            last_sample: std::sync::Mutex::new((Instant::now(), 0)),
        }
    }

    /// Takes a slot for a saga about to be created, or says when to come back. The
    /// caller reports a refusal it stands by with [`Admission::refuse`].
    pub fn try_admit(&self) -> Result<(), Refused> {
        let bound = self.bound.load(Ordering::Relaxed);
        let taken = self
            .unfinished
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < bound).then_some(n + 1));
        match taken {
            Ok(_) => Ok(()),
            Err(n) => Err(Refused {
                retry_after: self.retry_after(n.saturating_sub(bound) + 1),
            }),
        }
    }

    /// Counts a submission refused with 429.
    pub fn refuse(&self, refused: Refused) -> Refused {
        self.refused.fetch_add(1, Ordering::Relaxed);
        refused
    }

    /// Gives back a slot taken for a saga that was not created (a duplicate key, an
    /// error).
    pub fn release(&self) {
        self.release_n(1);
    }

    fn release_n(&self, n: u64) {
        let _ = self
            .unfinished
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| Some(u.saturating_sub(n)));
    }

    /// `n` sagas reached a terminal state in this process.
    pub fn finished(&self, n: u64) {
        self.finished.fetch_add(n, Ordering::Relaxed);
        self.release_n(n);
    }

    /// Sets the unfinished count from the database and recomputes the adaptive bound.
    ///
    /// The completion rate only says what the participants can take while there was
    /// enough work to keep them busy: it follows any rise at once, but falls only when
    /// the sample was taken near the bound. An idle spell therefore does not shrink the
    /// bound, and a burst after it is admitted as far as the last measured capacity
    /// allows; nor does a stall in which nothing finishes (a broker outage). Until
    /// anything has finished, the bound is `min`.
    pub fn resync(&self, unfinished_in_db: u64) {
        let busy = unfinished_in_db.max(self.unfinished.load(Ordering::Acquire)) * 2 >= self.bound();
        self.unfinished.store(unfinished_in_db, Ordering::Release);
        let finished = self.finished.load(Ordering::Relaxed);
        let mut last = self.last_sample.lock().expect("admission lock");
        let elapsed = last.0.elapsed().as_secs_f64();
        if elapsed > 0.0 {
            let rate = (finished - last.1) as f64 / elapsed;
            let old = self.rate_milli.load(Ordering::Relaxed) as f64 / 1000.0;
            let next = if rate > old {
                rate
            } else if busy && rate > 0.0 {
                // Some finished, fewer than before, with work waiting: capacity fell.
                // None finished at all is a stall (broker or database away), not a
                // measure of capacity: shrinking the bound then would only refuse the
                // work that recovery can take.
                0.7 * old + 0.3 * rate
            } else {
                old
            };
            self.rate_milli.store((next * 1000.0) as u64, Ordering::Relaxed);
            *last = (Instant::now(), finished);
        }
        if let AdmissionLimit::Adaptive { window, min, max } = self.limit {
            let rate = self.rate_milli.load(Ordering::Relaxed) as f64 / 1000.0;
            let bound = if rate > 0.0 {
                ((rate * window.as_secs_f64()) as u64).max(MIN_MEASURED)
            } else {
                min
            };
            self.bound.store(bound.min(max), Ordering::Relaxed);
        }
    }

    /// How long until `excess` more sagas have finished, at the measured rate (at
    /// least one second: `Retry-After` counts whole seconds).
    fn retry_after(&self, excess: u64) -> Duration {
        let rate = self.rate_milli.load(Ordering::Relaxed) as f64 / 1000.0;
        let secs = if rate > 0.0 { (excess as f64 / rate).ceil() } else { 1.0 };
        Duration::from_secs((secs as u64).clamp(1, 60))
    }

    pub fn unfinished(&self) -> u64 {
        self.unfinished.load(Ordering::Relaxed)
    }

    pub fn bound(&self) -> u64 {
        self.bound.load(Ordering::Relaxed)
    }

    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// The smoothed completion rate, sagas per second.
    pub fn rate(&self) -> f64 {
        self.rate_milli.load(Ordering::Relaxed) as f64 / 1000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fixed_bound_refuses_beyond_it_and_frees_slots_as_sagas_finish() {
        let a = Admission::new(AdmissionLimit::Fixed(2));
        assert!(a.try_admit().is_ok());
        assert!(a.try_admit().is_ok());
        let refused = a.refuse(a.try_admit().unwrap_err());
        assert!(refused.retry_after >= Duration::from_secs(1));
        assert_eq!(a.refused(), 1);
        a.finished(1);
        assert!(a.try_admit().is_ok());
        assert!(a.try_admit().is_err());
        a.release();
        assert_eq!(a.unfinished(), 1);
    }

    #[test]
    fn resync_takes_the_database_count() {
        let a = Admission::new(AdmissionLimit::Fixed(10));
        a.resync(10);
        assert!(a.try_admit().is_err());
        a.resync(3);
        assert!(a.try_admit().is_ok());
        assert_eq!(a.unfinished(), 4);
    }

    #[test]
    fn the_adaptive_bound_follows_the_completion_rate() {
        let a = Admission::new(AdmissionLimit::Adaptive {
            window: Duration::from_secs(2),
            min: 10,
            max: 1_000_000,
        });
        assert_eq!(a.bound(), 10);
        std::thread::sleep(Duration::from_millis(100));
        a.finished(1_000);
        a.resync(0);
        // About 10,000 sagas/s over the sample → about 20,000 allowed.
        assert!(a.bound() > 5_000, "bound {}", a.bound());
        assert!(a.bound() <= 25_000, "bound {}", a.bound());
    }

    #[test]
    fn idle_and_stalled_spells_keep_the_bound_and_a_busy_slow_one_lowers_it() {
        let a = Admission::new(AdmissionLimit::Adaptive {
            window: Duration::from_secs(1),
            min: 1_000,
            max: 1_000_000,
        });
        std::thread::sleep(Duration::from_millis(100));
        a.finished(500);
        a.resync(0);
        let measured = a.bound();
        assert!(measured > 2_000, "bound {measured}");
        // Nothing finished, nothing waiting: idle says nothing about capacity.
        std::thread::sleep(Duration::from_millis(100));
        a.resync(0);
        assert_eq!(a.bound(), measured);
        // Nothing finished at all while the bound was full: a stall, not capacity.
        std::thread::sleep(Duration::from_millis(100));
        a.resync(measured);
        assert_eq!(a.bound(), measured);
        // A few finished while the bound was full: capacity fell, so does the bound.
        std::thread::sleep(Duration::from_millis(100));
        a.finished(5);
        a.resync(measured);
        assert!(a.bound() < measured, "bound {} after {measured}", a.bound());
        assert!(a.bound() >= MIN_MEASURED);
    }
}
