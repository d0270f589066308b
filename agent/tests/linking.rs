//! Causality end to end, as root with real processes: the spans
//! `tangle-agent run` exports form the expected trees.
//!
//! - A thread-per-request service that calls a second service and queries a
//!   real PostgreSQL per request, under 60 concurrent requests: every call
//!   is the child of the request it was made for, exactly; nothing secret
//!   (Authorization header, database password, SQL literal) is exported.
//! - An async service (Node's event loop) with and without `traceparent`
//!   propagation: linked exactly with it; without it, every link is either
//!   right or marked inferred, and the shares are reported.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // a panic here is a failed test

mod support;

use std::{collections::BTreeMap, process::Command};

use opentelemetry_proto::tonic::trace::v1::Span;
use support::{otlp::*, *};

const CLIENT: i32 = 3;
const SERVER: i32 = 2;

/// The request number a span is about: the last path segment, or the
/// `item_<word>` alias of a statement (see `item_word`).
fn item(s: &Span) -> Option<u32> {
    if let Some(path) = attr(s, "url.path") {
        return item_number(path.rsplit('/').next()?);
    }
    let q = attr(s, "db.query.text")?;
    let at = q.find("item_")? + 5;
    item_number(q[at..].split(|c: char| !c.is_ascii_lowercase()).next()?)
}

fn inferred(s: &Span) -> bool {
    attr(s, "tangle.link.inferred").as_deref() == Some("true")
}

/// `n` concurrent curls to `url_of(i)`, each with `headers_of(i)`.
fn concurrent_requests(
    n: u32,
    url_of: impl Fn(u32) -> String,
    headers_of: impl Fn(u32) -> Vec<String>,
) {
    let mut curls: Vec<_> = (1..=n)
        .map(|i| {
            let mut c = Command::new("curl");
            c.args(["-sS", "-o", "/dev/null", "--max-time", "30", "--fail"]);
            for h in headers_of(i) {
                c.arg("-H").arg(h);
            }
            c.arg(url_of(i)).spawn().unwrap()
        })
        .collect();
    for c in &mut curls {
        assert!(c.wait().unwrap().success(), "a request failed");
    }
}

#[test]
fn thread_per_request_calls_and_queries_link_to_their_request() {
    let name = "thread_per_request_calls_and_queries_link_to_their_request";
    let _serial = serial();
    if require(name, &["curl", "python3", "setpriv"]).is_none() {
        return;
    }
    let Some(pg_bin) = postgres::bin_dir() else {
        skip(
            name,
            "PostgreSQL is not installed (Debian package postgresql)",
        );
        return;
    };
    // Debian's python3-psycopg2 is for the system's Python, which may not
    // be the first python3 on PATH.
    let Some(pg_python) = ["python3", "/usr/bin/python3"].into_iter().find(|p| {
        Command::new(p)
            .args(["-c", "import psycopg2"])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }) else {
        skip(
            name,
            "psycopg2 is not installed (Debian package python3-psycopg2)",
        );
        return;
    };
    let password = "pg-Secret-pw-4242";
    let pg = postgres::start(&pg_bin, password);
    let otlp_port = free_port();
    let received = receiver(otlp_port);
    let (back_port, front_port) = (free_port(), free_port());
    let services =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/services.py");
    let _back = Proc::spawn_ready(
        Command::new("python3")
            .arg("-u")
            .arg(&services)
            .args(["back", &back_port.to_string()])
            // One script, two roles: each says which service it is.
            .env("OTEL_SERVICE_NAME", "back"),
        "listening",
    );
    let _front = Proc::spawn_ready(
        Command::new(pg_python)
            .arg("-u")
            .arg(&services)
            .args([
                "front",
                &front_port.to_string(),
                &back_port.to_string(),
                &pg.port.to_string(),
            ])
            .env("TANGLE_TEST_PG_PASSWORD", password)
            .env("OTEL_SERVICE_NAME", "front"),
        "listening",
    );
    let (agent, ready) = run_agent(otlp_port, &["--duration", "20s"]);
    concurrent_requests(
        60,
        |i| format!("http://127.0.0.1:{front_port}/order/{}", item_word(i)),
        |_| vec!["Authorization: Bearer client-Secret-token".into()],
    );
    let out = agent.wait_with_output().unwrap();
    assert!(out.status.success());
    let _ = std::fs::remove_file(&ready);
    let spans = received.spans();

    // No secret anywhere in what was exported.
    let everything = format!("{spans:?}{:?}", received.resources.lock().unwrap());
    for secret in [password, "client-Secret-token", "literal-secret"] {
        assert!(!everything.contains(secret), "{secret} was exported");
    }

    let requests: BTreeMap<Vec<u8>, &Span> = spans
        .iter()
        .filter(|(svc, s)| svc == "front" && s.kind == SERVER)
        .map(|(_, s)| (s.span_id.clone(), s))
        .collect();
    assert_eq!(requests.len(), 60, "every request served by front exported");
    let (mut http_children, mut db_children) = (0, 0);
    for (svc, c) in spans
        .iter()
        .filter(|(svc, s)| svc == "front" && s.kind == CLIENT)
    {
        let parent = requests
            .get(&c.parent_span_id)
            .unwrap_or_else(|| panic!("{svc}'s call {} has no parent request", c.name));
        assert_eq!(parent.trace_id, c.trace_id, "same trace");
        assert!(!inferred(c), "thread-per-request links are exact");
        let is_db = attr(c, "db.system.name").is_some();
        if let Some(n) = item(c) {
            assert_eq!(
                Some(n),
                item(parent),
                "mislink: {} under {}",
                c.name,
                parent.name
            );
            if is_db {
                db_children += 1;
            } else {
                http_children += 1;
            }
        } else {
            assert!(is_db, "an HTTP call without an item: {c:?}");
        }
    }
    assert_eq!(http_children, 60, "one call to back per request");
    assert_eq!(db_children, 60, "one query per request");
    report(
        name,
        "60 concurrent requests: 60 HTTP calls and 60 PostgreSQL queries under \
         the right request, none inferred, no secret exported",
    );
    // The database spans say what they are, with the literal masked.
    let query = spans
        .iter()
        .find(|(_, s)| {
            s.kind == CLIENT && attr(s, "db.system.name").as_deref() == Some("postgresql")
        })
        .map(|(_, s)| attr(s, "db.query.text").unwrap_or_default())
        .expect("a PostgreSQL span");
    assert!(query.starts_with("SELECT ? AS item_"), "{query}");
}

/// Runs the Node service in `mode` against a thread-per-request
/// downstream, sends `n` concurrent requests with a traceparent each, and
/// returns the spans and the trace id each request carried.
/// Exported spans with their service's name.
type Spans = Vec<(String, Span)>;

fn async_service_run(mode: &str, n: u32) -> (Spans, BTreeMap<u32, String>) {
    let otlp_port = free_port();
    let received = receiver(otlp_port);
    let (down_port, svc_port) = (free_port(), free_port());
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let _down = Proc::spawn_ready(
        Command::new("python3")
            .arg("-u")
            .arg(fixtures.join("services.py"))
            .args(["back", &down_port.to_string()]),
        "listening",
    );
    let _svc = Proc::spawn_ready(
        Command::new("node")
            .arg(fixtures.join("async_service.js"))
            .args([&svc_port.to_string(), &down_port.to_string(), mode])
            .env("OTEL_SERVICE_NAME", "orders-async"),
        "listening",
    );
    let (agent, ready) = run_agent(otlp_port, &["--duration", "12s"]);
    let traces: BTreeMap<u32, String> = (1..=n)
        .map(|i| (i, format!("{:032x}", 0x7a9e_0000_u64 + u64::from(i))))
        .collect();
    concurrent_requests(
        n,
        |i| format!("http://127.0.0.1:{svc_port}/order/{}", item_word(i)),
        |i| {
            vec![format!(
                "traceparent: 00-{}-00f067aa0ba902b7-01",
                traces[&i]
            )]
        },
    );
    let out = agent.wait_with_output().unwrap();
    assert!(out.status.success());
    let _ = std::fs::remove_file(&ready);
    (received.spans(), traces)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn async_service_links_exactly_with_propagation_and_marks_inferred_without() {
    let name = "async_service_links_exactly_with_propagation_and_marks_inferred_without";
    let _serial = serial();
    if require(name, &["curl", "python3", "node"]).is_none() {
        return;
    }
    let n = 50;
    // With traceparent forwarded: every call under its request, exactly.
    let (spans, traces) = async_service_run("propagate", n);
    let requests: BTreeMap<Vec<u8>, &Span> = spans
        .iter()
        .filter(|(svc, s)| svc == "orders-async" && s.kind == SERVER)
        .map(|(_, s)| (s.span_id.clone(), s))
        .collect();
    assert_eq!(
        requests.len(),
        n as usize,
        "named from OTEL_SERVICE_NAME; every request exported"
    );
    let calls: Vec<&Span> = spans
        .iter()
        .filter(|(svc, s)| svc == "orders-async" && s.kind == CLIENT)
        .map(|(_, s)| s)
        .collect();
    assert_eq!(calls.len(), n as usize);
    for c in &calls {
        let parent = requests
            .get(&c.parent_span_id)
            .expect("every call has its request");
        let i = item(c).unwrap();
        assert_eq!(item(parent), Some(i), "mislink");
        assert_eq!(hex(&c.trace_id), traces[&i], "the propagated trace");
        assert!(!inferred(c), "propagated context links are exact");
    }

    report(
        name,
        &format!(
            "async service with traceparent propagation, {n} calls: {} exact and right",
            calls.len()
        ),
    );

    // Without it: one thread serves every request; links are right or inferred.
    let (spans, _) = async_service_run("none", n);
    let requests: BTreeMap<Vec<u8>, &Span> = spans
        .iter()
        .filter(|(svc, s)| svc == "orders-async" && s.kind == SERVER)
        .map(|(_, s)| (s.span_id.clone(), s))
        .collect();
    let (mut exact, mut inferred_right, mut inferred_wrong, mut unlinked) = (0, 0, 0, 0);
    for (_, c) in spans
        .iter()
        .filter(|(svc, s)| svc == "orders-async" && s.kind == CLIENT)
    {
        match requests.get(&c.parent_span_id) {
            None => unlinked += 1,
            Some(p) => {
                let right = item(p) == item(c);
                match (inferred(c), right) {
                    (false, true) => exact += 1,
                    (false, false) => panic!(
                        "a wrong link not marked inferred: {} under {}",
                        c.name, p.name
                    ),
                    (true, true) => inferred_right += 1,
                    (true, false) => inferred_wrong += 1,
                }
            }
        }
    }
    let total = exact + inferred_right + inferred_wrong + unlinked;
    assert_eq!(total, n, "every call exported");
    report(
        name,
        &format!(
            "async service without propagation, {n} calls: exact {exact} ({:.0}%), inferred and right \
         {inferred_right} ({:.0}%), inferred and wrong {inferred_wrong} ({:.0}%), unlinked {unlinked} ({:.0}%)",
            100.0 * f64::from(exact) / f64::from(n),
            100.0 * f64::from(inferred_right) / f64::from(n),
            100.0 * f64::from(inferred_wrong) / f64::from(n),
            100.0 * f64::from(unlinked) / f64::from(n),
        ),
    );
}
