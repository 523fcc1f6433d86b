//! The Docker files, checked where Docker cannot run: the stack's broker
//! (`docker/compose.yml`'s settings for the official Apache Kafka image, turned into a server
//! configuration as the image does, run on the same Apache Kafka release the other tests use,
//! resolved from Maven Central by `scripts/kafka.sh`, and used by a client through the
//! listener the compose file publishes to the host), its topics, its Prometheus targets and
//! the runtime image's shared libraries.

use crate::support::{free_port, kafka_libs, repo_root};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The lines of one service of `docker/compose.yml` after its name.
fn service_block<'a>(compose: &'a str, service: &str) -> Vec<&'a str> {
    let mut lines = compose.lines().skip_while(|l| l.trim_end() != format!("  {service}:"));
    lines.next().unwrap_or_else(|| panic!("service {service} in docker/compose.yml"));
    lines.take_while(|l| l.is_empty() || l.starts_with("   ")).collect()
}

/// The `environment:` entries of one service of `docker/compose.yml`, in order.
fn service_env(compose: &str, service: &str) -> Vec<(String, String)> {
    let body = service_block(compose, service);
    let env = body.iter().skip_while(|l| l.trim() != "environment:").skip(1);
    env.take_while(|l| l.starts_with("      "))
        .filter(|l| !l.trim().starts_with('#'))
        .map(|l| {
            let (k, v) = l.trim().split_once(':').expect("KEY: value");
            (k.to_string(), v.trim().trim_matches('"').to_string())
        })
        .collect()
}

/// The topics the `topics` service creates (its `for t in … ; do` list, `cbec.` before each).
fn compose_topics(compose: &str) -> BTreeSet<String> {
    let from = compose.find("for t in ").expect("the topics service's loop") + "for t in ".len();
    let to = from + compose[from..].find("; do").expect("; do");
    compose[from..to].split_whitespace().filter(|w| *w != "\\").map(|t| format!("cbec.{t}")).collect()
}

/// A `KAFKA_*` variable as the official image turns it into a property: the prefix dropped,
/// lower case, `___` → `_`, `__` → `-`, `_` → `.`.
fn property_of(var: &str) -> Option<String> {
    let name = var.strip_prefix("KAFKA_")?;
    if ["HEAP_OPTS", "JVM_PERFORMANCE_OPTS", "LOG4J_OPTS", "JMX_OPTS", "OPTS", "GC_LOG_OPTS"].contains(&name) {
        return None;
    }
    let lower = name.to_lowercase();
    Some(lower.replace("___", "\u{0}").replace("__", "-").replace('_', ".").replace('\u{0}', "_"))
}

/// Kills a process when the test ends, however it ends.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The broker, killed (before its data is removed) when the test ends.
struct Broker {
    _process: Kill,
    dir: tempfile::TempDir,
}

impl Broker {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("broker.log")).unwrap_or_default()
    }
}

/// A consumer of `brokers` in `group`, from the earliest offsets.
fn consumer(brokers: &str, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap()
}

#[test]
fn the_compose_topics_are_cbecs_topics() {
    let compose = std::fs::read_to_string(repo_root().join("docker/compose.yml")).unwrap();
    let created = compose_topics(&compose);
    let used: BTreeSet<String> = cbec_schemas::Topic::ALL
        .iter()
        .map(|t| t.default_name())
        .chain(cbec_pipeline::record::OUTPUTS.iter().map(|o| format!("cbec.{o}")))
        .collect();
    assert_eq!(created, used, "the topics service creates every input and output topic, and only those");
    // With the settings cbec creates them with: the summaries topic's record limit, the
    // input topics' broker timestamps (every topic not an output), nothing for the others.
    let limit = format!("summaries) cfg=\"--config max.message.bytes={}\" ;;", cbec_pipeline::kafka::MAX_RECORD_BYTES);
    assert_eq!(compose.matches(&limit).count(), 1, "{limit}");
    let plain: Vec<&str> = cbec_pipeline::record::OUTPUTS.iter().copied().filter(|o| *o != "summaries").collect();
    assert!(compose.contains(&format!("{}) cfg=\"\" ;;", plain.join("|"))), "{plain:?}");
    assert!(compose.contains("*) cfg=\"--config message.timestamp.type=LogAppendTime\" ;;"));
    assert!(compose.contains("--replication-factor 1 $$cfg"));
}

#[test]
fn the_compose_broker_settings_run_on_apache_kafka() {
    let Some(libs) = kafka_libs() else {
        eprintln!(
            "SKIPPED: Apache Kafka is not in the cache; scripts/kafka.sh start resolves it (scripts/test.sh does)"
        );
        return;
    };
    let _timing = crate::support::timing();
    let compose = std::fs::read_to_string(repo_root().join("docker/compose.yml")).unwrap();
    let env = service_env(&compose, "kafka");
    assert!(env.iter().any(|(k, _)| k == "KAFKA_PROCESS_ROLES"), "{env:?}");
    // Each port the file uses (internal 19092, controller 9093, published 9092) becomes a
    // free one, listeners bind to loopback, and the controller's address `kafka` (the
    // compose network's name for the container) is 127.0.0.1. The advertised listeners keep
    // their hosts: the published one must be reachable from the host as written.
    let (internal, controller, published) = (free_port(), free_port(), free_port());
    let local = |p: &str, v: &str| {
        let v = v
            .replace("//:", "//127.0.0.1:")
            .replace(":19092", &format!(":{internal}"))
            .replace(":9093", &format!(":{controller}"))
            .replace(":9092", &format!(":{published}"));
        if p == "controller.quorum.voters" { v.replace("@kafka:", "@127.0.0.1:") } else { v }
    };
    let dir = tempfile::tempdir().unwrap();
    let mut props: Vec<String> =
        env.iter().filter_map(|(k, v)| property_of(k).map(|p| format!("{p}={}", local(&p, v)))).collect();
    assert!(props.iter().any(|p| p.starts_with("node.id=")), "{props:?}");
    // The image's data directory is inside its container; here, the test's.
    props.push(format!("log.dirs={}", dir.path().join("data").display()));
    let config = dir.path().join("server.properties");
    std::fs::write(&config, props.join("\n") + "\n").unwrap();

    let classpath = format!("{}/*", libs.display());
    let java = |args: &[&str]| Command::new("java").arg("-cp").arg(&classpath).args(args).output().expect("java");
    let id = java(&["kafka.tools.StorageTool", "random-uuid"]);
    let id = String::from_utf8_lossy(&id.stdout).trim().lines().last().unwrap_or_default().to_string();
    let format = java(&["kafka.tools.StorageTool", "format", "-t", &id, "-c", config.to_str().unwrap()]);
    assert!(
        format.status.success(),
        "formatting storage with the compose settings failed:\n{}\n{}\n{}",
        props.join("\n"),
        String::from_utf8_lossy(&format.stdout),
        String::from_utf8_lossy(&format.stderr)
    );
    let log = std::fs::File::create(dir.path().join("broker.log")).unwrap();
    let child = Command::new("java")
        .args(["-Xms128m", "-Xmx512m", "-XX:+UseSerialGC", "-cp", &classpath, "kafka.Kafka"])
        .arg(&config)
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start the broker");
    let broker = Broker { _process: Kill(child), dir };

    // A client on the host reaches the broker through the published listener alone (what
    // CBEC_TEST_BROKERS=127.0.0.1:9092 does against the stack).
    let brokers = format!("127.0.0.1:{published}");
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &brokers);
    let admin: AdminClient<DefaultClientContext> = cc.create().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let topics = compose_topics(&compose);
    let new: Vec<NewTopic> = topics.iter().map(|t| NewTopic::new(t, 4, TopicReplication::Fixed(1))).collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        match rt.block_on(admin.create_topics(&new, &opts)) {
            Ok(results) if results.iter().all(Result::is_ok) => break,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "the topics service's topics could not be created: {other:?}\nbroker log:\n{}",
                    broker.log()
                );
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }

    let producer: ThreadedProducer<DefaultProducerContext> =
        ClientConfig::new().set("bootstrap.servers", &brokers).set("enable.idempotence", "true").create().unwrap();
    producer.send(BaseRecord::to("cbec.orders").key("O1").payload("{\"orderNo\":\"O1\"}")).map_err(|(e, _)| e).unwrap();
    producer.flush(Duration::from_secs(30)).expect("flushed to the broker");
    let reader = consumer(&brokers, "compose-check");
    let meta = reader.fetch_metadata(None, Duration::from_secs(10)).unwrap();
    for t in &topics {
        let m = meta.topics().iter().find(|m| m.name() == t).unwrap_or_else(|| panic!("{t} in the metadata"));
        assert_eq!(m.partitions().len(), 4, "{t}");
    }
    reader.subscribe(&["cbec.orders"]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let got = loop {
        assert!(Instant::now() < deadline, "nothing consumed; broker log:\n{}", broker.log());
        if let Some(Ok(m)) = reader.poll(Duration::from_millis(500)) {
            break (m.key().map(<[u8]>::to_vec), m.payload().map(<[u8]>::to_vec));
        }
    };
    assert_eq!(got, (Some(b"O1".to_vec()), Some(b"{\"orderNo\":\"O1\"}".to_vec())));

    // The stack's processes, outside containers: the `cbec` service's and the generator's
    // commands with their settings (the image's and the service's), the broker's address in
    // the compose network (`kafka:19092`) replaced by the listener the host reaches, the
    // image's paths and metrics port by the test's, and fewer orders.
    let image_env = crate::support::dockerfile_env();
    let metrics = format!("127.0.0.1:{}", free_port());
    let archive_metrics = format!("127.0.0.1:{}", free_port());
    let hs = crate::support::shared().join("data/hs/harmonized-system.csv");
    let host = |k: &str, v: &str| match k {
        "CBEC_HS_FILE" => hs.display().to_string(),
        "CBEC_OUTPUT_DIR" => broker.dir.path().join("out").display().to_string(),
        "CBEC_CHECKPOINT_DIR" => broker.dir.path().join("checkpoints").display().to_string(),
        "CBEC_METRICS_ADDR" => metrics.clone(),
        _ => v.to_string(),
    };
    let process = |service: &str| {
        let line = service_block(&compose, service)
            .into_iter()
            .find_map(|l| l.trim().strip_prefix("command:"))
            .expect("a command");
        let mut args: Vec<String> = serde_json::from_str(line.trim()).expect("a command as a JSON list");
        for a in &mut args {
            *a = a.replace("kafka:19092", &brokers);
        }
        if let Some(i) = args.iter().position(|a| a == "--orders") {
            args[i + 1] = "2000".into();
        }
        if let Some(i) = args.iter().position(|a| a == "--output") {
            args[i + 1] = broker.dir.path().join("archive").display().to_string();
        }
        if let Some(i) = args.iter().position(|a| a == "--metrics-addr") {
            args[i + 1] = archive_metrics.clone();
        }
        let mut c = Command::new(crate::support::cbec_bin());
        c.args(&args);
        for (k, v) in image_env.iter().chain(&service_env(&compose, service)) {
            c.env(k, host(k, v));
        }
        c.stdout(Stdio::null());
        (args, c)
    };
    let (args, mut run) = process("cbec");
    assert_eq!(args.first().map(String::as_str), Some("run"), "{args:?}");
    let run_log = broker.dir.path().join("cbec.log");
    let cbec = run.stderr(std::fs::File::create(&run_log).unwrap()).spawn().expect("cbec run");
    let mut cbec = Kill(cbec);
    let (args, mut generator) = process("generator");
    assert!(args.contains(&"--orders".to_string()), "{args:?}");
    let out = generator.output().expect("cbec gen");
    assert!(out.status.success(), "the generator failed: {}", String::from_utf8_lossy(&out.stderr));
    let sorting = consumer(&brokers, "compose-check-sorting");
    sorting.subscribe(&["cbec.sorting"]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let decision = loop {
        let log = || std::fs::read_to_string(&run_log).unwrap_or_default();
        assert!(Instant::now() < deadline, "no sorting decision from the cbec service; its log:\n{}", log());
        if let Ok(Some(status)) = cbec.0.try_wait() {
            panic!("the cbec service's process ended ({status}); its log:\n{}", log());
        }
        if let Some(Ok(m)) = sorting.poll(Duration::from_millis(500)) {
            break serde_json::from_slice::<serde_json::Value>(m.payload().unwrap_or_default()).expect("JSON");
        }
    };
    let port = decision.get("port").and_then(|p| p.as_str()).unwrap_or_default();
    assert!(["release", "inspect", "certificate", "hold"].contains(&port), "{decision}");
    // What Prometheus scrapes (the message counts are set once a second).
    let scrape = || crate::support::scrape(&metrics);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let body = scrape();
        if body.contains("cbec_messages_in_total{topic=\"scans\"}")
            && body.contains("cbec_controls_held{scope=\"aimed\"}")
            && body.contains("cbec_consumer_lag{topic=\"cbec.scans\",partition=\"0\"}")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no scans, controls or the scans topic's lag at the metrics endpoint:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The archive service: the tables from the topics the cbec service writes, in the
    // folder it is given (the volume's path replaced by the test's).
    let (args, mut archive) = process("archive");
    assert_eq!(args.first().map(String::as_str), Some("archive"), "{args:?}");
    let archive_log = broker.dir.path().join("archive.log");
    let archiver = archive.stderr(std::fs::File::create(&archive_log).unwrap()).spawn().expect("cbec archive");
    let mut archiver = Kill(archiver);
    let sorting_table = broker.dir.path().join("archive/tables/sorting");
    let deadline = Instant::now() + Duration::from_secs(90);
    while !std::fs::read_dir(&sorting_table).is_ok_and(|mut days| days.next().is_some()) {
        let log = || std::fs::read_to_string(&archive_log).unwrap_or_default();
        assert!(Instant::now() < deadline, "no sorting table from the archive service; its log:\n{}", log());
        if let Ok(Some(status)) = archiver.0.try_wait() {
            panic!("the archive service's process ended ({status}); its log:\n{}", log());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // Its metrics endpoint, at the address its command gives.
    let body = crate::support::scrape(&archive_metrics);
    assert!(body.contains("cbec_archive_records_total{topic=\"sorting\"}"), "{body}");
}

/// The Debian package that holds `path`, asking `dpkg` under the path as given, with `/usr`
/// before it (the merged `/usr`), and resolved.
fn package_of(path: &str) -> Option<String> {
    let resolved = std::fs::canonicalize(path).ok().map(|p| p.display().to_string());
    let candidates = [Some(path.to_string()), path.starts_with("/lib").then(|| format!("/usr{path}")), resolved];
    candidates.into_iter().flatten().find_map(|p| {
        let out = Command::new("dpkg").args(["-S", &p]).output().ok()?;
        let line = String::from_utf8_lossy(&out.stdout).lines().next()?.to_string();
        let pkg = line.split(':').next()?.trim().to_string();
        (out.status.success() && !pkg.is_empty()).then_some(pkg)
    })
}

/// Every shared library the built `cbec` needs comes, on Debian 12 (the runtime stage's
/// base, `debian:bookworm-slim`), from a package that stage installs or from the C library
/// and the GCC runtime every Debian image has: otherwise the image's binary would not start
/// ("error while loading shared libraries"), which nothing else here could notice.
#[test]
fn the_runtime_image_installs_the_libraries_cbec_needs() {
    let debian = std::fs::read_to_string("/etc/debian_version").unwrap_or_default();
    if !debian.starts_with("12.") || Command::new("dpkg").arg("--version").output().is_err() {
        eprintln!("SKIPPED: the library check needs Debian 12 (the runtime image's release) with dpkg");
        return;
    }
    let dockerfile = std::fs::read_to_string(repo_root().join("docker/Dockerfile")).unwrap();
    let runtime = dockerfile.split("FROM debian:bookworm-slim").nth(1).expect("the runtime stage");
    let install = runtime.split("--no-install-recommends").nth(1).expect("its apt-get install");
    let mut installed: BTreeSet<String> =
        install.split("&&").next().unwrap().split_whitespace().filter(|w| *w != "\\").map(str::to_string).collect();
    assert!(installed.contains("ca-certificates"), "{installed:?}");
    installed.extend(["libc6".to_string(), "libgcc-s1".to_string()]);
    let bin = crate::support::cbec_bin();
    let ldd = Command::new("ldd").arg(&bin).output().expect("ldd");
    let ldd = String::from_utf8_lossy(&ldd.stdout).to_string();
    let mut needed = Vec::new();
    for line in ldd.lines().map(str::trim).filter(|l| !l.starts_with("linux-vdso")) {
        // `libssl.so.3 => /lib/x86_64-linux-gnu/libssl.so.3 (0x…)` or `/lib64/ld-linux… (0x…)`.
        let path = line.split("=>").last().unwrap().split_whitespace().next().expect("a path");
        assert!(path.starts_with('/'), "{line}: not found on this machine");
        let pkg = package_of(path).unwrap_or_else(|| panic!("no package holds {path}"));
        needed.push((path.to_string(), pkg));
    }
    assert!(needed.iter().any(|(_, p)| p == "libc6"), "{needed:?}");
    let missing: Vec<&(String, String)> = needed.iter().filter(|(_, p)| !installed.contains(p)).collect();
    assert!(missing.is_empty(), "the runtime stage does not install {missing:?} (it installs {installed:?})");
}

/// The services of `docker/compose.yml` (the names at two spaces' indent under `services:`).
fn services(compose: &str) -> BTreeSet<String> {
    compose
        .lines()
        .skip_while(|l| *l != "services:")
        .filter(|l| l.starts_with("  ") && !l.starts_with("   ") && l.trim_end().ends_with(':'))
        .map(|l| l.trim().trim_end_matches(':').to_string())
        .collect()
}

/// Prometheus scrapes what the stack runs: every target of `docker/prometheus.yml` names a
/// cbec service of the compose file at the port it serves its metrics on (`cbec run`: the
/// image's `CBEC_METRICS_ADDR`; `cbec archive`: its command's `--metrics-addr`), and every
/// cbec service is scraped.
#[test]
fn prometheus_scrapes_every_cbec_service_at_its_metrics_port() {
    let compose = std::fs::read_to_string(repo_root().join("docker/compose.yml")).unwrap();
    let prometheus = std::fs::read_to_string(repo_root().join("docker/prometheus.yml")).unwrap();
    let image_env = crate::support::dockerfile_env();
    let addr =
        image_env.iter().find(|(k, _)| k == "CBEC_METRICS_ADDR").map(|(_, v)| v).expect("the image's metrics address");
    let run_port = addr.rsplit(':').next().unwrap().to_string();
    let services = services(&compose);
    // The cbec services, each with the port it serves its metrics on.
    let mut cbec = BTreeMap::new();
    for s in &services {
        let block = service_block(&compose, s).join("\n");
        if !block.contains("docker/Dockerfile") {
            continue;
        }
        if block.contains("\"run\"") {
            cbec.insert(s.clone(), run_port.clone());
        } else if block.contains("[\"archive\"") {
            let after = block.split("\"--metrics-addr\", \"").nth(1).expect("the archive's --metrics-addr");
            let port = after.split('"').next().unwrap().rsplit(':').next().unwrap();
            cbec.insert(s.clone(), port.to_string());
        }
    }
    assert!(cbec.len() >= 5, "{cbec:?} among {services:?}");
    let mut scraped = BTreeSet::new();
    let mut dns_port = None;
    for line in prometheus.lines().map(str::trim) {
        if let Some(list) = line.strip_prefix("- targets:") {
            for t in list.trim().trim_matches(|c| c == '[' || c == ']').split(',') {
                let (host, p) = t.trim().trim_matches('"').split_once(':').expect("host:port");
                assert_eq!(cbec.get(host).map(String::as_str), Some(p), "{t}: not a cbec service at its metrics port");
                scraped.insert(host.to_string());
            }
        } else if let Some(list) = line.strip_prefix("- names:") {
            for n in list.trim().trim_matches(|c| c == '[' || c == ']').split(',') {
                scraped.insert(n.trim().trim_matches('"').to_string());
            }
        } else if let Some(p) = line.strip_prefix("port:") {
            dns_port = Some(p.trim().to_string());
        }
    }
    assert_eq!(dns_port.as_ref(), Some(&run_port), "the DNS-discovered targets' port");
    assert_eq!(scraped, cbec.keys().cloned().collect(), "Prometheus's targets and the compose file's cbec services");
}
