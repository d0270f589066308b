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
//!   partners, as a count of exchanges would. With HTTP/2 it is the number
//!   of the stream's first frame. A span without a key (the number was not
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

/// Two spans with equal keys are the two ends of one call.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JoinKey {
    pub client: String,
    pub seq: u64,
}

impl JoinKey {
    /// The key of a span's attributes: the client address in one spelling
    /// (an IPv4-mapped IPv6 address as IPv4), so either end may send it
    /// as its socket gave it.
    pub fn new(client: &str, seq: u64) -> Self {
        let client = match client.parse::<std::net::SocketAddr>() {
            Ok(a) => std::net::SocketAddr::new(a.ip().to_canonical(), a.port()).to_string(),
            Err(_) => client.to_owned(),
        };
        Self { client, seq }
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
        assert_eq!(JoinKey::new("[::1]:4000", 7).client, "[::1]:4000");
        assert_eq!(JoinKey::new("garbage", 7).client, "garbage");
    }
}
