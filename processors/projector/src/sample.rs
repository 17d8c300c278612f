//! Sample order histories and the projector's write path without a broker, for benchmarks:
//! the `write_path` bench and the end-to-end projector bench run the same code. Benchmark
//! code: a failure panics, naming what failed.

#![allow(clippy::expect_used)]

use std::sync::Arc;
use std::time::Instant;

use eip_orders::aggregate::{Command, Event, Order, apply, handle};
use eip_runtime::PartitionId;
use eip_schemas::types::{
    AddOrderLine, CommandMetadata, ConfirmOrder, OrderLine, PlaceOrder, RemoveOrderLine, samples,
};
use eip_store::sqlite::{LEDGER_DDL, claim, connect};
use eip_store::view_sqlite::{migrate, versions};
use eip_store::views::Write;

use crate::{GroupCommit, Projection, commit};

/// Events per group commit in [`write_path`].
pub const BATCH: usize = 5_000;
const WAVE: usize = 1_000;

fn meta(id: &str, n: u32) -> CommandMetadata {
    CommandMetadata {
        command_id: format!("{id}/{n}"),
        correlation_id: id.to_string(),
        causation_id: None,
        issued_at: 0,
        aggregate_id: id.to_string(),
        expected_version: None,
    }
}

fn line(sku: String, quantity: i32) -> OrderLine {
    OrderLine {
        sku,
        quantity,
        unit_price_cents: 250,
    }
}

/// Four events per order (placed with two lines, a line added, one removed, confirmed), in
/// waves of 1,000 orders, as a partition of the events topic carries them.
pub fn histories(orders: usize) -> Vec<Event> {
    let mut out = Vec::with_capacity(orders * 4);
    let now = 1_796_000_000_000;
    for wave in (0..orders).step_by(WAVE) {
        let ids: Vec<String> = (wave..(wave + WAVE).min(orders))
            .map(|i| format!("order-{i:08}"))
            .collect();
        let mut states: Vec<Option<Order>> = vec![None; ids.len()];
        for step in 0..4u32 {
            for (k, id) in ids.iter().enumerate() {
                let i = wave + k;
                let command = match step {
                    0 => Command::Place(PlaceOrder {
                        metadata: meta(id, step),
                        customer_id: format!("customer-{}", i % 5_000),
                        lines: vec![
                            line(format!("sku-{}", i % 97), 2),
                            line(format!("sku-{}", i % 89 + 100), 1),
                        ],
                        currency: "EUR".into(),
                        shipping_address: samples::order_placed(1).shipping_address,
                    }),
                    1 => Command::AddLine(AddOrderLine {
                        metadata: meta(id, step),
                        line: line(format!("sku-{}", i % 83 + 200), 3),
                    }),
                    2 => Command::RemoveLine(RemoveOrderLine {
                        metadata: meta(id, step),
                        sku: format!("sku-{}", i % 97),
                    }),
                    _ => Command::Confirm(ConfirmOrder {
                        metadata: meta(id, step),
                    }),
                };
                let event = handle(states[k].as_ref(), &command, now + i as i64)
                    .expect("the sample commands are valid");
                states[k] = Some(apply(states[k].take(), &event));
                out.push(event);
            }
        }
    }
    out
}

/// Folds `events` and group-commits every [`BATCH`] of them into a fresh SQLite file at `db`,
/// as the projector does but with no broker: events/s, and each batch's writes.
pub fn write_path(db: &std::path::Path, events: &[Event]) -> (f64, Vec<Vec<Write>>) {
    let mut conn = connect(db).expect("a views file");
    conn.execute_batch(LEDGER_DDL).expect("the ledger");
    migrate(&conn).expect("the views");
    let part = PartitionId {
        topic: Arc::from("order-events"),
        partition: 0,
    };
    let tx = conn.transaction().expect("a transaction");
    let epoch = claim(&tx, &part).expect("a claim").epoch;
    tx.commit().expect("the claim");
    let live = versions(&conn).expect("the versions");
    let mut p = Projection::default();
    let mut batches = Vec::new();
    let started = Instant::now();
    for (i, chunk) in events.chunks(BATCH).enumerate() {
        for e in chunk {
            p.event(&conn, &live, e).expect("a fold");
        }
        let writes = p.writes();
        let up_to = Some(((i + 1) * BATCH) as i64);
        commit(
            &mut conn,
            &GroupCommit {
                partition: &part,
                epoch,
                writes: &writes,
                timers: &[],
                up_to,
                hold: std::time::Duration::ZERO,
                expected: None,
            },
        )
        .expect("a group commit");
        p.committed(100_000);
        batches.push(writes);
    }
    (
        events.len() as f64 / started.elapsed().as_secs_f64(),
        batches,
    )
}
