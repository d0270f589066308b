//! OTLP spans into the collector's spans, by OpenTelemetry semantic
//! conventions (current and the older names instrumented apps still send).

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{AnyValue, KeyValue, any_value::Value},
    trace::v1::{Span as OtlpSpan, status::StatusCode},
};
use tangle_protocols::{
    normalize::{route, words},
    redis, sql,
};
use tangle_wire::attr as key;

use crate::{
    names::{cut, cut_span},
    span::{Peer, Span, SpanKind},
};

/// Spans rejected while mapping, and why; counted, never fatal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct MappingStats {
    pub accepted: u64,
    /// Trace or span ids of the wrong length (or all zero).
    pub bad_ids: u64,
    /// Names longer than `[limits] max_name_bytes`, cut to it.
    pub names_cut: u64,
}

fn text(v: &AnyValue) -> Option<String> {
    match v.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        Value::BoolValue(b) => Some(b.to_string()),
        Value::DoubleValue(d) => Some(d.to_string()),
        _ => None,
    }
}

/// The first of `keys` present among `attrs`.
fn attr(attrs: &[KeyValue], keys: &[&str]) -> Option<String> {
    keys.iter().find_map(|k| {
        attrs
            .iter()
            .find(|kv| kv.key == *k)
            .and_then(|kv| kv.value.as_ref())
            .and_then(text)
    })
}

fn id<const N: usize>(bytes: &[u8]) -> Option<[u8; N]> {
    let id: [u8; N] = bytes.try_into().ok()?;
    (id != [0; N]).then_some(id)
}

fn kind(k: i32) -> SpanKind {
    use tangle_wire::SpanKind as Otlp;
    match Otlp::from_i32(k) {
        Otlp::Server => SpanKind::Server,
        Otlp::Client => SpanKind::Client,
        Otlp::Producer => SpanKind::Producer,
        Otlp::Consumer => SpanKind::Consumer,
        Otlp::Internal | Otlp::Unspecified => SpanKind::Internal,
    }
}

/// The agent's join key, when the span has one.
fn join_key(attrs: &[KeyValue]) -> Option<tangle_wire::JoinKey> {
    let client = attr(attrs, &[tangle_wire::JOIN_CLIENT])?;
    let seq = attr(attrs, &[tangle_wire::JOIN_SEQ])?.parse().ok()?;
    tangle_wire::JoinKey::new(&client, seq)
}

/// Redis commands that set up or keep up a connection: the handshake
/// (`HELLO`, `AUTH`, `CLIENT SETINFO`, which older servers refuse),
/// `PING`, `SELECT db`; and the subscriptions (`redis::SUBSCRIBE`): a
/// subscriber's deliveries are its edges, not the command that asked.
const REDIS_HOUSEKEEPING: &[&str] = &[
    "HELLO",
    "AUTH",
    "PING",
    "SELECT",
    "QUIT",
    "RESET",
    "ECHO",
    "READONLY",
    "READWRITE",
    "INFO",
    "COMMAND",
    "CLIENT",
];

/// SQL statements and commands that set up or keep up a session: session
/// variables, transaction control, health checks, the protocols' own
/// commands (MySQL `PING`, `INIT_DB`).
const SQL_HOUSEKEEPING: &[&str] = &[
    "SET",
    "SHOW",
    "RESET",
    "DISCARD",
    "DEALLOCATE",
    "BEGIN",
    "START",
    "COMMIT",
    "ROLLBACK",
    "SAVEPOINT",
    "RELEASE",
    "USE",
    "PING",
    "QUIT",
    "INIT_DB",
    "RESET_CONNECTION",
    "STATISTICS",
    "CHANGE_USER",
    "CONNECT",
    "STARTUP",
];

/// Whether a database or cache call is connection set-up or housekeeping.
/// `query` is the statement (literals masked), `tables` what it touches:
/// a statement that names a table, or holds more than one statement
/// (`SET LOCAL x = 1; DELETE FROM cards`), is never housekeeping, whatever
/// its first word.
fn housekeeping(
    db_system: Option<&str>,
    operation: &str,
    query: Option<&str>,
    tables: &[String],
) -> bool {
    let Some(system) = db_system else {
        return false;
    };
    let mut words = operation.split(' ');
    if system == "redis" {
        words.next(); // `redis`
        let command = words.next().unwrap_or_default();
        return REDIS_HOUSEKEEPING.contains(&command) || redis::SUBSCRIBE.contains(&command);
    }
    let query = query.unwrap_or_default().trim().trim_end_matches(';');
    if !tables.is_empty() || query.contains(';') {
        return false;
    }
    let verb = words.next().unwrap_or_default().to_ascii_uppercase();
    SQL_HOUSEKEEPING.contains(&verb.as_str()) || (verb == "SELECT" && is_health_check(query))
}

/// `SELECT 1`, `SELECT ?`, `SELECT version()`, `SELECT current_schema()`:
/// what pools and drivers ask to see the connection works. A function of
/// the application's (`SELECT transfer_funds(?, ?)`) is not one.
fn is_health_check(query: &str) -> bool {
    let Some(rest) = query
        .get(..6)
        .filter(|v| v.eq_ignore_ascii_case("select"))
        .and(query.get(6..))
    else {
        return false;
    };
    let what = rest.trim().to_ascii_lowercase();
    matches!(
        what.as_str(),
        "1" | "?"
            | "version()"
            | "@@version"
            | "@@version_comment limit 1"
            | "@@version_comment limit ?"
    ) || what.starts_with("current_")
        && what
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_()".contains(&b))
}

/// A Redis subscription command sent without messaging attributes.
fn is_subscription(operation: &str) -> bool {
    operation
        .strip_prefix("redis ")
        .is_some_and(|c| c.ends_with("SUBSCRIBE"))
}

/// One OTLP span, with its resource's `service.name`.
pub fn map_span(service: &str, s: &OtlpSpan) -> Option<Span> {
    let trace_id = id::<16>(&s.trace_id)?;
    let span_id = id::<8>(&s.span_id)?;
    let parent = id::<8>(&s.parent_span_id);
    let a = &s.attributes;
    let kind = kind(s.kind);
    let name = |keys: &[&str]| attr(a, keys);
    let db_system = name(&[key::DB_SYSTEM_NAME, "db.system"]);
    let query = attr(a, &[key::DB_QUERY_TEXT, "db.statement"]);
    let namespace = name(&[key::DB_NAMESPACE, "db.name"]);
    let server = match (
        name(&[key::SERVER_ADDRESS, "net.peer.name"]),
        name(&[key::SERVER_PORT, "net.peer.port"]),
    ) {
        (Some(h), Some(p)) => Some(format!("{h}:{p}")),
        (h, _) => h,
    };
    let method = name(&[key::HTTP_REQUEST_METHOD, "http.method"]);
    let status_code: Option<u16> =
        attr(a, &[key::HTTP_RESPONSE_STATUS_CODE, "http.status_code"]).and_then(|c| c.parse().ok());
    let dialect = sql::Dialect::of_system(db_system.as_deref().unwrap_or_default());
    let parsed = query.as_deref().map(|q| sql::parse(q, dialect));
    let operation = if let Some(m) = &method {
        // A route as the app names it (`/orders/{id}`), else the path;
        // templated here either way: nothing else of a URL is kept.
        let path = attr(a, &[key::HTTP_ROUTE, key::URL_PATH, "http.target"])
            .map(|p| route(&p))
            .unwrap_or_else(|| "/".into());
        format!("{m} {path}")
    } else if let Some(st) = &parsed {
        let tables = st.qualified_tables(namespace.as_deref(), true);
        sql::operation(&st.verb, &tables)
    } else if db_system.as_deref() == Some("redis") {
        // A command, not a statement: `redis GET`.
        name(&[key::DB_OPERATION_NAME]).map_or_else(
            || words(&s.name),
            |op| format!("redis {}", op.to_ascii_uppercase()),
        )
    } else if db_system.is_some() {
        // A database call named by its statement: its verb and tables only.
        let st = sql::parse(&s.name, dialect);
        sql::operation(&st.verb, &st.qualified_tables(namespace.as_deref(), true))
    } else {
        words(&s.name)
    };
    let destination = name(&[key::MESSAGING_DESTINATION_NAME, "messaging.destination"]);
    let messaging = name(&[key::MESSAGING_SYSTEM]);
    let peer = if let Some(dest) = &destination {
        Peer::Topic {
            system: messaging.clone().unwrap_or_default(),
            server: server.clone().unwrap_or_default(),
            name: dest.clone(),
        }
    } else if let Some(system) = db_system.clone() {
        Peer::Database {
            system,
            server: server.clone().unwrap_or_default(),
            namespace: namespace.clone(),
        }
    } else if let Some(name) = name(&[key::PEER_SERVICE]) {
        Peer::Service { name }
    } else if let Some(address) = server {
        Peer::Address { address }
    } else {
        Peer::Unknown
    };
    let failed_status = s
        .status
        .as_ref()
        .is_some_and(|st| st.code == StatusCode::Error as i32);
    let outcome = attr(a, &[tangle_wire::OUTCOME])
        .and_then(|o| tangle_wire::Outcome::parse(&o))
        .or_else(|| attr(a, &["rpc.grpc.status_code"]).map(|c| tangle_wire::Outcome::of_grpc(&c)))
        .or_else(|| status_code.map(tangle_wire::Outcome::of_http))
        .or_else(|| {
            attr(a, &["db.response.status_code"])
                .filter(|_| failed_status)
                .map(|c| tangle_wire::Outcome::of_sql(&c))
        });
    // An error status with no code to judge it by is the callee's fault.
    let fault = match outcome {
        Some(o) => o == tangle_wire::Outcome::Fault,
        None => failed_status,
    };
    let (tables, writes) = match &parsed {
        Some(st) if db_system.is_some() => (
            st.qualified_tables(namespace.as_deref(), true),
            matches!(st.kind, sql::StatementKind::Write | sql::StatementKind::Ddl),
        ),
        _ => (Vec::new(), false),
    };
    let housekeeping = housekeeping(db_system.as_deref(), &operation, query.as_deref(), &tables)
        || (destination.is_none() && messaging.is_none() && is_subscription(&operation));
    Some(Span {
        trace_id,
        span_id,
        parent,
        service: service.to_owned(),
        kind,
        operation,
        start_ns: s.start_time_unix_nano,
        end_ns: s.end_time_unix_nano.max(s.start_time_unix_nano),
        fault,
        data_node: kind == SpanKind::Server && (db_system.is_some() || destination.is_some()),
        housekeeping,
        link_inferred: attr(a, &[tangle_wire::LINK_INFERRED]).as_deref() == Some("true"),
        link_lost: attr(a, &[tangle_wire::LINK_LOST]).as_deref() == Some("true"),
        peer,
        tables,
        writes,
        protocol: if attr(a, &[key::RPC_SYSTEM]).as_deref() == Some("grpc") {
            Some("grpc".into())
        } else if method.is_some() {
            Some("http".into())
        } else {
            db_system.clone().or(messaging)
        },
        join: join_key(a),
    })
}

/// Every span of an export request, its names at most `max_name` bytes:
/// what waits for assembly stays small whatever the export held.
pub fn map_request(
    req: &ExportTraceServiceRequest,
    stats: &mut MappingStats,
    max_name: usize,
) -> Vec<Span> {
    let mut out = Vec::new();
    for rs in &req.resource_spans {
        // Cut once, before it is copied into each span.
        let service = rs
            .resource
            .as_ref()
            .and_then(|r| attr(&r.attributes, &[key::SERVICE_NAME]))
            .map_or_else(
                || "unknown_service".into(),
                |mut s| {
                    cut(&mut s, max_name, &mut stats.names_cut);
                    s
                },
            );
        for ss in &rs.scope_spans {
            for s in &ss.spans {
                match map_span(&service, s) {
                    Some(mut span) => {
                        cut_span(&mut span, max_name, &mut stats.names_cut);
                        stats.accepted += 1;
                        out.push(span);
                    }
                    None => stats.bad_ids += 1,
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn housekeeping_is_what_touches_no_data() {
        let pg = Some("postgresql");
        let t = vec!["shop.cards".to_owned()];
        assert!(housekeeping(
            pg,
            "SET",
            Some("SET application_name = ?"),
            &[]
        ));
        assert!(housekeeping(pg, "SELECT", Some("SELECT 1"), &[]));
        assert!(housekeeping(pg, "BEGIN", Some("BEGIN"), &[]));
        // More than one statement, or a table named: a data access.
        assert!(!housekeeping(
            pg,
            "SET",
            Some("SET LOCAL x = ?; DELETE FROM cards"),
            &[]
        ));
        assert!(!housekeeping(
            pg,
            "BEGIN",
            Some("BEGIN; UPDATE cards SET n = ?; COMMIT"),
            &[]
        ));
        assert!(!housekeeping(pg, "SET", Some("SET x = ?"), &t));
        // An application's function is not a health check.
        assert!(!housekeeping(
            pg,
            "SELECT",
            Some("SELECT transfer_funds(?, ?)"),
            &[]
        ));
        assert!(!housekeeping(Some("redis"), "redis GET", None, &[]));
        assert!(housekeeping(
            Some("redis"),
            "redis CLIENT SETINFO",
            None,
            &[]
        ));
        assert!(!housekeeping(None, "GET /", None, &[]));
    }
}
