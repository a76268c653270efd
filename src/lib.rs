//! # kessai — the binary's library
//!
//! The `kessai` command line ([`cli`]), wiring three crates into one binary:
//! - `kessai-service` — what runs in production: `kessai coordinator` and
//!   `kessai participant <name>`, one service per process, with their configuration,
//!   HTTP API and health checks;
//! - `kessai-client` — `kessai submit` and `kessai saga show|list|retry`, clients of
//!   that API;
//! - `kessai-harness` (cargo feature `harness`, on by default) — what proves it:
//!   `kessai demo`, `kessai serve`, `kessai bench` and `kessai chaos`, with the
//!   embedded stack and the invariant checks.
//!
//! A deployment build leaves the harness out:
//! `cargo build --release --no-default-features --features amqp,sqs`.
//!
//! ## Layout
//! - [`cli`]: the commands (clap) and their dispatch.

pub mod cli;
