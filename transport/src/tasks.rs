//! One supervision shape for every kessai service: its tasks, each with a name, under
//! one cancellation token.
//!
//! The coordinator's engine, a participant's runtime and the per-process service all
//! run on [`Tasks`]: start spawns the loops, then the owner either waits for the first
//! to end ([`Tasks::join_next`] — they only end on cancellation or failure), stops them
//! gracefully ([`Tasks::shutdown`]: cancel, then wait for each to finish its batch), or
//! kills them ([`Tasks::kill`], or dropping the value: the in-process `kill -9`). It
//! lives in this crate because every service crate already depends on it.

use std::future::Future;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How a task ended badly.
#[derive(Debug, thiserror::Error)]
pub enum TaskError<E: std::error::Error + 'static> {
    #[error(transparent)]
    Failed(E),
    #[error("task panicked: {0}")]
    Panicked(String),
}

/// A task's name and how it ended.
pub type TaskEnd<E> = (&'static str, Result<(), TaskError<E>>);

/// Named tasks under one cancellation token.
pub struct Tasks<E> {
    cancel: CancellationToken,
    set: JoinSet<(&'static str, Result<(), E>)>,
    /// Names by tokio task id, so a panicked task is still reported by name.
    names: std::collections::HashMap<tokio::task::Id, &'static str>,
}

impl<E: std::error::Error + Send + 'static> Default for Tasks<E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E: std::error::Error + Send + 'static> Tasks<E> {
    pub fn new() -> Self {
        Tasks {
            cancel: CancellationToken::new(),
            set: JoinSet::new(),
            names: Default::default(),
        }
    }

    /// The token every task watches: cancelled by [`Tasks::shutdown`].
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Spawns `task` as `name`.
    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = Result<(), E>> + Send + 'static) {
        let handle = self.set.spawn(async move { (name, task.await) });
        self.names.insert(handle.id(), name);
    }

    /// Waits for the next task to end by itself; `None` once none is left.
    pub async fn join_next(&mut self) -> Option<TaskEnd<E>> {
        let joined = self.set.join_next_with_id().await?;
        Some(match joined {
            Ok((_, (name, r))) => (name, r.map_err(TaskError::Failed)),
            Err(e) => (
                self.names.get(&e.id()).copied().unwrap_or("unknown"),
                Err(TaskError::Panicked(e.to_string())),
            ),
        })
    }

    /// Graceful stop: cancels, then waits for every task to finish what it holds.
    pub async fn shutdown(mut self) -> Vec<TaskEnd<E>> {
        self.cancel.cancel();
        let mut ended = Vec::new();
        while let Some(end) = self.join_next().await {
            ended.push(end);
        }
        ended
    }

    /// Aborts every task with no shutdown step, and waits until none runs any more
    /// (so what they held, a database connection say, is free to close).
    pub async fn kill(mut self) {
        self.set.abort_all();
        while self.set.join_next().await.is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("boom")]
    struct Boom;

    #[tokio::test]
    async fn tasks_report_by_name_how_they_ended() {
        let mut tasks: Tasks<Boom> = Tasks::new();
        let cancel = tasks.cancel_token();
        tasks.spawn("waits", async move {
            cancel.cancelled().await;
            Ok(())
        });
        tasks.spawn("fails", async { Err(Boom) });
        tasks.spawn("panics", async { panic!("on purpose") });
        let mut early = [tasks.join_next().await.unwrap(), tasks.join_next().await.unwrap()];
        early.sort_by_key(|(name, _)| *name);
        assert!(matches!(early[0], ("fails", Err(TaskError::Failed(Boom)))));
        assert!(matches!(early[1], ("panics", Err(TaskError::Panicked(_)))));
        let rest = tasks.shutdown().await;
        assert_eq!(rest.len(), 1);
        assert!(matches!(rest[0], ("waits", Ok(()))));
    }
}
