//! Submissions, group-committed: every submission waiting when a transaction starts
//! goes into it, so concurrent clients share one fsync instead of queueing for one
//! each. A client is answered only after the commit, so an acknowledged submission
//! exists (docs/GUARANTEES.md#no-lost-submission).

use super::{Inner, Submitted};
use crate::Error;
use crate::machine::{Action, Saga};
use crate::store::{self, NewSaga};
use kessai_messages::SagaId;
use sea_orm::TransactionTrait;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span, warn};

pub(crate) struct Request {
    pub new: NewSaga,
    pub reply: oneshot::Sender<Result<Submitted, Error>>,
}

pub(crate) async fn run(
    inner: Arc<Inner>,
    mut rx: mpsc::Receiver<Request>,
    cancel: CancellationToken,
) -> Result<(), Error> {
    loop {
        let first = tokio::select! {
            _ = cancel.cancelled() => break,
            r = rx.recv() => match r { Some(r) => r, None => break },
        };
        let mut batch = vec![first];
        while batch.len() < inner.config.batch_size {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        commit_batch(&inner, batch).await;
    }
    // Answer whatever is still queued rather than leave clients hanging.
    rx.close();
    while let Some(r) = rx.recv().await {
        let _ = r.reply.send(Err(Error::ShuttingDown));
    }
    Ok(())
}

async fn commit_batch(inner: &Inner, batch: Vec<Request>) {
    let span = info_span!("saga_submit", batch.size = batch.len());
    let requests: Vec<&NewSaga> = batch.iter().map(|r| &r.new).collect();
    match insert_all(inner, &requests).instrument(span.clone()).await {
        Ok(results) => {
            inner.outbox_ready.notify_one();
            for (r, res) in batch.into_iter().zip(results) {
                let _ = r.reply.send(res);
            }
        }
        Err(e) if batch.len() > 1 => {
            // One bad apple (say, a key inserted concurrently by another coordinator)
            // must not fail its neighbours: retry one by one.
            warn!(error = %e, "batched submission failed; retrying one by one");
            for r in batch {
                let res = insert_all(inner, &[&r.new])
                    .instrument(span.clone())
                    .await
                    .and_then(|mut v| v.remove(0));
                if res.is_ok() {
                    inner.outbox_ready.notify_one();
                }
                let _ = r.reply.send(res);
            }
        }
        Err(e) => {
            // The one request of the batch: its error as it is — a database failure
            // stays retryable (the API answers 503), it is not the client's mistake.
            if let Some(r) = batch.into_iter().next() {
                let _ = r.reply.send(Err(e));
            }
        }
    }
}

/// Creates the sagas of `requests` in one transaction; a request whose idempotency
/// key names a saga (in the database, or earlier in the same batch) gets that saga
/// back with `created: false` if it is the same request, and
/// [`Error::IdempotencyConflict`] if not. The new sagas are written by one
/// [`store::insert_many`], about four statements for the whole batch.
async fn insert_all(inner: &Inner, requests: &[&NewSaga]) -> Result<Vec<Result<Submitted, Error>>, Error> {
    let now = inner.clock.now_ms();
    let pacing = inner.stats.pacing();
    let txn = inner.db.begin().await?;
    let keys: Vec<String> = requests.iter().filter_map(|r| r.idempotency_key.clone()).collect();
    let mut known: HashMap<String, store::Existing> = store::existing(&txn, &keys).await?;
    let mut out = Vec::with_capacity(requests.len());
    let mut fresh: Vec<(&NewSaga, Saga, Vec<Action>)> = Vec::with_capacity(requests.len());
    for &new in requests {
        if let Some(existing) = new.idempotency_key.as_ref().and_then(|k| known.get(k)) {
            out.push(super::repeated(existing, new));
            continue;
        }
        let id = SagaId::new();
        let (saga, actions) = Saga::new_paced(
            id,
            new.branches.clone(),
            now,
            now + new.try_timeout_ms,
            &inner.config.policy,
            &pacing,
        );
        fresh.push((new, saga, actions));
        if let Some(k) = &new.idempotency_key {
            known.insert(
                k.clone(),
                store::Existing {
                    id,
                    request: new.request.clone(),
                },
            );
        }
        out.push(Ok(Submitted {
            saga_id: id,
            created: true,
        }));
    }
    let items: Vec<(&NewSaga, &Saga, &[Action])> = fresh
        .iter()
        .map(|(new, saga, actions)| (*new, saga, actions.as_slice()))
        .collect();
    store::insert_many(&txn, &inner.routing, &items, now).await?;
    txn.commit().await?;
    for (new, _, _) in &fresh {
        inner.config.metrics.saga_started(&new.kind);
    }
    Ok(out)
}
