//! Timers live in the database as each saga's `wake_at`. This task wakes due sagas
//! (try deadlines, resends, the stuck flag) and, at start, resumes every unfinished
//! saga by resending what it waits on.
//!
//! It also paces resends by what the transport can tell. Every [`SAMPLE_EVERY`] it
//! asks the depth of each command queue the relay publishes to
//! ([`Transport::pending`](kessai_transport::Transport::pending)) and estimates how fast
//! the participant consumes: the depth's fall plus what was published meanwhile, over
//! the window, smoothed. Depth over that rate is how long a command sent now waits in
//! the queue; while it is long, a resend on the plain backoff would only land behind
//! its own original. So each participant's resend delay gets a floor of
//! [`DRAIN_MARGIN`] × the drain time (the machine caps it at the policy's max), which
//! the engine passes to the machine as a [`Pacing`]. A transport that cannot tell
//! (`Ok(None)`), an error or a slow answer means no floor for that queue: the plain
//! backoff, as before.

use super::Inner;
use super::drive;
use crate::Error;
use crate::machine::{Actor, Event, Pacing};
use crate::store;
use futures::future::join_all;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// How often command queues are sampled, at most.
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_millis(500);

/// How long one depth query may take before its sample counts as unknown.
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(2);

/// A resend waits at least this many times a queue's estimated drain time: the drain
/// estimate is rough, and the resend must not arrive while the original still waits.
pub(crate) const DRAIN_MARGIN: f64 = 2.0;

/// The slowest consume rate assumed (messages per second). A queue that did not move
/// at all in a window is treated as draining this fast, so its floor grows with its
/// depth (one lone message: 2 s) instead of jumping straight to the cap.
const MIN_RATE: f64 = 1.0;

/// Weight of the newest window in the smoothed rate: consumers take messages in
/// batches, so one window alone is noisy.
const SMOOTHING: f64 = 0.5;

pub(crate) async fn run(inner: Arc<Inner>, cancel: CancellationToken) -> Result<(), Error> {
    tokio::join!(tick(&inner, &cancel), pace(&inner, &cancel));
    Ok(())
}

/// Wakes due sagas every tick interval.
async fn tick(inner: &Inner, cancel: &CancellationToken) {
    let limit = inner.config.batch_size as u64;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(inner.config.tick_interval) => {}
        }
        loop {
            match drive::drive_due(inner, limit).await {
                Ok(n) if (n as u64) == limit && !cancel.is_cancelled() => continue,
                Ok(_) => break,
                Err(e) => {
                    warn!(error = %e, "timer batch failed; will retry");
                    break;
                }
            }
        }
    }
}

/// Samples the command queues and publishes the resulting [`Pacing`] in the stats,
/// where the engine's transitions read it.
async fn pace(inner: &Inner, cancel: &CancellationToken) {
    let mut gauges: HashMap<String, Gauge> = HashMap::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(SAMPLE_EVERY) => {}
        }
        let queues = inner.stats.published_by_queue();
        if queues.is_empty() {
            continue;
        }
        let samples = join_all(queues.into_iter().map(|(queue, published)| async move {
            let depth = match tokio::time::timeout(SAMPLE_TIMEOUT, inner.transport.pending(&queue)).await {
                Ok(Ok(depth)) => depth,
                Ok(Err(e)) => {
                    debug!(queue = %queue, error = %e, "queue depth unknown; resends not paced");
                    None
                }
                Err(_) => None,
            };
            (queue, published, depth)
        }))
        .await;
        let at = Instant::now();
        let mut pacing = Pacing::none();
        for (queue, published, depth) in samples {
            let Some(participant) = inner.config.topology.participant_of(&queue) else {
                continue;
            };
            let Some(depth) = depth else {
                gauges.remove(&queue);
                continue;
            };
            let floor = match gauges.get_mut(&queue) {
                Some(gauge) => gauge.observe(at, depth, published),
                None => {
                    gauges.insert(queue.clone(), Gauge::new(at, depth, published));
                    0
                }
            };
            pacing.set_floor(participant, floor);
        }
        let before = inner.stats.pacing();
        if *before != pacing {
            log_change(&before, &pacing, &gauges, &inner.config.topology);
            inner.stats.set_pacing(pacing);
        }
    }
}

fn log_change(before: &Pacing, after: &Pacing, gauges: &HashMap<String, Gauge>, topology: &kessai_transport::Topology) {
    for (queue, gauge) in gauges {
        let Some(participant) = topology.participant_of(queue) else {
            continue;
        };
        let (was, now) = (before.floor_ms(participant), after.floor_ms(participant));
        if was == now {
            continue;
        }
        let rate = gauge.rate.unwrap_or(0.0);
        if was == 0 {
            info!(
                participant,
                depth = gauge.depth,
                rate,
                floor_ms = now,
                "command queue backed up; resends spaced out"
            );
        } else if now == 0 {
            info!(
                participant,
                depth = gauge.depth,
                "command queue caught up; resends back on the plain backoff"
            );
        } else {
            debug!(
                participant,
                depth = gauge.depth,
                rate,
                floor_ms = now,
                "resend floor changed"
            );
        }
    }
}

/// One command queue as the pacer last saw it.
#[derive(Clone, Debug)]
struct Gauge {
    at: Instant,
    depth: u64,
    /// The relay's confirmed publishes to the queue, ever, at `at`.
    published: u64,
    /// Smoothed consume rate in messages per second; `None` before the first window.
    rate: Option<f64>,
}

impl Gauge {
    fn new(at: Instant, depth: u64, published: u64) -> Self {
        Self {
            at,
            depth,
            published,
            rate: None,
        }
    }

    /// Folds in a new sample; returns the resend floor it implies, in ms.
    fn observe(&mut self, at: Instant, depth: u64, published: u64) -> i64 {
        let window = at.saturating_duration_since(self.at).as_secs_f64();
        if window > 0.0 {
            // What left the queue: what was there, plus what came, minus what is there.
            // (Messages expired at the head count as gone too: they no longer delay
            // anything behind them.)
            let arrived = published.saturating_sub(self.published);
            let gone = (self.depth + arrived).saturating_sub(depth);
            let sample = gone as f64 / window;
            self.rate = Some(match self.rate {
                Some(rate) => rate + SMOOTHING * (sample - rate),
                None => sample,
            });
            self.at = at;
            self.published = published;
        }
        self.depth = depth;
        floor_ms(depth, self.rate)
    }
}

/// [`DRAIN_MARGIN`] × how long `depth` messages take to drain at `rate`, in ms; 0 for
/// an empty queue or an unknown rate.
fn floor_ms(depth: u64, rate: Option<f64>) -> i64 {
    let Some(rate) = rate else { return 0 };
    if depth == 0 {
        return 0;
    }
    let drain_secs = depth as f64 / rate.max(MIN_RATE);
    // Far beyond any policy's cap; keeps the float in range.
    (DRAIN_MARGIN * drain_secs * 1_000.0).min(1e12) as i64
}

/// Resends what every unfinished saga waits on: after a crash, whatever was in flight
/// may be gone with the broker's memory or the old process.
pub(crate) async fn resume(inner: Arc<Inner>, cancel: CancellationToken) -> Result<(), Error> {
    let mut after = None;
    let mut resumed = 0usize;
    while !cancel.is_cancelled() {
        let ids = store::unfinished(&inner.db, after, inner.config.batch_size as u64).await?;
        let Some(last) = ids.last().copied() else { break };
        after = Some(last);
        resumed += ids.len();
        let why = "coordinator started".to_owned();
        let work = ids
            .into_iter()
            .map(|id| {
                let resend = Event::ResendNow {
                    why: why.clone(),
                    by: Actor::Coordinator,
                };
                (id, vec![(resend, None)])
            })
            .collect();
        drive::drive(&inner, work).await?;
    }
    if resumed > 0 {
        info!(sagas = resumed, "resumed unfinished sagas");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_or_unknown_queue_sets_no_floor() {
        assert_eq!(floor_ms(0, Some(0.0)), 0);
        assert_eq!(floor_ms(5_000, None), 0);
        assert_eq!(floor_ms(0, None), 0);
    }

    #[test]
    fn the_floor_is_twice_the_drain_time() {
        // 2,000 queued at 1,000/s: 2 s to drain, 4 s floor.
        assert_eq!(floor_ms(2_000, Some(1_000.0)), 4_000);
        // A queue that does not move drains at the assumed minimum rate.
        assert_eq!(floor_ms(3, Some(0.0)), 6_000);
        assert_eq!(floor_ms(u64::MAX, Some(0.0)), 1_000_000_000_000);
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_counts_what_left_the_queue() {
        let t0 = Instant::now();
        let mut g = Gauge::new(t0, 1_000, 0);
        assert_eq!(g.rate, None);
        // 500 ms later: 600 more published, 1,200 queued, so 400 left: 800/s.
        let floor = g.observe(t0 + Duration::from_millis(500), 1_200, 600);
        assert_eq!(g.rate, Some(800.0));
        assert_eq!(floor, 3_000, "1,200 at 800/s is 1.5 s to drain");
        // Next window: nothing published, 1,000 left (2,000/s); smoothed to 1,400/s.
        let floor = g.observe(t0 + Duration::from_millis(1_000), 200, 600);
        assert_eq!(g.rate, Some(1_400.0));
        assert_eq!(floor, (2.0 * 200.0 / 1_400.0 * 1_000.0) as i64);
        // Drained: no floor, whatever the rate.
        assert_eq!(g.observe(t0 + Duration::from_millis(1_500), 0, 600), 0);
    }

    /// A fresh, migrated SQLite coordinator database in `dir`.
    async fn sqlite_db(dir: &tempfile::TempDir) -> sea_orm::DatabaseConnection {
        let url = kessai_migrations::sqlite_url(&dir.path().join("coordinator.db"));
        kessai_migrations::open(&url, kessai_migrations::Service::Coordinator, 1)
            .await
            .unwrap()
    }

    /// Submits saga `i`: one branch, at the participant `sleepy`.
    async fn submit_sleepy(coordinator: &crate::engine::Coordinator, i: u64, try_timeout_ms: i64) {
        coordinator
            .submit(crate::store::NewSaga {
                client: None,
                kind: "generic".into(),
                idempotency_key: Some(format!("k{i}")),
                request: "{}".into(),
                branches: vec![("sleepy".into(), serde_json::json!({"i": i}))],
                try_timeout_ms,
                trace_parent: None,
            })
            .await
            .unwrap();
    }

    /// End to end on the in-process transport: with nobody consuming a participant's
    /// queue, the relay's commands expire there instead of piling up, the pacer sees
    /// the backlog and sets a floor for that participant, and the stats count the
    /// publishes and resends.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_backed_up_queue_is_paced_and_its_stale_commands_expire() {
        use crate::clock::SystemClock;
        use crate::engine::{Coordinator, CoordinatorConfig};
        use crate::machine::Backoff;
        use kessai_transport::{MemoryTransport, Topology};
        use std::sync::atomic::Ordering::Relaxed;

        let dir = tempfile::tempdir().unwrap();
        let db = sqlite_db(&dir).await;
        let transport = MemoryTransport::new();
        let mut config = CoordinatorConfig {
            tick_interval: Duration::from_millis(20),
            relay_poll: Duration::from_millis(20),
            ..CoordinatorConfig::default()
        };
        config.policy.try_resend = Backoff {
            initial_ms: 200,
            max_ms: 400,
        };
        let (coordinator, tasks) = Coordinator::start(db, Arc::new(transport.clone()), config, Arc::new(SystemClock))
            .await
            .unwrap();
        let n = 20;
        for i in 0..n {
            submit_sleepy(&coordinator, i, 60_000).await;
        }
        let queue = Topology::default().command_queue("sleepy");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let floor = coordinator.stats().pacing().floor_ms("sleepy");
            if floor > 0 && transport.expired_count(&queue) > 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "floor {floor}, expired {}, queued {}",
                transport.expired_count(&queue),
                transport.ready_len(&queue)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let stats = coordinator.stats();
        let (published, resends) = (stats.commands_published.load(Relaxed), stats.resends.load(Relaxed));
        assert!(published > n, "{published} published");
        assert!(resends > 0 && resends <= published - n, "{resends} of {published}");
        // Expiry keeps the queue to about the live copies: one per saga, plus the
        // ones inside their 1 s minimum time-to-live.
        assert!(
            (transport.ready_len(&queue) as u64) < published,
            "{} queued of {published} published",
            transport.ready_len(&queue)
        );
        tasks.shutdown().await;
    }

    /// A measurement rather than a check (run with `--ignored --nocapture`): one-branch
    /// sagas against a participant that handles 50 commands a second, arriving all at
    /// once (a burst from idle) or at twice that rate for six seconds (sustained
    /// overload), so its queue takes several backoff intervals to drain. Prints the
    /// commands sent per saga (2 is ideal: a try and a confirm), the resends and the
    /// copies that expired unconsumed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "a measurement; takes about half a minute"]
    async fn slow_participant_commands_per_saga() {
        measure_slow_participant("burst", 300, None).await;
        measure_slow_participant("sustained", 600, Some(100.0)).await;
    }

    async fn measure_slow_participant(name: &str, sagas: u64, arrivals_per_s: Option<f64>) {
        use crate::clock::SystemClock;
        use crate::engine::{Coordinator, CoordinatorConfig};
        use crate::machine::SagaState;
        use kessai_messages::{Envelope, Outcome};
        use kessai_transport::{ConsumeOptions, MemoryTransport, OutgoingMessage, Topology, Transport};
        use std::sync::atomic::Ordering::Relaxed;

        let dir = tempfile::tempdir().unwrap();
        let db = sqlite_db(&dir).await;
        let transport = MemoryTransport::new();
        let topology = Topology::default();
        let queue = topology.command_queue("sleepy");
        transport.declare(&queue).await.unwrap();
        let config = CoordinatorConfig {
            // Every saga is let in: the backlog is the point here.
            admission: crate::engine::AdmissionLimit::Fixed(u64::MAX),
            ..CoordinatorConfig::default()
        };
        let (coordinator, tasks) = Coordinator::start(db, Arc::new(transport.clone()), config, Arc::new(SystemClock))
            .await
            .unwrap();
        let participant = {
            let transport = transport.clone();
            let queue = queue.clone();
            tokio::spawn(async move {
                let options = ConsumeOptions {
                    prefetch: 5,
                    poll_wait: Duration::from_millis(100),
                };
                let mut consumer = transport.consume(&queue, options).await.unwrap();
                loop {
                    // 5 every 100 ms: 50 commands a second.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    for d in consumer.next_batch(5).await.unwrap() {
                        let command = Envelope::decode(&d.payload).unwrap();
                        let reply_to = command.as_command().unwrap().reply_to.clone();
                        let reply = command.reply("sleepy", Outcome::Ok);
                        transport
                            .publish(&reply_to, OutgoingMessage::new(reply.encode()))
                            .await
                            .unwrap();
                        d.ack().await.unwrap();
                    }
                }
            })
        };
        let started = std::time::Instant::now();
        for i in 0..sagas {
            if let Some(rate) = arrivals_per_s {
                let at = started + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(at.into()).await;
            }
            submit_sleepy(&coordinator, i, 600_000).await;
        }
        loop {
            let (by_state, _) = crate::store::counts(coordinator.db()).await.unwrap();
            if by_state.get(&SagaState::Confirmed).copied().unwrap_or(0) == sagas {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(300), "{by_state:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let stats = coordinator.stats();
        let (published, resends) = (stats.commands_published.load(Relaxed), stats.resends.load(Relaxed));
        println!(
            "{name}: {sagas} sagas in {:.1} s: {published} commands ({:.2} per saga), {resends} resends, \
             {} expired unconsumed",
            started.elapsed().as_secs_f64(),
            published as f64 / sagas as f64,
            transport.expired_count(&queue)
        );
        participant.abort();
        tasks.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_queue_gets_a_growing_floor() {
        let t0 = Instant::now();
        let mut g = Gauge::new(t0, 0, 0);
        // Published 10, none consumed.
        let floor = g.observe(t0 + Duration::from_millis(500), 10, 10);
        assert_eq!(g.rate, Some(0.0));
        assert_eq!(floor, 20_000);
        let floor = g.observe(t0 + Duration::from_millis(1_000), 30, 30);
        assert_eq!(floor, 60_000);
        // A sample at the same instant changes the depth, not the rate.
        assert_eq!(g.observe(t0 + Duration::from_millis(1_000), 5, 30), 10_000);
        assert_eq!(g.rate, Some(0.0));
    }
}
