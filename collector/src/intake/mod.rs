//! The open door: OTLP in, over gRPC and HTTP, from anything that reaches
//! the collector. Every step costs the sender before it costs the
//! collector, and every refusal is counted:
//!
//! 1. [`tangle_listener`]: connections (a limit, TLS, header and idle deadlines);
//! 2. [`auth`]: the token, from the headers, before the body is read;
//! 3. a slot among the requests in progress (busy: refused, retry later);
//! 4. the body, up to a size, within a time;
//! 5. [`decode`]: sized before decoding, decoded off the async threads,
//!    a few at a time;
//! 6. the spans mapped and queued for assembly, within a bound.

pub mod auth;
pub mod decode;
pub mod grpc;
pub mod http;
pub mod otlp;
pub mod tls;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    time::Duration,
};

use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use self::otlp::{MappingStats, map_request};
use crate::span::Span;

/// What the receivers take, and how long they wait. Every refusal is
/// counted in `tangle_intake_refused_total{receiver, reason}` (the reason
/// named below) and every connection's end in
/// `tangle_intake_connections_total{receiver, outcome}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IntakeLimits {
    /// Connections open at once on each listener (the two receivers and the
    /// pages); more are closed at once (outcome `over_limit`).
    pub max_connections: usize,
    /// Connections open at once from one IP address on each listener; more
    /// are closed at once (outcome `over_limit`); 0: no limit of its own.
    /// Agents behind one address (SNAT, or a demo on loopback) share it.
    pub max_connections_per_address: usize,
    /// Bytes of one request's body as sent; a larger one is refused
    /// (`too_large`: gRPC `OUT_OF_RANGE`, HTTP 413).
    pub max_request_bytes: usize,
    /// MiB that decoding one request may take, reckoned before it is
    /// decoded (a protobuf grows when decoded); a request past it is
    /// refused (`too_large`: gRPC `RESOURCE_EXHAUSTED`, HTTP 413), and
    /// Tangle's agents send it again in halves.
    pub max_request_memory_mib: usize,
    /// Requests read and decoded at once; past it requests are refused
    /// (`busy`: gRPC `UNAVAILABLE`, HTTP 429), and OTLP senders retry.
    pub max_requests_in_progress: usize,
    /// Spans received and waiting to be assembled; past it requests are
    /// refused (`busy`), and a request with more spans than this alone
    /// (`too_large`).
    pub max_queued_spans: usize,
    /// Milliseconds from connecting to the first request's complete
    /// headers, TLS handshake included (outcome `header_timeout`).
    pub header_timeout_ms: u64,
    /// Milliseconds to receive a request's body (`timed_out`).
    pub request_timeout_ms: u64,
    /// Milliseconds a connection may send nothing (between requests, or
    /// within a later HTTP/1 request's headers) before it is closed
    /// (outcome `idle_closed`).
    pub idle_timeout_ms: u64,
    /// gRPC (HTTP/2) streams open at once on one connection; more wait.
    pub max_streams: u32,
    /// Bytes of one request's headers (at least 1024); a request with more
    /// ends its connection (outcome `errors`).
    pub max_header_bytes: u32,
}

impl Default for IntakeLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_connections_per_address: 256,
            max_request_bytes: 4 << 20,
            max_request_memory_mib: 64,
            max_requests_in_progress: 16,
            max_queued_spans: 200_000,
            header_timeout_ms: 10_000,
            request_timeout_ms: 30_000,
            idle_timeout_ms: 120_000,
            max_streams: 100,
            max_header_bytes: 64 * 1024,
        }
    }
}

impl IntakeLimits {
    pub fn conn_limits(&self) -> tangle_listener::ConnLimits {
        tangle_listener::ConnLimits {
            max_connections: self.max_connections.max(1),
            max_connections_per_address: self.max_connections_per_address,
            header_timeout: Duration::from_millis(self.header_timeout_ms.max(1)),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms.max(1)),
            max_streams: self.max_streams.max(1),
            max_header_bytes: self.max_header_bytes.max(1024),
        }
    }
}

/// Why a request (or a connection) was refused: the `reason` label of
/// `tangle_intake_refused_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// A missing or wrong token.
    Unauthenticated,
    /// A body past `max_request_bytes`, or one whose decoding would take
    /// past `max_request_memory_mib`, or more spans than are queued.
    TooLarge,
    /// Not OTLP, or broken on the way.
    Malformed,
    /// Valid, but in a form the collector does not take (a compressed body).
    Unsupported,
    /// The collector at a limit (requests in progress, queued spans): the
    /// sender retries.
    Busy,
    /// The body was not received in time.
    TimedOut,
    /// A request for something else than a trace export.
    NotFound,
}

impl Reason {
    const ALL: [Reason; 7] = [
        Reason::Unauthenticated,
        Reason::TooLarge,
        Reason::Malformed,
        Reason::Unsupported,
        Reason::Busy,
        Reason::TimedOut,
        Reason::NotFound,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Reason::Unauthenticated => "unauthenticated",
            Reason::TooLarge => "too_large",
            Reason::Malformed => "malformed",
            Reason::Unsupported => "unsupported",
            Reason::Busy => "busy",
            Reason::TimedOut => "timed_out",
            Reason::NotFound => "not_found",
        }
    }
}

/// One receiver's requests, counted by how they ended; each kind of
/// refusal also logged, at most every 30 seconds.
#[derive(Debug)]
pub struct ReceiverStats {
    /// The receiver, as logs name it.
    name: &'static str,
    pub conns: Arc<tangle_listener::ConnStats>,
    /// Requests taken (their spans queued).
    pub accepted: AtomicU64,
    refused: [AtomicU64; Reason::ALL.len()],
    warned: [tangle_throttle::Throttled; Reason::ALL.len()],
}

impl ReceiverStats {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            conns: Default::default(),
            accepted: AtomicU64::new(0),
            refused: Default::default(),
            warned: Default::default(),
        }
    }

    /// Counts a refusal of a request from `peer`, and says why in the log
    /// now and then.
    pub fn refuse(&self, peer: Option<&tangle_listener::Peer>, reason: Reason, detail: &str) {
        let i = reason as usize;
        if let (Some(n), Some(warned)) = (self.refused.get(i), self.warned.get(i)) {
            n.fetch_add(1, Ordering::Relaxed);
            let from = peer.map_or_else(String::new, |p| format!(" from {}", p.0));
            tangle_throttle::warn!(
                warned,
                "{}: refused a request{from} ({}): {detail}",
                self.name,
                reason.label()
            );
        }
    }

    pub fn refused(&self, reason: Reason) -> u64 {
        self.refused
            .get(reason as usize)
            .map_or(0, |n| n.load(Ordering::Relaxed))
    }

    /// (reason, count) of every refusal, for the metrics.
    pub fn refusals(&self) -> [(&'static str, u64); Reason::ALL.len() + 1] {
        let mut all = [(
            "connection_limit",
            self.conns.over_limit.load(Ordering::Relaxed),
        ); Reason::ALL.len() + 1];
        for (slot, reason) in all.iter_mut().zip(Reason::ALL) {
            *slot = (reason.label(), self.refused(reason));
        }
        all
    }
}

/// Both receivers' counters, and the pages'.
#[derive(Debug)]
pub struct IntakeStats {
    pub grpc: ReceiverStats,
    pub http: ReceiverStats,
    pub pages: Arc<tangle_listener::ConnStats>,
    /// Requests for the map or the API without the `[api]` token.
    pub pages_unauthenticated: std::sync::atomic::AtomicU64,
}

impl Default for IntakeStats {
    fn default() -> Self {
        Self {
            grpc: ReceiverStats::new("OTLP/gRPC receiver"),
            http: ReceiverStats::new("OTLP/HTTP receiver"),
            pages: Default::default(),
            pages_unauthenticated: Default::default(),
        }
    }
}

/// Mapped spans on their way to assembly, holding their place in the queue.
pub struct Batch {
    /// In chunks of at most [`decode::CHUNK`].
    pub spans: Vec<Vec<Span>>,
    pub mapping: MappingStats,
    _queued: OwnedSemaphorePermit,
}

/// Why the intake did not take a request's body, and what to tell the sender.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    TooLarge(String),
    Malformed(String),
    Busy(&'static str),
}

impl Refusal {
    pub fn reason(&self) -> Reason {
        match self {
            Refusal::TooLarge(_) => Reason::TooLarge,
            Refusal::Malformed(_) => Reason::Malformed,
            Refusal::Busy(_) => Reason::Busy,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Refusal::TooLarge(m) | Refusal::Malformed(m) => m,
            Refusal::Busy(m) => m,
        }
    }
}

/// What both receivers share: the token, the limits, and the way to the
/// ingest thread.
pub struct Intake {
    pub auth: auth::Auth,
    pub limits: IntakeLimits,
    /// Bytes of one name kept from a span (`[limits] max_name_bytes`).
    max_name: usize,
    pub stats: Arc<IntakeStats>,
    in_progress: Arc<Semaphore>,
    decoding: Arc<Semaphore>,
    queued: Arc<Semaphore>,
    to_ingest: mpsc::Sender<Batch>,
}

impl Intake {
    pub fn new(
        auth: auth::Auth,
        limits: IntakeLimits,
        max_name: usize,
        stats: Arc<IntakeStats>,
        to_ingest: mpsc::Sender<Batch>,
    ) -> Self {
        Self {
            auth,
            limits,
            max_name,
            stats,
            in_progress: Arc::new(Semaphore::new(limits.max_requests_in_progress.max(1))),
            // Decoding takes CPU and memory: a couple at a time.
            decoding: Arc::new(Semaphore::new(2)),
            queued: Arc::new(Semaphore::new(
                limits.max_queued_spans.clamp(1, Semaphore::MAX_PERMITS),
            )),
            to_ingest,
        }
    }

    /// A place among the requests in progress, before a body is read; none
    /// when the collector is at its limit.
    pub fn admit(&self) -> Option<OwnedSemaphorePermit> {
        self.in_progress.clone().try_acquire_owned().ok()
    }

    /// Spans waiting for assembly now.
    pub fn queued_spans(&self) -> usize {
        self.limits
            .max_queued_spans
            .saturating_sub(self.queued.available_permits())
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.limits.request_timeout_ms.max(1))
    }

    /// One export's body: sized, decoded and mapped off the async threads,
    /// then queued for assembly. Returns the spans taken.
    pub async fn take(&self, body: bytes::Bytes, json: bool) -> Result<usize, Refusal> {
        let limit = self.limits.max_request_memory_mib.saturating_mul(1 << 20);
        let max_name = self.max_name;
        // The turn goes with the decoding: a request that times out while
        // it is decoded still holds it until the decoding is done.
        let Ok(turn) = self.decoding.clone().acquire_owned().await else {
            return Err(Refusal::Busy("the collector is stopping"));
        };
        let decoded = tokio::task::spawn_blocking(move || {
            let _turn = turn;
            if json {
                let request = decode::decode_json(&body, limit)?;
                let mut mapping = MappingStats::default();
                let spans = map_request(&request, &mut mapping, max_name);
                Ok((vec![spans], mapping))
            } else {
                decode::decode_protobuf(&body, limit, max_name)
            }
        })
        .await;
        let (spans, mapping) = match decoded {
            Ok(Ok(done)) => done,
            Ok(Err(decode::DecodeError::TooLarge { estimate, limit })) => {
                return Err(Refusal::TooLarge(
                    decode::DecodeError::TooLarge { estimate, limit }.to_string(),
                ));
            }
            Ok(Err(e)) => return Err(Refusal::Malformed(e.to_string())),
            Err(_) => {
                return Err(Refusal::Malformed(
                    "the request could not be decoded".into(),
                ));
            }
        };
        let n = spans.iter().map(Vec::len).sum::<usize>();
        if n > self.limits.max_queued_spans {
            return Err(Refusal::TooLarge(format!(
                "request too large: {n} spans, more than the {} the collector queues",
                self.limits.max_queued_spans
            )));
        }
        let permits = u32::try_from(n).unwrap_or(u32::MAX);
        let Ok(queued) = self.queued.clone().try_acquire_many_owned(permits) else {
            return Err(Refusal::Busy(
                "the collector is behind ([intake] max_queued_spans waiting): retry later",
            ));
        };
        self.to_ingest
            .send(Batch {
                spans,
                mapping,
                _queued: queued,
            })
            .map_err(|_| Refusal::Busy("the collector is stopping"))?;
        Ok(n)
    }
}
