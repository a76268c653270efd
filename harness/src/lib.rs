//! # kessai-harness — the demo, the benchmark and the chaos harness
//!
//! Everything that proves kessai rather than runs it in production. The `kessai`
//! binary links it behind its default `harness` feature; a deployment build
//! (`--no-default-features --features amqp,sqs`) leaves it and libc out.
//!
//! ## Layout
//! - [`stack`]: the embedded stack — the coordinator and every registered participant
//!   in one process, each on its own database, over one transport; with crash
//!   (`kill_*`) and restart hooks for tests and the chaos harness.
//! - [`demo`]: `kessai demo` — seeds, submits N payments at concurrency C, waits,
//!   checks the invariants, reports. Its [`demo::RunStack`] is the set-up `bench`
//!   shares.
//! - [`bench`]: `kessai bench` — the benchmark workload, closed or open loop, in one
//!   process or one process per service (`bench_processes`): sagas/s, latency
//!   percentiles, CPU per saga per process ([`procstat`]), statements and commands
//!   per saga, 429s; the invariants at the end.
//! - [`chaos`]: `kessai chaos` — faults (drop, duplicate, delay, reorder, process
//!   kills, broker restarts) under load, in one process or as the multi-process
//!   deployment (child processes on PostgreSQL), then quiescence, the invariants and
//!   the barrier records.
//! - [`invariants`]: the invariants of `docs/GUARANTEES.md`, checked from the
//!   coordinator's outcomes and each participant's own books.
//! - [`serve`]: `kessai serve` — the embedded stack behind the HTTP API, with one
//!   development token, for trying kessai out with `curl` and `kessai saga …`.
//! - [`cli`]: the flags of `kessai demo` and `kessai bench`.

pub mod bench;
mod bench_processes;
pub mod chaos;
pub mod cli;
pub mod demo;
pub mod invariants;
pub mod procstat;
pub mod serve;
pub mod stack;
