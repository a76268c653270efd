//! Timers live in the database as each saga's `wake_at`. This task wakes due sagas
//! (try deadlines, resends, the stuck flag) and, at start, resumes every unfinished
//! saga by resending what it waits on.

use super::Inner;
use super::drive;
use crate::Error;
use crate::machine::Event;
use crate::store;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub(crate) async fn run(inner: Arc<Inner>, cancel: CancellationToken) -> Result<(), Error> {
    let limit = inner.config.batch_size as u64;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tokio::time::sleep(inner.config.tick_interval) => {}
        }
        loop {
            match drive::drive_due(&inner, limit).await {
                Ok(n) if (n as u64) == limit && !cancel.is_cancelled() => continue,
                Ok(_) => break,
                Err(e) => {
                    warn!(error = %e, "timer batch failed; will retry");
                    break;
                }
            }
        }
    }
}

/// Resends what every unfinished saga waits on: after a crash, whatever was in flight
/// may be gone with the broker's memory or the old process.
pub(crate) async fn resume(inner: Arc<Inner>, cancel: CancellationToken) -> Result<(), Error> {
    let mut after = None;
    let mut resumed = 0usize;
    while !cancel.is_cancelled() {
        let ids = store::unfinished(&inner.db, after, inner.config.batch_size as u64).await?;
        let Some(last) = ids.last().copied() else { break };
        after = Some(last);
        resumed += ids.len();
        let why = "coordinator started".to_owned();
        let work = ids
            .into_iter()
            .map(|id| (id, vec![(Event::ResendNow { why: why.clone() }, None)]))
            .collect();
        drive::drive(&inner, work).await?;
    }
    if resumed > 0 {
        info!(sagas = resumed, "resumed unfinished sagas");
    }
    Ok(())
}
