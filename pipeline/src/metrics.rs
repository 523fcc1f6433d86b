//! Typed metric events: one struct per event, names in one place (the table in the README).
//! With no exporter installed they cost a no-op call.

use metrics::{counter, gauge, histogram};

/// `cbec_messages_in_total{topic}`: input entities processed.
pub struct MessageIn {
    /// Input topic short name.
    pub topic: &'static str,
}
impl MessageIn {
    /// Records it.
    pub fn emit(&self) {
        counter!("cbec_messages_in_total", "topic" => self.topic).increment(1);
    }
}

/// `cbec_messages_out_total{topic}`: output records.
pub struct MessageOut {
    /// Output topic short name.
    pub topic: &'static str,
}
impl MessageOut {
    /// Records it.
    pub fn emit(&self) {
        counter!("cbec_messages_out_total", "topic" => self.topic).increment(1);
    }
}

/// `cbec_dlq_total{code}`: dead letters by error code.
pub struct DeadLetterEvent<'a> {
    /// Error code.
    pub code: &'a str,
}
impl DeadLetterEvent<'_> {
    /// Records it.
    pub fn emit(&self) {
        counter!("cbec_dlq_total", "code" => self.code.to_string()).increment(1);
    }
}

/// `cbec_decision_latency_seconds`: scan read → sorting decision handed to the sink.
pub struct DecisionLatency {
    /// Seconds.
    pub seconds: f64,
}
impl DecisionLatency {
    /// Records it.
    pub fn emit(&self) {
        histogram!("cbec_decision_latency_seconds").record(self.seconds);
    }
}

/// `cbec_queue_depth{queue}`: items waiting in a bounded queue.
pub struct QueueDepth {
    /// Queue name.
    pub queue: &'static str,
    /// Depth.
    pub depth: usize,
}
impl QueueDepth {
    /// Records it.
    pub fn emit(&self) {
        gauge!("cbec_queue_depth", "queue" => self.queue).set(self.depth as f64);
    }
}

/// `cbec_consumer_lag{topic,partition}`: high watermark − position.
pub struct ConsumerLag<'a> {
    /// Topic.
    pub topic: &'a str,
    /// Partition.
    pub partition: i32,
    /// Lag in messages.
    pub lag: i64,
}
impl ConsumerLag<'_> {
    /// Records it.
    pub fn emit(&self) {
        gauge!("cbec_consumer_lag", "topic" => self.topic.to_string(), "partition" => self.partition.to_string())
            .set(self.lag as f64);
    }
}

/// `cbec_checkpoint_snapshot_seconds`: how long the engine thread stopped to copy its state
/// for a checkpoint (serializing and saving the copy run off the engine thread).
pub struct CheckpointSnapshot {
    /// Duration.
    pub seconds: f64,
}
impl CheckpointSnapshot {
    /// Records it.
    pub fn emit(&self) {
        histogram!("cbec_checkpoint_snapshot_seconds").record(self.seconds);
    }
}

/// `cbec_checkpoint_duration_seconds` (snapshot → saved), `cbec_checkpoint_bytes`.
pub struct CheckpointDone {
    /// Duration.
    pub seconds: f64,
    /// Size.
    pub bytes: u64,
}
impl CheckpointDone {
    /// Records it.
    pub fn emit(&self) {
        histogram!("cbec_checkpoint_duration_seconds").record(self.seconds);
        gauge!("cbec_checkpoint_bytes").set(self.bytes as f64);
    }
}

/// `cbec_state_bytes{operator}`: keyed state held.
pub struct StateSize<'a> {
    /// Operator.
    pub operator: &'a str,
    /// Bytes.
    pub bytes: usize,
}
impl StateSize<'_> {
    /// Records it.
    pub fn emit(&self) {
        gauge!("cbec_state_bytes", "operator" => self.operator.to_string()).set(self.bytes as f64);
    }
}

/// `cbec_sequencer_forced_total`: items released before the watermark (bounded buffer).
pub struct SequencerForced;
impl SequencerForced {
    /// Records it.
    pub fn emit(&self) {
        counter!("cbec_sequencer_forced_total").increment(1);
    }
}

/// Installs the Prometheus endpoint at `addr` (`host:port`).
pub fn install(addr: &str) -> anyhow::Result<()> {
    let addr: std::net::SocketAddr = addr.parse()?;
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full("cbec_decision_latency_seconds".into()),
            &[0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.05, 0.1, 1.0],
        )?
        .install()?;
    Ok(())
}
