//! The server half of exact values (README, "Values: exactly as PostgreSQL
//! reads them"): values the encoder's fast path left open
//! ([`nexus_pipeline::values`]) are read by PostgreSQL's own input
//! functions, one round trip per deferred column of a batch, on the
//! writer's connection (whose `TimeZone` is the load's). The server's
//! verdict and binary value are taken as they are, so such a value is
//! stored — or refused — exactly as `COPY` would. The function doing it,
//! `nexus.input_values`, is created by migration 7 (`migrate.rs`).

use std::collections::BTreeMap;

use nexus_pipeline::batch::ServerReading;
use nexus_pipeline::{EncodedBatch, Plan};
use tokio_postgres::Client;

/// Settles a batch's deferred values; a batch without any costs nothing.
pub async fn settle(
    client: &Client,
    plan: &Plan,
    batch: &mut EncodedBatch,
) -> Result<(), tokio_postgres::Error> {
    if batch.deferred.is_empty() {
        return Ok(());
    }
    let mut by_column: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
    for (i, d) in batch.deferred.iter().enumerate() {
        by_column.entry(d.column).or_default().push(i);
    }
    let mut readings: Vec<Option<ServerReading>> = vec![None; batch.deferred.len()];
    for (column, indices) in by_column {
        let ty = plan.model.columns[plan.copy_columns[column as usize]].ty;
        let (name, typmod) = ty.input_type();
        let texts: Vec<&str> = indices
            .iter()
            .map(|&i| batch.deferred[i].text.as_str())
            .collect();
        let rows = client
            .query(
                "SELECT bin, txt, err FROM nexus.input_values($1::text::regtype, $2, $3)",
                &[&name, &typmod, &texts],
            )
            .await?;
        for (row, &i) in rows.iter().zip(&indices) {
            readings[i] = Some(match row.get::<_, Option<String>>(2) {
                Some(err) => Err(err),
                None => Ok((row.get(0), row.get(1))),
            });
        }
    }
    metrics::counter!("nexus_values_deferred_total").increment(readings.len() as u64);
    let readings: Vec<ServerReading> = readings
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err("the server gave no reading for this value".into())))
        .collect();
    batch.settle(plan, &readings);
    Ok(())
}
