//! The `kessai` command line.

use clap::{Args, Parser, Subcommand};
use kessai_client::{Client, ClientError, ListFilter, PaymentRequest, SagaId, SagaRequest, render};
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(name = "kessai", version, about = "Message-driven TCC saga coordinator")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// How log lines (stderr) are written: `json` gives one object per line, with
    /// `saga_id` and `trace_id` on lines logged while a saga is handled.
    #[arg(long, global = true, value_enum, env = "KESSAI_LOG_FORMAT", default_value = "text")]
    pub log_format: kessai_service::telemetry::LogFormat,
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
    /// The OpenTelemetry service name (`OTEL_SERVICE_NAME` overrides it):
    /// `kessai-coordinator`, `kessai-<participant>`, or `kessai` for the one-process
    /// commands.
    pub fn service_name(&self) -> String {
        match self {
            Command::Coordinator(_) => "kessai-coordinator".into(),
            Command::Participant(args) => format!("kessai-{}", args.name),
            _ => "kessai".into(),
        }
    }

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
    /// GET /v1/sagas/{id}: one saga in plain text — a header (kind, state, client,
    /// times, duration, reason, trace), its branches, and its timeline with each
    /// entry's offset from creation and, for an answer or a resend, the time since the
    /// send it follows.
    #[command(after_help = SHOW_HELP)]
    Show(SagaShowArgs),
    /// GET /v1/sagas: sagas newest first, filtered, one page at a time, one line each.
    #[command(after_help = LIST_HELP)]
    List(SagaListArgs),
    /// POST /v1/sagas/{id}/retry: resend at once what the saga waits on, recording you
    /// (the token's name) and the reason in its timeline. Needs the admin scope.
    #[command(after_help = EXIT_STATUS)]
    Retry(SagaRetryArgs),
}

const SHOW_HELP: &str = "\
Times are UTC. In the timeline, OFFSET is the time since the saga was created;
SINCE SEND is, for an answer, the time since the command it answers was sent (the
same branch, operation and send number) and, for a resend, the time since the
previous send; OPERATOR names who asked for a retry. A saga flagged STUCK keeps resending its
confirms or cancels: `kessai saga retry <id>` resends them at once.

Exit status:
  0  done
  1  no answer (the API is unreachable or timed out), 429, or a server error (5xx):
     trying again later may help
  2  the request is wrong as given: the API refused it (a 4xx other than 429: bad
     input, unauthorized, forbidden, not found), or the command line is wrong

An API error prints its code, message and field on stderr.";

const LIST_HELP: &str = "\
Times are UTC. DURATION is how long a finished saga took, or how long an unfinished
one has been running. `--since` counts back from this machine's clock. When there are
more sagas than --limit, the last line prints the command for the next page.

Exit status:
  0  done
  1  no answer (the API is unreachable or timed out), 429, or a server error (5xx):
     trying again later may help
  2  the request is wrong as given: the API refused it (a 4xx other than 429: bad
     input, unauthorized, forbidden), or the command line is wrong (e.g. a --since
     that is not a duration)

An API error prints its code, message and field on stderr.";

#[derive(Debug, Args)]
pub struct SagaShowArgs {
    /// The saga's id, a UUID (as `kessai submit` or `kessai saga list` printed it).
    #[arg(value_name = "SAGA_ID")]
    pub id: SagaId,
    /// Answer once the saga is over or this much time has passed, whichever is first
    /// (e.g. 5s, 500ms; at most 30s).
    #[arg(long, value_name = "DURATION", value_parser = parse_wait)]
    pub wait: Option<Duration>,
    /// Print the API's JSON answer as it came (pretty-printed) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The states `--state` takes (`stuck`: flagged stuck, whatever the state).
const LIST_STATES: [&str; 6] = ["trying", "confirming", "cancelling", "confirmed", "cancelled", "stuck"];

#[derive(Debug, Args)]
pub struct SagaListArgs {
    /// Only sagas in this state; `stuck` means flagged stuck, whatever the state.
    #[arg(long, value_name = "STATE", value_parser = clap::builder::PossibleValuesParser::new(LIST_STATES))]
    pub state: Option<String>,
    /// Only the sagas flagged stuck (confirms or cancels resent many times without
    /// success); combines with --state.
    #[arg(long)]
    pub stuck: bool,
    /// Only sagas of this kind (payment, generic, …).
    #[arg(long, value_name = "KIND")]
    pub kind: Option<String>,
    /// Only sagas submitted by this client (the name of its API token).
    #[arg(long, value_name = "CLIENT")]
    pub client: Option<String>,
    /// Only sagas created within this span before now: 90s, 30m, 1h, 2d, 1d12h.
    #[arg(
        long,
        value_name = "SPAN",
        value_parser = parse_since,
        allow_hyphen_values = true,
        conflicts_with = "created_after"
    )]
    pub since: Option<Duration>,
    /// Only sagas created at or after this time (Unix ms).
    #[arg(long, value_name = "MS", allow_hyphen_values = true)]
    pub created_after: Option<i64>,
    /// Only sagas created before this time (Unix ms).
    #[arg(long, value_name = "MS", allow_hyphen_values = true)]
    pub created_before: Option<i64>,
    /// Sagas per page, 1 to 500 (server default 50).
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,
    /// Where the page starts: the cursor the previous page printed.
    #[arg(long, value_name = "CURSOR")]
    pub cursor: Option<String>,
    /// Print the API's JSON answer as it came (pretty-printed) instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SagaRetryArgs {
    /// The saga's id, a UUID (as `kessai submit` or `kessai saga list` printed it).
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

/// A span back from now: what `parse_duration` reads (`90s`, `30m`, `1h`, `1m30s`),
/// optionally after a number of days (`2d`, `1d12h`). Zero is refused: it lists nothing.
fn parse_since(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid span {s:?}: use e.g. 90s, 30m, 1h or 2d");
    let t = s.trim();
    let (days, rest) = match t.find(['d', 'D']) {
        None => (0.0, t),
        Some(i) => {
            let days: f64 = t[..i].parse().map_err(|_| bad())?;
            let rest = t[i + 1..].trim_start_matches("ays").trim_start_matches("ay");
            (days, rest)
        }
    };
    if !(days.is_finite() && (0.0..=36_500.0).contains(&days)) {
        return Err(bad());
    }
    let rest = if rest.is_empty() {
        Duration::ZERO
    } else {
        kessai_service::units::parse_duration(rest).map_err(|_| bad())?
    };
    let span = Duration::from_secs_f64(days * 86_400.0) + rest;
    if span.is_zero() {
        return Err(format!("{s:?} is no time at all: use e.g. 90s, 30m, 1h or 2d"));
    }
    Ok(span)
}

/// Writes `text` to stdout. A reader that went away (`| head`) is not an error.
fn emit(text: &str) -> Result<(), Failure> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Failure::Other(format!("writing to stdout: {e}"))),
        _ => Ok(()),
    }
}

/// This machine's clock, Unix ms.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
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
            if a.json {
                let text = client.saga_json(a.id, a.wait).await.map_err(Failure::Client)?;
                emit(&(render::pretty_json(&text) + "\n"))
            } else {
                let view = client.saga(a.id, a.wait).await.map_err(Failure::Client)?;
                emit(&render::saga_view(&view, now_ms()))
            }
        }
        SagaCommand::List(mut a) => {
            // From here on the span is a fixed time, also in the next page's command.
            if let Some(since) = a.since.take() {
                let span = i64::try_from(since.as_millis()).unwrap_or(i64::MAX);
                a.created_after = Some(now_ms().saturating_sub(span));
            }
            let filter = ListFilter {
                state: a.state.clone(),
                stuck: a.stuck.then_some(true),
                kind: a.kind.clone(),
                client: a.client.clone(),
                created_after: a.created_after,
                created_before: a.created_before,
                limit: a.limit,
                cursor: a.cursor.clone(),
            };
            if a.json {
                let text = client.list_json(&filter).await.map_err(Failure::Client)?;
                return emit(&(render::pretty_json(&text) + "\n"));
            }
            let page = client.list(&filter).await.map_err(Failure::Client)?;
            let mut text = render::saga_page(&page, now_ms());
            if let Some(cursor) = &page.next_cursor {
                text.push_str(&format!("next page: {}\n", next_page_command(&a, cursor)));
            }
            emit(&text)
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

/// The `kessai saga list` that prints the page after `cursor`, with the same filters
/// (a `--since` already turned into `--created-after`).
fn next_page_command(args: &SagaListArgs, cursor: &str) -> String {
    let mut again = String::from("kessai saga list");
    for (flag, value) in [
        ("--state", args.state.clone()),
        ("--kind", args.kind.clone()),
        ("--client", args.client.clone()),
        ("--created-after", args.created_after.map(|v| v.to_string())),
        ("--created-before", args.created_before.map(|v| v.to_string())),
        ("--limit", args.limit.map(|v| v.to_string())),
        ("--cursor", Some(cursor.to_owned())),
    ] {
        if let Some(v) = value {
            again.push_str(&format!(" {flag} {}", shell_word(&v)));
        }
    }
    if args.stuck {
        again.push_str(" --stuck");
    }
    again
}

/// `s` as one shell word: as is when it is plain, single-quoted otherwise.
fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '/' | '@' | '+' | '='));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", render::clean(s).replace('\'', r"'\''"))
    }
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
    fn since_takes_days_on_top_of_the_usual_durations() {
        let ok = [
            ("90s", 90),
            ("30m", 1800),
            ("1h", 3600),
            ("2d", 2 * 86_400),
            ("1d12h", 86_400 + 12 * 3600),
            ("1day", 86_400),
            ("3days", 3 * 86_400),
            ("1.5d", 36 * 3600),
        ];
        for (text, secs) in ok {
            assert_eq!(parse_since(text), Ok(Duration::from_secs(secs)), "{text}");
        }
        for bad in [
            "", "garbage", "d", "2x", "-1h", "1h2d", "2dd", "0s", "0d", "1e9d", "NaNd",
        ] {
            let e = parse_since(bad).expect_err(bad);
            assert!(e.contains("90s, 30m, 1h or 2d"), "{bad}: {e}");
        }
    }

    #[test]
    fn list_flags_and_the_next_page() {
        let cli = Cli::try_parse_from([
            "kessai",
            "saga",
            "list",
            "--since",
            "1h",
            "--state",
            "stuck",
            "--client",
            "check out",
            "--limit",
            "2",
        ])
        .unwrap();
        let Command::Saga(SagaArgs {
            what: SagaCommand::List(mut list),
            ..
        }) = cli.command
        else {
            panic!("not saga list");
        };
        assert_eq!(list.since, Some(Duration::from_secs(3600)));
        assert_eq!(list.state.as_deref(), Some("stuck"));
        list.since = None;
        list.created_after = Some(1_700_000_000_000);
        assert_eq!(
            next_page_command(&list, "0196a3c1-7d2e-7a51-9c1e-2f4b8d6e0a13"),
            "kessai saga list --state stuck --client 'check out' --created-after 1700000000000 --limit 2 \
             --cursor 0196a3c1-7d2e-7a51-9c1e-2f4b8d6e0a13"
        );
        assert_eq!(shell_word("it's"), r"'it'\''s'");

        for bad in [
            &["kessai", "saga", "list", "--state", "canceled"][..],
            &["kessai", "saga", "list", "--since", "garbage"][..],
            &["kessai", "saga", "list", "--since", "1h", "--created-after", "5"][..],
        ] {
            let e = Cli::try_parse_from(bad).expect_err("refused");
            assert_eq!(e.exit_code(), 2, "{bad:?}");
        }
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
