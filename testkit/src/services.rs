//! Finding the real services tests need (RabbitMQ, the SQS emulator, PostgreSQL), with
//! one rule for every crate's tests:
//!
//! - a service that is not reachable makes its tests **skip** with a printed note, so
//!   `cargo test` works on a laptop without RabbitMQ or the SQS emulator;
//! - unless `KESSAI_REQUIRE_SERVICES=1`, where an unreachable service **fails** the test
//!   (CI sets it, so a broken service cannot turn the suite silently green).
//!
//! It also holds the broker lock: tests that stop the broker (`rabbitmqctl stop_app`)
//! take it exclusively, every other test of that broker takes it shared, so an outage
//! test never pulls the broker from under a test running in another binary
//! (cargo-nextest runs test binaries in parallel).

use std::fs::File;
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// The environment variable that turns "skip" into "fail".
pub const REQUIRE_SERVICES_ENV: &str = "KESSAI_REQUIRE_SERVICES";

/// The RabbitMQ URL tests use: `KESSAI_TEST_AMQP_URL`, or the local default.
pub fn amqp_url() -> String {
    std::env::var("KESSAI_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// The SQS endpoint tests use: `KESSAI_TEST_SQS_ENDPOINT`, or the local emulator.
pub fn sqs_endpoint() -> String {
    std::env::var("KESSAI_TEST_SQS_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:4566".into())
}

/// The PostgreSQL server tests use (no database in the path): `KESSAI_TEST_POSTGRES_URL`,
/// or the local default. Tests create and drop their own databases on it.
pub fn postgres_url() -> String {
    std::env::var("KESSAI_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://root@127.0.0.1:5432".into())
}

/// `host:port` of a URL such as `amqp://u:p@host:5672/%2f` or `http://host:4566`.
pub fn host_port(url: &str, default_port: u16) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    if host
        .rsplit_once(':')
        .is_some_and(|(_, port)| port.parse::<u16>().is_ok())
    {
        host.to_owned()
    } else {
        format!("{host}:{default_port}")
    }
}

/// Whether services must be there (`KESSAI_REQUIRE_SERVICES=1`).
pub fn services_required() -> bool {
    std::env::var(REQUIRE_SERVICES_ENV).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// `true` if `name` accepts TCP connections at `addr` (`host:port`). Otherwise prints
/// a skip note and returns `false` — or panics when services are required.
pub fn require_service(name: &str, addr: &str) -> bool {
    let reachable = addr
        .to_socket_addrs()
        .is_ok_and(|mut addrs| addrs.any(|a| TcpStream::connect_timeout(&a, Duration::from_secs(1)).is_ok()));
    if reachable {
        return true;
    }
    if services_required() {
        panic!("{name} is not reachable at {addr}, and {REQUIRE_SERVICES_ENV}=1 requires it");
    }
    eprintln!("skipping: {name} is not reachable at {addr} (set {REQUIRE_SERVICES_ENV}=1 to fail instead)");
    false
}

/// RabbitMQ at [`amqp_url`] reachable? (The [`require_service`] rule.)
pub fn require_rabbitmq() -> bool {
    require_service("RabbitMQ", &host_port(&amqp_url(), 5672))
}

/// The SQS emulator at [`sqs_endpoint`] reachable? (The [`require_service`] rule.)
pub fn require_sqs() -> bool {
    require_service("SQS emulator", &host_port(&sqs_endpoint(), 80))
}

/// The PostgreSQL server at [`postgres_url`] reachable? (The [`require_service`] rule.)
pub fn require_postgres() -> bool {
    require_service("PostgreSQL", &host_port(&postgres_url(), 5432))
}

/// The name of RabbitMQ's [`broker_lock`].
pub const RABBITMQ: &str = "rabbit";

/// `Some(shared lock)` if RabbitMQ is reachable, for a test that uses the broker without
/// stopping it; `None` to skip (see [`require_service`]).
pub fn rabbitmq_available() -> Option<BrokerLock> {
    require_rabbitmq().then(|| broker_lock(RABBITMQ, false))
}

/// A TCP port nothing listens on at the moment (on 127.0.0.1), for a server a test starts.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `prefix` and 16 random hex digits: a name no other test (or run) uses, for queues and
/// databases (`a-z`, `0-9` and the prefix's own characters only).
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}{}", &uuid::Uuid::new_v4().simple().to_string()[..16])
}

/// A held broker lock; released on drop.
#[derive(Debug)]
pub struct BrokerLock {
    _file: File,
}

/// Takes `/tmp/kessai-<broker>.lock`: `exclusive` for tests that stop or restart the
/// broker, shared for every other test using it. Blocks until granted (it is a file
/// lock, so it also orders test binaries running in parallel).
pub fn broker_lock(broker: &str, exclusive: bool) -> BrokerLock {
    let path = std::env::temp_dir().join(format!("kessai-{broker}.lock"));
    let file = File::options()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    let locked = if exclusive { file.lock() } else { file.lock_shared() };
    locked.unwrap_or_else(|e| panic!("cannot lock {}: {e}", path.display()));
    BrokerLock { _file: file }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_of_urls() {
        assert_eq!(
            host_port("amqp://guest:guest@127.0.0.1:5672/%2f", 5672),
            "127.0.0.1:5672"
        );
        assert_eq!(host_port("amqp://rabbit/%2f", 5672), "rabbit:5672");
        assert_eq!(host_port("http://127.0.0.1:4566", 80), "127.0.0.1:4566");
        assert_eq!(host_port("postgres://u:p@db:5433/x?sslmode=off", 5432), "db:5433");
    }

    #[test]
    fn unique_names_differ() {
        let (a, b) = (unique_name("kessai_"), unique_name("kessai_"));
        assert_ne!(a, b);
        assert_eq!(a.len(), "kessai_".len() + 16);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
        );
    }

    #[test]
    fn free_ports_can_be_bound() {
        let port = free_port();
        assert_ne!(port, 0);
        drop(TcpListener::bind(("127.0.0.1", port)).expect("bind the free port"));
    }

    #[test]
    fn shared_locks_coexist() {
        let a = broker_lock("unit-test", false);
        let b = broker_lock("unit-test", false);
        drop((a, b));
        drop(broker_lock("unit-test", true));
    }
}
