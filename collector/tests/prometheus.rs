//! End to end with the real Prometheus: it scrapes a real collector fed
//! with traffic and loads the shipped rules (deploy/prometheus/rules.yml,
//! the file itself). Through Prometheus's HTTP API: TangleNewSyncChain stays
//! quiet while only known chains flow, then goes pending and firing when a
//! new chain appears; TangleCrossServiceDatabaseAccess fires when a service
//! writes another's table; and every PromQL query of every dashboard in
//! deploy/grafana evaluates, the main panels with data.
//!
//! Takes about a hundred seconds: the two alerts' `for: 1m`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // a panic here is a failed test

mod support;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{AnyValue, KeyValue, any_value::Value},
    trace::v1::Span as OtlpSpan,
};
use prost::Message as _;
use serde_json::Value as Json;
use support::{Call, Node, node, process::*};

const TEST: &str = "prometheus_scrapes_the_collector_alerts_fire_and_dashboards_evaluate";
const NEW_CHAIN: &str = "TangleNewSyncChain";
const CROSS: &str = "TangleCrossServiceDatabaseAccess";
/// How long only known chains flow while TangleNewSyncChain must stay quiet.
const QUIET: Duration = Duration::from_secs(20);
/// The longest a rule's `for: 1m` may take to fire, scrapes and evaluations included.
const FIRE: Duration = Duration::from_secs(90);

// --- traffic: call trees as OTLP ---------------------------------------------

fn attr(key: &str, v: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..KeyValue::default()
    }
}

/// "GET /orders" as the HTTP semantic conventions say it.
fn http(operation: &str) -> Vec<KeyValue> {
    let (method, route) = operation.split_once(' ').unwrap();
    vec![kv("http.request.method", method), kv("http.route", route)]
}

/// One trace's spans, grouped by service as SDKs export them.
struct Otlp {
    trace_id: Vec<u8>,
    span_base: u64,
    next: u64,
    start_ns: u64,
    spans: BTreeMap<String, Vec<OtlpSpan>>,
}

impl Otlp {
    fn span(
        &mut self,
        service: &str,
        parent: &[u8],
        kind: i32,
        name: &str,
        attributes: Vec<KeyValue>,
        depth: u64,
    ) -> Vec<u8> {
        self.next += 1;
        let id = (self.span_base | self.next).to_be_bytes().to_vec();
        // Each level inside its caller's time.
        let start = self.start_ns + depth * 20_000;
        self.spans
            .entry(service.to_owned())
            .or_default()
            .push(OtlpSpan {
                trace_id: self.trace_id.clone(),
                span_id: id.clone(),
                parent_span_id: parent.to_vec(),
                name: name.into(),
                kind,
                start_time_unix_nano: start,
                end_time_unix_nano: start + 2_000_000 - depth * 40_000,
                attributes,
                ..OtlpSpan::default()
            });
        id
    }

    /// `n`'s server span (kind 2) and what it calls: client spans (3) to
    /// services, with the callee's server span under each, and to databases.
    fn serve(&mut self, parent: &[u8], n: &Node, depth: u64) {
        let me = self.span(
            &n.service,
            parent,
            2,
            &n.operation,
            http(&n.operation),
            depth,
        );
        for call in &n.calls {
            match call {
                Call::Sync(callee) => {
                    let mut a = http(&callee.operation);
                    a.push(kv("peer.service", &callee.service));
                    let c = self.span(&n.service, &me, 3, &callee.operation, a, depth + 1);
                    self.serve(&c, callee, depth + 2);
                }
                Call::Db {
                    namespace,
                    tables,
                    writes,
                } => {
                    for t in tables {
                        let q = if *writes {
                            format!("UPDATE {t} SET status = 'paid' WHERE id = 7")
                        } else {
                            format!("SELECT status FROM {t} WHERE id = 7")
                        };
                        let a = vec![
                            kv("db.system.name", "postgresql"),
                            kv("db.namespace", namespace),
                            kv("server.address", "db"),
                            attr("server.port", Value::IntValue(5432)),
                            kv("db.query.text", &q),
                        ];
                        self.span(&n.service, &me, 3, "query", a, depth + 1);
                    }
                }
                other => panic!("not used here: {other:?}"),
            }
        }
    }
}

/// Trace number `trace` of the call tree `root`, as one OTLP export.
fn export(trace: u64, root: &Node) -> ExportTraceServiceRequest {
    let mut id = vec![0x7a; 8];
    id.extend_from_slice(&trace.to_be_bytes());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let mut o = Otlp {
        trace_id: id,
        span_base: trace << 16,
        next: 0,
        start_ns: u64::try_from(now).unwrap(),
        spans: BTreeMap::new(),
    };
    o.serve(&[], root, 0);
    export_request(o.spans)
}

fn db(namespace: &str, table: &str, writes: bool) -> Call {
    Call::Db {
        namespace: namespace.into(),
        tables: vec![table.into()],
        writes,
    }
}

/// gateway -> orders -> pricing (-> currency when `new_hop`), and
/// gateway -> billing. orders writes its own table (twice: the owner by
/// most writes); billing reads its own, and writes orders' table when
/// `billing_writes_orders` (the same chains: a database is not a hop).
fn checkout(new_hop: bool, billing_writes_orders: bool) -> Node {
    let pricing = if new_hop {
        node("pricing", vec![Call::Sync(node("currency", vec![]))])
    } else {
        node("pricing", vec![])
    };
    let orders = node(
        "orders",
        vec![
            Call::Sync(pricing),
            db("orders_db", "orders", true),
            db("orders_db", "orders", true),
        ],
    );
    let mut billing = vec![db("billing_db", "invoices", false)];
    if billing_writes_orders {
        billing.push(db("orders_db", "orders", true));
    }
    node(
        "gateway",
        vec![Call::Sync(orders), Call::Sync(node("billing", billing))],
    )
}

/// Posts one trace over OTLP/HTTP (protobuf); whether the collector took it.
fn send(port: u16, trace: u64, root: &Node) -> bool {
    let body = export(trace, root).encode_to_vec();
    request(port, "POST", "/v1/traces", "application/x-protobuf", &body)
        .is_some_and(|(status, _)| status == 200)
}

/// Known traffic, every 300 ms, until dropped: `billing` once set makes
/// billing write orders' table.
struct Traffic {
    stop: Arc<AtomicBool>,
    billing: Arc<AtomicBool>,
    failed: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Traffic {
    fn start(port: u16, first_trace: u64) -> Self {
        let (stop, billing, failed) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let (s, b, f) = (stop.clone(), billing.clone(), failed.clone());
        let thread = std::thread::spawn(move || {
            let mut trace = first_trace;
            while !s.load(Ordering::Relaxed) {
                if !send(port, trace, &checkout(false, b.load(Ordering::Relaxed))) {
                    f.fetch_add(1, Ordering::Relaxed);
                }
                trace += 1;
                std::thread::sleep(Duration::from_millis(300));
            }
            trace - first_trace
        });
        Self {
            stop,
            billing,
            failed,
            thread: Some(thread),
        }
    }

    /// Stops it; the traces sent.
    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// --- Prometheus ---------------------------------------------------------------

struct Prometheus {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Prometheus {
    /// Scrapes the collector's /metrics every second as job
    /// tangle-collector and evaluates `rules` every second.
    fn start(dir: &Path, collector_http: u16, rules: &Path) -> Self {
        let port = free_port();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {rules:?}\n\
                 scrape_configs:\n  - job_name: tangle-collector\n    static_configs:\n      \
                 - targets: [\"127.0.0.1:{collector_http}\"]\n",
            ),
        )
        .unwrap();
        let log = dir.join("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut p = Self { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = p.child.try_wait().unwrap() {
                panic!("prometheus exited ({status}):\n{}", p.log_tail());
            }
            if http_get(port, "/-/ready").is_some_and(|(s, _)| s == 200) {
                return p;
            }
            assert!(Instant::now() < deadline, "prometheus not ready in 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// GET `path` of the API; its `data`, or why not.
    fn api(&self, path: &str) -> Result<Json, String> {
        let (status, body) =
            http_get(self.port, path).ok_or_else(|| format!("no answer to {path}"))?;
        let v: Json = serde_json::from_slice(&body)
            .map_err(|e| format!("{path}: HTTP {status}, not JSON ({e})"))?;
        if status != 200 || v["status"] != "success" {
            return Err(format!(
                "HTTP {status} {}: {}",
                v["errorType"].as_str().unwrap_or(""),
                v["error"].as_str().unwrap_or("")
            ));
        }
        Ok(v["data"].clone())
    }

    fn query(&self, expr: &str) -> Result<Json, String> {
        self.api(&format!("/api/v1/query?query={}", encode(expr)))
    }

    /// A range query over the last `secs` seconds, as Grafana's time series ask.
    fn query_range(&self, expr: &str, secs: u64) -> Result<Json, String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        self.api(&format!(
            "/api/v1/query_range?query={}&start={}&end={now}&step=5",
            encode(expr),
            now - secs
        ))
    }

    /// The one value an instant query returns (None: empty).
    fn value(&self, expr: &str) -> Option<f64> {
        let d = self.query(expr).unwrap();
        let r = &d["result"];
        let v = match d["resultType"].as_str() {
            Some("scalar") => r[1].as_str(),
            _ => {
                assert!(r.as_array().unwrap().len() <= 1, "{expr}: {r}");
                r[0]["value"][1].as_str()
            }
        };
        v.map(|v| v.parse().unwrap())
    }

    /// The state of alert `name` (pending or firing), with its annotations,
    /// if it is active.
    fn alert(&self, name: &str) -> Option<(String, Json)> {
        let d = self.api("/api/v1/alerts").unwrap();
        let mine: Vec<&Json> = d["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["labels"]["alertname"] == name)
            .collect();
        assert!(mine.len() <= 1, "one {name} alert at most: {mine:?}");
        mine.first().map(|a| {
            (
                a["state"].as_str().unwrap().to_owned(),
                a["annotations"].clone(),
            )
        })
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("prometheus log (last lines):\n{}", self.log_tail());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Removes the test's folder when dropped, whatever happened.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// GET over HTTP/1.0 (so Prometheus answers without chunks): (status, body).
fn http_get(port: u16, path: &str) -> Option<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let split = out.windows(4).position(|w| w == b"\r\n\r\n")?;
    let status = std::str::from_utf8(out.get(9..12)?).ok()?.parse().ok()?;
    Some((status, out[split + 4..].to_vec()))
}

/// Calls `f` every 250 ms until it gives a value; panics after `limit`.
fn poll<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out ({limit:?}) waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

// --- dashboards -----------------------------------------------------------------

/// Every (panel title, target) of a dashboard, rows' nested panels too.
fn targets(panels: &Json, out: &mut Vec<(String, Json)>) {
    for p in panels.as_array().into_iter().flatten() {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push((p["title"].as_str().unwrap_or("").to_owned(), t.clone()));
        }
        targets(&p["panels"], out);
    }
}

/// Grafana's variables replaced as Grafana would for a few minutes of data
/// scraped every second; template variables by their "All" value.
fn substitute(expr: &str) -> String {
    let mut e = expr.to_owned();
    for (var, v) in [
        ("__rate_interval", "1m"),
        ("__interval_ms", "60000"),
        ("__interval", "1m"),
        ("__range_ms", "300000"),
        ("__range_s", "300"),
        ("__range", "5m"),
    ] {
        e = e
            .replace(&format!("${{{var}}}"), v)
            .replace(&format!("${var}"), v);
    }
    // $namespace and the like (all used as `=~` matchers): .*
    let mut out = String::new();
    let mut rest = e.as_str();
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name_len, skip) = if let Some(inner) = after.strip_prefix('{') {
            let end = inner.find('}').unwrap();
            (end, end + 2)
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (end, end)
        };
        let name = &after[usize::from(after.starts_with('{'))..][..name_len];
        if name.starts_with(|c: char| c.is_ascii_alphabetic()) {
            assert!(
                out.ends_with("=~\""),
                "${name} is not a regex matcher in {expr}"
            );
            out.push_str(".*");
        } else {
            // $1 of label_replace.
            out.push('$');
            out.push_str(&after[..skip]);
        }
        rest = &after[skip..];
    }
    out.push_str(rest);
    out
}

/// Panels that must show data with this traffic, by dashboard.
const MAIN_PANELS: &[(&str, &[&str])] = &[
    (
        "tangle-overview.json",
        &[
            "Distributed-monolith symptoms",
            "Calls linked by a heuristic",
            "Entry operations seen",
            "Cross-service database access",
            "Shared databases",
            "New synchronous chains",
            "Entry operations: depth, closure, implied availability",
            "Databases and how many services use them",
            "Service-to-service edges with faults (range)",
        ],
    ),
    (
        "tangle-chains.json",
        &[
            "Distinct chains",
            "New chains (time range)",
            "Entry operations",
            "Chains by signature (time range)",
            "Sync depth (max) per entry",
            "Implied availability per entry",
            "Traces/s per entry operation",
            "New synchronous chains",
        ],
    ),
    (
        "tangle-databases.json",
        &[
            "Shared databases",
            "Cross-service database access",
            "Tables written by several services",
            "Services per database",
            "Service → database (time range)",
            "Calls/s per service and database",
        ],
    ),
    (
        "tangle-dependency-map.json",
        &[
            "Map (calls over the time range)",
            "Edges (time range)",
            "Calls/s, service to service",
            "p95 latency, service to service (client side)",
            "p95 latency, service to service (server side)",
        ],
    ),
    (
        "tangle-health.json",
        &[
            "Collector up",
            "Spans received/s",
            "Spans/s",
            "Traces/s",
            "Spans waiting",
            "Connections",
        ],
    ),
];

fn non_empty(data: &Json) -> bool {
    data["resultType"] == "scalar" || data["result"].as_array().is_some_and(|r| !r.is_empty())
}

/// Evaluates every dashboard query; (queries, main panels with data), or
/// the failures.
fn check_dashboards(p: &Prometheus, grafana: &Path) -> (usize, usize) {
    let mut failures = Vec::new();
    let (mut queries, mut main_seen) = (0, 0);
    let mut files: Vec<PathBuf> = std::fs::read_dir(grafana)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert_eq!(files.len(), MAIN_PANELS.len(), "dashboards: {files:?}");
    for f in &files {
        let name = f.file_name().unwrap().to_str().unwrap();
        let board: Json = serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
        let main = MAIN_PANELS
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("{name}: not in MAIN_PANELS"))
            .1;
        let mut all = Vec::new();
        targets(&board["panels"], &mut all);
        for title in main {
            assert!(
                all.iter().any(|(t, _)| t == title),
                "{name}: no panel {title:?}"
            );
        }
        for (title, t) in &all {
            let raw = t["expr"].as_str().unwrap();
            let expr = substitute(raw);
            queries += 1;
            let is_main = main.contains(&title.as_str());
            match p.query(&expr) {
                Err(e) => failures.push(format!("{name} / {title}: {e}\n    {expr}")),
                Ok(d) if is_main && !non_empty(&d) => {
                    failures.push(format!("{name} / {title}: no data\n    {expr}"));
                }
                Ok(_) => main_seen += usize::from(is_main),
            }
            if t["range"] == true
                && let Err(e) = p.query_range(&expr, 120)
            {
                failures.push(format!("{name} / {title} (range): {e}\n    {expr}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {queries} dashboard queries failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    (queries, main_seen)
}

// --- the test -----------------------------------------------------------------

#[test]
fn prometheus_scrapes_the_collector_alerts_fire_and_dashboards_evaluate() {
    if which("prometheus").is_none() {
        skip(
            TEST,
            "`prometheus` is not installed (cargo xtask setup --test-deps: Debian's prometheus)",
        );
        return;
    }
    let t0 = Instant::now();
    let at = || format!("{:5.1}s", t0.elapsed().as_secs_f64());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let rules = root.join("deploy/prometheus/rules.yml");
    let rules_text = std::fs::read_to_string(&rules).unwrap();
    let dir = TempDir(data_dir("prometheus"));
    let collector_dir = dir.0.join("collector");

    // The known chains: a first run of the collector records them in its
    // baseline, which the next run reads (as after a restart).
    let c = Collector::start(&collector_dir);
    for trace in 1..=3 {
        assert!(send(c.otlp_http, trace, &checkout(false, false)));
    }
    wait_for("the known chains", || chains(c.http).len() == 2);
    c.stop();
    let c = Collector::start(&collector_dir);
    let prom = Prometheus::start(&dir.0, c.http, &rules);
    let traffic = Traffic::start(c.otlp_http, 1000);
    eprintln!(
        "{} collector (baseline of 2 chains) and prometheus up",
        at()
    );

    // The shipped rules are loaded and evaluated, without errors.
    let alerts_in_file = rules_text.matches("- alert:").count();
    poll("the rules evaluated", Duration::from_secs(20), || {
        let d = prom.api("/api/v1/rules").unwrap();
        let loaded: Vec<&Json> = d["groups"]
            .as_array()
            .unwrap()
            .iter()
            .inspect(|g| assert_eq!(g["file"], rules.to_str().unwrap()))
            .flat_map(|g| g["rules"].as_array().unwrap())
            .collect();
        assert_eq!(loaded.len(), alerts_in_file, "rules loaded");
        for r in &loaded {
            assert_ne!(r["health"], "err", "{r}");
        }
        loaded.iter().all(|r| r["health"] == "ok").then_some(())
    });
    poll(
        "the collector scraped, with traffic",
        Duration::from_secs(20),
        || {
            let up = prom.value(r#"up{job="tangle-collector"}"#)?;
            let traces = prom.value(r#"tangle_traces_assembled_total{job="tangle-collector"}"#)?;
            // Pending at the evaluations before the first scrape (absent(up)).
            let down = prom.alert("TangleCollectorDown").is_some();
            (up == 1.0 && traces > 0.0 && !down).then_some(())
        },
    );

    // Nothing new: quiet for QUIET, while known chains flow.
    let quiet_from = Instant::now();
    while quiet_from.elapsed() < QUIET {
        for name in [NEW_CHAIN, CROSS, "TangleCollectorDown"] {
            if let Some((state, _)) = prom.alert(name) {
                panic!("{name} is {state} with nothing new");
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(
        prom.value(r#"tangle_new_sync_chains_total{job="tangle-collector"}"#),
        Some(0.0)
    );
    assert_eq!(
        prom.value(r#"max(tangle_sync_chains{job="tangle-collector"})"#),
        Some(2.0)
    );
    eprintln!("{} {NEW_CHAIN} quiet for {QUIET:?} of known chains", at());

    // A new chain: pricing now calls currency. Pending, then firing.
    assert!(send(c.otlp_http, 500, &checkout(true, false)));
    let sent = Instant::now();
    let (state, _) = poll(
        &format!("{NEW_CHAIN} active"),
        Duration::from_secs(20),
        || prom.alert(NEW_CHAIN),
    );
    assert_eq!(state, "pending", "with for: 1m, pending first");
    let pending_after = sent.elapsed();
    assert!(prom.alert(CROSS).is_none(), "{CROSS} before any access");
    eprintln!(
        "{} {NEW_CHAIN} pending {pending_after:.1?} after the new chain",
        at()
    );

    // billing starts writing orders' table (its chain is the same).
    traffic.billing.store(true, Ordering::Relaxed);
    let cross_from = Instant::now();
    let mut cross_pending = None;
    let mut firing = None;
    let mut cross_firing = None;
    poll("both alerts firing", FIRE, || {
        match prom.alert(NEW_CHAIN) {
            Some((s, a)) if s == "firing" => {
                if firing.is_none() {
                    firing = Some(sent.elapsed());
                    eprintln!(
                        "{} {NEW_CHAIN} firing {:.1?} after the new chain",
                        at(),
                        sent.elapsed()
                    );
                    assert_eq!(a["summary"], "A new synchronous call chain appeared");
                    let d = a["description"].as_str().unwrap();
                    assert!(
                        d.starts_with("1 synchronous chain(s) never seen before"),
                        "{d}"
                    );
                }
            }
            Some(_) => assert!(firing.is_none(), "{NEW_CHAIN} went back to pending"),
            None => panic!("{NEW_CHAIN} went quiet"),
        }
        match prom.alert(CROSS) {
            Some((s, a)) if s == "firing" => {
                if cross_firing.is_none() {
                    assert!(cross_pending.is_some(), "{CROSS} fired without pending");
                    cross_firing = Some(cross_from.elapsed());
                    eprintln!(
                        "{} {CROSS} firing {:.1?} after the access",
                        at(),
                        cross_from.elapsed()
                    );
                    assert_eq!(
                        a["summary"],
                        "1 (database, service) pair(s): a service uses a database another service owns"
                    );
                }
            }
            Some(_) => {
                assert!(cross_firing.is_none(), "{CROSS} went back to pending");
                cross_pending.get_or_insert_with(|| cross_from.elapsed());
            }
            None => assert!(cross_firing.is_none(), "{CROSS} went quiet"),
        }
        (firing.is_some() && cross_firing.is_some()).then_some(())
    });
    let (firing, cross_firing) = (firing.unwrap(), cross_firing.unwrap());
    assert!(
        firing >= Duration::from_secs(58),
        "{NEW_CHAIN} fired {firing:?} after the chain: before its for: 1m"
    );
    assert!(
        cross_firing >= Duration::from_secs(58),
        "{CROSS}: {cross_firing:?}"
    );
    assert_eq!(
        prom.value(r#"tangle_new_sync_chains_total{job="tangle-collector"}"#),
        Some(1.0),
        "one new chain: the billing write made none"
    );
    assert!(prom.alert("TangleCollectorDown").is_none());

    // Every dashboard query evaluates; the main panels have data, and say
    // what the traffic shows.
    let (queries, main) = check_dashboards(&prom, &root.join("deploy/grafana"));
    let finding = |k: &str| {
        prom.value(&format!(
            r#"max(tangle_findings{{kind="{k}"}}) or vector(0)"#
        ))
    };
    assert_eq!(finding("cross_service_access"), Some(1.0));
    assert_eq!(finding("shared_database"), Some(1.0));
    assert_eq!(finding("table_written_by_many"), Some(1.0));
    assert_eq!(finding("new_sync_chain"), Some(1.0));
    assert_eq!(
        finding("deep_sync_chain"),
        Some(0.0),
        "depth 3 is the threshold"
    );
    assert_eq!(
        prom.value(
            r#"max by (database) (tangle_database_accessors{database="db:5432/orders_db"})"#
        ),
        Some(2.0)
    );
    assert_eq!(
        prom.value(r#"max(tangle_sync_depth_max{entry_service="gateway"})"#),
        Some(3.0)
    );

    let failed = traffic.failed.load(Ordering::Relaxed);
    let traces = traffic.finish();
    assert_eq!(failed, 0, "traces the collector did not take");
    c.stop();
    drop(prom);
    report(
        TEST,
        &format!(
            "{alerts_in_file} shipped rules loaded; {NEW_CHAIN} quiet for {QUIET:?} of known chains, then pending \
         {pending_after:.1?} and firing {firing:.1?} after a new chain; {CROSS} pending {:.1?} and firing \
         {cross_firing:.1?} after a cross-service write; {queries} dashboard queries evaluated, the {main} queries of \
         the {} main panels with data; {traces} traces sent; {:.0?} in all",
            cross_pending.unwrap(),
            MAIN_PANELS.iter().map(|(_, t)| t.len()).sum::<usize>(),
            t0.elapsed()
        ),
    );
}
