//! The stage runner: a reader thread splits the input into raw batches, a
//! rayon pool encodes them, and a collector hands encoded batches to the
//! loader's sink in sequence order. Every hop is a bounded crossbeam
//! channel, so a slow database stalls the reader instead of growing memory:
//! at most about `3 × workers` batches are in flight.
//!
//! Batches that a previous run already committed (`skip`) are read past but
//! never encoded; their bounds are the same because batch bounds depend only
//! on the input and the batch limits.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use crossbeam_channel::bounded;

use crate::batch::{EncodedBatch, RawBatch, RecordMeta, Scratch, encode_batch};
use crate::csv::{RecordReader, parse_fields};
use crate::model::Model;
use crate::plan::{Plan, PlanError};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("reading the input failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("a pipeline thread panicked: {0}")]
    Panic(String),
}

/// How to cut and encode batches.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub batch_size: usize,
    /// A batch is also cut once its records reach this many bytes.
    pub max_batch_bytes: usize,
    pub workers: usize,
    pub has_header: bool,
    /// Encode the line number as an extra last column (upsert staging).
    pub line_column: bool,
    /// Upsert needs every key column in the input.
    pub require_key: bool,
    /// Sequence numbers already committed.
    pub skip: Arc<HashSet<u64>>,
}

/// What the reader saw, once the input is exhausted.
#[derive(Debug, Clone, Copy, Default)]
pub struct SourceStats {
    pub records: u64,
    pub batches: u64,
}

/// Running stages; join with [`Stages::finish`] after the sink closed.
pub struct Stages {
    pub plan: Arc<Plan>,
    reader: JoinHandle<Result<SourceStats, PipelineError>>,
    encoder: JoinHandle<()>,
    collector: JoinHandle<()>,
}

/// Reads the header (failing fast on a header that does not fit) and starts
/// the stages. `sink` receives batches in sequence order; returning false
/// stops the pipeline (cancel, abort, consumer gone).
pub fn start(
    input: Box<dyn Read + Send>,
    model: Arc<Model>,
    opts: RunOptions,
    bytes_read: Arc<AtomicU64>,
    mut sink: impl FnMut(EncodedBatch) -> bool + Send + 'static,
) -> Result<Stages, PipelineError> {
    let mut reader = RecordReader::new(input, model.input.quote, model.input.max_record_bytes);
    let plan = if opts.has_header {
        let mut header = Vec::new();
        let info = reader.read_record(&mut header)?.ok_or(PlanError::Empty)?;
        if info.unterminated || info.oversized {
            return Err(PlanError::HeaderQuote.into());
        }
        let text = std::str::from_utf8(&header).map_err(|_| PlanError::HeaderEncoding)?;
        let (mut buf, mut fields) = (String::new(), Vec::new());
        parse_fields(
            text,
            model.input.delimiter,
            model.input.quote,
            &mut buf,
            &mut fields,
        )
        .map_err(|_| PlanError::HeaderQuote)?;
        let names: Vec<String> = fields
            .iter()
            .map(|f| buf[f.start as usize..f.end as usize].to_string())
            .collect();
        Plan::from_header(model, &names, opts.line_column)?
    } else {
        Plan::positional(model, opts.line_column)
    };
    if opts.require_key {
        plan.require_key()?;
    }
    let plan = Arc::new(plan);
    let workers = opts.workers.max(1);
    let (raw_tx, raw_rx) = bounded::<RawBatch>(workers * 2);
    let (enc_tx, enc_rx) = bounded::<EncodedBatch>(workers * 2);

    let skip = opts.skip.clone();
    let reader = std::thread::Builder::new()
        .name("nexus-read".into())
        .spawn(move || -> Result<SourceStats, PipelineError> {
            let mut stats = SourceStats::default();
            let mut seq = 0u64;
            loop {
                let mut batch = RawBatch {
                    seq,
                    data: Vec::with_capacity(opts.max_batch_bytes.min(1 << 20)),
                    records: Vec::with_capacity(opts.batch_size.min(65536)),
                    bytes_end: 0,
                };
                while batch.records.len() < opts.batch_size
                    && batch.data.len() < opts.max_batch_bytes
                {
                    let start = batch.data.len() as u32;
                    let Some(info) = reader.read_record(&mut batch.data)? else {
                        break;
                    };
                    batch.records.push(RecordMeta {
                        start,
                        end: batch.data.len() as u32,
                        line: info.line,
                        oversized: info.oversized,
                        unterminated: info.unterminated,
                    });
                }
                if batch.records.is_empty() {
                    break;
                }
                stats.records += batch.records.len() as u64;
                stats.batches += 1;
                batch.bytes_end = bytes_read.load(Ordering::Relaxed);
                seq += 1;
                if skip.contains(&batch.seq) {
                    continue;
                }
                if raw_tx.send(batch).is_err() {
                    break;
                }
            }
            if stats.records == 0 && !opts.has_header {
                return Err(PlanError::Empty.into());
            }
            Ok(stats)
        })?;

    let encode_plan = plan.clone();
    let encoder = std::thread::Builder::new()
        .name("nexus-encode".into())
        .spawn(move || {
            let pool = match rayon::ThreadPoolBuilder::new()
                .num_threads(workers)
                .thread_name(|i| format!("nexus-worker-{i}"))
                .build()
            {
                Ok(p) => p,
                Err(_) => return,
            };
            pool.scope(|s| {
                for _ in 0..workers {
                    let (rx, tx, plan) = (raw_rx.clone(), enc_tx.clone(), encode_plan.clone());
                    s.spawn(move |_| {
                        let mut scratch = Scratch::default();
                        while let Ok(raw) = rx.recv() {
                            if tx.send(encode_batch(&plan, raw, &mut scratch)).is_err() {
                                break;
                            }
                        }
                    });
                }
            });
        })?;

    let skip = opts.skip;
    let collector = std::thread::Builder::new()
        .name("nexus-order".into())
        .spawn(move || {
            let mut pending = BTreeMap::new();
            let mut next = 0u64;
            while skip.contains(&next) {
                next += 1;
            }
            while let Ok(batch) = enc_rx.recv() {
                pending.insert(batch.seq, batch);
                while let Some(batch) = pending.remove(&next) {
                    if !sink(batch) {
                        return;
                    }
                    next += 1;
                    while skip.contains(&next) {
                        next += 1;
                    }
                }
            }
        })?;

    Ok(Stages {
        plan,
        reader,
        encoder,
        collector,
    })
}

impl Stages {
    /// Waits for every stage; the reader's error (if any) is the result.
    pub fn finish(self) -> Result<SourceStats, PipelineError> {
        let panic = |e: Box<dyn std::any::Any + Send>| {
            PipelineError::Panic(
                e.downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| e.downcast_ref::<String>().cloned())
                    .unwrap_or_default(),
            )
        };
        let read = self.reader.join().map_err(panic)?;
        self.encoder.join().map_err(panic)?;
        self.collector.join().map_err(panic)?;
        read
    }
}
