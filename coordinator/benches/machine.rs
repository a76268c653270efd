//! The pure state machine on the hot path: one payment's life is a submission and
//! six replies (`cargo bench -p kessai-coordinator`).

use criterion::{Criterion, criterion_group, criterion_main};
use kessai_coordinator::machine::{self, Event, Policy, Saga};
use kessai_messages::{BranchId, Operation, Outcome, SagaId};
use std::hint::black_box;

fn new_saga(policy: &Policy) -> Saga {
    let branches = ["balance", "card-issuer", "bank"]
        .into_iter()
        .map(|p| {
            (
                p.to_owned(),
                serde_json::json!({"account_id": "acct-1", "amount": 1250}),
            )
        })
        .collect();
    Saga::new(SagaId::new(), branches, 1_000, 11_000, policy).0
}

fn reply(branch: u32, operation: Operation) -> Event {
    Event::Reply {
        participant: ["balance", "card-issuer", "bank"][branch as usize].to_owned(),
        branch: BranchId(branch),
        operation,
        attempt: 1,
        outcome: Outcome::Ok,
    }
}

fn transitions(c: &mut Criterion) {
    let policy = Policy::default();
    let trying = new_saga(&policy);
    c.bench_function("machine_new_saga", |b| b.iter(|| new_saga(black_box(&policy))));
    c.bench_function("machine_apply_try_ok", |b| {
        b.iter(|| machine::apply(black_box(&trying), &reply(0, Operation::Try), 1_010, &policy).unwrap())
    });
    // The last try OK: the machine decides and emits three confirms.
    let mut two_prepared = trying.clone();
    for branch in 0..2 {
        two_prepared = machine::apply(&two_prepared, &reply(branch, Operation::Try), 1_010, &policy)
            .unwrap()
            .saga;
    }
    c.bench_function("machine_apply_decide_confirm", |b| {
        b.iter(|| machine::apply(black_box(&two_prepared), &reply(2, Operation::Try), 1_020, &policy).unwrap())
    });
    c.bench_function("machine_payment_lifecycle", |b| {
        b.iter(|| {
            let mut saga = new_saga(&policy);
            for op in [Operation::Try, Operation::Confirm] {
                for branch in 0..3 {
                    saga = machine::apply(&saga, &reply(branch, op), 1_030, &policy).unwrap().saga;
                }
            }
            assert!(saga.state.is_terminal());
            saga
        })
    });
    c.bench_function("machine_tick_not_due", |b| {
        b.iter(|| machine::apply(black_box(&trying), &Event::Tick, 1_005, &policy).unwrap())
    });
}

criterion_group!(benches, transitions);
criterion_main!(benches);
