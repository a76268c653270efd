//! The embedded stack: the coordinator and every participant of a [`Registry`] in one
//! process.
//!
//! Each service has its own database (one SQLite file each under the data folder, or
//! one PostgreSQL database each) and they talk only through the transport, exactly as
//! separate processes would. `kill_*` aborts a service's tasks with no shutdown step
//! and drops its connections — the in-process `kill -9` — and `restart_*` starts it
//! again on the same database.

use anyhow::Context;
use kessai_coordinator::{Clock, Coordinator, CoordinatorConfig, CoordinatorTasks};
use kessai_migrations::Service;
use kessai_participants::{Audit, RegisteredParticipant, Registry, RuntimeConfig};
use kessai_transport::{Tasks, Topology, Transport};
use sea_orm::DatabaseConnection;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// Where each service's database is.
#[derive(Clone, Debug)]
pub struct DatabaseUrls {
    pub coordinator: String,
    pub participants: BTreeMap<&'static str, String>,
}

impl DatabaseUrls {
    /// One SQLite file per service under `dir`.
    pub fn sqlite(dir: &Path, registry: &Registry) -> Self {
        Self::each(registry, |name| {
            kessai_migrations::sqlite_url(&dir.join(format!("{name}.db")))
        })
    }

    /// The coordinator's and every registered participant's URL, by service name.
    pub fn each(registry: &Registry, url: impl Fn(&str) -> String) -> Self {
        DatabaseUrls {
            coordinator: url("coordinator"),
            participants: registry.iter().map(|p| (p.name(), url(p.name()))).collect(),
        }
    }

    fn participant(&self, name: &str) -> anyhow::Result<&str> {
        self.participants
            .get(name)
            .map(String::as_str)
            .with_context(|| format!("no database URL for participant {name:?}"))
    }
}

/// Settings of an embedded stack.
#[derive(Clone)]
pub struct StackConfig {
    /// The participants to run, each on its own database.
    pub registry: Registry,
    pub urls: DatabaseUrls,
    pub coordinator: CoordinatorConfig,
    pub participant: RuntimeConfig,
    pub clock: Arc<dyn Clock>,
    /// Pool size for PostgreSQL (SQLite always uses one connection).
    pub max_connections: u32,
    /// When set, every service's database statements are counted here (`kessai bench`).
    pub statements: Option<Arc<StatementCounts>>,
}

impl StackConfig {
    /// `registry`'s services on `urls`, with production coordinator and runtime
    /// settings, the system clock, one pooled connection each and no statement counts.
    pub fn new(registry: Registry, urls: DatabaseUrls) -> Self {
        StackConfig {
            registry,
            urls,
            coordinator: CoordinatorConfig::default(),
            participant: RuntimeConfig::default(),
            clock: Arc::new(kessai_coordinator::SystemClock),
            max_connections: 1,
            statements: None,
        }
    }

    /// [`StackConfig::new`] for the reference participants, one SQLite file per
    /// service under `dir`.
    pub fn sqlite(dir: &Path) -> Self {
        let registry = Registry::reference();
        let urls = DatabaseUrls::sqlite(dir, &registry);
        Self::new(registry, urls)
    }

    /// Every service on `topology`'s queue names.
    pub fn with_topology(mut self, topology: &Topology) -> Self {
        self.coordinator.topology = topology.clone();
        self.participant.topology = topology.clone();
        self
    }
}

/// Database statements each service ran, counted through sea-orm's metric hook:
/// queries and writes, not `BEGIN` / `COMMIT` / `SAVEPOINT`.
#[derive(Debug, Default)]
pub struct StatementCounts {
    counts: std::sync::Mutex<BTreeMap<&'static str, Arc<std::sync::atomic::AtomicU64>>>,
}

impl StatementCounts {
    fn attach(&self, service: &'static str, db: &mut DatabaseConnection) {
        let counter = self
            .counts
            .lock()
            .expect("statement counts lock")
            .entry(service)
            .or_default()
            .clone();
        db.set_metric_callback(move |_| {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        });
    }

    /// Statements so far, by service.
    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        self.counts
            .lock()
            .expect("statement counts lock")
            .iter()
            .map(|(k, v)| (*k, v.load(std::sync::atomic::Ordering::Relaxed)))
            .collect()
    }
}

struct ParticipantService {
    db: DatabaseConnection,
    tasks: Tasks<kessai_participants::Error>,
}

pub struct EmbeddedStack {
    config: StackConfig,
    transport: Arc<dyn Transport>,
    coordinator: Coordinator,
    coordinator_tasks: Option<CoordinatorTasks>,
    participants: BTreeMap<&'static str, ParticipantService>,
}

impl EmbeddedStack {
    /// Migrates every database, seeds the demo data where it is missing, starts all.
    pub async fn start(config: StackConfig, transport: Arc<dyn Transport>) -> anyhow::Result<Self> {
        let mut participants = BTreeMap::new();
        for p in config.registry.iter() {
            let db = open_participant(&config, p).await?;
            p.seed_demo(&db)
                .await
                .with_context(|| format!("seeding {}", p.name()))?;
            participants.insert(p.name(), spawn_participant(&config, &transport, p, db));
        }
        let (coordinator, tasks) = start_coordinator(&config, &transport).await?;
        Ok(EmbeddedStack {
            config,
            transport,
            coordinator,
            coordinator_tasks: Some(tasks),
            participants,
        })
    }

    pub fn coordinator(&self) -> &Coordinator {
        &self.coordinator
    }

    pub fn transport(&self) -> &Arc<dyn Transport> {
        &self.transport
    }

    pub fn config(&self) -> &StackConfig {
        &self.config
    }

    /// Aborts the coordinator's tasks and drops its connections: no flush, no ack.
    pub async fn kill_coordinator(&mut self) {
        if let Some(t) = self.coordinator_tasks.take() {
            t.kill().await;
        }
        let _ = self.coordinator.db().clone().close().await;
    }

    /// Starts a fresh coordinator on the same database; it resumes unfinished sagas.
    pub async fn restart_coordinator(&mut self) -> anyhow::Result<()> {
        self.kill_coordinator().await;
        let (coordinator, tasks) = start_coordinator(&self.config, &self.transport).await?;
        self.coordinator = coordinator;
        self.coordinator_tasks = Some(tasks);
        Ok(())
    }

    /// Aborts a participant's tasks mid-batch and drops its connection.
    pub async fn kill_participant(&mut self, name: &str) {
        if let Some(s) = self.participants.remove(name) {
            s.tasks.kill().await;
            let _ = s.db.close().await;
        }
    }

    pub async fn restart_participant(&mut self, name: &str) -> anyhow::Result<()> {
        self.kill_participant(name).await;
        let p = self.config.registry.require(name)?.clone();
        let db = open_participant(&self.config, &p).await?;
        let service = spawn_participant(&self.config, &self.transport, &p, db);
        self.participants.insert(p.name(), service);
        Ok(())
    }

    /// Each participant's books, read through its own code and database.
    pub async fn audits(&self) -> anyhow::Result<Vec<Audit>> {
        let mut out = Vec::new();
        for p in self.config.registry.iter() {
            let audit = match self.participants.get(p.name()) {
                Some(s) => p.audit(&s.db).await?,
                None => {
                    let db = open_participant(&self.config, p).await?;
                    let a = p.audit(&db).await?;
                    let _ = db.close().await;
                    a
                }
            };
            out.push(audit);
        }
        Ok(out)
    }

    /// Commands and replies queued or in hand, if the transport can tell.
    pub async fn queued_messages(&self) -> Option<u64> {
        let mut total = 0;
        for q in service_queues(&self.config.coordinator.topology, &self.config.registry) {
            total += self.transport.pending(&q).await.ok()??;
        }
        Some(total)
    }

    /// Every running service's database, by service name.
    pub fn databases(&self) -> Vec<(&'static str, &DatabaseConnection)> {
        std::iter::once(("coordinator", self.coordinator.db()))
            .chain(self.participants.iter().map(|(name, s)| (*name, &s.db)))
            .collect()
    }

    /// A participant's database, while it runs.
    pub fn participant_db(&self, name: &str) -> Option<&DatabaseConnection> {
        self.participants.get(name).map(|s| &s.db)
    }

    /// Graceful stop: participants finish their batch, the coordinator flushes its
    /// outbox. Returns each task's end for the caller to report.
    pub async fn shutdown(mut self) -> Vec<(String, Result<(), String>)> {
        let mut ended = Vec::new();
        if let Some(t) = self.coordinator_tasks.take() {
            for (name, r) in t.shutdown().await {
                ended.push((format!("coordinator/{name}"), r.map_err(|e| e.to_string())));
            }
        }
        for (name, s) in std::mem::take(&mut self.participants) {
            for (task, r) in s.tasks.shutdown().await {
                ended.push((format!("participant/{name}/{task}"), r.map_err(|e| e.to_string())));
            }
            let _ = s.db.close().await;
        }
        let _ = self.coordinator.db().clone().close().await;
        ended
    }
}

async fn open_participant(
    config: &StackConfig,
    p: &Arc<dyn RegisteredParticipant>,
) -> anyhow::Result<DatabaseConnection> {
    let mut db = p
        .open(config.urls.participant(p.name())?, config.max_connections)
        .await
        .with_context(|| format!("opening the {} database", p.name()))?;
    if let Some(counts) = &config.statements {
        counts.attach(p.name(), &mut db);
    }
    Ok(db)
}

fn spawn_participant(
    config: &StackConfig,
    transport: &Arc<dyn Transport>,
    p: &Arc<dyn RegisteredParticipant>,
    db: DatabaseConnection,
) -> ParticipantService {
    let tasks = p.start(db.clone(), transport.clone(), config.participant.clone());
    ParticipantService { db, tasks }
}

async fn start_coordinator(
    config: &StackConfig,
    transport: &Arc<dyn Transport>,
) -> anyhow::Result<(Coordinator, CoordinatorTasks)> {
    let mut db = kessai_migrations::open(&config.urls.coordinator, Service::Coordinator, config.max_connections)
        .await
        .context("opening the coordinator database")?;
    if let Some(counts) = &config.statements {
        counts.attach("coordinator", &mut db);
    }
    Ok(Coordinator::start(db, transport.clone(), config.coordinator.clone(), config.clock.clone()).await?)
}

/// Opens (and migrates) one service's database by service name: the coordinator's,
/// or a registered participant's.
pub async fn open_service_db(
    registry: &Registry,
    service: &str,
    url: &str,
    max_connections: u32,
) -> anyhow::Result<DatabaseConnection> {
    let db = if service == "coordinator" {
        kessai_migrations::open_migrated::<kessai_migrations::CoordinatorMigrator>(url, max_connections).await
    } else {
        registry.require(service)?.open(url, max_connections).await
    };
    db.with_context(|| format!("opening the {service} database"))
}

/// The coordinator and every registered participant: the services of a deployment.
pub fn service_names(registry: &Registry) -> Vec<&'static str> {
    std::iter::once("coordinator").chain(registry.names()).collect()
}

/// A deployment's queues: each registered participant's commands and the
/// coordinator's replies (each with its dead-letter queue, not listed).
pub fn service_queues(topology: &Topology, registry: &Registry) -> Vec<String> {
    registry
        .iter()
        .map(|p| topology.command_queue(p.name()))
        .chain([topology.reply_queue()])
        .collect()
}
