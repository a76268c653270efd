//! `GET /metrics`: one Prometheus registry per process, in the Prometheus text format.
//!
//! Every service registers what it runs: the coordinator its [`CoordinatorMetrics`],
//! a participant process (or the embedded stack, which runs all of them) the
//! [`ParticipantMetrics`] every runtime shares, and all of them the one
//! `kessai_dead_lettered_total` family. Gauges that describe the database or the
//! broker are read at scrape time by the process's `refresh` hooks.

use crate::http::{Auth, Scope};
use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use futures::future::BoxFuture;
use kessai_coordinator::metrics::CoordinatorMetrics;
use kessai_participants::sdk::metrics::ParticipantMetrics;
use kessai_transport::metrics::DeadLetters;
use prometheus_client::registry::Registry;
use std::sync::Arc;

/// The OpenMetrics-compatible text format Prometheus scrapes.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Reads gauges just before a scrape is encoded.
pub type Refresh = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

/// A process's metrics: its registry and the sets it hands to the coordinator and the
/// participant runtimes it runs.
pub struct ProcessMetrics {
    registry: Registry,
    pub coordinator: CoordinatorMetrics,
    pub participants: ParticipantMetrics,
    refresh: Vec<Refresh>,
}

/// What a process runs, and so registers.
#[derive(Clone, Copy, Debug)]
pub struct Runs {
    pub coordinator: bool,
    pub participants: bool,
}

impl ProcessMetrics {
    pub fn new(runs: Runs) -> Self {
        let mut registry = Registry::default();
        let dead_letters = DeadLetters::default();
        dead_letters.register(&mut registry);
        let coordinator = CoordinatorMetrics::with_dead_letters(dead_letters.clone());
        let participants = ParticipantMetrics::with_dead_letters(dead_letters);
        if runs.coordinator {
            coordinator.register(&mut registry);
        }
        if runs.participants {
            participants.register(&mut registry);
        }
        ProcessMetrics {
            registry,
            coordinator,
            participants,
            refresh: Vec::new(),
        }
    }

    /// Adds a hook run before each scrape.
    pub fn on_scrape(mut self, refresh: Refresh) -> Self {
        self.refresh.push(refresh);
        self
    }

    /// Runs the hooks, then encodes every metric.
    pub async fn scrape(&self) -> String {
        for refresh in &self.refresh {
            refresh().await;
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

/// The coordinator's scrape hook: sagas by state, stuck, outbox, queue depths.
pub fn coordinator_refresh(coordinator: kessai_coordinator::Coordinator) -> Refresh {
    Arc::new(move || {
        let coordinator = coordinator.clone();
        Box::pin(async move {
            if let Err(e) = coordinator.refresh_metrics().await {
                tracing::warn!(error = %e, "cannot read the coordinator's gauges for /metrics");
            }
        })
    })
}

/// A participant's scrape hook: the depth of its command queue.
pub fn queue_refresh(
    metrics: ParticipantMetrics,
    transport: Arc<dyn kessai_transport::Transport>,
    queues: Vec<String>,
) -> Refresh {
    Arc::new(move || {
        let (metrics, transport, queues) = (metrics.clone(), transport.clone(), queues.clone());
        Box::pin(async move {
            for queue in queues {
                let depth = tokio::time::timeout(std::time::Duration::from_secs(1), transport.pending(&queue)).await;
                if let Ok(Ok(Some(n))) = depth {
                    metrics
                        .queue_depth
                        .get_or_create(&kessai_participants::sdk::metrics::QueueLabels { queue })
                        .set(i64::try_from(n).unwrap_or(i64::MAX));
                }
            }
        })
    })
}

/// `GET /metrics`. With `auth`, the scraper needs a token with `read` (for a
/// coordinator whose `auth.metrics_public` is false); without, it is open, like
/// `/healthz`.
pub fn router(metrics: Arc<ProcessMetrics>, auth: Option<Auth>) -> Router {
    Router::new().route(
        "/metrics",
        get(move |headers: HeaderMap| {
            let (metrics, auth) = (metrics.clone(), auth.clone());
            async move {
                if let Some(auth) = &auth
                    && let Err(e) = auth.require(&headers, Scope::Read)
                {
                    return e.into_response();
                }
                let text = metrics.scrape().await;
                (StatusCode::OK, [(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
            }
        }),
    )
}

/// Reads a counter or gauge sample from a scrape: the value of the line
/// `name{labels}` (`labels` as printed, e.g. `kind="payment",outcome="confirmed"`;
/// empty for none). For tests and tools.
pub fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let key = if labels.is_empty() {
        name.to_owned()
    } else {
        format!("{name}{{{labels}}}")
    };
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(&key)?.strip_prefix(' ')?.split(' ').next()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_scrape_lists_what_the_process_runs() {
        let m = ProcessMetrics::new(Runs {
            coordinator: false,
            participants: true,
        });
        m.participants
            .dead_letters
            .record("kessai-bank-commands", "bad signature");
        let text = m.scrape().await;
        assert_eq!(
            sample(
                &text,
                "kessai_dead_lettered_total",
                r#"queue="kessai-bank-commands",reason="signature""#
            ),
            Some(1.0)
        );
        // A family shows once it has a series; the coordinator's are not registered
        // (its unlabelled gauges would show at once).
        m.participants
            .queue_depth
            .get_or_create(&kessai_participants::sdk::metrics::QueueLabels { queue: "q".into() })
            .set(3);
        let text = m.scrape().await;
        assert_eq!(
            sample(&text, "kessai_participant_queue_depth", r#"queue="q""#),
            Some(3.0)
        );
        assert!(!text.contains("kessai_sagas_stuck"), "{text}");
        let both = ProcessMetrics::new(Runs {
            coordinator: true,
            participants: true,
        });
        assert_eq!(sample(&both.scrape().await, "kessai_sagas_stuck", ""), Some(0.0));
        assert!(text.ends_with("# EOF\n"));
    }
}
