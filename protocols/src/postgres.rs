//! PostgreSQL (protocol 3.0): startup (user, database, application name),
//! SSL request and its refusal, simple queries, the extended protocol
//! (Parse/Bind/Execute up to Sync, named and unnamed statements), COPY,
//! command tags and ErrorResponse SQLSTATE codes. One exchange per simple
//! query or per Sync, ending at ReadyForQuery. Password and SASL messages
//! are passed over unread.

use crate::{
    Chunk, Exchange, Fields, MAX_HEADER_VALUE, Parser, ParserStats, Protocol, Side, SqlFields,
    Status,
    framing::{Completed, Frame, SideStream},
    held::{HeapSize, Queue, Table},
    kept, sql,
};

const PROTOCOL_3: u32 = 196_608;
const SSL_REQUEST: u32 = 80_877_103;
const GSS_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;
/// Payload bytes of a message kept whole (statements, tags, errors); a
/// longer message is read from its first bytes.
const MAX_PAYLOAD: usize = 16 * 1024;
const MAX_STATEMENTS: usize = 1024;
const MAX_PENDING: usize = 1024;
/// Message types the client sends once started.
const CLIENT_TYPES: &[u8] = b"QPBEDCSHXpdcfF";

/// Whether `first` can begin a PostgreSQL conversation: a startup, SSL or
/// GSS request from the client.
pub fn looks_like(side: Side, first: &[u8]) -> bool {
    let (Some(len), Some(code)) = (crate::array(first, 0), crate::array(first, 4)) else {
        return false;
    };
    if side != Side::Request {
        return false;
    }
    let (len, code) = (u32::from_be_bytes(len), u32::from_be_bytes(code));
    match code {
        SSL_REQUEST | GSS_REQUEST => len == 8,
        PROTOCOL_3 => (9..=10_000).contains(&len),
        _ => false,
    }
}

/// One message: its type (0 for the untyped startup family) and the payload
/// bytes read (possibly the start only).
struct Message {
    kind: u8,
    payload: Vec<u8>,
}

/// A big-endian u32 at the start of `b` (0 if it is shorter).
fn be32(b: &[u8]) -> usize {
    crate::array(b, 0).map_or(0, u32::from_be_bytes) as usize
}

/// Frames `type + length + payload` messages; `untyped` for the client's
/// first messages, which have no type byte.
fn frame(b: &[u8], untyped: bool) -> Frame<Message> {
    let (kind, at) = if untyped {
        (0, 0)
    } else {
        (*b.first().unwrap_or(&0), 1)
    };
    if b.len() < at + 4 {
        return Frame::Incomplete;
    }
    let len = be32(b.get(at..).unwrap_or_default());
    if !(4..=1 << 30).contains(&len) {
        return Frame::Invalid;
    }
    let payload_len = len - 4;
    let start = at + 4;
    let have = b.len() - start;
    if have >= payload_len {
        return Frame::Message {
            head: start + payload_len,
            body: 0,
            msg: Message {
                kind,
                payload: b
                    .get(start..start + payload_len)
                    .unwrap_or_default()
                    .to_vec(),
            },
        };
    }
    if payload_len <= MAX_PAYLOAD {
        return Frame::Incomplete;
    }
    // A long message: keep what is here, pass over the rest.
    let keep = have.min(MAX_PAYLOAD);
    Frame::Message {
        head: start + keep,
        body: (payload_len - keep) as u64,
        msg: Message {
            kind,
            payload: b.get(start..start + keep).unwrap_or_default().to_vec(),
        },
    }
}

/// A NUL-terminated statement, whatever its encoding (invalid UTF-8 replaced).
fn text(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(b.get(..end).unwrap_or_default()).into_owned()
}

fn cstr(b: &[u8]) -> (&str, &[u8]) {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    (
        std::str::from_utf8(b.get(..end).unwrap_or_default()).unwrap_or(""),
        b.get(end + 1..).unwrap_or_default(),
    )
}

/// A request being gathered: a simple query, or extended messages up to Sync.
#[derive(Default)]
struct Gathering {
    statement: Option<String>,
    start_ns: Option<u64>,
    start_seq: Option<u32>,
    size: u64,
    truncated: bool,
}

impl HeapSize for Request {
    fn heap_size(&self) -> usize {
        self.statement.heap_size()
    }
}

struct Request {
    statement: Option<String>,
    start_ns: u64,
    start_seq: Option<u32>,
    end_ns: u64,
    size: u64,
    truncated: bool,
}

#[derive(Default)]
struct Reply {
    size: u64,
    truncated: bool,
    tag: Option<String>,
    error: Option<String>,
}

#[derive(Default)]
pub struct PostgresParser {
    requests: SideStream<Message>,
    responses: SideStream<Message>,
    /// The client has sent its startup message.
    started: bool,
    /// An SSL/GSS request awaits its one-byte answer.
    awaiting_ssl_answer: bool,
    /// The server accepted TLS: the rest is encrypted.
    encrypted: bool,
    user: Option<String>,
    database: Option<String>,
    application: Option<String>,
    statements: Table<String, String, MAX_STATEMENTS>,
    gathering: Gathering,
    pending: Queue<Request, MAX_PENDING>,
    reply: Reply,
    stats: ParserStats,
}

impl PostgresParser {
    fn client_message(&mut self, c: Completed<Message>) {
        let m = &c.msg;
        if m.kind == 0 {
            let code = if m.payload.len() >= 4 {
                be32(&m.payload) as u32
            } else {
                0
            };
            match code {
                SSL_REQUEST | GSS_REQUEST => self.awaiting_ssl_answer = true,
                PROTOCOL_3 => {
                    self.started = true;
                    let mut rest = m.payload.get(4..).unwrap_or_default();
                    while !rest.is_empty() {
                        let (key, r) = cstr(rest);
                        if key.is_empty() {
                            break;
                        }
                        let (value, r) = cstr(r);
                        match key {
                            "user" => self.user = Some(kept(value, MAX_HEADER_VALUE)),
                            "database" => self.database = Some(kept(value, MAX_HEADER_VALUE)),
                            "application_name" => {
                                self.application = Some(kept(value, MAX_HEADER_VALUE))
                            }
                            _ => {}
                        }
                        rest = r;
                    }
                }
                CANCEL_REQUEST => {}
                _ => self.stats.parse_errors += 1,
            }
            return;
        }
        let g = &mut self.gathering;
        if g.start_ns.is_none() {
            g.start_ns = Some(c.start_ns);
            g.start_seq = c.start_seq;
        }
        g.size += c.size;
        g.truncated |= c.truncated;
        match m.kind {
            b'Q' => {
                g.statement = Some(text(&m.payload));
                self.push_request(c.end_ns);
            }
            b'P' => {
                let (name, rest) = cstr(&m.payload);
                let query = text(rest);
                if !name.is_empty() {
                    self.statements
                        .insert(name.to_owned(), query.clone(), name.len());
                }
                self.gathering.statement.get_or_insert(query);
            }
            b'B' => {
                let (_portal, rest) = cstr(&m.payload);
                let (name, _) = cstr(rest);
                if self.gathering.statement.is_none()
                    && let Some(q) = self.statements.get(name)
                {
                    self.gathering.statement = Some(q.clone());
                }
            }
            b'C' if m.payload.first() == Some(&b'S') => {
                self.statements
                    .remove(cstr(m.payload.get(1..).unwrap_or_default()).0);
            }
            b'S' => self.push_request(c.end_ns),
            // Execute, Describe, Flush, COPY data, password and SASL
            // messages, Terminate: part of the request being gathered.
            _ => {}
        }
    }

    fn push_request(&mut self, end_ns: u64) {
        let g = std::mem::take(&mut self.gathering);
        let dropped = self.pending.push(Request {
            statement: g.statement,
            start_ns: g.start_ns.unwrap_or(end_ns),
            start_seq: g.start_seq,
            end_ns,
            size: g.size,
            truncated: g.truncated,
        });
        if dropped {
            self.stats.dropped_requests += 1;
        }
    }

    fn server_message(&mut self, c: Completed<Message>, out: &mut Vec<Exchange>) {
        let m = &c.msg;
        if !self.started {
            // Authentication before the first query is not an exchange.
            return;
        }
        self.reply.size += c.size;
        self.reply.truncated |= c.truncated;
        match m.kind {
            b'C' => self.reply.tag = Some(kept(cstr(&m.payload).0, MAX_HEADER_VALUE)),
            b'E' => {
                // Fields: type byte, text, NUL; 'C' is the SQLSTATE.
                let mut rest = m.payload.as_slice();
                while let Some((&field, r)) = rest.split_first() {
                    if field == 0 {
                        break;
                    }
                    let (value, r) = cstr(r);
                    if field == b'C' {
                        self.reply.error = Some(kept(value, 16));
                    }
                    rest = r;
                }
                self.reply.error.get_or_insert_with(|| "XX000".into());
            }
            b'Z' => {
                let reply = std::mem::take(&mut self.reply);
                // None: ReadyForQuery after authentication.
                if let Some(req) = self.pending.pop() {
                    out.push(self.exchange(req, Some((c.end_ns, reply))));
                }
            }
            _ => {}
        }
    }

    fn exchange(&self, req: Request, reply: Option<(u64, Reply)>) -> Exchange {
        let parsed = req
            .statement
            .as_deref()
            .map(|q| sql::parse(q, sql::Dialect::Postgres));
        let verb = parsed
            .as_ref()
            .map(|s| s.verb.clone())
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "UNKNOWN".into());
        // Without a database in the startup, PostgreSQL uses the user's name.
        let db = self.database.as_deref().or(self.user.as_deref());
        let tables = parsed
            .as_ref()
            .map(|s| s.qualified_tables(db, false))
            .unwrap_or_default();
        let operation = sql::operation(&verb, &tables);
        let (status, end_ns, response_size, resp_truncated, tag) = match reply {
            Some((end, r)) => (Status::from_error(r.error), end, r.size, r.truncated, r.tag),
            None => (Status::NoResponse, req.end_ns, 0, false, None),
        };
        Exchange {
            protocol: Protocol::Postgres,
            operation,
            status,
            sync: true,
            start_ns: req.start_ns,
            request_seq: req.start_seq,
            end_ns,
            request_size: req.size,
            response_size,
            // No statement: its Parse was lost to a capture gap (or came
            // before the capture started), so the operation is incomplete.
            truncated: req.truncated || resp_truncated || parsed.is_none(),
            fields: Fields::Sql(SqlFields {
                system: "postgresql".into(),
                database: self.database.clone(),
                user: self.user.clone(),
                application: self.application.clone(),
                statement: parsed.as_ref().map(|s| s.normalized.clone()),
                kind: parsed.as_ref().map(|s| s.kind),
                tables,
                command_tag: tag,
            }),
        }
    }
}

impl Parser for PostgresParser {
    fn protocol(&self) -> Protocol {
        Protocol::Postgres
    }

    fn feed(&mut self, chunk: Chunk<'_>, out: &mut Vec<Exchange>) {
        if self.encrypted {
            return;
        }
        let mut done = Vec::new();
        match chunk.side {
            Side::Request => {
                let mut untyped_left = !self.started;
                let desyncs = self.requests.stats.desyncs;
                self.requests.feed(
                    chunk,
                    |b, _: &mut ()| {
                        let f = frame(b, untyped_left);
                        // Only the first message(s) are untyped: after a startup message, typed ones follow.
                        if let Frame::Message {
                            msg:
                                Message {
                                    kind: 0,
                                    ref payload,
                                },
                            ..
                        } = f
                            && payload.len() >= 4
                            && be32(payload) as u32 == PROTOCOL_3
                        {
                            untyped_left = false;
                        }
                        f
                    },
                    |b| {
                        b.first().is_some_and(|c| CLIENT_TYPES.contains(c))
                            || looks_like(Side::Request, b)
                    },
                    |c| done.push(c),
                );
                // Bytes lost to a gap belong to the request being gathered.
                if self.requests.stats.desyncs != desyncs {
                    self.gathering.truncated = true;
                }
                for c in done {
                    self.client_message(c);
                }
            }
            Side::Response => {
                if self.awaiting_ssl_answer {
                    self.awaiting_ssl_answer = false;
                    match chunk.bytes.first() {
                        Some(b'S' | b'G') => {
                            self.encrypted = true;
                            return;
                        }
                        Some(b'N') => {
                            let rest = Chunk {
                                bytes: chunk.bytes.get(1..).unwrap_or_default(),
                                total_len: chunk.total_len.saturating_sub(1),
                                seq: chunk.seq.map(|s| s.wrapping_add(1)),
                                ..chunk
                            };
                            if rest.total_len > 0 {
                                self.feed(rest, out);
                            }
                            return;
                        }
                        _ => self.stats.parse_errors += 1,
                    }
                }
                let desyncs = self.responses.stats.desyncs;
                self.responses.feed(
                    chunk,
                    |b, _: &mut ()| frame(b, false),
                    |b| b.first().is_some_and(u8::is_ascii_alphanumeric),
                    |c| done.push(c),
                );
                if self.responses.stats.desyncs != desyncs {
                    self.reply.truncated = true;
                }
                for c in done {
                    self.server_message(c, out);
                }
            }
        }
    }

    fn finish(&mut self, _ts_ns: u64, out: &mut Vec<Exchange>) {
        while let Some(req) = self.pending.pop() {
            out.push(self.exchange(req, None));
        }
    }

    fn stats(&self) -> ParserStats {
        self.requests.stats + self.responses.stats + self.stats
    }

    fn buffered(&self) -> usize {
        self.requests.buffered()
            + self.responses.buffered()
            + self.pending.bytes()
            + self.statements.bytes()
            + self.gathering.statement.heap_size()
    }
}
