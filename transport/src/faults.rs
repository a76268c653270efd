//! A fault-injecting wrapper around any [`Transport`]: it drops, duplicates, delays
//! and reorders messages with configured probabilities, so the chaos harness and the
//! fault tests can prove kessai recovers from a lossy, unruly network.
//!
//! ## Why faults are injected at publish
//! Every kessai message takes one path: [`Transport::publish`] (or `publish_batch`) —
//! coordinator commands go out through the outbox relay, participant replies come
//! back the same way. Faulting that one call therefore reaches every message. A
//! consume-side fault would add nothing: losing, repeating or holding a delivery on
//! the way in is indistinguishable from doing it to the publish of the previous hop,
//! and it would mean faking the broker's settlement contract (a "dropped" delivery
//! still has to be acked somewhere), which is not a network fault but a broker bug.
//!
//! ## The faults
//! Each message is judged on its own, in this order:
//! - **drop**: `publish` answers `Ok` but nothing is sent. This is a lost message, and
//!   exactly what the coordinator's resend timers exist for: an unanswered branch
//!   command is sent again, and a lost reply is recovered by that resend (the
//!   participant's barrier answers it with the stored outcome).
//! - **duplicate**: the message is sent twice; barriers make the second one harmless.
//! - **delay**: `publish` answers `Ok` at once and a background task sends the message
//!   after a random wait of at most `delay_max` — a message "in flight".
//! - **reorder**: the message is held back and sent right after the next message
//!   published to the same queue (or after [`REORDER_WINDOW`] if none comes), so the
//!   two swap places.
//!
//! A dropped message is neither duplicated nor delayed; a delayed one is not also
//! held for reordering (a delay reorders it anyway).
//!
//! ## Reproducibility and quiescence
//! Decisions come from a [`SmallRng`] seeded with [`FaultConfig::seed`], behind a
//! mutex: the same sequence of publish calls gets the same faults. (Concurrent
//! publishers interleave nondeterministically, so a whole chaos run is reproducible
//! only as far as its publish order is.) Faults can be switched off at run time
//! ([`FaultyTransport::set_enabled`]) so a chaos run can stop them and wait for
//! quiescence; [`Transport::pending`] counts the messages this wrapper still holds
//! (delayed or held back), so waiting for `pending == 0` waits for them too.

use crate::{ConsumeOptions, Consumer, Error, OutgoingMessage, Transport};
use async_trait::async_trait;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{debug, warn};

/// How long a message held back for reordering waits for a successor on its queue
/// before it is sent anyway: a held message must not become a drop in disguise.
pub const REORDER_WINDOW: Duration = Duration::from_millis(50);

/// What to inject. Probabilities are per message, in `0.0..=1.0`.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultConfig {
    /// Chance a message is silently lost.
    pub drop: f64,
    /// Chance a message is sent twice.
    pub duplicate: f64,
    /// Chance a message is sent later, after a random wait of at most `delay_max`.
    pub delay: f64,
    /// Longest delay; each delayed message waits a uniform fraction of it.
    pub delay_max: Duration,
    /// Chance a message is held back and sent after the next one to its queue.
    pub reorder: f64,
    /// Seeds the decisions, so a run can be replayed.
    pub seed: u64,
}

impl Default for FaultConfig {
    /// No faults at all (a pass-through), seed 0, delays of up to 200 ms once enabled.
    fn default() -> Self {
        Self {
            drop: 0.0,
            duplicate: 0.0,
            delay: 0.0,
            delay_max: Duration::from_millis(200),
            reorder: 0.0,
            seed: 0,
        }
    }
}

impl FaultConfig {
    /// Rejects a probability outside `0.0..=1.0` (or NaN): a typo such as `5` for 5 %
    /// would otherwise drop every message and look like a protocol failure.
    pub fn validate(&self) -> Result<(), Error> {
        for (name, p) in [
            ("drop", self.drop),
            ("duplicate", self.duplicate),
            ("delay", self.delay),
            ("reorder", self.reorder),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(Error::Config(format!(
                    "fault probability `{name}` must be within 0.0..=1.0, got {p}"
                )));
            }
        }
        Ok(())
    }

    /// Whether any fault can happen at all.
    pub fn is_noop(&self) -> bool {
        self.drop == 0.0 && self.duplicate == 0.0 && self.delay == 0.0 && self.reorder == 0.0
    }
}

/// Faults injected so far, by kind (the chaos report's `faults` object).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FaultCounters {
    /// Messages lost.
    pub dropped: u64,
    /// Messages sent twice (each counts once).
    pub duplicated: u64,
    /// Messages sent late.
    pub delayed: u64,
    /// Messages held back to swap places with their successor.
    pub reordered: u64,
}

/// Sums counters, e.g. over the incarnations of a restarted service.
impl std::ops::AddAssign for FaultCounters {
    fn add_assign(&mut self, other: FaultCounters) {
        self.dropped += other.dropped;
        self.duplicated += other.duplicated;
        self.delayed += other.delayed;
        self.reordered += other.reordered;
    }
}

#[derive(Default)]
struct Counters {
    dropped: AtomicU64,
    duplicated: AtomicU64,
    delayed: AtomicU64,
    reordered: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> FaultCounters {
        FaultCounters {
            dropped: self.dropped.load(Ordering::Relaxed),
            duplicated: self.duplicated.load(Ordering::Relaxed),
            delayed: self.delayed.load(Ordering::Relaxed),
            reordered: self.reordered.load(Ordering::Relaxed),
        }
    }
}

/// What happens to one message.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fate {
    Drop,
    Send,
    Delay(Duration),
    Hold,
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Decision {
    fate: Fate,
    duplicate: bool,
}

impl Decision {
    const PASS: Decision = Decision {
        fate: Fate::Send,
        duplicate: false,
    };

    /// Draws the same five numbers whatever the outcome, so one message's fate never
    /// shifts the random stream seen by the next.
    fn draw(config: &FaultConfig, rng: &mut SmallRng) -> Decision {
        let drop = rng.random::<f64>() < config.drop;
        let duplicate = rng.random::<f64>() < config.duplicate;
        let delay = rng.random::<f64>() < config.delay;
        let delay_fraction = rng.random::<f64>();
        let reorder = rng.random::<f64>() < config.reorder;
        if drop {
            return Decision {
                fate: Fate::Drop,
                duplicate: false,
            };
        }
        let fate = if delay {
            Fate::Delay(config.delay_max.mul_f64(delay_fraction))
        } else if reorder {
            Fate::Hold
        } else {
            Fate::Send
        };
        Decision { fate, duplicate }
    }
}

/// The configuration and the random stream it seeded, replaced together.
struct Dice {
    config: FaultConfig,
    rng: SmallRng,
}

/// Messages this wrapper has accepted but not yet handed to the inner transport,
/// per queue.
#[derive(Default)]
struct InFlightTable(Mutex<HashMap<String, u64>>);

impl InFlightTable {
    fn get(&self, queue: &str) -> u64 {
        self.0.lock().expect("in-flight lock").get(queue).copied().unwrap_or(0)
    }

    fn total(&self) -> u64 {
        self.0.lock().expect("in-flight lock").values().sum()
    }

    fn add(self: &Arc<Self>, queue: &str, n: u64) -> InFlight {
        *self
            .0
            .lock()
            .expect("in-flight lock")
            .entry(queue.to_owned())
            .or_default() += n;
        InFlight {
            table: self.clone(),
            queue: queue.to_owned(),
            n,
        }
    }
}

/// Counts messages in flight until dropped — after the inner publish returned, or
/// when the task carrying them is aborted — so `pending` never undercounts.
struct InFlight {
    table: Arc<InFlightTable>,
    queue: String,
    n: u64,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut table = self.table.0.lock().expect("in-flight lock");
        if let Some(count) = table.get_mut(&self.queue) {
            *count = count.saturating_sub(self.n);
            if *count == 0 {
                table.remove(&self.queue);
            }
        }
    }
}

/// A message held back on its queue, waiting for a successor to overtake it.
struct Held {
    /// Tells the window timer whether the slot still holds its message.
    id: u64,
    messages: Vec<OutgoingMessage>,
    in_flight: InFlight,
}

struct Shared<T: ?Sized> {
    inner: Arc<T>,
    enabled: AtomicBool,
    dice: Mutex<Dice>,
    counters: Counters,
    in_flight: Arc<InFlightTable>,
    /// At most one held message per queue.
    held: Mutex<HashMap<String, Held>>,
    next_hold_id: AtomicU64,
}

/// What one publish call sends now and what it leaves for later.
#[derive(Default)]
struct Plan {
    now: Vec<OutgoingMessage>,
    /// Held messages released by this call, counted in flight until `now` is sent.
    released: Vec<InFlight>,
    later: Vec<(Duration, Vec<OutgoingMessage>, InFlight)>,
    hold_timer: Option<u64>,
}

/// Wraps a transport and injects faults on publish. Cheap to clone; clones share the
/// configuration, random stream, counters and held messages, so the chaos harness can
/// keep one to switch faults off while the services use another.
pub struct FaultyTransport<T: ?Sized + Transport> {
    shared: Arc<Shared<T>>,
}

impl<T: ?Sized + Transport> Clone for FaultyTransport<T> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<T: ?Sized + Transport> FaultyTransport<T> {
    /// Wraps `inner` (e.g. `Arc<MemoryTransport>` or an `Arc<dyn Transport>`), with
    /// faults enabled. Fails with [`Error::Config`] on an out-of-range probability.
    pub fn new(inner: Arc<T>, config: FaultConfig) -> Result<Self, Error> {
        config.validate()?;
        Ok(Self {
            shared: Arc::new(Shared {
                inner,
                enabled: AtomicBool::new(true),
                dice: Mutex::new(Dice {
                    rng: SmallRng::seed_from_u64(config.seed),
                    config,
                }),
                counters: Counters::default(),
                in_flight: Arc::default(),
                held: Mutex::default(),
                next_hold_id: AtomicU64::new(0),
            }),
        })
    }

    /// The wrapped transport.
    pub fn inner(&self) -> &Arc<T> {
        &self.shared.inner
    }

    /// Switches faults on or off. Off, every message passes straight through; messages
    /// already delayed or held back are still sent when their time comes.
    pub fn set_enabled(&self, enabled: bool) {
        self.shared.enabled.store(enabled, Ordering::SeqCst);
    }

    pub fn is_enabled(&self) -> bool {
        self.shared.enabled.load(Ordering::SeqCst)
    }

    /// Replaces the configuration and reseeds the random stream from `config.seed`.
    /// An invalid configuration is rejected and the old one stays.
    pub fn set_config(&self, config: FaultConfig) -> Result<(), Error> {
        config.validate()?;
        let mut dice = self.shared.dice.lock().expect("fault dice lock");
        dice.rng = SmallRng::seed_from_u64(config.seed);
        dice.config = config;
        Ok(())
    }

    pub fn config(&self) -> FaultConfig {
        self.shared.dice.lock().expect("fault dice lock").config.clone()
    }

    /// Faults injected so far.
    pub fn counters(&self) -> FaultCounters {
        self.shared.counters.snapshot()
    }

    /// Messages accepted but not yet handed to the inner transport (delayed or held
    /// back), over all queues. Useful where the inner transport cannot count its own.
    pub fn in_flight(&self) -> u64 {
        self.shared.in_flight.total()
    }

    /// Sends every message held back for reordering now, instead of waiting for a
    /// successor or for [`REORDER_WINDOW`]; for a chaos run that has stopped faults.
    pub async fn release_held(&self) -> Result<(), Error> {
        let held: Vec<(String, Held)> = self.shared.held.lock().expect("held lock").drain().collect();
        let mut result = Ok(());
        for (queue, h) in held {
            if let Err(e) = send(&*self.shared.inner, &queue, h.messages).await {
                warn!(messaging.destination.name = %queue, error = %e, "held message lost on release");
                result = Err(e);
            }
        }
        result
    }

    fn decide(&self, n: usize) -> Vec<Decision> {
        if !self.is_enabled() {
            return vec![Decision::PASS; n];
        }
        let mut dice = self.shared.dice.lock().expect("fault dice lock");
        let Dice { config, rng } = &mut *dice;
        if config.is_noop() {
            return vec![Decision::PASS; n];
        }
        (0..n).map(|_| Decision::draw(config, rng)).collect()
    }

    /// Applies `decisions` to `messages` in order. Runs under the held-slot lock, so a
    /// held message is overtaken by exactly one successor.
    fn plan(&self, queue: &str, messages: Vec<OutgoingMessage>, decisions: Vec<Decision>) -> Plan {
        let shared = &*self.shared;
        let counters = &shared.counters;
        let mut held = shared.held.lock().expect("held lock");
        let mut plan = Plan::default();
        for (message, decision) in messages.into_iter().zip(decisions) {
            let copies = if decision.duplicate {
                counters.duplicated.fetch_add(1, Ordering::Relaxed);
                debug!(messaging.destination.name = %queue, fault.kind = "duplicate", "fault injected");
                vec![message.clone(), message]
            } else {
                vec![message]
            };
            let release = match decision.fate {
                Fate::Drop => {
                    counters.dropped.fetch_add(1, Ordering::Relaxed);
                    debug!(messaging.destination.name = %queue, fault.kind = "drop", "fault injected");
                    true
                }
                Fate::Send => {
                    plan.now.extend(copies);
                    true
                }
                Fate::Delay(wait) => {
                    counters.delayed.fetch_add(1, Ordering::Relaxed);
                    debug!(
                        messaging.destination.name = %queue, fault.kind = "delay",
                        fault.delay_ms = wait.as_millis() as u64, "fault injected"
                    );
                    let in_flight = shared.in_flight.add(queue, copies.len() as u64);
                    plan.later.push((wait, copies, in_flight));
                    true
                }
                // Someone is already waiting to be overtaken: this message is the
                // successor that overtakes it, not a second one to hold.
                Fate::Hold if held.contains_key(queue) => {
                    plan.now.extend(copies);
                    true
                }
                Fate::Hold => {
                    counters.reordered.fetch_add(1, Ordering::Relaxed);
                    debug!(messaging.destination.name = %queue, fault.kind = "reorder", "fault injected");
                    let id = shared.next_hold_id.fetch_add(1, Ordering::Relaxed);
                    let in_flight = shared.in_flight.add(queue, copies.len() as u64);
                    held.insert(
                        queue.to_owned(),
                        Held {
                            id,
                            messages: copies,
                            in_flight,
                        },
                    );
                    plan.hold_timer = Some(id);
                    false
                }
            };
            if release && let Some(h) = held.remove(queue) {
                plan.now.extend(h.messages);
                plan.released.push(h.in_flight);
            }
        }
        plan
    }

    async fn execute(&self, queue: &str, plan: Plan) -> Result<(), Error> {
        for (wait, messages, in_flight) in plan.later {
            let inner = self.shared.inner.clone();
            let queue = queue.to_owned();
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                if let Err(e) = send(&*inner, &queue, messages).await {
                    // Lost like a dropped message; the resend timers recover it.
                    warn!(messaging.destination.name = %queue, error = %e, "delayed message lost");
                }
                drop(in_flight);
            });
        }
        if let Some(id) = plan.hold_timer {
            let shared = self.shared.clone();
            let queue = queue.to_owned();
            tokio::spawn(async move {
                tokio::time::sleep(REORDER_WINDOW).await;
                let held = {
                    let mut slots = shared.held.lock().expect("held lock");
                    match slots.get(&queue) {
                        Some(h) if h.id == id => slots.remove(&queue),
                        _ => None,
                    }
                };
                if let Some(h) = held
                    && let Err(e) = send(&*shared.inner, &queue, h.messages).await
                {
                    warn!(messaging.destination.name = %queue, error = %e, "held message lost");
                }
            });
        }
        let released = plan.released.len();
        let result = send(&*self.shared.inner, queue, plan.now).await;
        if released > 0
            && let Err(e) = &result
        {
            warn!(messaging.destination.name = %queue, error = %e, "held message lost with a failed publish");
        }
        drop(plan.released);
        result
    }
}

async fn send<T: ?Sized + Transport>(inner: &T, queue: &str, mut messages: Vec<OutgoingMessage>) -> Result<(), Error> {
    match messages.len() {
        0 => Ok(()),
        1 => inner.publish(queue, messages.pop().expect("one message")).await,
        _ => inner.publish_batch(queue, messages).await,
    }
}

#[async_trait]
impl<T: ?Sized + Transport> Transport for FaultyTransport<T> {
    fn system(&self) -> &'static str {
        self.shared.inner.system()
    }

    async fn declare(&self, queue: &str) -> Result<(), Error> {
        self.shared.inner.declare(queue).await
    }

    async fn publish(&self, queue: &str, message: OutgoingMessage) -> Result<(), Error> {
        let decisions = self.decide(1);
        let plan = self.plan(queue, vec![message], decisions);
        self.execute(queue, plan).await
    }

    async fn publish_batch(&self, queue: &str, messages: Vec<OutgoingMessage>) -> Result<(), Error> {
        let decisions = self.decide(messages.len());
        let plan = self.plan(queue, messages, decisions);
        self.execute(queue, plan).await
    }

    /// The inner count plus the messages this wrapper still holds for `queue`.
    async fn pending(&self, queue: &str) -> Result<Option<u64>, Error> {
        let inner = self.shared.inner.pending(queue).await?;
        Ok(inner.map(|n| n + self.shared.in_flight.get(queue)))
    }

    async fn consume(&self, queue: &str, options: ConsumeOptions) -> Result<Box<dyn Consumer>, Error> {
        self.shared.inner.consume(queue, options).await
    }

    async fn delete(&self, queue: &str) -> Result<(), Error> {
        self.shared.inner.delete(queue).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(p: f64) -> FaultConfig {
        FaultConfig {
            drop: p,
            duplicate: p,
            delay: p,
            reorder: p,
            seed: 7,
            ..FaultConfig::default()
        }
    }

    #[test]
    fn validate_accepts_the_closed_unit_interval() {
        assert!(config(0.0).validate().is_ok());
        assert!(config(1.0).validate().is_ok());
        assert!(config(0.05).validate().is_ok());
    }

    #[test]
    fn validate_rejects_out_of_range_and_nan() {
        for bad in [-0.01, 1.01, 5.0, f64::NAN, f64::INFINITY] {
            let err = FaultConfig {
                duplicate: bad,
                ..FaultConfig::default()
            }
            .validate()
            .expect_err("rejected");
            assert!(matches!(err, Error::Config(ref m) if m.contains("duplicate")), "{err}");
            assert!(!err.is_retryable());
        }
    }

    #[test]
    fn decisions_follow_the_seed() {
        let draw = |seed| {
            let c = FaultConfig { seed, ..config(0.5) };
            let mut rng = SmallRng::seed_from_u64(c.seed);
            (0..64).map(|_| Decision::draw(&c, &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(draw(1), draw(1));
        assert_ne!(draw(1), draw(2));
    }

    #[test]
    fn drop_wins_over_every_other_fault() {
        let mut rng = SmallRng::seed_from_u64(0);
        for _ in 0..16 {
            assert_eq!(
                Decision::draw(&config(1.0), &mut rng),
                Decision {
                    fate: Fate::Drop,
                    duplicate: false
                }
            );
        }
    }

    #[test]
    fn delays_stay_within_delay_max() {
        let c = FaultConfig {
            delay: 1.0,
            delay_max: Duration::from_millis(30),
            ..FaultConfig::default()
        };
        let mut rng = SmallRng::seed_from_u64(3);
        for _ in 0..256 {
            match Decision::draw(&c, &mut rng).fate {
                Fate::Delay(d) => assert!(d <= c.delay_max),
                other => panic!("expected a delay, got {other:?}"),
            }
        }
    }
}
