//! The chaos harness, one fault kind at a time and all together, on the in-process
//! transport and on RabbitMQ (services in this process, `rabbitmq::*`), plus the real
//! thing: `kessai chaos --transport amqp` starting the multi-process deployment. Each
//! run must end with every saga terminal, every invariant (docs/GUARANTEES.md) and the barrier
//! check passing, and the faults it was configured for really injected.
//!
//! RabbitMQ tests follow the `kessai_testkit` rule (skip when unreachable,
//! fail with `KESSAI_REQUIRE_SERVICES=1`); those that restart the broker hold its lock
//! exclusively.

use kessai_harness::chaos::{self, ChaosOptions, ChaosReport};
use kessai_harness::demo::TransportKind;
use kessai_service::config::Config;
use kessai_testkit::{amqp_url, broker_lock, postgres_url, require_postgres, require_rabbitmq};
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};

const LOAD: Duration = Duration::from_secs(8);

async fn run(name: &str, opts: ChaosOptions) -> ChaosReport {
    let started = Instant::now();
    let report = chaos::run(ChaosOptions {
        duration: if opts.transport == TransportKind::Memory {
            LOAD
        } else {
            Duration::from_secs(6)
        },
        concurrency: 16,
        ..opts
    })
    .await
    .unwrap_or_else(|e| panic!("{name}: chaos run failed to set up: {e:#}"));
    eprintln!(
        "{name}: {:.1} s, {} sagas, kills {}, faults {:?}, quiescence {:.2} s, max sends {}",
        started.elapsed().as_secs_f64(),
        report.sagas.submitted,
        report.faults.process_kills,
        (
            report.faults.dropped,
            report.faults.duplicated,
            report.faults.delayed,
            report.faults.reordered
        ),
        report.quiescence_s,
        report.max_sends
    );
    let failed: Vec<_> = report.invariants.checks.iter().filter(|c| !c.ok).collect();
    assert!(report.invariants_ok, "{name}: violations {failed:#?}");
    assert!(report.quiesced, "{name}: not quiescent");
    assert_eq!(report.sagas.unfinished, 0, "{name}: unfinished sagas");
    assert!(report.sagas.submitted > 0, "{name}: nothing submitted");
    assert_eq!(
        report.sagas.confirmed + report.sagas.cancelled,
        report.sagas.total,
        "{name}: every saga terminal"
    );
    assert!(report.sagas.cancelled > 0, "{name}: the failing payments cancelled");
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_only() {
    let r = run(
        "drop",
        ChaosOptions {
            drop: 0.1,
            seed: 1,
            ..Default::default()
        },
    )
    .await;
    assert!(r.faults.dropped > 0);
    assert_eq!(
        (r.faults.duplicated, r.faults.delayed, r.faults.process_kills),
        (0, 0, 0)
    );
    assert!(r.max_sends >= 2, "a dropped message must have been resent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_only() {
    let r = run(
        "duplicate",
        ChaosOptions {
            duplicate: 0.2,
            seed: 2,
            ..Default::default()
        },
    )
    .await;
    assert!(r.faults.duplicated > 0);
    assert_eq!((r.faults.dropped, r.faults.delayed, r.faults.process_kills), (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_and_reorder_only() {
    let r = run(
        "delay+reorder",
        ChaosOptions {
            delay: 0.1,
            reorder: 0.1,
            delay_max: Duration::from_millis(500),
            seed: 3,
            ..Default::default()
        },
    )
    .await;
    assert!(r.faults.delayed > 0 && r.faults.reordered > 0);
    assert_eq!(
        (r.faults.dropped, r.faults.duplicated, r.faults.process_kills),
        (0, 0, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_kills_only() {
    let r = run(
        "kills",
        ChaosOptions {
            kill_every: Some(Duration::from_secs(1)),
            seed: 4,
            ..Default::default()
        },
    )
    .await;
    assert!(r.faults.process_kills >= 3, "kills: {:?}", r.faults.kills_by_service);
    assert_eq!((r.faults.dropped, r.faults.duplicated, r.faults.delayed), (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_faults_together() {
    let r = run(
        "all",
        ChaosOptions {
            drop: 0.05,
            duplicate: 0.05,
            delay: 0.05,
            reorder: 0.02,
            kill_every: Some(Duration::from_secs(1)),
            seed: 5,
            ..Default::default()
        },
    )
    .await;
    let f = &r.faults;
    assert!(f.process_kills >= 3, "kills: {:?}", f.kills_by_service);
    assert!(
        f.dropped > 0 && f.duplicated > 0 && f.delayed > 0 && f.reordered > 0,
        "{f:?}"
    );
    assert_eq!(f.broker_restarts, 0);
}

/// The same faults over RabbitMQ, the services sharing this process (SQLite books).
mod rabbitmq {
    use super::*;

    /// Runs `faults` in-process over RabbitMQ under the broker lock (`exclusive` for
    /// runs that restart the broker); `None` when RabbitMQ is not there.
    async fn on_rabbit(name: &str, seed: u64, exclusive: bool, faults: ChaosOptions) -> Option<ChaosReport> {
        let _lock = broker_lock("rabbit", exclusive);
        if !require_rabbitmq() {
            return None;
        }
        let mut config = Config::default();
        config.transport.amqp_url = amqp_url().into();
        let opts = ChaosOptions {
            transport: TransportKind::Amqp,
            config,
            seed,
            ..faults
        };
        Some(run(name, opts).await)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn drop_only() {
        let faults = ChaosOptions {
            drop: 0.1,
            ..Default::default()
        };
        let Some(r) = on_rabbit("amqp drop", 11, false, faults).await else {
            return;
        };
        assert!(r.faults.dropped > 0);
        assert_eq!((r.faults.duplicated, r.faults.process_kills), (0, 0));
        assert!(r.max_sends >= 2, "a dropped message must have been resent");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn duplicate_only() {
        let faults = ChaosOptions {
            duplicate: 0.2,
            ..Default::default()
        };
        let Some(r) = on_rabbit("amqp duplicate", 12, false, faults).await else {
            return;
        };
        assert!(r.faults.duplicated > 0);
        assert_eq!((r.faults.dropped, r.faults.delayed), (0, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delay_and_reorder_only() {
        let faults = ChaosOptions {
            delay: 0.1,
            reorder: 0.1,
            delay_max: Duration::from_millis(500),
            ..Default::default()
        };
        let Some(r) = on_rabbit("amqp delay+reorder", 13, false, faults).await else {
            return;
        };
        assert!(r.faults.delayed > 0 && r.faults.reordered > 0, "{:?}", r.faults);
        assert_eq!((r.faults.dropped, r.faults.duplicated), (0, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn process_kills_only() {
        let faults = ChaosOptions {
            kill_every: Some(Duration::from_secs(1)),
            ..Default::default()
        };
        let Some(r) = on_rabbit("amqp kills", 14, false, faults).await else {
            return;
        };
        assert!(r.faults.process_kills >= 3, "kills: {:?}", r.faults.kills_by_service);
        assert_eq!((r.faults.dropped, r.faults.duplicated), (0, 0));
    }

    /// Every message fault, kills and a broker restart at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn all_faults_and_broker_restarts() {
        let faults = ChaosOptions {
            drop: 0.05,
            duplicate: 0.05,
            delay: 0.05,
            reorder: 0.02,
            kill_every: Some(Duration::from_secs(1)),
            broker_restart_every: Some(Duration::from_millis(2500)),
            broker_outage: Duration::from_secs(1),
            ..Default::default()
        };
        let Some(r) = on_rabbit("amqp all", 15, true, faults).await else {
            return;
        };
        let f = &r.faults;
        assert!(f.process_kills >= 3, "kills: {:?}", f.kills_by_service);
        assert!(f.broker_restarts >= 1, "{f:?}");
        assert!(f.dropped > 0 && f.duplicated > 0 && f.delayed > 0, "{f:?}");
    }
}

/// `kessai chaos --transport amqp`: the real binary starts two coordinators and the
/// three participants as child processes on PostgreSQL, kills them with SIGKILL,
/// restarts RabbitMQ, injects message faults inside each service; exit 0 and a JSON
/// report whose every check passed.
#[test]
fn chaos_command_over_rabbitmq_processes() {
    let _lock = broker_lock("rabbit", true);
    if !require_postgres() || !require_rabbitmq() {
        return;
    }
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_kessai"))
        .args([
            "chaos",
            "--transport",
            "amqp",
            "--duration",
            "20s",
            "--kill-every",
            "1500ms",
            "--broker-restart-every",
            "4s",
            "--broker-outage",
            "2s",
            "--concurrency",
            "16",
            "--seed",
            "7",
            "--json",
        ])
        .env("KESSAI_TRANSPORT__AMQP_URL", amqp_url())
        .env("KESSAI_STORE__POSTGRES_URL", postgres_url())
        .output()
        .expect("run kessai chaos");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {}:\n{stdout}\n{stderr}", out.status);
    let r: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    eprintln!(
        "processes: {:.1} s, sagas {}, faults {}, quiescence {} s, max sends {}",
        started.elapsed().as_secs_f64(),
        r["sagas"],
        r["faults"],
        r["quiescence_s"],
        r["max_sends"]
    );
    assert_eq!(r["invariants_ok"], true, "{r:#}");
    assert_eq!(r["deployment"], "processes");
    for check in r["invariants"]["checks"].as_array().expect("checks") {
        assert_eq!(check["ok"], true, "{check:#}");
    }
    let names: Vec<&str> = r["invariants"]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    for expected in [
        "atomicity",
        "conservation",
        "no_leaked_reservations",
        "liveness",
        "no_lost_submission",
        "barrier_no_confirm_after_cancel",
        "no_unexpected_exits",
        "services_stopped_cleanly",
    ] {
        assert!(names.contains(&expected), "{expected} missing from {names:?}");
    }
    let f = &r["faults"];
    assert!(f["process_kills"].as_u64().unwrap() >= 5, "{f}");
    assert!(f["broker_restarts"].as_u64().unwrap() >= 2, "{f}");
    assert!(f["dropped"].as_u64().unwrap() > 0, "{f}");
    assert!(f["duplicated"].as_u64().unwrap() > 0, "{f}");
    let s = &r["sagas"];
    assert_eq!(s["unfinished"], 0, "{s}");
    assert!(s["submitted"].as_u64().unwrap() > 0, "{s}");
    assert_eq!(
        s["confirmed"].as_u64().unwrap() + s["cancelled"].as_u64().unwrap(),
        s["total"].as_u64().unwrap(),
        "{s}"
    );
}

#[test]
fn bad_flags_exit_non_zero_with_a_clear_message() {
    for (args, expect) in [
        (&["--drop", "2"][..], "between 0 and 1"),
        (&["--duration", "xyz"][..], "invalid duration"),
        (&["--duration", "0s"][..], "between 1s and 24h"),
        (&["--kill-every", "5ms"][..], "at least 200ms"),
        (&["--concurrency", "0"][..], "between 1 and 1000"),
        (&["--transport", "carrier-pigeon"][..], "invalid value"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_kessai"))
            .arg("chaos")
            .args(args)
            .output()
            .expect("run kessai");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
    }
    for (args, expect) in [
        (&["--transport", "sqs", "--broker-restart-every", "5s"][..], "amqp only"),
        (&["--transport", "amqp", "--coordinators", "0"][..], "between 1 and 16"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_kessai"))
            .arg("chaos")
            .args(args)
            .output()
            .expect("run kessai");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
    }
}
