//! The running collector: OTLP over gRPC and HTTP in (the [`intake`]),
//! spans into the model on the ingest thread, `/metrics` and the JSON API
//! out.
//!
//! [`intake`]: crate::intake

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard},
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};

use crate::{
    assembly::Assembler,
    baseline::{Baseline, BaselineError},
    config::Config,
    ingest::{self, State as Inner},
    intake::{Intake, IntakeStats, auth::Auth, grpc::GrpcReceiver, http::HttpReceiver},
    metrics,
    model::Model,
    names::Names,
};

/// How the token `deploy/` ships begins: a trial's, never to be kept.
const PLACEHOLDER_TOKEN: &str = "REPLACE-ME";

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
    /// A thread of the collector could not start.
    #[error("cannot start the {0} thread")]
    Thread(&'static str, #[source] std::io::Error),
}

/// Runs the collector until SIGTERM or Ctrl-C, on a runtime of its own
/// (two worker threads: the receivers and pages; decoding and assembly have
/// threads of their own), then analyses the traces still open.
pub fn run_until_signalled(config: Config) -> Result<(), ServerError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| ServerError::Thread("runtime", e))?;
    rt.block_on(async move {
        let shutdown = async {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(t) => t,
                    Err(e) => {
                        log::error!("cannot watch SIGTERM: {e}");
                        let _ = tokio::signal::ctrl_c().await;
                        return;
                    }
                };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
        };
        run(config, shutdown).await
    })
}

/// How long a page, once rendered, is served as it is.
const PAGE_TTL: std::time::Duration = std::time::Duration::from_secs(1);

/// Pages rendered lately, by name, with when.
type RenderedPages = BTreeMap<&'static str, (std::time::Instant, bytes::Bytes)>;

/// The collector's state, read by the pages; the ingest thread writes it.
#[derive(Clone)]
pub struct Collector {
    inner: Arc<Mutex<Inner>>,
    /// Who may read the map and the API.
    access: crate::web::Access,
    intake: Arc<IntakeStats>,
    queued: Arc<dyn Fn() -> usize + Send + Sync>,
    /// Pages rendered in the last second, by name: however many clients
    /// ask, the model is read for each page once a second at most.
    pages: Arc<tokio::sync::Mutex<RenderedPages>>,
}

impl Collector {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        ingest::lock(&self.inner)
    }

    /// The page `name`, rendered by `render` unless it was in the last
    /// second: one rendering at a time, off the async threads (it waits
    /// for the model's lock), shared, not copied, by every response.
    async fn page(
        &self,
        name: &'static str,
        render: impl FnOnce(&Collector) -> String + Send + 'static,
    ) -> bytes::Bytes {
        let mut pages = self.pages.lock().await;
        if let Some((at, page)) = pages.get(name)
            && at.elapsed() < PAGE_TTL
        {
            return page.clone();
        }
        let c = self.clone();
        let page = tokio::task::spawn_blocking(move || bytes::Bytes::from(render(&c)))
            .await
            .unwrap_or_default();
        pages.insert(name, (std::time::Instant::now(), page.clone()));
        page
    }

    pub fn metrics(&self) -> String {
        let inner = self.lock();
        let mut page = tangle_exposition::Page::default();
        metrics::model(&inner, &mut page);
        metrics::intake(&mut page, &self.intake, (self.queued)());
        page.render()
    }

    /// The JSON of `/api/{what}`, from the types of [`crate::api`].
    pub fn api(&self, what: &str) -> Option<String> {
        use crate::api::{ChainsPage, DatabasesPage, FindingsPage, GraphPage, Links};
        let inner = self.lock();
        let m = &inner.model;
        match what {
            "chains" => serde_json::to_string(&ChainsPage::of(m)),
            "graph" => {
                serde_json::to_string(&GraphPage::of(m, inner.assembler.stats, inner.mapping))
            }
            "databases" => serde_json::to_string(&DatabasesPage::of(m)),
            "findings" => {
                let (exact, inferred) = m.links();
                serde_json::to_string(&FindingsPage {
                    findings: std::borrow::Cow::Borrowed(&inner.findings[..]),
                    links: Some(Links { exact, inferred }),
                })
            }
            _ => return None,
        }
        .ok()
    }
}

async fn metrics_page(State(c): State<Collector>) -> Response {
    let page = c.page("metrics", Collector::metrics).await;
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], page).into_response()
}

/// Lets a request for the map or the API through with the `[api]` token
/// (or when there is none); a refusal is counted.
async fn admit(
    State(c): State<Collector>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if c.access.allows(req.headers()) {
        return next.run(req).await;
    }
    c.intake
        .pages_unauthenticated
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    crate::web::Access::refusal()
}

async fn api(
    State(c): State<Collector>,
    axum::extract::Path(what): axum::extract::Path<String>,
) -> Response {
    let Some(name) = ["graph", "chains", "databases", "findings"]
        .into_iter()
        .find(|n| *n == what)
    else {
        return (
            StatusCode::NOT_FOUND,
            "try /api/graph, /api/chains, /api/databases or /api/findings\n",
        )
            .into_response();
    };
    let page = c.page(name, move |c| c.api(name).unwrap_or_default()).await;
    ([(header::CONTENT_TYPE, "application/json")], page).into_response()
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
    // Chains come and go across restarts: the file keeps a few times what
    // the model holds.
    let baseline = Baseline::open_bounded(
        &config.data_dir,
        config.limits.model().max_chains.saturating_mul(4),
    )?;
    log::info!(
        "baseline: {} known chains in {}",
        baseline.len(),
        config.data_dir.display()
    );
    if baseline.skipped_lines() > 0 {
        log::warn!(
            "baseline: skipped {} unreadable lines of {}",
            baseline.skipped_lines(),
            config.data_dir.join(Baseline::FILE).display()
        );
    }
    let model = Model::with_limits(
        baseline,
        config.thresholds.clone(),
        config.owners.clone(),
        config.limits.model(),
    );
    let assembler = Assembler::with_trace_limit(
        config.trace_window_ms.saturating_mul(1_000_000),
        config.max_spans_in_flight,
        config.limits.max_spans_per_trace,
    );
    let inner = Arc::new(Mutex::new(Inner::new(
        assembler,
        model,
        Names::new(config.limits.names()),
        config.limits.max_chain_depth.max(1),
    )));
    // Read and checked before anything listens: the errors name the file.
    let token = config.token()?;
    if token
        .as_deref()
        .is_some_and(|t| t.starts_with(PLACEHOLDER_TOKEN))
    {
        log::warn!(
            "the token is the placeholder deploy/ ships, the same for everyone: anyone who can \
             reach the OTLP ports can send spans. Replace it (docs/kubernetes.md#your-own-overlay)"
        );
    }
    let auth = Auth::new(token);
    let access = crate::web::Access::new(config.api_token()?);
    let tls = config
        .tls
        .as_ref()
        .map(crate::intake::tls::configs)
        .transpose()?;
    let grpc_listener = bind(config.otlp_grpc, "OTLP/gRPC").await?;
    let http_listener = bind(config.otlp_http, "OTLP/HTTP").await?;
    let api_listener = bind(config.http, "metrics and API").await?;
    log::info!(
        "listening: OTLP/gRPC {}, OTLP/HTTP {}, /metrics and /api {}",
        grpc_listener.local_addr().map_or(config.otlp_grpc, |a| a),
        http_listener.local_addr().map_or(config.otlp_http, |a| a),
        api_listener.local_addr().map_or(config.http, |a| a),
    );
    if tls.is_some() {
        log::info!(
            "OTLP/gRPC and OTLP/HTTP over TLS{}",
            if config.tls.as_ref().is_some_and(|t| t.client_ca.is_some()) {
                ", client certificates required"
            } else {
                ""
            }
        );
    }
    let (to_ingest, batches) = std::sync::mpsc::channel();
    let ingest =
        ingest::start(inner.clone(), batches).map_err(|e| ServerError::Thread("ingest", e))?;
    let stats = Arc::new(IntakeStats::default());
    let intake = Arc::new(Intake::new(
        auth,
        config.intake,
        config.limits.max_name_bytes,
        stats.clone(),
        to_ingest,
    ));
    let collector = Collector {
        inner,
        access,
        pages: Arc::default(),
        intake: stats.clone(),
        queued: {
            let intake = Arc::downgrade(&intake);
            Arc::new(move || intake.upgrade().map_or(0, |i| i.queued_spans()))
        },
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let limits = config.intake.conn_limits();
    let (http_tls, grpc_tls) = match tls {
        Some((h, g)) => (Some(Arc::new(h)), Some(Arc::new(g))),
        None => (None, None),
    };
    let grpc = tokio::spawn(tangle_listener::serve(
        grpc_listener,
        grpc_tls,
        tangle_listener::Http::Two,
        limits,
        GrpcReceiver(intake.clone()),
        stats.grpc.conns.clone(),
        stop_rx.clone(),
    ));
    let http = tokio::spawn(tangle_listener::serve(
        http_listener,
        http_tls,
        tangle_listener::Http::One,
        limits,
        HttpReceiver(intake.clone()),
        stats.http.conns.clone(),
        stop_rx.clone(),
    ));
    drop(intake);
    // The map and the API ask for the token; /metrics and /healthz do not.
    let guarded = Router::new()
        .route("/api/{what}", get(api))
        .route("/", get(crate::web::index))
        .route("/assets/{*path}", get(crate::web::asset))
        .route_layer(axum::middleware::from_fn_with_state(
            collector.clone(),
            admit,
        ));
    let pages = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(guarded)
        .with_state(collector.clone());
    let pages = tokio::spawn(tangle_listener::serve(
        api_listener,
        None,
        tangle_listener::Http::One,
        limits,
        hyper_util::service::TowerToHyperService::new(pages),
        stats.pages.clone(),
        stop_rx,
    ));
    shutdown.await;
    let _ = stop_tx.send(true);
    for (what, task) in [("OTLP/gRPC", grpc), ("OTLP/HTTP", http), ("pages", pages)] {
        if let Err(e) = task.await {
            log::error!("{what} server: {e}");
        }
    }
    // The receivers are gone, and with them the way in: the ingest thread
    // takes what is queued, closes every open trace, and ends.
    drop(collector);
    if ingest.join().is_err() {
        log::error!("the ingest thread failed");
    }
    log::info!("stopped");
    Ok(())
}
