//! `tangle-collector` as run: OTLP over HTTP (JSON and protobuf) and gRPC
//! in, findings and Prometheus metrics out, the baseline across a restart,
//! and clear errors for bad input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // a panic here is a failed test

mod support;

use support::process::*;

use std::{
    io::Write as _,
    path::Path,
    process::{Command, Stdio},
};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message as _;

#[test]
fn otlp_in_findings_and_metrics_out_and_the_baseline_survives() {
    let dir = data_dir("e2e");
    let c = Collector::start(&dir);
    // OTLP/HTTP protobuf.
    let (status, _) = request(
        c.otlp_http,
        "POST",
        "/v1/traces",
        "application/x-protobuf",
        &checkout_trace(1).encode_to_vec(),
    )
    .unwrap();
    assert_eq!(status, 200);
    // OTLP/HTTP JSON.
    let json = serde_json::to_vec(&checkout_trace(2)).unwrap();
    let (status, _) =
        request(c.otlp_http, "POST", "/v1/traces", "application/json", &json).unwrap();
    assert_eq!(status, 200);
    // OTLP/gRPC.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut client = TraceServiceClient::connect(format!("http://127.0.0.1:{}", c.otlp_grpc))
            .await
            .unwrap();
        client.export(checkout_trace(3)).await.unwrap();
    });
    // Closes the channel's connection.
    drop(rt);
    wait_for("three traces", || {
        chains(c.http).first().is_some_and(|ch| ch["traces"] == 3)
    });
    let ch = chains(c.http);
    assert_eq!(ch.len(), 1, "one chain, seen three times: {ch:?}");
    assert_eq!(ch[0]["depth"], 2);
    assert_eq!(ch[0]["new"], true);
    let hops: Vec<&str> = ch[0]["hops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["service"].as_str().unwrap())
        .collect();
    assert_eq!(hops, ["gateway", "orders", "pricing"]);
    let findings = get_json(c.http, "/api/findings");
    assert!(
        findings["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["kind"] == "new_sync_chain")
    );
    let graph = get_json(c.http, "/api/graph");
    let edges = graph["edges"].as_array().unwrap();
    assert_eq!(edges.len(), 2);
    assert!(edges.iter().all(|e| e["kind"] == "sync"
        && e["protocols"] == serde_json::json!(["http"])
        && e["calls"] == 3));
    let kinds: Vec<(&str, &str)> = graph["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["name"].as_str().unwrap(), n["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("gateway", "service"),
            ("orders", "service"),
            ("pricing", "service")
        ]
    );
    // The pages read back as the API's types, as `report` and clients read them.
    let typed: tangle_collector::api::GraphPage = serde_json::from_value(graph).unwrap();
    assert_eq!(typed.edges.len(), 2);
    assert!(
        typed
            .edges
            .iter()
            .all(|e| e.kind == tangle_collector::api::EdgeKind::Sync
                && e.sync
                && e.client_seconds.count == 3)
    );
    let typed: tangle_collector::api::ChainsPage =
        serde_json::from_value(get_json(c.http, "/api/chains")).unwrap();
    assert_eq!(typed.chains.len(), 1);
    assert_eq!(typed.entries[0].closure.len(), 3, "{:?}", typed.entries);
    let typed: tangle_collector::api::DatabasesPage =
        serde_json::from_value(get_json(c.http, "/api/databases")).unwrap();
    assert!(typed.databases.is_empty(), "no database spans: {typed:?}");
    let (_, metrics) = request(c.http, "GET", "/metrics", "text/plain", b"").unwrap();
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.contains("tangle_new_sync_chains_total 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("traces_service_graph_request_total{client=\"gateway\",server=\"orders\",connection_type=\"\"} 3"));
    assert!(metrics.contains(
        "tangle_sync_depth_max{entry_service=\"gateway\",entry_operation=\"POST /checkout\"} 2"
    ));
    match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(mut p) => {
            p.stdin
                .take()
                .unwrap()
                .write_all(metrics.as_bytes())
                .unwrap();
            let out = p.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "promtool: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Err(_) if std::env::var_os("CI").is_some() => {
            panic!("promtool is not installed (cargo xtask setup --test-deps)")
        }
        Err(_) => eprintln!("SKIPPED promtool check: promtool is not installed"),
    }
    let report = Command::new(env!("CARGO_BIN_EXE_tangle-collector"))
        .args([
            "report",
            "--format",
            "markdown",
            "--url",
            &format!("http://127.0.0.1:{}", c.http),
        ])
        .output()
        .unwrap();
    assert!(
        report.status.success(),
        "{}",
        String::from_utf8_lossy(&report.stderr)
    );
    let report = String::from_utf8(report.stdout).unwrap();
    assert!(report.starts_with("# Tangle coupling report"), "{report}");
    assert!(report.contains("## New synchronous chains (1)"), "{report}");
    assert!(
        report.contains("gateway POST /checkout → orders POST /orders → pricing GET /prices/{sku}"),
        "{report}"
    );
    c.stop();

    // After a restart the chain is known: not new again.
    let c = Collector::start(&dir);
    let (status, _) = request(
        c.otlp_http,
        "POST",
        "/v1/traces",
        "application/x-protobuf",
        &checkout_trace(4).encode_to_vec(),
    )
    .unwrap();
    assert_eq!(status, 200);
    wait_for("the trace after the restart", || !chains(c.http).is_empty());
    let ch = chains(c.http);
    assert_eq!(ch[0]["new"], false, "seen before the restart");
    assert_eq!(
        ch[0]["example_trace"],
        "01".repeat(16),
        "its first example, from before the restart"
    );
    let (_, metrics) = request(c.http, "GET", "/metrics", "text/plain", b"").unwrap();
    assert!(
        String::from_utf8(metrics)
            .unwrap()
            .contains("tangle_new_sync_chains_total 0\n")
    );
    c.stop();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bad_input_gets_clear_errors() {
    let dir = data_dir("bad");
    let c = Collector::start(&dir);
    let (status, body) = request(
        c.otlp_http,
        "POST",
        "/v1/traces",
        "application/json",
        b"{not json",
    )
    .unwrap();
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("not an OTLP trace export"));
    let (status, _) = request(
        c.otlp_http,
        "POST",
        "/v1/traces",
        "application/x-protobuf",
        b"\xff\xff\xff",
    )
    .unwrap();
    assert_eq!(status, 400);
    let (status, _) = request(c.http, "GET", "/api/nothing", "text/plain", b"").unwrap();
    assert_eq!(status, 404);
    c.stop();
    // A config with a misspelt field names it.
    let conf = dir.join("bad.toml");
    std::fs::write(&conf, "trace_windw_ms = 100\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tangle-collector"))
        .arg("--config")
        .arg(&conf)
        .arg("check-config")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("trace_windw_ms"));
    // A report with no collector to ask says so.
    let out = Command::new(env!("CARGO_BIN_EXE_tangle-collector"))
        .args(["report", "--url", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("cannot get findings from http://127.0.0.1:1")
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Exports must carry the token (OTLP/HTTP and gRPC), and gRPC is mutual
/// TLS: refusals are counted; a client without a certificate cannot connect.
#[test]
fn token_and_mutual_tls_guard_the_receivers() {
    let has_openssl = Command::new("openssl")
        .arg("version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_openssl {
        // Under CI a missing tool fails the run rather than skipping.
        assert!(std::env::var_os("CI").is_none(), "openssl is not installed");
        let why = "token_and_mutual_tls_guard_the_receivers: openssl is not installed";
        eprintln!("SKIPPED {why}");
        if let Some(log) = std::env::var_os("TANGLE_SKIP_LOG") {
            let _ = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .and_then(|mut f| writeln!(f, "{why}"));
        }
        return;
    }
    let dir = data_dir("tls");
    let certs = dir.join("certs");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/make-certs.sh");
    assert!(
        Command::new("sh")
            .arg(script)
            .arg(&certs)
            .status()
            .unwrap()
            .success()
    );
    let config = dir.join("collector.toml");
    let d = certs.display();
    std::fs::write(
        &config,
        format!(
            "[auth]\ntoken = \"collector-Token\"\n\
             [tls]\ncert = \"{d}/server.pem\"\nkey = \"{d}/server.key\"\nclient_ca = \"{d}/ca.pem\"\n"
        ),
    )
    .unwrap();
    let c = Collector::start_with(&dir, &["--config", config.to_str().unwrap()]);
    let body = dir.join("body.bin");
    std::fs::write(&body, checkout_trace(1).encode_to_vec()).unwrap();
    // OTLP/HTTP is TLS too: curl with the CA, and (mutual TLS) a client certificate.
    let curl = |headers: &[&str], client_cert: bool| {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(certs.join("ca.pem"))
            .args([
                "-H",
                "Content-Type: application/x-protobuf",
                "--data-binary",
            ])
            .arg(format!("@{}", body.display()));
        if client_cert {
            cmd.arg("--cert")
                .arg(certs.join("client.pem"))
                .arg("--key")
                .arg(certs.join("client.key"));
        }
        for h in headers {
            cmd.args(["-H", h]);
        }
        let out = cmd
            .arg(format!("https://localhost:{}/v1/traces", c.otlp_http))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let post = |header: &str| {
        let headers: Vec<&str> = header.split("\r\n").filter(|h| !h.is_empty()).collect();
        curl(&headers, true).parse::<u16>().unwrap_or(0)
    };
    assert_eq!(
        curl(&[], false),
        "000",
        "no client certificate: no handshake"
    );
    assert!(
        request(
            c.otlp_http,
            "POST",
            "/v1/traces",
            "application/x-protobuf",
            b""
        )
        .is_none(),
        "plain HTTP on the TLS port gets no HTTP answer"
    );
    assert_eq!(post(""), 401, "no token");
    assert_eq!(post("Authorization: Bearer wrong\r\n"), 401, "wrong token");
    assert_eq!(post("Authorization: Bearer collector-Token\r\n"), 200);

    let read = |f: &str| std::fs::read(certs.join(f)).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
        let endpoint = |with_cert: bool| {
            let mut tls =
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("ca.pem")));
            if with_cert {
                tls = tls.identity(Identity::from_pem(read("client.pem"), read("client.key")));
            }
            Endpoint::from_shared(format!("https://localhost:{}", c.otlp_grpc))
                .unwrap()
                .tls_config(tls)
                .unwrap()
        };
        // No client certificate: the handshake fails.
        let refused = match endpoint(false).connect().await {
            Err(_) => true,
            Ok(ch) => TraceServiceClient::new(ch)
                .export(checkout_trace(2))
                .await
                .is_err(),
        };
        assert!(refused, "a client without a certificate got through");
        let mut client = TraceServiceClient::new(endpoint(true).connect().await.unwrap());
        let e = client.export(checkout_trace(2)).await.unwrap_err();
        assert_eq!(
            e.code(),
            tonic::Code::Unauthenticated,
            "certificate but no token"
        );
        // The refused client's connection is closed by the collector: the
        // next export goes on a connection of its own (on the old one it
        // could be cancelled as the close lands).
        let mut client = TraceServiceClient::new(endpoint(true).connect().await.unwrap());
        let mut req = tonic::Request::new(checkout_trace(3));
        req.metadata_mut()
            .insert("authorization", "Bearer collector-Token".parse().unwrap());
        client.export(req).await.unwrap();
    });
    drop(rt);
    let (status, metrics) = request(c.http, "GET", "/metrics", "text/plain", b"").unwrap();
    assert_eq!(status, 200);
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.contains("tangle_exports_refused_total 3\n"),
        "two HTTP and one gRPC refusal counted: {metrics}"
    );
    wait_for("two traces", || {
        chains(c.http).first().is_some_and(|ch| ch["traces"] == 2)
    });
    c.stop();
}
