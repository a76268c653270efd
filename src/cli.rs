//! The `kessai` command line.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "kessai", version, about = "Message-driven TCC saga coordinator")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the coordinator and the three reference participants in one process, submit
    /// payments, wait for them, check the invariants and report.
    #[cfg(feature = "harness")]
    Demo(kessai_harness::cli::DemoArgs),
    /// Run the coordinator as its own process (config file + KESSAI_* environment),
    /// with /healthz and the HTTP API on http.listen. Stops gracefully on SIGTERM.
    Coordinator(kessai_service::service::CoordinatorArgs),
    /// Run one reference participant as its own process, with /healthz on http.listen.
    /// Stops gracefully on SIGTERM.
    Participant(kessai_service::service::ParticipantArgs),
    /// Inject faults (message drop / duplicate / delay / reorder, process kills) under a
    /// payment workload, wait for quiescence, check every invariant (docs/GUARANTEES.md) and report.
    #[cfg(feature = "harness")]
    Chaos(kessai_harness::chaos::ChaosArgs),
    /// Measure throughput, latency and CPU per saga under the payment workload (closed
    /// loop at --concurrency, or open loop at --open-rate), durability on; check the
    /// invariants at the end.
    #[cfg(feature = "harness")]
    Bench(kessai_harness::cli::BenchArgs),
}

impl Command {
    /// A long-running service (as opposed to a command that prints a report).
    pub fn is_service(&self) -> bool {
        matches!(self, Command::Coordinator(_) | Command::Participant(_))
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        #[cfg(feature = "harness")]
        Command::Demo(args) => kessai_harness::cli::run_demo(args).await,
        Command::Coordinator(args) => kessai_service::service::run_coordinator(args).await,
        Command::Participant(args) => kessai_service::service::run_participant(args).await,
        #[cfg(feature = "harness")]
        Command::Chaos(args) => kessai_harness::chaos::run_cli(args).await,
        #[cfg(feature = "harness")]
        Command::Bench(args) => kessai_harness::cli::run_bench(args).await,
    }
}
