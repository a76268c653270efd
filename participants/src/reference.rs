//! The three reference participants' registrations: each one's schema, demo data,
//! audit and the amount its payload moves. [`Registry::reference`](crate::Registry::reference)
//! lists them in branch order of a payment.

use crate::ledger::Audit;
use crate::registry::Registrable;
use crate::{BalanceParticipant, BankParticipant, CardIssuerParticipant, Error};
use async_trait::async_trait;
use kessai_messages::payment::{CardAuthorization, SettlementTransfer, WalletHold};
use kessai_migrations::{BalanceMigrator, BankMigrator, CardIssuerMigrator};
use sea_orm::DatabaseConnection;

/// Implements [`Registrable`] for a reference participant whose type has inherent
/// `seed_demo` / `audit` functions and whose payload carries an `amount`.
macro_rules! register {
    ($participant:ty, $migrator:ty, $payload:ty) => {
        #[async_trait]
        impl Registrable for $participant {
            type Migrator = $migrator;

            async fn seed_demo(db: &DatabaseConnection) -> Result<u64, Error> {
                <$participant>::seed_demo(db).await
            }

            async fn audit(db: &DatabaseConnection) -> Result<Audit, Error> {
                <$participant>::audit(db).await
            }

            fn amount(payload: &$payload) -> i64 {
                payload.amount
            }
        }
    };
}

register!(BalanceParticipant, BalanceMigrator, WalletHold);
register!(CardIssuerParticipant, CardIssuerMigrator, CardAuthorization);
register!(BankParticipant, BankMigrator, SettlementTransfer);
