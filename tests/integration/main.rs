//! Integration tests: whole scenarios through the embedded runtime, SQL over its Parquet,
//! and — when `CBEC_TEST_BROKERS` names a broker — the Kafka mode against a real broker,
//! including crash safety with SIGKILL. `scripts/test.sh` (the README's test command)
//! starts Apache Kafka and sets the variable.

mod compose;
mod embedded;
mod kafka;
mod scenario;
mod sql;
mod support;
