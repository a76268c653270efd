//! The operators' web UI (`/ui`) end to end: the embedded stack behind the HTTP API,
//! a few payments (one refused by the bank, so it cancels), then headless Chromium
//! driven over WebDriver (chromedriver, started here) does what an SRE would: enters
//! the token, finds the cancelled saga by its payment id, opens it, and must see its
//! three branches, its timeline and the cancel reason the API gives. Screenshots of
//! the list and of the saga go to `target/test-output/ui/`.
//!
//! Without Chromium or chromedriver (`/usr/bin/chromium`, `/usr/bin/chromedriver`, or
//! `KESSAI_TEST_CHROMIUM` / `KESSAI_TEST_CHROMEDRIVER`) the browser test skips with a
//! note, or fails with `KESSAI_REQUIRE_SERVICES=1`. The API additions the UI relies
//! on (`?payment_id=`, counts by state in `/v1/stats`) are checked without a browser.

use fantoccini::{Client as Browser, ClientBuilder, Locator};
use kessai_client::{Client, PaymentRequest, SagaView};
use kessai_harness::stack::{EmbeddedStack, StackConfig};
use kessai_participants::ledger::{FROZEN_SETTLEMENT_ACCOUNT, demo_account_id, demo_card_id};
use kessai_service::http::{ApiConfig, Auth, Scope, TokenSettings};
use kessai_transport::MemoryTransport;
use serde_json::{Value, json};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Client `admin`: every scope.
const TOKEN: &str = "ui-test-token-0123456789";
/// Client `checkout`: submit only.
const CHECKOUT_TOKEN: &str = "ui-test-checkout-0123456789";
/// Client `sre`: read only.
const SRE_TOKEN: &str = "ui-test-sre-0123456789";

fn api_config() -> ApiConfig {
    let token = |name: &str, scopes: &[Scope], token: &str| TokenSettings {
        name: name.into(),
        scopes: scopes.to_vec(),
        token: Some(token.into()),
        sha256: None,
    };
    ApiConfig {
        auth: Auth::from_settings(&[
            token("admin", &Scope::ALL, TOKEN),
            token("checkout", &[Scope::Submit], CHECKOUT_TOKEN),
            token("sre", &[Scope::Read], SRE_TOKEN),
        ])
        .unwrap(),
        trace_url: Some(TRACE_URL.into()),
        ..ApiConfig::dev_admin(TOKEN)
    }
}

/// Where the (imaginary) trace viewer shows a trace.
const TRACE_URL: &str = "http://127.0.0.1:16686/trace/{trace_id}";
/// How long the browser gets for anything to show up.
const PATIENCE: Duration = Duration::from_secs(20);

/// The embedded stack behind the API (and the UI) on a free port.
struct Served {
    stack: EmbeddedStack,
    base: String,
    server: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Served {
    async fn start() -> Served {
        // Trace ids as `kessai serve` makes them (no exporter: ids, no spans).
        let _ = kessai_service::telemetry::init_traces("kessai-ui-test").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let stack = EmbeddedStack::start(StackConfig::sqlite(dir.path()), Arc::new(MemoryTransport::new()))
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let router = kessai_service::http::router(stack.coordinator().clone(), api_config());
        let server = tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        Served {
            stack,
            base,
            server,
            _dir: dir,
        }
    }

    fn client(&self, token: &str) -> Client {
        Client::new(&self.base, Some(token.into())).unwrap()
    }

    /// `GET path` with the token: the JSON answer.
    async fn get(&self, path: &str) -> Value {
        let response = reqwest::Client::new()
            .get(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "GET {path}: {}", response.status());
        response.json().await.unwrap()
    }

    async fn stop(self) {
        self.server.abort();
        for (task, r) in self.stack.shutdown().await {
            assert!(r.is_ok(), "{task}: {r:?}");
        }
    }
}

/// Payments `<prefix>-1` … `-3` confirm, `<prefix>-refused` settles from the frozen
/// account (the bank refuses its try: it cancels). Returns every saga once it is over,
/// the refused one last.
async fn submit_payments(api: &Client, prefix: &str) -> Vec<SagaView> {
    let mut sagas = Vec::new();
    for (i, (suffix, refused)) in [("1", false), ("2", false), ("3", false), ("refused", true)]
        .into_iter()
        .enumerate()
    {
        let n = i as u32 + 1;
        let submitted = api
            .submit_payment(&PaymentRequest {
                payment_id: format!("{prefix}-{suffix}"),
                account_id: demo_account_id(n),
                card_id: demo_card_id(n),
                amount: 1250 + i64::from(n),
                currency: "EUR".into(),
                settlement_account: refused.then(|| FROZEN_SETTLEMENT_ACCOUNT.to_owned()),
            })
            .await
            .unwrap();
        let saga = api
            .saga(submitted.saga_id, Some(Duration::from_secs(20)))
            .await
            .unwrap();
        assert!(saga.is_finished(), "{}: still {}", saga.id, saga.state);
        sagas.push(saga);
    }
    assert!(sagas[..3].iter().all(|s| s.state == "confirmed"));
    assert_eq!(sagas[3].state, "cancelled");
    sagas
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_search_and_counts_by_state_over_the_api() {
    let served = Served::start().await;
    let sagas = submit_payments(&served.client(TOKEN), "api").await;
    let refused = &sagas[3];
    // Another client's payment of the same id: a saga of its own.
    let checkout = served.client(CHECKOUT_TOKEN);
    let theirs = checkout
        .submit_payment(&PaymentRequest {
            payment_id: "api-refused".into(),
            account_id: demo_account_id(9),
            card_id: demo_card_id(9),
            amount: 700,
            currency: "EUR".into(),
            settlement_account: None,
        })
        .await
        .unwrap();
    assert!(theirs.created);
    let theirs = checkout
        .saga(theirs.saga_id, Some(Duration::from_secs(20)))
        .await
        .unwrap();
    assert_eq!(theirs.state, "confirmed");

    let page = served.get("/v1/sagas?payment_id=api-refused").await;
    let found = page["sagas"].as_array().unwrap();
    assert_eq!(found.len(), 2, "{page}");
    assert_eq!(found[0]["id"], theirs.id.to_string(), "newest first");
    assert_eq!(found[0]["client"], "checkout");
    assert_eq!(found[1]["id"], refused.id.to_string());
    assert_eq!(found[1]["client"], "admin");
    assert_eq!(found[1]["reason"].as_str(), refused.reason.as_deref());
    assert_eq!(page["next_cursor"], Value::Null);
    // Filters and pages apply to what the payment id finds.
    let page = served.get("/v1/sagas?payment_id=api-refused&state=cancelled").await;
    assert_eq!(page["sagas"].as_array().unwrap().len(), 1, "{page}");
    assert_eq!(page["sagas"][0]["id"], refused.id.to_string());
    let page = served.get("/v1/sagas?payment_id=api-refused&limit=1").await;
    assert_eq!(page["sagas"][0]["id"], theirs.id.to_string());
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let page = served
        .get(&format!("/v1/sagas?payment_id=api-refused&limit=1&cursor={cursor}"))
        .await;
    assert_eq!(page["sagas"][0]["id"], refused.id.to_string());
    assert_eq!(page["next_cursor"], Value::Null);
    // Exact match only; the other filters still apply.
    for query in [
        "payment_id=api-refuse",
        "payment_id=api-refused-",
        "payment_id=API-REFUSED",
        "payment_id=api-refused&state=trying",
        "payment_id=api-refused&client=sre",
        "payment_id=api-1&kind=generic",
    ] {
        let page = served.get(&format!("/v1/sagas?{query}")).await;
        assert_eq!(page["sagas"], json!([]), "{query}");
    }
    let page = served.get("/v1/sagas?payment_id=api-1&state=confirmed").await;
    assert_eq!(page["sagas"][0]["id"], sagas[0].id.to_string());
    let bad = reqwest::Client::new()
        .get(format!("{}/v1/sagas?payment_id=", served.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().await.unwrap();
    assert_eq!(body["error"]["field"], "payment_id", "{body}");

    let stats = served.get("/v1/stats").await;
    assert_eq!(
        stats["sagas"],
        json!({"trying": 0, "confirming": 0, "cancelling": 0, "confirmed": 4, "cancelled": 1, "stuck": 0}),
        "{stats}"
    );
    served.stop().await;
}

/// `KESSAI_TEST_<NAME>` or `default`, if that file exists.
fn program(env: &str, default: &str) -> Option<PathBuf> {
    let path = std::env::var_os(env).map_or_else(|| PathBuf::from(default), PathBuf::from);
    path.is_file().then_some(path)
}

/// chromedriver on a free port, in a process group of its own with the browsers it
/// starts: the whole group is killed when dropped, also when the test panics.
struct Driver {
    child: Child,
    url: String,
    _logs: tempfile::TempDir,
}

impl Driver {
    fn start(chromedriver: &Path) -> Driver {
        let port = kessai_testkit::free_port();
        let logs = tempfile::tempdir().unwrap();
        let child = Command::new(chromedriver)
            .process_group(0)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", logs.path().join("chromedriver.log").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        let driver = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _logs: logs,
        };
        let ready = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < ready,
                "chromedriver is not listening on {port} after 15 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        driver
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The group's id is chromedriver's own (`process_group(0)`).
        let group = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) with a negative pid signals the group this test created.
        unsafe { libc::kill(-group, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

async fn browser(driver: &Driver, chromium: &Path, profile: &Path) -> Browser {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert("browserName".into(), json!("chrome"));
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1400,1000", format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a Chromium session through chromedriver")
}

/// Polls `probe` until it returns `Some`, for at most [`PATIENCE`]; panics with
/// `what` and the last thing seen otherwise.
async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, String>>,
{
    let deadline = Instant::now() + PATIENCE;
    let mut last = String::from("nothing yet");
    loop {
        match probe().await {
            Ok(Some(v)) => return v,
            Ok(None) => {}
            Err(seen) => last = seen,
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {PATIENCE:?}; last seen: {last}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the visible text of `#id` equals `expected`.
async fn wait_text(b: &Browser, id: &str, expected: &str) {
    wait_text_where(b, id, &format!("{expected:?}"), |text| text == expected).await;
}

/// Waits until the visible text of `#id` passes `ok` (`what` says what it should be).
async fn wait_text_where(b: &Browser, id: &str, what: &str, ok: impl Fn(&str) -> bool + Copy) {
    eventually(&format!("#{id} showing {what}"), move || async move {
        let text = match b.find(Locator::Id(id)).await {
            Ok(e) => e.text().await.map_err(|e| e.to_string())?,
            Err(e) => return Err(e.to_string()),
        };
        if ok(&text) {
            Ok(Some(()))
        } else {
            Err(format!("{text:?}"))
        }
    })
    .await
}

/// Types `token` into the token box and uses it.
async fn use_token(b: &Browser, token: &str) {
    b.find(Locator::Id("token-input"))
        .await
        .unwrap()
        .send_keys(token)
        .await
        .unwrap();
    b.find(Locator::Id("token-save")).await.unwrap().click().await.unwrap();
}

/// The error banner is hidden (what it says otherwise).
async fn assert_no_error(b: &Browser, at: &str) {
    let banner = b.find(Locator::Id("error")).await.unwrap();
    if banner.is_displayed().await.unwrap() {
        panic!("{at}: the page shows an error: {}", banner.text().await.unwrap());
    }
}

/// `(attribute value, visible text)` of every element matching `css`.
async fn rows(b: &Browser, css: &str, attribute: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for e in b.find_all(Locator::Css(css)).await.unwrap() {
        out.push((
            e.attr(attribute).await.unwrap().unwrap_or_default(),
            e.text().await.unwrap(),
        ));
    }
    out
}

/// A screenshot of the whole page (the window grown to the page's height) at `path`.
async fn screenshot(b: &Browser, path: &Path) {
    let height = b
        .execute(
            "return document.documentElement.scrollHeight + window.outerHeight - window.innerHeight;",
            vec![],
        )
        .await
        .unwrap()
        .as_u64()
        .unwrap_or(1000)
        .clamp(1000, 4000);
    b.set_window_size(1400, height as u32).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    std::fs::write(path, b.screenshot().await.unwrap()).unwrap();
    b.set_window_size(1400, 1000).await.unwrap();
}

fn output_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is `<target>/tmp`.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("test-output/ui");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sre_finds_a_cancelled_payment_and_sees_why() {
    let (Some(chromium), Some(chromedriver)) = (
        program("KESSAI_TEST_CHROMIUM", "/usr/bin/chromium"),
        program("KESSAI_TEST_CHROMEDRIVER", "/usr/bin/chromedriver"),
    ) else {
        let needed = "Chromium and chromedriver (/usr/bin/chromium, /usr/bin/chromedriver, or KESSAI_TEST_CHROMIUM / KESSAI_TEST_CHROMEDRIVER)";
        if kessai_testkit::services_required() {
            panic!("{needed} are missing, and KESSAI_REQUIRE_SERVICES=1 requires them");
        }
        eprintln!("skipping: {needed} are missing (set KESSAI_REQUIRE_SERVICES=1 to fail instead)");
        return;
    };
    let served = Served::start().await;
    let sagas = submit_payments(&served.client(TOKEN), "pay").await;
    let refused = &sagas[3];
    let reason = refused.reason.clone().expect("a cancelled saga has a reason");
    let out = output_dir();

    let driver = Driver::start(&chromedriver);
    let profile = tempfile::tempdir().unwrap();
    let b = browser(&driver, &chromium, profile.path()).await;
    // The token, then the live counts and the list.
    b.goto(&format!("{}/ui", served.base)).await.unwrap();
    wait_text(&b, "list-caption", "Enter an API token (scope read) to see the sagas.").await;
    use_token(&b, TOKEN).await;
    wait_text(&b, "count-confirmed", "3").await;
    wait_text(&b, "count-cancelled", "1").await;
    wait_text(&b, "count-stuck", "0").await;
    wait_text(&b, "list-caption", "Sagas: 4, newest first.").await;
    let listed = rows(&b, "[data-testid=saga-row]", "data-saga-id").await;
    let ids: Vec<String> = sagas.iter().rev().map(|s| s.id.to_string()).collect();
    assert_eq!(listed.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(), ids);
    assert!(listed[0].1.contains("cancelled"), "{:?}", listed[0]);
    wait_text_where(&b, "counts-admission", "the admission state", |t| {
        t.starts_with("unfinished 0 / bound ")
    })
    .await;
    assert_no_error(&b, "the list").await;
    screenshot(&b, &out.join("saga-list.png")).await;

    // A filter from the counts: the cancelled tile.
    b.find(Locator::Css("[data-testid=tile-cancelled]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&b, "list-caption", "Sagas (state cancelled): 1, newest first.").await;

    // Search by payment id, open the one saga found.
    let search = b.find(Locator::Id("search-input")).await.unwrap();
    search.send_keys("pay-refused").await.unwrap();
    b.find(Locator::Id("search-button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&b, "list-caption", "Sagas of payment “pay-refused”: 1, newest first.").await;
    let found = rows(&b, "[data-testid=saga-row]", "data-saga-id").await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, refused.id.to_string());
    b.find(Locator::Css("[data-testid=saga-link]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();

    // The saga: state, reason, branches, timeline, waterfall.
    wait_text(&b, "saga-state", "cancelled").await;
    wait_text(&b, "saga-id", &refused.id.to_string()).await;
    wait_text(&b, "cancel-reason-text", &reason).await;
    let banner = b.find(Locator::Id("cancel-reason")).await.unwrap();
    assert!(banner.is_displayed().await.unwrap());
    // Its trace: the id, linked to the trace viewer.
    let view = served.get(&format!("/v1/sagas/{}", refused.id)).await;
    let trace_id = view["trace_id"].as_str().expect("a trace id").to_owned();
    let link = b.find(Locator::Css("[data-testid=trace-link]")).await.unwrap();
    assert_eq!(link.text().await.unwrap(), trace_id);
    assert_eq!(
        link.attr("href").await.unwrap().as_deref(),
        Some(TRACE_URL.replace("{trace_id}", &trace_id).as_str())
    );

    let branches = rows(&b, "[data-testid=branch-row]", "data-participant").await;
    let participants: Vec<&str> = branches.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(participants, ["balance", "card-issuer", "bank"]);
    for ((participant, text), api) in branches.iter().zip(&refused.branches) {
        assert!(
            text.contains(participant.as_str()) && text.contains(&api.state),
            "{text}"
        );
        if let Some(error) = &api.last_error {
            assert!(text.contains(error.as_str()), "{participant}: {text} lacks {error}");
        }
    }
    assert!(
        refused.branches[2].last_error.is_some(),
        "the bank's refusal is its last error"
    );

    let timeline = rows(&b, "[data-testid=timeline-row]", "data-kind").await;
    assert_eq!(timeline.len(), refused.timeline.len(), "{timeline:?}");
    for ((kind, text), api) in timeline.iter().zip(&refused.timeline) {
        assert_eq!(kind, &api.kind);
        assert!(text.contains(api.detail.as_str()), "{text:?} lacks {:?}", api.detail);
    }
    assert!(timeline.iter().any(|(k, _)| k == "try_rejected"));

    let mut drawn = Vec::new();
    for bar in b.find_all(Locator::Css("[data-testid=waterfall-bar]")).await.unwrap() {
        let mut attrs = Vec::new();
        for name in ["data-participant", "data-operation", "data-outcome"] {
            attrs.push(bar.attr(name).await.unwrap().unwrap_or_default());
        }
        drawn.push(attrs);
    }
    let has = |p: &str, op: &str, outcome: &str| drawn.iter().any(|d| d[0] == p && d[1] == op && d[2] == outcome);
    assert!(has("bank", "try", "rejected"), "{drawn:?}");
    for p in ["balance", "card-issuer"] {
        assert!(drawn.iter().any(|d| d[0] == p && d[1] == "try"), "{p}: {drawn:?}");
        assert!(has(p, "cancel", "cancelled"), "{p}: {drawn:?}");
    }
    assert!(
        !drawn.iter().any(|d| d[0] == "bank" && d[1] == "cancel"),
        "a refused try is not cancelled"
    );

    assert_no_error(&b, "the saga").await;
    screenshot(&b, &out.join("saga-cancelled.png")).await;

    // Retry: the API's refusal shows, for a finished saga, then for a token without
    // the admin scope.
    b.find(Locator::Id("retry-button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let finished = format!(
        "retry refused: 409 saga_finished: saga {} is already cancelled; there is nothing to resend",
        refused.id
    );
    wait_text(&b, "retry-result", &finished).await;
    use_token(&b, SRE_TOKEN).await;
    wait_text(&b, "saga-state", "cancelled").await;
    b.find(Locator::Id("retry-button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(
        &b,
        "retry-result",
        "retry refused: 403 forbidden: the token of \"sre\" lacks the \"admin\" scope this route needs",
    )
    .await;
    assert_no_error(&b, "the saga, read-only").await;

    // A saga id in the search box opens that saga.
    let search = b.find(Locator::Id("search-input")).await.unwrap();
    search.clear().await.unwrap();
    search.send_keys(&sagas[0].id.to_string()).await.unwrap();
    b.find(Locator::Id("search-button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&b, "saga-id", &sagas[0].id.to_string()).await;
    wait_text(&b, "saga-state", "confirmed").await;
    assert!(
        !b.find(Locator::Id("cancel-reason"))
            .await
            .unwrap()
            .is_displayed()
            .await
            .unwrap()
    );

    // A token the API refuses: its error shows.
    use_token(&b, "not-the-token-0123456789").await;
    let page = &b;
    eventually("the 401 shown", move || async move {
        let banner = page.find(Locator::Id("error")).await.map_err(|e| e.to_string())?;
        let text = banner.text().await.map_err(|e| e.to_string())?;
        if text.contains("401 unauthorized: unknown token") {
            Ok(Some(()))
        } else {
            Err(text)
        }
    })
    .await;

    b.close().await.unwrap();
    drop(driver);
    served.stop().await;
}
