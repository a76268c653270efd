//! How many database round trips one command costs, on a real SQLite file.
//!
//! sqlx runs SQLite on a worker thread, so every statement and every savepoint
//! operation (`SAVEPOINT`, `RELEASE`, `ROLLBACK TO`) is a hand-off to that thread and
//! back; in the in-process benchmark those hand-offs are most of the participants'
//! CPU. These tests pin the figures, so a change that adds a round trip to a hot path
//! fails here rather than in a profile.
//!
//! Statements are counted with sea-orm's metric callback. Savepoint operations do not
//! reach it, so they are counted from the trace spans sea-orm opens for each
//! transaction begin, commit and rollback (`sea_orm::database::transaction`).

mod common;

use common::{command, eur, rejected, spawn_db};
use kessai_messages::payment::{BALANCE, BANK, CARD_ISSUER, DEFAULT_SETTLEMENT_ACCOUNT};
use kessai_messages::{Envelope, Operation, Outcome, SagaId};
use kessai_migrations::Service;
use kessai_participants::balance::WalletSeed;
use kessai_participants::card_issuer::CardSeed;
use kessai_participants::{BalanceParticipant, BankParticipant, CardIssuerParticipant, Participant, handle_command};
use sea_orm::{DatabaseConnection, TransactionTrait};
use serde_json::{Value, json};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// Round trips of one command, by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct RoundTrips {
    /// Statements sent (metric callback).
    statements: usize,
    /// `SAVEPOINT`s opened.
    savepoints: usize,
    /// `RELEASE` or `ROLLBACK TO` of a savepoint.
    savepoint_ends: usize,
}

impl RoundTrips {
    fn total(&self) -> usize {
        self.statements + self.savepoints + self.savepoint_ends
    }
}

/// Counts sea-orm's transaction spans, per thread (each `#[tokio::test]` runs on a
/// thread of its own, polling everything it starts there). `DatabaseTransaction::begin`,
/// the constructor every begin and savepoint goes through, is told apart from the
/// `TransactionTrait` methods that call it by its `backend` field.
///
/// It is the process's global subscriber, installed before any test touches the
/// database: a scoped one (`set_default`) could miss a callsite another test thread
/// registered at the same moment, whose interest `tracing` then caches as "never".
#[derive(Default)]
struct SavepointCounter {
    next_id: AtomicU64,
}

thread_local! {
    /// (savepoints opened, savepoints released or rolled back) on this thread.
    static SAVEPOINTS: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
}

fn count_savepoints() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        tracing::subscriber::set_global_default(SavepointCounter::default()).expect("no other global subscriber");
    });
}

const TRANSACTION_TARGET: &str = "sea_orm::database::transaction";

impl Subscriber for SavepointCounter {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.is_span() && metadata.target() == TRANSACTION_TARGET
    }

    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let metadata = attrs.metadata();
        let (opened, ended) = match metadata.name() {
            "begin" if metadata.fields().field("backend").is_some() => (1, 0),
            "commit" | "rollback" => (0, 1),
            _ => (0, 0),
        };
        SAVEPOINTS.with(|c| {
            let (o, e) = c.get();
            c.set((o + opened, e + ended));
        });
        Id::from_u64(self.next_id.fetch_add(1, Ordering::Relaxed) + 1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, _: &Event<'_>) {}
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

/// A participant database whose statements are counted.
struct Counted {
    _dir: tempfile::TempDir,
    db: DatabaseConnection,
    statements: Arc<Mutex<Vec<String>>>,
}

impl Counted {
    async fn new(service: Service) -> Self {
        count_savepoints();
        let (dir, mut db) = spawn_db(service).await;
        let statements = Arc::new(Mutex::new(Vec::new()));
        let sink = statements.clone();
        db.set_metric_callback(move |info| {
            sink.lock().unwrap().push(info.statement.sql.clone());
        });
        Self {
            _dir: dir,
            db,
            statements,
        }
    }

    /// Runs one command the way the runtime does (inside a batch transaction it began
    /// and commits, which are not counted) and counts what the command itself cost.
    async fn measure<P: Participant>(&self, participant: &P, envelope: &Envelope) -> (Outcome, RoundTrips) {
        let txn = self.db.begin().await.expect("begin");
        self.statements.lock().unwrap().clear();
        SAVEPOINTS.with(|c| c.set((0, 0)));
        let outcome = handle_command(participant, &txn, envelope).await.expect("handled");
        let (savepoints, savepoint_ends) = SAVEPOINTS.with(Cell::get);
        let statements = std::mem::take(&mut *self.statements.lock().unwrap());
        txn.commit().await.expect("commit");
        let trips = RoundTrips {
            statements: statements.len(),
            savepoints,
            savepoint_ends,
        };
        println!(
            "{} {}: {} round trips ({trips:?}) {outcome:?}\n  {}",
            envelope.as_command().map(|c| c.participant.as_str()).unwrap_or("?"),
            envelope.operation,
            trips.total(),
            statements.join("\n  ")
        );
        (outcome, trips)
    }
}

fn trips(statements: usize, savepoints: usize, savepoint_ends: usize) -> RoundTrips {
    RoundTrips {
        statements,
        savepoints,
        savepoint_ends,
    }
}

async fn balance() -> Counted {
    let counted = Counted::new(Service::Balance).await;
    BalanceParticipant::seed(
        &counted.db,
        [WalletSeed {
            account_id: "acct-1".into(),
            currency: eur(),
            opening: 1_000,
        }],
    )
    .await
    .unwrap();
    counted
}

fn wallet_hold(amount: i64) -> Value {
    json!({"account_id": "acct-1", "amount": amount, "currency": "EUR"})
}

/// The success path of a payment at the balance participant: the figures the
/// in-process benchmark pays per saga.
#[tokio::test]
async fn balance_try_and_confirm() {
    let db = balance().await;
    let p = BalanceParticipant;
    let saga = SagaId::new();
    let (outcome, tried) = db
        .measure(&p, &command(BALANCE, saga, 0, Operation::Try, 1, wallet_hold(300)))
        .await;
    assert_eq!(outcome, Outcome::Ok);
    let (outcome, confirmed) = db
        .measure(&p, &command(BALANCE, saga, 0, Operation::Confirm, 1, wallet_hold(300)))
        .await;
    assert_eq!(outcome, Outcome::Ok);
    // try: SAVEPOINT, claim, UPDATE wallet, INSERT freeze, RELEASE.
    assert_eq!(tried, trips(3, 1, 1), "try");
    // confirm: SAVEPOINT, claim, SELECT barrier rows, UPDATE freeze .. RETURNING,
    // UPDATE wallet, RELEASE.
    assert_eq!(confirmed, trips(4, 1, 1), "confirm");
    assert_eq!(tried.total() + confirmed.total(), 11);
}

#[tokio::test]
async fn balance_cancel() {
    let db = balance().await;
    let p = BalanceParticipant;
    let saga = SagaId::new();
    db.measure(&p, &command(BALANCE, saga, 0, Operation::Try, 1, wallet_hold(300)))
        .await;
    let (outcome, cancelled) = db
        .measure(&p, &command(BALANCE, saga, 0, Operation::Cancel, 1, wallet_hold(300)))
        .await;
    assert_eq!(outcome, Outcome::Ok);
    // SAVEPOINT, claim, try placeholder (finds the try), SELECT barrier rows,
    // UPDATE freeze .. RETURNING, UPDATE wallet, RELEASE.
    assert_eq!(cancelled, trips(5, 1, 1), "cancel");
}

/// The rare paths: what they cost is pinned too, so it is a choice when it changes.
#[tokio::test]
async fn balance_rejection_duplicate_and_empty_cancel() {
    let db = balance().await;
    let p = BalanceParticipant;
    let saga = SagaId::new();
    let too_much = command(BALANCE, saga, 0, Operation::Try, 1, wallet_hold(5_000));
    let (outcome, refused) = db.measure(&p, &too_much).await;
    assert_eq!(rejected(&outcome), Some("insufficient funds"));
    // SAVEPOINT, claim, UPDATE wallet (no row), SELECT wallet (why), ROLLBACK TO;
    // SAVEPOINT, claim as rejected, RELEASE.
    assert_eq!(refused, trips(4, 2, 2), "rejected try");

    let (outcome, replayed) = db.measure(&p, &too_much).await;
    assert_eq!(rejected(&outcome), Some("insufficient funds"));
    // SAVEPOINT, claim (finds the row), SELECT it, RELEASE.
    assert_eq!(replayed, trips(2, 1, 1), "duplicate");

    let (outcome, empty) = db
        .measure(
            &p,
            &command(BALANCE, SagaId::new(), 0, Operation::Cancel, 1, wallet_hold(1)),
        )
        .await;
    assert_eq!(outcome, Outcome::Ok);
    // SAVEPOINT, claim, try placeholder, note on the cancel row, RELEASE.
    assert_eq!(empty, trips(3, 1, 1), "empty cancel");
}

/// The other two reference participants have the same shape as balance.
#[tokio::test]
async fn card_issuer_and_bank() {
    let cards = Counted::new(Service::CardIssuer).await;
    CardIssuerParticipant::seed(
        &cards.db,
        [CardSeed {
            card_id: "card-1".into(),
            currency: eur(),
            credit_limit: 1_000,
        }],
    )
    .await
    .unwrap();
    let auth = json!({"card_id": "card-1", "amount": 300, "currency": "EUR"});
    let bank = Counted::new(Service::Bank).await;
    BankParticipant::seed_demo(&bank.db).await.unwrap();
    let transfer = json!({"settlement_account": DEFAULT_SETTLEMENT_ACCOUNT, "amount": 300, "currency": "EUR"});

    for (op, expected) in [(Operation::Try, trips(3, 1, 1)), (Operation::Confirm, trips(4, 1, 1))] {
        let saga = SagaId::new();
        if op == Operation::Confirm {
            cards
                .measure(
                    &CardIssuerParticipant,
                    &command(CARD_ISSUER, saga, 1, Operation::Try, 1, auth.clone()),
                )
                .await;
            bank.measure(
                &BankParticipant,
                &command(BANK, saga, 2, Operation::Try, 1, transfer.clone()),
            )
            .await;
        }
        let (outcome, card) = cards
            .measure(
                &CardIssuerParticipant,
                &command(CARD_ISSUER, saga, 1, op, 1, auth.clone()),
            )
            .await;
        assert_eq!(outcome, Outcome::Ok);
        assert_eq!(card, expected, "card-issuer {op}");
        let (outcome, settled) = bank
            .measure(&BankParticipant, &command(BANK, saga, 2, op, 1, transfer.clone()))
            .await;
        assert_eq!(outcome, Outcome::Ok);
        assert_eq!(settled, expected, "bank {op}");
    }
    for (participant, counted, payload, branch) in [
        (CARD_ISSUER, &cards, auth.clone(), 1),
        (BANK, &bank, transfer.clone(), 2),
    ] {
        let saga = SagaId::new();
        let try_ = command(participant, saga, branch, Operation::Try, 1, payload.clone());
        let cancel = command(participant, saga, branch, Operation::Cancel, 1, payload);
        let cancelled = if participant == BANK {
            counted.measure(&BankParticipant, &try_).await;
            counted.measure(&BankParticipant, &cancel).await
        } else {
            counted.measure(&CardIssuerParticipant, &try_).await;
            counted.measure(&CardIssuerParticipant, &cancel).await
        };
        assert_eq!(cancelled, (Outcome::Ok, trips(5, 1, 1)), "{participant} cancel");
    }
}
