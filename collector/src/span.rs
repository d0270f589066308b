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
    pub error: bool,
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
    /// A request/response call (client spans); publishes are not.
    pub fn is_sync_call(&self) -> bool {
        self.kind == SpanKind::Client
    }

    pub fn is_call(&self) -> bool {
        matches!(self.kind, SpanKind::Client | SpanKind::Producer)
    }

    pub fn is_entry(&self) -> bool {
        matches!(self.kind, SpanKind::Server | SpanKind::Consumer)
    }
}
