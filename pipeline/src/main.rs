//! The `cbec` command line.

use anyhow::Context;
use cbec_pipeline::config::{Config, Stage};
use cbec_pipeline::generator::{self, GenConfig};
use cbec_pipeline::{check, embedded, kafka, load_hs, report, sink};
use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use std::path::PathBuf;

// Entities are allocated on source threads and freed on the engine and sink threads; glibc's
// arenas serialize that on a lock (measured: a third of the time in futex waits).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// cbec: China Customs 9610 cross-border e-commerce export supervision, as a stream.
#[derive(Parser)]
#[command(name = "cbec", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the pipeline: embedded (default: a generated workload, or --input DIR), or
    /// against Kafka with --brokers.
    ///
    /// Configuration: --config FILE (TOML; see README) with every value overridable by
    /// CBEC_<FIELD> environment variables (CBEC_BROKERS, CBEC_PARTITIONS, CBEC_OUTPUT_DIR,
    /// CBEC_METRICS_ADDR, CBEC_CHECKPOINT_DIR, CBEC_HS_FILE, …) and CBEC_RULES__<FIELD> for
    /// the rules (CBEC_RULES__INSPECTION_RATE, CBEC_RULES__SAMPLING_KEY, …).
    ///
    /// Kafka mode runs every stage in one process (CBEC_STAGE=all), or CBEC_STAGE=engine
    /// (declare, clear, seal) and CBEC_STAGE=summarize instances (the consumer group
    /// <group_id>.summarize) in separate processes, joined by the topic <group_id>.exited.
    /// Several processes of one group: the one holding the lease <group_id>.lease runs, the
    /// others stand by. A process waits for its brokers at start; one whose lease session
    /// ends (stalled, or a broker restarting) starts again in its place as a standby and
    /// goes on from the last checkpoint.
    Run(RunArgs),
    /// Write the Parquet tables of a Kafka deployment from its output topics (Kafka mode
    /// writes topics only): the same tables and rows as the embedded mode's, under
    /// --output, for `cbec sql --data`. Exactly once into files, through restarts: each
    /// partition is read in chunks named after where they start, and the last chunk of
    /// each partition is written again on start. A record the pipeline produced twice
    /// (replayed after a crash) is written once, across restarts of the archiver too;
    /// partitions added while it runs are read. Reads the topic names and
    /// output_prefix from --config / CBEC_* like `cbec run`; its consumer group is
    /// <group_id>.archive (offsets are not committed: the files say where it is).
    Archive(ArchiveArgs),
    /// Decode and validate message files (JSON lines or CEB XML).
    Check {
        /// Files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Generate a consistent, seeded story across all input topics.
    Gen(GenArgs),
    /// SQL over the pipeline's Parquet output (DataFusion). No query: interactive prompt.
    Sql {
        /// Output directory of a run (holds tables/).
        #[arg(long, default_value = "cbec-out")]
        data: PathBuf,
        /// Output format.
        #[arg(long, default_value = "table", value_parser = ["table", "csv", "json"])]
        format: String,
        /// The query.
        query: Option<String>,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Rules and settings (TOML).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Input folder: one file or folder per topic (orders.jsonl, cbec.lists.xml, scans/ …).
    #[arg(long)]
    input: Option<PathBuf>,
    /// Output folder (JSON lines per output topic, Parquet under tables/).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Kafka bootstrap servers: run as a member of the consumer group.
    #[arg(long)]
    brokers: Option<String>,
    /// Orders of the generated workload (embedded default).
    #[arg(long, default_value_t = 20_000)]
    orders: usize,
    /// Seed of the generated workload.
    #[arg(long, default_value_t = 1111)]
    seed: u64,
    /// Keyed state partitions.
    #[arg(long)]
    partitions: Option<usize>,
    /// Prometheus endpoint (empty: none).
    #[arg(long)]
    metrics_addr: Option<String>,
    /// Do not write Parquet.
    #[arg(long)]
    no_parquet: bool,
    /// Kafka mode: stop when every partition is at its end, after advancing event time to
    /// the end of time (a complete, comparable run over a finite topic content).
    #[arg(long)]
    exit_when_idle: bool,
    /// Kafka mode: checkpoint directory.
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
struct ArchiveArgs {
    /// Settings (TOML), as for `cbec run`.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Kafka bootstrap servers.
    #[arg(long)]
    brokers: Option<String>,
    /// Output folder (the tables go under tables/); give the archive a folder of its own.
    #[arg(long, default_value = "cbec-archive")]
    output: PathBuf,
    /// Stop once every partition was read to its end (nothing new for a second).
    #[arg(long)]
    exit_when_idle: bool,
    /// Prometheus endpoint (empty: none). Not the configuration's `metrics_addr`: that is
    /// the port of `cbec run`, which may share the host and the configuration file.
    #[arg(long, default_value = "127.0.0.1:9899")]
    metrics_addr: String,
}

#[derive(clap::Args)]
struct GenArgs {
    /// Write the story here: a file or folder per topic, and expected.json.
    #[arg(long)]
    out: Option<PathBuf>,
    /// File format: JSON lines, or CEB XML documents for the CEB topics (orders, lists,
    /// payments, waybills, arrivals, departures) and JSON lines for the others.
    #[arg(long, default_value = "json", value_parser = ["json", "xml"])]
    format: String,
    /// Or produce to Kafka.
    #[arg(long)]
    brokers: Option<String>,
    /// Target rate in messages/second when producing (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Orders (parcels) in the story.
    #[arg(long, default_value_t = 20_000)]
    orders: usize,
    /// Seed.
    #[arg(long, default_value_t = 1111)]
    seed: u64,
    /// Generator settings (TOML with the fields of the generator; see README).
    #[arg(long)]
    gen_config: Option<PathBuf>,
    /// Pipeline config (its rules drive certificate/tax goods and expected outcomes).
    #[arg(long)]
    config: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    cbec_pipeline::alloc::set_up();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Check { files } => {
            let paths: Vec<&std::path::Path> = files.iter().map(PathBuf::as_path).collect();
            let mut out = std::io::stdout().lock();
            // The bound on event times ahead of a file's writing, as `cbec run` has it
            // (`CBEC_MAX_LEAD_MS`).
            let lead = Config::load(None, &Config::env()).map_err(anyhow::Error::msg)?.max_lead_ms;
            let rep = check::check_files(&paths, lead, &mut out)?;
            std::process::exit(if rep.all_valid() { 0 } else { 1 });
        }
        Cmd::Gen(a) => generate_cmd(a),
        Cmd::Run(a) => run(a),
        Cmd::Archive(a) => archive(a),
        #[cfg(feature = "sql")]
        Cmd::Sql { data, format, query } => match cbec_pipeline::sql::main(&data, &format, query.as_deref()) {
            Ok(()) => Ok(()),
            Err(e) => {
                eprintln!("error: {e:#}");
                std::process::exit(2);
            }
        },
        #[cfg(not(feature = "sql"))]
        Cmd::Sql { .. } => anyhow::bail!("this cbec was built without the `sql` feature"),
    }
}

fn load_config(path: Option<&std::path::Path>) -> anyhow::Result<Config> {
    let env = Config::env();
    for name in Config::unknown_env(&env) {
        eprintln!(
            "warning: {name} names no setting and is ignored (settings: cbec run --help, README § Configuration)"
        );
    }
    let mut cfg = Config::load(path, &env).map_err(anyhow::Error::msg)?;
    cfg.resolve_rules().map_err(anyhow::Error::msg)?;
    Ok(cfg)
}

fn archive(a: ArchiveArgs) -> anyhow::Result<()> {
    let mut cfg = load_config(a.config.as_deref())?;
    if let Some(b) = a.brokers {
        cfg.brokers = b;
    }
    anyhow::ensure!(!cfg.brokers.is_empty(), "cbec archive reads the output topics: give --brokers");
    if !a.metrics_addr.is_empty()
        && let Err(e) = cbec_pipeline::metrics::install(&a.metrics_addr)
    {
        eprintln!("warning: metrics endpoint {} not started: {e}", a.metrics_addr);
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    kafka::stop_on_signals(stop.clone(), "writing the chunks read so far, exiting");
    let stats = cbec_pipeline::archive::run(&cfg, &a.output, a.exit_when_idle, stop)?;
    print!("{}", cbec_pipeline::archive::render(&stats));
    Ok(())
}

fn generate_cmd(a: GenArgs) -> anyhow::Result<()> {
    let cfg = load_config(a.config.as_deref())?;
    let hs = load_hs(&cfg);
    let mut g: GenConfig = match &a.gen_config {
        Some(p) => toml::from_str(&std::fs::read_to_string(p)?)?,
        None => GenConfig::default(),
    };
    g.orders = a.orders;
    g.seed = a.seed;
    let story = generator::generate(&g, &cfg.rules, &hs);
    let n: u64 = story.expected.messages.values().sum();
    if let Some(dir) = &a.out {
        if a.format == "xml" {
            generator::write_dir_xml(&story, dir)?;
        } else {
            generator::write_dir(&story, dir)?;
        }
        eprintln!("cbec gen: {n} messages for {} orders written to {}", g.orders, dir.display());
    }
    if let Some(b) = &a.brokers {
        let sent = kafka::produce_story(b, &cfg, &story, a.rate, true)?;
        eprintln!("cbec gen: {sent} messages produced to {b}");
    }
    if a.out.is_none() && a.brokers.is_none() {
        anyhow::bail!("say where the story goes: --out DIR and/or --brokers HOST:PORT");
    }
    Ok(())
}

fn run(a: RunArgs) -> anyhow::Result<()> {
    let mut cfg = load_config(a.config.as_deref())?;
    if let Some(p) = a.partitions {
        cfg.partitions = p;
    }
    if let Some(m) = a.metrics_addr {
        cfg.metrics_addr = m;
    }
    if let Some(o) = &a.output {
        cfg.output_dir = o.display().to_string();
    }
    if let Some(b) = a.brokers {
        cfg.brokers = b;
    }
    if let Some(c) = &a.checkpoint_dir {
        cfg.checkpoint_dir = c.display().to_string();
    }
    if !cfg.metrics_addr.is_empty()
        && let Err(e) = cbec_pipeline::metrics::install(&cfg.metrics_addr)
    {
        eprintln!("warning: metrics endpoint {} not started: {e}", cfg.metrics_addr);
    }
    let hs = load_hs(&cfg);
    let tty = std::io::stderr().is_terminal();
    let progress: Option<cbec_pipeline::runner::Progress> = Some(Box::new(move |s| {
        if tty {
            eprint!("\r{}   ", report::progress_line(s));
        } else {
            eprintln!("{}", report::progress_line(s));
        }
    }));
    let stats = if cfg.stage == Stage::Summarize {
        anyhow::ensure!(
            !cfg.brokers.is_empty(),
            "stage \"summarize\" reads the topic of an engine stage: give --brokers"
        );
        cbec_pipeline::stage::run_summarize(&cfg, a.exit_when_idle, progress)?
    } else if !cfg.brokers.is_empty() {
        kafka::run(&cfg, hs, a.exit_when_idle, progress)?
    } else {
        anyhow::ensure!(
            cfg.stage == Stage::All,
            "stage \"engine\" hands over to summarize instances through Kafka: give --brokers"
        );
        let out = PathBuf::from(&cfg.output_dir);
        let inputs = match &a.input {
            Some(dir) => embedded::discover(dir).with_context(|| format!("input {}", dir.display()))?,
            None => {
                let g = GenConfig { orders: a.orders, seed: a.seed, ..GenConfig::default() };
                eprintln!("cbec: no --input: generating a workload of {} orders (seed {})", g.orders, g.seed);
                let story = generator::generate(&g, &cfg.rules, &hs);
                std::fs::create_dir_all(&out)?;
                std::fs::write(out.join("expected.json"), serde_json::to_vec_pretty(&story.expected)?)?;
                story.inputs()
            }
        };
        let file_sink = sink::FileSink::new(&out, &cfg.output_prefix, (!a.no_parquet).then_some(cfg.parquet_rows))?;
        let s = embedded::run(&cfg, hs, inputs, Box::new(file_sink), progress)?;
        eprintln!();
        eprintln!("outputs in {}", out.display());
        s
    };
    if tty {
        eprintln!();
    }
    print!("{}", report::render(&stats));
    Ok(())
}
