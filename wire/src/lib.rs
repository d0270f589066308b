//! What the agent and the collector agree on beyond OTLP itself. One crate,
//! used by both, so the two sides cannot drift apart.
//!
//! # Joining the two ends of one call (cross-node)
//!
//! An agent sees a call from one end only: the client's agent makes a
//! CLIENT span, the server's agent (often on another node) a SERVER span,
//! and without propagated trace context the two land in different traces.
//! Both spans carry a **join key**, and the collector links the server span
//! under the client span (and moves the server's trace into the client's):
//!
//! - [`JOIN_CLIENT`]: the client end of the TCP connection, `ip:port`, as
//!   each side sees it. The client's agent writes its local address; the
//!   server's agent writes the connection's remote address. This survives
//!   DNAT (a Kubernetes ClusterIP rewrites the *server* address the client
//!   dialled to a pod address, never the client's), which is why the server
//!   address is not part of the key. An IPv4-mapped IPv6 address (a
//!   dual-stack socket, as Java's) is written as the IPv4 address, as the
//!   other end says it. SNAT (masquerading) rewrites the client address and
//!   defeats the join: such spans stay unjoined, counted.
//! - [`JOIN_SEQ`]: the TCP sequence number of the request's first byte.
//!   Both ends of a connection number its bytes alike (the client's
//!   `write_seq` when it writes the request, the server's `copied_seq`
//!   when it reads it), DNAT leaves the numbers alone, and the initial
//!   number is random per connection. So the key does not collide where an
//!   address and a count would: Linux gives one local port to connections
//!   to different servers at once (only the 4-tuple must be unique), reuses
//!   ports within seconds, and every client on loopback or in a pod shares
//!   one address. One end that missed an exchange (a lost event) leaves
//!   that exchange unjoined; it never shifts the others onto wrong
//!   partners, as a count of exchanges would. With HTTP/2 it is the TCP
//!   sequence number of the first byte of the stream's first frame. A span without a key (the number was not
//!   read) is not joined.
//!
//! # Marks
//!
//! - [`SYNC`]: `false` for a publish (Redis `PUBLISH`, a broker), which ends
//!   a chain; request/response protocols are synchronous.
//! - [`LINK_INFERRED`]: `true` when the agent linked an outbound call to the
//!   inbound request by a heuristic (async runtimes), not exactly (context
//!   headers, or the thread rule): findings built on it say so.

/// The client end of the connection, `ip:port` (see the crate docs).
pub const JOIN_CLIENT: &str = "tangle.join.client";
/// The TCP sequence number of the request's first byte.
pub const JOIN_SEQ: &str = "tangle.join.seq";
/// `false` for a publish.
pub const SYNC: &str = "tangle.sync";
/// `true` when the parent link is a heuristic's.
pub const LINK_INFERRED: &str = "tangle.link.inferred";
/// `true` for a call made while its thread served a request, sent without
/// a parent because that request did not end within the agent's hold:
/// the call has a caller request, not known which. Its callee is not an
/// entry, and it starts no chain.
pub const LINK_LOST: &str = "tangle.link.lost";

/// Two spans with equal keys are the two ends of one call. Fixed-size:
/// a collector keeps one per call in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JoinKey {
    pub client: std::net::SocketAddr,
    pub seq: u32,
}

impl JoinKey {
    /// The key of a span's attributes: the client address in one spelling
    /// (an IPv4-mapped IPv6 address as IPv4), so either end may send it
    /// as its socket gave it. None for what is not an address and a
    /// 32-bit sequence number.
    pub fn new(client: &str, seq: u64) -> Option<Self> {
        let a = client.parse::<std::net::SocketAddr>().ok()?;
        Some(Self {
            client: std::net::SocketAddr::new(a.ip().to_canonical(), a.port()),
            seq: u32::try_from(seq).ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dual_stack_client_is_its_ipv4_address() {
        assert_eq!(
            JoinKey::new("[::ffff:10.1.2.3]:4000", 7),
            JoinKey::new("10.1.2.3:4000", 7)
        );
        assert!(JoinKey::new("10.1.2.3:4000", 7).is_some());
        assert_eq!(
            JoinKey::new("[::1]:4000", 7).map(|k| k.client.to_string()),
            Some("[::1]:4000".into())
        );
        assert_eq!(JoinKey::new("garbage", 7), None);
        assert_eq!(JoinKey::new("10.1.2.3:4000", 1 << 32), None);
    }
}

/// How an exchange ended, as availability counts it: `ok`, `error` (the
/// caller's: HTTP 4xx, a SQL syntax error, an unknown Redis command) or
/// `fault` (the callee's: HTTP 5xx, `UNAVAILABLE`, a server out of
/// resources). Only faults make a callee unavailable.
pub const OUTCOME: &str = "tangle.outcome";

/// See [`OUTCOME`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    Ok,
    /// The caller's error: the callee answered as it should.
    Error,
    /// The callee failed.
    Fault,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
            Self::Fault => "fault",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ok" => Some(Self::Ok),
            "error" => Some(Self::Error),
            "fault" => Some(Self::Fault),
            _ => None,
        }
    }

    /// An HTTP status: 5xx is the server's fault, 4xx the client's error.
    pub fn of_http(status: u16) -> Self {
        match status {
            500.. => Self::Fault,
            400..=499 => Self::Error,
            _ => Self::Ok,
        }
    }

    /// A gRPC status code (`grpc-status`).
    pub fn of_grpc(code: &str) -> Self {
        match code.trim().parse::<u32>() {
            Ok(0) => Self::Ok,
            // CANCELLED, INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS,
            // PERMISSION_DENIED, FAILED_PRECONDITION, OUT_OF_RANGE,
            // UNAUTHENTICATED: the request was wrong, the server right.
            Ok(1 | 3 | 5 | 6 | 7 | 9 | 11 | 16) => Self::Error,
            // UNKNOWN, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED,
            // UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS, and codes
            // not in the list.
            _ => Self::Fault,
        }
    }

    /// A database error: a SQLSTATE (five characters: its class is the
    /// first two) or a MySQL error number.
    pub fn of_sql(code: &str) -> Self {
        let code = code.trim();
        if code.len() == 5 && code.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return match code.get(..2).unwrap_or_default() {
                "00" | "01" | "02" => Self::Ok,
                // The client's own protocol error, or its statement
                // cancelled by its own statement_timeout.
                _ if code == "08P01" || code == "57014" => Self::Error,
                // Connection exceptions, transaction rollback (deadlock,
                // serialisation), insufficient resources, operator
                // intervention, system and internal errors, and MySQL's
                // catch-all.
                "08" | "40" | "53" | "57" | "58" | "XX" | "HY" => Self::Fault,
                // Syntax and access rule violations, data exceptions,
                // integrity constraints, invalid authorisation, ...
                _ => Self::Error,
            };
        }
        match code.parse::<u32>() {
            // Out of memory, too many connections, shutdown, lock wait
            // timeout, deadlock, and the client library's lost-server codes.
            Ok(1037 | 1038 | 1040 | 1053 | 1205 | 1213 | 2002..=2013) => Self::Fault,
            Ok(_) => Self::Error,
            Err(_) => Self::Fault,
        }
    }

    /// A Redis error reply, by its prefix (`ERR`, `WRONGTYPE`, `LOADING`).
    pub fn of_redis(prefix: &str) -> Self {
        match prefix.trim() {
            // The server cannot serve now: loading, busy with a script,
            // out of memory, a replica cut off, a cluster down.
            "LOADING" | "BUSY" | "OOM" | "MASTERDOWN" | "CLUSTERDOWN" | "TRYAGAIN" | "MISCONF"
            | "NOREPLICAS" => Self::Fault,
            // ERR (an unknown command or wrong arguments), WRONGTYPE,
            // NOAUTH, NOPERM, WRONGPASS, NOSCRIPT, EXECABORT, MOVED/ASK.
            _ => Self::Error,
        }
    }
}

#[cfg(test)]
mod outcome_tests {
    use super::Outcome::{self, *};

    #[test]
    fn caller_errors_are_not_faults() {
        assert_eq!(Outcome::of_http(404), Error);
        assert_eq!(Outcome::of_http(503), Fault);
        assert_eq!(Outcome::of_http(204), Ok);
        assert_eq!(Outcome::of_grpc("3"), Error);
        assert_eq!(Outcome::of_grpc("14"), Fault);
        assert_eq!(Outcome::of_grpc("0"), Ok);
        assert_eq!(Outcome::of_grpc("junk"), Fault);
        assert_eq!(Outcome::of_sql("42601"), Error, "syntax error");
        assert_eq!(Outcome::of_sql("53300"), Fault, "too many connections");
        assert_eq!(Outcome::of_sql("1064"), Error, "MySQL syntax error");
        assert_eq!(
            Outcome::of_sql("1040"),
            Fault,
            "MySQL: too many connections"
        );
        assert_eq!(Outcome::of_redis("ERR"), Error, "unknown command");
        assert_eq!(Outcome::of_redis("LOADING"), Fault);
        for o in [Ok, Error, Fault] {
            assert_eq!(Outcome::parse(o.as_str()), Some(o));
        }
    }
}

/// The OpenTelemetry semantic-convention attribute names Tangle writes and
/// reads (the collector also reads older spellings of some).
pub mod attr {
    pub const SERVICE_NAME: &str = "service.name";
    pub const SERVER_ADDRESS: &str = "server.address";
    pub const SERVER_PORT: &str = "server.port";
    pub const CLIENT_ADDRESS: &str = "client.address";
    pub const CLIENT_PORT: &str = "client.port";
    pub const NETWORK_TRANSPORT: &str = "network.transport";
    pub const PROCESS_PID: &str = "process.pid";
    pub const PEER_SERVICE: &str = "peer.service";
    pub const HTTP_REQUEST_METHOD: &str = "http.request.method";
    pub const URL_PATH: &str = "url.path";
    pub const HTTP_ROUTE: &str = "http.route";
    pub const HTTP_RESPONSE_STATUS_CODE: &str = "http.response.status_code";
    pub const RPC_SYSTEM: &str = "rpc.system";
    pub const RPC_SERVICE: &str = "rpc.service";
    pub const RPC_METHOD: &str = "rpc.method";
    pub const DB_SYSTEM_NAME: &str = "db.system.name";
    pub const DB_NAMESPACE: &str = "db.namespace";
    pub const DB_QUERY_TEXT: &str = "db.query.text";
    pub const DB_OPERATION_NAME: &str = "db.operation.name";
    pub const MESSAGING_SYSTEM: &str = "messaging.system";
    pub const MESSAGING_DESTINATION_NAME: &str = "messaging.destination.name";
    pub const MESSAGING_OPERATION_TYPE: &str = "messaging.operation.type";
    /// How many calls the agent linked under a server span.
    pub const TANGLE_CHILDREN: &str = "tangle.children";
}

/// OTLP's span kinds, as `Span.kind` numbers them.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SpanKind {
    Unspecified = 0,
    Internal = 1,
    /// Handles an incoming request.
    Server = 2,
    /// Makes an outgoing request.
    Client = 3,
    /// Publishes a message (asynchronous).
    Producer = 4,
    /// Handles a message.
    Consumer = 5,
}

impl SpanKind {
    pub fn from_i32(v: i32) -> Self {
        match v {
            1 => Self::Internal,
            2 => Self::Server,
            3 => Self::Client,
            4 => Self::Producer,
            5 => Self::Consumer,
            _ => Self::Unspecified,
        }
    }
}
