//! HTTP/2 (cleartext, prior knowledge) and gRPC over it: frames per stream,
//! HPACK with each direction's dynamic table, `:method`, `:path`, `:status`,
//! gRPC service and method, `grpc-status` from trailers, multiplexed
//! streams. DATA payloads are passed over, captured or not.

use std::collections::HashMap;

use loona_hpack::Decoder;

use crate::{
    Chunk, Exchange, Fields, GrpcFields, HttpFields, Parser, ParserStats, Protocol, Side, Status,
    framing::{Completed, Frame, SideStream},
    normalize::normalize_path,
};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const CONTINUATION: u8 = 9;
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
        && PREFACE.starts_with(&first[..first.len().min(PREFACE.len())])
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

fn frame(b: &[u8]) -> Frame<H2Frame> {
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
    if b.len() < PREFACE.len() && PREFACE.starts_with(b) || b.len() < 9 {
        return Frame::Incomplete;
    }
    let len = u32::from_be_bytes([0, b[0], b[1], b[2]]) as usize;
    let (kind, flags) = (b[3], b[4]);
    let stream = u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff;
    // Types past 0x10 are unassigned: more likely lost sync than an extension.
    if len > 1 << 24 || kind > 0x10 {
        return Frame::Invalid;
    }
    let needs_payload = matches!(kind, HEADERS | CONTINUATION | RST_STREAM);
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
            payload: b[9..9 + len].to_vec(),
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
    fields: HttpFields,
    grpc: bool,
    grpc_status: Option<String>,
    start_ns: Option<u64>,
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
}

impl Default for Headers {
    fn default() -> Self {
        Self {
            decoder: Decoder::new(),
            block: None,
            damaged: false,
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
    stats: ParserStats,
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
        let f = c.msg;
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
                self.count(side, f.stream, c.start_ns, c.end_ns, c.size, c.truncated);
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
                    let name = String::from_utf8_lossy(&name).to_ascii_lowercase();
                    // Only what is kept: nothing from authorization or cookie.
                    if matches!(
                        name.as_str(),
                        ":method"
                            | ":path"
                            | ":authority"
                            | ":status"
                            | "content-type"
                            | "grpc-status"
                            | "traceparent"
                            | "b3"
                            | "x-b3-traceid"
                            | "x-b3-spanid"
                            | "x-request-id"
                    ) {
                        pairs.push((name, String::from_utf8_lossy(&value).into_owned()));
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
                self.count(side, f.stream, c.start_ns, c.end_ns, c.size, c.truncated);
                if f.flags & END_STREAM != 0 {
                    self.end(side, f.stream, c.end_ns, out);
                }
            }
            RST_STREAM => {
                self.count(side, f.stream, c.start_ns, c.end_ns, c.size, c.truncated);
                if let Some(s) = self.streams.get_mut(&f.stream) {
                    s.responded = true;
                    s.grpc_status.get_or_insert_with(|| "RST_STREAM".into());
                }
                self.finish_stream(f.stream, c.end_ns, true, out);
            }
            _ => {}
        }
    }

    fn count(
        &mut self,
        side: Side,
        stream: u32,
        start_ns: u64,
        end_ns: u64,
        size: u64,
        truncated: bool,
    ) {
        if !self.streams.contains_key(&stream) && self.streams.len() >= MAX_STREAMS {
            self.stats.dropped_requests += 1;
            return;
        }
        let s = self.streams.entry(stream).or_default();
        s.truncated |= truncated;
        match side {
            Side::Request => {
                s.start_ns.get_or_insert(start_ns);
                s.request_size += size;
                s.request_end_ns = end_ns;
            }
            Side::Response => s.response_size += size,
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
                (Side::Request, ":method") => s.fields.method = value,
                (Side::Request, ":path") => {
                    s.fields.path = value.split(['?', '#']).next().unwrap_or("").to_owned()
                }
                (Side::Request, ":authority") => s.fields.host = Some(value),
                (Side::Request, "content-type") => s.grpc = value.starts_with("application/grpc"),
                (Side::Request, "traceparent") => s.fields.trace.traceparent = Some(value),
                (Side::Request, b3) if s.fields.trace.add_b3_header(b3, &value) => {}
                (Side::Request, "x-request-id") => s.fields.trace.request_id = Some(value),
                (Side::Response, ":status") => s.fields.status = value.parse().ok(),
                (Side::Response, "grpc-status") => s.grpc_status = Some(value),
                _ => {}
            }
        }
        if side == Side::Response {
            s.responded = true;
        }
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
        let Some(s) = self.streams.remove(&stream) else {
            return;
        };
        if s.fields.method.is_empty() && s.fields.path.is_empty() {
            // Headers lost to a gap: nothing to name the exchange by.
            self.stats.unmatched_responses += 1;
            return;
        }
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
            None => format!("{} {}", s.fields.method, normalize_path(&s.fields.path)),
        };
        let mut fields = s.fields;
        fields.grpc = grpc;
        out.push(Exchange {
            protocol: Protocol::Http2,
            operation,
            status,
            sync: true,
            start_ns: s.start_ns.unwrap_or(end_ns),
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
            |b| b.len() >= 9 && b[3] <= CONTINUATION,
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
        self.requests.buffered() + self.responses.buffered()
    }
}
