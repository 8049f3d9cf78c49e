//! Jobs in the service: uploads kept in storage (and swept when no longer
//! needed), and the workers that take queued jobs from PostgreSQL and run
//! them through the same load path as `nexus load`.

pub mod progress;
pub mod retention;
pub mod storage;
pub mod worker;
