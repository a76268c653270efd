//! Admission control over real HTTP: with a participant paused and the bound set
//! small, submissions beyond the bound get 429 with `Retry-After` and leave no row;
//! once the participant is back, every admitted saga confirms and new work is taken.

use kessai_coordinator::{AdmissionLimit, CoordinatorConfig, SagaState};
use kessai_harness::stack::{EmbeddedStack, StackConfig};
use kessai_messages::Payment;
use kessai_transport::MemoryTransport;
use std::sync::Arc;
use std::time::Duration;

const BOUND: u64 = 5;

mod common;

fn payment(i: usize) -> Payment {
    common::payment(format!("adm-{i}"), 1 + i, 1 + i, 1_000 + i as i64, false)
}

const TOKEN: &str = "admission-test-token";

async fn post(http: &reqwest::Client, base: &str, p: &Payment) -> reqwest::Response {
    http.post(format!("{base}/v1/payments"))
        .bearer_auth(TOKEN)
        .json(p)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_bound_submissions_get_429_and_leave_nothing_then_admitted_sagas_confirm() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = CoordinatorConfig {
        admission: AdmissionLimit::Fixed(BOUND),
        ..CoordinatorConfig::default()
    };
    let config = StackConfig {
        coordinator,
        ..StackConfig::sqlite(dir.path())
    };
    let mut stack = EmbeddedStack::start(config, Arc::new(MemoryTransport::new()))
        .await
        .unwrap();
    // The bank stops consuming: every saga stays in its try phase.
    stack.kill_participant("bank").await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = kessai_service::http::router(
        stack.coordinator().clone(),
        kessai_service::http::ApiConfig::dev_admin(TOKEN),
    );
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let http = reqwest::Client::new();

    let mut admitted = Vec::new();
    for i in 0..BOUND as usize {
        let r = post(&http, &base, &payment(i)).await;
        assert_eq!(r.status(), 202, "{:?}", r.text().await);
        let body: serde_json::Value = r.json().await.unwrap();
        admitted.push(body["saga_id"].as_str().unwrap().parse().unwrap());
    }
    for i in BOUND as usize..BOUND as usize + 5 {
        let r = post(&http, &base, &payment(i)).await;
        assert_eq!(r.status(), 429);
        let retry_after: u64 = r
            .headers()
            .get("retry-after")
            .expect("Retry-After header")
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "overloaded", "{body}");
    }
    // A repeated admitted payment is not new work: it answers with its saga (200, the
    // original), not 429.
    let again = post(&http, &base, &payment(0)).await;
    assert_eq!(again.status(), 200);
    let body: serde_json::Value = again.json().await.unwrap();
    assert_eq!(body["created"], false);

    // Refused submissions left no row: only the admitted sagas exist, none of the
    // refused payment ids is known.
    let db = stack.coordinator().db();
    let (by_state, _) = kessai_coordinator::store::counts(db).await.unwrap();
    assert_eq!(by_state.values().sum::<u64>(), BOUND);
    assert_eq!(by_state.get(&SagaState::Trying), Some(&BOUND));
    let refused_keys: Vec<String> = (BOUND as usize..BOUND as usize + 5)
        .map(|i| format!("admin/payment:adm-{i}"))
        .collect();
    assert!(
        kessai_coordinator::store::existing(db, &refused_keys)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(kessai_coordinator::store::outbox_len(db).await.unwrap(), 0);
    assert_eq!(stack.coordinator().admission().refused(), 5);

    // The bank resumes: every admitted saga confirms.
    stack.restart_participant("bank").await.unwrap();
    for id in &admitted {
        let state = stack.coordinator().wait(*id, Duration::from_secs(30)).await.unwrap();
        assert_eq!(state, Some(SagaState::Confirmed), "saga {id}");
    }
    // And the door is open again.
    let r = post(&http, &base, &payment(100)).await;
    assert_eq!(r.status(), 202);
    let body: serde_json::Value = r.json().await.unwrap();
    let late: kessai_messages::SagaId = body["saga_id"].as_str().unwrap().parse().unwrap();
    let state = stack.coordinator().wait(late, Duration::from_secs(30)).await.unwrap();
    assert_eq!(state, Some(SagaState::Confirmed));

    server.abort();
    let report = kessai_harness::demo::check(&stack, &[admitted.clone(), vec![late]].concat(), &[])
        .await
        .unwrap();
    assert!(report.ok(), "{report:#?}");
    stack.shutdown().await;
}
