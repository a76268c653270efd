//! Clients waiting for a saga to end, woken after the commit that ended it.

use crate::machine::SagaState;
use kessai_messages::SagaId;
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::oneshot;

#[derive(Default)]
pub(crate) struct Waiters {
    map: Mutex<HashMap<SagaId, Vec<oneshot::Sender<SagaState>>>>,
}

impl Waiters {
    pub fn register(&self, id: SagaId) -> oneshot::Receiver<SagaState> {
        let (tx, rx) = oneshot::channel();
        let mut map = self.map.lock().expect("waiters lock");
        let list = map.entry(id).or_default();
        // Drop waiters that gave up, so a saga polled often does not grow the list.
        list.retain(|w| !w.is_closed());
        list.push(tx);
        rx
    }

    /// Drops the closed waiters of a saga a caller stopped waiting for (unknown, or
    /// the wait timed out), so nothing registered outlives its request.
    pub fn forget(&self, id: SagaId) {
        let mut map = self.map.lock().expect("waiters lock");
        if let Some(list) = map.get_mut(&id) {
            list.retain(|w| !w.is_closed());
            if list.is_empty() {
                map.remove(&id);
            }
        }
    }

    /// Sagas with at least one registered waiter.
    pub fn len(&self) -> usize {
        self.map.lock().expect("waiters lock").len()
    }

    pub fn finished(&self, id: SagaId, state: SagaState) {
        let list = self.map.lock().expect("waiters lock").remove(&id);
        for w in list.into_iter().flatten() {
            let _ = w.send(state);
        }
    }
}
