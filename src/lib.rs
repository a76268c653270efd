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
//! - [`invariants`]: SPEC §4 checked from the coordinator's outcomes and each
//!   participant's own books.
//! - [`telemetry`]: logging set-up (the OpenTelemetry layer will join it).

pub mod cli;
pub mod demo;
pub mod invariants;
pub mod stack;
pub mod telemetry;
