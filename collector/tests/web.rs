//! The coupling map in real headless Chromium (Debian's), driven by
//! Playwright (`collector/tests/web/map.mjs`): the page loads with no
//! console error and no request elsewhere, the map has exactly the model's
//! nodes and edges with their kinds, selecting a finding highlights its
//! chain, and a new chain appears on the next poll without losing the zoom
//! or the selection. Then a synthetic model of 300 services and 2,000
//! edges: how long the first render and a redraw take.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // a panic here is a failed test

mod support;

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest, trace::v1::Span,
};
use prost::Message;
use support::process::{
    Collector, checkout_trace, data_dir, export_request, kv, otlp_span, report, request,
    request_with, skip, wait_for, which,
};

const TOKEN: &str = "map-t0ken";

/// What the browser test needs, or why it cannot run.
fn browser() -> Result<(PathBuf, PathBuf), String> {
    let node = which("node").ok_or("no node (Debian: nodejs)")?;
    let chromium = which("chromium").ok_or("no chromium (Debian: chromium)")?;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/web");
    if !dir.join("node_modules/playwright-core").is_dir() {
        return Err(format!(
            "no playwright-core: run `npm ci` in {} (cargo xtask setup --test-deps does)",
            dir.display()
        ));
    }
    let _ = chromium;
    Ok((node, dir))
}

fn artifacts() -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/artifacts/web");
    std::fs::create_dir_all(&d).unwrap();
    d.canonicalize().unwrap()
}

fn post(c: &Collector, req: &ExportTraceServiceRequest) {
    let (status, _) = request(
        c.otlp_http,
        "POST",
        "/v1/traces",
        "application/x-protobuf",
        &req.encode_to_vec(),
    )
    .unwrap();
    assert_eq!(status, 200);
}

fn span(trace: u8, id: u8, parent: u8, kind: i32, attrs: Vec<(&str, &str)>) -> Span {
    let attrs = attrs.into_iter().map(|(k, v)| kv(k, v)).collect();
    otlp_span(trace, id, parent, kind, attrs)
}

/// `service` serves `route`, and in it runs `sql` on the shop database.
fn db_trace(trace: u8, service: &str, route: &str, sql: &str) -> ExportTraceServiceRequest {
    export_request([(
        service,
        vec![
            span(
                trace,
                1,
                0,
                2,
                vec![("http.request.method", "POST"), ("http.route", route)],
            ),
            span(
                trace,
                2,
                1,
                3,
                vec![
                    ("db.system.name", "postgresql"),
                    ("server.address", "10.0.0.5"),
                    ("server.port", "5432"),
                    ("db.namespace", "shop"),
                    ("db.query.text", sql),
                ],
            ),
        ],
    )])
}

/// `from` calls `to` over HTTP: a chain of two services.
fn call_trace(trace: u8, from: &str, to: &str) -> ExportTraceServiceRequest {
    fn http(route: &str) -> Vec<(&str, &str)> {
        vec![("http.request.method", "GET"), ("http.route", route)]
    }
    let mut call = http("/check");
    call.push(("peer.service", to));
    export_request([
        (
            from,
            vec![
                span(trace, 1, 0, 2, http("/start")),
                span(trace, 2, 1, 3, call),
            ],
        ),
        (to, vec![span(trace, 3, 2, 2, http("/check"))]),
    ])
}

/// The page open in Chromium, driven by `map.mjs`'s commands.
struct Page {
    child: std::process::Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
    stdin: std::process::ChildStdin,
    /// What the page said when it loaded.
    loaded: serde_json::Value,
}

impl Page {
    fn open(node: &Path, dir: &Path, url: &str, token: &str) -> Self {
        let mut child = Command::new(node)
            .arg(dir.join("map.mjs"))
            .args([url, token, &artifacts().display().to_string()])
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let stdin = child.stdin.take().unwrap();
        let loaded = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        Self {
            child,
            lines,
            stdin,
            loaded,
        }
    }

    fn ask(&mut self, command: &str) -> serde_json::Value {
        writeln!(self.stdin, "{command}").unwrap();
        let answer: serde_json::Value =
            serde_json::from_str(&self.lines.next().unwrap().unwrap()).unwrap();
        assert_ne!(answer["event"], "error", "{answer}");
        answer
    }

    /// What went wrong on the page, and the browser closed.
    fn quit(mut self) -> serde_json::Value {
        let problems = self.ask("quit")["problems"].clone();
        drop(self.stdin);
        assert!(self.child.wait().unwrap().success());
        problems
    }
}

fn pairs(v: &serde_json::Value) -> BTreeSet<(String, String)> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_str().unwrap().into(), p[1].as_str().unwrap().into()))
        .collect()
}

fn strings(v: &serde_json::Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

fn config(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("collector.toml");
    std::fs::write(&path, format!("[api]\ntoken = \"{TOKEN}\"\n")).unwrap();
    path
}

#[test]
fn the_map_in_chromium() {
    let name = "the_map_in_chromium";
    let (node, dir) = match browser() {
        Ok(b) => b,
        Err(reason) => return skip(name, &reason),
    };
    let data = data_dir("web");
    let cfg = config(&data);
    let c = Collector::start_with(&data, &["--config", cfg.to_str().unwrap()]);
    // The page and the API ask for the token; /metrics and /healthz do not.
    for path in ["/", "/assets/app.js", "/api/graph"] {
        let (status, _) = request(c.http, "GET", path, "text/plain", b"").unwrap();
        assert_eq!(status, 401, "{path} without the token");
    }
    let (status, _) = request_with(
        c.http,
        "GET",
        "/api/graph",
        "text/plain",
        b"",
        &format!("Authorization: Bearer {TOKEN}\r\n"),
    )
    .unwrap();
    assert_eq!(status, 200);
    let (status, metrics) = request(c.http, "GET", "/metrics", "", b"").unwrap();
    assert_eq!(status, 200);
    assert!(
        String::from_utf8(metrics).unwrap().contains(
            "tangle_intake_refused_total{receiver=\"pages\",reason=\"unauthenticated\"} 3"
        ),
        "the three refusals counted"
    );

    post(&c, &checkout_trace(1));
    post(
        &c,
        &db_trace(
            2,
            "orders",
            "/orders/{id}",
            "SELECT * FROM orders WHERE id = 1",
        ),
    );
    post(
        &c,
        &db_trace(
            3,
            "payments",
            "/pay",
            "UPDATE orders SET paid = true WHERE id = 1",
        ),
    );
    let authed = |path: &str| {
        let (status, body) = request_with(
            c.http,
            "GET",
            path,
            "text/plain",
            b"",
            &format!("Authorization: Bearer {TOKEN}\r\n"),
        )
        .unwrap();
        assert_eq!(status, 200, "{path}");
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()
    };
    wait_for("the model", || {
        authed("/api/graph")["edges"].as_array().unwrap().len() == 4
            && authed("/api/findings")["findings"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["kind"] == "shared_database")
    });
    let graph = authed("/api/graph");
    let db = graph["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["kind"] == "database")
        .expect("the shop database is a node of its own")["name"]
        .as_str()
        .unwrap()
        .to_owned();

    let findings = authed("/api/findings");
    let databases = authed("/api/databases");
    let url = format!("http://127.0.0.1:{}/", c.http);
    let mut page = Page::open(&node, &dir, &url, TOKEN);
    let before = page.loaded["map"].clone();
    let first_render_ms = page.loaded["first_render_ms"].clone();
    assert_eq!(page.loaded["status"], 200);
    page.ask("shot map");
    page.ask("zoom");
    let selected = page.ask("select new_sync_chain")["map"].clone();
    page.ask("shot map-selected");
    // A new chain while the page is open: it comes with a later poll.
    post(&c, &call_trace(4, "checkout-v2", "fraud"));
    let n = before["nodes"].as_array().unwrap().len();
    let after = page.ask(&format!("grown {n}"))["map"].clone();
    page.ask("shot map-updated");
    let problems = page.quit();
    assert_eq!(problems, serde_json::json!([]));
    let svc = |n: &str| (n.to_owned(), "service".to_owned());
    // Exactly these nodes and edges, each of its kind: nothing else.
    let want_nodes: BTreeSet<_> = [
        svc("gateway"),
        svc("orders"),
        svc("pricing"),
        svc("payments"),
        (db.clone(), "database".into()),
    ]
    .into();
    assert_eq!(pairs(&before["nodes"]), want_nodes);
    let edge = |a: &str, b: &str, kind: &str| (format!("{a}\u{2192}{b}"), kind.to_owned());
    let want_edges: BTreeSet<_> = [
        edge("gateway", "orders", "sync"),
        edge("orders", "pricing", "sync"),
        edge("orders", &db, "data"),
        edge("payments", &db, "data"),
    ]
    .into();
    assert_eq!(pairs(&before["edges"]), want_edges);
    assert_eq!(before["symptoms"]["shared_database"], "red");
    assert_eq!(before["symptoms"]["cycle"], "green");
    // The new-chain symptom selected: exactly the new chains lit.
    let chains: Vec<Vec<String>> = findings["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "new_sync_chain")
        .map(|f| {
            f["chain"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| h["service"].as_str().unwrap().to_owned())
                .collect()
        })
        .collect();
    let lit = &selected["highlighted"];
    assert_eq!(
        strings(&lit["nodes"]),
        chains.iter().flatten().cloned().collect()
    );
    assert_eq!(
        strings(&lit["edges"]),
        chains
            .iter()
            .flat_map(|c| c.windows(2).map(|w| format!("{}\u{2192}{}", w[0], w[1])))
            .collect()
    );
    assert_eq!(strings(&selected["selected"]).len(), 1, "{selected}");
    // Data edges into a database another service owns are marked.
    let cross: BTreeSet<String> = databases["databases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| !d["owner"].is_null())
        .flat_map(|d| {
            let owner = d["owner"]["service"].as_str().unwrap().to_owned();
            let name = d["database"].as_str().unwrap().to_owned();
            d["accessors"]
                .as_object()
                .unwrap()
                .keys()
                .filter(move |s| **s != owner)
                .map(move |s| format!("{s}\u{2192}{name}"))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(!cross.is_empty());
    assert_eq!(strings(&before["cross"]), cross);
    // The update brought the new chain and kept the zoom and the selection.
    let after_nodes = pairs(&after["nodes"]);
    assert!(after_nodes.contains(&svc("checkout-v2")) && after_nodes.contains(&svc("fraud")));
    assert_eq!(after_nodes.len(), want_nodes.len() + 2);
    assert!(pairs(&after["edges"]).contains(&edge("checkout-v2", "fraud", "sync")));
    assert_eq!(after["transform"], selected["transform"]);
    assert_ne!(selected["transform"], before["transform"], "zoomed");
    assert_eq!(after["selected"], selected["selected"]);
    // Still the new chains lit: now with the one that just appeared.
    let mut lit_now = strings(&lit["nodes"]);
    lit_now.extend(["checkout-v2".to_owned(), "fraud".to_owned()]);
    assert_eq!(strings(&after["highlighted"]["nodes"]), lit_now);
    report(
        name,
        &format!("first render {first_render_ms} ms; screenshots in target/artifacts/web"),
    );
    // The report as one file: it opens offline and shows the same map.
    let out = Command::new(env!("CARGO_BIN_EXE_tangle-collector"))
        .args(["report", "--format", "html", "--url"])
        .arg(format!("http://127.0.0.1:{}", c.http))
        .env("TANGLE_API_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = artifacts().join("report.html");
    std::fs::write(&file, &out.stdout).unwrap();
    let html = String::from_utf8(out.stdout).unwrap();
    assert!(!html.contains("src=\"assets/") && !html.contains("href=\"assets/"));
    let mut report_page = Page::open(&node, &dir, &format!("file://{}", file.display()), "");
    let shown = report_page.loaded["map"].clone();
    report_page.ask("shot report");
    assert_eq!(report_page.quit(), serde_json::json!([]));
    assert_eq!(pairs(&shown["nodes"]), after_nodes);
    assert_eq!(pairs(&shown["edges"]), pairs(&after["edges"]));
    // Without the token, no report.
    let denied = Command::new(env!("CARGO_BIN_EXE_tangle-collector"))
        .args(["report", "--url"])
        .arg(format!("http://127.0.0.1:{}", c.http))
        .env_remove("TANGLE_API_TOKEN")
        .output()
        .unwrap();
    assert!(!denied.status.success());
    assert!(String::from_utf8_lossy(&denied.stderr).contains("401"));
    // The page's files are all the collector's own.
    let (_, html) = request_with(
        c.http,
        "GET",
        "/",
        "",
        b"",
        &format!("Authorization: Bearer {TOKEN}\r\n"),
    )
    .unwrap();
    let html = String::from_utf8(html).unwrap();
    assert!(!html.contains("http://") && !html.contains("https://") && !html.contains("//cdn"));
    c.stop();
}

/// 300 services, 2,000 edges: the page stays usable.
#[test]
fn a_large_map_stays_responsive() {
    let name = "a_large_map_stays_responsive";
    let (node, dir) = match browser() {
        Ok(b) => b,
        Err(reason) => return skip(name, &reason),
    };
    let data = data_dir("web-large");
    let cfg = config(&data);
    let c = Collector::start_with(&data, &["--config", cfg.to_str().unwrap()]);
    // Service i calls the next ones round a ring: 300 services, 2,000 edges,
    // one trace per caller (a root span and its calls, each answered).
    let services: Vec<String> = (0..300).map(|i| format!("svc-{i:03}")).collect();
    let mut edges = 0;
    for (i, from) in services.iter().enumerate() {
        let calls = if i < 200 { 7 } else { 6 };
        let trace = (i as u64 + 1).to_be_bytes();
        let mut trace_id = vec![0u8; 8];
        trace_id.extend_from_slice(&trace);
        let sid = |n: u64| ((i as u64) << 16 | n).to_be_bytes().to_vec();
        let http = |route: &str| vec![kv("http.request.method", "GET"), kv("http.route", route)];
        let mut by_service: Vec<(String, Vec<Span>)> = vec![(
            from.clone(),
            vec![Span {
                trace_id: trace_id.clone(),
                span_id: sid(1),
                name: "op".into(),
                kind: 2,
                start_time_unix_nano: 1,
                end_time_unix_nano: 2,
                attributes: http("/start"),
                ..Span::default()
            }],
        )];
        for k in 1..=calls {
            let to = &services[(i + k) % services.len()];
            let mut call = http("/work");
            call.push(kv("peer.service", to));
            by_service[0].1.push(Span {
                trace_id: trace_id.clone(),
                span_id: sid(1 + 2 * k as u64),
                parent_span_id: sid(1),
                name: "op".into(),
                kind: 3,
                start_time_unix_nano: 1,
                end_time_unix_nano: 2,
                attributes: call,
                ..Span::default()
            });
            by_service.push((
                to.clone(),
                vec![Span {
                    trace_id: trace_id.clone(),
                    span_id: sid(2 + 2 * k as u64),
                    parent_span_id: sid(1 + 2 * k as u64),
                    name: "op".into(),
                    kind: 2,
                    start_time_unix_nano: 1,
                    end_time_unix_nano: 2,
                    attributes: http("/work"),
                    ..Span::default()
                }],
            ));
            edges += 1;
        }
        post(&c, &export_request(by_service));
    }
    assert_eq!(edges, 2000);
    wait_for("the large model", || {
        let (status, body) = request_with(
            c.http,
            "GET",
            "/api/graph",
            "",
            b"",
            &format!("Authorization: Bearer {TOKEN}\r\n"),
        )
        .unwrap();
        status == 200
            && serde_json::from_slice::<serde_json::Value>(&body).unwrap()["edges"]
                .as_array()
                .unwrap()
                .len()
                == 2000
    });
    let url = format!("http://127.0.0.1:{}/", c.http);
    let mut page = Page::open(&node, &dir, &url, TOKEN);
    let map = page.loaded["map"].clone();
    assert_eq!(map["nodes"].as_array().unwrap().len(), 300);
    assert_eq!(map["edges"].as_array().unwrap().len(), 2000);
    let first_render_ms = page.loaded["first_render_ms"].clone();
    let timed = page.ask("time");
    page.ask("shot map-large");
    assert_eq!(page.quit(), serde_json::json!([]));
    report(
        name,
        &format!(
            "300 services, 2,000 edges: first render {} ms (load, fetch, layout, draw), \
             a redraw {:.0} ms, a wheel zoom drawn in {} ms",
            first_render_ms,
            timed["redraw_ms"].as_f64().unwrap_or(f64::NAN),
            timed["zoom_ms"]
        ),
    );
    c.stop();
}
