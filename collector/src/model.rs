//! What the collector knows across traces: per entry operation (depth,
//! fan-out, closure), every chain seen (new ones against the baseline),
//! calls between services (faults, propagation, chattiness), success rates,
//! and who touches which database — and the findings drawn from them.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

pub use crate::findings::Finding;
use crate::{
    baseline::{Baseline, FirstSeen},
    chains::{Hop, TraceAnalysis, calls_per_edge},
    names::OTHER,
    span::NodeKind,
};

/// When a measurement becomes a finding. Defaults suit a first look.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Thresholds {
    /// Sync depth (service-to-service hops) above which a chain is deep.
    pub max_sync_depth: usize,
    /// Services an entry operation may need up before its closure is wide.
    pub max_closure: usize,
    /// Share of a callee's faults that are also faults of its caller, above
    /// which the edge is a cascading failure (0..1). Caller errors (HTTP
    /// 4xx, a SQL syntax error) are not faults and do not count.
    pub cascade_ratio: f64,
    /// Failed calls on an edge before its cascade ratio is judged.
    pub cascade_min_failures: u64,
    /// Calls between two services for one entry request above which the edge is chatty.
    pub max_calls_per_request: f64,
    /// Seconds from the baseline's first chain during which chains are
    /// learned, not reported as new (ever): a collector's first minutes
    /// would otherwise call every chain of the system new. The baseline's
    /// first chain is persisted, so learning does not start again at a
    /// restart. 0: every chain not in the baseline is new.
    pub learning_seconds: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            max_sync_depth: 3,
            max_closure: 5,
            cascade_ratio: 0.5,
            cascade_min_failures: 5,
            max_calls_per_request: 10.0,
            learning_seconds: 300,
        }
    }
}

/// How much the model keeps, whatever the traffic. Past each limit the
/// excess is counted, and chains, entries, edges, databases and tables
/// beyond it are folded into `{other}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelLimits {
    /// Distinct synchronous chains; more count as the `{other}` chain,
    /// never reported as new.
    pub max_chains: usize,
    /// Distinct entry operations.
    pub max_entries: usize,
    /// Distinct edges of each kind (sync, async, database).
    pub max_edges: usize,
    /// Distinct databases (system, server, name).
    pub max_databases: usize,
    /// Distinct (database, service, table) entries, all databases together.
    pub max_tables: usize,
    /// Distinct cycles kept; more are counted only.
    pub max_cycles: usize,
}

impl Default for ModelLimits {
    fn default() -> Self {
        Self {
            max_chains: 5_000,
            max_entries: 2_000,
            max_edges: 10_000,
            max_databases: 500,
            max_tables: 10_000,
            max_cycles: 1_000,
        }
    }
}

/// What the limits turned away, counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Overflow {
    pub chains: u64,
    pub entries: u64,
    pub edges: u64,
    pub databases: u64,
    pub tables: u64,
    pub cycles: u64,
    /// Paths cut at the chain depth limit.
    pub cut_chains: u64,
}

/// The key of something kept: itself, or `{other}` once `len` reached `max`.
fn bounded<K: Ord + Clone, V>(
    map: &BTreeMap<K, V>,
    key: K,
    other: impl FnOnce() -> K,
    max: usize,
    count: &mut u64,
) -> K {
    if map.len() >= max && !map.contains_key(&key) {
        *count += 1;
        other()
    } else {
        key
    }
}

fn other_hop() -> Hop {
    Hop {
        service: OTHER.into(),
        operation: OTHER.into(),
    }
}

/// A database, as the findings name it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct DbKey {
    pub system: String,
    pub server: String,
    pub namespace: Option<String>,
}

impl DbKey {
    pub fn name(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{}/{ns}", self.server),
            None => self.server.clone(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct TableUse {
    pub reads: u64,
    pub writes: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct EntryStats {
    pub traces: u64,
    pub max_depth: usize,
    /// Traces by depth (index = depth, capped at 32).
    pub depth_histogram: Vec<u64>,
    pub max_fan_out: usize,
    pub closure: BTreeSet<String>,
}

impl EntryStats {
    pub fn p95_depth(&self) -> usize {
        let total: u64 = self.depth_histogram.iter().sum();
        let want = (total * 95).div_ceil(100);
        let mut seen = 0;
        for (d, n) in self.depth_histogram.iter().enumerate() {
            seen += n;
            if seen >= want && total > 0 {
                return d;
            }
        }
        0
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ChainStats {
    pub entry: Hop,
    pub hops: Vec<Hop>,
    pub depth: usize,
    pub traces: u64,
    /// Traces that showed the chain with a link made by a heuristic (the
    /// others' links were all exact).
    pub inferred_traces: u64,
    pub first_seen_ns: u64,
    pub example_trace: String,
    /// Not in the baseline when first seen by this collector.
    pub new: bool,
}

/// Upper bounds (seconds) of the latency buckets, as Tempo's service graphs
/// use, with finer steps below 100 ms for in-cluster calls.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2,
];

/// A latency histogram: counts per bucket of [`LATENCY_BUCKETS`] (the last
/// slot is +Inf), and the sum.
#[derive(Clone, Debug, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct Latency {
    pub buckets: [u64; 13],
    pub sum_seconds: f64,
    pub count: u64,
}

impl Latency {
    pub fn observe(&mut self, ns: u64) {
        let s = ns as f64 / 1e9;
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        if let Some(b) = self.buckets.get_mut(i) {
            *b += 1;
        }
        self.sum_seconds += s;
        self.count += 1;
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct EdgeStats {
    pub calls: u64,
    pub callee_failures: u64,
    /// Callee failures whose caller failed too.
    pub propagated: u64,
    /// Traces with this edge, and calls in them (for calls per request).
    pub traces: u64,
    pub max_calls_per_trace: u64,
    /// As the caller measured it.
    pub client_latency: Latency,
    /// As the callee measured it (when its span was seen).
    pub server_latency: Latency,
    /// Protocols seen on the edge (`http`, `grpc`, `postgresql`, ...).
    pub protocols: BTreeSet<String>,
    /// Calls linked to the caller's request exactly (propagated context,
    /// the thread rule, the wire join) and by a heuristic.
    pub exact: u64,
    pub inferred: u64,
}

impl EdgeStats {
    fn record(&mut self, c: &crate::chains::Call) {
        self.calls += 1;
        if c.inferred {
            self.inferred += 1;
        } else {
            self.exact += 1;
        }
        self.client_latency.observe(c.client_ns);
        if let Some(ns) = c.server_ns {
            self.server_latency.observe(ns);
        }
        if let Some(p) = &c.protocol {
            self.protocols.insert(p.clone());
        }
        if c.callee_error {
            self.callee_failures += 1;
            if c.caller_error {
                self.propagated += 1;
            }
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ServiceStats {
    /// Operations served (entry spans seen).
    pub served: u64,
    pub failed: u64,
}

impl ServiceStats {
    pub fn success_rate(&self) -> Option<f64> {
        (self.served > 0).then(|| 1.0 - self.failed as f64 / self.served as f64)
    }
}

/// A database's owner and how it was decided.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct Owner {
    pub service: String,
    /// `configured`, or the inference made.
    pub source: String,
}

pub struct Model {
    pub thresholds: Thresholds,
    pub limits: ModelLimits,
    pub overflow: Overflow,
    /// (database, service, table) entries in `databases`.
    table_entries: usize,
    /// Changes with every trace counted: what is computed from the model
    /// (findings) is computed again only when it moved.
    pub version: u64,
    /// Configured owners: database name (`server/namespace` or namespace) -> service.
    pub owners: BTreeMap<String, String>,
    baseline: Baseline,
    pub entries: BTreeMap<Hop, EntryStats>,
    pub chains: BTreeMap<String, ChainStats>,
    /// Synchronous calls between services.
    pub edges: BTreeMap<(String, String), EdgeStats>,
    /// A pure client (curl, a job) to the service it called: the caller
    /// of an entry, not a hop.
    pub client_edges: BTreeMap<(String, String), EdgeStats>,
    /// Topics, channels and queues seen (`channel@server`).
    pub topics: BTreeSet<String>,
    /// Publishes: publisher to consumer (or broker).
    pub async_edges: BTreeMap<(String, String), EdgeStats>,
    /// Service to database (`server/namespace`).
    pub db_edges: BTreeMap<(String, String), EdgeStats>,
    pub services: BTreeMap<String, ServiceStats>,
    pub databases: BTreeMap<DbKey, BTreeMap<String, BTreeMap<String, TableUse>>>,
    pub cycles: BTreeSet<Vec<String>>,
    pub new_chains: u64,
}

fn hex(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

impl Model {
    pub fn new(
        baseline: Baseline,
        thresholds: Thresholds,
        owners: BTreeMap<String, String>,
    ) -> Self {
        Self::with_limits(baseline, thresholds, owners, ModelLimits::default())
    }

    pub fn with_limits(
        baseline: Baseline,
        thresholds: Thresholds,
        owners: BTreeMap<String, String>,
        limits: ModelLimits,
    ) -> Self {
        Self {
            thresholds,
            limits,
            overflow: Overflow::default(),
            table_entries: 0,
            version: 0,
            owners,
            baseline,
            entries: BTreeMap::new(),
            chains: BTreeMap::new(),
            edges: BTreeMap::new(),
            client_edges: BTreeMap::new(),
            topics: BTreeSet::new(),
            async_edges: BTreeMap::new(),
            db_edges: BTreeMap::new(),
            services: BTreeMap::new(),
            databases: BTreeMap::new(),
            cycles: BTreeSet::new(),
            new_chains: 0,
        }
    }

    /// The baseline's write counters.
    pub fn baseline_stats(&self) -> &crate::baseline::BaselineStats {
        &self.baseline.stats
    }

    /// Counts what one trace shows; `served` is each entry span's (service, failed).
    pub fn ingest(
        &mut self,
        trace_id: &[u8],
        a: &TraceAnalysis,
        served: &[(String, bool)],
        now_ns: u64,
    ) {
        self.version += 1;
        self.overflow.cut_chains += a.cut_chains as u64;
        if let Some(entry) = &a.entry {
            self.ingest_entry(trace_id, a, entry.clone(), now_ns);
        }
        self.ingest_edges(a, served);
    }

    /// What one trace shows of its entry operation and its chains.
    fn ingest_entry(&mut self, trace_id: &[u8], a: &TraceAnalysis, entry: Hop, now_ns: u64) {
        let lim = self.limits;
        let of = &mut self.overflow;
        let entry = bounded(
            &self.entries,
            entry,
            other_hop,
            lim.max_entries,
            &mut of.entries,
        );
        let e = self.entries.entry(entry.clone()).or_default();
        e.traces += 1;
        e.max_depth = e.max_depth.max(a.depth);
        let d = a.depth.min(32);
        if e.depth_histogram.len() <= d {
            e.depth_histogram.resize(d + 1, 0);
        }
        if let Some(n) = e.depth_histogram.get_mut(d) {
            *n += 1;
        }
        e.max_fan_out = e.max_fan_out.max(a.fan_out);
        e.closure.extend(a.closure.iter().cloned());
        for chain in &a.chains {
            if let Some(c) = self.chains.get_mut(&chain.signature) {
                c.traces += 1;
                c.inferred_traces += u64::from(chain.inferred_links > 0);
                continue;
            }
            if self.chains.len() >= lim.max_chains {
                // Counted, never new: a flood of made-up chains is not news.
                self.overflow.chains += 1;
                let other = self
                    .chains
                    .entry(OTHER.into())
                    .or_insert_with(|| ChainStats {
                        entry: other_hop(),
                        hops: vec![other_hop()],
                        depth: 0,
                        traces: 0,
                        inferred_traces: 0,
                        first_seen_ns: now_ns,
                        example_trace: hex(trace_id),
                        new: false,
                    });
                other.traces += 1;
                continue;
            }
            let example_trace = hex(trace_id);
            let text = chain
                .hops
                .iter()
                .map(|h| format!("{}:{}", h.service, h.operation))
                .collect::<Vec<_>>()
                .join(" -> ");
            // While the baseline is learning, chains are recorded, not new.
            let learning_ns = self
                .thresholds
                .learning_seconds
                .saturating_mul(1_000_000_000);
            let learned = learning_ns == 0
                || self
                    .baseline
                    .started_ns()
                    .is_some_and(|start| now_ns.saturating_sub(start) >= learning_ns);
            let new = self.baseline.record(FirstSeen {
                signature: chain.signature.clone(),
                chain: text,
                first_seen_ns: now_ns,
                example_trace: example_trace.clone(),
            }) && learned;
            if new {
                self.new_chains += 1;
            }
            let first = self.baseline.get(&chain.signature).cloned();
            self.chains.insert(
                chain.signature.clone(),
                ChainStats {
                    entry: entry.clone(),
                    hops: chain.hops.clone(),
                    depth: chain.depth(),
                    traces: 1,
                    inferred_traces: u64::from(chain.inferred_links > 0),
                    first_seen_ns: first.as_ref().map_or(now_ns, |f| f.first_seen_ns),
                    example_trace: first.map_or(example_trace, |f| f.example_trace),
                    new,
                },
            );
        }
    }

    /// What one trace shows of edges, services, databases and cycles.
    fn ingest_edges(&mut self, a: &TraceAnalysis, served: &[(String, bool)]) {
        let lim = self.limits;
        let of = &mut self.overflow;
        for (calls, edges) in [
            (a.client_call.as_slice(), &mut self.client_edges),
            (&a.calls[..], &mut self.edges),
            (&a.publishes[..], &mut self.async_edges),
            (&a.db_calls[..], &mut self.db_edges),
        ] {
            for c in calls {
                let key = bounded(
                    edges,
                    (c.caller.clone(), c.callee.clone()),
                    || (OTHER.into(), OTHER.into()),
                    lim.max_edges,
                    &mut of.edges,
                );
                edges.entry(key).or_default().record(c);
            }
        }
        for ((caller, callee), n) in calls_per_edge(a) {
            let key = bounded(
                &self.edges,
                (caller, callee),
                || (OTHER.into(), OTHER.into()),
                lim.max_edges,
                &mut of.edges,
            );
            let s = self.edges.entry(key).or_default();
            s.traces += 1;
            s.max_calls_per_trace = s.max_calls_per_trace.max(n as u64);
        }
        for (service, failed) in served {
            let s = self.services.entry(service.clone()).or_default();
            s.served += 1;
            s.failed += u64::from(*failed);
        }
        for acc in &a.db_accesses {
            let key = bounded(
                &self.databases,
                DbKey {
                    system: acc.system.clone(),
                    server: acc.server.clone(),
                    namespace: acc.namespace.clone(),
                },
                || DbKey {
                    system: OTHER.into(),
                    server: OTHER.into(),
                    namespace: None,
                },
                lim.max_databases,
                &mut of.databases,
            );
            let tables = self
                .databases
                .entry(key)
                .or_default()
                .entry(acc.service.clone())
                .or_default();
            // A statement that names no table (or a cache command) makes
            // its service an accessor, with no table to show.
            for t in acc.tables.iter().cloned() {
                // The limit is on all (database, service, table) entries
                // together: each database may not have its own.
                let t = if tables.contains_key(&t) || t == OTHER {
                    t
                } else if self.table_entries >= lim.max_tables {
                    of.tables += 1;
                    OTHER.into()
                } else {
                    t
                };
                if !tables.contains_key(&t) {
                    self.table_entries += 1;
                }
                let u = tables.entry(t).or_default();
                if acc.writes {
                    u.writes += 1;
                } else {
                    u.reads += 1;
                }
            }
        }
        for t in &a.topics {
            if self.topics.len() < lim.max_edges || self.topics.contains(t) {
                self.topics.insert(t.clone());
            } else {
                of.edges += 1;
            }
        }
        for cycle in &a.cycles {
            if self.cycles.len() >= lim.max_cycles && !self.cycles.contains(cycle) {
                of.cycles += 1;
            } else {
                self.cycles.insert(cycle.clone());
            }
        }
    }

    /// Every node of the map, by kind: services (they served, or called
    /// while serving), databases and caches, topics, external clients
    /// (they only called) and external endpoints (called, never seen
    /// serving).
    pub fn nodes(&self) -> BTreeMap<String, NodeKind> {
        let mut nodes = BTreeMap::new();
        for db in self.databases.keys() {
            nodes.insert(db.name(), NodeKind::of_store(&db.system));
        }
        for t in &self.topics {
            nodes.insert(t.clone(), NodeKind::Topic);
        }
        let consumers = self
            .async_edges
            .keys()
            .filter(|(from, _)| self.topics.contains(from))
            .map(|(_, to)| to);
        let served = self
            .services
            .keys()
            .chain(self.entries.values().flat_map(|e| &e.closure))
            .chain(self.client_edges.keys().map(|(_, s)| s))
            .chain(consumers);
        for s in served {
            nodes.entry(s.clone()).or_insert(NodeKind::Service);
        }
        let callers = [
            &self.edges,
            &self.client_edges,
            &self.db_edges,
            &self.async_edges,
        ]
        .into_iter()
        .flat_map(|e| e.keys().map(|(c, _)| c));
        for c in callers {
            nodes.entry(c.clone()).or_insert(NodeKind::ExternalClient);
        }
        for (_, callee) in self.edges.keys() {
            nodes
                .entry(callee.clone())
                .or_insert(NodeKind::ExternalEndpoint);
        }
        nodes
    }

    /// The configured owner, or the service that writes most (then reads most).
    pub fn owner(&self, db: &DbKey) -> Option<Owner> {
        let name = db.name();
        let configured = self
            .owners
            .get(&name)
            .or_else(|| db.namespace.as_ref().and_then(|ns| self.owners.get(ns)));
        if let Some(service) = configured {
            return Some(Owner {
                service: service.clone(),
                source: "configured".into(),
            });
        }
        let users = self.databases.get(db)?;
        let score = |t: &BTreeMap<String, TableUse>| {
            (
                t.values().map(|u| u.writes).sum::<u64>(),
                t.values().map(|u| u.reads).sum::<u64>(),
            )
        };
        let (service, (w, r)) = users
            .iter()
            .map(|(s, t)| (s, score(t)))
            .max_by_key(|(s, sc)| (*sc, std::cmp::Reverse((*s).clone())))?;
        let total_w: u64 = users.values().map(|t| score(t).0).sum();
        Some(Owner {
            service: service.clone(),
            source: format!("inferred: most writes ({w} of {total_w}), then reads ({r})"),
        })
    }

    /// Calls on every edge linked to their caller's request: exactly, and
    /// by a heuristic.
    pub fn links(&self) -> (u64, u64) {
        [
            &self.edges,
            &self.client_edges,
            &self.async_edges,
            &self.db_edges,
        ]
        .into_iter()
        .flat_map(|m| m.values())
        .fold((0, 0), |(x, i), e| (x + e.exact, i + e.inferred))
    }

    /// Availability the closure implies: the product of its services' success rates.
    pub fn availability(&self, closure: &BTreeSet<String>) -> Option<f64> {
        let rates: Vec<f64> = closure
            .iter()
            .filter_map(|s| self.services.get(s)?.success_rate())
            .collect();
        (!rates.is_empty()).then(|| rates.iter().product())
    }
}
