//! `/metrics` after known traffic: the embedded stack (SQLite, in-process queues)
//! served as `kessai serve` serves it, scraped over real HTTP. Three payments confirm,
//! two are cancelled (the bank refuses their try), one is held (the bank is down) until
//! an operator's retry resends its bank try — the one resend — and the bank comes back
//! to find the try twice (one barrier duplicate); one undecodable reply is
//! dead-lettered. Every counter must say exactly that.

mod common;

use kessai_coordinator::{AdmissionLimit, SagaState};
use kessai_harness::stack::{EmbeddedStack, StackConfig};
use kessai_service::http::ApiConfig;
use kessai_service::metrics::sample;
use kessai_transport::{Headers, MemoryTransport, OutgoingMessage};
use std::sync::Arc;
use std::time::Duration;

const TOKEN: &str = "metrics-test-token-0123456789";

async fn scrape(http: &reqwest::Client, base: &str) -> String {
    let response = http.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    response.text().await.unwrap()
}

fn value(text: &str, name: &str, labels: &str) -> f64 {
    sample(text, name, labels).unwrap_or_else(|| panic!("no sample {name}{{{labels}}} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_counts_exactly_the_traffic_that_happened() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = StackConfig::sqlite(dir.path());
    // No resend of its own within the test: the one resend is the operator's.
    config.coordinator.policy.try_resend.initial_ms = 600_000;
    config.coordinator.policy.try_resend.max_ms = 600_000;
    config.coordinator.try_timeout = Duration::from_secs(600);
    config.coordinator.admission = AdmissionLimit::Fixed(1_000);
    let metrics = kessai_harness::serve::with_metrics(&mut config);
    let transport = Arc::new(MemoryTransport::new());
    let mut stack = EmbeddedStack::start(config, transport.clone()).await.unwrap();
    let router = kessai_harness::serve::router(&stack, ApiConfig::dev_admin(TOKEN), metrics);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let http = reqwest::Client::new();
    let coordinator = stack.coordinator().clone();

    // Before any traffic the families are there, at zero where they have no labels.
    let empty = scrape(&http, &base).await;
    assert_eq!(value(&empty, "kessai_outbox_depth", ""), 0.0);
    assert_eq!(value(&empty, "kessai_sagas_stuck", ""), 0.0);

    let wait = Duration::from_secs(20);
    for (i, fail) in [(0, false), (1, false), (2, false), (3, true), (4, true)] {
        let s = coordinator
            .submit_payment(&common::payment(format!("m-{i}"), 1 + i, 1 + i, 100, fail), None)
            .await
            .unwrap();
        let expected = if fail {
            SagaState::Cancelled
        } else {
            SagaState::Confirmed
        };
        assert_eq!(coordinator.wait(s.saga_id, wait).await.unwrap(), Some(expected));
    }

    // The bank is down: its try waits in its queue while the others answer.
    stack.kill_participant("bank").await;
    let held = coordinator
        .submit_payment(&common::payment("m-held", 9, 9, 100, false), None)
        .await
        .unwrap()
        .saga_id;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let view = coordinator.saga(held).await.unwrap().unwrap();
        let answered = view
            .branches
            .iter()
            .filter(|b| b.participant != "bank" && b.state != "trying")
            .count();
        if answered == 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "balance and card-issuer never answered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The operator resends what the saga waits on: the bank's try, once.
    let retry = http
        .post(format!("{base}/v1/sagas/{held}/retry"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"reason": "bank restarted"}))
        .send()
        .await
        .unwrap();
    assert_eq!(retry.status(), 200, "{}", retry.text().await.unwrap());
    stack.restart_participant("bank").await.unwrap();
    assert_eq!(coordinator.wait(held, wait).await.unwrap(), Some(SagaState::Confirmed));

    // One undecodable reply.
    let reply_queue = stack.config().coordinator.topology.reply_queue();
    kessai_transport::Transport::publish(
        transport.as_ref(),
        &reply_queue,
        OutgoingMessage {
            payload: b"{not json".to_vec(),
            headers: Headers::new(),
            expires_in: None,
        },
    )
    .await
    .unwrap();
    let dead = format!(r#"queue="{reply_queue}",reason="undecodable""#);
    let deadline = tokio::time::Instant::now() + wait;
    let text = loop {
        let text = scrape(&http, &base).await;
        if sample(&text, "kessai_dead_lettered_total", &dead) == Some(1.0) {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the bad reply was never dead-lettered:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let confirmed = r#"kind="payment",outcome="confirmed""#;
    let cancelled = r#"kind="payment",outcome="cancelled""#;
    assert_eq!(value(&text, "kessai_sagas_started_total", r#"kind="payment""#), 6.0);
    assert_eq!(value(&text, "kessai_sagas_finished_total", confirmed), 4.0);
    assert_eq!(value(&text, "kessai_sagas_finished_total", cancelled), 2.0);
    assert_eq!(value(&text, "kessai_saga_duration_seconds_count", confirmed), 4.0);
    assert_eq!(value(&text, "kessai_saga_duration_seconds_count", cancelled), 2.0);
    // Exactly one resend, and it is the bank's try.
    assert_eq!(
        value(&text, "kessai_resends_total", r#"participant="bank",operation="try""#),
        1.0
    );
    let resend_series = text.lines().filter(|l| l.starts_with("kessai_resends_total{")).count();
    assert_eq!(resend_series, 1, "{text}");
    // The bank found that try twice: the second was a barrier duplicate.
    assert_eq!(
        value(
            &text,
            "kessai_barrier_hits_total",
            r#"participant="bank",hit="duplicate""#
        ),
        1.0
    );
    let dead_series = text
        .lines()
        .filter(|l| l.starts_with("kessai_dead_lettered_total{"))
        .count();
    assert_eq!(dead_series, 1, "{text}");
    // Branch operations as the coordinator saw them: every balance try ok, the bank
    // refused two tries, and cancels went to the two branches that had tried.
    let op = |p: &str, o: &str, r: &str| format!(r#"participant="{p}",operation="{o}",outcome="{r}""#);
    let count = "kessai_branch_operation_duration_seconds_count";
    assert_eq!(value(&text, count, &op("balance", "try", "ok")), 6.0);
    assert_eq!(value(&text, count, &op("bank", "try", "rejected")), 2.0);
    assert_eq!(value(&text, count, &op("balance", "cancel", "ok")), 2.0);
    assert_eq!(value(&text, count, &op("card-issuer", "confirm", "ok")), 4.0);
    // The participants' own view of the same work.
    let handled = "kessai_participant_operation_duration_seconds_count";
    assert_eq!(value(&text, handled, &op("balance", "try", "ok")), 6.0);
    assert_eq!(value(&text, handled, &op("bank", "try", "rejected")), 2.0);
    // Gauges read from the database at scrape time.
    assert_eq!(value(&text, "kessai_sagas", r#"state="confirmed""#), 4.0);
    assert_eq!(value(&text, "kessai_sagas", r#"state="cancelled""#), 2.0);
    assert_eq!(value(&text, "kessai_sagas", r#"state="trying""#), 0.0);
    assert_eq!(value(&text, "kessai_sagas_stuck", ""), 0.0);
    assert_eq!(value(&text, "kessai_outbox_depth", ""), 0.0);
    assert_eq!(value(&text, "kessai_outbox_oldest_age_seconds", ""), 0.0);
    assert_eq!(
        value(&text, "kessai_queue_depth", &format!(r#"queue="{reply_queue}""#)),
        0.0
    );

    server.abort();
    stack.shutdown().await;
}
