//! What the end-to-end tests share: payments on the demo data set and short resend
//! settings. Each test binary uses a part of it.
#![allow(dead_code)]

use kessai_coordinator::CoordinatorConfig;
use kessai_messages::Currency;
use kessai_messages::payment::{DEFAULT_SETTLEMENT_ACCOUNT, Payment};
use kessai_participants::ledger::{FROZEN_SETTLEMENT_ACCOUNT, demo_account_id, demo_card_id};
use kessai_transport::SqsConfig;

/// A client of the SQS emulator (`kessai_testkit::sqs_endpoint`, test credentials).
pub fn sqs_config() -> SqsConfig {
    SqsConfig {
        endpoint_url: Some(kessai_testkit::sqs_endpoint()),
        region: "us-east-1".into(),
        access_key_id: Some("test".into()),
        secret_access_key: Some("test".into()),
        ..SqsConfig::default()
    }
}

/// A EUR payment from demo wallet `acct-<account>` and card `card-<card>`; `fail`
/// settles it from the frozen account, so the bank's try refuses it and it cancels.
pub fn payment(payment_id: impl Into<String>, account: usize, card: usize, amount: i64, fail: bool) -> Payment {
    Payment {
        payment_id: payment_id.into(),
        account_id: demo_account_id(account as u32),
        card_id: demo_card_id(card as u32),
        amount,
        currency: Currency::new("EUR").expect("a currency code"),
        settlement_account: if fail {
            FROZEN_SETTLEMENT_ACCOUNT
        } else {
            DEFAULT_SETTLEMENT_ACCOUNT
        }
        .into(),
    }
}

/// `config` with resends after `first_ms`, backing off to at most a second, so
/// recovery after a crash or a lost message takes seconds, not minutes.
pub fn brisk(mut config: CoordinatorConfig, first_ms: i64) -> CoordinatorConfig {
    config.policy.try_resend.initial_ms = first_ms;
    config.policy.try_resend.max_ms = 1_000;
    config.policy.finish_resend.initial_ms = first_ms;
    config.policy.finish_resend.max_ms = 1_000;
    config
}
