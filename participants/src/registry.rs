//! The participant registry: one descriptor per participant, one list that every
//! service, the harness and the tests iterate.
//!
//! A participant is registered by implementing [`Registrable`] for its
//! [`Participant`] type — its schema (a migrator), its demo data, its audit and the
//! amount a branch payload moves — and adding it to a [`Registry`]. Everything that
//! needs "every participant" (the process command `kessai participant <name>`, the
//! embedded stack, the demo, the chaos harness, the invariant checks) reads the
//! registry, so a participant that is registered cannot be left out of any of them.

use crate::ledger::Audit;
use crate::sdk::Participant;
use crate::sdk::runtime::{ParticipantRuntime, RuntimeConfig};
use crate::{BalanceParticipant, BankParticipant, CardIssuerParticipant, Error};
use async_trait::async_trait;
use kessai_messages::payment::{BranchPayload, PaymentError};
use kessai_migrations::MigratorTrait;
use kessai_transport::{Tasks, Transport};
use sea_orm::{DatabaseConnection, DbErr};
use std::fmt;
use std::sync::Arc;

/// Checks a (participant, payload) pair; the same shape as the coordinator's
/// `BranchCheck`, which this crate does not depend on.
pub type BranchCheck = Arc<dyn Fn(&str, &serde_json::Value) -> Result<(), String> + Send + Sync>;

/// What a participant type tells the registry about itself, besides its
/// [`Participant`] operations.
#[async_trait]
pub trait Registrable: Participant + Clone {
    /// Its database schema: the barrier table plus its own ledger
    /// (`kessai_migrations::participants::barrier_and`).
    type Migrator: MigratorTrait;

    /// Seeds the demo data set into its (migrated) database; idempotent.
    async fn seed_demo(db: &DatabaseConnection) -> Result<u64, Error>;

    /// Its books, read through its own tables, for the invariant checks.
    async fn audit(db: &DatabaseConnection) -> Result<Audit, Error>;

    /// The amount (minor units) a branch with this payload moves when confirmed: what
    /// the conservation and atomicity checks expect to see in the books.
    fn amount(payload: &Self::Payload) -> i64;
}

/// A registered participant, type-erased: what the registry hands out.
#[async_trait]
pub trait RegisteredParticipant: Send + Sync + 'static {
    /// The name on the wire and in queue and database names.
    fn name(&self) -> &'static str;
    /// Connects to its database at `url` and creates or upgrades its schema there
    /// (`kessai_migrations::open_migrated`).
    async fn open(&self, url: &str, max_connections: u32) -> Result<DatabaseConnection, DbErr>;
    async fn seed_demo(&self, db: &DatabaseConnection) -> Result<u64, Error>;
    async fn audit(&self, db: &DatabaseConnection) -> Result<Audit, Error>;
    /// Decodes and validates a branch payload for this participant (strict input at
    /// submission) and returns the amount it moves.
    fn amount_of(&self, payload: &serde_json::Value) -> Result<i64, PaymentError>;
    /// Starts its [`ParticipantRuntime`] on `db`, as supervised tasks.
    fn start(&self, db: DatabaseConnection, transport: Arc<dyn Transport>, config: RuntimeConfig) -> Tasks<Error>;
}

/// The one adapter from a [`Registrable`] participant to a [`RegisteredParticipant`].
struct Registered<P>(P);

#[async_trait]
impl<P: Registrable> RegisteredParticipant for Registered<P> {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    async fn open(&self, url: &str, max_connections: u32) -> Result<DatabaseConnection, DbErr> {
        kessai_migrations::open_migrated::<P::Migrator>(url, max_connections).await
    }

    async fn seed_demo(&self, db: &DatabaseConnection) -> Result<u64, Error> {
        P::seed_demo(db).await
    }

    async fn audit(&self, db: &DatabaseConnection) -> Result<Audit, Error> {
        P::audit(db).await
    }

    fn amount_of(&self, payload: &serde_json::Value) -> Result<i64, PaymentError> {
        P::Payload::from_value(payload).map(|p| P::amount(&p))
    }

    fn start(&self, db: DatabaseConnection, transport: Arc<dyn Transport>, config: RuntimeConfig) -> Tasks<Error> {
        ParticipantRuntime::with_config(self.0.clone(), db, transport, config).start()
    }
}

/// The participants of one deployment, in branch order of a payment for the reference
/// three. Cheap to clone.
#[derive(Clone, Default)]
pub struct Registry {
    participants: Vec<Arc<dyn RegisteredParticipant>>,
}

impl Registry {
    /// balance, card-issuer and bank: the participants of a payment.
    pub fn reference() -> Self {
        Registry::default()
            .with(BalanceParticipant)
            .with(CardIssuerParticipant)
            .with(BankParticipant)
    }

    /// Adds a participant. Panics on a name already registered: two services on one
    /// queue is a wiring bug, not an input error.
    pub fn with<P: Registrable>(mut self, participant: P) -> Self {
        assert!(
            self.get(participant.name()).is_none(),
            "participant {:?} registered twice",
            participant.name()
        );
        self.participants.push(Arc::new(Registered(participant)));
        self
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn RegisteredParticipant>> {
        self.participants.iter().find(|p| p.name() == name)
    }

    /// Looks a name up, or says which names exist.
    pub fn require(&self, name: &str) -> Result<&Arc<dyn RegisteredParticipant>, Error> {
        self.get(name).ok_or_else(|| {
            Error::Invalid(format!(
                "unknown participant {name:?} (expected one of {})",
                self.names().join(", ")
            ))
        })
    }

    /// Checks a generic saga's branch: the participant is registered and accepts the
    /// payload. Shaped as the coordinator's `BranchCheck`.
    pub fn branch_check(&self) -> BranchCheck {
        let registry = self.clone();
        Arc::new(move |participant, payload| {
            let p = registry.require(participant).map_err(|e| e.to_string())?;
            p.amount_of(payload).map(|_| ()).map_err(|e| e.to_string())
        })
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = &Arc<dyn RegisteredParticipant>> {
        self.participants.iter()
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.participants.iter().map(|p| p.name()).collect()
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

/// How every service names its own PostgreSQL database: `<prefix>_<service>` with
/// `-` turned into `_` (`kessai_card_issuer`). The one place the rule lives.
pub fn database_name(prefix: &str, service: &str) -> String {
    format!("{prefix}_{}", service.replace('-', "_"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_registry_lists_the_payment_participants_in_order() {
        let r = Registry::reference();
        assert_eq!(r.names(), vec!["balance", "card-issuer", "bank"]);
        let unknown = r.require("wallet").err().expect("not registered").to_string();
        assert!(unknown.contains("balance, card-issuer, bank"), "{unknown}");
        let hold = serde_json::json!({"account_id": "acct-1", "amount": 250, "currency": "EUR"});
        assert_eq!(r.require("balance").unwrap().amount_of(&hold).unwrap(), 250);
        assert!(r.require("bank").unwrap().amount_of(&hold).is_err());
        assert_eq!(database_name("kessai", "card-issuer"), "kessai_card_issuer");
    }
}
