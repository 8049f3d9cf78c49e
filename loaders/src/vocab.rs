//! The closed vocabularies of jobs — their statuses and load modes — and
//! their one mapping to text, which the command line (`FromStr`, `Display`),
//! the API and the notifications (serde) and the database (`ToSql`,
//! `FromSql` on `text` columns) all go through: no status or mode is
//! spelled anywhere else.

use std::fmt;
use std::str::FromStr;

use bytes::BytesMut;
use serde::{Deserialize, Serialize};
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};

/// Defines a fieldless enum stored and shown as lower-case words.
macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident, $what:literal { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "lowercase")]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema, schemars::JsonSchema))]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            /// `template` with each `{word}` of this vocabulary as the SQL
            /// literal `'word'`: statements name statuses and modes through
            /// the mapping, and still hold them as constants (which the
            /// planner needs to match partial indexes).
            pub fn fill_sql(template: &str) -> String {
                let mut sql = template.to_string();
                for v in Self::ALL {
                    sql = sql.replace(&format!("{{{}}}", v.as_str()), &format!("'{}'", v.as_str()));
                }
                sql
            }

            /// The words, for messages: `a, b or c`.
            pub fn choices() -> String {
                let words: Vec<&str> = Self::ALL.iter().map(|v| v.as_str()).collect();
                match words.split_last() {
                    Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
                    _ => words.join(""),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!(
                        "`{other}` is not a {}: use {}",
                        $what,
                        Self::choices()
                    )),
                }
            }
        }

        impl ToSql for $name {
            fn to_sql(
                &self,
                ty: &Type,
                out: &mut BytesMut,
            ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
                self.as_str().to_sql(ty, out)
            }

            fn accepts(ty: &Type) -> bool {
                <&str as ToSql>::accepts(ty)
            }

            to_sql_checked!();
        }

        impl<'a> FromSql<'a> for $name {
            fn from_sql(
                ty: &Type,
                raw: &'a [u8],
            ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
                Ok(<&str as FromSql>::from_sql(ty, raw)?.parse::<$name>()?)
            }

            fn accepts(ty: &Type) -> bool {
                <&str as FromSql>::accepts(ty)
            }
        }
    };
}

text_enum! {
    /// Where a job is in its life.
    JobStatus, "job status" {
        /// Uploaded, waiting for a worker.
        Queued => "queued",
        Running => "running",
        /// Loaded to its end (rows may have been rejected).
        Succeeded => "succeeded",
        Failed => "failed",
        Cancelled => "cancelled",
        /// Its file had already been loaded into its model.
        Skipped => "skipped",
    }
}

impl JobStatus {
    /// A job in one of these does not leave it on its own.
    pub fn is_finished(self) -> bool {
        !matches!(self, JobStatus::Queued | JobStatus::Running)
    }

    /// A cancel stops a job in one of these (a failed one stays resumable
    /// until it is cancelled).
    pub fn is_cancellable(self) -> bool {
        matches!(
            self,
            JobStatus::Queued | JobStatus::Running | JobStatus::Failed
        )
    }
}

text_enum! {
    /// How a load writes its rows.
    Mode, "load mode" {
        /// Insert every row.
        Append => "append",
        /// Insert or update by the model's key; the last row for a key wins.
        Upsert => "upsert",
        /// Empty the table and load, in one transaction.
        Replace => "replace",
    }
}

/// A statement naming job statuses as `{queued}`, `{running}` …, filled
/// once (see `JobStatus::fill_sql`) and kept for the process.
#[macro_export]
macro_rules! status_sql {
    ($template:literal) => {{
        static SQL: std::sync::LazyLock<String> =
            std::sync::LazyLock::new(|| $crate::JobStatus::fill_sql($template));
        SQL.as_str()
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_word_reads_back_and_nothing_else_does() {
        for s in JobStatus::ALL {
            assert_eq!(s.as_str().parse::<JobStatus>().unwrap(), *s);
            let json = serde_json::to_string(s).unwrap();
            assert_eq!(json, format!("\"{s}\""));
        }
        for m in Mode::ALL {
            assert_eq!(m.to_string().parse::<Mode>().unwrap(), *m);
        }
        let e = "Append".parse::<Mode>().unwrap_err();
        assert!(e.contains("append, upsert or replace"), "{e}");
        assert!("done".parse::<JobStatus>().is_err());
        assert!(JobStatus::Skipped.is_finished() && !JobStatus::Queued.is_finished());
    }

    #[test]
    fn statements_name_statuses_through_the_mapping() {
        let sql = status_sql!("status IN ({queued}, {running}) AND x = '{other}'");
        assert_eq!(sql, "status IN ('queued', 'running') AND x = '{other}'");
    }
}
