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
    #[error(
        "the first line looks like data, not a header (none of its fields names a column of model `{0}`): if the file has no header row, load it with --no-header"
    )]
    NoHeader(String),
    #[error("column {0} appears more than once in the header")]
    DuplicateHeader(String),
    #[error(
        "input column{} {}{} not in model `{model}` (its columns: {known}); {advice}",
        if names.len() > 1 { "s" } else { "" },
        names.iter().take(20).map(|n| header_name(n)).collect::<Vec<_>>().join(", "),
        if names.len() > 20 { format!(" and {} more", names.len() - 20) } else { String::new() }
    )]
    UnknownColumns {
        names: Vec<String>,
        model: String,
        known: String,
        /// What the user most likely meant (see [`advice`]).
        advice: String,
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

/// Delimiters a one-field header may hold when the file uses another one.
const OTHER_DELIMITERS: [(char, &str); 4] = [(';', ";"), ('\t', "\\t"), ('|', "|"), (',', ",")];

/// What to tell someone whose header names columns the model lacks, most
/// likely mistake first (a file without a header is caught before):
/// another delimiter (one field holding one), typos of columns not matched
/// yet; only then skipping extra columns.
fn advice(header: &[String], unknown: &[String], free: &[&str]) -> String {
    if let [only] = header
        && let Some((_, shown)) = OTHER_DELIMITERS.iter().find(|(d, _)| only.contains(*d))
    {
        return format!(
            "the header is one field holding `{shown}`: if fields are separated by `{shown}`, load with --delimiter '{shown}'"
        );
    }
    let guesses: Vec<String> = unknown
        .iter()
        .filter_map(|u| {
            let lower = u.to_lowercase();
            free.iter()
                .map(|c| (strsim::damerau_levenshtein(&lower, &c.to_lowercase()), c))
                .filter(|(d, c)| *d <= 2.max(c.len() / 4) && *d < c.len())
                .min_by_key(|(d, _)| *d)
                .map(|(_, c)| format!("{} → did you mean `{c}`?", header_name(u)))
        })
        .collect();
    if !guesses.is_empty() {
        return guesses.join("; ");
    }
    "if the file has columns the model should skip, set extra_columns = \"ignore\" in the model"
        .into()
}

/// A header cell that reads as a value rather than a name: a number, a
/// date or time, a UUID, an e-mail address, a boolean.
fn looks_like_a_value(cell: &str) -> bool {
    let c = cell.trim();
    !c.is_empty()
        && (c.contains('@')
            || c.eq_ignore_ascii_case("true")
            || c.eq_ignore_ascii_case("false")
            || c.chars()
                .all(|ch| ch.is_ascii_digit() || "+-.:/ TZ".contains(ch))
            || (c.len() == 36 && c.chars().all(|ch| ch.is_ascii_hexdigit() || ch == '-')))
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
        let names_a_column = |h: &String| {
            let h = h.trim();
            model
                .columns
                .iter()
                .any(|c| c.header().eq_ignore_ascii_case(h))
        };
        let values = header.iter().filter(|h| looks_like_a_value(h)).count();
        if !header.iter().any(names_a_column) && values * 2 >= header.len() {
            return Err(PlanError::NoHeader(model.name.clone()));
        }
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
            let free: Vec<&str> = model
                .columns
                .iter()
                .enumerate()
                .filter(|(i, _)| !copy_columns.contains(i))
                .map(|(_, c)| c.header())
                .collect();
            return Err(PlanError::UnknownColumns {
                advice: advice(header, &unknown, &free),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelSet;

    fn advice_for(header: &[&str]) -> String {
        let customer = ModelSet::builtin().get("customer").unwrap();
        let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
        match Plan::from_header(customer, &header, false) {
            Err(PlanError::UnknownColumns { advice, .. }) => advice,
            Err(e @ PlanError::NoHeader(_)) => e.to_string(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_header_that_does_not_fit_gets_the_likely_fix() {
        // A file without a header: its first record.
        let data = advice_for(&[
            "1",
            "37f8a88b-17fc-495a-87a0-ca6e0822e8f3",
            "Grace Lovelace",
            "grace@example.com",
            "GB",
            "smb",
            "23410.57",
            "2021-02-22T23:57:34Z",
            "true",
            "432",
        ]);
        assert!(data.contains("--no-header"), "{data}");
        // Repeated values are no duplicate header names.
        let twice = advice_for(&["1", "1", "Ada", "ada@example.com"]);
        assert!(twice.contains("--no-header"), "{twice}");
        // Another delimiter: the whole header in one field.
        let semi = advice_for(&["id;name;email"]);
        assert!(semi.contains("--delimiter ';'"), "{semi}");
        let tab = advice_for(&["id\tname\temail"]);
        assert!(tab.contains("--delimiter '\\t'"), "{tab}");
        // A typo of a column not matched otherwise.
        let typo = advice_for(&["id", "name", "email", "scroe", "Contry"]);
        assert!(typo.contains("`scroe` → did you mean `score`?"), "{typo}");
        assert!(
            typo.contains("`Contry` → did you mean `country`?"),
            "{typo}"
        );
        assert!(!typo.contains("extra_columns"), "{typo}");
        // Nothing like any of those: then, and only then, skipping.
        let extra = advice_for(&["id", "name", "email", "loyalty_tier"]);
        assert!(extra.contains("extra_columns = \"ignore\""), "{extra}");
    }
}
