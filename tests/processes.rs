//! kessai deployed the real way: the `kessai` binary started as four OS processes —
//! `kessai coordinator` and `kessai participant balance|card-issuer|bank` — each on its
//! own PostgreSQL database, talking over RabbitMQ or SQS, configured only through
//! `KESSAI_*` environment variables.
//!
//! Each test gets its own database prefix and queue prefix (dropped / deleted at the
//! end, also on failure), waits for every process's `/healthz`, submits payments over
//! HTTP (some routed to the frozen settlement account, so the bank rejects their try),
//! waits for every saga to end, stops the processes with SIGTERM (they must exit 0),
//! and checks the invariants from each service's own database.
//!
//! Servers follow the `kessai_testkit` rule: unreachable → skip with a
//! note, unless `KESSAI_REQUIRE_SERVICES=1` → fail.

use futures::FutureExt;
use futures::stream::{self, StreamExt};
use kessai_coordinator::SagaState;
use kessai_harness::invariants::{self, Resubmission};
use kessai_harness::stack::open_service_db;
use kessai_messages::SagaId;
use kessai_messages::payment::DEFAULT_SETTLEMENT_ACCOUNT;
use kessai_participants::ledger::{DEMO_ACCOUNTS, FROZEN_SETTLEMENT_ACCOUNT, demo_account_id, demo_card_id};
use kessai_participants::{Registry, database_name};
use kessai_testkit::{
    amqp_url, broker_lock, host_port, postgres_url, require_postgres, require_rabbitmq, require_sqs, sqs_endpoint,
};
use kessai_transport::{AmqpConfig, AmqpTransport, SqsTransport, Topology, Transport};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::fs::File;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;

/// Every `FAIL_EVERY`-th payment draws on the frozen settlement account.
const FAIL_EVERY: usize = 7;
const SUBMIT_CONCURRENCY: usize = 16;
const READY_WITHIN: Duration = Duration::from_secs(60);
const TERMINAL_WITHIN: Duration = Duration::from_secs(60);
const EXIT_WITHIN: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Broker {
    Amqp,
    Sqs,
}

impl Broker {
    fn kind(self) -> &'static str {
        match self {
            Broker::Amqp => "amqp",
            Broker::Sqs => "sqs",
        }
    }

    /// Payments per run. The SQS emulator (moto) tops out near 7 sagas/s on this kind
    /// of machine (every hop is several HTTP calls into one Python process, and its
    /// receive scans the whole queue), so the SQS run is smaller to stay well inside
    /// the time budget; RabbitMQ takes 200 in a few seconds.
    fn payments(self) -> usize {
        match self {
            Broker::Amqp => 200,
            Broker::Sqs => 60,
        }
    }
}

#[tokio::test]
async fn four_processes_over_rabbitmq_and_postgres() {
    // Shared lock first: the outage test stops the broker while holding it exclusively.
    let _lock = broker_lock("rabbit", false);
    if !require_postgres() || !require_rabbitmq() {
        return;
    }
    run(Broker::Amqp).await;
}

/// The HTTP API's acceptance on the RabbitMQ + PostgreSQL deployment: auth,
/// idempotency (100 concurrent duplicates included), generic sagas, strict input
/// leaving no row anywhere, 429s, a database outage answered with 503 and retried.
#[tokio::test]
async fn the_api_over_rabbitmq_and_postgres() {
    let _lock = broker_lock("rabbit", false);
    if !require_postgres() || !require_rabbitmq() {
        return;
    }
    let mut d = Deployment::new(Broker::Amqp);
    let outcome = AssertUnwindSafe(api_scenario(&mut d)).catch_unwind().await;
    d.clean_up(outcome.is_err()).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

#[tokio::test]
async fn four_processes_over_sqs_and_postgres() {
    if !require_postgres() || !require_sqs() {
        return;
    }
    run(Broker::Sqs).await;
}

/// Containers start in any order: a service whose broker is not up yet waits for it
/// (not ready, backing off) instead of exiting, and becomes ready once it appears.
#[tokio::test]
async fn a_service_waits_for_its_broker_at_start() {
    let _lock = broker_lock("rabbit", false);
    if !require_postgres() || !require_rabbitmq() {
        return;
    }
    let mut d = Deployment::new(Broker::Amqp);
    let outcome = AssertUnwindSafe(async {
        // The broker's address is a port nobody listens on yet.
        let late_port = free_port();
        let late_url = format!("amqp://guest:guest@127.0.0.1:{late_port}/%2f");
        d.start_with("bank", &[("KESSAI_TRANSPORT__AMQP_URL", &late_url)]);
        let bank = d.process("bank").port;
        let waiting = Instant::now() + Duration::from_secs(30);
        while !std::fs::read_to_string(&d.process("bank").log)
            .unwrap_or_default()
            .contains("broker unreachable; waiting for it")
        {
            d.assert_running();
            assert!(Instant::now() < waiting, "no sign of waiting for the broker");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            !matches!(http(bank, "GET", "/healthz", None).await, Ok((200, _))),
            "ready without a broker"
        );

        // The broker appears at that address: a TCP relay to the real one.
        let relay = tokio::net::TcpListener::bind(("127.0.0.1", late_port)).await.unwrap();
        let upstream = host_port(&amqp_url(), 5672);
        let relay = tokio::spawn(async move {
            while let Ok((mut client, _)) = relay.accept().await {
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        d.wait_ready().await;
        d.stop_gracefully().await;
        relay.abort();
    })
    .catch_unwind()
    .await;
    d.clean_up(outcome.is_err()).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn bad_configuration_exits_non_zero_with_a_clear_message() {
    let fails = |args: &[&str], env: &[(&str, &str)], expect: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kessai"));
        clean_env(&mut cmd);
        let out = cmd.args(args).envs(env.iter().copied()).output().expect("run kessai");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} {env:?} succeeded: {stderr}");
        for needle in expect {
            assert!(
                stderr.contains(needle),
                "{args:?} {env:?}: {needle:?} not in stderr:\n{stderr}"
            );
        }
    };
    fails(
        &["coordinator"],
        &[("KESSAI_TRANSPORT__KIND", "pigeon")],
        &["invalid configuration", "pigeon", "amqp"],
    );
    fails(
        &["participant", "bank"],
        &[("KESSAI_TRANSPORT__KIND", "pigeon")],
        &["pigeon"],
    );
    fails(
        &["coordinator"],
        &[("KESSAI_TRANSPORT__KIND", "memory")],
        &["memory", "amqp"],
    );
    fails(
        &["coordinator", "--config", "/nonexistent/kessai.toml"],
        &[],
        &["/nonexistent/kessai.toml", "does not exist"],
    );
    fails(
        &["coordinator"],
        &[("KESSAI_COORDINATOR__TRY_TIMEOUT", "5")],
        &["try_timeout"],
    );
    fails(&["participant", "wallet"], &[], &["wallet", "card-issuer"]);
}

/// Removes inherited `KESSAI_*` variables so only what a test sets reaches the child.
fn clean_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("KESSAI_") {
            cmd.env_remove(key);
        }
    }
}

/// One test's deployment: its names, its processes, its logs.
struct Deployment {
    broker: Broker,
    /// `kt_<random>`: databases are `<prefix>_coordinator`, `<prefix>_balance`, ...
    database_prefix: String,
    /// `kt-<random>`: queues are `<prefix>-balance-commands`, ...
    queue_prefix: String,
    logs: tempfile::TempDir,
    processes: Vec<ServiceProcess>,
}

struct ServiceProcess {
    name: &'static str,
    port: u16,
    log: PathBuf,
    child: Child,
    exited: Option<ExitStatus>,
}

const SERVICES: [&str; 4] = ["coordinator", "balance", "card-issuer", "bank"];

/// The API tokens of every deployment: an operator with every scope, two clients
/// that may only submit, and a reader.
const ADMIN_TOKEN: &str = "kt-admin-token-0123456789";
const CLIENT_A_TOKEN: &str = "kt-client-a-token-0123456789";
const CLIENT_B_TOKEN: &str = "kt-client-b-token-0123456789";
const READER_TOKEN: &str = "kt-reader-token-0123456789";
const TOKENS: &str = concat!(
    r#"[{name="ops",scopes=["submit","read","admin"],token="kt-admin-token-0123456789"},"#,
    r#"{name="client-a",scopes=["submit"],token="kt-client-a-token-0123456789"},"#,
    r#"{name="client-b",scopes=["submit"],token="kt-client-b-token-0123456789"},"#,
    r#"{name="reader",scopes=["read"],token="kt-reader-token-0123456789"}]"#
);

impl Deployment {
    fn new(broker: Broker) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        Deployment {
            broker,
            database_prefix: format!("kt_{id}"),
            queue_prefix: format!("kt-{id}"),
            logs: tempfile::Builder::new().prefix("kessai-processes-").tempdir().unwrap(),
            processes: Vec::new(),
        }
    }

    fn start(&mut self, service: &'static str) {
        self.start_with(service, &[]);
    }

    /// Starts `service` with `overrides` on top of the deployment's environment.
    fn start_with(&mut self, service: &'static str, overrides: &[(&str, &str)]) {
        let port = free_port();
        let log = self.logs.path().join(format!("{service}.log"));
        let out = File::create(&log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kessai"));
        clean_env(&mut cmd);
        if service == "coordinator" {
            cmd.arg("coordinator");
        } else {
            cmd.args(["participant", service]);
        }
        cmd.env("RUST_LOG", "info,sqlx=warn,sea_orm=warn,lapin=warn,aws=warn")
            .env("KESSAI_QUEUE_PREFIX", &self.queue_prefix)
            .env("KESSAI_TRANSPORT__KIND", self.broker.kind())
            .env("KESSAI_TRANSPORT__AMQP_URL", amqp_url())
            .env("KESSAI_TRANSPORT__SQS_ENDPOINT_URL", sqs_endpoint())
            .env("KESSAI_STORE__KIND", "postgres")
            .env("KESSAI_STORE__POSTGRES_URL", postgres_url())
            .env("KESSAI_STORE__DATABASE_PREFIX", &self.database_prefix)
            .env("KESSAI_STORE__MAX_CONNECTIONS", "4")
            .env("KESSAI_HTTP__LISTEN", format!("127.0.0.1:{port}"))
            .env("KESSAI_PARTICIPANT__SEED_DEMO", "true")
            .env("KESSAI_AUTH__TOKENS", TOKENS)
            // Every message signed: a forged one on the broker moves nothing.
            .env(
                "KESSAI_SECURITY__MESSAGE_KEY",
                "kt-message-key-0123456789abcdef-0123456789",
            )
            // CI exports this to every process; the binary's config must ignore it.
            .env("KESSAI_REQUIRE_SERVICES", "1")
            // Generous: only the frozen settlement account may cancel a payment here.
            .env("KESSAI_COORDINATOR__TRY_TIMEOUT_MS", "30000")
            // Resend late: on a loaded machine (or the slow SQS emulator) a burst of
            // submissions takes seconds to drain, and resends sooner than that only
            // add duplicates to the same queues. Redelivery is tested elsewhere.
            .env("KESSAI_COORDINATOR__TRY_RESEND_INITIAL_MS", "10000")
            .env("KESSAI_COORDINATOR__TRY_RESEND_MAX_MS", "20000")
            .env("KESSAI_COORDINATOR__FINISH_RESEND_INITIAL_MS", "10000")
            .env("KESSAI_COORDINATOR__FINISH_RESEND_MAX_MS", "20000")
            // A fixed, roomy admission bound: the adaptive one sizes itself from the
            // measured completion rate, which on a loaded machine (the tests of this
            // file run side by side) can refuse part of the burst with a 429 that these
            // scenarios do not expect. Admission has its own tests, and the API test
            // sets a small bound on purpose.
            .env("KESSAI_COORDINATOR__MAX_UNFINISHED", "10000")
            .envs(overrides.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        let child = cmd.spawn().expect("start kessai");
        self.processes.push(ServiceProcess {
            name: service,
            port,
            log,
            child,
            exited: None,
        });
    }

    fn process(&self, name: &str) -> &ServiceProcess {
        self.processes.iter().find(|p| p.name == name).expect("started")
    }

    /// Panics (with the service's log) if a process has exited.
    fn assert_running(&mut self) {
        for p in self.processes.iter_mut().filter(|p| p.exited.is_none()) {
            if let Some(status) = p.child.try_wait().unwrap() {
                p.exited = Some(status);
                panic!("{} exited early with {status}:\n{}", p.name, tail(&p.log));
            }
        }
    }

    /// Waits until every process's `/healthz` answers 200; checks what it reports.
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_WITHIN;
        for i in 0..self.processes.len() {
            loop {
                self.assert_running();
                let p = &self.processes[i];
                if let Ok((200, body)) = http(p.port, "GET", "/healthz", None).await {
                    assert_eq!(body["status"], "ok", "{body}");
                    assert_eq!(body["service"], p.name, "{body}");
                    assert_eq!(body["checks"]["database"]["status"], "ok", "{body}");
                    assert_eq!(body["checks"]["transport"]["status"], "ok", "{body}");
                    assert_eq!(body["checks"]["transport"]["system"], self.broker.kind(), "{body}");
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{} not ready within {READY_WITHIN:?}:\n{}",
                    p.name,
                    tail(&p.log)
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    /// SIGTERM to every process; each must exit 0 within [`EXIT_WITHIN`].
    async fn stop_gracefully(&mut self) {
        self.processes.retain(|p| p.exited.is_none());
        for p in &self.processes {
            // SAFETY: kill(2) with a pid we spawned and have not reaped.
            let rc = unsafe { libc::kill(p.child.id() as libc::pid_t, libc::SIGTERM) };
            assert_eq!(rc, 0, "SIGTERM to {}", p.name);
        }
        let deadline = Instant::now() + EXIT_WITHIN;
        for p in &mut self.processes {
            let status = loop {
                if let Some(status) = p.child.try_wait().unwrap() {
                    break status;
                }
                assert!(
                    Instant::now() < deadline,
                    "{} still running {EXIT_WITHIN:?} after SIGTERM:\n{}",
                    p.name,
                    tail(&p.log)
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            p.exited = Some(status);
            assert!(status.success(), "{} exited with {status}:\n{}", p.name, tail(&p.log));
            let log = std::fs::read_to_string(&p.log).unwrap_or_default();
            assert!(
                log.contains("stopped cleanly"),
                "{} did not report a clean stop:\n{log}",
                p.name
            );
        }
    }

    fn database(&self, service: &str) -> String {
        database_name(&self.database_prefix, service)
    }

    fn queues(&self) -> Vec<String> {
        kessai_harness::stack::service_queues(&Topology::new(self.queue_prefix.clone()), &Registry::reference())
    }

    /// Kills what still runs, drops the databases, deletes the queues. Best effort.
    async fn clean_up(&mut self, failed: bool) {
        self.kill_all();
        if failed {
            for p in &self.processes {
                eprintln!("---- {} (port {}) log tail ----\n{}", p.name, p.port, tail(&p.log));
            }
        }
        for service in SERVICES {
            if let Err(e) = kessai_migrations::drop_postgres_database(&postgres_url(), &self.database(service)).await {
                eprintln!("dropping {}: {e}", self.database(service));
            }
        }
        // `delete` takes each queue's dead-letter queue with it.
        let transport: Arc<dyn Transport> = match self.broker {
            Broker::Amqp => match AmqpTransport::connect(AmqpConfig::new(amqp_url())).await {
                Ok(t) => Arc::new(t),
                Err(_) => return,
            },
            Broker::Sqs => match SqsTransport::connect(common::sqs_config()).await {
                Ok(t) => Arc::new(t),
                Err(_) => return,
            },
        };
        for q in self.queues() {
            if let Err(e) = transport.delete(&q).await {
                eprintln!("deleting {q}: {e}");
            }
        }
    }

    /// SIGKILL to one service (it stays in the list, marked exited).
    fn kill(&mut self, name: &str) {
        for p in self
            .processes
            .iter_mut()
            .filter(|p| p.name == name && p.exited.is_none())
        {
            let _ = p.child.kill();
            p.exited = p.child.wait().ok();
        }
    }

    fn kill_all(&mut self) {
        for p in &mut self.processes {
            if p.exited.is_none() {
                let _ = p.child.kill();
                p.exited = p.child.wait().ok();
            }
        }
    }
}

/// The guard: whatever happens to the test, no child outlives it.
impl Drop for Deployment {
    fn drop(&mut self) {
        self.kill_all();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_else(|e| format!("(cannot read {}: {e})", log.display()));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// A minimal HTTP/1.1 client (one request per connection) with the test's admin
/// token: status and JSON body.
async fn http(port: u16, method: &str, path: &str, body: Option<&str>) -> std::io::Result<(u16, Value)> {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    http_with(port, method, path, body, &[("Authorization", &auth)]).await
}

/// [`http`] with exactly `headers` (no token unless one is among them).
async fn http_with(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, Value)> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let mut request = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        if let Some(body) = body {
            request.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ));
        } else {
            request.push_str("\r\n");
        }
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no HTTP answer within 10 s"))??;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {text:?}")))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status in {head:?}")))?;
    let body = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_owned()))
    };
    Ok((status, body))
}

/// Runs the scenario, then cleans up whatever happened; re-raises a failure.
async fn run(broker: Broker) {
    let started = Instant::now();
    let mut deployment = Deployment::new(broker);
    let outcome = AssertUnwindSafe(scenario(&mut deployment)).catch_unwind().await;
    deployment.clean_up(outcome.is_err()).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    eprintln!("{broker:?}: {:.1} s", started.elapsed().as_secs_f64());
}

struct Submitted {
    payment_id: String,
    body: String,
    frozen: bool,
    saga_id: SagaId,
}

async fn scenario(d: &mut Deployment) {
    for service in SERVICES {
        d.start(service);
    }
    d.wait_ready().await;
    let api = d.process("coordinator").port;
    let t_ready = Instant::now();

    if d.broker == Broker::Amqp {
        client_errors_are_clear(api).await;
    }

    // Submit.
    let run = &d.queue_prefix;
    let payments = d.broker.payments();
    let requests: Vec<(String, String, bool)> = (0..payments)
        .map(|i| {
            let frozen = i % FAIL_EVERY == 3;
            let payment_id = format!("{run}-{i}");
            let n = (i as u32 * 7919) % DEMO_ACCOUNTS + 1;
            let body = json!({
                "payment_id": payment_id,
                "account_id": demo_account_id(n),
                "card_id": demo_card_id(DEMO_ACCOUNTS + 1 - n),
                "amount": 100 + (i as i64 * 37) % 5_000,
                "currency": "EUR",
                "settlement_account": if frozen { FROZEN_SETTLEMENT_ACCOUNT } else { DEFAULT_SETTLEMENT_ACCOUNT },
            })
            .to_string();
            (payment_id, body, frozen)
        })
        .collect();
    let submitted: Vec<Submitted> = stream::iter(requests)
        .map(|(payment_id, body, frozen)| async move {
            let (status, answer) = http(api, "POST", "/v1/payments", Some(&body)).await.expect("POST");
            assert_eq!(status, 202, "{payment_id}: {answer}");
            assert_eq!(answer["created"], true, "{payment_id}: {answer}");
            let saga_id: SagaId = answer["saga_id"].as_str().expect("saga_id").parse().expect("uuid");
            Submitted {
                payment_id,
                body,
                frozen,
                saga_id,
            }
        })
        .buffer_unordered(SUBMIT_CONCURRENCY)
        .collect()
        .await;
    let t_submitted = Instant::now();

    // The same payment_id again is the same saga, and creates nothing.
    let mut resubmissions = Vec::new();
    for s in submitted.iter().take(10) {
        let (status, answer) = http(api, "POST", "/v1/payments", Some(&s.body)).await.expect("POST");
        assert_eq!(status, 200, "{}: {answer}", s.payment_id);
        resubmissions.push(Resubmission {
            first: s.saga_id,
            again: answer["saga_id"].as_str().expect("saga_id").parse().expect("uuid"),
            created: answer["created"] != false,
        });
    }

    // Wait until every saga is terminal, polling the API.
    let mut states: HashMap<SagaId, SagaState> = HashMap::new();
    let deadline = Instant::now() + TERMINAL_WITHIN;
    loop {
        let open: Vec<SagaId> = submitted
            .iter()
            .map(|s| s.saga_id)
            .filter(|id| !states.get(id).is_some_and(|s| s.is_terminal()))
            .collect();
        if open.is_empty() {
            break;
        }
        d.assert_running();
        assert!(
            Instant::now() < deadline,
            "{} of {payments} sagas not terminal within {TERMINAL_WITHIN:?}, e.g. {}",
            open.len(),
            open[0]
        );
        let polled: Vec<(SagaId, SagaState)> = stream::iter(open)
            .map(|id| async move {
                // `wait` answers as soon as the saga is terminal (or after 5 s).
                let (status, view) = http(api, "GET", &format!("/v1/sagas/{id}?wait=5s"), None)
                    .await
                    .expect("GET");
                assert_eq!(status, 200, "{id}: {view}");
                assert_eq!(view["id"], id.to_string());
                (id, serde_json::from_value(view["state"].clone()).expect("a saga state"))
            })
            .buffer_unordered(SUBMIT_CONCURRENCY)
            .collect()
            .await;
        states.extend(polled);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let t_terminal = Instant::now();
    for s in &submitted {
        let expected = if s.frozen {
            SagaState::Cancelled
        } else {
            SagaState::Confirmed
        };
        assert_eq!(
            states[&s.saga_id], expected,
            "{} (frozen settlement: {})",
            s.payment_id, s.frozen
        );
    }

    d.stop_gracefully().await;
    let t_stopped = Instant::now();

    // The invariants (docs/GUARANTEES.md#invariants), from each service's own database.
    let server = postgres_url();
    let registry = Registry::reference();
    let open = |service: &str| {
        let url = kessai_migrations::postgres_database_url(&server, &d.database(service));
        let registry = registry.clone();
        let service = service.to_owned();
        async move {
            open_service_db(&registry, &service, &url, 2)
                .await
                .expect("open database")
        }
    };
    let coordinator = open("coordinator").await;
    assert_eq!(
        kessai_coordinator::store::outbox_len(&coordinator).await.unwrap(),
        0,
        "the coordinator left its outbox unflushed"
    );
    let outcomes = invariants::read_outcomes(&coordinator, &registry).await.unwrap();
    coordinator.close().await.unwrap();
    assert_eq!(outcomes.len(), payments, "resubmissions must create no saga");
    let mut audits = Vec::new();
    for p in registry.iter() {
        let db = open(p.name()).await;
        audits.push(p.audit(&db).await.expect("audit"));
        db.close().await.unwrap();
    }
    let acknowledged: Vec<SagaId> = submitted.iter().map(|s| s.saga_id).collect();
    let report = invariants::check_all(&outcomes, &audits, &acknowledged, &resubmissions);
    assert!(report.ok(), "invariants violated over {:?}: {report:#?}", d.broker);

    let cancelled = submitted.iter().filter(|s| s.frozen).count();
    eprintln!(
        "{:?}: {payments} payments ({} confirmed, {cancelled} cancelled): submitted in {:.1} s, all terminal {:.1} s later, SIGTERM → all exited in {:.1} s",
        d.broker,
        payments - cancelled,
        (t_submitted - t_ready).as_secs_f64(),
        (t_terminal - t_submitted).as_secs_f64(),
        (t_stopped - t_terminal).as_secs_f64(),
    );
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn payment_body(payment_id: &str, account: u32, amount: i64) -> String {
    json!({
        "payment_id": payment_id,
        "account_id": demo_account_id(account),
        "card_id": demo_card_id(account),
        "amount": amount,
        "currency": "EUR",
    })
    .to_string()
}

/// `POST /v1/payments` as the holder of `token`.
async fn post_payment(api: u16, token: &str, body: &str) -> (u16, Value) {
    let auth = bearer(token);
    http_with(api, "POST", "/v1/payments", Some(body), &[("Authorization", &auth)])
        .await
        .expect("POST /v1/payments")
}

/// `GET /v1/sagas/{id}?wait=` until the saga is over; its view.
async fn wait_over(api: u16, token: &str, id: &str) -> Value {
    let auth = bearer(token);
    let deadline = Instant::now() + TERMINAL_WITHIN;
    loop {
        let (status, view) = http_with(
            api,
            "GET",
            &format!("/v1/sagas/{id}?wait=5s"),
            None,
            &[("Authorization", &auth)],
        )
        .await
        .expect("GET saga");
        assert_eq!(status, 200, "{view}");
        if matches!(view["state"].as_str(), Some("confirmed" | "cancelled")) {
            return view;
        }
        assert!(Instant::now() < deadline, "saga {id} not over: {view}");
    }
}

async fn count(db: &sea_orm::DatabaseConnection, sql: &str) -> i64 {
    use sea_orm::ConnectionTrait;
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            sql.to_owned(),
        ))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .expect("a row");
    row.try_get_by_index::<i64>(0).unwrap()
}

/// Rows that a submission would create, in every service's database.
async fn rows_everywhere(d: &Deployment) -> Vec<(String, i64)> {
    let server = postgres_url();
    let mut out = Vec::new();
    for service in SERVICES {
        let url = kessai_migrations::postgres_database_url(&server, &d.database(service));
        let db = kessai_migrations::connect(&url, 1).await.expect("connect");
        let sql = if service == "coordinator" {
            "SELECT COUNT(*) FROM sagas"
        } else {
            "SELECT COUNT(*) FROM barriers"
        };
        out.push((service.to_owned(), count(&db, sql).await));
        db.close().await.ok();
    }
    out
}

async fn api_scenario(d: &mut Deployment) {
    for service in SERVICES {
        d.start_with(
            service,
            &[
                ("KESSAI_HTTP__MAX_IN_FLIGHT", "128"),
                ("KESSAI_COORDINATOR__MAX_UNFINISHED", "3"),
                ("KESSAI_COORDINATOR__TRY_TIMEOUT_MS", "60000"),
            ],
        );
    }
    d.wait_ready().await;
    let api = d.process("coordinator").port;
    let run = d.queue_prefix.clone();

    // The OpenAPI document needs no token and lists every route.
    let (status, doc) = http_with(api, "GET", "/v1/openapi.json", None, &[]).await.unwrap();
    assert_eq!(status, 200);
    for path in [
        "/v1/payments",
        "/v1/sagas",
        "/v1/sagas/{id}",
        "/v1/sagas/{id}/retry",
        "/v1/stats",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }

    // 401 without or with an unknown token, 403 with the wrong scope.
    let body = payment_body(&format!("{run}-auth"), 11, 100);
    let (status, answer) = http_with(api, "POST", "/v1/payments", Some(&body), &[]).await.unwrap();
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (401, Some("unauthorized")),
        "{answer}"
    );
    assert_eq!(post_payment(api, "kt-nobody-0123456789", &body).await.0, 401);
    assert_eq!(post_payment(api, READER_TOKEN, &body).await.0, 403);
    let a = bearer(CLIENT_A_TOKEN);
    let (status, _) = http_with(api, "GET", "/v1/sagas", None, &[("Authorization", &a)])
        .await
        .unwrap();
    assert_eq!(status, 403, "listing needs read");
    assert_eq!(rows_everywhere(d).await.iter().map(|(_, n)| n).sum::<i64>(), 0);

    // The happy path, long-polled to confirmed.
    let first = payment_body(&format!("{run}-p1"), 12, 250);
    let (status, created) = post_payment(api, CLIENT_A_TOKEN, &first).await;
    assert_eq!(status, 202, "{created}");
    let id = created["saga_id"].as_str().unwrap().to_owned();
    let view = wait_over(api, CLIENT_A_TOKEN, &id).await;
    assert_eq!(view["state"], "confirmed", "{view}");
    assert_eq!(view["client"], "client-a");

    // Same key, same body: the original (200). Same key, another body: 409 naming it.
    let (status, again) = post_payment(api, CLIENT_A_TOKEN, &first).await;
    assert_eq!((status, again["saga_id"].as_str()), (200, Some(id.as_str())), "{again}");
    assert_eq!(again["created"], false);
    let changed = payment_body(&format!("{run}-p1"), 12, 251);
    let (status, conflict) = post_payment(api, CLIENT_A_TOKEN, &changed).await;
    assert_eq!(status, 409, "{conflict}");
    assert_eq!(conflict["error"]["code"], "idempotency_conflict");
    assert_eq!(conflict["error"]["saga_id"], id.as_str());
    // The key is the client's own: client-b's same payment_id is another saga, and
    // client-b cannot read client-a's; a reader can.
    let (status, other) = post_payment(api, CLIENT_B_TOKEN, &first).await;
    assert_eq!(status, 202, "{other}");
    assert_ne!(other["saga_id"], id.as_str());
    let b = bearer(CLIENT_B_TOKEN);
    let (status, _) = http_with(api, "GET", &format!("/v1/sagas/{id}"), None, &[("Authorization", &b)])
        .await
        .unwrap();
    assert_eq!(status, 404, "client-b must not see client-a's saga");
    let r = bearer(READER_TOKEN);
    let (status, _) = http_with(api, "GET", &format!("/v1/sagas/{id}"), None, &[("Authorization", &r)])
        .await
        .unwrap();
    assert_eq!(status, 200);
    wait_over(api, CLIENT_B_TOKEN, other["saga_id"].as_str().unwrap()).await;

    // 100 concurrent duplicates of one request: one saga, one debit.
    let account = 77;
    let server = postgres_url();
    let balance_db = kessai_migrations::connect(
        &kessai_migrations::postgres_database_url(&server, &d.database("balance")),
        1,
    )
    .await
    .unwrap();
    let wallet = format!(
        "SELECT available FROM wallets WHERE account_id = '{}'",
        demo_account_id(account)
    );
    let before = count(&balance_db, &wallet).await;
    let dup = payment_body(&format!("{run}-dup"), account, 1_234);
    // Each client retries a 429 (admission holds a slot per request in flight, and the
    // bound here is 3) as a real client would; none of them may create a second saga.
    let answers: Vec<(u16, Value)> = stream::iter(0..100)
        .map(|_| {
            let dup = dup.clone();
            async move {
                loop {
                    let (status, answer) = post_payment(api, CLIENT_A_TOKEN, &dup).await;
                    if status != 429 {
                        return (status, answer);
                    }
                    assert_eq!(answer["error"]["code"], "overloaded", "{answer}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        })
        .buffer_unordered(100)
        .collect()
        .await;
    let ids: std::collections::BTreeSet<&str> = answers.iter().filter_map(|(_, a)| a["saga_id"].as_str()).collect();
    assert_eq!(ids.len(), 1, "{answers:?}");
    assert_eq!(answers.iter().filter(|(s, _)| *s == 202).count(), 1, "one creation");
    assert!(answers.iter().all(|(s, _)| matches!(s, 200 | 202)), "{answers:?}");
    let dup_id = ids.into_iter().next().unwrap().to_owned();
    assert_eq!(wait_over(api, CLIENT_A_TOKEN, &dup_id).await["state"], "confirmed");
    let freezes = count(
        &balance_db,
        &format!("SELECT COUNT(*) FROM wallet_freezes WHERE saga_id = '{dup_id}'"),
    )
    .await;
    assert_eq!(freezes, 1, "one hold for the one saga");
    assert_eq!(count(&balance_db, &wallet).await, before - 1_234, "one debit");
    balance_db.close().await.ok();

    // A generic saga over a known participant; unknown participants are refused.
    let generic = json!({"branches": [{"participant": "balance",
        "payload": {"account_id": demo_account_id(13), "amount": 40, "currency": "EUR"}}]})
    .to_string();
    let key = format!("{run}-g1");
    let auth = bearer(CLIENT_A_TOKEN);
    let with_key = [("Authorization", auth.as_str()), ("Idempotency-Key", key.as_str())];
    let (status, g) = http_with(api, "POST", "/v1/sagas", Some(&generic), &with_key)
        .await
        .unwrap();
    assert_eq!(status, 202, "{g}");
    let g_id = g["saga_id"].as_str().unwrap().to_owned();
    let view = wait_over(api, CLIENT_A_TOKEN, &g_id).await;
    assert_eq!(
        (view["state"].as_str(), view["kind"].as_str()),
        (Some("confirmed"), Some("generic"))
    );
    let (status, _) = http_with(api, "POST", "/v1/sagas", Some(&generic), &with_key)
        .await
        .unwrap();
    assert_eq!(status, 200);

    // Every bad input gets its 4xx and leaves no row in any database.
    let rows = rows_everywhere(d).await;
    let nul = payment_body(&format!("{run}-nul\u{0}"), 14, 5);
    let long = payment_body(&"x".repeat(129), 14, 5);
    let huge = payment_body(&format!("{run}-huge"), 14, 100_000_000_001);
    let extra = json!({"payment_id": format!("{run}-x"), "account_id": "acct-1", "card_id": "card-1",
        "amount": 5, "currency": "EUR", "tip": 1})
    .to_string();
    let big = json!({"payment_id": "x".repeat(70_000)}).to_string();
    for (body, status, code) in [
        (nul.as_str(), 422, "invalid_request"),
        (long.as_str(), 422, "invalid_request"),
        (huge.as_str(), 422, "invalid_request"),
        (extra.as_str(), 422, "invalid_request"),
        ("{not json", 400, "malformed_json"),
        (big.as_str(), 413, "payload_too_large"),
    ] {
        let (got, answer) = post_payment(api, CLIENT_A_TOKEN, body).await;
        assert_eq!(
            (got, answer["error"]["code"].as_str()),
            (status, Some(code)),
            "{answer}"
        );
    }
    let unknown = json!({"branches": [{"participant": "casino", "payload": {}}]}).to_string();
    let key2 = format!("{run}-g2");
    let with_key2 = [("Authorization", auth.as_str()), ("Idempotency-Key", key2.as_str())];
    let (status, answer) = http_with(api, "POST", "/v1/sagas", Some(&unknown), &with_key2)
        .await
        .unwrap();
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (422, Some("unknown_participant")),
        "{answer}"
    );
    assert_eq!(answer["error"]["field"], "branches[0].participant");
    let bad_payload = json!({"branches": [{"participant": "balance", "payload": {"amount": "lots"}}]}).to_string();
    let (status, answer) = http_with(api, "POST", "/v1/sagas", Some(&bad_payload), &with_key2)
        .await
        .unwrap();
    assert_eq!(status, 422, "{answer}");
    let (status, answer) = http_with(api, "POST", "/v1/sagas", Some(&generic), &[("Authorization", &auth)])
        .await
        .unwrap();
    assert_eq!(
        (status, answer["error"]["field"].as_str()),
        (422, Some("Idempotency-Key")),
        "{answer}"
    );
    assert_eq!(rows_everywhere(d).await, rows, "bad input created rows");

    // Admission: with the bank down, sagas stay in try; beyond 3 unfinished → 429.
    d.kill("bank");
    let mut held = Vec::new();
    for i in 0..3 {
        let (status, answer) = post_payment(
            api,
            CLIENT_A_TOKEN,
            &payment_body(&format!("{run}-held-{i}"), 20 + i, 10),
        )
        .await;
        assert_eq!(status, 202, "{answer}");
        held.push(answer["saga_id"].as_str().unwrap().to_owned());
    }
    // Let balance and card-issuer finish their tries, so the snapshot is still.
    let deadline = Instant::now() + TERMINAL_WITHIN;
    for id in &held {
        loop {
            let (_, view) = http(api, "GET", &format!("/v1/sagas/{id}"), None).await.unwrap();
            if view["branches"][0]["state"] == "prepared" && view["branches"][1]["state"] == "prepared" {
                break;
            }
            assert!(Instant::now() < deadline, "tries not answered: {view}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let rows = rows_everywhere(d).await;
    let (status, answer) = post_payment(api, CLIENT_A_TOKEN, &payment_body(&format!("{run}-held-x"), 30, 10)).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (429, Some("overloaded")),
        "{answer}"
    );
    assert_eq!(rows_everywhere(d).await, rows, "a refused saga created rows");
    // The in-flight bound: more long polls than it allows get 429 at once.
    let polls: Vec<(u16, Value)> = stream::iter(0..200)
        .map(|_| {
            let path = format!("/v1/sagas/{}?wait=3s", held[0]);
            async move {
                let auth = bearer(ADMIN_TOKEN);
                http_with(api, "GET", &path, None, &[("Authorization", &auth)])
                    .await
                    .unwrap()
            }
        })
        .buffer_unordered(200)
        .collect()
        .await;
    let too_many: Vec<&Value> = polls.iter().filter(|(s, _)| *s == 429).map(|(_, a)| a).collect();
    assert!(
        too_many.len() >= 72,
        "200 long polls over a bound of 128: {} refused",
        too_many.len()
    );
    assert_eq!(too_many[0]["error"]["code"], "too_many_requests", "{}", too_many[0]);
    // An operator retry is recorded with who did it.
    let admin = bearer(ADMIN_TOKEN);
    let (status, retried) = http_with(
        api,
        "POST",
        &format!("/v1/sagas/{}/retry", held[0]),
        Some(r#"{"reason":"bank restarted"}"#),
        &[("Authorization", &admin), ("Content-Type", "application/json")],
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{retried}");
    d.start("bank");
    for id in &held {
        let view = wait_over(api, ADMIN_TOKEN, id).await;
        assert_eq!(view["state"], "confirmed", "{view}");
    }
    let view = wait_over(api, ADMIN_TOKEN, &held[0]).await;
    assert!(
        view["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["actor"]["named_operator"] == "ops" && e["reason"] == "bank restarted"),
        "the retry is in the timeline with its operator: {view}"
    );
    let (status, answer) = http_with(
        api,
        "POST",
        &format!("/v1/sagas/{}/retry", held[0]),
        None,
        &[("Authorization", &admin)],
    )
    .await
    .unwrap();
    assert_eq!((status, answer["error"]["code"].as_str()), (409, Some("saga_finished")));
    let (status, page) = http_with(
        api,
        "GET",
        "/v1/sagas?state=confirmed&limit=2",
        None,
        &[("Authorization", &r)],
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["sagas"].as_array().unwrap().len(), 2);
    let cursor = page["next_cursor"]
        .as_str()
        .expect("more than 2 confirmed sagas")
        .to_owned();
    let (_, next) = http_with(
        api,
        "GET",
        &format!("/v1/sagas?state=confirmed&limit=2&cursor={cursor}"),
        None,
        &[("Authorization", &r)],
    )
    .await
    .unwrap();
    assert!(next["sagas"][0]["id"].as_str().unwrap() < cursor.as_str(), "{next}");

    // The coordinator's database goes away mid-request: 503 (retryable, no SQL text),
    // and the client's retry succeeds once it is back.
    let admin_db = kessai_migrations::connect(&kessai_migrations::postgres_database_url(&server, "postgres"), 1)
        .await
        .unwrap();
    let coordinator_db = d.database("coordinator");
    use sea_orm::ConnectionTrait;
    admin_db
        .execute_unprepared(&format!("ALTER DATABASE {coordinator_db} ALLOW_CONNECTIONS false"))
        .await
        .unwrap();
    admin_db
        .execute_unprepared(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{coordinator_db}'"
        ))
        .await
        .unwrap();
    let outage = payment_body(&format!("{run}-outage"), 40, 60);
    let (status, answer) = post_payment(api, CLIENT_A_TOKEN, &outage).await;
    admin_db
        .execute_unprepared(&format!("ALTER DATABASE {coordinator_db} ALLOW_CONNECTIONS true"))
        .await
        .unwrap();
    admin_db.close().await.ok();
    assert_eq!(status, 503, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap_or_default().to_lowercase();
    assert!(!message.contains("sql") && !message.contains("connection"), "{answer}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let retried = loop {
        let (status, answer) = post_payment(api, CLIENT_A_TOKEN, &outage).await;
        if status == 202 || status == 200 {
            break answer;
        }
        assert_eq!(status, 503, "{answer}");
        assert!(Instant::now() < deadline, "the retry never succeeded: {answer}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let view = wait_over(api, CLIENT_A_TOKEN, retried["saga_id"].as_str().unwrap()).await;
    assert_eq!(view["state"], "confirmed", "{view}");

    d.stop_gracefully().await;
}

/// Bad input gets a 4xx with a JSON error the client can act on, never a 5xx.
async fn client_errors_are_clear(api: u16) {
    let cases: [(&str, &str, Option<&str>, u16, &str); 9] = [
        ("POST", "/v1/payments", Some("{not json"), 400, "malformed_json"),
        (
            "POST",
            "/v1/payments",
            Some(r#"{"payment_id":"x","account_id":"acct-1","card_id":"card-1","amount":100,"currency":"euro"}"#),
            422,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/payments",
            Some(r#"{"payment_id":"x","account_id":"acct-1","card_id":"card-1","amount":-5,"currency":"EUR"}"#),
            422,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/payments",
            Some(r#"{"payment_id":"x","account_id":"acct-1","card_id":"card-1","amount":1.5,"currency":"EUR"}"#),
            422,
            "invalid_request",
        ),
        ("GET", "/v1/sagas/not-a-uuid", None, 400, "invalid_saga_id"),
        (
            "GET",
            "/v1/sagas/0190d9a4-6b2e-7000-8000-000000000000?wait=forever",
            None,
            400,
            "invalid_query",
        ),
        (
            "GET",
            "/v1/sagas/0190d9a4-6b2e-7000-8000-000000000000?wait=1h",
            None,
            400,
            "invalid_query",
        ),
        (
            "GET",
            "/v1/sagas/0190d9a4-6b2e-7000-8000-000000000000?colour=red",
            None,
            400,
            "invalid_query",
        ),
        (
            "GET",
            "/v1/sagas/0190d9a4-6b2e-7000-8000-000000000000",
            None,
            404,
            "saga_not_found",
        ),
    ];
    for (method, path, body, status, code) in cases {
        let (got, answer) = http(api, method, path, body).await.expect("HTTP");
        assert_eq!(
            (got, answer["error"]["code"].as_str()),
            (status, Some(code)),
            "{method} {path} {body:?}: {answer}"
        );
        assert!(
            answer["error"]["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{answer}"
        );
    }
}

// ---- Traces ---------------------------------------------------------------------

/// Spans an OTLP receiver got, in the fake collector's model (attribute values are
/// their protobuf `Debug` form).
type Spans = Arc<std::sync::Mutex<Vec<fake_opentelemetry_collector::ExportedSpan>>>;

/// An OTLP/gRPC receiver (the fake collector, drained into `Spans` so that its bounded
/// channel never holds up an export). Returns its endpoint.
async fn grpc_receiver(spans: Spans) -> String {
    let mut server = fake_opentelemetry_collector::FakeCollectorServer::start()
        .await
        .expect("start the OTLP gRPC receiver");
    let endpoint = server.endpoint();
    tokio::spawn(async move {
        loop {
            let got = server.exported_spans(1, Duration::from_millis(200)).await;
            spans.lock().unwrap().extend(got);
        }
    });
    endpoint
}

/// An OTLP/HTTP (protobuf) receiver: `POST /v1/traces`. Returns its base endpoint.
async fn http_receiver(spans: Spans) -> String {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let spans = spans.clone();
            async move {
                let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf export");
                let mut got = spans.lock().unwrap();
                for resource in request.resource_spans {
                    for scope in resource.scope_spans {
                        got.extend(scope.spans.into_iter().map(Into::into));
                    }
                }
                axum::http::StatusCode::OK
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    endpoint
}

#[tokio::test]
async fn one_trace_per_saga_over_rabbitmq_exported_with_otlp_grpc() {
    traces_over_rabbitmq("grpc").await;
}

#[tokio::test]
async fn one_trace_per_saga_over_rabbitmq_exported_with_otlp_http() {
    traces_over_rabbitmq("http/protobuf").await;
}

async fn traces_over_rabbitmq(protocol: &'static str) {
    let _lock = broker_lock("rabbit", false);
    if !require_postgres() || !require_rabbitmq() {
        return;
    }
    let spans: Spans = Arc::default();
    let endpoint = match protocol {
        "grpc" => grpc_receiver(spans.clone()).await,
        _ => http_receiver(spans.clone()).await,
    };
    let mut d = Deployment::new(Broker::Amqp);
    let outcome = AssertUnwindSafe(trace_scenario(&mut d, &endpoint, protocol, &spans))
        .catch_unwind()
        .await;
    d.clean_up(outcome.is_err()).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// The value of a string attribute, from its protobuf `Debug` form.
fn attribute(span: &fake_opentelemetry_collector::ExportedSpan, key: &str) -> Option<String> {
    let debug = span.attributes.get(key)?;
    debug
        .split_once("StringValue(\"")
        .map(|(_, rest)| rest.split('"').next().unwrap_or_default().to_owned())
        .or_else(|| {
            debug
                .split_once("IntValue(")
                .map(|(_, rest)| rest.split(')').next().unwrap_or_default().to_owned())
        })
        .or_else(|| {
            debug
                .split_once("BoolValue(")
                .map(|(_, rest)| rest.split(')').next().unwrap_or_default().to_owned())
        })
}

async fn trace_scenario(d: &mut Deployment, endpoint: &str, protocol: &str, spans: &Spans) {
    let link = "http://jaeger.example:16686/trace/{trace_id}";
    for service in SERVICES {
        d.start_with(
            service,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
                ("OTEL_BSP_SCHEDULE_DELAY", "200"),
                ("KESSAI_TELEMETRY__TRACE_URL", link),
            ],
        );
    }
    d.wait_ready().await;
    let api = d.process("coordinator").port;

    // A client's own trace: its traceparent becomes the saga's parent.
    let client_trace = "0af7651916cd43dd8448eb211c80319c";
    let client_span = "b7ad6b7169203331";
    let traceparent = format!("00-{client_trace}-{client_span}-01");
    let auth = bearer(ADMIN_TOKEN);
    let (status, traced) = http_with(
        api,
        "POST",
        "/v1/payments",
        Some(&payment_body("tr-client", 11, 100)),
        &[("Authorization", &auth), ("traceparent", &traceparent)],
    )
    .await
    .unwrap();
    assert_eq!(status, 202, "{traced}");
    let (status, plain) = post_payment(api, ADMIN_TOKEN, &payment_body("tr-plain", 12, 100)).await;
    assert_eq!(status, 202, "{plain}");
    // An unknown account: the balance refuses its try and the saga is cancelled.
    let refused = json!({
        "payment_id": "tr-refused", "account_id": "acct-nobody", "card_id": demo_card_id(13),
        "amount": 100, "currency": "EUR",
    })
    .to_string();
    let (status, cancelled) = post_payment(api, ADMIN_TOKEN, &refused).await;
    assert_eq!(status, 202, "{cancelled}");

    let mut sagas = Vec::new();
    for (submitted, state) in [(&traced, "confirmed"), (&plain, "confirmed"), (&cancelled, "cancelled")] {
        let id = submitted["saga_id"].as_str().unwrap().to_owned();
        let view = wait_over(api, ADMIN_TOKEN, &id).await;
        assert_eq!(view["state"], state, "{view}");
        let trace_id = view["trace_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no trace id: {view}"))
            .to_owned();
        assert_eq!(trace_id.len(), 32, "{view}");
        assert_eq!(view["trace_url"], link.replace("{trace_id}", &trace_id), "{view}");
        sagas.push((id, trace_id, state));
    }
    assert_eq!(sagas[0].1, client_trace, "the client's trace is the saga's");
    assert_ne!(sagas[1].1, sagas[2].1, "each saga its own trace");

    // Every span each saga makes: submit, 3 dispatches, 3 participant operations and 3
    // replies per phase, and the saga span at its end.
    let deadline = Instant::now() + Duration::from_secs(30);
    let all = loop {
        let all = spans.lock().unwrap().clone();
        // Each process exports on its own schedule: wait until every saga's spans are
        // in, and every parent they name (the HTTP span of the client's call included).
        let ids: std::collections::HashSet<&str> = all.iter().map(|s| s.span_id.as_str()).collect();
        let complete = sagas.iter().all(|(id, _, _)| {
            let mine: Vec<_> = all
                .iter()
                .filter(|s| attribute(s, "saga.id").as_deref() == Some(id.as_str()))
                .collect();
            let of = |names: &[&str]| mine.iter().filter(|s| names.contains(&s.name.as_str())).count();
            of(&["saga.submit"]) == 1
                && of(&["saga"]) == 1
                && of(&["tcc.dispatch"]) >= 5
                && of(&["tcc.try", "tcc.confirm", "tcc.cancel"]) >= 5
                && of(&["tcc.reply"]) >= 5
                && mine.iter().all(|s| ids.contains(s.parent_span_id.as_str()))
        });
        if complete {
            break all;
        }
        assert!(
            Instant::now() < deadline,
            "spans missing after 30 s ({} received): {:#?}",
            all.len(),
            all.iter()
                .map(|s| (&s.name, attribute(s, "saga.id")))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let by_id: HashMap<&str, &fake_opentelemetry_collector::ExportedSpan> =
        all.iter().map(|s| (s.span_id.as_str(), s)).collect();

    for (id, trace_id, state) in &sagas {
        let mine: Vec<_> = all
            .iter()
            .filter(|s| attribute(s, "saga.id").as_deref() == Some(id.as_str()))
            .collect();
        // One trace per saga: every span naming the saga is in the stored trace.
        for s in &mine {
            assert_eq!(&s.trace_id, trace_id, "{} of saga {id} in another trace", s.name);
        }
        let submit = mine.iter().find(|s| s.name == "saga.submit").unwrap();
        let saga_span = mine.iter().find(|s| s.name == "saga").unwrap();
        assert_eq!(saga_span.parent_span_id, submit.span_id);
        assert_eq!(attribute(saga_span, "saga.state").as_deref(), Some(*state));
        assert_eq!(attribute(saga_span, "saga.kind").as_deref(), Some("payment"));
        assert!(saga_span.start_time_unix_nano <= submit.end_time_unix_nano);

        let operations: Vec<_> = mine
            .iter()
            .filter(|s| matches!(s.name.as_str(), "tcc.try" | "tcc.confirm" | "tcc.cancel"))
            .collect();
        assert!(
            operations.len() >= 5,
            "saga {id}: {} participant spans",
            operations.len()
        );
        for op in &operations {
            // The participant's span is the child of the coordinator's dispatch span
            // for that very command.
            let parent = by_id
                .get(op.parent_span_id.as_str())
                .unwrap_or_else(|| panic!("{} of saga {id}: parent {} not exported", op.name, op.parent_span_id));
            assert_eq!(parent.name, "tcc.dispatch");
            assert_eq!(parent.kind, "SPAN_KIND_PRODUCER");
            assert_eq!(op.kind, "SPAN_KIND_CONSUMER");
            assert_eq!(
                parent.parent_span_id, submit.span_id,
                "dispatches hang off the saga's root"
            );
            for key in ["tcc.branch", "tcc.participant", "tcc.operation", "tcc.attempt"] {
                assert_eq!(attribute(op, key), attribute(parent, key), "{key}");
            }
            for key in [
                "saga.id",
                "tcc.branch",
                "tcc.participant",
                "tcc.operation",
                "tcc.attempt",
                "tcc.outcome",
                "tcc.barrier",
                "messaging.system",
                "messaging.destination.name",
                "messaging.operation",
            ] {
                assert!(
                    op.attributes.contains_key(key),
                    "{} lacks {key}: {:?}",
                    op.name,
                    op.attributes
                );
            }
            assert_eq!(attribute(op, "messaging.system").as_deref(), Some("rabbitmq"));
            assert_eq!(format!("tcc.{}", attribute(op, "tcc.operation").unwrap()), op.name);
        }
        // Each reply the coordinator applied is the child of the participant's span.
        for reply in mine.iter().filter(|s| s.name == "tcc.reply") {
            let parent = by_id
                .get(reply.parent_span_id.as_str())
                .expect("the reply's parent exported");
            assert!(
                matches!(parent.name.as_str(), "tcc.try" | "tcc.confirm" | "tcc.cancel"),
                "a reply's parent is {}",
                parent.name
            );
            assert_eq!(attribute(parent, "tcc.operation"), attribute(reply, "tcc.operation"));
            assert_eq!(attribute(parent, "tcc.attempt"), attribute(reply, "tcc.attempt"));
            assert_eq!(
                attribute(parent, "tcc.participant"),
                attribute(reply, "tcc.participant")
            );
        }
        if *state == "cancelled" {
            let refused = operations
                .iter()
                .find(|s| s.name == "tcc.try" && attribute(s, "tcc.participant").as_deref() == Some("balance"))
                .unwrap();
            assert_eq!(attribute(refused, "tcc.outcome").as_deref(), Some("rejected"));
            let status = refused.status.as_ref().expect("an error status");
            assert_eq!(status.code, "STATUS_CODE_ERROR");
            assert!(status.message.contains("unknown account"), "{status:?}");
            assert!(attribute(saga_span, "saga.reason").is_some());
        }
    }

    // The client's span is the parent of the API's server span, whose child is the
    // submission: the saga joined the client's trace where the client made the call.
    let traced_submit = all
        .iter()
        .find(|s| s.name == "saga.submit" && attribute(s, "saga.id").as_deref() == Some(sagas[0].0.as_str()))
        .unwrap();
    let server = by_id
        .get(traced_submit.parent_span_id.as_str())
        .expect("the HTTP span exported");
    assert_eq!(server.name, "POST /v1/payments");
    assert_eq!(server.kind, "SPAN_KIND_SERVER");
    assert_eq!(server.parent_span_id, client_span);
    assert_eq!(server.trace_id, client_trace);
}
