//! # kessai-testkit — what the crates' tests share
//!
//! Test support for every kessai crate (and the chaos harness's broker outages), kept
//! out of the crates it tests. It depends on no crate that uses it in its tests
//! (coordinator, participants), and on kessai-transport without its brokers.
//!
//! ## Layout
//! - [`services`]: where the real services are (RabbitMQ, the SQS emulator,
//!   PostgreSQL: [`amqp_url`], [`sqs_endpoint`], [`postgres_url`]), and the rule every
//!   test needing one follows ([`require_service`]): skip with a note when it is not
//!   reachable, fail instead with `KESSAI_REQUIRE_SERVICES=1`. Also the broker lock
//!   ([`broker_lock`]) outage tests take exclusively and others shared, free ports and
//!   unique names.
//! - [`rabbitmq_admin`]: broker outages on purpose ([`RabbitOutage`], through
//!   [`rabbitmqctl`] `stop_app` / `start_app`), for the chaos harness and outage tests.
//! - [`database`]: scratch databases — a migrated SQLite file ([`scratch_sqlite`]) or a
//!   PostgreSQL database of a test's own, dropped afterwards even when the test panics
//!   ([`ScratchPostgres`], [`on_scratch_postgres`]).
//! - [`queues`]: collecting deliveries from any transport's consumer ([`receive`],
//!   [`receive_exactly`], [`receive_one`], [`expect_nothing`]).

pub mod database;
pub mod queues;
pub mod rabbitmq_admin;
pub mod services;

pub use database::{ScratchPostgres, database_url, on_scratch_postgres, scratch_sqlite};
pub use queues::{expect_nothing, receive, receive_exactly, receive_one};
pub use rabbitmq_admin::{RabbitOutage, rabbitmq_for_outages, rabbitmqctl, require_rabbitmqctl};
pub use services::{
    BrokerLock, RABBITMQ, REQUIRE_SERVICES_ENV, amqp_url, broker_lock, free_port, host_port, postgres_url,
    rabbitmq_available, require_postgres, require_rabbitmq, require_service, require_sqs, services_required,
    sqs_endpoint, unique_name,
};
