//! Applies events to sagas in one transaction: load, apply, save (version-guarded),
//! commit, then wake the relay and the waiters. Replies, timers, resumption and SRE
//! retries all come through here.

use super::Inner;
use crate::Error;
use crate::machine::{self, Action, Event, Saga, SagaState};
use crate::store;
use kessai_messages::SagaId;
use sea_orm::TransactionTrait;
use std::collections::HashSet;
use tracing::{debug_span, warn};

/// Identifies the message an event came from (an index into the caller's batch).
pub type Tag = Option<usize>;

/// What a drive did, so the caller can settle its messages.
#[derive(Debug, Default)]
pub struct Driven {
    /// Messages whose saga another writer changed meanwhile: requeue them.
    pub conflicts: Vec<usize>,
    /// Messages that cannot be placed (unknown saga, unknown branch): dead-letter them.
    pub invalid: Vec<(usize, String)>,
    /// Sagas saved.
    pub saved: usize,
    /// Sagas that reached a terminal state.
    pub finished: Vec<(SagaId, SagaState)>,
}

pub(crate) async fn drive(inner: &Inner, work: Vec<(SagaId, Vec<(Event, Tag)>)>) -> Result<Driven, Error> {
    let txn = inner.db.begin().await?;
    drive_in(inner, txn, work).await
}

/// Claims up to `limit` sagas whose wake-up time has passed and ticks them, in one
/// transaction. On PostgreSQL the claim skips rows another coordinator holds
/// (`FOR UPDATE SKIP LOCKED`), so coordinators sharing a database split the due work
/// instead of queueing on it. Returns how many were claimed.
pub(crate) async fn drive_due(inner: &Inner, limit: u64) -> Result<usize, Error> {
    let txn = inner.db.begin().await?;
    let ids = store::claim_due(&txn, inner.clock.now_ms(), limit).await?;
    let n = ids.len();
    if n == 0 {
        txn.rollback().await?;
        return Ok(0);
    }
    let work = ids.into_iter().map(|id| (id, vec![(Event::Tick, None)])).collect();
    drive_in(inner, txn, work).await?;
    Ok(n)
}

/// Loads every saga of `work` (one query for the sagas, one for their branches),
/// applies its events, then saves all changed sagas with [`store::save_many`]: about
/// four statements for the whole batch rather than several per saga.
async fn drive_in(
    inner: &Inner,
    txn: sea_orm::DatabaseTransaction,
    work: Vec<(SagaId, Vec<(Event, Tag)>)>,
) -> Result<Driven, Error> {
    let ids: Vec<SagaId> = work.iter().map(|(id, _)| *id).collect();
    let now = inner.clock.now_ms();
    let policy = inner.config.policy;
    // Resend delays stretched to how backed-up each participant's queue is.
    let pacing = inner.stats.pacing();
    let loaded = store::load_for_update(&txn, &ids).await?;
    let mut out = Driven::default();
    // Transitions to save: the saga as loaded, as changed, what to write with it, and
    // the tags to requeue if another writer changed it meanwhile.
    let mut changed: Vec<(&store::Loaded, Saga, Vec<Action>, Vec<usize>)> = Vec::new();
    for (id, events) in work {
        let Some(before) = loaded.get(&id) else {
            out.invalid.extend(
                events
                    .iter()
                    .filter_map(|(_, t)| t.map(|t| (t, format!("unknown saga {id}")))),
            );
            continue;
        };
        let span = debug_span!(
            "saga_apply",
            saga_id = %id,
            trace_id = before.trace_parent.as_deref().and_then(|t| t.get(3..35)),
            saga.state = before.saga.state.as_str()
        );
        let entered = span.enter();
        let mut saga = before.saga.clone();
        let mut actions = Vec::new();
        let mut tags = Vec::new();
        for (event, tag) in events {
            match machine::apply_paced(&saga, &event, now, &policy, &pacing) {
                Ok(t) => {
                    saga = t.saga;
                    actions.extend(t.actions);
                    tags.extend(tag);
                }
                Err(e) => {
                    if let Some(t) = tag {
                        out.invalid.push((t, e.to_string()));
                    }
                }
            }
        }
        drop(entered);
        if saga == before.saga && actions.is_empty() {
            continue;
        }
        changed.push((before, saga, actions, tags));
    }
    let items: Vec<(&store::Loaded, &Saga, &[Action])> = changed
        .iter()
        .map(|(before, saga, actions, _)| (*before, saga, actions.as_slice()))
        .collect();
    let saved = store::save_many(&txn, &inner.routing, &items, now).await?;
    let mut wrote_outbox = false;
    for ((before, saga, actions, tags), saved) in changed.into_iter().zip(saved) {
        if saved {
            out.saved += 1;
            wrote_outbox |= actions.iter().any(|a| matches!(a, Action::Send { .. }));
            for (branch, operation, _) in actions.iter().filter_map(Action::as_send).filter(|s| s.2 > 1) {
                if let Some(b) = saga.branches.get(branch.0 as usize) {
                    inner.config.metrics.resent(&b.participant, operation.as_str());
                }
            }
            if saga.state.is_terminal() && !before.saga.state.is_terminal() {
                crate::trace::finished(
                    before.trace_parent.as_deref(),
                    saga.id,
                    &before.kind,
                    before.created_at_ms,
                    saga.state,
                    saga.reason.as_deref(),
                );
                let seconds = (now - before.created_at_ms).max(0) as f64 / 1000.0;
                inner
                    .config
                    .metrics
                    .saga_finished(&before.kind, saga.state.as_str(), seconds);
                out.finished.push((saga.id, saga.state));
            }
        } else {
            out.conflicts.extend(tags);
        }
    }
    txn.commit().await?;
    if wrote_outbox {
        inner.outbox_ready.notify_one();
    }
    inner.admission.finished(out.finished.len() as u64);
    for (id, state) in &out.finished {
        inner.waiters.finished(*id, *state);
    }
    if !out.conflicts.is_empty() {
        warn!(
            conflicts = out.conflicts.len(),
            "saga changed by another writer; events requeued"
        );
    }
    Ok(out)
}

/// Groups events by saga, keeping their order within each saga.
pub(crate) fn group(events: Vec<(SagaId, Event, Tag)>) -> Vec<(SagaId, Vec<(Event, Tag)>)> {
    let mut order: Vec<(SagaId, Vec<(Event, Tag)>)> = Vec::new();
    let mut seen: std::collections::HashMap<SagaId, usize> = std::collections::HashMap::new();
    for (id, e, t) in events {
        match seen.get(&id) {
            Some(&i) => order[i].1.push((e, t)),
            None => {
                seen.insert(id, order.len());
                order.push((id, vec![(e, t)]));
            }
        }
    }
    order
}

/// Tags of a batch that a drive neither dead-letters nor requeues: ack them.
pub(crate) fn settled_ok(all: usize, driven: &Driven) -> Vec<usize> {
    let skip: HashSet<usize> = driven
        .conflicts
        .iter()
        .copied()
        .chain(driven.invalid.iter().map(|(t, _)| *t))
        .collect();
    (0..all).filter(|i| !skip.contains(i)).collect()
}
