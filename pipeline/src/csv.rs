//! CSV as PostgreSQL's `COPY … (FORMAT csv)` reads it, in two steps:
//! [`RecordReader`] finds record bounds (quote-aware, so a quoted CR or LF
//! stays inside its field) and physical line numbers without parsing
//! fields; [`parse_fields`] then splits one record into fields on a worker.
//!
//! Hand-written rather than `csv-core` because PostgreSQL's rules differ in
//! ways that change data: a quote toggles quoting anywhere in a field
//! (`a"b,c"d` is one field `ab,cd`), and NULL is an *unquoted* empty field
//! while `""` is the empty string. Every file PostgreSQL accepts parses to
//! the same values here (tests/csv_differential.rs proves it); files it
//! refuses become per-row rejects instead of one error for the whole load.

use std::io::{self, Read};

use memchr::{memchr, memchr2, memchr3};

const READ_BUF: usize = 256 << 10;
/// How much of an oversized record is kept for its reject's raw text.
pub const RAW_PREFIX: usize = 1024;

/// Where one record sits in the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordInfo {
    /// 1-based physical line on which the record starts.
    pub line: u64,
    /// The record exceeded the size limit; only its first [`RAW_PREFIX`] bytes were kept.
    pub oversized: bool,
    /// The input ended inside a quoted field.
    pub unterminated: bool,
}

/// Splits a byte stream into records.
pub struct RecordReader<R> {
    src: R,
    buf: Box<[u8]>,
    pos: usize,
    len: usize,
    eof: bool,
    started: bool,
    quote: u8,
    /// False for a reader of lines, where no byte quotes.
    quoting: bool,
    max_record: usize,
    /// Line on which the next record starts.
    line: u64,
    /// The last byte consumed was a CR: a following LF belongs to it.
    prev_cr: bool,
}

impl<R: Read> RecordReader<R> {
    pub fn new(src: R, quote: u8, max_record: usize) -> RecordReader<R> {
        RecordReader {
            src,
            buf: vec![0; READ_BUF].into_boxed_slice(),
            pos: 0,
            len: 0,
            eof: false,
            started: false,
            quote,
            quoting: true,
            max_record,
            line: 1,
            prev_cr: false,
        }
    }

    /// Refills the buffer; false at end of input.
    fn fill(&mut self) -> io::Result<bool> {
        if self.pos < self.len {
            return Ok(true);
        }
        if self.eof {
            return Ok(false);
        }
        self.pos = 0;
        self.len = 0;
        loop {
            match self.src.read(&mut self.buf[self.len..]) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => {
                    self.len += n;
                    // The first fill reads at least enough to see a BOM.
                    if self.started || self.len >= 3 {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if !self.started {
            self.started = true;
            if self.buf[..self.len].starts_with(b"\xEF\xBB\xBF") {
                self.pos = 3;
                // The first read may have brought the BOM alone.
                return self.fill();
            }
        }
        Ok(self.pos < self.len)
    }

    /// A reader of lines (NDJSON): every line end ends a record.
    pub fn lines(src: R, max_record: usize) -> RecordReader<R> {
        RecordReader {
            quote: b'\n',
            quoting: false,
            ..RecordReader::new(src, b'"', max_record)
        }
    }

    /// Appends the next record's bytes (without its line end) to `out`.
    pub fn read_record(&mut self, out: &mut Vec<u8>) -> io::Result<Option<RecordInfo>> {
        if !self.fill()? {
            return Ok(None);
        }
        if self.prev_cr && self.buf[self.pos] == b'\n' {
            self.pos += 1;
            self.prev_cr = false;
            if !self.fill()? {
                return Ok(None);
            }
        }
        let start = out.len();
        let mut info = RecordInfo {
            line: self.line,
            oversized: false,
            unterminated: false,
        };
        let mut in_quote = false;
        loop {
            if !self.fill()? {
                info.unterminated = in_quote;
                return Ok(Some(info));
            }
            let chunk = &self.buf[self.pos..self.len];
            let Some(i) = memchr3(self.quote, b'\n', b'\r', chunk) else {
                append(out, chunk, start, self.max_record, &mut info);
                self.pos = self.len;
                self.prev_cr = false;
                continue;
            };
            let b = chunk[i];
            let lf_of_crlf = b == b'\n' && i == 0 && self.prev_cr;
            self.prev_cr = b == b'\r';
            if self.quoting && (b == self.quote || in_quote) {
                if b == self.quote {
                    in_quote = !in_quote;
                } else if !lf_of_crlf {
                    self.line += 1;
                }
                append(out, &chunk[..=i], start, self.max_record, &mut info);
                self.pos += i + 1;
                continue;
            }
            append(out, &chunk[..i], start, self.max_record, &mut info);
            self.pos += i + 1;
            self.line += 1;
            return Ok(Some(info));
        }
    }
}

fn append(out: &mut Vec<u8>, seg: &[u8], start: usize, max: usize, info: &mut RecordInfo) {
    if info.oversized {
        return;
    }
    out.extend_from_slice(seg);
    if out.len() - start > max {
        out.truncate(start + RAW_PREFIX.min(max));
        info.oversized = true;
    }
}

/// One parsed field: a range of the text [`parse_fields`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub start: u32,
    pub end: u32,
    /// Any part of the field was quoted: such a field is never NULL.
    pub quoted: bool,
}

/// The record ends inside a quoted field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unterminated;

/// Splits `record` into fields with PostgreSQL's CSV rules (escape = quote)
/// and returns the text `fields` are ranges of: the record itself when it
/// has no quote, else `scratch`, which holds the fields unquoted.
/// Delimiter and quote are ASCII, so every cut falls on a character
/// boundary and the fields stay valid text without being checked again.
pub fn parse_fields<'a>(
    record: &'a str,
    delimiter: u8,
    quote: u8,
    scratch: &'a mut String,
    fields: &mut Vec<Field>,
) -> Result<&'a str, Unterminated> {
    scratch.clear();
    let bytes = record.as_bytes();
    // The common record has no quote at all: its fields are its text cut
    // at each delimiter, not copied.
    if cut_unquoted(bytes, delimiter, quote, fields) {
        return Ok(record);
    }
    fields.clear();
    let n = bytes.len();
    let quote_char = quote as char;
    let mut i = 0;
    loop {
        let start = scratch.len() as u32;
        let mut quoted = false;
        loop {
            let Some(j) = memchr2(delimiter, quote, &bytes[i..]) else {
                scratch.push_str(&record[i..]);
                fields.push(Field {
                    start,
                    end: scratch.len() as u32,
                    quoted,
                });
                return Ok(scratch);
            };
            scratch.push_str(&record[i..i + j]);
            i += j + 1;
            if bytes[i - 1] == delimiter {
                break;
            }
            quoted = true;
            loop {
                let Some(k) = memchr(quote, &bytes[i..]) else {
                    return Err(Unterminated);
                };
                scratch.push_str(&record[i..i + k]);
                i += k + 1;
                if i < n && bytes[i] == quote {
                    scratch.push(quote_char);
                    i += 1;
                } else {
                    break;
                }
            }
        }
        fields.push(Field {
            start,
            end: scratch.len() as u32,
            quoted,
        });
    }
}

/// Cuts a record with no quote at each delimiter into `fields`; false
/// (fields then partly filled) at the first quote. Eight bytes at a time:
/// this runs for every record, and its fields are short, so finding each
/// delimiter with its own search cost more than the scan.
fn cut_unquoted(bytes: &[u8], delimiter: u8, quote: u8, fields: &mut Vec<Field>) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    // The high bit of each byte of `x` equal to `b`: exact, as no byte's
    // sum carries into the next.
    let equal = |x: u64, b: u8| {
        let t = x ^ (ONES * b as u64);
        !(((t & LOW7) + LOW7) | t) & !LOW7
    };
    fields.clear();
    let mut start = 0u32;
    let mut cut = |at: usize, fields: &mut Vec<Field>| {
        fields.push(Field {
            start,
            end: at as u32,
            quoted: false,
        });
        start = at as u32 + 1;
    };
    let mut words = bytes.chunks_exact(8);
    let mut base = 0;
    for word in &mut words {
        let mut x = [0u8; 8];
        x.copy_from_slice(word);
        let x = u64::from_le_bytes(x);
        if equal(x, quote) != 0 {
            return false;
        }
        let mut cuts = equal(x, delimiter);
        while cuts != 0 {
            cut(base + (cuts.trailing_zeros() / 8) as usize, fields);
            cuts &= cuts - 1;
        }
        base += 8;
    }
    for (i, &b) in words.remainder().iter().enumerate() {
        if b == quote {
            return false;
        }
        if b == delimiter {
            cut(base + i, fields);
        }
    }
    cut(bytes.len(), fields);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader handing out one byte per call, as a pipe may.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.0.len().min(1).min(buf.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    /// Found by fuzzing (fuzz/corpus/csv_records/bom-alone-in-first-read):
    /// a first read that brought only the BOM ended the input there, and
    /// the file loaded as empty.
    #[test]
    fn a_bom_alone_in_the_first_read_is_not_the_end() {
        let data = b"\xEF\xBB\xBFid\tname\n1\t\"q\"\n";
        let mut r = RecordReader::new(Trickle(data), b'"', 1 << 20);
        let mut out = Vec::new();
        assert!(r.read_record(&mut out).unwrap().is_some());
        assert_eq!(out, b"id\tname");
        out.clear();
        assert_eq!(r.read_record(&mut out).unwrap().map(|i| i.line), Some(2));
        assert_eq!(out, b"1\t\"q\"");
        assert!(r.read_record(&mut out).unwrap().is_none());
    }

    fn fields_by(record: &str, delimiter: u8) -> Vec<(String, bool)> {
        let (mut buf, mut fields) = (String::new(), Vec::new());
        let buf = parse_fields(record, delimiter, b'"', &mut buf, &mut fields).unwrap();
        fields
            .iter()
            .map(|f| (buf[f.start as usize..f.end as usize].to_string(), f.quoted))
            .collect()
    }

    /// PostgreSQL's CSV rule character by character: a quote toggles
    /// quoting, a doubled quote inside quotes is one quote, a delimiter
    /// outside quotes ends the field.
    fn fields_by_rule(record: &str, delimiter: char) -> Result<Vec<(String, bool)>, Unterminated> {
        let mut fields = Vec::new();
        let (mut field, mut quoted, mut inside) = (String::new(), false, false);
        let mut chars = record.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '"' if inside && chars.peek() == Some(&'"') => {
                    field.push('"');
                    chars.next();
                }
                '"' => {
                    inside = !inside;
                    quoted = true;
                }
                c if c == delimiter && !inside => {
                    fields.push((std::mem::take(&mut field), quoted));
                    quoted = false;
                }
                c => field.push(c),
            }
        }
        if inside {
            return Err(Unterminated);
        }
        fields.push((field, quoted));
        Ok(fields)
    }

    proptest::proptest! {
        /// Every record is cut by the rule, wherever its delimiters and
        /// quotes fall among its eight-byte words.
        #[test]
        fn records_are_cut_at_every_delimiter(
            record in proptest::collection::vec(
                proptest::sample::select(vec!["a", ",", "\t", ";", "é", "\u{80}", "\u{2c80}", "\"", "🦀"]),
                0..40,
            ),
            delimiter in proptest::sample::select(b",\t;".to_vec()),
        ) {
            let record = record.concat();
            let (mut buf, mut fields) = (String::new(), Vec::new());
            let got = parse_fields(&record, delimiter, b'"', &mut buf, &mut fields).map(|text| {
                fields
                    .iter()
                    .map(|f| (text[f.start as usize..f.end as usize].to_string(), f.quoted))
                    .collect::<Vec<_>>()
            });
            proptest::prop_assert_eq!(got, fields_by_rule(&record, delimiter as char), "{:?}", record);
        }
    }

    #[test]
    fn a_record_without_quotes_is_its_text_cut_at_each_delimiter() {
        for (record, delimiter) in [
            ("", b','),
            ("a", b','),
            ("a,,b,", b','),
            (",", b','),
            ("é;ü;🦀", b';'),
            ("1\t2\tx y", b'\t'),
            ("a,b;c", b';'),
        ] {
            let expected: Vec<(String, bool)> = record
                .split(delimiter as char)
                .map(|f| (f.to_string(), false))
                .collect();
            assert_eq!(fields_by(record, delimiter), expected, "{record:?}");
        }
        // A quote anywhere takes the quote-aware path.
        assert_eq!(
            fields_by("a,\"b,c\",d", b','),
            [
                ("a".to_string(), false),
                ("b,c".to_string(), true),
                ("d".to_string(), false)
            ]
        );
    }

    fn records(input: &[u8]) -> Vec<(String, RecordInfo)> {
        let mut r = RecordReader::new(input, b'"', 1 << 20);
        let mut out = Vec::new();
        let mut buf = Vec::new();
        while let Some(info) = r.read_record(&mut buf).unwrap() {
            out.push((String::from_utf8(buf.clone()).unwrap(), info));
            buf.clear();
        }
        out
    }

    fn fields(rec: &str) -> Vec<(String, bool)> {
        let (mut s, mut f) = (String::new(), Vec::new());
        let s = parse_fields(rec, b',', b'"', &mut s, &mut f).unwrap();
        f.iter()
            .map(|f| (s[f.start as usize..f.end as usize].to_string(), f.quoted))
            .collect()
    }

    #[test]
    fn splits_records_and_counts_lines() {
        let r = records(b"\xEF\xBB\xBFa,b\r\n\"x\r\ny\",2\r\n\r\nlast");
        let texts: Vec<_> = r.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(texts, ["a,b", "\"x\r\ny\",2", "", "last"]);
        let lines: Vec<_> = r.iter().map(|(_, i)| i.line).collect();
        assert_eq!(lines, [1, 2, 4, 5]);
        assert!(records(b"a\n").len() == 1);
        assert!(records(b"").is_empty());
    }

    #[test]
    fn bare_cr_ends_records() {
        let r = records(b"a\rb\r");
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].1.line, 2);
    }

    #[test]
    fn unterminated_quote_runs_to_end() {
        let r = records(b"a,b\n\"open,\nmore\n");
        assert_eq!(r.len(), 2);
        assert!(r[1].1.unterminated);
        assert_eq!(r[1].1.line, 2);
    }

    #[test]
    fn oversized_records_are_cut_but_scanned_through() {
        let mut input = vec![b'x'; 5000];
        input.extend_from_slice(b"\nnext\n");
        let mut r = RecordReader::new(&input[..], b'"', 2048);
        let mut buf = Vec::new();
        let info = r.read_record(&mut buf).unwrap().unwrap();
        assert!(info.oversized);
        assert_eq!(buf.len(), RAW_PREFIX);
        buf.clear();
        r.read_record(&mut buf).unwrap().unwrap();
        assert_eq!(buf, b"next");
    }

    #[test]
    fn fields_follow_postgres_rules() {
        assert_eq!(
            fields("a,,\"\""),
            [("a".into(), false), ("".into(), false), ("".into(), true)]
        );
        assert_eq!(
            fields("\"a\"\"b\",c"),
            [("a\"b".into(), true), ("c".into(), false)]
        );
        // A quote toggles quoting anywhere in a field.
        assert_eq!(
            fields("a\"b,c\"d,e"),
            [("ab,cd".into(), true), ("e".into(), false)]
        );
        assert_eq!(fields(""), [("".into(), false)]);
        assert_eq!(fields("x,"), [("x".into(), false), ("".into(), false)]);
        let (mut s, mut f) = (String::new(), Vec::new());
        assert_eq!(
            parse_fields("\"abc", b',', b'"', &mut s, &mut f),
            Err(Unterminated)
        );
    }
}
