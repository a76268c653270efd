//! Saga kinds as definitions: how a client's request of one kind becomes a saga —
//! validated, given its idempotency key, and split into branches.
//!
//! The coordinator knows two kinds out of the box: `payment` ([`PaymentSaga`], one
//! branch at each of balance, card-issuer and bank) and `generic` ([`GenericSaga`],
//! any list of `{participant, payload}` branches). A deployment adds its own with
//! [`SagaDefinitions::with`]. The invariant checks read every kind the same way —
//! from the stored branches and what each participant says a payload moves — so no
//! kind is skipped by them.

use kessai_messages::Payment;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// A saga, ready to be created: what [`SagaDefinition::plan`] makes of a request.
#[derive(Clone, Debug, PartialEq)]
pub struct SagaPlan {
    /// Submissions with the same key name the same saga.
    pub idempotency_key: Option<String>,
    /// (participant, payload) in branch order.
    pub branches: Vec<(String, serde_json::Value)>,
    /// The try deadline the request asks for, if it names one.
    pub try_timeout: Option<std::time::Duration>,
}

/// One kind of saga.
pub trait SagaDefinition: Send + Sync + 'static {
    /// The kind, as stored with each saga (`sagas.kind`) and named by clients.
    fn kind(&self) -> &'static str;

    /// Validates `request` and turns it into branches; the error says what is wrong
    /// with the request, for the client.
    fn plan(&self, request: &serde_json::Value) -> Result<SagaPlan, String>;
}

/// `payment`: the request is a [`Payment`]; its `payment_id` is the idempotency key.
#[derive(Clone, Copy, Debug, Default)]
pub struct PaymentSaga;

impl PaymentSaga {
    pub const KIND: &'static str = "payment";

    /// The plan of an already decoded payment (the typed path of
    /// `Coordinator::submit_payment`).
    pub fn plan_payment(payment: &Payment) -> Result<SagaPlan, String> {
        payment.validate().map_err(|e| e.to_string())?;
        Ok(SagaPlan {
            idempotency_key: Some(format!("payment:{}", payment.payment_id)),
            branches: payment
                .branches()
                .into_iter()
                .map(|(participant, payload)| (participant.to_owned(), payload))
                .collect(),
            try_timeout: None,
        })
    }
}

impl SagaDefinition for PaymentSaga {
    fn kind(&self) -> &'static str {
        Self::KIND
    }

    fn plan(&self, request: &serde_json::Value) -> Result<SagaPlan, String> {
        let payment = Payment::deserialize(request).map_err(|e| format!("not a payment: {e}"))?;
        Self::plan_payment(&payment)
    }
}

/// Checks one branch of a generic saga: is the participant known, does it accept
/// this payload. Supplied by whoever knows the participants (the service, from its
/// participant registry).
pub type BranchCheck = Arc<dyn Fn(&str, &serde_json::Value) -> Result<(), String> + Send + Sync>;

/// `generic`: `{"key": "optional idempotency key", "branches": [{"participant":
/// "...", "payload": {...}}, ...], "try_timeout_ms": 10000}` (`try_timeout_ms`
/// optional, 1 to [`GenericSaga::MAX_TRY_TIMEOUT_MS`]).
#[derive(Clone, Default)]
pub struct GenericSaga {
    check: Option<BranchCheck>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GenericRequest {
    #[serde(default)]
    key: Option<String>,
    branches: Vec<GenericBranch>,
    #[serde(default)]
    try_timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GenericBranch {
    participant: String,
    payload: serde_json::Value,
}

impl GenericSaga {
    pub const KIND: &'static str = "generic";
    /// More branches than this is a mistake, not a saga.
    pub const MAX_BRANCHES: usize = 64;
    /// The longest try deadline a request may ask for (5 minutes): holds are
    /// reservations of other people's money, not parking spots.
    pub const MAX_TRY_TIMEOUT_MS: u64 = 300_000;

    /// A generic saga whose branches `check` accepts.
    pub fn checked(check: BranchCheck) -> Self {
        GenericSaga { check: Some(check) }
    }
}

impl SagaDefinition for GenericSaga {
    fn kind(&self) -> &'static str {
        Self::KIND
    }

    fn plan(&self, request: &serde_json::Value) -> Result<SagaPlan, String> {
        let r = GenericRequest::deserialize(request).map_err(|e| format!("not a generic saga: {e}"))?;
        if r.branches.is_empty() || r.branches.len() > Self::MAX_BRANCHES {
            return Err(format!(
                "a generic saga needs 1 to {} branches, got {}",
                Self::MAX_BRANCHES,
                r.branches.len()
            ));
        }
        if let Some(key) = &r.key
            && key.trim().is_empty()
        {
            return Err("key must not be empty when given".into());
        }
        if let Some(ms) = r.try_timeout_ms
            && !(1..=Self::MAX_TRY_TIMEOUT_MS).contains(&ms)
        {
            return Err(format!(
                "try_timeout_ms must be 1 to {}, got {ms}",
                Self::MAX_TRY_TIMEOUT_MS
            ));
        }
        for (i, b) in r.branches.iter().enumerate() {
            if b.participant.trim().is_empty() {
                return Err(format!("branch {i}: participant must not be empty"));
            }
            if let Some(check) = &self.check {
                check(&b.participant, &b.payload).map_err(|e| format!("branch {i} ({}): {e}", b.participant))?;
            }
        }
        Ok(SagaPlan {
            idempotency_key: r.key.map(|k| format!("generic:{k}")),
            branches: r.branches.into_iter().map(|b| (b.participant, b.payload)).collect(),
            try_timeout: r.try_timeout_ms.map(std::time::Duration::from_millis),
        })
    }
}

/// The kinds a coordinator accepts, by name. Cheap to clone.
#[derive(Clone)]
pub struct SagaDefinitions {
    kinds: BTreeMap<&'static str, Arc<dyn SagaDefinition>>,
}

impl Default for SagaDefinitions {
    /// `payment` and an unchecked `generic`.
    fn default() -> Self {
        SagaDefinitions { kinds: BTreeMap::new() }
            .with(PaymentSaga)
            .with(GenericSaga::default())
    }
}

impl SagaDefinitions {
    /// Adds a kind, replacing one of the same name.
    pub fn with(mut self, definition: impl SagaDefinition) -> Self {
        self.kinds.insert(definition.kind(), Arc::new(definition));
        self
    }

    pub fn get(&self, kind: &str) -> Option<&Arc<dyn SagaDefinition>> {
        self.kinds.get(kind)
    }

    pub fn kinds(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.kinds.keys().copied()
    }
}

impl fmt::Debug for SagaDefinitions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.kinds()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn payment_and_generic_requests_become_branches() {
        let defs = SagaDefinitions::default();
        let payment = json!({"payment_id":"p1","account_id":"acct-1","card_id":"card-1","amount":250,"currency":"EUR"});
        let plan = defs.get("payment").unwrap().plan(&payment).unwrap();
        assert_eq!(plan.idempotency_key.as_deref(), Some("payment:p1"));
        let names: Vec<_> = plan.branches.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(names, ["balance", "card-issuer", "bank"]);
        assert!(defs.get("payment").unwrap().plan(&json!({"amount": 1})).is_err());

        let generic = json!({"key":"g1","branches":[{"participant":"points","payload":{"n":1}}]});
        let plan = defs.get("generic").unwrap().plan(&generic).unwrap();
        assert_eq!(plan.idempotency_key.as_deref(), Some("generic:g1"));
        assert_eq!(plan.branches, vec![("points".to_owned(), json!({"n":1}))]);
        assert!(defs.get("generic").unwrap().plan(&json!({"branches":[]})).is_err());
        assert!(defs.get("refund").is_none());
    }

    #[test]
    fn a_checked_generic_saga_refuses_what_its_participants_refuse() {
        let generic = GenericSaga::checked(Arc::new(|participant, _payload| {
            if participant == "points" {
                Ok(())
            } else {
                Err("unknown participant".into())
            }
        }));
        let bad = json!({"branches":[{"participant":"points","payload":{}},{"participant":"nope","payload":{}}]});
        let err = generic.plan(&bad).unwrap_err();
        assert!(err.contains("branch 1 (nope): unknown participant"), "{err}");
        assert!(
            generic
                .plan(&json!({"branches":[{"participant":"points","payload":{}}], "extra": 1}))
                .is_err()
        );
    }
}
