//! Findings across traces with known ground truth, and OTLP spans mapped by
//! the semantic conventions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // a panic here is a failed test

mod support;

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{AnyValue, KeyValue, any_value::Value},
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans, Span as OtlpSpan, Status, status::StatusCode},
};
use support::*;
use tangle_collector::{
    baseline::Baseline,
    chains::analyze,
    intake::otlp::{MappingStats, map_request},
    model::{Finding, Model, Thresholds},
    span::{Peer, SpanKind},
};

fn data_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("tangle-model-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Ingests one request's call tree as trace number `n`.
fn ingest(model: &mut Model, root: &Node, n: u8) {
    let mut b = Builder::new(n);
    b.serve(None, SpanKind::Server, root, 1_000);
    let a = analyze(&b.spans).unwrap();
    let served: Vec<(String, bool)> = b
        .spans
        .iter()
        .filter(|s| s.is_entry())
        .map(|s| (s.service.clone(), s.fault))
        .collect();
    model.ingest(&[n; 16], &a, &served, 42 + u64::from(n));
}

fn db(ns: &str, table: &str, writes: bool) -> Call {
    Call::Db {
        namespace: ns.into(),
        tables: vec![format!("{ns}.{table}")],
        writes,
    }
}

fn kinds(f: &[Finding]) -> Vec<&'static str> {
    f.iter()
        .map(|f| match f {
            Finding::NewSyncChain { .. } => "new_sync_chain",
            Finding::DeepSyncChain { .. } => "deep_sync_chain",
            Finding::WideClosure { .. } => "wide_closure",
            Finding::Cycle { .. } => "cycle",
            Finding::CascadingFailure { .. } => "cascading_failure",
            Finding::ChattyEdge { .. } => "chatty_edge",
            Finding::SharedDatabase { .. } => "shared_database",
            Finding::CrossServiceAccess { .. } => "cross_service_access",
            Finding::TableWrittenByMany { .. } => "table_written_by_many",
        })
        .collect()
}

#[test]
fn deep_chain_new_once_and_not_after_a_restart() {
    let dir = data_dir("restart");
    let checkout = linear(5); // s1 -> s2 -> s3 -> s4 -> s5: depth 4
    {
        let mut m = Model::new(
            Baseline::open(&dir).unwrap(),
            Thresholds {
                learning_seconds: 0,
                ..Thresholds::default()
            },
            BTreeMap::new(),
        );
        ingest(&mut m, &checkout, 1);
        ingest(&mut m, &checkout, 2);
        assert_eq!(m.new_chains, 1, "reported once, not per trace");
        let f = m.findings();
        assert_eq!(kinds(&f), ["new_sync_chain", "deep_sync_chain"]);
        match &f[1] {
            Finding::DeepSyncChain {
                depth,
                p95_depth,
                longest,
                ..
            } => {
                assert_eq!((*depth, *p95_depth, longest.len()), (4, 4, 5));
            }
            other => panic!("{other:?}"),
        }
    }
    let mut m = Model::new(
        Baseline::open(&dir).unwrap(),
        Thresholds::default(),
        BTreeMap::new(),
    );
    ingest(&mut m, &checkout, 3);
    assert_eq!(m.new_chains, 0, "seen before the restart");
    assert!(!kinds(&m.findings()).contains(&"new_sync_chain"));
    let chain = m.chains.values().next().unwrap();
    assert_eq!(
        chain.first_seen_ns, 43,
        "first seen before the restart, by trace 1"
    );
    assert_eq!(chain.example_trace, "01".repeat(16));
    let _ = std::fs::remove_dir_all(dir);
}

/// The chains of a collector's first minutes are learned, not new: only
/// one that appears after the learning period is.
#[test]
fn chains_are_learned_before_they_are_new() {
    let dir = data_dir("learning");
    let mut m = Model::new(
        Baseline::open(&dir).unwrap(),
        Thresholds {
            learning_seconds: 60,
            ..Thresholds::default()
        },
        BTreeMap::new(),
    );
    let ingest_at = |m: &mut Model, root: &Node, n: u8, now_ns: u64| {
        let mut b = Builder::new(n);
        b.serve(None, SpanKind::Server, root, 1_000);
        let a = analyze(&b.spans).unwrap();
        m.ingest(&[n; 16], &a, &[], now_ns);
    };
    ingest_at(&mut m, &linear(3), 1, 1_000_000_000);
    ingest_at(&mut m, &linear(4), 2, 30_000_000_000);
    assert_eq!(m.new_chains, 0, "seen while learning");
    ingest_at(&mut m, &linear(5), 3, 62_000_000_000);
    assert_eq!(m.new_chains, 1, "seen after it");
    let new: Vec<usize> = m
        .chains
        .values()
        .filter(|c| c.new)
        .map(|c| c.depth)
        .collect();
    assert_eq!(new, [4]);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn shared_database_owner_inferred_or_configured() {
    let dir = data_dir("db");
    let orders = node(
        "orders",
        vec![
            db("orders_db", "orders", true),
            db("orders_db", "orders", true),
        ],
    );
    let shipping = node(
        "shipping",
        vec![
            db("orders_db", "addresses", true),
            db("orders_db", "orders", true),
        ],
    );
    let mut m = Model::new(
        Baseline::open(&dir).unwrap(),
        Thresholds::default(),
        BTreeMap::new(),
    );
    for i in 0..3 {
        ingest(&mut m, &orders, i);
    }
    ingest(&mut m, &shipping, 10);
    let f = m.findings();
    let k = kinds(&f);
    assert!(
        k.contains(&"shared_database")
            && k.contains(&"cross_service_access")
            && k.contains(&"table_written_by_many"),
        "{k:?}"
    );
    let cross = f.iter().find_map(|f| match f {
        Finding::CrossServiceAccess {
            owner,
            accessor,
            tables,
            ..
        } => Some((owner.clone(), accessor.clone(), tables.clone())),
        _ => None,
    });
    let (owner, accessor, tables) = cross.unwrap();
    assert_eq!(owner.service, "orders");
    assert!(
        owner.source.starts_with("inferred: most writes (6 of 8)"),
        "{}",
        owner.source
    );
    assert_eq!(accessor, "shipping");
    assert_eq!(tables["orders_db.addresses"], (0, 1));
    // Configured ownership wins over inference.
    let mut owners = BTreeMap::new();
    owners.insert("orders_db".to_owned(), "shipping".to_owned());
    let mut m2 = Model::new(
        Baseline::open(&data_dir("db2")).unwrap(),
        Thresholds::default(),
        owners,
    );
    ingest(&mut m2, &orders, 1);
    ingest(&mut m2, &shipping, 2);
    let owner = m2.owner(m2.databases.keys().next().unwrap()).unwrap();
    assert_eq!(
        (owner.service.as_str(), owner.source.as_str()),
        ("shipping", "configured")
    );
    // Databases are nodes of Grafana's service graph too.
    let state = tangle_collector::ingest::State::new(
        tangle_collector::assembly::Assembler::new(1, 1),
        m,
        Default::default(),
        64,
    );
    let metrics = tangle_collector::metrics::render(&state);
    assert!(
        metrics.contains("traces_service_graph_request_total{client=\"shipping\",server=\"db:5432/orders_db\",connection_type=\"database\"} 2"),
        "{metrics}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn cascades_chattiness_closure_and_cycles() {
    let dir = data_dir("edges");
    let mut m = Model::new(
        Baseline::open(&dir).unwrap(),
        Thresholds::default(),
        BTreeMap::new(),
    );
    // pricing fails 10 times; checkout fails with it 9 times.
    for i in 0..10u8 {
        let mut pricing = node("pricing", vec![]);
        pricing.error = true;
        let mut root = node("checkout", vec![Call::Sync(pricing)]);
        root.error = i != 0;
        ingest(&mut m, &root, i);
    }
    // orders calls catalog 40 times for one request (N+1 over the network).
    let catalog: Vec<Call> = (0..40)
        .map(|_| Call::Sync(node("catalog", vec![])))
        .collect();
    ingest(&mut m, &node("orders", catalog), 50);
    // gateway needs 7 services up; a -> b -> a is a cycle.
    let wide = node(
        "gateway",
        ["a", "b", "c", "d", "e", "f"]
            .iter()
            .map(|s| Call::Sync(node(s, vec![])))
            .collect(),
    );
    ingest(&mut m, &wide, 60);
    ingest(
        &mut m,
        &node(
            "a",
            vec![Call::Sync(node("b", vec![Call::Sync(node("a", vec![]))]))],
        ),
        70,
    );
    let f = m.findings();
    let cascade = f.iter().find_map(|f| match f {
        Finding::CascadingFailure {
            caller,
            callee,
            ratio,
            propagated,
            ..
        } => Some((caller.clone(), callee.clone(), *ratio, *propagated)),
        _ => None,
    });
    assert_eq!(cascade, Some(("checkout".into(), "pricing".into(), 0.9, 9)));
    let chatty = f.iter().find_map(|f| match f {
        Finding::ChattyEdge {
            caller,
            callee,
            max_calls_per_request,
            ..
        } => Some((caller.clone(), callee.clone(), *max_calls_per_request)),
        _ => None,
    });
    assert_eq!(chatty, Some(("orders".into(), "catalog".into(), 40)));
    let wide = f.iter().find_map(|f| match f {
        Finding::WideClosure {
            entry,
            services,
            availability,
        } => Some((entry.service.clone(), services.len(), *availability)),
        _ => None,
    });
    let (entry, n, availability) = wide.unwrap();
    assert_eq!((entry.as_str(), n), ("gateway", 7));
    // a and b also served failing-free requests: every rate is 1 here.
    assert_eq!(availability, Some(1.0));
    assert!(
        f.iter()
            .any(|f| matches!(f, Finding::Cycle { services } if services == &["a", "b", "a"]))
    );
    // The product of the closure's success rates: checkout 1 of 10, pricing 0 of 10.
    let one = ["checkout".to_owned()].into_iter().collect();
    assert!((m.availability(&one).unwrap() - 0.1).abs() < 1e-12);
    let both = ["checkout".to_owned(), "pricing".to_owned()]
        .into_iter()
        .collect();
    assert_eq!(m.availability(&both), Some(0.0));
    let _ = std::fs::remove_dir_all(dir);
}

fn kv(key: &str, v: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..KeyValue::default()
    }
}

fn s(v: &str) -> Value {
    Value::StringValue(v.into())
}

#[test]
fn otlp_spans_by_semantic_conventions() {
    let span = |id: u8, parent: u8, kind: i32, attrs: Vec<KeyValue>| OtlpSpan {
        trace_id: vec![9; 16],
        span_id: vec![id; 8],
        parent_span_id: if parent == 0 { vec![] } else { vec![parent; 8] },
        name: "fallback name".into(),
        kind,
        start_time_unix_nano: 10,
        end_time_unix_nano: 20,
        attributes: attrs,
        ..OtlpSpan::default()
    };
    let mut server = span(
        1,
        0,
        2,
        vec![
            kv("http.request.method", s("GET")),
            kv("url.path", s("/orders/42?x=1")),
        ],
    );
    server.status = Some(Status {
        code: StatusCode::Error as i32,
        message: String::new(),
    });
    let req = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", s("orders"))],
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: vec![
                    server,
                    span(
                        2,
                        1,
                        3,
                        vec![
                            kv("db.system.name", s("postgresql")),
                            kv("db.namespace", s("orders_db")),
                            kv("server.address", s("db")),
                            kv("server.port", Value::IntValue(5432)),
                            kv(
                                "db.query.text",
                                s("UPDATE addresses SET street = 'x' WHERE id = 7"),
                            ),
                        ],
                    ),
                    span(
                        3,
                        1,
                        3,
                        vec![
                            kv("peer.service", s("payments")),
                            kv("http.request.method", s("POST")),
                            kv("http.route", s("/pay")),
                        ],
                    ),
                    span(0, 1, 3, vec![]),
                ],
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    };
    let mut stats = MappingStats::default();
    let spans = map_request(&req, &mut stats, 256);
    assert_eq!(
        (stats.accepted, stats.bad_ids),
        (3, 1),
        "an all-zero span id is rejected"
    );
    assert_eq!(spans[0].operation, "GET /orders/{id}");
    assert!(spans[0].fault && spans[0].kind == SpanKind::Server && spans[0].service == "orders");
    assert_eq!(spans[1].operation, "UPDATE orders_db.addresses");
    assert_eq!(spans[1].tables, ["orders_db.addresses"]);
    assert!(spans[1].writes);
    assert_eq!(
        spans[1].peer,
        Peer::Database {
            system: "postgresql".into(),
            server: "db:5432".into(),
            namespace: Some("orders_db".into()),
        }
    );
    assert_eq!(
        spans[2].peer,
        Peer::Service {
            name: "payments".into()
        }
    );
    assert_eq!(spans[2].operation, "POST /pay");
    assert_eq!(stats.names_cut, 0);
    // Names past the limit are cut, each counted.
    let mut cut = MappingStats::default();
    let short = map_request(&req, &mut cut, 6);
    assert!(
        short
            .iter()
            .all(|s| s.service.len() <= 6 && s.operation.len() <= 6)
    );
    assert_eq!(short[1].tables, ["orders"], "orders_db.addresses, cut");
    // GET /orders/{id}; UPDATE orders_db.addresses, postgresql (as the
    // database and as the protocol), db:5432, orders_db, the table; POST
    // /pay, payments. The service, `orders`, fits.
    assert_eq!(cut.names_cut, 9);
    let a = analyze(&spans).unwrap();
    assert_eq!(a.depth, 1);
    assert_eq!(a.db_accesses.len(), 1);
}

/// OTLP/HTTP's JSON encoding (hex ids, integer enums) decodes to the same request.
#[test]
fn otlp_json_encoding() {
    let json = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"checkout"}}]},
      "scopeSpans":[{"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174",
      "name":"GET /cart","kind":2,"startTimeUnixNano":"1544712660000000000","endTimeUnixNano":"1544712661000000000",
      "attributes":[{"key":"http.request.method","value":{"stringValue":"GET"}},{"key":"http.route","value":{"stringValue":"/cart"}}]}]}]}]}"#;
    let req: ExportTraceServiceRequest = serde_json::from_str(json).unwrap();
    let mut stats = MappingStats::default();
    let spans = map_request(&req, &mut stats, 256);
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].trace_id[0], 0x5b);
    assert_eq!(spans[0].service, "checkout");
    assert_eq!(spans[0].operation, "GET /cart");
    assert_eq!(spans[0].start_ns, 1_544_712_660_000_000_000);
}

#[test]
fn the_coupling_report_shows_each_symptom_with_its_evidence() {
    use tangle_collector::{
        api::{FindingsPage, Links},
        report::{Format, render},
    };
    let dir = data_dir("report");
    let mut m = Model::new(
        Baseline::open(&dir).unwrap(),
        Thresholds::default(),
        BTreeMap::new(),
    );
    ingest(&mut m, &linear(5), 1);
    ingest(
        &mut m,
        &node("orders", vec![db("orders_db", "orders", true)]),
        2,
    );
    ingest(
        &mut m,
        &node(
            "shipping",
            vec![
                db("orders_db", "orders", true),
                db("orders_db", "orders", true),
            ],
        ),
        3,
    );
    // As the API sends it and the report reads it back.
    let sent = serde_json::to_string(&FindingsPage {
        findings: m.findings().into(),
        links: Some(Links {
            exact: 3,
            inferred: 1,
        }),
    })
    .unwrap();
    let findings: FindingsPage = serde_json::from_str(&sent).unwrap();
    assert_eq!(findings.findings.len(), m.findings().len());
    assert_eq!(findings.findings, m.findings());
    let text = render(&findings, Format::Text);
    assert!(text.contains("3 exactly (propagated context"), "{text}");
    assert!(
        text.contains("distributed-monolith symptoms found"),
        "{text}"
    );
    assert!(text.contains("Deep synchronous chains (1)"), "{text}");
    assert!(
        text.contains("s1 GET /s1: depth 4 (p95 4): s1 GET /s1 → s2 GET /s2"),
        "{text}"
    );
    assert!(
        text.contains("orders_db.orders in db:5432/orders_db is written by orders, shipping"),
        "{text}"
    );
    assert!(text.contains("inferred: most writes"), "{text}");
    let md = render(&findings, Format::Markdown);
    assert!(
        md.starts_with("# Tangle coupling report\n") && md.contains("\n## Shared databases (1)\n"),
        "{md}"
    );
    let json: serde_json::Value = serde_json::from_str(&render(&findings, Format::Json)).unwrap();
    assert_eq!(
        json["symptoms"], 4,
        "deep chain, shared db, cross-service access, table written by many: {json}"
    );
    let empty = render(&FindingsPage::default(), Format::Text);
    assert!(empty.contains("No distributed-monolith symptom found"));
    let _ = std::fs::remove_dir_all(dir);
}

/// One OTLP span as the agent writes it: `attrs` are (key, value) pairs,
/// numbers written as such.
#[allow(clippy::too_many_arguments)]
fn agent_span(
    trace: u8,
    id: u8,
    parent: Option<u8>,
    kind: i32,
    name: &str,
    attrs: &[(&str, &str)],
    failed: bool,
) -> OtlpSpan {
    OtlpSpan {
        trace_id: vec![trace; 16],
        span_id: vec![id; 8],
        parent_span_id: parent.map(|p| vec![p; 8]).unwrap_or_default(),
        name: name.into(),
        kind,
        start_time_unix_nano: 1_000 + u64::from(id),
        end_time_unix_nano: 2_000 - u64::from(id),
        attributes: attrs
            .iter()
            .map(|(k, v)| match v.parse::<i64>() {
                Ok(n) if *k != "tangle.join.client" => kv(k, Value::IntValue(n)),
                _ => kv(k, s(v)),
            })
            .collect(),
        status: failed.then(|| Status {
            code: StatusCode::Error as i32,
            ..Status::default()
        }),
        ..OtlpSpan::default()
    }
}

fn resource(service: &str, spans: Vec<OtlpSpan>) -> ResourceSpans {
    ResourceSpans {
        resource: Some(Resource {
            attributes: vec![kv("service.name", s(service))],
            ..Resource::default()
        }),
        scope_spans: vec![ScopeSpans {
            spans,
            ..ScopeSpans::default()
        }],
        ..ResourceSpans::default()
    }
}

/// Spans as agents on one node send them, each process's in a trace of its
/// own, joined by their keys: a script calls the gateway, which calls
/// users (a Java dual-stack socket: its key says `::ffff:`), PostgreSQL
/// and Redis (a handshake Redis refuses among them); users answers 404;
/// PostgreSQL's and Redis's own server spans; orders publishes on a
/// channel, notifier gets the message. What must be there is, and nothing
/// else: no curl-like hop, no database as a service, no handshake, no
/// fault from a caller's error, no shared database for a channel.
#[test]
fn a_node_is_of_its_kind_and_housekeeping_is_nothing() {
    const SERVER: i32 = 2;
    const CLIENT: i32 = 3;
    const PRODUCER: i32 = 4;
    const CONSUMER: i32 = 5;
    let key =
        |c: &'static str, n: &'static str| [("tangle.join.client", c), ("tangle.join.seq", n)];
    let with = |a: &[(&'static str, &'static str)], b: &[(&'static str, &'static str)]| {
        a.iter().chain(b).copied().collect::<Vec<_>>()
    };
    let http = [("http.request.method", "GET"), ("url.path", "/dashboard/7")];
    let users = [("http.request.method", "GET"), ("url.path", "/users/7")];
    let pg = [
        ("db.system.name", "postgresql"),
        ("db.namespace", "shop"),
        ("db.query.text", "SELECT name FROM users WHERE id = ?"),
        ("server.address", "127.0.0.1"),
        ("server.port", "5432"),
    ];
    let redis = |op: &'static str| {
        [
            ("db.system.name", "redis"),
            ("db.operation.name", op),
            ("server.address", "127.0.0.1"),
            ("server.port", "6379"),
        ]
    };
    let channel = [
        ("messaging.system", "redis"),
        ("messaging.destination.name", "orders"),
        ("server.address", "127.0.0.1"),
        ("server.port", "6379"),
    ];
    let req = ExportTraceServiceRequest {
        resource_spans: vec![
            resource(
                "load",
                vec![agent_span(
                    1,
                    1,
                    None,
                    CLIENT,
                    "GET /dashboard/{id}",
                    &with(
                        &key("127.0.0.1:40000", "100"),
                        &with(&http, &[("tangle.outcome", "ok")]),
                    ),
                    false,
                )],
            ),
            resource(
                "gateway",
                vec![
                    agent_span(
                        2,
                        2,
                        None,
                        SERVER,
                        "GET /dashboard/{id}",
                        &with(
                            &key("127.0.0.1:40000", "100"),
                            &with(&http, &[("http.response.status_code", "200")]),
                        ),
                        false,
                    ),
                    agent_span(
                        2,
                        3,
                        Some(2),
                        CLIENT,
                        "GET /users/{id}",
                        &with(
                            &key("127.0.0.1:40001", "7"),
                            &with(
                                &users,
                                &[
                                    ("tangle.outcome", "error"),
                                    ("http.response.status_code", "404"),
                                ],
                            ),
                        ),
                        true,
                    ),
                    agent_span(
                        2,
                        4,
                        Some(2),
                        CLIENT,
                        "SELECT",
                        &with(&key("127.0.0.1:40002", "9"), &pg),
                        false,
                    ),
                    agent_span(
                        2,
                        5,
                        Some(2),
                        CLIENT,
                        "redis HELLO",
                        &with(&key("127.0.0.1:40003", "1"), &redis("HELLO")),
                        false,
                    ),
                    agent_span(
                        2,
                        6,
                        Some(2),
                        CLIENT,
                        "redis CLIENT SETINFO",
                        &with(
                            &key("127.0.0.1:40003", "20"),
                            &with(&redis("CLIENT SETINFO"), &[("tangle.outcome", "error")]),
                        ),
                        true,
                    ),
                    agent_span(
                        2,
                        7,
                        Some(2),
                        CLIENT,
                        "redis GET",
                        &with(&key("127.0.0.1:40003", "40"), &redis("GET")),
                        false,
                    ),
                ],
            ),
            resource(
                "users",
                vec![agent_span(
                    3,
                    8,
                    None,
                    SERVER,
                    "GET /users/{id}",
                    &with(
                        &key("[::ffff:127.0.0.1]:40001", "7"),
                        &with(
                            &users,
                            &[
                                ("tangle.outcome", "error"),
                                ("http.response.status_code", "404"),
                            ],
                        ),
                    ),
                    false,
                )],
            ),
            resource(
                "postgres",
                vec![agent_span(
                    4,
                    9,
                    None,
                    SERVER,
                    "SELECT",
                    &with(&key("127.0.0.1:40002", "9"), &pg),
                    false,
                )],
            ),
            resource(
                "redis-server",
                vec![
                    agent_span(
                        5,
                        10,
                        None,
                        SERVER,
                        "redis HELLO",
                        &with(&key("127.0.0.1:40003", "1"), &redis("HELLO")),
                        false,
                    ),
                    agent_span(
                        5,
                        11,
                        None,
                        SERVER,
                        "redis GET",
                        &with(&key("127.0.0.1:40003", "40"), &redis("GET")),
                        false,
                    ),
                    agent_span(
                        5,
                        14,
                        None,
                        SERVER,
                        "redis CLIENT SETINFO",
                        &with(
                            &key("127.0.0.1:40003", "20"),
                            &with(&redis("CLIENT SETINFO"), &[("tangle.outcome", "error")]),
                        ),
                        true,
                    ),
                ],
            ),
            resource(
                "orders",
                vec![agent_span(
                    6,
                    12,
                    None,
                    PRODUCER,
                    "redis PUBLISH",
                    &channel,
                    false,
                )],
            ),
            resource(
                "notifier",
                vec![agent_span(
                    7,
                    13,
                    None,
                    CONSUMER,
                    "redis PUSH message",
                    &channel,
                    false,
                )],
            ),
        ],
    };
    let spans = map_request(&req, &mut MappingStats::default(), 128);
    let mut asm = tangle_collector::assembly::Assembler::new(1_000, 1_000_000);
    for span in spans {
        asm.add(span, 0);
    }
    let traces = asm.flush_all();
    assert_eq!(
        (asm.stats.joined, asm.stats.unjoined),
        (6, 0),
        "{:?}",
        asm.stats
    );
    let dir = data_dir("kinds");
    let mut m = Model::new(
        Baseline::open(&dir).unwrap(),
        Thresholds::default(),
        BTreeMap::new(),
    );
    for (n, t) in traces.iter().enumerate() {
        let Some(a) = analyze(t) else { continue };
        let served: Vec<(String, bool)> = t
            .iter()
            .filter(|s| s.is_entry() && a.closure.contains(&s.service))
            .map(|s| (s.service.clone(), s.fault))
            .collect();
        m.ingest(&[n as u8; 16], &a, &served, 1);
    }
    let nodes: Vec<(String, &str)> = m
        .nodes()
        .into_iter()
        .map(|(n, k)| (n, k.as_str()))
        .collect();
    assert_eq!(
        nodes,
        [
            ("127.0.0.1:5432/shop", "database"),
            ("127.0.0.1:6379", "cache"),
            ("gateway", "service"),
            ("load", "external_client"),
            ("notifier", "service"),
            ("orders", "external_client"),
            ("orders@127.0.0.1:6379", "topic"),
            ("users", "service"),
        ]
        .map(|(n, k)| (n.to_owned(), k))
    );
    let keys = |e: &BTreeMap<(String, String), tangle_collector::model::EdgeStats>| {
        e.keys()
            .map(|(a, b)| format!("{a} -> {b}"))
            .collect::<Vec<_>>()
    };
    assert_eq!(keys(&m.client_edges), ["load -> gateway"]);
    assert_eq!(keys(&m.edges), ["gateway -> users"]);
    assert_eq!(
        keys(&m.db_edges),
        [
            "gateway -> 127.0.0.1:5432/shop",
            "gateway -> 127.0.0.1:6379"
        ]
    );
    assert_eq!(
        keys(&m.async_edges),
        [
            "orders -> orders@127.0.0.1:6379",
            "orders@127.0.0.1:6379 -> notifier"
        ]
    );
    let e = &m.edges[&("gateway".to_owned(), "users".to_owned())];
    assert_eq!(
        (e.calls, e.callee_failures, e.exact, e.inferred),
        (1, 0, 1, 0),
        "a 404 is no fault"
    );
    // The entries: gateway's request, and users' only as gateway's callee.
    let entries: Vec<String> = m
        .entries
        .keys()
        .map(|h| format!("{} {}", h.service, h.operation))
        .collect();
    assert_eq!(entries, ["gateway GET /dashboard/{id}"]);
    let chains: Vec<usize> = m.chains.values().map(|c| c.depth).collect();
    assert_eq!(
        chains,
        [1],
        "gateway -> users, and no chain of a statement or a command"
    );
    assert_eq!(
        m.availability(&m.entries.values().next().unwrap().closure),
        Some(1.0)
    );
    let tables: Vec<String> = m
        .databases
        .iter()
        .map(|(db, users)| {
            format!(
                "{} {:?}",
                db.name(),
                users
                    .iter()
                    .map(|(s, t)| (s, t.keys().collect::<Vec<_>>()))
                    .collect::<Vec<_>>()
            )
        })
        .collect();
    assert_eq!(
        tables,
        [
            r#"127.0.0.1:5432/shop [("gateway", ["shop.users"])]"#,
            r#"127.0.0.1:6379 [("gateway", [])]"#,
        ]
    );
    assert!(m.findings().is_empty(), "{:?}", m.findings());
    let _ = std::fs::remove_dir_all(dir);
}
