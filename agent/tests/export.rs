//! `tangle-agent run`: live exchanges exported as OTLP spans to a real gRPC
//! receiver, both ends of each call carrying the same join key, nothing
//! secret in them; and the collector away at first, then back.

mod support;

use std::{
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value,
    trace::v1::Span,
};
use support::*;

#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<(String, Span)>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = self.0.lock().unwrap();
        for rs in &request.get_ref().resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                .and_then(|kv| kv.value.as_ref())
                .and_then(|v| {
                    if let Some(Value::StringValue(s)) = &v.value {
                        Some(s.clone())
                    } else {
                        None
                    }
                })
                .unwrap_or_default();
            for ss in &rs.scope_spans {
                for s in &ss.spans {
                    got.push((service.clone(), s.clone()));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Starts a receiver on `port` in a thread of its own; returns what it collects.
fn receiver(port: u16) -> Receiver {
    let r = Receiver::default();
    let served = r.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await
                .unwrap();
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(served))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
    });
    r
}

/// Starts `tangle-agent run --json` exporting to `otlp_port`, with `args`;
/// returns once its programs are attached, with its ready file.
fn run_agent(otlp_port: u16, args: &[&str]) -> (std::process::Child, std::path::PathBuf) {
    let ready = std::env::temp_dir().join(format!("tangle-ready-run-{otlp_port}"));
    let _ = std::fs::remove_file(&ready);
    let agent = Command::new(env!("CARGO_BIN_EXE_tangle-agent"))
        .args([
            "run",
            "--json",
            "--collector",
            &format!("http://127.0.0.1:{otlp_port}"),
            "--ready-file",
        ])
        .arg(&ready)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the agent to attach", Duration::from_secs(20), || {
        ready.exists()
    });
    (agent, ready)
}

fn attr(s: &Span, key: &str) -> Option<String> {
    s.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| match &v.value {
            Some(Value::StringValue(s)) => Some(s.clone()),
            Some(Value::IntValue(i)) => Some(i.to_string()),
            _ => None,
        })
}

#[test]
fn exchanges_exported_with_join_keys_after_the_collector_comes_back() {
    let name = "exchanges_exported_with_join_keys_after_the_collector_comes_back";
    if require(name, &["curl", "python3"]).is_none() {
        return;
    }
    let (http_port, otlp_port) = (free_port(), free_port());
    let _server = Proc::spawn_ready(
        Command::new("python3").args([
            "-u",
            "-m",
            "http.server",
            &http_port.to_string(),
            "--bind",
            "127.0.0.1",
        ]),
        "Serving HTTP",
    );
    // The collector is not there yet.
    let (agent, ready) = run_agent(
        otlp_port,
        &["--duration", "10s", "--port", &http_port.to_string()],
    );
    for path in ["/", "/missing/7"] {
        let ok = Command::new("curl")
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-H",
                "Authorization: Bearer export-secret",
            ])
            .arg(format!("http://127.0.0.1:{http_port}{path}"))
            .status()
            .unwrap();
        assert!(ok.success());
    }
    std::thread::sleep(Duration::from_secs(2));
    // Now the collector comes up: the queued spans go out.
    let received = receiver(otlp_port);
    wait_for("four spans", Duration::from_secs(20), || {
        received.0.lock().unwrap().len() >= 4
    });
    let out = agent.wait_with_output().unwrap();
    assert!(out.status.success());
    let stats: serde_json::Value = String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap();
    let export = &stats["parsers"]["export"];
    assert!(
        export["failed_attempts"].as_u64().unwrap() > 0,
        "the first attempts failed: {export}"
    );
    assert_eq!(export["dropped"], 0, "the queue held them: {export}");

    let spans = received.0.lock().unwrap().clone();
    let text = format!("{spans:?}");
    assert!(!text.contains("export-secret"), "a secret was exported");
    let clients: Vec<&(String, Span)> = spans.iter().filter(|(_, s)| s.kind == 3).collect();
    let servers: Vec<&(String, Span)> = spans.iter().filter(|(_, s)| s.kind == 2).collect();
    assert_eq!((clients.len(), servers.len()), (2, 2), "{spans:#?}");
    for (service, c) in &clients {
        assert_eq!(service, "curl");
        let key = (attr(c, "tangle.join.client"), attr(c, "tangle.join.seq"));
        assert!(key.0.is_some() && key.1 == Some("0".into()));
        let (server_service, s) = servers
            .iter()
            .find(|(_, s)| (attr(s, "tangle.join.client"), attr(s, "tangle.join.seq")) == key)
            .expect("the server end has the same join key");
        assert!(server_service.starts_with("python"));
        assert_eq!(c.name, s.name);
        assert_eq!(attr(c, "server.port"), Some(http_port.to_string()));
        assert_eq!(attr(s, "server.port"), Some(http_port.to_string()));
    }
    let names: std::collections::BTreeSet<&str> =
        spans.iter().map(|(_, s)| s.name.as_str()).collect();
    assert_eq!(names, ["GET /", "GET /missing/{id}"].into_iter().collect());
    let missing = spans
        .iter()
        .find(|(_, s)| s.name == "GET /missing/{id}")
        .unwrap();
    assert_eq!(
        attr(&missing.1, "http.response.status_code"),
        Some("404".into())
    );
    let _ = std::fs::remove_file(&ready);
}

/// The thread rule on a thread-per-request service (the demo's shop:
/// gateway -> orders -> inventory, each a Python ThreadingHTTPServer) under
/// 60 concurrent requests: every outbound call is the child of the request
/// its thread was serving, with zero mislinks (a child's item id is its
/// parent's).
#[test]
fn thread_rule_links_calls_to_their_request_under_concurrency() {
    let name = "thread_rule_links_calls_to_their_request_under_concurrency";
    if require(name, &["curl", "python3"]).is_none() {
        return;
    }
    let otlp_port = free_port();
    let received = receiver(otlp_port);
    let shop = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../demo/shop.py");
    let mut services = Vec::new();
    for s in ["inventory", "orders", "gateway"] {
        services.push(Proc::spawn_ready(
            Command::new("python3").arg("-u").arg(&shop).arg(s),
            "listening",
        ));
    }
    let pids: Vec<String> = services.iter().map(|p| p.pid().to_string()).collect();
    let (agent, ready) = run_agent(otlp_port, &["--duration", "12s"]);
    // 60 concurrent requests, each for its own item.
    let mut curls: Vec<_> = (1..=60)
        .map(|i| {
            Command::new("curl")
                .args([
                    "-sS",
                    "-o",
                    "/dev/null",
                    &format!("http://127.0.0.1:18080/checkout/{i}"),
                ])
                .spawn()
                .unwrap()
        })
        .collect();
    for c in &mut curls {
        assert!(c.wait().unwrap().success());
    }
    let out = agent.wait_with_output().unwrap();
    assert!(out.status.success());
    drop(services);
    let spans: Vec<(String, Span)> = received.0.lock().unwrap().clone();
    let path = |s: &Span| attr(s, "url.path").unwrap_or_default();
    let item = |s: &Span| path(s).rsplit('/').next().unwrap_or_default().to_owned();
    let servers: Vec<&(String, Span)> = spans
        .iter()
        .filter(|(svc, s)| s.kind == 2 && svc == "gateway")
        .collect();
    assert_eq!(
        servers.len(),
        60,
        "every request served by gateway exported (pids {pids:?})"
    );
    let mut linked = 0;
    for (svc, c) in spans
        .iter()
        .filter(|(svc, s)| s.kind == 3 && (svc == "gateway" || svc == "orders"))
    {
        let parent = spans
            .iter()
            .find(|(_, p)| p.span_id == c.parent_span_id && p.kind == 2)
            .unwrap_or_else(|| panic!("{svc}'s call {} has no parent request", path(c)));
        assert_eq!(parent.1.trace_id, c.trace_id, "same trace");
        assert_eq!(&parent.0, svc, "the parent is served by the same service");
        assert_eq!(
            item(&parent.1),
            item(c),
            "mislink: {} under {}",
            path(c),
            path(&parent.1)
        );
        assert_eq!(
            attr(c, "tangle.link.inferred"),
            None,
            "thread-per-request links are exact"
        );
        linked += 1;
    }
    // gateway calls orders and inventory, orders calls inventory: 3 calls per request.
    assert_eq!(linked, 180);
    let _ = std::fs::remove_file(&ready);
}
