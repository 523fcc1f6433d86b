//! Scan → decision latency through a real broker at a fixed offered load: a feed produced
//! at a paced rate to the input topics while `cbec` runs in Kafka mode, and a consumer of
//! `sorting` that matches each decision to the moment its scan was handed to the producer.

use cbec_pipeline::config::Config;
use cbec_pipeline::kafka::{self, Deliveries};
use cbec_schemas::Topic;
use cbec_schemas::hs::Nomenclature;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::Producer;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What one measurement saw.
#[derive(Debug, Default)]
pub struct KafkaLatency {
    /// Messages produced at the paced rate (after the unpaced registrations).
    pub messages: usize,
    /// Scans among them.
    pub scans: usize,
    /// Rate actually offered (messages/s), which a slow producer may keep below the target.
    pub offered_per_sec: f64,
    /// Decisions matched to their scans.
    pub decisions: usize,
    /// Inside the pipeline (consumer read → decision handed to the sink), p50 and p99 in µs.
    pub inside_us: (Option<u32>, Option<u32>),
    /// Checkpoints taken during the run, and the longest the engine thread stopped for one.
    pub checkpoints: (u64, std::time::Duration),
    /// Latencies in microseconds, sorted.
    pub latencies_us: Vec<u64>,
}

impl KafkaLatency {
    /// The `p` quantile (0..1) in µs.
    pub fn pct(&self, p: f64) -> Option<u64> {
        cbec_pipeline::runner::percentile(&self.latencies_us, p)
    }
}

/// Sleeps until `due`, at least half a millisecond: messages that fall due meanwhile go out
/// in one burst, as from a real producer, and the pacing thread does not spin on a core
/// the broker and the pipeline need.
fn wait_until(due: Instant) {
    let left = due.saturating_duration_since(Instant::now());
    if !left.is_zero() {
        std::thread::sleep(left.max(Duration::from_micros(500)));
    }
}

/// `lineId/scanId` of a scan message, or of the sorting decision made for it (both carry
/// the two fields; the decision's `id` has more in it), if it parses.
fn scan_identity(payload: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    Some(format!("{}/{}", v.get("lineId")?.as_str()?, v.get("scanId")?.as_str()?))
}

/// Produces `feed` (topic, key, payload in arrival order) to fresh topics named with
/// `prefix`: first the registrations and standing controls at the head of the feed
/// unpaced, then the rest at `per_sec` messages/s, while `cbec` runs in Kafka mode on
/// `brokers`. Returns the scan → decision latencies as a consumer of `sorting` sees them.
pub fn measure(
    brokers: &str,
    hs: Nomenclature,
    feed: &[(Topic, String, Vec<u8>)],
    per_sec: f64,
    prefix: &str,
) -> KafkaLatency {
    let mut cfg = Config {
        brokers: brokers.into(),
        output_prefix: prefix.into(),
        group_id: format!("{prefix}g"),
        ..Config::default()
    };
    if let Some(n) = std::env::var("CBEC_BENCH_KPARTS").ok().and_then(|s| s.parse().ok()) {
        cfg.partitions = n;
    }
    // `CBEC_BENCH_KCP_MS`: the checkpoint interval (default the configuration's, 5 s).
    if let Some(ms) = std::env::var("CBEC_BENCH_KCP_MS").ok().and_then(|s| s.parse().ok()) {
        cfg.checkpoint_interval_ms = ms;
    }
    cfg.checkpoint_dir = std::env::temp_dir().join(format!("{prefix}cp")).display().to_string();
    for t in Topic::ALL {
        cfg.input_topics.insert(t.short().into(), format!("{prefix}{}", t.short()));
    }
    kafka::ensure_topics(&cfg).expect("topics");
    let delivered = Deliveries::default();
    let producer = kafka::producer(brokers, 1, delivered.clone()).expect("producer");
    let send = |t: &str, k: &str, p: &[u8]| kafka::send_blocking(&producer, t, k, p).expect("produce");
    let names: HashMap<Topic, String> = Topic::ALL.iter().map(|t| (*t, cfg.input_topic(*t))).collect();
    let head = feed.iter().take_while(|(t, ..)| matches!(t, Topic::Goods | Topic::Controls)).count();
    for (t, k, p) in &feed[..head] {
        send(&names[t], k, p);
    }
    producer.flush(Duration::from_secs(60)).expect("flush");
    let paced = &feed[head..];
    let ids: Vec<Option<String>> =
        paced.iter().map(|(t, _, p)| if *t == Topic::Scans { scan_identity(p) } else { None }).collect();

    // The decisions' consumer: every partition of `sorting` from the beginning.
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (sent, done) = (sent.clone(), done.clone());
        let topic = cfg.output_topic("sorting");
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", format!("{prefix}watch"))
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10")
            .create()
            .expect("consumer");
        let md = c.fetch_metadata(Some(&topic), Duration::from_secs(10)).expect("metadata");
        let mut tpl = TopicPartitionList::new();
        for p in md.topics().iter().flat_map(|t| t.partitions()) {
            tpl.add_partition_offset(&topic, p.id(), Offset::Beginning).expect("partition");
        }
        c.assign(&tpl).expect("assign");
        std::thread::spawn(move || {
            let mut lat = Vec::new();
            let mut quiet_since = Instant::now();
            loop {
                match c.poll(Duration::from_millis(50)) {
                    Some(Ok(m)) => {
                        let now = Instant::now();
                        quiet_since = now;
                        let id = m.payload().and_then(scan_identity);
                        if let Some(at) = id.and_then(|id| sent.lock().expect("not poisoned").get(&id).copied()) {
                            lat.push(now.duration_since(at).as_micros() as u64);
                        }
                    }
                    Some(Err(e)) => eprintln!("warning: watcher: {e}"),
                    None if done.load(Ordering::Relaxed) && quiet_since.elapsed() > Duration::from_secs(2) => break,
                    None => {}
                }
            }
            lat
        })
    };

    // The pipeline; pacing starts once its engine loop reports (it is assigned and running).
    let ready = Arc::new(AtomicBool::new(false));
    let pipeline = {
        let (cfg, ready) = (cfg.clone(), ready.clone());
        std::thread::spawn(move || {
            let progress: cbec_pipeline::runner::Progress = Box::new(move |_| ready.store(true, Ordering::Relaxed));
            kafka::run(&cfg, hs, true, Some(progress)).expect("kafka run")
        })
    };
    while !ready.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let start = Instant::now();
    for (i, ((t, k, p), id)) in paced.iter().zip(&ids).enumerate() {
        wait_until(start + Duration::from_secs_f64(i as f64 / per_sec.max(1e-9)));
        if let Some(id) = id {
            sent.lock().expect("not poisoned").insert(id.clone(), Instant::now());
        }
        send(&names[t], k, p);
    }
    let offered_per_sec = paced.len() as f64 / start.elapsed().as_secs_f64();
    producer.flush(Duration::from_secs(60)).expect("flush");
    assert_eq!(delivered.failed(), 0, "every input message delivered");
    let stats = pipeline.join().expect("pipeline thread");
    done.store(true, Ordering::Relaxed);
    let mut latencies_us = watcher.join().expect("watcher thread");
    latencies_us.sort_unstable();
    // Until the twentieth session this matched the decisions' `id`, which had grown more
    // parts than `lineId/scanId` (since `c0e5600`): nothing matched, and the
    // figures printed were `-`. A run that matches nothing fails instead.
    let scans = ids.iter().filter(|i| i.is_some()).count();
    assert!(scans == 0 || !latencies_us.is_empty(), "none of {scans} scans' decisions matched on `sorting`");
    // The run's checkpoints (hundreds of MB each run) are not kept.
    let _ = std::fs::remove_dir_all(&cfg.checkpoint_dir);
    KafkaLatency {
        messages: paced.len(),
        scans,
        offered_per_sec,
        decisions: latencies_us.len(),
        inside_us: (stats.latencies.pct(0.5), stats.latencies.pct(0.99)),
        checkpoints: (stats.checkpoints, stats.checkpoint_pause),
        latencies_us,
    }
}
