//! `tangle-agent run`: live exchanges exported as OTLP spans to a real gRPC
//! receiver, both ends of each call carrying the same join key, nothing
//! secret in them; and the collector away at first, then back.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // a panic here is a failed test

mod support;

use std::{process::Command, time::Duration};

use opentelemetry_proto::tonic::trace::v1::Span;
use support::{otlp::*, *};

#[test]
fn exchanges_exported_with_join_keys_after_the_collector_comes_back() {
    let name = "exchanges_exported_with_join_keys_after_the_collector_comes_back";
    let _serial = serial();
    if require(name, &["curl", "python3"]).is_none() {
        return;
    }
    let (http_port, otlp_port) = (free_port(), free_port());
    let _server = http_server(http_port);
    // The collector is not there yet.
    let (agent, ready) = run_agent(
        otlp_port,
        &["--duration", "10s", "--port", &http_port.to_string()],
    );
    for path in ["/", "/missing/7"] {
        curl(
            &format!("http://127.0.0.1:{http_port}{path}"),
            &["Authorization: Bearer export-secret"],
        );
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
        // The request's TCP sequence number, read by the kernel at both ends.
        assert!(key.0.is_some() && key.1.as_deref().is_some_and(|n| n.parse::<u32>().is_ok()));
        let (server_service, s) = servers
            .iter()
            .find(|(_, s)| (attr(s, "tangle.join.client"), attr(s, "tangle.join.seq")) == key)
            .expect("the server end has the same join key");
        assert_eq!(server_service, "http.server", "named by its program");
        assert_eq!(c.name, s.name);
        assert_eq!(attr(c, "server.port"), Some(http_port.to_string()));
        assert_eq!(attr(s, "server.port"), Some(http_port.to_string()));
    }
    let seqs: std::collections::BTreeSet<_> = clients
        .iter()
        .map(|(_, c)| attr(c, "tangle.join.seq"))
        .collect();
    assert_eq!(seqs.len(), 2, "two connections, two random numbers");
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

/// The thread rule on thread-per-request services (gateway -> orders ->
/// inventory, each a Python ThreadingHTTPServer: support/threaded_shop.py) under
/// 60 concurrent requests: every outbound call is the child of the request
/// its thread was serving, with zero mislinks (a child's item id is its
/// parent's).
#[test]
fn thread_rule_links_calls_to_their_request_under_concurrency() {
    let name = "thread_rule_links_calls_to_their_request_under_concurrency";
    let _serial = serial();
    if require(name, &["curl", "python3"]).is_none() {
        return;
    }
    let otlp_port = free_port();
    let received = receiver(otlp_port);
    let shop =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/threaded_shop.py");
    let mut services = Vec::new();
    for s in ["inventory", "orders", "gateway"] {
        services.push(Proc::spawn_ready(
            Command::new("python3")
                .arg("-u")
                .arg(&shop)
                .arg(s)
                .env("OTEL_SERVICE_NAME", s),
            "listening",
        ));
    }
    let pids: Vec<String> = services.iter().map(|p| p.pid().to_string()).collect();
    // Stopped once the last request is answered, not at a fixed time: a
    // slow machine still gets every request in.
    let (agent, ready) = run_agent(otlp_port, &["--duration", "120s"]);
    // 60 concurrent requests, each for its own item.
    let mut curls: Vec<_> = (1..=60)
        .map(|i| {
            Command::new("curl")
                .args([
                    "-sS",
                    "-o",
                    "/dev/null",
                    &format!("http://127.0.0.1:18080/checkout/{}", item_word(i)),
                ])
                .spawn()
                .unwrap()
        })
        .collect();
    for c in &mut curls {
        assert!(c.wait().unwrap().success());
    }
    // The agent exports what it holds when it stops.
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: signals our own child, not yet reaped.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
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

/// The collector away while far more spans come than the queue holds: the
/// agent keeps capturing, its memory stays flat, the drops are counted on
/// its metrics endpoint; once the collector is back, exports resume.
#[test]
fn collector_away_under_load_memory_bounded_drops_counted_then_resumes() {
    let name = "collector_away_under_load_memory_bounded_drops_counted_then_resumes";
    let _serial = serial();
    if require(
        name,
        &["redis-server", "redis-benchmark", "curl", "promtool"],
    )
    .is_none()
    {
        return;
    }
    let (redis_port, otlp_port, metrics_port) = (free_port(), free_port(), free_port());
    let _redis = redis_server(redis_port);
    let (mut agent, ready) = run_agent(
        otlp_port,
        &[
            "--duration",
            "60s",
            "--port",
            &redis_port.to_string(),
            "--queue-spans",
            "2000",
            "--metrics-listen",
            &format!("127.0.0.1:{metrics_port}"),
        ],
    );
    let pid = agent.id();
    // Each round: 20,000 inline and 20,000 RESP PINGs on 4 connections =
    // 80,000 spans (both ends).
    let round = || {
        let ok = Command::new("redis-benchmark")
            .args([
                "-p",
                &redis_port.to_string(),
                "-n",
                "20000",
                "-c",
                "4",
                "-t",
                "ping",
                "-q",
            ])
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(ok.success());
        std::thread::sleep(Duration::from_millis(1500));
    };
    round();
    let rss_1 = rss_kib(pid);
    for _ in 0..3 {
        round();
    }
    let rss_4 = rss_kib(pid);
    // Ready: the capture runs, whatever the collector does.
    let health = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
        ])
        .arg(format!("http://127.0.0.1:{metrics_port}/healthz"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&health.stdout),
        "200",
        "/healthz once capturing"
    );
    let page = scrape(metrics_port);
    let dropped = sample(&page, "tangle_agent_spans_dropped_total").unwrap();
    let exchanges = sample(&page, "tangle_agent_exchanges_total").unwrap();
    report(
        name,
        &format!(
            "collector away: {exchanges} exchanges, {dropped} spans dropped, RSS {rss_1} KiB after \
         one round, {rss_4} KiB after four"
        ),
    );
    assert!(
        exchanges >= 4 * 2 * 40_000,
        "every PING parsed on both ends"
    );
    let queued = sample(&page, "tangle_agent_spans_queued_total").unwrap();
    let held = sample(&page, "tangle_agent_spans_held").unwrap();
    assert_eq!(
        queued + dropped + held,
        exchanges,
        "every span is queued, held or counted as dropped"
    );
    // The queue, and the one batch (up to 2,048) the exporter holds while it retries.
    assert!(queued <= 2000 + 2048, "queued {queued}");
    assert_eq!(sample(&page, "tangle_agent_spans_exported_total"), Some(0));
    assert!(sample(&page, "tangle_agent_export_failures_total").unwrap() > 0);
    assert_eq!(sample(&page, "tangle_agent_events_lost_total"), Some(0));
    assert!(
        rss_4 < rss_1 + 16 * 1024,
        "memory stays within the queue's bound: {rss_1} KiB -> {rss_4} KiB for three times the spans"
    );
    // The page is valid Prometheus text.
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut check.stdin.take().unwrap(), page.as_bytes()).unwrap();
    let checked = check.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    // The collector comes back: what the queue held goes out, then new spans.
    let received = receiver(otlp_port);
    let drained = || {
        let page = scrape(metrics_port);
        let n = |name| sample(&page, name).unwrap_or(0);
        n("tangle_agent_spans_held") == 0
            && n("tangle_agent_spans_exported_total") == n("tangle_agent_spans_queued_total")
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(45);
    while !drained() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        drained(),
        "the queue drains once the collector is back ({} received):\n{}",
        received.len(),
        scrape(metrics_port)
    );
    assert!(received.len() >= 2000, "what the queue held went out");
    let ok = Command::new("redis-cli")
        .args(["-p", &redis_port.to_string(), "ECHO", "after"])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success());
    let echoed = || received.spans().iter().any(|(_, s)| s.name == "redis ECHO");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !echoed() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let spans = received.spans();
    let last: Vec<&str> = spans
        .iter()
        .rev()
        .take(6)
        .map(|(_, s)| s.name.as_str())
        .collect();
    assert!(
        echoed(),
        "a span made after the return; the last: {last:?}\n{}",
        scrape(metrics_port)
    );
    assert!(sample(&scrape(metrics_port), "tangle_agent_spans_exported_total").unwrap() >= 2000);
    // SAFETY: signals our own child, not yet reaped.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    assert!(agent.wait().unwrap().success());
    let _ = std::fs::remove_file(&ready);
}

/// A throwaway CA and certificates (the collector tests' script).
fn make_certs(dir: &std::path::Path) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../collector/tests/fixtures/make-certs.sh");
    let ok = Command::new("sh").arg(script).arg(dir).status().unwrap();
    assert!(ok.success(), "making certificates");
}

/// Export over mutual TLS with a token: accepted with the right token and
/// certificate; a wrong token is refused (and counted on both sides), a
/// missing client certificate never gets through the handshake.
#[test]
fn export_over_mutual_tls_with_a_token() {
    let name = "export_over_mutual_tls_with_a_token";
    let _serial = serial();
    if require(name, &["curl", "python3", "openssl"]).is_none() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("tangle-tls-{}", std::process::id()));
    make_certs(&dir);
    let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
    let otlp_port = free_port();
    let received = receiver_with(
        otlp_port,
        Some("agent-Token-1"),
        Some(ServerTls {
            cert: read("server.pem"),
            key: read("server.key"),
            client_ca: read("ca.pem"),
        }),
    );
    std::fs::write(dir.join("token"), "agent-Token-1\n").unwrap();
    let config = |file: &str, auth: &str, client_cert: bool| {
        let d = dir.display();
        let mut text = format!("[export]\n{auth}\n[export.tls]\nca = \"{d}/ca.pem\"\n");
        if client_cert {
            text += &format!("cert = \"{d}/client.pem\"\nkey = \"{d}/client.key\"\n");
        }
        let path = dir.join(file);
        std::fs::write(&path, text).unwrap();
        path
    };
    let good = config(
        "good.toml",
        &format!("token_file = \"{}/token\"", dir.display()),
        true,
    );
    let wrong_token = config("wrong.toml", "token = \"not-the-token\"", true);
    let no_cert = config("nocert.toml", "token = \"agent-Token-1\"", false);

    let http_port = free_port();
    let _server = http_server(http_port);
    let endpoint = format!("https://localhost:{otlp_port}");
    let agents: Vec<_> = [&good, &wrong_token, &no_cert]
        .iter()
        .map(|cfg| {
            run_agent_to(
                &endpoint,
                &[
                    "--duration",
                    "8s",
                    "--port",
                    &http_port.to_string(),
                    "--config",
                    cfg.to_str().unwrap(),
                ],
            )
        })
        .collect();
    curl(&format!("http://127.0.0.1:{http_port}/tls"), &[]);
    let mut stats = Vec::new();
    for (agent, ready) in agents {
        let out = agent.wait_with_output().unwrap();
        assert!(out.status.success());
        stats.push(final_stats(&out)["parsers"]["export"].clone());
        let _ = std::fs::remove_file(ready);
    }
    let _ = std::fs::remove_dir_all(&dir);
    // Each agent saw the call's two ends; only the good one's arrived.
    assert_eq!(stats[0]["exported"], 2, "{stats:?}");
    assert_eq!(stats[0]["failed_attempts"], 0, "{stats:?}");
    for s in &stats[1..] {
        assert_eq!(s["exported"], 0, "{stats:?}");
        assert!(s["failed_attempts"].as_u64().unwrap() > 0, "{stats:?}");
    }
    assert_eq!(received.len(), 2);
    assert!(
        *received.refused.lock().unwrap() > 0,
        "the wrong token was refused"
    );
}

/// Tangle does not trace itself, and keeps no privilege it does not need:
/// the export to the collector, scrapes of the agent's metrics and a
/// process named as Tangle's collector leave no span and are counted; once
/// attached, every thread of the agent has only the capabilities naming
/// processes takes, and `no_new_privs`.
#[test]
fn tangle_traces_no_traffic_of_its_own_and_drops_its_privileges() {
    let name = "tangle_traces_no_traffic_of_its_own_and_drops_its_privileges";
    let _serial = serial();
    if require(name, &["curl", "python3", "ip"]).is_none() {
        return;
    }
    let (http_port, otlp_port, metrics_port) = (free_port(), free_port(), free_port());
    let _server = http_server(http_port);
    let received = receiver(otlp_port);
    let listen = format!("127.0.0.1:{metrics_port}");
    let (agent, ready) = run_agent(
        otlp_port,
        &["--duration", "8s", "--metrics-listen", &listen],
    );
    let pid = agent.id();
    // Every thread: CAP_DAC_READ_SEARCH (2) and CAP_SYS_PTRACE (19) at most.
    let kept: u64 = (1 << 2) | (1 << 19);
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
                .unwrap()
        };
        for set in ["CapEff:", "CapPrm:", "CapBnd:", "CapInh:", "CapAmb:"] {
            let caps = u64::from_str_radix(&field(set), 16).unwrap();
            assert_eq!(caps & !kept, 0, "{set} {caps:#x}");
        }
        assert_eq!(field("NoNewPrivs:"), "1");
    }
    // A program whose executable is named as Tangle's collector is not
    // traced; one that only calls itself so (its comm) is.
    let dir = std::env::temp_dir().join(format!("tangle-own-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The interpreter itself (`python3` may be a launcher script).
    let real = Command::new("python3")
        .args([
            "-c",
            "import os, sys; print(os.path.realpath(sys.executable))",
        ])
        .output()
        .unwrap();
    let python = std::path::PathBuf::from(String::from_utf8(real.stdout).unwrap().trim());
    let named = dir.join("tangle-collector");
    std::fs::copy(&python, &named).unwrap();
    // Each stays a second after its call, for the agent to read /proc.
    let call = |program: &std::path::Path, path: &str, rename: bool| {
        let out = Command::new(program)
            .args([
                "-c",
                &format!(
                    "import ctypes, time, urllib.request\n\
                     if {rename}: ctypes.CDLL(None).prctl(15, b'tangle-collector', 0, 0, 0)\n\
                     try: urllib.request.urlopen('http://127.0.0.1:{http_port}{path}').read()\n\
                     except urllib.error.HTTPError: pass\n\
                     time.sleep(1)",
                    rename = if rename { "True" } else { "False" }
                ),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    call(&named, "/from/tangle", false);
    call(&python, "/from/renamed", true);
    curl(&format!("http://127.0.0.1:{http_port}/from/curl"), &[]);
    // Scrapes of the agent's own page.
    assert!(scrape(metrics_port).contains("tangle_agent_events_total"));
    // Another network namespace has its own 127.0.0.1: a service there on
    // the agent's metrics port is not Tangle's.
    let ns = format!("tangle-own-{}", std::process::id());
    let in_ns = |args: &[&str]| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &ns]).args(args);
        c
    };
    assert!(
        Command::new("ip")
            .args(["netns", "add", &ns])
            .status()
            .unwrap()
            .success()
    );
    let _ns = NetnsGuard(ns.clone());
    assert!(
        in_ns(&["ip", "link", "set", "lo", "up"])
            .status()
            .unwrap()
            .success()
    );
    let port = metrics_port.to_string();
    let _pod = Proc::spawn_ready(
        &mut in_ns(&[
            "python3",
            "-u",
            "-m",
            "http.server",
            &port,
            "--bind",
            "127.0.0.1",
        ]),
        "Serving HTTP",
    );
    let url = format!("http://127.0.0.1:{port}/in/netns");
    assert!(
        in_ns(&["curl", "-s", "-o", "/dev/null", &url])
            .status()
            .unwrap()
            .success()
    );
    wait_for("the ordinary calls", Duration::from_secs(20), || {
        let spans = received.spans();
        ["/from/curl", "/from/renamed", "/in/netns"]
            .iter()
            .all(|p| {
                spans
                    .iter()
                    .any(|(_, s)| attr(s, "url.path").as_deref() == Some(*p) && s.kind == 3)
            })
    });
    let out = agent.wait_with_output().unwrap();
    assert!(out.status.success());
    let _ = std::fs::remove_file(ready);
    let _ = std::fs::remove_dir_all(&dir);
    let spans = received.spans();
    let ports = [otlp_port.to_string(), metrics_port.to_string()];
    for (svc, s) in &spans {
        let port = attr(s, "server.port").unwrap_or_default();
        let elsewhere = attr(s, "url.path").as_deref() == Some("/in/netns");
        assert!(
            elsewhere || !ports.contains(&port),
            "{svc} traced Tangle's own port {port}"
        );
        let client_of_tangle =
            s.kind == 3 && attr(s, "url.path").as_deref() == Some("/from/tangle");
        assert!(!client_of_tangle, "Tangle's process was traced as {svc}");
    }
    assert!(
        spans
            .iter()
            .any(|(_, s)| s.kind == 2 && attr(s, "url.path").as_deref() == Some("/from/tangle")),
        "the server side of the call it made is traced: only Tangle's side is not"
    );
    for kind in [2, 3] {
        assert!(
            spans.iter().any(|(_, s)| s.kind == kind
                && attr(s, "url.path").as_deref() == Some("/in/netns")),
            "both ends of the call in the other namespace are traced (kind {kind})"
        );
    }
    let ignored = own_connections_ignored(&out);
    assert!(ignored >= 3, "own connections counted: {ignored}");
    eprintln!("REPORT own traffic: {ignored} connections of Tangle's own left out");
}

/// The own connections the agent counted, from its last stats line.
fn own_connections_ignored(out: &std::process::Output) -> u64 {
    let stats = final_stats(out);
    stats["kernel"]["ignored"].as_u64().unwrap_or(0)
        + stats["agent"]["ignored"].as_u64().unwrap_or(0)
}

/// A network namespace, deleted when dropped.
struct NetnsGuard(String);

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}
