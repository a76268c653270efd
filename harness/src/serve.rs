//! `kessai serve`: the embedded stack behind the HTTP API, for trying the API (and
//! `kessai submit`, `kessai saga …`) on one machine with nothing else installed.
//!
//! The coordinator and the three reference participants run in this process, each on
//! its own SQLite file, over the in-process queues, with the demo data seeded (the
//! same stack as `kessai demo`). The API (docs/API.md) and `/healthz` listen on
//! `--listen`, guarded by one token named `admin` with every scope. Ctrl-C or SIGTERM
//! stops it gracefully: no new requests, in-flight ones finish, then the participants
//! finish their batch and the coordinator flushes its outbox. A second signal exits at
//! once.

use crate::stack::{DatabaseUrls, EmbeddedStack, StackConfig};
use anyhow::Context;
use clap::Args;
use kessai_participants::Registry;
use kessai_participants::ledger::{DEMO_ACCOUNTS, FROZEN_SETTLEMENT_ACCOUNT};
use kessai_service::config::Config;
use kessai_service::health::{self, Health};
use kessai_service::metrics::{ProcessMetrics, Runs};
use kessai_transport::{MemoryTransport, Transport};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long in-flight HTTP requests get to finish once shutdown starts.
const HTTP_DRAIN: Duration = Duration::from_secs(10);

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address the HTTP API and /healthz listen on (port 0: any free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Folder for the SQLite files (one per service), kept after exit: a later
    /// `kessai serve --data-dir` on it resumes where this one stopped. Default: a
    /// temporary folder, removed at exit.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The bearer token of the API (client name `admin`, every scope). Default: a
    /// random token, printed at start.
    #[arg(long, value_name = "TOKEN")]
    pub admin_token: Option<String>,
}

/// Registers the metrics of everything an embedded stack runs, and hands them to its
/// coordinator and participants: call before [`EmbeddedStack::start`], then pass the
/// result to [`router`].
pub fn with_metrics(config: &mut StackConfig) -> ProcessMetrics {
    let metrics = ProcessMetrics::new(Runs {
        coordinator: true,
        participants: true,
    });
    config.coordinator.metrics = metrics.coordinator.clone();
    config.participant.metrics = metrics.participants.clone();
    metrics
}

/// The embedded stack's HTTP surface, as `kessai serve` serves it: `/healthz`, the
/// `/v1` API and `/ui`, and `/metrics` (open).
pub fn router(stack: &EmbeddedStack, api: kessai_service::http::ApiConfig, metrics: ProcessMetrics) -> axum::Router {
    let coordinator = stack.coordinator().clone();
    let topology = &stack.config().coordinator.topology;
    let queues = stack
        .config()
        .registry
        .names()
        .into_iter()
        .map(|p| topology.command_queue(p))
        .collect();
    let metrics = metrics
        .on_scrape(kessai_service::metrics::coordinator_refresh(coordinator.clone()))
        .on_scrape(kessai_service::metrics::queue_refresh(
            stack.config().participant.metrics.clone(),
            stack.transport().clone(),
            queues,
        ));
    health::router(Health::new(
        "coordinator",
        coordinator.db().clone(),
        stack.transport().clone(),
        topology.reply_queue(),
    ))
    .merge(kessai_service::http::router(coordinator, api))
    .merge(kessai_service::metrics::router(Arc::new(metrics), None))
}

/// `kessai serve`.
pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let token = match args.admin_token {
        Some(t) => {
            anyhow::ensure!(
                !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()),
                "--admin-token must be printable ASCII without spaces"
            );
            t
        }
        None => uuid::Uuid::new_v4().simple().to_string(),
    };
    let stop = kessai_service::service::watch_signals()?;

    // Listen first: a busy port fails before anything else starts.
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("listening on --listen {:?}", args.listen))?;
    let address = listener.local_addr().context("the listening address")?;

    let (dir, temp) = match args.data_dir {
        Some(d) => {
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
            (d, None)
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("kessai-serve-")
                .tempdir()
                .context("creating a temporary data folder")?;
            (t.path().to_path_buf(), Some(t))
        }
    };

    // Production coordinator and participant settings (generic sagas may name any
    // reference participant), in-process queues, one SQLite file per service.
    let config = Config::default();
    let registry = Registry::reference();
    let mut stack_config = StackConfig::new(registry.clone(), DatabaseUrls::sqlite(&dir, &registry));
    stack_config.coordinator = config.coordinator_config();
    stack_config.participant = config.participant_config();
    let metrics = with_metrics(&mut stack_config);
    let transport: Arc<dyn Transport> = Arc::new(MemoryTransport::new());
    let stack = EmbeddedStack::start(stack_config, transport)
        .await
        .context("starting the embedded stack")?;

    let api = kessai_service::http::ApiConfig {
        // A link to each saga's trace, e.g. Jaeger's http://localhost:16686/trace/{trace_id}.
        trace_url: std::env::var("KESSAI_TELEMETRY__TRACE_URL")
            .ok()
            .filter(|u| !u.is_empty()),
        ..kessai_service::http::ApiConfig::dev_admin(&token)
    };
    let router = router(&stack, api, metrics);

    // The banner before serving: whoever sees the API answer can read it already.
    print_banner(address, &token, &dir, temp.is_some(), &registry);
    let http_stop = CancellationToken::new();
    let mut http = {
        let http_stop = http_stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { http_stop.cancelled().await })
                .await
        })
    };
    tracing::info!(http.listen = %address, data_dir = %dir.display(), "ready");

    let mut ok = true;
    tokio::select! {
        _ = stop.cancelled() => {}
        r = &mut http => {
            ok = false;
            match r {
                Ok(Ok(())) => tracing::error!("the HTTP server ended on its own; stopping"),
                Ok(Err(e)) => tracing::error!(error = %e, "the HTTP server failed; stopping"),
                Err(e) => tracing::error!(error = %e, "the HTTP server panicked; stopping"),
            }
        }
    }

    // HTTP first, so no new work arrives while the stack drains.
    http_stop.cancel();
    if !http.is_finished() {
        match tokio::time::timeout(HTTP_DRAIN, &mut http).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => {
                ok = false;
                tracing::error!(error = %e, "the HTTP server failed while stopping");
            }
            Ok(Err(e)) => {
                ok = false;
                tracing::error!(error = %e, "the HTTP server panicked while stopping");
            }
            Err(_) => {
                http.abort();
                tracing::warn!("in-flight requests still running after {HTTP_DRAIN:?}; dropped");
            }
        }
    }
    for (task, r) in stack.shutdown().await {
        match r {
            Ok(()) => tracing::debug!(task, "task ended"),
            Err(error) => {
                ok = false;
                tracing::error!(task, error, "task failed");
            }
        }
    }
    match temp {
        Some(t) => {
            let path = t.path().display().to_string();
            if let Err(e) = t.close() {
                tracing::warn!(path, error = %e, "removing the temporary data folder failed");
            }
        }
        None => eprintln!("kessai serve: stopped; the data stays in {}", dir.display()),
    }
    if ok {
        tracing::info!("stopped cleanly");
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::FAILURE)
    }
}

/// The URL a client on this machine uses: a wildcard listen address is reached on
/// loopback.
fn client_url(address: SocketAddr) -> String {
    let ip = match address.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, address.port()))
}

fn print_banner(address: SocketAddr, token: &str, dir: &std::path::Path, temporary: bool, registry: &Registry) {
    let url = client_url(address);
    let services = std::iter::once("coordinator")
        .chain(registry.names())
        .collect::<Vec<_>>()
        .join(", ");
    let kept = if temporary {
        "a temporary folder, removed at exit"
    } else {
        "kept at exit"
    };
    eprintln!(
        "kessai serve: {services} in this process, over in-process queues
  data:   {dir} ({kept})
  demo:   wallets acct-1 … acct-{DEMO_ACCOUNTS}, cards card-1 … card-{DEMO_ACCOUNTS}; settlement account
          {FROZEN_SETTLEMENT_ACCOUNT} is frozen (the bank refuses it: the saga cancels)
  API:    {url}/v1   (described at {url}/v1/openapi.json)
  web UI: {url}/ui   (paste the token)
  health: {url}/healthz   metrics: {url}/metrics
  token:  {token}   (client \"admin\", every scope)

  try:
    curl -s -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' \\
      -d '{{\"payment_id\": \"p-1\", \"account_id\": \"acct-1\", \"card_id\": \"card-1\", \"amount\": 1250, \"currency\": \"EUR\"}}' \\
      {url}/v1/payments
    export KESSAI_URL={url} KESSAI_TOKEN={token}
    kessai submit payment --payment-id p-2 --account acct-1 --card card-1 --amount 1250 --currency EUR
    kessai saga show <saga_id> --wait 5s

  Ctrl-C stops (gracefully; a second Ctrl-C exits at once).",
        dir = dir.display(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_address_is_reached_on_loopback() {
        assert_eq!(client_url("0.0.0.0:8080".parse().unwrap()), "http://127.0.0.1:8080");
        assert_eq!(client_url("[::]:9000".parse().unwrap()), "http://[::1]:9000");
        assert_eq!(client_url("10.1.2.3:80".parse().unwrap()), "http://10.1.2.3:80");
    }
}
