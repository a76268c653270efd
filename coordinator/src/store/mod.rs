//! The coordinator's persistence: sagas, branches, the timeline and the outbox, via
//! sea-orm on SQLite or PostgreSQL.
//!
//! A transition is saved with its timeline entries and its outbox rows in the
//! caller's transaction, guarded by the saga's version: [`save`] changes nothing and
//! returns `false` when another writer got there first.
//!
//! Writes are batched per table, not per saga: [`insert_many`] and [`save_many`] take
//! a whole intake or reply batch in about four statements, whatever its size, because
//! each statement is a round trip (to sqlx's SQLite worker thread, or over the
//! network to PostgreSQL) and those round trips, not the rows, were the cost.

pub mod entities;

pub use crate::machine::timeline::{Actor, EventKind, EventOutcome};

use crate::Error;
use crate::machine::{Action, Branch, BranchState, Note, Saga, SagaState};
use crate::trace;
use entities::{branch, outbox, saga, saga_event};
use kessai_messages::{BranchId, Command, Envelope, Operation, SagaId};
use kessai_transport::Topology;
use sea_orm::sea_query::{LockBehavior, LockType};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, Iterable, NotSet, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect, Set, Statement, Value,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;

/// A saga as loaded, with the version a save must match.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub saga: Saga,
    pub version: i64,
    pub kind: String,
    pub created_at_ms: i64,
    /// The saga's trace context (`traceparent` of its submission span): every span
    /// made for the saga later is its child.
    pub trace_parent: Option<String>,
}

/// What a new saga is made of.
#[derive(Clone, Debug, Default)]
pub struct NewSaga {
    /// `payment` or `generic`.
    pub kind: String,
    /// The API client that submits it (its token's name); `None` in-process.
    pub client: Option<String>,
    /// A client's idempotency key: submitting it again with the same request returns
    /// the first saga; with another request it is a conflict.
    pub idempotency_key: Option<String>,
    /// The client's request as JSON, kept for SREs.
    pub request: String,
    pub branches: Vec<(String, serde_json::Value)>,
    pub try_timeout_ms: i64,
    /// The `traceparent` of the span that submitted it (see [`Loaded::trace_parent`]);
    /// `None` with tracing off.
    pub trace_parent: Option<String>,
}

/// Where commands go and replies come back.
#[derive(Clone, Debug)]
pub struct Routing {
    pub topology: Topology,
}

impl Routing {
    /// The outbox rows of a transition's sends. Each command expires when its branch's
    /// next resend is due (`saga` is the state after the transition, which holds that
    /// time): by then a fresh copy supersedes it, and a stale copy still queued would
    /// only be handled twice. A try expires at the try deadline at the latest — after
    /// it the saga cancels anyway. A command its branch no longer waits on (answered in
    /// the same transition) is stale at once.
    ///
    /// Each command gets a `tcc.dispatch` span, a child of the saga's trace context,
    /// whose context the command carries (`traceparent`): the participant's span for
    /// it is that span's child.
    fn outbox_rows(
        &self,
        saga: &Saga,
        actions: &[Action],
        now: i64,
        trace_parent: Option<&str>,
    ) -> Vec<outbox::ActiveModel> {
        let reply_to = self.topology.reply_queue();
        // The saga's context, parsed once for all its commands.
        let parent = trace_parent.map(|t| kessai_transport::trace::context_from(Some(t)));
        actions
            .iter()
            .filter_map(Action::as_send)
            .map(|(branch, operation, attempt)| {
                let b = &saga.branches[branch.0 as usize];
                let deadline = (operation == Operation::Try).then_some(saga.try_deadline);
                let mut env = Envelope::command(
                    saga.id,
                    branch,
                    operation,
                    attempt,
                    deadline,
                    Command {
                        participant: b.participant.clone(),
                        reply_to: reply_to.clone(),
                        payload: b.payload.clone(),
                    },
                );
                let queue = self.topology.command_queue(&b.participant);
                env.headers.insert(SENT_AT_HEADER.to_owned(), now.to_string());
                if let Some(parent) = &parent {
                    let cx = trace::dispatch(parent, saga.id, b, operation, attempt, &queue);
                    kessai_transport::trace::inject(&cx, &mut env.headers);
                    kessai_transport::trace::end(&cx);
                }
                let expires_at = match b.state.waiting() {
                    Some((op, _, resend_at)) if op == operation => resend_at.min(deadline.unwrap_or(i64::MAX)),
                    _ => now,
                };
                outbox::ActiveModel {
                    id: NotSet,
                    saga_id: Set(saga.id.to_string()),
                    queue: Set(queue),
                    payload: Set(String::from_utf8(env.encode()).expect("JSON is UTF-8")),
                    headers: Set(serde_json::to_string(&env.headers).expect("serialises")),
                    created_at_ms: Set(now),
                    expires_at_ms: Set(Some(expires_at)),
                    attempt: Set(Some(stored_attempt(attempt))),
                }
            })
            .collect()
    }
}

/// The envelope header with the Unix ms at which the coordinator decided a command.
/// Participants copy a command's headers onto its reply, so the reply tells how long
/// the round trip took (`kessai_branch_operation_duration_seconds`).
pub const SENT_AT_HEADER: &str = "kessai-sent-ms";

/// A send number as the `attempt` columns hold it.
fn stored_attempt(attempt: u32) -> i32 {
    i32::try_from(attempt).unwrap_or(i32::MAX)
}

fn event_rows(saga: SagaId, actions: &[Action], now: i64) -> Vec<saga_event::ActiveModel> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Log(note) => Some(event_row(saga, note, now)),
            Action::Send { .. } => None,
        })
        .collect()
}

fn event_row(saga: SagaId, note: &Note, now: i64) -> saga_event::ActiveModel {
    saga_event::ActiveModel {
        id: NotSet,
        saga_id: Set(saga.to_string()),
        at_ms: Set(now),
        kind: Set(note.kind),
        branch_id: Set(note.branch.map(|b| b.0 as i32)),
        detail: Set(note.detail.clone()),
        operation: Set(note.operation.map(|op| op.as_str().to_owned())),
        attempt: Set(note.attempt.map(stored_attempt)),
        outcome: Set(note.outcome),
        reason: Set(note.reason.clone()),
        actor: Set(note.actor.clone()),
    }
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
        kind: row.kind.clone(),
        created_at_ms: row.created_at_ms,
        trace_parent: row.trace_parent.clone(),
    })
}

/// Most bound parameters one statement carries. The bundled SQLite refuses more than
/// 32766 (`SQLITE_MAX_VARIABLE_NUMBER`), PostgreSQL's protocol more than 65535; a
/// batch that needs more is split into several statements of at most this many.
const MAX_PARAMS: usize = 30_000;

/// Inserts `rows` into their table with as few multi-row INSERTs as [`MAX_PARAMS`]
/// allows (one for any realistic batch).
async fn insert_rows<C, A>(db: &C, rows: Vec<A>) -> Result<(), Error>
where
    C: ConnectionTrait,
    A: ActiveModelTrait + Send,
{
    // Every column counted, set or not: an upper bound on the parameters per row.
    let per_row = <<A::Entity as EntityTrait>::Column as Iterable>::iter().count().max(1);
    for chunk in statements(rows, per_row) {
        A::Entity::insert_many(chunk).exec_without_returning(db).await?;
    }
    Ok(())
}

/// `rows` split into groups of at most [`MAX_PARAMS`] parameters at `per_row` each.
fn statements<T>(rows: Vec<T>, per_row: usize) -> impl Iterator<Item = Vec<T>> {
    let per_statement = (MAX_PARAMS / per_row.max(1)).max(1);
    let mut rows = rows.into_iter().peekable();
    std::iter::from_fn(move || {
        rows.peek()?;
        Some(rows.by_ref().take(per_statement).collect())
    })
}

/// One statement's SQL and values, with placeholders per backend: `?` on SQLite,
/// `$n::type` on PostgreSQL. The casts matter there: a NULL in a `VALUES` list has no
/// type of its own, and PostgreSQL would otherwise guess `text` for it.
struct Sql {
    backend: DbBackend,
    text: String,
    values: Vec<Value>,
}

impl Sql {
    fn new(backend: DbBackend) -> Self {
        Sql {
            backend,
            text: String::new(),
            values: Vec::new(),
        }
    }

    fn push(&mut self, sql: &str) {
        self.text.push_str(sql);
    }

    /// Appends a placeholder for `value`; `pg_type` is its PostgreSQL type.
    fn bind(&mut self, value: Value, pg_type: &str) {
        self.values.push(value);
        match self.backend {
            DbBackend::Postgres => {
                use std::fmt::Write;
                let _ = write!(self.text, "${}::{pg_type}", self.values.len());
            }
            _ => self.text.push('?'),
        }
    }

    /// `WITH v(<columns>) AS (VALUES (..), ..) `: a batch of per-row values as a table
    /// that the UPDATE ... FROM appended next joins against. Each column is `(name,
    /// PostgreSQL type)`; each row has one value per column.
    fn with_values(backend: DbBackend, columns: &[(&str, &str)], rows: Vec<Vec<Value>>) -> Self {
        let mut sql = Sql::new(backend);
        sql.push("WITH v(");
        sql.push(&columns.iter().map(|(name, _)| *name).collect::<Vec<_>>().join(", "));
        sql.push(") AS (VALUES ");
        for (i, row) in rows.into_iter().enumerate() {
            sql.push(if i == 0 { "(" } else { ", (" });
            for (j, (value, (_, pg_type))) in row.into_iter().zip(columns).enumerate() {
                if j > 0 {
                    sql.push(", ");
                }
                sql.bind(value, pg_type);
            }
            sql.push(")");
        }
        sql.push(") ");
        sql
    }

    fn statement(self) -> Statement {
        Statement::from_sql_and_values(self.backend, self.text, self.values)
    }
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
    insert_many(db, routing, &[(new, saga, actions)], now).await
}

/// Inserts new sagas with their branches, timelines and first commands: one multi-row
/// INSERT per table for the whole batch (split only past [`MAX_PARAMS`]), so an
/// intake batch costs four statements, not four per saga. On SQLite every statement
/// is a hand-off to sqlx's worker thread, on PostgreSQL a network round trip; per
/// saga they dominated the cost of a submission.
///
/// Rows go in the order of `items`, so outbox ids (the relay's publish order) and
/// timeline ids follow it.
pub async fn insert_many<C: ConnectionTrait>(
    db: &C,
    routing: &Routing,
    items: &[(&NewSaga, &Saga, &[Action])],
    now: i64,
) -> Result<(), Error> {
    if items.is_empty() {
        return Ok(());
    }
    // `client` is written only when some saga of the batch has one, so in-process
    // submissions still insert into a schema from before the column (the migration
    // tests write such rows). One statement must set the same columns on every row.
    let with_client = items.iter().any(|(new, _, _)| new.client.is_some());
    let with_trace = items.iter().any(|(new, _, _)| new.trace_parent.is_some());
    let sagas: Vec<saga::ActiveModel> = items
        .iter()
        .map(|(new, saga, _)| saga::ActiveModel {
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
            trace_id: Set(new
                .trace_parent
                .as_deref()
                .and_then(kessai_transport::trace::parse_traceparent)
                .map(|sc| sc.trace_id().to_string())),
            client: if with_client { Set(new.client.clone()) } else { NotSet },
            trace_parent: if with_trace {
                Set(new.trace_parent.clone())
            } else {
                NotSet
            },
        })
        .collect();
    insert_rows(db, sagas).await?;
    let branches: Vec<branch::ActiveModel> = items
        .iter()
        .flat_map(|(_, saga, _)| {
            saga.branches.iter().map(move |b| {
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
            })
        })
        .collect();
    insert_rows(db, branches).await?;
    let effects: Vec<(&Saga, &[Action], Option<&str>)> = items
        .iter()
        .map(|(new, saga, actions)| (*saga, *actions, new.trace_parent.as_deref()))
        .collect();
    write_effects(db, routing, &effects, now).await
}

/// Appends the timeline entries and outbox rows of `items`: one INSERT for all events,
/// one for all commands.
async fn write_effects<C: ConnectionTrait>(
    db: &C,
    routing: &Routing,
    items: &[(&Saga, &[Action], Option<&str>)],
    now: i64,
) -> Result<(), Error> {
    let events: Vec<saga_event::ActiveModel> = items
        .iter()
        .flat_map(|(saga, actions, _)| event_rows(saga.id, actions, now))
        .collect();
    insert_rows(db, events).await?;
    let rows: Vec<outbox::ActiveModel> = items
        .iter()
        .flat_map(|(saga, actions, trace)| routing.outbox_rows(saga, actions, now, *trace))
        .collect();
    insert_rows(db, rows).await
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
    let saved = save_many(db, routing, &[(before, after, actions)], now).await?;
    Ok(saved[0])
}

/// Saves transitions, each only if its saga is still at the version it was loaded
/// at; returns, per item, whether it was saved. A refused item changes nothing: not
/// its saga, nor its branches, nor its timeline or outbox.
///
/// The whole batch takes four statements (split only past [`MAX_PARAMS`]) instead of
/// several per saga: one version-guarded `UPDATE sagas ... FROM (VALUES ..)` that
/// returns the ids it updated, one `UPDATE branches ... FROM (VALUES ..)` for the
/// changed branches of those sagas, then one INSERT for their timeline entries and
/// one for their outbox rows. Statements, not rows, are what a batch pays for: a
/// hand-off to sqlx's worker thread on SQLite, a round trip on PostgreSQL.
///
/// A saga named twice in `items` is saved in two rounds, in order, so the second
/// item is checked against the version the first one wrote, as separate saves would.
///
/// On PostgreSQL, load the sagas with [`load_for_update`] first (the engine does): the
/// UPDATE locks its rows in join order, not id order, so two unlocked batches naming
/// the same sagas could deadlock; rows already locked in id order cannot.
pub async fn save_many<C: ConnectionTrait>(
    db: &C,
    routing: &Routing,
    items: &[(&Loaded, &Saga, &[Action])],
    now: i64,
) -> Result<Vec<bool>, Error> {
    let mut saved = vec![false; items.len()];
    let mut seen: HashMap<SagaId, usize> = HashMap::new();
    let rounds: Vec<usize> = items
        .iter()
        .map(|(_, after, _)| {
            let n = seen.entry(after.id).or_default();
            *n += 1;
            *n - 1
        })
        .collect();
    let last = rounds.iter().copied().max().unwrap_or(0);
    for round in 0..=last {
        let picked: Vec<usize> = (0..items.len()).filter(|&i| rounds[i] == round).collect();
        save_round(db, routing, items, &picked, now, &mut saved).await?;
    }
    Ok(saved)
}

/// Columns of the `VALUES` list of a saga update: name and PostgreSQL type.
const SAGA_VALUES: [(&str, &str); 7] = [
    ("v_id", "text"),
    ("v_version", "bigint"),
    ("v_state", "text"),
    ("v_stuck", "boolean"),
    ("v_wake_at_ms", "bigint"),
    ("v_reason", "text"),
    ("v_finished_at_ms", "bigint"),
];

/// Columns of the `VALUES` list of a branch update.
const BRANCH_VALUES: [(&str, &str); 6] = [
    ("v_saga_id", "text"),
    ("v_branch_id", "integer"),
    ("v_state", "text"),
    ("v_attempt", "integer"),
    ("v_resend_at_ms", "bigint"),
    ("v_last_error", "text"),
];

/// [`save_many`] for items whose sagas are all distinct.
async fn save_round<C: ConnectionTrait>(
    db: &C,
    routing: &Routing,
    items: &[(&Loaded, &Saga, &[Action])],
    picked: &[usize],
    now: i64,
    saved: &mut [bool],
) -> Result<(), Error> {
    if picked.is_empty() {
        return Ok(());
    }
    let backend = db.get_database_backend();
    // The `VALUES` columns are prefixed `v_` so that no name is ambiguous between
    // the updated table and `v` (PostgreSQL's RETURNING sees both); `finished_at_ms`
    // is NULL unless this transition finishes the saga, and then keeps its value.
    let sagas: Vec<Vec<Value>> = picked
        .iter()
        .map(|&i| {
            let (before, after, _) = items[i];
            let finished = after.state.is_terminal() && !before.saga.state.is_terminal();
            vec![
                after.id.to_string().into(),
                before.version.into(),
                after.state.as_str().into(),
                after.stuck.into(),
                after.wake_at().into(),
                after.reason.clone().into(),
                finished.then_some(now).into(),
            ]
        })
        .collect();
    let mut updated: HashSet<String> = HashSet::with_capacity(picked.len());
    for rows in statements(sagas, SAGA_VALUES.len()) {
        let mut sql = Sql::with_values(backend, &SAGA_VALUES, rows);
        sql.push(
            "UPDATE sagas SET state = v.v_state, version = v.v_version + 1, stuck = v.v_stuck, \
             wake_at_ms = v.v_wake_at_ms, reason = v.v_reason, \
             finished_at_ms = COALESCE(v.v_finished_at_ms, finished_at_ms), updated_at_ms = ",
        );
        sql.bind(now.into(), "bigint");
        sql.push(" FROM v WHERE sagas.id = v.v_id AND sagas.version = v.v_version RETURNING id");
        for row in db.query_all_raw(sql.statement()).await? {
            updated.insert(row.try_get_by_index::<String>(0)?);
        }
    }
    let mut done: Vec<usize> = Vec::with_capacity(picked.len());
    for &i in picked {
        if updated.contains(&items[i].1.id.to_string()) {
            saved[i] = true;
            done.push(i);
        }
    }
    let branches: Vec<Vec<Value>> = done
        .iter()
        .flat_map(|&i| {
            let (before, after, _) = items[i];
            before
                .saga
                .branches
                .iter()
                .zip(&after.branches)
                .filter(|(old, new)| old != new)
                .map(move |(_, new)| {
                    let (state, attempt, resend_at) = encode_branch(&new.state);
                    vec![
                        after.id.to_string().into(),
                        (new.id.0 as i32).into(),
                        state.into(),
                        attempt.into(),
                        resend_at.into(),
                        new.last_error.clone().into(),
                    ]
                })
        })
        .collect();
    for rows in statements(branches, BRANCH_VALUES.len()) {
        let mut sql = Sql::with_values(backend, &BRANCH_VALUES, rows);
        sql.push(
            "UPDATE branches SET state = v.v_state, attempt = v.v_attempt, resend_at_ms = v.v_resend_at_ms, \
             last_error = v.v_last_error, updated_at_ms = ",
        );
        sql.bind(now.into(), "bigint");
        sql.push(" FROM v WHERE branches.saga_id = v.v_saga_id AND branches.branch_id = v.v_branch_id");
        db.execute_raw(sql.statement()).await?;
    }
    let effects: Vec<(&Saga, &[Action], Option<&str>)> = done
        .iter()
        .map(|&i| (items[i].1, items[i].2, items[i].0.trace_parent.as_deref()))
        .collect();
    write_effects(db, routing, &effects, now).await
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

/// The state of one saga, `None` if there is no such saga: a single-column read,
/// cheap enough to poll.
pub async fn state_of<C: ConnectionTrait>(db: &C, id: SagaId) -> Result<Option<SagaState>, Error> {
    let state: Option<String> = saga::Entity::find_by_id(id.to_string())
        .select_only()
        .column(saga::Column::State)
        .into_tuple()
        .one(db)
        .await?;
    state
        .map(|s| SagaState::parse(&s).ok_or_else(|| Error::Corrupt(format!("saga state {s:?}"))))
        .transpose()
}

/// The API client that submitted saga `id`: `None` if there is no such saga,
/// `Some(None)` for an in-process submission. One narrow read, for access checks.
pub async fn client_of<C: ConnectionTrait>(db: &C, id: SagaId) -> Result<Option<Option<String>>, Error> {
    Ok(saga::Entity::find_by_id(id.to_string())
        .select_only()
        .column(saga::Column::Client)
        .into_tuple::<Option<String>>()
        .one(db)
        .await?)
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

/// The saga an idempotency key names, with the request it was created from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Existing {
    pub id: SagaId,
    /// The stored request (JSON text).
    pub request: String,
}

impl Existing {
    /// Whether `request` (JSON text) is the request this saga was created from: equal
    /// as JSON values, so neither key order nor whitespace makes a difference.
    pub fn same_request(&self, request: &str) -> bool {
        match (
            serde_json::from_str::<serde_json::Value>(&self.request),
            serde_json::from_str::<serde_json::Value>(request),
        ) {
            (Ok(a), Ok(b)) => a == b,
            _ => self.request == request,
        }
    }
}

/// Existing sagas for idempotency keys, with their requests (to tell a repeated
/// submission from a conflicting one).
pub async fn existing<C: ConnectionTrait>(db: &C, keys: &[String]) -> Result<HashMap<String, Existing>, Error> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(String, Option<String>, String)> = saga::Entity::find()
        .select_only()
        .column(saga::Column::Id)
        .column(saga::Column::IdempotencyKey)
        .column(saga::Column::Request)
        .filter(saga::Column::IdempotencyKey.is_in(keys.to_vec()))
        .into_tuple()
        .all(db)
        .await?;
    let mut out = HashMap::new();
    for (id, key, request) in rows {
        if let Some(key) = key {
            let id = SagaId::from_str(&id).map_err(|e| Error::Corrupt(e.to_string()))?;
            out.insert(key, Existing { id, request });
        }
    }
    Ok(out)
}

/// Which sagas [`list`] returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SagaFilter {
    pub state: Option<SagaState>,
    pub stuck: Option<bool>,
    pub kind: Option<String>,
    pub client: Option<String>,
    /// Created at or after (Unix ms).
    pub created_after_ms: Option<i64>,
    /// Created before (Unix ms).
    pub created_before_ms: Option<i64>,
    /// Only sagas older than this one (the cursor: the last id of the previous page).
    pub before: Option<SagaId>,
    /// Only sagas stored under one of these idempotency keys (exact matches, on the
    /// key's unique index); an empty list matches nothing.
    pub idempotency_keys: Option<Vec<String>>,
}

/// One line of a saga list.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct SagaSummary {
    #[schema(value_type = String)]
    pub id: SagaId,
    pub kind: String,
    pub client: Option<String>,
    pub state: SagaState,
    pub stuck: bool,
    pub reason: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub finished_at_ms: Option<i64>,
}

/// A saga row as a line of a list.
pub(crate) fn summary(row: saga::Model) -> Result<SagaSummary, Error> {
    Ok(SagaSummary {
        id: SagaId::from_str(&row.id).map_err(|e| Error::Corrupt(format!("saga id {:?}: {e}", row.id)))?,
        state: SagaState::parse(&row.state).ok_or_else(|| Error::Corrupt(format!("saga state {:?}", row.state)))?,
        kind: row.kind,
        client: row.client,
        stuck: row.stuck,
        reason: row.reason,
        created_at_ms: row.created_at_ms,
        updated_at_ms: row.updated_at_ms,
        finished_at_ms: row.finished_at_ms,
    })
}

/// Sagas matching `filter`, newest first (saga ids are UUIDv7, so id order is creation
/// order), at most `limit`.
pub async fn list<C: ConnectionTrait>(db: &C, filter: &SagaFilter, limit: u64) -> Result<Vec<SagaSummary>, Error> {
    let mut q = saga::Entity::find();
    if let Some(state) = filter.state {
        q = q.filter(saga::Column::State.eq(state.as_str()));
    }
    if let Some(stuck) = filter.stuck {
        q = q.filter(saga::Column::Stuck.eq(stuck));
    }
    if let Some(kind) = &filter.kind {
        q = q.filter(saga::Column::Kind.eq(kind.clone()));
    }
    if let Some(client) = &filter.client {
        q = q.filter(saga::Column::Client.eq(client.clone()));
    }
    if let Some(after) = filter.created_after_ms {
        q = q.filter(saga::Column::CreatedAtMs.gte(after));
    }
    if let Some(before) = filter.created_before_ms {
        q = q.filter(saga::Column::CreatedAtMs.lt(before));
    }
    if let Some(before) = filter.before {
        q = q.filter(saga::Column::Id.lt(before.to_string()));
    }
    if let Some(keys) = &filter.idempotency_keys {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        q = q.filter(saga::Column::IdempotencyKey.is_in(keys.clone()));
    }
    let rows = q.order_by_desc(saga::Column::Id).limit(limit).all(db).await?;
    rows.into_iter().map(summary).collect()
}

/// How many commands wait in the outbox, and when the oldest was written (Unix ms).
pub async fn outbox_depth<C: ConnectionTrait>(db: &C) -> Result<(u64, Option<i64>), Error> {
    let row: Option<(i64, Option<i64>)> = outbox::Entity::find()
        .select_only()
        .column_as(outbox::Column::Id.count(), "n")
        .column_as(outbox::Column::CreatedAtMs.min(), "oldest")
        .into_tuple()
        .one(db)
        .await?;
    let (n, oldest) = row.unwrap_or((0, None));
    Ok((u64::try_from(n).unwrap_or(0), oldest))
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
#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct SagaView {
    #[schema(value_type = String)]
    pub id: SagaId,
    pub kind: String,
    /// The API client that submitted it (`null` for in-process submissions).
    pub client: Option<String>,
    /// As stored: scoped to the client (`<client>/<kind>:<key>`).
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
    /// The OpenTelemetry trace of this saga: every span of it, in every service, from
    /// its submission to its end. `None` for sagas submitted with tracing off.
    pub trace_id: Option<String>,
    /// A link to that trace in the trace viewer, when one is configured (the API sets
    /// it; `None` from the store).
    pub trace_url: Option<String>,
    /// The client's request, as submitted.
    #[schema(value_type = Object)]
    pub request: serde_json::Value,
    pub branches: Vec<BranchView>,
    pub timeline: Vec<TimelineEntry>,
}

#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct BranchView {
    pub branch_id: u32,
    pub participant: String,
    pub state: String,
    pub attempt: u32,
    pub resend_at_ms: Option<i64>,
    pub last_error: Option<String>,
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
}

/// One entry of a saga's timeline. `detail` is the sentence for humans; the typed
/// fields say the same for programs, and are absent (`None`) where they do not apply
/// or on entries written before they existed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct TimelineEntry {
    pub at_ms: i64,
    pub kind: EventKind,
    pub branch_id: Option<u32>,
    pub detail: String,
    /// The command the entry is about: `try`, `confirm` or `cancel`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub operation: Option<Operation>,
    /// That command's send number (1 = first send).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<EventOutcome>,
    /// A refusal's or failure's reason, a cancel's cause, a resend request's why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Who caused the entry.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub actor: Option<Actor>,
}

impl TryFrom<saga_event::Model> for TimelineEntry {
    type Error = Error;

    fn try_from(e: saga_event::Model) -> Result<Self, Error> {
        let operation = e
            .operation
            .map(|op| Operation::parse(&op).ok_or_else(|| Error::Corrupt(format!("timeline operation {op:?}"))))
            .transpose()?;
        Ok(TimelineEntry {
            at_ms: e.at_ms,
            kind: e.kind,
            branch_id: e.branch_id.map(|b| b as u32),
            detail: e.detail,
            operation,
            attempt: e.attempt.map(|a| a.max(0) as u32),
            outcome: e.outcome,
            reason: e.reason,
            actor: e.actor,
        })
    }
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
        client: row.client,
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
        trace_id: row.trace_id,
        trace_url: None,
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
            .map(TimelineEntry::try_from)
            .collect::<Result<_, _>>()?,
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

/// Every saga's id and state, for the invariant checks (which read the branches).
pub async fn outcomes<C: ConnectionTrait>(db: &C) -> Result<Vec<(SagaId, SagaState)>, Error> {
    let rows: Vec<(String, String)> = saga::Entity::find()
        .select_only()
        .column(saga::Column::Id)
        .column(saga::Column::State)
        .into_tuple()
        .all(db)
        .await?;
    rows.into_iter()
        .map(|(id, state)| {
            Ok((
                SagaId::from_str(&id).map_err(|e| Error::Corrupt(e.to_string()))?,
                SagaState::parse(&state).ok_or_else(|| Error::Corrupt(format!("saga state {state:?}")))?,
            ))
        })
        .collect()
}

/// How many sagas are not terminal (admission control's count).
pub async fn count_unfinished<C: ConnectionTrait>(db: &C) -> Result<u64, Error> {
    Ok(saga::Entity::find()
        .filter(saga::Column::WakeAtMs.is_not_null())
        .count(db)
        .await?)
}

/// What the timeline says about resends, across all sagas.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ResendSummary {
    /// The highest send number of any resent command: 1 when nothing was resent.
    pub max_attempt: u32,
    /// The saga with the most `resent` entries (the smallest id among equals), `None`
    /// when nothing was resent.
    pub most_resent: Option<SagaId>,
    /// How many `resent` entries that saga has; 0 when nothing was resent.
    pub most_resent_count: u64,
}

/// Sums up the `resent` entries of every saga from their typed columns, in two
/// aggregate queries. Entries written before the `attempt` column existed count
/// towards the per-saga numbers but not towards `max_attempt`.
pub async fn resend_summary<C: ConnectionTrait>(db: &C) -> Result<ResendSummary, Error> {
    let max: Option<Option<i32>> = saga_event::Entity::find()
        .select_only()
        .column_as(saga_event::Column::Attempt.max(), "max_attempt")
        .filter(saga_event::Column::Kind.eq(EventKind::Resent))
        .into_tuple()
        .one(db)
        .await?;
    let max_attempt = max.flatten().map_or(1, |a| a.max(1) as u32);
    let top: Option<(String, i64)> = saga_event::Entity::find()
        .select_only()
        .column(saga_event::Column::SagaId)
        .column_as(saga_event::Column::Id.count(), "resends")
        .filter(saga_event::Column::Kind.eq(EventKind::Resent))
        .group_by(saga_event::Column::SagaId)
        .order_by_desc(saga_event::Column::Id.count())
        .order_by_asc(saga_event::Column::SagaId)
        .limit(1)
        .into_tuple()
        .one(db)
        .await?;
    Ok(match top {
        Some((id, n)) => ResendSummary {
            max_attempt,
            most_resent: Some(SagaId::from_str(&id).map_err(|e| Error::Corrupt(format!("saga id {id:?}: {e}")))?),
            most_resent_count: n.max(0) as u64,
        },
        None => ResendSummary {
            max_attempt,
            most_resent: None,
            most_resent_count: 0,
        },
    })
}

#[cfg(test)]
mod tests;
