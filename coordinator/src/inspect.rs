//! What an operator asks the coordinator's database besides one saga or a filtered
//! list: which sagas a payment id names, and how many sagas are in each state.
//!
//! Both read the `sagas` table only. A payment id is found through the unique index on
//! the idempotency key — an exact match on each key the payment may be stored under
//! (unscoped, or scoped to one of the API clients), never a pattern scan.

use crate::Error;
use crate::engine::{Coordinator, scoped_key};
use crate::machine::SagaState;
use crate::store::entities::saga;
use crate::store::{SagaFilter, SagaSummary};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QuerySelect};

/// How many sagas are in each state; `stuck` counts the flagged ones, whatever their
/// state (a stuck saga is also counted in its state).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct StateCounts {
    pub trying: u64,
    pub confirming: u64,
    pub cancelling: u64,
    pub confirmed: u64,
    pub cancelled: u64,
    pub stuck: u64,
}

impl StateCounts {
    fn add(&mut self, state: SagaState, n: u64) {
        let slot = match state {
            SagaState::Trying => &mut self.trying,
            SagaState::Confirming => &mut self.confirming,
            SagaState::Cancelling => &mut self.cancelling,
            SagaState::Confirmed => &mut self.confirmed,
            SagaState::Cancelled => &mut self.cancelled,
        };
        *slot += n;
    }
}

/// The keys a payment's saga may be stored under: unscoped (submitted in-process),
/// then scoped to each of `clients` (the API's token names). The key format is the
/// payment definition's (`payment:<payment_id>`), scoped as every submission is.
pub fn payment_keys<'a>(payment_id: &str, clients: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let key = format!("payment:{payment_id}");
    std::iter::once(key.clone())
        .chain(clients.into_iter().map(|c| scoped_key(Some(c), &key)))
        .collect()
}

/// Saga counts by state and the stuck count, in one `GROUP BY state, stuck` query.
pub async fn state_counts<C: ConnectionTrait>(db: &C) -> Result<StateCounts, Error> {
    let rows: Vec<(String, bool, i64)> = saga::Entity::find()
        .select_only()
        .column(saga::Column::State)
        .column(saga::Column::Stuck)
        .column_as(saga::Column::Id.count(), "n")
        .group_by(saga::Column::State)
        .group_by(saga::Column::Stuck)
        .into_tuple()
        .all(db)
        .await?;
    let mut counts = StateCounts::default();
    for (state, stuck, n) in rows {
        let n = n.max(0) as u64;
        let state = SagaState::parse(&state).ok_or_else(|| Error::Corrupt(format!("saga state {state:?}")))?;
        counts.add(state, n);
        if stuck {
            counts.stuck += n;
        }
    }
    Ok(counts)
}

impl Coordinator {
    /// The sagas of payment `payment_id` that pass `filter`, newest first, at most
    /// `limit`: the one submitted in-process and the one of each of `clients` (the
    /// API's client names), found by exact idempotency key.
    pub async fn sagas_of_payment(
        &self,
        payment_id: &str,
        clients: &[&str],
        filter: &SagaFilter,
        limit: u64,
    ) -> Result<Vec<SagaSummary>, Error> {
        let filter = SagaFilter {
            idempotency_keys: Some(payment_keys(payment_id, clients.iter().copied())),
            ..filter.clone()
        };
        crate::store::list(self.db(), &filter, limit).await
    }

    /// How many sagas are in each state, and how many are stuck.
    pub async fn state_counts(&self) -> Result<StateCounts, Error> {
        state_counts(self.db()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definitions::PaymentSaga;
    use kessai_messages::{Currency, Payment, SagaId};
    use kessai_migrations::{CoordinatorMigrator, MigratorTrait};
    use sea_orm::{ActiveModelTrait, DatabaseConnection, Set};

    async fn database(dir: &tempfile::TempDir) -> DatabaseConnection {
        let url = kessai_migrations::sqlite_url(&dir.path().join("coordinator.db"));
        let db = kessai_migrations::connect(&url, 1).await.unwrap();
        CoordinatorMigrator::up(&db, None).await.unwrap();
        db
    }

    async fn row(
        db: &DatabaseConnection,
        key: Option<&str>,
        client: Option<&str>,
        state: SagaState,
        stuck: bool,
    ) -> SagaId {
        let id = SagaId::new();
        saga::ActiveModel {
            id: Set(id.to_string()),
            kind: Set("payment".into()),
            idempotency_key: Set(key.map(str::to_owned)),
            state: Set(state.as_str().into()),
            version: Set(1),
            stuck: Set(stuck),
            try_deadline_ms: Set(10_000),
            wake_at_ms: Set((!state.is_terminal()).then_some(5_000)),
            created_at_ms: Set(1_000),
            updated_at_ms: Set(2_000),
            finished_at_ms: Set(state.is_terminal().then_some(2_000)),
            request: Set("{}".into()),
            client: Set(client.map(str::to_owned)),
            // The nullable rest (reason, trace) stays unset.
            ..Default::default()
        }
        .insert(db)
        .await
        .unwrap();
        id
    }

    #[test]
    fn payment_keys_are_the_ones_submissions_store() {
        let payment = Payment {
            payment_id: "p-7".into(),
            account_id: "a".into(),
            card_id: "c".into(),
            amount: 1,
            currency: Currency::new("EUR").unwrap(),
            settlement_account: "s".into(),
        };
        let planned = PaymentSaga::plan_payment(&payment).unwrap().idempotency_key.unwrap();
        let keys = payment_keys("p-7", ["checkout", "ops"]);
        assert_eq!(keys[0], planned);
        assert_eq!(keys[1], scoped_key(Some("checkout"), &planned));
        assert_eq!(keys, ["payment:p-7", "checkout/payment:p-7", "ops/payment:p-7"]);
    }

    #[tokio::test]
    async fn a_payment_id_finds_its_sagas_by_exact_key() {
        let dir = tempfile::tempdir().unwrap();
        let db = database(&dir).await;
        let mine = row(
            &db,
            Some("checkout/payment:p-1"),
            Some("checkout"),
            SagaState::Cancelled,
            false,
        )
        .await;
        let in_process = row(&db, Some("payment:p-1"), None, SagaState::Confirmed, false).await;
        // Neither a longer id, another client's other payment nor a generic key match.
        row(
            &db,
            Some("checkout/payment:p-10"),
            Some("checkout"),
            SagaState::Confirmed,
            false,
        )
        .await;
        row(
            &db,
            Some("checkout/generic:p-1"),
            Some("checkout"),
            SagaState::Confirmed,
            false,
        )
        .await;
        row(
            &db,
            Some("stranger/payment:p-1"),
            Some("stranger"),
            SagaState::Confirmed,
            false,
        )
        .await;
        let of_payment = |keys: Vec<String>, filter: SagaFilter| SagaFilter {
            idempotency_keys: Some(keys),
            ..filter
        };
        let keys = payment_keys("p-1", ["checkout", "ops"]);
        let list = |filter: SagaFilter| {
            let db = db.clone();
            async move { crate::store::list(&db, &filter, 50).await.unwrap() }
        };
        let found = list(of_payment(keys.clone(), SagaFilter::default())).await;
        let ids: Vec<SagaId> = found.iter().map(|s| s.id).collect();
        assert_eq!(ids, [in_process, mine], "newest first");
        assert_eq!(found[1].state, SagaState::Cancelled);
        assert_eq!(found[1].client.as_deref(), Some("checkout"));
        assert!(list(of_payment(Vec::new(), SagaFilter::default())).await.is_empty());

        let cancelled = SagaFilter {
            state: Some(SagaState::Cancelled),
            ..SagaFilter::default()
        };
        let only: Vec<SagaId> = list(of_payment(keys.clone(), cancelled))
            .await
            .iter()
            .map(|s| s.id)
            .collect();
        assert_eq!(only, [mine]);
        let page = SagaFilter {
            before: Some(in_process),
            ..SagaFilter::default()
        };
        let next: Vec<SagaId> = list(of_payment(keys, page)).await.iter().map(|s| s.id).collect();
        assert_eq!(next, [mine], "the cursor skips the newer one and keeps the older");
        db.close().await.unwrap();
    }

    #[tokio::test]
    async fn counts_by_state_with_the_stuck_ones() {
        let dir = tempfile::tempdir().unwrap();
        let db = database(&dir).await;
        assert_eq!(state_counts(&db).await.unwrap(), StateCounts::default());
        for (state, stuck) in [
            (SagaState::Trying, false),
            (SagaState::Confirming, true),
            (SagaState::Confirming, false),
            (SagaState::Cancelling, true),
            (SagaState::Confirmed, false),
            (SagaState::Confirmed, false),
            (SagaState::Confirmed, false),
            (SagaState::Cancelled, false),
        ] {
            row(&db, None, None, state, stuck).await;
        }
        let counts = state_counts(&db).await.unwrap();
        assert_eq!(
            counts,
            StateCounts {
                trying: 1,
                confirming: 2,
                cancelling: 1,
                confirmed: 3,
                cancelled: 1,
                stuck: 2,
            }
        );
        assert_eq!(
            serde_json::to_value(counts).unwrap(),
            serde_json::json!({"trying": 1, "confirming": 2, "cancelling": 1, "confirmed": 3, "cancelled": 1, "stuck": 2})
        );
        db.close().await.unwrap();
    }
}
