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
//!   address is not part of the key. SNAT (masquerading) rewrites the client
//!   address and defeats the join: such spans stay unjoined, counted.
//! - [`JOIN_SEQ`]: the exchange's place on the connection: 0 for the first
//!   request, 1 for the next (HTTP/1.x, PostgreSQL, MySQL and Redis answer
//!   in order, so both ends count the same); for HTTP/2 the stream id.
//! - [`JOIN_CONN_START`]: when the connection was opened, in seconds since
//!   the epoch (either side's view), to tell a reused client port apart; the
//!   collector only joins keys within its trace window anyway.
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
/// The exchange's place on the connection, or the HTTP/2 stream id.
pub const JOIN_SEQ: &str = "tangle.join.seq";
/// When the connection was opened, seconds since the epoch.
pub const JOIN_CONN_START: &str = "tangle.join.conn_start";
/// `false` for a publish.
pub const SYNC: &str = "tangle.sync";
/// `true` when the parent link is a heuristic's.
pub const LINK_INFERRED: &str = "tangle.link.inferred";

/// Two spans with equal keys are the two ends of one call.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JoinKey {
    pub client: String,
    pub seq: u64,
}
