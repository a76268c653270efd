//! The barrier's anomalies on the balance participant, checked on the books (not just
//! the replies) against a real SQLite file.

mod common;

use common::{command, eur, rejected, run, spawn_db};
use kessai_messages::payment::BALANCE;
use kessai_messages::{Operation, Outcome, SagaId};
use kessai_migrations::Service;
use kessai_participants::balance::WalletSeed;
use kessai_participants::sdk::barrier::{CANCELLED_BEFORE_TRY, EMPTY_CANCEL};
use kessai_participants::{
    BalanceParticipant, BusinessError, Effect, Error, Participant, barrier_records, handle_command,
};
use sea_orm::{DatabaseConnection, TransactionTrait};
use serde_json::json;

const OPENING: i64 = 10_000;

async fn setup() -> (tempfile::TempDir, DatabaseConnection) {
    let (dir, db) = spawn_db(Service::Balance).await;
    let seeded = BalanceParticipant::seed(
        &db,
        ["acct-1", "acct-2"].map(|id| WalletSeed {
            account_id: id.into(),
            currency: eur(),
            opening: OPENING,
        }),
    )
    .await
    .unwrap();
    assert_eq!(seeded, 2);
    (dir, db)
}

fn hold(amount: i64) -> serde_json::Value {
    json!({"account_id": "acct-1", "amount": amount, "currency": "EUR"})
}

fn cmd(saga: SagaId, op: Operation, amount: i64) -> kessai_messages::Envelope {
    command(BALANCE, saga, 0, op, 1, hold(amount))
}

/// (available, frozen) of acct-1.
async fn wallet(db: &DatabaseConnection) -> (i64, i64) {
    let w = BalanceParticipant::wallet(db, "acct-1").await.unwrap().unwrap();
    (w.available, w.frozen)
}

#[tokio::test]
async fn try_confirm_moves_money_once() {
    let (_dir, db) = setup().await;
    let p = BalanceParticipant;
    let saga = SagaId::new();
    assert_eq!(run(&p, &db, &cmd(saga, Operation::Try, 300)).await, Outcome::Ok);
    assert_eq!(wallet(&db).await, (OPENING - 300, 300));
    assert_eq!(run(&p, &db, &cmd(saga, Operation::Confirm, 300)).await, Outcome::Ok);
    assert_eq!(wallet(&db).await, (OPENING - 300, 0));

    let audit = BalanceParticipant::audit(&db).await.unwrap();
    assert_eq!(audit.moved, 300);
    assert_eq!(audit.reserved, 0);
    assert_eq!(audit.effects[&saga], Effect::Committed(300));
    assert_eq!(audit.barrier_records, 2);
    assert!(audit.is_consistent());
}

#[tokio::test]
async fn duplicate_try_freezes_once() {
    let (_dir, db) = setup().await;
    let p = BalanceParticipant;
    let saga = SagaId::new();
    for _ in 0..3 {
        assert_eq!(run(&p, &db, &cmd(saga, Operation::Try, 300)).await, Outcome::Ok);
    }
    assert_eq!(wallet(&db).await, (OPENING - 300, 300));
    let audit = BalanceParticipant::audit(&db).await.unwrap();
    assert_eq!(audit.effects[&saga], Effect::Reserved(300));
    assert_eq!(audit.barrier_records, 1);
}

#[tokio::test]
async fn duplicate_confirm_deducts_once() {
    let (_dir, db) = setup().await;
    let p = BalanceParticipant;
    let saga = SagaId::new();
    run(&p, &db, &cmd(saga, Operation::Try, 300)).await;
    for _ in 0..3 {
        assert_eq!(run(&p, &db, &cmd(saga, Operation::Confirm, 300)).await, Outcome::Ok);
    }
    assert_eq!(wallet(&db).await, (OPENING - 300, 0));
    let audit = BalanceParticipant::audit(&db).await.unwrap();
    assert_eq!(audit.moved, 300);
    assert!(audit.is_consistent());
}

#[tokio::test]
async fn confirm_uses_the_frozen_amount_not_the_payload() {
    let (_dir, db) = setup().await;
    let p = BalanceParticipant;
    let saga = SagaId::new();
    run(&p, &db, &cmd(saga, Operation::Try, 300)).await;
    assert_eq!(run(&p, &db, &cmd(saga, Operation::Confirm, 9_999)).await, Outcome::Ok);
    assert_eq!(wallet(&db).await, (OPENING - 300, 0));
}

#[tokio::test]
async fn duplicate_cancel_releases_once() {
    let (_dir, db) = setup().await;
    let p = BalanceParticipant;
    let saga = SagaId::new();
    run(&p, &db, &cmd(saga, Operation::Try, 300)).await;
    // A second saga's freeze on the same wallet must survive the repeated cancels.
    let other = SagaId::new();
    run(&p, &db, &cmd(other, Operation::Try, 200)).await;
    for _ in 0..3 {
        assert_eq!(run(&p, &db, &cmd(saga, Operation::Cancel, 300)).await, Outcome::Ok);
    }
    assert_eq!(wallet(&db).await, (OPENING - 200, 200));
    let audit = BalanceParticipant::audit(&db).await.unwrap();
    assert_eq!(audit.effects[&saga], Effect::Released(300));
    assert_eq!(audit.effects[&other], Effect::Reserved(200));
    assert_eq!(audit.moved, 0);
    assert!(audit.is_consistent());
}

#[tokio::test]
async fn empty_cancel_succeeds_without_effect_and_is_recorded() {
    let (_dir, db) = setup().await;
    let p = BalanceParticipant;
    let saga = SagaId::new();
    assert_eq!(run(&p, &db, &cmd(saga, Operation::Cancel, 300)).await, Outcome::Ok);
    assert_eq!(wallet(&db).await, (OPENING, 0));

    let records = barrier_records(&db, saga).await.unwrap();
    let cancel = records.iter().find(|r| r.operation == Operation::Cancel).unwrap();
    assert_eq!(cancel.outcome, Outcome::Ok);
    assert_eq!(cancel.note.as_deref(), Some(EMPTY_CANCEL));
    assert!(!cancel.took_effect());
    let tried = records.iter().find(|r| r.operation == Operation::Try).unwrap();
    assert_eq!(tried.outcome, Outcome::rejected(CANCELLED_BEFORE_TRY));
    assert!(BalanceParticipant::audit(&db).await.unwrap().effects.is_empty());
}

#[tokio::test]
async fn try_after_cancel_is_rejected_without_effect() {
    let (_dir, db) = setup().await;
    let p = BalanceParticipant;
    let saga = SagaId::new();
    run(&p, &db, &cmd(saga, Operation::Cancel, 300)).await;
    for _ in 0..2 {
        let outcome = run(&p, &db, &cmd(saga, Operation::Try, 300)).await;
        assert_eq!(rejected(&outcome), Some(CANCELLED_BEFORE_TRY));
    }
    assert_eq!(wallet(&db).await, (OPENING, 0));
    let audit = BalanceParticipant::audit(&db).await.unwrap();
    assert!(audit.effects.is_empty());
    // And the hanging try can never be confirmed.
    let confirm = run(&p, &db, &cmd(saga, Operation::Confirm, 300)).await;
    assert!(matches!(confirm, Outcome::Retryable { .. }));
    assert_eq!(wallet(&db).await, (OPENING, 0));
}

#[tokio::test]
async fn insufficient_funds_is_rejected_and_replayed() {
    let (_dir, db) = setup().await;
    let p = BalanceParticipant;
    let saga = SagaId::new();
    for _ in 0..2 {
        let outcome = run(&p, &db, &cmd(saga, Operation::Try, OPENING + 1)).await;
        assert_eq!(rejected(&outcome), Some("insufficient funds"));
    }
    assert_eq!(wallet(&db).await, (OPENING, 0));
    // Cancel after a rejected try: Ok, no effect.
    assert_eq!(run(&p, &db, &cmd(saga, Operation::Cancel, 1)).await, Outcome::Ok);
    assert_eq!(wallet(&db).await, (OPENING, 0));
    let audit = BalanceParticipant::audit(&db).await.unwrap();
    assert!(audit.effects.is_empty());
    assert_eq!(audit.barrier_records, 2);
}

#[tokio::test]
async fn unknown_account_and_currency_mismatch_are_rejected() {
    let (_dir, db) = setup().await;
    let p = BalanceParticipant;
    let unknown = command(
        BALANCE,
        SagaId::new(),
        0,
        Operation::Try,
        1,
        json!({"account_id": "nope", "amount": 5, "currency": "EUR"}),
    );
    let outcome = run(&p, &db, &unknown).await;
    assert_eq!(rejected(&outcome), Some("unknown account nope"));
    let usd = command(
        BALANCE,
        SagaId::new(),
        0,
        Operation::Try,
        1,
        json!({"account_id": "acct-1", "amount": 5, "currency": "USD"}),
    );
    let outcome = run(&p, &db, &usd).await;
    assert!(rejected(&outcome).unwrap().contains("currency mismatch"), "{outcome:?}");
    assert_eq!(wallet(&db).await, (OPENING, 0));
}

#[tokio::test]
async fn confirm_without_try_is_retryable_and_not_recorded() {
    let (_dir, db) = setup().await;
    let p = BalanceParticipant;
    let saga = SagaId::new();
    let outcome = run(&p, &db, &cmd(saga, Operation::Confirm, 300)).await;
    assert!(matches!(outcome, Outcome::Retryable { .. }));
    assert!(barrier_records(&db, saga).await.unwrap().is_empty());
    // The try that was late still works, and so does the resent confirm.
    assert_eq!(run(&p, &db, &cmd(saga, Operation::Try, 300)).await, Outcome::Ok);
    assert_eq!(run(&p, &db, &cmd(saga, Operation::Confirm, 300)).await, Outcome::Ok);
    assert_eq!(wallet(&db).await, (OPENING - 300, 0));
}

#[tokio::test]
async fn cancel_after_confirm_is_rejected_and_confirm_after_cancel_too() {
    let (_dir, db) = setup().await;
    let p = BalanceParticipant;
    let confirmed = SagaId::new();
    run(&p, &db, &cmd(confirmed, Operation::Try, 300)).await;
    run(&p, &db, &cmd(confirmed, Operation::Confirm, 300)).await;
    let outcome = run(&p, &db, &cmd(confirmed, Operation::Cancel, 300)).await;
    assert_eq!(rejected(&outcome), Some("already confirmed"));

    let cancelled = SagaId::new();
    run(&p, &db, &cmd(cancelled, Operation::Try, 100)).await;
    run(&p, &db, &cmd(cancelled, Operation::Cancel, 100)).await;
    let outcome = run(&p, &db, &cmd(cancelled, Operation::Confirm, 100)).await;
    assert_eq!(rejected(&outcome), Some("already cancelled"));

    assert_eq!(wallet(&db).await, (OPENING - 300, 0));
    let records = barrier_records(&db, cancelled).await.unwrap();
    assert!(
        !records
            .iter()
            .any(|r| r.operation == Operation::Confirm && r.outcome == Outcome::Ok),
        "no confirm may take effect after a cancel: {records:?}"
    );
    assert!(BalanceParticipant::audit(&db).await.unwrap().is_consistent());
}

#[tokio::test]
async fn rejection_rolls_back_partial_writes() {
    // A participant that writes, then refuses: the savepoint must undo the write.
    struct WritesThenRejects;

    #[kessai_participants::sdk::async_trait]
    impl Participant for WritesThenRejects {
        type Payload = kessai_messages::payment::WalletHold;
        fn name(&self) -> &'static str {
            BALANCE
        }
        async fn try_(
            &self,
            txn: &sea_orm::DatabaseTransaction,
            branch: &kessai_participants::BranchRef,
            p: &Self::Payload,
        ) -> Result<(), BusinessError> {
            BalanceParticipant.try_(txn, branch, p).await?;
            Err(BusinessError::rejected("changed my mind"))
        }
        async fn confirm(
            &self,
            _: &sea_orm::DatabaseTransaction,
            _: &kessai_participants::BranchRef,
            _: &Self::Payload,
        ) -> Result<(), BusinessError> {
            Ok(())
        }
        async fn cancel(
            &self,
            _: &sea_orm::DatabaseTransaction,
            _: &kessai_participants::BranchRef,
            _: &Self::Payload,
        ) -> Result<(), BusinessError> {
            Ok(())
        }
    }

    let (_dir, db) = setup().await;
    let saga = SagaId::new();
    let outcome = run(&WritesThenRejects, &db, &cmd(saga, Operation::Try, 300)).await;
    assert_eq!(rejected(&outcome), Some("changed my mind"));
    assert_eq!(wallet(&db).await, (OPENING, 0));
    assert!(BalanceParticipant::audit(&db).await.unwrap().effects.is_empty());
    // The refusal is what a redelivery gets, even from the real participant.
    let outcome = run(&BalanceParticipant, &db, &cmd(saga, Operation::Try, 300)).await;
    assert_eq!(rejected(&outcome), Some("changed my mind"));
}

#[tokio::test]
async fn a_confirm_that_writes_then_refuses_is_undone_recorded_and_replayed() {
    // Confirms for real, then refuses with a blank reason: the refusal must undo the
    // confirm's writes but nothing else of the transaction, be recorded under a reason
    // that is not blank, and be what every redelivery gets.
    struct ConfirmsThenRefuses;

    #[kessai_participants::sdk::async_trait]
    impl Participant for ConfirmsThenRefuses {
        type Payload = kessai_messages::payment::WalletHold;
        fn name(&self) -> &'static str {
            BALANCE
        }
        async fn try_(
            &self,
            txn: &sea_orm::DatabaseTransaction,
            branch: &kessai_participants::BranchRef,
            p: &Self::Payload,
        ) -> Result<(), BusinessError> {
            BalanceParticipant.try_(txn, branch, p).await
        }
        async fn confirm(
            &self,
            txn: &sea_orm::DatabaseTransaction,
            branch: &kessai_participants::BranchRef,
            p: &Self::Payload,
        ) -> Result<(), BusinessError> {
            BalanceParticipant.confirm(txn, branch, p).await?;
            Err(BusinessError::rejected(" "))
        }
        async fn cancel(
            &self,
            txn: &sea_orm::DatabaseTransaction,
            branch: &kessai_participants::BranchRef,
            p: &Self::Payload,
        ) -> Result<(), BusinessError> {
            BalanceParticipant.cancel(txn, branch, p).await
        }
    }

    let (_dir, db) = setup().await;
    let (refused, other) = (SagaId::new(), SagaId::new());
    run(&BalanceParticipant, &db, &cmd(refused, Operation::Try, 300)).await;
    let txn = db.begin().await.unwrap();
    let tried = handle_command(&BalanceParticipant, &txn, &cmd(other, Operation::Try, 200)).await;
    assert_eq!(tried.unwrap(), Outcome::Ok);
    let confirm = cmd(refused, Operation::Confirm, 300);
    let outcome = handle_command(&ConfirmsThenRefuses, &txn, &confirm).await.unwrap();
    assert_eq!(rejected(&outcome), Some("rejected by balance"));
    txn.commit().await.unwrap();
    // The other saga's freeze stands; the refused confirm left its freeze reserved.
    assert_eq!(wallet(&db).await, (OPENING - 500, 500));
    let audit = BalanceParticipant::audit(&db).await.unwrap();
    assert_eq!(audit.effects[&refused], Effect::Reserved(300));
    assert_eq!(audit.effects[&other], Effect::Reserved(200));
    let records = barrier_records(&db, refused).await.unwrap();
    let recorded = records.iter().find(|r| r.operation == Operation::Confirm).unwrap();
    assert_eq!(recorded.outcome, Outcome::rejected("rejected by balance"));
    // A redelivery replays the refusal, even to the real participant...
    let outcome = run(&BalanceParticipant, &db, &confirm).await;
    assert_eq!(rejected(&outcome), Some("rejected by balance"));
    assert_eq!(wallet(&db).await, (OPENING - 500, 500));
    // ...and the refused confirm does not stand in the way of the cancel.
    assert_eq!(
        run(&BalanceParticipant, &db, &cmd(refused, Operation::Cancel, 300)).await,
        Outcome::Ok
    );
    assert_eq!(wallet(&db).await, (OPENING - 200, 200));
    assert!(BalanceParticipant::audit(&db).await.unwrap().is_consistent());
}

#[tokio::test]
async fn retryable_business_error_records_nothing() {
    struct Flaky;

    #[kessai_participants::sdk::async_trait]
    impl Participant for Flaky {
        type Payload = kessai_messages::payment::WalletHold;
        fn name(&self) -> &'static str {
            BALANCE
        }
        async fn try_(
            &self,
            txn: &sea_orm::DatabaseTransaction,
            branch: &kessai_participants::BranchRef,
            p: &Self::Payload,
        ) -> Result<(), BusinessError> {
            BalanceParticipant.try_(txn, branch, p).await?;
            Err(BusinessError::retryable("risk engine timed out"))
        }
        async fn confirm(
            &self,
            _: &sea_orm::DatabaseTransaction,
            _: &kessai_participants::BranchRef,
            _: &Self::Payload,
        ) -> Result<(), BusinessError> {
            Ok(())
        }
        async fn cancel(
            &self,
            _: &sea_orm::DatabaseTransaction,
            _: &kessai_participants::BranchRef,
            _: &Self::Payload,
        ) -> Result<(), BusinessError> {
            Ok(())
        }
    }

    let (_dir, db) = setup().await;
    let saga = SagaId::new();
    let txn = db.begin().await.unwrap();
    let err = handle_command(&Flaky, &txn, &cmd(saga, Operation::Try, 300))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Retryable(_)) && err.is_retryable());
    // The transaction is still usable after the failed command.
    assert_eq!(
        handle_command(&BalanceParticipant, &txn, &cmd(SagaId::new(), Operation::Try, 5))
            .await
            .unwrap(),
        Outcome::Ok
    );
    txn.commit().await.unwrap();
    assert!(barrier_records(&db, saga).await.unwrap().is_empty());
    assert_eq!(wallet(&db).await, (OPENING - 5, 5));
    // The redelivery then succeeds normally.
    assert_eq!(
        run(&BalanceParticipant, &db, &cmd(saga, Operation::Try, 300)).await,
        Outcome::Ok
    );
    assert_eq!(wallet(&db).await, (OPENING - 305, 305));
}

#[tokio::test]
async fn invalid_commands_are_permanent_errors() {
    let (_dir, db) = setup().await;
    let p = BalanceParticipant;
    let txn = db.begin().await.unwrap();
    let saga = SagaId::new();
    let wrong_participant = command("bank", saga, 0, Operation::Try, 1, hold(1));
    let bad_payload = command(
        BALANCE,
        saga,
        0,
        Operation::Try,
        1,
        json!({"account_id": "acct-1", "amount": -1, "currency": "EUR"}),
    );
    let reply = cmd(saga, Operation::Try, 1).reply(BALANCE, Outcome::Ok);
    for envelope in [wrong_participant, bad_payload, reply] {
        let err = handle_command(&p, &txn, &envelope).await.unwrap_err();
        assert!(matches!(err, Error::Invalid(_)), "{err:?}");
        assert!(!err.is_retryable());
    }
    txn.commit().await.unwrap();
    assert!(barrier_records(&db, saga).await.unwrap().is_empty());
}

#[tokio::test]
async fn many_commands_in_one_transaction() {
    // What the runtime's group commit does: several sagas in one transaction.
    let (_dir, db) = setup().await;
    let p = BalanceParticipant;
    let sagas: Vec<SagaId> = (0..20).map(|_| SagaId::new()).collect();
    let txn = db.begin().await.unwrap();
    for (i, saga) in sagas.iter().enumerate() {
        let amount = if i == 7 { OPENING * 2 } else { 10 };
        handle_command(&p, &txn, &cmd(*saga, Operation::Try, amount))
            .await
            .unwrap();
    }
    txn.commit().await.unwrap();
    assert_eq!(wallet(&db).await, (OPENING - 190, 190));
    let audit = BalanceParticipant::audit(&db).await.unwrap();
    assert_eq!(audit.effects.len(), 19);
    assert_eq!(audit.reserved, 190);
    assert!(audit.is_consistent());
}

#[tokio::test]
async fn seeding_is_idempotent_and_demo_is_complete() {
    let (_dir, db) = spawn_db(Service::Balance).await;
    assert_eq!(BalanceParticipant::seed_demo(&db).await.unwrap(), 10_000);
    assert_eq!(BalanceParticipant::seed_demo(&db).await.unwrap(), 0);
    let w = BalanceParticipant::wallet(&db, "acct-10000").await.unwrap().unwrap();
    assert_eq!(w.currency, "EUR");
    assert_eq!(w.available, kessai_participants::ledger::DEMO_BALANCE);
    let audit = BalanceParticipant::audit(&db).await.unwrap();
    assert_eq!((audit.moved, audit.reserved, audit.barrier_records), (0, 0, 0));
}
