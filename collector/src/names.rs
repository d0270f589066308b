//! Bounded names. Services, operations and peers are named by whatever
//! the traffic carries: a scanner's random paths, a client's made-up
//! `service.name`. Each name is cut to a length, and past a number of
//! services, or of operations of one service, new ones become `{other}`:
//! visible in every view, and counted, so the map, the chains and the
//! metric series stay bounded.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::span::{Peer, Span};

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
    /// Bytes of one name (service, operation, table) kept; the rest is cut.
    pub max_name_bytes: usize,
}

impl Default for NameLimits {
    fn default() -> Self {
        Self {
            max_services: 1000,
            max_operations_per_service: 200,
            max_name_bytes: 256,
        }
    }
}

/// Names folded or cut, counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NameStats {
    pub services_folded: u64,
    pub operations_folded: u64,
    pub names_cut: u64,
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

    fn cut(&mut self, name: &mut String) {
        if name.len() > self.limits.max_name_bytes {
            tangle_protocols::truncate_chars(name, self.limits.max_name_bytes);
            self.stats.names_cut += 1;
        }
    }

    /// `name` as a known service, or `{other}` when there are enough.
    fn service(&mut self, name: &mut String) {
        self.cut(name);
        if !self.operations.contains_key(name.as_str()) {
            if self.operations.len() >= self.limits.max_services {
                *name = OTHER.into();
                self.stats.services_folded += 1;
            }
            self.operations.entry(name.clone()).or_default();
        }
    }

    /// Bounds a span's names: its service, its operation, its peer.
    pub fn bound(&mut self, span: &mut Span) {
        self.service(&mut span.service);
        self.cut(&mut span.operation);
        let max = self.limits.max_operations_per_service;
        let ops = self.operations.entry(span.service.clone()).or_default();
        if !ops.contains(span.operation.as_str()) {
            if ops.len() >= max {
                span.operation = OTHER.into();
                self.stats.operations_folded += 1;
            } else {
                ops.insert(span.operation.clone());
            }
        }
        match &mut span.peer {
            Peer::Service { name } => self.service(name),
            Peer::Address { address } => self.service(address),
            Peer::Database {
                system,
                server,
                namespace,
            } => {
                self.cut(system);
                self.cut(server);
                if let Some(ns) = namespace {
                    self.cut(ns);
                }
            }
            Peer::Unknown => {}
        }
        for t in &mut span.tables {
            self.cut(t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::SpanKind;

    fn span(service: &str, op: &str) -> Span {
        Span {
            trace_id: [1; 16],
            span_id: [1; 8],
            parent: None,
            service: service.into(),
            kind: SpanKind::Server,
            operation: op.into(),
            start_ns: 0,
            end_ns: 0,
            error: false,
            peer: Peer::Address {
                address: format!("10.0.0.1:{op}"),
            },
            tables: Vec::new(),
            writes: false,
            protocol: None,
            join: None,
        }
    }

    #[test]
    fn names_past_the_limits_become_other() {
        let mut n = Names::new(NameLimits {
            max_services: 3,
            max_operations_per_service: 2,
            max_name_bytes: 16,
        });
        let mut ops = Vec::new();
        for op in ["a", "b", "c", "a"] {
            let mut s = span("shop", op);
            n.bound(&mut s);
            ops.push(s.operation);
        }
        assert_eq!(ops, ["a", "b", OTHER, "a"]);
        // shop, and the peers 10.0.0.1:a and :b; then no more.
        let mut s = span("payments", "x");
        n.bound(&mut s);
        assert_eq!(s.service, OTHER);
        let mut s = span("shop", "é".repeat(10).as_str());
        n.bound(&mut s);
        assert!(s.operation.len() <= 16 || s.operation == OTHER);
        assert!(n.stats.services_folded >= 1 && n.stats.operations_folded >= 1);
        assert!(n.stats.names_cut >= 1);
    }
}
