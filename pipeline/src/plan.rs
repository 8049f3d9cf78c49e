//! How one input file maps onto a model: which input field feeds which
//! column, decided once from the header (or by position) before any row is
//! loaded, so that a header that does not fit fails the job up front.

use std::sync::Arc;

use crate::model::Model;
use crate::types::ColumnType;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PlanError {
    #[error("the input is empty: there is no row to load")]
    Empty,
    #[error("the header row is not valid UTF-8")]
    HeaderEncoding,
    #[error("the header row has an unterminated quoted field")]
    HeaderQuote,
    #[error("column {0} appears more than once in the header")]
    DuplicateHeader(String),
    #[error(
        "input column{} {}{} not in model `{model}` (its columns: {known}); set extra_columns = \"ignore\" in the model to skip extra columns",
        if names.len() > 1 { "s" } else { "" },
        names.iter().take(20).map(|n| header_name(n)).collect::<Vec<_>>().join(", "),
        if names.len() > 20 { format!(" and {} more", names.len() - 20) } else { String::new() }
    )]
    UnknownColumns {
        names: Vec<String>,
        model: String,
        known: String,
    },
    #[error(
        "required column{} {} missing from the header",
        if .0.len() > 1 { "s" } else { "" },
        .0.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
    )]
    MissingColumns(Vec<String>),
    #[error("upsert needs the key column `{0}` in the input")]
    MissingKey(String),
}

/// A header name for a message: in backticks, long ones cut.
fn header_name(n: &str) -> String {
    match n.char_indices().nth(60) {
        None => format!("`{n}`"),
        Some((at, _)) => format!("`{}…`", &n[..at]),
    }
}

/// The mapping from input fields to COPY columns.
#[derive(Debug, Clone)]
pub struct Plan {
    pub model: Arc<Model>,
    /// Fields every record must have.
    pub input_fields: usize,
    /// Model column indices in COPY order.
    pub copy_columns: Vec<usize>,
    /// For each COPY column, the input field it is read from.
    pub field_of: Vec<usize>,
    /// Append the record's line number as a last `bigint` field (the upsert
    /// staging table orders duplicates by it).
    pub line_column: bool,
}

impl Plan {
    /// Maps header names to columns, case-insensitively, by `source` or name.
    pub fn from_header(
        model: Arc<Model>,
        header: &[String],
        line_column: bool,
    ) -> Result<Plan, PlanError> {
        let mut copy_columns = Vec::new();
        let mut field_of = Vec::new();
        let mut unknown = Vec::new();
        let mut seen = std::collections::HashSet::with_capacity(header.len());
        for (f, raw) in header.iter().enumerate() {
            let name = raw.trim();
            if !seen.insert(name.to_lowercase()) {
                return Err(PlanError::DuplicateHeader(header_name(name)));
            }
            match model
                .columns
                .iter()
                .position(|c| c.header().eq_ignore_ascii_case(name))
            {
                Some(ci) => {
                    copy_columns.push(ci);
                    field_of.push(f);
                }
                None => unknown.push(name.to_string()),
            }
        }
        if !unknown.is_empty() && !model.extra_columns_ignore {
            return Err(PlanError::UnknownColumns {
                names: unknown,
                model: model.name.clone(),
                known: model
                    .columns
                    .iter()
                    .map(|c| c.header())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        let missing: Vec<String> = model
            .columns
            .iter()
            .enumerate()
            .filter(|(i, c)| c.required && !copy_columns.contains(i))
            .map(|(_, c)| c.header().to_string())
            .collect();
        if !missing.is_empty() {
            return Err(PlanError::MissingColumns(missing));
        }
        Ok(Plan {
            model,
            input_fields: header.len(),
            copy_columns,
            field_of,
            line_column,
        })
    }

    /// Files without a header map field *i* to column *i*.
    pub fn positional(model: Arc<Model>, line_column: bool) -> Plan {
        let n = model.columns.len();
        Plan {
            model,
            input_fields: n,
            copy_columns: (0..n).collect(),
            field_of: (0..n).collect(),
            line_column,
        }
    }

    /// Upsert merges on the key, so every key column must come from the input.
    pub fn require_key(&self) -> Result<(), PlanError> {
        for k in &self.model.key {
            if !self
                .copy_columns
                .iter()
                .any(|&c| &self.model.columns[c].name == k)
            {
                return Err(PlanError::MissingKey(k.clone()));
            }
        }
        Ok(())
    }

    /// The COPY column names, in order.
    pub fn column_names(&self) -> Vec<&str> {
        self.copy_columns
            .iter()
            .map(|&c| self.model.columns[c].name.as_str())
            .collect()
    }

    pub fn column_types(&self) -> Vec<ColumnType> {
        self.copy_columns
            .iter()
            .map(|&c| self.model.columns[c].ty)
            .collect()
    }
}
