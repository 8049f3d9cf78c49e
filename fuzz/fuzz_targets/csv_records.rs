//! The CSV splitter and field parser on arbitrary bytes: no panic, the
//! same records whether the input arrives whole or a few bytes at a time,
//! line numbers that only grow, and fields that lie inside their record.
#![no_main]

use std::io::Read;

use libfuzzer_sys::fuzz_target;
use nexus_pipeline::csv::{RecordReader, parse_fields};

/// A reader handing out at most `step` bytes per call.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.step.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fn records(src: impl Read, max: usize) -> Vec<(Vec<u8>, u64, bool, bool)> {
    let mut reader = RecordReader::new(src, b'"', max);
    let mut out = Vec::new();
    loop {
        let mut rec = Vec::new();
        match reader.read_record(&mut rec) {
            Ok(Some(info)) => out.push((rec, info.line, info.oversized, info.unterminated)),
            Ok(None) => return out,
            Err(e) => panic!("reading memory failed: {e}"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&knobs, input)) = data.split_first() else {
        return;
    };
    let max = 16 + (knobs as usize & 0x3f) * 8;
    let whole = records(input, max);
    let trickled = records(
        Trickle {
            data: input,
            step: 1 + (knobs as usize >> 6) * 3,
        },
        max,
    );
    assert_eq!(whole, trickled, "records depend on how the input arrives");
    let mut last_line = 1;
    for (rec, line, oversized, _) in &whole {
        assert!(*line >= last_line, "line numbers go back");
        last_line = *line;
        assert!(
            *oversized || rec.len() <= max,
            "a record over the limit is not flagged"
        );
        let Ok(text) = std::str::from_utf8(rec) else {
            continue;
        };
        let (mut scratch, mut fields) = (String::new(), Vec::new());
        let delimiter = if knobs & 1 == 0 { b',' } else { b'\t' };
        if let Ok(scratch) = parse_fields(text, delimiter, b'"', &mut scratch, &mut fields) {
            assert!(!fields.is_empty());
            for f in &fields {
                assert!(f.start <= f.end && f.end as usize <= scratch.len());
            }
            if !text.contains('"') {
                let joined: Vec<&str> = fields
                    .iter()
                    .map(|f| &scratch[f.start as usize..f.end as usize])
                    .collect();
                assert_eq!(joined.join(&(delimiter as char).to_string()), text);
            }
        }
    }
});
