//! Bytes read as a Parquet file and as an Arrow IPC file or stream, then
//! every batch encoded: no panic or abort escapes (a decoder's panic on
//! hostile bytes is the job's error, by design), and every row read is a
//! row or a reject, never both, never neither. Memory stays bounded
//! whatever lengths the bytes claim.

#![no_main]

use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Once};

use libfuzzer_sys::fuzz_target;
use nexus_pipeline::ModelSet;
use nexus_pipeline::batch::{RawBatch, RecordMeta, Scratch, encode_batch};
use nexus_pipeline::columnar::{Chunk, ColumnarReader};
use nexus_pipeline::model::InputFormat;

/// The corpus files' columns (fuzz/corpus/columnar), others ignored.
const MODEL: &str = r#"
[models.m]
table = "t"
extra_columns = "ignore"
[[models.m.columns]]
name = "id"
type = "bigint"
required = true
[[models.m.columns]]
name = "qty"
type = "smallint"
min = 0
[[models.m.columns]]
name = "note"
type = "varchar(8)"
[[models.m.columns]]
name = "price"
type = "numeric(5,2)"
[[models.m.columns]]
name = "at"
type = "timestamp"
[[models.m.columns]]
name = "day"
type = "date"
[[models.m.columns]]
name = "tags"
type = "jsonb"
[[models.m.columns]]
name = "kind"
type = "text"
"#;

const MAX_ROWS: u64 = 30_000;

fuzz_target!(|data: &[u8]| {
    static QUIET: Once = Once::new();
    // Decoder panics are caught and reported by the reader; libFuzzer's
    // hook would abort on them all the same. One that escapes still aborts.
    QUIET.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    let path = std::env::temp_dir().join(format!("nexus-fuzz-columnar-{}", std::process::id()));
    std::fs::write(&path, data).unwrap();
    for format in [InputFormat::Parquet, InputFormat::Arrow] {
        let model = ModelSet::parse(MODEL).unwrap().get("m").unwrap();
        let input = nexus_pipeline::model::InputDef {
            format: Some(format),
            ..Default::default()
        };
        let model = Arc::new(model.with_input(&input).unwrap());
        let bytes = Arc::new(AtomicU64::new(0));
        // Batch 1 counts as committed by an earlier run: a row group
        // holding only it is read past.
        let skip = Arc::new(HashSet::from([1]));
        if let Ok((plan, mut reader)) =
            ColumnarReader::open(&path, format, model, 3, false, bytes, skip)
        {
            let mut line = 0;
            // A few bytes can describe billions of rows (run-length encoded or
            // all-NULL columns), as a small gzip can hold a huge CSV: that is a
            // big input, not a bug; the first rows are read.
            while line < MAX_ROWS
                && let Ok(Some(chunk)) = reader.next_batch()
            {
                let columns = match chunk {
                    Chunk::Rows(columns) => columns,
                    Chunk::Skipped(n) => {
                        line += n;
                        continue;
                    }
                };
                let n = columns.num_rows();
                let records = (0..n)
                    .map(|_| {
                        line += 1;
                        RecordMeta {
                            start: 0,
                            end: 0,
                            line,
                            oversized: false,
                            unterminated: false,
                        }
                    })
                    .collect();
                let raw = RawBatch {
                    records,
                    columns: Some(columns),
                    ..Default::default()
                };
                let batch = encode_batch(&plan, raw, &mut Scratch::default());
                assert_eq!(
                    batch.rows.len() + batch.rejects.len(),
                    n,
                    "a row lost or doubled"
                );
            }
        }
    }
    let _ = std::fs::remove_file(&path);
});
