//! NDJSON lines on arbitrary bytes: no panic; a line either becomes one
//! field per column, each inside the scratch text (NULL ones unquoted), or
//! is refused with a reason; and the quick reading gives what serde_json
//! alone gives, fields and reasons alike.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nexus_pipeline::model::Column;
use nexus_pipeline::ndjson::{object_fields, object_fields_by_serde};
use nexus_pipeline::types::ColumnType;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let column = |name: &str, ty: ColumnType| Column {
        name: name.into(),
        ty,
        required: false,
        rules: Default::default(),
        source: None,
    };
    let columns = [
        column("id", ColumnType::BigInt),
        column("name", ColumnType::Text),
        column("doc", ColumnType::Jsonb),
    ];
    let (mut buf, mut fields) = (String::new(), Vec::new());
    let (mut serde_buf, mut serde_fields) = (String::new(), Vec::new());
    let texts = |buf: &str, fields: &[nexus_pipeline::csv::Field]| {
        fields
            .iter()
            .map(|f| {
                f.quoted
                    .then(|| buf[f.start as usize..f.end as usize].to_string())
            })
            .collect::<Vec<_>>()
    };
    for line in text.split('\n') {
        for ignore_extra in [false, true] {
            let quick = object_fields(line, &columns, ignore_extra, "\\N", &mut buf, &mut fields);
            let by_serde = object_fields_by_serde(
                line,
                &columns,
                ignore_extra,
                "\\N",
                &mut serde_buf,
                &mut serde_fields,
            );
            assert_eq!(quick, by_serde, "{line:?}");
            if quick.is_ok() {
                assert_eq!(
                    texts(&buf, &fields),
                    texts(&serde_buf, &serde_fields),
                    "{line:?}"
                );
            }
            match quick {
                Ok(()) => {
                    assert_eq!(fields.len(), columns.len());
                    for f in &fields {
                        assert!(f.start <= f.end && f.end as usize <= buf.len());
                        assert!(buf.is_char_boundary(f.start as usize));
                        assert!(buf.is_char_boundary(f.end as usize));
                        if !f.quoted {
                            assert_eq!(&buf[f.start as usize..f.end as usize], "\\N");
                        }
                    }
                }
                Err(e) => assert!(!e.reason.is_empty()),
            }
        }
    }
});
