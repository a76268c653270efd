//! SPEC §4, checked the way an auditor would: the coordinator's saga outcomes against
//! each participant's own books (read through the participant's own code).

use kessai_coordinator::SagaState;
use kessai_messages::{Payment, SagaId};
use kessai_participants::{Audit, Effect};
use serde::Serialize;
use std::collections::HashSet;

/// One saga as the coordinator recorded it.
#[derive(Clone, Debug)]
pub struct SagaOutcome {
    pub id: SagaId,
    pub state: SagaState,
    /// For payments: the amount every participant must have moved if it confirmed.
    pub amount: Option<i64>,
}

impl SagaOutcome {
    pub fn from_row(id: SagaId, state: SagaState, request: &str) -> Self {
        let amount = serde_json::from_str::<Payment>(request).ok().map(|p| p.amount);
        SagaOutcome { id, state, amount }
    }
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
    let confirmed_total: i64 = outcomes
        .iter()
        .filter(|o| o.state == SagaState::Confirmed)
        .filter_map(|o| o.amount)
        .sum();

    // 1. Atomicity.
    let mut offending = Vec::new();
    for o in outcomes.iter().filter(|o| o.state.is_terminal()) {
        let Some(amount) = o.amount else { continue };
        let atomic = audits.iter().all(|a| match (o.state, a.effects.get(&o.id)) {
            (SagaState::Confirmed, Some(Effect::Committed(x))) => *x == amount,
            (SagaState::Confirmed, _) => false,
            (_, None | Some(Effect::Released(_))) => true,
            (_, Some(_)) => false,
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
        if a.moved != confirmed_total {
            problems.push(format!(
                "{}: accounts moved {} but confirmed sagas total {}",
                a.participant, a.moved, confirmed_total
            ));
        }
        if a.committed_by_holds() != confirmed_total {
            problems.push(format!(
                "{}: committed holds total {} but confirmed sagas total {}",
                a.participant,
                a.committed_by_holds(),
                confirmed_total
            ));
        }
    }
    let conservation = check(
        "conservation",
        vec![],
        problems,
        format!("each participant moved exactly {confirmed_total}, the confirmed total, once"),
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
            SagaOutcome {
                id: a,
                state: SagaState::Confirmed,
                amount: Some(10),
            },
            SagaOutcome {
                id: b,
                state: SagaState::Cancelled,
                amount: Some(5),
            },
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
        outcomes2.push(SagaOutcome {
            id: c,
            state: SagaState::Trying,
            amount: Some(1),
        });
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
