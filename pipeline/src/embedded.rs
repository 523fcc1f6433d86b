//! The embedded mode: no Kafka. Input comes from files (`--input DIR`: one file or folder
//! per input topic, named after the topic with or without `cbec.`, JSON lines or CEB XML)
//! or from the generator, and runs through the same decoder, sequencer, engine and sinks as
//! the Kafka mode. One reader/decoder thread per topic, each behind its own bounded queue.

use crate::config::Config;
use crate::runner::{
    Batch, Batcher, EngineMsg, EngineRun, RunStats, Sent, batches_for, decode_message, run_engine, spawn_sink,
};
use crate::sequencer::SourceId;
use crate::sink::Sink;
use cbec_schemas::hs::Nomenclature;
use cbec_schemas::{Decoder, Topic};
use crossbeam_channel::{Sender, bounded};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Messages per batch from a file or in-memory source.
const BATCH: usize = 256;

/// Input of one topic.
pub enum TopicInput {
    /// Files, read in order (JSON lines, or one CEB XML document per file).
    Files(Vec<PathBuf>),
    /// Messages already in memory (generator), each with the time it was sent (Unix
    /// milliseconds: a generated message's arrival), which bounds its event time
    /// (`max_lead_ms`).
    Messages(Vec<(i64, Vec<u8>)>),
}

/// Sleeps until about `due` (pacing of offered load). It never spins: a spinning feed
/// thread takes a core from the pipeline it measures (on 2 cores the engine thread then
/// loses scheduler slices of milliseconds). A message may go up to 100 µs early.
fn wait_until(due: Instant) {
    let left = due.saturating_duration_since(Instant::now());
    if left > std::time::Duration::from_micros(100) {
        std::thread::sleep(left - std::time::Duration::from_micros(50));
    }
}

/// Finds the input files of each topic in `dir`.
pub fn discover(dir: &Path) -> anyhow::Result<Vec<(Topic, TopicInput)>> {
    let mut by_topic: HashMap<Topic, Vec<PathBuf>> = HashMap::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    entries.sort();
    for p in entries {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.') || name == "expected.json" {
            continue;
        }
        let Some(t) = Topic::from_name(name) else {
            eprintln!("warning: {} is not named after an input topic; ignored", p.display());
            continue;
        };
        let files = by_topic.entry(t).or_default();
        if p.is_dir() {
            let mut inner: Vec<PathBuf> =
                std::fs::read_dir(&p)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
            inner.sort();
            files.extend(inner.into_iter().filter(|f| f.is_file()));
        } else {
            files.push(p);
        }
    }
    anyhow::ensure!(!by_topic.is_empty(), "no input files named after a topic in {}", dir.display());
    let mut v: Vec<(Topic, TopicInput)> = by_topic.into_iter().map(|(t, f)| (t, TopicInput::Files(f))).collect();
    v.sort_by_key(|(t, _)| *t);
    Ok(v)
}

/// Splits a file's bytes into messages: a CEB XML document is one message; otherwise one
/// message per non-blank line.
pub fn split_messages(bytes: &[u8]) -> Vec<&[u8]> {
    if cbec_schemas::detect(bytes) == Some(cbec_schemas::Format::Xml) {
        return vec![bytes];
    }
    bytes.split(|b| *b == b'\n').filter(|l| !l.iter().all(u8::is_ascii_whitespace)).collect()
}

fn source_thread(
    topic: Topic,
    topic_name: String,
    input: TopicInput,
    max_lead_ms: u64,
    tx: Sender<Batch>,
) -> std::thread::JoinHandle<anyhow::Result<()>> {
    std::thread::Builder::new()
        .name(format!("cbec-src-{}", topic.short()))
        .spawn(move || {
            let mut dec = Decoder::new();
            let src = (topic, 0);
            let mut batcher = Batcher::new(tx, BATCH);
            let mut one = |msg: &[u8], offset: i64, sent: Option<Sent>| {
                let mut send = |m: EngineMsg| batcher.push(m);
                decode_message(&mut dec, topic, &topic_name, src, offset, None, msg, sent, Instant::now(), &mut send);
            };
            let mut offset = 0i64;
            match input {
                TopicInput::Files(files) => {
                    for f in files {
                        // A file holds what was sent by the time it was last written.
                        let sent = Sent::file_written(&f, max_lead_ms);
                        let bytes = std::fs::read(&f)?;
                        for msg in split_messages(&bytes) {
                            one(msg, offset, sent);
                            offset += 1;
                        }
                    }
                }
                TopicInput::Messages(msgs) => {
                    for (at, msg) in msgs {
                        one(&msg, offset, Sent::arrived(at, max_lead_ms));
                        offset += 1;
                    }
                }
            }
            batcher.push(EngineMsg::Done(src));
            batcher.flush();
            Ok(())
        })
        .expect("spawn source thread")
}

/// When each message of a replay is due: the first `warm` messages at `warm_per_sec`, then,
/// after `pause`, the rest at `per_sec` (a measured window behind a warm-up that builds
/// the state it refers to; the pause lets the engine finish the warm-up first).
#[derive(Clone, Copy, Debug)]
pub struct Pacing {
    /// Messages of the warm-up.
    pub warm: usize,
    /// Their rate (messages/s).
    pub warm_per_sec: f64,
    /// Between the warm-up and the rest.
    pub pause: std::time::Duration,
    /// The rate of the rest (messages/s).
    pub per_sec: f64,
}

impl Pacing {
    /// Every message at `per_sec`.
    pub fn steady(per_sec: f64) -> Pacing {
        Pacing { warm: 0, warm_per_sec: per_sec, pause: std::time::Duration::ZERO, per_sec }
    }

    /// When message `i` is due, from the start.
    pub fn due(&self, i: usize) -> std::time::Duration {
        let secs = |n: usize, rate: f64| std::time::Duration::from_secs_f64(n as f64 / rate.max(1e-9));
        if i < self.warm {
            secs(i, self.warm_per_sec)
        } else {
            secs(self.warm, self.warm_per_sec) + self.pause + secs(i - self.warm, self.per_sec)
        }
    }
}

/// Replays one merged feed (all topics in arrival order) from a single thread at the rates
/// of `pacing`, for latency at a fixed offered load: one source in order, so nothing waits
/// for another source's watermark. The sequencer sees one source; entities keep their
/// topics. Each message comes with its arrival time (Unix milliseconds), which bounds its
/// event time (`max_lead_ms`) as a generated input's does.
pub fn run_replay(
    cfg: &Config,
    hs: Nomenclature,
    feed: Vec<(Topic, i64, Vec<u8>)>,
    pacing: Pacing,
    sink: Box<dyn Sink>,
) -> anyhow::Result<RunStats> {
    let (sink_tx, sink_h) = spawn_sink(sink, cfg.queue_capacity);
    let (tx, rx) = bounded(batches_for(cfg.queue_capacity, 1));
    let replay: SourceId = (Topic::Goods, 0);
    let names: HashMap<Topic, String> = Topic::ALL.iter().map(|t| (*t, cfg.input_topic(*t))).collect();
    let max_lead_ms = cfg.max_lead_ms;
    let h = std::thread::Builder::new()
        .name("cbec-replay".into())
        .spawn(move || {
            let mut dec = Decoder::new();
            let mut batcher = Batcher::new(tx, 1);
            let start = Instant::now();
            for (i, (t, at, msg)) in feed.into_iter().enumerate() {
                wait_until(start + pacing.due(i));
                let mut send = |m: EngineMsg| batcher.push(m);
                let sent = Sent::arrived(at, max_lead_ms);
                decode_message(&mut dec, t, &names[&t], replay, i as i64, None, &msg, sent, Instant::now(), &mut send);
            }
            batcher.push(EngineMsg::Done(replay));
            batcher.flush();
            Ok::<(), anyhow::Error>(())
        })
        .expect("spawn replay");
    let run = EngineRun::new(cfg, hs, vec![(vec![replay], rx)], sink_tx);
    let stats = run_engine(run, None)?;
    h.join().map_err(|_| anyhow::anyhow!("replay thread panicked"))??;
    let timed = sink_h.join().map_err(|_| anyhow::anyhow!("sink thread panicked"))??;
    Ok(stats.timed(timed))
}

/// Runs the embedded pipeline over `inputs` into `sink`; a finite input ends with event
/// time advanced to the end of time (every timer fires, every period closes).
pub fn run(
    cfg: &Config,
    hs: Nomenclature,
    inputs: Vec<(Topic, TopicInput)>,
    sink: Box<dyn Sink>,
    progress: Option<crate::runner::Progress>,
) -> anyhow::Result<RunStats> {
    // Files and generated messages are read as fast as they decode (`run_replay` paces).
    let read_ahead = !inputs.is_empty();
    let (sink_tx, sink_h) = spawn_sink(sink, cfg.queue_capacity);
    let mut groups = Vec::new();
    let mut handles = Vec::new();
    for (t, input) in inputs {
        let (tx, rx) = bounded(batches_for(cfg.queue_capacity, BATCH));
        handles.push(source_thread(t, cfg.input_topic(t), input, cfg.max_lead_ms, tx));
        groups.push((vec![(t, 0)], rx));
    }
    let run = EngineRun { progress, ..EngineRun::new(cfg, hs, groups, sink_tx) };
    let stats = RunStats { read_ahead, ..run_engine(run, None)? };
    for h in handles {
        h.join().map_err(|_| anyhow::anyhow!("source thread panicked"))??;
    }
    let timed = sink_h.join().map_err(|_| anyhow::anyhow!("sink thread panicked"))??;
    Ok(stats.timed(timed))
}

#[cfg(test)]
mod tests {
    use super::Pacing;
    use std::time::Duration;

    /// A replayed feed bounds event times by each message's arrival, as the other inputs
    /// do: the generator's messages dated a century ahead are dead-lettered, and every
    /// scan is decided (taken as given, one such message made every later one expired).
    #[test]
    fn a_replayed_feed_dead_letters_what_is_dated_ahead_of_its_arrival() {
        use crate::generator::{GenConfig, generate, merged_sent};
        let cfg = crate::config::Config::default();
        let hs = cbec_schemas::hs::Nomenclature::default();
        let g = generate(&GenConfig { orders: 300, malformed: 0.02, ..GenConfig::default() }, &cfg.rules, &hs);
        // The scans that are not among the malformed (keys `BAD…`).
        let scans = g.topics[&cbec_schemas::Topic::Scans].iter().filter(|(k, _)| !k.starts_with("BAD")).count() as u64;
        let feed = merged_sent(&g).into_iter().map(|(t, at, _, p)| (t, at, p)).collect();
        let stats = super::run_replay(&cfg, hs, feed, Pacing::steady(1e9), Box::new(crate::sink::NullSink)).unwrap();
        assert!(stats.dead.get("future_time").copied().unwrap_or(0) > 0, "{:?}", stats.dead);
        assert!(!stats.dead.contains_key("expired"), "{:?}", stats.dead);
        let decided: u64 = stats.ports.values().sum();
        assert_eq!(decided, scans, "one decision per scan");
    }

    /// The warm-up's messages at its rate, the pause once, then the rest at theirs; a steady
    /// pacing is one rate from the first message.
    #[test]
    fn a_replay_is_paced_warm_up_then_pause_then_window() {
        let p = Pacing { warm: 4, warm_per_sec: 1_000.0, pause: Duration::from_millis(500), per_sec: 100.0 };
        let ms = |i| p.due(i).as_secs_f64() * 1e3;
        let close = |a: f64, b: f64| (a - b).abs() < 1e-6;
        assert!(close(ms(0), 0.0) && close(ms(3), 3.0), "{} {}", ms(0), ms(3));
        assert!(close(ms(4), 4.0 + 500.0), "{}", ms(4));
        assert!(close(ms(5), 4.0 + 500.0 + 10.0) && close(ms(14), 4.0 + 500.0 + 100.0), "{} {}", ms(5), ms(14));
        let s = Pacing::steady(200.0);
        assert!(close(s.due(0).as_secs_f64(), 0.0) && close(s.due(10).as_secs_f64(), 0.05));
    }
}
