//! A fourth participant — a loyalty-points ledger that exists only in this test — joins
//! through the participant registry alone: its own module (below), its own migration,
//! one `Registry::with` line. Generic sagas across all four participants then run
//! through the in-process chaos harness (message drops, duplicates, delays, process
//! kills), and every invariant is checked against all four participants' books.

use async_trait::async_trait;
use kessai_harness::chaos::{self, ChaosOptions, Workload};
use kessai_messages::payment::{BranchPayload, PaymentError};
use kessai_migrations::sea_orm_migration::prelude::*;
use kessai_migrations::sea_orm_migration::{MigrationTrait, MigratorTrait};
use kessai_participants::ledger::{Audit, HoldRow, HoldState};
use kessai_participants::sdk::barrier::count_barrier_records;
use kessai_participants::{BranchRef, BusinessError, Error, Participant, Registrable, Registry};
use rand::Rng;
use sea_orm::{ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, FromQueryResult, Statement};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

const POINTS: &str = "points";
const MEMBERS: u32 = 100;
const OPENING: i64 = 1_000_000_000;

/// `points`: hold `points` of member `member_id`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PointsAward {
    member_id: String,
    points: i64,
}

impl BranchPayload for PointsAward {
    fn validate(&self) -> Result<(), PaymentError> {
        if self.member_id.trim().is_empty() {
            return Err(PaymentError::Empty("member_id"));
        }
        if self.points <= 0 {
            return Err(PaymentError::NonPositiveAmount(self.points));
        }
        Ok(())
    }
}

/// The points ledger: try moves points from `available` to `held` and records a hold;
/// confirm spends the held points; cancel gives them back.
#[derive(Clone, Copy, Debug)]
struct PointsLedger;

fn stmt(sql: &str, values: Vec<sea_orm::Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Sqlite, sql, values)
}

impl PointsLedger {
    /// Moves a reserved hold to `to`, and the member's held points with it.
    async fn settle(txn: &DatabaseTransaction, branch: &BranchRef, to: HoldState) -> Result<(), BusinessError> {
        let (state, back_to_available) = match to {
            HoldState::Committed => ("committed", 0i64),
            _ => ("released", 1i64),
        };
        let hold = txn
            .query_one_raw(stmt(
                "UPDATE points_holds SET state = ? WHERE saga_id = ? AND branch_id = ? AND state = 'reserved' \
                 RETURNING member_id, amount",
                vec![state.into(), branch.saga_key().into(), branch.branch_key().into()],
            ))
            .await?
            .ok_or_else(|| BusinessError::rejected(format!("no reserved points hold for {branch}")))?;
        let member: String = hold.try_get("", "member_id")?;
        let amount: i64 = hold.try_get("", "amount")?;
        txn.execute_raw(stmt(
            "UPDATE points_members SET held = held - ?, available = available + ? * ? WHERE member_id = ?",
            vec![amount.into(), amount.into(), back_to_available.into(), member.into()],
        ))
        .await?;
        Ok(())
    }
}

#[async_trait]
impl Participant for PointsLedger {
    type Payload = PointsAward;

    fn name(&self) -> &'static str {
        POINTS
    }

    async fn try_(
        &self,
        txn: &DatabaseTransaction,
        branch: &BranchRef,
        payload: &PointsAward,
    ) -> Result<(), BusinessError> {
        let reserved = txn
            .execute_raw(stmt(
                "UPDATE points_members SET available = available - ?, held = held + ? \
                 WHERE member_id = ? AND available >= ?",
                vec![
                    payload.points.into(),
                    payload.points.into(),
                    payload.member_id.clone().into(),
                    payload.points.into(),
                ],
            ))
            .await?;
        if reserved.rows_affected() == 0 {
            return Err(BusinessError::rejected(format!(
                "member {} lacks {} points",
                payload.member_id, payload.points
            )));
        }
        txn.execute_raw(stmt(
            "INSERT INTO points_holds (saga_id, branch_id, member_id, amount, state) VALUES (?, ?, ?, ?, 'reserved')",
            vec![
                branch.saga_key().into(),
                branch.branch_key().into(),
                payload.member_id.clone().into(),
                payload.points.into(),
            ],
        ))
        .await?;
        Ok(())
    }

    async fn confirm(
        &self,
        txn: &DatabaseTransaction,
        branch: &BranchRef,
        _: &PointsAward,
    ) -> Result<(), BusinessError> {
        Self::settle(txn, branch, HoldState::Committed).await
    }

    async fn cancel(
        &self,
        txn: &DatabaseTransaction,
        branch: &BranchRef,
        _: &PointsAward,
    ) -> Result<(), BusinessError> {
        Self::settle(txn, branch, HoldState::Released).await
    }
}

/// The ledger's tables, after the barrier table every participant has.
struct PointsTables;

impl MigrationName for PointsTables {
    fn name(&self) -> &str {
        "m20261201_000001_points_ledger"
    }
}

#[async_trait]
impl MigrationTrait for PointsTables {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared(
            "CREATE TABLE points_members (member_id TEXT PRIMARY KEY, opening BIGINT NOT NULL, \
             available BIGINT NOT NULL CHECK (available >= 0), held BIGINT NOT NULL CHECK (held >= 0))",
        )
        .await?;
        db.execute_unprepared(
            "CREATE TABLE points_holds (saga_id TEXT NOT NULL, branch_id INTEGER NOT NULL, member_id TEXT NOT NULL, \
             amount BIGINT NOT NULL, state VARCHAR(16) NOT NULL, PRIMARY KEY (saga_id, branch_id))",
        )
        .await?;
        Ok(())
    }
}

struct PointsMigrator;

#[async_trait]
impl MigratorTrait for PointsMigrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        kessai_migrations::participants::barrier_and(PointsTables)
    }
}

fn member(i: u32) -> String {
    format!("member-{i}")
}

#[async_trait]
impl Registrable for PointsLedger {
    type Migrator = PointsMigrator;

    async fn seed_demo(db: &DatabaseConnection) -> Result<u64, Error> {
        let mut seeded = 0;
        for i in 1..=MEMBERS {
            seeded += db
                .execute_raw(stmt(
                    "INSERT INTO points_members (member_id, opening, available, held) VALUES (?, ?, ?, 0) \
                     ON CONFLICT (member_id) DO NOTHING",
                    vec![member(i).into(), OPENING.into(), OPENING.into()],
                ))
                .await?
                .rows_affected();
        }
        Ok(seeded)
    }

    async fn audit(db: &DatabaseConnection) -> Result<Audit, Error> {
        let holds = HoldRow::find_by_statement(stmt(
            "SELECT saga_id, branch_id, amount, state FROM points_holds",
            vec![],
        ))
        .all(db)
        .await?;
        let books = db
            .query_one_raw(stmt(
                "SELECT COALESCE(SUM(opening - available - held), 0) AS moved, COALESCE(SUM(held), 0) AS reserved \
                 FROM points_members",
                vec![],
            ))
            .await?
            .expect("an aggregate returns a row");
        let (effects, branch_effects) = Audit::collect_holds(POINTS, holds)?;
        Ok(Audit {
            participant: POINTS,
            effects,
            branch_effects,
            moved: books.try_get("", "moved")?,
            reserved: books.try_get("", "reserved")?,
            barrier_records: count_barrier_records(db).await?,
        })
    }

    fn amount(payload: &PointsAward) -> i64 {
        payload.points
    }
}

/// A generic saga across all four participants: the payment's three branches plus
/// points worth a tenth of the amount; a `fail_rate` share settles from the frozen
/// account, so the bank refuses its try and the whole saga (points too) cancels.
fn payment_with_points() -> Workload {
    Workload {
        kind: "generic",
        request: Arc::new(|rng, id, fail_rate| {
            let payment = kessai_harness::demo::random_payment(rng, id.clone(), fail_rate);
            let mut branches: Vec<serde_json::Value> = payment
                .branches()
                .into_iter()
                .map(|(participant, payload)| serde_json::json!({"participant": participant, "payload": payload}))
                .collect();
            branches.push(serde_json::json!({
                "participant": POINTS,
                "payload": {"member_id": member(rng.random_range(1..=MEMBERS)), "points": payment.amount / 10 + 1},
            }));
            serde_json::json!({"key": id, "branches": branches})
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fourth_participant_joins_through_the_registry_and_passes_the_chaos_checks() {
    let registry = Registry::reference().with(PointsLedger);
    assert_eq!(registry.names(), ["balance", "card-issuer", "bank", POINTS]);
    // Strict input: a branch the points ledger cannot read is refused at submission.
    let check = registry.branch_check();
    assert!(check(POINTS, &serde_json::json!({"member_id": "member-1", "points": 5})).is_ok());
    assert!(check(POINTS, &serde_json::json!({"member_id": "member-1", "points": -5})).is_err());
    assert!(check("loyalty", &serde_json::json!({})).is_err());

    let report = chaos::run(ChaosOptions {
        duration: Duration::from_secs(8),
        drop: 0.05,
        duplicate: 0.05,
        delay: 0.05,
        reorder: 0.02,
        kill_every: Some(Duration::from_millis(1500)),
        concurrency: 8,
        fail_rate: 0.2,
        seed: 7,
        registry,
        workload: payment_with_points(),
        ..ChaosOptions::default()
    })
    .await
    .expect("the chaos run sets up and finishes");

    assert!(report.invariants_ok, "{:#?}", report.invariants);
    assert!(report.quiesced, "not quiescent: {report:#?}");
    assert!(
        report.sagas.confirmed > 0 && report.sagas.cancelled > 0,
        "{:?}",
        report.sagas
    );
    assert!(report.faults.process_kills > 0, "{:?}", report.faults);
    // The points ledger's books were among those checked, and moved.
    let conservation = report
        .invariants
        .checks
        .iter()
        .find(|c| c.name == "conservation")
        .expect("a conservation check");
    let points_moved: i64 = conservation
        .detail
        .split([',', '(', ')'])
        .find_map(|part| part.trim().strip_prefix("points ")?.parse().ok())
        .unwrap_or_else(|| panic!("the points ledger was not audited: {}", conservation.detail));
    assert!(points_moved > 0, "{}", conservation.detail);
}
