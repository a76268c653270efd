//! Fault injection inside a service process, for `kessai chaos` over real brokers.
//!
//! A service whose configuration sets a fault probability (`[faults]`, or
//! `KESSAI_FAULTS__DROP=0.05` …) wraps its transport in a
//! [`FaultyTransport`], so what it publishes — the coordinator's commands, a
//! participant's replies — is dropped, duplicated, delayed or reordered on the way to
//! the broker. It then also serves:
//!
//! - `GET /v1/faults` → `{"enabled", "counters": {dropped, duplicated, delayed,
//!   reordered}, "in_flight"}`: what it injected so far, and how many delayed or
//!   held-back messages it still holds;
//! - `PUT /v1/faults` `{"enabled": false}` → the same, after switching faults off (and
//!   sending at once what was held back for reordering), so the harness can stop the
//!   faults and wait for quiescence without restarting anything.
//!
//! Neither route exists when no fault is configured: a production service never
//! exposes a switch that loses messages.

use crate::http::ApiError;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::routing::get;
use axum::{Json, Router};
use kessai_transport::{FaultConfig, FaultCounters, FaultyTransport, Transport};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// A service's fault wrapper, as the HTTP routes see it.
pub type Faults = FaultyTransport<dyn Transport>;

/// What `GET|PUT /v1/faults` answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultStatus {
    pub enabled: bool,
    pub counters: FaultCounters,
    /// Messages accepted but not yet handed to the broker (delayed or held back).
    pub in_flight: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Switch {
    enabled: bool,
}

/// Wraps `transport` when `config` is `Some`; the wrapper is returned for the routes.
pub fn wrap(
    service: &str,
    transport: Arc<dyn Transport>,
    config: Option<FaultConfig>,
) -> anyhow::Result<(Arc<dyn Transport>, Option<Faults>)> {
    let Some(config) = config else {
        return Ok((transport, None));
    };
    tracing::warn!(
        service,
        drop = config.drop,
        duplicate = config.duplicate,
        delay = config.delay,
        reorder = config.reorder,
        seed = config.seed,
        "FAULT INJECTION IS ON: published messages will be dropped, duplicated, delayed and reordered"
    );
    let faulty: Faults = FaultyTransport::new(transport, config)?;
    Ok((Arc::new(faulty.clone()), Some(faulty)))
}

/// `GET|PUT /v1/faults`.
pub fn router(faults: Faults) -> Router {
    Router::new()
        .route("/v1/faults", get(status).put(switch))
        .with_state(faults)
}

fn status_of(faults: &Faults) -> FaultStatus {
    FaultStatus {
        enabled: faults.is_enabled(),
        counters: faults.counters(),
        in_flight: faults.in_flight(),
    }
}

async fn status(State(faults): State<Faults>) -> Json<FaultStatus> {
    Json(status_of(&faults))
}

async fn switch(
    State(faults): State<Faults>,
    body: Result<Json<Switch>, JsonRejection>,
) -> Result<Json<FaultStatus>, ApiError> {
    let Json(Switch { enabled }) = body.map_err(|e| ApiError::new(e.status(), "invalid_request", e.body_text()))?;
    faults.set_enabled(enabled);
    if !enabled {
        faults
            .release_held()
            .await
            .map_err(|e| ApiError::unavailable(format!("faults are off, but releasing held messages failed: {e}")))?;
    }
    tracing::warn!(enabled, "fault injection switched");
    Ok(Json(status_of(&faults)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kessai_transport::{ConsumeOptions, MemoryTransport, OutgoingMessage};

    #[tokio::test]
    async fn counts_and_switches_off() {
        let memory: Arc<dyn Transport> = Arc::new(MemoryTransport::new());
        memory.declare("q").await.unwrap();
        let (none, faults) = wrap("test", memory.clone(), None).unwrap();
        assert!(faults.is_none());
        assert_eq!(none.system(), "memory");

        let config = FaultConfig {
            drop: 1.0,
            ..FaultConfig::default()
        };
        let (transport, faults) = wrap("test", memory.clone(), Some(config)).unwrap();
        let faults = faults.unwrap();
        transport
            .publish("q", OutgoingMessage::new(b"lost".to_vec()))
            .await
            .unwrap();
        let s = status(State(faults.clone())).await.0;
        assert!(s.enabled);
        assert_eq!(s.counters.dropped, 1);

        let s = switch(State(faults.clone()), Ok(Json(Switch { enabled: false })))
            .await
            .unwrap()
            .0;
        assert!(!s.enabled);
        transport
            .publish("q", OutgoingMessage::new(b"kept".to_vec()))
            .await
            .unwrap();
        assert_eq!(status(State(faults)).await.0.counters.dropped, 1);
        let mut consumer = memory.consume("q", ConsumeOptions::default()).await.unwrap();
        let got = consumer.next_batch(10).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].payload, b"kept");
    }
}
