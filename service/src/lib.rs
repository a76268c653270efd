//! # kessai-service — one kessai service per process
//!
//! What a deployment runs: `kessai coordinator` and `kessai participant <name>`. No
//! protocol logic lives here (that is in `kessai-coordinator` and
//! `kessai-participants`); this crate turns configuration into running services.
//!
//! ## Layout
//! - [`config`]: layered configuration (defaults ← TOML ← `KESSAI_*`), and the
//!   transport and store it selects.
//! - [`service`]: `kessai coordinator` / `kessai participant <name>` — config → own
//!   database → transport (waiting for the broker) → run until SIGTERM → graceful
//!   stop, reporting how each task ended.
//! - [`health`]: `/healthz` (database and transport checks), served by every process.
//! - [`http`]: the coordinator's HTTP API (`/v1/payments`, `/v1/sagas`, retry,
//!   `/v1/stats`, `/v1/openapi.json`) with bearer-token auth, strict input and limits,
//!   merged into the health router by [`service`].
//! - [`fault_control`]: fault injection inside a service process (`[faults]`, off
//!   unless configured) and its `GET|PUT /v1/faults` switch (scope `admin`), which
//!   `kessai chaos` drives over real brokers.
//! - [`telemetry`]: logging set-up.
//! - [`units`]: duration parsing shared by the CLI and the HTTP API.
//!
//! Data flow of one process: `Config::load` → `kessai_migrations::open` (its own
//! database) → `Config::transport` → `Coordinator::start` or the participant's runtime
//! → axum router on `http.listen` → shutdown on signal.

pub mod config;
pub mod fault_control;
pub mod health;
pub mod http;
pub mod metrics;
pub mod service;
pub mod telemetry;
pub mod units;
