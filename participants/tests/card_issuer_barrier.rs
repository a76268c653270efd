//! The card issuer's ledger through the barrier: limits, capture, release, and the key
//! anomalies, checked on the card rows.

mod common;

use common::{Books, assert_settled, command, eur, rejected};
use kessai_messages::payment::CARD_ISSUER;
use kessai_messages::{Envelope, Operation, Outcome, SagaId};
use kessai_migrations::Service;
use kessai_participants::card_issuer::CardSeed;
use kessai_participants::{CardIssuerParticipant, Effect};
use sea_orm::DatabaseConnection;
use serde_json::json;

const LIMIT: i64 = 1_000;

async fn setup() -> Books<CardIssuerParticipant> {
    let books = Books::open(Service::CardIssuer, CardIssuerParticipant, cmd).await;
    CardIssuerParticipant::seed(
        &books.db,
        [CardSeed {
            card_id: "card-1".into(),
            currency: eur(),
            credit_limit: LIMIT,
        }],
    )
    .await
    .unwrap();
    books
}

fn cmd(saga: SagaId, op: Operation, amount: i64) -> Envelope {
    command(CARD_ISSUER, saga, 1, op, 1, hold("card-1", amount, "EUR"))
}

fn hold(card: &str, amount: i64, currency: &str) -> serde_json::Value {
    json!({"card_id": card, "amount": amount, "currency": currency})
}

/// (held, captured) of card-1.
async fn card(db: &DatabaseConnection) -> (i64, i64) {
    let c = CardIssuerParticipant::card(db, "card-1").await.unwrap().unwrap();
    (c.held, c.captured)
}

#[tokio::test]
async fn hold_capture_and_release_respect_the_limit() {
    let books = setup().await;
    let (a, b, c) = (SagaId::new(), SagaId::new(), SagaId::new());
    assert_eq!(books.run(a, Operation::Try, 600).await, Outcome::Ok);
    assert_eq!(card(&books.db).await, (600, 0));
    // 600 held: 500 more would exceed the limit.
    let over = books.run(b, Operation::Try, 500).await;
    assert_eq!(rejected(&over), Some("credit limit exceeded"));
    assert_eq!(card(&books.db).await, (600, 0));
    // Duplicate confirm captures once.
    for _ in 0..2 {
        assert_eq!(books.run(a, Operation::Confirm, 600).await, Outcome::Ok);
    }
    assert_eq!(card(&books.db).await, (0, 600));
    // Captured amounts still count against the limit.
    let over = books.run(SagaId::new(), Operation::Try, 401).await;
    assert_eq!(rejected(&over), Some("credit limit exceeded"));
    assert_eq!(books.run(c, Operation::Try, 400).await, Outcome::Ok);
    // Duplicate cancel releases once.
    for _ in 0..2 {
        assert_eq!(books.run(c, Operation::Cancel, 400).await, Outcome::Ok);
    }
    assert_eq!(card(&books.db).await, (0, 600));

    let audit = CardIssuerParticipant::audit(&books.db).await.unwrap();
    assert_settled(&audit, 600);
    assert_eq!(audit.effects[&a], Effect::Committed(600));
    assert_eq!(audit.effects[&c], Effect::Released(400));
    assert!(!audit.effects.contains_key(&b));
}

#[tokio::test]
async fn duplicate_try_holds_once() {
    let books = setup().await;
    let saga = SagaId::new();
    books.duplicate_try(saga, 100, 3).await;
    assert_eq!(card(&books.db).await, (100, 0));
}

#[tokio::test]
async fn empty_cancel_then_late_try() {
    let books = setup().await;
    let saga = SagaId::new();
    books.cancel_then_late_try(saga, 100, 1).await;
    assert_eq!(card(&books.db).await, (0, 0));
    assert!(
        CardIssuerParticipant::audit(&books.db)
            .await
            .unwrap()
            .effects
            .is_empty()
    );
}

#[tokio::test]
async fn unknown_card_and_wrong_currency_are_rejected() {
    let books = setup().await;
    let try_with = |payload| command(CARD_ISSUER, SagaId::new(), 1, Operation::Try, 1, payload);
    let unknown = try_with(hold("card-x", 1, "EUR"));
    assert_eq!(
        rejected(&books.run_envelope(&unknown).await),
        Some("unknown card card-x")
    );
    let gbp = try_with(hold("card-1", 1, "GBP"));
    assert!(
        rejected(&books.run_envelope(&gbp).await)
            .unwrap()
            .contains("currency mismatch")
    );
    assert_eq!(card(&books.db).await, (0, 0));
}
