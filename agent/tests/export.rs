//! `tangle-agent run`: live exchanges exported as OTLP spans to a real gRPC
//! receiver, both ends of each call carrying the same join key, nothing
//! secret in them; and the collector away at first, then back.

mod support;

use std::{process::Command, time::Duration};

use opentelemetry_proto::tonic::trace::v1::Span;
use support::{otlp::*, *};

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
        received.spans.lock().unwrap().len() >= 4
    });
    let out = agent.wait_with_output().unwrap();
    assert!(out.status.success());
    let stats = final_stats(&out);
    let export = &stats["parsers"]["export"];
    assert!(
        export["failed_attempts"].as_u64().unwrap() > 0,
        "the first attempts failed: {export}"
    );
    assert_eq!(export["dropped"], 0, "the queue held them: {export}");

    let spans = received.spans.lock().unwrap().clone();
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
    let spans: Vec<(String, Span)> = received.spans.lock().unwrap().clone();
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
