//! HTTP/2 (cleartext, prior knowledge) and gRPC over it: frames per stream,
//! HPACK with each direction's dynamic table, `:method`, `:path`, `:status`,
//! gRPC service and method, `grpc-status` from trailers, multiplexed
//! streams. DATA payloads are passed over, captured or not.

use std::collections::HashMap;

use loona_hpack::Decoder;

use crate::{
    Chunk, Exchange, Fields, GrpcFields, HttpFields, MAX_HEADER_VALUE, Parser, ParserStats,
    Protocol, Side, Status,
    framing::{Completed, Frame, SideStream},
    held::HeapSize,
    kept,
    normalize::route,
};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const CONTINUATION: u8 = 9;
const ACK: u8 = 0x1;
/// SETTINGS_HEADER_TABLE_SIZE.
const HEADER_TABLE_SIZE: u16 = 1;
/// The HPACK dynamic table until a SETTINGS frame says otherwise (RFC 7540).
const DEFAULT_TABLE: usize = 4096;
/// The largest dynamic table a peer may make us keep, whatever it announces.
const MAX_TABLE: usize = 64 * 1024;
/// A SETTINGS payload read, at most (6 bytes per setting).
const MAX_SETTINGS: usize = 6 * 32;
/// Bytes of a gRPC `:path` kept (`/package.Service/Method`).
const MAX_GRPC_PATH: usize = 512;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// Streams open at once, at most.
const MAX_STREAMS: usize = 1024;
/// A header block (with its continuations) kept, at most.
const MAX_HEADER_BLOCK: usize = 64 * 1024;

/// The client's connection preface (`PRI * HTTP/2.0...`), or its start.
pub fn looks_like(side: Side, first: &[u8]) -> bool {
    side == Side::Request
        && first.len() >= 4
        && PREFACE.starts_with(
            first
                .get(..first.len().min(PREFACE.len()))
                .unwrap_or_default(),
        )
}

/// A frame's header, with the payload when the parser needs it.
struct H2Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    /// For HEADERS, CONTINUATION and RST_STREAM: the payload.
    payload: Vec<u8>,
    /// The preface (client side only).
    preface: bool,
}

fn frame(b: &[u8], _: &mut ()) -> Frame<H2Frame> {
    if b.starts_with(PREFACE) {
        let msg = H2Frame {
            kind: 0xff,
            flags: 0,
            stream: 0,
            payload: Vec::new(),
            preface: true,
        };
        return Frame::Message {
            head: PREFACE.len(),
            body: 0,
            msg,
        };
    }
    let Some(h) =
        crate::array::<9>(b, 0).filter(|_| !(b.len() < PREFACE.len() && PREFACE.starts_with(b)))
    else {
        return Frame::Incomplete;
    };
    let [l0, l1, l2, kind, flags, s0, s1, s2, s3] = h;
    let len = u32::from_be_bytes([0, l0, l1, l2]) as usize;
    let stream = u32::from_be_bytes([s0, s1, s2, s3]) & 0x7fff_ffff;
    // Types past 0x10 are unassigned: more likely lost sync than an extension.
    if len > 1 << 24 || kind > 0x10 {
        return Frame::Invalid;
    }
    let needs_payload = matches!(kind, HEADERS | CONTINUATION | RST_STREAM)
        || kind == SETTINGS && flags & ACK == 0 && len <= MAX_SETTINGS;
    if needs_payload {
        if len > MAX_HEADER_BLOCK {
            return Frame::Invalid;
        }
        if b.len() < 9 + len {
            return Frame::Incomplete;
        }
        let msg = H2Frame {
            kind,
            flags,
            stream,
            payload: b.get(9..9 + len).unwrap_or_default().to_vec(),
            preface: false,
        };
        return Frame::Message {
            head: 9 + len,
            body: 0,
            msg,
        };
    }
    Frame::Message {
        head: 9,
        body: len as u64,
        msg: H2Frame {
            kind,
            flags,
            stream,
            payload: Vec::new(),
            preface: false,
        },
    }
}

#[derive(Default)]
struct Stream {
    /// Bytes counted for this stream in the parser's `held`.
    counted: usize,
    /// The request's `:path` as sent, until the stream ends: a gRPC method's
    /// name is kept whole, any other path becomes a route.
    raw_path: String,
    fields: HttpFields,
    grpc: bool,
    grpc_status: Option<String>,
    start_ns: Option<u64>,
    /// The sequence number of the request's first frame.
    start_seq: Option<u32>,
    request_size: u64,
    request_end_ns: u64,
    response_size: u64,
    responded: bool,
    truncated: bool,
}

/// One direction's header decoding: HPACK state and a block in progress.
struct Headers {
    decoder: Decoder<'static>,
    /// (stream, flags of the HEADERS frame, block so far) awaiting END_HEADERS.
    block: Option<(u32, u8, Vec<u8>)>,
    /// A gap lost a header block: the dynamic table may be wrong from here on.
    damaged: bool,
    /// The dynamic table's most bytes (what the other side announced, capped).
    table_limit: usize,
}

impl Default for Headers {
    fn default() -> Self {
        let mut decoder = Decoder::new();
        // A table size update past what was announced is an error, not an
        // allocation: the peer's table never grows past it.
        decoder.set_max_allowed_table_size(DEFAULT_TABLE);
        Self {
            decoder,
            block: None,
            damaged: false,
            table_limit: DEFAULT_TABLE,
        }
    }
}

#[derive(Default)]
pub struct Http2Parser {
    requests: SideStream<H2Frame>,
    responses: SideStream<H2Frame>,
    req_headers: Headers,
    resp_headers: Headers,
    streams: HashMap<u32, Stream>,
    /// Bytes the streams hold (their `counted`).
    held: usize,
    stats: ParserStats,
}

impl Stream {
    fn cost(&self) -> usize {
        std::mem::size_of::<Self>()
            + 16
            + self.raw_path.capacity()
            + self.fields.heap_size()
            + self.grpc_status.heap_size()
    }
}

/// The payload of a HEADERS frame without padding and priority fields.
fn header_fragment(flags: u8, payload: &[u8]) -> Option<&[u8]> {
    let mut p = payload;
    let mut pad = 0usize;
    if flags & PADDED != 0 {
        pad = *p.first()? as usize;
        p = p.get(1..)?;
    }
    if flags & PRIORITY != 0 {
        p = p.get(5..)?;
    }
    p.get(..p.len().checked_sub(pad)?)
}

impl Http2Parser {
    fn frame(&mut self, side: Side, c: Completed<H2Frame>, out: &mut Vec<Exchange>) {
        // The frame, and where and when it was: what `count` takes.
        let Completed {
            msg: f,
            start_ns,
            start_seq,
            end_ns,
            size,
            truncated,
        } = c;
        let c = Completed {
            msg: (),
            start_ns,
            start_seq,
            end_ns,
            size,
            truncated,
        };
        if f.kind == SETTINGS && f.stream == 0 {
            self.settings(side, &f.payload);
            return;
        }
        if f.preface || f.stream == 0 {
            return;
        }
        match f.kind {
            HEADERS | CONTINUATION => {
                let h = if side == Side::Request {
                    &mut self.req_headers
                } else {
                    &mut self.resp_headers
                };
                let fragment = if f.kind == HEADERS {
                    match header_fragment(f.flags, &f.payload) {
                        Some(frag) => {
                            h.block = Some((f.stream, f.flags, frag.to_vec()));
                            true
                        }
                        None => false,
                    }
                } else {
                    match h.block.as_mut() {
                        Some((stream, _, block))
                            if *stream == f.stream
                                && block.len() + f.payload.len() <= MAX_HEADER_BLOCK =>
                        {
                            block.extend_from_slice(&f.payload);
                            true
                        }
                        _ => false,
                    }
                };
                if !fragment {
                    self.stats.parse_errors += 1;
                    return;
                }
                self.count(side, f.stream, &c);
                if f.flags & END_HEADERS == 0 {
                    return;
                }
                let h = if side == Side::Request {
                    &mut self.req_headers
                } else {
                    &mut self.resp_headers
                };
                let Some((stream, flags, block)) = h.block.take() else {
                    return;
                };
                let mut pairs: Vec<(String, String)> = Vec::new();
                let decoded = h.decoder.decode_with_cb(&block, |name, value| {
                    // Only what is kept (nothing from authorization or
                    // cookie), the first of each name, cut to length: a
                    // block of references to one big table entry costs no
                    // more than one.
                    const KEPT: &[&str] = &[
                        ":method",
                        ":path",
                        ":authority",
                        ":status",
                        "content-type",
                        "grpc-status",
                        "traceparent",
                        "b3",
                        "x-b3-traceid",
                        "x-b3-spanid",
                        "x-request-id",
                    ];
                    let Some(name) = KEPT
                        .iter()
                        .find(|k| name.eq_ignore_ascii_case(k.as_bytes()))
                    else {
                        return;
                    };
                    if pairs.len() < KEPT.len() && !pairs.iter().any(|(n, _)| n == name) {
                        let value = value
                            .get(..value.len().min(MAX_GRPC_PATH))
                            .unwrap_or_default();
                        pairs.push((
                            (*name).to_owned(),
                            String::from_utf8_lossy(value).into_owned(),
                        ));
                    }
                });
                if decoded.is_err() {
                    self.stats.parse_errors += 1;
                    h.damaged = true;
                }
                // Headers decoded with a table a gap may have corrupted are suspect.
                let damaged = h.damaged;
                if damaged && let Some(s) = self.streams.get_mut(&stream) {
                    s.truncated = true;
                }
                let end_stream = flags & END_STREAM != 0;
                self.headers(side, stream, pairs, end_stream, c.end_ns, out);
            }
            DATA => {
                self.count(side, f.stream, &c);
                if f.flags & END_STREAM != 0 {
                    self.end(side, f.stream, c.end_ns, out);
                }
            }
            RST_STREAM => {
                self.count(side, f.stream, &c);
                if let Some(s) = self.streams.get_mut(&f.stream) {
                    s.responded = true;
                    s.grpc_status.get_or_insert_with(|| "RST_STREAM".into());
                }
                self.finish_stream(f.stream, c.end_ns, true, out);
            }
            _ => {}
        }
    }

    /// A SETTINGS frame from `side`: its header table size bounds the
    /// table of the headers the *other* side encodes.
    fn settings(&mut self, side: Side, payload: &[u8]) {
        let h = match side {
            Side::Request => &mut self.resp_headers,
            Side::Response => &mut self.req_headers,
        };
        for setting in payload.chunks_exact(6) {
            if let [a, b, v0, v1, v2, v3] = *setting
                && u16::from_be_bytes([a, b]) == HEADER_TABLE_SIZE
            {
                let size = u32::from_be_bytes([v0, v1, v2, v3]) as usize;
                h.table_limit = size.clamp(DEFAULT_TABLE, MAX_TABLE);
                h.decoder.set_max_allowed_table_size(h.table_limit);
            }
        }
    }

    /// Counts `stream`'s bytes again after a change.
    fn recount(&mut self, stream: u32) {
        if let Some(s) = self.streams.get_mut(&stream) {
            let now = s.cost();
            self.held = self.held + now - s.counted;
            s.counted = now;
        }
    }

    /// Counts a frame of `stream` on `side`: its bytes, and for the
    /// request its first frame's time and sequence number.
    fn count(&mut self, side: Side, stream: u32, frame: &Completed<()>) {
        let Completed {
            start_ns,
            start_seq,
            end_ns,
            size,
            truncated,
            ..
        } = *frame;
        if !self.streams.contains_key(&stream) && self.streams.len() >= MAX_STREAMS {
            self.stats.dropped_requests += 1;
            return;
        }
        let s = self.streams.entry(stream).or_default();
        s.truncated |= truncated;
        match side {
            Side::Request => {
                if s.start_ns.is_none() {
                    s.start_ns = Some(start_ns);
                    s.start_seq = start_seq;
                }
                s.request_size += size;
                s.request_end_ns = end_ns;
            }
            Side::Response => s.response_size += size,
        }
        if s.counted == 0 {
            self.recount(stream);
        }
    }

    fn headers(
        &mut self,
        side: Side,
        stream: u32,
        pairs: Vec<(String, String)>,
        end_stream: bool,
        ts: u64,
        out: &mut Vec<Exchange>,
    ) {
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        for (name, value) in pairs {
            match (side, name.as_str()) {
                (Side::Request, ":method") => s.fields.method = kept(&value, 32),
                (Side::Request, ":path") => s.raw_path = kept(&value, MAX_GRPC_PATH),
                (Side::Request, ":authority") => {
                    s.fields.host = Some(kept(&value, MAX_HEADER_VALUE))
                }
                (Side::Request, "content-type") => s.grpc = value.starts_with("application/grpc"),
                (Side::Request, "traceparent") => {
                    s.fields.trace.traceparent = Some(kept(&value, MAX_HEADER_VALUE))
                }
                (Side::Request, b3) if s.fields.trace.add_b3_header(b3, &value) => {}
                (Side::Request, "x-request-id") => {
                    s.fields.trace.request_id = Some(kept(&value, MAX_HEADER_VALUE))
                }
                (Side::Response, ":status") => s.fields.status = value.parse().ok(),
                (Side::Response, "grpc-status") => s.grpc_status = Some(kept(&value, 16)),
                _ => {}
            }
        }
        if side == Side::Response {
            s.responded = true;
        }
        self.recount(stream);
        if end_stream {
            self.end(side, stream, ts, out);
        }
    }

    fn end(&mut self, side: Side, stream: u32, ts: u64, out: &mut Vec<Exchange>) {
        if side == Side::Response {
            self.finish_stream(stream, ts, true, out);
        }
    }

    fn finish_stream(
        &mut self,
        stream: u32,
        end_ns: u64,
        responded: bool,
        out: &mut Vec<Exchange>,
    ) {
        let Some(mut s) = self.streams.remove(&stream) else {
            return;
        };
        self.held -= s.counted;
        if s.fields.method.is_empty() && s.raw_path.is_empty() {
            // Headers lost to a gap: nothing to name the exchange by.
            self.stats.unmatched_responses += 1;
            return;
        }
        // A gRPC path names a method, never data: kept whole. Any other
        // path is a route.
        let path = s.raw_path.split(['?', '#']).next().unwrap_or_default();
        s.fields.path = if s.grpc {
            path.to_owned()
        } else {
            route(&s.raw_path)
        };
        let grpc = s.grpc.then(|| {
            let mut parts = s.fields.path.trim_start_matches('/').splitn(2, '/');
            GrpcFields {
                service: parts.next().unwrap_or("").to_owned(),
                method: parts.next().unwrap_or("").to_owned(),
                status: s.grpc_status.clone(),
            }
        });
        let status = match (&grpc, s.fields.status) {
            _ if !responded || !s.responded => Status::NoResponse,
            (Some(g), _) => match g.status.as_deref() {
                Some("0") => Status::Ok {
                    code: Some("0".into()),
                },
                Some(code) => Status::Error {
                    code: code.to_owned(),
                },
                None => Status::Error {
                    code: "missing grpc-status".into(),
                },
            },
            (None, Some(code)) if code >= 500 => Status::Error {
                code: code.to_string(),
            },
            (None, code) => Status::Ok {
                code: code.map(|c| c.to_string()),
            },
        };
        let operation = match &grpc {
            Some(g) => format!("grpc {}/{}", g.service, g.method),
            None => format!("{} {}", s.fields.method, s.fields.path),
        };
        let mut fields = s.fields;
        fields.grpc = grpc;
        out.push(Exchange {
            protocol: Protocol::Http2,
            operation,
            status,
            sync: true,
            start_ns: s.start_ns.unwrap_or(end_ns),
            request_seq: s.start_seq,
            end_ns: if responded { end_ns } else { s.request_end_ns },
            request_size: s.request_size,
            response_size: s.response_size,
            truncated: s.truncated,
            fields: Fields::Http(fields),
        });
    }
}

impl Parser for Http2Parser {
    fn protocol(&self) -> Protocol {
        Protocol::Http2
    }

    fn feed(&mut self, chunk: Chunk<'_>, out: &mut Vec<Exchange>) {
        let side = chunk.side;
        let mut done = Vec::new();
        let stream = if side == Side::Request {
            &mut self.requests
        } else {
            &mut self.responses
        };
        let desyncs = stream.stats.desyncs;
        // After a gap, a transfer that starts with a plausible frame header regains sync.
        stream.feed(
            chunk,
            frame,
            |b| b.len() >= 9 && b.get(3).is_some_and(|&t| t <= CONTINUATION),
            |c| done.push(c),
        );
        if stream.stats.desyncs != desyncs {
            let h = if side == Side::Request {
                &mut self.req_headers
            } else {
                &mut self.resp_headers
            };
            h.damaged = true;
            h.block = None;
        }
        for c in done {
            self.frame(side, c, out);
        }
    }

    fn finish(&mut self, ts_ns: u64, out: &mut Vec<Exchange>) {
        let open: Vec<u32> = self.streams.keys().copied().collect();
        let mut open = open;
        open.sort_unstable();
        for id in open {
            self.finish_stream(id, ts_ns, false, out);
        }
    }

    fn stats(&self) -> ParserStats {
        self.requests.stats + self.responses.stats + self.stats
    }

    fn buffered(&self) -> usize {
        let tables = self.req_headers.table_limit + self.resp_headers.table_limit;
        let blocks = [&self.req_headers, &self.resp_headers]
            .iter()
            .filter_map(|h| h.block.as_ref())
            .map(|(_, _, b)| b.capacity())
            .sum::<usize>();
        self.requests.buffered() + self.responses.buffered() + self.held + tables + blocks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_bytes(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = len.to_be_bytes()[1..].to_vec();
        f.extend([kind, flags]);
        f.extend(stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// An HPACK integer with an `n`-bit prefix under `first`'s flag bits.
    fn int(first: u8, n: u32, mut v: usize) -> Vec<u8> {
        let max = (1usize << n) - 1;
        if v < max {
            return vec![first | v as u8];
        }
        let mut out = vec![first | max as u8];
        v -= max;
        while v >= 128 {
            out.push((v % 128) as u8 | 0x80);
            v /= 128;
        }
        out.push(v as u8);
        out
    }

    /// A literal header field with incremental indexing, new name.
    fn indexed_literal(name: &[u8], value: &[u8]) -> Vec<u8> {
        let mut b = vec![0x40];
        b.extend(int(0, 7, name.len()));
        b.extend_from_slice(name);
        b.extend(int(0, 7, value.len()));
        b.extend_from_slice(value);
        b
    }

    #[test]
    fn a_peer_cannot_grow_the_header_table() {
        let mut p = Http2Parser::default();
        let mut out = Vec::new();
        let mut feed = |p: &mut Http2Parser, bytes: &[u8]| {
            p.feed(Chunk::whole(Side::Request, 1, bytes), &mut out)
        };
        feed(&mut p, PREFACE);
        let before = p.buffered();
        // A table size update to 1 GiB, then a block of big indexed headers.
        let mut block = int(0x20, 5, 1 << 30);
        block.extend(indexed_literal(b"x-a", &[b'a'; 4000]));
        feed(&mut p, &frame_bytes(HEADERS, END_HEADERS, 1, &block));
        assert!(p.stats().parse_errors >= 1, "the update is refused");
        // Many blocks that each index 16 KiB more: the table stays at its limit.
        for stream in (3..400).step_by(2) {
            let mut block = Vec::new();
            for i in 0..4 {
                block.extend(indexed_literal(format!("x-{i}").as_bytes(), &[b'v'; 4000]));
            }
            feed(&mut p, &frame_bytes(HEADERS, END_HEADERS, stream, &block));
        }
        let after = p.buffered();
        assert!(
            after <= before + 1024 * 1024,
            "held {after} bytes (was {before})"
        );
        // Streams never answered are counted too, and given back at the end.
        assert!(after > before);
        p.finish(2, &mut Vec::new());
        assert_eq!(p.held, 0);
    }

    #[test]
    fn announced_table_sizes_are_capped() {
        let mut p = Http2Parser::default();
        let mut out = Vec::new();
        p.feed(Chunk::whole(Side::Request, 1, PREFACE), &mut out);
        // The client announces a 1 GiB table for the server's headers.
        let mut setting = HEADER_TABLE_SIZE.to_be_bytes().to_vec();
        setting.extend((1u32 << 30).to_be_bytes());
        p.feed(
            Chunk::whole(Side::Request, 2, &frame_bytes(SETTINGS, 0, 0, &setting)),
            &mut out,
        );
        assert_eq!(p.resp_headers.table_limit, MAX_TABLE);
        assert_eq!(p.req_headers.table_limit, DEFAULT_TABLE);
    }
}
