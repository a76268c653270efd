//! Broker restarts: RabbitMQ stopped (`rabbitmqctl stop_app`) for `outage`, then
//! started again (`start_app`, `await_startup`), every `every`, until told to stop.
//! Durable queues and persistent messages survive; every connection drops, so this
//! proves the services reconnect and nothing acknowledged is lost.

use kessai_testkit::RabbitOutage;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Fails early, with what to do, if `rabbitmqctl` cannot drive the broker.
pub(super) async fn preflight() -> anyhow::Result<()> {
    tokio::task::spawn_blocking(|| kessai_testkit::rabbitmqctl(&["await_startup"]))
        .await?
        .map_err(|e| {
            anyhow::anyhow!(
                "broker restarts need `rabbitmqctl` on this machine, able to reach the broker's node: {e}\n\
                 (run without them with --broker-restart-every off)"
            )
        })
}

/// Restarts the broker every `every` until `stop` fires; returns how many times. The
/// broker is always running again when the task ends, even if it is aborted midway
/// (the outage guard starts it on drop).
pub(super) fn spawn(stop: CancellationToken, every: Duration, outage: Duration) -> JoinHandle<anyhow::Result<u64>> {
    tokio::spawn(async move {
        let mut restarts = 0;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok(restarts),
                _ = tokio::time::sleep(every) => {}
            }
            tracing::info!(?outage, "stopping the broker");
            let guard = tokio::task::spawn_blocking(RabbitOutage::begin)
                .await?
                .map_err(|e| anyhow::anyhow!("stopping the broker: {e}"))?;
            restarts += 1;
            tokio::time::sleep(outage).await;
            tokio::task::spawn_blocking(move || guard.end()).await?;
            tracing::info!("broker started again");
        }
    })
}
