//! The API's command-line client and `kessai serve`, end to end: the built binary
//! runs `kessai serve` (the embedded stack behind the HTTP API), then `kessai submit`
//! and `kessai saga show|list|retry` run against it as separate processes, and the
//! `kessai-client` library drives a generic saga. SIGTERM must stop the server cleanly
//! and remove its temporary data folder.

use kessai_client::{BranchRequest, Client, ClientError, SagaRequest, render};
use serde_json::{Value, json};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "cli-test-token";
const READY_WITHIN: Duration = Duration::from_secs(120);
const EXIT_WITHIN: Duration = Duration::from_secs(30);

/// `kessai serve` as a child process; killed when dropped, also when a test panics.
struct Server {
    child: Child,
    url: String,
    /// Its stderr (the banner and the log).
    log: PathBuf,
    _logs: tempfile::TempDir,
}

impl Server {
    fn start(token: &str) -> Server {
        let logs = tempfile::Builder::new().prefix("kessai-cli-test-").tempdir().unwrap();
        let log = logs.path().join("serve.log");
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_kessai"))
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--admin-token",
                token,
            ])
            .env_remove("KESSAI_URL")
            .env_remove("KESSAI_TOKEN")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(logs.path().join("serve.out")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting kessai serve");
        let mut server = Server {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
            _logs: logs,
        };
        server.wait_ready();
        server
    }

    fn wait_ready(&mut self) {
        let client = Client::new(&self.url, None)
            .unwrap()
            .with_timeout(Duration::from_secs(2));
        let rt = runtime();
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("kessai serve exited early ({status}):\n{}", self.log_text());
            }
            match rt.block_on(client.health()) {
                Ok(h) if h.healthy => return,
                Ok(h) => eprintln!("not healthy yet: {:?}", h.checks),
                Err(_) => {}
            }
            assert!(
                started.elapsed() < READY_WITHIN,
                "kessai serve not healthy within {READY_WITHIN:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `kessai <args>` against this server, with the URL and the token from the
    /// environment.
    fn kessai(&self, args: &[&str]) -> Output {
        self.kessai_with_stdin(args, None)
    }

    fn kessai_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kessai"))
            .args(args)
            .env("KESSAI_URL", &self.url)
            .env("KESSAI_TOKEN", TOKEN)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(text) = stdin {
            child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        }
        child.wait_with_output().unwrap()
    }

    /// SIGTERM, then the exit status (or a panic after [`EXIT_WITHIN`]).
    fn terminate(&mut self) -> ExitStatus {
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0, "sending SIGTERM");
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                started.elapsed() < EXIT_WITHIN,
                "kessai serve still running {EXIT_WITHIN:?} after SIGTERM:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// SIGTERM first, so the server removes its temporary data folder; SIGKILL if it does
/// not stop in time.
impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Succeeded; its stdout.
fn ok(args: &[&str], out: &Output) -> String {
    assert!(
        out.status.success(),
        "kessai {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Succeeded and printed JSON.
fn ok_json(args: &[&str], out: &Output) -> Value {
    let stdout = ok(args, out);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("kessai {args:?}: not JSON ({e}):\n{stdout}"))
}

/// Failed with `code`; its stderr.
fn failed(args: &[&str], out: &Output, code: i32) -> String {
    assert_eq!(
        out.status.code(),
        Some(code),
        "kessai {args:?}:\nstdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stderr)
}

#[test]
fn serve_and_the_command_line_client() {
    let mut server = Server::start(TOKEN);
    let banner = server.log_text();
    for needle in [server.url.as_str(), TOKEN, "curl", "kessai saga show"] {
        assert!(banner.contains(needle), "the banner lacks {needle:?}:\n{banner}");
    }

    // A payment: 202 and created, then the same again: 200, the same saga.
    let submit = [
        "submit",
        "payment",
        "--payment-id",
        "cli-p-1",
        "--account",
        "acct-1",
        "--card",
        "card-1",
        "--amount",
        "1250",
        "--currency",
        "EUR",
        "--json",
    ];
    let first = ok_json(&submit, &server.kessai(&submit));
    assert_eq!(
        (first["created"].clone(), first["status"].clone()),
        (json!(true), json!(202))
    );
    let id = first["saga_id"].as_str().expect("a saga id").to_owned();
    let again = ok_json(&submit, &server.kessai(&submit));
    assert_eq!(again["saga_id"], first["saga_id"]);
    assert_eq!(
        (again["created"].clone(), again["status"].clone()),
        (json!(false), json!(200))
    );

    // Shown once over: confirmed, three branches, and the timeline.
    let show = ["saga", "show", id.as_str(), "--wait", "10s", "--json"];
    let saga = ok_json(&show, &server.kessai(&show));
    assert_eq!(saga["id"], id.as_str());
    assert_eq!(saga["state"], "confirmed", "{saga:#}");
    assert_eq!(saga["kind"], "payment");
    assert_eq!(saga["branches"].as_array().map(Vec::len), Some(3), "{saga:#}");
    let timeline = saga["timeline"].as_array().expect("a timeline");
    assert!(timeline.len() >= 3, "{saga:#}");
    assert!(timeline.iter().any(|e| e["kind"] == "submitted"), "{saga:#}");
    assert!(
        timeline.iter().all(|e| e["at_ms"].is_i64() && e["detail"].is_string()),
        "{saga:#}"
    );
    assert!(timeline.iter().any(|e| e["actor"].is_string()), "{saga:#}");

    // The human form: the summary, the branches table, the timeline.
    let human = ["saga", "show", id.as_str()];
    let shown = ok(&human, &server.kessai(&human));
    for needle in [
        "confirmed",
        "branches (3):",
        "balance",
        "card-issuer",
        "bank",
        "timeline (",
    ] {
        assert!(shown.contains(needle), "{needle:?} missing from:\n{shown}");
    }

    // A payment the bank refuses cancels; the reason is in the human timeline.
    let refused = [
        "submit",
        "payment",
        "--payment-id",
        "cli-p-2",
        "--account",
        "acct-2",
        "--card",
        "card-2",
        "--amount",
        "700",
        "--currency",
        "EUR",
        "--settlement-account",
        "settlement-frozen",
        "--json",
    ];
    let cancelled_id = ok_json(&refused, &server.kessai(&refused))["saga_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let show = ["saga", "show", cancelled_id.as_str(), "--wait", "10s"];
    let shown = ok(&show, &server.kessai(&show));
    assert!(shown.contains("cancelled"), "{shown}");
    assert!(shown.contains("try_rejected"), "{shown}");

    // The list has both, newest first; a filter narrows it.
    let list = ["saga", "list", "--json"];
    let page = ok_json(&list, &server.kessai(&list));
    let ids: Vec<&str> = page["sagas"]
        .as_array()
        .expect("sagas")
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    assert_eq!(ids, [cancelled_id.as_str(), id.as_str()], "{page:#}");
    let list = ["saga", "list", "--state", "cancelled", "--limit", "5", "--json"];
    let page = ok_json(&list, &server.kessai(&list));
    assert_eq!(page["sagas"].as_array().map(Vec::len), Some(1), "{page:#}");
    assert_eq!(page["sagas"][0]["id"], cancelled_id.as_str());
    let list = ["saga", "list"];
    let listed = ok(&list, &server.kessai(&list));
    assert!(listed.contains(&id) && listed.contains("confirmed"), "{listed}");

    // Retry of a finished saga: 409 saga_finished, exit status 2.
    let retry = ["saga", "retry", id.as_str(), "--reason", "from the test"];
    let stderr = failed(&retry, &server.kessai(&retry), 2);
    assert!(stderr.contains("saga_finished") && stderr.contains("409"), "{stderr}");

    // A wrong token: 401 unauthorized, exit status 2; no token at all, the same.
    let show = ["saga", "show", id.as_str(), "--token", "not-the-token"];
    let stderr = failed(&show, &server.kessai(&show), 2);
    assert!(stderr.contains("unauthorized"), "{stderr}");
    let show = ["saga", "show", id.as_str(), "--token", ""];
    let stderr = failed(&show, &server.kessai(&show), 2);
    assert!(stderr.contains("unauthorized"), "{stderr}");

    // An unknown saga: 404, exit status 2.
    let show = ["saga", "show", "0196a3c1-7d2e-7a51-9c1e-2f4b8d6e0a13"];
    let stderr = failed(&show, &server.kessai(&show), 2);
    assert!(stderr.contains("404"), "{stderr}");

    // A bad amount: 422 naming the field.
    let bad = [
        "submit",
        "payment",
        "--payment-id",
        "cli-p-3",
        "--account",
        "acct-3",
        "--card",
        "card-3",
        "--amount",
        "-5",
        "--currency",
        "EUR",
    ];
    let stderr = failed(&bad, &server.kessai(&bad), 2);
    assert!(stderr.contains("422") && stderr.contains("amount"), "{stderr}");

    // A generic saga from stdin.
    let body = r#"{"branches": [{"participant": "balance", "payload": {"account_id": "acct-4", "amount": 5, "currency": "EUR"}}]}"#;
    let submit_saga = ["submit", "saga", "--key", "cli-generic-stdin", "--file", "-", "--json"];
    let submitted = ok_json(&submit_saga, &server.kessai_with_stdin(&submit_saga, Some(body)));
    assert_eq!(submitted["created"], true);

    // The library: a generic saga, its idempotency, a conflicting body, stats, health.
    let rt = runtime();
    let client = Client::new(&server.url, Some(TOKEN.into())).unwrap();
    let saga = SagaRequest {
        branches: vec![
            BranchRequest {
                participant: "balance".into(),
                payload: json!({"account_id": "acct-5", "amount": 5, "currency": "EUR"}),
            },
            BranchRequest {
                participant: "card-issuer".into(),
                payload: json!({"card_id": "card-5", "amount": 5, "currency": "EUR"}),
            },
        ],
        try_timeout_ms: Some(10_000),
    };
    rt.block_on(async {
        let s = client.submit_saga("cli-generic-1", &saga).await.unwrap();
        assert!(s.created);
        assert_eq!(s.status_code, 202);
        let view = client.saga(s.saga_id, Some(Duration::from_secs(10))).await.unwrap();
        assert_eq!(view.state, "confirmed", "{view:#?}");
        assert!(view.is_finished());
        assert_eq!(view.kind, "generic");
        assert_eq!(view.branches.len(), 2);
        assert!(!view.timeline.is_empty());
        assert_eq!(view.client.as_deref(), Some("admin"));

        let again = client.submit_saga("cli-generic-1", &saga).await.unwrap();
        assert_eq!(
            (again.saga_id, again.created, again.status_code),
            (s.saga_id, false, 200)
        );

        let mut other = saga.clone();
        other.branches.pop();
        match client.submit_saga("cli-generic-1", &other).await {
            Err(ClientError::Api {
                status: 409,
                code,
                saga_id,
                ..
            }) => {
                assert_eq!(code, "idempotency_conflict");
                assert_eq!(saga_id, Some(s.saga_id));
            }
            other => panic!("expected 409 idempotency_conflict, got {other:?}"),
        }

        let unknown = SagaRequest {
            branches: vec![BranchRequest {
                participant: "nobody".into(),
                payload: json!({}),
            }],
            try_timeout_ms: None,
        };
        let e = client.submit_saga("cli-generic-2", &unknown).await.unwrap_err();
        assert_eq!(e.status(), Some(422), "{e}");
        assert!(!e.is_retryable());

        let stats = client.stats().await.unwrap();
        assert!(stats.is_object(), "{stats}");
        let health = client.health().await.unwrap();
        assert!(health.healthy);
        assert_eq!(health.service.as_deref(), Some("coordinator"));

        let page = client.list(&Default::default()).await.unwrap();
        assert!(page.sagas.iter().any(|v| v.id == s.saga_id));
    });

    // SIGTERM stops it cleanly, and the temporary data folder goes with it.
    let data_dir = server
        .log_text()
        .lines()
        .find_map(|l| l.trim().strip_prefix("data:").map(str::trim).map(str::to_owned))
        .and_then(|rest| rest.split(" (").next().map(PathBuf::from))
        .expect("the banner names the data folder");
    assert!(data_dir.is_dir(), "{}", data_dir.display());
    let status = server.terminate();
    assert!(status.success(), "exit {status}:\n{}", server.log_text());
    assert!(!data_dir.exists(), "{} is still there", data_dir.display());
}

#[test]
fn without_a_server_the_client_exits_1_and_says_where_it_looked() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let out = Command::new(env!("CARGO_BIN_EXE_kessai"))
        .args(["saga", "list", "--url", &url, "--token", "t"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = text(&out.stderr);
    assert!(stderr.contains(&url), "{stderr}");
}

#[test]
fn a_saga_request_that_is_not_valid_json_exits_2_before_sending() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("saga.json");
    std::fs::write(&file, r#"{"branches": [], "surprise": 1}"#).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kessai"))
        .args(["submit", "saga", "--key", "k", "--file"])
        .arg(&file)
        // Nothing listens here: the request must fail before any connection.
        .args(["--url", &format!("http://127.0.0.1:{}", free_port())])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("surprise"), "{stderr}");
}

#[test]
fn the_help_documents_the_exit_status() {
    for args in [&["saga", "--help"][..], &["submit", "payment", "--help"][..]] {
        let out = Command::new(env!("CARGO_BIN_EXE_kessai")).args(args).output().unwrap();
        let stdout = ok(args, &out);
        assert!(stdout.contains("Exit status"), "{stdout}");
        assert!(
            stdout.contains("KESSAI_URL") && stdout.contains("KESSAI_TOKEN"),
            "{stdout}"
        );
    }
}

/// A payment's two outcomes through the submitting flags, and each's `saga show`.
fn submit_payment(server: &Server, payment_id: &str, n: u32, settlement: Option<&str>) -> String {
    let (account, card) = (format!("acct-{n}"), format!("card-{n}"));
    let mut args = vec![
        "submit",
        "payment",
        "--payment-id",
        payment_id,
        "--account",
        &account,
        "--card",
        &card,
        "--amount",
        "300",
        "--currency",
        "EUR",
        "--json",
    ];
    if let Some(s) = settlement {
        args.extend(["--settlement-account", s]);
    }
    let out = server.kessai(&args);
    ok_json(&args, &out)["saga_id"].as_str().expect("a saga id").to_owned()
}

/// The value of a header line `  <label>:  <value>` of `saga show`.
fn header<'a>(shown: &'a str, label: &str) -> &'a str {
    let prefix = format!("  {label}:");
    shown
        .lines()
        .take_while(|l| !l.is_empty())
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {label:?} line in:\n{shown}"))
}

/// The lines of a `saga show` section (`branches (3):`, `timeline (9 entries):`):
/// its column heads, then one line per row.
fn section<'a>(shown: &'a str, title: &str) -> Vec<&'a str> {
    let mut lines = shown.lines().skip_while(|l| !l.starts_with(title));
    assert!(lines.next().is_some(), "no {title:?} section in:\n{shown}");
    lines.take_while(|l| !l.is_empty()).collect()
}

/// `YYYY-MM-DD HH:MM:SS.mmm UTC`.
fn is_utc_ms(s: &str) -> bool {
    let b = s.as_bytes();
    s.len() == 27
        && s.ends_with(" UTC")
        && [4, 7].iter().all(|&i| b[i] == b'-')
        && [13, 16].iter().all(|&i| b[i] == b':')
        && b[19] == b'.'
        && b[10] == b' '
        && s[..23].chars().filter(char::is_ascii_digit).count() == 17
}

#[test]
fn saga_show_and_list_read_well_in_a_terminal() {
    let server = Server::start(TOKEN);
    let confirmed = submit_payment(&server, "inspect-ok", 11, None);
    let cancelled = submit_payment(&server, "inspect-refused", 12, Some("settlement-frozen"));
    let rt = runtime();
    let client = Client::new(&server.url, Some(TOKEN.into())).unwrap();

    for (id, state) in [(&confirmed, "confirmed"), (&cancelled, "cancelled")] {
        let args = ["saga", "show", id.as_str(), "--wait", "10s"];
        let shown = ok(&args, &server.kessai(&args));
        assert!(!shown.contains('\u{1b}'), "colour codes on a pipe:\n{shown}");

        // The header.
        assert_eq!(shown.lines().next(), Some(format!("saga {id}").as_str()), "{shown}");
        assert_eq!(header(&shown, "kind"), "payment", "{shown}");
        assert_eq!(header(&shown, "state"), state, "{shown}");
        assert_eq!(header(&shown, "client"), "admin", "{shown}");
        assert!(is_utc_ms(header(&shown, "created")), "{shown}");
        assert!(is_utc_ms(header(&shown, "finished")), "{shown}");
        let duration = header(&shown, "duration");
        assert!(duration.ends_with("ms") || duration.ends_with('s'), "{shown}");
        let trace_id = header(&shown, "trace id");
        assert!(
            trace_id == "-" || trace_id.chars().all(|c| c.is_ascii_hexdigit()),
            "{shown}"
        );
        header(&shown, "trace link");

        // Three branches, each on its line with its participant and final state.
        let branches = section(&shown, "branches (3):");
        assert_eq!(branches.len(), 4, "{shown}");
        assert!(
            branches[0].contains("PARTICIPANT") && branches[0].contains("LAST ERROR"),
            "{shown}"
        );
        for (line, (n, participant)) in branches[1..]
            .iter()
            .zip([(0, "balance"), (1, "card-issuer"), (2, "bank")])
        {
            let cells: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(cells[..2], [n.to_string().as_str(), participant], "{shown}");
            let expected = match (state, participant) {
                ("cancelled", "bank") => "rejected",
                _ => state,
            };
            assert_eq!(cells[2], expected, "{shown}");
        }

        // The timeline: one line per entry, each with its offset from creation; every
        // participant's answer with the time since its command was sent.
        let timeline = section(&shown, "timeline (");
        assert!(
            timeline[0].contains("OFFSET") && timeline[0].contains("SINCE SEND"),
            "{shown}"
        );
        let entries = &timeline[1..];
        // Confirmed: submitted, three try_ok, decided, three confirm_ok, finished.
        // Cancelled: submitted, the bank's try_rejected, decided, two cancel_ok,
        // finished (a try OK that lands after the decision changes nothing and is not
        // recorded).
        let (least_entries, least_answers) = if state == "confirmed" { (9, 6) } else { (6, 2) };
        assert!(entries.len() >= least_entries, "{shown}");
        for line in entries {
            let cells: Vec<&str> = line.split_whitespace().collect();
            assert!(cells[1].starts_with('+'), "no offset in {line:?}:\n{shown}");
        }
        assert!(
            entries[0].contains("submitted") && entries[0].contains("+0ms"),
            "{shown}"
        );
        let last = entries.last().unwrap();
        assert!(last.contains("finished") && last.contains(state), "{shown}");
        let answers: Vec<&&str> = entries.iter().filter(|l| l.contains("_ok ")).collect();
        assert!(answers.len() >= least_answers, "{shown}");
        for line in answers {
            let cells: Vec<&str> = line.split_whitespace().collect();
            // TIME OFFSET EVENT BRANCH PARTICIPANT OP SEND OUTCOME SINCE-SEND
            assert_eq!(cells.len(), 9, "{line:?}:\n{shown}");
            assert!(
                cells[8].ends_with('s') && cells[8].starts_with(|c: char| c.is_ascii_digit()),
                "{line:?}"
            );
        }

        // The text is the library's rendering of the same answer.
        let view = rt.block_on(client.saga(id.parse().unwrap(), None)).unwrap();
        assert_eq!(shown, render::saga_view(&view, 0));

        // --json: the API's answer, pretty-printed.
        let args = ["saga", "show", id.as_str(), "--json"];
        let out = server.kessai(&args);
        let stdout = ok(&args, &out);
        assert!(stdout.starts_with("{\n  \"id\": "), "{stdout}");
        let json = ok_json(&args, &out);
        assert_eq!(json["id"], id.as_str());
        assert_eq!(json["state"], state);
        assert!(json.get("trace_id").is_some(), "{json:#}");
    }

    // The cancel's reason, in the header and on the decision's line.
    let args = ["saga", "show", cancelled.as_str()];
    let shown = ok(&args, &server.kessai(&args));
    let reason = header(&shown, "reason");
    assert!(reason.contains("bank") && reason.contains("frozen"), "{shown}");
    let decided = section(&shown, "timeline (")
        .into_iter()
        .find(|l| l.contains(" decided "))
        .unwrap_or_else(|| panic!("no decision in:\n{shown}"));
    assert!(decided.contains("cancel") && decided.contains(reason), "{shown}");
    let args = ["saga", "show", confirmed.as_str()];
    let shown = ok(&args, &server.kessai(&args));
    assert!(!shown.contains("  reason:"), "{shown}");

    // The list: the last hour's cancelled sagas are the cancelled one only.
    let args = ["saga", "list", "--since", "1h", "--state", "cancelled"];
    let listed = ok(&args, &server.kessai(&args));
    assert!(listed.contains(&cancelled), "{listed}");
    assert!(!listed.contains(&confirmed), "{listed}");
    let lines: Vec<&str> = listed.lines().collect();
    assert!(
        lines[0].contains("ID") && lines[0].contains("CREATED (UTC)"),
        "{listed}"
    );
    let row = lines.iter().find(|l| l.contains(&cancelled)).unwrap();
    assert!(
        row.contains("payment") && row.contains("cancelled") && row.contains("admin"),
        "{listed}"
    );
    assert!(row.contains("rejected"), "the reason: {listed}");
    assert_eq!(lines.last(), Some(&"1 saga"), "{listed}");

    // Both within the last hour, none within a span that ended before they were made.
    let args = ["saga", "list", "--since", "1h", "--client", "admin"];
    let listed = ok(&args, &server.kessai(&args));
    assert!(listed.contains(&cancelled) && listed.contains(&confirmed), "{listed}");
    let args = ["saga", "list", "--since", "1h", "--client", "someone-else"];
    assert_eq!(ok(&args, &server.kessai(&args)), "no sagas\n");
    let args = ["saga", "list", "--since", "2d", "--state", "stuck", "--json"];
    let page = ok_json(&args, &server.kessai(&args));
    assert_eq!(page["sagas"], json!([]), "{page:#}");

    // One a page: the command for the next page, and it works.
    let args = ["saga", "list", "--since", "1h", "--limit", "1"];
    let listed = ok(&args, &server.kessai(&args));
    let next = listed
        .lines()
        .find_map(|l| l.strip_prefix("next page: kessai "))
        .unwrap_or_else(|| panic!("no next page in:\n{listed}"));
    assert!(next.contains("--created-after ") && !next.contains("--since"), "{next}");
    let next: Vec<&str> = next.split_whitespace().collect();
    let listed = ok(&next, &server.kessai(&next));
    assert!(listed.contains(&confirmed) && !listed.contains(&cancelled), "{listed}");

    // Garbage for --since: exit status 2, naming the flag and what it takes.
    for bad in ["garbage", "1x", "0s", "-1h"] {
        let args = ["saga", "list", "--since", bad];
        let stderr = failed(&args, &server.kessai(&args), 2);
        assert!(
            stderr.contains("--since") && stderr.contains("e.g. 90s, 30m, 1h or 2d"),
            "{stderr}"
        );
    }
}

#[test]
fn show_and_list_help_explain_their_flags() {
    let cases: [(&[&str], &[&str]); 2] = [
        (
            &["saga", "show", "--help"],
            &["--wait", "--json", "OFFSET", "SINCE SEND", "UTC", "Exit status"],
        ),
        (
            &["saga", "list", "--help"],
            &[
                "--state",
                "stuck",
                "--stuck",
                "--kind",
                "--client",
                "--since",
                "2d",
                "--limit",
                "--json",
                "Exit status",
            ],
        ),
    ];
    for (args, needles) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_kessai")).args(args).output().unwrap();
        let stdout = ok(args, &out);
        for needle in needles {
            assert!(stdout.contains(needle), "{args:?} lacks {needle:?}:\n{stdout}");
        }
    }
}
