//! `GET /healthz`: liveness and readiness of one service process.
//!
//! One endpoint answers both questions, because a kessai service is useful exactly
//! when it can reach its own database and its broker: 200 when both answer, 503 naming
//! the failing check otherwise. Each check has a deadline, so a hung dependency makes
//! the probe fail promptly instead of hanging the prober.
//!
//! [`router`] is a plain function returning a stateless `Router` so each process
//! merges its other routes into it (the coordinator adds [`crate::http::router`]).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use kessai_transport::Transport;
use sea_orm::DatabaseConnection;
use serde_json::{Map, Value, json};
use std::fmt::Display;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest a single check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// What `/healthz` probes for one service.
#[derive(Clone)]
pub struct Health {
    /// `coordinator`, `balance`, `card-issuer` or `bank`, echoed in the response so a
    /// misrouted probe is obvious.
    service: String,
    db: DatabaseConnection,
    transport: Arc<dyn Transport>,
    /// The queue this service consumes. Probing it (not just the connection) shows the
    /// broker answers *and* the queue the service depends on still exists.
    queue: String,
}

/// The outcome of one probe.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthReport {
    pub healthy: bool,
    pub body: Value,
}

impl Health {
    pub fn new(
        service: impl Into<String>,
        db: DatabaseConnection,
        transport: Arc<dyn Transport>,
        queue: impl Into<String>,
    ) -> Self {
        Health {
            service: service.into(),
            db,
            transport,
            queue: queue.into(),
        }
    }

    /// Runs every check (concurrently) and builds the response body.
    pub async fn check(&self) -> HealthReport {
        let (database, transport) = tokio::join!(timed(self.db.ping()), timed(self.transport.pending(&self.queue)));
        let mut checks = Map::new();
        let mut healthy = true;
        let mut record = |name: &str, result: Result<Map<String, Value>, String>, extra: Map<String, Value>| {
            let mut entry = extra;
            match result {
                Ok(fields) => {
                    entry.insert("status".into(), "ok".into());
                    entry.extend(fields);
                }
                Err(error) => {
                    healthy = false;
                    entry.insert("status".into(), "error".into());
                    entry.insert("error".into(), error.into());
                }
            }
            checks.insert(name.into(), Value::Object(entry));
        };
        record("database", database.map(|((), ms)| latency(ms)), Map::new());
        let mut about_queue = Map::new();
        about_queue.insert("system".into(), self.transport.system().into());
        about_queue.insert("queue".into(), self.queue.clone().into());
        record(
            "transport",
            transport.map(|(pending, ms)| {
                let mut fields = latency(ms);
                if let Some(n) = pending {
                    fields.insert("pending".into(), n.into());
                }
                fields
            }),
            about_queue,
        );
        HealthReport {
            healthy,
            body: json!({
                "status": if healthy { "ok" } else { "error" },
                "service": self.service,
                "checks": checks,
            }),
        }
    }
}

fn latency(ms: f64) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("latency_ms".into(), json!((ms * 10.0).round() / 10.0));
    m
}

/// Runs a check under [`CHECK_TIMEOUT`]; the value and how long it took, in ms.
async fn timed<T, E: Display>(check: impl Future<Output = Result<T, E>>) -> Result<(T, f64), String> {
    let started = Instant::now();
    match tokio::time::timeout(CHECK_TIMEOUT, check).await {
        Ok(Ok(v)) => Ok((v, started.elapsed().as_secs_f64() * 1000.0)),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
    }
}

/// `GET /healthz`.
pub fn router(health: Health) -> Router {
    Router::new().route("/healthz", get(healthz)).with_state(health)
}

async fn healthz(State(health): State<Health>) -> Response {
    let report = health.check().await;
    if !report.healthy {
        tracing::warn!(service = %health.service, report = %report.body, "health check failed");
    }
    let status = if report.healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report.body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kessai_migrations::Service;
    use kessai_transport::MemoryTransport;

    #[tokio::test]
    async fn reports_each_failing_check() {
        let dir = tempfile::tempdir().unwrap();
        let url = kessai_migrations::sqlite_url(&dir.path().join("coordinator.db"));
        let db = kessai_migrations::open(&url, Service::Coordinator, 1).await.unwrap();
        let transport: Arc<dyn Transport> = Arc::new(MemoryTransport::new());
        transport.declare("replies").await.unwrap();

        let report = Health::new("coordinator", db.clone(), transport.clone(), "replies")
            .check()
            .await;
        assert!(report.healthy, "{}", report.body);
        assert_eq!(report.body["service"], "coordinator");
        assert_eq!(report.body["checks"]["database"]["status"], "ok");
        assert_eq!(report.body["checks"]["transport"]["status"], "ok");
        assert_eq!(report.body["checks"]["transport"]["system"], "memory");

        assert_eq!(report.body["checks"]["transport"]["pending"], 0);

        // A closed database fails the database check, and only it.
        db.clone().close().await.unwrap();
        let report = Health::new("coordinator", db, transport, "replies").check().await;
        assert!(!report.healthy, "{}", report.body);
        assert_eq!(report.body["status"], "error");
        assert_eq!(report.body["checks"]["database"]["status"], "error");
        assert!(report.body["checks"]["database"]["error"].is_string());
        assert_eq!(report.body["checks"]["transport"]["status"], "ok");
    }
}
