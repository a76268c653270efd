//! Every broker call has a bound of ours: a broker that accepts the TCP connection and
//! never answers (or stops answering) turns into `Error::Unavailable` within it, not a
//! call that hangs, and the transport recovers on its own once it answers again.
//!
//! The silent-server tests need no broker. The others follow the skip-or-fail rule
//! (`kessai_testkit::require_rabbitmq` / `require_sqs`).

#![cfg(any(feature = "amqp", feature = "sqs"))]

use kessai_transport::{ConsumeOptions, Error, OutgoingMessage, Transport};
use std::net::TcpListener;
use std::time::{Duration, Instant};

/// Well above every bound the tests set, well below a hang.
const QUICKLY: Duration = Duration::from_secs(5);

/// A server that accepts TCP connections and never says a word (nor closes them).
fn silent_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for socket in listener.incoming().flatten() {
            held.push(socket);
        }
    });
    port
}

/// `call`, failing the test (instead of hanging it) if no bound of ours ended it.
async fn guarded<F: std::future::Future>(call: F) -> F::Output {
    tokio::time::timeout(3 * QUICKLY, call)
        .await
        .expect("the call hung: no bound of ours ended it")
}

fn assert_unavailable_quickly<T: std::fmt::Debug>(result: Result<T, Error>, elapsed: Duration) {
    assert!(matches!(result, Err(Error::Unavailable(_))), "{result:?}");
    assert!(elapsed < QUICKLY, "gave up only after {elapsed:?}");
}

#[cfg(feature = "amqp")]
mod amqp {
    use super::*;
    use kessai_testkit::{amqp_url, host_port, rabbitmq_available, receive_one, unique_name};
    use kessai_transport::{AmqpConfig, AmqpTransport};
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpStream};
    use std::sync::{Arc, Mutex};

    /// A TCP proxy to `upstream` that can cut its existing connections from the broker
    /// while leaving the client's end open and silent: from the client's side, a link
    /// that died without a word (heartbeats would notice, but only after seconds).
    /// Connections made after a cut are forwarded as usual.
    struct Proxy {
        port: u16,
        /// Per connection: the broker side (to shut down) and the client side (kept open).
        links: Arc<Mutex<Vec<(TcpStream, TcpStream)>>>,
    }

    impl Proxy {
        fn start(upstream: String) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            let port = listener.local_addr().expect("address").port();
            let links: Arc<Mutex<Vec<(TcpStream, TcpStream)>>> = Arc::default();
            let registry = links.clone();
            std::thread::spawn(move || {
                for client in listener.incoming().flatten() {
                    let Ok(server) = TcpStream::connect(&upstream) else {
                        continue;
                    };
                    let (Ok(client_in), Ok(server_out), Ok(server_in), Ok(client_out)) = (
                        client.try_clone(),
                        server.try_clone(),
                        server.try_clone(),
                        client.try_clone(),
                    ) else {
                        continue;
                    };
                    registry.lock().unwrap().push((server, client));
                    std::thread::spawn(move || forward(client_in, server_out));
                    std::thread::spawn(move || forward(server_in, client_out));
                }
            });
            Self { port, links }
        }

        /// Cuts every connection made so far from the broker; the clients hear nothing.
        fn cut(&self) {
            for (server, _client) in self.links.lock().unwrap().iter() {
                let _ = server.shutdown(Shutdown::Both);
            }
        }
    }

    /// Copies until either side ends; never closes anything (the registry holds the
    /// sockets open).
    fn forward(mut from: TcpStream, mut to: TcpStream) {
        let mut buffer = [0u8; 16 * 1024];
        while let Ok(n) = from.read(&mut buffer) {
            if n == 0 || to.write_all(&buffer[..n]).is_err() {
                return;
            }
        }
    }

    /// `url` with its host and port replaced by `127.0.0.1:port`.
    fn via(url: &str, port: u16) -> String {
        let (scheme, rest) = url.split_once("://").expect("scheme");
        let authority_end = rest.find('/').unwrap_or(rest.len());
        let (authority, path) = rest.split_at(authority_end);
        let credentials = authority
            .rsplit_once('@')
            .map(|(c, _)| format!("{c}@"))
            .unwrap_or_default();
        format!("{scheme}://{credentials}127.0.0.1:{port}{path}")
    }

    #[test]
    fn via_replaces_host_and_port() {
        assert_eq!(via("amqp://u:p@host:5672/%2f", 9), "amqp://u:p@127.0.0.1:9/%2f");
        assert_eq!(via("amqp://host", 9), "amqp://127.0.0.1:9");
    }

    /// Connecting to a server that accepts TCP and never answers the AMQP handshake
    /// fails within `connect_timeout`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connecting_to_a_silent_server_is_unavailable_within_the_bound() {
        let port = silent_server();
        let config = AmqpConfig {
            connect_timeout: Duration::from_millis(500),
            ..AmqpConfig::new(format!("amqp://guest:guest@127.0.0.1:{port}/%2f"))
        };
        let started = Instant::now();
        let connected = guarded(AmqpTransport::connect(config)).await;
        assert_unavailable_quickly(connected, started.elapsed());
    }

    /// A connection that goes silent: the calls on it fail within `op_timeout` /
    /// `confirm_timeout` instead of hanging, the connection is retired, and publishing,
    /// declaring and consuming carry on over a new one without waiting for heartbeats.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_silent_connection_is_bounded_and_replaced() {
        let Some(_shared) = rabbitmq_available() else {
            return;
        };
        let url = amqp_url();
        let proxy = Proxy::start(host_port(&url, 5672));
        let config = AmqpConfig {
            connection_name: "kessai-timeout-tests".into(),
            op_timeout: Duration::from_secs(1),
            confirm_timeout: Duration::from_secs(1),
            settle_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(2),
            publisher_channels: 1,
            ..AmqpConfig::new(via(&url, proxy.port))
        };
        let transport = AmqpTransport::connect(config).await.expect("connect through the proxy");
        let q = unique_name("kessai-timeouts-");
        transport.declare(&q).await.expect("declare");
        transport
            .publish(&q, OutgoingMessage::new(b"before".to_vec()))
            .await
            .expect("publish");
        let options = ConsumeOptions {
            prefetch: 8,
            poll_wait: Duration::from_millis(300),
        };
        let mut consumer = transport.consume(&q, options).await.expect("consume");
        let before = receive_one(&mut consumer, QUICKLY).await;
        assert_eq!(before.payload, b"before");
        before.ack().await.expect("ack");

        proxy.cut();

        // Publishing on the silent connection: bounded, then retired.
        let started = Instant::now();
        let published = guarded(transport.publish(&q, OutgoingMessage::new(b"lost?".to_vec()))).await;
        assert_unavailable_quickly(published, started.elapsed());
        let started = Instant::now();
        let mut attempts = 0;
        loop {
            attempts += 1;
            match guarded(transport.publish(&q, OutgoingMessage::new(b"after".to_vec()))).await {
                Ok(()) => break,
                Err(Error::Unavailable(e)) if attempts < 3 => eprintln!("retrying: {e}"),
                Err(e) => panic!("publish after the cut, attempt {attempts}: {e:?}"),
            }
        }
        assert!(
            started.elapsed() < QUICKLY,
            "recovered only after {:?}",
            started.elapsed()
        );
        guarded(transport.declare(&q))
            .await
            .expect("declare over the new connection");

        // The consumer leaves the retired connection too, and gets the new message.
        let started = Instant::now();
        let after = loop {
            let delivery = receive_one(&mut consumer, QUICKLY).await;
            if delivery.payload == b"after" {
                break delivery;
            }
            // "lost?" may have reached the broker before the cut took effect.
            delivery.ack().await.expect("ack");
        };
        after.ack().await.expect("ack");
        assert!(
            started.elapsed() < QUICKLY,
            "consumed only after {:?}",
            started.elapsed()
        );
        assert!(transport.is_connected().await);

        drop(consumer);
        transport.delete(&q).await.expect("delete");
        transport.close().await;
    }
}

#[cfg(feature = "sqs")]
mod sqs {
    use super::*;
    use aws_sdk_sqs::config::timeout::TimeoutConfig;
    use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region, retry::RetryConfig};
    use kessai_testkit::{require_sqs, sqs_endpoint, unique_name};
    use kessai_transport::{SqsConfig, SqsTransport};

    fn config(endpoint: String) -> SqsConfig {
        SqsConfig {
            endpoint_url: Some(endpoint),
            access_key_id: Some("test".into()),
            secret_access_key: Some("test".into()),
            connect_timeout: Duration::from_millis(500),
            attempt_timeout: Duration::from_millis(300),
            op_timeout: Duration::from_secs(1),
            ..SqsConfig::default()
        }
    }

    /// An endpoint that accepts TCP and never answers: the SDK's timeouts end the call.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_silent_endpoint_is_unavailable_within_the_bound() {
        let port = silent_server();
        let transport = SqsTransport::connect(config(format!("http://127.0.0.1:{port}")))
            .await
            .expect("client");
        let started = Instant::now();
        let published = guarded(transport.publish("nowhere", OutgoingMessage::new(b"x".to_vec()))).await;
        assert_unavailable_quickly(published, started.elapsed());
        let started = Instant::now();
        let declared = guarded(transport.declare("nowhere")).await;
        assert_unavailable_quickly(declared, started.elapsed());
    }

    /// A client built elsewhere with no timeouts at all: our own bound still ends the call.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn our_backstop_holds_for_a_client_without_timeouts() {
        let port = silent_server();
        let client_config = aws_sdk_sqs::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "test"))
            .endpoint_url(format!("http://127.0.0.1:{port}"))
            .timeout_config(TimeoutConfig::disabled())
            .retry_config(RetryConfig::disabled())
            .build();
        let config = SqsConfig {
            op_timeout: Duration::from_millis(500),
            ..config(String::new())
        };
        let transport = SqsTransport::with_client(aws_sdk_sqs::Client::from_conf(client_config), config);
        let started = Instant::now();
        let published = guarded(transport.publish("nowhere", OutgoingMessage::new(b"x".to_vec()))).await;
        let elapsed = started.elapsed();
        assert!(
            matches!(&published, Err(Error::Unavailable(e)) if e.contains("no answer within")),
            "{published:?}"
        );
        assert!(elapsed < QUICKLY, "gave up only after {elapsed:?}");
    }

    /// A long poll waits longer than `op_timeout` on purpose: it must not be cut short.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_long_poll_is_not_cut_short_by_the_call_bounds() {
        if !require_sqs() {
            return;
        }
        // Bounds shorter than the poll, yet roomy enough for a busy emulator.
        let bounds = SqsConfig {
            connect_timeout: Duration::from_secs(2),
            attempt_timeout: Duration::from_secs(2),
            op_timeout: Duration::from_millis(2_500),
            ..config(sqs_endpoint())
        };
        let transport = SqsTransport::connect(bounds).await.expect("client");
        let q = unique_name("kessai-timeouts-");
        transport.declare(&q).await.expect("declare");
        let options = ConsumeOptions {
            prefetch: 8,
            poll_wait: Duration::from_secs(4),
        };
        let mut consumer = transport.consume(&q, options).await.expect("consume");
        let started = Instant::now();
        let polled = guarded(consumer.next_batch(8)).await;
        let elapsed = started.elapsed();
        assert!(
            matches!(&polled, Ok(batch) if batch.is_empty()),
            "{:?}",
            polled.map(|b| b.len())
        );
        assert!(
            elapsed >= Duration::from_secs(3),
            "returned after {elapsed:?}: no long poll"
        );
        transport.delete(&q).await.expect("delete");
    }
}
