//! Spans exported over gRPC in batches from a bounded queue: if the
//! collector is away the agent keeps capturing, memory stays bounded, and
//! what is dropped is counted. The capture thread queues compact span
//! records ([`crate::spans`]); the export thread encodes them
//! ([`crate::export::otlp`]) and sends them.

pub mod otlp;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tangle_protocols::Exchange;
use tangle_throttle::Throttled;
use tokio::sync::mpsc;

use crate::{
    connections::Connection,
    exchanges::ExchangeSink,
    export::otlp::{Batch, Encoder},
    link::Linker,
    spans::{Outgoing, SpanRecord},
};

/// Counters of the export, shared with the export thread.
#[derive(Debug, Default)]
pub struct ExportStats {
    pub queued: AtomicU64,
    /// Spans dropped because the queue was full (the collector slow or away).
    pub dropped: AtomicU64,
    pub exported: AtomicU64,
    pub failed_attempts: AtomicU64,
    /// Spans the collector refused (not authorised, malformed, too large
    /// even alone): dropped, never retried.
    pub refused: AtomicU64,
    /// Spans dropped after their batch was retried for a minute.
    pub given_up: AtomicU64,
    /// Batches the collector found too large, sent again in halves.
    pub split: AtomicU64,
    /// Outbound calls held now, waiting for the request they may belong to.
    pub held: AtomicU64,
    /// Spans of Tangle's own processes (found so after their first
    /// connection opened): left out, never exported.
    pub own: AtomicU64,
    /// Spans whose process the identity thread did not name in time
    /// ([`NAME_WAIT`]): dropped rather than exported under a wrong name.
    pub unnamed: AtomicU64,
    /// Spans waiting now for their process's name.
    pub naming: AtomicU64,
}

impl ExportStats {
    pub fn snapshot(&self) -> serde_json::Value {
        serde_json::json!({
            "queued": self.queued.load(Ordering::Relaxed),
            "dropped": self.dropped.load(Ordering::Relaxed),
            "exported": self.exported.load(Ordering::Relaxed),
            "failed_attempts": self.failed_attempts.load(Ordering::Relaxed),
            "refused": self.refused.load(Ordering::Relaxed),
            "given_up": self.given_up.load(Ordering::Relaxed),
            "split": self.split.load(Ordering::Relaxed),
            "held": self.held.load(Ordering::Relaxed),
            "own": self.own.load(Ordering::Relaxed),
            "unnamed": self.unnamed.load(Ordering::Relaxed),
            "naming": self.naming.load(Ordering::Relaxed),
        })
    }
}

/// Spans handed to the export thread at once: one wake-up of it per
/// this many, not per span.
const HANDOFF: usize = 256;

/// An [`ExchangeSink`] that links calls to requests and queues spans for
/// the exporter; never blocks.
pub struct SpanQueue {
    tx: mpsc::UnboundedSender<Vec<Outgoing>>,
    /// Spans made since the last hand-off.
    pending: Vec<Outgoing>,
    /// Spans handed off and not yet taken by the export thread.
    waiting: Arc<AtomicUsize>,
    /// Most spans waiting; past it new ones are dropped (counted).
    capacity: usize,
    stats: Arc<ExportStats>,
    full: Throttled,
    clock_offset_ns: i128,
    linker: Linker,
}

impl SpanQueue {
    fn send(&mut self, out: Outgoing) {
        self.pending.push(out);
        // A small queue takes hand-offs no larger than itself.
        if self.pending.len() >= HANDOFF.min(self.capacity) {
            self.hand_off();
        }
    }

    /// Gives the spans made so far to the export thread, or drops them
    /// (counted) when the queue is full.
    fn hand_off(&mut self) {
        let n = self.pending.len();
        if n == 0 {
            return;
        }
        if self.waiting.load(Ordering::Relaxed) + n > self.capacity {
            self.pending.clear();
            self.stats.dropped.fetch_add(n as u64, Ordering::Relaxed);
            tangle_throttle::warn!(
                self.full,
                "the export queue ([export] queue_spans) is full, the collector slow or \
                 away: spans dropped, counted in tangle_agent_spans_dropped_total"
            );
            return;
        }
        self.waiting.fetch_add(n, Ordering::Relaxed);
        let spans = std::mem::replace(&mut self.pending, Vec::with_capacity(HANDOFF));
        if self.tx.send(spans).is_ok() {
            self.stats.queued.fetch_add(n as u64, Ordering::Relaxed);
        } else {
            // The export thread is gone (shutting down).
            self.waiting.fetch_sub(n, Ordering::Relaxed);
            self.stats.dropped.fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    /// Sends held calls whose time is up (or all of them), and hands off
    /// what was made meanwhile.
    pub fn flush_held(&mut self, all: bool) {
        for o in self.linker.expired(all) {
            self.send(o);
        }
        self.hand_off();
        self.count_held();
    }

    fn count_held(&self) {
        self.stats
            .held
            .store(self.linker.held() as u64, Ordering::Relaxed);
    }
}

impl ExchangeSink for SpanQueue {
    fn exchange(&mut self, conn: &Connection, tid: u32, e: Exchange) {
        let span = SpanRecord::new(conn, e, self.clock_offset_ns);
        for o in self.linker.exchange(conn, tid, span) {
            self.send(o);
        }
        self.count_held();
    }
    fn inbound_read(&mut self, conn: &Connection, tid: u32) {
        self.linker.inbound_read(conn, tid);
    }
    fn closed(&mut self, conn: &Connection) {
        self.linker.answered(conn.conn_id);
    }
}

/// The export cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The endpoint is not a usable URI.
    #[error("export endpoint `{endpoint}`: {message}")]
    Endpoint { endpoint: String, message: String },
    /// The token cannot be sent in a header.
    #[error("export token: not valid in a header (visible ASCII only)")]
    Token,
    /// A file the configuration names could not be read.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The TLS settings were refused.
    #[error("export TLS: {0}")]
    Tls(String),
}

/// Where spans go, and the credentials they go with.
#[derive(Clone)]
pub struct Target {
    endpoint: tonic::transport::Endpoint,
    shown: String,
    authorization: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    /// Read again when the collector says the token is wrong: a rotated
    /// Secret is taken without a restart.
    token_file: Option<std::path::PathBuf>,
}

impl Target {
    pub fn from_config(c: &crate::config::Config) -> Result<Self, ExportError> {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity as TlsIdentity};
        let e = &c.export;
        let bad = |message: String| ExportError::Endpoint {
            endpoint: e.endpoint.clone(),
            message,
        };
        let mut endpoint = tonic::transport::Endpoint::from_shared(e.endpoint.clone())
            .map_err(|err| bad(err.to_string()))?
            .connect_timeout(Duration::from_secs(5))
            // No keep-alive pings: gRPC servers (the OpenTelemetry
            // Collector's among them) answer pings more often than every
            // five minutes with GOAWAY. A connection a middlebox dropped
            // fails the next export within this timeout, and is made again.
            .timeout(Duration::from_secs(10));
        if let Some(tls) = &e.tls {
            let read = |what, path: &std::path::Path| crate::config::read(what, path);
            let mut config = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(read("TLS CA", &tls.ca)?));
            if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
                config = config.identity(TlsIdentity::from_pem(
                    read("TLS certificate", cert)?,
                    read("TLS key", key)?,
                ));
            }
            if let Some(name) = &tls.server_name {
                config = config.domain_name(name.clone());
            }
            endpoint = endpoint
                .tls_config(config)
                .map_err(|err| ExportError::Tls(err.to_string()))?;
        }
        Ok(Self {
            endpoint,
            shown: e.endpoint.clone(),
            authorization: bearer(c.token()?)?,
            token_file: e.token.is_none().then(|| e.token_file.clone()).flatten(),
        })
    }

    /// Reads the token file again; whether the token changed.
    fn reread_token(&mut self) -> bool {
        let Some(path) = &self.token_file else {
            return false;
        };
        let read = crate::config::read_token_file(path)
            .map_err(ExportError::from)
            .and_then(|t| bearer(Some(t)));
        match read {
            Ok(new) if new != self.authorization => {
                log::info!(
                    "token file {} changed: exporting with the new token",
                    path.display()
                );
                self.authorization = new;
                true
            }
            Ok(_) => false,
            Err(e) => {
                log::warn!("reading the token file again: {e}");
                false
            }
        }
    }

    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// Whether exports carry a token.
    pub fn has_token(&self) -> bool {
        self.authorization.is_some()
    }
}

fn bearer(
    token: Option<String>,
) -> Result<Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>, ExportError> {
    token
        .map(|t| {
            format!("Bearer {t}")
                .parse()
                .map_err(|_| ExportError::Token)
        })
        .transpose()
}

/// Most spans in one export request.
const MAX_BATCH: usize = 2048;
/// Most encoded bytes in one export request: well under the 4 MiB gRPC
/// servers (OTLP receivers among them) take by default.
const MAX_BATCH_BYTES: usize = 1 << 20;
/// How long a batch waits to fill before it goes.
const BATCH_WAIT: Duration = Duration::from_millis(200);
/// How long one batch is retried (collector away, or busy) before it is
/// dropped for the next: no batch can hold the export up for ever.
const RETRY_FOR: Duration = Duration::from_secs(60);

/// Exports spans to `target` (OTLP/gRPC) in batches, from a thread of its
/// own (the capture loop never waits for it); retries with backoff while
/// the queue (`capacity` spans) absorbs what comes meanwhile.
pub fn start(
    target: Target,
    capacity: usize,
    clock_offset_ns: i128,
) -> std::io::Result<(SpanQueue, Arc<ExportStats>)> {
    let (tx, rx) = mpsc::unbounded_channel::<Vec<Outgoing>>();
    let waiting = Arc::new(AtomicUsize::new(0));
    let incoming = Incoming {
        rx,
        carry: Vec::new().into_iter(),
        waiting: waiting.clone(),
    };
    let stats = Arc::new(ExportStats::default());
    let task_stats = stats.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("tangle-export".into())
        .spawn(move || rt.block_on(export_loop(target, incoming, task_stats)))?;
    Ok((
        SpanQueue {
            tx,
            pending: Vec::with_capacity(HANDOFF),
            waiting,
            capacity: capacity.max(1),
            stats: stats.clone(),
            full: Throttled::default(),
            clock_offset_ns,
            linker: Linker::default(),
        },
        stats,
    ))
}

/// The export thread's end of the queue: spans come in hand-offs and are
/// taken one by one.
struct Incoming {
    rx: mpsc::UnboundedReceiver<Vec<Outgoing>>,
    /// The rest of the hand-off being taken.
    carry: std::vec::IntoIter<Outgoing>,
    waiting: Arc<AtomicUsize>,
}

impl Incoming {
    /// The next span of the hand-off being taken; it stops counting as
    /// waiting only now, so the queue's bound holds spans not yet in a batch.
    fn next_carried(&mut self) -> Option<Outgoing> {
        let o = self.carry.next()?;
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        Some(o)
    }

    async fn recv(&mut self) -> Option<Outgoing> {
        loop {
            if let Some(o) = self.next_carried() {
                return Some(o);
            }
            self.carry = self.rx.recv().await?.into_iter();
        }
    }

    fn try_recv(&mut self) -> Result<Outgoing, mpsc::error::TryRecvError> {
        loop {
            if let Some(o) = self.next_carried() {
                return Ok(o);
            }
            self.carry = self.rx.try_recv()?.into_iter();
        }
    }
}

/// How long a span waits for its process to be named before it is
/// dropped (counted in [`ExportStats::unnamed`]).
pub const NAME_WAIT: Duration = Duration::from_secs(10);

/// Most spans waiting for their process's name (beyond the export queue's
/// own bound); past it the oldest go, counted.
const MAX_UNNAMED: usize = 16_384;

/// How often spans waiting for a name are looked at when nothing else comes.
const NAME_POLL: Duration = Duration::from_millis(100);

/// Spans whose process the identity thread has not named yet. The export
/// thread never names a process itself (that reads /proc, which a hostile
/// process can make slow): it waits for the name, a while.
#[derive(Default)]
struct Unnamed(std::collections::VecDeque<(tokio::time::Instant, Outgoing)>);

impl Unnamed {
    /// Puts `o` in `batch` if its process is named (left out if it is
    /// Tangle's own), else waits with it.
    fn place(&mut self, o: Outgoing, batch: &mut Batch, enc: &mut Encoder, stats: &ExportStats) {
        match o.identity.ready().cloned() {
            Some(id) if id.tangle => {
                stats.own.fetch_add(1, Ordering::Relaxed);
            }
            Some(id) => batch.push(o, &id, enc),
            None => {
                if self.0.len() >= MAX_UNNAMED && self.0.pop_front().is_some() {
                    stats.unnamed.fetch_add(1, Ordering::Relaxed);
                }
                self.0.push_back((tokio::time::Instant::now(), o));
            }
        }
        stats.naming.store(self.0.len() as u64, Ordering::Relaxed);
    }

    /// Moves the spans named since into `batch`; drops those past
    /// [`NAME_WAIT`] as of `now`.
    fn release(
        &mut self,
        now: tokio::time::Instant,
        batch: &mut Batch,
        enc: &mut Encoder,
        stats: &ExportStats,
    ) {
        if self.0.is_empty() {
            return;
        }
        for (since, o) in std::mem::take(&mut self.0) {
            if o.identity.ready().is_some() {
                self.place(o, batch, enc, stats);
            } else if now.duration_since(since) > NAME_WAIT {
                stats.unnamed.fetch_add(1, Ordering::Relaxed);
            } else {
                self.0.push_back((since, o));
            }
        }
        stats.naming.store(self.0.len() as u64, Ordering::Relaxed);
    }
}

/// Up to [`MAX_BATCH`] spans or [`MAX_BATCH_BYTES`] encoded, of processes
/// named: those named since, what is queued now, then what comes within
/// [`BATCH_WAIT`] of the first. None once the queue is closed and empty.
async fn next_batch(
    rx: &mut Incoming,
    enc: &mut Encoder,
    unnamed: &mut Unnamed,
    stats: &ExportStats,
) -> Option<Batch> {
    loop {
        let mut batch = Batch::default();
        unnamed.release(tokio::time::Instant::now(), &mut batch, enc, stats);
        if batch.spans == 0 {
            // Wait for a span; with spans waiting for a name, not for long.
            let first = if unnamed.0.is_empty() {
                rx.recv().await?
            } else {
                match tokio::time::timeout(NAME_POLL, rx.recv()).await {
                    Ok(Some(o)) => o,
                    Ok(None) => return None,
                    Err(_elapsed) => continue,
                }
            };
            unnamed.place(first, &mut batch, enc, stats);
        }
        let deadline = tokio::time::Instant::now() + BATCH_WAIT;
        while (batch.spans as usize) < MAX_BATCH && batch.bytes < MAX_BATCH_BYTES {
            let next = match rx.try_recv() {
                Ok(o) => o,
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(o)) => o,
                        _ => break,
                    }
                }
            };
            unnamed.place(next, &mut batch, enc, stats);
        }
        if batch.spans > 0 {
            return Some(batch);
        }
    }
}

/// What an export's failure calls for.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    /// The request is too large for the collector: send it in halves.
    TooLarge,
    /// The collector will not take it whatever happens (not authorised,
    /// malformed, not an OTLP receiver): dropped, counted.
    Refused,
    /// Away, or busy: the same request again, later.
    Retry,
}

/// Reads a gRPC status as OTLP says exporters must (retryable codes), and
/// tells a size refusal from other exhaustion by its message.
fn failure(status: &tonic::Status) -> Failure {
    use tonic::Code;
    let message = status.message().to_ascii_lowercase();
    let about_size = ["too large", "larger than", "message length", "exceeds"]
        .iter()
        .any(|w| message.contains(w));
    match status.code() {
        Code::ResourceExhausted | Code::OutOfRange | Code::InvalidArgument if about_size => {
            Failure::TooLarge
        }
        Code::Unavailable
        | Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::DataLoss
        | Code::ResourceExhausted
        | Code::OutOfRange
        | Code::Unknown => Failure::Retry,
        _ => Failure::Refused,
    }
}

/// A batch on its way: its spans (to split it), its encoding (sent again
/// as is when retried), and since when it is being tried.
struct InFlight {
    batch: Batch,
    encoded: bytes::Bytes,
    since: std::time::Instant,
}

impl InFlight {
    fn new(batch: Batch) -> Self {
        Self {
            encoded: batch.encode().into(),
            batch,
            since: std::time::Instant::now(),
        }
    }
}

/// A gRPC codec for a request encoded once, so that a retry sends the
/// same bytes without copying the batch's spans; the response (an
/// `ExportTraceServiceResponse`) is read past.
#[derive(Clone, Copy, Default)]
struct EncodedCodec;

struct EncodedEncoder;

struct SkipDecoder;

impl tonic::codec::Encoder for EncodedEncoder {
    type Item = bytes::Bytes;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: bytes::Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for SkipDecoder {
    type Item = ();
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<()>, tonic::Status> {
        let n = bytes::Buf::remaining(src);
        bytes::Buf::advance(src, n);
        Ok(Some(()))
    }
}

impl tonic::codec::Codec for EncodedCodec {
    type Encode = bytes::Bytes;
    type Decode = ();
    type Encoder = EncodedEncoder;
    type Decoder = SkipDecoder;

    fn encoder(&mut self) -> EncodedEncoder {
        EncodedEncoder
    }

    fn decoder(&mut self) -> SkipDecoder {
        SkipDecoder
    }
}

/// Sends one encoded `ExportTraceServiceRequest`.
async fn export_encoded(
    grpc: &mut tonic::client::Grpc<tonic::transport::Channel>,
    request: tonic::Request<bytes::Bytes>,
) -> Result<(), tonic::Status> {
    // A transport error keeps its source: the connection is made again.
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::from_error(e.into()))?;
    let path = http::uri::PathAndQuery::from_static(
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    );
    grpc.unary(request, path, EncodedCodec).await.map(|_| ())
}

async fn export_loop(mut target: Target, mut rx: Incoming, stats: Arc<ExportStats>) {
    let endpoint = target.shown().to_owned();
    let mut client: Option<tonic::client::Grpc<tonic::transport::Channel>> = None;
    // Batches to send before taking new ones: the halves of a split one.
    let mut ready: std::collections::VecDeque<Batch> = Default::default();
    let mut encoder = Encoder::default();
    let mut pending: Option<InFlight> = None;
    let mut unnamed = Unnamed::default();
    let mut backoff = Duration::from_millis(200);
    // One throttle per kind of trouble: a steady one never hides another.
    let (unreachable, retrying, given_up, refused) = (
        Throttled::default(),
        Throttled::default(),
        Throttled::default(),
        Throttled::default(),
    );
    let fail = |backoff: &mut Duration| {
        stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
        let wait = *backoff;
        *backoff = (*backoff * 2).min(Duration::from_secs(10));
        tokio::time::sleep(wait)
    };
    loop {
        if pending.is_none() {
            let batch = match ready.pop_front() {
                Some(b) => b,
                None => match next_batch(&mut rx, &mut encoder, &mut unnamed, &stats).await {
                    Some(b) => b,
                    None => return,
                },
            };
            pending = Some(InFlight::new(batch));
        }
        let Some(batch) = pending.as_ref() else {
            continue;
        };
        let n = batch.batch.spans;
        if batch.since.elapsed() > RETRY_FOR {
            stats.given_up.fetch_add(n, Ordering::Relaxed);
            tangle_throttle::warn!(
                given_up,
                "collector {endpoint}: dropped {n} spans after trying for {RETRY_FOR:?}"
            );
            pending = None;
            continue;
        }
        if client.is_none() {
            match target.endpoint.connect().await {
                Ok(channel) => client = Some(tonic::client::Grpc::new(channel)),
                Err(e) => {
                    tangle_throttle::warn!(unreachable, "collector {endpoint} unreachable: {e}");
                    fail(&mut backoff).await;
                    continue;
                }
            }
        }
        let Some(c) = client.as_mut() else { continue };
        let mut request = tonic::Request::new(batch.encoded.clone());
        if let Some(a) = &target.authorization {
            request.metadata_mut().insert("authorization", a.clone());
        }
        let Err(status) = export_encoded(c, request).await else {
            stats.exported.fetch_add(n, Ordering::Relaxed);
            pending = None;
            backoff = Duration::from_millis(200);
            continue;
        };
        if status.code() == tonic::Code::Unauthenticated && target.reread_token() {
            continue;
        }
        let kind = failure(&status);
        if kind != Failure::Retry {
            // Retries count theirs as they wait.
            stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
        }
        match kind {
            Failure::TooLarge if n > 1 => {
                // Halves, each sent (and split again) on its own.
                if let Some(b) = pending.take() {
                    let [first, second] = b.batch.halves();
                    stats.split.fetch_add(1, Ordering::Relaxed);
                    ready.push_front(second);
                    ready.push_front(first);
                }
            }
            Failure::TooLarge | Failure::Refused => {
                stats.refused.fetch_add(n, Ordering::Relaxed);
                tangle_throttle::warn!(
                    refused,
                    "collector {endpoint} refused {n} spans ({:?}: {}); dropped",
                    status.code(),
                    status.message()
                );
                pending = None;
            }
            Failure::Retry => {
                tangle_throttle::warn!(
                    retrying,
                    "export to {endpoint} failed ({:?}: {}); retrying",
                    status.code(),
                    status.message()
                );
                // A broken connection is made again; a collector that only
                // said it is busy keeps its connection (no reconnect storm
                // while it is overloaded).
                if std::error::Error::source(&status).is_some() {
                    client = None;
                }
                fail(&mut backoff).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{connections::Connection, identity::Identity, spans::tests::ex};

    /// A span waits for its process's name; it goes out once named, under
    /// that name, and is dropped (counted) if the name never comes. Spans of
    /// Tangle's own processes never go out.
    #[tokio::test]
    async fn spans_wait_for_their_name_and_never_go_out_unnamed() {
        let conn = Connection::sample(
            1,
            tangle_common::Role::Server,
            "127.0.0.1:80",
            "127.0.0.1:5000",
        );
        let stats = ExportStats::default();
        let mut enc = Encoder::default();
        let mut unnamed = Unnamed::default();
        let (waiting, slot) = crate::identity::IdentityCell::pending_for_tests();
        let out = |identity| Outgoing {
            identity,
            span: crate::spans::SpanRecord::new(&conn, ex(1, 10), 0),
        };
        let mut batch = Batch::default();
        unnamed.place(out(waiting.clone()), &mut batch, &mut enc, &stats);
        unnamed.place(
            out(crate::identity::IdentityCell::pending_for_tests().0),
            &mut batch,
            &mut enc,
            &stats,
        );
        unnamed.place(
            out(crate::identity::IdentityCell::known(Identity {
                tangle: true,
                ..Identity::executable("tangle-agent")
            })),
            &mut batch,
            &mut enc,
            &stats,
        );
        assert_eq!((batch.spans, stats.own.load(Ordering::Relaxed)), (0, 1));
        assert_eq!(stats.naming.load(Ordering::Relaxed), 2);
        // IdentityCell: the first goes out; the other waits on.
        slot(Identity::executable("orders"));
        let now = tokio::time::Instant::now();
        unnamed.release(now, &mut batch, &mut enc, &stats);
        assert_eq!(batch.spans, 1);
        assert_eq!(stats.naming.load(Ordering::Relaxed), 1);
        // Past the wait, the unnamed one is dropped, not sent under a guess.
        unnamed.release(
            now + NAME_WAIT + Duration::from_secs(1),
            &mut batch,
            &mut enc,
            &stats,
        );
        assert_eq!(batch.spans, 1);
        assert_eq!(stats.unnamed.load(Ordering::Relaxed), 1);
        assert_eq!(stats.naming.load(Ordering::Relaxed), 0);
    }

    use super::*;

    #[test]
    fn refusals_are_read_as_otlp_says() {
        use tonic::{Code, Status as GrpcStatus};
        let too_large = GrpcStatus::new(
            Code::OutOfRange,
            "Error, decoded message length too large: found 9 bytes, the limit is: 4 bytes",
        );
        assert_eq!(failure(&too_large), Failure::TooLarge);
        assert_eq!(
            failure(&GrpcStatus::resource_exhausted(
                "grpc: received message larger than max (5000000 vs. 4194304)"
            )),
            Failure::TooLarge
        );
        assert_eq!(
            failure(&GrpcStatus::resource_exhausted("intake queue full")),
            Failure::Retry
        );
        assert_eq!(failure(&GrpcStatus::unavailable("down")), Failure::Retry);
        for refused in [
            GrpcStatus::unauthenticated("missing or wrong token"),
            GrpcStatus::invalid_argument("bad"),
            GrpcStatus::unimplemented("no such service"),
            GrpcStatus::permission_denied("no"),
        ] {
            assert_eq!(failure(&refused), Failure::Refused, "{refused:?}");
        }
    }
}
