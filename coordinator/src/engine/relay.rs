//! The outbox relay: publishes committed commands, then deletes their rows.
//!
//! A crash between publish and delete publishes them again — participants' barriers
//! make that harmless. A row is deleted only after the transport confirmed it (AMQP
//! publisher confirm, SQS answer), so nothing committed is ever lost.
//!
//! Each command goes out with a time-to-live: the time left until its branch's resend
//! is due (the row's `expires_at_ms`), at least [`MIN_TTL`]. When the resend goes out,
//! a copy still queued behind a backlog is dropped at the head of the queue instead of
//! being handled a second time, so a backed-up participant's queue does not fill with
//! redundant copies. Confirmed publishes are counted in the engine's stats.
//!
//! With a message key configured, each command is signed here, as it is published,
//! rather than when its outbox row is written: the key stays out of the database and
//! its rows, rows written before signing was turned on (or under an older key) go out
//! signed with the key in force, and the signature always covers the exact bytes sent.

use super::Inner;
use crate::Error;
use crate::store;
use futures::future::join_all;
use kessai_messages::signing;
use kessai_transport::{Headers, OutgoingMessage};
use sea_orm::{DbBackend, TransactionTrait};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug_span, warn};

const BATCH: u64 = 512;

/// The shortest time-to-live a command is published with. A row relayed late (the
/// relay was behind, or the coordinator restarted) may be at or past its expiry: it
/// still gets this long to be delivered, rather than expiring on arrival. Its resend
/// follows anyway, so a stale copy lives at most this much longer.
const MIN_TTL: Duration = Duration::from_secs(1);

/// The time-to-live of a command due to expire at `expires_at_ms`, published at
/// `now_ms`: the time left, at least [`MIN_TTL`]; none for rows without an expiry.
fn time_to_live(expires_at_ms: Option<i64>, now_ms: i64) -> Option<Duration> {
    let left = expires_at_ms?.saturating_sub(now_ms);
    Some(Duration::from_millis(u64::try_from(left).unwrap_or(0)).max(MIN_TTL))
}

pub(crate) async fn run(inner: Arc<Inner>, cancel: CancellationToken) -> Result<(), Error> {
    let mut declared: HashSet<String> = HashSet::new();
    let mut backoff = Duration::from_millis(50);
    loop {
        if cancel.is_cancelled() {
            // Graceful stop: flush what is committed, once, then leave.
            let _ = relay_once(&inner, &mut declared).await;
            return Ok(());
        }
        match relay_once(&inner, &mut declared).await {
            Ok(0) => {
                backoff = Duration::from_millis(50);
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = inner.outbox_ready.notified() => {}
                    _ = tokio::time::sleep(inner.config.relay_poll) => {}
                }
            }
            Ok(_) => backoff = Duration::from_millis(50),
            Err(e) => {
                warn!(error = %e, "outbox relay failed; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Publishes one batch; returns how many rows were published.
///
/// On PostgreSQL the rows are claimed (`FOR UPDATE SKIP LOCKED`) in a transaction held
/// across the publish, so coordinators sharing the database relay disjoint rows. On
/// SQLite (one coordinator per file) no transaction is held across network I/O: the
/// single connection stays free for the other tasks.
async fn relay_once(inner: &Inner, declared: &mut HashSet<String>) -> Result<usize, Error> {
    if inner.db.get_database_backend() == DbBackend::Postgres {
        let txn = inner.db.begin().await?;
        let rows = store::claim_outbox(&txn, BATCH).await?;
        let (sent, result) = publish(inner, declared, rows).await;
        let n = sent.len();
        store::outbox_delete(&txn, sent).await?;
        txn.commit().await?;
        return result.map(|()| n);
    }
    let rows = store::outbox_batch(&inner.db, BATCH).await?;
    let (sent, result) = publish(inner, declared, rows).await;
    let n = sent.len();
    store::outbox_delete(&inner.db, sent).await?;
    result.map(|()| n)
}

/// Publishes rows grouped by queue; returns the ids the broker accepted and the first
/// error, if any.
async fn publish(
    inner: &Inner,
    declared: &mut HashSet<String>,
    rows: Vec<crate::store::entities::outbox::Model>,
) -> (Vec<i64>, Result<(), Error>) {
    if rows.is_empty() {
        return (Vec::new(), Ok(()));
    }
    let now = inner.clock.now_ms();
    // Per queue: row ids, how many are resends, the messages.
    let mut by_queue: BTreeMap<String, (Vec<i64>, u64, Vec<OutgoingMessage>)> = BTreeMap::new();
    for row in rows {
        let mut headers: Headers = serde_json::from_str(&row.headers).unwrap_or_default();
        let payload = row.payload.into_bytes();
        signing::seal(inner.config.message_key.as_ref(), &payload, &mut headers);
        let entry = by_queue.entry(row.queue).or_default();
        entry.0.push(row.id);
        entry.1 += u64::from(row.attempt.is_some_and(|a| a > 1));
        entry.2.push(OutgoingMessage {
            payload,
            headers,
            expires_in: time_to_live(row.expires_at_ms, now),
        });
    }
    for queue in by_queue.keys() {
        if !declared.contains(queue) {
            if let Err(e) = inner.transport.declare(queue).await {
                return (Vec::new(), Err(e.into()));
            }
            declared.insert(queue.clone());
        }
    }
    let system = inner.transport.system();
    let results = join_all(by_queue.into_iter().map(|(queue, (ids, resends, messages))| {
        let span = debug_span!("outbox_publish", messaging.system = system, messaging.destination.name = %queue, messaging.batch.message_count = ids.len());
        async move {
            let result = inner.transport.publish_batch(&queue, messages).await;
            (queue, ids, resends, result)
        }
        .instrument(span)
    }))
    .await;
    let mut sent = Vec::new();
    let mut first_error = None;
    for (queue, ids, resends, result) in results {
        match result {
            Ok(()) => {
                inner.stats.record_published(&queue, ids.len() as u64, resends);
                sent.extend(ids);
            }
            Err(e) => first_error = first_error.or(Some(e)),
        }
    }
    (
        sent,
        match first_error {
            Some(e) => Err(e.into()),
            None => Ok(()),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_to_live_is_the_time_left_with_a_floor() {
        assert_eq!(time_to_live(None, 5_000), None);
        assert_eq!(time_to_live(Some(9_000), 5_000), Some(Duration::from_secs(4)));
        assert_eq!(time_to_live(Some(5_400), 5_000), Some(MIN_TTL));
        assert_eq!(
            time_to_live(Some(1_000), 5_000),
            Some(MIN_TTL),
            "already past: the floor"
        );
        assert_eq!(time_to_live(Some(i64::MIN), i64::MAX), Some(MIN_TTL));
    }
}
