//! End-to-end load harness: a generated 11.11 peak through the embedded pipeline (and
//! through Kafka when `CBEC_BENCH_BROKERS` names a broker). Prints, with the machine facts
//! and the command: sustained input messages/s, scan→decision latency percentiles at a fixed
//! offered load of 50,000 scans/s alongside the full flow (a 6 s window of the story's steady
//! part, behind a warm-up; and the whole story with its ramp-up and wind-down), peak RSS, and
//! state bytes per pending list.
//!
//! Run: `cargo bench -p cbec-benches --bench e2e`
//! Only some phases: `CBEC_BENCH_ONLY=throughput,latency,close,engine,state,checkpoint,kafka,archive,kafka-latency` (default: all;
//! `archive`, `cbec archive` of the Kafka phase's output topics, runs that phase first).
//! Kafka phase with summarize in separate instances: `CBEC_BENCH_STAGES=N`.
//! Size: `CBEC_BENCH_ORDERS` (default 820000 orders ≈ 5.1 million messages).
//! Kafka phases need `CBEC_BENCH_BROKERS`; `CBEC_BENCH_KPARTS` sets the partitions of the
//! latency phase's topics (default 4), `CBEC_BENCH_KRATES` its offered loads in scans/s
//! (default `50000,5000`), `CBEC_BENCH_KCP_MS` its checkpoint interval (default 5000);
//! `CBEC_BENCH_LRATES` those of the in-process latency phase
//! (default `50000,10000`). `CBEC_BENCH_DIAG=1` prints, for the in-process
//! latency and close phases, the worst latency in each 2.5 % slice of the decisions (where stalls are).
//! `CBEC_PIN_ENGINE=true` pins the engine thread of the in-process phases to a CPU of its
//! own, as `pin_engine` does in cbec.

use cbec_benches::{machine, peak_rss_mib};
use cbec_operators::rules::Rules;
use cbec_operators::tracked::{Cut, Incremental};
use cbec_pipeline::config::Config;
use cbec_pipeline::embedded;
use cbec_pipeline::generator::{GenConfig, generate};
use cbec_pipeline::sink::{FileSink, NullSink};
use cbec_schemas::Topic;
use cbec_schemas::hs::Nomenclature;
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CMD: &str = "cargo bench -p cbec-benches --bench e2e";

fn hs() -> Nomenclature {
    let p = std::env::var("CBEC_HS_FILE")
        .unwrap_or_else(|_| cbec_schemas::shared_path("data/hs/harmonized-system.csv").display().to_string());
    Nomenclature::load(std::path::Path::new(&p)).expect("HS nomenclature")
}

/// A latency figure in µs, or `-` when there is none.
fn us(v: Option<impl std::fmt::Display>) -> String {
    v.map_or("-".into(), |v| format!("{v} µs"))
}

/// With `CBEC_BENCH_DIAG` set: the worst latency in each 2.5 % slice of the decisions, in
/// decision order (where in the run the stalls are).
fn diag(s: &cbec_pipeline::runner::RunStats) {
    if std::env::var("CBEC_BENCH_DIAG").is_ok() {
        let ch = (s.latencies.us.len() / 40).max(1);
        let v: Vec<String> = s.latencies.us.chunks(ch).map(|c| format!("{}", c.iter().max().unwrap())).collect();
        println!("max per 2.5% chunk: {}", v.join(" "));
    }
}

fn main() {
    // As the `cbec` binary does (`pipeline/src/alloc.rs`).
    cbec_pipeline::alloc::set_up();
    if std::env::args().any(|a| a == "--list") {
        println!("e2e: bench");
        return;
    }
    let orders: usize = std::env::var("CBEC_BENCH_ORDERS").ok().and_then(|s| s.parse().ok()).unwrap_or(820_000);
    let only = std::env::var("CBEC_BENCH_ONLY").unwrap_or_default();
    let phase = |p: &str| only.is_empty() || only.split(',').any(|x| x == p);
    let h = hs();
    let rules = Rules::default();
    let pin = std::env::var("CBEC_PIN_ENGINE").is_ok_and(|v| v == "true" || v == "1");
    let cfg = Config { pin_engine: pin, ..Config::default() };
    println!(
        "machine: {}; transparent huge pages {}; engine thread {}",
        machine(),
        if cbec_pipeline::alloc::thp_disabled() { "off (as in cbec)" } else { "as the system sets them" },
        if pin { "pinned to a CPU of its own (CBEC_PIN_ENGINE)" } else { "not pinned" }
    );
    println!("command: {CMD}  (CBEC_BENCH_ORDERS={orders})");

    if phase("throughput") {
        let t = Instant::now();
        let g = generate(&GenConfig { orders, ..GenConfig::default() }, &rules, &h);
        let total: u64 = g.expected.messages.values().sum();
        println!("generated {total} messages for {orders} orders in {:.1} s", t.elapsed().as_secs_f64());

        // 1. Sustained throughput, engine + decode only (outputs discarded).
        let s = embedded::run(&cfg, h.clone(), g.inputs(), Box::new(NullSink), None).expect("run");
        println!(
            "embedded, outputs discarded: {} messages in {:.2} s = {:.0} msg/s ({} partitions); sustained until the last input {:.0} msg/s ({:.2} s, then {:.2} s of end of input: the month's summary close)",
            s.total_in(),
            s.elapsed.as_secs_f64(),
            s.total_in() as f64 / s.elapsed.as_secs_f64(),
            cfg.partitions,
            s.total_in() as f64 / s.input_elapsed.as_secs_f64().max(1e-9),
            s.input_elapsed.as_secs_f64(),
            (s.elapsed - s.input_elapsed).as_secs_f64()
        );
        // 2. With the real file sinks (JSON lines per topic + Parquet).
        let dir = std::env::temp_dir().join(format!("cbec-bench-{}", std::process::id()));
        let sink = FileSink::new(&dir, "cbec.", Some(cfg.parquet_rows)).expect("sink");
        let s = embedded::run(&cfg, h.clone(), g.inputs(), Box::new(sink), None).expect("run");
        let outs: u64 = s.output.values().sum();
        println!(
            "embedded, JSON lines + Parquet: {} messages in {:.2} s = {:.0} msg/s, {outs} output records; sustained until the last input {:.0} msg/s",
            s.total_in(),
            s.elapsed.as_secs_f64(),
            s.total_in() as f64 / s.elapsed.as_secs_f64(),
            s.total_in() as f64 / s.input_elapsed.as_secs_f64().max(1e-9)
        );
        let _ = std::fs::remove_dir_all(&dir);
        drop(g);
    }

    // 3. Latency at fixed offered loads: scans at 50,000/s (and 10,000/s) with the full flow
    //    around them, replayed as one feed in arrival order at the story's own proportions.
    //    The story ramps up (orders and lists before their parcels are scanned), runs steady
    //    while orders come in, and after its last order winds down (the parcels left are
    //    scanned, sealed and depart: scans twice as dense as on average). The offered load
    //    is measured on a window of the steady part: the 6 s of scans at the rate asked that
    //    end with the last order, paced at the window's own proportions, behind a warm-up
    //    (everything before it, at 200,000 msg/s, then 1 s for the engine to finish it);
    //    the percentiles are those of the window's decisions. The whole story, ramp-up and
    //    wind-down included, is also replayed at one rate for every message, as before.
    if phase("latency") {
        let lat_orders = (orders / 2).max(20_000);
        let g = generate(&GenConfig { orders: lat_orders, seed: 7, ..GenConfig::default() }, &rules, &h);
        let feed: Vec<(Topic, i64, Vec<u8>)> =
            cbec_pipeline::generator::merged_sent(&g).into_iter().map(|(t, at, _, p)| (t, at, p)).collect();
        drop(g);
        let is_scan = |m: &&(Topic, i64, Vec<u8>)| m.0 == Topic::Scans;
        // Registrations and standing controls (the day before) come first.
        let prefix = feed.iter().take_while(|(t, ..)| matches!(t, Topic::Goods | Topic::Controls)).count();
        let steady_end = feed.iter().rposition(|(t, ..)| *t == Topic::Orders).map_or(feed.len(), |i| i + 1);
        // `CBEC_BENCH_LRATES=100000` sets the offered loads (scans/s).
        let rates: Vec<f64> = std::env::var("CBEC_BENCH_LRATES")
            .ok()
            .map(|s| s.split(',').filter_map(|r| r.trim().parse().ok()).collect())
            .unwrap_or_else(|| vec![50_000.0, 10_000.0]);
        // Keyed state sized for the story, as a deployment sizes it for its peak
        // (`state_capacity`): no map resizes on the decision path.
        let sized = Config { state_capacity: lat_orders, ..cfg.clone() };
        // The first `warm` messages at 200,000 msg/s, 1 s for the engine to finish them, then
        // the rest at `per_sec`.
        let behind_warm_up = |warm: usize, per_sec: f64| embedded::Pacing {
            warm,
            warm_per_sec: 200_000.0,
            pause: std::time::Duration::from_secs(1),
            per_sec,
        };
        for (i, scan_rate) in rates.iter().copied().enumerate() {
            let want = (scan_rate * 6.0) as usize;
            let (mut start, mut k) = (steady_end, 0);
            while start > prefix && k < want {
                start -= 1;
                k += usize::from(feed[start].0 == Topic::Scans);
            }
            let n = steady_end - start;
            let per_sec = n as f64 * scan_rate / k.max(1) as f64;
            let before = feed[..start].iter().filter(is_scan).count();
            let pacing = behind_warm_up(start, per_sec);
            let part = feed[..steady_end].to_vec();
            let mut s = embedded::run_replay(&sized, h.clone(), part, pacing, Box::new(NullSink)).expect("run");
            // The warm-up's decisions are dropped by position: every latency must be held.
            assert_eq!(s.latencies.stride, 1, "{} decisions: latencies sampled", s.latencies.timed);
            for l in [&mut s.latencies, &mut s.made] {
                l.us.drain(..before.min(l.us.len()));
            }
            let p = |q| us(s.latencies.pct(q));
            let made = |q| us(s.made.pct(q));
            println!(
                "latency at {scan_rate:.0} scans/s, steady ({per_sec:.0} msg/s offered in all for {:.1} s, {n} messages and {k} scans after a warm-up of {start}, state_capacity {lat_orders}): scan→decision p50 {} p99 {} p99.9 {} max {} over the window's {} decisions (made on the engine thread, before the sink wrote them: p50 {} p99 {} p99.9 {})",
                n as f64 / per_sec,
                p(0.5),
                p(0.99),
                p(0.999),
                p(1.0),
                s.latencies.us.len(),
                made(0.5),
                made(0.99),
                made(0.999),
            );
            diag(&s);
            if i == 0 {
                // The whole story at one message rate: its average scan rate is the rate asked.
                let scans = feed[prefix..].iter().filter(is_scan).count().max(1) as f64;
                let n = feed.len() - prefix;
                let per_sec = n as f64 * scan_rate / scans;
                // Registrations and standing controls first, as in the window's warm-up (until
                // the tenth session the leading ones were left out here: most items were unregistered).
                let pacing = behind_warm_up(prefix, per_sec);
                let s = embedded::run_replay(&sized, h.clone(), feed.clone(), pacing, Box::new(NullSink)).expect("run");
                let p = |q| us(s.latencies.pct(q));
                println!(
                    "latency at {scan_rate:.0} scans/s on average over the whole story, ramp-up and wind-down included ({per_sec:.0} msg/s offered in all, {n} messages): scan→decision p50 {} p99 {} p99.9 {} max {} over {} decisions; {:.0} msg/s taken in until the last input",
                    p(0.5),
                    p(0.99),
                    p(0.999),
                    p(1.0),
                    s.latencies.us.len(),
                    n as f64 / s.input_elapsed.saturating_sub(pacing.due(prefix)).as_secs_f64().max(1e-9)
                );
                diag(&s);
            }
        }
        drop(feed);
    }

    // 3b. Latency across a month's close: a four-day story from 30 November, replayed at
    //     10,000 scans/s; when event time passes 4 December 00:00 (month end + the 72 h
    //     grace) every list that exited in November is summarized at once, while scans keep
    //     coming. The worst decision latencies show whether that work stops the decisions.
    if phase("close") {
        let n = (orders / 8).max(20_000);
        let gc = GenConfig {
            orders: n,
            seed: 11,
            start: "2026-11-30T12:00:00+08:00".into(),
            duration_s: 4 * 86_400,
            ..GenConfig::default()
        };
        let g = generate(&gc, &rules, &h);
        let scans = g.topics.get(&Topic::Scans).map_or(1, Vec::len) as f64;
        let feed: Vec<(Topic, i64, Vec<u8>)> =
            cbec_pipeline::generator::merged_sent(&g).into_iter().map(|(t, at, _, p)| (t, at, p)).collect();
        drop(g);
        let per_sec = feed.len() as f64 * 10_000.0 / scans;
        let n_msgs = feed.len();
        let sized = Config { state_capacity: n, ..cfg.clone() };
        let s = embedded::run_replay(&sized, h.clone(), feed, embedded::Pacing::steady(per_sec), Box::new(NullSink))
            .expect("run");
        let p = |q| us(s.latencies.pct(q));
        println!(
            "latency across a month's close at 10000 scans/s ({per_sec:.0} msg/s offered, {n_msgs} messages, {} summary declarations): scan→decision p50 {} p99 {} p99.9 {} max {} over {} decisions",
            s.output.get("summaries").copied().unwrap_or(0),
            p(0.5),
            p(0.99),
            p(0.999),
            p(1.0),
            s.latencies.us.len()
        );
        diag(&s);
    }

    // 3c. The engine alone on the latency phase's feed (decoded beforehand, in arrival
    //     order, event time advanced before each entity as the runtime does): its cost per
    //     message against the whole path's capacity (where the time goes).
    if phase("engine") {
        let n = (orders / 4).max(20_000);
        let g = generate(&GenConfig { orders: n, seed: 7, ..GenConfig::default() }, &rules, &h);
        let feed = cbec_pipeline::generator::merged_sent(&g);
        drop(g);
        let mut decoder = cbec_schemas::Decoder::new();
        let mut decoded: Vec<cbec_schemas::Entity> = Vec::with_capacity(feed.len());
        let lead = cfg.max_lead_ms as i64;
        let t = Instant::now();
        for (t, at, _, m) in &feed {
            // What the runtime dead-letters (malformed, or dated ahead of its arrival)
            // never reaches the engine.
            if let cbec_schemas::Decoded::One(Ok(x)) = decoder.decode(*t, m)
                && (lead == 0 || x.event_time().0 <= at + lead)
            {
                decoded.push(x);
            }
        }
        let decode = t.elapsed();
        let msgs = decoded.len();
        drop(feed);
        let mut e = cbec_operators::engine::Engine::new(rules.clone(), h.clone(), cfg.partitions);
        e.reserve(n);
        let mut out = Vec::new();
        let t = Instant::now();
        for (i, x) in decoded.into_iter().enumerate() {
            e.advance(cbec_schemas::EventTime(x.event_time().0 - 1), &mut out);
            e.process(x, &mut out);
            if i % 256 == 255 {
                out.clear();
            }
        }
        let took = t.elapsed();
        println!(
            "engine alone, {n}-order story in arrival order: {msgs} entities in {:.2} s = {:.0} entities/s ({:.2} µs each); decoding them beforehand on one thread: {:.0} msg/s ({:.2} µs each)",
            took.as_secs_f64(),
            msgs as f64 / took.as_secs_f64(),
            took.as_secs_f64() * 1e6 / msgs as f64,
            msgs as f64 / decode.as_secs_f64(),
            decode.as_secs_f64() * 1e6 / msgs as f64
        );
    }

    // 4. State per pending list: lists stored but never collected.
    if phase("state") {
        let n = 100_000;
        let g = generate(&GenConfig { orders: n, missing_waybill: 1.0, seed: 9, ..GenConfig::default() }, &rules, &h);
        let s = embedded::run(&cfg, h.clone(), g.inputs(), Box::new(NullSink), None).expect("run");
        let (d, c, _) = s.state_bytes;
        println!(
            "state per pending list: {:.0} bytes (declare {:.0} + clear {:.0}) over {n} stored, uncollected lists",
            (d + c) as f64 / n as f64,
            d as f64 / n as f64,
            c as f64 / n as f64
        );
    }
    // 4b. A checkpoint's pause on the engine thread: a copy of the whole state (the first
    //     checkpoint; every checkpoint before they were incremental) against a copy of what
    //     changed since the previous checkpoint, as more input arrives.
    if phase("checkpoint") {
        let n = (orders * 3 / 8).max(20_000);
        let g = generate(&GenConfig { orders: n, malformed: 0.0, seed: 5, ..GenConfig::default() }, &rules, &h);
        let feed = cbec_pipeline::generator::merged(&g);
        drop(g);
        let mut e = cbec_operators::engine::Engine::new(rules.clone(), h.clone(), cfg.partitions);
        let mut decoder = cbec_schemas::Decoder::new();
        let mut out = Vec::new();
        let mut feed_to = |e: &mut cbec_operators::engine::Engine, msgs: &[(Topic, String, Vec<u8>)]| {
            for (t, _, m) in msgs {
                if let cbec_schemas::Decoded::One(Ok(x)) = decoder.decode(*t, m) {
                    e.advance(cbec_schemas::EventTime(x.event_time().0 - 1), &mut out);
                    e.process(x, &mut out);
                    out.clear();
                }
            }
        };
        let slices = [10_000usize, 100_000, 400_000];
        let state_end = feed.len() - slices.iter().sum::<usize>();
        feed_to(&mut e, &feed[..state_end]);
        let t = Instant::now();
        let first = e.cut();
        let whole = t.elapsed();
        drop(first);
        let whole_bytes = e.snapshot().len();
        let (orders_held, parcels_held) = e.keys();
        let mut at = state_end;
        let mut deltas = Vec::new();
        for len in slices {
            feed_to(&mut e, &feed[at..at + len]);
            at += len;
            let (changed, held) = e.changed_keys();
            // The pause is the cut; the entries it owes are copied after it, a few per round
            // of input (`Engine::begin_cut`), here at once to time them.
            let t = Instant::now();
            let mut d = e.begin_cut();
            let pause = t.elapsed();
            let t = Instant::now();
            if let Cut::Changes(c) = &mut d {
                e.finish_cut(c);
            }
            let spread = t.elapsed();
            let saved = match &d {
                Cut::Whole(_) => "; so many that the whole state was copied".to_string(),
                Cut::Changes(c) => {
                    format!("; {} MB to save", serde_json::to_vec(c).expect("changes serialize").len() >> 20)
                }
            };
            deltas.push(format!(
                "{:.1} ms (then {:.1} ms of copies spread over the rounds after it) after {len} more messages ({changed} of {held} keys changed{saved})",
                pause.as_secs_f64() * 1e3,
                spread.as_secs_f64() * 1e3
            ));
            drop(d);
        }
        let t = Instant::now();
        let again = e.clone();
        let whole_end = t.elapsed();
        drop(again);
        println!(
            "checkpoint pause on the engine thread, state of {orders_held} orders and {parcels_held} parcels: a copy of the whole state {:.1} ms (at the end {:.1} ms; {} MB to save); a cut of the changes since the previous checkpoint {}",
            whole.as_secs_f64() * 1e3,
            whole_end.as_secs_f64() * 1e3,
            whole_bytes >> 20,
            deltas.join(", ")
        );
    }
    println!("peak RSS: {} MiB", peak_rss_mib());

    // 5. Kafka mode, through a co-located broker.
    let brokers = std::env::var("CBEC_BENCH_BROKERS").ok();
    let korders = (orders / 7).max(20_000);
    if let Some(b) = brokers.as_ref().filter(|_| phase("kafka") || phase("archive")) {
        let g = generate(&GenConfig { orders: korders, seed: 11, ..GenConfig::default() }, &rules, &h);
        let prefix = format!("bench{}.", std::process::id());
        let mut c = Config {
            brokers: b.clone(),
            output_prefix: prefix.clone(),
            group_id: format!("{prefix}g"),
            ..Config::default()
        };
        c.checkpoint_dir = std::env::temp_dir().join(format!("{prefix}cp")).display().to_string();
        // `CBEC_BENCH_STORE=kafka`: checkpoints in the group's topic instead of a directory.
        if std::env::var("CBEC_BENCH_STORE").is_ok_and(|s| s == "kafka") {
            c.checkpoint_store = cbec_pipeline::config::StoreKind::Kafka;
        }
        for t in Topic::ALL {
            c.input_topics.insert(t.short().into(), format!("{prefix}{}", t.short()));
        }
        // `CBEC_BENCH_STAGES=N`: the engine stage, and N summarize instances (threads of this
        // process, so on the same cores) reading `<group>.exited`.
        let stages: usize = std::env::var("CBEC_BENCH_STAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
        if stages > 0 {
            c.stage = cbec_pipeline::config::Stage::Engine;
        }
        let t = Instant::now();
        let sent = cbec_pipeline::kafka::produce_story(b, &c, &g, 0, false).expect("produce");
        let produce_s = t.elapsed().as_secs_f64();
        let instances: Vec<_> = (0..stages)
            .map(|_| {
                let ci = Config { stage: cbec_pipeline::config::Stage::Summarize, ..c.clone() };
                std::thread::spawn(move || {
                    cbec_pipeline::stage::run_summarize(&ci, true, None).expect("summarize instance")
                })
            })
            .collect();
        let t = Instant::now();
        let mut s = cbec_pipeline::kafka::run(&c, h.clone(), true, None).expect("kafka run");
        if stages > 0 {
            let engine_s = s.elapsed.as_secs_f64();
            for i in instances {
                let r = i.join().expect("instance");
                for (k, v) in r.output {
                    *s.output.entry(k).or_default() += v;
                }
            }
            println!(
                "  stages: engine stage {engine_s:.2} s, {stages} summarize instance(s) done {:.2} s after it started",
                t.elapsed().as_secs_f64()
            );
        }
        // What a standby taking over would pay: loading the last checkpoint.
        let t = Instant::now();
        let (store, place) = cbec_pipeline::kafka::checkpoint_store(&c).expect("store");
        let cp = store.load().expect("load").expect("a checkpoint");
        let bytes = cp.engine.len()
            + cp.summarize.len()
            + cp.changes.iter().map(|x| x.engine.len() + x.summarize.len()).sum::<usize>();
        println!(
            "  loading the last checkpoint ({:.0} MB, {} changes after the whole one) back from {place}: {:.2} s",
            bytes as f64 / 1e6,
            cp.changes.len(),
            t.elapsed().as_secs_f64()
        );
        let t = Instant::now();
        let whole = cbec_pipeline::checkpoint::StateSave::Whole { engine: &cp.engine, summarize: &cp.summarize };
        let saved = store.save(&cp.offsets, whole).expect("save");
        println!(
            "  saving a whole checkpoint of that state ({:.0} MB) to {place}: {:.2} s",
            saved as f64 / 1e6,
            t.elapsed().as_secs_f64()
        );
        drop((cp, store));
        // The run's checkpoints (hundreds of MB each run) are not kept.
        let _ = std::fs::remove_dir_all(&c.checkpoint_dir);
        delete_topic(b, &cbec_pipeline::kafka_store::topic(&c));
        if stages > 0 && c.checkpoint_store == cbec_pipeline::config::StoreKind::Kafka {
            for p in 0..c.exited_partitions as i32 {
                delete_topic(b, &cbec_pipeline::stage::part_store_topic(&c, p));
            }
        }
        println!(
            "kafka ({b}, checkpoints in {}{}): produced {sent} in {produce_s:.1} s ({:.0} msg/s); pipeline consumed {} in {:.2} s incl. 2 s idle detection = {:.0} msg/s; {} output records, {} released early by the sequencer bound; {} checkpoints, longest engine pause for one {:.0} ms",
            if c.checkpoint_store == cbec_pipeline::config::StoreKind::Kafka {
                "the group's topic"
            } else {
                "a directory"
            },
            if stages > 0 { format!(", summarize in {stages} instance(s)") } else { String::new() },
            sent as f64 / produce_s,
            s.total_in(),
            s.elapsed.as_secs_f64(),
            s.total_in() as f64 / (s.elapsed.as_secs_f64() - 2.0).max(0.1),
            s.output.values().sum::<u64>(),
            s.forced,
            s.checkpoints,
            s.checkpoint_pause.as_secs_f64() * 1000.0
        );
        let e = embedded::run(&cfg, h.clone(), g.inputs(), Box::new(NullSink), None).expect("run");
        println!(
            "  the embedded run of the same story: {} output records (the Kafka run must match)",
            e.output.values().sum::<u64>()
        );
        // The analysts' tables from those output topics: can the archiver keep up?
        if phase("archive") {
            let out = std::env::temp_dir().join(format!("{prefix}archive"));
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let t = Instant::now();
            let a = cbec_pipeline::archive::run(&c, &out, true, stop).expect("archive");
            let secs = t.elapsed().as_secs_f64();
            let n: u64 = a.records.values().sum::<u64>() + a.duplicates;
            println!(
                "archive: cbec archive of the output topics ({} partitions each, chunks of {} rows): {n} records read, {} written into {} Parquet files in {secs:.2} s incl. 1 s idle detection = {:.0} records/s",
                c.partitions,
                c.parquet_rows,
                a.records.values().sum::<u64>(),
                a.files,
                n as f64 / (secs - 1.0).max(0.1)
            );
            let _ = std::fs::remove_dir_all(&out);
        }
    }

    // 6. Scan → decision latency through the broker at fixed offered loads.
    if let Some(b) = brokers.as_ref().filter(|_| phase("kafka-latency")) {
        let g = generate(&GenConfig { orders: korders, seed: 13, ..GenConfig::default() }, &rules, &h);
        let scans = g.topics.get(&Topic::Scans).map_or(1, Vec::len) as f64;
        let feed = cbec_pipeline::generator::merged(&g);
        let all = feed.len() as f64;
        drop(g);
        let head = feed.iter().take_while(|(t, ..)| matches!(t, Topic::Goods | Topic::Controls)).count();
        // `CBEC_BENCH_KRATES=5000` measures only some of the offered loads (scans/s).
        let rates: Vec<f64> = std::env::var("CBEC_BENCH_KRATES")
            .ok()
            .map(|s| s.split(',').filter_map(|r| r.trim().parse().ok()).collect())
            .unwrap_or_else(|| vec![50_000.0, 5_000.0]);
        for scan_rate in rates {
            let per_sec = all * scan_rate / scans;
            let n = ((per_sec * 6.0) as usize).min(feed.len() - head);
            let pfx = format!("klat{}r{scan_rate}.", std::process::id());
            let r = cbec_benches::kafka_latency::measure(b, h.clone(), &feed[..head + n], per_sec, &pfx);
            let p = |q| us(r.pct(q));
            println!(
                "kafka latency at {scan_rate:.0} scans/s ({per_sec:.0} msg/s asked, {:.0} msg/s offered, {} messages, {} scans): scan→decision p50 {} p99 {} p99.9 {} max {} over {} decisions",
                r.offered_per_sec,
                r.messages,
                r.scans,
                p(0.5),
                p(0.99),
                p(0.999),
                p(1.0),
                r.decisions
            );
            println!(
                "  of which inside cbec (consumer read → decision to the producer): p50 {} p99 {}; {} checkpoints, longest engine pause for one {:.0} ms",
                us(r.inside_us.0),
                us(r.inside_us.1),
                r.checkpoints.0,
                r.checkpoints.1.as_secs_f64() * 1e3
            );
        }
        println!(
            "peak RSS after the Kafka phases: {} MiB (state per pending list is the engine's, as above)",
            peak_rss_mib()
        );
    }
}

/// Deletes a topic of the bench's (its checkpoint topic keeps what it holds until deleted).
fn delete_topic(brokers: &str, topic: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let Ok(admin) =
        rdkafka::ClientConfig::new().set("bootstrap.servers", brokers).create::<AdminClient<DefaultClientContext>>()
    else {
        return;
    };
    if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
        let _ = rt.block_on(admin.delete_topics(&[topic], &AdminOptions::new()));
    }
}
