//! The embedded stack: coordinator + balance + card-issuer + bank in one process.
//!
//! Each service has its own database (one SQLite file each under the data folder, or
//! one PostgreSQL database each) and they talk only through the transport, exactly as
//! separate processes would. `kill_*` aborts a service's tasks with no shutdown step
//! and drops its connections — the in-process `kill -9` — and `restart_*` starts it
//! again on the same database.

use anyhow::Context;
use kessai_coordinator::{Clock, Coordinator, CoordinatorConfig, CoordinatorTasks};
use kessai_migrations::Service;
use kessai_participants::{Audit, ReferenceParticipant, RuntimeConfig};
use kessai_transport::{Topology, Transport};
use sea_orm::DatabaseConnection;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Where each service's database is.
#[derive(Clone, Debug)]
pub struct DatabaseUrls {
    pub coordinator: String,
    pub participants: BTreeMap<&'static str, String>,
}

impl DatabaseUrls {
    /// One SQLite file per service under `dir`.
    pub fn sqlite(dir: &Path) -> Self {
        let url = |name: &str| kessai_migrations::sqlite_url(&dir.join(format!("{name}.db")));
        DatabaseUrls {
            coordinator: url("coordinator"),
            participants: ReferenceParticipant::ALL
                .iter()
                .map(|p| (p.name(), url(p.name())))
                .collect(),
        }
    }

    fn participant(&self, p: ReferenceParticipant) -> &str {
        &self.participants[p.name()]
    }
}

/// Settings of an embedded stack.
#[derive(Clone)]
pub struct StackConfig {
    pub urls: DatabaseUrls,
    pub coordinator: CoordinatorConfig,
    pub participant: RuntimeConfig,
    pub clock: Arc<dyn Clock>,
    /// Pool size for PostgreSQL (SQLite always uses one connection).
    pub max_connections: u32,
    /// When set, every service's database statements are counted here (`kessai bench`).
    pub statements: Option<Arc<StatementCounts>>,
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
    cancel: CancellationToken,
    task: JoinHandle<Result<(), kessai_participants::Error>>,
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
        for p in ReferenceParticipant::ALL {
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
            t.kill();
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
    pub async fn kill_participant(&mut self, p: ReferenceParticipant) {
        if let Some(s) = self.participants.remove(p.name()) {
            s.task.abort();
            let _ = s.task.await;
            let _ = s.db.close().await;
        }
    }

    pub async fn restart_participant(&mut self, p: ReferenceParticipant) -> anyhow::Result<()> {
        self.kill_participant(p).await;
        let db = open_participant(&self.config, p).await?;
        let service = spawn_participant(&self.config, &self.transport, p, db);
        self.participants.insert(p.name(), service);
        Ok(())
    }

    /// Each participant's books, read through its own code and database.
    pub async fn audits(&self) -> anyhow::Result<Vec<Audit>> {
        let mut out = Vec::new();
        for p in ReferenceParticipant::ALL {
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
        for q in service_queues(&self.config.coordinator.topology) {
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
    pub fn participant_db(&self, p: ReferenceParticipant) -> Option<&DatabaseConnection> {
        self.participants.get(p.name()).map(|s| &s.db)
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
            s.cancel.cancel();
            let r = match s.task.await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(e) => Err(format!("task panicked: {e}")),
            };
            ended.push((format!("participant/{name}"), r));
            let _ = s.db.close().await;
        }
        let _ = self.coordinator.db().clone().close().await;
        ended
    }
}

impl Drop for EmbeddedStack {
    fn drop(&mut self) {
        for s in self.participants.values() {
            s.task.abort();
        }
    }
}

async fn open_participant(config: &StackConfig, p: ReferenceParticipant) -> anyhow::Result<DatabaseConnection> {
    let service = match p {
        ReferenceParticipant::Balance => Service::Balance,
        ReferenceParticipant::CardIssuer => Service::CardIssuer,
        ReferenceParticipant::Bank => Service::Bank,
    };
    let mut db = kessai_migrations::open(config.urls.participant(p), service, config.max_connections)
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
    p: ReferenceParticipant,
    db: DatabaseConnection,
) -> ParticipantService {
    let cancel = CancellationToken::new();
    let task = tokio::spawn(p.run(
        db.clone(),
        transport.clone(),
        config.participant.clone(),
        cancel.clone(),
    ));
    ParticipantService { db, cancel, task }
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

/// The reference deployment's queues: each participant's commands and the
/// coordinator's replies (each with its dead-letter queue, not listed).
pub fn service_queues(topology: &Topology) -> Vec<String> {
    ReferenceParticipant::ALL
        .iter()
        .map(|p| topology.command_queue(p.name()))
        .chain([topology.reply_queue()])
        .collect()
}
