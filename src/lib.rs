//! # kessai — the binary's library
//!
//! Wires the crates of the workspace into runnable configurations. No protocol logic
//! lives here: that is in `kessai-coordinator` and `kessai-participants`.
//!
//! ## Layout
//! - [`cli`]: the `kessai` command line (clap) and its dispatch.
//! - [`stack`]: the embedded stack — the coordinator and the three reference
//!   participants in one process, each on its own database, over one transport; with
//!   crash (`kill_*`) and restart hooks for tests and the chaos harness.
//! - [`demo`]: `kessai demo` — seeds, submits N payments at concurrency C, waits,
//!   checks the invariants, reports.
//! - [`bench`]: `kessai bench` — the benchmark workload, closed or open loop, in one
//!   process or one process per service (`bench_processes`): sagas/s, latency
//!   percentiles, CPU per saga per process ([`procstat`]), statements and commands
//!   per saga, 429s; the invariants at the end.
//! - [`chaos`]: `kessai chaos` — faults (drop, duplicate, delay, reorder, process
//!   kills, broker restarts) under load, in one process or as the multi-process
//!   deployment (child processes on PostgreSQL), then quiescence, the invariants and
//!   the barrier records.
//! - [`invariants`]: SPEC §4 checked from the coordinator's outcomes and each
//!   participant's own books.
//! - [`service`]: `kessai coordinator` / `kessai participant <name>` — one service per
//!   process: config → own database → transport (waiting for the broker) → run until
//!   SIGTERM → graceful stop, reporting how each task ended.
//! - [`health`]: `/healthz` (database and transport checks), served by every process.
//! - [`http`]: the coordinator's HTTP API (`/v1/payments`, `/v1/sagas/{id}`), merged
//!   into the health router by [`service`].
//! - [`fault_control`]: fault injection inside a service process (`[faults]`) and its
//!   `GET|PUT /v1/faults` switch, for `kessai chaos` over real brokers.
//! - [`config`]: layered configuration (defaults ← TOML ← `KESSAI_*`).
//! - [`telemetry`]: logging set-up (the OpenTelemetry layer will join it).
//! - [`units`]: duration parsing shared by the CLI and the HTTP API.

pub mod bench;
mod bench_processes;
pub mod chaos;
pub mod cli;
pub mod config;
pub mod demo;
pub mod fault_control;
pub mod health;
pub mod http;
pub mod invariants;
pub mod procstat;
pub mod service;
pub mod stack;
pub mod telemetry;
pub mod units;
