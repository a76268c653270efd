//! Layered configuration: defaults, then a TOML file, then `KESSAI_` environment
//! variables with `__` between levels (`KESSAI_TRANSPORT__KIND=amqp`,
//! `KESSAI_STORE__POSTGRES_URL=...`). Credentials are `SecretString`s: they never
//! print, not even in `Debug`.

use crate::http::TokenSettings;
use anyhow::Context;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use kessai_coordinator::{AdmissionLimit, CoordinatorConfig, GenericSaga, Policy, SagaDefinitions};
use kessai_participants::Registry;
use kessai_participants::RuntimeConfig;
#[cfg(feature = "amqp")]
use kessai_transport::AmqpConfig;
#[cfg(feature = "sqs")]
use kessai_transport::SqsConfig;
use kessai_transport::{Topology, Transport};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Which transport carries the messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    Memory,
    Amqp,
    Sqs,
}

/// Where each service keeps its database.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    Sqlite,
    Postgres,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Prefix of every queue name, so several installs can share a broker.
    pub queue_prefix: String,
    pub transport: TransportSettings,
    pub store: StoreSettings,
    pub coordinator: CoordinatorSettings,
    pub participant: ParticipantSettings,
    pub http: HttpSettings,
    /// Who may call the HTTP API (`[[auth.tokens]]`).
    pub auth: AuthSettings,
    /// Message signing between the coordinator and the participants.
    pub security: SecuritySettings,
    /// Fault injection, for chaos runs only; off unless a probability is set.
    pub faults: FaultSettings,
    /// Where SREs find a saga's trace (exporting itself is set by `OTEL_*`).
    pub telemetry: TelemetrySettings,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            queue_prefix: "kessai".into(),
            transport: TransportSettings::default(),
            store: StoreSettings::default(),
            coordinator: CoordinatorSettings::default(),
            participant: ParticipantSettings::default(),
            http: HttpSettings::default(),
            auth: AuthSettings::default(),
            security: SecuritySettings::default(),
            faults: FaultSettings::default(),
            telemetry: TelemetrySettings::default(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransportSettings {
    pub kind: TransportKind,
    #[serde(serialize_with = "expose")]
    pub amqp_url: SecretString,
    pub amqp_prefetch: u16,
    /// `None` = AWS's own endpoint.
    pub sqs_endpoint_url: Option<String>,
    pub sqs_region: String,
    pub sqs_access_key_id: Option<String>,
    #[serde(serialize_with = "expose_opt")]
    pub sqs_secret_access_key: Option<SecretString>,
    pub sqs_visibility_timeout_s: u64,
    pub sqs_max_receive_count: u32,
}

impl Default for TransportSettings {
    fn default() -> Self {
        Self {
            kind: TransportKind::Memory,
            amqp_url: SecretString::from("amqp://guest:guest@127.0.0.1:5672/%2f"),
            amqp_prefetch: 256,
            sqs_endpoint_url: Some("http://127.0.0.1:4566".into()),
            sqs_region: "us-east-1".into(),
            sqs_access_key_id: Some("test".into()),
            sqs_secret_access_key: Some(SecretString::from("test")),
            sqs_visibility_timeout_s: 30,
            sqs_max_receive_count: 10,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    pub kind: StoreKind,
    /// SQLite: one file per service in this folder.
    pub data_dir: PathBuf,
    /// PostgreSQL server, without a database (`postgres://user:pw@host:5432`).
    #[serde(serialize_with = "expose")]
    pub postgres_url: SecretString,
    /// Service `S` uses database `<database_prefix>_<S>` (created if missing).
    pub database_prefix: String,
    /// Pool size per service (PostgreSQL).
    pub max_connections: u32,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            kind: StoreKind::Sqlite,
            data_dir: PathBuf::from("kessai-data"),
            postgres_url: SecretString::from("postgres://root@127.0.0.1:5432"),
            database_prefix: "kessai".into(),
            max_connections: 10,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CoordinatorSettings {
    pub try_timeout_ms: u64,
    pub try_resend_initial_ms: i64,
    pub try_resend_max_ms: i64,
    pub finish_resend_initial_ms: i64,
    pub finish_resend_max_ms: i64,
    pub stuck_after: u32,
    pub batch_size: usize,
    pub reply_workers: usize,
    pub tick_interval_ms: u64,
    /// Admission control: most unfinished sagas before `POST` answers 429. 0 (the
    /// default) sizes the bound from the measured completion rate: as many as finish
    /// in a quarter of the try timeout.
    pub max_unfinished: u64,
}

impl Default for CoordinatorSettings {
    fn default() -> Self {
        let c = CoordinatorConfig::default();
        Self {
            try_timeout_ms: c.try_timeout.as_millis() as u64,
            try_resend_initial_ms: c.policy.try_resend.initial_ms,
            try_resend_max_ms: c.policy.try_resend.max_ms,
            finish_resend_initial_ms: c.policy.finish_resend.initial_ms,
            finish_resend_max_ms: c.policy.finish_resend.max_ms,
            stuck_after: c.policy.stuck_after,
            batch_size: c.batch_size,
            reply_workers: c.reply_workers,
            tick_interval_ms: c.tick_interval.as_millis() as u64,
            max_unfinished: 0,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ParticipantSettings {
    pub batch_size: usize,
    pub workers: usize,
    /// Seed the demo data set (wallets, cards, settlement accounts) at start. Off by
    /// default: a real deployment's books are not ours to write. Seeding is idempotent.
    pub seed_demo: bool,
}

impl Default for ParticipantSettings {
    fn default() -> Self {
        let r = RuntimeConfig::default();
        Self {
            batch_size: r.batch_size,
            workers: r.workers,
            seed_demo: false,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Where `/healthz` (and on the coordinator the API) listens.
    pub listen: String,
    /// Largest request body; larger gets 413.
    pub max_body_bytes: usize,
    /// Requests served at once; beyond it 429 with `Retry-After`.
    pub max_in_flight: usize,
    /// A request still running after this gets 503 (longer than the longest `?wait=`).
    pub request_timeout_ms: u64,
}

impl Default for HttpSettings {
    fn default() -> Self {
        let limits = crate::http::Limits::default();
        Self {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: limits.max_body_bytes,
            max_in_flight: limits.max_in_flight,
            request_timeout_ms: limits.request_timeout.as_millis() as u64,
        }
    }
}

/// `[auth]`: the API's bearer tokens.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// `/metrics` without a token (true) or behind the `read` scope (false).
    pub metrics_public: bool,
    /// `[[auth.tokens]]`: name, scopes, and `token` or `sha256`. None: every API
    /// request is refused (401).
    pub tokens: Vec<TokenSettings>,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            metrics_public: true,
            tokens: Vec::new(),
        }
    }
}

/// `[telemetry]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySettings {
    /// A link to a saga's trace in the trace viewer, `{trace_id}` standing for its
    /// trace id, e.g. Jaeger's `http://localhost:16686/trace/{trace_id}`. Shown by the
    /// API (`trace_url`), `kessai saga show` and the web UI. Unset: no link.
    pub trace_url: Option<String>,
}

/// `[security]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecuritySettings {
    /// A key shared by the coordinator and the participants: every message is signed
    /// (HMAC-SHA256) and a message without a valid signature is dead-lettered before
    /// it is decoded. At least 32 characters. Unset: messages are not signed.
    #[serde(serialize_with = "expose_opt")]
    pub message_key: Option<SecretString>,
}

/// Faults a service injects into what it publishes (see `kessai_transport::faults`).
/// All zero — the default — means no wrapper at all. Set by `kessai chaos` for the
/// processes it starts; a service with faults on logs a warning at start and serves
/// `GET|PUT /v1/faults` so the harness can read the counters and switch them off.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultSettings {
    pub drop: f64,
    pub duplicate: f64,
    pub delay: f64,
    /// Longest delay of a delayed message (default 200 ms).
    pub delay_max_ms: Option<u64>,
    pub reorder: f64,
    pub seed: u64,
}

impl FaultSettings {
    /// The transport wrapper's configuration, or `None` when every probability is zero.
    pub fn fault_config(&self) -> anyhow::Result<Option<kessai_transport::FaultConfig>> {
        let c = kessai_transport::FaultConfig {
            drop: self.drop,
            duplicate: self.duplicate,
            delay: self.delay,
            delay_max: self.delay_max_ms.map_or(
                kessai_transport::FaultConfig::default().delay_max,
                Duration::from_millis,
            ),
            reorder: self.reorder,
            seed: self.seed,
        };
        c.validate().context("faults")?;
        anyhow::ensure!(
            self.delay_max_ms.is_none_or(|ms| (1..=60_000).contains(&ms)),
            "faults.delay_max_ms must be between 1 and 60000"
        );
        Ok((!c.is_noop()).then_some(c))
    }
}

// Serialisation exists only to seed figment with the defaults; `Debug` stays redacted.
fn expose<S: serde::Serializer>(s: &SecretString, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(s.expose_secret())
}

fn expose_opt<S: serde::Serializer>(s: &Option<SecretString>, ser: S) -> Result<S::Ok, S::Error> {
    match s {
        Some(s) => ser.serialize_some(s.expose_secret()),
        None => ser.serialize_none(),
    }
}

impl Config {
    /// Defaults ← `file` (if given; it must exist) ← `KESSAI_*` environment.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(f) = file {
            anyhow::ensure!(f.is_file(), "config file {} does not exist", f.display());
            figment = figment.merge(Toml::file(f));
        }
        // `KESSAI_REQUIRE_SERVICES` and `KESSAI_TEST_*` belong to the test suite. The key
        // keeps the variable's case here (`REQUIRE_SERVICES`): compare without it.
        let env = Env::prefixed("KESSAI_").split("__").filter(|k| {
            let k = k.as_str().to_ascii_lowercase();
            !k.starts_with("require_services") && !k.starts_with("test_")
        });
        let config: Config = figment.merge(env).extract().context("invalid configuration")?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.queue_prefix.is_empty()
                && self
                    .queue_prefix
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "queue_prefix must be letters, digits, - or _ (SQS queue name rules), got {:?}",
            self.queue_prefix
        );
        anyhow::ensure!(
            self.coordinator.try_timeout_ms > 0,
            "coordinator.try_timeout_ms must be positive"
        );
        anyhow::ensure!(
            self.coordinator.batch_size > 0,
            "coordinator.batch_size must be positive"
        );
        anyhow::ensure!(
            self.participant.batch_size > 0,
            "participant.batch_size must be positive"
        );
        anyhow::ensure!(
            self.coordinator.stuck_after > 0,
            "coordinator.stuck_after must be positive"
        );
        for (name, v) in [
            ("try_resend_initial_ms", self.coordinator.try_resend_initial_ms),
            ("try_resend_max_ms", self.coordinator.try_resend_max_ms),
            ("finish_resend_initial_ms", self.coordinator.finish_resend_initial_ms),
            ("finish_resend_max_ms", self.coordinator.finish_resend_max_ms),
        ] {
            anyhow::ensure!(v > 0, "coordinator.{name} must be positive");
        }
        anyhow::ensure!(
            self.http.max_body_bytes >= 1024,
            "http.max_body_bytes must be at least 1024"
        );
        anyhow::ensure!(self.http.max_in_flight > 0, "http.max_in_flight must be positive");
        anyhow::ensure!(
            self.http.request_timeout_ms > crate::http::MAX_WAIT.as_millis() as u64,
            "http.request_timeout_ms must be longer than the longest ?wait= ({} ms)",
            crate::http::MAX_WAIT.as_millis()
        );
        self.api_auth().map_err(|e| anyhow::anyhow!(e))?;
        if let Some(key) = &self.security.message_key {
            anyhow::ensure!(
                key.expose_secret().chars().count() >= 32,
                "security.message_key must be at least 32 characters"
            );
        }
        self.faults.fault_config()?;
        Ok(())
    }

    /// The API's tokens, checked.
    pub fn api_auth(&self) -> Result<crate::http::Auth, String> {
        crate::http::Auth::from_settings(&self.auth.tokens)
    }

    /// The API's configuration: tokens, limits, and the participants generic sagas
    /// may name (`participants`).
    pub fn api_config(&self, participants: &Registry) -> anyhow::Result<crate::http::ApiConfig> {
        Ok(crate::http::ApiConfig {
            auth: self.api_auth().map_err(|e| anyhow::anyhow!(e))?,
            limits: crate::http::Limits {
                max_body_bytes: self.http.max_body_bytes,
                max_in_flight: self.http.max_in_flight,
                request_timeout: Duration::from_millis(self.http.request_timeout_ms),
            },
            participants: participants.names().into_iter().map(str::to_owned).collect(),
            trace_url: self.telemetry.trace_url.clone(),
        })
    }

    pub fn topology(&self) -> Topology {
        Topology::new(self.queue_prefix.clone())
    }

    pub fn coordinator_config(&self) -> CoordinatorConfig {
        let c = &self.coordinator;
        CoordinatorConfig {
            policy: Policy {
                try_resend: kessai_coordinator::machine::Backoff {
                    initial_ms: c.try_resend_initial_ms,
                    max_ms: c.try_resend_max_ms,
                },
                finish_resend: kessai_coordinator::machine::Backoff {
                    initial_ms: c.finish_resend_initial_ms,
                    max_ms: c.finish_resend_max_ms,
                },
                stuck_after: c.stuck_after,
            },
            try_timeout: Duration::from_millis(c.try_timeout_ms),
            topology: self.topology(),
            batch_size: c.batch_size,
            tick_interval: Duration::from_millis(c.tick_interval_ms.max(1)),
            reply_workers: c.reply_workers.max(1),
            admission: match c.max_unfinished {
                0 => AdmissionLimit::adaptive_for(
                    Duration::from_millis(c.try_timeout_ms),
                    Duration::from_millis(c.try_resend_initial_ms.max(1) as u64),
                ),
                n => AdmissionLimit::Fixed(n),
            },
            // Generic sagas may name only registered participants, with payloads
            // they accept: refused at submission, not dead-lettered later.
            definitions: SagaDefinitions::default().with(GenericSaga::checked(Registry::reference().branch_check())),
            message_key: self.message_key(),
            ..CoordinatorConfig::default()
        }
    }

    /// The key messages are signed with, if `[security] message_key` is set (its
    /// length is checked by [`Config::validate`]).
    pub fn message_key(&self) -> Option<kessai_messages::MessageKey> {
        self.security
            .message_key
            .as_ref()
            .and_then(|k| kessai_messages::MessageKey::new(k.expose_secret().as_bytes().to_vec()).ok())
    }

    pub fn participant_config(&self) -> RuntimeConfig {
        RuntimeConfig {
            topology: self.topology(),
            batch_size: self.participant.batch_size,
            workers: self.participant.workers.max(1),
            message_key: self.message_key(),
            ..RuntimeConfig::default()
        }
    }

    /// The PostgreSQL database of one service: `<database_prefix>_<service>`.
    pub fn database_name(&self, service: &str) -> String {
        kessai_participants::database_name(&self.store.database_prefix, service)
    }

    /// The database URL of one service (`coordinator`, `balance`, `card-issuer`,
    /// `bank`), creating its PostgreSQL database if missing.
    pub async fn database_url(&self, service: &str) -> anyhow::Result<String> {
        match self.store.kind {
            StoreKind::Sqlite => {
                std::fs::create_dir_all(&self.store.data_dir)
                    .with_context(|| format!("creating {}", self.store.data_dir.display()))?;
                Ok(kessai_migrations::sqlite_url(
                    &self.store.data_dir.join(format!("{service}.db")),
                ))
            }
            StoreKind::Postgres => {
                let server = self.store.postgres_url.expose_secret();
                let database = self.database_name(service);
                kessai_migrations::ensure_postgres_database(server, &database)
                    .await
                    .with_context(|| format!("creating database {database}"))?;
                Ok(kessai_migrations::postgres_database_url(server, &database))
            }
        }
    }

    /// Connects the configured transport (retrying while the broker is not up yet is
    /// the caller's choice).
    pub async fn transport(&self) -> anyhow::Result<Arc<dyn Transport>> {
        let t = &self.transport;
        Ok(match t.kind {
            TransportKind::Memory => Arc::new(kessai_transport::MemoryTransport::new()),
            #[cfg(feature = "amqp")]
            TransportKind::Amqp => {
                let mut c = AmqpConfig::new(t.amqp_url.expose_secret());
                c.prefetch = t.amqp_prefetch;
                Arc::new(
                    kessai_transport::AmqpTransport::connect(c)
                        .await
                        .context("connecting to RabbitMQ")?,
                )
            }
            #[cfg(feature = "sqs")]
            TransportKind::Sqs => {
                let c = SqsConfig {
                    endpoint_url: t.sqs_endpoint_url.clone(),
                    region: t.sqs_region.clone(),
                    access_key_id: t.sqs_access_key_id.clone(),
                    secret_access_key: t.sqs_secret_access_key.as_ref().map(|s| s.expose_secret().to_owned()),
                    visibility_timeout: Duration::from_secs(t.sqs_visibility_timeout_s.max(1)),
                    max_receive_count: t.sqs_max_receive_count,
                    ..SqsConfig::default()
                };
                Arc::new(
                    kessai_transport::SqsTransport::connect(c)
                        .await
                        .context("connecting to SQS")?,
                )
            }
            #[allow(unreachable_patterns)]
            kind => anyhow::bail!(
                "transport.kind = {kind:?}: this kessai was built without that broker's cargo feature \
                 (build with --features amqp / sqs)"
            ),
        })
    }
}

#[cfg(test)]
// figment::Jail fixes the closure's error type (figment::Error, over 200 bytes).
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn layers_defaults_file_env() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "kessai.toml",
                "queue_prefix = \"fromfile\"\n[transport]\nkind = \"amqp\"\n[coordinator]\ntry_timeout_ms = 5000\n",
            )?;
            jail.set_env("KESSAI_COORDINATOR__TRY_TIMEOUT_MS", "7000");
            jail.set_env("KESSAI_REQUIRE_SERVICES", "1");
            let c = Config::load(Some(Path::new("kessai.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.queue_prefix, "fromfile");
            assert_eq!(c.transport.kind, TransportKind::Amqp);
            assert_eq!(c.coordinator.try_timeout_ms, 7000);
            assert_eq!(c.participant.batch_size, RuntimeConfig::default().batch_size);
            assert_eq!(c.faults.fault_config().unwrap(), None, "no faults unless asked");
            jail.set_env("KESSAI_FAULTS__DROP", "0.25");
            jail.set_env("KESSAI_FAULTS__SEED", "9");
            let f = Config::load(None)
                .map_err(|e| e.to_string())?
                .faults
                .fault_config()
                .unwrap();
            let f = f.expect("faults configured");
            assert_eq!((f.drop, f.seed, f.duplicate), (0.25, 9, 0.0));
            Ok(())
        });
    }

    #[test]
    fn bad_config_is_a_clear_error() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("bad.toml", "[transport]\nkind = \"carrier-pigeon\"\n")?;
            let e = Config::load(Some(Path::new("bad.toml"))).unwrap_err();
            assert!(format!("{e:#}").contains("carrier-pigeon"), "{e:#}");
            jail.create_file("typo.toml", "[coordinator]\ntry_timeout = 1\n")?;
            let e = Config::load(Some(Path::new("typo.toml"))).unwrap_err();
            assert!(format!("{e:#}").contains("try_timeout"), "{e:#}");
            jail.create_file("faults.toml", "[faults]\ndrop = 5\n")?;
            let e = Config::load(Some(Path::new("faults.toml"))).unwrap_err();
            assert!(format!("{e:#}").contains("drop"), "{e:#}");
            jail.set_env("KESSAI_QUEUE_PREFIX", "has space");
            let e = Config::load(None).unwrap_err();
            assert!(format!("{e:#}").contains("queue_prefix"), "{e:#}");
            assert!(Config::load(Some(Path::new("missing.toml"))).is_err());
            Ok(())
        });
    }

    #[test]
    fn tokens_come_from_the_file_or_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "kessai.toml",
                "[[auth.tokens]]\nname = \"checkout\"\nscopes = [\"submit\"]\ntoken = \"checkout-secret-0123456789\"\n",
            )?;
            let c = Config::load(Some(Path::new("kessai.toml"))).map_err(|e| e.to_string())?;
            let auth = c.api_auth().unwrap();
            assert_eq!(
                auth.authenticate("checkout-secret-0123456789").map(|p| &*p.name),
                Some("checkout")
            );
            assert!(!format!("{c:?}").contains("checkout-secret"), "tokens never print");
            jail.set_env(
                "KESSAI_AUTH__TOKENS",
                r#"[{name="ops",scopes=["read","admin"],token="ops-secret-0123456789"}]"#,
            );
            let c = Config::load(None).map_err(|e| e.to_string())?;
            let ops = c.api_auth().unwrap();
            let who = ops
                .authenticate("ops-secret-0123456789")
                .expect("token from the environment");
            assert!(who.has(crate::http::Scope::Admin) && !who.has(crate::http::Scope::Submit));
            jail.set_env(
                "KESSAI_AUTH__TOKENS",
                r#"[{name="ops",scopes=["root"],token="ops-secret-0123456789"}]"#,
            );
            let e = Config::load(None).unwrap_err();
            assert!(format!("{e:#}").contains("root"), "{e:#}");
            jail.set_env("KESSAI_AUTH__TOKENS", r#"[{name="ops",scopes=["read"],token="short"}]"#);
            let e = Config::load(None).unwrap_err();
            assert!(format!("{e:#}").contains("at least 16"), "{e:#}");
            Ok(())
        });
    }

    #[test]
    fn secrets_do_not_print() {
        let mut c = Config::default();
        c.store.postgres_url = SecretString::from("postgres://u:hunter2@db:5432");
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
