//! Models: what a file's rows must look like and where they go. One TOML
//! format (README, "Models") for the built-in models and users' own, read through one
//! path so that a built-in model is never a special case.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::FixedOffset;
use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::duration::{format_duration, parse_duration};
use crate::formats::Format;
use crate::source::Encoding;
use crate::types::ColumnType;

/// The models shipped in the binary.
pub const BUILTIN_MODELS: &str = include_str!("../../fixtures/models.toml");

/// Records longer than this are rejected unless a model says otherwise.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read model file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("model file is not valid TOML: {0}")]
    Syntax(String),
    #[error("model `{model}`: {message}")]
    Invalid { model: String, message: String },
    #[error("unknown model `{name}` (known: {})", known.join(", "))]
    Unknown { name: String, known: Vec<String> },
}

/// A model file as written: the serde image of the model TOML.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    pub models: BTreeMap<String, ModelDef>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelDef {
    pub table: String,
    #[serde(default)]
    pub key: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheDef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_columns: Option<String>,
    #[serde(flatten)]
    pub input: InputDef,
    pub columns: Vec<ColumnDef>,
}

/// Input options: per model, each overridable per load.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputDef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<InputFormat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub null: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delimiter: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quote: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rejects: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_reject_ratio: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_record_bytes: Option<usize>,
}

impl InputDef {
    /// Fields set in `over` replace those in `self`.
    pub fn overlay(&mut self, over: &InputDef) {
        macro_rules! take {
            ($($f:ident),*) => { $( if over.$f.is_some() { self.$f = over.$f.clone(); } )* };
        }
        take!(
            format,
            null,
            timezone,
            encoding,
            delimiter,
            quote,
            max_rejects,
            max_reject_ratio,
            max_record_bytes
        );
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheDef {
    pub strategy: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnDef {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_of: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_length: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheStrategy {
    WriteThrough,
    WriteBehind,
    CacheAside,
    None,
}

impl CacheStrategy {
    const ALL: [CacheStrategy; 4] = [
        CacheStrategy::WriteThrough,
        CacheStrategy::WriteBehind,
        CacheStrategy::CacheAside,
        CacheStrategy::None,
    ];

    /// The name a model file uses.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStrategy::WriteThrough => "write_through",
            CacheStrategy::WriteBehind => "write_behind",
            CacheStrategy::CacheAside => "cache_aside",
            CacheStrategy::None => "none",
        }
    }

    pub fn parse(name: &str) -> Option<CacheStrategy> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

#[derive(Debug, Clone)]
pub struct CachePolicy {
    pub strategy: CacheStrategy,
    pub ttl: Duration,
}

/// How timestamps without an offset are read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TimeZone {
    Fixed(FixedOffset),
    Named(chrono_tz::Tz),
}

impl TimeZone {
    /// The zone as a PostgreSQL `TimeZone` setting. A fixed offset is
    /// written POSIX-style, where east of UTC is negative: `+02:30` is
    /// `<+0230>-02:30`.
    pub fn session_setting(&self) -> String {
        match self {
            TimeZone::Named(z) => z.name().to_string(),
            TimeZone::Fixed(off) => {
                let secs = off.local_minus_utc();
                if secs == 0 {
                    return "UTC".into();
                }
                let (sign, posix) = if secs > 0 { ('+', '-') } else { ('-', '+') };
                let (h, m) = (secs.abs() / 3600, secs.abs() % 3600 / 60);
                format!("<{sign}{h:02}{m:02}>{posix}{h:02}:{m:02}")
            }
        }
    }

    pub fn parse(text: &str) -> Result<TimeZone, String> {
        let t = text.trim();
        if t.eq_ignore_ascii_case("utc") || t == "Z" {
            return Ok(TimeZone::Fixed(
                FixedOffset::east_opt(0).expect("zero offset"),
            ));
        }
        if let Some(rest) = t.strip_prefix(['+', '-']) {
            let sign = if t.starts_with('-') { -1 } else { 1 };
            let (h, m) = rest.split_once(':').unwrap_or((rest, "0"));
            if let (Ok(h), Ok(m)) = (h.parse::<i32>(), m.parse::<i32>())
                && h <= 15
                && m < 60
                && let Some(off) = FixedOffset::east_opt(sign * (h * 3600 + m * 60))
            {
                return Ok(TimeZone::Fixed(off));
            }
            return Err(format!("`{text}` is not a UTC offset like +02:00"));
        }
        t.parse::<chrono_tz::Tz>()
            .map(TimeZone::Named)
            .map_err(|_| {
                format!(
                    "unknown timezone `{text}` (use an IANA name like Europe/Berlin, or +02:00)"
                )
            })
    }
}

/// How records are written in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputFormat {
    /// PostgreSQL's CSV: a header row (or fields by position), quoting.
    #[default]
    Csv,
    /// One JSON object per line; keys name columns as a CSV header does.
    Ndjson,
    /// Apache Parquet: typed columns, read by name.
    Parquet,
    /// Arrow IPC, file or stream: typed columns, read by name.
    Arrow,
}

impl InputFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            InputFormat::Csv => "csv",
            InputFormat::Ndjson => "ndjson",
            InputFormat::Parquet => "parquet",
            InputFormat::Arrow => "arrow",
        }
    }

    /// Parquet and Arrow are read from a file by columns, not as lines.
    pub fn is_columnar(self) -> bool {
        matches!(self, InputFormat::Parquet | InputFormat::Arrow)
    }

    /// The format of the file at `path` by its magic bytes, if it has any
    /// (see [`crate::columnar::Layout`]).
    pub fn sniff_file(path: &std::path::Path) -> Option<InputFormat> {
        let mut file = std::fs::File::open(path).ok()?;
        crate::columnar::Layout::of_file(&mut file)
            .ok()
            .flatten()
            .map(crate::columnar::Layout::format)
    }

    /// The format a file's name says, through a `.gz` or `.zst`: `.ndjson`
    /// and `.jsonl` are NDJSON, `.csv` CSV, `.parquet` Parquet, `.arrow`,
    /// `.arrows`, `.feather` and `.ipc` Arrow IPC; others say nothing.
    pub fn of_name(name: &str) -> Option<InputFormat> {
        let name = name.to_ascii_lowercase();
        let base = name
            .strip_suffix(".gz")
            .or_else(|| name.strip_suffix(".zst"))
            .unwrap_or(&name);
        if base.ends_with(".ndjson") || base.ends_with(".jsonl") {
            Some(InputFormat::Ndjson)
        } else if name.ends_with(".parquet") || name.ends_with(".pq") {
            Some(InputFormat::Parquet)
        } else if [".arrow", ".arrows", ".feather", ".ipc"]
            .iter()
            .any(|ext| name.ends_with(ext))
        {
            Some(InputFormat::Arrow)
        } else if base.ends_with(".csv") {
            Some(InputFormat::Csv)
        } else {
            None
        }
    }
}

impl std::str::FromStr for InputFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<InputFormat, String> {
        match s {
            "csv" => Ok(InputFormat::Csv),
            "ndjson" | "jsonl" => Ok(InputFormat::Ndjson),
            "parquet" => Ok(InputFormat::Parquet),
            "arrow" | "ipc" | "feather" => Ok(InputFormat::Arrow),
            other => Err(format!(
                "`{other}` is not a format: use csv, ndjson, parquet or arrow"
            )),
        }
    }
}

/// Every per-load input option, resolved.
#[derive(Debug, Clone)]
pub struct InputOptions {
    pub format: InputFormat,
    /// Unquoted field texts that mean NULL.
    pub null: Vec<Vec<u8>>,
    pub timezone: TimeZone,
    pub encoding: Encoding,
    pub delimiter: u8,
    pub quote: u8,
    pub max_rejects: Option<u64>,
    pub max_reject_ratio: Option<f64>,
    pub max_record_bytes: usize,
}

impl InputOptions {
    pub fn from_def(def: &InputDef) -> Result<InputOptions, String> {
        let byte = |what: &str, v: &Option<String>, default: u8| -> Result<u8, String> {
            match v.as_deref() {
                None => Ok(default),
                Some("\\t") | Some("tab") => Ok(b'\t'),
                Some(s) if s.len() == 1 && s.is_ascii() => Ok(s.as_bytes()[0]),
                Some(s) => Err(format!("{what} must be one ASCII character, not `{s}`")),
            }
        };
        let delimiter = byte("delimiter", &def.delimiter, b',')?;
        let quote = byte("quote", &def.quote, b'"')?;
        if delimiter == quote
            || [delimiter, quote]
                .iter()
                .any(|b| *b == b'\r' || *b == b'\n')
        {
            return Err("delimiter and quote must differ and be neither CR nor LF".into());
        }
        if let Some(r) = def.max_reject_ratio
            && !(0.0..=1.0).contains(&r)
        {
            return Err(format!("max_reject_ratio must be between 0 and 1, not {r}"));
        }
        let max_record_bytes = def.max_record_bytes.unwrap_or(DEFAULT_MAX_RECORD_BYTES);
        if max_record_bytes < 1024 {
            return Err("max_record_bytes must be at least 1024".into());
        }
        Ok(InputOptions {
            format: def.format.unwrap_or_default(),
            null: def
                .null
                .clone()
                .unwrap_or_else(|| vec![String::new()])
                .into_iter()
                .map(String::into_bytes)
                .collect(),
            timezone: TimeZone::parse(def.timezone.as_deref().unwrap_or("UTC"))?,
            encoding: Encoding::parse(def.encoding.as_deref().unwrap_or("utf-8"))?,
            delimiter,
            quote,
            max_rejects: def.max_rejects,
            max_reject_ratio: def.max_reject_ratio,
            max_record_bytes,
        })
    }
}

/// Value rules of one column.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub min_length: Option<usize>,
    pub max_length: Option<usize>,
    pub one_of: Option<Vec<String>>,
    pub pattern: Option<Regex>,
    pub format: Option<Format>,
}

#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub ty: ColumnType,
    pub required: bool,
    pub rules: Rules,
    /// The input header this column is read from (default: `name`).
    pub source: Option<String>,
}

impl Column {
    pub fn header(&self) -> &str {
        self.source.as_deref().unwrap_or(&self.name)
    }
}

/// A checked model, ready to plan loads with.
#[derive(Debug, Clone)]
pub struct Model {
    pub name: String,
    pub schema: Option<String>,
    pub table: String,
    pub key: Vec<String>,
    pub batch_size: usize,
    pub cache: CachePolicy,
    pub warm: bool,
    pub extra_columns_ignore: bool,
    pub input: InputOptions,
    pub columns: Vec<Column>,
    /// The definition as written, for `models show` and for per-load overrides.
    pub def: ModelDef,
}

impl Model {
    /// Checks a definition and compiles its rules.
    pub fn from_def(name: &str, def: ModelDef) -> Result<Model, ModelError> {
        let invalid = |message: String| ModelError::Invalid {
            model: name.to_string(),
            message,
        };
        if name.is_empty() {
            return Err(invalid("a model needs a name".into()));
        }
        let (schema, table) = match def.table.split_once('.') {
            Some((s, t)) => (Some(s.to_string()), t.to_string()),
            None => (None, def.table.clone()),
        };
        if table.is_empty() || schema.as_deref() == Some("") {
            return Err(invalid(format!("bad table name `{}`", def.table)));
        }
        if def.columns.is_empty() {
            return Err(invalid("a model needs at least one column".into()));
        }
        let mut seen = HashSet::new();
        let mut columns = Vec::with_capacity(def.columns.len());
        for c in &def.columns {
            if c.name.is_empty() || !seen.insert(c.name.to_lowercase()) {
                return Err(invalid(format!(
                    "column name `{}` is empty or repeated",
                    c.name
                )));
            }
            let col = compile_column(c, def.key.contains(&c.name))
                .map_err(|m| invalid(format!("column `{}`: {m}", c.name)))?;
            columns.push(col);
        }
        for k in &def.key {
            if !def.columns.iter().any(|c| &c.name == k) {
                return Err(invalid(format!(
                    "key column `{k}` is not among the columns"
                )));
            }
        }
        let batch_size = def.batch_size.unwrap_or(5000);
        if !(1..=1_000_000).contains(&batch_size) {
            return Err(invalid(format!(
                "batch_size must be 1..=1000000, not {batch_size}"
            )));
        }
        let cache = match &def.cache {
            None => CachePolicy {
                strategy: CacheStrategy::None,
                ttl: Duration::ZERO,
            },
            Some(c) => CachePolicy {
                strategy: CacheStrategy::parse(&c.strategy).ok_or_else(|| {
                    invalid(format!(
                        "cache strategy `{}` (use write_through, write_behind, cache_aside or none)",
                        c.strategy
                    ))
                })?,
                ttl: match &c.ttl {
                    Some(t) => parse_duration(t).map_err(invalid)?,
                    None => Duration::from_secs(3600),
                },
            },
        };
        let extra_columns_ignore = match def.extra_columns.as_deref() {
            None | Some("error") => false,
            Some("ignore") => true,
            Some(o) => {
                return Err(invalid(format!(
                    "extra_columns = `{o}` (use error or ignore)"
                )));
            }
        };
        let input = InputOptions::from_def(&def.input).map_err(invalid)?;
        Ok(Model {
            name: name.to_string(),
            schema,
            table,
            key: def.key.clone(),
            batch_size,
            cache,
            warm: def.warm.unwrap_or(false),
            extra_columns_ignore,
            input,
            columns,
            def,
        })
    }

    /// The table as a quoted SQL name.
    pub fn qualified_table(&self) -> String {
        use crate::types::quote_ident;
        match &self.schema {
            Some(s) => format!("{}.{}", quote_ident(s), quote_ident(&self.table)),
            None => quote_ident(&self.table),
        }
    }

    /// A copy with per-load input overrides applied.
    pub fn with_input(&self, over: &InputDef) -> Result<Model, ModelError> {
        let mut def = self.def.clone();
        def.input.overlay(over);
        Model::from_def(&self.name, def)
    }

    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The model as TOML, in the format it was read from.
    pub fn to_toml(&self) -> String {
        let mut file = ModelFile::default();
        file.models.insert(self.name.clone(), self.def.clone());
        toml::to_string_pretty(&file).unwrap_or_default()
    }

    pub fn cache_ttl_text(&self) -> String {
        format_duration(self.cache.ttl)
    }
}

fn compile_column(c: &ColumnDef, is_key: bool) -> Result<Column, String> {
    let ty = ColumnType::parse(&c.ty)?;
    if (c.min.is_some() || c.max.is_some()) && !ty.is_numeric() {
        return Err("min/max apply to numeric types only".into());
    }
    if (c.min_length.is_some()
        || c.max_length.is_some()
        || c.pattern.is_some()
        || c.format.is_some())
        && !ty.is_textual()
    {
        return Err("min_length, max_length, pattern and format apply to text types only".into());
    }
    let pattern = match &c.pattern {
        Some(p) => Some(Regex::new(p).map_err(|e| format!("pattern does not compile: {e}"))?),
        None => None,
    };
    let format = c.format.as_deref().map(Format::parse).transpose()?;
    if c.required == Some(false) && is_key {
        return Err("a key column is always required".into());
    }
    Ok(Column {
        name: c.name.clone(),
        ty,
        required: c.required.unwrap_or(false) || is_key,
        rules: Rules {
            min: c.min,
            max: c.max,
            min_length: c.min_length,
            max_length: c.max_length,
            one_of: c.one_of.clone(),
            pattern,
            format,
        },
        source: c.source.clone(),
    })
}

/// A set of named models.
#[derive(Debug, Clone, Default)]
pub struct ModelSet {
    models: BTreeMap<String, Arc<Model>>,
}

impl ModelSet {
    pub fn builtin() -> ModelSet {
        ModelSet::parse(BUILTIN_MODELS).expect("the built-in models are valid")
    }

    pub fn from_path(path: &Path) -> Result<ModelSet, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.display().to_string(),
            source,
        })?;
        ModelSet::parse(&text)
    }

    pub fn parse(text: &str) -> Result<ModelSet, ModelError> {
        let file: ModelFile =
            toml::from_str(text).map_err(|e| ModelError::Syntax(e.to_string()))?;
        let mut models = BTreeMap::new();
        for (name, def) in file.models {
            models.insert(name.clone(), Arc::new(Model::from_def(&name, def)?));
        }
        Ok(ModelSet { models })
    }

    pub fn get(&self, name: &str) -> Result<Arc<Model>, ModelError> {
        self.models
            .get(name)
            .cloned()
            .ok_or_else(|| ModelError::Unknown {
                name: name.to_string(),
                known: self.models.keys().cloned().collect(),
            })
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Model>> {
        self.models.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_models_load() {
        let set = ModelSet::builtin();
        let names: Vec<_> = set.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "classification_cache",
                "company",
                "customer",
                "document",
                "product_classification",
                "quote"
            ]
        );
        let c = set.get("customer").unwrap();
        assert_eq!(c.batch_size, 5000);
        assert_eq!(c.cache.strategy, CacheStrategy::WriteThrough);
        assert_eq!(c.cache.ttl, Duration::from_secs(1800));
        let cols: Vec<_> = c.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            cols,
            [
                "id",
                "external_id",
                "name",
                "email",
                "country",
                "segment",
                "credit_limit",
                "created_at",
                "active",
                "score"
            ]
        );
        assert!(matches!(set.get("nope"), Err(ModelError::Unknown { .. })));
    }

    #[test]
    fn rejects_bad_definitions() {
        let bad = [
            (
                "[models.m]\ntable='t'\nkey=['x']\n[[models.m.columns]]\nname='a'\ntype='text'\n",
                "key column",
            ),
            (
                "[models.m]\ntable='t'\n[[models.m.columns]]\nname='a'\ntype='money'\n",
                "unsupported type",
            ),
            (
                "[models.m]\ntable='t'\n[[models.m.columns]]\nname='a'\ntype='int'\nformat='email'\n",
                "text types only",
            ),
            (
                "[models.m]\ntable='t'\n[[models.m.columns]]\nname='a'\ntype='text'\npattern='('\n",
                "pattern",
            ),
            (
                "[models.m]\ntable='t'\nbogus=1\n[[models.m.columns]]\nname='a'\ntype='text'\n",
                "unknown field",
            ),
            (
                "[models.m]\ntable='t'\ntimezone='Mars/Base'\n[[models.m.columns]]\nname='a'\ntype='text'\n",
                "timezone",
            ),
        ];
        for (text, want) in bad {
            let err = ModelSet::parse(text).unwrap_err().to_string();
            assert!(err.contains(want), "{err} should mention {want}");
        }
    }

    #[test]
    fn timezones() {
        assert!(matches!(
            TimeZone::parse("Europe/Berlin"),
            Ok(TimeZone::Named(_))
        ));
        assert!(matches!(TimeZone::parse("+05:30"), Ok(TimeZone::Fixed(_))));
        assert!(TimeZone::parse("+25:00").is_err());
    }
}
