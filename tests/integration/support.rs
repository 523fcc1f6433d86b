//! Shared helpers.

use cbec_operators::rules::Rules;
use cbec_pipeline::config::Config;
use cbec_pipeline::embedded;
use cbec_pipeline::generator::{self, GenConfig, Generated};
use cbec_pipeline::record::Record;
use cbec_pipeline::runner::RunStats;
use cbec_pipeline::sink::MemorySink;
use cbec_schemas::hs::Nomenclature;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `$CBEC_SHARED` or `../shared` beside the repository.
pub fn shared() -> PathBuf {
    std::env::var_os("CBEC_SHARED").map(PathBuf::from).unwrap_or_else(|| cbec_schemas::shared_path(""))
}

pub fn hs() -> Nomenclature {
    let p = shared().join("data/hs/harmonized-system.csv");
    Nomenclature::load(&p).unwrap_or_else(|e| panic!("HS nomenclature needed by the tests: {e}"))
}

pub fn story(orders: usize, seed: u64) -> Generated {
    generator::generate(&GenConfig { orders, seed, ..GenConfig::default() }, &Rules::default(), &hs())
}

pub fn run_embedded(g: &Generated, partitions: usize) -> (Vec<Record>, RunStats) {
    let cfg = Config { partitions, ..Config::default() };
    let sink = MemorySink::default();
    let records = sink.records.clone();
    let stats = embedded::run(&cfg, hs(), g.inputs(), Box::new(sink), None).expect("embedded run");
    let r = records.lock().unwrap().clone();
    (r, stats)
}

/// The records of an embedded run of the input files in `dir` (`cbec run --input`) by
/// identity, dead letters left out, and how many dead letters there were.
pub fn run_dir(dir: &Path) -> (BTreeMap<(String, String), String>, usize) {
    let sink = MemorySink::default();
    let records = sink.records.clone();
    embedded::run(&Config::default(), hs(), embedded::discover(dir).unwrap(), Box::new(sink), None).unwrap();
    let r = records.lock().unwrap().clone();
    let dead = r.iter().filter(|x| matches!(x, Record::Dead(_))).count();
    let rest: Vec<Record> = r.into_iter().filter(|x| !matches!(x, Record::Dead(_))).collect();
    (record_map(&rest), dead)
}

/// (topic, id) → JSON, asserting that a repeated identity always carries the same record.
pub fn by_identity(records: impl IntoIterator<Item = (String, String, Vec<u8>)>) -> BTreeMap<(String, String), String> {
    let mut m: BTreeMap<(String, String), String> = BTreeMap::new();
    for (topic, id, json) in records {
        let json = String::from_utf8(json).expect("utf8");
        if let Some(old) = m.get(&(topic.clone(), id.clone())) {
            assert_eq!(old, &json, "two different records with identity {topic}/{id}");
        }
        m.insert((topic, id), json);
    }
    m
}

pub fn record_map(records: &[Record]) -> BTreeMap<(String, String), String> {
    by_identity(records.iter().map(|r| (r.topic().to_string(), r.id(), r.to_json())))
}

/// The `cbec` binary built next to this test binary (`$CBEC_BIN` overrides).
pub fn cbec_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CBEC_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test binary path");
    let p = exe.parent().and_then(|d| d.parent()).map(|d| d.join("cbec")).expect("target dir");
    assert!(
        p.exists(),
        "{} not built: run `cargo build -p cbec-pipeline --bin cbec` first (scripts/test.sh does)",
        p.display()
    );
    p
}

/// Held by the tests whose timing depends on the machine's cores (a standby taking over
/// after a short lease session, summarize instances killed while they share partitions)
/// and by the one that starts a second broker (a JVM's start-up takes both cores for
/// seconds), so that they do not run at the same time.
pub static TIMING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// [`TIMING`], also after a test that held it failed.
pub fn timing() -> std::sync::MutexGuard<'static, ()> {
    TIMING.lock().unwrap_or_else(|e| e.into_inner())
}

/// The `ENV` settings of `docker/Dockerfile`, in order.
pub fn dockerfile_env() -> Vec<(String, String)> {
    let dockerfile = std::fs::read_to_string(repo_root().join("docker/Dockerfile")).unwrap();
    dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("ENV "))
        .flat_map(|l| l.split_whitespace().map(|p| p.split_once('=').expect("KEY=value")))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The repository's root (the parent of this crate).
pub fn repo_root() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// What the Prometheus endpoint at `addr` serves (`GET /metrics`), headers included.
pub fn scrape(addr: &str) -> String {
    let mut body = String::new();
    let mut s = std::net::TcpStream::connect(addr).expect("the metrics endpoint");
    std::io::Write::write_all(&mut s, b"GET /metrics HTTP/1.0\r\nHost: cbec\r\n\r\n").unwrap();
    std::io::Read::read_to_string(&mut s, &mut body).unwrap();
    body
}

/// Where `scripts/kafka.sh` keeps the broker's jars, if it has resolved them.
pub fn kafka_libs() -> Option<PathBuf> {
    let pom = std::fs::read_to_string(repo_root().join("scripts/kafka-pom.xml")).unwrap();
    let version = pom.split("<kafka.version>").nth(1)?.split('<').next()?.to_string();
    let cache = std::env::var_os("CBEC_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cache/cbec")))?;
    let libs = cache.join(format!("kafka-{version}/libs"));
    libs.join(".complete").exists().then_some(libs)
}
