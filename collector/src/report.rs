//! The coupling report, "the honesty test": each distributed-monolith
//! symptom found, with its evidence, as text, markdown or JSON; or the
//! coupling map and the findings as one self-contained HTML file.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    time::Duration,
};

use crate::{
    api::{ChainsPage, DatabasesPage, FindingsPage, GraphPage, Links},
    chains::Hop,
    findings::Finding,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Markdown,
    Json,
    /// The map and the panels of the collector's page, with the model as
    /// it is now, in one file that opens offline.
    Html,
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

/// GETs `path` from a running collector at `url`, with the API token if
/// one is given: the body of a 200 answer.
fn get(url: &str, path: &str, token: Option<&str>) -> Result<Vec<u8>, ReportError> {
    let addr = url
        .strip_prefix("http://")
        .map(|a| a.trim_end_matches('/'))
        .filter(|a| a.contains(':'));
    let addr = addr.ok_or_else(|| ReportError::Url(url.to_owned()))?;
    let fail = |reason: String| ReportError::Fetch {
        url: format!("{url}{path}"),
        reason,
    };
    let mut s = TcpStream::connect(addr).map_err(|e| fail(e.to_string()))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| fail(e.to_string()))?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
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
    Ok(out.get(split + 4..).unwrap_or_default().to_vec())
}

fn get_page<T: serde::de::DeserializeOwned>(
    url: &str,
    what: &str,
    token: Option<&str>,
) -> Result<T, ReportError> {
    let path = format!("/api/{what}");
    serde_json::from_slice(&get(url, &path, token)?).map_err(|e| ReportError::Fetch {
        url: format!("{url}{path}"),
        reason: e.to_string(),
    })
}

/// GETs `/api/findings` from a running collector.
pub fn fetch(url: &str, token: Option<&str>) -> Result<FindingsPage<'static>, ReportError> {
    get_page(url, "findings", token)
}

/// The whole model of a running collector, as its page draws it.
#[derive(Debug, serde::Serialize)]
pub struct Snapshot {
    pub graph: GraphPage,
    pub chains: ChainsPage,
    pub databases: DatabasesPage,
    pub findings: FindingsPage<'static>,
}

/// GETs the four pages of the API from a running collector.
pub fn fetch_snapshot(url: &str, token: Option<&str>) -> Result<Snapshot, ReportError> {
    Ok(Snapshot {
        graph: get_page(url, "graph", token)?,
        chains: get_page(url, "chains", token)?,
        databases: get_page(url, "databases", token)?,
        findings: fetch(url, token)?,
    })
}

/// The report's sections, in order: a finding kind and its title.
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

fn hops(hops: &[Hop]) -> String {
    hops.iter().map(entry).collect::<Vec<_>>().join(" → ")
}

fn list<'a>(names: impl IntoIterator<Item = &'a String>) -> String {
    names
        .into_iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

fn entry(h: &Hop) -> String {
    format!("{} {}", h.service, h.operation)
}

/// How much of an edge's evidence a heuristic linked, when any did.
fn heuristic(inferred_calls: u64) -> String {
    if inferred_calls > 0 {
        format!("; {inferred_calls} of its calls linked by a heuristic, not exactly")
    } else {
        String::new()
    }
}

/// One line of evidence for a finding.
fn evidence(f: &Finding) -> String {
    match f {
        Finding::DeepSyncChain {
            entry: e,
            depth,
            p95_depth,
            longest,
        } => format!(
            "{}: depth {depth} (p95 {p95_depth}): {}",
            entry(e),
            hops(longest)
        ),
        Finding::WideClosure {
            entry: e,
            services,
            availability,
        } => {
            let availability = availability
                .map(|a| format!("; implied availability {:.3}%", a * 100.0))
                .unwrap_or_default();
            format!(
                "{} needs {} services up: {}{availability}",
                entry(e),
                services.len(),
                list(services)
            )
        }
        Finding::Cycle { services } => list(services).replace(", ", " → "),
        Finding::CascadingFailure {
            caller,
            callee,
            propagated,
            callee_failures,
            ratio,
            inferred_calls,
        } => {
            format!(
                "{:.0}% of {callee} faults surface as {caller} faults ({propagated} of {callee_failures})",
                ratio * 100.0,
            ) + &heuristic(*inferred_calls)
        }
        Finding::ChattyEdge {
            caller,
            callee,
            max_calls_per_request,
            calls_per_request,
            inferred_calls,
        } => {
            format!(
                "{caller} calls {callee} up to {max_calls_per_request} times per request ({calls_per_request:.1} on average)"
            ) + &heuristic(*inferred_calls)
        }
        Finding::SharedDatabase {
            database,
            services,
            owner,
        } => {
            let owner = owner
                .as_ref()
                .map(|o| format!(" (owner {}: {})", o.service, o.source))
                .unwrap_or_default();
            format!("{database} is used by {}{owner}", list(services))
        }
        Finding::CrossServiceAccess {
            database,
            owner,
            accessor,
            tables,
        } => {
            let tables = tables
                .iter()
                .map(|(name, (reads, writes))| format!("{name} ({reads} reads, {writes} writes)"))
                .collect::<Vec<_>>()
                .join(", ");
            format!(
                "{accessor} uses {tables} of {database}, owned by {}",
                owner.service
            )
        }
        Finding::TableWrittenByMany {
            database,
            table,
            services,
        } => format!("{table} in {database} is written by {}", list(services)),
        Finding::NewSyncChain {
            signature,
            chain,
            example_trace,
            ..
        } => format!(
            "{} (signature {signature}, example trace {example_trace})",
            hops(chain)
        ),
    }
}

/// Renders `/api/findings`' answer.
pub fn render(page: &FindingsPage<'_>, format: Format) -> String {
    let all: &[Finding] = &page.findings;
    // New chains are news, not symptoms.
    let news = |f: &&Finding| matches!(f, Finding::NewSyncChain { .. });
    let symptoms = all.iter().filter(|f| !news(f)).count();
    let kinds: std::collections::BTreeSet<&str> =
        all.iter().filter(|f| !news(f)).map(Finding::kind).collect();
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
    if let Some(Links { exact, inferred }) = page.links {
        out.push_str(&format!(
            "Calls linked to the request they serve: {exact} exactly (propagated context, the thread rule, the wire join), {inferred} by a heuristic.\n"
        ));
    }
    for (kind, title) in SECTIONS {
        let items: Vec<&Finding> = all.iter().filter(|f| f.kind() == *kind).collect();
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
