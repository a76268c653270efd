//! The rendered text, checked exactly on answers written the way the server sends them.

use super::*;

/// 2025-01-02 03:04:05.000 UTC.
const T0: i64 = 1_735_787_045_000;
const ID: &str = "0196a3c1-7d2e-7a51-9c1e-2f4b8d6e0a13";

/// A payment the bank refused, as GET /v1/sagas/{id} answers it.
fn cancelled() -> SagaView {
    let json = format!(
        r#"{{"id": "{ID}", "kind": "payment", "client": "checkout", "idempotency_key": "checkout/payment:p-7",
            "state": "cancelled", "stuck": false,
            "reason": "branch 2 (bank) rejected: settlement account settlement-frozen is frozen",
            "version": 9, "created_at_ms": {T0}, "updated_at_ms": {u}, "finished_at_ms": {u},
            "try_deadline_ms": {d}, "wake_at_ms": null, "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
            "trace_url": "http://jaeger:16686/trace/4bf92f3577b34da6a3ce929d0e0e4736",
            "request": {{"payment_id": "p-7"}},
            "branches": [
              {{"branch_id": 0, "participant": "balance", "state": "cancelled", "attempt": 0,
                "resend_at_ms": null, "last_error": null, "payload": {{}}}},
              {{"branch_id": 1, "participant": "card-issuer", "state": "cancelled", "attempt": 0,
                "resend_at_ms": null, "last_error": null, "payload": {{}}}},
              {{"branch_id": 2, "participant": "bank", "state": "rejected", "attempt": 0,
                "resend_at_ms": null, "last_error": "settlement account settlement-frozen is frozen", "payload": {{}}}}
            ],
            "timeline": [
              {{"at_ms": {T0}, "kind": "submitted", "branch_id": null, "detail": "3 branches", "actor": "client"}},
              {{"at_ms": {a}, "kind": "try_ok", "branch_id": 0, "detail": "balance (send 1)", "operation": "try",
                "attempt": 1, "outcome": "prepared", "actor": {{"participant": "balance"}}}},
              {{"at_ms": {b}, "kind": "try_rejected", "branch_id": 2,
                "detail": "settlement account settlement-frozen is frozen", "operation": "try", "attempt": 1,
                "outcome": "rejected", "reason": "settlement account settlement-frozen is frozen",
                "actor": {{"participant": "bank"}}}},
              {{"at_ms": {b}, "kind": "decided", "branch_id": null,
                "detail": "cancel: branch 2 (bank) rejected: settlement account settlement-frozen is frozen",
                "operation": "cancel", "outcome": "cancel",
                "reason": "branch 2 (bank) rejected: settlement account settlement-frozen is frozen",
                "actor": {{"participant": "bank"}}}},
              {{"at_ms": {c}, "kind": "try_ok", "branch_id": 1, "detail": "card-issuer (send 1)", "operation": "try",
                "attempt": 1, "outcome": "prepared", "actor": {{"participant": "card-issuer"}}}},
              {{"at_ms": {e}, "kind": "cancel_ok", "branch_id": 0, "detail": "balance (send 1)",
                "operation": "cancel", "attempt": 1, "outcome": "cancelled", "actor": {{"participant": "balance"}}}},
              {{"at_ms": {u}, "kind": "cancel_ok", "branch_id": 1, "detail": "card-issuer (send 1)",
                "operation": "cancel", "attempt": 1, "outcome": "cancelled",
                "actor": {{"participant": "card-issuer"}}}},
              {{"at_ms": {u}, "kind": "finished", "branch_id": null, "detail": "cancelled", "outcome": "cancelled",
                "actor": {{"participant": "card-issuer"}}}}
            ]}}"#,
        a = T0 + 9,
        b = T0 + 12,
        c = T0 + 15,
        e = T0 + 31,
        u = T0 + 1204,
        d = T0 + 10_000,
    );
    serde_json::from_str(&json).unwrap()
}

/// A confirm the bank keeps failing, resent by the timer and by an operator.
fn stuck() -> SagaView {
    let json = format!(
        r#"{{"id": "{ID}", "kind": "generic", "client": null, "state": "confirming", "stuck": true,
            "reason": null, "created_at_ms": {T0}, "updated_at_ms": {r3}, "finished_at_ms": null,
            "try_deadline_ms": {dl}, "wake_at_ms": {w}, "trace_id": null, "request": {{}},
            "branches": [
              {{"branch_id": 0, "participant": "bank", "state": "confirming", "attempt": 3,
                "resend_at_ms": {w}, "last_error": "ledger\u001b[31m down", "payload": {{}}}}
            ],
            "timeline": [
              {{"at_ms": {T0}, "kind": "submitted", "branch_id": null, "detail": "1 branches", "actor": "client"}},
              {{"at_ms": {t1}, "kind": "try_ok", "branch_id": 0, "detail": "bank (send 1)", "operation": "try",
                "attempt": 1, "outcome": "prepared", "actor": {{"participant": "bank"}}}},
              {{"at_ms": {t1}, "kind": "decided", "branch_id": null, "detail": "confirm: every branch prepared",
                "operation": "confirm", "outcome": "confirm", "actor": {{"participant": "bank"}}}},
              {{"at_ms": {f}, "kind": "confirm_failed", "branch_id": 0, "detail": "bank (send 1): ledger down",
                "operation": "confirm", "attempt": 1, "outcome": "failed", "reason": "ledger\u001b[31m down",
                "actor": {{"participant": "bank"}}}},
              {{"at_ms": {r2}, "kind": "resent", "branch_id": 0, "detail": "confirm send 2 to bank",
                "operation": "confirm", "attempt": 2, "actor": "timer"}},
              {{"at_ms": {rq}, "kind": "resend_requested", "branch_id": null, "detail": "bank is back",
                "reason": "bank is back", "actor": {{"named_operator": "sre-oncall"}}}},
              {{"at_ms": {rq}, "kind": "resent", "branch_id": 0, "detail": "confirm send 3 to bank",
                "operation": "confirm", "attempt": 3, "actor": {{"named_operator": "sre-oncall"}}}},
              {{"at_ms": {rq}, "kind": "stuck", "branch_id": null,
                "detail": "3 sends without success; retries continue", "operation": "confirm", "attempt": 3,
                "actor": {{"named_operator": "sre-oncall"}}}}
            ]}}"#,
        t1 = T0 + 20,
        f = T0 + 45,
        r2 = T0 + 1_020,
        rq = T0 + 86_400_000 + 61_500,
        r3 = T0 + 86_400_000 + 61_500,
        w = T0 + 86_400_000 + 91_500,
        dl = T0 + 10_000,
    );
    serde_json::from_str(&json).unwrap()
}

#[test]
fn a_cancelled_saga_reads_top_to_bottom() {
    let text = saga_view(&cancelled(), T0 + 60_000);
    let expected = "\
saga 0196a3c1-7d2e-7a51-9c1e-2f4b8d6e0a13
  kind:        payment
  state:       cancelled
  client:      checkout
  key:         checkout/payment:p-7
  created:     2025-01-02 03:04:05.000 UTC
  finished:    2025-01-02 03:04:06.204 UTC
  duration:    1.204s
  reason:      branch 2 (bank) rejected: settlement account settlement-frozen is frozen
  trace id:    4bf92f3577b34da6a3ce929d0e0e4736
  trace link:  http://jaeger:16686/trace/4bf92f3577b34da6a3ce929d0e0e4736

branches (3):
  #  PARTICIPANT  STATE      SENDS  LAST ERROR
  0  balance      cancelled  -      -
  1  card-issuer  cancelled  -      -
  2  bank         rejected   -      settlement account settlement-frozen is frozen

timeline (8 entries):
  TIME (UTC)    OFFSET   EVENT         BRANCH         OP      SEND  OUTCOME    SINCE SEND  DETAIL
  03:04:05.000  +0ms     submitted     -              -       -     -                      3 branches
  03:04:05.009  +9ms     try_ok        0 balance      try     1     prepared   9ms
  03:04:05.012  +12ms    try_rejected  2 bank         try     1     rejected   12ms        settlement account settlement-frozen is frozen
  03:04:05.012  +12ms    decided       -              cancel  -     cancel                 branch 2 (bank) rejected: settlement account settlement-frozen is frozen
  03:04:05.015  +15ms    try_ok        1 card-issuer  try     1     prepared   15ms
  03:04:05.031  +31ms    cancel_ok     0 balance      cancel  1     cancelled  19ms
  03:04:06.204  +1.204s  cancel_ok     1 card-issuer  cancel  1     cancelled  1.192s
  03:04:06.204  +1.204s  finished      -              -       -     cancelled
";
    assert_eq!(text, expected, "\n{text}");
}

#[test]
fn a_stuck_saga_shows_resends_the_operator_and_what_it_waits_on() {
    let now = T0 + 86_400_000 + 70_000;
    let text = saga_view(&stuck(), now);
    let expected = "\
saga 0196a3c1-7d2e-7a51-9c1e-2f4b8d6e0a13
  kind:        generic
  state:       confirming  STUCK (confirm/cancel keeps failing; retries continue)
  client:      -
  created:     2025-01-02 03:04:05.000 UTC
  finished:    - (not yet)
  duration:    1d00h01m so far
  updated:     2025-01-03 03:05:06.500 UTC (8.500s ago)
  trace id:    -
  trace link:  -

branches (1):
  #  PARTICIPANT  STATE       SENDS  NEXT RESEND  LAST ERROR
  0  bank         confirming  3      in 21.500s   ledger\\u{1b}[31m down

timeline (8 entries):
  DATE AND TIME (UTC)      OFFSET     EVENT             BRANCH  OP       SEND  OUTCOME   SINCE SEND  OPERATOR    DETAIL
  2025-01-02 03:04:05.000  +0ms       submitted         -       -        -     -                     -           1 branches
  2025-01-02 03:04:05.020  +20ms      try_ok            0 bank  try      1     prepared  20ms        -
  2025-01-02 03:04:05.020  +20ms      decided           -       confirm  -     confirm               -           confirm: every branch prepared
  2025-01-02 03:04:05.045  +45ms      confirm_failed    0 bank  confirm  1     failed    25ms        -           ledger\\u{1b}[31m down
  2025-01-02 03:04:06.020  +1.020s    resent            0 bank  confirm  2     -         1.000s      -
  2025-01-03 03:05:06.500  +1d00h01m  resend_requested  -       -        -     -                     sre-oncall  bank is back
  2025-01-03 03:05:06.500  +1d00h01m  resent            0 bank  confirm  3     -         1d00h01m    sre-oncall
  2025-01-03 03:05:06.500  +1d00h01m  stuck             -       confirm  3     -                     sre-oncall  3 sends without success; retries continue
";
    assert_eq!(text, expected, "\n{text}");
    assert!(!text.contains('\u{1b}'), "a control character reached the terminal");
}

#[test]
fn a_saga_still_trying_shows_its_deadline_and_an_empty_timeline() {
    let mut v = cancelled();
    v.state = "trying".into();
    v.finished_at_ms = None;
    v.updated_at_ms = None;
    v.reason = None;
    v.timeline.clear();
    v.branches.clear();
    let text = saga_view(&v, T0 + 2_500);
    assert!(text.contains("  duration:      2.500s so far\n"), "{text}");
    assert!(
        text.contains("  try deadline:  2025-01-02 03:04:15.000 UTC (in 7.500s)\n"),
        "{text}"
    );
    assert!(
        text.contains("\nbranches: none\n") && text.ends_with("\ntimeline: empty\n"),
        "{text}"
    );
    let text = saga_view(&v, T0 + 12_000);
    assert!(text.contains("(passed 2.000s ago)"), "{text}");
}

#[test]
fn a_page_lists_one_saga_a_line() {
    let page: SagaPage = serde_json::from_str(&format!(
        r#"{{"sagas": [
            {{"id": "{ID}", "kind": "payment", "client": "checkout", "state": "cancelled", "stuck": false,
              "reason": "branch 2 (bank) rejected: settlement account settlement-frozen is frozen at the moment",
              "created_at_ms": {T0}, "updated_at_ms": {f}, "finished_at_ms": {f}}},
            {{"id": "0196a3c1-7d2e-7a51-9c1e-2f4b8d6e0a12", "kind": "generic", "client": null,
              "state": "confirming", "stuck": true, "reason": null,
              "created_at_ms": {T0}, "updated_at_ms": {T0}, "finished_at_ms": null}}
          ], "next_cursor": "0196a3c1-7d2e-7a51-9c1e-2f4b8d6e0a12"}}"#,
        f = T0 + 42
    ))
    .unwrap();
    let text = saga_page(&page, T0 + 302_000);
    let expected = "
  ID                                    KIND     STATE             CLIENT    CREATED (UTC)            DURATION           REASON
  0196a3c1-7d2e-7a51-9c1e-2f4b8d6e0a13  payment  cancelled         checkout  2025-01-02 03:04:05.000  42ms               branch 2 (bank) rejected: settlement account settlement-fro…
  0196a3c1-7d2e-7a51-9c1e-2f4b8d6e0a12  generic  confirming STUCK  -         2025-01-02 03:04:05.000  running 5m02.000s  -
2 sagas (more on the next page)
";
    assert_eq!(text, expected[1..], "\n{text}");
    let empty = SagaPage {
        sagas: vec![],
        next_cursor: None,
    };
    assert_eq!(saga_page(&empty, 0), "no sagas\n");
}

#[test]
fn spans_offsets_and_times() {
    assert_eq!(utc(0), "1970-01-01 00:00:00.000 UTC");
    assert_eq!(utc(1_700_000_000_123), "2023-11-14 22:13:20.123 UTC");
    assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00.000 UTC");
    assert_eq!(utc(-1), "1969-12-31 23:59:59.999 UTC");
    let spans = [
        (0, "0ms"),
        (12, "12ms"),
        (999, "999ms"),
        (1_204, "1.204s"),
        (59_999, "59.999s"),
        (125_007, "2m05.007s"),
        (3_723_000, "1h02m03s"),
        (2 * 86_400_000 + 3 * 3_600_000 + 4 * 60_000, "2d03h04m"),
        (-3, "-3ms"),
    ];
    for (ms, text) in spans {
        assert_eq!(span(ms), text, "{ms}");
    }
    assert_eq!(offset(12), "+12ms");
    assert_eq!(offset(1_204), "+1.204s");
    assert_eq!(offset(-3), "-3ms");
}

#[test]
fn pretty_json_indents_like_serde_json_and_keeps_the_order() {
    let sorted = r#"{"a":[1,2.5,{"b":null}],"c":{},"d":[],"e":"x, {y}: \"z\" [w]","f":{"g":true}}"#;
    let value: serde_json::Value = serde_json::from_str(sorted).unwrap();
    assert_eq!(pretty_json(sorted), serde_json::to_string_pretty(&value).unwrap());
    // Already pretty (or spaced any other way): the same text.
    assert_eq!(pretty_json(&pretty_json(sorted)), pretty_json(sorted));
    assert_eq!(
        pretty_json(" { \"z\" : 1 , \"a\" : [ ] , \"u\": \"\\u00e9\\\\\" } "),
        "{\n  \"z\": 1,\n  \"a\": [],\n  \"u\": \"\\u00e9\\\\\"\n}"
    );
}

#[test]
fn control_characters_are_escaped_and_long_reasons_cut() {
    assert_eq!(clean("plain"), "plain");
    assert_eq!(clean("a\nb\u{1b}[2J"), "a\\nb\\u{1b}[2J");
    assert_eq!(truncate("abcdef", 4), "abc…");
    assert_eq!(truncate("abcd", 4), "abcd");
}
