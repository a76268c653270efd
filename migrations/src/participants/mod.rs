//! Participants' schemas.
//!
//! Every participant database holds the shared barrier table (one row per
//! (saga, branch, operation) it has answered, with the answer) and its own ledger.
//! The three reference participants each get a migrator = barrier + ledger, so a
//! service's database never contains another service's tables.
//!
//! Conventions, as in the coordinator: ids are strings (saga ids are UUID text),
//! times are BIGINT Unix milliseconds, money is BIGINT minor units. Amount columns carry
//! CHECK constraints so that a bug in business code fails loudly instead of leaving a
//! negative balance behind.

use sea_orm_migration::prelude::*;

mod m20261122_000101_barriers;
mod m20261122_000102_wallets;
mod m20261122_000103_cards;
mod m20261122_000104_settlement;

/// `balance`: barrier + `wallets` / `wallet_freezes`.
pub struct BalanceMigrator;
/// `card-issuer`: barrier + `cards` / `card_holds`.
pub struct CardIssuerMigrator;
/// `bank`: barrier + `settlement_accounts` / `transfers`.
pub struct BankMigrator;

#[async_trait::async_trait]
impl MigratorTrait for BalanceMigrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        barrier_and(m20261122_000102_wallets::Migration)
    }
}

#[async_trait::async_trait]
impl MigratorTrait for CardIssuerMigrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        barrier_and(m20261122_000103_cards::Migration)
    }
}

#[async_trait::async_trait]
impl MigratorTrait for BankMigrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        barrier_and(m20261122_000104_settlement::Migration)
    }
}

/// A reference participant's migrations: the barrier table, then its `ledger`.
pub fn barrier_and(ledger: impl MigrationTrait + 'static) -> Vec<Box<dyn MigrationTrait>> {
    vec![Box::new(m20261122_000101_barriers::Migration), Box::new(ledger)]
}
