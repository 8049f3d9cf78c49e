//! The data path of Nexus up to the database: model definitions and their
//! validation rules, input sources (files, stdin, compression, transcoding),
//! PostgreSQL-compatible CSV record splitting, NDJSON, Parquet and Arrow
//! IPC readers, and the fused
//! parse → validate → binary-COPY-encode step that workers run per batch.
//!
//! This crate knows nothing of PostgreSQL connections, HTTP or the job
//! table; it turns bytes into [`batch::EncodedBatch`]es that a loader sends.

pub mod batch;
pub mod columnar;
pub mod csv;
pub mod duration;
pub mod encode;
pub mod formats;
pub mod model;
pub mod ndjson;
pub mod plan;
pub mod priority;
pub mod progress;
pub mod row_json;
pub mod runner;
pub mod source;
pub mod types;
pub mod values;

pub use batch::{EncodedBatch, Reject};
pub use model::{Model, ModelError, ModelSet};
pub use plan::{Plan, PlanError};
