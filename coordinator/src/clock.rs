//! Time, behind a seam.

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix milliseconds now. Stored timestamps and deadlines come from here.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> i64;
}

/// Wall-clock time: comparable between coordinator processes sharing a database.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        system_now_ms()
    }
}

fn system_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Wall-clock time at creation, advanced by tokio's clock: under
/// `tokio::time::pause` the coordinator's deadlines move with the test's time.
#[derive(Clone, Copy, Debug)]
pub struct TokioClock {
    base_ms: i64,
    start: tokio::time::Instant,
}

impl TokioClock {
    pub fn new() -> Self {
        Self {
            base_ms: system_now_ms(),
            start: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> i64 {
        self.base_ms + self.start.elapsed().as_millis() as i64
    }
}

/// A clock that moves only when told to: tests drive deadlines and backoff with it
/// while tokio's own timers run in real time.
///
/// (Tokio's paused clock is no substitute here: it auto-advances whenever every task
/// is waiting, and with SQLite every query is such a wait — sqlx runs SQLite on its
/// own thread — so paused time leaps ahead by whole timeouts mid-transaction.)
#[derive(Clone, Debug)]
pub struct ManualClock {
    now: std::sync::Arc<std::sync::atomic::AtomicI64>,
}

impl ManualClock {
    /// Starts at the current wall-clock time.
    pub fn new() -> Self {
        Self {
            now: std::sync::Arc::new(std::sync::atomic::AtomicI64::new(system_now_ms())),
        }
    }

    pub fn advance(&self, by: std::time::Duration) {
        self.now
            .fetch_add(by.as_millis() as i64, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.now.load(std::sync::atomic::Ordering::SeqCst)
    }
}
