//! Parser throughput on one core, in MB/s and exchanges/s:
//! - steady state: 1,000 request/response pairs on one connection (HTTP/1, Redis);
//! - recorded: the busiest connection of each protocol's fixtures, parsed
//!   from its first byte (handshakes included), as the agent sees it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // a panic here is a failed test

use std::path::Path;

use base64::Engine as _;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tangle_protocols::{Chunk, Connection, Side};

type Transfers = Vec<(Side, Vec<u8>)>;

fn conversation(request: &[u8], response: &[u8], n: usize) -> Transfers {
    (0..n)
        .flat_map(|_| {
            [
                (Side::Request, request.to_vec()),
                (Side::Response, response.to_vec()),
            ]
        })
        .collect()
}

fn parse(transfers: &Transfers) -> usize {
    let mut conn = Connection::default();
    let mut out = Vec::new();
    for (i, (side, t)) in transfers.iter().enumerate() {
        conn.feed(Chunk::whole(*side, i as u64, t), &mut out);
    }
    conn.finish(u64::MAX, &mut out);
    out.len()
}

/// The client side of the fixture connection with the most exchanges.
fn busiest(fixture: &str) -> Transfers {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(fixture);
    let text = std::fs::read_to_string(&path).unwrap();
    let mut conns: Vec<(u64, Transfers)> = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if v["type"] != "data" || v["role"] != "client" {
            continue;
        }
        let id = v["conn_id"].as_u64().unwrap();
        let side = if v["direction"] == "egress" {
            Side::Request
        } else {
            Side::Response
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(v["data"].as_str().unwrap())
            .unwrap();
        match conns.iter_mut().find(|(i, _)| *i == id) {
            Some((_, t)) => t.push((side, bytes)),
            None => conns.push((id, vec![(side, bytes)])),
        }
    }
    conns.into_iter().map(|(_, t)| t).max_by_key(parse).unwrap()
}

fn bench(c: &mut Criterion, name: &str, transfers: &Transfers) {
    let exchanges = parse(transfers) as u64;
    assert!(exchanges > 0, "{name}: no exchange");
    let bytes: usize = transfers.iter().map(|(_, b)| b.len()).sum();
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Bytes(bytes as u64));
    group.bench_function("bytes", |b| b.iter(|| parse(transfers)));
    group.throughput(Throughput::Elements(exchanges));
    group.bench_function("exchanges", |b| b.iter(|| parse(transfers)));
    group.finish();
}

fn parsers(c: &mut Criterion) {
    const N: usize = 1000;
    let http = conversation(
        b"GET /orders/123/items HTTP/1.1\r\nHost: orders:8080\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\
          traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nContent-Type: application/json\r\nContent-Length: 27\r\n\r\n\
          {\"id\":123,\"items\":[1,2,3]}\n",
        N,
    );
    bench(c, "steady/http1", &http);
    let redis = conversation(
        b"*3\r\n$3\r\nSET\r\n$16\r\nkey:000000000042\r\n$3\r\nxxx\r\n",
        b"+OK\r\n",
        N,
    );
    bench(c, "steady/redis", &redis);
    for (name, fixture) in [
        ("recorded/http2", "http2/curl-nghttp-nginx.jsonl"),
        ("recorded/grpc", "http2/grpc-python.jsonl"),
        ("recorded/postgres", "postgres/pgbench.jsonl"),
        ("recorded/mysql", "mysql/connector-prepared.jsonl"),
        ("recorded/redis", "redis/redis-benchmark.jsonl"),
    ] {
        bench(c, name, &busiest(fixture));
    }
}

criterion_group!(benches, parsers);
criterion_main!(benches);
