//! A whole batch through split · parse · validate · encode, then settled
//! with server readings: no panic, every record accounted for (a row or a
//! reject, never both, never neither), and a COPY body that is valid
//! binary COPY row by row.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use nexus_pipeline::batch::{RawBatch, Scratch, ServerReading, encode_batch};
use nexus_pipeline::csv::RecordReader;
use nexus_pipeline::encode::{COPY_HEADER, COPY_TRAILER};
use nexus_pipeline::plan::Plan;
use nexus_pipeline::ModelSet;

const MODEL: &str = r#"
[models.all]
table = "t"
[[models.all.columns]]
name = "i"
type = "integer"
required = true
[[models.all.columns]]
name = "n"
type = "numeric(12,2)"
min = 0
[[models.all.columns]]
name = "f"
type = "double precision"
[[models.all.columns]]
name = "d"
type = "date"
[[models.all.columns]]
name = "ts"
type = "timestamptz"
[[models.all.columns]]
name = "b"
type = "boolean"
[[models.all.columns]]
name = "j"
type = "jsonb"
[[models.all.columns]]
name = "v"
type = "varchar(4)"
pattern = "^[a-z ]*$"
[[models.all.columns]]
name = "x"
type = "bytea"
"#;

fuzz_target!(|data: &[u8]| {
    let model = ModelSet::parse(MODEL).unwrap().get("all").unwrap();
    let ncols = model.columns.len();
    let plan = Plan::positional(Arc::clone(&model), data.first().is_some_and(|b| b & 1 == 1));
    let mut reader = RecordReader::new(data, b'"', 4096);
    let mut raw = RawBatch::default();
    while raw.read_record(&mut reader).unwrap_or(false) {}
    let records = raw.records.len();
    let mut batch = encode_batch(&plan, raw, &mut Scratch::default());
    // The server reads deferred values: some fail, the rest are a value
    // of the right width for a few types, or a reading the rules refuse.
    let readings: Vec<ServerReading> = batch
        .deferred
        .iter()
        .enumerate()
        .map(|(k, d)| match k % 3 {
            0 => Err(format!("invalid input syntax: {}", d.text.len())),
            1 => Ok((vec![0u8; 8], "-1".into())),
            _ => Ok((vec![1u8; 4], "1".into())),
        })
        .collect();
    batch.settle(&plan, &readings);
    assert!(batch.deferred.is_empty());
    let mut seen = vec![0u8; records];
    for r in &batch.rows {
        seen[r.record as usize] += 1;
    }
    assert_eq!(batch.rows.len() + batch.rejects.len(), records, "a record lost or doubled");
    assert!(seen.iter().all(|s| *s <= 1));
    // Walk the body: header, rows of ncols (+ line column) fields, trailer.
    let body = &batch.copy;
    assert!(body.starts_with(COPY_HEADER) && body.ends_with(COPY_TRAILER));
    let want = (ncols + plan.line_column as usize) as i16;
    let mut at = COPY_HEADER.len();
    for r in &batch.rows {
        assert_eq!(r.start as usize, at);
        assert_eq!(i16::from_be_bytes([body[at], body[at + 1]]), want);
        at += 2;
        for _ in 0..want {
            let len = i32::from_be_bytes(body[at..at + 4].try_into().unwrap());
            at += 4;
            if len >= 0 {
                at += len as usize;
            }
        }
        assert_eq!(r.end as usize, at);
    }
    assert_eq!(at + COPY_TRAILER.len(), body.len());
});
