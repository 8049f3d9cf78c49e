//! Column types a model may use, as written in model files and as
//! PostgreSQL names them, so that `models import` and `--table` can derive
//! a model from the catalog and `migrate` can create a table from a model.

use std::fmt;

/// A PostgreSQL column type Nexus can validate and encode in binary COPY format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    SmallInt,
    Int,
    BigInt,
    /// `numeric` or `numeric(precision, scale)`.
    Numeric(Option<(u16, u16)>),
    Real,
    Double,
    Text,
    Varchar(Option<u32>),
    Char(u32),
    Boolean,
    Date,
    Timestamp,
    Timestamptz,
    Uuid,
    Jsonb,
    Bytea,
}

impl ColumnType {
    /// Reads a type as written in a model file or printed by PostgreSQL's
    /// `format_type` (`integer`, `character varying(20)`, `timestamp with time zone`, …).
    pub fn parse(text: &str) -> Result<ColumnType, String> {
        let lower = text.trim().to_ascii_lowercase();
        let (base, args) = match lower.find('(') {
            Some(i) if lower.ends_with(')') => {
                let inner = &lower[i + 1..lower.len() - 1];
                let args: Result<Vec<u32>, _> =
                    inner.split(',').map(|a| a.trim().parse::<u32>()).collect();
                let args = args.map_err(|_| format!("bad type arguments in `{text}`"))?;
                (lower[..i].trim().to_string(), args)
            }
            _ => (lower.clone(), Vec::new()),
        };
        let no_args = |t: ColumnType| {
            if args.is_empty() {
                Ok(t)
            } else {
                Err(format!("type `{base}` takes no arguments"))
            }
        };
        match base.as_str() {
            "smallint" | "int2" => no_args(ColumnType::SmallInt),
            "int" | "integer" | "int4" => no_args(ColumnType::Int),
            "bigint" | "int8" => no_args(ColumnType::BigInt),
            "real" | "float4" => no_args(ColumnType::Real),
            "double" | "double precision" | "float8" => no_args(ColumnType::Double),
            "text" => no_args(ColumnType::Text),
            "boolean" | "bool" => no_args(ColumnType::Boolean),
            "date" => no_args(ColumnType::Date),
            "timestamp" | "timestamp without time zone" => no_args(ColumnType::Timestamp),
            "timestamptz" | "timestamp with time zone" => no_args(ColumnType::Timestamptz),
            "uuid" => no_args(ColumnType::Uuid),
            "jsonb" => no_args(ColumnType::Jsonb),
            "bytea" => no_args(ColumnType::Bytea),
            "numeric" | "decimal" => match args.as_slice() {
                [] => Ok(ColumnType::Numeric(None)),
                [p] if (1..=1000).contains(p) => Ok(ColumnType::Numeric(Some((*p as u16, 0)))),
                [p, s] if (1..=1000).contains(p) && s <= p => {
                    Ok(ColumnType::Numeric(Some((*p as u16, *s as u16))))
                }
                _ => Err(format!(
                    "`{text}`: numeric needs 1 ≤ precision ≤ 1000 and scale ≤ precision"
                )),
            },
            "varchar" | "character varying" => match args.as_slice() {
                [] => Ok(ColumnType::Varchar(None)),
                [n] if *n > 0 => Ok(ColumnType::Varchar(Some(*n))),
                _ => Err(format!("`{text}`: varchar takes one positive length")),
            },
            "char" | "character" | "bpchar" => match args.as_slice() {
                [] => Ok(ColumnType::Char(1)),
                [n] if *n > 0 => Ok(ColumnType::Char(*n)),
                _ => Err(format!("`{text}`: char takes one positive length")),
            },
            _ => Err(format!(
                "unsupported type `{text}` (supported: bigint int smallint numeric(p,s) real double \
                 text varchar(n) char(n) boolean date timestamp timestamptz uuid jsonb bytea)"
            )),
        }
    }

    /// The type's name and modifier (`atttypmod`) as its input function
    /// takes them: what COPY passes for a column of this type.
    pub fn input_type(self) -> (&'static str, i32) {
        // A modifier counts the 4-byte varlena header (VARHDRSZ).
        match self {
            ColumnType::SmallInt => ("int2", -1),
            ColumnType::Int => ("int4", -1),
            ColumnType::BigInt => ("int8", -1),
            ColumnType::Numeric(None) => ("numeric", -1),
            ColumnType::Numeric(Some((p, s))) => ("numeric", ((p as i32) << 16 | s as i32) + 4),
            ColumnType::Real => ("float4", -1),
            ColumnType::Double => ("float8", -1),
            ColumnType::Text => ("text", -1),
            ColumnType::Varchar(None) => ("varchar", -1),
            ColumnType::Varchar(Some(n)) => ("varchar", n as i32 + 4),
            ColumnType::Char(n) => ("bpchar", n as i32 + 4),
            ColumnType::Boolean => ("bool", -1),
            ColumnType::Date => ("date", -1),
            ColumnType::Timestamp => ("timestamp", -1),
            ColumnType::Timestamptz => ("timestamptz", -1),
            ColumnType::Uuid => ("uuid", -1),
            ColumnType::Jsonb => ("jsonb", -1),
            ColumnType::Bytea => ("bytea", -1),
        }
    }

    /// Whether values of this type are compared by number (for `min`/`max`).
    pub fn is_numeric(self) -> bool {
        matches!(
            self,
            ColumnType::SmallInt
                | ColumnType::Int
                | ColumnType::BigInt
                | ColumnType::Numeric(_)
                | ColumnType::Real
                | ColumnType::Double
        )
    }

    /// Whether values of this type are text (for length, pattern and format rules).
    pub fn is_textual(self) -> bool {
        matches!(
            self,
            ColumnType::Text | ColumnType::Varchar(_) | ColumnType::Char(_)
        )
    }
}

/// Renders the type as SQL, the same text [`ColumnType::parse`] reads.
impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ColumnType::SmallInt => f.write_str("smallint"),
            ColumnType::Int => f.write_str("integer"),
            ColumnType::BigInt => f.write_str("bigint"),
            ColumnType::Numeric(None) => f.write_str("numeric"),
            ColumnType::Numeric(Some((p, s))) => write!(f, "numeric({p},{s})"),
            ColumnType::Real => f.write_str("real"),
            ColumnType::Double => f.write_str("double precision"),
            ColumnType::Text => f.write_str("text"),
            ColumnType::Varchar(None) => f.write_str("varchar"),
            ColumnType::Varchar(Some(n)) => write!(f, "varchar({n})"),
            ColumnType::Char(n) => write!(f, "char({n})"),
            ColumnType::Boolean => f.write_str("boolean"),
            ColumnType::Date => f.write_str("date"),
            ColumnType::Timestamp => f.write_str("timestamp"),
            ColumnType::Timestamptz => f.write_str("timestamptz"),
            ColumnType::Uuid => f.write_str("uuid"),
            ColumnType::Jsonb => f.write_str("jsonb"),
            ColumnType::Bytea => f.write_str("bytea"),
        }
    }
}

/// Quotes an SQL identifier, so that any table or column name — including
/// ones that look like SQL — is only ever a name.
pub fn quote_ident(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_catalog_and_model_spellings() {
        assert_eq!(ColumnType::parse("integer").unwrap(), ColumnType::Int);
        assert_eq!(
            ColumnType::parse("character varying(20)").unwrap(),
            ColumnType::Varchar(Some(20))
        );
        assert_eq!(
            ColumnType::parse("numeric(12, 2)").unwrap(),
            ColumnType::Numeric(Some((12, 2)))
        );
        assert_eq!(
            ColumnType::parse("timestamp with time zone").unwrap(),
            ColumnType::Timestamptz
        );
        assert_eq!(
            ColumnType::parse("character(2)").unwrap(),
            ColumnType::Char(2)
        );
        assert!(ColumnType::parse("money").is_err());
        assert!(ColumnType::parse("numeric(2,5)").is_err());
        for t in [
            "numeric(12,2)",
            "varchar(9)",
            "char(3)",
            "double precision",
            "timestamptz",
        ] {
            let ty = ColumnType::parse(t).unwrap();
            assert_eq!(ColumnType::parse(&ty.to_string()).unwrap(), ty);
        }
    }

    #[test]
    fn quotes_identifiers() {
        assert_eq!(quote_ident("a"), "\"a\"");
        assert_eq!(
            quote_ident("x\"; DROP TABLE y; --"),
            "\"x\"\"; DROP TABLE y; --\""
        );
    }
}
