//! `tangle-collector` run as a process on ports of its own, and the
//! plain HTTP and OTLP its tests send it.

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{AnyValue, KeyValue, any_value::Value},
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans, Span},
};

/// A port free now, below the ephemeral range (32768 and up): one from
/// `127.0.0.1:0` could be taken by any outgoing connection (a flood test's,
/// say) between this call and the server's bind. Each call of a test
/// process gets another.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let start = std::process::id().wrapping_mul(7919) % SPAN;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < SPAN, "no free port below the ephemeral range");
        let port = u16::try_from(LOW + (start + n) % SPAN).unwrap();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub struct Collector {
    pub child: Child,
    pub otlp_grpc: u16,
    pub otlp_http: u16,
    pub http: u16,
}

impl Collector {
    pub fn start(data_dir: &Path) -> Self {
        Self::start_with(data_dir, &[])
    }

    pub fn start_with(data_dir: &Path, args: &[&str]) -> Self {
        let (otlp_grpc, otlp_http, http) = (free_port(), free_port(), free_port());
        let child = Command::new(env!("CARGO_BIN_EXE_tangle-collector"))
            .args(args)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--otlp-grpc", &format!("127.0.0.1:{otlp_grpc}")])
            .args(["--otlp-http", &format!("127.0.0.1:{otlp_http}")])
            .args(["--http", &format!("127.0.0.1:{http}")])
            .args(["--trace-window-ms", "200"])
            // Every chain not in the baseline is new: no learning period.
            .args(["--learning-seconds", "0"])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let c = Self {
            child,
            otlp_grpc,
            otlp_http,
            http,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while request(c.http, "GET", "/healthz", "", b"").is_none() {
            assert!(Instant::now() < deadline, "the collector did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        c
    }

    pub fn stop(mut self) {
        // SIGTERM: a graceful stop that analyses what is still open.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "stopped cleanly: {status}");
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 exchange on loopback: (status, body).
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> Option<(u16, Vec<u8>)> {
    request_with(port, method, path, content_type, body, "")
}

/// [`request`] with more header lines (each ending in CRLF).
pub fn request_with(
    port: u16,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
    headers: &str,
) -> Option<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{headers}\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).ok()?;
    s.write_all(body).ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let split = out.windows(4).position(|w| w == b"\r\n\r\n")?;
    let status = std::str::from_utf8(&out[9..12]).ok()?.parse().ok()?;
    Some((status, out[split + 4..].to_vec()))
}

pub fn get_json(port: u16, path: &str) -> serde_json::Value {
    let (status, body) = request(port, "GET", path, "text/plain", b"").unwrap();
    assert_eq!(status, 200, "{path}");
    serde_json::from_slice(&body).unwrap()
}

pub fn kv(key: &str, v: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(v.into())),
        }),
        ..KeyValue::default()
    }
}

/// An export of `by_service`'s spans, a resource for each service.
pub fn export_request<S: AsRef<str>>(
    by_service: impl IntoIterator<Item = (S, Vec<Span>)>,
) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: by_service
            .into_iter()
            .map(|(service, spans)| ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", service.as_ref())],
                    ..Resource::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..ScopeSpans::default()
                }],
                ..ResourceSpans::default()
            })
            .collect(),
    }
}

/// Where `tool` is on the PATH, if it is.
pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Says loudly why `test` is skipped; under CI (every tool installed by
/// `cargo xtask setup --test-deps`) a skip is a failure.
pub fn skip(test: &str, reason: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "{test} cannot run in CI: {reason}"
    );
    eprintln!("SKIPPED {test}: {reason}");
    append_line("TANGLE_SKIP_LOG", &format!("{test}: {reason}"));
}

/// What `test` measured (`cargo xtask test` prints these at the end).
pub fn report(test: &str, what: &str) {
    eprintln!("REPORT {test}: {what}");
    append_line("TANGLE_REPORT_LOG", &format!("{test}: {what}"));
}

/// Appends `line` to the file the environment variable `var` names, if set.
fn append_line(var: &str, line: &str) {
    if let Some(log) = std::env::var_os(var)
        && let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
    {
        let _ = writeln!(f, "{line}");
    }
}

/// A span of trace `trace` (every id byte the same), with `parent` 0 for
/// none; `kind` as OTLP numbers it (2 server, 3 client).
pub fn otlp_span(trace: u8, id: u8, parent: u8, kind: i32, attributes: Vec<KeyValue>) -> Span {
    Span {
        trace_id: vec![trace; 16],
        span_id: vec![id; 8],
        parent_span_id: if parent == 0 { vec![] } else { vec![parent; 8] },
        name: "op".into(),
        kind,
        start_time_unix_nano: 1_000_000,
        end_time_unix_nano: 3_000_000,
        attributes,
        ..Span::default()
    }
}

/// gateway -> orders -> pricing, one trace; `trace` picks its id.
pub fn checkout_trace(trace: u8) -> ExportTraceServiceRequest {
    let span = |id, parent, kind, attrs| otlp_span(trace, id, parent, kind, attrs);
    let http = |method: &str, route: &str| {
        vec![kv("http.request.method", method), kv("http.route", route)]
    };
    let mut to_orders = http("POST", "/orders");
    to_orders.push(kv("peer.service", "orders"));
    let mut to_pricing = http("GET", "/prices/{sku}");
    to_pricing.push(kv("peer.service", "pricing"));
    export_request([
        (
            "gateway",
            vec![
                span(1, 0, 2, http("POST", "/checkout")),
                span(2, 1, 3, to_orders),
            ],
        ),
        (
            "orders",
            vec![
                span(3, 2, 2, http("POST", "/orders")),
                span(4, 3, 3, to_pricing),
            ],
        ),
        ("pricing", vec![span(5, 4, 2, http("GET", "/prices/{sku}"))]),
    ])
}

pub fn data_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tangle-collector-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

pub fn wait_for(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn chains(port: u16) -> Vec<serde_json::Value> {
    get_json(port, "/api/chains")["chains"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}
