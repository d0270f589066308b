//! What the JSON API answers, as types: the server writes them, and
//! `tangle-collector report` (and any Rust client) reads them back, so the
//! two cannot drift apart.

use std::{
    borrow::Cow,
    collections::{BTreeMap, BTreeSet},
};

use serde::{Deserialize, Serialize};

use crate::{
    assembly::AssemblyStats,
    chains::Hop,
    findings::Finding,
    intake::otlp::MappingStats,
    model::{EdgeStats, Latency, Model, Owner, TableUse},
};

/// `GET /api/findings`: every symptom the model shows now, with how the
/// calls behind them were linked.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FindingsPage<'a> {
    /// Borrowed where the server writes them, owned where they are read.
    pub findings: Cow<'a, [Finding]>,
    /// Absent from an older collector's answer.
    #[serde(default)]
    pub links: Option<Links>,
}

/// Calls linked to the request they serve, by how.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Links {
    /// By propagated context, the thread rule or the wire join.
    pub exact: u64,
    /// By a heuristic (`tangle.link.inferred`).
    pub inferred: u64,
}

/// `GET /api/graph`: the dependency map.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GraphPage {
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
    /// How the spans behind the map were put together into traces.
    pub assembly: AssemblyStats,
    /// Spans refused or cut while read.
    pub mapping: MappingStats,
}

/// A node of the map: a service, a database, a cache, a topic, or a client
/// or endpoint outside what the agents see.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    /// `service`, `database`, `cache`, `topic`, `external_client` or
    /// `external_endpoint`.
    pub kind: String,
    /// Requests it served (services only).
    pub served: Option<u64>,
    /// Of those, the ones it failed itself.
    pub faults: Option<u64>,
    pub success_rate: Option<f64>,
}

/// What an edge of the map is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EdgeKind {
    /// Service to service, request and response.
    #[default]
    Sync,
    /// A pure client (curl, a cron job, an ingress) to the service it calls.
    Client,
    /// Publisher to topic, topic to consumer.
    Async,
    /// Service to database or cache.
    Data,
}

/// An edge of the map: calls from `client` to `server`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Edge {
    pub client: String,
    pub server: String,
    pub kind: EdgeKind,
    /// Whether the caller waits for the answer (all but `async`): what
    /// `kind` says, kept for clients that read it before `kind` was typed.
    pub sync: bool,
    pub protocols: BTreeSet<String>,
    pub calls: u64,
    /// Calls the callee failed.
    pub failed: u64,
    /// Of those, the ones whose caller failed too.
    pub propagated: u64,
    pub max_calls_per_request: u64,
    pub client_seconds: Latency,
    pub server_seconds: Latency,
    /// Calls linked to the request they serve exactly, and by a heuristic.
    pub exact: u64,
    pub inferred: u64,
}

impl GraphPage {
    pub fn of(model: &Model, assembly: AssemblyStats, mapping: MappingStats) -> Self {
        let edge = |(c, s): &(String, String), e: &EdgeStats, kind: EdgeKind| Edge {
            client: c.clone(),
            server: s.clone(),
            kind,
            sync: kind != EdgeKind::Async,
            protocols: e.protocols.clone(),
            calls: e.calls,
            failed: e.callee_failures,
            propagated: e.propagated,
            max_calls_per_request: e.max_calls_per_trace,
            client_seconds: e.client_latency.clone(),
            server_seconds: e.server_latency.clone(),
            exact: e.exact,
            inferred: e.inferred,
        };
        let kinds = [
            (&model.edges, EdgeKind::Sync),
            (&model.client_edges, EdgeKind::Client),
            (&model.async_edges, EdgeKind::Async),
            (&model.db_edges, EdgeKind::Data),
        ];
        let edges = kinds
            .into_iter()
            .flat_map(|(edges, kind)| edges.iter().map(move |(k, e)| edge(k, e, kind)))
            .collect();
        let nodes = model
            .nodes()
            .into_iter()
            .map(|(name, kind)| {
                let s = model.services.get(&name);
                Node {
                    kind: kind.as_str().to_owned(),
                    served: s.map(|s| s.served),
                    faults: s.map(|s| s.failed),
                    success_rate: s.and_then(|s| s.success_rate()),
                    name,
                }
            })
            .collect();
        Self {
            nodes,
            edges,
            assembly,
            mapping,
        }
    }
}

/// `GET /api/chains`: every synchronous chain, and per entry operation
/// what its chains add up to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChainsPage {
    pub chains: Vec<Chain>,
    pub entries: Vec<Entry>,
}

/// A root-to-leaf path of synchronous hops.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Chain {
    /// Stable across runs and machines.
    pub signature: String,
    pub entry: Hop,
    pub hops: Vec<Hop>,
    pub depth: usize,
    pub traces: u64,
    /// Traces where one of its links was inferred.
    pub inferred_traces: u64,
    pub first_seen_ns: u64,
    pub example_trace: String,
    /// First seen after the learning period.
    pub new: bool,
}

/// An entry operation (the first hop of its chains).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub entry: Hop,
    pub traces: u64,
    pub max_depth: usize,
    pub p95_depth: usize,
    pub max_fan_out: usize,
    /// Every service that must be up for it to succeed.
    pub closure: BTreeSet<String>,
    /// The product of their success rates, if all are known.
    pub availability: Option<f64>,
}

impl ChainsPage {
    pub fn of(model: &Model) -> Self {
        Self {
            chains: model
                .chains
                .iter()
                .map(|(signature, c)| Chain {
                    signature: signature.clone(),
                    entry: c.entry.clone(),
                    hops: c.hops.clone(),
                    depth: c.depth,
                    traces: c.traces,
                    inferred_traces: c.inferred_traces,
                    first_seen_ns: c.first_seen_ns,
                    example_trace: c.example_trace.clone(),
                    new: c.new,
                })
                .collect(),
            entries: model
                .entries
                .iter()
                .map(|(entry, s)| Entry {
                    entry: entry.clone(),
                    traces: s.traces,
                    max_depth: s.max_depth,
                    p95_depth: s.p95_depth(),
                    max_fan_out: s.max_fan_out,
                    availability: model.availability(&s.closure),
                    closure: s.closure.clone(),
                })
                .collect(),
        }
    }
}

/// `GET /api/databases`: each database or cache, who uses which tables.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DatabasesPage {
    pub databases: Vec<Database>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Database {
    /// `system://server/namespace`.
    pub database: String,
    pub system: String,
    pub owner: Option<Owner>,
    /// Service -> table -> reads and writes.
    pub accessors: BTreeMap<String, BTreeMap<String, TableUse>>,
}

impl DatabasesPage {
    pub fn of(model: &Model) -> Self {
        Self {
            databases: model
                .databases
                .iter()
                .map(|(db, accessors)| Database {
                    database: db.name(),
                    system: db.system.clone(),
                    owner: model.owner(db),
                    accessors: accessors.clone(),
                })
                .collect(),
        }
    }
}
