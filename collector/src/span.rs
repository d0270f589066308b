//! The collector's span: what it keeps of an OpenTelemetry span, from an
//! agent or from any instrumented application.

use serde::Serialize;

pub type TraceId = [u8; 16];
pub type SpanId = [u8; 8];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SpanKind {
    /// Handles an incoming request.
    Server,
    /// Makes an outgoing request.
    Client,
    /// Publishes a message (asynchronous: ends a chain).
    Producer,
    /// Handles a message.
    Consumer,
    Internal,
}

/// What a client or producer span calls, from its attributes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Peer {
    /// Another service (`peer.service`, or resolved from the address).
    Service { name: String },
    /// A database (`db.system.name` + `server.address` + `db.namespace`).
    Database {
        system: String,
        server: String,
        namespace: Option<String>,
    },
    /// A topic, channel or queue (`messaging.destination.name`).
    Topic {
        system: String,
        server: String,
        name: String,
    },
    /// Known by its address only.
    Address { address: String },
    /// Not said.
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Span {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent: Option<SpanId>,
    pub service: String,
    pub kind: SpanKind,
    /// The normalised operation (`GET /orders/{id}`, `SELECT orders.addresses`).
    pub operation: String,
    pub start_ns: u64,
    pub end_ns: u64,
    /// The callee failed (HTTP 5xx, gRPC `UNAVAILABLE`, a database out of
    /// resources); an error the caller caused (HTTP 4xx, a SQL syntax
    /// error, an unknown Redis command) is not a fault.
    pub fault: bool,
    /// A database's, cache's or broker's own server span: the data node's
    /// view of a call, never a service's entry.
    pub data_node: bool,
    /// Connection set-up or protocol housekeeping (a handshake, `PING`,
    /// `SET` of a session variable, a subscription): never a chain, a
    /// data access or a finding.
    pub housekeeping: bool,
    /// Its parent link was a heuristic's (`tangle.link.inferred`).
    pub link_inferred: bool,
    /// Made for a request of its caller, which one lost (`tangle.link.lost`).
    pub link_lost: bool,
    /// For client and producer spans: what is called.
    pub peer: Peer,
    /// Tables a database call touches (qualified), with whether it writes.
    pub tables: Vec<String>,
    pub writes: bool,
    /// The protocol of a call (`http`, `grpc`, a database or messaging system).
    pub protocol: Option<String>,
    /// The agent's key for joining the two ends of one call (`tangle.join.*`).
    #[serde(skip)]
    pub join: Option<tangle_wire::JoinKey>,
}

impl Span {
    /// Calls `f` on each of its names: service, operation, what it calls,
    /// tables, protocol.
    pub fn each_name(&mut self, mut f: impl FnMut(&mut String)) {
        f(&mut self.service);
        f(&mut self.operation);
        match &mut self.peer {
            Peer::Service { name } => f(name),
            Peer::Address { address } => f(address),
            Peer::Database {
                system,
                server,
                namespace,
            } => {
                f(system);
                f(server);
                if let Some(ns) = namespace {
                    f(ns);
                }
            }
            Peer::Topic {
                system,
                server,
                name,
            } => {
                f(system);
                f(server);
                f(name);
            }
            Peer::Unknown => {}
        }
        for t in &mut self.tables {
            f(t);
        }
        if let Some(p) = &mut self.protocol {
            f(p);
        }
    }

    /// A request/response call (client spans); publishes are not.
    pub fn is_sync_call(&self) -> bool {
        self.kind == SpanKind::Client
    }

    pub fn is_call(&self) -> bool {
        matches!(self.kind, SpanKind::Client | SpanKind::Producer)
    }

    /// Handles a request or a message for a service (a data node's own
    /// server span is not a service's entry).
    pub fn is_entry(&self) -> bool {
        matches!(self.kind, SpanKind::Server | SpanKind::Consumer) && !self.data_node
    }
}

/// What the map draws, by kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    /// Serves requests.
    Service,
    Database,
    Cache,
    /// A topic, channel or queue.
    Topic,
    /// Only calls (curl, a cron job, a browser behind an ingress).
    ExternalClient,
    /// Called, never seen serving: outside what the agents see.
    ExternalEndpoint,
}

impl NodeKind {
    /// A data store, by its `db.system.name`.
    pub fn of_store(system: &str) -> Self {
        match system {
            "redis" | "valkey" | "memcached" | "keydb" | "dragonfly" => Self::Cache,
            _ => Self::Database,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Service => "service",
            Self::Database => "database",
            Self::Cache => "cache",
            Self::Topic => "topic",
            Self::ExternalClient => "external_client",
            Self::ExternalEndpoint => "external_endpoint",
        }
    }
}

impl Peer {
    /// A topic's node name: `channel@server`, or `topic channel` when the
    /// server is not said: never a bare name, which a service may have.
    pub fn topic_name(name: &str, server: &str) -> String {
        if server.is_empty() {
            format!("topic {name}")
        } else {
            format!("{name}@{server}")
        }
    }
}
