//! Shared test helpers: every test gets its own database (a SQLite file in its own
//! temp dir, or a PostgreSQL database of its own), commands built the way the
//! coordinator builds them, and stand-ins for misbehaving participants.

#![allow(dead_code)]

use futures::FutureExt;
use futures::future::BoxFuture;
use kessai_messages::payment::{BALANCE, Currency, WalletHold};
use kessai_messages::{BranchId, Command, Envelope, Operation, Outcome, SagaId};
use kessai_migrations::Service;
use kessai_participants::balance::WalletSeed;
use kessai_participants::ledger::Audit;
use kessai_participants::sdk::barrier::CANCELLED_BEFORE_TRY;
use kessai_participants::{BalanceParticipant, BranchRef, BusinessError, Participant, handle_command};
use kessai_transport::{MemoryTransport, OutgoingMessage, Topology, Transport};
use sea_orm::{DatabaseConnection, DatabaseTransaction, TransactionTrait};
use serde_json::{Value, json};
use tempfile::TempDir;

pub const REPLY_QUEUE: &str = "test-coordinator-replies";

/// A migrated participant database in a fresh temp dir (kept alive by the `TempDir`).
pub async fn spawn_db(service: Service) -> (TempDir, DatabaseConnection) {
    kessai_testkit::scratch_sqlite(service).await
}

pub fn eur() -> Currency {
    Currency::new("EUR").expect("EUR")
}

pub fn command(
    participant: &str,
    saga: SagaId,
    branch: u32,
    operation: Operation,
    attempt: u32,
    payload: Value,
) -> Envelope {
    Envelope::command(
        saga,
        BranchId(branch),
        operation,
        attempt,
        None,
        Command {
            participant: participant.into(),
            reply_to: REPLY_QUEUE.into(),
            payload,
        },
    )
}

/// Runs one command through the barrier in its own committed transaction, the way the
/// runtime does for a batch of one.
pub async fn run<P: Participant>(participant: &P, db: &DatabaseConnection, envelope: &Envelope) -> Outcome {
    let txn = db.begin().await.expect("begin");
    let outcome = handle_command(participant, &txn, envelope).await.expect("handled");
    txn.commit().await.expect("commit");
    outcome
}

/// A balance command's payload: hold `amount` (minor units of `currency`) on `account`.
pub fn wallet_hold(account: &str, amount: i64, currency: &str) -> Value {
    json!({"account_id": account, "amount": amount, "currency": currency})
}

/// The balance command `operation` of `saga` (branch 0, attempt 1) for `amount` EUR
/// on `account`.
pub fn balance_cmd(saga: SagaId, account: &str, operation: Operation, amount: i64) -> Envelope {
    command(BALANCE, saga, 0, operation, 1, wallet_hold(account, amount, "EUR"))
}

/// The in-process broker with balance's command queue declared, and that queue.
pub async fn balance_queue() -> (MemoryTransport, String) {
    let transport = MemoryTransport::new();
    let queue = Topology::default().command_queue(BALANCE);
    transport.declare(&queue).await.expect("declare");
    (transport, queue)
}

/// Publishes each of `envelopes` on `queue`.
pub async fn send_all(transport: &MemoryTransport, queue: &str, envelopes: &[Envelope]) {
    for e in envelopes {
        transport
            .publish(queue, OutgoingMessage::new(e.encode()))
            .await
            .expect("publish");
    }
}

pub fn rejected(outcome: &Outcome) -> Option<&str> {
    match outcome {
        Outcome::Rejected { reason } => Some(reason),
        _ => None,
    }
}

/// A participant's books in a fresh SQLite file, and the command its tests send: one
/// `amount` of one saga, for the operation.
pub struct Books<P> {
    _dir: TempDir,
    pub db: DatabaseConnection,
    pub participant: P,
    command: fn(SagaId, Operation, i64) -> Envelope,
}

impl<P: Participant> Books<P> {
    pub async fn open(service: Service, participant: P, command: fn(SagaId, Operation, i64) -> Envelope) -> Self {
        let (dir, db) = spawn_db(service).await;
        Self {
            _dir: dir,
            db,
            participant,
            command,
        }
    }

    /// The command `operation` of `saga` for `amount`.
    pub fn cmd(&self, saga: SagaId, operation: Operation, amount: i64) -> Envelope {
        (self.command)(saga, operation, amount)
    }

    /// Runs [`Books::cmd`] through the barrier ([`run`]).
    pub async fn run(&self, saga: SagaId, operation: Operation, amount: i64) -> Outcome {
        run(&self.participant, &self.db, &self.cmd(saga, operation, amount)).await
    }

    /// Runs `envelope` through the barrier ([`run`]).
    pub async fn run_envelope(&self, envelope: &Envelope) -> Outcome {
        run(&self.participant, &self.db, envelope).await
    }

    /// The try of `saga` for `amount`, delivered `times` times: every copy answers Ok.
    pub async fn duplicate_try(&self, saga: SagaId, amount: i64, times: usize) {
        for _ in 0..times {
            assert_eq!(self.run(saga, Operation::Try, amount).await, Outcome::Ok);
        }
    }

    /// A cancel of `saga` for `amount` before any try answers Ok (an empty cancel);
    /// the try that then arrives late, `tries` times, is refused every time.
    pub async fn cancel_then_late_try(&self, saga: SagaId, amount: i64, tries: usize) {
        assert_eq!(self.run(saga, Operation::Cancel, amount).await, Outcome::Ok);
        for _ in 0..tries {
            let late = self.run(saga, Operation::Try, amount).await;
            assert_eq!(rejected(&late), Some(CANCELLED_BEFORE_TRY));
        }
    }
}

/// Seeds wallets `acct-1` … `acct-<n>`, each in EUR with `opening` available; returns
/// how many were new.
pub async fn seed_wallets(db: &DatabaseConnection, n: usize, opening: i64) -> u64 {
    let wallets = (1..=n).map(|i| WalletSeed {
        account_id: format!("acct-{i}"),
        currency: eur(),
        opening,
    });
    BalanceParticipant::seed(db, wallets).await.expect("seed wallets")
}

/// Balance's books after `n` tries took effect, once each, and nothing else did: `n`
/// reserved, `n` barrier records, and books that add up.
pub async fn assert_tries_took_effect_once(db: &DatabaseConnection, n: i64) {
    let audit = BalanceParticipant::audit(db).await.expect("audit");
    assert_eq!(audit.reserved, n);
    assert_eq!(audit.barrier_records, n as u64);
    assert!(audit.is_consistent());
}

/// Books that add up, where everything reserved was settled and `moved` moved.
pub fn assert_settled(audit: &Audit, moved: i64) {
    assert_eq!(audit.moved, moved);
    assert_eq!(audit.reserved, 0);
    assert!(audit.is_consistent());
}

/// (available, frozen) of a balance wallet.
pub async fn wallet(db: &DatabaseConnection, account: &str) -> (i64, i64) {
    let w = BalanceParticipant::wallet(db, account).await.unwrap().unwrap();
    (w.available, w.frozen)
}

/// The balance participant with what one operation reports rewritten: the real balance
/// code runs first (its writes included), then `then` gets its result and returns what
/// to report instead (a late refusal, a retryable failure, a slow one …). The other
/// operations are plain balance.
pub struct BalanceThen<F> {
    operation: Operation,
    then: F,
}

/// See [`BalanceThen`].
pub fn balance_then<F>(operation: Operation, then: F) -> BalanceThen<F>
where
    F: Fn(Result<(), BusinessError>) -> BoxFuture<'static, Result<(), BusinessError>> + Send + Sync + 'static,
{
    BalanceThen { operation, then }
}

impl<F> BalanceThen<F>
where
    F: Fn(Result<(), BusinessError>) -> BoxFuture<'static, Result<(), BusinessError>> + Send + Sync + 'static,
{
    async fn report(&self, operation: Operation, result: Result<(), BusinessError>) -> Result<(), BusinessError> {
        if operation == self.operation {
            (self.then)(result).await
        } else {
            result
        }
    }
}

/// Balance whose `operation`, once balance's own code ran and succeeded (its writes
/// made), fails with `error()` all the same.
pub fn balance_failing_after(operation: Operation, error: fn() -> BusinessError) -> impl Participant {
    balance_then(operation, move |result| {
        async move {
            result?;
            Err(error())
        }
        .boxed()
    })
}

#[kessai_participants::sdk::async_trait]
impl<F> Participant for BalanceThen<F>
where
    F: Fn(Result<(), BusinessError>) -> BoxFuture<'static, Result<(), BusinessError>> + Send + Sync + 'static,
{
    type Payload = WalletHold;
    fn name(&self) -> &'static str {
        BALANCE
    }
    async fn try_(&self, txn: &DatabaseTransaction, branch: &BranchRef, p: &WalletHold) -> Result<(), BusinessError> {
        let result = BalanceParticipant.try_(txn, branch, p).await;
        self.report(Operation::Try, result).await
    }
    async fn confirm(
        &self,
        txn: &DatabaseTransaction,
        branch: &BranchRef,
        p: &WalletHold,
    ) -> Result<(), BusinessError> {
        let result = BalanceParticipant.confirm(txn, branch, p).await;
        self.report(Operation::Confirm, result).await
    }
    async fn cancel(&self, txn: &DatabaseTransaction, branch: &BranchRef, p: &WalletHold) -> Result<(), BusinessError> {
        let result = BalanceParticipant.cancel(txn, branch, p).await;
        self.report(Operation::Cancel, result).await
    }
}
