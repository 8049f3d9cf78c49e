//! One module per command group.

pub mod cache;
pub mod jobs;
pub mod load;
pub mod mcp;
pub mod models;
pub mod perf;
pub mod serve;
pub mod users;
