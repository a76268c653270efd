//! The payment request and the payloads of the three reference participants.
//!
//! One payment is one saga with three branches, in this order: the wallet hold at
//! `balance`, the card authorization at `card-issuer`, and the settlement transfer at
//! `bank`. Amounts are integers in the currency's minor unit, never floats.

use serde::{Deserialize, Serialize};
use std::fmt;
use thiserror::Error;

pub const BALANCE: &str = "balance";
pub const CARD_ISSUER: &str = "card-issuer";
pub const BANK: &str = "bank";
/// The reference participants, in branch order.
pub const PARTICIPANTS: [&str; 3] = [BALANCE, CARD_ISSUER, BANK];
/// The bank account settlements are drawn from unless a payment names another.
pub const DEFAULT_SETTLEMENT_ACCOUNT: &str = "settlement-main";

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PaymentError {
    #[error("amount must be a positive integer in minor units, got {0}")]
    NonPositiveAmount(i64),
    #[error("currency must be an ISO 4217 code of three upper-case letters, got {0:?}")]
    BadCurrency(String),
    #[error("{0} must not be empty")]
    Empty(&'static str),
    #[error("payload does not match: {0}")]
    Payload(String),
}

/// An ISO 4217 alphabetic code.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency(String);

impl Currency {
    pub fn new(code: &str) -> Result<Self, PaymentError> {
        if code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase()) {
            Ok(Currency(code.to_owned()))
        } else {
            Err(PaymentError::BadCurrency(code.to_owned()))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Currency {
    type Error = PaymentError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Currency::new(&s)
    }
}

impl From<Currency> for String {
    fn from(c: Currency) -> String {
        c.0
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a client submits. `payment_id` is the idempotency key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    pub payment_id: String,
    pub account_id: String,
    pub card_id: String,
    pub amount: i64,
    pub currency: Currency,
    /// The issuer's settlement account at the bank.
    #[serde(default = "default_settlement_account")]
    pub settlement_account: String,
}

fn default_settlement_account() -> String {
    DEFAULT_SETTLEMENT_ACCOUNT.to_owned()
}

impl Payment {
    pub fn validate(&self) -> Result<(), PaymentError> {
        non_empty("payment_id", &self.payment_id)?;
        non_empty("account_id", &self.account_id)?;
        non_empty("card_id", &self.card_id)?;
        non_empty("settlement_account", &self.settlement_account)?;
        positive(self.amount)
    }

    /// The three branch payloads, in branch order, each tagged with its participant.
    pub fn branches(&self) -> [(&'static str, serde_json::Value); 3] {
        let wallet = WalletHold {
            account_id: self.account_id.clone(),
            amount: self.amount,
            currency: self.currency.clone(),
        };
        let card = CardAuthorization {
            card_id: self.card_id.clone(),
            amount: self.amount,
            currency: self.currency.clone(),
        };
        let transfer = SettlementTransfer {
            settlement_account: self.settlement_account.clone(),
            amount: self.amount,
            currency: self.currency.clone(),
        };
        [
            (BALANCE, serde_json::to_value(wallet).expect("serialises")),
            (CARD_ISSUER, serde_json::to_value(card).expect("serialises")),
            (BANK, serde_json::to_value(transfer).expect("serialises")),
        ]
    }
}

fn non_empty(field: &'static str, value: &str) -> Result<(), PaymentError> {
    if value.trim().is_empty() {
        Err(PaymentError::Empty(field))
    } else {
        Ok(())
    }
}

fn positive(amount: i64) -> Result<(), PaymentError> {
    if amount > 0 {
        Ok(())
    } else {
        Err(PaymentError::NonPositiveAmount(amount))
    }
}

/// Decodes and validates a participant payload.
pub trait BranchPayload: Sized + serde::de::DeserializeOwned {
    fn validate(&self) -> Result<(), PaymentError>;

    fn from_value(value: &serde_json::Value) -> Result<Self, PaymentError> {
        let p: Self = serde_json::from_value(value.clone()).map_err(|e| PaymentError::Payload(e.to_string()))?;
        p.validate()?;
        Ok(p)
    }
}

/// `balance`: freeze `amount` in wallet `account_id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalletHold {
    pub account_id: String,
    pub amount: i64,
    pub currency: Currency,
}

impl BranchPayload for WalletHold {
    fn validate(&self) -> Result<(), PaymentError> {
        non_empty("account_id", &self.account_id)?;
        positive(self.amount)
    }
}

/// `card-issuer`: authorise `amount` on card `card_id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardAuthorization {
    pub card_id: String,
    pub amount: i64,
    pub currency: Currency,
}

impl BranchPayload for CardAuthorization {
    fn validate(&self) -> Result<(), PaymentError> {
        non_empty("card_id", &self.card_id)?;
        positive(self.amount)
    }
}

/// `bank`: reserve a transfer of `amount` from `settlement_account`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettlementTransfer {
    pub settlement_account: String,
    pub amount: i64,
    pub currency: Currency,
}

impl BranchPayload for SettlementTransfer {
    fn validate(&self) -> Result<(), PaymentError> {
        non_empty("settlement_account", &self.settlement_account)?;
        positive(self.amount)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn currency_is_iso_shaped() {
        assert!(Currency::new("EUR").is_ok());
        assert!(Currency::new("eur").is_err());
        assert!(Currency::new("EURO").is_err());
        assert!(serde_json::from_str::<Currency>("\"US\"").is_err());
    }

    #[test]
    fn payment_validation_and_branches() {
        let p: Payment = serde_json::from_str(
            r#"{"payment_id":"p1","account_id":"acct-1","card_id":"card-1","amount":250,"currency":"JPY"}"#,
        )
        .unwrap();
        p.validate().unwrap();
        assert_eq!(p.settlement_account, DEFAULT_SETTLEMENT_ACCOUNT);
        let b = p.branches();
        assert_eq!(b[0].0, BALANCE);
        let hold = WalletHold::from_value(&b[0].1).unwrap();
        assert_eq!(hold.amount, 250);
        let mut bad = p.clone();
        bad.amount = 0;
        assert_eq!(bad.validate(), Err(PaymentError::NonPositiveAmount(0)));
        assert!(serde_json::from_str::<Payment>(r#"{"payment_id":"p","amount":1.5}"#).is_err());
        assert!(WalletHold::from_value(&serde_json::json!({"account_id":"a","amount":-3,"currency":"EUR"})).is_err());
    }
}
