//! One span per exchange, as the capture thread makes it: fixed-size ids,
//! the exchange's own fields moved in, nothing formatted and no attribute
//! allocated. The export thread encodes it as OTLP ([`crate::export::otlp`]).
//!
//! Each exchange is one span: CLIENT for the process that made the call,
//! SERVER for the one that served it (PRODUCER for a publish, CONSUMER
//! for a message delivered), with OpenTelemetry semantic-convention
//! attributes and the join key (`tangle_wire`) that lets the collector put
//! the two ends of one call together.

use std::net::SocketAddr;

use tangle_common::Role;
use tangle_protocols::{Exchange, Fields, Status as ExStatus};
use tangle_wire::{Outcome, SpanKind};

use crate::connections::Connection;

pub type TraceId = [u8; 16];
pub type SpanId = [u8; 8];

/// A span and the process it belongs to (its OTLP resource).
#[derive(Debug)]
pub struct Outgoing {
    /// Resolved where the span is encoded, off the capture thread.
    pub identity: std::sync::Arc<crate::identity::IdentityCell>,
    pub span: SpanRecord,
}

/// A span before encoding. See the module docs.
#[derive(Debug)]
pub struct SpanRecord {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    /// Whether `trace_id` came with the request (`traceparent`, B3).
    pub propagated: bool,
    pub kind: SpanKind,
    /// Wall clock, nanoseconds since the epoch.
    pub start_ns: u64,
    pub end_ns: u64,
    /// The server end of the connection and the client end, as this
    /// process sees them.
    pub server: SocketAddr,
    pub client: SocketAddr,
    pub pid: u32,
    pub peer_service: Option<String>,
    /// The TCP sequence number of the request's first byte: with `client`,
    /// the join key.
    pub join_seq: Option<u32>,
    pub sync: bool,
    pub operation: String,
    pub fields: Fields,
    pub outcome: Option<Outcome>,
    /// The protocol's error code (the span's status message).
    pub error: Option<String>,
    /// The parent link is a heuristic's (`tangle.link.inferred`).
    pub link_inferred: bool,
    /// Made while its thread served a request that did not end in time
    /// (`tangle.link.lost`).
    pub link_lost: bool,
    /// Calls the agent linked under this server span.
    pub children: u32,
}

impl SpanRecord {
    /// The span of exchange `e` seen on `conn`; `clock_offset_ns` turns the
    /// kernel's monotonic clock into wall time.
    pub fn new(conn: &Connection, e: Exchange, clock_offset_ns: i128) -> Self {
        let wall = |ns: u64| (ns as i128 + clock_offset_ns).max(0) as u64;
        let client_role = conn.role == Role::Client;
        let (server, client) = if client_role {
            (conn.remote, conn.local)
        } else {
            (conn.local, conn.remote)
        };
        let outcome = outcome(&e);
        let pushed = matches!(&e.fields, Fields::Redis(r) if r.push);
        let kind = match (client_role, e.sync) {
            _ if pushed && client_role => SpanKind::Consumer,
            (true, true) => SpanKind::Client,
            (true, false) => SpanKind::Producer,
            (false, _) => SpanKind::Server,
        };
        // Propagated context: the request's trace, under the caller's span.
        let context = propagated(&e.fields);
        let (trace_id, parent_span_id) = match context {
            Some((t, p)) if !client_role => (t, Some(p)),
            Some((t, _)) => (t, None),
            None => (random_bytes(), None),
        };
        let error = match e.status {
            ExStatus::Error { code } => Some(code),
            _ => None,
        };
        Self {
            trace_id,
            span_id: random_bytes(),
            parent_span_id,
            propagated: context.is_some(),
            kind,
            start_ns: wall(e.start_ns),
            end_ns: wall(e.end_ns),
            server,
            client,
            pid: conn.pid,
            peer_service: conn.peer_service.clone(),
            join_seq: e.request_seq,
            sync: e.sync,
            operation: e.operation,
            fields: e.fields,
            outcome,
            error,
            link_inferred: false,
            link_lost: false,
            children: 0,
        }
    }

    /// The trace id the request carried, if it carried one.
    pub fn context(&self) -> Option<TraceId> {
        self.propagated.then_some(self.trace_id)
    }
}

/// Random ids: not cryptographic, unique enough for traces (splitmix64,
/// seeded once per thread from the hasher's random keys and the clock).
pub fn random_bytes<const N: usize>() -> [u8; N] {
    use std::hash::{BuildHasher as _, Hasher as _};
    thread_local! {
        static STATE: std::cell::Cell<u64> = std::cell::Cell::new({
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64),
            );
            h.write_u32(std::process::id());
            h.finish()
        });
    }
    let mut out = [0u8; N];
    STATE.with(|state| {
        for chunk in out.chunks_mut(8) {
            let x = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
            state.set(x);
            let mut z = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            for (o, b) in chunk.iter_mut().zip(z.to_le_bytes()) {
                *o = b;
            }
        }
    });
    out
}

/// Hex digits into `out`, exactly filling it.
fn hex_into(s: &str, out: &mut [u8]) -> Option<()> {
    if s.len() != out.len() * 2 {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(())
}

/// The trace id and parent span id the request carried: a W3C
/// `traceparent`, else B3 (single or multi header; a 64-bit trace id is
/// widened to 128 bits with leading zeros, as B3 specifies).
pub fn propagated(fields: &Fields) -> Option<(TraceId, SpanId)> {
    let Fields::Http(h) = fields else {
        return None;
    };
    let (mut t, mut p) = ([0u8; 16], [0u8; 8]);
    if let Some(tp) = h.trace.traceparent.as_deref() {
        let mut parts = tp.trim().split('-');
        let (_version, trace, parent) = (parts.next()?, parts.next()?, parts.next()?);
        hex_into(trace, &mut t)?;
        hex_into(parent, &mut p)?;
    } else {
        let mut parts = h.trace.b3.as_deref()?.trim().split('-');
        let (trace, span) = (parts.next()?, parts.next()?);
        match trace.len() {
            32 => hex_into(trace, &mut t)?,
            16 => hex_into(trace, &mut t[8..])?,
            _ => return None,
        }
        hex_into(span, &mut p)?;
    }
    (t != [0; 16]).then_some((t, p))
}

/// How the exchange ended: ok, the caller's error or the callee's fault,
/// by its protocol's codes (see `tangle_wire::Outcome`).
fn outcome(e: &Exchange) -> Option<Outcome> {
    match (&e.status, &e.fields) {
        (ExStatus::NoResponse, _) => None,
        (_, Fields::Http(h)) => match &h.grpc {
            Some(g) => Some(g.status.as_deref().map_or(Outcome::Fault, Outcome::of_grpc)),
            None => h.status.map(Outcome::of_http),
        },
        (ExStatus::Ok { .. }, _) => Some(Outcome::Ok),
        (ExStatus::Error { code }, Fields::Sql(_)) => Some(Outcome::of_sql(code)),
        (ExStatus::Error { code }, Fields::Redis(_)) => Some(Outcome::of_redis(code)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tangle_protocols::{HttpFields, Protocol};

    pub(crate) fn ex(start: u64, end: u64) -> Exchange {
        Exchange {
            protocol: Protocol::Http1,
            operation: "GET /".into(),
            status: ExStatus::Ok { code: None },
            sync: true,
            start_ns: start,
            request_seq: Some(start as u32),
            end_ns: end,
            request_size: 1,
            response_size: 1,
            truncated: false,
            fields: Fields::Http(HttpFields::default()),
        }
    }

    #[test]
    fn ids_differ() {
        let ids: std::collections::HashSet<[u8; 16]> =
            (0..10_000).map(|_| random_bytes::<16>()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(!ids.contains(&[0; 16]));
    }

    #[test]
    fn b3_single_and_multi_header_context() {
        let mut e = ex(0, 1);
        let Fields::Http(h) = &mut e.fields else {
            unreachable!()
        };
        for (name, value) in [
            ("x-b3-spanid", "00f067aa0ba902b7"),
            ("x-b3-traceid", "a3ce929d0e0e4736"),
        ] {
            assert!(h.trace.add_b3_header(name, value));
        }
        let (t, p) = propagated(&e.fields).expect("multi-header B3");
        assert_eq!(&t[..8], &[0; 8], "64-bit trace id widened");
        assert_eq!(t[8], 0xa3);
        assert_eq!(p[0], 0x00);
        assert_eq!(p[7], 0xb7);
        let Fields::Http(h) = &mut e.fields else {
            unreachable!()
        };
        h.trace.b3 = None;
        assert!(h.trace.add_b3_header(
            "b3",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90"
        ));
        let (t, p) = propagated(&e.fields).expect("single-header B3");
        assert_eq!((t[0], t[15], p[0]), (0x80, 0xf7, 0xe4));
        let Fields::Http(h) = &mut e.fields else {
            unreachable!()
        };
        h.trace.b3 = Some("1".into());
        assert_eq!(
            propagated(&e.fields),
            None,
            "sampling-only B3 has no context"
        );
    }
}
