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
use crate::encode::{COPY_HEADER, FieldError, Typed, encode_typed, number_text, put_i16, put_i32};
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
    batches: Box<dyn Iterator<Item = Result<RecordBatch, ArrowError>> + Send>,
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
                use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
                let file = BoundedFile {
                    file,
                    len: file_len,
                    at_end: Default::default(),
                };
                let builder = guarded(|| ParquetRecordBatchReaderBuilder::try_new(file))
                    .map_err(|e| unreadable(&e))?;
                let (plan, projection) = plan_onto(model, builder.schema(), line_column)?;
                let total_rows = builder.metadata().file_metadata().num_rows().max(0) as u64;
                let mask = ProjectionMask::roots(builder.parquet_schema(), projection);
                let reader = guarded(|| {
                    builder
                        .with_projection(mask)
                        .with_batch_size(batch_size)
                        .build()
                })
                .map_err(|e| unreadable(&e))?;
                let reader = ColumnarReader {
                    format,
                    batches: Box::new(reader),
                    total_rows: Some(total_rows),
                    file_len,
                };
                Ok((plan, reader))
            }
            Layout::ArrowFile | Layout::ArrowStream => {
                check_ipc_lengths(&mut file, layout, file_len).map_err(|e| unreadable(&e))?;
                let file = PositionReader::new(file, raw_bytes);
                let (schema, batches): (SchemaRef, Box<dyn Iterator<Item = _> + Send>) =
                    if layout == Layout::ArrowFile {
                        let r = guarded(|| arrow_ipc::reader::FileReader::try_new(file, None))
                            .map_err(|e| unreadable(&e))?;
                        (r.schema(), Box::new(r))
                    } else {
                        let r = guarded(|| {
                            arrow_ipc::reader::StreamReader::try_new(
                                BufReader::with_capacity(256 << 10, file),
                                None,
                            )
                        })
                        .map_err(|e| unreadable(&e))?;
                        (r.schema(), Box::new(r))
                    };
                let (plan, projection) = plan_onto(model, &schema, line_column)?;
                let batches = batches.map(move |b| b.and_then(|b| b.project(&projection)));
                let reader = ColumnarReader {
                    format,
                    batches: Box::new(Sliced::new(batches, batch_size)),
                    total_rows: None,
                    file_len,
                };
                Ok((plan, reader))
            }
        }
    }

    /// The next batch, or an error that names the file's format. A panic in
    /// the decoder (hostile bytes) is an error too.
    pub fn next_batch(&mut self) -> Result<Option<RecordBatch>, ColumnarError> {
        let batches = &mut self.batches;
        let unreadable = |message: String| ColumnarError::Unreadable {
            format: self.format.as_str(),
            message,
        };
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| batches.next())) {
            Ok(None) => Ok(None),
            Ok(Some(Ok(b))) => Ok(Some(b)),
            Ok(Some(Err(e))) => Err(unreadable(e.to_string())),
            Err(_) => Err(unreadable(MALFORMED.into())),
        }
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

/// Arrow's IPC readers allocate what a file's lengths claim before they
/// read: every message's lengths are checked against the file first, so a
/// hostile file fails with an error instead of exhausting memory. The file
/// form lists its blocks in the footer; a stream is walked message by
/// message (headers only, bodies skipped).
fn check_ipc_lengths(file: &mut File, layout: Layout, len: u64) -> Result<(), String> {
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
            let mut footer = vec![0u8; footer_len as usize];
            file.seek(SeekFrom::Start(body_end))
                .map_err(|e| e.to_string())?;
            file.read_exact(&mut footer).map_err(|e| e.to_string())?;
            let footer = arrow_ipc::root_as_footer(&footer).map_err(|e| e.to_string())?;
            let blocks = footer.recordBatches().into_iter().flatten();
            for b in blocks.chain(footer.dictionaries().into_iter().flatten()) {
                let end = u64::try_from(b.offset())
                    .ok()
                    .zip(u64::try_from(b.metaDataLength()).ok())
                    .zip(u64::try_from(b.bodyLength()).ok())
                    .and_then(|((o, m), l)| o.checked_add(m)?.checked_add(l));
                if end.is_none_or(|e| e > body_end) {
                    return Err(beyond("a record batch"));
                }
            }
        }
        Layout::ArrowStream => {
            let mut r = BufReader::new(&mut *file);
            let mut at = 0u64;
            loop {
                let mut word = [0u8; 4];
                if read_up_to(&mut r, &mut word).map_err(|e| e.to_string())? < 4 {
                    break;
                }
                at += 4;
                if word == [0xff; 4] {
                    if read_up_to(&mut r, &mut word).map_err(|e| e.to_string())? < 4 {
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
                let mut meta = vec![0u8; meta_len as usize];
                r.read_exact(&mut meta).map_err(|e| e.to_string())?;
                let body = arrow_ipc::root_as_message(&meta)
                    .map_err(|e| e.to_string())?
                    .bodyLength();
                at += meta_len;
                let body = u64::try_from(body).map_err(|_| "a negative body length".to_string())?;
                if at + body > len {
                    return Err(beyond("a message body"));
                }
                r.seek_relative(body as i64).map_err(|e| e.to_string())?;
                at += body;
            }
        }
    }
    file.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    Ok(())
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
    Text(Box<dyn Fn(usize) -> &'a str + 'a>),
    /// A number written as text (decimals): exact.
    Number(Box<dyn Fn(usize) -> String + 'a>),
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

/// A decimal's digits with its point put back (`scale` digits after it;
/// a negative scale appends zeros).
fn decimal_text(digits: String, scale: i8) -> String {
    let (sign, digits) = match digits.strip_prefix('-') {
        Some(d) => ("-", d),
        None => ("", digits.as_str()),
    };
    if scale <= 0 {
        return format!(
            "{sign}{digits}{}",
            "0".repeat(scale.unsigned_abs() as usize)
        );
    }
    let scale = scale as usize;
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{sign}{int}.{frac}")
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
            ($t:ty, $s:expr) => {{
                let (p, s) = (a.as_primitive::<$t>(), $s);
                Values::Number(Box::new(move |i| decimal_text(p.value(i).to_string(), s)))
            }};
        }
        match a.data_type() {
            D::Null => Values::Null,
            D::Utf8 => {
                let s = a.as_string::<i32>();
                Values::Text(Box::new(move |i| s.value(i)))
            }
            D::LargeUtf8 => {
                let s = a.as_string::<i64>();
                Values::Text(Box::new(move |i| s.value(i)))
            }
            D::Utf8View => {
                let s = a.as_string_view();
                Values::Text(Box::new(move |i| s.value(i)))
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
            &D::Decimal32(_, s) => decimal!(Decimal32Type, s),
            &D::Decimal64(_, s) => decimal!(Decimal64Type, s),
            &D::Decimal128(_, s) => decimal!(Decimal128Type, s),
            &D::Decimal256(_, s) => decimal!(Decimal256Type, s),
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
            if arrays[k].is_null(i) || matches!(readers[k], Values::Null) {
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
                Values::Text(get) => {
                    let text = get(i);
                    if memchr::memchr(0, text.as_bytes()).is_some() {
                        Err(FieldError::Invalid(
                            "contains a NUL byte (0x00), which PostgreSQL cannot store in any value"
                                .into(),
                        ))
                    } else {
                        put_text(col, tz, text, k, rows.len(), &mut copy, &mut deferred)
                    }
                }
                Values::Number(get) => {
                    put_text(col, tz, &get(i), k, rows.len(), &mut copy, &mut deferred)
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
