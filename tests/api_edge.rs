//! The HTTP API's edge under hostile input, on the embedded stack (SQLite, in-process
//! queues) served over real HTTP: arbitrary JSON and arbitrary bytes at every POST
//! route never get a 5xx nor panic the server, and 100,000 long polls (`?wait=1ms`)
//! for sagas that do not exist leave nothing behind: no waiter, no memory growth.

use kessai_harness::stack::{EmbeddedStack, StackConfig};
use kessai_service::http::ApiConfig;
use kessai_transport::MemoryTransport;
use proptest::prelude::*;
use serde_json::{Value, json};
use std::sync::Arc;

const TOKEN: &str = "edge-test-token-0123456789";

struct Served {
    stack: EmbeddedStack,
    base: String,
    server: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

async fn serve() -> Served {
    let dir = tempfile::tempdir().unwrap();
    let stack = EmbeddedStack::start(StackConfig::sqlite(dir.path()), Arc::new(MemoryTransport::new()))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = kessai_service::http::router(stack.coordinator().clone(), ApiConfig::dev_admin(TOKEN));
    let server = tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    Served {
        stack,
        base,
        server,
        _dir: dir,
    }
}

/// JSON of any shape, with strings that include control characters and unicode.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(".{0,12}", inner, 0..8).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Payment- and saga-shaped JSON whose fields hold anything: reaches past the
/// decoder into validation and the coordinator.
fn near_valid() -> impl Strategy<Value = Value> {
    let field = prop_oneof![
        any_json(),
        "[a-z0-9-]{1,20}".prop_map(Value::String),
        (1i64..1_000_000).prop_map(|n| json!(n)),
        Just(json!("EUR")),
    ];
    (
        field.clone(),
        field.clone(),
        field.clone(),
        field.clone(),
        field.clone(),
        any_json(),
        prop_oneof![Just("balance"), Just("bank"), Just("card-issuer"), Just("nope")],
    )
        .prop_map(|(id, account, card, amount, currency, payload, participant)| {
            if matches!(&payload, Value::Object(_)) {
                json!({"branches": [{"participant": participant, "payload": payload}], "try_timeout_ms": amount})
            } else {
                json!({"payment_id": id, "account_id": account, "card_id": card, "amount": amount, "currency": currency})
            }
        })
}

const ROUTES: [&str; 3] = [
    "/v1/payments",
    "/v1/sagas",
    "/v1/sagas/0190d9a4-6b2e-7000-8000-000000000000/retry",
];

async fn post(http: &reqwest::Client, base: &str, route: &str, body: Vec<u8>, json: bool) -> u16 {
    let mut request = http
        .post(format!("{base}{route}"))
        .bearer_auth(TOKEN)
        .header("Idempotency-Key", "edge-key")
        .body(body);
    if json {
        request = request.header("Content-Type", "application/json");
    }
    request.send().await.expect("the server answers").status().as_u16()
}

#[test]
fn arbitrary_json_and_bytes_at_every_post_route_never_get_a_5xx() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let served = runtime.block_on(serve());
    let http = reqwest::Client::new();
    let config = ProptestConfig {
        cases: 96,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(
        value in prop_oneof![any_json(), near_valid()],
        bytes in prop::collection::vec(any::<u8>(), 0..300),
        json in any::<bool>(),
    )| {
        for route in ROUTES {
            let status = runtime.block_on(post(&http, &served.base, route, serde_json::to_vec(&value).unwrap(), true));
            prop_assert!(status < 500, "{route} {value}: {status}");
            let status = runtime.block_on(post(&http, &served.base, route, bytes.clone(), json));
            prop_assert!(status < 500, "{route} {bytes:?}: {status}");
        }
    });
    // Still serving, and what it accepted is real.
    let health = runtime.block_on(async {
        http.get(format!("{}/v1/stats", served.base))
            .bearer_auth(TOKEN)
            .send()
            .await
    });
    assert_eq!(health.unwrap().status(), 200);
    runtime.block_on(async move {
        served.server.abort();
        served.stack.shutdown().await;
    });
}

/// Resident memory of this process, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_for_unknown_sagas_leave_nothing_behind() {
    let served = serve().await;
    let http = reqwest::Client::builder().pool_max_idle_per_host(32).build().unwrap();
    let poll = |round: usize| {
        let http = http.clone();
        let base = served.base.clone();
        async move {
            let id = uuid::Uuid::now_v7();
            let r = http
                .get(format!("{base}/v1/sagas/{id}?wait=1ms"))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap_or_else(|e| panic!("poll {round}: {e}"));
            assert_eq!(r.status(), 404);
        }
    };
    use futures::StreamExt;
    let run = |range: std::ops::Range<usize>| {
        futures::stream::iter(range)
            .map(poll)
            .buffer_unordered(32)
            .collect::<Vec<()>>()
    };
    // Warm up: pools, allocator arenas, connection buffers.
    run(0..10_000).await;
    let before = rss_kib();
    run(10_000..110_000).await;
    let after = rss_kib();
    assert_eq!(served.stack.coordinator().waiters(), 0, "a waiter outlived its request");
    // A leak of even 100 bytes per request would be 10 MB.
    assert!(
        after < before + 8 * 1024,
        "RSS grew from {before} KiB to {after} KiB over 100,000 polls"
    );
    // A finished saga: the wait answers at once and registers nothing either.
    let p =
        json!({"payment_id": "edge-1", "account_id": "acct-1", "card_id": "card-1", "amount": 5, "currency": "EUR"});
    let r = http
        .post(format!("{}/v1/payments", served.base))
        .bearer_auth(TOKEN)
        .json(&p)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["saga_id"].as_str().unwrap().to_owned();
    let view: Value = http
        .get(format!("{}/v1/sagas/{id}?wait=10s", served.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(view["state"], "confirmed");
    for _ in 0..100 {
        let r = http
            .get(format!("{}/v1/sagas/{id}?wait=1ms", served.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(served.stack.coordinator().waiters(), 0);
    served.server.abort();
    served.stack.shutdown().await;
}
