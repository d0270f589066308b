//! The open door: OTLP in, over gRPC and HTTP, from anything that reaches
//! the collector. Every step costs the sender before it costs the
//! collector, and every refusal is counted:
//!
//! 1. [`listener`]: connections (a limit, TLS, header and idle deadlines);
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
pub mod listener;

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

use crate::{
    otlp::{MappingStats, map_request},
    span::Span,
};

/// What the receivers take, and how long they wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IntakeLimits {
    /// Connections open at once on each receiver; more are closed at once.
    pub max_connections: usize,
    /// Bytes of one request's body as sent; a larger one is refused as too large.
    pub max_request_bytes: usize,
    /// MiB that decoding one request may take, reckoned before it is
    /// decoded (a protobuf grows when decoded); a request past it is
    /// refused as too large (agents then send it in halves).
    pub max_request_memory_mib: usize,
    /// Requests read and decoded at once; past it requests are refused as
    /// busy (gRPC `RESOURCE_EXHAUSTED`, HTTP 429), and senders retry.
    pub max_requests_in_progress: usize,
    /// Spans received and waiting to be assembled; past it, refused as busy.
    pub max_queued_spans: usize,
    /// Milliseconds from connecting to the first request's headers (TLS
    /// included), and for HTTP/1 for each request's headers.
    pub header_timeout_ms: u64,
    /// Milliseconds to receive a request's body.
    pub request_timeout_ms: u64,
    /// Milliseconds a connection may send nothing before it is closed.
    pub idle_timeout_ms: u64,
    /// gRPC (HTTP/2) streams open at once on one connection.
    pub max_streams: u32,
    /// Bytes of one request's headers.
    pub max_header_bytes: u32,
}

impl Default for IntakeLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
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
    pub fn conn_limits(&self) -> listener::ConnLimits {
        listener::ConnLimits {
            max_connections: self.max_connections.max(1),
            header_timeout: Duration::from_millis(self.header_timeout_ms.max(1)),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms.max(1)),
            max_streams: self.max_streams.max(1),
            max_header_bytes: self.max_header_bytes.max(1024),
        }
    }
}

/// One receiver's requests, counted by how they ended.
#[derive(Debug, Default)]
pub struct ReceiverStats {
    pub conns: Arc<listener::ConnStats>,
    /// Requests taken (their spans queued).
    pub accepted: AtomicU64,
    pub unauthenticated: AtomicU64,
    pub too_large: AtomicU64,
    pub malformed: AtomicU64,
    /// Refused while the collector was at a limit (requests in progress,
    /// queued spans): the sender retries.
    pub busy: AtomicU64,
    /// Bodies not received in time.
    pub timed_out: AtomicU64,
    /// Requests for something else than a trace export.
    pub not_found: AtomicU64,
}

impl ReceiverStats {
    /// (reason, count) of every refusal, for the metrics.
    pub fn refusals(&self) -> [(&'static str, u64); 7] {
        let c = &self.conns;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            ("unauthenticated", get(&self.unauthenticated)),
            ("too_large", get(&self.too_large)),
            ("malformed", get(&self.malformed)),
            ("busy", get(&self.busy)),
            ("timed_out", get(&self.timed_out)),
            ("not_found", get(&self.not_found)),
            ("connection_limit", get(&c.over_limit)),
        ]
    }
}

/// Both receivers' counters, and the pages'.
#[derive(Debug, Default)]
pub struct IntakeStats {
    pub grpc: ReceiverStats,
    pub http: ReceiverStats,
    pub pages: Arc<listener::ConnStats>,
}

/// Mapped spans on their way to assembly, holding their place in the queue.
pub struct Batch {
    pub spans: Vec<Span>,
    pub mapping: MappingStats,
    _queued: OwnedSemaphorePermit,
}

/// Why a request was not taken.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    TooLarge(String),
    Malformed(String),
    Busy(&'static str),
}

/// What both receivers share: the token, the limits, and the way to the
/// ingest thread.
pub struct Intake {
    pub auth: auth::Auth,
    pub limits: IntakeLimits,
    pub stats: Arc<IntakeStats>,
    in_progress: Arc<Semaphore>,
    decoding: Semaphore,
    queued: Arc<Semaphore>,
    to_ingest: mpsc::Sender<Batch>,
}

impl Intake {
    pub fn new(
        auth: auth::Auth,
        limits: IntakeLimits,
        stats: Arc<IntakeStats>,
        to_ingest: mpsc::Sender<Batch>,
    ) -> Self {
        Self {
            auth,
            limits,
            stats,
            in_progress: Arc::new(Semaphore::new(limits.max_requests_in_progress.max(1))),
            // Decoding takes CPU and memory: a couple at a time.
            decoding: Semaphore::new(2),
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
        let decoded = {
            let _turn = self.decoding.acquire().await;
            tokio::task::spawn_blocking(move || {
                let request = if json {
                    decode::decode_json(&body, limit)
                } else {
                    decode::decode_protobuf(&body, limit)
                }?;
                let mut mapping = MappingStats::default();
                let spans = map_request(&request, &mut mapping);
                Ok::<_, decode::DecodeError>((spans, mapping))
            })
            .await
        };
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
        let n = spans.len();
        if n > self.limits.max_queued_spans {
            return Err(Refusal::TooLarge(format!(
                "request too large: {n} spans, more than the {} the collector queues",
                self.limits.max_queued_spans
            )));
        }
        let permits = u32::try_from(n).unwrap_or(u32::MAX);
        let Ok(queued) = self.queued.clone().try_acquire_many_owned(permits) else {
            return Err(Refusal::Busy("the collector is behind: retry later"));
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

    /// Counts a refusal on `stats`.
    pub fn count(stats: &ReceiverStats, refusal: &Refusal) {
        let c = match refusal {
            Refusal::TooLarge(_) => &stats.too_large,
            Refusal::Malformed(_) => &stats.malformed,
            Refusal::Busy(_) => &stats.busy,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}
