//! The agent's own metrics in the Prometheus text format: events, lost
//! events, connections, parse errors per protocol, spans exported and
//! dropped. The capture loop renders the page once a second; the HTTP
//! server, on a thread of its own, only hands out the last one, so a
//! scrape never touches the hot path.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, atomic::Ordering},
};

use crate::{
    capture::probe::KernelStats, connections::ConnStats, exchanges::PipelineStats,
    export::ExportStats,
};

/// The metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The address could not be bound (in use, or not this host's).
    #[error("cannot serve metrics on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The thread that serves the page could not start.
    #[error("cannot start the metrics thread")]
    Thread(#[source] std::io::Error),
}

/// The agent's metrics page being built (one exposition with the
/// collector's: [`tangle_exposition`]).
#[derive(Default)]
pub struct Page(tangle_exposition::Page);

impl std::ops::Deref for Page {
    type Target = tangle_exposition::Page;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Page {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Page {
    /// The capture's own counters.
    pub fn capture(&mut self, kernel: &KernelStats, reader: &ConnStats) {
        self.counter(
            "tangle_agent_events_total",
            "Events read from the kernel.",
            reader.events,
        );
        self.counter(
            "tangle_agent_events_lost_total",
            "Events dropped in the kernel because the ring buffer was full.",
            kernel.events_lost,
        );
        self.counter(
            "tangle_agent_decode_errors_total",
            "Ring buffer records that did not decode.",
            reader.decode_errors,
        );
        self.gauge(
            "tangle_agent_connections",
            "Tracker tracked now (userspace table).",
            reader.connections as f64,
        );
        self.gauge(
            "tangle_agent_kernel_connections",
            "Tracker tracked now (kernel table).",
            kernel.conns_tracked as f64,
        );
        self.counter(
            "tangle_agent_conn_table_full_total",
            "Tracker not tracked because the kernel table was full.",
            kernel.conn_table_full,
        );
        self.counter(
            "tangle_agent_kernel_conns_evicted_total",
            "Tracker the full kernel table forgot (least recently used) for new ones.",
            kernel.conns_evicted,
        );
        self.counter(
            "tangle_agent_conns_evicted_total",
            "Tracker the full userspace table forgot (least recently active) for new ones.",
            reader.evicted,
        );
        self.counters(
            "tangle_agent_processes_named_total",
            "Times a process was named (service, pod, container): by the identity thread (run), or at the open (capture, exchanges).",
            "by",
            [("thread", reader.named_by_thread), ("demand", reader.named_on_demand)],
        );
        self.counter(
            "tangle_agent_conns_replaced_total",
            "Tracker ended by a new open with their id before their close was seen.",
            reader.replaced,
        );
        self.counter(
            "tangle_agent_own_conns_ignored_total",
            "Tracker of Tangle's own processes and endpoints, not traced.",
            kernel.ignored + reader.ignored,
        );
        self.counter(
            "tangle_agent_read_faults_total",
            "Transfers whose bytes could not be read from the process.",
            kernel.read_faults,
        );
    }

    /// The parsing stage's counters.
    pub fn parsing(&mut self, p: &PipelineStats) {
        self.counter(
            "tangle_agent_exchanges_total",
            "Exchanges (request and response) parsed.",
            p.exchanges,
        );
        self.counter(
            "tangle_agent_undetected_transfers_total",
            "Transfers on connections whose protocol is not one Tangle parses.",
            p.undetected_transfers,
        );
        self.gauge(
            "tangle_agent_parser_buffered_bytes",
            "Bytes the parsers hold now: partial messages, requests waiting for their responses, prepared statements, HPACK tables.",
            p.parser_buffered_bytes as f64,
        );
        self.counter(
            "tangle_agent_parser_budget_drops_total",
            "Tracker no longer parsed for the memory they held: past [parsing] connection_mib alone, or among the largest when all together passed memory_mib.",
            p.parser_budget_drops,
        );
        let per = |f: fn(&tangle_protocols::ParserStats) -> u64| {
            p.protocols.iter().map(move |(k, s)| (*k, f(s)))
        };
        self.counters(
            "tangle_agent_parse_errors_total",
            "Messages that did not parse, per protocol.",
            "protocol",
            per(|s| s.parse_errors),
        );
        self.counters(
            "tangle_agent_desyncs_total",
            "Times a capture gap cut into a message head, per protocol.",
            "protocol",
            per(|s| s.desyncs),
        );
        self.counters(
            "tangle_agent_unmatched_responses_total",
            "Responses with no request to pair with, per protocol.",
            "protocol",
            per(|s| s.unmatched_responses),
        );
        self.counters(
            "tangle_agent_dropped_requests_total",
            "Requests dropped because too many awaited a response on one connection, per protocol.",
            "protocol",
            per(|s| s.dropped_requests),
        );
        self.counters(
            "tangle_agent_parser_panics_total",
            "Tracker whose parser failed (a bug): no longer parsed, the others unaffected.",
            "protocol",
            per(|s| s.panics),
        );
    }

    /// The export's counters.
    pub fn export(&mut self, e: &ExportStats) {
        self.counter(
            "tangle_agent_spans_queued_total",
            "Spans queued for export.",
            e.queued.load(Ordering::Relaxed),
        );
        self.counter(
            "tangle_agent_spans_exported_total",
            "Spans the collector accepted.",
            e.exported.load(Ordering::Relaxed),
        );
        self.counter(
            "tangle_agent_spans_dropped_total",
            "Spans dropped because the export queue was full.",
            e.dropped.load(Ordering::Relaxed),
        );
        self.gauge(
            "tangle_agent_spans_held",
            "Outbound calls held now, waiting for the inbound request they may belong to.",
            e.held.load(Ordering::Relaxed) as f64,
        );
        self.counter(
            "tangle_agent_export_failures_total",
            "Export attempts that failed (collector away, busy, refused, or not authorised).",
            e.failed_attempts.load(Ordering::Relaxed),
        );
        self.counter(
            "tangle_agent_spans_refused_total",
            "Spans the collector refused (not authorised, malformed, too large alone): dropped.",
            e.refused.load(Ordering::Relaxed),
        );
        self.counter(
            "tangle_agent_spans_given_up_total",
            "Spans dropped after their batch was retried for a minute.",
            e.given_up.load(Ordering::Relaxed),
        );
        self.counter(
            "tangle_agent_spans_own_total",
            "Spans of Tangle's own processes, left out (found so after their first connection).",
            e.own.load(Ordering::Relaxed),
        );
        self.counter(
            "tangle_agent_spans_unnamed_total",
            "Spans dropped because their process was not named in time (rather than sent under a wrong name).",
            e.unnamed.load(Ordering::Relaxed),
        );
        self.gauge(
            "tangle_agent_spans_naming",
            "Spans waiting now for their process to be named.",
            e.naming.load(Ordering::Relaxed) as f64,
        );
        self.counter(
            "tangle_agent_export_batches_split_total",
            "Batches the collector found too large, sent again in halves.",
            e.split.load(Ordering::Relaxed),
        );
    }
}

/// The last rendered page, shared with the server, and the server's
/// connections, counted.
#[derive(Clone, Default)]
pub struct Shared {
    page: Arc<Mutex<bytes::Bytes>>,
    conns: Arc<tangle_listener::ConnStats>,
    /// A page was published: the programs are attached and the capture
    /// runs (`/healthz` answers 503 until then).
    ready: Arc<std::sync::atomic::AtomicBool>,
}

impl Shared {
    /// Publishes `page`, with the page server's own connections added.
    pub fn publish(&self, mut page: Page) {
        page.counters(
            "tangle_agent_metrics_connections_total",
            "Tracker to this page: accepted, refused at a limit, and those accepted that ended early.",
            "outcome",
            self.conns.outcomes(),
        );
        if let Ok(mut p) = self.page.lock() {
            *p = page.0.render().into();
        }
        self.ready.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The metrics address, bound: it fails at start, before anything loads.
pub struct Bound(std::net::TcpListener);

/// Binds `addr` for [`serve`].
pub fn bind(addr: SocketAddr) -> Result<Bound, MetricsError> {
    let bind = |source| MetricsError::Bind { addr, source };
    // std sets SO_REUSEADDR on Unix, as tokio does: a restart rebinds at once.
    let listener = std::net::TcpListener::bind(addr).map_err(bind)?;
    listener.set_nonblocking(true).map_err(bind)?;
    Ok(Bound(listener))
}

/// Serves `GET /metrics` (and `/healthz`: 200 once the capture runs, 503
/// before) from `page`, on a thread of its own: a scraper never takes time
/// from the capture. Start it once privileges are dropped: a thread keeps
/// the capabilities it was created with.
pub fn serve(bound: Bound, page: Shared) -> Result<(), MetricsError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(MetricsError::Thread)?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            rt.block_on(async move {
                match tokio::net::TcpListener::from_std(bound.0) {
                    Ok(listener) => serve_on(listener, page).await,
                    Err(e) => log::error!("metrics: cannot serve: {e}"),
                }
            })
        })
        .map_err(MetricsError::Thread)?;
    Ok(())
}

/// Serves the page on `listener` until the process ends.
async fn serve_on(listener: tokio::net::TcpListener, page: Shared) {
    use axum::{Router, routing::get};
    let addr = listener.local_addr();
    log::info!(
        "metrics on http://{}/metrics",
        addr.map_or_else(|e| e.to_string(), |a| a.to_string())
    );
    let ready = page.ready.clone();
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let page = page.page.clone();
                async move {
                    let text = page.lock().map(|p| p.clone()).unwrap_or_default();
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4",
                        )],
                        text,
                    )
                }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let ready = ready.load(std::sync::atomic::Ordering::Relaxed);
                async move {
                    if ready {
                        (axum::http::StatusCode::OK, "ok\n")
                    } else {
                        (axum::http::StatusCode::SERVICE_UNAVAILABLE, "starting\n")
                    }
                }
            }),
        );
    // The page is for a scraper or two: a few connections, four from one
    // address, quick headers, nothing held open for long (the agent is
    // privileged and on every node).
    let conns = page.conns.clone();
    let limits = tangle_listener::ConnLimits {
        max_connections: 16,
        max_connections_per_address: 4,
        header_timeout: std::time::Duration::from_secs(5),
        idle_timeout: std::time::Duration::from_secs(15),
        max_streams: 1,
        max_header_bytes: 16 << 10,
    };
    // Never stopped: the thread serves until the process ends.
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    tangle_listener::serve(
        listener,
        None,
        tangle_listener::Http::One,
        limits,
        hyper_util::service::TowerToHyperService::new(app),
        conns,
        stopped,
    )
    .await;
}
