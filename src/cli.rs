//! The `kessai` command line.

use crate::demo::{self, DemoOptions, DemoSummary, StoreKind, TransportKind};
use clap::{Args, Parser, Subcommand};
use std::io::IsTerminal;
use std::path::PathBuf;
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
    Demo(DemoArgs),
    /// Run the coordinator as its own process (config file + KESSAI_* environment),
    /// with /healthz and the HTTP API on http.listen. Stops gracefully on SIGTERM.
    Coordinator(crate::service::CoordinatorArgs),
    /// Run one reference participant as its own process, with /healthz on http.listen.
    /// Stops gracefully on SIGTERM.
    Participant(crate::service::ParticipantArgs),
    /// Inject faults (message drop / duplicate / delay / reorder, process kills) under a
    /// payment workload, wait for quiescence, check every SPEC §4 invariant and report.
    Chaos(crate::chaos::ChaosArgs),
}

impl Command {
    /// A long-running service (as opposed to a command that prints a report).
    pub fn is_service(&self) -> bool {
        matches!(self, Command::Coordinator(_) | Command::Participant(_))
    }
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How many payments to submit (a positive integer).
    #[arg(long, default_value = "1000", value_parser = parse_positive_u64, allow_hyphen_values = true)]
    pub payments: u64,
    /// Fraction of payments made to fail at the bank's try, from 0 to 1.
    #[arg(long, default_value = "0.1", value_parser = parse_rate, allow_hyphen_values = true)]
    pub fail_rate: f64,
    /// Concurrent clients, each submitting back-to-back and waiting for the outcome.
    #[arg(long, default_value = "64", value_parser = parse_concurrency, allow_hyphen_values = true)]
    pub concurrency: usize,
    #[arg(long, value_enum, default_value = "memory")]
    pub transport: TransportKind,
    #[arg(long, value_enum, default_value = "sqlite")]
    pub store: StoreKind,
    /// Folder for the SQLite files (one per service); default: a fresh temporary folder.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Seed of the generated workload.
    #[arg(long, default_value = "42")]
    pub seed: u64,
    /// Print one JSON object instead of the summary.
    #[arg(long)]
    pub json: bool,
    /// TOML config for broker and database settings (then `KESSAI_*` env vars).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

fn parse_positive_u64(s: &str) -> Result<u64, String> {
    match s.trim().parse::<i128>() {
        Ok(n) if n >= 1 && n <= u64::MAX as i128 => Ok(n as u64),
        Ok(n) => Err(format!("must be a positive whole number, got {n}")),
        Err(_) => Err(format!("must be a positive whole number, got {s:?}")),
    }
}

fn parse_concurrency(s: &str) -> Result<usize, String> {
    let n = parse_positive_u64(s)?;
    if n > 10_000 {
        return Err(format!("must be at most 10000, got {n}"));
    }
    Ok(n as usize)
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        Ok(f) => Err(format!("must be between 0 and 1, got {f}")),
        Err(_) => Err(format!("must be a number between 0 and 1, got {s:?}")),
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Demo(args) => run_demo(args).await,
        Command::Coordinator(args) => crate::service::run_coordinator(args).await,
        Command::Participant(args) => crate::service::run_participant(args).await,
        Command::Chaos(args) => crate::chaos::run_cli(args).await,
    }
}

async fn run_demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let json = args.json;
    let summary = demo::run(DemoOptions {
        payments: args.payments,
        fail_rate: args.fail_rate,
        concurrency: args.concurrency,
        transport: args.transport,
        store: args.store,
        data_dir: args.data_dir,
        seed: args.seed,
        progress: std::io::stderr().is_terminal(),
        config: crate::config::Config::load(args.config.as_deref())?,
    })
    .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_summary(&summary);
    }
    Ok(if summary.invariants_ok && summary.unfinished == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_summary(s: &DemoSummary) {
    println!(
        "kessai demo — {:?} transport, {:?} store, data in {}",
        s.transport, s.store, s.data_dir
    );
    println!(
        "  submitted {}  confirmed {}  cancelled {}  stuck {}  unfinished {}",
        s.submitted, s.confirmed, s.cancelled, s.stuck, s.unfinished
    );
    println!(
        "  {:.1} s, {:.0} sagas/s at concurrency {}; latency p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        s.elapsed_s, s.sagas_per_s, s.concurrency, s.p50_ms, s.p95_ms, s.p99_ms, s.max_ms
    );
    println!("  invariants (SPEC §4):");
    s.invariants.print();
}
