//! The wire codec on the hot path: every command and reply is encoded once and
//! decoded once (`cargo bench -p kessai-messages`).

use criterion::{Criterion, criterion_group, criterion_main};
use kessai_messages::{BranchId, Command, Currency, Envelope, Operation, Outcome, Payment, SagaId};
use std::hint::black_box;

fn payment_command() -> Envelope {
    let payment = Payment {
        payment_id: "bench-1".into(),
        account_id: "acct-42".into(),
        card_id: "card-42".into(),
        amount: 12_345,
        currency: Currency::new("EUR").unwrap(),
        settlement_account: "settlement-main".into(),
    };
    let (participant, payload) = payment.branches()[0].clone();
    let mut env = Envelope::command(
        SagaId::new(),
        BranchId(0),
        Operation::Try,
        1,
        Some(1_800_000_000_000),
        Command {
            participant: participant.into(),
            reply_to: "kessai-coordinator-replies".into(),
            payload,
        },
    );
    env.headers.insert(
        "traceparent".into(),
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
    );
    env
}

fn codec(c: &mut Criterion) {
    let command = payment_command();
    let bytes = command.encode();
    let reply = command.reply("balance", Outcome::Ok).encode();
    c.bench_function("envelope_encode_command", |b| b.iter(|| black_box(&command).encode()));
    c.bench_function("envelope_decode_command", |b| {
        b.iter(|| Envelope::decode(black_box(&bytes)).unwrap())
    });
    c.bench_function("envelope_decode_reply", |b| {
        b.iter(|| Envelope::decode(black_box(&reply)).unwrap())
    });
}

criterion_group!(benches, codec);
criterion_main!(benches);
