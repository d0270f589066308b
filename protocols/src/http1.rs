//! HTTP/1.0 and HTTP/1.1: requests and responses paired in order
//! (pipelining included), bodies framed by Content-Length, chunked encoding,
//! or the end of the connection. Authorization and Cookie headers are never
//! read into anything kept.

use crate::{
    Chunk, Exchange, Fields, HttpFields, MAX_HEADER_VALUE, Parser, ParserStats, Protocol, Side,
    Status,
    framing::{Completed, Frame, MAX_HEAD, SideStream},
    held::{HeapSize, Queue},
    kept,
    normalize::route,
};

const METHODS: &[&str] = &[
    "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE",
];

/// Requests waiting for a response, at most.
const MAX_PENDING: usize = 1024;

/// Whether `first` can begin an HTTP/1 message on `side`.
pub fn looks_like(side: Side, first: &[u8]) -> bool {
    match side {
        Side::Request => METHODS
            .iter()
            .any(|m| first.starts_with(m.as_bytes()) && first.get(m.len()) == Some(&b' ')),
        Side::Response => first.starts_with(b"HTTP/1."),
    }
}

/// A message head's parts, or where a chunked body stands.
enum Part<H> {
    Head(H),
    /// One chunk of a chunked body (size line + data + CRLF).
    Chunk,
    /// The last chunk and trailers.
    End,
}

struct RequestHead {
    fields: HttpFields,
    chunked: bool,
}

struct ResponseHead {
    request: Option<Request>,
    status: u16,
    content_length: Option<u64>,
    chunked: bool,
    interim: bool,
}

struct Request {
    fields: HttpFields,
    start_ns: u64,
    start_seq: Option<u32>,
    end_ns: u64,
    size: u64,
    truncated: bool,
}

impl HeapSize for Request {
    fn heap_size(&self) -> usize {
        self.fields.heap_size()
    }
}

/// A message assembled from its head and, when chunked, its chunks.
struct Assembling<H> {
    head: H,
    start_ns: u64,
    start_seq: Option<u32>,
    size: u64,
    truncated: bool,
}

#[derive(Default)]
pub struct Http1Parser {
    requests: SideStream<Part<RequestHead>, usize>,
    responses: SideStream<Part<ResponseHead>, usize>,
    req_chunked: bool,
    resp_chunked: bool,
    req_assembling: Option<Assembling<RequestHead>>,
    resp_assembling: Option<Assembling<ResponseHead>>,
    pending: Queue<Request, MAX_PENDING>,
    /// After `101 Switching Protocols` nothing more is HTTP/1.
    upgraded: bool,
    stats: ParserStats,
}

/// The end of a head (after the blank line), if it is all there. `searched`
/// is how far earlier calls looked for it: the search resumes there, so a
/// head cut in many transfers is searched once.
fn head_end(b: &[u8], searched: &mut usize) -> Option<usize> {
    let from = searched.saturating_sub(3);
    match b.get(from..)?.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(p) => Some(from + p + 4),
        None => {
            *searched = b.len();
            None
        }
    }
}

/// The head's lines after the first; a head ends each line with CRLF.
fn lines(head: &str) -> impl Iterator<Item = &str> {
    head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l))
}

fn headers(head: &str) -> impl Iterator<Item = (&str, &str)> {
    lines(head).skip(1).filter_map(|line| {
        let (name, value) = line.split_once(':')?;
        Some((name.trim(), value.trim()))
    })
}

/// A header name in lower case, without allocating; names longer than any
/// the parser reads come back empty.
fn lower<'a>(name: &str, buf: &'a mut [u8; 32]) -> &'a str {
    let Some(out) = buf.get_mut(..name.len()) else {
        return "";
    };
    for (o, b) in out.iter_mut().zip(name.bytes()) {
        *o = b.to_ascii_lowercase();
    }
    std::str::from_utf8(out).unwrap_or_default()
}

fn is_chunked(value: &str) -> bool {
    value
        .rsplit(',')
        .next()
        .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
}

fn parse_request(b: &[u8], searched: &mut usize) -> Frame<RequestHead> {
    let Some(end) = head_end(b, searched) else {
        return if b.len() >= MAX_HEAD || !looks_like(Side::Request, b) && b.len() >= 8 {
            Frame::Invalid
        } else {
            Frame::Incomplete
        };
    };
    let Ok(head) = std::str::from_utf8(b.get(..end - 4).unwrap_or_default()) else {
        return Frame::Invalid;
    };
    let mut line = lines(head).next().unwrap_or_default().split(' ');
    let (Some(method), Some(target), Some(version)) = (line.next(), line.next(), line.next())
    else {
        return Frame::Invalid;
    };
    if !METHODS.contains(&method) || !version.starts_with("HTTP/1.") {
        return Frame::Invalid;
    }
    let mut fields = HttpFields {
        method: method.to_owned(),
        path: route(target),
        ..HttpFields::default()
    };
    let mut chunked = false;
    for (name, value) in headers(head) {
        let mut lowered = [0u8; 32];
        let name = lower(name, &mut lowered);
        if fields.trace.add_b3_header(name, value) {
            continue;
        }
        match name {
            "host" => fields.host = Some(kept(value, MAX_HEADER_VALUE)),
            "content-length" => fields.request_content_length = value.parse().ok(),
            "transfer-encoding" => chunked = is_chunked(value),
            "traceparent" => fields.trace.traceparent = Some(kept(value, MAX_HEADER_VALUE)),
            "x-request-id" => fields.trace.request_id = Some(kept(value, MAX_HEADER_VALUE)),
            // Authorization, Cookie and the rest are not kept.
            _ => {}
        }
    }
    let body = if chunked {
        0
    } else {
        fields.request_content_length.unwrap_or(0)
    };
    Frame::Message {
        head: end,
        body,
        msg: RequestHead { fields, chunked },
    }
}

fn parse_response(
    b: &[u8],
    searched: &mut usize,
    pending: &mut Queue<Request, MAX_PENDING>,
) -> Frame<ResponseHead> {
    let Some(end) = head_end(b, searched) else {
        return if b.len() >= MAX_HEAD || !b.starts_with(b"HTTP/1.") && b.len() >= 7 {
            Frame::Invalid
        } else {
            Frame::Incomplete
        };
    };
    let Ok(head) = std::str::from_utf8(b.get(..end - 4).unwrap_or_default()) else {
        return Frame::Invalid;
    };
    let mut line = lines(head).next().unwrap_or_default().splitn(3, ' ');
    let (Some(version), Some(code)) = (line.next(), line.next()) else {
        return Frame::Invalid;
    };
    let Ok(status) = code.parse::<u16>() else {
        return Frame::Invalid;
    };
    if !version.starts_with("HTTP/1.") || !(100..1000).contains(&status) {
        return Frame::Invalid;
    }
    let mut content_length = None;
    let mut chunked = false;
    for (name, value) in headers(head) {
        let mut lowered = [0u8; 32];
        match lower(name, &mut lowered) {
            "content-length" => content_length = value.parse().ok(),
            "transfer-encoding" => chunked = is_chunked(value),
            _ => {}
        }
    }
    let interim = (100..200).contains(&status) && status != 101;
    let request = if interim { None } else { pending.pop() };
    let head_request = request.as_ref().is_some_and(|r| r.fields.method == "HEAD");
    let body = if interim || head_request || chunked || [101, 204, 304].contains(&status) {
        0
    } else {
        content_length.unwrap_or(u64::MAX)
    };
    let chunked =
        chunked && body == 0 && !interim && !head_request && status != 204 && status != 304;
    Frame::Message {
        head: end,
        body,
        msg: ResponseHead {
            request,
            status,
            content_length,
            chunked,
            interim,
        },
    }
}

/// One chunk of a chunked body: `size[;ext]\r\n data \r\n`, or the last
/// chunk with its trailers.
fn parse_chunk<H>(b: &[u8], searched: &mut usize) -> Frame<Part<H>> {
    let Some(line_end) = b.windows(2).position(|w| w == b"\r\n") else {
        return if b.len() > 1024 {
            Frame::Invalid
        } else {
            Frame::Incomplete
        };
    };
    let size_text = std::str::from_utf8(b.get(..line_end).unwrap_or_default()).unwrap_or("");
    let size_text = size_text.split(';').next().unwrap_or("").trim();
    let Ok(size) = u64::from_str_radix(size_text, 16) else {
        return Frame::Invalid;
    };
    if size > 0 {
        return Frame::Message {
            head: line_end + 2,
            body: size.saturating_add(2),
            msg: Part::Chunk,
        };
    }
    // Last chunk: trailers end with an empty line.
    let start = line_end + 2;
    let rest = b.get(start..).unwrap_or_default();
    if rest.starts_with(b"\r\n") {
        return Frame::Message {
            head: line_end + 4,
            body: 0,
            msg: Part::End,
        };
    }
    let mut in_rest = searched.saturating_sub(start);
    let end = head_end(rest, &mut in_rest);
    *searched = start + in_rest;
    match end {
        Some(end) => Frame::Message {
            head: start + end,
            body: 0,
            msg: Part::End,
        },
        None => Frame::Incomplete,
    }
}

/// The next part of a side's stream: a chunk while a chunked body is open,
/// else a message head (which may open one).
fn next_part<H>(
    b: &[u8],
    searched: &mut usize,
    chunked: &mut bool,
    head: impl FnOnce(&[u8], &mut usize) -> Frame<H>,
    is_chunked: impl Fn(&H) -> bool,
) -> Frame<Part<H>> {
    if *chunked {
        let f = parse_chunk(b, searched);
        if matches!(f, Frame::Message { msg: Part::End, .. }) {
            *chunked = false;
        }
        return f;
    }
    match head(b, searched) {
        Frame::Message { head, body, msg } => {
            *chunked = is_chunked(&msg);
            Frame::Message {
                head,
                body,
                msg: Part::Head(msg),
            }
        }
        Frame::Incomplete => Frame::Incomplete,
        Frame::Invalid => Frame::Invalid,
    }
}

/// Folds a completed part into the message being assembled; returns the
/// whole message once its last part is in.
fn assemble<H>(
    slot: &mut Option<Assembling<H>>,
    done: Completed<Part<H>>,
    chunked: bool,
) -> Option<(Assembling<H>, u64)> {
    match done.msg {
        Part::Head(head) => {
            let a = Assembling {
                head,
                start_ns: done.start_ns,
                start_seq: done.start_seq,
                size: done.size,
                truncated: done.truncated,
            };
            if chunked {
                *slot = Some(a);
                None
            } else {
                Some((a, done.end_ns))
            }
        }
        Part::Chunk | Part::End => {
            let a = slot.as_mut()?;
            a.size += done.size;
            a.truncated |= done.truncated;
            if matches!(done.msg, Part::End) {
                slot.take().map(|a| (a, done.end_ns))
            } else {
                None
            }
        }
    }
}

impl Http1Parser {
    fn exchange(request: Request, response: Option<(Assembling<ResponseHead>, u64)>) -> Exchange {
        let Request {
            mut fields,
            start_ns,
            start_seq,
            end_ns: req_end,
            size: request_size,
            truncated: req_truncated,
        } = request;
        let (status, end_ns, response_size, resp_truncated) = match response {
            Some((r, end_ns)) => {
                fields.status = Some(r.head.status);
                fields.response_content_length = r.head.content_length;
                let code = r.head.status.to_string();
                let status = if r.head.status >= 500 {
                    Status::Error { code }
                } else {
                    Status::Ok { code: Some(code) }
                };
                (status, end_ns, r.size, r.truncated)
            }
            None => (Status::NoResponse, req_end, 0, false),
        };
        Exchange {
            protocol: Protocol::Http1,
            operation: format!("{} {}", fields.method, fields.path),
            status,
            sync: true,
            start_ns,
            request_seq: start_seq,
            end_ns,
            request_size,
            response_size,
            truncated: req_truncated || resp_truncated,
            fields: Fields::Http(fields),
        }
    }
}

impl Parser for Http1Parser {
    fn protocol(&self) -> Protocol {
        Protocol::Http1
    }

    fn feed(&mut self, chunk: Chunk<'_>, out: &mut Vec<Exchange>) {
        if self.upgraded {
            return;
        }
        match chunk.side {
            Side::Request => {
                let mut done = Vec::new();
                let chunked = &mut self.req_chunked;
                self.requests.feed(
                    chunk,
                    |b, searched| next_part(b, searched, chunked, parse_request, |h| h.chunked),
                    |b| looks_like(Side::Request, b),
                    |c| done.push(c),
                );
                for c in done {
                    let is_chunked_head = matches!(&c.msg, Part::Head(h) if h.chunked);
                    if let Some((a, end_ns)) =
                        assemble(&mut self.req_assembling, c, is_chunked_head)
                    {
                        let dropped = self.pending.push(Request {
                            fields: a.head.fields,
                            start_ns: a.start_ns,
                            start_seq: a.start_seq,
                            end_ns,
                            size: a.size,
                            truncated: a.truncated,
                        });
                        if dropped {
                            self.stats.dropped_requests += 1;
                        }
                    }
                }
            }
            Side::Response => {
                let mut done = Vec::new();
                let chunked = &mut self.resp_chunked;
                let pending = &mut self.pending;
                self.responses.feed(
                    chunk,
                    |b, searched| {
                        next_part(
                            b,
                            searched,
                            chunked,
                            |b, searched| parse_response(b, searched, pending),
                            |h| h.chunked,
                        )
                    },
                    |b| looks_like(Side::Response, b),
                    |c| done.push(c),
                );
                for c in done {
                    let is_chunked_head = matches!(&c.msg, Part::Head(h) if h.chunked);
                    let Some((mut a, end_ns)) =
                        assemble(&mut self.resp_assembling, c, is_chunked_head)
                    else {
                        continue;
                    };
                    if a.head.interim {
                        continue;
                    }
                    if a.head.status == 101 {
                        self.upgraded = true;
                    }
                    match a.head.request.take() {
                        Some(req) => out.push(Self::exchange(req, Some((a, end_ns)))),
                        None => self.stats.unmatched_responses += 1,
                    }
                }
            }
        }
    }

    fn finish(&mut self, ts_ns: u64, out: &mut Vec<Exchange>) {
        let mut done = Vec::new();
        self.responses.finish(ts_ns, |c| done.push(c));
        for c in done {
            if let Part::Head(mut head) = c.msg {
                let Some(req) = head.request.take() else {
                    self.stats.unmatched_responses += 1;
                    continue;
                };
                let a = Assembling {
                    head,
                    start_ns: c.start_ns,
                    start_seq: c.start_seq,
                    size: c.size,
                    truncated: c.truncated,
                };
                out.push(Self::exchange(req, Some((a, c.end_ns))));
            }
        }
        while let Some(req) = self.pending.pop() {
            out.push(Self::exchange(req, None));
        }
    }

    fn stats(&self) -> ParserStats {
        self.requests.stats + self.responses.stats + self.stats
    }

    fn buffered(&self) -> usize {
        let assembling = self
            .req_assembling
            .as_ref()
            .map_or(0, |a| a.head.fields.heap_size());
        self.requests.buffered() + self.responses.buffered() + self.pending.bytes() + assembling
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[(Side, &[u8])]) -> (Vec<Exchange>, ParserStats) {
        crate::run_parser(Http1Parser::default(), chunks)
    }

    #[test]
    fn pipelined_requests_pair_in_order() {
        let (ex, stats) = run(&[
            (Side::Request, b"GET /a/1 HTTP/1.1\r\nHost: x\r\n\r\nHEAD /b HTTP/1.1\r\n\r\n"),
            (Side::Response, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcHTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\n"),
        ]);
        assert_eq!(stats, ParserStats::default());
        assert_eq!(ex.len(), 2);
        assert_eq!(ex[0].operation, "GET /a/{id}");
        assert_eq!(ex[0].response_size, 41);
        assert_eq!(ex[1].operation, "HEAD /b");
        assert_eq!(
            ex[1].status,
            Status::Ok {
                code: Some("404".into())
            }
        );
    }

    #[test]
    fn chunked_response_and_until_close() {
        let (ex, _) = run(&[
            (
                Side::Request,
                b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            ),
            (
                Side::Response,
                b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwxyz\r\n",
            ),
            (Side::Response, b"0\r\n\r\n"),
            (Side::Request, b"GET /y HTTP/1.0\r\n\r\n"),
            (Side::Response, b"HTTP/1.0 200 OK\r\n\r\nbody until close"),
        ]);
        assert_eq!(ex.len(), 2);
        assert_eq!(ex[0].status, Status::Error { code: "500".into() });
        assert_eq!(ex[0].end_ns, 2, "ends with the last chunk");
        assert_eq!(ex[0].request_size, 61);
        assert_eq!(ex[1].response_size, 35);
        assert_eq!(ex[1].end_ns, 99);
    }

    #[test]
    fn secrets_are_not_kept() {
        let (ex, _) = run(&[
            (Side::Request, b"GET / HTTP/1.1\r\nAuthorization: Bearer s3cret\r\nCookie: id=s3cret\r\ntraceparent: 00-abc-def-01\r\n\r\n"),
            (Side::Response, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
        ]);
        let json = format!("{:?}", ex);
        assert!(!json.contains("s3cret"));
        assert!(json.contains("00-abc-def-01"));
    }

    #[test]
    fn garbage_is_counted_not_fatal() {
        let (ex, stats) = run(&[
            (Side::Request, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            (Side::Response, b"HTTP/1.1 abc\r\n\r\n"),
            (Side::Response, b"\x00\x01\x02"),
        ]);
        assert_eq!(stats.parse_errors, 1);
        assert_eq!(ex.len(), 1);
        assert_eq!(ex[0].status, Status::NoResponse);
    }

    #[test]
    fn a_head_written_a_byte_at_a_time() {
        let mut head = b"GET /slow/1 HTTP/1.1\r\nHost: x\r\n".to_vec();
        while head.len() < 60 * 1024 {
            head.extend_from_slice(b"a:\r\n");
        }
        head.extend_from_slice(b"\r\n");
        let mut p = Http1Parser::default();
        let mut out = Vec::new();
        for (i, b) in head.iter().enumerate() {
            p.feed(Chunk::whole(Side::Request, i as u64, &[*b]), &mut out);
        }
        p.feed(
            Chunk::whole(Side::Response, u64::MAX, b"HTTP/1.1 204 No Content\r\n\r\n"),
            &mut out,
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].operation, "GET /slow/{id}");
        assert_eq!(p.stats(), ParserStats::default());
    }
}
