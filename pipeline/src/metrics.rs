//! Typed metric events: one struct per event, names in one place (the table in the README).
//! With no exporter installed they cost a no-op call.

use metrics::{counter, gauge, histogram};

/// `cbec_messages_in_total{topic}` (input entities processed) and
/// `cbec_messages_out_total{topic}` (output records): the engine counts per message in its
/// run statistics and publishes the totals at least once a second and at the end (a
/// registry lookup per message would cost more than some operators do).
pub struct MessageCounts<'a> {
    /// Input entities per topic short name, since the process started.
    pub input: &'a std::collections::BTreeMap<&'static str, u64>,
    /// Output records per topic short name, since the process started.
    pub output: &'a std::collections::BTreeMap<&'static str, u64>,
}
impl MessageCounts<'_> {
    /// Records them.
    pub fn emit(&self) {
        for (t, n) in self.input {
            counter!("cbec_messages_in_total", "topic" => *t).absolute(*n);
        }
        for (t, n) in self.output {
            counter!("cbec_messages_out_total", "topic" => *t).absolute(*n);
        }
    }
}

/// `cbec_messages_out_total{topic="summaries"}` from the summarize stage's thread.
pub struct SummariesOut {
    /// Summary declarations written since the process started.
    pub total: u64,
}
impl SummariesOut {
    /// Records it.
    pub fn emit(&self) {
        counter!("cbec_messages_out_total", "topic" => "summaries").absolute(self.total);
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

/// `cbec_decision_latency_seconds`: scan read → sorting decision written by the sink
/// thread (handed to the producer or the file). A handle registered on the thread that
/// starts the sink (the recorder in effect there, a test's local one included) and recorded
/// on the sink thread.
pub struct DecisionLatency(metrics::Histogram);
impl DecisionLatency {
    /// Registers it with the calling thread's recorder.
    pub fn register() -> DecisionLatency {
        DecisionLatency(histogram!("cbec_decision_latency_seconds"))
    }
    /// Records one decision's latency.
    pub fn record(&self, seconds: f64) {
        self.0.record(seconds);
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

/// `cbec_lease_held`: 1 while this process holds its group's lease (is the active one),
/// 0 while it stands by.
pub struct LeaseHeld {
    /// Whether it holds it.
    pub held: bool,
}
impl LeaseHeld {
    /// Records it.
    pub fn emit(&self) {
        gauge!("cbec_lease_held").set(if self.held { 1.0 } else { 0.0 });
    }
}

/// `cbec_summarize_partitions_held`: partitions of `<group_id>.exited` a summarize
/// instance holds.
pub struct PartitionsHeld {
    /// How many.
    pub count: usize,
}
impl PartitionsHeld {
    /// Records it.
    pub fn emit(&self) {
        gauge!("cbec_summarize_partitions_held").set(self.count as f64);
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

/// `cbec_checkpoint_snapshot_seconds{copy}`: how long the engine thread stopped to copy its
/// state for a checkpoint (applying, serializing and saving run off the engine thread);
/// `copy` is `whole` (the first checkpoint, or when most keys changed) or `changes`.
pub struct CheckpointSnapshot {
    /// Duration.
    pub seconds: f64,
    /// The whole state was copied, not only what changed.
    pub whole: bool,
}
impl CheckpointSnapshot {
    /// Records it.
    pub fn emit(&self) {
        let copy = if self.whole { "whole" } else { "changes" };
        histogram!("cbec_checkpoint_snapshot_seconds", "copy" => copy).record(self.seconds);
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

/// `cbec_state_expired_total{operator}`: keys whose state retention dropped (declare:
/// orders, clear: parcels), since the state was created (it is checkpointed).
pub struct StateExpired {
    /// Orders dropped.
    pub orders: u64,
    /// Parcels dropped.
    pub parcels: u64,
}
impl StateExpired {
    /// Records it.
    pub fn emit(&self) {
        counter!("cbec_state_expired_total", "operator" => "declare").absolute(self.orders);
        counter!("cbec_state_expired_total", "operator" => "clear").absolute(self.parcels);
    }
}

/// `cbec_controls_held{scope}`: officer controls held (aimed: at one list, order or
/// parcel, aging with its state; standing: company, commodity, vehicle, rate).
pub struct ControlsHeld {
    /// All controls held.
    pub all: usize,
    /// Of which aimed.
    pub aimed: usize,
}
impl ControlsHeld {
    /// Records it.
    pub fn emit(&self) {
        gauge!("cbec_controls_held", "scope" => "aimed").set(self.aimed as f64);
        gauge!("cbec_controls_held", "scope" => "standing").set(self.all.saturating_sub(self.aimed) as f64);
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

/// The Prometheus recorder's settings (the decision latency's buckets).
fn builder() -> anyhow::Result<metrics_exporter_prometheus::PrometheusBuilder> {
    Ok(metrics_exporter_prometheus::PrometheusBuilder::new().set_buckets_for_metric(
        metrics_exporter_prometheus::Matcher::Full("cbec_decision_latency_seconds".into()),
        &[0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.05, 0.1, 1.0],
    )?)
}

/// A Prometheus recorder with cbec's settings, not installed (to render what a run on this
/// thread records: `metrics::with_local_recorder`).
pub fn recorder() -> anyhow::Result<metrics_exporter_prometheus::PrometheusRecorder> {
    Ok(builder()?.build_recorder())
}

/// Installs the Prometheus endpoint at `addr` (`host:port`).
pub fn install(addr: &str) -> anyhow::Result<()> {
    let addr: std::net::SocketAddr = addr.parse()?;
    builder()?.with_http_listener(addr).install()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::embedded;
    use crate::generator::{GenConfig, generate};
    use cbec_schemas::hs::Nomenclature;

    /// The value of the sample `name{labels}` in a Prometheus text exposition.
    fn sample(text: &str, name_labels: &str) -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(name_labels)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// What the endpoint would serve after an embedded run equals the run's own counts:
    /// messages in and out per topic, dead letters by code, one latency sample per decision,
    /// taken by the sink thread once it wrote the decision. (The engine thread is the
    /// caller's, so a thread-local recorder sees its metrics; the sink's latency histogram is
    /// registered on it too.)
    #[test]
    fn the_exposition_counts_what_the_run_counted() {
        let cfg = Config::default();
        let g = generate(
            &GenConfig { orders: 300, malformed: 0.02, ..GenConfig::default() },
            &cfg.rules,
            &Nomenclature::default(),
        );
        let inputs = g.inputs();
        let recorder = super::builder().unwrap().build_recorder();
        let handle = recorder.handle();
        let stats = metrics::with_local_recorder(&recorder, || {
            embedded::run(&cfg, Nomenclature::default(), inputs, Box::new(crate::sink::NullSink), None).unwrap()
        });
        let text = handle.render();
        assert!(!stats.input.is_empty() && !stats.dead.is_empty() && stats.latencies.us.len() > 100, "{stats:?}");
        for (t, n) in &stats.input {
            assert_eq!(
                sample(&text, &format!("cbec_messages_in_total{{topic=\"{t}\"}}")),
                Some(*n as f64),
                "in {t}\n{text}"
            );
        }
        for (t, n) in &stats.output {
            assert_eq!(
                sample(&text, &format!("cbec_messages_out_total{{topic=\"{t}\"}}")),
                Some(*n as f64),
                "out {t}\n{text}"
            );
        }
        for (code, n) in &stats.dead {
            assert_eq!(
                sample(&text, &format!("cbec_dlq_total{{code=\"{code}\"}}")),
                Some(*n as f64),
                "dlq {code}\n{text}"
            );
        }
        // Every sorting decision was timed, once: each ends the batch it goes to the sink in.
        let decided: u64 = stats.ports.values().sum();
        assert_eq!((stats.latencies.timed, stats.latencies.us.len() as u64), (decided, decided));
        assert_eq!((stats.made.timed, stats.made.us.len() as u64), (decided, decided));
        let decisions = stats.latencies.us.len() as f64;
        assert_eq!(sample(&text, "cbec_decision_latency_seconds_count"), Some(decisions), "{text}");
        assert_eq!(sample(&text, "cbec_decision_latency_seconds_bucket{le=\"+Inf\"}"), Some(decisions), "{text}");
        // Set once a second and at the end: drained at the end of a finite input.
        assert_eq!(sample(&text, "cbec_queue_depth{queue=\"sequencer\"}"), Some(0.0), "{text}");
    }
}
