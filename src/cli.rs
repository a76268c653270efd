//! The `kessai` command line.

use clap::{Args, Parser, Subcommand};
use kessai_client::{Client, ClientError, ListFilter, PaymentRequest, SagaId, SagaRequest, SagaView};
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

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
    /// Run the coordinator and the three reference participants in one process (SQLite,
    /// in-process queues, demo data) behind the HTTP API and /healthz, until Ctrl-C or
    /// SIGTERM: a local API for `kessai submit` and `kessai saga`.
    #[cfg(feature = "harness")]
    Serve(kessai_harness::serve::ServeArgs),
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
    /// Submit a payment or a generic saga to a coordinator's HTTP API.
    #[command(after_help = EXIT_STATUS)]
    Submit(SubmitArgs),
    /// Show, list or retry sagas through a coordinator's HTTP API.
    #[command(after_help = EXIT_STATUS)]
    Saga(SagaArgs),
}

impl Command {
    /// A long-running service (as opposed to a command that prints a report).
    pub fn is_service(&self) -> bool {
        #[cfg(feature = "harness")]
        if matches!(self, Command::Serve(_)) {
            return true;
        }
        matches!(self, Command::Coordinator(_) | Command::Participant(_))
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        #[cfg(feature = "harness")]
        Command::Demo(args) => kessai_harness::cli::run_demo(args).await,
        #[cfg(feature = "harness")]
        Command::Serve(args) => kessai_harness::serve::run(args).await,
        Command::Coordinator(args) => kessai_service::service::run_coordinator(args).await,
        Command::Participant(args) => kessai_service::service::run_participant(args).await,
        #[cfg(feature = "harness")]
        Command::Chaos(args) => kessai_harness::chaos::run_cli(args).await,
        #[cfg(feature = "harness")]
        Command::Bench(args) => kessai_harness::cli::run_bench(args).await,
        Command::Submit(args) => Ok(api_command(run_submit(args).await)),
        Command::Saga(args) => Ok(api_command(run_saga(args).await)),
    }
}

// ---------------------------------------------------------------------------------
// The API's command-line client: `kessai submit …`, `kessai saga …`.
// ---------------------------------------------------------------------------------

const EXIT_STATUS: &str = "\
Exit status:
  0  done
  1  no answer (the API is unreachable or timed out), 429, or a server error (5xx):
     trying again later may help
  2  the request is wrong as given: the API refused it (a 4xx other than 429: bad
     input, unauthorized, forbidden, not found, conflict), the input file is not a
     valid request, or the command line is wrong

An API error prints its code, message and field (and the saga of a 409) on stderr.";

/// Where the API is and who is calling.
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// Base URL of the coordinator's HTTP API.
    #[arg(long, env = "KESSAI_URL", default_value = kessai_client::DEFAULT_URL, global = true)]
    pub url: String,
    /// Bearer token of the API.
    #[arg(long, env = "KESSAI_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
}

impl ApiArgs {
    fn client(&self) -> Result<Client, Failure> {
        Client::new(&self.url, self.token.clone()).map_err(Failure::Client)
    }
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(subcommand)]
    pub what: SubmitCommand,
}

#[derive(Debug, Subcommand)]
pub enum SubmitCommand {
    /// POST /v1/payments: the payment id is the idempotency key; the same payment again
    /// answers with the same saga and creates nothing.
    #[command(after_help = EXIT_STATUS)]
    Payment(SubmitPaymentArgs),
    /// POST /v1/sagas: a generic saga over the coordinator's participants. The body is
    /// JSON: {"branches": [{"participant": "balance", "payload": {"account_id":
    /// "acct-1", "amount": 5, "currency": "EUR"}}], "try_timeout_ms": 10000}
    /// (try_timeout_ms is optional).
    #[command(after_help = EXIT_STATUS)]
    Saga(SubmitSagaArgs),
}

#[derive(Debug, Args)]
pub struct SubmitPaymentArgs {
    /// The payment's id, also its idempotency key (1 to 128 characters).
    #[arg(long, value_name = "ID")]
    pub payment_id: String,
    /// The wallet to hold the amount on (the balance participant).
    #[arg(long = "account", value_name = "ID")]
    pub account_id: String,
    /// The card to authorise (the card-issuer participant).
    #[arg(long = "card", value_name = "ID")]
    pub card_id: String,
    /// In the currency's minor unit (cents for EUR), 1 to 100000000000.
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub amount: i64,
    /// ISO 4217 code, three upper-case letters.
    #[arg(long, value_name = "CODE")]
    pub currency: String,
    /// The issuer's settlement account at the bank (default: the server's).
    #[arg(long, value_name = "ID")]
    pub settlement_account: Option<String>,
    /// Print the answer as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SubmitSagaArgs {
    /// The Idempotency-Key (1 to 128 characters): the same key and body again answer
    /// with the same saga.
    #[arg(long, value_name = "KEY")]
    pub key: String,
    /// The request body, JSON; `-` reads it from stdin.
    #[arg(long, value_name = "FILE")]
    pub file: PathBuf,
    /// Print the answer as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SagaArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(subcommand)]
    pub what: SagaCommand,
}

#[derive(Debug, Subcommand)]
pub enum SagaCommand {
    /// GET /v1/sagas/{id}: state, branches and timeline.
    #[command(after_help = EXIT_STATUS)]
    Show(SagaShowArgs),
    /// GET /v1/sagas: sagas newest first, filtered, one page at a time.
    #[command(after_help = EXIT_STATUS)]
    List(SagaListArgs),
    /// POST /v1/sagas/{id}/retry: resend at once what the saga waits on, recording you
    /// (the token's name) and the reason in its timeline. Needs the admin scope.
    #[command(after_help = EXIT_STATUS)]
    Retry(SagaRetryArgs),
}

#[derive(Debug, Args)]
pub struct SagaShowArgs {
    #[arg(value_name = "SAGA_ID")]
    pub id: SagaId,
    /// Answer once the saga is over or this much time has passed, whichever is first
    /// (e.g. 5s, 500ms; at most 30s).
    #[arg(long, value_name = "DURATION", value_parser = parse_wait)]
    pub wait: Option<Duration>,
    /// Print the saga as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SagaListArgs {
    /// trying, confirming, cancelling, confirmed, cancelled, or stuck.
    #[arg(long, value_name = "STATE")]
    pub state: Option<String>,
    /// Only the stuck sagas.
    #[arg(long)]
    pub stuck: bool,
    /// Only sagas of this kind (payment, generic, …).
    #[arg(long, value_name = "KIND")]
    pub kind: Option<String>,
    /// Created after this time (Unix ms).
    #[arg(long, value_name = "MS", allow_hyphen_values = true)]
    pub created_after: Option<i64>,
    /// Created before this time (Unix ms).
    #[arg(long, value_name = "MS", allow_hyphen_values = true)]
    pub created_before: Option<i64>,
    /// Sagas per page, 1 to 500 (server default 50).
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,
    /// Where the page starts: the next cursor the previous page printed.
    #[arg(long, value_name = "CURSOR")]
    pub cursor: Option<String>,
    /// Print the page as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SagaRetryArgs {
    #[arg(value_name = "SAGA_ID")]
    pub id: SagaId,
    /// Why, for the saga's timeline.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Print the answer as JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_wait(s: &str) -> Result<Duration, String> {
    kessai_service::units::parse_duration(s)
}

/// Why an API command failed.
enum Failure {
    Client(ClientError),
    /// The input is not a valid request (exit 2).
    Input(String),
    /// Anything else (exit 1).
    Other(String),
}

/// Prints how an API command failed and picks its exit status.
fn api_command(result: Result<(), Failure>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Input(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Other(message)) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
        Err(Failure::Client(e)) => {
            print_client_error(&e);
            if e.is_client_error() || matches!(e, ClientError::Invalid(_)) {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn print_client_error(e: &ClientError) {
    match e {
        ClientError::Api {
            status,
            code,
            message,
            field,
            saga_id,
            retry_after,
        } => {
            eprintln!("error: {code} (HTTP {status}): {message}");
            if let Some(field) = field {
                eprintln!("  field: {field}");
            }
            if let Some(id) = saga_id {
                eprintln!("  saga:  {id}");
            }
            if let Some(after) = retry_after {
                eprintln!("  retry after {} s", after.as_secs());
            }
            if *status == 401 {
                eprintln!("  (set the token with --token or KESSAI_TOKEN)");
            }
        }
        ClientError::Transport { .. } => {
            eprintln!("error: {e}");
            eprintln!(
                "  (is `kessai serve` or `kessai coordinator` running there? set the URL with --url or KESSAI_URL)"
            );
        }
        _ => eprintln!("error: {e}"),
    }
}

fn print_json(value: &impl serde::Serialize) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Failure::Other(e.to_string()))?;
    println!("{text}");
    Ok(())
}

async fn run_submit(args: SubmitArgs) -> Result<(), Failure> {
    let client = args.api.client()?;
    let (submission, json) = match args.what {
        SubmitCommand::Payment(p) => {
            let request = PaymentRequest {
                payment_id: p.payment_id,
                account_id: p.account_id,
                card_id: p.card_id,
                amount: p.amount,
                currency: p.currency,
                settlement_account: p.settlement_account,
            };
            (client.submit_payment(&request).await, p.json)
        }
        SubmitCommand::Saga(s) => {
            let request = read_saga_request(&s.file)?;
            (client.submit_saga(&s.key, &request).await, s.json)
        }
    };
    let s = submission.map_err(Failure::Client)?;
    if json {
        return print_json(&serde_json::json!({
            "saga_id": s.saga_id,
            "created": s.created,
            "status": s.status_code,
        }));
    }
    if s.created {
        println!("saga {} submitted (HTTP {})", s.saga_id, s.status_code);
    } else {
        println!(
            "saga {} already submitted with this key and body; nothing new was created (HTTP {})",
            s.saga_id, s.status_code
        );
    }
    println!("  follow it: kessai saga show {} --wait 10s", s.saga_id);
    Ok(())
}

/// A generic saga's body from a file, or stdin for `-`.
fn read_saga_request(file: &std::path::Path) -> Result<SagaRequest, Failure> {
    let (text, from) = if file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| Failure::Input(format!("reading the request from stdin: {e}")))?;
        (text, "stdin".to_owned())
    } else {
        let text =
            std::fs::read_to_string(file).map_err(|e| Failure::Input(format!("reading {}: {e}", file.display())))?;
        (text, file.display().to_string())
    };
    serde_json::from_str(&text).map_err(|e| Failure::Input(format!("{from} is not a valid saga request: {e}")))
}

async fn run_saga(args: SagaArgs) -> Result<(), Failure> {
    let client = args.api.client()?;
    match args.what {
        SagaCommand::Show(a) => {
            let view = client.saga(a.id, a.wait).await.map_err(Failure::Client)?;
            if a.json {
                print_json(&view)
            } else {
                print_saga(&view);
                Ok(())
            }
        }
        SagaCommand::List(a) => {
            let filter = ListFilter {
                state: a.state.clone(),
                stuck: a.stuck.then_some(true),
                kind: a.kind.clone(),
                created_after: a.created_after,
                created_before: a.created_before,
                limit: a.limit,
                cursor: a.cursor.clone(),
            };
            let page = client.list(&filter).await.map_err(Failure::Client)?;
            if a.json {
                return print_json(&page);
            }
            print_page(&page, &a);
            Ok(())
        }
        SagaCommand::Retry(a) => {
            let r = client.retry(a.id, a.reason.as_deref()).await.map_err(Failure::Client)?;
            if a.json {
                return print_json(&r);
            }
            println!(
                "saga {} ({}): resent {} command{}",
                r.saga_id,
                r.state,
                r.resent,
                if r.resent == 1 { "" } else { "s" }
            );
            Ok(())
        }
    }
}

fn print_saga(v: &SagaView) {
    let mut head = format!("saga {}  {}  {}", v.id, v.kind, v.state);
    if v.stuck {
        head.push_str("  STUCK");
    }
    println!("{head}");
    if let Some(client) = &v.client {
        println!("  client:   {client}");
    }
    if let Some(key) = &v.idempotency_key {
        println!("  key:      {key}");
    }
    println!("  created:  {}", utc(v.created_at_ms));
    if let Some(f) = v.finished_at_ms {
        println!(
            "  finished: {} ({} after creation)",
            utc(f),
            elapsed(f - v.created_at_ms)
        );
    } else if let Some(u) = v.updated_at_ms {
        println!("  updated:  {}", utc(u));
    }
    if let Some(reason) = &v.reason {
        println!("  reason:   {reason}");
    }

    println!();
    if v.branches.is_empty() {
        println!("branches: none");
    } else {
        println!("branches:");
        let mut rows = vec![row(["#", "PARTICIPANT", "STATE", "ATTEMPT", "LAST ERROR"])];
        for b in &v.branches {
            rows.push(vec![
                b.branch_id.to_string(),
                b.participant.clone(),
                b.state.clone(),
                b.attempt.to_string(),
                b.last_error.clone().unwrap_or_else(|| "-".into()),
            ]);
        }
        print_table(&rows);
    }

    println!();
    if v.timeline.is_empty() {
        println!("timeline: empty");
    } else {
        println!("timeline:");
        let mut rows = vec![row(["AT", "EVENT", "BRANCH", "ACTOR", "DETAIL"])];
        for e in &v.timeline {
            let mut detail = e.detail.clone();
            if let Some(reason) = &e.reason
                && !detail.contains(reason.as_str())
            {
                detail.push_str(&format!(" (reason: {reason})"));
            }
            rows.push(vec![
                format!("+{}", elapsed(e.at_ms - v.created_at_ms)),
                e.kind.clone(),
                e.branch_id.map_or_else(|| "-".into(), |b| b.to_string()),
                e.actor.as_ref().map_or_else(|| "-".into(), |a| a.to_string()),
                detail,
            ]);
        }
        print_table(&rows);
    }
}

fn print_page(page: &kessai_client::SagaPage, args: &SagaListArgs) {
    if page.sagas.is_empty() {
        println!("no sagas");
    } else {
        let mut rows = vec![row(["ID", "KIND", "STATE", "STUCK", "CLIENT", "CREATED", "REASON"])];
        for s in &page.sagas {
            rows.push(vec![
                s.id.to_string(),
                s.kind.clone(),
                s.state.clone(),
                if s.stuck { "yes" } else { "-" }.into(),
                s.client.clone().unwrap_or_else(|| "-".into()),
                utc(s.created_at_ms),
                s.reason.clone().unwrap_or_else(|| "-".into()),
            ]);
        }
        print_table(&rows);
    }
    if let Some(cursor) = &page.next_cursor {
        let mut again = String::from("kessai saga list");
        for (flag, value) in [
            ("--state", args.state.clone()),
            ("--kind", args.kind.clone()),
            ("--created-after", args.created_after.map(|v| v.to_string())),
            ("--created-before", args.created_before.map(|v| v.to_string())),
            ("--limit", args.limit.map(|v| v.to_string())),
        ] {
            if let Some(v) = value {
                again.push_str(&format!(" {flag} {v}"));
            }
        }
        if args.stuck {
            again.push_str(" --stuck");
        }
        println!("more: {again} --cursor {cursor}");
    }
}

fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|c| (*c).to_owned()).collect()
}

/// Left-aligned columns, two spaces apart, the last one unpadded.
fn print_table(rows: &[Vec<String>]) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let mut line = String::from(" ");
        for (c, cell) in r.iter().enumerate() {
            line.push(' ');
            line.push_str(cell);
            if c + 1 < r.len() {
                let pad = widths[c] - cell.chars().count() + 1;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        println!("{}", line.trim_end());
    }
}

/// `ms` as a short duration: `85 ms`, `1.234 s`, `2 min 5 s`.
fn elapsed(ms: i64) -> String {
    if ms.abs() < 1000 {
        format!("{ms} ms")
    } else if ms.abs() < 60_000 {
        format!("{:.3} s", ms as f64 / 1000.0)
    } else {
        format!("{} min {} s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

/// Unix ms as `YYYY-MM-DD HH:MM:SS.mmm UTC`.
fn utc(ms: i64) -> String {
    let (secs, milli) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    let (days, day_secs) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{milli:03} UTC",
        day_secs / 3600,
        day_secs % 3600 / 60,
        day_secs % 60
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn timestamps_and_durations_read_well() {
        assert_eq!(utc(0), "1970-01-01 00:00:00.000 UTC");
        assert_eq!(utc(1_700_000_000_123), "2023-11-14 22:13:20.123 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00.000 UTC");
        assert_eq!(utc(-1), "1969-12-31 23:59:59.999 UTC");
        assert_eq!(elapsed(85), "85 ms");
        assert_eq!(elapsed(1234), "1.234 s");
        assert_eq!(elapsed(125_000), "2 min 5 s");
    }

    #[test]
    fn api_flags_parse_everywhere() {
        let cli = Cli::try_parse_from([
            "kessai",
            "saga",
            "show",
            "0196a3c1-7d2e-7a51-9c1e-2f4b8d6e0a13",
            "--wait",
            "5s",
            "--url",
            "http://h:1",
            "--token",
            "t",
        ])
        .unwrap();
        let Command::Saga(SagaArgs {
            api,
            what: SagaCommand::Show(show),
        }) = cli.command
        else {
            panic!("not saga show");
        };
        assert_eq!((api.url.as_str(), api.token.as_deref()), ("http://h:1", Some("t")));
        assert_eq!(show.wait, Some(Duration::from_secs(5)));

        assert!(Cli::try_parse_from(["kessai", "saga", "show", "not-a-uuid"]).is_err());
        assert!(
            Cli::try_parse_from([
                "kessai",
                "saga",
                "show",
                "0196a3c1-7d2e-7a51-9c1e-2f4b8d6e0a13",
                "--wait",
                "soon"
            ])
            .is_err()
        );
        assert!(
            Cli::try_parse_from(["kessai", "submit", "saga", "--key", "k"]).is_err(),
            "--file is required"
        );
    }
}
