//! Each type's encoder on arbitrary text: no panic, no allocation beyond
//! the value's size, a well-formed binary field (its length word says
//! how many bytes follow) for every value it accepts, and that field
//! printed by the cache's row JSON as valid JSON (or, for a jsonb number
//! only the server reads, left unprinted).
#![no_main]

use libfuzzer_sys::fuzz_target;
use nexus_pipeline::encode::{FieldError, encode_field};
use nexus_pipeline::model::{Column, Rules, TimeZone};
use nexus_pipeline::row_json::RowJson;
use nexus_pipeline::types::ColumnType;

const TYPES: &[&str] = &[
    "smallint",
    "integer",
    "bigint",
    "numeric",
    "numeric(12,2)",
    "numeric(5,5)",
    "real",
    "double precision",
    "boolean",
    "date",
    "timestamp",
    "timestamptz",
    "uuid",
    "jsonb",
    "bytea",
    "text",
    "varchar(5)",
    "char(3)",
];
const ZONES: &[&str] = &["UTC", "Europe/Berlin", "+05:30", "America/New_York"];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let column = Column {
        name: "v".into(),
        ty: ColumnType::parse(TYPES[pick as usize % TYPES.len()]).unwrap(),
        required: false,
        rules: Rules::default(),
        source: None,
    };
    let zone = TimeZone::parse(ZONES[(pick as usize / TYPES.len()) % ZONES.len()]).unwrap();
    let mut out = Vec::new();
    match encode_field(&column, &zone, &text, &mut out) {
        Ok(()) => {
            let len = i32::from_be_bytes(out[..4].try_into().unwrap());
            assert_eq!(
                len as usize,
                out.len() - 4,
                "length word and bytes disagree"
            );
            assert!(
                out.len() <= 4 * text.len() + 64,
                "{} bytes for {} of text",
                out.len(),
                text.len()
            );
            let mut row = 1i16.to_be_bytes().to_vec();
            row.extend_from_slice(&out);
            let mut json = Vec::new();
            match RowJson::new([("v", column.ty, Some(0))]).write(&row, &mut json) {
                Ok(()) => {}
                // A jsonb number the encoder takes but `numeric`'s fast
                // path leaves to the server (an exponent with leading
                // zeros): the cache drops such a row's key instead.
                Err(e) if e.0 == "a jsonb number left to the server" => return,
                Err(e) => panic!("{e} for {text:?}"),
            }
            // Checked as JSON text: numbers of any size, as PostgreSQL's.
            serde_json::from_slice::<serde::de::IgnoredAny>(&json)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&json)));
        }
        Err(FieldError::Invalid(reason)) => assert!(!reason.is_empty()),
        Err(FieldError::Defer) => {}
    }
});
