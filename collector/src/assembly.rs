//! Spans into traces. Spans of one trace arrive from many agents, late, out
//! of order and sometimes twice; a trace is complete once no span of it has
//! come for a while. Memory is bounded: past the limit the oldest trace is
//! closed early, and counted.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use crate::span::{Span, SpanId, TraceId};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AssemblyStats {
    pub spans: u64,
    pub duplicates: u64,
    pub traces: u64,
    /// Traces closed before their window because memory was at its limit.
    pub evicted: u64,
    pub spans_in_flight: u64,
}

struct Pending {
    spans: Vec<Span>,
    seen: HashSet<SpanId>,
    last_ns: u64,
}

pub struct Assembler {
    /// How long a trace waits for more spans after its last one.
    idle_ns: u64,
    max_spans: usize,
    pending: HashMap<TraceId, Pending>,
    /// (last update, trace) for finding the idle and the oldest.
    by_age: BTreeMap<(u64, TraceId), ()>,
    in_flight: usize,
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
            stats: AssemblyStats::default(),
        }
    }

    /// Adds a span received at `now_ns`; returns traces closed early to make room.
    pub fn add(&mut self, span: Span, now_ns: u64) -> Vec<Vec<Span>> {
        self.stats.spans += 1;
        let id = span.trace_id;
        let p = self.pending.entry(id).or_insert_with(|| Pending { spans: Vec::new(), seen: HashSet::new(), last_ns: now_ns });
        if !p.seen.insert(span.span_id) {
            self.stats.duplicates += 1;
            return Vec::new();
        }
        self.by_age.remove(&(p.last_ns, id));
        p.last_ns = now_ns;
        p.spans.push(span);
        self.by_age.insert((now_ns, id), ());
        self.in_flight += 1;
        let mut closed = Vec::new();
        while self.in_flight > self.max_spans {
            let Some((&(_, oldest), _)) = self.by_age.first_key_value() else { break };
            if let Some(t) = self.close(oldest) {
                self.stats.evicted += 1;
                closed.push(t);
            }
        }
        self.stats.spans_in_flight = self.in_flight as u64;
        closed
    }

    fn close(&mut self, id: TraceId) -> Option<Vec<Span>> {
        let p = self.pending.remove(&id)?;
        self.by_age.remove(&(p.last_ns, id));
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
