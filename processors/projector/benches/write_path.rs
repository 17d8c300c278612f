//! The projector's write path, no broker: events folded into the views and written in group
//! commits of 5,000 events to a fresh SQLite file (`synchronous=FULL`, the epoch check and the
//! ledger in each transaction), against a plain rusqlite loop that upserts the same rows in
//! the same batches with hand-written SQL and nothing else, in the same run.
//!
//! ```text
//! cargo bench -p eip-projector --bench write_path -- [--orders N] [--rounds R]
//! ```
//!
//! Targets: the projector at 0.5x the loop or better, and 100k events/s or more.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::Instant;

use eip_projector::sample::BATCH;
use eip_store::sqlite::{LEDGER_DDL, connect};
use eip_store::view_sqlite::migrate;
use eip_store::views::{Value, Write};
use rusqlite::Connection;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| v.parse().unwrap())
}

fn fresh(dir: &std::path::Path, name: &str) -> Connection {
    let conn = connect(&dir.join(name)).unwrap();
    conn.execute_batch(LEDGER_DDL).unwrap();
    migrate(&conn).unwrap();
    conn
}

/// The same rows, upserted by hand-written statements in the same batches.
fn plain_loop(dir: &std::path::Path, name: &str, batches: &[Vec<Write>], events: usize) -> f64 {
    let mut conn = fresh(dir, name);
    let started = Instant::now();
    for batch in batches {
        let tx = conn.transaction().unwrap();
        for w in batch {
            match w {
                Write::Upsert { row, .. } => {
                    let sql = match row.table.name {
                        "order_summary" => {
                            "INSERT OR REPLACE INTO order_summary_v1 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
                        }
                        "order_lines" => {
                            "INSERT OR REPLACE INTO order_lines_v1 VALUES (?1, ?2, ?3, ?4, ?5)"
                        }
                        "orders_by_customer" => {
                            "INSERT OR REPLACE INTO orders_by_customer_v1 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
                        }
                        "product_sales" => {
                            "INSERT OR REPLACE INTO product_sales_v1 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
                        }
                        other => panic!("no statement for {other}"),
                    };
                    tx.prepare_cached(sql)
                        .unwrap()
                        .execute(rusqlite::params_from_iter(row.values.iter()))
                        .unwrap();
                }
                Write::Delete { key, .. } => {
                    assert_eq!(w.table().name, "order_lines");
                    if let [Value::Text(order), Value::Text(sku)] = key.as_slice() {
                        tx.prepare_cached(
                            "DELETE FROM order_lines_v1 WHERE order_id = ?1 AND sku = ?2",
                        )
                        .unwrap()
                        .execute([order, sku])
                        .unwrap();
                    }
                }
            }
        }
        tx.commit().unwrap();
    }
    events as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let orders = arg("--orders", 50_000);
    let rounds = arg("--rounds", 3);
    let events = eip_projector::sample::histories(orders);
    let dir = tempfile::tempdir().unwrap();
    println!(
        "projector write path: {} events ({orders} orders, 4 events each), batches of {BATCH}, SQLite synchronous=FULL",
        events.len()
    );
    let mut ratios = Vec::new();
    let mut rates = Vec::new();
    for round in 0..rounds {
        let (rate, batches) =
            eip_projector::sample::write_path(&dir.path().join(format!("p{round}.db")), &events);
        let rows: usize = batches.iter().map(Vec::len).sum();
        let base = plain_loop(dir.path(), &format!("l{round}.db"), &batches, events.len());
        println!(
            "round {round}: projector {rate:>9.0} events/s | plain rusqlite loop, same {rows} row writes {base:>9.0} events/s | ratio {:.2}",
            rate / base
        );
        ratios.push(rate / base);
        rates.push(rate);
    }
    ratios.sort_by(f64::total_cmp);
    rates.sort_by(f64::total_cmp);
    let (ratio, rate) = (ratios[ratios.len() / 2], rates[rates.len() / 2]);
    println!(
        "median: projector {rate:.0} events/s (target >= 100,000: {}), {ratio:.2}x the plain loop (target >= 0.5x: {}); the store binds when the ratio is near 1",
        if rate >= 100_000.0 { "met" } else { "NOT met" },
        if ratio >= 0.5 { "met" } else { "NOT met" },
    );
}
