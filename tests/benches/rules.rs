//! Per-record rule evaluation cost, with 10 and 100 rules. The record matches only the last
//! rule, so every rule's match is evaluated: the worst case for first-match.
//!
//! ```text
//! cargo bench -p eip-tests --bench rules
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use eip_router::rules::{Decision, RuleSet, Subject};
use eip_runtime::Headers;
use eip_schemas::types::samples::order_placed;
use eip_tests::bench::router_rules;

fn bench(c: &mut Criterion) {
    let value = apache_avro::to_value(order_placed(7)).unwrap();
    let mut headers = Headers::new();
    headers.push("correlation-id", "c-1");
    headers.push(
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    );
    for n in [10, 100] {
        let set = RuleSet::parse("bench.toml", &router_rules(n, "out")).unwrap();
        let subject = Subject {
            topic: "orders",
            type_name: "eip.orders.OrderPlaced",
            headers: &headers,
            value: &value,
        };
        match set.evaluate(&subject) {
            Decision::Matched(r) => assert_eq!(r[0].name.as_ref(), "last"),
            other => panic!("unexpected {other}"),
        }
        c.bench_function(&format!("evaluate {n} rules (match the last)"), |b| {
            b.iter(|| {
                let d = set.evaluate(black_box(&subject));
                black_box(matches!(d, Decision::Matched(_)))
            })
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
