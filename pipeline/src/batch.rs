//! Batches, the unit of work: B consecutive records numbered in file order.
//! [`encode_batch`] fuses parse, validate and encode for one batch on a
//! worker thread, producing a ready binary COPY body plus the batch's
//! rejects; the loader only streams the bytes.

use crate::csv::{Field, RecordReader, Unterminated, parse_fields};
use crate::encode::{
    COPY_HEADER, COPY_TRAILER, FieldError, check_server_value, encode_field, put_i16, put_i32,
    put_i64,
};
use crate::model::{Column, InputFormat, TimeZone};
use crate::plan::Plan;

/// How much of a rejected record's text is kept.
pub const REJECT_RAW_MAX: usize = 4096;

/// Where one record of a [`RawBatch`] lies.
#[derive(Debug, Clone, Copy)]
pub struct RecordMeta {
    pub start: u32,
    pub end: u32,
    pub line: u64,
    pub oversized: bool,
    pub unterminated: bool,
}

/// Records as read, before parsing.
#[derive(Debug, Default)]
pub struct RawBatch {
    pub seq: u64,
    pub data: Vec<u8>,
    pub records: Vec<RecordMeta>,
    /// Raw input bytes consumed when the batch was cut.
    pub bytes_end: u64,
    /// The rows as decoded from a columnar file (`records` then only
    /// number them; `data` is empty).
    pub columns: Option<arrow_array::RecordBatch>,
}

impl RawBatch {
    /// Reads the input's next record into the batch; false at its end.
    pub fn read_record<R: std::io::Read>(
        &mut self,
        reader: &mut RecordReader<R>,
    ) -> std::io::Result<bool> {
        let start = self.data.len() as u32;
        let Some(info) = reader.read_record(&mut self.data)? else {
            return Ok(false);
        };
        self.records.push(RecordMeta {
            start,
            end: self.data.len() as u32,
            line: info.line,
            oversized: info.oversized,
            unterminated: info.unterminated,
        });
        Ok(true)
    }

    pub fn record(&self, i: usize) -> &[u8] {
        let r = &self.records[i];
        &self.data[r.start as usize..r.end as usize]
    }

    /// The record's text for a reject, cut to [`REJECT_RAW_MAX`] bytes.
    pub fn raw_text(&self, i: usize) -> String {
        if let Some(columns) = &self.columns {
            return crate::columnar::row_text(columns, i);
        }
        let bytes = self.record(i);
        let cut = &bytes[..bytes.len().min(REJECT_RAW_MAX)];
        String::from_utf8_lossy(cut).into_owned()
    }
}

/// A row that was not loaded, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Reject {
    /// 1-based physical line where the record starts.
    pub line: u64,
    pub column: Option<String>,
    pub reason: String,
    pub raw: String,
}

/// A valid row inside [`EncodedBatch::copy`].
#[derive(Debug, Clone, Copy)]
pub struct EncodedRow {
    pub start: u32,
    pub end: u32,
    /// Index of its record in the raw batch.
    pub record: u32,
}

/// A value the fast path left to the server's input function: its row
/// in [`EncodedBatch::rows`] has a gap at `at` where the value goes.
#[derive(Debug, Clone)]
pub struct Deferred {
    /// Index into [`EncodedBatch::rows`].
    pub row: u32,
    /// Offset in [`EncodedBatch::copy`] where the field (length word and
    /// bytes) belongs.
    pub at: u32,
    /// Index into [`Plan::copy_columns`].
    pub column: u16,
    pub text: String,
}

/// The server's reading of a deferred value: its binary form (as the
/// type's send function writes it) and its text, or the server's error.
pub type ServerReading = Result<(Vec<u8>, String), String>;

/// A batch ready for COPY once its [`EncodedBatch::deferred`] values are
/// settled.
#[derive(Debug)]
pub struct EncodedBatch {
    pub seq: u64,
    /// Records in the batch (valid + rejected).
    pub rows_read: u64,
    /// A complete binary COPY body: header, rows, trailer.
    pub copy: Vec<u8>,
    pub rows: Vec<EncodedRow>,
    pub rejects: Vec<Reject>,
    pub raw: RawBatch,
    /// Values awaiting the server, in row order; the COPY body is not
    /// valid until [`EncodedBatch::settle`] filled them in.
    pub deferred: Vec<Deferred>,
}

impl EncodedBatch {
    /// Fills in the deferred values with the server's readings (one per
    /// entry of `deferred`, in order): rows whose value the server refused
    /// or that break a rule of the model become rejects; the rest get the
    /// server's binary value spliced into their gap.
    pub fn settle(&mut self, plan: &Plan, readings: &[ServerReading]) {
        debug_assert_eq!(
            readings.len(),
            self.deferred.len(),
            "one reading per deferred value"
        );
        let missing: ServerReading = Err("the server gave no reading for this value".into());
        let deferred = std::mem::take(&mut self.deferred);
        if deferred.is_empty() {
            return;
        }
        let extra: usize = readings
            .iter()
            .map(|r| r.as_ref().map_or(0, |(b, _)| b.len() + 4))
            .sum();
        let old = std::mem::take(&mut self.copy);
        let mut copy = Vec::with_capacity(old.len() + extra);
        copy.extend_from_slice(COPY_HEADER);
        let mut rows = Vec::with_capacity(self.rows.len());
        let mut d = 0;
        for (ri, row) in self.rows.iter().enumerate() {
            let start = copy.len();
            let mut pos = row.start as usize;
            let mut failed: Option<(usize, String)> = None;
            while d < deferred.len() && deferred[d].row as usize == ri {
                let def = &deferred[d];
                let col = &plan.model.columns[plan.copy_columns[def.column as usize]];
                if failed.is_none() {
                    copy.extend_from_slice(&old[pos..def.at as usize]);
                    pos = def.at as usize;
                    let checked = readings
                        .get(d)
                        .unwrap_or(&missing)
                        .as_ref()
                        .map_err(Clone::clone)
                        .and_then(|(bin, text)| {
                            check_server_value(col, &def.text, text)?;
                            Ok(bin)
                        });
                    match checked {
                        Ok(bin) => {
                            put_i32(&mut copy, bin.len() as i32);
                            copy.extend_from_slice(bin);
                        }
                        Err(reason) => failed = Some((def.column as usize, reason)),
                    }
                }
                d += 1;
            }
            match failed {
                Some((k, reason)) => {
                    copy.truncate(start);
                    let col = &plan.model.columns[plan.copy_columns[k]];
                    let rec = row.record as usize;
                    self.rejects.push(Reject {
                        line: self.raw.records[rec].line,
                        column: Some(col.name.clone()),
                        reason,
                        raw: self.raw.raw_text(rec),
                    });
                }
                None => {
                    copy.extend_from_slice(&old[pos..row.end as usize]);
                    rows.push(EncodedRow {
                        start: start as u32,
                        end: copy.len() as u32,
                        record: row.record,
                    });
                }
            }
        }
        copy.extend_from_slice(COPY_TRAILER);
        self.copy = copy;
        self.rows = rows;
        self.rejects.sort_by_key(|r| r.line);
    }

    /// Turns row `i` into a reject.
    pub fn reject_row(&self, i: usize, column: Option<String>, reason: String) -> Reject {
        let rec = self.rows[i].record as usize;
        Reject {
            line: self.raw.records[rec].line,
            column,
            reason,
            raw: self.raw.raw_text(rec),
        }
    }
}

/// Reusable per-worker buffers.
#[derive(Default)]
pub struct Scratch {
    fields_buf: String,
    fields: Vec<Field>,
}

/// Parses, validates and encodes one batch.
pub fn encode_batch(plan: &Plan, raw: RawBatch, scratch: &mut Scratch) -> EncodedBatch {
    if let Some(columns) = raw.columns.clone() {
        return crate::columnar::encode(plan, raw, &columns);
    }
    let model = &plan.model;
    let input = &model.input;
    let ncols = plan.copy_columns.len() + plan.line_column as usize;
    let mut copy = Vec::with_capacity(raw.data.len() + raw.records.len() * (2 + 4 * ncols) + 32);
    copy.extend_from_slice(COPY_HEADER);
    let mut rows = Vec::with_capacity(raw.records.len());
    let mut rejects = Vec::new();
    let mut deferred: Vec<Deferred> = Vec::new();
    let default_null = input.null.len() == 1 && input.null[0].is_empty();
    // Most batches are all valid text: one check of the whole costs less
    // than one per record, which then needs only its ends on character
    // boundaries (a character split by a line end is whole in `data`).
    let data_text = std::str::from_utf8(&raw.data).ok();
    let has_nul = memchr::memchr(0, &raw.data).is_some();

    'records: for (ri, meta) in raw.records.iter().enumerate() {
        let mut reject = |column: Option<&str>, reason: String| {
            rejects.push(Reject {
                line: meta.line,
                column: column.map(str::to_string),
                reason,
                raw: raw.raw_text(ri),
            });
        };
        if meta.oversized {
            reject(
                None,
                format!(
                    "record is longer than the limit of {} bytes (max_record_bytes)",
                    input.max_record_bytes
                ),
            );
            continue;
        }
        if meta.unterminated {
            reject(None, "unterminated quoted field: a quote opened on this line is never closed before the end of the file".into());
            continue;
        }
        // Transcoded input is UTF-8 by construction; this also catches bytes
        // that are not UTF-8 in a file read as UTF-8.
        let whole = data_text.and_then(|t| t.get(meta.start as usize..meta.end as usize));
        let record = match whole.map_or_else(|| std::str::from_utf8(raw.record(ri)), Ok) {
            Ok(r) => r,
            Err(e) => {
                reject(
                    None,
                    format!(
                        "invalid UTF-8 at byte {} of the record; if the file is not UTF-8, load it with encoding latin1 or windows-1252",
                        e.valid_up_to() + 1
                    ),
                );
                continue;
            }
        };
        if has_nul && memchr::memchr(0, record.as_bytes()).is_some() {
            // PostgreSQL's COPY refuses the whole input at a NUL byte.
            reject(
                None,
                "contains a NUL byte (0x00), which PostgreSQL cannot store in any value".into(),
            );
            continue;
        }
        // Columnar batches never get here (they carry `columns`): every
        // other format is read as CSV fields.
        let fields_text = match input.format {
            InputFormat::Csv | InputFormat::Parquet | InputFormat::Arrow => match parse_fields(
                record,
                input.delimiter,
                input.quote,
                &mut scratch.fields_buf,
                &mut scratch.fields,
            ) {
                Ok(text) => text,
                Err(Unterminated) => {
                    reject(None, "unterminated quoted field".into());
                    continue;
                }
            },
            InputFormat::Ndjson => {
                let null_text = input.null.first().map_or(&[][..], Vec::as_slice);
                if let Err(e) = crate::ndjson::object_fields(
                    record,
                    &model.columns,
                    model.extra_columns_ignore,
                    std::str::from_utf8(null_text).unwrap_or_default(),
                    &mut scratch.fields_buf,
                    &mut scratch.fields,
                ) {
                    reject(e.column.as_deref(), e.reason);
                    continue;
                }
                scratch.fields_buf.as_str()
            }
        };
        if scratch.fields.len() != plan.input_fields {
            reject(
                None,
                format!(
                    "expected {} fields, found {}",
                    plan.input_fields,
                    scratch.fields.len()
                ),
            );
            continue;
        }
        let row_start = copy.len();
        put_i16(&mut copy, ncols as i16);
        for (k, &ci) in plan.copy_columns.iter().enumerate() {
            let col = &model.columns[ci];
            let f = scratch.fields[plan.field_of[k]];
            let text = &fields_text[f.start as usize..f.end as usize];
            let is_null = !f.quoted
                && if default_null {
                    text.is_empty()
                } else {
                    input.null.iter().any(|n| n.as_slice() == text.as_bytes())
                };
            if is_null {
                if col.required {
                    copy.truncate(row_start);
                    undefer(&mut deferred, rows.len());
                    let missing = match input.format {
                        InputFormat::Ndjson => "null or absent",
                        _ => "empty",
                    };
                    reject(
                        Some(&col.name),
                        format!("`{}` is required but {missing}", col.name),
                    );
                    continue 'records;
                }
                put_i32(&mut copy, -1);
                continue;
            }
            if let Err(FieldError::Invalid(reason)) = put_text(
                col,
                &input.timezone,
                text,
                k,
                rows.len(),
                &mut copy,
                &mut deferred,
            ) {
                copy.truncate(row_start);
                undefer(&mut deferred, rows.len());
                reject(Some(&col.name), reason);
                continue 'records;
            }
        }
        end_row(plan, &mut copy, &mut rows, row_start, meta.line, ri);
    }
    finish_batch(raw, copy, rows, rejects, deferred)
}

/// Ends row `record` of a batch that started at `row_start` in `copy`: the
/// line number for upsert staging, then the row's bounds.
pub(crate) fn end_row(
    plan: &Plan,
    copy: &mut Vec<u8>,
    rows: &mut Vec<EncodedRow>,
    row_start: usize,
    line: u64,
    record: usize,
) {
    if plan.line_column {
        put_i32(copy, 8);
        put_i64(copy, line as i64);
    }
    rows.push(EncodedRow {
        start: row_start as u32,
        end: copy.len() as u32,
        record: record as u32,
    });
}

/// Closes a batch's COPY body.
pub(crate) fn finish_batch(
    raw: RawBatch,
    mut copy: Vec<u8>,
    rows: Vec<EncodedRow>,
    rejects: Vec<Reject>,
    deferred: Vec<Deferred>,
) -> EncodedBatch {
    copy.extend_from_slice(COPY_TRAILER);
    EncodedBatch {
        seq: raw.seq,
        rows_read: raw.records.len() as u64,
        copy,
        rows,
        rejects,
        raw,
        deferred,
    }
}

/// Encodes one text value of COPY column `k` of row `row` into `copy`, or
/// defers it to the server's input function when the fast path is unsure
/// (the gap is filled by [`EncodedBatch::settle`]). On an error `copy` may
/// hold a partial field.
pub(crate) fn put_text(
    col: &Column,
    tz: &TimeZone,
    text: &str,
    k: usize,
    row: usize,
    copy: &mut Vec<u8>,
    deferred: &mut Vec<Deferred>,
) -> Result<(), FieldError> {
    let field_start = copy.len();
    match encode_field(col, tz, text, copy) {
        Err(FieldError::Defer) => {
            copy.truncate(field_start);
            deferred.push(Deferred {
                row: row as u32,
                at: field_start as u32,
                column: k as u16,
                text: text.to_string(),
            });
            Ok(())
        }
        other => other,
    }
}

/// Drops the deferred values of a row that was rejected after all.
pub(crate) fn undefer(deferred: &mut Vec<Deferred>, row: usize) {
    while deferred.last().is_some_and(|d| d.row as usize == row) {
        deferred.pop();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::model::ModelSet;

    proptest::proptest! {
        /// Each record is text by itself, whatever its neighbours: a
        /// record loads if and only if it is valid UTF-8 with no NUL, even
        /// where the batch's bytes as a whole are valid (a character cut
        /// in two by a line end).
        #[test]
        fn a_record_is_judged_as_text_by_its_own_bytes(
            pieces in proptest::collection::vec(proptest::prop_oneof![
                8 => proptest::sample::select(vec!["a", ",", "\"", "é", "€"]),
                1 => proptest::sample::select(vec!["\0", "\u{ff}"]),
            ], 0..40),
            cuts in proptest::collection::vec(0usize..200, 0..10),
        ) {
            // Whole characters cut into records anywhere, as line ends may
            // cut them; a stray byte (0xFF) now and then.
            let bytes: Vec<u8> = pieces
                .iter()
                .flat_map(|p| if *p == "\u{ff}" { vec![0xFF] } else { p.as_bytes().to_vec() })
                .collect();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
            cuts.sort_unstable();
            let mut records = Vec::new();
            let mut at = 0;
            for c in cuts.into_iter().chain([bytes.len()]) {
                records.push(bytes[at..c].to_vec());
                at = c;
            }
            let model = ModelSet::parse(
                "[models.m]\ntable='t'\n[[models.m.columns]]\nname='a'\ntype='text'\n",
            )
            .unwrap()
            .get("m")
            .unwrap();
            let plan = Plan::positional(Arc::clone(&model), false);
            let mut raw = RawBatch::default();
            for (i, r) in records.iter().enumerate() {
                let start = raw.data.len() as u32;
                raw.data.extend_from_slice(r);
                raw.records.push(RecordMeta {
                    start,
                    end: raw.data.len() as u32,
                    line: i as u64 + 1,
                    oversized: false,
                    unterminated: false,
                });
            }
            let out = encode_batch(&plan, raw, &mut Scratch::default());
            for (i, r) in records.iter().enumerate() {
                let text = std::str::from_utf8(r).is_ok() && !r.contains(&0);
                let rejected = out
                    .rejects
                    .iter()
                    .find(|j| j.line == i as u64 + 1)
                    .map(|j| j.reason.as_str());
                let as_text = rejected.is_none_or(|reason| {
                    !reason.starts_with("invalid UTF-8") && !reason.contains("NUL byte")
                });
                proptest::prop_assert_eq!(text, as_text, "{:?}: {:?}", r, rejected);
            }
        }
    }
}
