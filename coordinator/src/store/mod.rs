//! The coordinator's persistence: sagas, branches, the timeline and the outbox, via
//! sea-orm on SQLite or PostgreSQL.
//!
//! A transition is saved with its timeline entries and its outbox rows in the
//! caller's transaction, guarded by the saga's version: [`save`] changes nothing and
//! returns `false` when another writer got there first.

pub mod entities;

use crate::Error;
use crate::machine::{Action, Branch, BranchState, Saga, SagaState};
use entities::{branch, outbox, saga, saga_event};
use kessai_messages::{BranchId, Command, Envelope, Operation, SagaId};
use kessai_transport::Topology;
use sea_orm::sea_query::{Expr, LockBehavior, LockType};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, NotSet, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
    Set,
};
use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;

/// A saga as loaded, with the version a save must match.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub saga: Saga,
    pub version: i64,
}

/// What a new saga is made of.
#[derive(Clone, Debug)]
pub struct NewSaga {
    /// `payment` or `generic`.
    pub kind: String,
    /// A client's idempotency key: submitting it again returns the first saga.
    pub idempotency_key: Option<String>,
    /// The client's request as JSON, kept for SREs.
    pub request: String,
    pub branches: Vec<(String, serde_json::Value)>,
    pub try_timeout_ms: i64,
}

/// Where commands go and replies come back.
#[derive(Clone, Debug)]
pub struct Routing {
    pub topology: Topology,
}

impl Routing {
    fn outbox_rows(&self, saga: &Saga, actions: &[Action], now: i64) -> Vec<outbox::ActiveModel> {
        let reply_to = self.topology.reply_queue();
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send {
                    branch,
                    operation,
                    attempt,
                } => {
                    let b = &saga.branches[branch.0 as usize];
                    let deadline = (*operation == Operation::Try).then_some(saga.try_deadline);
                    let env = Envelope::command(
                        saga.id,
                        *branch,
                        *operation,
                        *attempt,
                        deadline,
                        Command {
                            participant: b.participant.clone(),
                            reply_to: reply_to.clone(),
                            payload: b.payload.clone(),
                        },
                    );
                    Some(outbox::ActiveModel {
                        id: NotSet,
                        saga_id: Set(saga.id.to_string()),
                        queue: Set(self.topology.command_queue(&b.participant)),
                        payload: Set(String::from_utf8(env.encode()).expect("JSON is UTF-8")),
                        headers: Set(serde_json::to_string(&env.headers).expect("serialises")),
                        created_at_ms: Set(now),
                    })
                }
                Action::Log(_) => None,
            })
            .collect()
    }
}

fn event_rows(saga: SagaId, actions: &[Action], now: i64) -> Vec<saga_event::ActiveModel> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Log(note) => Some(saga_event::ActiveModel {
                id: NotSet,
                saga_id: Set(saga.to_string()),
                at_ms: Set(now),
                kind: Set(note.kind.to_owned()),
                branch_id: Set(note.branch.map(|b| b.0 as i32)),
                detail: Set(note.detail.clone()),
            }),
            Action::Send { .. } => None,
        })
        .collect()
}

fn encode_branch(b: &BranchState) -> (String, i32, Option<i64>) {
    let (attempt, resend_at) = match b.waiting() {
        Some((_, attempt, resend_at)) => (attempt as i32, Some(resend_at)),
        None => (0, None),
    };
    (b.name().to_owned(), attempt, resend_at)
}

fn decode_branch(row: &branch::Model) -> Result<Branch, Error> {
    let attempt = row.attempt.max(0) as u32;
    let resend_at = row.resend_at_ms.unwrap_or(0);
    let state = match row.state.as_str() {
        "trying" => BranchState::Trying { attempt, resend_at },
        "prepared" => BranchState::Prepared,
        "rejected" => BranchState::Rejected {
            reason: row.last_error.clone().unwrap_or_default(),
        },
        "confirming" => BranchState::Confirming { attempt, resend_at },
        "confirmed" => BranchState::Confirmed,
        "cancelling" => BranchState::Cancelling { attempt, resend_at },
        "cancelled" => BranchState::Cancelled,
        other => return Err(Error::Corrupt(format!("branch state {other:?}"))),
    };
    Ok(Branch {
        id: BranchId(row.branch_id as u32),
        participant: row.participant.clone(),
        payload: serde_json::from_str(&row.payload).map_err(|e| Error::Corrupt(format!("branch payload: {e}")))?,
        state,
        last_error: row.last_error.clone(),
    })
}

fn decode_saga(row: &saga::Model, branches: Vec<Branch>) -> Result<Loaded, Error> {
    Ok(Loaded {
        saga: Saga {
            id: SagaId::from_str(&row.id).map_err(|e| Error::Corrupt(format!("saga id: {e}")))?,
            state: SagaState::parse(&row.state).ok_or_else(|| Error::Corrupt(format!("saga state {:?}", row.state)))?,
            branches,
            try_deadline: row.try_deadline_ms,
            stuck: row.stuck,
            reason: row.reason.clone(),
        },
        version: row.version,
    })
}

/// Inserts a new saga with its branches, timeline and first commands.
pub async fn insert<C: ConnectionTrait>(
    db: &C,
    routing: &Routing,
    new: &NewSaga,
    saga: &Saga,
    actions: &[Action],
    now: i64,
) -> Result<(), Error> {
    saga::Entity::insert(saga::ActiveModel {
        id: Set(saga.id.to_string()),
        kind: Set(new.kind.clone()),
        idempotency_key: Set(new.idempotency_key.clone()),
        state: Set(saga.state.as_str().to_owned()),
        version: Set(1),
        stuck: Set(false),
        try_deadline_ms: Set(saga.try_deadline),
        wake_at_ms: Set(saga.wake_at()),
        created_at_ms: Set(now),
        updated_at_ms: Set(now),
        finished_at_ms: Set(None),
        reason: Set(None),
        request: Set(new.request.clone()),
        trace_id: Set(None),
    })
    .exec_without_returning(db)
    .await?;
    let branches = saga.branches.iter().map(|b| {
        let (state, attempt, resend_at) = encode_branch(&b.state);
        branch::ActiveModel {
            saga_id: Set(saga.id.to_string()),
            branch_id: Set(b.id.0 as i32),
            participant: Set(b.participant.clone()),
            payload: Set(b.payload.to_string()),
            state: Set(state),
            attempt: Set(attempt),
            resend_at_ms: Set(resend_at),
            last_error: Set(None),
            updated_at_ms: Set(now),
        }
    });
    branch::Entity::insert_many(branches).exec_without_returning(db).await?;
    write_effects(db, routing, saga, actions, now).await
}

async fn write_effects<C: ConnectionTrait>(
    db: &C,
    routing: &Routing,
    saga: &Saga,
    actions: &[Action],
    now: i64,
) -> Result<(), Error> {
    let events = event_rows(saga.id, actions, now);
    if !events.is_empty() {
        saga_event::Entity::insert_many(events)
            .exec_without_returning(db)
            .await?;
    }
    let rows = routing.outbox_rows(saga, actions, now);
    if !rows.is_empty() {
        outbox::Entity::insert_many(rows).exec_without_returning(db).await?;
    }
    Ok(())
}

/// Saves a transition if the saga is still at `version`. Returns whether it was saved.
pub async fn save<C: ConnectionTrait>(
    db: &C,
    routing: &Routing,
    before: &Loaded,
    after: &Saga,
    actions: &[Action],
    now: i64,
) -> Result<bool, Error> {
    let id = after.id.to_string();
    let finished = after.state.is_terminal() && !before.saga.state.is_terminal();
    let mut update = saga::Entity::update_many()
        .col_expr(saga::Column::State, Expr::value(after.state.as_str()))
        .col_expr(saga::Column::Version, Expr::value(before.version + 1))
        .col_expr(saga::Column::Stuck, Expr::value(after.stuck))
        .col_expr(saga::Column::WakeAtMs, Expr::value(after.wake_at()))
        .col_expr(saga::Column::UpdatedAtMs, Expr::value(now))
        .col_expr(saga::Column::Reason, Expr::value(after.reason.clone()));
    if finished {
        update = update.col_expr(saga::Column::FinishedAtMs, Expr::value(now));
    }
    let result = update
        .filter(saga::Column::Id.eq(id.clone()))
        .filter(saga::Column::Version.eq(before.version))
        .exec(db)
        .await?;
    if result.rows_affected == 0 {
        return Ok(false);
    }
    for (old, new) in before.saga.branches.iter().zip(&after.branches) {
        if old == new {
            continue;
        }
        let (state, attempt, resend_at) = encode_branch(&new.state);
        branch::Entity::update_many()
            .col_expr(branch::Column::State, Expr::value(state))
            .col_expr(branch::Column::Attempt, Expr::value(attempt))
            .col_expr(branch::Column::ResendAtMs, Expr::value(resend_at))
            .col_expr(branch::Column::LastError, Expr::value(new.last_error.clone()))
            .col_expr(branch::Column::UpdatedAtMs, Expr::value(now))
            .filter(branch::Column::SagaId.eq(id.clone()))
            .filter(branch::Column::BranchId.eq(new.id.0 as i32))
            .exec(db)
            .await?;
    }
    write_effects(db, routing, after, actions, now).await?;
    Ok(true)
}

/// Loads sagas by id; missing ids are absent from the map.
pub async fn load<C: ConnectionTrait>(db: &C, ids: &[SagaId]) -> Result<HashMap<SagaId, Loaded>, Error> {
    load_inner(db, ids, false).await
}

/// Loads sagas by id inside a write transaction. On PostgreSQL the saga rows are
/// locked (`FOR UPDATE`, in id order so two writers cannot deadlock): a concurrent
/// writer of the same saga waits instead of losing the version race. SQLite has one
/// writer already.
pub async fn load_for_update<C: ConnectionTrait>(db: &C, ids: &[SagaId]) -> Result<HashMap<SagaId, Loaded>, Error> {
    load_inner(db, ids, db.get_database_backend() == DbBackend::Postgres).await
}

async fn load_inner<C: ConnectionTrait>(db: &C, ids: &[SagaId], lock: bool) -> Result<HashMap<SagaId, Loaded>, Error> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let keys: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    let mut query = saga::Entity::find()
        .filter(saga::Column::Id.is_in(keys.clone()))
        .order_by_asc(saga::Column::Id);
    if lock {
        query = query.lock_exclusive();
    }
    let sagas = query.all(db).await?;
    let rows = branch::Entity::find()
        .filter(branch::Column::SagaId.is_in(keys))
        .order_by_asc(branch::Column::SagaId)
        .order_by_asc(branch::Column::BranchId)
        .all(db)
        .await?;
    let mut branches: HashMap<String, Vec<Branch>> = HashMap::new();
    for row in &rows {
        branches
            .entry(row.saga_id.clone())
            .or_default()
            .push(decode_branch(row)?);
    }
    let mut out = HashMap::with_capacity(sagas.len());
    for row in &sagas {
        let loaded = decode_saga(row, branches.remove(&row.id).unwrap_or_default())?;
        out.insert(loaded.saga.id, loaded);
    }
    Ok(out)
}

/// Claims due sagas inside a write transaction: on PostgreSQL the rows are locked and
/// rows locked by another coordinator are skipped; SQLite has a single writer.
pub async fn claim_due<C: ConnectionTrait>(db: &C, now: i64, limit: u64) -> Result<Vec<SagaId>, Error> {
    let mut q = saga::Entity::find()
        .select_only()
        .column(saga::Column::Id)
        .filter(saga::Column::WakeAtMs.lte(now))
        .order_by_asc(saga::Column::WakeAtMs)
        .limit(limit);
    if db.get_database_backend() == DbBackend::Postgres {
        q = q.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked);
    }
    let ids: Vec<String> = q.into_tuple().all(db).await?;
    parse_ids(ids)
}

/// Claims the oldest unsent commands inside a write transaction (PostgreSQL: skipping
/// rows another coordinator's relay holds, so two relays do not publish the same rows).
pub async fn claim_outbox<C: ConnectionTrait>(db: &C, limit: u64) -> Result<Vec<outbox::Model>, Error> {
    let mut q = outbox::Entity::find().order_by_asc(outbox::Column::Id).limit(limit);
    if db.get_database_backend() == DbBackend::Postgres {
        q = q.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked);
    }
    Ok(q.all(db).await?)
}

/// Non-terminal sagas with an id greater than `after`, in id order (for resumption).
pub async fn unfinished<C: ConnectionTrait>(db: &C, after: Option<SagaId>, limit: u64) -> Result<Vec<SagaId>, Error> {
    let mut q = saga::Entity::find()
        .select_only()
        .column(saga::Column::Id)
        .filter(saga::Column::WakeAtMs.is_not_null());
    if let Some(after) = after {
        q = q.filter(saga::Column::Id.gt(after.to_string()));
    }
    let ids: Vec<String> = q
        .order_by_asc(saga::Column::Id)
        .limit(limit)
        .into_tuple()
        .all(db)
        .await?;
    parse_ids(ids)
}

fn parse_ids(ids: Vec<String>) -> Result<Vec<SagaId>, Error> {
    ids.iter()
        .map(|s| SagaId::from_str(s).map_err(|e| Error::Corrupt(format!("saga id {s:?}: {e}"))))
        .collect()
}

/// Existing sagas for idempotency keys.
pub async fn by_keys<C: ConnectionTrait>(db: &C, keys: &[String]) -> Result<HashMap<String, SagaId>, Error> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(String, Option<String>)> = saga::Entity::find()
        .select_only()
        .column(saga::Column::Id)
        .column(saga::Column::IdempotencyKey)
        .filter(saga::Column::IdempotencyKey.is_in(keys.to_vec()))
        .into_tuple()
        .all(db)
        .await?;
    let mut out = HashMap::new();
    for (id, key) in rows {
        if let Some(key) = key {
            out.insert(key, SagaId::from_str(&id).map_err(|e| Error::Corrupt(e.to_string()))?);
        }
    }
    Ok(out)
}

/// The oldest unsent commands.
pub async fn outbox_batch<C: ConnectionTrait>(db: &C, limit: u64) -> Result<Vec<outbox::Model>, Error> {
    Ok(outbox::Entity::find()
        .order_by_asc(outbox::Column::Id)
        .limit(limit)
        .all(db)
        .await?)
}

/// Forgets commands the broker has confirmed.
pub async fn outbox_delete<C: ConnectionTrait>(db: &C, ids: Vec<i64>) -> Result<(), Error> {
    if !ids.is_empty() {
        outbox::Entity::delete_many()
            .filter(outbox::Column::Id.is_in(ids))
            .exec(db)
            .await?;
    }
    Ok(())
}

/// Outbox rows not yet published.
pub async fn outbox_len<C: ConnectionTrait>(db: &C) -> Result<u64, Error> {
    Ok(outbox::Entity::find().count(db).await?)
}

/// Everything an SRE wants to see about one saga.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SagaView {
    pub id: SagaId,
    pub kind: String,
    pub idempotency_key: Option<String>,
    pub state: SagaState,
    pub stuck: bool,
    pub reason: Option<String>,
    pub version: i64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub finished_at_ms: Option<i64>,
    pub try_deadline_ms: i64,
    pub wake_at_ms: Option<i64>,
    pub request: serde_json::Value,
    pub branches: Vec<BranchView>,
    pub timeline: Vec<TimelineEntry>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct BranchView {
    pub branch_id: u32,
    pub participant: String,
    pub state: String,
    pub attempt: u32,
    pub resend_at_ms: Option<i64>,
    pub last_error: Option<String>,
    pub payload: serde_json::Value,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct TimelineEntry {
    pub at_ms: i64,
    pub kind: String,
    pub branch_id: Option<u32>,
    pub detail: String,
}

pub async fn view<C: ConnectionTrait>(db: &C, id: SagaId) -> Result<Option<SagaView>, Error> {
    let key = id.to_string();
    let Some(row) = saga::Entity::find_by_id(key.clone()).one(db).await? else {
        return Ok(None);
    };
    let branches = branch::Entity::find()
        .filter(branch::Column::SagaId.eq(key.clone()))
        .order_by_asc(branch::Column::BranchId)
        .all(db)
        .await?;
    let events = saga_event::Entity::find()
        .filter(saga_event::Column::SagaId.eq(key))
        .order_by_asc(saga_event::Column::Id)
        .all(db)
        .await?;
    Ok(Some(SagaView {
        id,
        kind: row.kind,
        idempotency_key: row.idempotency_key,
        state: SagaState::parse(&row.state).ok_or_else(|| Error::Corrupt(format!("saga state {:?}", row.state)))?,
        stuck: row.stuck,
        reason: row.reason,
        version: row.version,
        created_at_ms: row.created_at_ms,
        updated_at_ms: row.updated_at_ms,
        finished_at_ms: row.finished_at_ms,
        try_deadline_ms: row.try_deadline_ms,
        wake_at_ms: row.wake_at_ms,
        request: serde_json::from_str(&row.request).unwrap_or(serde_json::Value::String(row.request)),
        branches: branches
            .into_iter()
            .map(|b| BranchView {
                branch_id: b.branch_id as u32,
                participant: b.participant,
                state: b.state,
                attempt: b.attempt.max(0) as u32,
                resend_at_ms: b.resend_at_ms,
                last_error: b.last_error,
                payload: serde_json::from_str(&b.payload).unwrap_or(serde_json::Value::Null),
            })
            .collect(),
        timeline: events
            .into_iter()
            .map(|e| TimelineEntry {
                at_ms: e.at_ms,
                kind: e.kind,
                branch_id: e.branch_id.map(|b| b as u32),
                detail: e.detail,
            })
            .collect(),
    }))
}

/// Saga counts by state, and how many are flagged stuck.
pub async fn counts<C: ConnectionTrait>(db: &C) -> Result<(BTreeMap<SagaState, u64>, u64), Error> {
    let rows: Vec<(String, i64)> = saga::Entity::find()
        .select_only()
        .column(saga::Column::State)
        .column_as(saga::Column::Id.count(), "n")
        .group_by(saga::Column::State)
        .into_tuple()
        .all(db)
        .await?;
    let mut by_state = BTreeMap::new();
    for (state, n) in rows {
        if let Some(s) = SagaState::parse(&state) {
            by_state.insert(s, n.max(0) as u64);
        }
    }
    let stuck = saga::Entity::find()
        .filter(saga::Column::Stuck.eq(true))
        .count(db)
        .await?;
    Ok((by_state, stuck))
}

/// Every saga's outcome and amount-bearing request, for invariant checks.
pub async fn outcomes<C: ConnectionTrait>(db: &C) -> Result<Vec<(SagaId, SagaState, String)>, Error> {
    let rows: Vec<(String, String, String)> = saga::Entity::find()
        .select_only()
        .column(saga::Column::Id)
        .column(saga::Column::State)
        .column(saga::Column::Request)
        .into_tuple()
        .all(db)
        .await?;
    rows.into_iter()
        .map(|(id, state, request)| {
            Ok((
                SagaId::from_str(&id).map_err(|e| Error::Corrupt(e.to_string()))?,
                SagaState::parse(&state).ok_or_else(|| Error::Corrupt(format!("saga state {state:?}")))?,
                request,
            ))
        })
        .collect()
}
