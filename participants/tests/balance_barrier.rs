//! The barrier's anomalies on the balance participant, checked on the books (not just
//! the replies) against a real SQLite file.

mod common;

use common::{
    Books, assert_settled, balance_cmd, balance_failing_after, command, rejected, run, seed_wallets, spawn_db,
    wallet_hold,
};
use kessai_messages::payment::BALANCE;
use kessai_messages::{Envelope, Operation, Outcome, SagaId};
use kessai_migrations::Service;
use kessai_participants::sdk::barrier::{CANCELLED_BEFORE_TRY, EMPTY_CANCEL};
use kessai_participants::{BalanceParticipant, BusinessError, Effect, Error, barrier_records, handle_command};
use sea_orm::{DatabaseConnection, TransactionTrait};

const OPENING: i64 = 10_000;

/// Wallets acct-1 and acct-2, `OPENING` each; the commands hold on acct-1.
async fn setup() -> Books<BalanceParticipant> {
    let books = Books::open(Service::Balance, BalanceParticipant, cmd).await;
    assert_eq!(seed_wallets(&books.db, 2, OPENING).await, 2);
    books
}

fn cmd(saga: SagaId, op: Operation, amount: i64) -> Envelope {
    balance_cmd(saga, "acct-1", op, amount)
}

/// (available, frozen) of acct-1.
async fn wallet(db: &DatabaseConnection) -> (i64, i64) {
    common::wallet(db, "acct-1").await
}

#[tokio::test]
async fn try_confirm_moves_money_once() {
    let books = setup().await;
    let saga = SagaId::new();
    assert_eq!(books.run(saga, Operation::Try, 300).await, Outcome::Ok);
    assert_eq!(wallet(&books.db).await, (OPENING - 300, 300));
    assert_eq!(books.run(saga, Operation::Confirm, 300).await, Outcome::Ok);
    assert_eq!(wallet(&books.db).await, (OPENING - 300, 0));

    let audit = BalanceParticipant::audit(&books.db).await.unwrap();
    assert_settled(&audit, 300);
    assert_eq!(audit.effects[&saga], Effect::Committed(300));
    assert_eq!(audit.barrier_records, 2);
}

#[tokio::test]
async fn duplicate_try_freezes_once() {
    let books = setup().await;
    let saga = SagaId::new();
    books.duplicate_try(saga, 300, 3).await;
    assert_eq!(wallet(&books.db).await, (OPENING - 300, 300));
    let audit = BalanceParticipant::audit(&books.db).await.unwrap();
    assert_eq!(audit.effects[&saga], Effect::Reserved(300));
    assert_eq!(audit.barrier_records, 1);
}

#[tokio::test]
async fn duplicate_confirm_deducts_once() {
    let books = setup().await;
    let saga = SagaId::new();
    books.run(saga, Operation::Try, 300).await;
    for _ in 0..3 {
        assert_eq!(books.run(saga, Operation::Confirm, 300).await, Outcome::Ok);
    }
    assert_eq!(wallet(&books.db).await, (OPENING - 300, 0));
    let audit = BalanceParticipant::audit(&books.db).await.unwrap();
    assert_eq!(audit.moved, 300);
    assert!(audit.is_consistent());
}

#[tokio::test]
async fn confirm_uses_the_frozen_amount_not_the_payload() {
    let books = setup().await;
    let saga = SagaId::new();
    books.run(saga, Operation::Try, 300).await;
    assert_eq!(books.run(saga, Operation::Confirm, 9_999).await, Outcome::Ok);
    assert_eq!(wallet(&books.db).await, (OPENING - 300, 0));
}

#[tokio::test]
async fn duplicate_cancel_releases_once() {
    let books = setup().await;
    let saga = SagaId::new();
    books.run(saga, Operation::Try, 300).await;
    // A second saga's freeze on the same wallet must survive the repeated cancels.
    let other = SagaId::new();
    books.run(other, Operation::Try, 200).await;
    for _ in 0..3 {
        assert_eq!(books.run(saga, Operation::Cancel, 300).await, Outcome::Ok);
    }
    assert_eq!(wallet(&books.db).await, (OPENING - 200, 200));
    let audit = BalanceParticipant::audit(&books.db).await.unwrap();
    assert_eq!(audit.effects[&saga], Effect::Released(300));
    assert_eq!(audit.effects[&other], Effect::Reserved(200));
    assert_eq!(audit.moved, 0);
    assert!(audit.is_consistent());
}

#[tokio::test]
async fn empty_cancel_succeeds_without_effect_and_is_recorded() {
    let books = setup().await;
    let saga = SagaId::new();
    assert_eq!(books.run(saga, Operation::Cancel, 300).await, Outcome::Ok);
    assert_eq!(wallet(&books.db).await, (OPENING, 0));

    let records = barrier_records(&books.db, saga).await.unwrap();
    let cancel = records.iter().find(|r| r.operation == Operation::Cancel).unwrap();
    assert_eq!(cancel.outcome, Outcome::Ok);
    assert_eq!(cancel.note.as_deref(), Some(EMPTY_CANCEL));
    assert!(!cancel.took_effect());
    let tried = records.iter().find(|r| r.operation == Operation::Try).unwrap();
    assert_eq!(tried.outcome, Outcome::rejected(CANCELLED_BEFORE_TRY));
    assert!(BalanceParticipant::audit(&books.db).await.unwrap().effects.is_empty());
}

#[tokio::test]
async fn try_after_cancel_is_rejected_without_effect() {
    let books = setup().await;
    let saga = SagaId::new();
    books.cancel_then_late_try(saga, 300, 2).await;
    assert_eq!(wallet(&books.db).await, (OPENING, 0));
    let audit = BalanceParticipant::audit(&books.db).await.unwrap();
    assert!(audit.effects.is_empty());
    // And the hanging try can never be confirmed.
    let confirm = books.run(saga, Operation::Confirm, 300).await;
    assert!(matches!(confirm, Outcome::Retryable { .. }));
    assert_eq!(wallet(&books.db).await, (OPENING, 0));
}

#[tokio::test]
async fn insufficient_funds_is_rejected_and_replayed() {
    let books = setup().await;
    let saga = SagaId::new();
    for _ in 0..2 {
        let outcome = books.run(saga, Operation::Try, OPENING + 1).await;
        assert_eq!(rejected(&outcome), Some("insufficient funds"));
    }
    assert_eq!(wallet(&books.db).await, (OPENING, 0));
    // Cancel after a rejected try: Ok, no effect.
    assert_eq!(books.run(saga, Operation::Cancel, 1).await, Outcome::Ok);
    assert_eq!(wallet(&books.db).await, (OPENING, 0));
    let audit = BalanceParticipant::audit(&books.db).await.unwrap();
    assert!(audit.effects.is_empty());
    assert_eq!(audit.barrier_records, 2);
}

#[tokio::test]
async fn unknown_account_and_currency_mismatch_are_rejected() {
    let books = setup().await;
    let try_with = |payload| command(BALANCE, SagaId::new(), 0, Operation::Try, 1, payload);
    let outcome = books.run_envelope(&try_with(wallet_hold("nope", 5, "EUR"))).await;
    assert_eq!(rejected(&outcome), Some("unknown account nope"));
    let outcome = books.run_envelope(&try_with(wallet_hold("acct-1", 5, "USD"))).await;
    assert!(rejected(&outcome).unwrap().contains("currency mismatch"), "{outcome:?}");
    assert_eq!(wallet(&books.db).await, (OPENING, 0));
}

#[tokio::test]
async fn confirm_without_try_is_retryable_and_not_recorded() {
    let books = setup().await;
    let saga = SagaId::new();
    let outcome = books.run(saga, Operation::Confirm, 300).await;
    assert!(matches!(outcome, Outcome::Retryable { .. }));
    assert!(barrier_records(&books.db, saga).await.unwrap().is_empty());
    // The try that was late still works, and so does the resent confirm.
    assert_eq!(books.run(saga, Operation::Try, 300).await, Outcome::Ok);
    assert_eq!(books.run(saga, Operation::Confirm, 300).await, Outcome::Ok);
    assert_eq!(wallet(&books.db).await, (OPENING - 300, 0));
}

#[tokio::test]
async fn cancel_after_confirm_is_rejected_and_confirm_after_cancel_too() {
    let books = setup().await;
    let confirmed = SagaId::new();
    books.run(confirmed, Operation::Try, 300).await;
    books.run(confirmed, Operation::Confirm, 300).await;
    let outcome = books.run(confirmed, Operation::Cancel, 300).await;
    assert_eq!(rejected(&outcome), Some("already confirmed"));

    let cancelled = SagaId::new();
    books.run(cancelled, Operation::Try, 100).await;
    books.run(cancelled, Operation::Cancel, 100).await;
    let outcome = books.run(cancelled, Operation::Confirm, 100).await;
    assert_eq!(rejected(&outcome), Some("already cancelled"));

    assert_eq!(wallet(&books.db).await, (OPENING - 300, 0));
    let records = barrier_records(&books.db, cancelled).await.unwrap();
    assert!(
        !records
            .iter()
            .any(|r| r.operation == Operation::Confirm && r.outcome == Outcome::Ok),
        "no confirm may take effect after a cancel: {records:?}"
    );
    assert!(BalanceParticipant::audit(&books.db).await.unwrap().is_consistent());
}

#[tokio::test]
async fn rejection_rolls_back_partial_writes() {
    // A participant that writes, then refuses: the savepoint must undo the write.
    let writes_then_rejects = balance_failing_after(Operation::Try, || BusinessError::rejected("changed my mind"));

    let books = setup().await;
    let saga = SagaId::new();
    let outcome = run(&writes_then_rejects, &books.db, &cmd(saga, Operation::Try, 300)).await;
    assert_eq!(rejected(&outcome), Some("changed my mind"));
    assert_eq!(wallet(&books.db).await, (OPENING, 0));
    assert!(BalanceParticipant::audit(&books.db).await.unwrap().effects.is_empty());
    // The refusal is what a redelivery gets, even from the real participant.
    let outcome = books.run(saga, Operation::Try, 300).await;
    assert_eq!(rejected(&outcome), Some("changed my mind"));
}

#[tokio::test]
async fn a_confirm_that_writes_then_refuses_is_undone_recorded_and_replayed() {
    // Confirms for real, then refuses with a blank reason: the refusal must undo the
    // confirm's writes but nothing else of the transaction, be recorded under a reason
    // that is not blank, and be what every redelivery gets.
    let confirms_then_refuses = balance_failing_after(Operation::Confirm, || BusinessError::rejected(" "));

    let books = setup().await;
    let (refused, other) = (SagaId::new(), SagaId::new());
    books.run(refused, Operation::Try, 300).await;
    let txn = books.db.begin().await.unwrap();
    let tried = handle_command(&BalanceParticipant, &txn, &cmd(other, Operation::Try, 200)).await;
    assert_eq!(tried.unwrap(), Outcome::Ok);
    let confirm = cmd(refused, Operation::Confirm, 300);
    let outcome = handle_command(&confirms_then_refuses, &txn, &confirm).await.unwrap();
    assert_eq!(rejected(&outcome), Some("rejected by balance"));
    txn.commit().await.unwrap();
    // The other saga's freeze stands; the refused confirm left its freeze reserved.
    assert_eq!(wallet(&books.db).await, (OPENING - 500, 500));
    let audit = BalanceParticipant::audit(&books.db).await.unwrap();
    assert_eq!(audit.effects[&refused], Effect::Reserved(300));
    assert_eq!(audit.effects[&other], Effect::Reserved(200));
    let records = barrier_records(&books.db, refused).await.unwrap();
    let recorded = records.iter().find(|r| r.operation == Operation::Confirm).unwrap();
    assert_eq!(recorded.outcome, Outcome::rejected("rejected by balance"));
    // A redelivery replays the refusal, even to the real participant...
    let outcome = books.run_envelope(&confirm).await;
    assert_eq!(rejected(&outcome), Some("rejected by balance"));
    assert_eq!(wallet(&books.db).await, (OPENING - 500, 500));
    // ...and the refused confirm does not stand in the way of the cancel.
    assert_eq!(books.run(refused, Operation::Cancel, 300).await, Outcome::Ok);
    assert_eq!(wallet(&books.db).await, (OPENING - 200, 200));
    assert!(BalanceParticipant::audit(&books.db).await.unwrap().is_consistent());
}

#[tokio::test]
async fn retryable_business_error_records_nothing() {
    let flaky = balance_failing_after(Operation::Try, || BusinessError::retryable("risk engine timed out"));

    let books = setup().await;
    let saga = SagaId::new();
    let txn = books.db.begin().await.unwrap();
    let err = handle_command(&flaky, &txn, &cmd(saga, Operation::Try, 300))
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
    assert!(barrier_records(&books.db, saga).await.unwrap().is_empty());
    assert_eq!(wallet(&books.db).await, (OPENING - 5, 5));
    // The redelivery then succeeds normally.
    assert_eq!(books.run(saga, Operation::Try, 300).await, Outcome::Ok);
    assert_eq!(wallet(&books.db).await, (OPENING - 305, 305));
}

#[tokio::test]
async fn invalid_commands_are_permanent_errors() {
    let books = setup().await;
    let txn = books.db.begin().await.unwrap();
    let saga = SagaId::new();
    let wrong_participant = command("bank", saga, 0, Operation::Try, 1, wallet_hold("acct-1", 1, "EUR"));
    let bad_payload = command(BALANCE, saga, 0, Operation::Try, 1, wallet_hold("acct-1", -1, "EUR"));
    let reply = cmd(saga, Operation::Try, 1).reply(BALANCE, Outcome::Ok);
    for envelope in [wrong_participant, bad_payload, reply] {
        let err = handle_command(&books.participant, &txn, &envelope).await.unwrap_err();
        assert!(matches!(err, Error::Invalid(_)), "{err:?}");
        assert!(!err.is_retryable());
    }
    txn.commit().await.unwrap();
    assert!(barrier_records(&books.db, saga).await.unwrap().is_empty());
}

#[tokio::test]
async fn many_commands_in_one_transaction() {
    // What the runtime's group commit does: several sagas in one transaction.
    let books = setup().await;
    let sagas: Vec<SagaId> = (0..20).map(|_| SagaId::new()).collect();
    let txn = books.db.begin().await.unwrap();
    for (i, saga) in sagas.iter().enumerate() {
        let amount = if i == 7 { OPENING * 2 } else { 10 };
        handle_command(&books.participant, &txn, &cmd(*saga, Operation::Try, amount))
            .await
            .unwrap();
    }
    txn.commit().await.unwrap();
    assert_eq!(wallet(&books.db).await, (OPENING - 190, 190));
    let audit = BalanceParticipant::audit(&books.db).await.unwrap();
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
