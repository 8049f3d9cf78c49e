//! Parquet and Arrow IPC input: record batches from arrow-rs, encoded
//! straight from their typed arrays into binary COPY — no text round trip
//! for typed columns. Only the columns the model needs are read; Parquet
//! row groups are decoded a batch at a time, so memory is bounded by a
//! batch, not by the file.
//!
//! Which Arrow type may fill which column is decided once, before any row
//! loads ([`fits`]); a value that does not fit its column (out of range,
//! against a rule of the model) is a reject with its row number, and the
//! row rendered as a JSON object for the reject's raw text.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::*;
use arrow_array::{Array, ArrayRef, RecordBatch, StructArray};
use arrow_schema::{ArrowError, DataType, Field, FieldRef, SchemaRef, TimeUnit};

use crate::batch::{
    Deferred, EncodedBatch, REJECT_RAW_MAX, RawBatch, Reject, end_row, finish_batch, put_text,
    undefer,
};
use crate::encode::{
    COPY_HEADER, FieldError, Typed, encode_decimal, encode_typed, number_text, put_i16, put_i32,
};
use crate::model::{InputFormat, Model, TimeZone};
use crate::plan::Plan;
use crate::source::PositionReader;
use crate::types::ColumnType;
use crate::values;

/// Why a columnar file cannot be loaded at all.
#[derive(Debug, thiserror::Error)]
pub enum ColumnarError {
    #[error("cannot read the {format} file: {message}")]
    Unreadable {
        format: &'static str,
        message: String,
    },
    #[error(
        "column `{column}`: the file's {arrow} values cannot become {target}; change the model's type for it, or convert the column before loading"
    )]
    TypeMismatch {
        column: String,
        arrow: String,
        target: ColumnType,
    },
}

/// How a columnar file is laid out, as its magic bytes prove: Parquet and
/// the Arrow IPC file form open and end with their magic; an Arrow stream
/// opens with a continuation marker (0xFF bytes, never UTF-8). Text
/// formats have none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Parquet,
    ArrowFile,
    ArrowStream,
}

const PARQUET_MAGIC: &[u8] = b"PAR1";
const ARROW_FILE_MAGIC: &[u8] = b"ARROW1";
const ARROW_STREAM_MAGIC: &[u8] = &[0xff, 0xff, 0xff, 0xff];

impl Layout {
    pub fn format(self) -> InputFormat {
        match self {
            Layout::Parquet => InputFormat::Parquet,
            Layout::ArrowFile | Layout::ArrowStream => InputFormat::Arrow,
        }
    }

    pub fn of(head: &[u8], tail: &[u8]) -> Option<Layout> {
        if head.starts_with(PARQUET_MAGIC) && tail.ends_with(PARQUET_MAGIC) {
            Some(Layout::Parquet)
        } else if head.starts_with(ARROW_FILE_MAGIC) && tail.ends_with(ARROW_FILE_MAGIC) {
            Some(Layout::ArrowFile)
        } else if head.starts_with(ARROW_STREAM_MAGIC) {
            Some(Layout::ArrowStream)
        } else {
            None
        }
    }

    /// The layout of an open file (read from its start again afterwards).
    pub fn of_file(file: &mut File) -> std::io::Result<Option<Layout>> {
        let len = file.metadata()?.len();
        let (mut head, mut tail) = ([0u8; 8], [0u8; 8]);
        let n = read_up_to(file, &mut head)?;
        file.seek(SeekFrom::Start(len.saturating_sub(8)))?;
        let m = read_up_to(file, &mut tail)?;
        file.seek(SeekFrom::Start(0))?;
        Ok(Layout::of(&head[..n], &tail[..m]))
    }
}

/// Whether a value of Arrow type `dt` can be stored in a `ty` column.
/// Text goes through the same input rules as a CSV field; typed values are
/// converted exactly (integers range-checked, decimals keep their scale,
/// timestamps of any unit).
pub fn fits(dt: &DataType, ty: ColumnType) -> bool {
    use ColumnType as C;
    use DataType as D;
    match dt {
        D::Dictionary(_, value) => fits(value, ty),
        D::Null | D::Utf8 | D::LargeUtf8 | D::Utf8View => true,
        D::Int8 | D::Int16 | D::Int32 | D::Int64 | D::UInt8 | D::UInt16 | D::UInt32 | D::UInt64 => {
            ty.is_numeric()
        }
        D::Float16 | D::Float32 | D::Float64 => {
            matches!(ty, C::Real | C::Double | C::Numeric(_))
        }
        D::Decimal32(..) | D::Decimal64(..) | D::Decimal128(..) | D::Decimal256(..) => {
            matches!(ty, C::Numeric(_) | C::Real | C::Double)
        }
        D::Boolean => ty == C::Boolean,
        D::Date32 | D::Date64 => ty == C::Date,
        D::Timestamp(..) => matches!(ty, C::Timestamp | C::Timestamptz),
        D::Binary | D::LargeBinary | D::BinaryView => ty == C::Bytea,
        D::FixedSizeBinary(n) => ty == C::Bytea || (*n == 16 && ty == C::Uuid),
        D::List(_)
        | D::LargeList(_)
        | D::ListView(_)
        | D::LargeListView(_)
        | D::FixedSizeList(..)
        | D::Struct(_)
        | D::Map(..) => ty == C::Jsonb,
        _ => false,
    }
}

/// Record batches of an open file, the columns the model needs only.
pub struct ColumnarReader {
    format: InputFormat,
    batches: Box<dyn Iterator<Item = Result<Chunk, String>> + Send>,
    /// Parquet knows its row count up front: progress is counted in rows
    /// and shown as the share of the file's bytes.
    pub total_rows: Option<u64>,
    pub file_len: u64,
}

impl ColumnarReader {
    /// Opens `path` as `format` (Parquet or Arrow IPC, file or stream),
    /// plans the model onto its schema, and checks every column's type:
    /// the plan, and the reader of its batches.
    pub fn open(
        path: &Path,
        format: InputFormat,
        model: Arc<Model>,
        batch_size: usize,
        line_column: bool,
        raw_bytes: Arc<std::sync::atomic::AtomicU64>,
        skip: Arc<HashSet<u64>>,
    ) -> Result<(Plan, ColumnarReader), crate::runner::PipelineError> {
        let unreadable = |e: &dyn std::fmt::Display| ColumnarError::Unreadable {
            format: format.as_str(),
            message: e.to_string(),
        };
        let mut file = File::open(path)?;
        let file_len = file.metadata()?.len();
        let layout = Layout::of_file(&mut file)?
            .filter(|l| l.format() == format)
            .ok_or_else(|| {
                unreadable(&"its first and last bytes are not the format's magic: is it a complete file of this format?")
            })?;
        let batch_size = batch_size.max(1);
        match layout {
            Layout::Parquet => {
                use parquet::arrow::ProjectionMask;
                use parquet::arrow::arrow_reader::ArrowReaderMetadata;
                check_parquet_footer(&mut file, file_len).map_err(|e| unreadable(&e))?;
                let file = BoundedFile {
                    file,
                    len: file_len,
                    at_end: Default::default(),
                };
                let metadata = guarded(|| ArrowReaderMetadata::load(&file, Default::default()))
                    .map_err(|e| unreadable(&e))?;
                let (plan, projection) = plan_onto(model, metadata.schema(), line_column)?;
                let total_rows = metadata.metadata().file_metadata().num_rows().max(0) as u64;
                let mask = ProjectionMask::roots(metadata.parquet_schema(), projection);
                let groups: Vec<u64> = metadata
                    .metadata()
                    .row_groups()
                    .iter()
                    .map(|g| g.num_rows().max(0) as u64)
                    .collect();
                let reader = ColumnarReader {
                    format,
                    batches: Box::new(ByUnit::new(
                        RowGroups {
                            file,
                            metadata,
                            mask,
                            batch_size,
                        },
                        groups,
                        batch_size,
                        skip,
                    )),
                    total_rows: Some(total_rows),
                    file_len,
                };
                Ok((plan, reader))
            }
            Layout::ArrowFile | Layout::ArrowStream => {
                let blocks =
                    check_ipc_lengths(&mut file, layout, file_len).map_err(|e| unreadable(&e))?;
                let file = PositionReader::new(file, raw_bytes.clone());
                if layout == Layout::ArrowFile {
                    let r = guarded(|| arrow_ipc::reader::FileReader::try_new(file, None))
                        .map_err(|e| unreadable(&e))?;
                    // It read the footer, at the end: no batch is read yet.
                    raw_bytes.store(0, std::sync::atomic::Ordering::Relaxed);
                    let (plan, projection) = plan_onto(model, &r.schema(), line_column)?;
                    let units = IpcBlocks {
                        reader: r,
                        projection,
                        batch_size,
                    };
                    let reader = ColumnarReader {
                        format,
                        batches: Box::new(ByUnit::new(units, blocks, batch_size, skip)),
                        total_rows: None,
                        file_len,
                    };
                    return Ok((plan, reader));
                }
                // A stream is read in order: committed batches are decoded
                // and read past.
                let r = guarded(|| {
                    arrow_ipc::reader::StreamReader::try_new(
                        BufReader::with_capacity(256 << 10, file),
                        None,
                    )
                })
                .map_err(|e| unreadable(&e))?;
                let (plan, projection) = plan_onto(model, &r.schema(), line_column)?;
                let batches = r.map(move |b| b.and_then(|b| b.project(&projection)));
                let reader = ColumnarReader {
                    format,
                    batches: Box::new(
                        Sliced::new(batches, batch_size)
                            .map(|b| b.map(Chunk::Rows).map_err(|e| e.to_string())),
                    ),
                    total_rows: None,
                    file_len,
                };
                Ok((plan, reader))
            }
        }
    }

    /// The next batch, or an error that names the file's format. A panic in
    /// the decoder (hostile bytes) is an error too.
    pub fn next_batch(&mut self) -> Result<Option<Chunk>, ColumnarError> {
        let batches = &mut self.batches;
        let unreadable = |message: String| ColumnarError::Unreadable {
            format: self.format.as_str(),
            message,
        };
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| batches.next())) {
            Ok(None) => Ok(None),
            Ok(Some(Ok(b))) => Ok(Some(b)),
            Ok(Some(Err(e))) => Err(unreadable(e)),
            Err(_) => Err(unreadable(MALFORMED.into())),
        }
    }
}

/// One batch of a columnar file: its rows, or how many rows a batch that
/// an earlier run committed holds (read past without decoding).
pub enum Chunk {
    Rows(RecordBatch),
    Skipped(u64),
}

/// One unit of a columnar file whose row count is known before it is
/// decoded: a Parquet row group, a record batch of an Arrow IPC file.
type UnitBatches = Box<dyn Iterator<Item = Result<RecordBatch, String>> + Send>;

/// Opens unit `index` as its batches (at most `batch_size` rows each).
trait Units: Send {
    fn open(&mut self, index: usize) -> Result<UnitBatches, String>;
}

/// A file's batches cut unit by unit (a batch never spans two), so that
/// batch numbers follow from the metadata alone: a unit whose batches an
/// earlier run all committed is not decoded at all.
struct ByUnit<U> {
    units: U,
    batch_size: usize,
    /// The units still to read: index and rows.
    rows: std::iter::Enumerate<std::vec::IntoIter<u64>>,
    current: Option<UnitBatches>,
    /// Rows of the skipped batches still to report.
    skipped: std::collections::VecDeque<u64>,
    /// The number of the next batch.
    seq: u64,
    skip: Arc<HashSet<u64>>,
}

impl<U: Units> ByUnit<U> {
    fn new(units: U, rows: Vec<u64>, batch_size: usize, skip: Arc<HashSet<u64>>) -> Self {
        ByUnit {
            units,
            batch_size,
            rows: rows.into_iter().enumerate(),
            current: None,
            skipped: Default::default(),
            seq: 0,
            skip,
        }
    }
}

impl<U: Units> Iterator for ByUnit<U> {
    type Item = Result<Chunk, String>;
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(rows) = self.skipped.pop_front() {
                self.seq += 1;
                return Some(Ok(Chunk::Skipped(rows)));
            }
            if let Some(batches) = &mut self.current {
                match batches.next() {
                    Some(Ok(b)) => {
                        self.seq += 1;
                        return Some(Ok(Chunk::Rows(b)));
                    }
                    Some(Err(e)) => return Some(Err(e)),
                    None => self.current = None,
                }
            }
            let (index, rows) = self.rows.next()?;
            let size = self.batch_size as u64;
            let batches = rows.div_ceil(size);
            if batches > 0 && (self.seq..self.seq + batches).all(|s| self.skip.contains(&s)) {
                self.skipped
                    .extend((0..batches).map(|b| size.min(rows - b * size)));
                continue;
            }
            match self.units.open(index) {
                Ok(batches) => self.current = Some(batches),
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// A Parquet file's row groups.
struct RowGroups {
    file: BoundedFile,
    metadata: parquet::arrow::arrow_reader::ArrowReaderMetadata,
    mask: parquet::arrow::ProjectionMask,
    batch_size: usize,
}

impl Units for RowGroups {
    fn open(&mut self, index: usize) -> Result<UnitBatches, String> {
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        let file = self.file.reopen().map_err(|e| e.to_string())?;
        let reader =
            ParquetRecordBatchReaderBuilder::new_with_metadata(file, self.metadata.clone())
                .with_projection(self.mask.clone())
                .with_batch_size(self.batch_size)
                .with_row_groups(vec![index])
                .build()
                .map_err(|e| e.to_string())?;
        Ok(Box::new(reader.map(|b| b.map_err(|e| e.to_string()))))
    }
}

/// An Arrow IPC file's record batches, read by their place in the footer.
struct IpcBlocks {
    reader: arrow_ipc::reader::FileReader<PositionReader>,
    projection: Vec<usize>,
    batch_size: usize,
}

impl Units for IpcBlocks {
    fn open(&mut self, index: usize) -> Result<UnitBatches, String> {
        self.reader.set_index(index).map_err(|e| e.to_string())?;
        let batch = self
            .reader
            .next()
            .ok_or("a record batch the footer lists is missing")?
            .and_then(|b| b.project(&self.projection))
            .map_err(|e| e.to_string())?;
        let sliced = Sliced::new(std::iter::once(Ok(batch)), self.batch_size);
        Ok(Box::new(sliced.map(|b| b.map_err(|e| e.to_string()))))
    }
}

/// What a decoder's panic on hostile bytes is reported as.
const MALFORMED: &str = "the decoder failed on malformed data";

/// A Parquet file as the decoder reads it, within bounds: a range past the
/// end is an error before anything is allocated for it (a hostile length
/// would otherwise be allocated whole), and so is reading on at the end of
/// the file over and over — a malformed page header can have the decoder
/// read billions of list elements from nothing.
struct BoundedFile {
    file: File,
    len: u64,
    /// Reads that found the end of the file, so far.
    at_end: Arc<std::sync::atomic::AtomicU64>,
}

/// How often the decoder may find the end of the file: a valid file is
/// read to its end a few times (the footer, the last column chunks).
const READS_AT_THE_END: u64 = 10_000;

impl BoundedFile {
    /// The same file, for another reader: its own handle, the same count
    /// of reads at the end.
    fn reopen(&self) -> std::io::Result<BoundedFile> {
        Ok(BoundedFile {
            file: self.file.try_clone()?,
            len: self.len,
            at_end: self.at_end.clone(),
        })
    }
}

impl parquet::file::reader::Length for BoundedFile {
    fn len(&self) -> u64 {
        self.len
    }
}

impl parquet::file::reader::ChunkReader for BoundedFile {
    type T = BufReader<EndWatch>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        let mut file = self.file.try_clone()?;
        file.seek(SeekFrom::Start(start))?;
        Ok(BufReader::new(EndWatch {
            file,
            at_end: self.at_end.clone(),
        }))
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<bytes::Bytes> {
        if start
            .checked_add(length as u64)
            .is_none_or(|end| end > self.len)
        {
            return Err(parquet::errors::ParquetError::EOF(format!(
                "{length} bytes at {start} reach past the end of the file ({} bytes)",
                self.len
            )));
        }
        self.file.get_bytes(start, length)
    }
}

/// A reader of the file that counts the reads that find its end.
struct EndWatch {
    file: File,
    at_end: Arc<std::sync::atomic::AtomicU64>,
}

impl Read for EndWatch {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read(buf)?;
        if n == 0
            && !buf.is_empty()
            && self
                .at_end
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                >= READS_AT_THE_END
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the decoder keeps reading past the end of the file: its pages are malformed",
            ));
        }
        Ok(n)
    }
}

/// Checks an Arrow IPC file's framing before arrow-rs reads it: every
/// message and body lies inside the file (a reader allocates what a length
/// claims), and a compressed batch's buffers claim at most
/// [`MAX_DECOMPRESSED`] bytes together (each buffer's first 8 bytes say how
/// much to allocate for it; a crafted claim would abort the process).
/// For the file form, the rows of each record batch the footer lists.
fn check_ipc_lengths(file: &mut File, layout: Layout, len: u64) -> Result<Vec<u64>, String> {
    let mut rows = Vec::new();
    let beyond = |what: &str| format!("{what} reaches past the end of the file");
    match layout {
        Layout::Parquet => {}
        Layout::ArrowFile => {
            let mut tail = [0u8; 10];
            file.seek(SeekFrom::End(-10)).map_err(|e| e.to_string())?;
            file.read_exact(&mut tail).map_err(|e| e.to_string())?;
            let footer_len =
                arrow_ipc::reader::read_footer_length(tail).map_err(|e| e.to_string())? as u64;
            let body_end = len
                .checked_sub(10 + footer_len)
                .ok_or_else(|| beyond("the footer"))?;
            let footer = read_at(file, body_end, footer_len)?;
            let footer = arrow_ipc::root_as_footer(&footer).map_err(|e| e.to_string())?;
            let batches = footer.recordBatches().into_iter().flatten().count();
            let blocks = footer.recordBatches().into_iter().flatten();
            for (i, b) in blocks
                .chain(footer.dictionaries().into_iter().flatten())
                .enumerate()
            {
                let (Ok(at), Ok(meta_len), Ok(body_len)) = (
                    u64::try_from(b.offset()),
                    u64::try_from(b.metaDataLength()),
                    u64::try_from(b.bodyLength()),
                ) else {
                    return Err("a record batch has a negative offset or length".into());
                };
                let end = at
                    .checked_add(meta_len)
                    .and_then(|e| e.checked_add(body_len));
                if end.is_none_or(|e| e > body_end) {
                    return Err(beyond("a record batch"));
                }
                let meta = read_at(file, at, meta_len)?;
                let flatbuffer = match meta.get(..4) {
                    Some([0xff, 0xff, 0xff, 0xff]) => meta.get(8..),
                    _ => meta.get(4..),
                };
                let message = arrow_ipc::root_as_message(flatbuffer.unwrap_or_default())
                    .map_err(|e| e.to_string())?;
                check_compressed_claims(file, &message, at + meta_len, body_len)?;
                if i < batches {
                    let n = message
                        .header_as_record_batch()
                        .map(|b| b.length())
                        .ok_or("a record batch block holds no record batch")?;
                    rows.push(u64::try_from(n).map_err(|_| "a negative row count")?);
                }
            }
        }
        Layout::ArrowStream => {
            let mut at = 0u64;
            file.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
            loop {
                let mut word = [0u8; 4];
                if read_up_to(file, &mut word).map_err(|e| e.to_string())? < 4 {
                    break;
                }
                at += 4;
                if word == [0xff; 4] {
                    if read_up_to(file, &mut word).map_err(|e| e.to_string())? < 4 {
                        break;
                    }
                    at += 4;
                }
                let meta_len = i32::from_le_bytes(word);
                if meta_len == 0 {
                    break;
                }
                let meta_len =
                    u64::try_from(meta_len).map_err(|_| "a negative message length".to_string())?;
                if at + meta_len > len {
                    return Err(beyond("a message"));
                }
                let meta = read_at(file, at, meta_len)?;
                let message = arrow_ipc::root_as_message(&meta).map_err(|e| e.to_string())?;
                at += meta_len;
                let body = u64::try_from(message.bodyLength())
                    .map_err(|_| "a negative body length".to_string())?;
                if at + body > len {
                    return Err(beyond("a message body"));
                }
                check_compressed_claims(file, &message, at, body)?;
                at += body;
                file.seek(SeekFrom::Start(at)).map_err(|e| e.to_string())?;
            }
        }
    }
    file.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    Ok(rows)
}

/// Walks a Parquet file's footer (Thrift compact protocol) before
/// parquet-rs decodes it: every list, set and map may claim no more
/// elements than bytes remain, as any real encoding needs at least a byte
/// each. A crafted footer of a few KB claiming billions of zero-byte
/// elements otherwise keeps the decoder skipping them for minutes.
fn check_parquet_footer(file: &mut File, len: u64) -> Result<(), String> {
    let tail = read_at(file, len.checked_sub(8).ok_or("too short")?, 8)?;
    let footer_len = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]) as u64;
    let at = len
        .checked_sub(8 + footer_len)
        .ok_or("the footer reaches past the start of the file")?;
    let footer = read_at(file, at, footer_len)?;
    let mut walk = Thrift {
        bytes: &footer,
        at: 0,
    };
    walk.value(12, 0)
        .ok_or_else(|| "its footer (file metadata) is malformed".to_string())
}

/// A reader of Thrift's compact protocol that only walks values; `None`
/// for anything malformed.
struct Thrift<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Thrift<'_> {
    const MAX_DEPTH: u32 = 64;

    fn byte(&mut self) -> Option<u8> {
        let b = *self.bytes.get(self.at)?;
        self.at += 1;
        Some(b)
    }

    fn skip(&mut self, n: u64) -> Option<()> {
        let n = usize::try_from(n).ok()?;
        (n <= self.left()).then(|| self.at += n)
    }

    fn left(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..70).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f).checked_shl(shift)?;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    /// `n` elements of type `ty`, after checking that they can fit.
    fn elements(&mut self, n: u64, per: u64, ty: u8, depth: u32) -> Option<()> {
        if n.checked_mul(per)? > self.left() as u64 {
            return None;
        }
        for _ in 0..n {
            match ty {
                // A boolean in a collection is a byte of its own.
                1 | 2 => self.skip(1)?,
                _ => self.value(ty, depth)?,
            }
        }
        Some(())
    }

    /// One value of compact type `ty`.
    fn value(&mut self, ty: u8, depth: u32) -> Option<()> {
        if depth > Self::MAX_DEPTH {
            return None;
        }
        match ty {
            1 | 2 => Some(()), // a field's boolean lives in its header
            3 => self.skip(1),
            4..=6 => self.varint().map(drop),
            7 => self.skip(8),
            8 => {
                let n = self.varint()?;
                self.skip(n)
            }
            9 | 10 => {
                let head = self.byte()?;
                let n = match head >> 4 {
                    15 => self.varint()?,
                    n => u64::from(n),
                };
                self.elements(n, 1, head & 0x0f, depth + 1)
            }
            11 => {
                let n = self.varint()?;
                if n == 0 {
                    return Some(());
                }
                let types = self.byte()?;
                if n.checked_mul(2)? > self.left() as u64 {
                    return None;
                }
                for _ in 0..n {
                    self.elements(1, 1, types >> 4, depth + 1)?;
                    self.elements(1, 1, types & 0x0f, depth + 1)?;
                }
                Some(())
            }
            12 => loop {
                let head = self.byte()?;
                if head == 0 {
                    return Some(());
                }
                if head >> 4 == 0 {
                    self.varint()?; // the field id, in full
                }
                self.value(head & 0x0f, depth + 1)?;
            },
            _ => None,
        }
    }
}

/// The most a compressed Arrow IPC batch may decompress to, its buffers
/// together: far above what a batch of any sensible size needs, far below
/// what would exhaust the machine.
pub const MAX_DECOMPRESSED: u64 = 1 << 30;

/// Sums what a compressed record batch (or dictionary batch) message's
/// buffers claim to decompress to, reading each buffer's 8-byte length
/// prefix from the body at `body_at`.
fn check_compressed_claims(
    file: &mut File,
    message: &arrow_ipc::Message<'_>,
    body_at: u64,
    body_len: u64,
) -> Result<(), String> {
    let batch = message
        .header_as_record_batch()
        .or_else(|| message.header_as_dictionary_batch().and_then(|d| d.data()));
    let Some(batch) = batch.filter(|b| b.compression().is_some()) else {
        return Ok(());
    };
    let mut claimed = 0u64;
    for buffer in batch.buffers().into_iter().flatten() {
        let (Ok(offset), Ok(length)) = (
            u64::try_from(buffer.offset()),
            u64::try_from(buffer.length()),
        ) else {
            return Err("a buffer has a negative offset or length".into());
        };
        if length < 8 {
            continue; // empty, or too short: arrow-rs refuses it without allocating
        }
        if offset.checked_add(length).is_none_or(|e| e > body_len) {
            return Err("a buffer reaches past its message's body".into());
        }
        let prefix = read_at(file, body_at + offset, 8)?;
        let claim = prefix
            .try_into()
            .map(i64::from_le_bytes)
            .unwrap_or_default();
        claimed = claimed.saturating_add(u64::try_from(claim).unwrap_or(0));
        if claimed > MAX_DECOMPRESSED {
            return Err(format!(
                "a compressed record batch claims more than {} MiB decompressed, the most one batch may take; write the file with smaller batches",
                MAX_DECOMPRESSED >> 20
            ));
        }
    }
    Ok(())
}

/// `len` bytes of `file` from `at`.
fn read_at(file: &mut File, at: u64, len: u64) -> Result<Vec<u8>, String> {
    let mut buf = vec![0u8; usize::try_from(len).map_err(|e| e.to_string())?];
    file.seek(SeekFrom::Start(at)).map_err(|e| e.to_string())?;
    file.read_exact(&mut buf).map_err(|e| e.to_string())?;
    Ok(buf)
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Runs a decoder step, turning a panic on malformed input into an error.
fn guarded<T, E: std::fmt::Display>(f: impl FnOnce() -> Result<T, E>) -> Result<T, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(MALFORMED.into()),
    }
}

/// Plans the model onto the file's columns as onto a CSV header and
/// checks every column's type; the plan then reads the projected columns.
fn plan_onto(
    model: Arc<Model>,
    schema: &SchemaRef,
    line_column: bool,
) -> Result<(Plan, Vec<usize>), crate::runner::PipelineError> {
    let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let mut plan = Plan::from_header(model, &names, line_column)?;
    for (k, &ci) in plan.copy_columns.iter().enumerate() {
        let col = &plan.model.columns[ci];
        let dt = schema.field(plan.field_of[k]).data_type();
        if !fits(dt, col.ty) {
            return Err(ColumnarError::TypeMismatch {
                column: col.name.clone(),
                arrow: dt.to_string(),
                target: col.ty,
            }
            .into());
        }
    }
    // Only the planned columns are read: fields are numbered among them.
    let mut projection = plan.field_of.clone();
    projection.sort_unstable();
    projection.dedup();
    for f in &mut plan.field_of {
        *f = projection.partition_point(|&p| p < *f);
    }
    plan.input_fields = projection.len();
    Ok((plan, projection))
}

/// Cuts an IPC file's batches (as large as their writer made them) to at
/// most `size` rows, without copying.
struct Sliced<I> {
    inner: I,
    current: Option<(RecordBatch, usize)>,
    size: usize,
}

impl<I> Sliced<I> {
    fn new(inner: I, size: usize) -> Self {
        Sliced {
            inner,
            current: None,
            size,
        }
    }
}

impl<I: Iterator<Item = Result<RecordBatch, ArrowError>>> Iterator for Sliced<I> {
    type Item = Result<RecordBatch, ArrowError>;
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some((b, at)) = &mut self.current {
                if *at < b.num_rows() {
                    let n = self.size.min(b.num_rows() - *at);
                    let slice = b.slice(*at, n);
                    *at += n;
                    return Some(Ok(slice));
                }
                self.current = None;
            }
            match self.inner.next()? {
                Ok(b) => self.current = Some((b, 0)),
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// The row as a JSON object, for a reject's raw text (cut like a CSV
/// record's).
pub fn row_text(batch: &RecordBatch, row: usize) -> String {
    let rows = StructArray::from(batch.clone());
    let field: FieldRef = Arc::new(Field::new("row", rows.data_type().clone(), false));
    let options = arrow_json::writer::EncoderOptions::default().with_explicit_nulls(true);
    let mut out = Vec::new();
    match arrow_json::writer::make_encoder(&field, &rows, &options) {
        Ok(mut enc) => enc.encode(row, &mut out),
        Err(e) => return format!("(row {row} cannot be shown: {e})"),
    }
    out.truncate(REJECT_RAW_MAX);
    String::from_utf8_lossy(&out).into_owned()
}

/// How one column's values are read.
enum Values<'a> {
    /// Text, parsed by the column's input rules as a CSV field is.
    Text {
        get: Box<dyn Fn(usize) -> &'a str + 'a>,
        /// No value holds a NUL byte (the array's bytes were searched at
        /// once), so none is searched alone.
        nul_free: bool,
    },
    /// A decimal: its unscaled integer where an i128 holds it (straight
    /// into `numeric`), and its exact text (for any other column, and for
    /// what the fast path leaves to the text path).
    Decimal {
        unscaled: Box<dyn Fn(usize) -> Option<i128> + 'a>,
        scale: i8,
        text: Box<dyn Fn(usize) -> String + 'a>,
    },
    Typed(Box<dyn Fn(usize) -> Typed<'a> + 'a>),
    /// A timestamp of any unit, in the file's zone or none.
    Timestamp {
        value: Box<dyn Fn(usize) -> i64 + 'a>,
        unit: TimeUnit,
        zoned: bool,
    },
    /// Nested values, as JSON.
    Json(arrow_json::writer::NullableEncoder<'a>),
    /// Every value is NULL.
    Null,
    /// Values this build cannot render (the reason): each row is a reject.
    Unreadable(String),
}

impl<'a> Values<'a> {
    fn of(
        field: &'a FieldRef,
        a: &'a dyn Array,
        options: &'a arrow_json::writer::EncoderOptions,
    ) -> Values<'a> {
        use DataType as D;
        macro_rules! typed {
            ($t:ty, $f:expr) => {{
                let p = a.as_primitive::<$t>();
                Values::Typed(Box::new(move |i| $f(p.value(i))))
            }};
        }
        macro_rules! decimal {
            ($t:ty, $s:expr, $i128:expr) => {{
                let (p, scale) = (a.as_primitive::<$t>(), $s);
                Values::Decimal {
                    unscaled: Box::new(move |i| $i128(p.value(i))),
                    scale,
                    text: Box::new(move |i| values::decimal_text(p.value(i).to_string(), scale)),
                }
            }};
        }
        match a.data_type() {
            D::Null => Values::Null,
            D::Utf8 => {
                let s = a.as_string::<i32>();
                Values::Text {
                    get: Box::new(move |i| s.value(i)),
                    nul_free: memchr::memchr(0, s.values()).is_none(),
                }
            }
            D::LargeUtf8 => {
                let s = a.as_string::<i64>();
                Values::Text {
                    get: Box::new(move |i| s.value(i)),
                    nul_free: memchr::memchr(0, s.values()).is_none(),
                }
            }
            D::Utf8View => {
                let s = a.as_string_view();
                Values::Text {
                    get: Box::new(move |i| s.value(i)),
                    nul_free: false,
                }
            }
            D::Int8 => typed!(Int8Type, |v| Typed::Int(v as i128)),
            D::Int16 => typed!(Int16Type, |v| Typed::Int(v as i128)),
            D::Int32 => typed!(Int32Type, |v| Typed::Int(v as i128)),
            D::Int64 => typed!(Int64Type, |v| Typed::Int(v as i128)),
            D::UInt8 => typed!(UInt8Type, |v| Typed::Int(v as i128)),
            D::UInt16 => typed!(UInt16Type, |v| Typed::Int(v as i128)),
            D::UInt32 => typed!(UInt32Type, |v| Typed::Int(v as i128)),
            D::UInt64 => typed!(UInt64Type, |v| Typed::Int(v as i128)),
            D::Float16 => typed!(Float16Type, |v: F16| Typed::Float32(v.to_f32())),
            D::Float32 => typed!(Float32Type, Typed::Float32),
            D::Float64 => typed!(Float64Type, Typed::Float64),
            D::Boolean => {
                let b = a.as_boolean();
                Values::Typed(Box::new(move |i| Typed::Bool(b.value(i))))
            }
            D::Date32 => typed!(Date32Type, |d| Typed::Days(values::unix_to_pg_days(
                d as i64
            ))),
            D::Date64 => typed!(Date64Type, |ms: i64| {
                Typed::Days(values::unix_to_pg_days(ms.div_euclid(86_400_000)))
            }),
            &D::Decimal32(_, s) => decimal!(Decimal32Type, s, |v: i32| Some(v as i128)),
            &D::Decimal64(_, s) => decimal!(Decimal64Type, s, |v: i64| Some(v as i128)),
            &D::Decimal128(_, s) => decimal!(Decimal128Type, s, Some),
            &D::Decimal256(_, s) => {
                decimal!(
                    Decimal256Type,
                    s,
                    |v: <Decimal256Type as ArrowPrimitiveType>::Native| v.to_i128()
                )
            }
            D::Timestamp(unit, tz) => {
                macro_rules! raw {
                    ($t:ty) => {{
                        let p = a.as_primitive::<$t>();
                        Box::new(move |i| p.value(i))
                    }};
                }
                let value: Box<dyn Fn(usize) -> i64 + 'a> = match unit {
                    TimeUnit::Second => raw!(TimestampSecondType),
                    TimeUnit::Millisecond => raw!(TimestampMillisecondType),
                    TimeUnit::Microsecond => raw!(TimestampMicrosecondType),
                    TimeUnit::Nanosecond => raw!(TimestampNanosecondType),
                };
                Values::Timestamp {
                    value,
                    unit: *unit,
                    zoned: tz.is_some(),
                }
            }
            D::Binary => {
                let b = a.as_binary::<i32>();
                Values::Typed(Box::new(move |i| Typed::Bytes(b.value(i))))
            }
            D::LargeBinary => {
                let b = a.as_binary::<i64>();
                Values::Typed(Box::new(move |i| Typed::Bytes(b.value(i))))
            }
            D::BinaryView => {
                let b = a.as_binary_view();
                Values::Typed(Box::new(move |i| Typed::Bytes(b.value(i))))
            }
            D::FixedSizeBinary(_) => {
                let b = a.as_fixed_size_binary();
                Values::Typed(Box::new(move |i| Typed::Bytes(b.value(i))))
            }
            _ => match arrow_json::writer::make_encoder(field, a, options) {
                Ok(e) => Values::Json(e),
                Err(e) => Values::Unreadable(format!("the value cannot be shown as JSON: {e}")),
            },
        }
    }
}

type F16 = <Float16Type as arrow_array::ArrowPrimitiveType>::Native;

/// A timestamp's value as microseconds since 2000 for the column, or the
/// text the server should read it from (sub-microsecond digits, which
/// PostgreSQL rounds; a local time whose offset only the server knows).
fn timestamp_value(
    raw: i64,
    unit: TimeUnit,
    zoned: bool,
    with_tz: bool,
    tz: &TimeZone,
) -> Result<Result<i64, String>, FieldError> {
    let out_of_range = || FieldError::Invalid("timestamp out of range".into());
    let (mut secs, nanos) = match unit {
        TimeUnit::Second => (raw, 0),
        TimeUnit::Millisecond => (raw.div_euclid(1_000), raw.rem_euclid(1_000) * 1_000_000),
        TimeUnit::Microsecond => (raw.div_euclid(1_000_000), raw.rem_euclid(1_000_000) * 1_000),
        TimeUnit::Nanosecond => (raw.div_euclid(1_000_000_000), raw.rem_euclid(1_000_000_000)),
    };
    if zoned && !with_tz {
        // An instant into a zoneless column: its wall time in the load's
        // zone, as PostgreSQL casts timestamptz to timestamp.
        secs = secs
            .checked_add(values::utc_offset_at(secs, tz) as i64)
            .ok_or_else(out_of_range)?;
    }
    let unix_micros = secs
        .checked_mul(1_000_000)
        .and_then(|m| m.checked_add(nanos / 1_000))
        .ok_or_else(out_of_range)?;
    let micros = values::unix_to_pg_micros(unix_micros).ok_or_else(out_of_range)?;
    if nanos % 1_000 != 0 {
        return Ok(Err(timestamp_text(secs, nanos, zoned && with_tz)?));
    }
    if zoned || !with_tz {
        return Ok(Ok(micros));
    }
    // A wall time into a timestamptz column: in the load's zone.
    match values::local_to_utc(micros, tz) {
        Some(utc) => Ok(Ok(utc)),
        None => Ok(Err(timestamp_text(secs, nanos, false)?)),
    }
}

/// A timestamp as PostgreSQL reads it: ISO, nanoseconds, `BC` years,
/// `+00` for an instant.
fn timestamp_text(secs: i64, nanos: i64, utc: bool) -> Result<String, FieldError> {
    use chrono::Datelike;
    let t = chrono::DateTime::from_timestamp(secs, nanos as u32)
        .ok_or_else(|| FieldError::Invalid("timestamp out of range".into()))?
        .naive_utc();
    let (year, era) = match t.year() {
        y if y <= 0 => (1 - y, " BC"),
        y => (y, ""),
    };
    Ok(format!(
        "{year:04}-{}{}{era}",
        t.format("%m-%d %H:%M:%S%.9f"),
        if utc { "+00" } else { "" }
    ))
}

/// Validates and encodes one batch of rows read from a columnar file.
pub fn encode(plan: &Plan, raw: RawBatch, columns: &RecordBatch) -> EncodedBatch {
    let model = &plan.model;
    let tz = &model.input.timezone;
    let ncols = plan.copy_columns.len() + plan.line_column as usize;
    let nrows = columns.num_rows().min(raw.records.len());
    let options = arrow_json::writer::EncoderOptions::default().with_explicit_nulls(true);
    // Dictionaries are unpacked once per batch: the values are then read as
    // their own type. One that cannot be is each row's reject.
    let mut unpacked: Vec<Option<String>> = Vec::new();
    let arrays: Vec<ArrayRef> = plan
        .field_of
        .iter()
        .map(|&f| {
            let a = columns.column(f);
            let (array, failure) = match a.data_type() {
                DataType::Dictionary(_, value) => match arrow_cast::cast(a, value) {
                    Ok(v) => (v, None),
                    Err(e) => (
                        a.clone(),
                        Some(format!("the dictionary cannot be unpacked: {e}")),
                    ),
                },
                _ => (a.clone(), None),
            };
            unpacked.push(failure);
            array
        })
        .collect();
    let fields: Vec<FieldRef> = arrays
        .iter()
        .map(|a| Arc::new(Field::new("v", a.data_type().clone(), true)))
        .collect();
    let mut readers: Vec<Values> = arrays
        .iter()
        .zip(&fields)
        .zip(unpacked)
        .map(|((a, f), failure)| match failure {
            Some(why) => Values::Unreadable(why),
            None => Values::of(f, a.as_ref(), &options),
        })
        .collect();
    // Each column's null bits, read in place rather than through the array.
    let nulls: Vec<_> = arrays.iter().map(|a| a.nulls().cloned()).collect();
    let mut copy = Vec::with_capacity(nrows * (2 + 12 * ncols) + 32);
    copy.extend_from_slice(COPY_HEADER);
    let mut rows = Vec::with_capacity(nrows);
    let mut rejects = Vec::new();
    let mut deferred: Vec<Deferred> = Vec::new();
    let mut json = Vec::new();
    'rows: for (i, meta) in raw.records.iter().enumerate().take(nrows) {
        let row_start = copy.len();
        put_i16(&mut copy, ncols as i16);
        for (k, &ci) in plan.copy_columns.iter().enumerate() {
            let col = &model.columns[ci];
            let fail = |reason: String| Reject {
                line: meta.line,
                column: Some(col.name.clone()),
                reason,
                raw: row_text(columns, i),
            };
            if nulls[k].as_ref().is_some_and(|n| n.is_null(i)) || matches!(readers[k], Values::Null)
            {
                if col.required {
                    copy.truncate(row_start);
                    undefer(&mut deferred, rows.len());
                    rejects.push(fail(format!("`{}` is required but null", col.name)));
                    continue 'rows;
                }
                put_i32(&mut copy, -1);
                continue;
            }
            let result = match &mut readers[k] {
                Values::Text { get, nul_free } => {
                    let text = get(i);
                    if !*nul_free && memchr::memchr(0, text.as_bytes()).is_some() {
                        Err(FieldError::Invalid(
                            "contains a NUL byte (0x00), which PostgreSQL cannot store in any value"
                                .into(),
                        ))
                    } else {
                        put_text(col, tz, text, k, rows.len(), &mut copy, &mut deferred)
                    }
                }
                Values::Decimal {
                    unscaled,
                    scale,
                    text,
                } => {
                    if unscaled(i).is_some_and(|u| encode_decimal(col, u, *scale, &mut copy)) {
                        Ok(())
                    } else {
                        put_text(col, tz, &text(i), k, rows.len(), &mut copy, &mut deferred)
                    }
                }
                Values::Typed(get) => match col.ty {
                    // numeric keeps a number's digits: it reads their text.
                    ColumnType::Numeric(_) => {
                        let text = number_text(get(i));
                        put_text(col, tz, &text, k, rows.len(), &mut copy, &mut deferred)
                    }
                    _ => encode_typed(col, get(i), &mut copy),
                },
                Values::Timestamp { value, unit, zoned } => {
                    match timestamp_value(
                        value(i),
                        *unit,
                        *zoned,
                        col.ty == ColumnType::Timestamptz,
                        tz,
                    ) {
                        Ok(Ok(m)) => encode_typed(col, Typed::Micros(m), &mut copy),
                        Ok(Err(text)) => {
                            put_text(col, tz, &text, k, rows.len(), &mut copy, &mut deferred)
                        }
                        Err(e) => Err(e),
                    }
                }
                Values::Json(enc) => {
                    json.clear();
                    enc.encode(i, &mut json);
                    if memchr::memmem::find(&json, b"\\u0000").is_some() {
                        Err(FieldError::Invalid(
                            "contains a NUL character (\\u0000), which jsonb cannot store".into(),
                        ))
                    } else {
                        put_i32(&mut copy, json.len() as i32 + 1);
                        copy.push(1);
                        copy.extend_from_slice(&json);
                        Ok(())
                    }
                }
                Values::Unreadable(why) => Err(FieldError::Invalid(why.clone())),
                // Handled with the NULLs above.
                Values::Null => Ok(()),
            };
            if let Err(e) = result {
                let reason = match e {
                    FieldError::Invalid(r) => r,
                    FieldError::Defer => "the value cannot be read".into(),
                };
                copy.truncate(row_start);
                undefer(&mut deferred, rows.len());
                rejects.push(fail(reason));
                continue 'rows;
            }
        }
        end_row(plan, &mut copy, &mut rows, row_start, meta.line, i);
    }
    finish_batch(raw, copy, rows, rejects, deferred)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ModelSet;
    use arrow_array::Int64Array;
    use parquet::arrow::ArrowWriter;
    use parquet::file::properties::WriterProperties;

    const MODEL: &str = "[models.m]\ntable = \"m\"\nextra_columns = \"ignore\"\n[[models.m.columns]]\nname = \"id\"\ntype = \"bigint\"\n";

    /// 3 row groups of 10 rows, `id` 1..=30; the first group's column
    /// chunk overwritten with garbage when `garble_first`.
    fn parquet_file(dir: &Path, garble_first: bool) -> std::path::PathBuf {
        let path = dir.join(format!("groups-{garble_first}.parquet"));
        let ids = Int64Array::from_iter_values(1..=30);
        let batch = RecordBatch::try_from_iter([("id", Arc::new(ids) as ArrayRef)]).unwrap();
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(10))
            .build();
        let mut w = ArrowWriter::try_new(File::create(&path).unwrap(), batch.schema(), Some(props))
            .unwrap();
        w.write(&batch).unwrap();
        let meta = w.close().unwrap();
        assert_eq!(meta.num_row_groups(), 3);
        if garble_first {
            let (start, len) = meta.row_group(0).column(0).byte_range();
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[start as usize..(start + len) as usize].fill(0xAB);
            std::fs::write(&path, bytes).unwrap();
        }
        path
    }

    /// What a reader yields: `Ok(first id)` for rows, `Err(rows)` for a
    /// skipped batch; or the error that stopped it.
    fn chunks(
        path: &Path,
        format: InputFormat,
        skip: &[u64],
    ) -> Result<Vec<Result<i64, u64>>, String> {
        let models = ModelSet::parse(MODEL).unwrap();
        let (_, mut reader) = ColumnarReader::open(
            path,
            format,
            models.get("m").unwrap(),
            4,
            false,
            Default::default(),
            Arc::new(skip.iter().copied().collect()),
        )
        .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        while let Some(chunk) = reader.next_batch().map_err(|e| e.to_string())? {
            out.push(match chunk {
                Chunk::Rows(b) => Ok(b.column(0).as_primitive::<Int64Type>().value(0)),
                Chunk::Skipped(n) => Err(n),
            });
        }
        Ok(out)
    }

    #[test]
    fn an_arrow_file_is_not_done_when_its_footer_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = arrow_file(dir.path(), false);
        let len = std::fs::metadata(&path).unwrap().len();
        let progress = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let models = ModelSet::parse(MODEL).unwrap();
        let (_, mut reader) = ColumnarReader::open(
            &path,
            InputFormat::Arrow,
            models.get("m").unwrap(),
            10,
            false,
            progress.clone(),
            Default::default(),
        )
        .unwrap();
        let at = || progress.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(at(), 0);
        let mut seen = Vec::new();
        while let Some(Chunk::Rows(_)) = reader.next_batch().unwrap() {
            seen.push(at());
        }
        assert_eq!(seen.len(), 3);
        assert!(
            seen.is_sorted() && seen[0] > 0 && seen[2] < len,
            "{seen:?} of {len}"
        );
    }

    /// An Arrow IPC file of 3 record batches of 10 rows (`id` 1..=30 and
    /// a string column); the first batch's body garbled when `garble_first`.
    fn arrow_file(dir: &Path, garble_first: bool) -> std::path::PathBuf {
        let path = dir.join(format!("blocks-{garble_first}.arrow"));
        let ids = Int64Array::from_iter_values(1..=30);
        let notes = arrow_array::StringArray::from_iter_values((1..=30).map(|i| format!("n{i}")));
        let batch = RecordBatch::try_from_iter([
            ("id", Arc::new(ids) as ArrayRef),
            ("note", Arc::new(notes) as ArrayRef),
        ])
        .unwrap();
        let mut w =
            arrow_ipc::writer::FileWriter::try_new(File::create(&path).unwrap(), &batch.schema())
                .unwrap();
        for at in [0, 10, 20] {
            w.write(&batch.slice(at, 10)).unwrap();
        }
        w.finish().unwrap();
        if garble_first {
            let mut bytes = std::fs::read(&path).unwrap();
            let tail: [u8; 10] = bytes[bytes.len() - 10..].try_into().unwrap();
            let footer_len = arrow_ipc::reader::read_footer_length(tail).unwrap();
            let footer_at = bytes.len() - 10 - footer_len;
            let footer = arrow_ipc::root_as_footer(&bytes[footer_at..bytes.len() - 10]).unwrap();
            let block = footer.recordBatches().unwrap().get(0);
            let body = (block.offset() + block.metaDataLength() as i64) as usize;
            let end = body + block.bodyLength() as usize;
            bytes[body..end].fill(0xFF);
            std::fs::write(&path, bytes).unwrap();
        }
        path
    }

    /// Parquet row groups and Arrow IPC file record batches of 10 rows,
    /// batches of 4: a batch never spans two units (4, 4, 2 in each), and a
    /// unit whose batches are all committed is never decoded — garbage
    /// there is never read.
    #[test]
    fn batches_follow_units_and_committed_units_are_not_decoded() {
        let dir = tempfile::tempdir().unwrap();
        type Writer = fn(&Path, bool) -> std::path::PathBuf;
        let writers: [(InputFormat, Writer); 2] = [
            (InputFormat::Parquet, parquet_file),
            (InputFormat::Arrow, arrow_file),
        ];
        // The first unit committed, and one batch of the second: reported
        // as skipped batches with their sizes; a unit committed only in
        // part is decoded.
        let skip = [0, 1, 2, 4];
        let expected = [Err(4), Err(4), Err(2)]
            .into_iter()
            .chain([11, 15, 19, 21, 25, 29].map(Ok))
            .collect::<Vec<_>>();
        for (format, write) in writers {
            let whole = write(dir.path(), false);
            assert_eq!(
                chunks(&whole, format, &[]).unwrap(),
                [1, 5, 9, 11, 15, 19, 21, 25, 29].map(Ok),
                "{format:?}"
            );
            assert_eq!(chunks(&whole, format, &skip).unwrap(), expected);
            let garbled = write(dir.path(), true);
            assert!(chunks(&garbled, format, &[]).is_err(), "{format:?}");
            assert_eq!(chunks(&garbled, format, &skip).unwrap(), expected);
        }
    }
}
