//! The stage runner: a reader thread splits the input into raw batches, a
//! rayon pool encodes them, and a collector hands encoded batches to the
//! loader's sink in sequence order. Every hop is a bounded crossbeam
//! channel, and the reader takes a credit per batch that the collector
//! returns only when it hands that batch on: at most `4 × workers` batches
//! are in flight or waiting for their turn, whatever a slow batch or a slow
//! database does.
//!
//! A worker that panics (a bug met by some input) fails the load with the
//! batch's lines in the message; the stages then wind down instead of
//! waiting for a batch that will never come.
//!
//! The stage threads run at a lower CPU priority ([`crate::priority`]).
//!
//! Batches that a previous run already committed (`skip`) are read past but
//! never encoded; their bounds are the same because batch bounds depend only
//! on the input and the batch limits.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::bounded;

use crate::batch::{EncodedBatch, RawBatch, RecordMeta, Scratch, encode_batch};
use crate::columnar::Chunk;
use crate::csv::{RecordReader, parse_fields};
use crate::model::InputFormat;
use crate::model::Model;
use crate::plan::{Plan, PlanError};
use crate::priority::{STAGE_NICE, lower_this_thread};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("reading the input failed: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Columnar(#[from] crate::columnar::ColumnarError),
    #[error("a pipeline thread panicked: {0}")]
    Panic(String),
    #[error(
        "a parse worker crashed on batch {seq} (lines {first_line}–{last_line}): {message}; \
         this is a bug in Nexus, please report it with those lines. The batches committed so far are kept"
    )]
    WorkerPanic {
        seq: u64,
        first_line: u64,
        last_line: u64,
        message: String,
    },
}

/// A panic's message, whatever its payload.
fn panic_message(e: &(dyn std::any::Any + Send)) -> String {
    e.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| e.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
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
    /// The first worker panic, which stopped the stages.
    crashed: Arc<Mutex<Option<PipelineError>>>,
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
    sink: impl FnMut(EncodedBatch) -> bool + Send + 'static,
) -> Result<Stages, PipelineError> {
    start_with(input, model, opts, bytes_read, sink, encode_batch)
}

/// How a worker turns a raw batch into an encoded one.
type Encoder = fn(&Plan, RawBatch, &mut Scratch) -> EncodedBatch;

/// [`start`] with the workers' encoder given (the tests give one that
/// stalls or panics).
fn start_with(
    input: Box<dyn Read + Send>,
    model: Arc<Model>,
    opts: RunOptions,
    bytes_read: Arc<AtomicU64>,
    sink: impl FnMut(EncodedBatch) -> bool + Send + 'static,
    encode: Encoder,
) -> Result<Stages, PipelineError> {
    let ndjson = model.input.format == InputFormat::Ndjson;
    let mut reader = if ndjson {
        RecordReader::lines(input, model.input.max_record_bytes)
    } else {
        RecordReader::new(input, model.input.quote, model.input.max_record_bytes)
    };
    // An NDJSON line names its columns itself: fields come in model order.
    let has_header = opts.has_header && !ndjson;
    let plan = if has_header {
        let mut header = Vec::new();
        let info = reader.read_record(&mut header)?.ok_or(PlanError::Empty)?;
        if info.unterminated || info.oversized {
            return Err(PlanError::HeaderQuote.into());
        }
        let text = std::str::from_utf8(&header).map_err(|_| PlanError::HeaderEncoding)?;
        let (mut buf, mut fields) = (String::new(), Vec::new());
        let buf = parse_fields(
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
    let max_batch_bytes = opts.max_batch_bytes;
    let batch_size = opts.batch_size;
    let next = move |seq: u64| -> Result<Option<RawBatch>, PipelineError> {
        let mut batch = RawBatch {
            seq,
            data: Vec::with_capacity(max_batch_bytes.min(1 << 20)),
            records: Vec::with_capacity(batch_size.min(65536)),
            bytes_end: 0,
            columns: None,
        };
        while batch.records.len() < batch_size
            && batch.data.len() < max_batch_bytes
            && batch.read_record(&mut reader)?
        {}
        batch.bytes_end = bytes_read.load(Ordering::Relaxed);
        Ok((!batch.records.is_empty()).then_some(batch))
    };
    spawn_stages(plan, opts, next, has_header, sink, encode)
}

/// Starts the stages on a Parquet or Arrow IPC file: the model is planned
/// onto the file's schema (failing fast on a column that does not fit) and
/// batches are cut by rows.
pub fn start_columnar(
    path: &std::path::Path,
    model: Arc<Model>,
    opts: RunOptions,
    bytes_read: Arc<AtomicU64>,
    sink: impl FnMut(EncodedBatch) -> bool + Send + 'static,
) -> Result<Stages, PipelineError> {
    let format = model.input.format;
    let (plan, mut reader) = crate::columnar::ColumnarReader::open(
        path,
        format,
        model,
        opts.batch_size,
        opts.line_column,
        bytes_read.clone(),
        opts.skip.clone(),
    )?;
    if opts.require_key {
        plan.require_key()?;
    }
    let mut rows = 0u64;
    let next = move |seq: u64| -> Result<Option<RawBatch>, PipelineError> {
        let Some(chunk) = reader.next_batch()? else {
            if reader.total_rows.is_some() {
                bytes_read.store(reader.file_len, Ordering::Relaxed);
            }
            return Ok(None);
        };
        let (count, columns) = match chunk {
            Chunk::Rows(b) => (b.num_rows() as u64, Some(b)),
            // A batch an earlier run committed: the stages read past it.
            Chunk::Skipped(n) => (n, None),
        };
        let first = rows + 1;
        rows += count;
        if let Some(total) = reader.total_rows.filter(|t| *t > 0) {
            let share = (reader.file_len as u128 * rows.min(total) as u128 / total as u128) as u64;
            bytes_read.store(share, Ordering::Relaxed);
        }
        Ok(Some(RawBatch {
            seq,
            data: Vec::new(),
            records: (first..=rows)
                .map(|line| RecordMeta {
                    start: 0,
                    end: 0,
                    line,
                    oversized: false,
                    unterminated: false,
                })
                .collect(),
            bytes_end: bytes_read.load(Ordering::Relaxed),
            columns,
        }))
    };
    spawn_stages(plan, opts, next, true, sink, encode_batch)
}

/// Runs the reader (`next` cuts batch `seq`, or says the input ended), the
/// encoding workers and the collector. `empty_ok`: an input without rows
/// is no error (a header alone, a columnar file's schema alone).
fn spawn_stages(
    plan: Plan,
    opts: RunOptions,
    mut next: impl FnMut(u64) -> Result<Option<RawBatch>, PipelineError> + Send + 'static,
    empty_ok: bool,
    mut sink: impl FnMut(EncodedBatch) -> bool + Send + 'static,
    encode: Encoder,
) -> Result<Stages, PipelineError> {
    let plan = Arc::new(plan);
    let workers = opts.workers.max(1);
    let (raw_tx, raw_rx) = bounded::<RawBatch>(workers * 2);
    let (enc_tx, enc_rx) = bounded::<Result<EncodedBatch, PipelineError>>(workers * 2);
    // Credits bound the batches between the reader and the sink, including
    // those the collector holds back until the ones before them arrive.
    let window = workers * 4;
    let (credit_tx, credit_rx) = bounded::<()>(window);
    for _ in 0..window {
        let _ = credit_tx.send(());
    }

    let skip = opts.skip.clone();
    let reader = std::thread::Builder::new()
        .name("nexus-read".into())
        .spawn(move || -> Result<SourceStats, PipelineError> {
            lower_this_thread(STAGE_NICE);
            let mut stats = SourceStats::default();
            let mut seq = 0u64;
            while let Some(batch) = next(seq)? {
                stats.records += batch.records.len() as u64;
                stats.batches += 1;
                seq += 1;
                if skip.contains(&batch.seq) {
                    continue;
                }
                if credit_rx.recv().is_err() || raw_tx.send(batch).is_err() {
                    break;
                }
            }
            if stats.records == 0 && !empty_ok {
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
                .start_handler(|_| lower_this_thread(STAGE_NICE))
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
                            let (seq, lines) = (
                                raw.seq,
                                (
                                    raw.records.first().map_or(0, |r| r.line),
                                    raw.records.last().map_or(0, |r| r.line),
                                ),
                            );
                            let encoded =
                                catch_unwind(AssertUnwindSafe(|| encode(&plan, raw, &mut scratch)))
                                    .map_err(|e| {
                                        // The scratch buffers may be half-written.
                                        scratch = Scratch::default();
                                        PipelineError::WorkerPanic {
                                            seq,
                                            first_line: lines.0,
                                            last_line: lines.1,
                                            message: panic_message(&*e),
                                        }
                                    });
                            if tx.send(encoded).is_err() {
                                break;
                            }
                        }
                    });
                }
            });
        })?;

    let skip = opts.skip;
    let crashed = Arc::new(Mutex::new(None));
    let crash_slot = crashed.clone();
    let collector = std::thread::Builder::new()
        .name("nexus-order".into())
        .spawn(move || {
            lower_this_thread(STAGE_NICE);
            let mut pending = BTreeMap::new();
            let mut next = 0u64;
            while skip.contains(&next) {
                next += 1;
            }
            while let Ok(encoded) = enc_rx.recv() {
                let batch = match encoded {
                    Ok(b) => b,
                    Err(e) => {
                        // Returning drops the receivers: the reader and
                        // the workers stop at their next send.
                        *crash_slot.lock().expect("crash slot") = Some(e);
                        return;
                    }
                };
                pending.insert(batch.seq, batch);
                while let Some(batch) = pending.remove(&next) {
                    if !sink(batch) {
                        return;
                    }
                    let _ = credit_tx.send(());
                    next += 1;
                    while skip.contains(&next) {
                        next += 1;
                    }
                }
            }
        })?;

    Ok(Stages {
        plan,
        crashed,
        reader,
        encoder,
        collector,
    })
}

impl Stages {
    /// Waits for every stage; the reader's error (if any) is the result.
    pub fn finish(self) -> Result<SourceStats, PipelineError> {
        let panic = |e: Box<dyn std::any::Any + Send>| PipelineError::Panic(panic_message(&*e));
        let read = self.reader.join().map_err(panic);
        let encoded = self.encoder.join().map_err(panic);
        let collected = self.collector.join().map_err(panic);
        if let Some(e) = self.crashed.lock().expect("crash slot").take() {
            return Err(e);
        }
        encoded?;
        collected?;
        read.and_then(|r| r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ModelSet;
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    const WORKERS: usize = 2;

    fn model() -> Arc<Model> {
        ModelSet::parse("[models.m]\ntable='t'\n[[models.m.columns]]\nname='a'\ntype='text'\n")
            .unwrap()
            .get("m")
            .unwrap()
    }

    fn opts() -> RunOptions {
        RunOptions {
            batch_size: 10,
            max_batch_bytes: 1 << 20,
            workers: WORKERS,
            has_header: false,
            line_column: false,
            require_key: false,
            skip: Arc::new(HashSet::new()),
        }
    }

    fn input(rows: usize) -> Box<dyn Read + Send> {
        let text: String = (0..rows).map(|i| format!("row{i}\n")).collect();
        Box::new(std::io::Cursor::new(text.into_bytes()))
    }

    /// The nice value of the thread that last handed a batch to a sink.
    static SINK_NICE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

    /// Runs the stages to their end on another thread; a hang fails the test.
    fn run(encode: Encoder, rows: usize) -> (Result<SourceStats, PipelineError>, Vec<u64>) {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let seen = Arc::new(Mutex::new(Vec::new()));
            let sink_seen = seen.clone();
            let stages = start_with(
                input(rows),
                model(),
                opts(),
                Arc::new(AtomicU64::new(0)),
                move |b| {
                    sink_seen.lock().unwrap().push(b.seq);
                    SINK_NICE.store(crate::priority::this_thread_nice(), Ordering::SeqCst);
                    true
                },
                encode,
            )
            .unwrap();
            let result = stages.finish();
            let seen = seen.lock().unwrap().clone();
            let _ = done_tx.send((result, seen));
        });
        done_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the stages wound down")
    }

    fn panics_on_batch_3(plan: &Plan, raw: RawBatch, s: &mut Scratch) -> EncodedBatch {
        if raw.seq == 3 {
            panic!("boom");
        }
        encode_batch(plan, raw, s)
    }

    #[test]
    fn a_worker_panic_fails_the_run_with_its_lines_and_never_hangs() {
        let (result, seen) = run(panics_on_batch_3, 100_000);
        match result {
            Err(PipelineError::WorkerPanic {
                seq,
                first_line,
                last_line,
                message,
            }) => {
                assert_eq!((seq, first_line, last_line), (3, 31, 40));
                assert_eq!(message, "boom");
            }
            other => panic!("expected the worker's panic, got {other:?}"),
        }
        assert_eq!(
            seen,
            [0, 1, 2],
            "batches after the crashed one are never handed on"
        );
    }

    /// Batch 0 stalls until released; what the other workers do meanwhile is logged.
    static RELEASE: AtomicBool = AtomicBool::new(false);
    static LOG: Mutex<Vec<(bool, u64)>> = Mutex::new(Vec::new());

    fn stalls_on_batch_0(plan: &Plan, raw: RawBatch, s: &mut Scratch) -> EncodedBatch {
        let seq = raw.seq;
        LOG.lock().unwrap().push((true, seq));
        if seq == 0 {
            // Released by the test once every other worker is stuck.
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while !RELEASE.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
                std::thread::yield_now();
            }
        }
        let out = encode_batch(plan, raw, s);
        LOG.lock().unwrap().push((false, seq));
        out
    }

    #[test]
    fn a_slow_batch_holds_back_at_most_the_window() {
        let releaser = std::thread::spawn(|| {
            // The window is 4 × WORKERS batches: with batch 0 stalled, the
            // others can start batches 1 .. window-1 and no more.
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while LOG.lock().unwrap().iter().filter(|(s, _)| *s).count() < 4 * WORKERS
                && std::time::Instant::now() < deadline
            {
                std::thread::yield_now();
            }
            RELEASE.store(true, Ordering::SeqCst);
        });
        let (result, seen) = run(stalls_on_batch_0, 2_000);
        releaser.join().unwrap();
        result.unwrap();
        assert_eq!(seen, (0..200).collect::<Vec<_>>());
        let log = LOG.lock().unwrap();
        let end_0 = log.iter().position(|e| *e == (false, 0)).unwrap();
        let window = 4 * WORKERS as u64;
        for (at, (start, seq)) in log.iter().enumerate() {
            if *start && *seq >= window {
                assert!(
                    at > end_0,
                    "batch {seq} started before batch 0 was done: {log:?}"
                );
            }
        }
    }

    static ENCODER_NICE: Mutex<Vec<i32>> = Mutex::new(Vec::new());

    fn notes_its_nice(plan: &Plan, raw: RawBatch, s: &mut Scratch) -> EncodedBatch {
        ENCODER_NICE
            .lock()
            .unwrap()
            .push(crate::priority::this_thread_nice());
        encode_batch(plan, raw, s)
    }

    #[test]
    fn the_stages_run_below_the_default_priority() {
        let (result, seen) = run(notes_its_nice, 100);
        result.unwrap();
        assert_eq!(seen.len(), 10);
        if cfg!(target_os = "linux") {
            assert_eq!(*ENCODER_NICE.lock().unwrap(), vec![STAGE_NICE; 10]);
            assert_eq!(SINK_NICE.load(Ordering::SeqCst), STAGE_NICE);
        }
    }
}
