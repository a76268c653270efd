//! RabbitMQ outages on purpose, through `rabbitmqctl`: `stop_app` takes the broker's
//! AMQP listener away (connections drop, clients see it as an outage) while the node
//! and its durable queues stay, and `start_app` brings it back. The chaos harness
//! (`kessai chaos --transport amqp`) and the outage tests use it.
//!
//! Why a command and not an HTTP API: the management plugin may not be enabled, and
//! `rabbitmqctl` is what an operator would run; it needs to reach the broker's node
//! (the same host, or `RABBITMQ_NODENAME` and a shared Erlang cookie).

use crate::services::{BrokerLock, RABBITMQ, broker_lock, require_rabbitmq, services_required};

/// Runs `rabbitmqctl` with `args`; the error carries its status and stderr.
pub fn rabbitmqctl(args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .map_err(|e| format!("rabbitmqctl {args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "rabbitmqctl {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A RabbitMQ outage a test causes (`rabbitmqctl stop_app`), ended by [`end`] or, if
/// the test fails first, by `Drop` — the broker is started again whatever happens.
/// In tests, hold the exclusive broker lock around it ([`rabbitmq_for_outages`]).
///
/// [`end`]: RabbitOutage::end
#[derive(Debug)]
pub struct RabbitOutage {
    stopped: bool,
}

impl RabbitOutage {
    /// Stops the broker's application (blocking: call from `spawn_blocking`).
    pub fn begin() -> Result<Self, String> {
        let outage = RabbitOutage { stopped: true };
        rabbitmqctl(&["stop_app"])?;
        Ok(outage)
    }

    /// Starts the broker's application and waits until it is up (blocking).
    pub fn end(mut self) {
        self.stopped = false;
        start_rabbit();
    }
}

impl Drop for RabbitOutage {
    fn drop(&mut self) {
        if self.stopped {
            start_rabbit();
        }
    }
}

fn start_rabbit() {
    for args in [&["start_app"][..], &["await_startup"][..]] {
        if let Err(e) = rabbitmqctl(args) {
            eprintln!("{e}");
        }
    }
}

/// Whether `rabbitmqctl` can drive the broker from here. Otherwise prints a skip note
/// and returns `false` — or panics when services are required.
pub fn require_rabbitmqctl() -> bool {
    match rabbitmqctl(&["status"]) {
        Ok(()) => true,
        Err(e) => {
            assert!(!services_required(), "rabbitmqctl is required: {e}");
            eprintln!("skipping: cannot drive the broker: {e}");
            false
        }
    }
}

/// For a test that stops the broker: `Some(exclusive lock)` once RabbitMQ is reachable
/// and `rabbitmqctl` can drive it, `None` to skip. Waits (off the async threads) until
/// every other test using the broker has let go of it.
pub async fn rabbitmq_for_outages() -> Option<BrokerLock> {
    if !require_rabbitmq() || !require_rabbitmqctl() {
        return None;
    }
    let lock = tokio::task::spawn_blocking(|| broker_lock(RABBITMQ, true))
        .await
        .expect("broker lock task");
    Some(lock)
}
