//! The PostgreSQL side of Nexus: the service schema and its migrations, job
//! records and checkpoints, the binary COPY batch writer (append, upsert,
//! replace, atomic; constraint violations narrowed to rows; transient errors
//! retried), and [`load::run_load`], which drives one load end to end.
//! It knows nothing of HTTP.

pub mod cache;
pub mod catalog;
pub mod conflicts;
pub mod gate;
pub mod hash_gate;
pub mod jobs;
pub mod load;
pub mod migrate;
pub mod pg;
pub mod queue;
pub mod server_input;
pub mod tls;
pub mod vocab;
pub mod writer;

pub use load::{LoadError, LoadRequest, run_load};
pub use vocab::{JobStatus, Mode};
