//! OTLP spans into the collector's spans, by OpenTelemetry semantic
//! conventions (current and the older names instrumented apps still send).
//!
//! Mapping works on a borrowed [`SpanView`]: the protobuf intake reads it
//! in place from the request's bytes (`intake::decode`), the JSON intake
//! from a decoded request; either way one pass over a span's attributes
//! keeps only the values the mapping reads, and nothing else is copied.

use std::borrow::Cow;

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{AnyValue, KeyValue, any_value},
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MappingStats {
    pub accepted: u64,
    /// Trace or span ids of the wrong length (or all zero).
    pub bad_ids: u64,
    /// Names longer than `[limits] max_name_bytes`, cut to it.
    pub names_cut: u64,
}

/// An attribute's value as sent, borrowed from the request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value<'a> {
    Str(&'a str),
    Int(i64),
    Bool(bool),
    Double(f64),
    /// Bytes, an array, a list, or nothing: never read as text.
    Other,
}

impl<'a> Value<'a> {
    fn text(self) -> Option<Cow<'a, str>> {
        match self {
            Self::Str(s) => Some(Cow::Borrowed(s)),
            Self::Int(i) => Some(Cow::Owned(i.to_string())),
            Self::Bool(b) => Some(Cow::Borrowed(if b { "true" } else { "false" })),
            Self::Double(d) => Some(Cow::Owned(d.to_string())),
            Self::Other => None,
        }
    }

    fn of(v: Option<&'a AnyValue>) -> Self {
        match v.and_then(|v| v.value.as_ref()) {
            Some(any_value::Value::StringValue(s)) => Self::Str(s),
            Some(any_value::Value::IntValue(i)) => Self::Int(*i),
            Some(any_value::Value::BoolValue(b)) => Self::Bool(*b),
            Some(any_value::Value::DoubleValue(d)) => Self::Double(*d),
            _ => Self::Other,
        }
    }
}

/// The attributes the mapping reads: current names and the older ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    ServiceName,
    DbSystem,
    DbSystemOld,
    Query,
    QueryOld,
    Namespace,
    NamespaceOld,
    ServerAddress,
    NetPeerName,
    ServerPort,
    NetPeerPort,
    Method,
    MethodOld,
    StatusCode,
    StatusCodeOld,
    Route,
    UrlPath,
    HttpTarget,
    DbOperation,
    Destination,
    DestinationOld,
    MessagingSystem,
    PeerService,
    Outcome,
    GrpcStatus,
    DbStatus,
    LinkInferred,
    LinkLost,
    RpcSystem,
    JoinClient,
    JoinSeq,
}

const SLOTS: usize = Slot::JoinSeq as usize + 1;

impl Slot {
    /// The slot of attribute `name`, if the mapping reads it.
    pub fn of(name: &[u8]) -> Option<Self> {
        let name = std::str::from_utf8(name).ok()?;
        Some(match name {
            key::SERVICE_NAME => Self::ServiceName,
            key::DB_SYSTEM_NAME => Self::DbSystem,
            "db.system" => Self::DbSystemOld,
            key::DB_QUERY_TEXT => Self::Query,
            "db.statement" => Self::QueryOld,
            key::DB_NAMESPACE => Self::Namespace,
            "db.name" => Self::NamespaceOld,
            key::SERVER_ADDRESS => Self::ServerAddress,
            "net.peer.name" => Self::NetPeerName,
            key::SERVER_PORT => Self::ServerPort,
            "net.peer.port" => Self::NetPeerPort,
            key::HTTP_REQUEST_METHOD => Self::Method,
            "http.method" => Self::MethodOld,
            key::HTTP_RESPONSE_STATUS_CODE => Self::StatusCode,
            "http.status_code" => Self::StatusCodeOld,
            key::HTTP_ROUTE => Self::Route,
            key::URL_PATH => Self::UrlPath,
            "http.target" => Self::HttpTarget,
            key::DB_OPERATION_NAME => Self::DbOperation,
            key::MESSAGING_DESTINATION_NAME => Self::Destination,
            "messaging.destination" => Self::DestinationOld,
            key::MESSAGING_SYSTEM => Self::MessagingSystem,
            key::PEER_SERVICE => Self::PeerService,
            tangle_wire::OUTCOME => Self::Outcome,
            "rpc.grpc.status_code" => Self::GrpcStatus,
            "db.response.status_code" => Self::DbStatus,
            tangle_wire::LINK_INFERRED => Self::LinkInferred,
            tangle_wire::LINK_LOST => Self::LinkLost,
            key::RPC_SYSTEM => Self::RpcSystem,
            tangle_wire::JOIN_CLIENT => Self::JoinClient,
            tangle_wire::JOIN_SEQ => Self::JoinSeq,
            _ => return None,
        })
    }
}

/// The values of a span's (or a resource's) attributes that the mapping
/// reads: under each name, the first one sent.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Attrs<'a>([Option<Value<'a>>; SLOTS]);

impl<'a> Attrs<'a> {
    /// Whether `slot` still waits for its value (a later one is ignored).
    pub fn wants(&self, slot: Slot) -> bool {
        self.0.get(slot as usize).is_some_and(Option::is_none)
    }

    pub fn set(&mut self, slot: Slot, value: Value<'a>) {
        if let Some(v @ None) = self.0.get_mut(slot as usize) {
            *v = Some(value);
        }
    }

    /// From a decoded request's attributes.
    pub fn of(attrs: &'a [KeyValue]) -> Self {
        let mut out = Self::default();
        for kv in attrs {
            if let Some(slot) = Slot::of(kv.key.as_bytes()) {
                out.set(slot, Value::of(kv.value.as_ref()));
            }
        }
        out
    }

    /// The first of `slots` present, as text.
    fn text(&self, slots: &[Slot]) -> Option<Cow<'a, str>> {
        slots
            .iter()
            .find_map(|s| self.0.get(*s as usize).copied().flatten()?.text())
    }

    fn string(&self, slots: &[Slot]) -> Option<String> {
        self.text(slots).map(Cow::into_owned)
    }

    fn is_true(&self, slot: Slot) -> bool {
        self.text(&[slot]).as_deref() == Some("true")
    }
}

/// A span as sent, borrowed from the request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SpanView<'a> {
    pub trace_id: &'a [u8],
    pub span_id: &'a [u8],
    pub parent_span_id: &'a [u8],
    pub name: &'a str,
    pub kind: i32,
    pub start_ns: u64,
    pub end_ns: u64,
    /// Its status code is `ERROR`.
    pub failed: bool,
    pub attrs: Attrs<'a>,
}

impl<'a> SpanView<'a> {
    /// From a decoded request's span.
    pub fn of(s: &'a OtlpSpan) -> Self {
        Self {
            trace_id: &s.trace_id,
            span_id: &s.span_id,
            parent_span_id: &s.parent_span_id,
            name: &s.name,
            kind: s.kind,
            start_ns: s.start_time_unix_nano,
            end_ns: s.end_time_unix_nano,
            failed: s
                .status
                .as_ref()
                .is_some_and(|st| st.code == StatusCode::Error as i32),
            attrs: Attrs::of(&s.attributes),
        }
    }
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
fn join_key(a: &Attrs) -> Option<tangle_wire::JoinKey> {
    let client = a.text(&[Slot::JoinClient])?;
    let seq = a.text(&[Slot::JoinSeq])?.parse().ok()?;
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

/// One span, with its resource's `service.name`; the namespace a span
/// names is cut to `max_name` bytes before it qualifies each table (a long
/// one would be copied into every table name and the operation).
pub fn map_span(service: &str, s: &SpanView, max_name: usize) -> Option<Span> {
    use Slot as S;
    let trace_id = id::<16>(s.trace_id)?;
    let span_id = id::<8>(s.span_id)?;
    let parent = id::<8>(s.parent_span_id);
    let a = &s.attrs;
    let kind = kind(s.kind);
    let db_system = a.string(&[S::DbSystem, S::DbSystemOld]);
    let query = a.text(&[S::Query, S::QueryOld]);
    let namespace = a.string(&[S::Namespace, S::NamespaceOld]);
    // What qualifies each table: cut before it is copied into every one.
    let qualifier = namespace
        .as_deref()
        .and_then(|n| n.get(..n.floor_char_boundary(max_name)));
    let server = match (
        a.text(&[S::ServerAddress, S::NetPeerName]),
        a.text(&[S::ServerPort, S::NetPeerPort]),
    ) {
        (Some(h), Some(p)) => Some(format!("{h}:{p}")),
        (h, _) => h.map(Cow::into_owned),
    };
    let method = a.text(&[S::Method, S::MethodOld]);
    let status_code: Option<u16> = a
        .text(&[S::StatusCode, S::StatusCodeOld])
        .and_then(|c| c.parse().ok());
    let dialect = sql::Dialect::of_system(db_system.as_deref().unwrap_or_default());
    let parsed = query.as_deref().map(|q| sql::parse(q, dialect));
    let operation = if let Some(m) = &method {
        // A route as the app names it (`/orders/{id}`), else the path;
        // templated here either way: nothing else of a URL is kept.
        let path = a
            .text(&[S::Route, S::UrlPath, S::HttpTarget])
            .map(|p| route(&p))
            .unwrap_or_else(|| "/".into());
        format!("{m} {path}")
    } else if let Some(st) = &parsed {
        let tables = st.qualified_tables(qualifier, true);
        sql::operation(&st.verb, &tables)
    } else if db_system.as_deref() == Some("redis") {
        // A command, not a statement: `redis GET`.
        a.text(&[S::DbOperation]).map_or_else(
            || words(s.name),
            |op| format!("redis {}", op.to_ascii_uppercase()),
        )
    } else if db_system.is_some() {
        // A database call named by its statement: its verb and tables only.
        let st = sql::parse(s.name, dialect);
        sql::operation(&st.verb, &st.qualified_tables(qualifier, true))
    } else {
        words(s.name)
    };
    let destination = a.string(&[S::Destination, S::DestinationOld]);
    let messaging = a.string(&[S::MessagingSystem]);
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
    } else if let Some(name) = a.string(&[S::PeerService]) {
        Peer::Service { name }
    } else if let Some(address) = server {
        Peer::Address { address }
    } else {
        Peer::Unknown
    };
    let outcome = a
        .text(&[S::Outcome])
        .and_then(|o| tangle_wire::Outcome::parse(&o))
        .or_else(|| {
            a.text(&[S::GrpcStatus])
                .map(|c| tangle_wire::Outcome::of_grpc(&c))
        })
        .or_else(|| status_code.map(tangle_wire::Outcome::of_http))
        .or_else(|| {
            a.text(&[S::DbStatus])
                .filter(|_| s.failed)
                .map(|c| tangle_wire::Outcome::of_sql(&c))
        });
    // An error status with no code to judge it by is the callee's fault.
    let fault = match outcome {
        Some(o) => o == tangle_wire::Outcome::Fault,
        None => s.failed,
    };
    let (tables, writes) = match &parsed {
        Some(st) if db_system.is_some() => (
            st.qualified_tables(qualifier, true),
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
        start_ns: s.start_ns,
        end_ns: s.end_ns.max(s.start_ns),
        fault,
        data_node: kind == SpanKind::Server && (db_system.is_some() || destination.is_some()),
        housekeeping,
        link_inferred: a.is_true(S::LinkInferred),
        link_lost: a.is_true(S::LinkLost),
        peer,
        tables,
        writes,
        protocol: if a.text(&[S::RpcSystem]).as_deref() == Some("grpc") {
            Some("grpc".into())
        } else if method.is_some() {
            Some("http".into())
        } else {
            db_system.or(messaging)
        },
        join: join_key(a),
    })
}

/// A resource's `service.name`, cut to `max_name` bytes once, before it
/// is copied into each of its spans.
pub fn service_name(resource: &Attrs, stats: &mut MappingStats, max_name: usize) -> String {
    let mut service = resource
        .string(&[Slot::ServiceName])
        .unwrap_or_else(|| "unknown_service".into());
    cut(&mut service, max_name, &mut stats.names_cut);
    service
}

/// Maps one span into `out`, its names at most `max_name` bytes: what
/// waits for assembly stays small whatever the export held.
pub fn map_into(
    service: &str,
    s: &SpanView,
    out: &mut Vec<Span>,
    stats: &mut MappingStats,
    max_name: usize,
) {
    match map_span(service, s, max_name) {
        Some(mut span) => {
            cut_span(&mut span, max_name, &mut stats.names_cut);
            stats.accepted += 1;
            out.push(span);
        }
        None => stats.bad_ids += 1,
    }
}

/// Every span of a decoded export request (OTLP/JSON, or a test's).
pub fn map_request(
    req: &ExportTraceServiceRequest,
    stats: &mut MappingStats,
    max_name: usize,
) -> Vec<Span> {
    let mut out = Vec::new();
    for rs in &req.resource_spans {
        let resource = rs
            .resource
            .as_ref()
            .map(|r| Attrs::of(&r.attributes))
            .unwrap_or_default();
        let service = service_name(&resource, stats, max_name);
        for ss in &rs.scope_spans {
            for s in &ss.spans {
                map_into(&service, &SpanView::of(s), &mut out, stats, max_name);
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
