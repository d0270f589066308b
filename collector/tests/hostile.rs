//! Hostile clients of `tangle-collector`, the open door of a cluster: a
//! 5,000-deep, a 50,000-wide and an orphan-laden trace; a 4 MiB message
//! without a token and one of empty spans with it; 500 connections that
//! hold their headers open. In each case the collector lives, its counters
//! say what it refused or cut, its memory stays under a stated bound, and
//! an ordinary trace sent meanwhile is reported correctly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // a panic here is a failed test

mod support;

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{ExportTraceServiceRequest, trace_service_client::TraceServiceClient},
    trace::v1::Span,
};
use prost::Message as _;
use support::process::*;

/// The collector's memory stays under this, whatever it is sent.
const COLLECTOR_RSS_BOUND_KIB: u64 = 512 * 1024;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// One sample on a Prometheus text page.
fn sample(page: &str, name: &str) -> u64 {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

fn metrics(c: &Collector) -> String {
    let (status, body) = request(c.http, "GET", "/metrics", "text/plain", b"").unwrap();
    assert_eq!(status, 200);
    String::from_utf8(body).unwrap()
}

/// A span of trace `trace` (16 bytes from `t`), id `id`, under `parent`.
fn span(t: u64, id: u64, parent: Option<u64>, kind: i32, name: &str) -> Span {
    let mut trace_id = vec![0xee; 8];
    trace_id.extend(t.to_be_bytes());
    Span {
        trace_id,
        span_id: id.to_be_bytes().to_vec(),
        parent_span_id: parent.map(|p| p.to_be_bytes().to_vec()).unwrap_or_default(),
        name: name.into(),
        kind,
        start_time_unix_nano: 1_000_000,
        end_time_unix_nano: 2_000_000,
        attributes: vec![kv("http.request.method", "GET"), kv("http.route", name)],
        ..Span::default()
    }
}

/// Sends `spans` (service, span) over OTLP/gRPC in requests of `per` spans.
fn send(c: &Collector, spans: Vec<(String, Span)>, per: usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut client = TraceServiceClient::connect(format!("http://127.0.0.1:{}", c.otlp_grpc))
            .await
            .unwrap();
        for chunk in spans.chunks(per) {
            let mut by_service: std::collections::BTreeMap<&str, Vec<Span>> = Default::default();
            for (svc, s) in chunk {
                by_service.entry(svc).or_default().push(s.clone());
            }
            client.export(export_request(by_service)).await.unwrap();
        }
    });
}

/// `s0 -> s1 -> ... -> s(n-1)`: server and client spans, 2n - 1 of them.
fn deep(t: u64, n: u64) -> Vec<(String, Span)> {
    let mut out = Vec::new();
    for i in 0..n {
        let server = 2 * i + 1;
        let parent = (i > 0).then(|| 2 * i);
        out.push((
            format!("s{i}"),
            span(t, server, parent, 2, &format!("GET /s{i}")),
        ));
        if i + 1 < n {
            let mut call = span(t, 2 * i + 2, Some(server), 3, &format!("GET /s{}", i + 1));
            call.attributes
                .push(kv("peer.service", &format!("s{}", i + 1)));
            out.push((format!("s{i}"), call));
        }
    }
    out
}

/// One root calling `n` services, each answering: 2n + 1 spans.
fn wide(t: u64, n: u64) -> Vec<(String, Span)> {
    let mut out = vec![("root".to_owned(), span(t, 1, None, 2, "GET /fan"))];
    for i in 0..n {
        let svc = format!("leaf{}", i % 50);
        let mut call = span(t, 2 + 2 * i, Some(1), 3, "GET /leaf");
        call.attributes.push(kv("peer.service", &svc));
        out.push(("root".to_owned(), call));
        out.push((svc, span(t, 3 + 2 * i, Some(2 + 2 * i), 2, "GET /leaf")));
    }
    out
}

/// `n` calls to `orphans`, and `n` of its server spans whose parents never
/// came: each is re-attached to a call.
fn orphans(t: u64, n: u64) -> Vec<(String, Span)> {
    let mut out = vec![("caller".to_owned(), span(t, 1, None, 2, "GET /o"))];
    for i in 0..n {
        let mut call = span(t, 2 + i, Some(1), 3, "GET /orphan");
        call.attributes.push(kv("peer.service", "orphans"));
        out.push(("caller".to_owned(), call));
        out.push((
            "orphans".to_owned(),
            span(t, 1_000_000 + i, Some(9_000_000 + i), 2, "GET /orphan"),
        ));
    }
    out
}

/// A 5,000-deep, a 50,000-wide and a 5,000-orphan trace: cut at their
/// limits (counted), analysed in time linear in their spans; the ordinary
/// trace sent after them is reported with its true depth.
#[test]
fn deep_wide_and_orphan_traces_cost_bounded_time_and_memory() {
    let dir = data_dir("hostile-traces");
    let c = Collector::start(&dir);
    let pid = c.child.id();
    send(&c, deep(1, 5_000), 2_000);
    send(&c, wide(2, 50_000), 5_000);
    send(&c, orphans(3, 5_000), 5_000);
    // An ordinary trace after them: gateway -> orders -> pricing.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        TraceServiceClient::connect(format!("http://127.0.0.1:{}", c.otlp_grpc))
            .await
            .unwrap()
            .export(checkout_trace(9))
            .await
            .unwrap();
    });
    wait_for("the ordinary trace", || {
        chains(c.http)
            .iter()
            .any(|ch| ch["entry"]["service"] == "gateway" && ch["depth"] == 2 && ch["traces"] == 1)
    });
    let page = metrics(&c);
    let rss = rss_kib(pid);
    assert!(rss < COLLECTOR_RSS_BOUND_KIB, "collector RSS {rss} KiB");
    assert!(
        sample(&page, "tangle_spans_over_trace_limit_total") > 0,
        "the wide trace was cut at the trace limit: {page}"
    );
    assert!(
        sample(&page, "tangle_model_overflow_total{kind=\"chain_depth\"}") > 0,
        "the deep trace was cut at the depth limit"
    );
    let entries = get_json(c.http, "/api/chains")["entries"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let depth_of = |svc: &str| {
        entries
            .iter()
            .find(|e| e["entry"]["service"] == svc)
            .map(|e| e["max_depth"].as_u64().unwrap_or(0))
    };
    assert_eq!(depth_of("s0"), Some(64), "followed to the depth limit");
    assert_eq!(
        depth_of("caller"),
        Some(1),
        "orphans re-attached to their calls"
    );
    c.stop();
    let _ = std::fs::remove_dir_all(dir);
    report(
        "collector hostile",
        &format!(
            "5,000-deep, 50,000-wide (100,001 spans) and 5,000-orphan traces: cut at the limits, \
         the ordinary trace after them reported; collector RSS {} MiB",
            rss / 1024
        ),
    );
}

/// POSTs `body` to `/v1/traces` as curl does a large body: the headers
/// with `Expect: 100-continue`, the body only once the server asks for it.
/// Returns the final status, and whether the body was sent.
fn post_expecting(port: u16, body: &[u8], headers: &str) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let head = format!(
        "POST /v1/traces HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Content-Type: application/x-protobuf\r\nContent-Length: {}\r\n\
         Expect: 100-continue\r\n{headers}\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    let status = |s: &mut TcpStream| -> u16 {
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        while !got.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
            got.push(byte[0]);
        }
        std::str::from_utf8(got.get(9..12).unwrap_or_default())
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    };
    let first = status(&mut s);
    if first != 100 {
        return first;
    }
    if s.write_all(body).is_err() {
        return 0;
    }
    status(&mut s)
}

/// `bytes` of empty spans (2 bytes each on the wire, hundreds decoded).
fn empty_spans(bytes: usize) -> Vec<u8> {
    let mut scope = Vec::with_capacity(bytes);
    while scope.len() < bytes {
        scope.extend([0x12, 0x00]);
    }
    let mut rs = vec![0x12];
    prost::encoding::encode_varint(scope.len() as u64, &mut rs);
    rs.extend(scope);
    let mut body = vec![0x0a];
    prost::encoding::encode_varint(rs.len() as u64, &mut body);
    body.extend(rs);
    body
}

/// A 4 MiB message without the token is refused from its headers, before
/// its body is read; with the token, 3.9 MiB of empty spans (some 500 MiB
/// decoded) is refused as too large before it is decoded; 5 MiB is refused
/// by its size. Memory stays flat; the refusals are counted; an ordinary
/// export goes through.
#[test]
fn big_messages_are_refused_before_they_are_decoded() {
    let dir = data_dir("hostile-big");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("c.toml");
    std::fs::write(&config, "[auth]\ntoken = \"big-Token\"\n").unwrap();
    let c = Collector::start_with(&dir, &["--config", config.to_str().unwrap()]);
    let pid = c.child.id();
    let before = rss_kib(pid);
    let body = empty_spans(4 * 1024 * 1024 - 64);
    let token = "Authorization: Bearer big-Token\r\n";
    let post = |body: &[u8], headers: &str| post_expecting(c.otlp_http, body, headers);
    assert_eq!(post(&body, ""), 401, "no token");
    assert_eq!(post(&body, token), 413, "too large once decoded");
    assert_eq!(post(&empty_spans(5 << 20), token), 413, "too large as sent");
    let gzip = format!("{token}Content-Encoding: gzip\r\n");
    assert_eq!(post(&body, &gzip), 415, "compressed");
    // After a refusal an HTTP/1 connection is not used again.
    let mut s = TcpStream::connect(("127.0.0.1", c.otlp_http)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
        .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    let answer = answer.to_ascii_lowercase();
    assert!(
        answer.starts_with("http/1.1 401") && answer.contains("connection: close"),
        "{answer}"
    );
    // The same over gRPC.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let codes = rt.block_on(async {
        let grpc = format!("http://127.0.0.1:{}", c.otlp_grpc);
        let mut client = TraceServiceClient::connect(grpc.clone()).await.unwrap();
        // 1 MiB of empty spans: some 250 MiB once decoded.
        let req = ExportTraceServiceRequest::decode(empty_spans(1 << 20).as_slice()).unwrap();
        let without = client.export(req.clone()).await.unwrap_err().code();
        // The collector closes the connection of a client it refused for
        // its token: the next requests come on a new one.
        let mut client = TraceServiceClient::connect(grpc).await.unwrap();
        let mut with = tonic::Request::new(req);
        with.metadata_mut()
            .insert("authorization", "Bearer big-Token".parse().unwrap());
        let too_large = client.export(with).await.unwrap_err();
        let mut ok = tonic::Request::new(checkout_trace(4));
        ok.metadata_mut()
            .insert("authorization", "Bearer big-Token".parse().unwrap());
        client.export(ok).await.unwrap();
        (without, too_large)
    });
    assert_eq!(codes.0, tonic::Code::Unauthenticated);
    assert_eq!(codes.1.code(), tonic::Code::ResourceExhausted);
    assert!(
        codes.1.message().contains("too large"),
        "{}",
        codes.1.message()
    );
    let after = rss_kib(pid);
    assert!(
        after < before + 64 * 1024,
        "RSS went from {before} to {after} KiB"
    );
    let page = metrics(&c);
    for (receiver, reason, at_least) in [
        ("otlp_http", "unauthenticated", 1),
        ("otlp_http", "too_large", 2),
        ("otlp_http", "unsupported", 1),
        ("otlp_grpc", "unauthenticated", 1),
        ("otlp_grpc", "too_large", 1),
    ] {
        let n = sample(
            &page,
            &format!("tangle_intake_refused_total{{receiver=\"{receiver}\",reason=\"{reason}\"}}"),
        );
        assert!(n >= at_least, "{receiver} {reason}: {n}\n{page}");
    }
    wait_for("the ordinary export", || {
        chains(c.http)
            .iter()
            .any(|ch| ch["entry"]["service"] == "gateway")
    });
    c.stop();
    let _ = std::fs::remove_dir_all(dir);
    report(
        "collector hostile",
        &format!(
            "4 MiB without a token, 3.9 MiB of empty spans and 5 MiB with it: refused (401/413, \
         UNAUTHENTICATED/RESOURCE_EXHAUSTED); RSS {} -> {} MiB",
            before / 1024,
            after / 1024
        ),
    );
}

/// 500 connections that send part of their headers and then nothing (250
/// to each receiver), and more than one address may have: the extra ones
/// are closed at once, the slow ones after the header deadline (5 s here),
/// all counted; an ordinary export goes through meanwhile and after.
#[test]
fn connections_holding_headers_open_are_closed_and_counted() {
    let dir = data_dir("hostile-slow");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("c.toml");
    std::fs::write(
        &config,
        "[intake]\nheader_timeout_ms = 5000\nmax_connections = 300\n",
    )
    .unwrap();
    let c = Collector::start_with(&dir, &["--config", config.to_str().unwrap()]);
    let pid = c.child.id();
    let hold = |port: u16, bytes: &[u8], n: usize| -> Vec<TcpStream> {
        (0..n)
            .map(|_| {
                let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                s.write_all(bytes).unwrap();
                s
            })
            .collect()
    };
    let mut held = hold(
        c.otlp_http,
        b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Ty",
        250,
    );
    held.extend(hold(c.otlp_grpc, b"PRI * HTTP/2.0\r\n", 250));
    // Meanwhile, an ordinary export over HTTP.
    let body = checkout_trace(5).encode_to_vec();
    let (status, _) = request(
        c.otlp_http,
        "POST",
        "/v1/traces",
        "application/x-protobuf",
        &body,
    )
    .unwrap();
    assert_eq!(status, 200);
    // Past the limit: closed at once.
    let extra = hold(c.otlp_http, b"POST", 100);
    std::thread::sleep(Duration::from_millis(300));
    let refused = extra
        .iter()
        .filter(|s| {
            let mut s = s.try_clone().unwrap();
            s.set_nonblocking(true).unwrap();
            match s.read(&mut [0u8; 16]) {
                Ok(0) => true,
                Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
                Ok(_) => false,
            }
        })
        .count();
    assert!(
        refused >= 50,
        "{refused} of the extra connections were closed"
    );
    // The slow ones are closed after the deadline.
    for s in &mut held {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 256];
        // The server may answer (408, or an HTTP/2 GOAWAY) before closing.
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
    let page = metrics(&c);
    let timeouts: u64 = ["otlp_http", "otlp_grpc"]
        .iter()
        .map(|r| {
            sample(
                &page,
                &format!(
                    "tangle_intake_connections_total{{receiver=\"{r}\",outcome=\"header_timeout\"}}"
                ),
            )
        })
        .sum();
    assert!(timeouts >= 500, "{timeouts} header timeouts\n{page}");
    // All from one address: its limit (256) comes before the listener's.
    let over = |outcome: &str| {
        sample(
            &page,
            &format!(
                "tangle_intake_connections_total{{receiver=\"otlp_http\",outcome=\"{outcome}\"}}"
            ),
        )
    };
    assert!(
        over("over_address_limit") >= 50,
        "{} over the address's limit",
        over("over_address_limit")
    );
    assert_eq!(
        over("over_limit"),
        0,
        "the listener's limit was not reached"
    );
    let rss = rss_kib(pid);
    assert!(rss < COLLECTOR_RSS_BOUND_KIB, "collector RSS {rss} KiB");
    // And after.
    let (status, _) = request(
        c.otlp_http,
        "POST",
        "/v1/traces",
        "application/x-protobuf",
        &checkout_trace(6).encode_to_vec(),
    )
    .unwrap();
    assert_eq!(status, 200);
    wait_for("both ordinary traces", || {
        chains(c.http)
            .iter()
            .any(|ch| ch["entry"]["service"] == "gateway" && ch["traces"] == 2)
    });
    c.stop();
    let _ = std::fs::remove_dir_all(dir);
    report(
        "collector hostile",
        &format!(
            "500 connections holding headers open, 100 past the limit: {timeouts} closed at the \
         header deadline, {} at once; ordinary exports went through; RSS {} MiB",
            over("over_address_limit"),
            rss / 1024
        ),
    );
}

/// A second collector on the same data folder says so and exits.
#[test]
fn a_second_collector_on_the_same_data_folder_exits() {
    let dir = data_dir("hostile-lock");
    let c = Collector::start(&dir);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tangle-collector"))
        .arg("--data-dir")
        .arg(&dir)
        .args(["--otlp-grpc", &format!("127.0.0.1:{}", free_port())])
        .args(["--otlp-http", &format!("127.0.0.1:{}", free_port())])
        .args(["--http", &format!("127.0.0.1:{}", free_port())])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another collector"), "{err}");
    c.stop();
    let _ = std::fs::remove_dir_all(dir);
}
