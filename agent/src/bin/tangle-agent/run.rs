//! One capture, from loading the programs to the last counters: what the
//! agent does in `capture`, `exchanges` and `run`, and the sinks each feeds.

use std::time::Duration;

use anyhow::Context as _;
use tangle_agent::{
    capture::{
        own_traffic,
        probe::{self, Probe, ProbeOptions},
        ring::Reader,
    },
    connections::{ConnTable, Sink},
    exchanges::{ParseState, Pipeline},
    identity::Identities,
    output::{Format, LineWriter},
    privileges,
};

use crate::CaptureArgs;

/// What the capture loop feeds.
pub enum Mode {
    Events,
    Exchanges,
    Export(Box<tangle_agent::config::Config>),
}

/// The Kubernetes API client, if there is a cluster to ask (checked before
/// anything loads; watched once the agent runs).
fn kube_client(
    c: &tangle_agent::config::IdentityConfig,
) -> anyhow::Result<Option<tangle_agent::identity::kubernetes::KubeClient>> {
    use tangle_agent::{config::Toggle, identity::kubernetes};
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

/// What the capture loop writes to: events (`capture`) or exchanges (`exchanges`).
trait CliSink: Sink {
    fn take_write_error(&mut self) -> Option<std::io::Error>;
    fn note(&mut self, human: &str, json: &serde_json::Value);
    /// Counters of its own (and of the states it keeps in `table`), for the stats line.
    fn stats(&self, _table: &ConnTable<Self::State>) -> serde_json::Value {
        serde_json::Value::Null
    }
    /// The capture stopped: finish what is pending before the last counters.
    async fn finish(&mut self) {}
    /// Adds its own counters to the metrics page.
    fn metrics(&self, _page: &mut tangle_agent::metrics::Page, _table: &ConnTable<Self::State>) {}
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
    fn stats(&self, table: &ConnTable<ParseState>) -> serde_json::Value {
        serde_json::to_value(self.stats_now(table)).unwrap_or_default()
    }
    fn metrics(&self, page: &mut tangle_agent::metrics::Page, table: &ConnTable<ParseState>) {
        page.parsing(&self.stats_now(table));
    }
}

/// Queued spans, and the counters of their export.
struct Exporting {
    queue: tangle_agent::export::SpanQueue,
    stats: std::sync::Arc<tangle_agent::export::ExportStats>,
    out: LineWriter<std::io::BufWriter<std::io::StdoutLock<'static>>>,
}

impl tangle_agent::exchanges::ExchangeSink for Exporting {
    fn exchange(
        &mut self,
        conn: &tangle_agent::connections::Connection,
        tid: u32,
        e: tangle_protocols::Exchange,
    ) {
        self.queue.exchange(conn, tid, e);
    }
    fn inbound_read(&mut self, conn: &tangle_agent::connections::Connection, tid: u32) {
        self.queue.inbound_read(conn, tid);
    }
    fn closed(&mut self, conn: &tangle_agent::connections::Connection) {
        self.queue.closed(conn);
    }
    fn tick(&mut self) {
        self.queue.flush_held(false);
        tangle_agent::exchanges::ExchangeSink::tick(&mut self.out);
    }
}

impl CliSink for Pipeline<Exporting> {
    fn take_write_error(&mut self) -> Option<std::io::Error> {
        self.sink.out.write_error.take()
    }
    fn note(&mut self, human: &str, json: &serde_json::Value) {
        self.sink.out.note(human, json);
    }
    fn stats(&self, table: &ConnTable<ParseState>) -> serde_json::Value {
        let mut v = serde_json::to_value(self.stats_now(table)).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert("export".into(), self.sink.stats.snapshot());
        }
        v
    }
    fn metrics(&self, page: &mut tangle_agent::metrics::Page, table: &ConnTable<ParseState>) {
        page.parsing(&self.stats_now(table));
        page.export(&self.sink.stats);
    }
    async fn finish(&mut self) {
        self.sink.queue.flush_held(true);
        // Give the exporter a moment to send what is queued.
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
}

pub fn capture(args: CaptureArgs, mode: Mode) -> anyhow::Result<()> {
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
                let metrics = config
                    .metrics
                    .listen
                    .map(tangle_agent::metrics::bind)
                    .transpose()?;
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
        let metrics = match metrics {
            Some(bound) => {
                let page = tangle_agent::metrics::Shared::default();
                tangle_agent::metrics::serve(bound, page.clone())?;
                Some(page)
            }
            None => None,
        };
        let identities = match &mode {
            // IdentityCell off the capture thread: naming reads /proc and the cluster.
            Mode::Export(config) => Identities::on_thread(
                config.identity.rules.clone(),
                kube.map(|k| {
                    tangle_agent::identity::kubernetes::watch(
                        k,
                        config.identity.node_name.as_deref(),
                    )
                }),
            )
            .context("starting the identity thread")?,
            _ => Identities::default(),
        };
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
                let mut out = Pipeline::new(lines);
                let mut reader = start_reading(ring, &args, identities)?;
                capture_loop(&args, &mut probe, &mut reader, &mut out, metrics).await
            }
            Mode::Events => {
                let mut out = lines;
                let mut reader = start_reading(ring, &args, identities)?;
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
                let mut out = Pipeline::new(sink)
                    .with_memory_budget(config.parsing.memory_mib.saturating_mul(1 << 20))
                    .with_connection_budget(config.parsing.connection_mib.saturating_mul(1 << 20));
                let mut reader = start_reading(ring, &args, identities)?;
                capture_loop(&args, &mut probe, &mut reader, &mut out, metrics).await
            }
        }
    })
}

/// The ring buffer watched, through a connection table keeping `S` per
/// connection; then the ready file written, if asked for.
fn start_reading<S: Default>(
    ring: aya::maps::RingBuf<aya::maps::MapData>,
    args: &CaptureArgs,
    identities: Identities,
) -> anyhow::Result<Reader<S>> {
    let reader = Reader::new(ring, args.max_connections as usize, identities)
        .context("watching the ring buffer")?;
    if let Some(path) = &args.ready_file {
        std::fs::write(path, "ready\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(reader)
}

async fn capture_loop<O: CliSink>(
    args: &CaptureArgs,
    probe: &mut Probe,
    reader: &mut Reader<O::State>,
    out: &mut O,
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
                out.metrics(&mut page, reader.table());
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

fn print_stats<O: CliSink>(
    probe: &Probe,
    reader: &Reader<O::State>,
    out: &mut O,
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
        "parsers": out.stats(reader.table()),
    });
    out.note(&human, &json);
    Ok(())
}
