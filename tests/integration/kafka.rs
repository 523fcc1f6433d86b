//! The Kafka mode against a real broker (`CBEC_TEST_BROKERS`): produce a story with rdkafka,
//! run `cbec run --brokers`, consume every output topic, and compare with the embedded run
//! of the same story — uninterrupted, and killed with SIGKILL at several points.

use crate::support::*;
use cbec_pipeline::config::{Config, Stage, StoreKind};
use cbec_pipeline::generator::Generated;
use cbec_pipeline::kafka::produce_story;
use cbec_pipeline::record::OUTPUTS;
use cbec_schemas::Topic;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn brokers() -> Option<String> {
    match std::env::var("CBEC_TEST_BROKERS") {
        Ok(b) if !b.is_empty() => Some(b),
        _ => {
            eprintln!(
                "SKIPPED: CBEC_TEST_BROKERS is not set; the Kafka tests need a broker (scripts/test.sh starts one)"
            );
            None
        }
    }
}

fn config(brokers: &str, prefix: &str, dir: &Path) -> Config {
    let mut c = Config {
        brokers: brokers.into(),
        output_prefix: prefix.into(),
        group_id: format!("{prefix}group"),
        checkpoint_interval_ms: 300,
        // A standby takes over after 2.5 s of the active process's silence (short for the
        // tests, long enough that a busy test machine does not end a live session).
        lease_session_ms: 2500,
        // A small sequencer bound (8 × this): reading the partitions out of step in event
        // time would overflow it and release items early, out of canonical order.
        queue_capacity: 32,
        ..Config::default()
    };
    c.checkpoint_dir = dir.join("checkpoints").display().to_string();
    for t in Topic::ALL {
        c.input_topics.insert(t.short().into(), format!("{prefix}{}", t.short()));
    }
    c
}

fn write_config(c: &Config, dir: &Path) -> std::path::PathBuf {
    let p = dir.join("cbec.toml");
    std::fs::write(&p, toml::to_string(c).unwrap()).unwrap();
    p
}

/// `cbec run` with this configuration, its standard output discarded.
fn command(cfg_path: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(cbec_bin());
    c.arg("run");
    // No metrics endpoint unless `extra` asks for one.
    if !extra.contains(&"--metrics-addr") {
        c.args(["--metrics-addr", ""]);
    }
    c.arg("--config")
        .arg(cfg_path)
        .args(extra)
        .env("CBEC_HS_FILE", shared().join("data/hs/harmonized-system.csv"))
        .stdout(Stdio::null());
    c
}

fn spawn(cfg_path: &Path, extra: &[&str]) -> Child {
    command(cfg_path, extra).spawn().expect("spawn cbec")
}

/// Every record of every output topic: (topic short name, id, JSON).
fn consume_outputs(c: &Config) -> Vec<(String, String, Vec<u8>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &c.brokers)
        .set("group.id", format!("{}reader", c.output_prefix))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    let mut ends: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for t in OUTPUTS {
        let name = c.output_topic(t);
        let md = consumer.fetch_metadata(Some(&name), Duration::from_secs(10)).unwrap();
        for p in md.topics()[0].partitions() {
            // A partition just created may refuse a moment longer (NotLeaderForPartition).
            let deadline = Instant::now() + Duration::from_secs(30);
            let high = loop {
                match consumer.fetch_watermarks(&name, p.id(), Duration::from_secs(10)) {
                    Ok((_, high)) => break high,
                    Err(e) => assert!(Instant::now() < deadline, "watermarks of {name} {}: {e}", p.id()),
                }
                std::thread::sleep(Duration::from_millis(200));
            };
            if high > 0 {
                ends.insert((name.clone(), p.id()), high);
                tpl.add_partition_offset(&name, p.id(), Offset::Beginning).unwrap();
            }
        }
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let mut done: BTreeMap<(String, i32), bool> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while done.len() < ends.len() {
        assert!(Instant::now() < deadline, "timed out reading outputs");
        let Some(m) = consumer.poll(Duration::from_millis(200)) else { continue };
        let m = m.unwrap();
        let short = m.topic().strip_prefix(&c.output_prefix).unwrap().to_string();
        let payload = m.payload().unwrap().to_vec();
        let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        let id = match short.as_str() {
            "declared" => v["invtNo"].as_str().unwrap().to_string(),
            "summaries" => v["summaryId"].as_str().unwrap().to_string(),
            "dlq" => format!(
                "{}/{}/{}/{}",
                v["sourceTopic"].as_str().unwrap(),
                v["partition"],
                v["offset"],
                v["entityIndex"].as_u64().unwrap_or(0)
            ),
            _ => v["id"].as_str().unwrap().to_string(),
        };
        out.push((short, id, payload));
        let k = (m.topic().to_string(), m.partition());
        if m.offset() + 1 >= ends[&k] {
            done.insert(k, true);
        }
    }
    out
}

/// Records by identity, and dead letters as (source topic, code, payload).
type Comparable = (BTreeMap<(String, String), String>, Vec<(String, String, String)>);

/// Dead letters name their Kafka partition and offset; embedded ones name the file
/// position. Compare them by source topic and payload instead.
fn comparable(m: BTreeMap<(String, String), String>) -> Comparable {
    let mut dead = Vec::new();
    let rest = m
        .into_iter()
        .filter(|((t, _), json)| {
            if t == "dlq" {
                let v: serde_json::Value = serde_json::from_str(json).unwrap();
                dead.push((
                    v["sourceTopic"].as_str().unwrap().split('.').next_back().unwrap().to_string(),
                    v["code"].to_string(),
                    v["payload"].to_string(),
                ));
                false
            } else {
                true
            }
        })
        .collect();
    dead.sort();
    (rest, dead)
}

fn embedded_expected(g: &cbec_pipeline::generator::Generated) -> Comparable {
    let (records, _) = run_embedded(g, 4);
    comparable(record_map(&records))
}

/// Asserts that the output topics, de-duplicated by identity, hold what the embedded run of
/// the same story gives, dead letters included (`after`: what the Kafka run went through);
/// returns them.
fn assert_equals_embedded(c: &Config, g: &Generated, after: &str) -> Comparable {
    let (got, want) = (comparable(by_identity(consume_outputs(c))), embedded_expected(g));
    // Per topic: records missing, extra, different.
    let mut diff: BTreeMap<&str, [usize; 3]> = BTreeMap::new();
    for (k, v) in &want.0 {
        match got.0.get(k) {
            None => diff.entry(&k.0).or_default()[0] += 1,
            Some(x) if x != v => diff.entry(&k.0).or_default()[2] += 1,
            _ => {}
        }
    }
    for k in got.0.keys().filter(|k| !want.0.contains_key(*k)) {
        diff.entry(&k.0).or_default()[1] += 1;
    }
    assert!(
        got.0 == want.0,
        "{after}, the outputs de-duplicated by identity must equal the embedded run ({} vs {} records; per topic [missing, extra, different]: {diff:?})",
        got.0.len(),
        want.0.len()
    );
    assert_eq!(got.1, want.1, "dead letters differ");
    got
}

fn unique_prefix(tag: &str) -> String {
    format!("t{}{}{}.", tag, std::process::id(), cbec_schemas::time::wall_clock().0 % 1_000_000_000)
}

#[test]
fn kafka_mode_matches_the_embedded_run() {
    let Some(b) = brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let c = config(&b, &unique_prefix("a"), dir.path());
    let g = story(1500, 31);
    produce_story(&b, &c, &g, 0, false).unwrap();
    let status = spawn(&write_config(&c, dir.path()), &["--exit-when-idle"]).wait().unwrap();
    assert!(status.success());
    let got = assert_equals_embedded(&c, &g, "in one uninterrupted run");
    assert_eq!(got.1.len() as u64, g.expected.malformed);
    let topics: std::collections::BTreeSet<&String> = got.1.iter().map(|d| &d.0).collect();
    assert_eq!(topics.len(), 10, "a malformed message on every input topic ends in the DLQ: {topics:?}");
    // Dated a century after their Kafka timestamps.
    let ahead = got.1.iter().filter(|d| d.1 == "\"future_time\"").count();
    assert!(ahead > 0 && ahead < got.1.len(), "{ahead} of {} dead letters future_time", got.1.len());
}

/// A summary declaration covering 200,000 lists (4.6 MB of JSON, more than 2 MB after lz4:
/// past the 1 MB librdkafka and the broker take by default) reaches the summaries topic
/// whole: cbec creates the topic with room for it and its producer allows it. A summaries
/// topic created before with the broker's default limit is warned about.
#[test]
fn a_summary_declaration_of_200000_lists_is_delivered_whole() {
    use cbec_pipeline::kafka::{KafkaSink, ensure_topics, record_limit_warning};
    use cbec_pipeline::record::Record;
    use cbec_pipeline::sink::Sink;
    use cbec_schemas::outputs::{Summary, SummaryItem};
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let Some(b) = brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique_prefix("big");
    let c = config(&b, &prefix, dir.path());
    ensure_topics(&c).unwrap();
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", &b).create().unwrap();
    assert_eq!(record_limit_warning(&admin, &c.output_topic("summaries")).unwrap(), None);
    // invtNos whose serials look random, as the keyed hash makes them (lz4 cannot shrink
    // them to under a megabyte).
    let invt_nos: Vec<String> = (0..200_000u64)
        .map(|i| format!("51412026E{:011}", i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % 100_000_000_000))
        .collect();
    let item = SummaryItem {
        gnum: 1,
        gcode: "8517130000".into(),
        unit: "011".into(),
        currency: "142".into(),
        country: "502".into(),
        qty: cbec_schemas::Dec::ZERO,
        qty1: cbec_schemas::Dec::ZERO,
        total_price: cbec_schemas::Dec::ZERO,
        list_count: 200_000,
    };
    let summary = Summary {
        summary_id: "202611-EBC00001-502-5141-4".into(),
        period: 202611,
        ebc_code: "EBC00001".into(),
        owner_code: String::new(),
        country: "502".into(),
        port_code: "5141".into(),
        traf_mode: "4".into(),
        list_count: 200_000,
        total_price: cbec_schemas::Dec::ZERO,
        items: vec![item],
        invt_nos,
        withdrawal: false,
    };
    let record = Record::Summary(summary);
    let json = record.to_json();
    assert!(json.len() > 4_000_000, "{} bytes", json.len());
    let mut sink = KafkaSink::new(&c).unwrap();
    sink.write(&record).unwrap();
    sink.flush().unwrap();
    let got = consume_outputs(&c);
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].0.as_str(), got[0].2 == json), ("summaries", true));
    // A topic created with the broker's defaults.
    let other = format!("{prefix}other.summaries");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let created = rt
        .block_on(admin.create_topics(&[NewTopic::new(&other, 1, TopicReplication::Fixed(1))], &AdminOptions::new()))
        .unwrap();
    assert!(created.iter().all(Result::is_ok), "{created:?}");
    // (Its configuration reads back once the topic is ready.)
    let deadline = Instant::now() + Duration::from_secs(30);
    let warning = loop {
        if let Ok(Some(w)) = record_limit_warning(&admin, &other) {
            break w;
        }
        assert!(Instant::now() < deadline, "no warning for {other}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(warning.contains("max.message.bytes=67108864"), "{warning}");
}

/// The messages of `g` that arrive in the `k`-th of `n` equal spans of its arrival times.
fn part(g: &Generated, k: usize, n: usize) -> Generated {
    let times = || g.arrival.values().flatten().copied();
    let (lo, hi) = (times().min().unwrap(), times().max().unwrap() + 1);
    let span = |k: usize| lo + (hi - lo) * k as i64 / n as i64;
    arriving(g, span(k), span(k + 1))
}

/// The messages of `g` arriving in `from..to` (ms).
fn arriving(g: &Generated, from: i64, to: i64) -> Generated {
    let mut p = Generated { topics: BTreeMap::new(), arrival: BTreeMap::new(), expected: Default::default() };
    for (t, msgs) in &g.topics {
        let at = &g.arrival[t];
        let keep: Vec<usize> = (0..msgs.len()).filter(|i| (from..to).contains(&at[*i])).collect();
        p.topics.insert(*t, keep.iter().map(|i| msgs[*i].clone()).collect());
        p.arrival.insert(*t, keep.iter().map(|i| at[*i]).collect());
    }
    p
}

/// The messages of `g` in the `k`-th of `n` shares of equal count, by arrival time.
fn share(g: &Generated, k: usize, n: usize) -> Generated {
    let mut times: Vec<i64> = g.arrival.values().flatten().copied().collect();
    times.sort_unstable();
    let cut = |k: usize| if k >= n { i64::MAX } else { times[times.len() * k / n] };
    let (from, to) = (cut(k), cut(k + 1));
    let mut p = Generated { topics: BTreeMap::new(), arrival: BTreeMap::new(), expected: Default::default() };
    for (t, msgs) in &g.topics {
        let at = &g.arrival[t];
        let keep: Vec<usize> = (0..msgs.len()).filter(|i| (from..to).contains(&at[*i])).collect();
        p.topics.insert(*t, keep.iter().map(|i| msgs[*i].clone()).collect());
        p.arrival.insert(*t, keep.iter().map(|i| at[*i]).collect());
    }
    p
}

/// High watermarks of every input partition.
fn input_highs(c: &Config) -> BTreeMap<(String, i32), i64> {
    let reader: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &c.brokers).create().unwrap();
    let mut highs = BTreeMap::new();
    for t in Topic::ALL {
        let topic = c.input_topic(t);
        let md = reader.fetch_metadata(Some(&topic), Duration::from_secs(10)).unwrap();
        for p in md.topics()[0].partitions() {
            let (_, high) = reader.fetch_watermarks(&topic, p.id(), Duration::from_secs(10)).unwrap();
            highs.insert((topic.clone(), p.id()), high);
        }
    }
    highs
}

/// Deletes the first half of what a partition received since `before` (one with at least
/// four new messages, as the topic's retention would); returns (topic, partition, the
/// first offset deleted, the first kept).
fn delete_half_of_the_new(c: &Config, before: &BTreeMap<(String, i32), i64>) -> (String, i32, i64, i64) {
    let after = input_highs(c);
    let ((topic, p), (from, grew)) = after
        .iter()
        .map(|(k, high)| (k.clone(), (before[k], high - before[k])))
        .find(|(_, (_, grew))| *grew >= 4)
        .expect("a partition with four new messages");
    let to = from + grew / 2;
    delete_before(&c.brokers, &topic, p, to);
    (topic, p, from, to)
}

/// Deletes the records of partition `p` of `topic` before offset `to`.
fn delete_before(brokers: &str, topic: &str, p: i32, to: i64) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, p, Offset::Offset(to)).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let res = rt.block_on(admin.delete_records(&tpl, &AdminOptions::new())).unwrap();
    assert_eq!(res.elements()[0].offset(), Offset::Offset(to), "{res:?}");
}

/// The dead letters among output records (as [`consume_outputs`] reads them), as JSON.
fn dead_letters(outputs: &[(String, String, Vec<u8>)]) -> Vec<serde_json::Value> {
    outputs.iter().filter(|(t, _, _)| t == "dlq").map(|(_, _, json)| serde_json::from_slice(json).unwrap()).collect()
}

/// Input the topic deleted (its retention) before cbec read it is not skipped silently: a
/// dead letter `deleted_unread` names each range deleted — while the process ran behind
/// (stopped with SIGSTOP: its fetch position found out of range) and while it was not
/// running (found at start, below its checkpoint's offsets) — and what follows is read.
#[test]
fn input_deleted_before_it_was_read_is_dead_lettered() {
    let Some(b) = brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&b, &unique_prefix("del"), dir.path());
    // Stopped for a few seconds, the process keeps its lease.
    c.lease_session_ms = 30_000;
    let g = story(1500, 59);
    let cfg = write_config(&c, dir.path());
    produce_story(&b, &c, &share(&g, 0, 3), 0, false).unwrap();
    let log = dir.path().join("cbec.log");
    let said = || std::fs::read_to_string(&log).unwrap_or_default();
    let mut child =
        command(&cfg, &[]).stderr(Stdio::from(std::fs::File::create(&log).unwrap())).spawn().expect("spawn cbec");
    wait_for(Duration::from_secs(60), "the first share read", said, || committed_to_the_end(&c));
    let signal =
        |sig: &str| assert!(Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap().success());
    signal("-STOP");
    // Its pending fetch comes back empty meanwhile: the next one asks for what is deleted.
    std::thread::sleep(Duration::from_millis(1500));
    let before = input_highs(&c);
    produce_story(&b, &c, &share(&g, 1, 3), 0, false).unwrap();
    let running = delete_half_of_the_new(&c, &before);
    signal("-CONT");
    wait_for(Duration::from_secs(60), "the second share read past the deleted offsets", said, || {
        committed_to_the_end(&c)
    });
    signal("-TERM");
    assert!(wait_at_most(&mut child, Duration::from_secs(60)).success(), "{}", said());
    let before = input_highs(&c);
    produce_story(&b, &c, &share(&g, 2, 3), 0, false).unwrap();
    let stopped = delete_half_of_the_new(&c, &before);
    let out = command(&cfg, &["--exit-when-idle"]).stderr(Stdio::piped()).output().unwrap();
    let said_last = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{said_last}");
    let mut deleted: Vec<(String, i32, i64, String)> = dead_letters(&consume_outputs(&c))
        .into_iter()
        .filter(|v| v["code"] == "deleted_unread")
        .map(|v| {
            let at = |k: &str| v[k].as_i64().unwrap();
            (v["sourceTopic"].as_str().unwrap().into(), at("partition") as i32, at("offset"), v["reason"].to_string())
        })
        .collect();
    deleted.sort();
    deleted.dedup();
    let want = |(topic, p, from, to): &(String, i32, i64, i64)| {
        (
            topic.clone(),
            *p,
            *from,
            format!(
                "\"offsets {from}..{to} ({} offsets) of {topic} partition {p} were deleted (the topic's retention) before cbec read them\"",
                to - from
            ),
        )
    };
    let mut expected = vec![want(&running), want(&stopped)];
    expected.sort();
    assert_eq!(deleted, expected, "{}\n{said_last}", said());
}

/// The input topics cbec creates stamp records with the broker's clock (LogAppendTime), and
/// that bounds event times (`max_lead_ms`): a producer whose clock runs a day behind does
/// not make its messages look dated ahead (its scan of a minute ago is decided), while a
/// scan dated a day after the broker's clock is dead-lettered as `future_time`.
#[test]
fn event_times_are_bounded_by_the_brokers_clock_not_the_producers() {
    use rdkafka::message::Timestamp;
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    let Some(b) = brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let c = config(&b, &unique_prefix("clk"), dir.path());
    cbec_pipeline::kafka::ensure_topics(&c).unwrap();
    let now = cbec_schemas::time::wall_clock();
    let day = 86_400_000;
    let scans = c.input_topic(Topic::Scans);
    let producer: ThreadedProducer<DefaultProducerContext> =
        ClientConfig::new().set("bootstrap.servers", &b).create().unwrap();
    for (id, t) in [("S-NOW", now.plus_ms(-60_000)), ("S-AHEAD", now.plus_ms(day))] {
        let scan = serde_json::json!({"logisticsNo": "LP1", "lineId": "L1", "scanId": id, "scanTime": t.to_rfc3339(), "xray": null});
        let payload = scan.to_string();
        // The producer's clock, a day behind.
        let record = BaseRecord::to(&scans).key("LP1").payload(&payload).timestamp(now.0 - day);
        producer.send(record).map_err(|(e, _)| e).unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    let reader: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", &b).set("group.id", "clk-check").create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..c.partitions as i32 {
        tpl.add_partition_offset(&scans, p, Offset::Beginning).unwrap();
    }
    reader.assign(&tpl).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let stamped = loop {
        assert!(Instant::now() < deadline, "no scan read back");
        if let Some(Ok(m)) = reader.poll(Duration::from_millis(200)) {
            break m.timestamp();
        }
    };
    assert!(matches!(stamped, Timestamp::LogAppendTime(t) if t >= now.0 - 60_000), "{stamped:?}");
    let cfg = write_config(&c, dir.path());
    assert!(spawn(&cfg, &["--exit-when-idle"]).wait().unwrap().success());
    let out = consume_outputs(&c);
    assert!(
        out.iter().any(|(t, id, _)| t == "sorting" && id.starts_with("L1/S-NOW/LP1/")),
        "the scan of a minute ago is decided"
    );
    let dead = dead_letters(&out);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["code"], "future_time");
    assert!(dead[0]["payload"].as_str().unwrap().contains("S-AHEAD"), "{}", dead[0]);
}

/// Gives `topic` `partitions` partitions (more than it has).
fn grow(brokers: &str, topic: &str, partitions: usize) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let grown = rt.block_on(admin.create_partitions(&[NewPartitions::new(topic, partitions)], &AdminOptions::new()));
    assert!(grown.unwrap().iter().all(Result::is_ok), "{topic} given {partitions} partitions");
}

/// Runs `cbec run` with the configuration file `cfg` (of `c`; stderr in `log`) until its
/// commits reach the end of every input partition, then stops it with SIGTERM (drain,
/// checkpoint, exit 0): what is on the topics is read, and event time is not ended.
fn read_then_stop(cfg: &Path, c: &Config, log: &Path) {
    let said = || std::fs::read_to_string(log).unwrap_or_default();
    let mut child = command(cfg, &[]).stderr(std::fs::File::create(log).unwrap()).spawn().expect("spawn cbec");
    wait_for(Duration::from_secs(60), "the input read", said, || committed_to_the_end(c));
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    assert!(wait_at_most(&mut child, Duration::from_secs(60)).success(), "{}", said());
}

/// An input topic recreated while cbec was stopped (or a broker that lost what it had
/// acknowledged) leaves the checkpoint's offsets past its partitions' ends: the next run
/// says so and reads those partitions from their first offset, and its checkpoints (and
/// the group's commits) follow what it reads there, not the old offsets — which a restart
/// would otherwise take up again, reading the new messages again each time.
#[test]
fn an_input_topic_recreated_while_stopped_is_read_from_its_start_and_said() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let Some(b) = brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let c = config(&b, &unique_prefix("rec"), dir.path());
    let g = story(600, 83);
    let cfg = write_config(&c, dir.path());
    produce_story(&b, &c, &g, 0, false).unwrap();
    read_then_stop(&cfg, &c, &dir.path().join("first.log"));
    // The scans topic deleted and made again (same partitions), with ten scans in it.
    let scans = c.input_topic(Topic::Scans);
    let reader: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &b).create().unwrap();
    let parts = reader.fetch_metadata(Some(&scans), Duration::from_secs(10)).unwrap().topics()[0].partitions().len();
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", &b).create().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(admin.delete_topics(&[&scans], &AdminOptions::new())).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let made = rt
            .block_on(admin.create_topics(
                &[NewTopic::new(&scans, parts as i32, TopicReplication::Fixed(1))],
                &AdminOptions::new(),
            ))
            .unwrap();
        if made.iter().all(Result::is_ok) {
            break;
        }
        assert!(Instant::now() < deadline, "{scans} not made again: {made:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let few = Generated {
        topics: [(Topic::Scans, g.topics[&Topic::Scans][..10].to_vec())].into(),
        arrival: [(Topic::Scans, g.arrival[&Topic::Scans][..10].to_vec())].into(),
        expected: Default::default(),
    };
    produce_story(&b, &c, &few, 0, false).unwrap();
    let out = command(&cfg, &["--exit-when-idle"]).stderr(Stdio::piped()).output().unwrap();
    let second = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{second}");
    assert!(
        second.contains(&format!("warning: {scans} partition ")) && second.contains("is past the partition's end"),
        "{second}"
    );
    // The group's commits (the final checkpoint's offsets) are the new ends.
    let group: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", &b).set("group.id", &c.group_id).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..parts as i32 {
        tpl.add_partition(&scans, p);
    }
    for e in group.committed_offsets(tpl, Duration::from_secs(10)).unwrap().elements() {
        let (_, high) = reader.fetch_watermarks(&scans, e.partition(), Duration::from_secs(10)).unwrap();
        assert_eq!(e.offset(), Offset::Offset(high), "{scans} partition {}: committed at its new end", e.partition());
    }
}

/// `<group_id>.exited` grown from 2 to 3 partitions between two runs of the engine stage:
/// the second run says so and keeps routing each company's exits over the 2 its first run
/// found (pinned in its checkpoint), so a summarize instance builds every declaration form
/// whole, and the outputs equal the embedded run. (Routed over 3, a company's later exits
/// would land in another partition than its open form: two forms, not one.)
#[test]
fn exits_keep_their_partitions_when_the_exits_topic_grows() {
    let Some(b) = brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let c = Config { exited_partitions: 2, ..config(&b, &unique_prefix("eg"), dir.path()) };
    let g = story(1200, 71);
    let stage = |name: &str, stage: Stage| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        write_config(&Config { stage, checkpoint_dir: d.join("checkpoints").display().to_string(), ..c.clone() }, &d)
    };
    let engine = stage("engine", Stage::Engine);
    // Split where half the departures (the exits) have arrived: exits in both runs.
    let mut departures = g.arrival[&Topic::Departures].clone();
    departures.sort();
    let cut = departures[departures.len() / 2];
    produce_story(&b, &c, &arriving(&g, i64::MIN, cut), 0, false).unwrap();
    read_then_stop(&engine, &c, &dir.path().join("engine.log"));
    let topic = c.exited_topic();
    grow(&b, &topic, 3);
    produce_story(&b, &c, &arriving(&g, cut, i64::MAX), 0, false).unwrap();
    let out = command(&engine, &["--exit-when-idle"]).stderr(Stdio::piped()).output().unwrap();
    let second = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{second}");
    assert!(second.contains(&format!("topic {topic} has 3 partitions; exits go to the first 2")), "{second}");
    let summarize = stage("summarize", Stage::Summarize);
    let out = command(&summarize, &["--exit-when-idle"]).stderr(Stdio::piped()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got = assert_equals_embedded(&c, &g, "with the exits topic grown between two engine-stage runs");
    assert!(got.0.keys().any(|(t, _)| t == "summaries"), "summary declarations built");
}

/// Hand-over records of `<group_id>.exited` the topic deleted before any summarize
/// instance read them are dead-lettered (`deleted_unread`), not skipped: their exits are
/// missing from the summaries, and the dead letter says which.
#[test]
fn exits_deleted_before_a_summarize_instance_read_them_are_dead_lettered() {
    let Some(b) = brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&b, &unique_prefix("x"), dir.path());
    c.exited_partitions = 2;
    let g = story(600, 67);
    produce_story(&b, &c, &g, 0, false).unwrap();
    let stage = |name: &str, stage: Stage| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        write_config(&Config { stage, checkpoint_dir: d.join("checkpoints").display().to_string(), ..c.clone() }, &d)
    };
    let engine = stage("engine", Stage::Engine);
    assert!(command(&engine, &["--exit-when-idle"]).status().unwrap().success());
    let topic = c.exited_topic();
    let reader: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &b).create().unwrap();
    let (_, high) = reader.fetch_watermarks(&topic, 0, Duration::from_secs(10)).unwrap();
    assert!(high >= 4, "{high} hand-over records in partition 0");
    let to = high / 2;
    delete_before(&b, &topic, 0, to);
    let summarize = stage("summarize", Stage::Summarize);
    let out = command(&summarize, &["--exit-when-idle"]).stderr(Stdio::piped()).output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{said}");
    let deleted: Vec<serde_json::Value> =
        dead_letters(&consume_outputs(&c)).into_iter().filter(|v| v["code"] == "deleted_unread").collect();
    assert_eq!(deleted.len(), 1, "{deleted:?}\n{said}");
    let d = &deleted[0];
    assert_eq!(
        (d["sourceTopic"].as_str(), d["partition"].as_i64(), d["offset"].as_i64()),
        (Some(topic.as_str()), Some(0), Some(0))
    );
    assert!(d["reason"].as_str().unwrap().starts_with(&format!("offsets 0..{to} ")), "{d}");
}

/// Whether the group's committed offsets reach the high watermark of every partition of
/// every input topic (a partition with no messages counts once anything was committed).
fn committed_to_the_end(c: &Config) -> bool {
    let reader: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", &c.brokers).set("group.id", &c.group_id).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for t in Topic::ALL {
        let topic = c.input_topic(t);
        let Ok(md) = reader.fetch_metadata(Some(&topic), Duration::from_secs(10)) else { return false };
        for p in md.topics()[0].partitions() {
            tpl.add_partition(&topic, p.id());
        }
    }
    let Ok(committed) = reader.committed_offsets(tpl, Duration::from_secs(10)) else { return false };
    let mut any = false;
    let all = committed.elements().iter().all(|e| {
        let Ok((_, high)) = reader.fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(10)) else {
            return false;
        };
        let at = match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        };
        any |= at > 0;
        at >= high
    });
    any && all
}

/// Waits until `done` holds, at most `limit`; panics with `what` and `context()` then.
fn wait_for(limit: Duration, what: &str, context: impl Fn() -> String, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}:\n{}", context());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Partitions added to an input topic while cbec runs are read by the running process: it
/// takes the new partitions in from their beginning and reads on, its state where it is (no
/// checkpoint reloaded: that would pause the decisions for a restart's load). The story's
/// second half, produced after the scans topic grew from 4 to 6 partitions, lands partly
/// in the new ones; the running process's commits reach the end of all six. Once the story
/// is finished, every scan has its one sorting decision and every dead letter is there, as
/// in the embedded run. (Produced while the process reads, the second half is not in
/// canonical order: a partition read to its end does not hold the others back, so the
/// decisions themselves may differ from the embedded run's; README, idle partitions.)
#[test]
fn input_partitions_added_while_running_are_read_by_the_running_process() {
    let Some(b) = brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let c = config(&b, &unique_prefix("grow"), dir.path());
    let g = story(1500, 43);
    let cfg = write_config(&c, dir.path());
    produce_story(&b, &c, &part(&g, 0, 2), 0, false).unwrap();
    let log = dir.path().join("cbec.log");
    let mut child =
        command(&cfg, &[]).stderr(Stdio::from(std::fs::File::create(&log).unwrap())).spawn().expect("spawn cbec");
    let scans = c.input_topic(Topic::Scans);
    let said = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_for(Duration::from_secs(60), "the first half read", said, || committed_to_the_end(&c));
    grow(&b, &scans, 6);
    wait_for(Duration::from_secs(30), "the process to take the new partitions", said, || {
        said().contains(&format!("input partitions added ({scans} 4 → 6)"))
    });
    produce_story(&b, &c, &part(&g, 1, 2), 0, false).unwrap();
    let probe: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &b).create().unwrap();
    for p in [4, 5] {
        let (_, high) = probe.fetch_watermarks(&scans, p, Duration::from_secs(10)).unwrap();
        assert!(high > 0, "partition {p} of {scans} got scans of the second half");
    }
    wait_for(Duration::from_secs(60), "the second half read, the new partitions included", said, || {
        committed_to_the_end(&c)
    });
    assert!(child.try_wait().unwrap().is_none(), "the process reads on: {}", said());
    assert!(!said().contains("restored checkpoint"), "taken in without a reload: {}", said());
    assert!(!said().contains("came on the main queue"), "each partition's messages on its queue: {}", said());
    // SIGTERM: drain, checkpoint, exit 0; then a run to the end of the story (end of time).
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    assert!(wait_at_most(&mut child, Duration::from_secs(60)).success(), "{}", said());
    assert!(spawn(&cfg, &["--exit-when-idle"]).wait().unwrap().success());
    let (got, want) = (comparable(by_identity(consume_outputs(&c))), embedded_expected(&g));
    let decided = |m: &BTreeMap<(String, String), String>| -> Vec<String> {
        m.keys().filter(|(t, _)| t == "sorting").map(|(_, id)| id.clone()).collect()
    };
    assert_eq!(decided(&got.0), decided(&want.0), "one sorting decision for every scan");
    assert_eq!(got.1, want.1, "dead letters differ");
}

/// The story arrives in three parts; after each the pipeline is killed (SIGKILL) while it
/// runs (0–500 ms after its first checkpoint), and the next run restores the last checkpoint — built from incremental changes —
/// and goes on with orders whose lists, waybills and scans span the parts. A checkpoint
/// that missed a change would show as different outputs.
#[test]
fn sigkill_at_several_points_then_restart_gives_the_same_outputs() {
    let Some(b) = brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&b, &unique_prefix("k"), dir.path());
    // Restarted in place with the same identity, the process takes its lease back at once.
    c.instance_id = "k-1".into();
    // Small chunks for the archiver below.
    c.parquet_rows = 64;
    let g = story(4000, 77);
    let cfg = write_config(&c, dir.path());
    let mut kills = 0;
    for (k, wait_ms) in [200u64, 0, 500].into_iter().enumerate() {
        produce_story(&b, &c, &part(&g, k, 3), 0, false).unwrap();
        let before = checkpoint_names(&c);
        let mut child = spawn(&cfg, &[]);
        // Killed once this run saved a checkpoint of its own (however slow its start), and
        // some time after that.
        wait_for(Duration::from_secs(60), "a checkpoint of this run", String::new, || {
            !checkpoint_names(&c).is_subset(&before)
        });
        std::thread::sleep(Duration::from_millis(wait_ms));
        assert!(child.try_wait().unwrap().is_none(), "without --exit-when-idle the pipeline runs until stopped");
        child.kill().unwrap(); // SIGKILL
        kills += 1;
        let _ = child.wait();
    }
    assert_eq!(kills, 3);
    assert!(checkpoint_files(&c) > 0, "the killed runs must leave a checkpoint to restart from");
    let status = spawn(&cfg, &["--exit-when-idle"]).wait().unwrap();
    assert!(status.success());
    assert_equals_embedded(&c, &g, "after three kills and restarts");
    // The analysts' tables from those topics (records replayed after the kills included):
    // the archiver is killed too, once it has written some chunks, and started again.
    let archive = dir.path().join("archive");
    let mut child = archive_command(&cfg, &archive, &[]).spawn().unwrap();
    wait_for(Duration::from_secs(60), "the archiver's first chunks", String::new, || chunk_files(&archive) >= 20);
    child.kill().unwrap(); // SIGKILL
    let _ = child.wait();
    let out = archive_command(&cfg, &archive, &["--exit-when-idle"]).output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    eprintln!("cbec archive, started again: {report}");
    assert!(out.status.success(), "{report} {}", String::from_utf8_lossy(&out.stderr));
    assert!(report.contains("; 0 unreadable") && !report.contains("; 0 files of unfinished chunks"), "{report}");
    assert_tables_equal_embedded(&archive, &g, "archived after the pipeline's and the archiver's kills");
}

/// `cbec archive` of the output topics of `cfg` into `out`.
fn archive_command(cfg: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(cbec_bin());
    c.args(["archive", "--metrics-addr", "", "--config"])
        .arg(cfg)
        .arg("--output")
        .arg(out)
        .args(extra)
        .stdout(Stdio::piped());
    c
}

/// Parquet files of the archiver's chunks under `out`.
fn chunk_files(out: &Path) -> usize {
    let Ok(tables) = std::fs::read_dir(out.join("tables")) else { return 0 };
    let dirs = tables.flatten().flat_map(|t| std::fs::read_dir(t.path()).into_iter().flatten().flatten());
    let files = dirs.flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten());
    files.filter(|f| f.file_name().to_string_lossy().starts_with("part-k-")).count()
}

/// Every row of every table under `data` (`<data>/tables`), as sorted JSON lines.
fn table_rows(data: &Path) -> BTreeMap<&'static str, Vec<String>> {
    use cbec_pipeline::sql::{context, query, render};
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let ctx = context(data, std::sync::Arc::new(hs())).await.unwrap();
        let mut all = BTreeMap::new();
        for t in cbec_schemas::arrow_schema::TABLES {
            let b = query(&ctx, &format!("SELECT * FROM {t}")).await.unwrap();
            let mut rows: Vec<String> = render(&b, "json").unwrap().lines().map(String::from).collect();
            rows.sort();
            all.insert(t, rows);
        }
        all
    })
}

/// Asserts that the tables under `data` hold exactly the rows of the embedded run's tables
/// for the same story, each once (the embedded run writes a record as often as it is made:
/// a scan sent twice gets its decision twice, with one identity).
fn assert_tables_equal_embedded(data: &Path, g: &Generated, after: &str) {
    let embedded = tempfile::tempdir().unwrap();
    let sink = cbec_pipeline::sink::FileSink::new(embedded.path(), "cbec.", Some(500)).unwrap();
    let cfg = Config { partitions: 4, ..Config::default() };
    cbec_pipeline::embedded::run(&cfg, hs(), g.inputs(), Box::new(sink), None).unwrap();
    let (got, mut want) = (table_rows(data), table_rows(embedded.path()));
    let repeated: usize = want.values_mut().map(|rows| (rows.len(), rows.dedup()).0 - rows.len()).sum();
    eprintln!("{repeated} rows of the embedded tables repeat another (a message sent twice)");
    for (t, rows) in &want {
        assert!(!rows.is_empty() || *t == "returns", "the embedded run wrote no {t}");
        let have = &got[t];
        let missing = rows.iter().filter(|r| have.binary_search(r).is_err()).count();
        let extra = have.iter().filter(|r| rows.binary_search(r).is_err()).count();
        assert!(
            have == rows,
            "{after}: table {t} has {} rows, the embedded run's {} ({missing} missing, {extra} extra or repeated)",
            have.len(),
            rows.len()
        );
    }
}

/// A broker of the test's own, started by `scripts/kafka.sh` on port `port` (the settings
/// of the suite's broker), stopped and its data removed when the test ends.
struct OwnBroker {
    port: u16,
}

impl OwnBroker {
    fn script(&self, what: &str) {
        let out = Command::new(repo_root().join("scripts/kafka.sh"))
            .arg(what)
            .env("CBEC_KAFKA_PORT", self.port.to_string())
            .output()
            .expect("scripts/kafka.sh");
        assert!(out.status.success(), "kafka.sh {what}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// A broker on a free port whose next port (its controller's) is free too.
    fn start() -> OwnBroker {
        let port = (0..50)
            .map(|_| free_port())
            .find(|p| *p < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok())
            .expect("two free ports");
        let b = OwnBroker { port };
        b.script("start");
        b
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// For the broker-crash tests: the timing lock and a broker of the test's own; `None`
/// (skipped) without the suite's broker or Apache Kafka in the cache.
fn own_broker() -> Option<(std::sync::MutexGuard<'static, ()>, OwnBroker)> {
    brokers()?;
    if kafka_libs().is_none() {
        eprintln!("SKIPPED: Apache Kafka is not in the cache; scripts/kafka.sh start resolves it");
        return None;
    }
    let timing = timing();
    Some((timing, OwnBroker::start()))
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let _ = Command::new(repo_root().join("scripts/kafka.sh"))
            .arg("stop")
            .env("CBEC_KAFKA_PORT", self.port.to_string())
            .output();
    }
}

/// The broker crashes (SIGKILL of its JVM) while the pipeline is mid-stream, and comes back
/// on its data 2 s later. The running process loses its lease (its session ends), stops at
/// once and starts again as a standby in its place (same process, same arguments): it
/// waits for the brokers, takes the lease back and goes on from its last checkpoint to the
/// end of the story (`--exit-when-idle`), exits 0, and the outputs, de-duplicated by
/// identity, equal the embedded run: nothing lost, nothing different. (The story is on the
/// topics before the process starts, as in the takeover tests.)
#[test]
fn a_broker_crash_mid_stream_loses_nothing() {
    broker_crash("x", false);
}

/// The same with a standby of the group beside the active process (checkpoints in the
/// topic, nothing else shared): whichever of the two the group gives the lease once the
/// broker is back goes on, the other stands by until it is done, and both exit 0 with the
/// embedded run's outputs.
#[test]
fn a_broker_crash_under_an_active_process_and_its_standby_loses_nothing() {
    broker_crash("v", true);
}

fn broker_crash(tag: &str, with_standby: bool) {
    let Some((_timing, broker)) = own_broker() else { return };
    let b = broker.address();
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&b, &unique_prefix(tag), dir.path());
    if with_standby {
        c.checkpoint_store = StoreKind::Kafka;
    }
    let g = story(12000, 67);
    let cfg = write_config(&c, dir.path());
    produce_story(&b, &c, &g, 0, false).unwrap();
    let spawn_logged = |cfg: &Path, log: &Path| {
        command(cfg, &["--exit-when-idle"]).stderr(std::fs::File::create(log).unwrap()).spawn().expect("spawn cbec")
    };
    let text = |log: &Path| std::fs::read_to_string(log).unwrap_or_default();
    let log = dir.path().join("cbec.log");
    let mut child = spawn_logged(&cfg, &log);
    // The standby starts once the first process holds the lease.
    wait_for(Duration::from_secs(60), "the lease", || text(&log), || text(&log).contains("holding the lease"));
    let standby_dir = tempfile::tempdir().unwrap();
    let standby_log = standby_dir.path().join("standby.log");
    let mut standby = with_standby.then(|| {
        let own = Config { checkpoint_dir: standby_dir.path().join("checkpoints").display().to_string(), ..c.clone() };
        spawn_logged(&write_config(&own, standby_dir.path()), &standby_log)
    });
    wait_for(Duration::from_secs(120), "a first checkpoint", || text(&log), || saved(&c));
    if standby.is_some() {
        wait_for(
            Duration::from_secs(60),
            "the standby standing by",
            || text(&standby_log),
            || text(&standby_log).contains("standing by"),
        );
    }
    assert!(child.try_wait().unwrap().is_none(), "the crash must come mid-stream:\n{}", text(&log));
    broker.script("crash");
    std::thread::sleep(Duration::from_secs(2));
    broker.script("resume");
    let status = wait_at_most(&mut child, Duration::from_secs(240));
    let said = text(&log);
    assert!(status.success(), "{status}:\n{said}");
    assert!(said.contains("lost the lease") && said.contains("starting again as a standby"), "{said}");
    if let Some(s) = &mut standby {
        let status = wait_at_most(s, Duration::from_secs(240));
        assert!(status.success(), "the standby: {status}:\n{}", text(&standby_log));
        eprintln!("active:\n{said}\nstandby:\n{}", text(&standby_log));
    } else {
        assert!(said.contains("restored checkpoint"), "{said}");
    }
    assert_equals_embedded(&c, &g, "after a broker crash mid-stream");
}

/// Started while no broker answers (a stack starting up, a broker restarting), `cbec run`
/// says it waits for the brokers instead of failing, and a SIGTERM meanwhile ends it with
/// status 0.
#[test]
fn a_process_started_before_its_brokers_waits_for_them() {
    let Some(_) = brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let nobody = format!("127.0.0.1:{}", free_port());
    let c = config(&nobody, &unique_prefix("w"), dir.path());
    let log = dir.path().join("cbec.log");
    let mut child = command(&write_config(&c, dir.path()), &[])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn cbec");
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_for(Duration::from_secs(30), "the wait said", log_text, || log_text().contains("waiting for the brokers"));
    std::thread::sleep(Duration::from_secs(1));
    assert!(child.try_wait().unwrap().is_none(), "{}", log_text());
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let status = wait_at_most(&mut child, Duration::from_secs(30));
    assert!(status.success() && log_text().contains("stopped while waiting for the brokers"), "{}", log_text());
}

/// The archiver started before the pipeline made its output topics waits for them (it does
/// not take "no partitions" for an empty topic) and a SIGTERM meanwhile ends it with
/// status 0, even told to exit when idle.
#[test]
fn the_archiver_waits_for_the_output_topics() {
    let Some(b) = brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let c = config(&b, &unique_prefix("aw"), dir.path());
    let log = dir.path().join("archive.log");
    let mut child = archive_command(&write_config(&c, dir.path()), &dir.path().join("archive"), &["--exit-when-idle"])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn cbec archive");
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let waiting = format!("waiting for the topic {}", c.output_topic("declared"));
    wait_for(Duration::from_secs(60), "the wait said", log_text, || log_text().contains(&waiting));
    std::thread::sleep(Duration::from_secs(2));
    assert!(child.try_wait().unwrap().is_none(), "{}", log_text());
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let status = wait_at_most(&mut child, Duration::from_secs(30));
    assert!(status.success(), "{}", log_text());
}

/// Receipts `ids` as the pipeline would produce them, to `partition` of `c`'s receipts topic.
/// A receipt numbered `i` (order `ORDER<i>`).
fn receipt(i: u32) -> cbec_schemas::Receipt {
    cbec_schemas::Receipt {
        id: format!("test/{i}").into(),
        invt_no: None,
        order_no: Some(format!("ORDER{i}").into()),
        logistics_no: None,
        return_status: 2,
        return_info: "declared".into(),
        return_time: cbec_schemas::EventTime(1_794_355_200_000 + i64::from(i)),
        control_ids: Vec::new(),
        pay_code: None,
    }
}

fn produce_receipts(c: &Config, partition: i32, ids: std::ops::RangeInclusive<u32>) {
    let p = cbec_pipeline::kafka::producer(&c.brokers, 0, Default::default()).unwrap();
    for i in ids {
        let r = receipt(i);
        let topic = c.output_topic("receipts");
        cbec_pipeline::kafka::send_to(
            &p,
            &topic,
            Some(partition),
            &format!("ORDER{i}"),
            &serde_json::to_vec(&r).unwrap(),
        )
        .unwrap();
    }
    rdkafka::producer::Producer::flush(&p, Duration::from_secs(30)).unwrap();
}

/// Before a checkpoint the Kafka sink hands the checkpoint writer a wait for the
/// deliveries instead of flushing on the sink thread: once the wait returns, every record
/// written before the checkpoint is in its topic (acknowledged by the broker); records
/// written after it neither hold the wait nor are lost.
#[test]
fn the_kafka_sinks_checkpoint_wait_returns_once_what_preceded_it_is_in_the_topic() {
    use cbec_pipeline::record::Record;
    use cbec_pipeline::sink::Sink;
    let Some(b) = brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let c = config(&b, &unique_prefix("durable"), dir.path());
    cbec_pipeline::kafka::ensure_topics(&c).unwrap();
    let topic = c.output_topic("receipts");
    let in_topic = || {
        let reader: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &c.brokers).create().unwrap();
        let md = reader.fetch_metadata(Some(&topic), Duration::from_secs(10)).unwrap();
        let parts: Vec<i32> = md.topics()[0].partitions().iter().map(|p| p.id()).collect();
        parts.iter().map(|p| reader.fetch_watermarks(&topic, *p, Duration::from_secs(10)).unwrap().1).sum::<i64>()
    };
    let mut sink = cbec_pipeline::kafka::KafkaSink::new(&c).unwrap();
    let before = 2_000;
    for i in 0..before {
        sink.write(&Record::Receipt(receipt(i))).unwrap();
    }
    let wait = sink.durable().unwrap().expect("Kafka's durability is a wait");
    for i in before..before + 100 {
        sink.write(&Record::Receipt(receipt(i))).unwrap();
    }
    wait().unwrap();
    let seen = in_topic();
    assert!(seen >= i64::from(before), "{seen} records in {topic} once the wait returned, of {before} before it");
    sink.flush().unwrap();
    assert_eq!(in_topic(), i64::from(before) + 100, "the records after the checkpoint follow");
}

/// A configuration with chunks of 4 rows and `partitions` partitions per topic (the topics
/// created), after receipts 1–10 went to partition 0 of its receipts topic and were archived
/// into `<dir>/archive` (in chunks from offsets 0, 4 and 8).
fn archived_receipts(tag: &str, partitions: usize) -> (Config, tempfile::TempDir, std::path::PathBuf) {
    let b = brokers().expect("a broker");
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&b, &unique_prefix(tag), dir.path());
    c.parquet_rows = 4;
    c.partitions = partitions;
    cbec_pipeline::kafka::ensure_topics(&c).unwrap();
    let out = dir.path().join("archive");
    produce_receipts(&c, 0, 1..=10);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let first = cbec_pipeline::archive::run(&c, &out, true, stop).unwrap();
    assert_eq!((first.records.get("receipts"), first.files, first.duplicates), (Some(&10), 3, 0), "{first:?}");
    (c, dir, out)
}

/// The ids of the rows of the receipts table under `out`, each once, and the row count.
fn receipt_ids(out: &Path) -> (BTreeSet<String>, usize) {
    let rows = &table_rows(out)["receipts"];
    let id = |r: &String| serde_json::from_str::<serde_json::Value>(r).unwrap()["id"].as_str().unwrap().to_string();
    (rows.iter().map(id).collect(), rows.len())
}

/// The archiver across its own restarts and a topic's growth. Receipts 1–10 are archived in
/// chunks of 4 rows; then the pipeline "replays" 5–10 (as after a crash before its
/// checkpoint) and goes on with 11 and 12. The archiver, started again, writes its last
/// chunk (9, 10) again and must know 5–8 from the chunks before it: it reads them back
/// into its de-duplication window without writing them. While it runs, the topic gains a
/// partition, where receipts 13–15 land: it reads them without a restart. The table holds
/// each receipt once, and the metrics endpoint's counters say what the report says.
#[test]
fn the_archiver_writes_a_replay_once_across_its_restarts_and_reads_added_partitions() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let Some(b) = brokers() else { return };
    let (c, _dir, out) = archived_receipts("ar", 2);
    produce_receipts(&c, 0, 5..=12);
    let stop = Arc::new(AtomicBool::new(false));
    let recorder = cbec_pipeline::metrics::recorder().unwrap();
    let exposition = recorder.handle();
    let archiver = {
        let (c, out, stop) = (c.clone(), out.clone(), stop.clone());
        std::thread::spawn(move || {
            metrics::with_local_recorder(&recorder, || cbec_pipeline::archive::run(&c, &out, false, stop))
        })
    };
    let sample = |text: &str, name: &str| -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    };
    let records = "cbec_archive_records_total{topic=\"receipts\"}";
    // Once it has written records, the archiver has looked up the partitions: the topic grows.
    wait_for(Duration::from_secs(60), "the archiver's first records", String::new, || {
        sample(&exposition.render(), records).is_some_and(|n| n >= 2.0)
    });
    let topic = c.output_topic("receipts");
    grow(&b, &topic, 3);
    produce_receipts(&c, 2, 13..=15);
    let chunk_of_p2 = || {
        let days = std::fs::read_dir(out.join("tables/receipts")).into_iter().flatten().flatten();
        let files = days.flat_map(|d| std::fs::read_dir(d.path())).flatten().flatten();
        files.filter(|f| f.file_name().to_string_lossy().contains("-p2-")).count() > 0
    };
    wait_for(Duration::from_secs(60), "a chunk of the added partition", String::new, chunk_of_p2);
    stop.store(true, Ordering::Relaxed);
    let second = archiver.join().unwrap().unwrap();
    eprintln!("{}", cbec_pipeline::archive::render(&second));
    // 9 and 10 again (their chunk redone), 11, 12, and 13–15 from the added partition.
    assert_eq!((second.records.get("receipts"), second.duplicates, second.redone), (Some(&7), 6, 1), "{second:?}");
    let want: BTreeSet<String> = (1..=15).map(|i| format!("test/{i}")).collect();
    assert_eq!(receipt_ids(&out), (want, 15), "each receipt once");
    let text = exposition.render();
    let sample = |name: &str| sample(&text, name);
    assert_eq!(sample(records), Some(7.0), "{text}");
    assert_eq!(sample("cbec_archive_duplicates_total{topic=\"receipts\"}"), Some(6.0), "{text}");
    assert_eq!(sample("cbec_archive_files_total"), Some(second.files as f64), "{text}");
    assert_eq!(sample("cbec_archive_redone_files_total"), Some(1.0), "{text}");
    assert_eq!(sample(&format!("cbec_consumer_lag{{topic=\"{topic}\",partition=\"2\"}}")), Some(0.0), "{text}");
}

/// A chunk to write again whose records retention deleted before the archiver came back:
/// it goes on from the earliest record the partition holds, and its report names the
/// offsets whose rows are missing. Receipts 1–10 are archived in chunks of 4 (the last one,
/// 9 and 10, from offset 8); the partition's records before offset 10 are deleted; 11 and
/// 12 come. Started again, the archiver writes 11 and 12, says that offsets 8..10 are gone,
/// and the table holds 1–8, 11 and 12. Then topics of the same names that do not hold
/// what was archived (another prefix's, as a topic deleted and made again) are refused,
/// the folder untouched: read on, their records would have been taken for the window of
/// records already written and skipped.
#[test]
fn the_archiver_says_which_rows_retention_deleted_before_it_read_them_again() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    let Some(b) = brokers() else { return };
    let (c, dir, out) = archived_receipts("ag", 1);
    let topic = c.output_topic("receipts");
    delete_before(&b, &topic, 0, 10);
    produce_receipts(&c, 0, 11..=12);
    let second = cbec_pipeline::archive::run(&c, &out, true, Arc::new(AtomicBool::new(false))).unwrap();
    let report = cbec_pipeline::archive::render(&second);
    eprintln!("{report}");
    assert_eq!((second.records.get("receipts"), second.redone), (Some(&2), 1), "{second:?}");
    assert_eq!(second.gaps, BTreeMap::from([((topic.clone(), 0), (8, 10))]), "{second:?}");
    assert!(report.contains(&format!("{topic} partition 0 offsets 8..10 deleted by retention")), "{report}");
    let want: BTreeSet<String> = (1..=8).chain(11..=12).map(|i| format!("test/{i}")).collect();
    assert_eq!(receipt_ids(&out), (want.clone(), 10));
    // Other topics of the same names (another prefix: as a topic deleted and made again)
    // into the same folder: refused, the tables left as they are.
    let mut other = config(&c.brokers, &unique_prefix("ag2"), dir.path());
    other.partitions = 1;
    cbec_pipeline::kafka::ensure_topics(&other).unwrap();
    produce_receipts(&other, 0, 100..=101);
    let refused = cbec_pipeline::archive::run(&other, &out, true, Arc::new(AtomicBool::new(false)));
    let e = format!("{:#}", refused.expect_err("another topic's records into this archive"));
    assert!(e.contains("ends at offset 2, but the archive has a chunk of it from offset 10"), "{e}");
    assert_eq!(receipt_ids(&out), (want, 10));
}

/// Whether the engine (stage "all" or "engine") saved a checkpoint, in its directory or
/// its topic.
fn saved(c: &Config) -> bool {
    use cbec_pipeline::checkpoint::CheckpointStore;
    use cbec_pipeline::kafka_store::{KafkaTopicStore, topic};
    match c.checkpoint_store {
        // Every chunk of one, not just the first: a checkpoint of several chunks is sent
        // chunk by chunk, and a crash between two leaves none to restore from.
        StoreKind::Kafka => {
            let reader: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &c.brokers).create().unwrap();
            let topic = topic(c);
            reader.fetch_watermarks(&topic, 1, Duration::from_secs(10)).is_ok_and(|(_, high)| high > 0)
                && KafkaTopicStore::reader(&c.brokers, &topic).is_ok_and(|s| s.load().is_ok_and(|cp| cp.is_some()))
        }
        StoreKind::Dir => checkpoint_files(c) > 0,
    }
}

/// The checkpoint files in the configured directory.
fn checkpoint_files(c: &Config) -> usize {
    checkpoint_names(c).len()
}

/// The names of the checkpoint files in the configured directory.
fn checkpoint_names(c: &Config) -> BTreeSet<String> {
    std::fs::read_dir(&c.checkpoint_dir)
        .map(|d| {
            d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.ends_with(".bin")).collect()
        })
        .unwrap_or_default()
}

/// Waits for `child` to exit, at most `limit`.
fn wait_at_most(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("cbec did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How the active process stops being active in [`takeover`].
enum Fail {
    /// SIGKILL.
    Kill,
    /// SIGSTOP until the standby holds the lease, then SIGCONT: a process that was stalled
    /// past its session and wakes up to find the lease gone.
    Stall,
    /// SIGTERM: it drains, checkpoints, exits 0 and leaves the group (a handover, as in a
    /// rolling upgrade).
    Stop,
}

/// Two processes of one group: the first holds the lease and runs; the second stands by
/// (it neither runs nor exits while the first lives, though it was told to exit when
/// idle) and follows the checkpoints the first saves. The first fails mid-stream; when its
/// session ends the group gives the lease to the standby, which takes over with the state
/// it kept up to date — the state moves to it — and finishes the story: after
/// de-duplication by identity the outputs equal the
/// uninterrupted run. (The story is on the topics before the first starts: input that
/// arrives after a partition was read to its end, with event times before what the other
/// partitions already released, is processed when it comes, not in the embedded run's
/// order.)
///
/// With `checkpoint_store = "kafka"` the two processes share nothing but the brokers (each
/// has its own checkpoint directory): the state reaches the standby through the topic.
fn takeover(tag: &str, fail: Fail, store: StoreKind) {
    let Some(b) = brokers() else { return };
    let _timing = timing();
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&b, &unique_prefix(tag), dir.path());
    c.checkpoint_store = store;
    let g = story(5000, 53);
    let cfg = write_config(&c, dir.path());
    produce_story(&b, &c, &g, 0, false).unwrap();
    let active_log = dir.path().join("active.log");
    let mut active =
        command(&cfg, &[]).stderr(std::fs::File::create(&active_log).unwrap()).spawn().expect("spawn cbec");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !saved(&c) {
        assert!(Instant::now() < deadline, "the active process saved no checkpoint");
        std::thread::sleep(Duration::from_millis(20));
    }
    let standby_dir = tempfile::tempdir().unwrap();
    let cfg = match store {
        StoreKind::Kafka => {
            let own =
                Config { checkpoint_dir: standby_dir.path().join("checkpoints").display().to_string(), ..c.clone() };
            write_config(&own, standby_dir.path())
        }
        StoreKind::Dir => cfg,
    };
    let log = dir.path().join("standby.log");
    let mut standby = command(&cfg, &["--exit-when-idle"])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn the standby");
    // The active process runs on until the standby holds a checkpoint's state (its start
    // and joining the lease group take a while on a loaded machine), and some checkpoint
    // intervals more, so that the standby has followed checkpoints saved after it.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&log).unwrap().contains("standing by with the state") {
        assert!(Instant::now() < deadline, "the standby never read a checkpoint");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(standby.try_wait().unwrap().is_none(), "the standby waits: {said}");
    assert!(said.contains("standing by") && !said.contains("holding the lease"), "{said}");
    assert!(active.try_wait().unwrap().is_none(), "the active process runs until stopped");
    let signal = |sig: &str| {
        let ok = Command::new("kill").args([sig, &active.id().to_string()]).status().unwrap().success();
        assert!(ok, "kill {sig}");
    };
    match fail {
        Fail::Kill => {
            active.kill().unwrap(); // SIGKILL
            let _ = active.wait();
        }
        Fail::Stall => {
            signal("-STOP");
            let deadline = Instant::now() + Duration::from_secs(60);
            while !std::fs::read_to_string(&log).unwrap().contains("holding the lease") {
                assert!(Instant::now() < deadline, "the standby never took the lease over");
                std::thread::sleep(Duration::from_millis(50));
            }
            signal("-CONT");
            // It stops at once and starts again in its place, standing by.
            let said = || std::fs::read_to_string(&active_log).unwrap();
            wait_for(Duration::from_secs(60), "the woken process standing by again", said, || {
                let s = said();
                s.contains("lost the lease")
                    && s.split("starting again as a standby").nth(1).is_some_and(|after| after.contains("standing by"))
            });
            assert!(active.try_wait().unwrap().is_none(), "it stands by: {}", said());
        }
        Fail::Stop => {
            signal("-TERM");
            let status = wait_at_most(&mut active, Duration::from_secs(60));
            assert!(status.success(), "{}", std::fs::read_to_string(&active_log).unwrap());
        }
    }
    eprintln!("the active process:\n{}", std::fs::read_to_string(&active_log).unwrap());
    let status = wait_at_most(&mut standby, Duration::from_secs(180));
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{said}");
    assert!(said.contains("holding the lease") && said.contains("restored checkpoint"), "{said}");
    // It followed the active process's checkpoints while standing by (a warm standby),
    // and took over with that state.
    assert!(said.contains("kept up to date while standing by"), "{said}");
    assert_equals_embedded(&c, &g, "after the takeover");
    // The stalled one, standing by since, takes the lease when the other leaves.
    let _ = active.kill();
    let _ = active.wait();
}

/// The state moves through the checkpoint topic.
#[test]
fn a_standby_of_the_group_takes_over_from_a_killed_process_with_its_state() {
    takeover("f", Fail::Kill, StoreKind::Kafka);
}

/// The state of the final checkpoint moves through the topic.
#[test]
fn a_stopped_process_hands_over_to_the_standby() {
    takeover("h", Fail::Stop, StoreKind::Kafka);
}

/// The stalled process, woken after the standby took over, stops at once and starts again
/// as a standby in its place; what it may still have saved (in the directory both use) or
/// produced before noticing changes nothing.
#[test]
fn a_process_stalled_past_its_session_yields_to_the_standby_and_stands_by() {
    takeover("z", Fail::Stall, StoreKind::Dir);
}

/// Produces the story in Kafka transactions (one per 500 messages), as a platform with a
/// transactional producer would: every partition then ends with a commit marker, an offset
/// below the high watermark that no consumer ever receives.
fn produce_in_transactions(brokers: &str, c: &Config, g: &cbec_pipeline::generator::Generated) {
    use cbec_pipeline::kafka::{Deliveries, ensure_topics, send_blocking};
    use rdkafka::producer::{Producer, ThreadedProducer};
    ensure_topics(c).unwrap();
    let delivered = Deliveries::default();
    let p: ThreadedProducer<Deliveries> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("transactional.id", format!("{}tx", c.output_prefix))
        .create_with_context(delivered.clone())
        .unwrap();
    p.init_transactions(Duration::from_secs(30)).unwrap();
    let all: Vec<(String, &String, &Vec<u8>)> =
        g.topics.iter().flat_map(|(t, v)| v.iter().map(move |(k, m)| (c.input_topic(*t), k, m))).collect();
    for chunk in all.chunks(500) {
        p.begin_transaction().unwrap();
        for (topic, key, payload) in chunk {
            send_blocking(&p, topic, key, payload).unwrap();
        }
        p.commit_transaction(Duration::from_secs(30)).unwrap();
    }
    assert_eq!(delivered.failed(), 0, "every input message delivered");
}

#[test]
fn transactional_inputs_are_read_to_their_end_and_match_the_embedded_run() {
    let Some(b) = brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let c = config(&b, &unique_prefix("x"), dir.path());
    let g = story(600, 41);
    produce_in_transactions(&b, &c, &g);
    let out = command(&write_config(&c, dir.path()), &["--exit-when-idle"])
        .stderr(Stdio::piped())
        .output()
        .expect("run cbec");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // The commit markers keep every partition one offset below its high watermark: only
    // librdkafka's end-of-partition event says it is caught up. Without it each partition
    // would hold the pipeline until the stall safety net gave up on it.
    assert!(!stderr.contains("treated as idle"), "a partition stalled: {stderr}");
    assert_equals_embedded(&c, &g, "with transactional inputs");
}

/// A process that finds no checkpoint says so; once it exits, its group's commits are those
/// of its final checkpoint. When a consumer group has committed offsets (commits follow
/// checkpoints) and the process finds no checkpoint, its checkpoints are elsewhere — here a
/// `checkpoint_dir` changed between two runs — and it warns that everything is read and
/// sent again.
#[test]
fn a_process_without_the_checkpoints_its_group_committed_after_warns() {
    let Some(b) = brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    // No checkpoint but the final one: the commits are its.
    let c = Config { checkpoint_interval_ms: 600_000, ..config(&b, &unique_prefix("lost"), dir.path()) };
    produce_story(&b, &c, &story(300, 47), 0, false).unwrap();
    let run = |c: &Config| {
        let out = command(&write_config(c, dir.path()), &["--exit-when-idle"]).stderr(Stdio::piped()).output().unwrap();
        let said = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{said}");
        said
    };
    let first = run(&c);
    assert!(first.contains("no checkpoint in") && !first.contains("has committed offsets"), "{first}");
    // The final checkpoint's offsets are committed before the process exits.
    assert!(committed_to_the_end(&c), "the first run's commits reach the end of every partition");
    let moved = Config { checkpoint_dir: dir.path().join("elsewhere").display().to_string(), ..c.clone() };
    let second = run(&moved);
    assert!(second.contains(&format!("the consumer group {} has committed offsets on", c.group_id)), "{second}");
    assert!(run(&c).contains("restored checkpoint"), "back at its own checkpoints");
}

/// Stages in separate processes, each with its own directory (nothing shared but the
/// brokers): an engine stage (`engine`) and summarize instances (`a`, `b` and `more`), the
/// checkpoints in the topic, `<group_id>.exited` with 4 partitions.
struct Stages {
    dir: std::path::PathBuf,
    c: Config,
}

impl Stages {
    fn new(dir: &Path, c: &Config, more: &[&str]) -> Stages {
        let c = Config { checkpoint_store: StoreKind::Kafka, exited_partitions: 4, ..c.clone() };
        let names = [("engine", Stage::Engine), ("a", Stage::Summarize), ("b", Stage::Summarize)];
        for (name, stage) in names.into_iter().chain(more.iter().map(|m| (*m, Stage::Summarize))) {
            let d = dir.join(name);
            std::fs::create_dir_all(&d).unwrap();
            let cfg = Config { stage, checkpoint_dir: d.join("checkpoints").display().to_string(), ..c.clone() };
            let cfg = if stage == Stage::Engine { Config { instance_id: "engine".into(), ..cfg } } else { cfg };
            write_config(&cfg, &d);
        }
        Stages { dir: dir.to_path_buf(), c }
    }

    /// Starts process `name` with `extra` arguments, its stderr in `log`.
    fn logged(&self, name: &str, extra: &[&str], log: &str) -> Child {
        let d = self.dir.join(name);
        command(&d.join("cbec.toml"), extra)
            .stderr(std::fs::File::create(d.join(log)).unwrap())
            .spawn()
            .expect("spawn cbec")
    }

    /// What process `name` wrote to `log`.
    fn said(&self, name: &str, log: &str) -> String {
        std::fs::read_to_string(self.dir.join(name).join(log)).unwrap_or_default()
    }

    /// Waits until instances A and B (logs `a.log`, `b.log`) share the partitions. The
    /// engine stage starts after that: started at once, on a busy machine A could take every
    /// exit in before the group gave B its share.
    fn wait_shared(&self) {
        let deadline = Instant::now() + Duration::from_secs(90);
        let took = |n: &str| self.said(n, &format!("{n}.log")).contains("took partition");
        while !(took("a") && took("b")) {
            assert!(
                Instant::now() < deadline,
                "A and B did not share the partitions:\nA: {}\nB: {}",
                self.said("a", "a.log"),
                self.said("b", "b.log")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the engine stage saved a checkpoint (in the topic).
    fn engine_saved(&self) -> bool {
        saved(&self.c)
    }
}

/// Stages in separate processes ride out a broker crash (SIGKILL of its JVM mid-stream,
/// back on its data 2 s later): the engine stage starts again as a standby and takes its
/// lease back, the summarize instances get their partitions back from their checkpoints,
/// all three finish (`--exit-when-idle`, status 0), and the outputs, summary declarations
/// included, equal the embedded run after de-duplication by identity.
#[test]
fn stages_in_separate_processes_ride_out_a_broker_crash() {
    let Some((_timing, broker)) = own_broker() else { return };
    let b = broker.address();
    let dir = tempfile::tempdir().unwrap();
    let c = config(&b, &unique_prefix("y"), dir.path());
    let g = story(8000, 73);
    produce_story(&b, &c, &g, 0, false).unwrap();
    let st = Stages::new(dir.path(), &c, &[]);
    let mut a = st.logged("a", &["--exit-when-idle"], "a.log");
    let mut b_ = st.logged("b", &["--exit-when-idle"], "b.log");
    st.wait_shared();
    let mut engine = st.logged("engine", &["--exit-when-idle"], "engine.log");
    wait_for(
        Duration::from_secs(90),
        "the engine stage's first checkpoint",
        || st.said("engine", "engine.log"),
        || st.engine_saved(),
    );
    assert!(
        engine.try_wait().unwrap().is_none(),
        "the crash must come mid-stream: {}",
        st.said("engine", "engine.log")
    );
    broker.script("crash");
    std::thread::sleep(Duration::from_secs(2));
    broker.script("resume");
    for (child, name) in [(&mut engine, "engine"), (&mut a, "a"), (&mut b_, "b")] {
        let status = wait_at_most(child, Duration::from_secs(240));
        assert!(status.success(), "{name}: {}", st.said(name, &format!("{name}.log")));
    }
    let said = st.said("engine", "engine.log");
    eprintln!("engine stage:\n{said}\ninstance A:\n{}\ninstance B:\n{}", st.said("a", "a.log"), st.said("b", "b.log"));
    assert!(said.contains("starting again as a standby") && said.contains("restored checkpoint"), "{said}");
    let got = assert_equals_embedded(&st.c, &g, "with stages in separate processes, after a broker crash");
    assert!(got.0.keys().filter(|(t, _)| t == "summaries").count() > 1);
}

/// Stages in separate processes: an engine stage and summarize instances joined by the
/// topic `<group_id>.exited` (4 partitions), the instances one consumer group whose
/// partitions move with their state. Mid-stream the engine stage and instance B are killed
/// (SIGKILL); the engine stage restarts from its checkpoint and sends again what followed
/// it, B never comes back: when its session ends the group gives its partitions to the
/// others (A, and C, which joins meanwhile and takes partitions from A, saved as they are
/// handed over), which go on from the partitions' checkpoints and skip the exits they hold.
/// After de-duplication by identity the outputs equal the embedded run — the summary
/// declarations included, which only the instances build.
#[test]
fn stages_in_separate_processes_match_the_embedded_run_through_kills() {
    let Some(b) = brokers() else { return };
    let _timing = timing();
    let dir = tempfile::tempdir().unwrap();
    let c = config(&b, &unique_prefix("s"), dir.path());
    let c = Config { checkpoint_store: StoreKind::Kafka, exited_partitions: 4, ..c };
    let g = story(4000, 61);
    produce_story(&b, &c, &g, 0, false).unwrap();
    let st = Stages::new(dir.path(), &c, &["c"]);
    let (logged, said) = (|n: &str, x: &[&str], l: &str| st.logged(n, x, l), |n: &str, l: &str| st.said(n, l));
    let mut a = logged("a", &["--exit-when-idle"], "a.log");
    let b_metrics = format!("127.0.0.1:{}", free_port());
    let mut b_ = logged("b", &["--metrics-addr", &b_metrics], "b.log");
    st.wait_shared();
    let mut engine = logged("engine", &[], "first.log");
    // Once the engine stage saved a checkpoint and B took exits in (its progress line counts
    // them) and saved them, both are killed.
    let deadline = Instant::now() + Duration::from_secs(90);
    let engine_saved = || st.engine_saved();
    let took_exits = |log: &str| {
        log.lines().filter_map(|l| l.strip_prefix("cbec: ")?.split(' ').next()?.parse::<u64>().ok()).any(|n| n > 0)
    };
    while !(engine_saved() && took_exits(&said("b", "b.log"))) {
        assert!(
            Instant::now() < deadline,
            "the engine stage saved nothing or B took no exit in:\nA: {}\nB: {}\nengine: {}",
            said("a", "a.log"),
            said("b", "b.log"),
            said("engine", "first.log")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // B's metrics endpoint gives its lag on the partitions of the exits topic it holds.
    let lag = format!("cbec_consumer_lag{{topic=\"{}\",partition=", c.exited_topic());
    wait_for(Duration::from_secs(10), "B's consumer lag", || scrape(&b_metrics), || scrape(&b_metrics).contains(&lag));
    std::thread::sleep(Duration::from_millis(900));
    assert!(engine.try_wait().unwrap().is_none() && b_.try_wait().unwrap().is_none(), "both run until stopped");
    engine.kill().unwrap();
    b_.kill().unwrap();
    let _ = (engine.wait(), b_.wait());
    let mut engine = logged("engine", &["--exit-when-idle"], "second.log");
    let mut c_ = logged("c", &["--exit-when-idle"], "c.log");
    for (child, name, log) in [(&mut engine, "engine", "second.log"), (&mut a, "a", "a.log"), (&mut c_, "c", "c.log")] {
        let status = wait_at_most(child, Duration::from_secs(180));
        assert!(status.success(), "{name}: {}", said(name, log));
    }
    eprintln!(
        "instance A:\n{}\ninstance B (killed):\n{}\ninstance C:\n{}",
        said("a", "a.log"),
        said("b", "b.log"),
        said("c", "c.log")
    );
    assert!(said("engine", "second.log").contains("restored checkpoint"));
    // B's partitions went on from their checkpoints, with the lists B had taken in.
    let b_held: Vec<String> = said("b", "b.log")
        .lines()
        .filter_map(|l| l.strip_prefix("cbec: took partition ")?.split(' ').next().map(str::to_string))
        .collect();
    assert!(!b_held.is_empty(), "B held partitions: {}", said("b", "b.log"));
    let resumed = [said("a", "a.log"), said("c", "c.log")].concat().lines().any(|l| {
        let Some(rest) = l.strip_prefix("cbec: took partition ") else { return false };
        let p = rest.split(' ').next().unwrap_or_default();
        let waiting = rest.rsplit('(').next().and_then(|w| w.split(' ').next()).and_then(|n| n.parse::<u64>().ok());
        b_held.iter().any(|h| h == p) && waiting.is_some_and(|n| n > 0)
    });
    assert!(resumed, "a partition of B was taken with its checkpoint's lists waiting");
    let got = assert_equals_embedded(&c, &g, "with summarize in instances that come and go, after kills");
    let summaries = got.0.keys().filter(|(t, _)| t == "summaries").count();
    assert!(summaries > 1, "{summaries} summary declarations");
}
