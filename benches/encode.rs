//! Parse + validate + encode throughput for the `customer` model, in
//! memory: the CPU work a worker does per batch, without any I/O.
//! `cargo bench -p nexus-pipeline` (Throughput: rows/s).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nexus_pipeline::ModelSet;
use nexus_pipeline::batch::{RawBatch, Scratch, encode_batch};
use nexus_pipeline::csv::RecordReader;
use nexus_pipeline::plan::Plan;

const ROWS: usize = 5000;

/// Rows like `benches/gen-customers.py`'s: one name in twenty is quoted.
fn customer_csv() -> Vec<u8> {
    let mut s = String::new();
    for i in 1..=ROWS {
        let name = if i % 20 == 0 {
            "\"Lovelace, Ada\""
        } else {
            "Ada Lovelace"
        };
        s.push_str(&format!(
            "{i},a0eebc99-9c0b-4ef8-bb6d-{i:012},{name},ada.lovelace{i}@example.com,GB,enterprise,{}.{:02},2021-02-22T23:57:34Z,true,{}\n",
            i * 7 % 100000,
            i % 100,
            i % 1001
        ));
    }
    s.into_bytes()
}

fn bench(c: &mut Criterion) {
    let model = ModelSet::builtin().get("customer").unwrap();
    let plan = Plan::positional(Arc::clone(&model), false);
    let csv = customer_csv();
    let mut reader = RecordReader::new(&csv[..], b'"', 1 << 20);
    let mut raw = RawBatch::default();
    while raw.read_record(&mut reader).unwrap() {}
    let mut group = c.benchmark_group("customer");
    group.throughput(Throughput::Elements(ROWS as u64));
    group.bench_function("split", |b| {
        b.iter(|| {
            let mut r = RecordReader::new(black_box(&csv[..]), b'"', 1 << 20);
            let mut buf = Vec::with_capacity(csv.len());
            while r.read_record(&mut buf).unwrap().is_some() {}
            buf.len()
        })
    });
    let mut scratch = Scratch::default();
    group.bench_function("parse_validate_encode", |b| {
        b.iter(|| {
            let batch = RawBatch {
                columns: None,
                seq: 0,
                data: raw.data.clone(),
                records: raw.records.clone(),
                bytes_end: 0,
            };
            let out = encode_batch(&plan, batch, &mut scratch);
            assert!(out.rejects.is_empty(), "{:?}", out.rejects.first());
            out.copy.len()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
