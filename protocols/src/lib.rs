//! Tangle's L7 parsers. Each turns the two byte streams of one TCP
//! connection into **exchanges**: a request and its response, with the
//! operation asked, the status, sizes and timings.
//!
//! One parser per protocol behind [`Parser`]; [`detect`] picks one from the
//! first bytes (never from ports); [`Connection`] holds the pair for one
//! connection. Parsers are incremental: a message may span many transfers,
//! one transfer may hold many messages, and a transfer of which only the
//! first bytes were captured (its full length is known) is skipped over
//! where the protocol's framing allows.

pub mod exchange;
mod framing;
mod held;
pub mod http1;
pub mod http2;
pub mod mysql;
pub mod normalize;
pub mod postgres;
pub mod redis;
pub mod sql;

pub use exchange::{
    Exchange, Fields, GrpcFields, HttpFields, Protocol, RedisFields, SqlFields, Status,
    TraceContext,
};

/// `N` bytes of `b` from `at`, if it has them.
pub(crate) fn array<const N: usize>(b: &[u8], at: usize) -> Option<[u8; N]> {
    b.get(at..at.checked_add(N)?)?.try_into().ok()
}

/// `s` cut to at most `max` bytes, on a character boundary (never inside one).
pub fn truncate_chars(s: &mut String, max: usize) {
    if s.len() > max {
        let at = s.floor_char_boundary(max);
        s.truncate(at);
    }
}

/// A header value as kept: at most `max` bytes, cut on a character.
pub(crate) fn kept(value: &str, max: usize) -> String {
    // Only the part kept is copied.
    value
        .get(..value.floor_char_boundary(max))
        .unwrap_or_default()
        .to_owned()
}

/// Header values kept (host, trace context, request id), at most.
pub(crate) const MAX_HEADER_VALUE: usize = 256;

/// Which way bytes flow, relative to the call: client to server carries
/// requests, server to client carries responses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    Request,
    Response,
}

/// The bytes of one transfer (one syscall) on one side of a connection.
#[derive(Clone, Copy, Debug)]
pub struct Chunk<'a> {
    pub side: Side,
    /// When the transfer completed (ns, any monotonic clock).
    pub ts_ns: u64,
    /// The captured bytes: the first `bytes.len()` of `total_len`.
    pub bytes: &'a [u8],
    /// The transfer's full length (>= `bytes.len()`).
    pub total_len: u64,
    /// The TCP sequence number of the transfer's first byte, if known:
    /// each exchange's request gets the number of its first byte, which
    /// the other end of the connection sees too (the join key).
    pub seq: Option<u32>,
}

impl<'a> Chunk<'a> {
    /// A chunk whose bytes were captured whole.
    pub fn whole(side: Side, ts_ns: u64, bytes: &'a [u8]) -> Self {
        Self {
            side,
            ts_ns,
            bytes,
            total_len: bytes.len() as u64,
            seq: None,
        }
    }

    /// The chunk, its first byte numbered `seq` on the TCP stream.
    pub fn with_seq(self, seq: Option<u32>) -> Self {
        Self { seq, ..self }
    }

    /// Bytes of the transfer that were not captured.
    pub fn missing(&self) -> u64 {
        self.total_len.saturating_sub(self.bytes.len() as u64)
    }
}

/// Counters of what a parser could not make sense of. Never fatal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ParserStats {
    /// Messages that did not parse; the parser skipped to a point it could resync.
    pub parse_errors: u64,
    /// Times bytes were lost where the framing needed them (capture truncated a header).
    pub desyncs: u64,
    /// Responses with no request to pair with.
    pub unmatched_responses: u64,
    /// Requests dropped because too many were waiting for responses.
    pub dropped_requests: u64,
    /// Times a parser panicked on a connection's bytes: that connection was
    /// no longer parsed, the others were not affected.
    pub panics: u64,
}

impl std::ops::Add for ParserStats {
    type Output = Self;

    fn add(self, o: Self) -> Self {
        Self {
            parse_errors: self.parse_errors + o.parse_errors,
            desyncs: self.desyncs + o.desyncs,
            unmatched_responses: self.unmatched_responses + o.unmatched_responses,
            dropped_requests: self.dropped_requests + o.dropped_requests,
            panics: self.panics + o.panics,
        }
    }
}

/// One protocol's parser for one connection.
pub trait Parser: Send {
    fn protocol(&self) -> Protocol;
    /// Feeds one transfer; completed exchanges are pushed to `out`.
    fn feed(&mut self, chunk: Chunk<'_>, out: &mut Vec<Exchange>);
    /// The connection ended: requests still waiting are pushed without a response.
    fn finish(&mut self, ts_ns: u64, out: &mut Vec<Exchange>);
    fn stats(&self) -> ParserStats;
    /// Bytes held for messages not complete yet (what a memory budget counts).
    fn buffered(&self) -> usize;
}

/// Picks the protocol from the first bytes seen on a connection, or None.
pub fn detect(side: Side, first: &[u8]) -> Option<Protocol> {
    if http2::looks_like(side, first) {
        Some(Protocol::Http2)
    } else if http1::looks_like(side, first) {
        Some(Protocol::Http1)
    } else if redis::looks_like(side, first) {
        Some(Protocol::Redis)
    } else if postgres::looks_like(side, first) {
        Some(Protocol::Postgres)
    } else if mysql::looks_like(side, first) {
        Some(Protocol::Mysql)
    } else {
        None
    }
}

/// A parser for `protocol`.
pub fn parser_for(protocol: Protocol) -> Box<dyn Parser> {
    match protocol {
        Protocol::Http1 => Box::new(http1::Http1Parser::default()),
        Protocol::Http2 => Box::new(http2::Http2Parser::default()),
        Protocol::Redis => Box::new(redis::RedisParser::default()),
        Protocol::Postgres => Box::new(postgres::PostgresParser::default()),
        Protocol::Mysql => Box::new(mysql::MysqlParser::default()),
    }
}

/// A transfer held while detection is undecided.
struct HeldChunk {
    side: Side,
    ts_ns: u64,
    bytes: Vec<u8>,
    total_len: u64,
    seq: Option<u32>,
}

/// The parsing state of one connection: detection, then its protocol's parser.
///
/// A parser that panics (a bug, never an expected outcome) is caught here:
/// the connection is no longer parsed, the panic is counted in its stats,
/// and whatever feeds many connections goes on with the others.
#[derive(Default)]
pub struct Connection {
    parser: Option<Box<dyn Parser>>,
    /// The protocol, and the counters of a parser since dropped.
    protocol: Option<Protocol>,
    retired: ParserStats,
    /// Transfers held while detection is undecided (the first may be a few bytes).
    held: Vec<HeldChunk>,
    /// Bytes `held` takes.
    held_bytes: usize,
    /// The start of each side's stream (request, response), as long as it
    /// was captured whole: what detection reads.
    first: [Vec<u8>; 2],
    /// A side's start was cut by the capture: nothing more is added to it.
    first_cut: [bool; 2],
    /// Detection gave up: not a protocol we parse.
    gave_up: bool,
    /// Transfers seen while the protocol was unknown.
    pub undetected_chunks: u64,
}

impl Connection {
    /// Client transfers held before detection gives up on a connection.
    const DETECT_TRIES: usize = 8;
    /// Bytes of one side enough to decide.
    const DETECT_BYTES: usize = 16;
    /// Bytes of a side's start detection looks at, at most.
    const DETECT_WINDOW: usize = 256;
    /// Transfers held while undecided, at most.
    const DETECT_HELD: usize = 32;
    /// Bytes held while undecided, at most.
    const DETECT_HELD_BYTES: usize = 64 * 1024;

    pub fn protocol(&self) -> Option<Protocol> {
        self.protocol
    }

    /// Runs `f` on this connection; a panic in it ends the connection's parsing.
    fn guarded(&mut self, f: impl FnOnce(&mut Self)) {
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(self)));
        if caught.is_err() {
            self.abandon();
            self.retired.panics += 1;
        }
    }

    pub fn feed(&mut self, chunk: Chunk<'_>, out: &mut Vec<Exchange>) {
        self.guarded(|c| c.feed_unguarded(chunk, out));
    }

    fn feed_unguarded(&mut self, chunk: Chunk<'_>, out: &mut Vec<Exchange>) {
        if let Some(p) = self.parser.as_mut() {
            p.feed(chunk, out);
            return;
        }
        if self.gave_up {
            self.undetected_chunks += 1;
            return;
        }
        let s = usize::from(chunk.side == Side::Response);
        if let (Some(first), Some(cut)) = (self.first.get_mut(s), self.first_cut.get_mut(s))
            && !*cut
        {
            let room = Self::DETECT_WINDOW.saturating_sub(first.len());
            first.extend_from_slice(
                chunk
                    .bytes
                    .get(..room.min(chunk.bytes.len()))
                    .unwrap_or_default(),
            );
            *cut = chunk.missing() > 0;
        }
        let held = HeldChunk {
            side: chunk.side,
            ts_ns: chunk.ts_ns,
            bytes: chunk.bytes.to_vec(),
            total_len: chunk.total_len,
            seq: chunk.seq,
        };
        self.held_bytes += held.bytes.capacity() + std::mem::size_of::<HeldChunk>();
        self.held.push(held);
        let first = self.first.get(s).map(Vec::as_slice).unwrap_or_default();
        match detect(chunk.side, first) {
            Some(p) => {
                let mut parser = parser_for(p);
                for h in self.held.drain(..) {
                    parser.feed(
                        Chunk {
                            side: h.side,
                            ts_ns: h.ts_ns,
                            bytes: &h.bytes,
                            total_len: h.total_len,
                            seq: h.seq,
                        },
                        out,
                    );
                }
                self.held_bytes = 0;
                self.first = Default::default();
                self.protocol = Some(p);
                self.parser = Some(parser);
            }
            // Every protocol here is known from its client's first bytes;
            // servers that speak first (HTTP/2 SETTINGS, MySQL's greeting)
            // are held until the client has said enough.
            None if chunk.side == Side::Request
                && (first.len() >= Self::DETECT_BYTES
                    || self.held.iter().filter(|h| h.side == Side::Request).count()
                        >= Self::DETECT_TRIES)
                || self.held.len() >= Self::DETECT_HELD
                || self.held_bytes > Self::DETECT_HELD_BYTES =>
            {
                // Long enough and still unknown: not a protocol we parse.
                self.undetected_chunks += self.held.len() as u64;
                self.abandon();
            }
            None => {}
        }
    }

    pub fn finish(&mut self, ts_ns: u64, out: &mut Vec<Exchange>) {
        self.guarded(|c| {
            if let Some(p) = c.parser.as_mut() {
                p.finish(ts_ns, out);
            }
        });
    }

    pub fn stats(&self) -> ParserStats {
        self.retired + self.parser.as_ref().map(|p| p.stats()).unwrap_or_default()
    }

    /// Bytes held: transfers awaiting detection and the parser's partial messages.
    pub fn buffered(&self) -> usize {
        self.held_bytes
            + self.first.iter().map(Vec::capacity).sum::<usize>()
            + self.parser.as_ref().map_or(0, |p| p.buffered())
    }

    /// Stops parsing this connection and frees what it held (a memory
    /// budget was exceeded); later transfers are counted as undetected.
    pub fn abandon(&mut self) {
        if let Some(p) = self.parser.take() {
            // Taking its counters could panic too, if the parser is broken.
            let stats = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| p.stats()));
            self.retired = self.retired + stats.unwrap_or_default();
        }
        self.held = Vec::new();
        self.held_bytes = 0;
        self.first = Default::default();
        self.gave_up = true;
    }
}

/// Feeds whole transfers, one per timestamp, then finishes at 99.
#[cfg(test)]
pub(crate) fn run_parser(
    mut p: impl Parser,
    chunks: &[(Side, &[u8])],
) -> (Vec<Exchange>, ParserStats) {
    let mut out = Vec::new();
    for (i, (side, bytes)) in chunks.iter().enumerate() {
        p.feed(Chunk::whole(*side, i as u64, bytes), &mut out);
    }
    p.finish(99, &mut out);
    (out, p.stats())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undetected_transfers_are_held_within_bounds() {
        // A server writing with sendfile (lengths, no bytes), then a client
        // reading a byte at a time: nothing decides the protocol.
        let mut c = Connection::default();
        let mut out = Vec::new();
        for i in 0..100_000u64 {
            let chunk = Chunk {
                side: Side::Response,
                ts_ns: i,
                bytes: if i % 2 == 0 { b"" } else { b"x" },
                total_len: 1 << 20,
                seq: None,
            };
            c.feed(chunk, &mut out);
            assert!(c.buffered() < 64 * 1024, "held {} bytes", c.buffered());
        }
        assert_eq!(c.protocol(), None);
        assert!(
            c.undetected_chunks > 99_000,
            "given up: {}",
            c.undetected_chunks
        );
    }
}
