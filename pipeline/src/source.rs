//! Input sources: a file or stdin, gzip or zstd compressed or not, in UTF-8
//! or a single-byte encoding transcoded to UTF-8 on the way in. Everything
//! downstream sees one `Read` of UTF-8-intended bytes; the raw byte count
//! (before decompression) is kept for progress against the file size.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

/// The character encoding of an input file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Utf8,
    /// ISO 8859-1: each byte is the code point of the same value.
    Latin1,
    Windows1252,
}

impl Encoding {
    /// The canonical name, as `parse` reads it.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Utf8 => "utf-8",
            Encoding::Latin1 => "latin1",
            Encoding::Windows1252 => "windows-1252",
        }
    }

    pub fn parse(text: &str) -> Result<Encoding, String> {
        match text.to_ascii_lowercase().replace('_', "-").as_str() {
            "utf-8" | "utf8" => Ok(Encoding::Utf8),
            "latin1" | "latin-1" | "iso-8859-1" | "iso8859-1" => Ok(Encoding::Latin1),
            "windows-1252" | "cp1252" => Ok(Encoding::Windows1252),
            _ => Err(format!(
                "unknown encoding `{text}` (use utf-8, latin1 or windows-1252)"
            )),
        }
    }
}

/// Counts the bytes read through it; shared with the progress reporter.
pub struct CountingReader<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// A file whose read position is published as progress: a reader that
/// seeks (an Arrow IPC file reads its footer first) is as far as where it
/// reads now.
pub struct PositionReader {
    file: File,
    position: Arc<AtomicU64>,
}

impl PositionReader {
    pub fn new(file: File, position: Arc<AtomicU64>) -> PositionReader {
        PositionReader { file, position }
    }
}

impl Read for PositionReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read(buf)?;
        self.position.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl io::Seek for PositionReader {
    fn seek(&mut self, to: io::SeekFrom) -> io::Result<u64> {
        let at = self.file.seek(to)?;
        self.position.store(at, Ordering::Relaxed);
        Ok(at)
    }
}

/// Compression recognised by the first bytes of the stream, so that a
/// compressed stdin works as well as a `.gz` name.
fn decompress<R: BufRead + Send + 'static>(mut r: R) -> io::Result<Box<dyn Read + Send>> {
    let head = r.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::bufread::MultiGzDecoder::new(r)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok(Box::new(zstd::stream::read::Decoder::with_buffer(r)?))
    } else {
        Ok(Box::new(r))
    }
}

/// Opens `path` (or stdin for `-`) as decompressed, UTF-8 bytes.
pub fn open(
    path: &Path,
    encoding: Encoding,
    raw_bytes: Arc<AtomicU64>,
) -> io::Result<Box<dyn Read + Send>> {
    let raw: Box<dyn Read + Send> = if path.as_os_str() == "-" {
        Box::new(io::stdin())
    } else {
        Box::new(File::open(path)?)
    };
    let counted = CountingReader {
        inner: raw,
        count: raw_bytes,
    };
    let plain = decompress(BufReader::with_capacity(256 << 10, counted))?;
    Ok(match encoding {
        Encoding::Utf8 => plain,
        other => Box::new(Transcoder::new(plain, other)),
    })
}

/// SHA-256 of a file's bytes as stored (before decompression): the identity
/// of "the same file" for skip and resume.
///
/// A load's first COPY waits for this hash, so the file is read on a
/// thread of its own while this one hashes: copying the bytes out of the
/// page cache (a fifth of the time) no longer adds to the hashing.
pub fn hash_file(path: &Path) -> io::Result<String> {
    const CHUNK: usize = 256 << 10;
    let mut f = File::open(path)?;
    // Two chunks circulate: one being filled while the other is hashed.
    let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<io::Result<(Vec<u8>, usize)>>(1);
    let (empty_tx, empty_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(2);
    for _ in 0..2 {
        let _ = empty_tx.send(vec![0u8; CHUNK]);
    }
    let reader = std::thread::Builder::new()
        .name("nexus-hash-read".into())
        .spawn(move || {
            while let Ok(mut buf) = empty_rx.recv() {
                let read = loop {
                    match f.read(&mut buf) {
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        other => break other,
                    }
                };
                let end = matches!(read, Ok(0) | Err(_));
                if full_tx.send(read.map(|n| (buf, n))).is_err() || end {
                    return;
                }
            }
        })?;
    let mut hasher = Sha256::new();
    let result = loop {
        match full_rx.recv() {
            Ok(Ok((_, 0))) => break Ok(hex(&hasher.finalize())),
            Ok(Ok((buf, n))) => {
                hasher.update(&buf[..n]);
                // The reader may have ended on an error meanwhile.
                let _ = empty_tx.send(buf);
            }
            Ok(Err(e)) => break Err(e),
            Err(_) => break Err(io::Error::other("the file's reader stopped")),
        }
    };
    drop(empty_tx);
    let _ = reader.join();
    result
}

/// Hashes everything `r` yields, handing each chunk to `sink` on the way
/// (so stdin can be spooled and hashed in one pass).
pub fn hash_reader(
    r: &mut dyn Read,
    mut sink: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        sink(&buf[..n])?;
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Transcodes a single-byte encoding to UTF-8 as it is read.
struct Transcoder {
    inner: Box<dyn Read + Send>,
    encoding: Encoding,
    decoder: encoding_rs::Decoder,
    input: Vec<u8>,
    output: Vec<u8>,
    out_pos: usize,
    eof: bool,
}

impl Transcoder {
    fn new(inner: Box<dyn Read + Send>, encoding: Encoding) -> Transcoder {
        Transcoder {
            inner,
            encoding,
            decoder: encoding_rs::WINDOWS_1252.new_decoder_without_bom_handling(),
            input: vec![0; 64 << 10],
            output: Vec::with_capacity(192 << 10),
            out_pos: 0,
            eof: false,
        }
    }

    fn refill(&mut self) -> io::Result<()> {
        self.output.clear();
        self.out_pos = 0;
        let n = self.inner.read(&mut self.input)?;
        if n == 0 {
            self.eof = true;
            return Ok(());
        }
        let input = &self.input[..n];
        match self.encoding {
            Encoding::Latin1 => {
                for &b in input {
                    if b < 0x80 {
                        self.output.push(b);
                    } else {
                        self.output.push(0xC0 | (b >> 6));
                        self.output.push(0x80 | (b & 0x3F));
                    }
                }
            }
            _ => {
                // Windows-1252 maps every byte, and at most 3 UTF-8 bytes each.
                self.output.resize(n * 3, 0);
                let (_, _, written, _) =
                    self.decoder.decode_to_utf8(input, &mut self.output, false);
                self.output.truncate(written);
            }
        }
        Ok(())
    }
}

impl Read for Transcoder {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.out_pos >= self.output.len() {
            if self.eof {
                return Ok(0);
            }
            self.refill()?;
        }
        let n = buf.len().min(self.output.len() - self.out_pos);
        buf[..n].copy_from_slice(&self.output[self.out_pos..self.out_pos + n]);
        self.out_pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transcode(bytes: &[u8], enc: Encoding) -> String {
        let mut t = Transcoder::new(Box::new(io::Cursor::new(bytes.to_vec())), enc);
        let mut s = String::new();
        t.read_to_string(&mut s).unwrap();
        s
    }

    #[test]
    fn transcodes_single_byte_encodings() {
        assert_eq!(transcode(b"caf\xe9 \x80", Encoding::Latin1), "café \u{80}");
        assert_eq!(transcode(b"caf\xe9 \x80", Encoding::Windows1252), "café €");
    }

    #[test]
    fn hashes() {
        let h = hash_reader(&mut io::Cursor::new(b"abc".to_vec()), |_| Ok(())).unwrap();
        assert_eq!(
            h,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn a_file_hashes_as_its_bytes_do() {
        let dir = tempfile::tempdir().unwrap();
        // Empty, one byte, exactly one chunk, and several chunks and a bit.
        for len in [0usize, 1, 256 << 10, (1 << 20) + 12_345] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let path = dir.path().join(format!("f{len}"));
            std::fs::write(&path, &bytes).unwrap();
            let expected = hash_reader(&mut io::Cursor::new(bytes), |_| Ok(())).unwrap();
            assert_eq!(hash_file(&path).unwrap(), expected, "{len} bytes");
        }
        assert!(hash_file(&dir.path().join("missing")).is_err());
        // A directory opens but cannot be read: an error, not a hang.
        assert!(hash_file(dir.path()).is_err());
    }
}
