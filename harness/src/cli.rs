//! The harness's commands on the `kessai` command line: `kessai demo` and
//! `kessai bench` (their flags and how they report). `kessai chaos` keeps its flags in
//! [`crate::chaos`].

use crate::demo::{self, DemoOptions, DemoSummary, StoreKind, TransportKind};
use clap::Args;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

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
    #[command(flatten)]
    pub run: RunArgs,
}

/// The flags `demo` and `bench` share.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Seed of the generated workload.
    #[arg(long, default_value = "42")]
    pub seed: u64,
    /// Print one JSON object instead of the report.
    #[arg(long)]
    pub json: bool,
    /// TOML config for broker and database settings (then `KESSAI_*` env vars).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[arg(long, value_enum, default_value = "memory")]
    pub transport: TransportKind,
    /// Default: sqlite in one process, postgres with --processes (its only store).
    #[arg(long, value_enum)]
    pub store: Option<StoreKind>,
    /// Closed loop: clients each submitting back-to-back and waiting for the outcome.
    #[arg(long, default_value = "64", value_parser = parse_concurrency, allow_hyphen_values = true)]
    pub concurrency: usize,
    /// Open loop: payments per second arriving whatever happens to earlier ones
    /// (refusals are counted, not retried). Replaces --concurrency.
    #[arg(long, value_parser = parse_rate_per_s, allow_hyphen_values = true)]
    pub open_rate: Option<f64>,
    /// How long to measure, after the warm-up (e.g. 30s, 2m).
    #[arg(long, default_value = "30s", value_parser = parse_bench_duration)]
    pub duration: std::time::Duration,
    /// Load before measuring starts (caches, pools, the admission bound settle).
    #[arg(long, default_value = "5s", value_parser = parse_bench_warmup)]
    pub warmup: std::time::Duration,
    /// Fraction of payments made to fail at the bank's try, from 0 to 1.
    #[arg(long, default_value = "0.1", value_parser = parse_rate, allow_hyphen_values = true)]
    pub fail_rate: f64,
    /// One process per service (coordinator, balance, card-issuer, bank) on PostgreSQL,
    /// over --transport amqp or sqs, driven over HTTP.
    #[arg(long)]
    pub processes: bool,
    #[command(flatten)]
    pub run: RunArgs,
}

fn parse_bench_duration(s: &str) -> Result<std::time::Duration, String> {
    let d = kessai_service::units::parse_duration(s).map_err(|e| e.to_string())?;
    if d < std::time::Duration::from_secs(1) || d > std::time::Duration::from_secs(3600) {
        return Err(format!("must be between 1s and 1h, got {s:?}"));
    }
    Ok(d)
}

fn parse_bench_warmup(s: &str) -> Result<std::time::Duration, String> {
    let d = kessai_service::units::parse_duration(s).map_err(|e| e.to_string())?;
    if d > std::time::Duration::from_secs(600) {
        return Err(format!("must be at most 10m, got {s:?}"));
    }
    Ok(d)
}

fn parse_rate_per_s(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(f) if f.is_finite() && f > 0.0 && f <= 1_000_000.0 => Ok(f),
        _ => Err(format!(
            "must be a number of payments per second, above 0 and at most 1000000, got {s:?}"
        )),
    }
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

pub async fn run_bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let json = args.run.json;
    if args.processes && args.transport == TransportKind::Memory {
        anyhow::bail!("--processes needs a broker between the processes: --transport amqp or sqs");
    }
    if args.processes && args.store == Some(StoreKind::Sqlite) {
        anyhow::bail!("--processes runs on PostgreSQL (one database per service): drop --store sqlite");
    }
    let report = crate::bench::run(crate::bench::BenchOptions {
        transport: args.transport,
        store: args.store.unwrap_or(if args.processes {
            StoreKind::Postgres
        } else {
            StoreKind::Sqlite
        }),
        concurrency: args.concurrency,
        open_rate: args.open_rate,
        duration: args.duration,
        warmup: args.warmup,
        fail_rate: args.fail_rate,
        processes: args.processes,
        seed: args.run.seed,
        progress: !json && std::io::stderr().is_terminal(),
        config: kessai_service::config::Config::load(args.run.config.as_deref())?,
    })
    .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        report.print();
    }
    Ok(if report.invariants_ok && report.unfinished == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub async fn run_demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let json = args.run.json;
    let summary = demo::run(DemoOptions {
        payments: args.payments,
        fail_rate: args.fail_rate,
        concurrency: args.concurrency,
        transport: args.transport,
        store: args.store,
        data_dir: args.data_dir,
        seed: args.run.seed,
        progress: std::io::stderr().is_terminal(),
        config: kessai_service::config::Config::load(args.run.config.as_deref())?,
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
    println!("  invariants:");
    s.invariants.print();
}
