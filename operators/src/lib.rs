//! The CBEC 9610 supervision rules (CONTRACT §4) as pure, deterministic stream operators.
//!
//! No Kafka, no tokio, no clocks, no threads, no files: event time arrives with the data,
//! state lives in the operators, output goes to a [`Collector`]. The runtime feeds an
//! [`engine::Engine`] in canonical event-time order and moves its output.
//!
//! * [`declare`]: order + stored list + payment → the order-number comparison (§4.2);
//! * [`clear`]: activation → declared list (`invtNo`), goods review, channels, sorting-line
//!   decisions, exit (§4.1, §4.3, §4.4, §4.6);
//! * [`seal`]: seals, vehicles and port release (§4.5);
//! * [`summarize`]: monthly summary declarations in Arrow batches (§4.6);
//! * [`engine`]: the keyed, partitioned graph of the above.
#![forbid(missing_docs)]

pub mod clear;
pub mod compact;
pub mod controls;
pub mod declare;
pub mod engine;
pub mod ids;
pub mod retention;
pub mod rules;
pub mod seal;
pub mod summarize;
pub mod tracked;

use cbec_schemas::EventTime;
use serde::{Serialize, de::DeserializeOwned};

/// The hash map of keyed state: foldhash, seeded per process, instead of SipHash (keys are
/// short identifiers; lookups are on every event's path). Nothing iterates it for output
/// order, so the hasher does not reach the outputs. Partitioning uses [`ids::stable_hash`].
pub type Map<K, V> = hashbrown::HashMap<K, V, foldhash::fast::RandomState>;

/// The hash set of keyed state, on the same terms as [`Map`].
pub type Set<K> = hashbrown::HashSet<K, foldhash::fast::RandomState>;

/// Where an operator writes its output.
pub trait Collector<T> {
    /// Takes one output record.
    fn collect(&mut self, item: T);
}

impl<T> Collector<T> for Vec<T> {
    fn collect(&mut self, item: T) {
        self.push(item);
    }
}

/// A stream operator: one required method; lifecycle hooks default to nothing.
/// State is the operator's own serde state, so [`snapshot`] / [`restore`] work for any
/// operator.
pub trait Operator: Serialize + DeserializeOwned {
    /// Input record.
    type In;
    /// Output record.
    type Out;
    /// Broadcast state the operator reads (goods registrations, controls, rules); `()` when
    /// it needs none.
    type Ctx;

    /// Processes one input.
    fn process(&mut self, ctx: &mut Self::Ctx, input: Self::In, out: &mut dyn Collector<Self::Out>);

    /// Event time advanced to `wm`: timers due at or before it fire here.
    fn on_watermark(&mut self, _ctx: &mut Self::Ctx, _wm: EventTime, _out: &mut dyn Collector<Self::Out>) {}

    /// Approximate bytes of keyed state held.
    fn state_size(&self) -> usize {
        0
    }
}

/// Snapshot of any operator's state (for checkpoints).
pub fn snapshot<O: Serialize>(op: &O) -> Vec<u8> {
    serde_json::to_vec(op).expect("operator state serializes")
}

/// Restores an operator from a [`snapshot`].
pub fn restore<O: DeserializeOwned>(bytes: &[u8]) -> Result<O, serde_json::Error> {
    serde_json::from_slice(bytes)
}

/// Partition of a key among `n` partitions (stable across runs and machines).
pub fn partition_of(key: &str, n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    (ids::stable_hash(key.as_bytes()) % n as u64) as usize
}

#[cfg(test)]
mod tests;
