//! The invariants of docs/GUARANTEES.md, checked the way an auditor would: the coordinator's saga outcomes against
//! each participant's own books (read through the participant's own code).

use kessai_coordinator::SagaState;
use kessai_coordinator::store::{self, entities::branch};
use kessai_messages::{BranchId, SagaId};
use kessai_participants::{Audit, BranchRef, Effect, Registry};
use sea_orm::{ConnectionTrait, EntityTrait, QuerySelect};
use serde::Serialize;
use std::collections::{HashMap, HashSet};

/// One saga as the coordinator recorded it, with what each branch must have moved at
/// its participant if the saga confirmed.
#[derive(Clone, Debug)]
pub struct SagaOutcome {
    pub id: SagaId,
    pub state: SagaState,
    pub branches: Vec<ExpectedBranch>,
}

/// A branch and the amount its participant says its payload moves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectedBranch {
    pub participant: String,
    pub branch: BranchId,
    pub amount: i64,
}

/// Every saga in the coordinator's database, of every kind, with its branches read
/// the same way: the registry's participant decodes each branch payload and says what
/// it moves. A branch its participant cannot read is an error, not a skipped saga.
pub async fn read_outcomes<C: ConnectionTrait>(db: &C, registry: &Registry) -> anyhow::Result<Vec<SagaOutcome>> {
    let rows: Vec<(String, i32, String, String)> = branch::Entity::find()
        .select_only()
        .column(branch::Column::SagaId)
        .column(branch::Column::BranchId)
        .column(branch::Column::Participant)
        .column(branch::Column::Payload)
        .into_tuple()
        .all(db)
        .await?;
    let mut branches: HashMap<String, Vec<ExpectedBranch>> = HashMap::new();
    for (saga, id, participant, payload) in rows {
        let p = registry.require(&participant)?;
        let payload: serde_json::Value = serde_json::from_str(&payload)?;
        let amount = p
            .amount_of(&payload)
            .map_err(|e| anyhow::anyhow!("saga {saga} branch {id} at {participant}: {e}"))?;
        let branch = BranchId(u32::try_from(id).map_err(|_| anyhow::anyhow!("saga {saga}: branch id {id}"))?);
        branches.entry(saga).or_default().push(ExpectedBranch {
            participant,
            branch,
            amount,
        });
    }
    Ok(store::outcomes(db)
        .await?
        .into_iter()
        .map(|(id, state)| SagaOutcome {
            id,
            state,
            branches: branches.remove(&id.to_string()).unwrap_or_default(),
        })
        .collect())
}

/// A resubmission of an acknowledged payment and what it returned.
#[derive(Clone, Debug)]
pub struct Resubmission {
    pub first: SagaId,
    pub again: SagaId,
    pub created: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
    /// Up to 20 offending saga ids.
    pub offending: Vec<SagaId>,
}

#[derive(Clone, Debug, Serialize)]
pub struct InvariantReport {
    pub checks: Vec<Check>,
}

impl InvariantReport {
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }

    /// One line a check, with its offending sagas, for the human-readable reports.
    pub fn print(&self) {
        for c in &self.checks {
            println!(
                "    [{}] {:<24} {}",
                if c.ok { "pass" } else { "FAIL" },
                c.name,
                c.detail
            );
            for id in &c.offending {
                println!("           saga {id}");
            }
        }
    }
}

const MAX_OFFENDERS: usize = 20;

fn check(name: &'static str, offending: Vec<SagaId>, problems: Vec<String>, fine: String) -> Check {
    let ok = offending.is_empty() && problems.is_empty();
    let detail = if ok {
        fine
    } else {
        let mut d = problems;
        if !offending.is_empty() {
            d.push(format!("{} sagas", offending.len()));
        }
        d.join("; ")
    };
    Check {
        name,
        ok,
        detail,
        offending: offending.into_iter().take(MAX_OFFENDERS).collect(),
    }
}

/// Checks the invariants. `acknowledged` are the saga ids clients were given.
pub fn check_all(
    outcomes: &[SagaOutcome],
    audits: &[Audit],
    acknowledged: &[SagaId],
    resubmissions: &[Resubmission],
) -> InvariantReport {
    // What confirmed sagas must have moved, by participant.
    let mut confirmed_by_participant: HashMap<&str, i64> = HashMap::new();
    for o in outcomes.iter().filter(|o| o.state == SagaState::Confirmed) {
        for b in &o.branches {
            *confirmed_by_participant.entry(b.participant.as_str()).or_default() += b.amount;
        }
    }
    let books: HashMap<&str, &Audit> = audits.iter().map(|a| (a.participant, a)).collect();

    // 1. Atomicity, branch by branch at the participant that owns it (a participant
    //    whose books were not supplied is not checked).
    let mut offending = Vec::new();
    for o in outcomes.iter().filter(|o| o.state.is_terminal()) {
        let atomic = o.branches.iter().all(|b| {
            let Some(audit) = books.get(b.participant.as_str()) else {
                return true;
            };
            let effect = audit.branch_effects.get(&BranchRef::new(o.id, b.branch));
            match (o.state, effect) {
                (SagaState::Confirmed, Some(Effect::Committed(x))) => *x == b.amount,
                (SagaState::Confirmed, _) => false,
                (_, None | Some(Effect::Released(_))) => true,
                (_, Some(_)) => false,
            }
        });
        if !atomic {
            offending.push(o.id);
        }
    }
    let atomicity = check(
        "atomicity",
        offending,
        vec![],
        "every confirmed saga committed at every participant; every cancelled one left no effect".into(),
    );

    // 2. Conservation.
    let mut problems = Vec::new();
    for a in audits {
        let expected = confirmed_by_participant.get(a.participant).copied().unwrap_or(0);
        if a.moved != expected {
            problems.push(format!(
                "{}: accounts moved {} but its confirmed branches total {}",
                a.participant, a.moved, expected
            ));
        }
        if a.committed_by_holds() != expected {
            problems.push(format!(
                "{}: committed holds total {} but its confirmed branches total {}",
                a.participant,
                a.committed_by_holds(),
                expected
            ));
        }
    }
    let moved: Vec<String> = audits
        .iter()
        .map(|a| format!("{} {}", a.participant, a.moved))
        .collect();
    let conservation = check(
        "conservation",
        vec![],
        problems,
        format!(
            "each participant moved exactly its confirmed branches' amounts, once ({})",
            moved.join(", ")
        ),
    );

    // 3. No leaked reservations.
    let mut leaked: Vec<SagaId> = audits
        .iter()
        .flat_map(|a| {
            a.effects
                .iter()
                .filter(|(_, e)| matches!(e, Effect::Reserved(_)))
                .map(|(id, _)| *id)
        })
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    leaked.sort();
    let problems = audits
        .iter()
        .filter(|a| a.reserved != 0)
        .map(|a| format!("{}: {} still reserved in accounts", a.participant, a.reserved))
        .collect();
    let reservations = check(
        "no_leaked_reservations",
        leaked,
        problems,
        "no freeze, hold or reserved transfer remains".into(),
    );

    // 4. Liveness.
    let unfinished: Vec<SagaId> = outcomes
        .iter()
        .filter(|o| !o.state.is_terminal())
        .map(|o| o.id)
        .collect();
    let liveness = check(
        "liveness",
        unfinished,
        vec![],
        format!("all {} sagas terminal", outcomes.len()),
    );

    // 5. No lost submission; idempotent resubmission.
    let terminal: HashSet<SagaId> = outcomes
        .iter()
        .filter(|o| o.state.is_terminal())
        .map(|o| o.id)
        .collect();
    let mut lost: Vec<SagaId> = acknowledged
        .iter()
        .filter(|id| !terminal.contains(id))
        .copied()
        .collect();
    let problems: Vec<String> = resubmissions
        .iter()
        .filter(|r| r.created || r.first != r.again)
        .map(|r| format!("resubmitting {} created {}", r.first, r.again))
        .collect();
    lost.dedup();
    let submissions = check(
        "no_lost_submission",
        lost,
        problems,
        format!(
            "{} acknowledged submissions terminal; {} resubmissions created nothing",
            acknowledged.len(),
            resubmissions.len()
        ),
    );

    InvariantReport {
        checks: vec![atomicity, conservation, reservations, liveness, submissions],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// The hand-built audits below all name branch 0.
    const PAYMENT: &[&str] = &["balance", "card-issuer", "bank"];

    impl SagaOutcome {
        /// Branch 0 at each of `participants`, each moving `amount`.
        fn uniform(id: SagaId, state: SagaState, amount: i64, participants: &[&str]) -> Self {
            let branches = participants
                .iter()
                .map(|p| ExpectedBranch {
                    participant: (*p).to_owned(),
                    branch: BranchId(0),
                    amount,
                })
                .collect();
            SagaOutcome { id, state, branches }
        }
    }

    fn audit(name: &'static str, effects: Vec<(SagaId, Effect)>, moved: i64, reserved: i64) -> Audit {
        Audit {
            participant: name,
            branch_effects: effects
                .iter()
                .map(|(id, e)| {
                    (
                        kessai_participants::BranchRef::new(*id, kessai_messages::BranchId(0)),
                        *e,
                    )
                })
                .collect(),
            effects: effects.into_iter().collect::<HashMap<_, _>>(),
            moved,
            reserved,
            barrier_records: 0,
        }
    }

    #[test]
    fn detects_each_violation() {
        let (a, b) = (SagaId::new(), SagaId::new());
        let outcomes = vec![
            SagaOutcome::uniform(a, SagaState::Confirmed, 10, PAYMENT),
            SagaOutcome::uniform(b, SagaState::Cancelled, 5, PAYMENT),
        ];
        let good = audit(
            "balance",
            vec![(a, Effect::Committed(10)), (b, Effect::Released(5))],
            10,
            0,
        );
        let report = check_all(&outcomes, std::slice::from_ref(&good), &[a, b], &[]);
        assert!(report.ok(), "{report:?}");

        // A cancelled saga that left money moved: atomicity and conservation fail.
        let bad = audit(
            "bank",
            vec![(a, Effect::Committed(10)), (b, Effect::Committed(5))],
            15,
            0,
        );
        let report = check_all(&outcomes, &[good.clone(), bad], &[a, b], &[]);
        let failed: Vec<_> = report.checks.iter().filter(|c| !c.ok).map(|c| c.name).collect();
        assert_eq!(failed, vec!["atomicity", "conservation"]);
        assert_eq!(report.checks[0].offending, vec![b]);

        // A leak, an unfinished saga, a lost submission, a duplicate resubmission.
        let leak = audit(
            "card-issuer",
            vec![(a, Effect::Committed(10)), (b, Effect::Reserved(5))],
            10,
            5,
        );
        let c = SagaId::new();
        let mut outcomes2 = outcomes.clone();
        outcomes2.push(SagaOutcome::uniform(c, SagaState::Trying, 1, PAYMENT));
        let resub = Resubmission {
            first: a,
            again: SagaId::new(),
            created: true,
        };
        let report = check_all(&outcomes2, &[leak], &[a, b, c, SagaId::new()], &[resub]);
        let failed: Vec<_> = report.checks.iter().filter(|c| !c.ok).map(|c| c.name).collect();
        assert_eq!(
            failed,
            vec!["atomicity", "no_leaked_reservations", "liveness", "no_lost_submission"]
        );
    }
}
