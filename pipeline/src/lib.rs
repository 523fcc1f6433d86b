//! The cbec runtime: embedded and Kafka modes over the same operators, checkpoints, metrics,
//! the load generator, `cbec check`, and DataFusion SQL over the Parquet output.
#![forbid(missing_docs)]

pub mod affinity;
pub mod alloc;
pub mod archive;
pub mod check;
pub mod checkpoint;
pub mod config;
pub mod embedded;
pub mod generator;
pub mod kafka;
pub mod kafka_store;
pub mod lease;
pub mod metrics;
pub mod parquet_out;
pub mod record;
pub mod report;
pub mod runner;
pub mod sequencer;
pub mod sink;
#[cfg(feature = "sql")]
pub mod sql;
pub mod stage;
pub mod standby;
pub mod summary_stage;

use cbec_schemas::hs::Nomenclature;

/// Loads the nomenclature named by the configuration (or `$CBEC_HS_FILE`, or the default
/// path), falling back to structural checks with a warning.
pub fn load_hs(cfg: &config::Config) -> Nomenclature {
    Nomenclature::load_or_structural(cfg.hs_file.as_deref().map(std::path::Path::new))
}
