//! MySQL and MariaDB (client/server protocol 10): the handshake response
//! (user, schema), COM_QUERY, COM_INIT_DB (changes the current database),
//! prepared statements (prepare, execute, close), result sets (with or
//! without EOF packets), OK and ERR with the error code. Auth data is never
//! read; an SSL request means the rest is encrypted.

use crate::{
    Chunk, Exchange, Fields, MAX_HEADER_VALUE, Parser, ParserStats, Protocol, Side, SqlFields,
    Status,
    framing::{Completed, Frame, SideStream},
    held::{HeapSize, Queue, Table},
    kept, sql,
};

const COM_QUIT: u8 = 0x01;
const COM_INIT_DB: u8 = 0x02;
const COM_QUERY: u8 = 0x03;
const COM_STMT_PREPARE: u8 = 0x16;
const COM_STMT_EXECUTE: u8 = 0x17;
const COM_STMT_SEND_LONG_DATA: u8 = 0x18;
const COM_STMT_CLOSE: u8 = 0x19;
const COM_STMT_RESET: u8 = 0x1a;
const CLIENT_CONNECT_WITH_DB: u32 = 0x0000_0008;
const CLIENT_SSL: u32 = 0x0000_0800;
const CLIENT_PROTOCOL_41: u32 = 0x0000_0200;
const CLIENT_DEPRECATE_EOF: u32 = 0x0100_0000;
const SERVER_MORE_RESULTS_EXISTS: u16 = 0x0008;
/// Payload bytes of a packet kept (statements, errors); a longer packet is read from its start.
const MAX_PAYLOAD: usize = 16 * 1024;
const MAX_STATEMENTS: usize = 1024;
const MAX_PENDING: usize = 1024;

/// Whether `first` is a server greeting (protocol 10), which opens every
/// MySQL and MariaDB connection.
pub fn looks_like(side: Side, first: &[u8]) -> bool {
    let (Some([l0, l1, l2, seq, protocol]), Some(version)) =
        (crate::array::<5>(first, 0), first.get(5..))
    else {
        return false;
    };
    let len = u32::from_le_bytes([l0, l1, l2, 0]) as usize;
    // Sequence 0, protocol 10, a printable version string ending in NUL.
    side == Side::Response
        && first.len() >= 16
        && seq == 0
        && protocol == 10
        && (32..1024).contains(&len)
        && version
            .iter()
            .take_while(|&&b| b != 0)
            .all(|b| b.is_ascii_graphic())
        && version.contains(&0)
}

struct Packet {
    seq: u8,
    payload: Vec<u8>,
}

fn frame(b: &[u8], _: &mut ()) -> Frame<Packet> {
    let Some([l0, l1, l2, seq]) = crate::array::<4>(b, 0) else {
        return Frame::Incomplete;
    };
    let len = u32::from_le_bytes([l0, l1, l2, 0]) as usize;
    let have = b.len() - 4;
    if have >= len {
        return Frame::Message {
            head: 4 + len,
            body: 0,
            msg: Packet {
                seq,
                payload: b.get(4..4 + len).unwrap_or_default().to_vec(),
            },
        };
    }
    if len <= MAX_PAYLOAD {
        return Frame::Incomplete;
    }
    let keep = have.min(MAX_PAYLOAD);
    Frame::Message {
        head: 4 + keep,
        body: (len - keep) as u64,
        msg: Packet {
            seq,
            payload: b.get(4..4 + keep).unwrap_or_default().to_vec(),
        },
    }
}

fn cstr(b: &[u8]) -> (&str, &[u8]) {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    (
        std::str::from_utf8(b.get(..end).unwrap_or_default()).unwrap_or(""),
        b.get(end + 1..).unwrap_or_default(),
    )
}

/// A length-encoded integer and the rest.
fn lenenc(b: &[u8]) -> Option<(u64, &[u8])> {
    let (&first, rest) = b.split_first()?;
    let n = match first {
        0..=0xfa => return Some((u64::from(first), rest)),
        0xfc => 2,
        0xfd => 3,
        0xfe => 8,
        _ => return None,
    };
    let bytes = rest.get(..n)?;
    let mut v = [0u8; 8];
    v.get_mut(..n)?.copy_from_slice(bytes);
    Some((u64::from_le_bytes(v), rest.get(n..)?))
}

/// What the server's reply to the command in flight still needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// The first packet: OK, ERR, or a result set's column count.
    First,
    /// Column definitions left, then an EOF (without CLIENT_DEPRECATE_EOF).
    Columns { left: u64, eof: bool },
    /// Rows until EOF/OK.
    Rows,
    /// After COM_STMT_PREPARE_OK: definitions left (params + columns, with their EOFs).
    PrepareDefs { left: u64 },
}

impl HeapSize for Command {
    fn heap_size(&self) -> usize {
        self.statement.heap_size() + self.prepare.heap_size()
    }
}

struct Command {
    code: u8,
    statement: Option<String>,
    start_ns: u64,
    start_seq: Option<u32>,
    end_ns: u64,
    size: u64,
    truncated: bool,
    /// For COM_STMT_PREPARE: the statement, to name the id the server gives it.
    prepare: Option<String>,
}

#[derive(Default)]
struct Reply {
    size: u64,
    truncated: bool,
    error: Option<String>,
}

#[derive(Default)]
pub struct MysqlParser {
    requests: SideStream<Packet>,
    responses: SideStream<Packet>,
    /// The handshake is over (the client's response was seen).
    started: bool,
    encrypted: bool,
    deprecate_eof: bool,
    user: Option<String>,
    database: Option<String>,
    statements: Table<u32, String, MAX_STATEMENTS>,
    pending: Queue<Command, MAX_PENDING>,
    expect: Option<Expect>,
    reply: Reply,
    /// Replies to the handshake until the first OK.
    authenticating: bool,
    /// Client bytes were lost (the handshake, a COM_INIT_DB): names may lack
    /// or have the wrong database.
    context_lost: bool,
    stats: ParserStats,
}

impl MysqlParser {
    fn client_packet(&mut self, c: Completed<Packet>, out: &mut Vec<Exchange>) {
        let p = &c.msg.payload;
        if !self.started {
            if c.msg.seq == 0 {
                // A command on a connection whose handshake we missed.
                self.started = true;
                self.context_lost = true;
            } else {
                self.handshake_response(p);
                return;
            }
        }
        if c.msg.seq != 0 {
            // Auth continuation (AuthSwitchResponse...) or a long packet's tail.
            return;
        }
        let Some(&code) = p.first() else { return };
        let text = || String::from_utf8_lossy(p.get(1..).unwrap_or_default()).into_owned();
        let mut cmd = Command {
            code,
            statement: None,
            start_ns: c.start_ns,
            start_seq: c.start_seq,
            end_ns: c.end_ns,
            size: c.size,
            truncated: c.truncated,
            prepare: None,
        };
        match code {
            COM_QUERY => {
                let q = text();
                // `USE db` changes the database as COM_INIT_DB does.
                let parsed = sql::parse(&q, sql::Dialect::Mysql);
                if parsed.verb == "USE"
                    && let Some(db) = q.split_whitespace().nth(1)
                {
                    self.database = Some(kept(db.trim_matches(['`', ';']), MAX_HEADER_VALUE));
                }
                cmd.statement = Some(q);
            }
            COM_INIT_DB => self.database = Some(kept(&text(), MAX_HEADER_VALUE)),
            COM_STMT_PREPARE => cmd.prepare = Some(text()),
            COM_STMT_EXECUTE | COM_STMT_CLOSE | COM_STMT_SEND_LONG_DATA | COM_STMT_RESET => {
                let id = crate::array(p, 1).map(u32::from_le_bytes);
                cmd.statement = id.and_then(|id| self.statements.get(&id).cloned());
                if code == COM_STMT_CLOSE
                    && let Some(id) = id
                {
                    self.statements.remove(&id);
                }
            }
            _ => {}
        }
        // These get no reply: the exchange is the request alone.
        if matches!(code, COM_STMT_CLOSE | COM_STMT_SEND_LONG_DATA | COM_QUIT) {
            out.push(self.exchange(cmd, None));
            return;
        }
        if self.pending.push(cmd) {
            self.stats.dropped_requests += 1;
        }
    }

    fn handshake_response(&mut self, p: &[u8]) {
        let (Some(caps), Some(after)) = (crate::array(p, 0), p.get(32..)) else {
            return;
        };
        let caps = u32::from_le_bytes(caps);
        if caps & CLIENT_PROTOCOL_41 == 0 {
            return;
        }
        if caps & CLIENT_SSL != 0 && p.len() == 32 {
            self.encrypted = true;
            return;
        }
        self.deprecate_eof = caps & CLIENT_DEPRECATE_EOF != 0;
        let (user, rest) = cstr(after);
        self.user = Some(kept(user, MAX_HEADER_VALUE));
        // Auth data: length-prefixed (or NUL-terminated); passed over unread.
        let rest = match lenenc(rest) {
            Some((n, r)) if (n as usize) <= r.len() => r.get(n as usize..).unwrap_or_default(),
            _ => cstr(rest).1,
        };
        if caps & CLIENT_CONNECT_WITH_DB != 0 {
            let (db, _) = cstr(rest);
            if !db.is_empty() {
                self.database = Some(kept(db, MAX_HEADER_VALUE));
            }
        }
        self.started = true;
        self.authenticating = true;
    }

    fn server_packet(&mut self, c: Completed<Packet>, out: &mut Vec<Exchange>) {
        let p = &c.msg.payload;
        let Some(&first) = p.first() else { return };
        if self.authenticating {
            // OK ends authentication; ERR fails it; anything else continues it.
            if first == 0x00 || first == 0xff {
                self.authenticating = false;
            }
            return;
        }
        if !self.started {
            return; // the greeting
        }
        self.reply.size += c.size;
        self.reply.truncated |= c.truncated;
        let is_eof = first == 0xfe && p.len() < 9;
        let status_flags = |p: &[u8]| -> u16 {
            // EOF: header, warnings(2), status(2). OK: header, lenenc, lenenc, status(2).
            if p.first() == Some(&0xfe) && p.len() < 9 {
                crate::array(p, 3).map_or(0, u16::from_le_bytes)
            } else {
                let rest = lenenc(p.get(1..).unwrap_or_default())
                    .and_then(|(_, r)| lenenc(r))
                    .map(|(_, r)| r)
                    .unwrap_or_default();
                crate::array(rest, 0).map_or(0, u16::from_le_bytes)
            }
        };
        let expect = self.expect.unwrap_or(Expect::First);
        let done = match expect {
            // ERR can come anywhere (a row or definition never starts with 0xff).
            _ if first == 0xff => {
                let code = crate::array(p, 1).map_or(0, u16::from_le_bytes);
                self.reply.error = Some(code.to_string());
                true
            }
            Expect::First => {
                let prepare = self.pending.front().and_then(|c| c.prepare.clone());
                // COM_STMT_PREPARE_OK: status, id(4), columns(2), params(2).
                let ok = crate::array::<12>(p, 0).filter(|_| first == 0x00);
                if let (Some(query), Some([_, i0, i1, i2, i3, c0, c1, p0, p1, ..])) = (prepare, ok)
                {
                    let id = u32::from_le_bytes([i0, i1, i2, i3]);
                    let columns = u64::from(u16::from_le_bytes([c0, c1]));
                    let params = u64::from(u16::from_le_bytes([p0, p1]));
                    self.statements.insert(id, query, 4);
                    let eofs = if self.deprecate_eof {
                        0
                    } else {
                        u64::from(params > 0) + u64::from(columns > 0)
                    };
                    let left = params + columns + eofs;
                    if left == 0 {
                        true
                    } else {
                        self.expect = Some(Expect::PrepareDefs { left });
                        false
                    }
                } else if first == 0x00 || is_eof {
                    status_flags(p) & SERVER_MORE_RESULTS_EXISTS == 0
                } else {
                    match lenenc(p) {
                        Some((n, _)) if n > 0 => {
                            self.expect = Some(Expect::Columns {
                                left: n,
                                eof: !self.deprecate_eof,
                            });
                            false
                        }
                        _ => {
                            self.stats.parse_errors += 1;
                            true
                        }
                    }
                }
            }
            Expect::Columns { left, eof } => {
                // `left` counts column definitions still to come; 0 means
                // this packet is the EOF after them.
                self.expect = Some(match left {
                    2.. => Expect::Columns {
                        left: left - 1,
                        eof,
                    },
                    1 if eof => Expect::Columns { left: 0, eof },
                    _ => Expect::Rows,
                });
                false
            }
            Expect::Rows => {
                if is_eof || (first == 0xfe && self.deprecate_eof && p.len() < 0xff_ffff) {
                    if status_flags(p) & SERVER_MORE_RESULTS_EXISTS != 0 {
                        self.expect = Some(Expect::First);
                        false
                    } else {
                        true
                    }
                } else {
                    false
                }
            }
            Expect::PrepareDefs { left } => {
                if left > 1 {
                    self.expect = Some(Expect::PrepareDefs { left: left - 1 });
                    false
                } else {
                    true
                }
            }
        };
        if done {
            self.expect = None;
            let reply = std::mem::take(&mut self.reply);
            match self.pending.pop() {
                Some(cmd) => out.push(self.exchange(cmd, Some((c.end_ns, reply)))),
                None => self.stats.unmatched_responses += 1,
            }
        }
    }

    fn exchange(&self, cmd: Command, reply: Option<(u64, Reply)>) -> Exchange {
        let text = cmd.statement.as_deref().or(cmd.prepare.as_deref());
        let parsed = text.map(|t| sql::parse(t, sql::Dialect::Mysql));
        let verb = match cmd.code {
            COM_QUERY | COM_STMT_PREPARE | COM_STMT_EXECUTE => {
                parsed.as_ref().map(|s| s.verb.clone())
            }
            _ => None,
        };
        let command = match cmd.code {
            COM_QUERY => "QUERY",
            COM_INIT_DB => "INIT_DB",
            COM_STMT_PREPARE => "PREPARE",
            COM_STMT_EXECUTE => "EXECUTE",
            COM_STMT_CLOSE => "CLOSE",
            COM_STMT_SEND_LONG_DATA => "SEND_LONG_DATA",
            COM_STMT_RESET => "RESET",
            COM_QUIT => "QUIT",
            0x0e => "PING",
            _ => "COMMAND",
        };
        let tables = parsed
            .as_ref()
            .map(|s| s.qualified_tables(self.database.as_deref(), true))
            .unwrap_or_default();
        let name = match (cmd.code, verb.filter(|v| !v.is_empty())) {
            (COM_STMT_PREPARE, Some(v)) => format!("PREPARE {v}"),
            (_, Some(v)) => v,
            (_, None) => command.to_owned(),
        };
        let operation = sql::operation(&name, &tables);
        let (status, end_ns, response_size, resp_truncated) = match reply {
            Some((end, r)) => (Status::from_error(r.error), end, r.size, r.truncated),
            None => (Status::NoResponse, cmd.end_ns, 0, false),
        };
        // A statement id whose PREPARE was not seen (a capture gap, or
        // before the capture started): the operation lacks its statement.
        let statement_unknown = matches!(
            cmd.code,
            COM_STMT_EXECUTE | COM_STMT_CLOSE | COM_STMT_SEND_LONG_DATA | COM_STMT_RESET
        ) && parsed.is_none();
        Exchange {
            protocol: Protocol::Mysql,
            operation,
            status,
            sync: true,
            start_ns: cmd.start_ns,
            request_seq: cmd.start_seq,
            end_ns,
            request_size: cmd.size,
            response_size,
            truncated: cmd.truncated || resp_truncated || statement_unknown || self.context_lost,
            fields: Fields::Sql(SqlFields {
                system: "mysql".into(),
                database: self.database.clone(),
                user: self.user.clone(),
                application: None,
                statement: parsed.as_ref().map(|s| s.normalized.clone()),
                kind: parsed.as_ref().map(|s| s.kind),
                tables,
                command_tag: Some(command.to_owned()),
            }),
        }
    }
}

impl Parser for MysqlParser {
    fn protocol(&self) -> Protocol {
        Protocol::Mysql
    }

    fn feed(&mut self, chunk: Chunk<'_>, out: &mut Vec<Exchange>) {
        if self.encrypted {
            return;
        }
        let mut done = Vec::new();
        // After a gap, a command packet (sequence 0) regains sync on the
        // client side; the server side waits for the next command's reply.
        let starts = |b: &[u8]| b.len() >= 5 && b.get(3) == Some(&0);
        match chunk.side {
            Side::Request => {
                let desyncs = self.requests.stats.desyncs;
                self.requests.feed(chunk, frame, starts, |c| done.push(c));
                if self.requests.stats.desyncs != desyncs {
                    // Lost client bytes may have held a COM_INIT_DB or USE.
                    self.context_lost = true;
                    if let Some(c) = self.pending.back_mut() {
                        c.truncated = true;
                    }
                }
                for c in done {
                    self.client_packet(c, out);
                }
            }
            Side::Response => {
                let desyncs = self.responses.stats.desyncs;
                self.responses.feed(
                    chunk,
                    frame,
                    |b| b.len() >= 5 && b.get(3) == Some(&1),
                    |c| done.push(c),
                );
                if self.responses.stats.desyncs != desyncs {
                    // The reply in flight lost packets: end it here, marked.
                    self.expect = None;
                    self.reply.truncated = true;
                }
                for c in done {
                    self.server_packet(c, out);
                }
            }
        }
    }

    fn finish(&mut self, _ts_ns: u64, out: &mut Vec<Exchange>) {
        while let Some(cmd) = self.pending.pop() {
            out.push(self.exchange(cmd, None));
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
    }
}
