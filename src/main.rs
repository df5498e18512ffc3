//! The weir worker binary: `weir run`, `weir reset`, `weir replay`, `weir status`,
//! `weir dlq`, `weir sql`, `weir demo`, `weir generate`, `weir bench`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::{Parser, Subcommand};
use weir::config::{LogFormat, ValidatedPipeline};
use weir::pipeline::Pipeline;
use weir_runtime::Shutdown;

#[derive(Parser)]
#[command(
    name = "weir",
    version,
    about = "Stream processing on Arrow and DataFusion"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipeline described by a TOML file until its input ends or SIGTERM/Ctrl-C.
    Run {
        /// Path of the pipeline file.
        pipeline: PathBuf,
        /// Only check the file and print what is wrong with it.
        #[arg(long)]
        check: bool,
        /// Serve /metrics, /healthz and /readyz on this ip:port (port 0: a free one, printed
        /// on stderr), whatever `[metrics]` says.
        #[arg(long, value_name = "IP:PORT", value_parser = weir::metrics_http::parse_addr)]
        metrics_addr: Option<std::net::SocketAddr>,
        /// `human` (coloured only on a terminal) or `json` (one JSON object per line); wins
        /// over `[worker] log_format`.
        #[arg(long, value_name = "human|json", value_parser = ["human", "json"])]
        log_format: Option<String>,
    },
    /// Rebuild the read model of a pipeline whose sink is `postgres` into a fresh table
    /// (`<table>__replay`), then swap it in atomically once caught up.
    ///
    /// The replay reads every partition from `--from` up to the end offsets recorded when it
    /// starts, with its own checkpoints (pipeline `<name>__replay`). Once every partition's
    /// checkpoint has reached its end, one PostgreSQL transaction renames the live table to
    /// `<table>__replaced` (dropping an older one), renames the shadow table to the live name
    /// and makes the replay's checkpoints the live pipeline's: a `weir run` started afterwards
    /// resumes where the replay stopped. The replay refuses to start while a `weir run` of the
    /// pipeline holds the pipeline's PostgreSQL advisory lock (and `weir run` refuses during a
    /// replay). An interrupted replay (signal, kill, error) changes nothing live; the next one
    /// starts the shadow table over. Dead letters of the replay go to `<dlq path>__replay`.
    Replay {
        /// Path of the pipeline file.
        pipeline: PathBuf,
        /// `earliest`: the first offset of every partition. An RFC 3339 time
        /// (2026-01-31T12:00:00Z, 2026-01-31T13:00:00+01:00): the first offset whose Kafka
        /// timestamp is at or after it (kafka sources only). The operators' state starts
        /// EMPTY at that point, so use a time only for a read model whose state can restart
        /// there (e.g. windows that start after it, or keys whose first event follows it);
        /// a projection that needs earlier events must replay from `earliest`.
        #[arg(long, value_name = "earliest|TIME")]
        from: weir::replay::ReplayFrom,
    },
    /// Discard a pipeline's state so that its next run starts over (e.g. after a change its
    /// checkpoints no longer fit, which `weir run` refuses naming what changed).
    ///
    /// Replaces every stored checkpoint of the pipeline, in its store (the local directory,
    /// the PostgreSQL checkpoint rows of this pipeline, or the checkpoint topic of a
    /// transactional kafka sink), by a reset marker: no state, no offset, only the epoch
    /// number, so file outputs go on with new names and never replace published files. For
    /// a kafka source it sets the consumer group's committed offsets as --to says. Sink
    /// output (tables, files, topics) is kept. Refuses while the pipeline runs (the local
    /// store's lock, the PostgreSQL advisory lock, members in the consumer group). Without
    /// --yes it prints what it would do and changes nothing.
    Reset {
        /// Path of the pipeline file.
        pipeline: PathBuf,
        /// Where a kafka source's consumer group starts over (required for one):
        /// `earliest`, `latest`, `committed` (keep the group's offsets), or an RFC 3339 time
        /// (the first offset whose timestamp is at or after it). Other sources start over at
        /// their beginning.
        #[arg(long, value_name = "earliest|latest|committed|TIME")]
        to: Option<weir::reset::ResetTo>,
        /// Do it (without: print what would be done, change nothing).
        #[arg(long)]
        yes: bool,
    },
    /// Print what a pipeline's checkpoint store holds, without running it: each partition's
    /// checkpointed offset, epoch and when it was written (local and PostgreSQL stores), the
    /// source's end offset now and the lag, and the totals of the accounting counters. Takes
    /// no lock: it reads a running pipeline's store too.
    Status {
        /// Path of the pipeline file.
        pipeline: PathBuf,
    },
    /// List, show and replay a pipeline's dead letters (its `[dlq]`: JSONL files, a Kafka
    /// topic or a PostgreSQL table).
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// About pipeline files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Generator → 1-minute windows per sensor → SQLite, with no external service.
    Demo {
        /// Events to generate.
        #[arg(long, default_value_t = 2_000_000, value_parser = clap::value_parser!(u64).range(1..))]
        events: u64,
        /// Distinct sensors (keys).
        #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u32).range(1..))]
        sensors: u32,
        /// Partitions of the generated stream.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
        partitions: u32,
        /// Directory for the SQLite file, the DLQ and checkpoints (replaced on each run).
        #[arg(long, default_value = "weir-demo")]
        dir: PathBuf,
    },
    /// Run a streaming SQL query: SELECT ... GROUP BY keys, TUMBLE(ts, size) | HOP(ts, slide,
    /// size) | SESSION(ts, gap), sizes as INTERVAL '1' MINUTE.
    ///
    /// Without --dir every run starts fresh: checkpoints live in a temporary directory,
    /// removed at exit; dead letters, if any, are kept and their directory is printed. With
    /// --dir the state is kept there and the next run with the same --dir resumes from it
    /// (and says so).
    Sql {
        /// The query; the input is the table named by the schema (`events` by default, as in
        /// a pipeline file).
        query: String,
        /// generator[:key=value,...] | jsonl:PATH | kafka:BROKERS/TOPIC
        #[arg(long, default_value = "generator:events=100000")]
        source: String,
        /// terminal | jsonl:DIR | sqlite:PATH | null
        #[arg(long, default_value = "terminal")]
        sink: String,
        /// A TOML file with a [schema] table (default: the generator's IoT readings).
        #[arg(long)]
        schema: Option<PathBuf>,
        /// Bound on event-time disorder, in milliseconds (the default of `[watermark]` in a
        /// pipeline file too).
        #[arg(long, default_value_t = weir_operators::SqlOptions::default().max_out_of_orderness_ms)]
        max_out_of_orderness_ms: i64,
        /// Directory for the DLQ (`DIR/dlq`) and checkpoints (`DIR/checkpoints`), kept
        /// between runs: a run resumes from the checkpoints of the previous one. Default: a
        /// temporary directory, removed at exit (dead letters are kept and named).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Print the streaming plan and exit.
        #[arg(long)]
        explain: bool,
    },
    /// Write sample events to a Kafka topic (`--topic`, `--brokers`) or a JSONL file
    /// (`--out`): IoT readings, trades or order events, the same records for the same seed.
    ///
    /// Each key (sensor, symbol, order id) goes to one partition of the topic, which is
    /// created with `--partitions` partitions when it does not exist. Event times go back by
    /// up to `--disorder-ms` (out of order within the bound); `--late-ratio` events go back
    /// further, `--duplicate-ratio` records repeat an earlier one (a producer retry), and
    /// `--poison-ratio` records are malformed (for orders, half of them break their order's
    /// life cycle instead). A progress line is drawn when stderr is a terminal.
    Generate {
        /// iot | trades | orders
        #[arg(value_parser = clap::value_parser!(weir::generate::Dataset))]
        dataset: weir::generate::Dataset,
        /// Kafka topic to write to (with --brokers).
        #[arg(long, conflicts_with = "out")]
        topic: Option<String>,
        /// Kafka bootstrap brokers (default: WEIR_KAFKA_BROKERS, which scripts/kafka.sh start
        /// prints).
        #[arg(long, conflicts_with = "out")]
        brokers: Option<String>,
        /// JSONL file to write instead of a topic (one payload per line).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Records to write (duplicates and poison included).
        #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
        events: u64,
        /// At most this many records per second (default: as fast as the target takes them).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        rate: Option<u64>,
        /// Sensors (iot, default 100), symbols (trades, default 8) or orders in flight
        /// (orders, default 50).
        #[arg(long)]
        keys: Option<u32>,
        /// Partitions the keys are spread over (those of the topic).
        #[arg(long, default_value_t = 4)]
        partitions: u32,
        /// Share (0 to 1) of malformed records.
        #[arg(long, default_value_t = 0.0)]
        poison_ratio: f64,
        /// Share (0 to 1) of events later than the disorder bound allows (iot, trades).
        #[arg(long, default_value_t = 0.0)]
        late_ratio: f64,
        /// Share (0 to 1) of records that repeat an earlier record.
        #[arg(long, default_value_t = 0.0)]
        duplicate_ratio: f64,
        /// Bound of the event-time disorder, in milliseconds.
        #[arg(long, default_value_t = 2_000)]
        disorder_ms: u64,
        /// Mean event-time advance per record, in milliseconds.
        #[arg(long, default_value_t = 10)]
        interval_ms: u64,
        /// Seed of every random choice.
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Decode and window throughput on one thread, and peak memory.
    Bench {
        /// Events to process.
        #[arg(long, default_value_t = 10_000_000, value_parser = clap::value_parser!(u64).range(1..))]
        events: u64,
        /// Distinct sensors (keys).
        #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
        sensors: u32,
        /// Rows per batch.
        #[arg(long, default_value_t = 8192, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        batch_rows: u64,
        /// Read from a Kafka topic instead: produce --events into a new topic, then compare a
        /// raw consumer with weir's whole path over it.
        #[arg(long)]
        kafka: bool,
        /// Kafka bootstrap brokers for --kafka.
        #[arg(long, env = "WEIR_KAFKA_BROKERS")]
        brokers: Option<String>,
        /// Partitions of the benchmark topic (--kafka), or of the rows (--postgres).
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(i32).range(1..=1024))]
        partitions: i32,
        /// Benchmark the PostgreSQL sink instead: upsert --events rows over --sensors distinct
        /// keys in batches of --batch-rows, exactly-once (rows and checkpoint per partition
        /// in one transaction).
        #[arg(long, conflicts_with = "kafka")]
        postgres: bool,
        /// PostgreSQL for --postgres (`scripts/postgres.sh start` prints it).
        #[arg(long, env = "WEIR_PG_URL")]
        pg_url: Option<String>,
        /// --postgres: batches between checkpoints (each commits every partition).
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
        checkpoint_every: u64,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// A table of the pipeline's pending dead letters, oldest first: id, time of the last
    /// failure, kind, stage, source position, message.
    List {
        /// Path of the pipeline file.
        pipeline: PathBuf,
        /// Only this error kind (invalid_json, missing_field, wrong_type, null_payload,
        /// empty_message, late, future_event_time, operator_error, sink_rejected).
        #[arg(long, value_name = "KIND", value_parser = weir::dlq_cmd::parse_kind)]
        kind: Option<weir_runtime::ErrorKind>,
        /// Only those that failed last at or after this RFC 3339 time, or this long ago
        /// (90s, 15m, 2h, 7d).
        #[arg(long, value_name = "TIME", value_parser = weir::dlq_cmd::parse_since)]
        since: Option<i64>,
        /// Only the newest N.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        limit: Option<u64>,
        /// Include the dead letters replayed already (a STATUS column says which).
        #[arg(long)]
        all: bool,
    },
    /// Everything about one dead letter: kind, stage, message, source position, attempts,
    /// first and last failure, key and payload (as text when UTF-8, else hex).
    Show {
        /// Path of the pipeline file.
        pipeline: PathBuf,
        /// The dead letter's id, as `weir dlq list` prints it.
        #[arg(value_parser = weir::dlq_cmd::parse_id)]
        id: String,
    },
    /// Feed pending dead letters back through the pipeline (after fixing the code or the
    /// config), each as the message it was (topic, partition, offset).
    ///
    /// The pipeline must not be running. Each partition's letters are replayed as one more
    /// checkpoint epoch of that partition: the rows go to the sinks (a message one sink
    /// refused goes to that sink only), a letter whose message went through is marked
    /// replayed, one that fails again goes back to the DLQ under its id with attempts + 1.
    /// Only for stateless pipelines (filters, projections, dedup, upcasts): a window would
    /// emit results of the replayed messages alone. Progress and a summary on stderr.
    Replay {
        /// Path of the pipeline file.
        pipeline: PathBuf,
        /// Only dead letters of this error kind.
        #[arg(long, value_name = "KIND", value_parser = weir::dlq_cmd::parse_kind)]
        kind: Option<weir_runtime::ErrorKind>,
        /// Only these dead letters (repeat --id, or give several ids after it).
        #[arg(long = "id", value_name = "ID", num_args = 1.., value_parser = weir::dlq_cmd::parse_id)]
        ids: Vec<String>,
        /// Print what would be replayed and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// The reference of every pipeline.toml key (type, default, unit, what it does) and of
    /// the environment variables weir reads, as Markdown (docs/pipeline.md is its output).
    Reference {
        /// Write it to this file instead of stdout.
        #[arg(long, value_name = "PATH")]
        out: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `weir run` starts its log once the pipeline file (which may choose the format) is read.
    if !matches!(cli.command, Command::Run { .. }) {
        init_logs(LogFormat::Human, "warn");
    }
    match run(cli.command) {
        Ok(code) => code,
        Err(e) if JSON_LOG.load(Ordering::Relaxed) => {
            // The log's last line, in its format (log shippers parse every line).
            let line = serde_json::json!({
                "timestamp": weir::status_report::rfc3339(weir_runtime::metrics::now_ms()),
                "level": "ERROR",
                "message": format!("error: {}", describe(&e)),
                "target": "weir",
            });
            eprintln!("{line}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}

/// The log on stderr: `WEIR_LOG` (an `EnvFilter`: `info`, `weir=debug`, ...) or
/// `default_level`; human lines are coloured only when stderr is a terminal and `NO_COLOR`
/// is not set; JSON lines carry each event's fields at the top level.
/// The log is JSON lines: the error that ends a run is written as one too.
static JSON_LOG: AtomicBool = AtomicBool::new(false);

fn init_logs(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => {
            let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            builder.with_ansi(colour).init()
        }
        LogFormat::Json => {
            JSON_LOG.store(true, Ordering::Relaxed);
            builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .init()
        }
    }
}

/// `weir dlq ...`: tables and records on stdout, progress and summaries on stderr.
fn dlq(command: DlqCommand) -> anyhow::Result<ExitCode> {
    let file = match &command {
        DlqCommand::List { pipeline, .. }
        | DlqCommand::Show { pipeline, .. }
        | DlqCommand::Replay { pipeline, .. } => pipeline.clone(),
    };
    let cfg = match ValidatedPipeline::load(&file) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprint!("{e}");
            return Ok(ExitCode::from(2));
        }
    };
    match command {
        DlqCommand::List {
            kind,
            since,
            limit,
            all,
            ..
        } => {
            let sel = weir::dlq_cmd::Selection {
                kind,
                since_ms: since,
                limit: limit.map(|n| n as usize),
                all,
            };
            let (table, summary) = weir::dlq_cmd::list(&cfg, &sel)?;
            print!("{table}");
            eprintln!("{summary}");
        }
        DlqCommand::Show { id, .. } => print!("{}", weir::dlq_cmd::show(&cfg, &id)?),
        DlqCommand::Replay {
            kind, ids, dry_run, ..
        } => {
            if let Err(why) = weir::dlq_cmd::check_replayable(&cfg) {
                eprintln!("error: weir dlq replay {}: {why}", file.display());
                return Ok(ExitCode::from(2));
            }
            let req = weir::dlq_cmd::ReplayRequest { kind, ids, dry_run };
            let all = weir::dlq_cmd::read_all(&cfg)?;
            let plan = weir::dlq_cmd::plan(&cfg, all, &req)?;
            if dry_run {
                let (table, summary) = weir::dlq_cmd::dry_run(&cfg, &plan);
                print!("{table}");
                eprintln!("{summary}");
                return Ok(ExitCode::SUCCESS);
            }
            for (r, why) in &plan.skipped {
                eprintln!("weir dlq replay: skipped {}: {why}", r.id);
            }
            if plan.letters.is_empty() {
                eprintln!(
                    "weir dlq replay: pipeline `{}`: no pending dead letter to replay in {}",
                    cfg.name,
                    weir::dlq_cmd::place(&cfg)
                );
                return Ok(ExitCode::SUCCESS);
            }
            eprintln!(
                "weir dlq replay: pipeline `{}`: feeding back {} dead letter(s) from {}",
                cfg.name,
                plan.letters.len(),
                weir::dlq_cmd::place(&cfg)
            );
            let metrics = weir_runtime::Metrics::default();
            let summary = weir::dlq_cmd::replay(&cfg, plan, &metrics, &mut |line| {
                eprintln!("weir dlq replay: {line}")
            })?;
            eprintln!("{}", weir::dlq_cmd::summary_line(&cfg, &summary));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// An error and its causes, each cause only when the messages before it do not already
/// say it (most of weir's errors include their cause's text).
fn describe(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    let shutdown = Shutdown::new();
    match command {
        Command::Run {
            pipeline,
            check,
            metrics_addr,
            log_format,
        } => {
            let loaded = ValidatedPipeline::load(&pipeline);
            let format = match (log_format.as_deref(), &loaded) {
                (Some("json"), _) => LogFormat::Json,
                (Some(_), _) => LogFormat::Human,
                (None, Ok(cfg)) => cfg.worker.log_format.unwrap_or_default(),
                (None, Err(_)) => LogFormat::Human,
            };
            init_logs(format, "info");
            let cfg = match loaded {
                Ok(cfg) => cfg,
                Err(e) => {
                    eprint!("{e}");
                    return Ok(ExitCode::from(2));
                }
            };
            let errors = weir::preflight::check(&cfg);
            if !errors.is_empty() {
                let e = weir::config::ConfigError {
                    file: pipeline.clone(),
                    errors,
                };
                eprint!("{e}");
                return Ok(ExitCode::from(2));
            }
            if check {
                println!("{}: ok", pipeline.display());
                for line in cfg.watermark_summary() {
                    println!("  {line}");
                }
                println!("  retry: {}", cfg.retry_schedule().describe());
                return Ok(ExitCode::SUCCESS);
            }
            let metrics = Arc::new(weir_runtime::Metrics::default());
            let listen = match (metrics_addr, &cfg.metrics) {
                (Some(addr), _) => Some(("--metrics-addr", addr)),
                (None, Some(m)) if m.enabled => Some((
                    "metrics.addr",
                    weir::metrics_http::parse_addr(&m.addr)
                        .expect("invariant: validated when the file was loaded"),
                )),
                _ => None,
            };
            let _server = match listen {
                None => None,
                Some((key, addr)) => {
                    match weir::metrics_http::MetricsServer::start(addr, metrics.clone()) {
                        Ok(server) => {
                            match format {
                                LogFormat::Human => {
                                    eprintln!("metrics: serving http://{}/metrics", server.addr())
                                }
                                LogFormat::Json => tracing::info!(
                                    addr = %server.addr(),
                                    "metrics: serving http://{}/metrics",
                                    server.addr()
                                ),
                            }
                            Some(server)
                        }
                        Err(why) => {
                            let e = weir::config::ConfigError {
                                file: pipeline.clone(),
                                errors: vec![format!("{key}: {why}")],
                            };
                            eprint!("{e}");
                            return Ok(ExitCode::from(2));
                        }
                    }
                }
            };
            // Taken after the metrics address is bound (a taken address changes nothing).
            // Held until the run ends: a second worker on the same checkpoint directory, a
            // `weir reset` and a `weir replay` of the pipeline refuse to start meanwhile.
            let _local_lock = weir::reset::local_run_lock(&cfg)?;
            let _lock = weir::replay::run_lock(&cfg)?;
            weir::install_signal_handlers(shutdown.clone())?;
            let mode =
                weir::status::StatusMode::detect(cfg.worker.status_interval_secs.unwrap_or(30));
            let status = weir::status::StatusLine::start(mode, metrics.clone())?;
            let result =
                Pipeline::from_config(&cfg).and_then(|p| p.with_metrics(metrics).run(shutdown));
            drop(status);
            let summary = result?;
            let c = summary.counters;
            println!(
                "{}: {} events in {:.2}s ({:.0}/s): {} aggregated, {} rows out, {} dead-lettered, {} late, {} filtered, {} deduplicated; {} checkpoints{}",
                cfg.name,
                c.consumed,
                summary.elapsed.as_secs_f64(),
                c.consumed as f64 / summary.elapsed.as_secs_f64().max(1e-9),
                c.aggregated,
                c.rows_out,
                c.dlq,
                c.late,
                c.filtered,
                c.deduplicated,
                summary.checkpoints,
                if summary.finished { "; input finished" } else { "; stopped, resume with the same command" }
            );
            let waiting = summary.lifetime.in_retry();
            if c.retries > 0 || waiting > 0 {
                println!(
                    "{}: {} retries of failed events ({} succeeded); {waiting} event(s) wait for a retry in the checkpoints",
                    cfg.name, c.retries, c.retry_successes
                );
            }
            if summary.misplaced_keys > 0 {
                println!(
                    "{}: warning: {} value(s) of partition_key `{}` were seen in more than one partition: results keyed by it are split between partitions",
                    cfg.name,
                    summary.misplaced_keys,
                    cfg.schema.partition_key.as_deref().unwrap_or_default()
                );
            }
        }
        Command::Reset { pipeline, to, yes } => {
            let cfg = match ValidatedPipeline::load(&pipeline) {
                Ok(cfg) => cfg,
                Err(e) => {
                    eprint!("{e}");
                    return Ok(ExitCode::from(2));
                }
            };
            let to = match weir::reset::check(&cfg, to) {
                Ok(to) => to,
                Err(why) => {
                    eprintln!("error: {why}");
                    return Ok(ExitCode::from(2));
                }
            };
            print!("{}", weir::reset::run(&cfg, &pipeline, to, yes)?);
        }
        Command::Config {
            command: ConfigCommand::Reference { out },
        } => {
            let text = weir::config_reference::markdown();
            match out {
                Some(path) => std::fs::write(&path, text)
                    .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?,
                None => print!("{text}"),
            }
        }
        Command::Status { pipeline } => {
            let cfg = match ValidatedPipeline::load(&pipeline) {
                Ok(cfg) => cfg,
                Err(e) => {
                    eprint!("{e}");
                    return Ok(ExitCode::from(2));
                }
            };
            print!("{}", weir::status_report::run(&cfg, &pipeline)?);
        }
        Command::Dlq { command } => return dlq(command),
        Command::Replay { pipeline, from } => {
            let cfg = match ValidatedPipeline::load(&pipeline) {
                Ok(cfg) => cfg,
                Err(e) => {
                    eprint!("{e}");
                    return Ok(ExitCode::from(2));
                }
            };
            if let Err(errors) = weir::replay::check(&cfg, from) {
                let e = weir::config::ConfigError {
                    file: pipeline.clone(),
                    errors,
                };
                eprint!("{e}");
                return Ok(ExitCode::from(2));
            }
            weir::install_signal_handlers(shutdown.clone())?;
            let mode = weir::replay::ProgressMode::detect();
            let report = weir::replay::run(&cfg, from, shutdown, mode)?;
            print!("{report}");
        }
        Command::Sql {
            query,
            source,
            sink,
            schema,
            max_out_of_orderness_ms,
            dir,
            explain,
        } => {
            let schema = weir::sql_cli::load_schema(schema.as_deref())?;
            let options = weir_operators::SqlOptions {
                max_out_of_orderness_ms,
                ..Default::default()
            };
            let plan = match weir::sql_cli::plan(&query, &schema, &options) {
                Ok(plan) => plan,
                Err(e) => {
                    eprintln!("error: {e}");
                    return Ok(ExitCode::from(2));
                }
            };
            if explain {
                print!("{}", plan.explain());
                return Ok(ExitCode::SUCCESS);
            }
            weir::install_signal_handlers(shutdown.clone())?;
            let state = weir::sql_cli::SqlState::new(dir)?;
            if let Some(resumed) = state.resumed()? {
                eprintln!("{resumed}");
            }
            let p = Pipeline::new(weir::sql_cli::PIPELINE).schema(schema.clone());
            let p = weir::sql_cli::with_source(p, &source, &state)?.sql(&query, &options)?;
            let p = weir::sql_cli::with_sink(p, &sink, &schema, &plan)?;
            let summary = weir::sql_cli::with_state(p, &state)?.run(shutdown)?;
            let c = summary.counters;
            eprintln!(
                "{} events: {} aggregated, {} rows out, {} dead-lettered ({} late) in {:.2}s",
                c.consumed,
                c.aggregated,
                c.rows_out,
                c.dlq,
                c.late,
                summary.elapsed.as_secs_f64()
            );
            if let Some(kept) = state.finish(c.dlq)? {
                eprintln!("{kept}");
            }
        }
        Command::Demo {
            events,
            sensors,
            partitions,
            dir,
        } => {
            weir::install_signal_handlers(shutdown.clone())?;
            let opts = weir::demo::DemoOptions {
                events,
                sensors,
                partitions,
                dir,
                ..Default::default()
            };
            weir::demo::run(&opts, shutdown)?;
        }
        Command::Generate {
            dataset,
            topic,
            brokers,
            out,
            events,
            rate,
            keys,
            partitions,
            poison_ratio,
            late_ratio,
            duplicate_ratio,
            disorder_ms,
            interval_ms,
            seed,
        } => {
            let defaults = weir::generate::GenerateOptions::new(dataset);
            let opts = weir::generate::GenerateOptions {
                events,
                keys: keys.unwrap_or(defaults.keys),
                partitions,
                poison_ratio,
                late_ratio,
                duplicate_ratio,
                disorder_ms,
                interval_ms,
                seed,
                ..defaults
            };
            let mut errors = opts.validate();
            let brokers = brokers.or_else(|| std::env::var("WEIR_KAFKA_BROKERS").ok());
            let target = match (topic, brokers, out) {
                (_, _, Some(path)) => Some(weir::generate::Target::File(path)),
                (Some(topic), Some(brokers), None) => {
                    Some(weir::generate::Target::Kafka { brokers, topic })
                }
                (Some(_), None, None) => {
                    errors.push("--topic: needs --brokers (or WEIR_KAFKA_BROKERS; scripts/kafka.sh start prints it)".into());
                    None
                }
                (None, _, None) => {
                    errors.push(
                        "either --topic (with --brokers) or --out FILE: where to write".into(),
                    );
                    None
                }
            };
            let Some(target) = target.filter(|_| errors.is_empty()) else {
                for e in errors {
                    eprintln!("error: {e}");
                }
                return Ok(ExitCode::from(2));
            };
            weir::install_signal_handlers(shutdown.clone())?;
            let report = weir::generate::run(&opts, &target, rate, &|| shutdown.is_triggered())?;
            let to = match &target {
                weir::generate::Target::Kafka { topic, .. } => format!("topic {topic}"),
                weir::generate::Target::File(path) => path.display().to_string(),
            };
            println!("generate {dataset} (seed {seed}) into {to}: {report}");
        }
        Command::Bench {
            events,
            sensors,
            kafka: true,
            brokers,
            partitions,
            ..
        } => {
            let brokers = brokers.ok_or_else(|| {
                anyhow::anyhow!("--kafka needs --brokers or WEIR_KAFKA_BROKERS (scripts/kafka.sh start prints it)")
            })?;
            println!("weir bench --kafka: {events} events, {sensors} sensors, {partitions} partitions, brokers {brokers}");
            let opts = weir::bench_kafka::KafkaBenchOptions {
                brokers,
                events,
                sensors,
                partitions,
                timeout: std::time::Duration::from_secs(300),
            };
            let r = weir::bench_kafka::run(&opts)?;
            println!("  topic           {}", r.topic);
            println!("  produced in     {:>10.2} s", r.produce_secs);
            println!(
                "  raw consumer    {:>10.0} events/s  ({:.1} MB/s, count only)",
                r.raw_eps(),
                r.raw_bytes as f64 / 1e6 / r.raw_secs
            );
            println!(
                "  raw per-queue   {:>10.0} events/s  (one thread per partition queue, count only)",
                r.raw_split_eps()
            );
            println!(
                "  weir            {:>10.0} events/s  (kafka → decode → 1-min window → null sink, {} windows)",
                r.weir_eps(),
                r.windows_out
            );
            println!(
                "  weir / raw      {:>10.1} %  (against the faster raw consumer)",
                100.0 * r.weir_eps() / r.best_raw_eps()
            );
            print_metrics_comparison(&r.metrics, r.events);
        }
        Command::Bench {
            events,
            sensors,
            batch_rows,
            partitions,
            postgres: true,
            pg_url,
            checkpoint_every,
            ..
        } => {
            let url = pg_url.ok_or_else(|| {
                anyhow::anyhow!("--postgres needs --pg-url or WEIR_PG_URL (scripts/postgres.sh start prints it)")
            })?;
            let opts = weir::bench_postgres::PostgresBenchOptions {
                url,
                rows: events,
                keys: sensors,
                batch_rows: batch_rows as usize,
                partitions: partitions as u32,
                checkpoint_every,
            };
            let profile = if cfg!(debug_assertions) {
                "dev"
            } else {
                "release"
            };
            println!("weir bench --postgres: {events} rows, {sensors} keys, {batch_rows} rows/batch, {partitions} partitions, checkpoint every {checkpoint_every} batches, {profile} build");
            let r = weir::bench_postgres::run(&opts)?;
            println!(
                "  upserts         {:>10.0} rows/s  ({} rows in {:.2} s, {} applied after last-per-key)",
                r.rows_per_sec(),
                r.rows,
                r.secs,
                r.applied
            );
            println!(
                "  commits         {:>10}  (rows + checkpoint, one transaction per partition)",
                r.commits
            );
            println!("  table rows      {:>10}", r.table_rows);
        }
        Command::Bench {
            events,
            sensors,
            batch_rows,
            ..
        } => {
            let opts = weir::bench::BenchOptions {
                events,
                sensors,
                batch_rows: batch_rows as usize,
            };
            println!("weir bench: {events} events, {sensors} sensors, {batch_rows} rows/batch, one thread");
            let r = weir::bench::run(&opts)?;
            println!("  event size      {:>10.1} bytes (JSON)", r.avg_event_bytes);
            println!("  decode only     {:>10.0} events/s", r.decode_eps());
            println!("  whole path      {:>10.0} events/s  (decode → 1-min window avg/max/count per sensor → null sink)", r.whole_eps());
            println!(
                "  whole / decode  {:>10.1} %",
                100.0 * r.whole_eps() / r.decode_eps()
            );
            println!(
                "  same as SQL     {:>10.0} events/s  ({:.1} % of the hand-built window; {} windows)",
                r.sql_eps(),
                100.0 * r.sql_eps() / r.whole_eps(),
                r.sql_windows_out
            );
            println!(
                "  + key check     {:>10.0} events/s  ({:.1} % of the whole path: partition_key checked per event)",
                r.key_check_eps(),
                100.0 * r.key_check_eps() / r.whole_eps()
            );
            println!("  windows out     {:>10}", r.windows_out);
            print_metrics_comparison(&r.metrics, r.events);
            match r.peak_rss_bytes {
                Some(b) => println!("  peak RSS        {:>10.1} MB", b as f64 / 1e6),
                None => println!("  peak RSS        unavailable on this platform"),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The metrics lines of `weir bench` and `weir bench --kafka`.
fn print_metrics_comparison(m: &weir::bench::MetricsComparison, events: u64) {
    println!(
        "  metrics off     {:>10.0} events/s  (whole path, passes 1 and 4 of off, on, on, off)",
        m.off_eps(events)
    );
    println!(
        "  metrics on      {:>10.0} events/s  ({:.1} % of off; endpoint scraped every {} ms, {} scrapes)",
        m.on_eps(events),
        m.on_percent(events),
        weir::bench::SCRAPE_EVERY.as_millis(),
        m.scrapes
    );
}
