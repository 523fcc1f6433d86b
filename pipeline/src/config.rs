//! Configuration (CONTRACT §5): one TOML file with defaults built in; every value can be
//! overridden by an environment variable `CBEC_<FIELD>` (top level) or
//! `CBEC_RULES__<FIELD>` (rules table), e.g. `CBEC_BROKERS`, `CBEC_RULES__INSPECTION_RATE`.
//! Nothing is required for the embedded default.

use cbec_operators::rules::Rules;
use cbec_schemas::Topic;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Where Kafka-mode checkpoints live (`checkpoint_store`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// Files in `checkpoint_dir`.
    Dir,
    /// The topic `<group_id>.checkpoints`.
    Kafka,
}

/// Which stages a Kafka-mode process runs (`stage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Declare, clear, seal and summarize, in one process (one active per group).
    All,
    /// Declare, clear and seal; the exited lists and event time go to the topic
    /// `<group_id>.exited` for the summarize instances.
    Engine,
    /// A summarize instance: one member of the consumer group `<group_id>.summarize` on
    /// `<group_id>.exited`, holding the partitions the group gives it, each with its state.
    Summarize,
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Kafka bootstrap servers; empty = embedded mode.
    pub brokers: String,
    /// Consumer group id.
    pub group_id: String,
    /// Input topic names by short name (`orders = "cbec.orders"`); missing ones default to
    /// `cbec.<short>`.
    pub input_topics: BTreeMap<String, String>,
    /// Output topic prefix: outputs are `<prefix>declared`, `<prefix>receipts`, …
    pub output_prefix: String,
    /// Keyed state partitions of declare and clear.
    pub partitions: usize,
    /// HS nomenclature CSV (default `../shared/data/hs/harmonized-system.csv`, or
    /// `$CBEC_HS_FILE`).
    pub hs_file: Option<String>,
    /// Output directory of the embedded mode and of Parquet files.
    pub output_dir: String,
    /// Prometheus endpoint address; empty disables it.
    pub metrics_addr: String,
    /// Checkpoint directory (Kafka mode).
    pub checkpoint_dir: String,
    /// Checkpoint interval in milliseconds.
    pub checkpoint_interval_ms: u64,
    /// Where Kafka-mode checkpoints live: `dir` — files in `checkpoint_dir` (a standby on
    /// another machine must share it); `kafka` — the topic `<group_id>.checkpoints` on the
    /// brokers, so any process of the group can take over with nothing else shared.
    pub checkpoint_store: StoreKind,
    /// Kafka mode: how long the active process may be silent before the consumer group
    /// gives its lease to a standby (`session.timeout.ms` of the lease group
    /// `<group_id>.lease`; the broker bounds it by `group.min.session.timeout.ms`); also
    /// the session of a summarize instance in `<group_id>.summarize`.
    pub lease_session_ms: u64,
    /// Kafka mode: a stable identity of this process in the lease group (static
    /// membership, `group.instance.id`), e.g. the pod name: restarted with the same id, a
    /// process takes its lease back at once instead of waiting `lease_session_ms` for its
    /// dead self. Empty: a new member on every start.
    pub instance_id: String,
    /// Kafka mode: the stages this process runs: `all`; or `engine` and `summarize`, in
    /// separate processes joined by the topic `<group_id>.exited` (each kind with its own
    /// lease, checkpoints and standbys).
    pub stage: Stage,
    /// Partitions of `<group_id>.exited` when cbec creates it (keyed by `ebcCode`): at most
    /// this many summarize instances share the work.
    pub exited_partitions: usize,
    /// Allowed out-of-orderness across sources, in event-time milliseconds.
    pub lateness_ms: i64,
    /// How far, in milliseconds, a message's event time may lie after it was sent (its
    /// Kafka record's timestamp; in the embedded mode its file's modification time or a
    /// generated message's arrival): a message dated further ahead goes to the dead-letter
    /// topic (`future_time`) instead of moving event time there for every key. 0: no bound.
    pub max_lead_ms: u64,
    /// Capacity of every bounded queue (messages).
    pub queue_capacity: usize,
    /// Rows per Parquet file before it is closed (files appear atomically).
    pub parquet_rows: usize,
    /// Keys (orders, parcels) the keyed state is sized for up front, 0 to grow on demand.
    /// A hash map that doubles copies and rehashes every entry at once: a pause of a few
    /// milliseconds on the decision path at peak. Set it to the peak's parcels in flight.
    pub state_capacity: usize,
    /// Memory for input messages fetched ahead of their turn (Kafka mode), in MiB, shared
    /// by all input partitions: per partition two thirds for librdkafka's queue and one
    /// third for a fetch.
    pub input_prefetch_mb: usize,
    /// The engine thread on a CPU of its own (the last this process may use), every other
    /// thread of the process on the others: the decisions never wait for a CPU behind the
    /// decoding, sink or summarize threads. For a machine given to one cbec process: two
    /// pinned processes would share the same CPU.
    pub pin_engine: bool,
    /// Supervision rules.
    pub rules: Rules,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            brokers: String::new(),
            group_id: "cbec".into(),
            input_topics: BTreeMap::new(),
            output_prefix: "cbec.".into(),
            partitions: 4,
            hs_file: None,
            output_dir: "cbec-out".into(),
            metrics_addr: "127.0.0.1:9898".into(),
            checkpoint_dir: "cbec-checkpoints".into(),
            checkpoint_interval_ms: 5_000,
            checkpoint_store: StoreKind::Dir,
            lease_session_ms: 10_000,
            instance_id: String::new(),
            stage: Stage::All,
            exited_partitions: 4,
            lateness_ms: 0,
            max_lead_ms: 3_600_000,
            queue_capacity: 8192,
            parquet_rows: 200_000,
            state_capacity: 0,
            input_prefetch_mb: 512,
            pin_engine: false,
            rules: Rules::default(),
        }
    }
}

fn env_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match doc.parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.into()),
    }
}

impl Config {
    /// Loads `path` (if any) over the defaults, then applies `CBEC_*` overrides from `env`.
    pub fn load(path: Option<&Path>, env: &BTreeMap<String, String>) -> Result<Config, String> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?,
            None => String::new(),
        };
        let mut table: toml::Table = text.parse().map_err(|e| format!("config: {e}"))?;
        let defaults = toml::Table::try_from(Config::default()).map_err(|e| e.to_string())?;
        for (k, v) in &defaults {
            if k == "rules" {
                let rules = table.entry("rules").or_insert_with(|| toml::Value::Table(toml::Table::new()));
                if let Some(rt) = rules.as_table_mut() {
                    // Every `CBEC_RULES__*` (optional rules such as `tariff_csv` have no default
                    // to list them); a name that is no rule is refused by the rules' parser.
                    for (name, raw) in env {
                        if let Some(rk) = name.strip_prefix("CBEC_RULES__") {
                            rt.insert(rk.to_lowercase(), env_value(raw));
                        }
                    }
                }
            } else if let Some(raw) = env.get(&format!("CBEC_{}", k.to_uppercase())) {
                let val =
                    if matches!(v, toml::Value::String(_)) { toml::Value::String(raw.clone()) } else { env_value(raw) };
                table.insert(k.clone(), val);
            }
        }
        if let Some(raw) = env.get("CBEC_HS_FILE") {
            table.entry("hs_file").or_insert(toml::Value::String(raw.clone()));
        }
        let cfg: Config = table.try_into().map_err(|e: toml::de::Error| format!("config: {e}"))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The `CBEC_*` variables of `env` that name no setting and are not read by cbec's tools
    /// either (the test and bench harnesses, `scripts/`): most likely typos, which would
    /// otherwise be ignored silently.
    pub fn unknown_env(env: &BTreeMap<String, String>) -> Vec<String> {
        const TOOLS: [&str; 7] = [
            "CBEC_HS_FILE",
            "CBEC_SHARED",
            "CBEC_CEB_SAMPLES",
            "CBEC_NO_KAFKA",
            "CBEC_CACHE",
            "CBEC_KAFKA_PORT",
            "CBEC_BIN",
        ];
        let fields: Vec<String> = toml::Table::try_from(Config::default())
            .map(|t| t.keys().map(|k| format!("CBEC_{}", k.to_uppercase())).collect())
            .unwrap_or_default();
        env.keys()
            .filter(|k| k.starts_with("CBEC_") && !k.starts_with("CBEC_RULES__"))
            .filter(|k| !k.starts_with("CBEC_TEST_") && !k.starts_with("CBEC_BENCH_"))
            .filter(|k| !TOOLS.contains(&k.as_str()) && !fields.contains(k))
            .cloned()
            .collect()
    }

    /// The process environment's `CBEC_*` variables.
    pub fn env() -> BTreeMap<String, String> {
        std::env::vars().filter(|(k, _)| k.starts_with("CBEC_")).collect()
    }

    fn validate(&self) -> Result<(), String> {
        if self.partitions == 0 || self.partitions > 1024 {
            return Err("partitions must be 1..=1024".into());
        }
        if self.queue_capacity == 0 {
            return Err("queue_capacity must be positive".into());
        }
        if self.input_prefetch_mb == 0 {
            return Err("input_prefetch_mb must be positive".into());
        }
        if self.exited_partitions == 0 || self.exited_partitions > 1024 {
            return Err("exited_partitions must be 1..=1024".into());
        }
        for k in self.input_topics.keys() {
            if Topic::from_name(k).is_none() {
                return Err(format!("input_topics: unknown topic '{k}'"));
            }
        }
        let r = &self.rules;
        if r.inspection_rate.is_negative() || r.inspection_rate > cbec_schemas::Dec::from_int(1) {
            return Err("rules.inspection_rate must be in [0, 1]".into());
        }
        if !(1..=2).contains(&r.summary_flag) {
            return Err("rules.summary_flag must be 1 or 2".into());
        }
        Ok(())
    }

    /// Kafka topic name of an input.
    pub fn input_topic(&self, t: Topic) -> String {
        self.input_topics.get(t.short()).cloned().unwrap_or_else(|| t.default_name())
    }

    /// Kafka topic name of an output (`declared` → `cbec.declared`).
    pub fn output_topic(&self, short: &str) -> String {
        format!("{}{short}", self.output_prefix)
    }

    /// The topic from the engine stage to the summarize instances: `<group_id>.exited`.
    pub fn exited_topic(&self) -> String {
        format!("{}.exited", self.group_id)
    }

    /// The consumer group of the summarize instances: `<group_id>.summarize`.
    pub fn summarize_group(&self) -> String {
        format!("{}.summarize", self.group_id)
    }

    /// Loads the rules' tariff CSV, if configured, into the rules.
    pub fn resolve_rules(&mut self) -> Result<(), String> {
        if let Some(p) = self.rules.tariff_csv.clone() {
            let text = std::fs::read_to_string(&p).map_err(|e| format!("tariff_csv {p}: {e}"))?;
            self.rules.merge_tariff(&text)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_file_and_env_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cbec.toml");
        std::fs::write(&p, "partitions = 2\n[rules]\nsummary_flag = 2\n").unwrap();
        let env: BTreeMap<String, String> = [
            ("CBEC_BROKERS", "127.0.0.1:9092"),
            ("CBEC_RULES__INSPECTION_RATE", "\"0.2\""),
            ("CBEC_PARTITIONS", "3"),
            ("CBEC_RULES__STATE_RETENTION_DAYS", "7"),
            ("CBEC_CHECKPOINT_STORE", "kafka"),
            ("CBEC_TEST_BROKERS", "ignored"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        let c = Config::load(Some(&p), &env).unwrap();
        assert_eq!(c.brokers, "127.0.0.1:9092");
        assert_eq!(c.partitions, 3, "environment beats the file");
        assert_eq!(c.rules.summary_flag, 2);
        assert_eq!(c.rules.inspection_rate, cbec_schemas::Dec::parse("0.2").unwrap());
        assert_eq!(c.rules.state_retention_days, 7);
        assert_eq!(c.rules.payment_wait_hours, 24, "defaults fill the rest");
        assert_eq!(c.checkpoint_store, StoreKind::Kafka);
        let env: BTreeMap<String, String> = [("CBEC_STAGE", "summarize"), ("CBEC_EXITED_PARTITIONS", "8")]
            .into_iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let c = Config::load(None, &env).unwrap();
        assert_eq!((c.stage, c.exited_partitions), (Stage::Summarize, 8));
        let env: BTreeMap<String, String> =
            [("CBEC_RULES__TARIFF_CSV", "t.csv")].into_iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        let c = Config::load(None, &env).unwrap();
        assert_eq!(c.rules.tariff_csv.as_deref(), Some("t.csv"), "an optional rule is set from the environment");
        let env: BTreeMap<String, String> = [("CBEC_RULES__INSPECTION_RAT", "\"0.2\"")]
            .into_iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert!(Config::load(None, &env).is_err(), "a rule that does not exist is refused");
        let env: BTreeMap<String, String> = [
            "CBEC_STAGE",
            "CBEC_SUMMARIZE_INSTANCE",
            "CBEC_TEST_BROKERS",
            "CBEC_BENCH_ORDERS",
            "CBEC_HS_FILE",
            "CBEC_PARTITION",
        ]
        .into_iter()
        .map(|a| (a.to_string(), String::new()))
        .collect();
        assert_eq!(Config::unknown_env(&env), ["CBEC_PARTITION", "CBEC_SUMMARIZE_INSTANCE"]);
        std::fs::write(&p, "stage = \"clear\"\n").unwrap();
        assert!(Config::load(Some(&p), &BTreeMap::new()).is_err(), "an unknown stage is refused");
        std::fs::write(&p, "checkpoint_store = \"s3\"\n").unwrap();
        assert!(Config::load(Some(&p), &BTreeMap::new()).is_err(), "an unknown store is refused");
        std::fs::write(&p, "bogus = 1\n").unwrap();
        assert!(Config::load(Some(&p), &BTreeMap::new()).is_err());
        std::fs::write(&p, "[rules]\ninspection_rate = \"1.5\"\n").unwrap();
        assert!(Config::load(Some(&p), &BTreeMap::new()).is_err());
    }
}
