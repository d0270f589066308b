//! `tangle-agent`: the command line.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

mod run;

use run::{Mode, capture};

// Spans are built on the capture thread and freed on the export thread:
// glibc's malloc spends more on that than the parsing does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tangle's per-node agent: sees every TCP conversation on this node with eBPF,
/// with no change to the services.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print every TCP connection open/close and every transfer on it, live.
    ///
    /// Needs root (or CAP_BPF and CAP_PERFMON) to load and attach; once
    /// attached it keeps only CAP_DAC_READ_SEARCH and CAP_SYS_PTRACE (to
    /// name processes from /proc) and sets no_new_privs. Connections of
    /// Tangle's own processes are not shown. Stops on Ctrl-C, after
    /// --duration, or after --max-events; then prints the counters.
    Capture(CaptureArgs),
    /// Print every exchange (request and response) on the node, live: HTTP/1,
    /// HTTP/2 and gRPC, PostgreSQL, MySQL/MariaDB and Redis, parsed from the
    /// captured bytes. Same filters and privileges as `capture`.
    Exchanges(CaptureArgs),
    /// Capture, parse and export: every exchange on the node as an OTLP span
    /// to a collector (`tangle-collector`, or any OTLP/gRPC endpoint), with
    /// the join keys that put both ends of a call together.
    ///
    /// Same privileges as `capture`. The export, the metrics page and
    /// Tangle's own processes are never traced.
    Run(RunArgs),
    /// Check a configuration file for `run` and print it as understood.
    CheckConfig {
        /// The file (TOML).
        file: PathBuf,
    },
    /// Read a pcap or pcapng file of TCP traffic, reassemble each stream, and
    /// print the exchanges found as JSON lines (counters go to stderr).
    ///
    /// Needs no privileges: a way to check Tangle on your own captures.
    Replay {
        /// The capture file (tcpdump -w, Wireshark, tshark -w).
        file: PathBuf,
    },
}

#[derive(Args)]
struct RunArgs {
    /// The configuration file (TOML; see docs/agent.md). Without one the agent
    /// exports to a collector on this machine (http://localhost:4317).
    #[arg(long, env = "TANGLE_CONFIG")]
    config: Option<PathBuf>,
    /// Where to export (OTLP/gRPC); overrides export.endpoint.
    #[arg(long, env = "TANGLE_COLLECTOR")]
    collector: Option<String>,
    /// Spans held while the collector is slow or away; past it they are
    /// dropped (counted). Overrides export.queue_spans.
    #[arg(long, env = "TANGLE_QUEUE_SPANS")]
    queue_spans: Option<usize>,
    /// Serve the agent's own metrics at http://ADDR/metrics; overrides metrics.listen.
    #[arg(long, env = "TANGLE_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// The node this agent runs on: only its pods are asked of the
    /// Kubernetes API; overrides identity.node_name.
    #[arg(long, env = "TANGLE_NODE_NAME")]
    node_name: Option<String>,
    #[command(flatten)]
    capture: CaptureArgs,
}

#[derive(Args)]
struct CaptureArgs {
    /// Print JSON lines instead of text.
    #[arg(long)]
    json: bool,
    /// Print no line per event, only the counters as JSON: for benchmarks.
    #[arg(long, conflicts_with = "json")]
    quiet: bool,
    /// Only this process id.
    #[arg(long, env = "TANGLE_PID")]
    pid: Option<u32>,
    /// Only processes in this cgroup (v2 path, absolute or under /sys/fs/cgroup).
    #[arg(long, env = "TANGLE_CGROUP")]
    cgroup: Option<PathBuf>,
    /// Only connections with this local or remote port.
    #[arg(long, env = "TANGLE_PORT")]
    port: Option<u16>,
    /// Only sockets in this network namespace (e.g. /run/netns/NAME or /proc/PID/ns/net).
    #[arg(long, env = "TANGLE_NETNS")]
    netns: Option<PathBuf>,
    /// Bytes captured from the start of each transfer (1 to 8192).
    #[arg(long, env = "TANGLE_CAPTURE_SIZE", default_value_t = tangle_common::DEFAULT_CAPTURE)]
    capture_size: u32,
    /// Ring buffer size in KiB (rounded up to a power of two).
    #[arg(long, env = "TANGLE_RING_KIB", default_value_t = 16384)]
    ring_kib: u32,
    /// Wake the reader once this many KiB wait in the ring buffer (it also
    /// polls every 20 ms); 0 wakes it for every event (lowest latency, most CPU).
    #[arg(long, env = "TANGLE_WAKEUP_KIB", default_value_t = tangle_common::DEFAULT_WAKEUP_BYTES / 1024)]
    wakeup_kib: u32,
    /// Most connections tracked at once; past it the least recently active
    /// are forgotten for new ones (counted as evicted; what their parsers
    /// held is finished into exchanges, and bytes on them afterwards are
    /// not parsed).
    #[arg(long, env = "TANGLE_MAX_CONNECTIONS", default_value_t = 65536)]
    max_connections: u32,
    /// Have the kernel time eBPF programs (node-wide while the agent runs;
    /// needs CAP_SYS_ADMIN). The JSON counters (--json, --quiet) gain
    /// `programs`: runs and run time of each of Tangle's programs. Costs
    /// each run tens of nanoseconds: for benchmarks.
    #[arg(long)]
    program_stats: bool,
    /// Stop after this long (e.g. 10s, 2m).
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Stop after this many events.
    #[arg(long)]
    max_events: Option<u64>,
    /// Print the counters this often (e.g. 5s); always printed at the end.
    #[arg(long, value_parser = humantime::parse_duration)]
    stats_interval: Option<Duration>,
    /// Write a line to this file once the programs are attached (for scripts).
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .target(env_logger::Target::Stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Capture(args) => capture(args, Mode::Events),
        Command::Exchanges(args) => capture(args, Mode::Exchanges),
        Command::Run(run) => {
            run_config(&run).and_then(|config| capture(run.capture, Mode::Export(Box::new(config))))
        }
        Command::CheckConfig { file } => check_config(&file),
        Command::Replay { file } => replay(&file),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("tangle-agent: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The configuration of `run`: the file (if any), then the flags over it.
fn run_config(run: &RunArgs) -> anyhow::Result<tangle_agent::config::Config> {
    use tangle_agent::config::Config;
    let mut config = match &run.config {
        Some(path) => Config::from_toml(
            &tangle_agent::config::read("config", path)?,
            &path.display().to_string(),
        )?,
        None => Config::default(),
    };
    if let Some(c) = &run.collector {
        config.export.endpoint = c.clone();
    }
    if let Some(q) = run.queue_spans {
        config.export.queue_spans = q;
    }
    if run.metrics_listen.is_some() {
        config.metrics.listen = run.metrics_listen;
    }
    if run.node_name.is_some() {
        config.identity.node_name = run.node_name.clone();
    }
    // The flags pass the same checks as the file.
    let shown = run
        .config
        .as_ref()
        .map_or("(flags)".to_owned(), |p| p.display().to_string());
    config.check(&shown)?;
    Ok(config)
}

fn check_config(file: &std::path::Path) -> anyhow::Result<()> {
    let mut config = tangle_agent::config::Config::load(file)?;
    // A token file must be readable; a token given inline is not printed.
    config.token()?;
    if config.export.token.is_some() {
        config.export.token = Some("(set)".into());
    }
    print!(
        "{}",
        toml::to_string(&config).context("printing the configuration")?
    );
    eprintln!("{}: ok", file.display());
    Ok(())
}

fn replay(file: &std::path::Path) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut write_error = None;
    let stats = tangle_agent::replay::replay(file, |found| {
        if write_error.is_some() {
            return;
        }
        let mut line = match serde_json::to_value(found.exchange) {
            Ok(v) => v,
            Err(e) => {
                write_error = Some(std::io::Error::other(e));
                return;
            }
        };
        if let Some(o) = line.as_object_mut() {
            o.insert("client".into(), found.client.to_string().into());
            o.insert("server".into(), found.server.to_string().into());
        }
        if let Err(e) = writeln!(out, "{line}") {
            write_error = Some(e);
        }
    })?;
    match write_error {
        Some(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
        Some(e) => return Err(e).context("writing output"),
        None => {}
    }
    out.flush().context("writing output")?;
    eprintln!(
        "replay: {}",
        serde_json::to_string(&stats).context("stats")?
    );
    Ok(())
}
