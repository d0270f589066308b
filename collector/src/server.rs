//! The running collector: OTLP over gRPC and HTTP in, traces assembled and
//! analysed on a timer, `/metrics` and the JSON API out.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use prost::Message as _;

use crate::{
    assembly::Assembler,
    baseline::{Baseline, BaselineError},
    chains::analyze,
    config::Config,
    metrics,
    model::Model,
    otlp::{MappingStats, map_request},
    span::Span,
};

/// How long a stop waits for open connections to finish.
const GRACE: Duration = Duration::from_secs(3);

/// Why the collector could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The baseline in the data folder cannot be used.
    #[error(transparent)]
    Baseline(#[from] BaselineError),
    /// The token or TLS files named by the configuration cannot be used.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The TLS certificate or key was refused.
    #[error("TLS: {0}")]
    Tls(String),
    /// A listening address is taken or not allowed.
    #[error("cannot listen on {addr} ({what})")]
    Bind {
        addr: std::net::SocketAddr,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

struct Inner {
    assembler: Assembler,
    model: Model,
    mapping: MappingStats,
    /// Baseline write failures (the chain is still counted).
    baseline_errors: u64,
}

/// The collector's state, shared by the receivers, the timer and the API.
#[derive(Clone)]
pub struct Collector {
    inner: Arc<Mutex<Inner>>,
    /// `Bearer TOKEN`, when exports must carry it.
    authorization: Option<Arc<str>>,
    /// Exports refused for a missing or wrong token.
    refused: Arc<std::sync::atomic::AtomicU64>,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl Collector {
    pub fn new(config: &Config) -> Result<Self, ServerError> {
        let baseline = Baseline::open(&config.data_dir)?;
        log::info!(
            "baseline: {} known chains in {}",
            baseline.len(),
            config.data_dir.display()
        );
        let model = Model::new(baseline, config.thresholds.clone(), config.owners.clone());
        let assembler = Assembler::new(
            config.trace_window_ms * 1_000_000,
            config.max_spans_in_flight,
        );
        Ok(Self {
            inner: Arc::new(Mutex::new(Inner {
                assembler,
                model,
                mapping: MappingStats::default(),
                baseline_errors: 0,
            })),
            authorization: config.token()?.map(|t| format!("Bearer {t}").into()),
            refused: Arc::default(),
        })
    }

    /// Whether an export with this `authorization` value may come in
    /// (counted when not).
    fn authorized(&self, given: Option<&[u8]>) -> bool {
        let Some(want) = &self.authorization else {
            return true;
        };
        let ok = given.is_some_and(|g| {
            // Same time whatever the first differing byte.
            g.len() == want.len()
                && g.iter()
                    .zip(want.as_bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        });
        if !ok {
            self.refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        ok
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere must not stop intake: the data is still consistent enough.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes one export request.
    pub fn export(&self, req: &ExportTraceServiceRequest) {
        let mut inner = self.lock();
        let spans = map_request(req, &mut inner.mapping);
        let now = now_ns();
        for span in spans {
            let early = inner.assembler.add(span, now);
            for trace in early {
                analyse(&mut inner, &trace, now);
            }
        }
    }

    /// Analyses the traces whose window has passed.
    pub fn tick(&self) {
        let mut inner = self.lock();
        let now = now_ns();
        for trace in inner.assembler.flush(now) {
            analyse(&mut inner, &trace, now);
        }
    }

    /// Analyses every trace still open (at shutdown).
    pub fn flush_all(&self) {
        let mut inner = self.lock();
        let now = now_ns();
        for trace in inner.assembler.flush_all() {
            analyse(&mut inner, &trace, now);
        }
    }

    pub fn metrics(&self) -> String {
        let inner = self.lock();
        let mut text = metrics::render(&inner.model, &inner.assembler.stats, &inner.mapping);
        text.push_str("# HELP tangle_baseline_write_errors_total Chains that could not be written to the baseline.\n");
        text.push_str("# TYPE tangle_baseline_write_errors_total counter\n");
        text.push_str(&format!(
            "tangle_baseline_write_errors_total {}\n",
            inner.baseline_errors
        ));
        text.push_str(
            "# HELP tangle_exports_refused_total Exports refused for a missing or wrong token.\n",
        );
        text.push_str("# TYPE tangle_exports_refused_total counter\n");
        text.push_str(&format!(
            "tangle_exports_refused_total {}\n",
            self.refused.load(std::sync::atomic::Ordering::Relaxed)
        ));
        text
    }

    pub fn api(&self, what: &str) -> Option<serde_json::Value> {
        let inner = self.lock();
        let m = &inner.model;
        Some(match what {
            "chains" => serde_json::json!({
                "chains": m.chains.iter().map(|(sig, c)| serde_json::json!({
                    "signature": sig, "entry": c.entry, "hops": c.hops, "depth": c.depth, "traces": c.traces,
                    "first_seen_ns": c.first_seen_ns, "example_trace": c.example_trace, "new": c.new,
                })).collect::<Vec<_>>(),
                "entries": m.entries.iter().map(|(e, s)| serde_json::json!({
                    "entry": e, "traces": s.traces, "max_depth": s.max_depth, "p95_depth": s.p95_depth(),
                    "max_fan_out": s.max_fan_out, "closure": s.closure, "availability": m.availability(&s.closure),
                })).collect::<Vec<_>>(),
            }),
            "graph" => {
                let edge = |(c, s): &(String, String), e: &crate::model::EdgeStats, kind: &str| {
                    serde_json::json!({
                        "client": c, "server": s, "kind": kind, "sync": kind != "async", "protocols": e.protocols,
                        "calls": e.calls, "failed": e.callee_failures, "propagated": e.propagated,
                        "max_calls_per_request": e.max_calls_per_trace,
                        "client_seconds": e.client_latency, "server_seconds": e.server_latency,
                    })
                };
                let mut edges: Vec<serde_json::Value> =
                    m.edges.iter().map(|(k, e)| edge(k, e, "sync")).collect();
                edges.extend(m.async_edges.iter().map(|(k, e)| edge(k, e, "async")));
                edges.extend(m.db_edges.iter().map(|(k, e)| edge(k, e, "database")));
                // Nodes: services that served requests, databases, and the
                // rest (external endpoints and uninstrumented callees).
                let mut nodes: BTreeMap<String, serde_json::Value> = BTreeMap::new();
                for (name, s) in &m.services {
                    nodes.insert(name.clone(), serde_json::json!({
                        "name": name, "kind": "service", "served": s.served, "failed": s.failed, "success_rate": s.success_rate(),
                    }));
                }
                for db in m.databases.keys() {
                    nodes.insert(db.name(), serde_json::json!({ "name": db.name(), "kind": "database", "system": db.system }));
                }
                for e in &edges {
                    for end in ["client", "server"] {
                        let name = e[end].as_str().unwrap_or_default().to_owned();
                        nodes.entry(name.clone()).or_insert_with(
                            || serde_json::json!({ "name": name, "kind": "external" }),
                        );
                    }
                }
                serde_json::json!({
                    "nodes": nodes.into_values().collect::<Vec<_>>(),
                    "edges": edges,
                    "assembly": inner.assembler.stats,
                    "mapping": inner.mapping,
                })
            }
            "databases" => serde_json::json!({
                "databases": m.databases.iter().map(|(db, users)| serde_json::json!({
                    "database": db.name(), "system": db.system, "owner": m.owner(db), "accessors": users,
                })).collect::<Vec<_>>(),
            }),
            "findings" => serde_json::json!({ "findings": m.findings() }),
            _ => return None,
        })
    }
}

fn analyse(inner: &mut Inner, trace: &[Span], now: u64) {
    let Some(a) = analyze(trace) else { return };
    let served: Vec<(String, bool)> = trace
        .iter()
        .filter(|s| s.is_entry())
        .map(|s| (s.service.clone(), s.error))
        .collect();
    let trace_id = trace[0].trace_id;
    if let Err(e) = inner.model.ingest(&trace_id, &a, &served, now) {
        inner.baseline_errors += 1;
        log::error!("{e}");
    }
}

struct Grpc(Collector);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let given = request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes());
        if !self.0.authorized(given) {
            return Err(tonic::Status::unauthenticated("missing or wrong token"));
        }
        self.0.export(request.get_ref());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// `POST /v1/traces`: OTLP/HTTP, protobuf or JSON, answered in kind.
async fn otlp_http(State(c): State<Collector>, headers: HeaderMap, body: Bytes) -> Response {
    if !c.authorized(headers.get(header::AUTHORIZATION).map(|v| v.as_bytes())) {
        return (StatusCode::UNAUTHORIZED, "missing or wrong token\n").into_response();
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let req = if json {
        serde_json::from_slice::<ExportTraceServiceRequest>(&body).map_err(|e| e.to_string())
    } else {
        ExportTraceServiceRequest::decode(body).map_err(|e| e.to_string())
    };
    match req {
        Ok(req) => {
            c.export(&req);
            if json {
                ([(header::CONTENT_TYPE, "application/json")], "{}").into_response()
            } else {
                (
                    [(header::CONTENT_TYPE, "application/x-protobuf")],
                    ExportTraceServiceResponse::default().encode_to_vec(),
                )
                    .into_response()
            }
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            format!("not an OTLP trace export: {e}\n"),
        )
            .into_response(),
    }
}

async fn metrics_page(State(c): State<Collector>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        c.metrics(),
    )
        .into_response()
}

async fn api(
    State(c): State<Collector>,
    axum::extract::Path(what): axum::extract::Path<String>,
) -> Response {
    match c.api(&what) {
        Some(v) => Json(v).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            "try /api/graph, /api/chains, /api/databases or /api/findings\n",
        )
            .into_response(),
    }
}

async fn bind(
    addr: std::net::SocketAddr,
    what: &'static str,
) -> Result<tokio::net::TcpListener, ServerError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, what, source })
}

/// Runs until `shutdown` resolves; then analyses what is still open.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let collector = Collector::new(&config)?;
    let grpc_listener = bind(config.otlp_grpc, "OTLP/gRPC").await?;
    let http_listener = bind(config.otlp_http, "OTLP/HTTP").await?;
    let api_listener = bind(config.http, "metrics and API").await?;
    log::info!(
        "listening: OTLP/gRPC {}, OTLP/HTTP {}, /metrics and /api {}",
        grpc_listener.local_addr().map_or(config.otlp_grpc, |a| a),
        http_listener.local_addr().map_or(config.otlp_http, |a| a),
        api_listener.local_addr().map_or(config.http, |a| a),
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let otlp = Router::new()
        .route("/v1/traces", post(otlp_http))
        .with_state(collector.clone());
    let pages = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/api/{what}", get(api))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(collector.clone());
    // Read and checked once: the errors name the file and what is wrong with it.
    let tls = config.tls.as_ref().map(crate::tls::configs).transpose()?;
    let mut grpc = tonic::transport::Server::builder();
    let mut http_tls = None;
    if let Some((http, grpc_tls)) = tls {
        grpc = grpc
            .tls_config(grpc_tls)
            .map_err(|e| ServerError::Tls(e.to_string()))?;
        http_tls = Some(http);
        log::info!(
            "OTLP/gRPC and OTLP/HTTP over TLS{}",
            if config.tls.as_ref().is_some_and(|t| t.client_ca.is_some()) {
                ", client certificates required"
            } else {
                ""
            }
        );
    }
    let grpc = grpc
        .add_service(TraceServiceServer::new(Grpc(collector.clone())))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(grpc_listener),
            stopped(stop_rx.clone()),
        );
    // OTLP/HTTP: TLS too when `[tls]` is set.
    let http: std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<()>> + Send>> =
        match http_tls {
            Some(tls) => {
                let listener =
                    crate::tls::TlsListener::new(http_listener, tls).map_err(|source| {
                        ServerError::Bind {
                            addr: config.otlp_http,
                            what: "OTLP/HTTP",
                            source,
                        }
                    })?;
                Box::pin(
                    axum::serve(listener, otlp)
                        .with_graceful_shutdown(stopped(stop_rx.clone()))
                        .into_future(),
                )
            }
            None => Box::pin(
                axum::serve(http_listener, otlp)
                    .with_graceful_shutdown(stopped(stop_rx.clone()))
                    .into_future(),
            ),
        };
    let pages = axum::serve(api_listener, pages).with_graceful_shutdown(stopped(stop_rx.clone()));
    let ticker = {
        let c = collector.clone();
        let mut rx = stop_rx.clone();
        tokio::spawn(async move {
            let mut t = tokio::time::interval(Duration::from_millis(250));
            loop {
                tokio::select! {
                    _ = t.tick() => c.tick(),
                    _ = rx.wait_for(|s| *s) => break,
                }
            }
        })
    };
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    // Connections left open (an idle gRPC channel) may hold the servers up:
    // past a grace period after the stop, stop anyway.
    let grace = {
        let rx = stop_rx.clone();
        async move {
            stopped(rx).await;
            tokio::time::sleep(GRACE).await;
        }
    };
    tokio::select! {
        (g, h, p) = async { tokio::join!(grpc, http, pages) } => {
            if let Err(e) = g {
                log::error!("OTLP/gRPC server: {e}");
            }
            for r in [h, p] {
                if let Err(e) = r {
                    log::error!("HTTP server: {e}");
                }
            }
        }
        () = grace => log::warn!("connections still open {GRACE:?} after the stop: stopping anyway"),
    }
    let _ = ticker.await;
    collector.flush_all();
    log::info!("stopped");
    Ok(())
}
