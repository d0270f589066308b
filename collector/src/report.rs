//! The coupling report, "the honesty test": each distributed-monolith
//! symptom found, with its evidence, as text, markdown or JSON.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    time::Duration,
};

use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Markdown,
    Json,
}

/// Why the findings could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The URL is not `http://host:port`.
    #[error("the collector URL must look like http://host:port, not {0}")]
    Url(String),
    /// The collector could not be reached or answered badly.
    #[error("cannot get findings from {url}: {reason}")]
    Fetch { url: String, reason: String },
}

/// GETs `/api/findings` from a running collector.
pub fn fetch(url: &str) -> Result<Value, ReportError> {
    let addr = url
        .strip_prefix("http://")
        .map(|a| a.trim_end_matches('/'))
        .filter(|a| a.contains(':'));
    let addr = addr.ok_or_else(|| ReportError::Url(url.to_owned()))?;
    let fail = |reason: String| ReportError::Fetch {
        url: url.to_owned(),
        reason,
    };
    let mut s = TcpStream::connect(addr).map_err(|e| fail(e.to_string()))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| fail(e.to_string()))?;
    write!(
        s,
        "GET /api/findings HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| fail(e.to_string()))?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).map_err(|e| fail(e.to_string()))?;
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| fail("no HTTP response".into()))?;
    if !out.starts_with(b"HTTP/1.1 200") {
        let head = out.get(..split).unwrap_or_default();
        return Err(fail(String::from_utf8_lossy(head).into_owned()));
    }
    serde_json::from_slice(out.get(split + 4..).unwrap_or_default())
        .map_err(|e| fail(e.to_string()))
}

const SECTIONS: &[(&str, &str)] = &[
    ("deep_sync_chain", "Deep synchronous chains"),
    (
        "wide_closure",
        "Wide closures (services that must all be up)",
    ),
    ("cycle", "Circular synchronous dependencies"),
    ("cascading_failure", "Cascading failures"),
    ("chatty_edge", "Chatty APIs (calls per request)"),
    ("shared_database", "Shared databases"),
    ("cross_service_access", "Cross-service database access"),
    (
        "table_written_by_many",
        "Tables written by more than one service",
    ),
    ("new_sync_chain", "New synchronous chains"),
];

fn hops(v: &Value) -> String {
    v.as_array()
        .map(|h| {
            h.iter()
                .map(|h| {
                    format!(
                        "{} {}",
                        h["service"].as_str().unwrap_or("?"),
                        h["operation"].as_str().unwrap_or("")
                    )
                })
                .collect::<Vec<_>>()
                .join(" → ")
        })
        .unwrap_or_default()
}

fn list(v: &Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn entry(v: &Value) -> String {
    format!(
        "{} {}",
        v["service"].as_str().unwrap_or("?"),
        v["operation"].as_str().unwrap_or("")
    )
}

/// One line of evidence for a finding.
fn evidence(f: &Value) -> String {
    match f["kind"].as_str().unwrap_or("") {
        "deep_sync_chain" => format!(
            "{}: depth {} (p95 {}): {}",
            entry(&f["entry"]),
            f["depth"],
            f["p95_depth"],
            hops(&f["longest"])
        ),
        "wide_closure" => {
            let n = f["services"].as_array().map_or(0, Vec::len);
            let availability = f["availability"]
                .as_f64()
                .map(|a| format!("; implied availability {:.3}%", a * 100.0))
                .unwrap_or_default();
            format!(
                "{} needs {n} services up: {}{availability}",
                entry(&f["entry"]),
                list(&f["services"])
            )
        }
        "cycle" => list(&f["services"]).replace(", ", " → "),
        "cascading_failure" => {
            format!(
                "{:.0}% of {} faults surface as {} faults ({} of {})",
                f["ratio"].as_f64().unwrap_or(0.0) * 100.0,
                f["callee"].as_str().unwrap_or("?"),
                f["caller"].as_str().unwrap_or("?"),
                f["propagated"],
                f["callee_failures"]
            ) + &heuristic(f)
        }
        "chatty_edge" => {
            format!(
                "{} calls {} up to {} times per request ({:.1} on average)",
                f["caller"].as_str().unwrap_or("?"),
                f["callee"].as_str().unwrap_or("?"),
                f["max_calls_per_request"],
                f["calls_per_request"].as_f64().unwrap_or(0.0)
            ) + &heuristic(f)
        }
        "shared_database" => {
            let owner = f
                .pointer("/owner/service")
                .and_then(|o| o.as_str())
                .map(|o| {
                    let source = f.pointer("/owner/source").and_then(|s| s.as_str());
                    format!(" (owner {o}: {})", source.unwrap_or(""))
                })
                .unwrap_or_default();
            format!(
                "{} is used by {}{owner}",
                f["database"].as_str().unwrap_or("?"),
                list(&f["services"])
            )
        }
        "cross_service_access" => {
            let tables = f["tables"].as_object().map(|t| {
                t.iter()
                    .map(|(name, rw)| format!("{name} ({} reads, {} writes)", rw[0], rw[1]))
                    .collect::<Vec<_>>()
                    .join(", ")
            });
            format!(
                "{} uses {} of {}, owned by {}",
                f["accessor"].as_str().unwrap_or("?"),
                tables.unwrap_or_default(),
                f["database"].as_str().unwrap_or("?"),
                f.pointer("/owner/service")
                    .and_then(|o| o.as_str())
                    .unwrap_or("?")
            )
        }
        "table_written_by_many" => {
            format!(
                "{} in {} is written by {}",
                f["table"].as_str().unwrap_or("?"),
                f["database"].as_str().unwrap_or("?"),
                list(&f["services"])
            )
        }
        "new_sync_chain" => format!(
            "{} (signature {}, example trace {})",
            hops(&f["chain"]),
            f["signature"].as_str().unwrap_or(""),
            f["example_trace"].as_str().unwrap_or("")
        ),
        other => format!("{other}: {f}"),
    }
}

/// How much of an edge's evidence a heuristic linked, when any did.
fn heuristic(f: &Value) -> String {
    match f["inferred_calls"].as_u64() {
        Some(n) if n > 0 => format!("; {n} of its calls linked by a heuristic, not exactly"),
        _ => String::new(),
    }
}

/// Renders `/api/findings`' answer.
pub fn render(findings: &Value, format: Format) -> String {
    let all: Vec<&Value> = findings["findings"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    // New chains are news, not symptoms.
    let symptoms = all.iter().filter(|f| f["kind"] != "new_sync_chain").count();
    let kinds: std::collections::BTreeSet<&str> = all
        .iter()
        .filter(|f| f["kind"] != "new_sync_chain")
        .filter_map(|f| f["kind"].as_str())
        .collect();
    let verdict = if symptoms == 0 {
        "No distributed-monolith symptom found in the traffic seen so far.".to_owned()
    } else {
        format!(
            "{symptoms} distributed-monolith symptoms found, of {} kinds: these services are not independent.",
            kinds.len()
        )
    };
    if format == Format::Json {
        let report =
            serde_json::json!({ "verdict": verdict, "symptoms": symptoms, "findings": all });
        return serde_json::to_string_pretty(&report).unwrap_or_default() + "\n";
    }
    let md = format == Format::Markdown;
    let mut out = String::new();
    out.push_str(if md {
        "# Tangle coupling report\n\n"
    } else {
        "Tangle coupling report\n======================\n\n"
    });
    out.push_str(&verdict);
    out.push('\n');
    if let (Some(exact), Some(inferred)) = (
        findings.pointer("/links/exact").and_then(Value::as_u64),
        findings.pointer("/links/inferred").and_then(Value::as_u64),
    ) {
        out.push_str(&format!(
            "Calls linked to the request they serve: {exact} exactly (propagated context, the thread rule, the wire join), {inferred} by a heuristic.\n"
        ));
    }
    for (kind, title) in SECTIONS {
        let items: Vec<&&Value> = all.iter().filter(|f| f["kind"] == *kind).collect();
        if items.is_empty() {
            continue;
        }
        out.push_str(&if md {
            format!("\n## {title} ({})\n\n", items.len())
        } else {
            format!("\n{title} ({})\n", items.len())
        });
        for f in items {
            out.push_str(if md { "- " } else { "  - " });
            out.push_str(&evidence(f));
            out.push('\n');
        }
    }
    out
}
