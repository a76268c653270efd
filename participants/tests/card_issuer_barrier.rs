//! The card issuer's ledger through the barrier: limits, capture, release, and the key
//! anomalies, checked on the card rows.

mod common;

use common::{command, eur, rejected, run, spawn_db};
use kessai_messages::payment::CARD_ISSUER;
use kessai_messages::{Envelope, Operation, Outcome, SagaId};
use kessai_migrations::Service;
use kessai_participants::card_issuer::CardSeed;
use kessai_participants::sdk::barrier::CANCELLED_BEFORE_TRY;
use kessai_participants::{CardIssuerParticipant, Effect};
use sea_orm::DatabaseConnection;
use serde_json::json;

const LIMIT: i64 = 1_000;

async fn setup() -> (tempfile::TempDir, DatabaseConnection) {
    let (dir, db) = spawn_db(Service::CardIssuer).await;
    CardIssuerParticipant::seed(
        &db,
        [CardSeed {
            card_id: "card-1".into(),
            currency: eur(),
            credit_limit: LIMIT,
        }],
    )
    .await
    .unwrap();
    (dir, db)
}

fn cmd(saga: SagaId, op: Operation, amount: i64) -> Envelope {
    command(
        CARD_ISSUER,
        saga,
        1,
        op,
        1,
        json!({"card_id": "card-1", "amount": amount, "currency": "EUR"}),
    )
}

/// (held, captured) of card-1.
async fn card(db: &DatabaseConnection) -> (i64, i64) {
    let c = CardIssuerParticipant::card(db, "card-1").await.unwrap().unwrap();
    (c.held, c.captured)
}

#[tokio::test]
async fn hold_capture_and_release_respect_the_limit() {
    let (_dir, db) = setup().await;
    let p = CardIssuerParticipant;
    let (a, b, c) = (SagaId::new(), SagaId::new(), SagaId::new());
    assert_eq!(run(&p, &db, &cmd(a, Operation::Try, 600)).await, Outcome::Ok);
    assert_eq!(card(&db).await, (600, 0));
    // 600 held: 500 more would exceed the limit.
    let over = run(&p, &db, &cmd(b, Operation::Try, 500)).await;
    assert_eq!(rejected(&over), Some("credit limit exceeded"));
    assert_eq!(card(&db).await, (600, 0));
    // Duplicate confirm captures once.
    for _ in 0..2 {
        assert_eq!(run(&p, &db, &cmd(a, Operation::Confirm, 600)).await, Outcome::Ok);
    }
    assert_eq!(card(&db).await, (0, 600));
    // Captured amounts still count against the limit.
    let over = run(&p, &db, &cmd(SagaId::new(), Operation::Try, 401)).await;
    assert_eq!(rejected(&over), Some("credit limit exceeded"));
    assert_eq!(run(&p, &db, &cmd(c, Operation::Try, 400)).await, Outcome::Ok);
    // Duplicate cancel releases once.
    for _ in 0..2 {
        assert_eq!(run(&p, &db, &cmd(c, Operation::Cancel, 400)).await, Outcome::Ok);
    }
    assert_eq!(card(&db).await, (0, 600));

    let audit = CardIssuerParticipant::audit(&db).await.unwrap();
    assert_eq!(audit.moved, 600);
    assert_eq!(audit.reserved, 0);
    assert_eq!(audit.effects[&a], Effect::Committed(600));
    assert_eq!(audit.effects[&c], Effect::Released(400));
    assert!(!audit.effects.contains_key(&b));
    assert!(audit.is_consistent());
}

#[tokio::test]
async fn duplicate_try_holds_once() {
    let (_dir, db) = setup().await;
    let p = CardIssuerParticipant;
    let saga = SagaId::new();
    for _ in 0..3 {
        assert_eq!(run(&p, &db, &cmd(saga, Operation::Try, 100)).await, Outcome::Ok);
    }
    assert_eq!(card(&db).await, (100, 0));
}

#[tokio::test]
async fn empty_cancel_then_late_try() {
    let (_dir, db) = setup().await;
    let p = CardIssuerParticipant;
    let saga = SagaId::new();
    assert_eq!(run(&p, &db, &cmd(saga, Operation::Cancel, 100)).await, Outcome::Ok);
    let late = run(&p, &db, &cmd(saga, Operation::Try, 100)).await;
    assert_eq!(rejected(&late), Some(CANCELLED_BEFORE_TRY));
    assert_eq!(card(&db).await, (0, 0));
    assert!(CardIssuerParticipant::audit(&db).await.unwrap().effects.is_empty());
}

#[tokio::test]
async fn unknown_card_and_wrong_currency_are_rejected() {
    let (_dir, db) = setup().await;
    let p = CardIssuerParticipant;
    let unknown = command(
        CARD_ISSUER,
        SagaId::new(),
        1,
        Operation::Try,
        1,
        json!({"card_id": "card-x", "amount": 1, "currency": "EUR"}),
    );
    assert_eq!(rejected(&run(&p, &db, &unknown).await), Some("unknown card card-x"));
    let gbp = command(
        CARD_ISSUER,
        SagaId::new(),
        1,
        Operation::Try,
        1,
        json!({"card_id": "card-1", "amount": 1, "currency": "GBP"}),
    );
    assert!(
        rejected(&run(&p, &db, &gbp).await)
            .unwrap()
            .contains("currency mismatch")
    );
    assert_eq!(card(&db).await, (0, 0));
}
