//! Redis (RESP2 and RESP3): commands paired with replies in order
//! (pipelining and MULTI included), error replies with their code, pub/sub
//! pushes, `PUBLISH` marked asynchronous. Only command names are kept, and
//! the channel of a publish or a pushed message: no keys, no values, so
//! `AUTH` passwords never leave the parser.

use crate::{
    Chunk, Exchange, Fields, Parser, ParserStats, Protocol, RedisFields, Side, Status,
    framing::{Completed, Frame, MAX_HEAD, SideStream},
    held::{HeapSize, Queue},
};

/// Commands whose first argument names what they do.
const CONTAINER_COMMANDS: &[&str] = &[
    "CLIENT", "CONFIG", "CLUSTER", "OBJECT", "XINFO", "SCRIPT", "MEMORY", "COMMAND", "ACL",
    "FUNCTION", "XGROUP",
];
/// The commands that (un)subscribe a connection to channels.
pub const SUBSCRIBE: &[&str] = &[
    "SUBSCRIBE",
    "PSUBSCRIBE",
    "SSUBSCRIBE",
    "UNSUBSCRIBE",
    "PUNSUBSCRIBE",
    "SUNSUBSCRIBE",
];
const PUSH_KINDS: &[&str] = &["message", "pmessage", "smessage"];
const MAX_PENDING: usize = 4096;
/// Nesting a reply may have, at most.
const MAX_ELEMENTS: u64 = 1 << 20;

/// Whether `first` can begin a Redis request: a RESP array of bulk strings.
pub fn looks_like(side: Side, first: &[u8]) -> bool {
    side == Side::Request
        && (first.len() >= 4
            && first.first() == Some(&b'*')
            && first.get(1).is_some_and(u8::is_ascii_digit)
            && first.windows(3).take(12).any(|w| w == b"\r\n$")
            // An inline PING (telnet, redis-benchmark's PING_INLINE): other
            // inline commands are too like other text protocols to detect.
            || first.get(..6).is_some_and(|w| w.eq_ignore_ascii_case(b"PING\r\n")))
}

/// What the scanner keeps of one RESP value.
#[derive(Debug, Default)]
struct Value {
    /// The type byte of the top-level value.
    kind: u8,
    /// The top-level aggregate's element count.
    count: u64,
    /// The first two strings of a top-level aggregate (or the value's own line).
    strings: Vec<String>,
}

/// RESP type bytes; anything else starts an inline command.
const RESP_TYPES: &[u8] = b"+-:$*_,#!=(%~>|";
/// An inline command line, at most.
const MAX_INLINE: usize = 4096;

/// Progress through one RESP value, kept between transfers: a value that
/// arrives in small pieces is read once, not from its start each time.
#[derive(Debug, Default)]
struct Scan {
    started: bool,
    /// Where the next element starts.
    pos: usize,
    /// Elements still to read.
    remaining: u64,
    /// The next element is the top-level value itself.
    top: bool,
    value: Value,
    /// How far past `pos` a line end was looked for in vain.
    searched: usize,
}

fn line_end(b: &[u8], from: usize) -> Option<usize> {
    b.get(from..)?
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|p| from + p)
}

fn number(b: &[u8]) -> Option<i64> {
    std::str::from_utf8(b).ok()?.trim().parse().ok()
}

/// An inline command: one line of words.
fn inline(b: &[u8], st: &mut Scan) -> Frame<Value> {
    let Some(le) = line_end(b, st.searched.saturating_sub(1)) else {
        st.searched = b.len();
        return if b.len() > MAX_INLINE {
            Frame::Invalid
        } else {
            Frame::Incomplete
        };
    };
    let Some(text) = b.get(..le).and_then(|l| std::str::from_utf8(l).ok()) else {
        return Frame::Invalid;
    };
    let mut v = Value {
        kind: b'i',
        ..Value::default()
    };
    let mut words = text.split_whitespace();
    v.strings = words.by_ref().take(2).map(str::to_owned).collect();
    v.count = v.strings.len() as u64 + words.count() as u64;
    if !v
        .strings
        .first()
        .is_some_and(|w| w.bytes().all(|c| c.is_ascii_alphabetic()))
    {
        return Frame::Invalid;
    }
    Frame::Message {
        head: le + 2,
        body: 0,
        msg: v,
    }
}

/// Finds the end of one complete RESP value at the front of `b`, resuming
/// from `st`. A large bulk string that ends the value becomes the frame's
/// body, so its bytes need not be captured.
fn scan(b: &[u8], st: &mut Scan) -> Frame<Value> {
    let Some(&kind) = b.first() else {
        return Frame::Incomplete;
    };
    if !st.started {
        if !RESP_TYPES.contains(&kind) {
            return inline(b, st);
        }
        *st = Scan {
            started: true,
            remaining: 1,
            top: true,
            value: Value {
                kind,
                ..Value::default()
            },
            ..Scan::default()
        };
    }
    while st.remaining > 0 {
        let pos = st.pos;
        let Some(&t) = b.get(pos) else {
            return Frame::Incomplete;
        };
        let Some(le) = line_end(b, (pos + 1).max(st.searched.saturating_sub(1))) else {
            st.searched = b.len();
            return if b.len() - pos > MAX_HEAD {
                Frame::Invalid
            } else {
                Frame::Incomplete
            };
        };
        let line = b.get(pos + 1..le).unwrap_or_default();
        let mut next = le + 2;
        let v = &mut st.value;
        let wants_string = st.top || v.strings.len() < 2 && v.count > 0;
        match t {
            b'+' | b'-' | b':' | b',' | b'#' | b'_' | b'(' => {
                if wants_string && t != b'_' {
                    let shown = line.get(..line.len().min(64)).unwrap_or_default();
                    v.strings.push(String::from_utf8_lossy(shown).into_owned());
                }
            }
            b'$' | b'!' | b'=' => {
                let Some(len) = number(line) else {
                    return Frame::Invalid;
                };
                if let Ok(len) = u64::try_from(len) {
                    let end = (next as u64).saturating_add(len).saturating_add(2);
                    if end > b.len() as u64 {
                        if st.remaining == 1 {
                            return Frame::Message {
                                head: next,
                                body: len + 2,
                                msg: std::mem::take(&mut st.value),
                            };
                        }
                        // The line is read; wait for the string's bytes.
                        st.searched = le;
                        return if b.len() > MAX_HEAD {
                            Frame::Invalid
                        } else {
                            Frame::Incomplete
                        };
                    }
                    if wants_string {
                        let s = b
                            .get(next..next + (len as usize).min(64))
                            .unwrap_or_default();
                        v.strings.push(String::from_utf8_lossy(s).into_owned());
                    }
                    next = end as usize;
                }
            }
            b'*' | b'~' | b'>' | b'%' | b'|' => {
                let Some(n) = number(line) else {
                    return Frame::Invalid;
                };
                let n = n.max(0) as u64;
                let elems = if t == b'%' || t == b'|' { n * 2 } else { n };
                if elems > MAX_ELEMENTS {
                    return Frame::Invalid;
                }
                if st.top {
                    v.count = n;
                }
                // An attribute annotates the value that follows it.
                st.remaining += elems + u64::from(t == b'|');
            }
            _ => return Frame::Invalid,
        }
        st.remaining -= 1;
        st.top = false;
        st.pos = next;
        st.searched = 0;
    }
    Frame::Message {
        head: st.pos,
        body: 0,
        msg: std::mem::take(&mut st.value),
    }
}

impl HeapSize for Request {
    fn heap_size(&self) -> usize {
        self.command.capacity() + self.channel.heap_size()
    }
}

struct Request {
    command: String,
    /// For a publish: its channel.
    channel: Option<String>,
    args: u32,
    /// Replies still expected (a SUBSCRIBE to k channels gets k).
    replies: u64,
    start_ns: u64,
    start_seq: Option<u32>,
    end_ns: u64,
    size: u64,
    truncated: bool,
}

#[derive(Default)]
pub struct RedisParser {
    requests: SideStream<Value, Scan>,
    responses: SideStream<Value, Scan>,
    pending: Queue<Request, MAX_PENDING>,
    /// A reply being built for a multi-reply request: (size, truncated, error).
    partial: Option<(u64, bool, Option<String>)>,
    /// The client subscribed: a RESP2 array that starts with `message` may
    /// be a delivery. Before that it is a reply (an `HGETALL` whose first
    /// field is named `message`), never a channel.
    subscribed: bool,
    stats: ParserStats,
}

fn command_of(v: &Value) -> (String, u32) {
    let mut command = v
        .strings
        .first()
        .map(|s| s.to_ascii_uppercase())
        .unwrap_or_default();
    if CONTAINER_COMMANDS.contains(&command.as_str())
        && let Some(sub) = v.strings.get(1)
    {
        command = format!("{command} {}", sub.to_ascii_uppercase());
    }
    // Command names are short; anything longer is not one to keep whole.
    crate::truncate_chars(&mut command, 64);
    (command, v.count.saturating_sub(1) as u32)
}

impl RedisParser {
    fn request(&mut self, c: Completed<Value>) {
        let (command, args) = command_of(&c.msg);
        let first = command.split(' ').next().unwrap_or_default();
        self.subscribed |= matches!(first, "SUBSCRIBE" | "PSUBSCRIBE" | "SSUBSCRIBE");
        let replies = if SUBSCRIBE.contains(&first) {
            u64::from(args).max(1)
        } else {
            1
        };
        let channel = matches!(first, "PUBLISH" | "SPUBLISH")
            .then(|| c.msg.strings.get(1).cloned())
            .flatten();
        let dropped = self.pending.push(Request {
            command,
            channel,
            args,
            replies,
            start_ns: c.start_ns,
            start_seq: c.start_seq,
            end_ns: c.end_ns,
            size: c.size,
            truncated: c.truncated,
        });
        if dropped {
            self.stats.dropped_requests += 1;
        }
    }

    fn response(&mut self, c: Completed<Value>, out: &mut Vec<Exchange>) {
        let v = &c.msg;
        let first = v.strings.first().map(String::as_str).unwrap_or_default();
        // A (un)subscribe confirmation answers the (UN)SUBSCRIBE waiting for it,
        // even when RESP3 sends it as a push.
        let confirms = SUBSCRIBE.iter().any(|s| s.eq_ignore_ascii_case(first))
            && self
                .pending
                .front()
                .is_some_and(|r| SUBSCRIBE.iter().any(|s| r.command == *s));
        let is_push = !confirms
            && (v.kind == b'>'
                || (self.subscribed
                    && v.kind == b'*'
                    && PUSH_KINDS.contains(&first)
                    && v.count >= 3));
        if is_push {
            let kind = first.to_owned();
            out.push(Exchange {
                protocol: Protocol::Redis,
                operation: format!("redis PUSH {kind}"),
                status: Status::Ok { code: None },
                sync: false,
                start_ns: c.start_ns,
                request_seq: None,
                end_ns: c.end_ns,
                request_size: 0,
                response_size: c.size,
                truncated: c.truncated,
                fields: Fields::Redis(RedisFields {
                    command: kind,
                    args: 0,
                    push: true,
                    // Only a delivery names a channel: an `invalidate` push
                    // names keys, which are data.
                    channel: PUSH_KINDS
                        .contains(&first)
                        .then(|| v.strings.get(1).cloned())
                        .flatten(),
                }),
            });
            return;
        }
        let error = matches!(v.kind, b'-' | b'!')
            .then(|| first.split_whitespace().next().unwrap_or("ERR").to_owned());
        let Some(front) = self.pending.front_mut() else {
            self.stats.unmatched_responses += 1;
            return;
        };
        let partial = self.partial.get_or_insert((0, false, None));
        partial.0 += c.size;
        partial.1 |= c.truncated;
        if partial.2.is_none() {
            partial.2 = error;
        }
        front.replies = front.replies.saturating_sub(1);
        if front.replies > 0 {
            return;
        }
        let (size, truncated, error) = self.partial.take().unwrap_or_default();
        let Some(req) = self.pending.pop() else {
            return;
        };
        out.push(Self::exchange(
            req,
            Some((c.end_ns, size, truncated, error)),
        ));
    }

    fn exchange(req: Request, reply: Option<(u64, u64, bool, Option<String>)>) -> Exchange {
        let sync = !matches!(req.command.as_str(), "PUBLISH" | "SPUBLISH");
        let (status, end_ns, response_size, resp_truncated) = match reply {
            Some((end, size, truncated, error)) => {
                (Status::from_error(error), end, size, truncated)
            }
            None => (Status::NoResponse, req.end_ns, 0, false),
        };
        Exchange {
            protocol: Protocol::Redis,
            operation: format!("redis {}", req.command),
            status,
            sync,
            start_ns: req.start_ns,
            request_seq: req.start_seq,
            end_ns,
            request_size: req.size,
            response_size,
            truncated: req.truncated || resp_truncated,
            fields: Fields::Redis(RedisFields {
                command: req.command,
                args: req.args,
                push: false,
                channel: req.channel,
            }),
        }
    }
}

impl Parser for RedisParser {
    fn protocol(&self) -> Protocol {
        Protocol::Redis
    }

    fn feed(&mut self, chunk: Chunk<'_>, out: &mut Vec<Exchange>) {
        let mut done = Vec::new();
        match chunk.side {
            Side::Request => {
                self.requests.feed(
                    chunk,
                    scan,
                    |b| looks_like(Side::Request, b),
                    |c| done.push(c),
                );
                for c in done {
                    self.request(c);
                }
            }
            Side::Response => {
                self.responses.feed(
                    chunk,
                    scan,
                    |b| b.first().is_some_and(|c| b"+-:$*_,#!=(%~>|".contains(c)),
                    |c| done.push(c),
                );
                for c in done {
                    self.response(c, out);
                }
            }
        }
    }

    fn finish(&mut self, ts_ns: u64, out: &mut Vec<Exchange>) {
        let mut done = Vec::new();
        self.responses.finish(ts_ns, |c| done.push(c));
        for c in done {
            self.response(c, out);
        }
        while let Some(req) = self.pending.pop() {
            out.push(Self::exchange(req, None));
        }
    }

    fn stats(&self) -> ParserStats {
        self.requests.stats + self.responses.stats + self.stats
    }

    fn buffered(&self) -> usize {
        self.requests.buffered() + self.responses.buffered() + self.pending.bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[(Side, &[u8])]) -> (Vec<Exchange>, ParserStats) {
        crate::run_parser(RedisParser::default(), chunks)
    }

    #[test]
    fn pipeline_errors_and_secrets() {
        let (ex, stats) = run(&[
            (Side::Request, b"*2\r\n$4\r\nAUTH\r\n$6\r\ns3cret\r\n*3\r\n$3\r\nset\r\n$1\r\nk\r\n$1\r\nv\r\n*2\r\n$4\r\nINCR\r\n$1\r\nk\r\n"),
            (Side::Response, b"+OK\r\n+OK\r\n-ERR value is not an integer or out of range\r\n"),
        ]);
        assert_eq!(stats, ParserStats::default());
        let ops: Vec<_> = ex.iter().map(|e| e.operation.as_str()).collect();
        assert_eq!(ops, ["redis AUTH", "redis SET", "redis INCR"]);
        assert_eq!(ex[2].status, Status::Error { code: "ERR".into() });
        assert!(!format!("{ex:?}").contains("s3cret"));
    }

    #[test]
    fn inline_commands() {
        assert_eq!(
            crate::detect(Side::Request, b"PING\r\n"),
            Some(Protocol::Redis)
        );
        assert_eq!(crate::detect(Side::Request, b"PINGX\r\n"), None);
        let (ex, stats) = run(&[
            (Side::Request, b"PING\r\n"),
            (Side::Response, b"+PONG\r\n"),
            (Side::Request, b"ping\r\nGET k\r\n"),
            (Side::Response, b"+PONG\r\n$-1\r\n"),
        ]);
        assert_eq!(stats, ParserStats::default());
        let ops: Vec<_> = ex.iter().map(|e| e.operation.as_str()).collect();
        assert_eq!(ops, ["redis PING", "redis PING", "redis GET"]);
    }

    #[test]
    fn resp3_aggregates_and_pushes() {
        let (ex, stats) = run(&[
            (
                Side::Request,
                b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n*2\r\n$9\r\nSUBSCRIBE\r\n$2\r\nch\r\n",
            ),
            (
                Side::Response,
                b"%2\r\n$6\r\nserver\r\n$5\r\nredis\r\n$5\r\nproto\r\n:3\r\n",
            ),
            (
                Side::Response,
                b">3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n",
            ),
            (
                Side::Response,
                b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n",
            ),
        ]);
        assert_eq!(stats, ParserStats::default());
        let ops: Vec<_> = ex.iter().map(|e| e.operation.as_str()).collect();
        assert_eq!(
            ops,
            ["redis HELLO", "redis SUBSCRIBE", "redis PUSH message"]
        );
        assert!(ex[1].sync && !ex[2].sync);
    }

    #[test]
    fn large_value_body_need_not_be_captured() {
        let mut p = RedisParser::default();
        let mut out = Vec::new();
        let head = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$100000\r\n";
        let mut first = head.to_vec();
        first.extend_from_slice(&[b'x'; 100]);
        let total = head.len() as u64 + 100_002;
        p.feed(
            Chunk {
                side: Side::Request,
                ts_ns: 1,
                bytes: &first,
                total_len: total,
                seq: None,
            },
            &mut out,
        );
        p.feed(Chunk::whole(Side::Response, 2, b"+OK\r\n"), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].operation, "redis SET");
        assert_eq!(out[0].request_size, total);
        assert!(out[0].truncated);
        assert_eq!(p.stats(), ParserStats::default());
    }

    #[test]
    fn a_command_written_a_byte_at_a_time() {
        let n = 5000;
        let mut cmd = format!("*{}\r\n$4\r\nMSET\r\n", n + 1).into_bytes();
        for i in 0..n {
            cmd.extend_from_slice(format!("${}\r\n{i}\r\n", i.to_string().len()).as_bytes());
        }
        let mut p = RedisParser::default();
        let mut out = Vec::new();
        for (i, b) in cmd.iter().enumerate() {
            p.feed(Chunk::whole(Side::Request, i as u64, &[*b]), &mut out);
        }
        p.feed(Chunk::whole(Side::Response, u64::MAX, b"+OK\r\n"), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].operation, "redis MSET");
        assert_eq!(p.stats(), ParserStats::default());
    }

    #[test]
    fn a_reply_that_looks_like_a_delivery_is_a_reply() {
        // HGETALL of a hash whose first field is `message`, then a real
        // delivery after SUBSCRIBE: only the delivery names a channel.
        let chunks: [(Side, &[u8]); 6] = [
            (Side::Request, b"*2\r\n$7\r\nHGETALL\r\n$3\r\nn:1\r\n"),
            (
                Side::Response,
                b"*4\r\n$7\r\nmessage\r\n$19\r\nYour code is 481516\r\n$2\r\nto\r\n$3\r\nbob\r\n",
            ),
            (Side::Request, b"*2\r\n$9\r\nSUBSCRIBE\r\n$6\r\nevents\r\n"),
            (
                Side::Response,
                b"*3\r\n$9\r\nsubscribe\r\n$6\r\nevents\r\n:1\r\n",
            ),
            (
                Side::Response,
                b"*3\r\n$7\r\nmessage\r\n$6\r\nevents\r\n$2\r\nhi\r\n",
            ),
            (
                Side::Response,
                b">2\r\n$10\r\ninvalidate\r\n*1\r\n$8\r\nsess:abc\r\n",
            ),
        ];
        let (ex, _) = crate::run_parser(RedisParser::default(), &chunks);
        let shown: Vec<(String, Option<String>)> = ex
            .iter()
            .map(|e| match &e.fields {
                Fields::Redis(r) => (e.operation.clone(), r.channel.clone()),
                _ => panic!("{e:?}"),
            })
            .collect();
        assert_eq!(
            shown,
            [
                ("redis HGETALL".into(), None),
                ("redis SUBSCRIBE".into(), None),
                ("redis PUSH message".into(), Some("events".into())),
                ("redis PUSH invalidate".into(), None),
            ]
        );
        assert!(!format!("{ex:?}").contains("481516"));
    }
}
