//! Exchanges into OTLP spans, exported over gRPC in batches from a bounded
//! queue: if the collector is away the agent keeps capturing, memory stays
//! bounded, and what is dropped is counted.
//!
//! Each exchange is one span: CLIENT for the process that made the call,
//! SERVER for the one that served it, with OpenTelemetry semantic-convention
//! attributes and the join key (`tangle_wire`) that lets the collector put
//! the two ends of one call together. An outbound call is linked to the
//! inbound request it serves by propagated context (`traceparent`, B3) or
//! by the thread rule: a call made by the thread that is serving an inbound
//! request, between the request's start and the response's end, belongs to
//! it (thread-per-request servers). Such calls are held until the request
//! they may belong to completes (at most [`HOLD`]; past it they go out
//! marked `tangle.link.lost`); any other span starts its own trace.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{AnyValue, KeyValue, any_value::Value},
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans, Span, Status, status::StatusCode},
};
use tangle_common::Role;
use tangle_protocols::{Exchange, Fields, Status as ExStatus};
use tangle_throttle::Throttled;
use tokio::sync::mpsc;

use crate::{conntrack::Connection, identity::Identity, pipeline::ExchangeSink};

/// Counters of the export, shared with the exporting task.
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
        })
    }
}

/// A span and the process it belongs to.
pub struct Outgoing {
    identity: Arc<Identity>,
    span: Span,
}

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..KeyValue::default()
    }
}

fn text(key: &str, v: impl Into<String>) -> KeyValue {
    kv(key, Value::StringValue(v.into()))
}

fn int(key: &str, v: i64) -> KeyValue {
    kv(key, Value::IntValue(v))
}

/// Random ids: not cryptographic, unique enough for traces (splitmix64,
/// seeded once per thread from the hasher's random keys and the clock).
fn random_bytes<const N: usize>() -> [u8; N] {
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
fn propagated(e: &Exchange) -> Option<([u8; 16], [u8; 8])> {
    let Fields::Http(h) = &e.fields else {
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
fn outcome(e: &Exchange) -> Option<tangle_wire::Outcome> {
    use tangle_wire::Outcome;
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

/// The span for one exchange seen on `conn`.
pub fn span_for(conn: &Connection, e: &Exchange, clock_offset_ns: i128) -> Span {
    let wall = |ns: u64| (ns as i128 + clock_offset_ns).max(0) as u64;
    let client_role = conn.role == Role::Client;
    // The server end as this process sees it, and the client end.
    let (server, client) = if client_role {
        (conn.remote, conn.local)
    } else {
        (conn.local, conn.remote)
    };
    let mut attrs = Vec::with_capacity(24);
    if let Some(seq) = e.request_seq {
        attrs.push(text(tangle_wire::JOIN_CLIENT, client.to_string()));
        attrs.push(int(tangle_wire::JOIN_SEQ, i64::from(seq)));
    }
    attrs.extend([
        kv(tangle_wire::SYNC, Value::BoolValue(e.sync)),
        text("server.address", server.ip().to_string()),
        int("server.port", i64::from(server.port())),
        text("client.address", client.ip().to_string()),
        int("client.port", i64::from(client.port())),
        text("network.transport", "tcp"),
        int("process.pid", i64::from(conn.pid)),
    ]);
    if let Some(peer) = &conn.peer_service {
        attrs.push(text("peer.service", peer.clone()));
    }
    match &e.fields {
        Fields::Http(h) => {
            attrs.push(text("http.request.method", h.method.clone()));
            attrs.push(text("url.path", h.path.clone()));
            attrs.push(text(
                "http.route",
                e.operation
                    .split_once(' ')
                    .map_or("", |(_, r)| r)
                    .to_owned(),
            ));
            if let Some(s) = h.status {
                attrs.push(int("http.response.status_code", i64::from(s)));
            }
            if let Some(g) = &h.grpc {
                attrs.push(text("rpc.system", "grpc"));
                attrs.push(text("rpc.service", g.service.clone()));
                attrs.push(text("rpc.method", g.method.clone()));
            }
        }
        Fields::Sql(s) => {
            attrs.push(text("db.system.name", s.system.clone()));
            if let Some(db) = &s.database {
                attrs.push(text("db.namespace", db.clone()));
            }
            // Literals are already masked.
            if let Some(q) = &s.statement {
                attrs.push(text("db.query.text", q.clone()));
            }
        }
        // Pub/sub: a message to or from a channel, not a data access.
        Fields::Redis(r) if r.channel.is_some() => {
            attrs.push(text("messaging.system", "redis"));
            if let Some(ch) = &r.channel {
                attrs.push(text("messaging.destination.name", ch.clone()));
            }
            attrs.push(text(
                "messaging.operation.type",
                if r.push { "receive" } else { "send" },
            ));
        }
        Fields::Redis(r) => {
            attrs.push(text("db.system.name", "redis"));
            attrs.push(text("db.operation.name", r.command.clone()));
        }
    }
    if let Some(o) = outcome(e) {
        attrs.push(text(tangle_wire::OUTCOME, o.as_str()));
    }
    let (code, message) = match &e.status {
        ExStatus::Error { code } => (StatusCode::Error as i32, code.clone()),
        _ => (StatusCode::Unset as i32, String::new()),
    };
    let pushed = matches!(&e.fields, Fields::Redis(r) if r.push);
    let kind = match (client_role, e.sync) {
        _ if pushed && client_role => 5, // CONSUMER: a message delivered to it
        (true, true) => 3,               // CLIENT
        (true, false) => 4,              // PRODUCER
        (false, _) => 2,                 // SERVER
    };
    // Propagated context: the request's trace, under the caller's span.
    let (trace_id, parent_span_id) = match propagated(e) {
        Some((t, p)) if !client_role => (t.to_vec(), p.to_vec()),
        Some((t, _)) => (t.to_vec(), Vec::new()),
        None => (random_bytes::<16>().to_vec(), Vec::new()),
    };
    Span {
        trace_id,
        span_id: random_bytes::<8>().to_vec(),
        parent_span_id,
        name: e.operation.clone(),
        kind,
        start_time_unix_nano: wall(e.start_ns),
        end_time_unix_nano: wall(e.end_ns),
        attributes: attrs,
        status: Some(Status { code, message }),
        ..Span::default()
    }
}

/// How long an outbound call waits for the inbound request it may belong
/// to: longer than a slow request (a loaded service answers in seconds),
/// shorter than the collector's trace window (8 s by default).
pub const HOLD: Duration = Duration::from_secs(5);
/// Outbound calls held at once, at most (past it the oldest go out
/// unlinked): 500 requests in flight making 30 calls each.
const MAX_HELD: usize = 16_384;
/// Outbound calls one process may have held: one that serves a request it
/// never answers while it calls out cannot push the others' calls out.
const MAX_HELD_PER_PROCESS: usize = MAX_HELD / 4;

struct Held {
    pid: u32,
    tid: u32,
    /// The propagated trace id the call carried, if any.
    context: Option<[u8; 16]>,
    start_ns: u64,
    end_ns: u64,
    held_at: std::time::Instant,
    out: Outgoing,
}

/// One call of `pid`'s no longer held.
fn release(held_by: &mut std::collections::HashMap<u32, usize>, pid: u32) {
    if let Some(n) = held_by.get_mut(&pid) {
        *n -= 1;
        if *n == 0 {
            held_by.remove(&pid);
        }
    }
}

/// Links outbound calls to the inbound request their thread was serving.
/// A thread seen serving two requests at once (an async runtime) is not
/// thread-per-request: its links are marked inferred from then on, never
/// presented as exact.
#[derive(Default)]
pub struct Linker {
    held: std::collections::VecDeque<Held>,
    /// Per (pid, tid): the last requests served, as (start, end).
    served: std::collections::HashMap<(u32, u32), std::collections::VecDeque<(u64, u64)>>,
    /// Threads seen serving overlapping requests.
    multiplexed: std::collections::HashSet<(u32, u32)>,
    /// Per (pid, tid): server connections it read a request on that is not
    /// answered yet. A second one means the thread multiplexes, known before
    /// the first request completes (its links would otherwise pass as exact).
    reading: std::collections::HashMap<(u32, u32), Vec<u64>>,
    /// Connection id to the thread in `reading`.
    reader_of: std::collections::HashMap<u64, (u32, u32)>,
    /// Per pid: entries in `reading`, i.e. requests it is serving now.
    serving: std::collections::HashMap<u32, usize>,
    /// Per pid: its calls in `held`.
    held_by: std::collections::HashMap<u32, usize>,
}

impl Linker {
    /// Thread `tid` read request bytes on server connection `conn`.
    pub fn inbound_read(&mut self, conn: &Connection, tid: u32) {
        let thread = (conn.pid, tid);
        if self.reader_of.get(&conn.conn_id) == Some(&thread) {
            return;
        }
        self.answered(conn.conn_id);
        let open = self.reading.entry(thread).or_default();
        if !open.is_empty() {
            if self.multiplexed.len() >= 65_536 {
                // Bounded; a thread still multiplexing is found again at once.
                self.multiplexed.clear();
            }
            self.multiplexed.insert(thread);
        }
        if open.len() < 64 {
            open.push(conn.conn_id);
            self.reader_of.insert(conn.conn_id, thread);
            *self.serving.entry(conn.pid).or_default() += 1;
        }
        if self.reader_of.len() > 65_536 {
            self.reading.clear();
            self.reader_of.clear();
            self.serving.clear();
        }
    }

    /// Connection `conn_id` has no request waiting any more (answered or closed).
    pub fn answered(&mut self, conn_id: u64) {
        let Some(thread) = self.reader_of.remove(&conn_id) else {
            return;
        };
        if let Some(open) = self.reading.get_mut(&thread) {
            open.retain(|&c| c != conn_id);
            if open.is_empty() {
                self.reading.remove(&thread);
            }
        }
        if let Some(n) = self.serving.get_mut(&thread.0) {
            *n -= 1;
            if *n == 0 {
                self.serving.remove(&thread.0);
            }
        }
    }

    /// Takes one exchange's span; returns the spans ready to go.
    pub fn exchange(
        &mut self,
        conn: &Connection,
        tid: u32,
        e: &Exchange,
        mut span: Span,
    ) -> Vec<Outgoing> {
        let out = |span| Outgoing {
            identity: conn.identity.clone(),
            span,
        };
        if conn.role == Role::Client {
            let context = propagated(e).map(|(t, _)| t);
            // Only a call made while its thread (or, with a propagated
            // context, its process) serves a request can belong to one:
            // pure clients' calls go out at once, not held for nothing.
            let may_belong = self.reading.contains_key(&(conn.pid, tid))
                || (context.is_some() && self.serving.contains_key(&conn.pid));
            if !may_belong {
                let mut ready = vec![out(span)];
                ready.extend(self.expired(false));
                return ready;
            }
            let mine = self.held_by.entry(conn.pid).or_default();
            if *mine >= MAX_HELD_PER_PROCESS {
                // Past its share: this call goes out now, its link lost.
                let mut o = out(span);
                o.span
                    .attributes
                    .push(kv(tangle_wire::LINK_LOST, Value::BoolValue(true)));
                let mut ready = vec![o];
                ready.extend(self.expired(false));
                return ready;
            }
            *mine += 1;
            self.held.push_back(Held {
                pid: conn.pid,
                tid,
                context,
                start_ns: e.start_ns,
                end_ns: e.end_ns,
                held_at: std::time::Instant::now(),
                out: out(span),
            });
            return self.expired(false);
        }
        let thread = (conn.pid, tid);
        self.answered(conn.conn_id);
        let recent = self.served.entry(thread).or_default();
        if recent
            .iter()
            .any(|&(s, end)| e.start_ns < end && s < e.end_ns)
        {
            self.multiplexed.insert(thread);
        }
        if recent.len() >= 8 {
            recent.pop_front();
        }
        recent.push_back((e.start_ns, e.end_ns));
        if self.served.len() > 65_536 {
            self.served.clear();
        }
        let multiplexed = self.multiplexed.contains(&thread);
        let context = propagated(e).map(|(t, _)| t);
        // Its children: calls carrying its propagated trace id (exact), or
        // made by its thread meanwhile (the thread rule).
        let (trace_id, span_id) = (span.trace_id.clone(), span.span_id.clone());
        let mut children = Vec::new();
        self.held.retain_mut(|h| {
            let by_context = context.is_some() && h.pid == conn.pid && h.context == context;
            let by_thread = h.pid == conn.pid
                && h.tid == tid
                && h.start_ns >= e.start_ns
                && h.end_ns <= e.end_ns;
            let mine = by_context || (by_thread && (h.context.is_none() || context.is_none()));
            if mine {
                h.out.span.trace_id = trace_id.clone();
                h.out.span.parent_span_id = span_id.clone();
                if multiplexed && !by_context {
                    h.out
                        .span
                        .attributes
                        .push(kv(tangle_wire::LINK_INFERRED, Value::BoolValue(true)));
                }
                children.push(Outgoing {
                    identity: h.out.identity.clone(),
                    span: std::mem::take(&mut h.out.span),
                });
                release(&mut self.held_by, h.pid);
            }
            !mine
        });
        if !children.is_empty() {
            span.attributes
                .push(int("tangle.children", children.len() as i64));
        }
        let mut ready = vec![out(span)];
        ready.append(&mut children);
        ready.extend(self.expired(false));
        ready
    }

    /// Held calls whose time is up (or all of them).
    pub fn expired(&mut self, all: bool) -> Vec<Outgoing> {
        let mut out = Vec::new();
        while let Some(h) = self.held.front() {
            if !all && h.held_at.elapsed() < HOLD && self.held.len() <= MAX_HELD {
                break;
            }
            if let Some(mut h) = self.held.pop_front() {
                release(&mut self.held_by, h.pid);
                // Made while its thread served a request that did not end
                // in time: its parent is unknown, not absent.
                h.out
                    .span
                    .attributes
                    .push(kv(tangle_wire::LINK_LOST, Value::BoolValue(true)));
                out.push(h.out);
            }
        }
        out
    }
}

/// An [`ExchangeSink`] that links calls to requests and queues spans for
/// the exporter; never blocks.
pub struct SpanQueue {
    tx: mpsc::Sender<Outgoing>,
    stats: Arc<ExportStats>,
    full: Throttled,
    clock_offset_ns: i128,
    linker: Linker,
}

impl SpanQueue {
    fn send(&mut self, out: Outgoing) {
        match self.tx.try_send(out) {
            Ok(()) => {
                self.stats.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                tangle_throttle::warn!(
                    self.full,
                    "the export queue ([export] queue_spans) is full, the collector slow or \
                     away: spans dropped, counted in tangle_agent_spans_dropped_total"
                );
            }
        }
    }

    /// Sends held calls whose time is up (or all of them).
    pub fn flush_held(&mut self, all: bool) {
        for o in self.linker.expired(all) {
            self.send(o);
        }
        self.count_held();
    }

    fn count_held(&self) {
        self.stats
            .held
            .store(self.linker.held.len() as u64, Ordering::Relaxed);
    }
}

impl ExchangeSink for SpanQueue {
    fn exchange(&mut self, conn: &Connection, tid: u32, e: &Exchange) {
        let span = span_for(conn, e, self.clock_offset_ns);
        for o in self.linker.exchange(conn, tid, e, span) {
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
    let (tx, rx) = mpsc::channel::<Outgoing>(capacity.max(1));
    let stats = Arc::new(ExportStats::default());
    let task_stats = stats.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("tangle-export".into())
        .spawn(move || rt.block_on(export_loop(target, rx, task_stats)))?;
    Ok((
        SpanQueue {
            tx,
            stats: stats.clone(),
            full: Throttled::default(),
            clock_offset_ns,
            linker: Linker::default(),
        },
        stats,
    ))
}

/// Up to [`MAX_BATCH`] spans or [`MAX_BATCH_BYTES`] encoded: what is
/// queued now, then what comes within [`BATCH_WAIT`] of the first. None
/// once the queue is closed and empty.
async fn next_batch(rx: &mut mpsc::Receiver<Outgoing>) -> Option<Vec<Outgoing>> {
    let first = rx.recv().await?;
    let mut bytes = encoded_size(&first);
    let mut batch = vec![first];
    let deadline = tokio::time::Instant::now() + BATCH_WAIT;
    while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
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
        bytes += encoded_size(&next);
        batch.push(next);
    }
    Some(batch)
}

/// A span's share of an encoded request (its bytes and its field's tag and
/// length).
fn encoded_size(o: &Outgoing) -> usize {
    prost::Message::encoded_len(&o.span) + 6
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

/// A batch on its way: the request (to split it), its encoding (sent again
/// as is when retried), its spans, and since when it is being tried.
struct InFlight {
    request: ExportTraceServiceRequest,
    encoded: bytes::Bytes,
    spans: u64,
    since: std::time::Instant,
}

impl InFlight {
    fn new(request: ExportTraceServiceRequest) -> Self {
        let encoded = prost::Message::encode_to_vec(&request).into();
        let spans = request
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len() as u64)
            .sum();
        Self {
            request,
            encoded,
            spans,
            since: std::time::Instant::now(),
        }
    }
}

/// A request in two with about half its spans each; each span keeps its
/// resource.
fn halves(request: ExportTraceServiceRequest, spans: u64) -> [ExportTraceServiceRequest; 2] {
    let mut out = [
        ExportTraceServiceRequest::default(),
        ExportTraceServiceRequest::default(),
    ];
    let mut seen = 0u64;
    for rs in request.resource_spans {
        for (which, half) in out.iter_mut().enumerate() {
            let mut part = ResourceSpans {
                resource: rs.resource.clone(),
                scope_spans: Vec::new(),
                ..ResourceSpans::default()
            };
            for ss in &rs.scope_spans {
                let in_half: Vec<Span> = ss
                    .spans
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| {
                        let at = seen + *i as u64;
                        (at < spans / 2) == (which == 0)
                    })
                    .map(|(_, span)| span.clone())
                    .collect();
                if !in_half.is_empty() {
                    part.scope_spans.push(ScopeSpans {
                        scope: ss.scope.clone(),
                        spans: in_half,
                        ..ScopeSpans::default()
                    });
                }
            }
            if !part.scope_spans.is_empty() {
                half.resource_spans.push(part);
            }
        }
        seen += rs
            .scope_spans
            .iter()
            .map(|s| s.spans.len() as u64)
            .sum::<u64>();
    }
    out
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

async fn export_loop(
    mut target: Target,
    mut rx: mpsc::Receiver<Outgoing>,
    stats: Arc<ExportStats>,
) {
    let endpoint = target.shown().to_owned();
    let mut client: Option<tonic::client::Grpc<tonic::transport::Channel>> = None;
    // Batches to send before taking new ones: the halves of a split one.
    let mut ready: std::collections::VecDeque<ExportTraceServiceRequest> = Default::default();
    let mut pending: Option<InFlight> = None;
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
            let request = match ready.pop_front() {
                Some(r) => r,
                None => match next_batch(&mut rx).await {
                    Some(b) => to_request(b),
                    None => return,
                },
            };
            pending = Some(InFlight::new(request));
        }
        let Some(batch) = pending.as_ref() else {
            continue;
        };
        let n = batch.spans;
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
                    let [first, second] = halves(b.request, n);
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

/// One request: spans grouped by process identity (a resource each).
fn to_request(batch: Vec<Outgoing>) -> ExportTraceServiceRequest {
    let mut by_identity: std::collections::BTreeMap<(String, usize), (Arc<Identity>, Vec<Span>)> =
        std::collections::BTreeMap::new();
    for o in batch {
        let key = (
            o.identity.service.clone(),
            Arc::as_ptr(&o.identity) as usize,
        );
        by_identity
            .entry(key)
            .or_insert_with(|| (o.identity.clone(), Vec::new()))
            .1
            .push(o.span);
    }
    ExportTraceServiceRequest {
        resource_spans: by_identity
            .into_values()
            .map(|(identity, spans)| ResourceSpans {
                resource: Some(Resource {
                    attributes: identity
                        .resource_attributes()
                        .into_iter()
                        .map(|(k, v)| text(k, v))
                        .collect(),
                    ..Resource::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..ScopeSpans::default()
                }],
                ..ResourceSpans::default()
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tangle_protocols::{Fields, HttpFields, Protocol, Status as ExStatus};

    fn conn(role: Role, port: u16) -> Connection {
        Connection::sample(
            u64::from(port),
            role,
            &format!("127.0.0.1:{port}"),
            "127.0.0.1:80",
        )
    }

    fn ex(start: u64, end: u64) -> Exchange {
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

    fn inferred(s: &Span) -> bool {
        s.attributes
            .iter()
            .any(|kv| kv.key == tangle_wire::LINK_INFERRED)
    }

    fn with_context(mut e: Exchange, tp: &str) -> Exchange {
        if let Fields::Http(h) = &mut e.fields {
            h.trace.traceparent = Some(tp.into());
        }
        e
    }

    #[test]
    fn propagated_context_links_exactly_even_on_an_event_loop() {
        let mut l = Linker::default();
        let (server, client) = (conn(Role::Server, 8080), conn(Role::Client, 40000));
        let t1 = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t2 = "00-5bf92f3577b34da6a3ce929d0e0e4736-10f067aa0ba902b7-01";
        // One thread, two overlapping requests, each call carrying its request's trace.
        let a = with_context(ex(10, 100), t1);
        let b = with_context(ex(20, 110), t2);
        let call_b = with_context(ex(30, 40), t2);
        let call_a = with_context(ex(50, 60), t1);
        l.inbound_read(&server, 1);
        assert!(
            l.exchange(&client, 1, &call_b, span_for(&client, &call_b, 0))
                .is_empty()
        );
        assert!(
            l.exchange(&client, 1, &call_a, span_for(&client, &call_a, 0))
                .is_empty()
        );
        let out_a = l.exchange(&server, 1, &a, span_for(&server, &a, 0));
        let out_b = l.exchange(&server, 1, &b, span_for(&server, &b, 0));
        assert_eq!(
            (out_a.len(), out_b.len()),
            (2, 2),
            "each request gets its own call, not the other's"
        );
        assert_eq!(
            out_a[0].span.trace_id,
            vec![
                0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e,
                0x47, 0x36
            ]
        );
        assert_eq!(
            out_a[0].span.parent_span_id,
            vec![0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7],
            "under the caller's span"
        );
        assert_eq!(out_a[1].span.parent_span_id, out_a[0].span.span_id);
        assert_eq!(out_b[1].span.parent_span_id, out_b[0].span.span_id);
        assert!(
            !inferred(&out_a[1].span) && !inferred(&out_b[1].span),
            "context links are exact"
        );
    }

    /// A process that serves a request it never answers while it calls
    /// out holds its share of calls, no more: others' calls are still held.
    #[test]
    fn one_process_cannot_push_out_the_others_held_calls() {
        let mut l = Linker::default();
        let server = conn(Role::Server, 8080);
        let client = conn(Role::Client, 40000);
        l.inbound_read(&server, 1);
        for i in 0..MAX_HELD_PER_PROCESS as u64 {
            let out = l.exchange(
                &client,
                1,
                &ex(20 + i, 30 + i),
                span_for(&client, &ex(20, 30), 0),
            );
            assert!(out.is_empty(), "held");
        }
        let out = l.exchange(&client, 1, &ex(20, 30), span_for(&client, &ex(20, 30), 0));
        assert_eq!(out.len(), 1, "past its share: out at once");
        assert!(
            out[0]
                .span
                .attributes
                .iter()
                .any(|kv| kv.key == tangle_wire::LINK_LOST)
        );
        // Another process's call is held as ever.
        let (mut other_server, mut other_client) =
            (conn(Role::Server, 8081), conn(Role::Client, 40001));
        other_server.pid = 8;
        other_client.pid = 8;
        l.inbound_read(&other_server, 2);
        assert!(
            l.exchange(
                &other_client,
                2,
                &ex(20, 30),
                span_for(&other_client, &ex(20, 30), 0)
            )
            .is_empty()
        );
        // Its request ends: its call is its child, and the count goes down.
        let out = l.exchange(
            &other_server,
            2,
            &ex(10, 100),
            span_for(&other_server, &ex(10, 100), 0),
        );
        assert_eq!(out.len(), 2);
        assert_eq!(l.held_by.get(&8), None);
        assert_eq!(l.held_by.get(&7), Some(&MAX_HELD_PER_PROCESS));
    }

    #[test]
    fn thread_rule_exact_then_inferred_once_a_thread_multiplexes() {
        let mut l = Linker::default();
        let (a, b) = (conn(Role::Server, 8080), conn(Role::Server, 8081));
        let client = conn(Role::Client, 40000);
        let call = |l: &mut Linker, tid, w: (u64, u64)| {
            l.exchange(
                &client,
                tid,
                &ex(w.0, w.1),
                span_for(&client, &ex(w.0, w.1), 0),
            )
        };
        let serve = |l: &mut Linker, c: &Connection, tid, w: (u64, u64)| {
            l.exchange(c, tid, &ex(w.0, w.1), span_for(c, &ex(w.0, w.1), 0))
        };
        // Thread 1 serves [10, 100] and calls out in [20, 30]: an exact child.
        l.inbound_read(&a, 1);
        assert!(call(&mut l, 1, (20, 30)).is_empty(), "held");
        let out = serve(&mut l, &a, 1, (10, 100));
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].span.parent_span_id, out[0].span.span_id);
        assert_eq!(out[1].span.trace_id, out[0].span.trace_id);
        assert!(!inferred(&out[1].span));
        // A call made while the thread serves nothing goes out at once, unlinked.
        let out = call(&mut l, 1, (150, 160));
        assert_eq!(out.len(), 1);
        assert!(out[0].span.parent_span_id.is_empty());
        // Thread 2 serves two overlapping requests (an event loop) although it
        // read the second after answering the first: its links are inferred.
        l.inbound_read(&a, 2);
        let _ = serve(&mut l, &a, 2, (200, 300));
        l.inbound_read(&b, 2);
        assert!(call(&mut l, 2, (260, 270)).is_empty(), "held");
        let out = serve(&mut l, &b, 2, (250, 400));
        assert_eq!(out.len(), 2);
        assert!(
            inferred(&out[1].span),
            "a multiplexing thread's link is marked inferred"
        );
        // A held call nobody claims goes out when its time is up.
        l.inbound_read(&a, 3);
        assert!(call(&mut l, 3, (500, 510)).is_empty(), "held");
        let rest = l.expired(true);
        assert_eq!(rest.len(), 1);
        assert!(rest[0].span.parent_span_id.is_empty());
    }

    #[test]
    fn a_thread_reading_two_requests_is_multiplexed_before_either_completes() {
        let mut l = Linker::default();
        let (a, b) = (conn(Role::Server, 8080), conn(Role::Server, 8081));
        let client = conn(Role::Client, 40000);
        // An event loop reads request A, then request B, then calls out for B.
        l.inbound_read(&a, 5);
        l.inbound_read(&b, 5);
        let call = ex(30, 40);
        assert!(
            l.exchange(&client, 5, &call, span_for(&client, &call, 0))
                .is_empty()
        );
        // A completes first: the call falls in its window, but the link
        // cannot be exact.
        let out = l.exchange(&a, 5, &ex(10, 100), span_for(&a, &ex(10, 100), 0));
        assert_eq!(out.len(), 2);
        assert!(inferred(&out[1].span));
        // A thread serving one connection after another stays exact.
        l.inbound_read(&a, 6);
        let _ = l.exchange(&a, 6, &ex(200, 300), span_for(&a, &ex(200, 300), 0));
        l.answered(a.conn_id);
        l.inbound_read(&b, 6);
        let call = ex(420, 430);
        let _ = l.exchange(&client, 6, &call, span_for(&client, &call, 0));
        let out = l.exchange(&b, 6, &ex(400, 500), span_for(&b, &ex(400, 500), 0));
        assert_eq!(out.len(), 2);
        assert!(!inferred(&out[1].span));
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
        let (t, p) = propagated(&e).expect("multi-header B3");
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
        let (t, p) = propagated(&e).expect("single-header B3");
        assert_eq!((t[0], t[15], p[0]), (0x80, 0xf7, 0xe4));
        let Fields::Http(h) = &mut e.fields else {
            unreachable!()
        };
        h.trace.b3 = Some("1".into());
        assert_eq!(propagated(&e), None, "sampling-only B3 has no context");
    }

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

    #[test]
    fn a_request_splits_into_halves_that_keep_their_resources() {
        let span = |i: u8| Span {
            span_id: vec![i; 8],
            ..Span::default()
        };
        let resource = |name: &str| Resource {
            attributes: vec![text("service.name", name)],
            ..Resource::default()
        };
        let request = ExportTraceServiceRequest {
            resource_spans: ["a", "b"]
                .iter()
                .enumerate()
                .map(|(r, name)| ResourceSpans {
                    resource: Some(resource(name)),
                    scope_spans: vec![ScopeSpans {
                        spans: (0..3).map(|i| span(r as u8 * 3 + i)).collect(),
                        ..ScopeSpans::default()
                    }],
                    ..ResourceSpans::default()
                })
                .collect(),
        };
        let [first, second] = halves(request, 6);
        let ids = |r: &ExportTraceServiceRequest| -> Vec<(String, u8)> {
            r.resource_spans
                .iter()
                .flat_map(|rs| {
                    let name = match &rs.resource.as_ref().unwrap().attributes[0].value {
                        Some(AnyValue {
                            value: Some(Value::StringValue(s)),
                        }) => s.clone(),
                        _ => String::new(),
                    };
                    rs.scope_spans
                        .iter()
                        .flat_map(|ss| &ss.spans)
                        .map(move |s| (name.clone(), s.span_id[0]))
                })
                .collect()
        };
        assert_eq!(
            ids(&first),
            [("a".into(), 0), ("a".into(), 1), ("a".into(), 2)]
        );
        assert_eq!(
            ids(&second),
            [("b".into(), 3), ("b".into(), 4), ("b".into(), 5)]
        );
        let [first, second] = halves(first, 3);
        assert_eq!((ids(&first).len(), ids(&second).len()), (1, 2));
    }
}
