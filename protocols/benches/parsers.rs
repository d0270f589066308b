//! Parser throughput on one core: MB/s and exchanges/s, over streams built
//! from the recorded fixtures' shapes.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tangle_protocols::{Chunk, Connection, Side};

/// A request/response conversation repeated `n` times, as transfers.
fn conversation(request: &[u8], response: &[u8], n: usize) -> Vec<(Side, Vec<u8>)> {
    (0..n).flat_map(|_| [(Side::Request, request.to_vec()), (Side::Response, response.to_vec())]).collect()
}

fn bench(c: &mut Criterion, name: &str, transfers: &[(Side, Vec<u8>)], exchanges: u64) {
    let bytes: usize = transfers.iter().map(|(_, b)| b.len()).sum();
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Bytes(bytes as u64));
    group.bench_function("bytes", |b| {
        b.iter(|| {
            let mut conn = Connection::default();
            let mut out = Vec::with_capacity(exchanges as usize);
            for (i, (side, t)) in transfers.iter().enumerate() {
                conn.feed(Chunk::whole(*side, i as u64, t), &mut out);
            }
            assert_eq!(out.len() as u64, exchanges);
            out
        })
    });
    group.throughput(Throughput::Elements(exchanges));
    group.bench_function("exchanges", |b| {
        b.iter(|| {
            let mut conn = Connection::default();
            let mut out = Vec::with_capacity(exchanges as usize);
            for (i, (side, t)) in transfers.iter().enumerate() {
                conn.feed(Chunk::whole(*side, i as u64, t), &mut out);
            }
            out
        })
    });
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
    bench(c, "http1", &http, N as u64);
    let redis = conversation(
        b"*3\r\n$3\r\nSET\r\n$16\r\nkey:000000000042\r\n$3\r\nxxx\r\n",
        b"+OK\r\n",
        N,
    );
    bench(c, "redis", &redis, N as u64);
}

criterion_group!(benches, parsers);
criterion_main!(benches);
