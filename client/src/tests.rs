//! The client against a canned HTTP server: what it sends, how it reads the answers.

use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const ID: &str = "0196a3c1-7d2e-7a51-9c1e-2f4b8d6e0a13";

/// Serves one canned response to the next request; the request text comes back
/// through the handle.
async fn serve_once(response: String) -> (String, tokio::task::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let handle = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = socket.read(&mut buf).await.unwrap();
            request.extend_from_slice(&buf[..n]);
            if let Some(end) = find(&request, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&request[..end]).to_ascii_lowercase();
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map(|v| v.trim().parse::<usize>().unwrap())
                    .unwrap_or(0);
                if request.len() >= end + 4 + length || n == 0 {
                    break;
                }
            }
            if n == 0 {
                break;
            }
        }
        socket.write_all(response.as_bytes()).await.unwrap();
        socket.shutdown().await.ok();
        String::from_utf8_lossy(&request).into_owned()
    });
    (url, handle)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn response(status: &str, headers: &[&str], body: &str) -> String {
    let mut r = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for h in headers {
        r.push_str(h);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r.push_str(body);
    r
}

fn payment() -> PaymentRequest {
    PaymentRequest {
        payment_id: "p-1".into(),
        account_id: "acct-1".into(),
        card_id: "card-1".into(),
        amount: 1250,
        currency: "EUR".into(),
        settlement_account: None,
    }
}

#[tokio::test]
async fn submits_a_payment_with_the_token() {
    let body = format!(r#"{{"saga_id": "{ID}", "created": true}}"#);
    let (url, server) = serve_once(response("202 Accepted", &[], &body)).await;
    let client = Client::new(&url, Some("s3cret".into())).unwrap();
    let s = client.submit_payment(&payment()).await.unwrap();
    assert_eq!(s.saga_id.to_string(), ID);
    assert!(s.created);
    assert_eq!(s.status_code, 202);
    let request = server.await.unwrap();
    assert!(request.starts_with("POST /v1/payments HTTP/1.1\r\n"), "{request}");
    assert!(
        request
            .to_ascii_lowercase()
            .contains("authorization: bearer s3cret\r\n"),
        "{request}"
    );
    assert!(
        request.to_ascii_lowercase().contains("content-type: application/json"),
        "{request}"
    );
    // The optional settlement account is left out, not sent as null.
    assert!(
        request.ends_with(
            r#"{"payment_id":"p-1","account_id":"acct-1","card_id":"card-1","amount":1250,"currency":"EUR"}"#
        ),
        "{request}"
    );
    assert!(!format!("{client:?}").contains("s3cret"));
}

#[tokio::test]
async fn submits_a_saga_with_its_idempotency_key_under_a_path_prefix() {
    let body = format!(r#"{{"saga_id": "{ID}", "created": false}}"#);
    let (url, server) = serve_once(response("200 OK", &[], &body)).await;
    let client = Client::new(&format!("{url}/kessai"), None).unwrap();
    let saga = SagaRequest {
        branches: vec![BranchRequest {
            participant: "balance".into(),
            payload: serde_json::json!({"account_id": "acct-1", "amount": 5, "currency": "EUR"}),
        }],
        try_timeout_ms: Some(10_000),
    };
    let s = client.submit_saga("order-7", &saga).await.unwrap();
    assert_eq!((s.created, s.status_code), (false, 200));
    let request = server.await.unwrap();
    assert!(request.starts_with("POST /kessai/v1/sagas HTTP/1.1\r\n"), "{request}");
    assert!(
        request.to_ascii_lowercase().contains("idempotency-key: order-7\r\n"),
        "{request}"
    );
    assert!(!request.to_ascii_lowercase().contains("authorization"), "{request}");

    assert!(matches!(
        client.submit_saga("bad\nkey", &saga).await,
        Err(ClientError::Invalid(_))
    ));
}

#[tokio::test]
async fn reads_a_saga_with_unknown_fields_and_both_actor_forms() {
    let body = format!(
        r#"{{"id": "{ID}", "kind": "payment", "client": "admin", "state": "confirmed", "stuck": false,
            "reason": null, "version": 7, "created_at_ms": 1000, "updated_at_ms": 1200, "finished_at_ms": 1200,
            "try_deadline_ms": 11000, "wake_at_ms": null, "request": {{"payment_id": "p-1"}},
            "branches": [{{"branch_id": 0, "participant": "balance", "state": "confirmed", "attempt": 1,
                           "resend_at_ms": null, "last_error": null, "payload": {{}}, "new_thing": 1}}],
            "timeline": [
              {{"at_ms": 1000, "kind": "submitted", "branch_id": null, "detail": "submitted", "actor": "client"}},
              {{"at_ms": 1100, "kind": "try_ok", "branch_id": 0, "detail": "balance prepared", "operation": "try",
                "attempt": 1, "outcome": "prepared", "actor": {{"participant": "balance"}}}},
              {{"at_ms": 1150, "kind": "resend_requested", "branch_id": null, "detail": "retry",
                "reason": "stuck", "actor": {{"named_operator": "sre-oncall"}}}},
              {{"at_ms": 1160, "kind": "resent", "branch_id": 0, "detail": "resent", "actor": "timer"}}
            ]}}"#
    );
    let (url, server) = serve_once(response("200 OK", &[], &body)).await;
    let client = Client::new(&url, Some("t".into())).unwrap();
    let view = client
        .saga(ID.parse().unwrap(), Some(Duration::from_secs(5)))
        .await
        .unwrap();
    assert!(view.is_finished());
    assert_eq!(view.client.as_deref(), Some("admin"));
    assert_eq!(view.branches[0].participant, "balance");
    assert_eq!(view.branches[0].extra["new_thing"], 1);
    assert_eq!(view.extra["version"], 7);
    let actors: Vec<_> = view
        .timeline
        .iter()
        .map(|e| e.actor.as_ref().unwrap().to_string())
        .collect();
    assert_eq!(
        actors,
        ["client", "participant:balance", "operator:sre-oncall", "timer"]
    );
    assert_eq!(view.timeline[1].outcome.as_deref(), Some("prepared"));
    assert_eq!(view.timeline[2].reason.as_deref(), Some("stuck"));
    let request = server.await.unwrap();
    assert!(
        request.starts_with(&format!("GET /v1/sagas/{ID}?wait=5000ms HTTP/1.1\r\n")),
        "{request}"
    );
}

#[tokio::test]
async fn lists_with_its_filters_in_the_query() {
    let body = format!(
        r#"{{"sagas": [{{"id": "{ID}", "kind": "generic", "client": "ci", "state": "trying", "stuck": true,
              "reason": null, "created_at_ms": 5, "updated_at_ms": 6, "finished_at_ms": null}}],
             "next_cursor": "abc"}}"#
    );
    let (url, server) = serve_once(response("200 OK", &[], &body)).await;
    let client = Client::new(&url, Some("t".into())).unwrap();
    let page = client
        .list(&ListFilter {
            state: Some("trying".into()),
            stuck: Some(true),
            kind: Some("generic".into()),
            client: Some("ci".into()),
            created_after: Some(1),
            created_before: Some(9),
            limit: Some(10),
            cursor: Some("a b&c".into()),
        })
        .await
        .unwrap();
    assert_eq!(page.next_cursor.as_deref(), Some("abc"));
    assert!(page.sagas[0].stuck && !page.sagas[0].is_finished());
    let request = server.await.unwrap();
    assert!(
        request.starts_with(
            "GET /v1/sagas?state=trying&stuck=true&kind=generic&client=ci&created_after=1&created_before=9&limit=10&cursor=a+b%26c HTTP/1.1\r\n"
        ),
        "{request}"
    );
}

#[tokio::test]
async fn an_error_answer_carries_code_field_saga_and_retry_after() {
    let body = format!(
        r#"{{"error": {{"code": "saga_finished", "message": "saga {ID} is confirmed", "field": null}}, "saga_id": "{ID}"}}"#
    );
    let (url, server) = serve_once(response("409 Conflict", &[], &body)).await;
    let client = Client::new(&url, Some("t".into())).unwrap();
    let e = client
        .retry(ID.parse().unwrap(), Some("stuck at the bank"))
        .await
        .unwrap_err();
    assert!(e.is_client_error() && !e.is_retryable());
    match &e {
        ClientError::Api {
            status, code, saga_id, ..
        } => {
            assert_eq!((*status, code.as_str()), (409, "saga_finished"));
            assert_eq!(saga_id.map(|s| s.to_string()).as_deref(), Some(ID));
        }
        other => panic!("{other:?}"),
    }
    let request = server.await.unwrap();
    assert!(
        request.starts_with(&format!("POST /v1/sagas/{ID}/retry HTTP/1.1\r\n")),
        "{request}"
    );
    assert!(request.ends_with(r#"{"reason":"stuck at the bank"}"#), "{request}");

    let body = r#"{"error": {"code": "overloaded", "message": "later", "field": null}}"#;
    let (url, _server) = serve_once(response("429 Too Many Requests", &["retry-after: 2"], body)).await;
    let e = Client::new(&url, None)
        .unwrap()
        .submit_payment(&payment())
        .await
        .unwrap_err();
    assert!(e.is_retryable());
    assert!(matches!(e, ClientError::Api { retry_after: Some(d), .. } if d == Duration::from_secs(2)));
}

#[tokio::test]
async fn a_success_that_is_not_the_promised_body_is_a_decode_error() {
    let (url, _server) = serve_once(response("202 Accepted", &[], r#"{"nope": 1}"#)).await;
    let e = Client::new(&url, None)
        .unwrap()
        .submit_payment(&payment())
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Decode { status: 202, .. }), "{e:?}");
    assert!(!e.is_retryable());
}

#[tokio::test]
async fn an_unreachable_server_is_retryable() {
    // A port nothing listens on: bind, take the port, close.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let client = Client::new(&format!("http://127.0.0.1:{port}"), None).unwrap();
    let e = client.stats().await.unwrap_err();
    assert!(matches!(e, ClientError::Transport { .. }), "{e:?}");
    assert!(e.is_retryable());
    assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
}

#[tokio::test]
async fn health_reads_both_200_and_503() {
    let body = r#"{"status": "error", "service": "coordinator", "checks": {"database": {"status": "error"}}}"#;
    let (url, _server) = serve_once(response("503 Service Unavailable", &[], body)).await;
    let h = Client::new(&url, None).unwrap().health().await.unwrap();
    assert!(!h.healthy);
    assert_eq!(h.service.as_deref(), Some("coordinator"));
    assert_eq!(h.checks["database"]["status"], "error");
}

#[test]
fn bad_urls_and_tokens_are_refused_up_front() {
    assert!(matches!(Client::new("not a url", None), Err(ClientError::Invalid(_))));
    assert!(matches!(Client::new("ftp://host", None), Err(ClientError::Invalid(_))));
    assert!(matches!(
        Client::new("http://h", Some("a\nb".into())),
        Err(ClientError::Invalid(_))
    ));
    let c = Client::new("http://h:1/api?x=1", Some(String::new())).unwrap();
    assert_eq!(c.base_url().as_str(), "http://h:1/api/");
    assert!(format!("{c:?}").contains("token: None"));
}

#[tokio::test]
async fn the_json_forms_return_the_body_as_sent() {
    // Fields out of alphabetical order, an actor object, a field this client does not know.
    let body = format!(
        r#"{{"id": "{ID}", "state": "confirmed", "kind": "payment", "created_at_ms": 1, "zeta": 1,
            "timeline": [{{"at_ms": 1, "kind": "try_ok", "actor": {{"participant": "bank"}}}}]}}"#
    );
    let (url, server) = serve_once(response("200 OK", &[], &body)).await;
    let client = Client::new(&url, Some("t".into())).unwrap();
    let text = client.saga_json(ID.parse().unwrap(), None).await.unwrap();
    assert_eq!(text, body);
    assert!(
        server
            .await
            .unwrap()
            .starts_with(&format!("GET /v1/sagas/{ID} HTTP/1.1\r\n"))
    );

    let body = r#"{"sagas": [], "next_cursor": null}"#;
    let (url, server) = serve_once(response("200 OK", &[], body)).await;
    let client = Client::new(&url, Some("t".into())).unwrap();
    let filter = ListFilter {
        client: Some("checkout".into()),
        ..ListFilter::default()
    };
    assert_eq!(client.list_json(&filter).await.unwrap(), body);
    assert!(
        server
            .await
            .unwrap()
            .starts_with("GET /v1/sagas?client=checkout HTTP/1.1\r\n")
    );

    // A 200 that is not JSON is still a decode error.
    let (url, _server) = serve_once(response("200 OK", &[], "<html>")).await;
    let e = Client::new(&url, None)
        .unwrap()
        .saga_json(ID.parse().unwrap(), None)
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Decode { status: 200, .. }), "{e:?}");
}

#[test]
fn trace_fields_are_read_when_present_and_none_when_absent() {
    let older = format!(r#"{{"id": "{ID}", "kind": "payment", "state": "trying", "created_at_ms": 1}}"#);
    let view: SagaView = serde_json::from_str(&older).unwrap();
    assert_eq!((view.trace_id, view.trace_url), (None, None));
    let newer = format!(
        r#"{{"id": "{ID}", "kind": "payment", "state": "trying", "created_at_ms": 1,
            "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "trace_url": "http://jaeger/trace/4bf9"}}"#
    );
    let view: SagaView = serde_json::from_str(&newer).unwrap();
    assert_eq!(view.trace_id.as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
    assert_eq!(view.trace_url.as_deref(), Some("http://jaeger/trace/4bf9"));
    assert!(view.extra.is_empty(), "{:?}", view.extra);
}
