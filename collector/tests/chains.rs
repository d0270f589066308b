//! Chains from span streams with known ground truth: call trees described
//! here, turned into the spans instrumented services (or agents) send.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // a panic here is a failed test

mod support;

use proptest::prelude::*;
use support::*;
use tangle_collector::{
    assembly::Assembler,
    baseline::{Baseline, FirstSeen},
    chains::{analyze, calls_per_edge},
    span::{Span, SpanKind},
};

#[test]
fn linear_chains_of_depth_0_to_10() {
    for n in 1..=11 {
        let a = analyze(&Builder::build(&linear(n))).unwrap();
        assert_eq!(a.depth, n - 1, "{n} services in a row");
        assert_eq!(a.chains.len(), 1);
        assert_eq!(a.closure.len(), n);
        assert_eq!(a.entry.as_ref().unwrap().service, "s1");
        assert_eq!(a.fan_out, usize::from(n > 1));
    }
}

#[test]
fn fan_out_closure_and_chattiness() {
    let root = node(
        "gateway",
        vec![
            Call::Sync(node(
                "orders",
                vec![
                    Call::Sync(node("inventory", vec![])),
                    Call::Sync(node("inventory", vec![])),
                ],
            )),
            Call::Sync(node("pricing", vec![Call::Sync(node("tax", vec![]))])),
            Call::Sync(node("users", vec![])),
            Call::Uninstrumented("legacy-erp".into()),
        ],
    );
    let a = analyze(&Builder::build(&root)).unwrap();
    assert_eq!(a.fan_out, 4);
    assert_eq!(a.depth, 2);
    let closure: Vec<_> = a.closure.iter().map(String::as_str).collect();
    assert_eq!(
        closure,
        [
            "gateway",
            "inventory",
            "legacy-erp",
            "orders",
            "pricing",
            "tax",
            "users"
        ]
    );
    let per_edge = calls_per_edge(&a);
    assert_eq!(
        per_edge[&("orders".to_owned(), "inventory".to_owned())],
        2,
        "N+1 over the network"
    );
    // Chains: orders->inventory twice is one distinct chain.
    assert_eq!(a.chains.len(), 4);
    let sigs: std::collections::BTreeSet<_> =
        a.chains.iter().map(|c| c.signature.clone()).collect();
    assert_eq!(sigs.len(), 4, "distinct chains, distinct signatures");
}

#[test]
fn cycles_are_found() {
    let root = node(
        "a",
        vec![Call::Sync(node("b", vec![Call::Sync(node("a", vec![]))]))],
    );
    let a = analyze(&Builder::build(&root)).unwrap();
    assert_eq!(a.cycles, vec![vec!["a".to_owned(), "b".into(), "a".into()]]);
    assert_eq!(a.depth, 2);
}

#[test]
fn publishing_ends_a_chain() {
    let root = node(
        "orders",
        vec![
            Call::Publish(node("mailer", vec![Call::Sync(node("templates", vec![]))])),
            Call::Sync(node("payments", vec![])),
        ],
    );
    let a = analyze(&Builder::build(&root)).unwrap();
    assert_eq!(a.depth, 1);
    assert!(!a.closure.contains("mailer") && !a.closure.contains("templates"));
    assert!(a.closure.contains("payments"));
    // The publish is an asynchronous edge of the graph, not a sync call.
    let published: Vec<_> = a
        .publishes
        .iter()
        .map(|c| (c.caller.as_str(), c.callee.as_str()))
        .collect();
    assert_eq!(published, [("orders", "mailer")]);
    assert!(a.calls.iter().all(|c| c.callee != "mailer"));
}

#[test]
fn databases_are_accesses_not_hops() {
    let root = node(
        "orders",
        vec![
            Call::Db {
                namespace: "orders_db".into(),
                tables: vec!["orders_db.orders".into()],
                writes: true,
            },
            Call::Sync(node(
                "shipping",
                vec![Call::Db {
                    namespace: "orders_db".into(),
                    tables: vec!["orders_db.addresses".into()],
                    writes: true,
                }],
            )),
        ],
    );
    let a = analyze(&Builder::build(&root)).unwrap();
    assert_eq!(a.depth, 1);
    let users: Vec<_> = a
        .db_accesses
        .iter()
        .map(|d| (d.service.as_str(), d.tables[0].as_str()))
        .collect();
    assert_eq!(
        users,
        [
            ("orders", "orders_db.orders"),
            ("shipping", "orders_db.addresses")
        ]
    );
    let db_edges: Vec<_> = a
        .db_calls
        .iter()
        .map(|c| (c.caller.as_str(), c.callee.as_str()))
        .collect();
    assert_eq!(
        db_edges,
        [
            ("orders", "db:5432/orders_db"),
            ("shipping", "db:5432/orders_db")
        ]
    );
}

#[test]
fn out_of_order_duplicates_and_clock_skew_change_nothing() {
    let root = node(
        "gateway",
        vec![Call::Sync(linear(4)), Call::Sync(node("users", vec![]))],
    );
    let want = analyze(&Builder::build(&root)).unwrap();
    // Another node's clock is 5 s behind.
    let mut b = Builder::new(7);
    b.skew.insert("s2".into(), -5_000_000_000);
    b.serve(None, SpanKind::Server, &root, 1_000_000);
    let mut spans = b.spans;
    spans.reverse();
    let dupes: Vec<Span> = spans.iter().step_by(3).cloned().collect();
    spans.extend(dupes);
    let mut asm = Assembler::new(1_000, 10_000);
    for (i, s) in spans.into_iter().enumerate() {
        assert!(asm.add(s, i as u64).is_empty());
    }
    let traces = asm.flush_all();
    assert_eq!(traces.len(), 1);
    assert!(asm.stats.duplicates > 0);
    let got = analyze(&traces[0]).unwrap();
    assert_eq!(got.depth, want.depth);
    assert_eq!(got.chains, want.chains);
    assert_eq!(got.closure, want.closure);
}

#[test]
fn a_missing_middle_span_is_inferred() {
    let spans = Builder::build(&linear(3));
    let want = analyze(&spans).unwrap();
    // Drop s2's server span: s2's own calls lose their parent's parent.
    let missing = spans
        .iter()
        .find(|s| s.service == "s2" && s.kind == SpanKind::Server)
        .unwrap()
        .span_id;
    let rest: Vec<Span> = spans
        .iter()
        .filter(|s| s.span_id != missing)
        .cloned()
        .collect();
    let got = analyze(&rest).unwrap();
    assert!(got.inferred_links >= 1);
    assert_eq!(got.depth, want.depth, "s1 -> s2 -> s3 still");
    assert_eq!(got.closure, want.closure);
    // The chain says a link of it was inferred; the whole one did not.
    assert_eq!(
        want.chains.iter().map(|c| c.inferred_links).sum::<usize>(),
        0
    );
    assert!(
        got.chains.iter().any(|c| c.inferred_links > 0),
        "{:?}",
        got.chains
    );
}

#[test]
fn assembly_is_bounded() {
    let mut asm = Assembler::new(1_000_000, 50);
    let mut closed = 0;
    for t in 0..20u8 {
        let mut b = Builder::new(t);
        b.serve(None, SpanKind::Server, &linear(3), 0);
        for s in b.spans {
            closed += asm.add(s, u64::from(t)).len();
        }
    }
    assert!(asm.stats.spans_in_flight <= 50);
    assert!(asm.stats.evicted > 0);
    assert_eq!(closed as u64, asm.stats.evicted);
    let rest = asm.flush(u64::MAX);
    assert_eq!(asm.stats.traces, closed as u64 + rest.len() as u64);
}

#[test]
fn baseline_survives_a_restart() {
    let dir = std::env::temp_dir().join(format!("tangle-baseline-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let a = analyze(&Builder::build(&linear(3))).unwrap();
    let entry = |c: &tangle_collector::chains::Chain| FirstSeen {
        signature: c.signature.clone(),
        chain: c
            .hops
            .iter()
            .map(|h| format!("{}:{}", h.service, h.operation))
            .collect::<Vec<_>>()
            .join(" -> "),
        first_seen_ns: 42,
        example_trace: "07".repeat(16),
    };
    {
        let mut b = Baseline::open(&dir).unwrap();
        assert!(b.record(entry(&a.chains[0])), "new the first time");
        assert!(!b.record(entry(&a.chains[0])), "never twice");
    }
    // A torn write at the end of the file is skipped, not fatal.
    use std::io::Write as _;
    std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join(Baseline::FILE))
        .unwrap()
        .write_all(b"{\"signa")
        .unwrap();
    let mut b = Baseline::open(&dir).unwrap();
    assert_eq!(b.skipped_lines(), 1);
    assert!(b.contains(&a.chains[0].signature));
    assert_eq!(b.get(&a.chains[0].signature).unwrap().first_seen_ns, 42);
    assert!(
        !b.record(entry(&a.chains[0])),
        "seen before the restart: not new"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A random call tree, with its longest synchronous path computed here.
fn tree(depth: u32) -> impl Strategy<Value = Node> {
    let leaf = (0u8..20).prop_map(|i| node(&format!("svc{i}"), vec![]));
    leaf.prop_recursive(depth, 64, 3, |inner| {
        (
            (0u8..20),
            proptest::collection::vec((inner, any::<bool>()), 0..3),
        )
            .prop_map(|(i, kids)| {
                node(
                    &format!("svc{i}"),
                    kids.into_iter()
                        .map(|(n, sync)| {
                            if sync {
                                Call::Sync(n)
                            } else {
                                Call::Publish(n)
                            }
                        })
                        .collect(),
                )
            })
    })
}

fn longest_sync(n: &Node) -> usize {
    n.calls
        .iter()
        .filter_map(|c| {
            if let Call::Sync(k) = c {
                Some(1 + longest_sync(k))
            } else {
                None
            }
        })
        .max()
        .unwrap_or(0)
}

/// 256 cases from a fixed seed, so CI is repeatable; `PROPTEST_RNG_SEED`
/// and `PROPTEST_CASES` explore further.
fn config() -> ProptestConfig {
    let base = ProptestConfig::default();
    let rng_seed = if std::env::var_os("PROPTEST_RNG_SEED").is_some() {
        base.rng_seed
    } else {
        proptest::test_runner::RngSeed::Fixed(0x6368_6169)
    };
    let cases = if std::env::var_os("PROPTEST_CASES").is_some() {
        base.cases
    } else {
        256
    };
    ProptestConfig {
        cases,
        rng_seed,
        ..base
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn depth_is_the_longest_sync_path(root in tree(6)) {
        let a = analyze(&Builder::build(&root)).unwrap();
        prop_assert_eq!(a.depth, longest_sync(&root));
        prop_assert!(a.chains.iter().all(|c| c.depth() <= a.depth));
    }
}

/// Two agents without propagated context: the client's and the server's
/// spans of one call are in two traces, with equal join keys. In either
/// order of arrival, the server's trace ends up under the client span.
#[test]
fn join_keys_stitch_the_two_ends_of_a_call() {
    use tangle_wire::JoinKey;
    for server_first in [false, true] {
        // gateway (trace 1) calls orders; orders (trace 2) calls pricing.
        let mut a = Builder::new(1);
        a.serve(
            None,
            SpanKind::Server,
            &node("gateway", vec![Call::Uninstrumented("orders".into())]),
            1_000,
        );
        let mut b = Builder::new(2);
        b.serve(
            None,
            SpanKind::Server,
            &node("orders", vec![Call::Sync(node("pricing", vec![]))]),
            1_050,
        );
        let key = JoinKey {
            client: "10.0.0.5:43210".parse().unwrap(),
            seq: 0,
        };
        a.spans
            .iter_mut()
            .find(|s| s.kind == SpanKind::Client)
            .unwrap()
            .join = Some(key);
        let orders = b
            .spans
            .iter_mut()
            .find(|s| s.kind == SpanKind::Server && s.service == "orders")
            .unwrap();
        orders.join = Some(key);
        let (first, second) = if server_first {
            (b.spans, a.spans)
        } else {
            (a.spans, b.spans)
        };
        let mut asm = Assembler::new(1_000, 10_000);
        for s in first.into_iter().chain(second) {
            asm.add(s, 0);
        }
        let traces = asm.flush_all();
        assert_eq!(
            traces.len(),
            1,
            "one trace after the join (server first: {server_first})"
        );
        assert_eq!(asm.stats.joined, 1);
        assert_eq!(asm.stats.unjoined, 0);
        let got = analyze(&traces[0]).unwrap();
        assert_eq!(got.entry.as_ref().unwrap().service, "gateway");
        assert_eq!(got.depth, 2, "gateway -> orders -> pricing");
        assert_eq!(got.closure.len(), 3);
    }
    // A key whose other end never comes is counted.
    let mut a = Builder::new(3);
    a.serve(
        None,
        SpanKind::Server,
        &node("gateway", vec![Call::Uninstrumented("orders".into())]),
        1_000,
    );
    a.spans
        .iter_mut()
        .find(|s| s.kind == SpanKind::Client)
        .unwrap()
        .join = Some(JoinKey {
        client: "10.0.0.5:5555".parse().unwrap(),
        seq: 0,
    });
    let mut asm = Assembler::new(1_000, 10_000);
    for s in a.spans {
        asm.add(s, 0);
    }
    asm.flush_all();
    assert_eq!((asm.stats.joined, asm.stats.unjoined), (0, 1));
}
