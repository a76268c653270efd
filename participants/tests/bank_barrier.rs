//! The bank's ledger through the barrier: frozen accounts, reservation, execution,
//! voiding, and the key anomalies, checked on the account rows.

mod common;

use common::{Books, assert_settled, command, rejected};
use kessai_messages::payment::{BANK, DEFAULT_SETTLEMENT_ACCOUNT};
use kessai_messages::{Envelope, Operation, Outcome, SagaId};
use kessai_migrations::Service;
use kessai_participants::ledger::{DEMO_SETTLEMENT_BALANCE, FROZEN_SETTLEMENT_ACCOUNT};
use kessai_participants::{BankParticipant, Effect, barrier_records};
use sea_orm::DatabaseConnection;
use serde_json::json;

async fn setup() -> Books<BankParticipant> {
    let books = Books::open(Service::Bank, BankParticipant, cmd).await;
    assert_eq!(BankParticipant::seed_demo(&books.db).await.unwrap(), 2);
    books
}

fn cmd_on(account: &str, saga: SagaId, op: Operation, amount: i64) -> Envelope {
    command(
        BANK,
        saga,
        2,
        op,
        1,
        json!({"settlement_account": account, "amount": amount, "currency": "EUR"}),
    )
}

fn cmd(saga: SagaId, op: Operation, amount: i64) -> Envelope {
    cmd_on(DEFAULT_SETTLEMENT_ACCOUNT, saga, op, amount)
}

/// (balance, reserved) of settlement-main.
async fn account(db: &DatabaseConnection) -> (i64, i64) {
    let a = BankParticipant::account(db, DEFAULT_SETTLEMENT_ACCOUNT)
        .await
        .unwrap()
        .unwrap();
    (a.balance, a.reserved)
}

#[tokio::test]
async fn reserve_execute_and_void() {
    let books = setup().await;
    let (a, b) = (SagaId::new(), SagaId::new());
    assert_eq!(books.run(a, Operation::Try, 700).await, Outcome::Ok);
    assert_eq!(books.run(b, Operation::Try, 300).await, Outcome::Ok);
    assert_eq!(account(&books.db).await, (DEMO_SETTLEMENT_BALANCE, 1_000));
    for _ in 0..2 {
        assert_eq!(books.run(a, Operation::Confirm, 700).await, Outcome::Ok);
        assert_eq!(books.run(b, Operation::Cancel, 300).await, Outcome::Ok);
    }
    assert_eq!(account(&books.db).await, (DEMO_SETTLEMENT_BALANCE - 700, 0));
    let audit = BankParticipant::audit(&books.db).await.unwrap();
    assert_settled(&audit, 700);
    assert_eq!(audit.effects[&a], Effect::Committed(700));
    assert_eq!(audit.effects[&b], Effect::Released(300));
}

#[tokio::test]
async fn frozen_account_rejects_the_try_and_cancel_is_a_no_op() {
    let books = setup().await;
    let saga = SagaId::new();
    let outcome = books
        .run_envelope(&cmd_on(FROZEN_SETTLEMENT_ACCOUNT, saga, Operation::Try, 50))
        .await;
    assert_eq!(
        rejected(&outcome),
        Some("settlement account settlement-frozen is frozen")
    );
    assert_eq!(
        books
            .run_envelope(&cmd_on(FROZEN_SETTLEMENT_ACCOUNT, saga, Operation::Cancel, 50))
            .await,
        Outcome::Ok
    );
    let frozen = BankParticipant::account(&books.db, FROZEN_SETTLEMENT_ACCOUNT)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((frozen.balance, frozen.reserved), (DEMO_SETTLEMENT_BALANCE, 0));
    let audit = BankParticipant::audit(&books.db).await.unwrap();
    assert!(audit.effects.is_empty());
    assert_eq!(audit.moved, 0);
}

#[tokio::test]
async fn insufficient_settlement_funds_counts_reservations() {
    let books = setup().await;
    let big = DEMO_SETTLEMENT_BALANCE - 10;
    assert_eq!(books.run(SagaId::new(), Operation::Try, big).await, Outcome::Ok);
    let short = books.run(SagaId::new(), Operation::Try, 11).await;
    assert!(rejected(&short).unwrap().starts_with("insufficient settlement funds"));
    assert_eq!(account(&books.db).await, (DEMO_SETTLEMENT_BALANCE, big));
}

#[tokio::test]
async fn anti_hanging_and_no_confirm_after_cancel() {
    let books = setup().await;
    let saga = SagaId::new();
    books.cancel_then_late_try(saga, 500, 1).await;
    let confirm = books.run(saga, Operation::Confirm, 500).await;
    assert!(matches!(confirm, Outcome::Retryable { .. }));
    assert_eq!(account(&books.db).await, (DEMO_SETTLEMENT_BALANCE, 0));
    let records = barrier_records(&books.db, saga).await.unwrap();
    assert!(records.iter().all(|r| r.operation != Operation::Confirm));
    assert!(BankParticipant::audit(&books.db).await.unwrap().effects.is_empty());
}

#[tokio::test]
async fn frozen_after_try_still_settles() {
    // Freezing an account stops new transfers, not ones already reserved.
    let books = setup().await;
    let saga = SagaId::new();
    assert_eq!(books.run(saga, Operation::Try, 40).await, Outcome::Ok);
    assert!(
        BankParticipant::set_frozen(&books.db, DEFAULT_SETTLEMENT_ACCOUNT, true)
            .await
            .unwrap()
    );
    assert_eq!(books.run(saga, Operation::Confirm, 40).await, Outcome::Ok);
    assert_eq!(account(&books.db).await, (DEMO_SETTLEMENT_BALANCE - 40, 0));
}
