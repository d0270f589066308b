//! The rules: when what the model measured is a distributed-monolith
//! symptom (`[thresholds]`), and the evidence each finding carries.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::{
    chains::Hop,
    model::{Model, Owner},
};

/// One distributed-monolith symptom, with its evidence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Finding {
    NewSyncChain {
        signature: String,
        chain: Vec<Hop>,
        first_seen_ns: u64,
        example_trace: String,
    },
    DeepSyncChain {
        entry: Hop,
        depth: usize,
        p95_depth: usize,
        longest: Vec<Hop>,
    },
    WideClosure {
        entry: Hop,
        services: BTreeSet<String>,
        availability: Option<f64>,
    },
    Cycle {
        services: Vec<String>,
    },
    CascadingFailure {
        caller: String,
        callee: String,
        propagated: u64,
        callee_failures: u64,
        ratio: f64,
        /// The edge's calls linked to their caller's request by a heuristic.
        inferred_calls: u64,
    },
    ChattyEdge {
        caller: String,
        callee: String,
        max_calls_per_request: u64,
        calls_per_request: f64,
        /// The edge's calls linked to their caller's request by a heuristic.
        inferred_calls: u64,
    },
    SharedDatabase {
        database: String,
        services: BTreeSet<String>,
        owner: Option<Owner>,
    },
    CrossServiceAccess {
        database: String,
        owner: Owner,
        accessor: String,
        tables: BTreeMap<String, (u64, u64)>,
    },
    TableWrittenByMany {
        database: String,
        table: String,
        services: BTreeSet<String>,
    },
}

impl Finding {
    /// Its kind, as its JSON names it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NewSyncChain { .. } => "new_sync_chain",
            Self::DeepSyncChain { .. } => "deep_sync_chain",
            Self::WideClosure { .. } => "wide_closure",
            Self::Cycle { .. } => "cycle",
            Self::CascadingFailure { .. } => "cascading_failure",
            Self::ChattyEdge { .. } => "chatty_edge",
            Self::SharedDatabase { .. } => "shared_database",
            Self::CrossServiceAccess { .. } => "cross_service_access",
            Self::TableWrittenByMany { .. } => "table_written_by_many",
        }
    }
}

impl Model {
    /// Every symptom the model shows now, by the thresholds.
    pub fn findings(&self) -> Vec<Finding> {
        let t = &self.thresholds;
        let mut out = Vec::new();
        for (sig, c) in &self.chains {
            if c.new {
                out.push(Finding::NewSyncChain {
                    signature: sig.clone(),
                    chain: c.hops.clone(),
                    first_seen_ns: c.first_seen_ns,
                    example_trace: c.example_trace.clone(),
                });
            }
        }
        for (entry, e) in &self.entries {
            if e.max_depth > t.max_sync_depth {
                let longest = self
                    .chains
                    .values()
                    .filter(|c| c.entry == *entry)
                    .max_by_key(|c| c.depth)
                    .map(|c| c.hops.clone())
                    .unwrap_or_default();
                out.push(Finding::DeepSyncChain {
                    entry: entry.clone(),
                    depth: e.max_depth,
                    p95_depth: e.p95_depth(),
                    longest,
                });
            }
            if e.closure.len() > t.max_closure {
                out.push(Finding::WideClosure {
                    entry: entry.clone(),
                    services: e.closure.clone(),
                    availability: self.availability(&e.closure),
                });
            }
        }
        for cycle in &self.cycles {
            out.push(Finding::Cycle {
                services: cycle.clone(),
            });
        }
        for ((caller, callee), e) in &self.edges {
            if e.callee_failures >= t.cascade_min_failures {
                let ratio = e.propagated as f64 / e.callee_failures as f64;
                if ratio > t.cascade_ratio {
                    out.push(Finding::CascadingFailure {
                        caller: caller.clone(),
                        callee: callee.clone(),
                        propagated: e.propagated,
                        callee_failures: e.callee_failures,
                        ratio,
                        inferred_calls: e.inferred,
                    });
                }
            }
            let per_request = if e.traces > 0 {
                e.calls as f64 / e.traces as f64
            } else {
                0.0
            };
            if e.max_calls_per_trace as f64 > t.max_calls_per_request {
                out.push(Finding::ChattyEdge {
                    caller: caller.clone(),
                    callee: callee.clone(),
                    max_calls_per_request: e.max_calls_per_trace,
                    calls_per_request: per_request,
                    inferred_calls: e.inferred,
                });
            }
        }
        for (db, users) in &self.databases {
            let owner = self.owner(db);
            if users.len() > 1 {
                out.push(Finding::SharedDatabase {
                    database: db.name(),
                    services: users.keys().cloned().collect(),
                    owner: owner.clone(),
                });
            }
            if let Some(owner) = &owner {
                for (service, tables) in users.iter().filter(|(s, _)| **s != owner.service) {
                    out.push(Finding::CrossServiceAccess {
                        database: db.name(),
                        owner: owner.clone(),
                        accessor: service.clone(),
                        tables: tables
                            .iter()
                            .map(|(t, u)| (t.clone(), (u.reads, u.writes)))
                            .collect(),
                    });
                }
            }
            let mut writers: BTreeMap<&String, BTreeSet<String>> = BTreeMap::new();
            for (service, tables) in users {
                for (table, u) in tables {
                    if u.writes > 0 {
                        writers.entry(table).or_default().insert(service.clone());
                    }
                }
            }
            for (table, services) in writers.into_iter().filter(|(_, s)| s.len() > 1) {
                out.push(Finding::TableWrittenByMany {
                    database: db.name(),
                    table: table.clone(),
                    services,
                });
            }
        }
        out
    }
}
