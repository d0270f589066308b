//! Spans into traces. Spans of one trace arrive from many agents, late, out
//! of order and sometimes twice; a trace is complete once no span of it has
//! come for a while. Memory is bounded: past the limit the oldest trace is
//! closed early, and counted.
//!
//! The two ends of one call seen by two agents without propagated context
//! are in two traces: their join keys (`tangle_wire`) match, and the
//! server's trace moves under the client span.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use tangle_wire::JoinKey;

use crate::span::{Span, SpanId, SpanKind, TraceId};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
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
}

struct Pending {
    spans: Vec<Span>,
    seen: HashSet<SpanId>,
    last_ns: u64,
    /// Join keys first seen in this trace, and traces merged into it.
    keys: Vec<JoinKey>,
    aliases: Vec<TraceId>,
}

pub struct Assembler {
    /// How long a trace waits for more spans after its last one.
    idle_ns: u64,
    max_spans: usize,
    pending: HashMap<TraceId, Pending>,
    /// (last update, trace) for finding the idle and the oldest.
    by_age: BTreeMap<(u64, TraceId), ()>,
    in_flight: usize,
    /// The first span seen with each join key: (trace, span, kind).
    joins: HashMap<JoinKey, (TraceId, SpanId, SpanKind)>,
    /// Traces merged into another: their spans go there.
    alias: HashMap<TraceId, TraceId>,
    pub stats: AssemblyStats,
}

impl Assembler {
    pub fn new(idle_ns: u64, max_spans: usize) -> Self {
        Self {
            idle_ns,
            max_spans: max_spans.max(1),
            pending: HashMap::new(),
            by_age: BTreeMap::new(),
            in_flight: 0,
            joins: HashMap::new(),
            alias: HashMap::new(),
            stats: AssemblyStats::default(),
        }
    }

    /// Adds a span received at `now_ns`; returns traces closed early to make room.
    pub fn add(&mut self, mut span: Span, now_ns: u64) -> Vec<Vec<Span>> {
        self.stats.spans += 1;
        if let Some(&to) = self.alias.get(&span.trace_id) {
            span.trace_id = to;
        }
        let id = span.trace_id;
        let p = self.pending.entry(id).or_insert_with(|| Pending {
            spans: Vec::new(),
            seen: HashSet::new(),
            last_ns: now_ns,
            keys: Vec::new(),
            aliases: Vec::new(),
        });
        if !p.seen.insert(span.span_id) {
            self.stats.duplicates += 1;
            return Vec::new();
        }
        self.by_age.remove(&(p.last_ns, id));
        p.last_ns = now_ns;
        let join = span.join.clone();
        let (span_id, kind) = (span.span_id, span.kind);
        p.spans.push(span);
        self.by_age.insert((now_ns, id), ());
        self.in_flight += 1;
        if let Some(key) = join {
            self.join(key, id, span_id, kind, now_ns);
        }
        let mut closed = Vec::new();
        while self.in_flight > self.max_spans {
            let Some((&(_, oldest), _)) = self.by_age.first_key_value() else {
                break;
            };
            if let Some(t) = self.close(oldest) {
                self.stats.evicted += 1;
                closed.push(t);
            }
        }
        self.stats.spans_in_flight = self.in_flight as u64;
        closed
    }

    /// Links the two ends of one call: the server span goes under the client
    /// span, and the server's trace into the client's.
    fn join(&mut self, key: JoinKey, trace: TraceId, span: SpanId, kind: SpanKind, now_ns: u64) {
        let Some(&(other_trace, other_span, other_kind)) = self.joins.get(&key) else {
            self.joins.insert(key.clone(), (trace, span, kind));
            if let Some(p) = self.pending.get_mut(&trace) {
                p.keys.push(key);
            }
            return;
        };
        let (client_trace, client_span, server_trace, server_span) = match (kind, other_kind) {
            (SpanKind::Server, SpanKind::Client) => (other_trace, other_span, trace, span),
            (SpanKind::Client, SpanKind::Server) => (trace, span, other_trace, other_span),
            _ => return,
        };
        let client_trace = *self.alias.get(&client_trace).unwrap_or(&client_trace);
        let server_trace = *self.alias.get(&server_trace).unwrap_or(&server_trace);
        if let Some(p) = self.pending.get_mut(&server_trace)
            && let Some(s) = p.spans.iter_mut().find(|s| s.span_id == server_span)
            && s.parent.is_none()
        {
            s.parent = Some(client_span);
        }
        self.stats.joined += 1;
        if client_trace == server_trace {
            return;
        }
        // Move the server's trace into the client's.
        let Some(mut from) = self.pending.remove(&server_trace) else {
            return;
        };
        self.by_age.remove(&(from.last_ns, server_trace));
        let Some(to) = self.pending.get_mut(&client_trace) else {
            // The client's trace already closed: keep the server's as it was.
            self.by_age.insert((from.last_ns, server_trace), ());
            self.pending.insert(server_trace, from);
            return;
        };
        self.by_age.remove(&(to.last_ns, client_trace));
        for s in &mut from.spans {
            s.trace_id = client_trace;
        }
        to.spans.append(&mut from.spans);
        to.seen.extend(from.seen);
        to.keys.append(&mut from.keys);
        to.aliases.push(server_trace);
        to.aliases.append(&mut from.aliases);
        to.last_ns = to.last_ns.max(from.last_ns).max(now_ns);
        self.by_age.insert((to.last_ns, client_trace), ());
        for a in to.aliases.iter() {
            self.alias.insert(*a, client_trace);
        }
    }

    fn close(&mut self, id: TraceId) -> Option<Vec<Span>> {
        let p = self.pending.remove(&id)?;
        self.by_age.remove(&(p.last_ns, id));
        for key in &p.keys {
            // A key still pointing at this trace (or one merged into it) never met its other end.
            if let Some((t, _, _)) = self.joins.remove(key)
                && (t == id || p.aliases.contains(&t))
                && !p.spans.iter().any(|s| {
                    s.parent.is_some() && s.join.as_ref() == Some(key) && s.kind == SpanKind::Server
                })
            {
                self.stats.unjoined += 1;
            }
        }
        for a in &p.aliases {
            self.alias.remove(a);
        }
        self.in_flight -= p.spans.len();
        self.stats.traces += 1;
        self.stats.spans_in_flight = self.in_flight as u64;
        Some(p.spans)
    }

    /// Traces with no new span for the idle time, as of `now_ns`.
    pub fn flush(&mut self, now_ns: u64) -> Vec<Vec<Span>> {
        let mut out = Vec::new();
        while let Some((&(last, id), _)) = self.by_age.first_key_value() {
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
