//! The collector's core on one core: spans per second through assembly,
//! chain analysis and the model (baseline writes included), and the memory
//! one million spans in flight take. Run: `cargo bench -p tangle-collector`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // a panic here is a failed test

use std::time::Instant;

use tangle_collector::{
    assembly::Assembler,
    baseline::Baseline,
    chains::analyze,
    model::{Model, Thresholds},
    span::{Peer, Span, SpanKind},
};

/// One request: gateway -> orders -> (inventory, pricing -> tax), a DB call:
/// 10 spans, with ids from `t`.
fn trace(t: u64) -> Vec<Span> {
    let tid = {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&t.to_be_bytes());
        id[8] = 1;
        id
    };
    let sid = |n: u64| (t * 16 + n + 1).to_be_bytes();
    let span =
        |n: u64, parent: Option<u64>, service: &str, kind: SpanKind, op: &str, peer: Peer| Span {
            trace_id: tid,
            span_id: sid(n),
            parent: parent.map(sid),
            service: service.into(),
            kind,
            operation: op.into(),
            start_ns: 1_000 + n,
            end_ns: 2_000_000 + n,
            fault: false,
            data_node: false,
            housekeeping: false,
            link_inferred: false,
            link_lost: false,
            peer,
            tables: Vec::new(),
            writes: false,
            protocol: None,
            join: None,
        };
    let svc = |name: &str| Peer::Service { name: name.into() };
    vec![
        span(
            0,
            None,
            "gateway",
            SpanKind::Server,
            "POST /checkout",
            Peer::Unknown,
        ),
        span(
            1,
            Some(0),
            "gateway",
            SpanKind::Client,
            "POST /orders",
            svc("orders"),
        ),
        span(
            2,
            Some(1),
            "orders",
            SpanKind::Server,
            "POST /orders",
            Peer::Unknown,
        ),
        span(
            3,
            Some(2),
            "orders",
            SpanKind::Client,
            "GET /stock/{id}",
            svc("inventory"),
        ),
        span(
            4,
            Some(3),
            "inventory",
            SpanKind::Server,
            "GET /stock/{id}",
            Peer::Unknown,
        ),
        span(
            5,
            Some(2),
            "orders",
            SpanKind::Client,
            "GET /prices/{id}",
            svc("pricing"),
        ),
        span(
            6,
            Some(5),
            "pricing",
            SpanKind::Server,
            "GET /prices/{id}",
            Peer::Unknown,
        ),
        span(
            7,
            Some(6),
            "pricing",
            SpanKind::Client,
            "GET /tax",
            svc("tax"),
        ),
        span(
            8,
            Some(7),
            "tax",
            SpanKind::Server,
            "GET /tax",
            Peer::Unknown,
        ),
        span(
            9,
            Some(2),
            "orders",
            SpanKind::Client,
            "INSERT orders_db.orders",
            Peer::Database {
                system: "postgresql".into(),
                server: "db:5432".into(),
                namespace: Some("orders_db".into()),
            },
        ),
    ]
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse::<u64>().ok())
        .unwrap_or(0)
        * 4096
}

fn main() {
    // `cargo test` runs benches once with --bench absent: keep that quick.
    let quick = !std::env::args().any(|a| a == "--bench");
    let traces: u64 = if quick { 1_000 } else { 200_000 };
    let dir = std::env::temp_dir().join(format!("tangle-bench-{}", std::process::id()));
    let mut model = Model::new(
        Baseline::open(&dir).unwrap(),
        Thresholds::default(),
        Default::default(),
    );
    let mut asm = Assembler::new(1, usize::MAX);
    let start = Instant::now();
    let mut spans = 0u64;
    for t in 0..traces {
        for s in trace(t) {
            spans += 1;
            asm.add(s, t);
        }
        for done in asm.flush(t + 2) {
            let a = analyze(&done).unwrap();
            let served: Vec<(String, bool)> = done
                .iter()
                .filter(|s| s.is_entry())
                .map(|s| (s.service.clone(), s.fault))
                .collect();
            model.ingest(&done[0].trace_id, &a, &served, t);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "ingest: {spans} spans in {secs:.2} s: {:.0} spans/s, {:.0} traces/s on one core",
        spans as f64 / secs,
        traces as f64 / secs
    );

    // Memory: a million spans held (a window that never closes).
    let in_flight: u64 = if quick { 10_000 } else { 1_000_000 };
    let before = rss_bytes();
    let mut held = Assembler::new(u64::MAX, usize::MAX);
    let mut n = 0;
    'fill: for t in 0.. {
        for s in trace(1_000_000 + t) {
            held.add(s, 0);
            n += 1;
            if n == in_flight {
                break 'fill;
            }
        }
    }
    let used = rss_bytes().saturating_sub(before);
    println!(
        "memory: {n} spans in flight take {:.0} MiB ({:.0} bytes per span; {:.0} MiB per million)",
        used as f64 / 1048576.0,
        used as f64 / n as f64,
        used as f64 / n as f64 * 1e6 / 1048576.0
    );
    assert_eq!(held.stats.spans_in_flight, n);
    let _ = std::fs::remove_dir_all(dir);
}
