//! Per-record codec cost: typed (direct serde) versus generic (`Value` tree) paths.
//!
//! `cargo bench -p eip-schemas --bench codec`

#![allow(missing_docs, clippy::unwrap_used)] // a benchmark: panicking on setup failure is the right outcome

use std::hint::black_box;

use apache_avro::Schema;
use criterion::{Criterion, criterion_group, criterion_main};
use eip_schemas::catalog::{Catalog, fingerprint};
use eip_schemas::codec::{decode_value_with, decode_with, encode_value, encode_with_id};
use eip_schemas::types::OrderPlaced;
use eip_schemas::types::samples::order_placed;
use eip_schemas::{WriterSchema, frame};

fn writer() -> WriterSchema {
    let compiled = Catalog::global()
        .unwrap()
        .get("eip.orders.OrderPlaced")
        .unwrap();
    let schema = Schema::parse_str(&compiled.json).unwrap();
    WriterSchema {
        id: 1,
        full_name: "eip.orders.OrderPlaced".into(),
        fingerprint: fingerprint(&schema),
        schema,
    }
}

fn codec(c: &mut Criterion) {
    let w = writer();
    let order = order_placed(12345);
    let framed = encode_with_id(1, &order).unwrap();
    let (_, body) = frame::split(Some(&framed)).unwrap();
    let value = decode_value_with(&w, body).unwrap();
    c.bench_function("decode typed OrderPlaced", |b| {
        b.iter(|| decode_with::<OrderPlaced>(&w, black_box(body)).unwrap())
    });
    c.bench_function("encode typed OrderPlaced", |b| {
        b.iter(|| encode_with_id(1, black_box(&order)).unwrap())
    });
    c.bench_function("decode generic OrderPlaced", |b| {
        b.iter(|| decode_value_with(&w, black_box(body)).unwrap())
    });
    c.bench_function("encode generic OrderPlaced", |b| {
        b.iter(|| encode_value(1, &w.schema, black_box(&value)).unwrap())
    });
}

criterion_group!(benches, codec);
criterion_main!(benches);
