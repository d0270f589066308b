//! `tangle-agent`: the command line.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use tangle_agent::{
    identity::Identities,
    output::{Format, LineWriter},
    own_traffic,
    pipeline::Pipeline,
    privileges,
    probe::{self, Probe, ProbeOptions},
    reader::Reader,
    reader::Sink,
};

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

/// What the capture loop feeds.
enum Mode {
    Events,
    Exchanges,
    Export(Box<tangle_agent::config::Config>),
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
    /// are forgotten for new ones (counted as evicted; their exchanges in
    /// progress are lost).
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

/// The Kubernetes API client, if there is a cluster to ask (checked before
/// anything loads; watched once the agent runs).
fn kube_client(
    c: &tangle_agent::config::IdentityConfig,
) -> anyhow::Result<Option<tangle_agent::kubernetes::KubeClient>> {
    use tangle_agent::{config::Toggle, kubernetes};
    Ok(match (c.kubernetes, &c.kubernetes_api) {
        (Toggle::Off, _) => None,
        (_, Some(api)) => Some(kubernetes::KubeClient::new(api, None, None)?),
        (Toggle::On, None) => Some(kubernetes::KubeClient::in_cluster()?),
        (Toggle::Auto, None) => match kubernetes::KubeClient::in_cluster() {
            Ok(k) => Some(k),
            Err(kubernetes::KubeError::NotInCluster) => None,
            Err(e) => {
                log::warn!("kubernetes: {e}; pods will not be named");
                None
            }
        },
    })
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

/// What the capture loop writes to: events (`capture`) or exchanges (`exchanges`).
trait CliSink: Sink {
    fn take_write_error(&mut self) -> Option<std::io::Error>;
    fn note(&mut self, human: &str, json: &serde_json::Value);
    /// Counters of its own, for the stats line.
    fn stats(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
    /// The capture stopped: finish what is pending before the last counters.
    async fn finish(&mut self) {}
    /// Adds its own counters to the metrics page.
    fn metrics(&self, _page: &mut tangle_agent::metrics::Page) {}
}

impl<W: std::io::Write> CliSink for LineWriter<W> {
    fn take_write_error(&mut self) -> Option<std::io::Error> {
        self.write_error.take()
    }
    fn note(&mut self, human: &str, json: &serde_json::Value) {
        LineWriter::note(self, human, json);
    }
}

impl<W: std::io::Write> CliSink for Pipeline<LineWriter<W>> {
    fn take_write_error(&mut self) -> Option<std::io::Error> {
        self.sink.write_error.take()
    }
    fn note(&mut self, human: &str, json: &serde_json::Value) {
        self.sink.note(human, json);
    }
    fn stats(&self) -> serde_json::Value {
        serde_json::to_value(self.stats_now()).unwrap_or_default()
    }
    fn metrics(&self, page: &mut tangle_agent::metrics::Page) {
        page.parsing(&self.stats_now());
    }
}

/// Queued spans, and the counters of their export.
struct Exporting {
    queue: tangle_agent::export::SpanQueue,
    stats: std::sync::Arc<tangle_agent::export::ExportStats>,
    out: LineWriter<std::io::BufWriter<std::io::StdoutLock<'static>>>,
}

impl tangle_agent::pipeline::ExchangeSink for Exporting {
    fn exchange(
        &mut self,
        conn: &tangle_agent::conntrack::Connection,
        tid: u32,
        e: tangle_protocols::Exchange,
    ) {
        self.queue.exchange(conn, tid, e);
    }
    fn inbound_read(&mut self, conn: &tangle_agent::conntrack::Connection, tid: u32) {
        self.queue.inbound_read(conn, tid);
    }
    fn closed(&mut self, conn: &tangle_agent::conntrack::Connection) {
        self.queue.closed(conn);
    }
    fn tick(&mut self) {
        self.queue.flush_held(false);
        tangle_agent::pipeline::ExchangeSink::tick(&mut self.out);
    }
}

impl CliSink for Pipeline<Exporting> {
    fn take_write_error(&mut self) -> Option<std::io::Error> {
        self.sink.out.write_error.take()
    }
    fn note(&mut self, human: &str, json: &serde_json::Value) {
        self.sink.out.note(human, json);
    }
    fn stats(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self.stats_now()).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert("export".into(), self.sink.stats.snapshot());
        }
        v
    }
    fn metrics(&self, page: &mut tangle_agent::metrics::Page) {
        page.parsing(&self.stats_now());
        page.export(&self.sink.stats);
    }
    async fn finish(&mut self) {
        self.sink.queue.flush_held(true);
        // Give the exporter a moment to send what is queued.
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
}

fn capture(args: CaptureArgs, mode: Mode) -> anyhow::Result<()> {
    let options = ProbeOptions {
        capture_size: args.capture_size,
        ring_size: args.ring_kib.saturating_mul(1024),
        max_connections: args.max_connections,
        pid: args.pid,
        cgroup_id: args
            .cgroup
            .as_deref()
            .map(|p| probe::cgroup_id(p).with_context(|| format!("cgroup {}", p.display())))
            .transpose()?,
        port: args.port,
        wakeup_bytes: args.wakeup_kib.saturating_mul(1024),
        program_stats: args.program_stats,
        netns: args
            .netns
            .as_deref()
            .map(|p| probe::netns_inode(p).with_context(|| format!("netns {}", p.display())))
            .transpose()?,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        // What `run` needs is checked before the programs load.
        let (kube, metrics, target) = match &mode {
            Mode::Export(config) => {
                privileges::require_naming()?;
                let target = tangle_agent::export::Target::from_config(config)?;
                let metrics = match config.metrics.listen {
                    Some(addr) => {
                        let page = tangle_agent::metrics::Shared::default();
                        tangle_agent::metrics::serve(addr, page.clone()).await?;
                        Some(page)
                    }
                    None => None,
                };
                (kube_client(&config.identity)?, metrics, Some(target))
            }
            _ => (None, None, None),
        };
        let mut probe = Probe::load(options)?;
        let ring = probe.take_events()?;
        // Tangle's own traffic is never traced: the export, the metrics, and
        // Tangle's processes on this node.
        if let Mode::Export(config) = &mode {
            let collector = own_traffic::collector_endpoints(&config.export.endpoint);
            if collector.is_empty() {
                log::warn!(
                    "the collector endpoint {} does not resolve at start (check DNS): its \
                     addresses are not left out in the kernel; the agent's own connections \
                     to it still are, by process",
                    config.export.endpoint
                );
            }
            let mut own = collector;
            if let Some(addr) = config.metrics.listen {
                own.extend(own_traffic::listening_addresses(addr));
            }
            let mut ignored = Vec::new();
            for addr in own {
                match probe.ignore_endpoint(addr) {
                    Ok(()) => ignored.push(addr.to_string()),
                    Err(e) => log::warn!(
                        "could not leave out {addr} in the kernel ({e}): connections to it \
                         from other processes will be traced"
                    ),
                }
            }
            if !ignored.is_empty() {
                log::info!("never traced (Tangle's own): {}", ignored.join(", "));
            }
        }
        for pid in own_traffic::tangle_processes() {
            if let Err(e) = probe.ignore_process(pid) {
                log::warn!(
                    "could not add Tangle's process {pid} to the kernel's ignore list ({e}): \
                     its connections are dropped in user space instead"
                );
            }
        }
        // From here on the agent only reads what it attached: it keeps the
        // capabilities naming processes needs, and no others. Threads
        // start after this, with the reduced set.
        privileges::drop_after_attach()?;
        let identities = match &mode {
            Mode::Export(config) => Identities::new(
                config.identity.rules.clone(),
                kube.map(|k| {
                    tangle_agent::kubernetes::watch(k, config.identity.node_name.as_deref())
                }),
            ),
            _ => Identities::default(),
        };
        let mut reader = Reader::new(ring, args.max_connections as usize, identities)
            .context("watching the ring buffer")?;
        if let Some(path) = &args.ready_file {
            std::fs::write(path, "ready\n")
                .with_context(|| format!("writing {}", path.display()))?;
        }
        let format = if args.json {
            Format::Json
        } else if args.quiet {
            Format::None
        } else {
            Format::Human
        };
        let lines = LineWriter::new(std::io::BufWriter::new(std::io::stdout().lock()), format);
        match mode {
            Mode::Exchanges => {
                let mut out = Pipeline::new(lines, args.max_connections as usize);
                capture_loop(&args, &mut probe, &mut reader, &mut out, metrics).await
            }
            Mode::Events => {
                let mut out = lines;
                capture_loop(&args, &mut probe, &mut reader, &mut out, metrics).await
            }
            Mode::Export(config) => {
                let offset = tangle_agent::output::Clock::now().offset_ns();
                let target = target.context("export target")?;
                let queue_spans = config.export.queue_spans;
                log::info!(
                    "exporting spans to {} (queue of {queue_spans}{})",
                    target.shown(),
                    if target.has_token() {
                        ", with a token"
                    } else {
                        ""
                    }
                );
                let (queue, stats) = tangle_agent::export::start(target, queue_spans, offset)
                    .context("starting the exporter")?;
                let sink = Exporting {
                    queue,
                    stats,
                    out: lines,
                };
                let mut out = Pipeline::new(sink, args.max_connections as usize)
                    .with_memory_budget(config.parsing.memory_mib.saturating_mul(1 << 20))
                    .with_connection_budget(config.parsing.connection_mib.saturating_mul(1 << 20));
                capture_loop(&args, &mut probe, &mut reader, &mut out, metrics).await
            }
        }
    })
}

async fn capture_loop(
    args: &CaptureArgs,
    probe: &mut Probe,
    reader: &mut Reader,
    out: &mut impl CliSink,
    metrics: Option<tangle_agent::metrics::Shared>,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let mut metrics_tick = tokio::time::interval(Duration::from_secs(1));
    let deadline = tokio::time::sleep(args.duration.unwrap_or(Duration::MAX / 4));
    tokio::pin!(deadline);
    let mut stats_tick =
        tokio::time::interval(args.stats_interval.unwrap_or(Duration::from_secs(3600)));
    stats_tick.tick().await;
    let mut sweep_tick = tokio::time::interval(Duration::from_secs(5));
    // The kernel's counters for the page, read off this thread.
    let kernel_stats = match &metrics {
        Some(_) => Some(probe.watch_stats(Duration::from_secs(1))?),
        None => None,
    };
    let not_ignored = tangle_throttle::Throttled::default();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    loop {
        tokio::select! {
            res = reader.next_batch(out) => {
                res.context("reading the ring buffer")?;
                for pid in reader.take_ignored() {
                    if let Err(e) = probe.ignore_process(pid) {
                        tangle_throttle::warn!(
                            not_ignored,
                            "could not add Tangle's process {pid} to the kernel's ignore \
                             list ({e}): its connections are dropped in user space instead"
                        );
                    }
                }
            }
            _ = &mut deadline => break,
            _ = &mut ctrl_c => break,
            _ = term.recv() => break,
            _ = stats_tick.tick() => print_stats(probe, reader, out, started)?,
            _ = metrics_tick.tick(), if metrics.is_some() => {
                let mut page = tangle_agent::metrics::Page::default();
                let kernel = kernel_stats.as_ref().and_then(|k| k.latest()).unwrap_or_default();
                page.capture(&kernel, &reader.stats());
                out.metrics(&mut page);
                if let Some(shared) = &metrics {
                    shared.publish(page);
                }
            }
            _ = sweep_tick.tick() => {
                let gone = reader.sweep(out) + probe.sweep_dead_processes()?;
                probe.forget_exited_ignored()?;
                if gone > 0 {
                    log::debug!("forgot {gone} connections of exited processes");
                }
            }
        }
        if let Some(err) = out.take_write_error() {
            if err.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(());
            }
            return Err(err).context("writing output");
        }
        if args
            .max_events
            .is_some_and(|max| reader.stats().events >= max)
        {
            break;
        }
    }
    // Events already in the ring buffer still count.
    reader.drain(out);
    out.finish().await;
    print_stats(probe, reader, out, started)?;
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

fn print_stats(
    probe: &Probe,
    reader: &Reader,
    out: &mut impl CliSink,
    started: std::time::Instant,
) -> anyhow::Result<()> {
    let kernel = probe.stats()?;
    let user = reader.stats();
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    let human = format!(
        "stats: {} events ({:.0}/s), lost {}, decode errors {}, connections {} (kernel {}), \
         evicted {} (kernel {}), Tangle's own ignored {}, conn table full {}, read faults {}",
        user.events,
        user.events as f64 / secs,
        kernel.events_lost,
        user.decode_errors,
        user.connections,
        kernel.conns_tracked,
        user.evicted,
        kernel.conns_evicted,
        user.ignored + kernel.ignored,
        kernel.conn_table_full,
        kernel.read_faults,
    );
    let json = serde_json::json!({
        "type": "stats",
        "elapsed_s": secs,
        "kernel": kernel,
        "programs": probe.program_stats(),
        "agent": user,
        "parsers": out.stats(),
    });
    out.note(&human, &json);
    Ok(())
}
