//! Captured transfers into exchanges: one protocol parser per tracked
//! connection, fed in order, finished when the connection closes.

use std::collections::HashMap;

use tangle_common::{ConnEvent, DataHeader, Direction, Role};
use tangle_protocols::{Chunk, Connection as Parsers, Exchange, ParserStats, Protocol, Side};
use tangle_throttle::Throttled;

use crate::connections::{ConnTable, Connection, Sink};

/// Where finished exchanges go, with the connection they were seen on.
pub trait ExchangeSink {
    /// `tid` is the thread that last moved a request on the connection: the
    /// one that wrote it (client) or read it (server).
    fn exchange(&mut self, conn: &Connection, tid: u32, exchange: Exchange);
    /// Thread `tid` read request bytes on server connection `conn`.
    fn inbound_read(&mut self, _conn: &Connection, _tid: u32) {}
    /// `conn` closed; its last exchanges were handed on.
    fn closed(&mut self, _conn: &Connection) {}
    /// Called after each batch of events: time-based work.
    fn tick(&mut self) {}
}

/// Counters of the parsing stage.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PipelineStats {
    pub exchanges: u64,
    /// Transfers on connections whose protocol was not recognised.
    pub undetected_transfers: u64,
    /// Bytes all connections' parsers hold now: partial messages, requests
    /// waiting for their responses, prepared statements, HPACK tables.
    pub parser_buffered_bytes: u64,
    /// Connections whose parsing was abandoned to keep within the memory
    /// budget (the largest first) or the one connection's share of it.
    pub parser_budget_drops: u64,
    /// Per protocol: parse errors, desyncs, unmatched responses, dropped requests.
    pub protocols: HashMap<&'static str, ParserStats>,
}

impl PipelineStats {
    /// Adds a connection's parser counters to its protocol's.
    fn add_parser(&mut self, parsers: &Parsers) {
        let stats = parsers.stats();
        let name = match parsers.protocol() {
            Some(p) => protocol_name(p),
            // A connection that failed before its protocol was known.
            None if stats != ParserStats::default() => "unknown",
            None => return,
        };
        let s = self.protocols.entry(name).or_default();
        *s = *s + stats;
    }
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Http1 => "http1",
        Protocol::Http2 => "http2",
        Protocol::Postgres => "postgres",
        Protocol::Mysql => "mysql",
        Protocol::Redis => "redis",
    }
}

/// Hands the exchanges in `out` on.
fn deliver(
    conn: &Connection,
    t: &ParseState,
    out: &mut Vec<Exchange>,
    stats: &mut PipelineStats,
    sink: &mut impl ExchangeSink,
) {
    for e in out.drain(..) {
        stats.exchanges += 1;
        sink.exchange(conn, t.request_tid, e);
    }
}

/// What the pipeline keeps per connection, in the connection table.
#[derive(Default)]
pub struct ParseState {
    parsers: Parsers,
    /// The thread of the last request-side transfer.
    request_tid: u32,
    /// `parsers.buffered()` after the last transfer.
    buffered: usize,
}

/// A [`Sink`] that parses each connection's transfers and hands the
/// exchanges to an [`ExchangeSink`].
pub struct Pipeline<S> {
    /// Most bytes all parsers may hold together.
    memory_budget: usize,
    /// Most bytes one connection's parsers may hold.
    connection_budget: usize,
    out: Vec<Exchange>,
    pub stats: PipelineStats,
    pub sink: S,
    /// Connections given up on for the memory they held, now and then
    /// logged: one alone past its budget, or the largest when all are.
    connection_budget_warned: Throttled,
    memory_budget_warned: Throttled,
}

/// Default for [`Pipeline::with_memory_budget`].
pub const DEFAULT_PARSER_MEMORY: usize = 256 << 20;
/// Default for [`Pipeline::with_connection_budget`].
pub const DEFAULT_CONNECTION_MEMORY: usize = 4 << 20;

impl<S: ExchangeSink> Pipeline<S> {
    pub fn new(sink: S) -> Self {
        Self {
            memory_budget: DEFAULT_PARSER_MEMORY,
            connection_budget: DEFAULT_CONNECTION_MEMORY,
            out: Vec::new(),
            stats: PipelineStats::default(),
            connection_budget_warned: Throttled::default(),
            memory_budget_warned: Throttled::default(),
            sink,
        }
    }

    /// Most bytes all connections' parsers may hold together (partial
    /// messages, requests awaiting responses, prepared statements); past
    /// it, the connections holding most are no longer parsed until the
    /// total is back under seven eighths of it (counted in
    /// `parser_budget_drops`).
    pub fn with_memory_budget(mut self, bytes: usize) -> Self {
        self.memory_budget = bytes;
        self
    }

    /// Most bytes one connection's parsers may hold; past it that
    /// connection is no longer parsed (counted in `parser_budget_drops`).
    pub fn with_connection_budget(mut self, bytes: usize) -> Self {
        self.connection_budget = bytes;
        self
    }

    /// Stops parsing the connections that hold most until all hold at most
    /// seven eighths of the budget: the cost falls on whoever holds the
    /// memory, not on whichever connection happens to grow next.
    fn shed(&mut self, table: &mut ConnTable<ParseState>) {
        let target = self.memory_budget as u64 / 8 * 7;
        let mut holders: Vec<(usize, u64)> = table
            .states_mut()
            .filter(|(_, t)| t.buffered > 0)
            .map(|(id, t)| (t.buffered, id))
            .collect();
        holders.sort_unstable_by(|a, b| b.cmp(a));
        tangle_throttle::warn!(
            self.memory_budget_warned,
            "the parsers hold {} bytes, past [parsing] memory_mib: the connections \
             holding the most are no longer parsed (tangle_agent_parser_budget_drops_total)",
            self.stats.parser_buffered_bytes
        );
        for (bytes, id) in holders {
            if self.stats.parser_buffered_bytes <= target {
                break;
            }
            if let Some(t) = table.state_mut(id) {
                t.parsers.abandon();
                t.buffered = 0;
                self.stats.parser_buffered_bytes -= bytes as u64;
                self.stats.parser_budget_drops += 1;
            }
        }
    }

    /// The counters, with the parser counters of the connections open in
    /// `table` added in.
    pub fn stats_now(&self, table: &ConnTable<ParseState>) -> PipelineStats {
        let mut stats = self.stats.clone();
        for t in table.states() {
            stats.add_parser(&t.parsers);
        }
        stats
    }
}

impl<S: ExchangeSink> Sink for Pipeline<S> {
    type State = ParseState;

    fn open(&mut self, _conn: &Connection, _state: &mut ParseState, _ev: &ConnEvent) {}

    fn close(&mut self, conn: Option<(Connection, ParseState)>, ev: &ConnEvent) {
        let Some((conn, mut t)) = conn else {
            return;
        };
        t.parsers.finish(ev.ts_ns, &mut self.out);
        self.stats.parser_buffered_bytes -= t.buffered as u64;
        self.stats.undetected_transfers += t.parsers.undetected_chunks;
        self.stats.add_parser(&t.parsers);
        deliver(&conn, &t, &mut self.out, &mut self.stats, &mut self.sink);
        self.sink.closed(&conn);
    }

    fn flush(&mut self) {
        self.sink.tick();
    }

    fn rebalance(&mut self, table: &mut ConnTable<ParseState>) {
        if self.stats.parser_buffered_bytes > self.memory_budget as u64 {
            self.shed(table);
        }
    }

    fn data(&mut self, conn: Option<(&Connection, &mut ParseState)>, h: &DataHeader, bytes: &[u8]) {
        let Self {
            out,
            stats,
            sink,
            connection_budget,
            connection_budget_warned,
            ..
        } = self;
        // Bytes of a connection whose open was not seen: no role, no parser.
        let Some((conn, t)) = conn else {
            return;
        };
        // The client writes requests; the server reads them.
        let egress = h.direction == Direction::Egress as u8;
        let side = if egress == (conn.role == Role::Client) {
            Side::Request
        } else {
            Side::Response
        };
        if side == Side::Request {
            t.request_tid = h.tid;
            if conn.role == Role::Server {
                sink.inbound_read(conn, h.tid);
            }
        }
        t.parsers.feed(
            Chunk {
                side,
                ts_ns: h.ts_ns,
                bytes,
                total_len: h.total_len,
                seq: (h.has_seq != 0).then_some(h.seq),
            },
            out,
        );
        let buffered = t.parsers.buffered();
        stats.parser_buffered_bytes =
            stats.parser_buffered_bytes - t.buffered as u64 + buffered as u64;
        t.buffered = buffered;
        if buffered > *connection_budget {
            tangle_throttle::warn!(
                connection_budget_warned,
                "{} -> {}: its parsers hold {buffered} bytes, past [parsing] connection_mib: \
                 no longer parsed (tangle_agent_parser_budget_drops_total)",
                conn.local,
                conn.remote
            );
            t.parsers.abandon();
            stats.parser_budget_drops += 1;
            stats.parser_buffered_bytes -= buffered as u64;
            t.buffered = 0;
        }
        deliver(conn, t, out, stats, sink);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        capture::events::Event,
        connections::{Tracker, tests::open_event},
    };

    #[derive(Default)]
    struct Collect(Vec<Exchange>);
    impl ExchangeSink for Collect {
        fn exchange(&mut self, _: &Connection, _: u32, e: Exchange) {
            self.0.push(e);
        }
    }

    struct Fed {
        conns: Tracker<ParseState>,
        p: Pipeline<Collect>,
    }

    impl Fed {
        fn new(p: Pipeline<Collect>) -> Self {
            Self {
                conns: Tracker::new(ConnTable::new(16)),
                p,
            }
        }

        fn open(&mut self, id: u64) {
            let mut ev = open_event(id, u32::MAX);
            ev.role = Role::Server as u8;
            self.conns.event(Event::Open(ev), &mut self.p);
        }

        fn close(&mut self, id: u64) {
            let ev = ConnEvent {
                conn_id: id,
                ..ConnEvent::default()
            };
            self.conns.event(Event::Close(ev), &mut self.p);
        }

        fn data(&mut self, id: u64, direction: Direction, ts: u64, bytes: &[u8]) {
            let h = DataHeader {
                conn_id: id,
                direction: direction as u8,
                ts_ns: ts,
                total_len: bytes.len() as u64,
                captured_len: bytes.len() as u32,
                ..DataHeader::default()
            };
            self.conns.event(Event::Data(h, bytes), &mut self.p);
        }
    }

    fn head(n: usize) -> Vec<u8> {
        let mut h = b"GET /a HTTP/1.1\r\nX-Pad: ".to_vec();
        h.resize(n, b'x');
        h
    }

    const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";

    #[test]
    fn parsers_stay_within_the_memory_budget() {
        let mut f = Fed::new(Pipeline::new(Collect::default()).with_memory_budget(48 * 1024));
        // Each connection holds an unfinished request head of 20 KiB.
        for id in 1..=3 {
            f.open(id);
            f.data(id, Direction::Ingress, id, &head(20 * 1024));
        }
        assert_eq!(f.p.stats.parser_budget_drops, 1, "the third went over");
        assert!(f.p.stats.parser_buffered_bytes <= 48 * 1024);
        // The connections within the budget still parse.
        for id in 1..=2 {
            f.data(id, Direction::Ingress, 10, b"\r\n\r\n");
            f.data(id, Direction::Egress, 11, RESPONSE);
        }
        assert_eq!(f.p.sink.0.len(), 2);
        // An idle connection holds no head buffer; closes give the rest back.
        for id in 1..=3 {
            f.close(id);
        }
        assert_eq!(f.p.stats.parser_buffered_bytes, 0);
    }

    #[test]
    fn the_largest_holder_pays_not_the_one_that_grows() {
        let mut f = Fed::new(
            Pipeline::new(Collect::default())
                .with_memory_budget(64 * 1024)
                .with_connection_budget(48 * 1024),
        );
        for id in 1..=3 {
            f.open(id);
        }
        // One connection alone past its share: dropped at once.
        f.data(1, Direction::Ingress, 1, &head(50 * 1024));
        assert_eq!(f.p.stats.parser_budget_drops, 1);
        assert_eq!(f.p.stats.parser_buffered_bytes, 0);
        // 2 holds 40 KiB, then 3 grows past the total: 2 goes, 3 stays.
        f.data(2, Direction::Ingress, 2, &head(40 * 1024));
        f.data(3, Direction::Ingress, 3, &head(30 * 1024));
        assert_eq!(f.p.stats.parser_budget_drops, 2);
        assert!(f.p.stats.parser_buffered_bytes <= 56 * 1024);
        f.data(3, Direction::Ingress, 4, b"\r\n\r\n");
        f.data(3, Direction::Egress, 5, RESPONSE);
        assert_eq!(f.p.sink.0.len(), 1, "the one that grew still parses");
    }

    /// An id the kernel reuses before its close arrives: the old
    /// connection's parsers are finished (its pending request is not
    /// lost, its memory is given back), the new one starts clean.
    #[test]
    fn a_reused_id_ends_the_old_connection() {
        let mut f = Fed::new(Pipeline::new(Collect::default()));
        f.open(1);
        f.data(
            1,
            Direction::Ingress,
            1,
            b"GET /old HTTP/1.1\r\nHost: a\r\n\r\n",
        );
        f.data(1, Direction::Ingress, 2, &head(1024));
        assert!(f.p.stats.parser_buffered_bytes > 0);
        f.open(1);
        assert_eq!(f.conns.stats().replaced, 1);
        assert_eq!(f.conns.stats().connections, 1);
        assert_eq!(
            f.p.stats.parser_buffered_bytes, 0,
            "the old parsers' memory"
        );
        let old: Vec<_> = f.p.sink.0.iter().map(|e| e.operation.clone()).collect();
        assert_eq!(old.len(), 1, "the old request, unanswered: {old:?}");
        // The new connection parses from its own first bytes.
        f.data(
            1,
            Direction::Ingress,
            3,
            b"GET /new HTTP/1.1\r\nHost: a\r\n\r\n",
        );
        f.data(1, Direction::Egress, 4, RESPONSE);
        assert_eq!(f.p.sink.0.len(), 2);
        assert_eq!(f.p.sink.0[1].operation, "GET /new");
    }

    /// Connections evicted or swept leave the table with their parsers:
    /// nothing is held for them afterwards.
    #[test]
    fn evicted_connections_take_their_parsers_with_them() {
        let mut f = Fed {
            conns: Tracker::new(ConnTable::new(2)),
            p: Pipeline::new(Collect::default()),
        };
        for id in 1..=2 {
            f.open(id);
            f.data(id, Direction::Ingress, id, &head(1024));
        }
        f.open(3);
        let stats = f.conns.stats();
        assert_eq!((stats.evicted, stats.connections), (1, 2));
        assert_eq!(f.p.stats.parser_buffered_bytes, 1024, "one head left");
        let mut table_buffered = 0;
        f.conns
            .table
            .states_mut()
            .for_each(|(_, t)| table_buffered += t.buffered);
        assert_eq!(table_buffered as u64, f.p.stats.parser_buffered_bytes);
    }
}
