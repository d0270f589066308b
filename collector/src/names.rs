//! Bounded names. Services, operations and peers are named by whatever
//! the traffic carries: a scanner's random paths, a client's made-up
//! `service.name`. Each name is cut to a length, and past a number of
//! services, or of operations of one service, new ones become `{other}`:
//! visible in every view, and counted, so the map, the chains and the
//! metric series stay bounded.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::{
    chains::{Hop, TraceAnalysis, signature},
    span::Span,
};

/// What names beyond the limits become.
pub const OTHER: &str = "{other}";

/// How many names are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NameLimits {
    /// Distinct services (and peers known by name or address); more become `{other}`.
    pub max_services: usize,
    /// Distinct operations of one service; more become `{other}`.
    pub max_operations_per_service: usize,
}

/// Bytes of one name (service, operation, table) kept by default.
pub const DEFAULT_MAX_NAME_BYTES: usize = 128;

impl Default for NameLimits {
    fn default() -> Self {
        Self {
            max_services: 1000,
            max_operations_per_service: 200,
        }
    }
}

/// Names folded, counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NameStats {
    pub services_folded: u64,
    pub operations_folded: u64,
}

/// Cuts `name` to `max` bytes (on a character), counting it in `cut`.
pub fn cut(name: &mut String, max: usize, cut: &mut u64) {
    if name.len() > max {
        tangle_protocols::truncate_chars(name, max);
        // What waits for assembly is what was kept, not what was sent.
        name.shrink_to_fit();
        *cut += 1;
    }
}

/// Cuts every name of a span to `max` bytes, as it comes in: what waits
/// for assembly, and what a trace holds while it is assembled, stays
/// bounded. Each name cut is counted in `cuts`.
pub fn cut_span(span: &mut Span, max: usize, cuts: &mut u64) {
    span.each_name(|name| cut(name, max, cuts));
}

/// The names seen so far, per service.
#[derive(Default)]
pub struct Names {
    limits: NameLimits,
    operations: HashMap<String, HashSet<String>>,
    pub stats: NameStats,
}

impl Names {
    pub fn new(limits: NameLimits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// `name` as a known service, or `{other}` when there are enough.
    fn service(&mut self, name: &mut String) {
        if !self.operations.contains_key(name.as_str()) {
            if self.operations.len() >= self.limits.max_services {
                *name = OTHER.into();
                self.stats.services_folded += 1;
            }
            self.operations.entry(name.clone()).or_default();
        }
    }

    /// `op` as a known operation of `service` (already bounded), or `{other}`.
    fn operation(&mut self, service: &str, op: &mut String) {
        let max = self.limits.max_operations_per_service;
        let ops = self.operations.entry(service.to_owned()).or_default();
        if !ops.contains(op.as_str()) {
            if ops.len() >= max {
                *op = OTHER.into();
                self.stats.operations_folded += 1;
            } else {
                ops.insert(op.clone());
            }
        }
    }

    fn hop(&mut self, hop: &mut Hop) {
        self.service(&mut hop.service);
        self.operation(&hop.service.clone(), &mut hop.operation);
    }

    /// Bounds the names of what one trace showed, before the model counts
    /// it: only what the model keeps takes a place (a trace's hops past
    /// the depth limit, say, take none). `served` are its entry spans'
    /// services.
    pub fn bound(&mut self, a: &mut TraceAnalysis, served: &mut [(String, bool)]) {
        if let Some(entry) = &mut a.entry {
            self.hop(entry);
        }
        for chain in &mut a.chains {
            let before = chain.signature.clone();
            for hop in &mut chain.hops {
                self.hop(hop);
            }
            chain.signature = signature(&chain.hops);
            if chain.signature != before {
                a.folded = true;
            }
        }
        if a.folded {
            a.chains.sort_by(|x, y| x.hops.cmp(&y.hops));
            a.chains.dedup();
        }
        let closure = std::mem::take(&mut a.closure);
        for mut s in closure {
            self.service(&mut s);
            a.closure.insert(s);
        }
        for cycle in &mut a.cycles {
            for s in cycle {
                self.service(s);
            }
        }
        for c in a
            .calls
            .iter_mut()
            .chain(&mut a.publishes)
            .chain(a.client_call.as_mut())
        {
            self.service(&mut c.caller);
            self.service(&mut c.callee);
        }
        for c in &mut a.db_calls {
            self.service(&mut c.caller);
        }
        for t in &mut a.topics {
            self.service(t);
        }
        for d in &mut a.db_accesses {
            self.service(&mut d.service);
        }
        for (s, _) in served {
            self.service(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        chains::analyze,
        span::{Peer, SpanKind},
    };

    fn trace(service: &str, op: &str, callee: &str) -> Vec<Span> {
        let span = |id: u8, parent: Option<u8>, service: &str, kind, peer| Span {
            trace_id: [1; 16],
            span_id: [id; 8],
            parent: parent.map(|p| [p; 8]),
            service: service.into(),
            kind,
            operation: op.into(),
            start_ns: 0,
            end_ns: 1,
            fault: false,
            data_node: false,
            housekeeping: false,
            link_inferred: false,
            link_lost: false,
            peer,
            tables: Vec::new(),
            writes: false,
            protocol: None,
            join: None,
        };
        vec![
            span(1, None, service, SpanKind::Server, Peer::Unknown),
            span(
                2,
                Some(1),
                service,
                SpanKind::Client,
                Peer::Address {
                    address: callee.into(),
                },
            ),
        ]
    }

    fn bounded(n: &mut Names, service: &str, op: &str, callee: &str) -> TraceAnalysis {
        let mut a = analyze(&trace(service, op, callee)).unwrap();
        n.bound(&mut a, &mut []);
        a
    }

    #[test]
    fn names_past_the_limits_become_other() {
        let mut n = Names::new(NameLimits {
            max_services: 3,
            max_operations_per_service: 2,
        });
        let mut ops = Vec::new();
        for op in ["a", "b", "c", "a"] {
            ops.push(
                bounded(&mut n, "shop", op, "10.0.0.1:80")
                    .entry
                    .unwrap()
                    .operation,
            );
        }
        assert_eq!(ops, ["a", "b", OTHER, "a"]);
        // shop, 10.0.0.1:80 and 10.0.0.2:80; then no more.
        let a = bounded(&mut n, "shop", "a", "10.0.0.2:80");
        assert_eq!(a.calls[0].callee, "10.0.0.2:80");
        let a = bounded(&mut n, "payments", "x", "10.0.0.1:80");
        assert_eq!(a.entry.unwrap().service, OTHER);
        assert!(a.closure.contains(OTHER) && !a.closure.contains("payments"));
        assert_eq!(a.chains[0].hops[0].service, OTHER);
        assert_eq!(
            a.chains[0].signature,
            signature(&a.chains[0].hops),
            "signatures follow the folded names"
        );
        assert!(n.stats.services_folded >= 1 && n.stats.operations_folded >= 1);
        let mut s = trace("shop", &"é".repeat(10), "x").remove(0);
        let mut cuts = 0;
        cut_span(&mut s, 16, &mut cuts);
        assert!(s.operation.len() <= 16);
        assert_eq!(cuts, 1);
    }
}
