//! The three reference participants by name, for binaries that pick one from
//! configuration (`kessai participant <balance|card-issuer|bank>`) or run all three.

use crate::ledger::Audit;
use crate::sdk::runtime::{ParticipantRuntime, RuntimeConfig};
use crate::{BalanceParticipant, BankParticipant, CardIssuerParticipant, Error};
use kessai_messages::payment::{BALANCE, BANK, CARD_ISSUER};
use kessai_transport::Transport;
use sea_orm::DatabaseConnection;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReferenceParticipant {
    Balance,
    CardIssuer,
    Bank,
}

impl ReferenceParticipant {
    /// In branch order of a payment.
    pub const ALL: [ReferenceParticipant; 3] = [
        ReferenceParticipant::Balance,
        ReferenceParticipant::CardIssuer,
        ReferenceParticipant::Bank,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ReferenceParticipant::Balance => BALANCE,
            ReferenceParticipant::CardIssuer => CARD_ISSUER,
            ReferenceParticipant::Bank => BANK,
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    /// Seeds the demo data set into this participant's (migrated) database.
    pub async fn seed_demo(self, db: &DatabaseConnection) -> Result<u64, Error> {
        match self {
            ReferenceParticipant::Balance => BalanceParticipant::seed_demo(db).await,
            ReferenceParticipant::CardIssuer => CardIssuerParticipant::seed_demo(db).await,
            ReferenceParticipant::Bank => BankParticipant::seed_demo(db).await,
        }
    }

    pub async fn audit(self, db: &DatabaseConnection) -> Result<Audit, Error> {
        match self {
            ReferenceParticipant::Balance => BalanceParticipant::audit(db).await,
            ReferenceParticipant::CardIssuer => CardIssuerParticipant::audit(db).await,
            ReferenceParticipant::Bank => BankParticipant::audit(db).await,
        }
    }

    /// Runs this participant's [`ParticipantRuntime`] until `cancel` fires.
    pub async fn run(
        self,
        db: DatabaseConnection,
        transport: Arc<dyn Transport>,
        config: RuntimeConfig,
        cancel: CancellationToken,
    ) -> Result<(), Error> {
        match self {
            ReferenceParticipant::Balance => {
                ParticipantRuntime::with_config(BalanceParticipant, db, transport, config)
                    .run(cancel)
                    .await
            }
            ReferenceParticipant::CardIssuer => {
                ParticipantRuntime::with_config(CardIssuerParticipant, db, transport, config)
                    .run(cancel)
                    .await
            }
            ReferenceParticipant::Bank => {
                ParticipantRuntime::with_config(BankParticipant, db, transport, config)
                    .run(cancel)
                    .await
            }
        }
    }
}

impl fmt::Display for ReferenceParticipant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ReferenceParticipant {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_name(s).ok_or_else(|| {
            Error::Invalid(format!(
                "unknown participant {s:?} (expected one of {BALANCE}, {CARD_ISSUER}, {BANK})"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for p in ReferenceParticipant::ALL {
            assert_eq!(p.name().parse::<ReferenceParticipant>().unwrap(), p);
        }
        assert!("wallet".parse::<ReferenceParticipant>().is_err());
    }
}
