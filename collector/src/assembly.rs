//! Spans into traces. Spans of one trace arrive from many agents, late, out
//! of order and sometimes twice; a trace is complete once no span of it has
//! come for a while. Memory is bounded: past the limit the oldest trace is
//! closed early, and counted; a trace holds so many spans at most, and the
//! rest of it is dropped, counted.
//!
//! The two ends of one call seen by two agents without propagated context
//! are in two traces: their join keys (`tangle_wire`) match, and the
//! server's trace moves under the client span. Every step costs time in
//! the spans it touches, never in the size of the traces they are in.

use std::collections::{HashSet, VecDeque};

use serde::Serialize;

use tangle_wire::JoinKey;

use crate::span::{Span, SpanId, SpanKind, TraceId};

/// Hash maps keyed by ids: a fast hasher, seeded at random per process
/// (ids come from the network).
type Map<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// A trace's age is kept to this step, rounded up: spans of one trace
/// arriving within one step cost no reordering of the traces by age, and a
/// trace never closes before its whole idle time (at most a step after).
const AGE_STEP_NS: u64 = 50_000_000;

fn age_stamp(now_ns: u64) -> u64 {
    now_ns.div_ceil(AGE_STEP_NS).saturating_mul(AGE_STEP_NS)
}

/// Whether an age entry (stamp, trace) is the trace's current one.
fn live(pending: &Map<TraceId, Box<Pending>>, stamp: u64, id: &TraceId) -> bool {
    pending.get(id).is_some_and(|p| p.last_ns == stamp)
}

/// Spans one trace may hold, by default.
pub const DEFAULT_MAX_TRACE_SPANS: usize = 10_000;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct AssemblyStats {
    pub spans: u64,
    pub duplicates: u64,
    pub traces: u64,
    /// Traces closed before their window because memory was at its limit.
    pub evicted: u64,
    pub spans_in_flight: u64,
    /// Server spans joined under their client span by join key.
    pub joined: u64,
    /// Spans whose join key found no other end within the window.
    pub unjoined: u64,
    /// Of those, the calls (client or producer spans): their callee's
    /// agent is elsewhere, or its span was lost.
    pub unjoined_calls: u64,
    /// Spans dropped because their trace already held the most a trace may.
    pub over_trace_limit: u64,
}

/// Pushes `v` onto `to`, doubling from one: most traces hold a span or two
/// and a join key while they wait, and a vector starts with room for four.
fn push_exact<T>(to: &mut Vec<T>, v: T) {
    if to.len() == to.capacity() {
        to.reserve_exact(to.len().max(1));
    }
    to.push(v);
}

/// Spans a trace holds before its spans are indexed: a scan of a few is
/// cheaper than hashing each.
const UNINDEXED: usize = 16;

struct Pending {
    spans: Vec<Span>,
    /// Where each span is in `spans`, once there are more than
    /// [`UNINDEXED`] (empty before).
    index: Map<SpanId, usize>,
    last_ns: u64,
    /// Join keys first seen in this trace, and traces merged into it.
    keys: Vec<JoinKey>,
    aliases: Vec<TraceId>,
}

impl Pending {
    /// Where span `id` is in `spans`.
    fn position(&self, id: &SpanId) -> Option<usize> {
        if self.spans.len() <= UNINDEXED {
            self.spans.iter().position(|s| s.span_id == *id)
        } else {
            self.index.get(id).copied()
        }
    }

    fn push(&mut self, span: Span) {
        let id = span.span_id;
        push_exact(&mut self.spans, span);
        match self.spans.len() {
            n if n == UNINDEXED + 1 => {
                self.index = self
                    .spans
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (s.span_id, i))
                    .collect();
            }
            n if n > UNINDEXED + 1 => {
                self.index.insert(id, n - 1);
            }
            _ => {}
        }
    }

    fn new(now_ns: u64) -> Self {
        Self {
            spans: Vec::new(),
            index: Map::default(),
            last_ns: now_ns,
            keys: Vec::new(),
            aliases: Vec::new(),
        }
    }
}

pub struct Assembler {
    /// How long a trace waits for more spans after its last one.
    idle_ns: u64,
    max_spans: usize,
    max_trace_spans: usize,
    /// Boxed: the table moves its entries when it grows or rehashes.
    pending: Map<TraceId, Box<Pending>>,
    /// (last update, trace) for finding the idle and the oldest.
    /// (age stamp, trace) in the order the stamps were given, oldest
    /// first: a trace's entry is live while the trace is pending with that
    /// stamp; older entries of it are passed over (no removal from the
    /// middle, no ordered map to keep up per span).
    by_age: VecDeque<(u64, TraceId)>,
    /// The latest stamp given: stamps never go back, even if the clock does.
    latest: u64,
    in_flight: usize,
    /// The first span seen with each join key: (trace, span, kind).
    joins: Map<JoinKey, (TraceId, SpanId, SpanKind)>,
    /// Traces merged into another: their spans go there.
    alias: Map<TraceId, TraceId>,
    pub stats: AssemblyStats,
}

impl Assembler {
    pub fn new(idle_ns: u64, max_spans: usize) -> Self {
        Self::with_trace_limit(idle_ns, max_spans, DEFAULT_MAX_TRACE_SPANS)
    }

    /// An assembler whose traces hold `max_trace_spans` spans at most.
    pub fn with_trace_limit(idle_ns: u64, max_spans: usize, max_trace_spans: usize) -> Self {
        Self {
            idle_ns,
            max_spans: max_spans.max(1),
            max_trace_spans: max_trace_spans.max(1),
            pending: Map::default(),
            by_age: VecDeque::new(),
            latest: 0,
            in_flight: 0,
            joins: Map::default(),
            alias: Map::default(),
            stats: AssemblyStats::default(),
        }
    }

    /// Adds a span received at `now_ns`; returns traces closed early to make room.
    pub fn add(&mut self, mut span: Span, now_ns: u64) -> Vec<Vec<Span>> {
        let now_ns = age_stamp(now_ns).max(self.latest);
        self.latest = now_ns;
        self.stats.spans += 1;
        if let Some(&to) = self.alias.get(&span.trace_id) {
            span.trace_id = to;
        }
        let id = span.trace_id;
        let mut fresh = false;
        let p = self.pending.entry(id).or_insert_with(|| {
            fresh = true;
            Box::new(Pending::new(now_ns))
        });
        if p.position(&span.span_id).is_some() {
            self.stats.duplicates += 1;
            return Vec::new();
        }
        if p.spans.len() >= self.max_trace_spans {
            self.stats.over_trace_limit += 1;
            return Vec::new();
        }
        if fresh || p.last_ns != now_ns {
            p.last_ns = now_ns;
            self.by_age.push_back((now_ns, id));
        }
        let join = span.join;
        let (span_id, kind) = (span.span_id, span.kind);
        p.push(span);
        self.in_flight += 1;
        if let Some(key) = join {
            self.join(key, id, span_id, kind, now_ns);
        }
        let mut closed = Vec::new();
        while self.in_flight > self.max_spans {
            let Some((_, oldest)) = self.oldest() else {
                break;
            };
            if let Some(t) = self.close(oldest) {
                self.stats.evicted += 1;
                closed.push(t);
            }
        }
        self.stats.spans_in_flight = self.in_flight as u64;
        // Entries passed over pile up behind a long-lived trace: cleared
        // once they outnumber the traces.
        if self.by_age.len() > 4 * self.pending.len() + 4096 {
            let pending = &self.pending;
            self.by_age.retain(|&(stamp, id)| live(pending, stamp, &id));
        }
        closed
    }

    /// The trace whose last span is the oldest, and its stamp; drops the
    /// entries passed over on the way.
    fn oldest(&mut self) -> Option<(u64, TraceId)> {
        while let Some(&(stamp, id)) = self.by_age.front() {
            if live(&self.pending, stamp, &id) {
                return Some((stamp, id));
            }
            self.by_age.pop_front();
        }
        None
    }

    /// Links the two ends of one call: the server span goes under the client
    /// span, and the server's trace into the client's.
    fn join(&mut self, key: JoinKey, trace: TraceId, span: SpanId, kind: SpanKind, now_ns: u64) {
        let Some(&(other_trace, other_span, other_kind)) = self.joins.get(&key) else {
            self.joins.insert(key, (trace, span, kind));
            if let Some(p) = self.pending.get_mut(&trace) {
                push_exact(&mut p.keys, key);
            }
            return;
        };
        let (client_trace, client_span, server_trace, server_span) = match (kind, other_kind) {
            // A publish's other end is the broker's own span.
            (SpanKind::Server, SpanKind::Client | SpanKind::Producer) => {
                (other_trace, other_span, trace, span)
            }
            (SpanKind::Client | SpanKind::Producer, SpanKind::Server) => {
                (trace, span, other_trace, other_span)
            }
            _ => return,
        };
        let client_trace = *self.alias.get(&client_trace).unwrap_or(&client_trace);
        let server_trace = *self.alias.get(&server_trace).unwrap_or(&server_trace);
        if let Some(p) = self.pending.get_mut(&server_trace)
            && let Some(at) = p.position(&server_span)
            && let Some(s) = p.spans.get_mut(at)
            && s.parent.is_none()
        {
            s.parent = Some(client_span);
        }
        self.stats.joined += 1;
        if client_trace == server_trace {
            return;
        }
        // A full client trace takes no more: the server's stays as it is.
        if self
            .pending
            .get(&client_trace)
            .is_some_and(|t| t.spans.len() >= self.max_trace_spans)
        {
            return;
        }
        // Move the server's trace into the client's.
        let Some(mut from) = self.pending.remove(&server_trace) else {
            return;
        };
        let Some(to) = self.pending.get_mut(&client_trace) else {
            // The client's trace already closed: keep the server's as it
            // was (its age entry is still live).
            self.pending.insert(server_trace, from);
            return;
        };
        // The smaller moves into the larger: a span moves O(log n) times at
        // most, however traces are joined. Trace ids are set at close.
        if from.spans.len() > to.spans.len() {
            std::mem::swap(&mut from.spans, &mut to.spans);
            std::mem::swap(&mut from.index, &mut to.index);
        }
        for s in from.spans {
            if to.spans.len() >= self.max_trace_spans {
                self.stats.over_trace_limit += 1;
                self.in_flight -= 1;
                continue;
            }
            if to.position(&s.span_id).is_some() {
                self.stats.duplicates += 1;
                self.in_flight -= 1;
                continue;
            }
            to.push(s);
        }
        // Only the moved trace's names are pointed at the client's: a join
        // costs the traces it moves, not all those merged before.
        self.alias.insert(server_trace, client_trace);
        for a in &from.aliases {
            self.alias.insert(*a, client_trace);
        }
        to.keys.append(&mut from.keys);
        to.aliases.push(server_trace);
        to.aliases.append(&mut from.aliases);
        let last = to.last_ns.max(from.last_ns).max(now_ns);
        if last != to.last_ns {
            to.last_ns = last;
            self.by_age.push_back((last, client_trace));
        }
        self.stats.spans_in_flight = self.in_flight as u64;
    }

    fn close(&mut self, id: TraceId) -> Option<Vec<Span>> {
        let mut p = self.pending.remove(&id)?;
        let members: HashSet<TraceId> = p.aliases.iter().copied().chain([id]).collect();
        // Keys whose server span found its client.
        let met: HashSet<&JoinKey> = p
            .spans
            .iter()
            .filter(|s| s.parent.is_some() && s.kind == SpanKind::Server)
            .filter_map(|s| s.join.as_ref())
            .collect();
        for key in &p.keys {
            // A key still pointing at this trace (or one merged into it) never met its other end.
            if let Some((t, _, kind)) = self.joins.remove(key)
                && members.contains(&t)
                && !met.contains(key)
            {
                self.stats.unjoined += 1;
                if kind != SpanKind::Server {
                    self.stats.unjoined_calls += 1;
                }
            }
        }
        for a in &p.aliases {
            self.alias.remove(a);
        }
        self.in_flight -= p.spans.len();
        self.stats.traces += 1;
        self.stats.spans_in_flight = self.in_flight as u64;
        for s in &mut p.spans {
            s.trace_id = id;
        }
        Some(p.spans)
    }

    /// Traces with no new span for the idle time, as of `now_ns`.
    pub fn flush(&mut self, now_ns: u64) -> Vec<Vec<Span>> {
        let mut out = Vec::new();
        while let Some((last, id)) = self.oldest() {
            if now_ns.saturating_sub(last) < self.idle_ns {
                break;
            }
            out.extend(self.close(id));
        }
        out
    }

    /// Every trace, complete or not (at shutdown).
    pub fn flush_all(&mut self) -> Vec<Vec<Span>> {
        self.flush(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::Peer;

    fn span(trace: u8, id: u64, parent: Option<u64>, kind: SpanKind) -> Span {
        Span {
            trace_id: [trace; 16],
            span_id: id.to_be_bytes(),
            parent: parent.map(u64::to_be_bytes),
            service: "s".into(),
            kind,
            operation: "op".into(),
            start_ns: 0,
            end_ns: 0,
            fault: false,
            data_node: false,
            housekeeping: false,
            link_inferred: false,
            link_lost: false,
            peer: Peer::Unknown,
            tables: Vec::new(),
            writes: false,
            protocol: None,
            join: None,
        }
    }

    #[test]
    fn a_trace_holds_so_many_spans_and_no_more() {
        let mut a = Assembler::with_trace_limit(1_000, 1_000_000, 100);
        for i in 0..150 {
            a.add(span(1, i + 1, None, SpanKind::Client), 0);
        }
        assert_eq!(a.stats.over_trace_limit, 50);
        assert_eq!(a.stats.spans_in_flight, 100);
        let traces = a.flush_all();
        assert_eq!(traces.first().map(Vec::len), Some(100));
        assert_eq!(a.stats.spans_in_flight, 0);
    }

    /// A trace closes its idle time after its last span, not its first;
    /// the oldest by last span goes first when memory is full.
    #[test]
    fn traces_age_by_their_last_span() {
        const S: u64 = 1_000_000_000;
        let mut a = Assembler::new(S, 1_000);
        a.add(span(1, 1, None, SpanKind::Server), 0);
        a.add(span(2, 2, None, SpanKind::Server), S);
        a.add(span(1, 3, Some(1), SpanKind::Client), 2 * S);
        let closed = a.flush(2 * S + S / 2);
        assert_eq!(closed.len(), 1, "only trace 2 is idle");
        assert_eq!(closed[0][0].trace_id, [2; 16]);
        assert!(a.flush(3 * S - 1).is_empty(), "trace 1 is not idle yet");
        let closed = a.flush(3 * S + AGE_STEP_NS);
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].len(), 2);
        // Full: the trace whose last span is oldest is closed first.
        let mut a = Assembler::new(S, 3);
        a.add(span(1, 1, None, SpanKind::Server), 0);
        a.add(span(2, 2, None, SpanKind::Server), S);
        a.add(span(1, 3, Some(1), SpanKind::Client), 2 * S);
        let evicted = a.add(span(3, 4, None, SpanKind::Server), 3 * S);
        assert_eq!(evicted.len(), 1);
        assert_eq!(evicted[0][0].trace_id, [2; 16]);
        assert_eq!(a.stats.spans_in_flight, 3);
    }

    #[test]
    fn joining_a_large_trace_into_a_small_one_keeps_the_client_trace() {
        let mut a = Assembler::new(1_000, 1_000_000);
        let key = JoinKey {
            client: "10.0.0.1:1".parse().unwrap(),
            seq: 0,
        };
        // The server's trace comes first, and is the larger: it is the one
        // whose spans stay put, under the client's trace id.
        for i in 0..50 {
            a.add(span(2, 200 + i, Some(100), SpanKind::Client), 0);
        }
        let mut server = span(2, 100, None, SpanKind::Server);
        server.join = Some(key);
        a.add(server, 0);
        let mut client = span(1, 1, None, SpanKind::Client);
        client.join = Some(key);
        a.add(client, 0);
        a.add(span(2, 300, Some(100), SpanKind::Client), 0);
        let traces = a.flush_all();
        assert_eq!(traces.len(), 1);
        let t = &traces[0];
        assert_eq!(t.len(), 53);
        assert!(
            t.iter().all(|s| s.trace_id == [1; 16]),
            "the client's trace id"
        );
        let server = t
            .iter()
            .find(|s| s.span_id == 100u64.to_be_bytes())
            .unwrap();
        assert_eq!(server.parent, Some(1u64.to_be_bytes()));
        assert_eq!((a.stats.joined, a.stats.unjoined), (1, 0));
    }
}
