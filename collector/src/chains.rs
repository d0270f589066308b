//! Synchronous call chains in one trace: the service hops from the entry
//! operation to each leaf, their depth, the services that must all be up
//! (the closure), fan-out, cycles, fault propagation and database access.
//!
//! Structure comes from parent links only, never from timestamps, so clock
//! skew between nodes cannot bend a chain. A span whose parent is missing
//! (a lost middle span) is re-attached to a call to its service that has no
//! callee, and counted as inferred.

// Spans are referred to by their index in the trace's slice, and every
// index here comes from enumerating that slice: none is out of range.
#![allow(clippy::indexing_slicing)]

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use crate::span::{Peer, Span, SpanId};

/// One service doing one operation: a node of a chain.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize)]
pub struct Hop {
    pub service: String,
    pub operation: String,
}

/// A root-to-leaf path of synchronous service hops.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Chain {
    pub hops: Vec<Hop>,
    /// Stable across runs and machines: FNV-1a of the hops, hex.
    pub signature: String,
    /// Links of this path made by a heuristic (the others are exact).
    pub inferred_links: usize,
}

impl Chain {
    /// Service-to-service hops on this chain.
    pub fn depth(&self) -> usize {
        self.hops.len().saturating_sub(1)
    }
}

/// One synchronous call between two services, as seen in a trace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Call {
    pub caller: String,
    pub callee: String,
    pub caller_error: bool,
    pub callee_error: bool,
    /// The client span's duration.
    pub client_ns: u64,
    /// The callee's server span's duration, when it was seen.
    pub server_ns: Option<u64>,
    pub protocol: Option<String>,
    /// The link from the caller's request to this call was a heuristic's
    /// (an async runtime), or the callee's span was re-attached.
    pub inferred: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct DbAccess {
    pub service: String,
    pub system: String,
    pub server: String,
    pub namespace: Option<String>,
    pub tables: Vec<String>,
    pub writes: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TraceAnalysis {
    /// The first service's operation; none when the trace reached no
    /// service (a client's call to a database or an endpoint not seen).
    pub entry: Option<Hop>,
    /// A pure client's call to the entry (curl, a cron job): its caller,
    /// not a hop.
    pub client_call: Option<Call>,
    pub chains: Vec<Chain>,
    /// Service-to-service hops on the longest chain.
    pub depth: usize,
    /// The most distinct services one operation calls synchronously.
    pub fan_out: usize,
    /// Every service the entry operation needs up (the entry's included).
    pub closure: BTreeSet<String>,
    /// Service paths that come back to a service already on them.
    pub cycles: Vec<Vec<String>>,
    /// Synchronous calls between services.
    pub calls: Vec<Call>,
    /// Asynchronous edges: a publisher to its topic, a topic to the
    /// consumer a message was delivered to.
    pub publishes: Vec<Call>,
    /// The topics those edges go to or come from.
    pub topics: Vec<String>,
    /// Calls to databases, the callee named `server/namespace`.
    pub db_calls: Vec<Call>,
    pub db_accesses: Vec<DbAccess>,
    /// Links made by re-attaching spans whose parent was missing.
    pub inferred_links: usize,
    /// Paths cut at the depth limit (their calls counted, not followed),
    /// and chains past [`MAX_CHAINS_PER_TRACE`].
    pub cut_chains: usize,
    /// Names in it were folded into `{other}` (see `names`).
    pub folded: bool,
}

/// FNV-1a, 64 bits: stable, and enough to tell chains apart.
pub fn signature(hops: &[Hop]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for hop in hops {
        for b in hop
            .service
            .bytes()
            .chain([0x1f])
            .chain(hop.operation.bytes())
            .chain([0x1e])
        {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

struct Graph<'a> {
    spans: &'a [Span],
    children: HashMap<SpanId, Vec<usize>>,
}

/// What a call leads to.
enum Callee {
    /// Spans of the callee's side (entries; or orphans re-attached).
    Spans(Vec<usize>),
    /// An uninstrumented service, known from the call's peer.
    Leaf(Hop),
    /// A database: not a service hop.
    Database,
}

impl Graph<'_> {
    /// Call spans made while serving `entry`: its descendants up to the next
    /// entry (which belongs to a callee).
    fn calls_of(&self, entry: usize, extra: &HashMap<usize, Vec<usize>>) -> Vec<usize> {
        let mut out = Vec::new();
        let mut stack: Vec<usize> = self.kids(entry, extra);
        let mut guard = 0;
        while let Some(i) = stack.pop() {
            guard += 1;
            if guard > self.spans.len() * 2 {
                break;
            }
            let s = &self.spans[i];
            if s.is_call() {
                out.push(i);
            } else if !s.is_entry() {
                stack.extend(self.kids(i, extra));
            }
        }
        out.sort_unstable();
        out
    }

    fn kids(&self, i: usize, extra: &HashMap<usize, Vec<usize>>) -> Vec<usize> {
        let mut k = self
            .children
            .get(&self.spans[i].span_id)
            .cloned()
            .unwrap_or_default();
        if let Some(e) = extra.get(&i) {
            k.extend(e);
        }
        k
    }

    fn callee(&self, call: usize, extra: &HashMap<usize, Vec<usize>>) -> Callee {
        let entries: Vec<usize> = self
            .kids(call, extra)
            .into_iter()
            .filter(|&k| {
                let s = &self.spans[k];
                s.is_entry() || s.service != self.spans[call].service
            })
            .collect();
        if !entries.is_empty() {
            return Callee::Spans(entries);
        }
        let c = &self.spans[call];
        match &c.peer {
            Peer::Database { .. } => Callee::Database,
            Peer::Service { name } => Callee::Leaf(Hop {
                service: name.clone(),
                operation: c.operation.clone(),
            }),
            Peer::Topic { .. } => Callee::Database,
            Peer::Address { address } => Callee::Leaf(Hop {
                service: address.clone(),
                operation: c.operation.clone(),
            }),
            Peer::Unknown => Callee::Leaf(Hop {
                service: "unknown".into(),
                operation: c.operation.clone(),
            }),
        }
    }
}

/// Service hops a chain is followed to, by default; deeper ones are cut
/// there (and counted), so one trace costs time linear in its spans.
pub const DEFAULT_MAX_DEPTH: usize = 64;
/// Distinct chains kept of one trace; more are counted as cut.
pub const MAX_CHAINS_PER_TRACE: usize = 256;

/// A hop on the paths being followed, and the hop before it.
struct PathNode {
    hop: Hop,
    up: Option<usize>,
    depth: usize,
    /// Links up to here made by a heuristic.
    inferred: usize,
}

/// The paths followed so far, sharing their common starts.
struct Paths(Vec<PathNode>);

impl Paths {
    /// `inferred`: the link from `up` to this hop was a heuristic's.
    fn push(&mut self, hop: Hop, up: Option<usize>, inferred: bool) -> usize {
        let parent = up.and_then(|u| self.0.get(u));
        let depth = parent.map_or(0, |n| n.depth + 1);
        let inferred = parent.map_or(0, |n| n.inferred) + usize::from(inferred);
        self.0.push(PathNode {
            hop,
            up,
            depth,
            inferred,
        });
        self.0.len() - 1
    }

    fn depth(&self, at: usize) -> usize {
        self.0.get(at).map_or(0, |n| n.depth)
    }

    /// The hops from the entry to `at`.
    fn hops(&self, at: usize) -> Vec<Hop> {
        let mut out = Vec::with_capacity(self.depth(at) + 1);
        let mut cur = Some(at);
        while let Some(n) = cur.and_then(|i| self.0.get(i)) {
            out.push(n.hop.clone());
            cur = n.up;
        }
        out.reverse();
        out
    }

    /// Whether `service` is already on the path to `at`.
    fn has_service(&self, at: usize, service: &str) -> bool {
        let mut cur = Some(at);
        while let Some(n) = cur.and_then(|i| self.0.get(i)) {
            if n.hop.service == service {
                return true;
            }
            cur = n.up;
        }
        false
    }

    fn chain(&self, at: usize) -> Chain {
        let hops = self.hops(at);
        Chain {
            signature: signature(&hops),
            hops,
            inferred_links: self.0.get(at).map_or(0, |n| n.inferred),
        }
    }
}

/// Whether a span takes part in chains: not a data node's own span, not
/// housekeeping. The collector drops the others from each closed trace
/// before analysis; `analyze` leaves them out of what it is given too.
pub fn in_chains(s: &Span) -> bool {
    !s.data_node && !s.housekeeping
}

/// Analyses one trace's spans (duplicates already removed), following
/// chains [`DEFAULT_MAX_DEPTH`] hops deep at most.
pub fn analyze(spans: &[Span]) -> Option<TraceAnalysis> {
    analyze_to_depth(spans, DEFAULT_MAX_DEPTH)
}

/// Analyses one trace's spans, following chains `max_depth` hops deep at
/// most. Time and memory are linear in the spans (times `max_depth`).
pub fn analyze_to_depth(spans: &[Span], max_depth: usize) -> Option<TraceAnalysis> {
    // A data node's own spans and housekeeping calls are no part of a
    // chain: the data calls that matter are the services' client spans.
    let kept: Vec<Span>;
    let spans = if !spans.iter().all(in_chains) {
        kept = spans.iter().filter(|s| in_chains(s)).cloned().collect();
        &kept[..]
    } else {
        spans
    };
    if spans.is_empty() {
        return None;
    }
    let ids: HashMap<SpanId, usize> = spans
        .iter()
        .enumerate()
        .map(|(i, s)| (s.span_id, i))
        .collect();
    let mut children: HashMap<SpanId, Vec<usize>> = HashMap::new();
    let mut orphans = Vec::new();
    for (i, s) in spans.iter().enumerate() {
        match s.parent {
            Some(p) if ids.contains_key(&p) => children.entry(p).or_default().push(i),
            Some(_) => orphans.push(i),
            None => {}
        }
    }
    let g = Graph { spans, children };
    // Re-attach orphans to calls to their service that reached no callee:
    // the first such call, in order. A call passed over once (it reached
    // its callee, or took an orphan) never qualifies again.
    let mut calls_to: HashMap<&str, (usize, Vec<usize>)> = HashMap::new();
    for (c, s) in spans.iter().enumerate() {
        if let (true, Peer::Service { name }) = (s.is_call(), &s.peer) {
            calls_to.entry(name.as_str()).or_default().1.push(c);
        }
    }
    let mut extra: HashMap<usize, Vec<usize>> = HashMap::new();
    let mut inferred_links = 0;
    for &o in &orphans {
        let service = spans[o].service.as_str();
        let Some((next, candidates)) = calls_to.get_mut(service) else {
            continue;
        };
        while let Some(&c) = candidates.get(*next) {
            *next += 1;
            let reached = g
                .kids(c, &extra)
                .iter()
                .any(|&k| spans[k].service == service);
            if !reached {
                extra.entry(c).or_default().push(o);
                inferred_links += 1;
                break;
            }
        }
    }
    let attached: BTreeSet<usize> = extra.values().flatten().copied().collect();
    // The root: a span with no parent (or a parent never seen and not re-attached).
    let mut root = (0..spans.len())
        .filter(|&i| {
            spans[i].parent.is_none_or(|p| !ids.contains_key(&p)) && !attached.contains(&i)
        })
        .min_by_key(|&i| (!spans[i].is_entry(), spans[i].start_ns))?;
    // A root that calls (a pure client, a job) is the caller of the entry,
    // not a hop: the entry is the service its call reached.
    let mut client_call = None;
    // A call whose caller's request was lost: a true edge, inferred, and
    // its callee's work is no entry (it is part of a request not seen whole).
    let mut lost_call = None;
    if spans[root].is_sync_call() {
        let reached = g
            .kids(root, &extra)
            .into_iter()
            .filter(|&k| spans[k].is_entry())
            .min_by_key(|&k| spans[k].start_ns);
        if let Some(k) = reached {
            let (c, e) = (&spans[root], &spans[k]);
            let call = Call {
                caller: c.service.clone(),
                callee: e.service.clone(),
                caller_error: false,
                callee_error: e.fault,
                client_ns: c.end_ns.saturating_sub(c.start_ns),
                server_ns: Some(e.end_ns.saturating_sub(e.start_ns)),
                protocol: c.protocol.clone(),
                inferred: c.link_lost,
            };
            if c.link_lost {
                lost_call = Some(call);
            } else {
                client_call = Some(call);
            }
            root = k;
        }
    }
    // A delivered message is an entry only if it calls a service: a bare
    // delivery is an async edge.
    let has_entry = lost_call.is_none()
        && spans[root].is_entry()
        && (spans[root].kind != crate::span::SpanKind::Consumer
            || g.calls_of(root, &extra).iter().any(|&c| {
                spans[c].is_sync_call()
                    && !matches!(spans[c].peer, Peer::Database { .. } | Peer::Topic { .. })
            }));
    let entry = Hop {
        service: spans[root].service.clone(),
        operation: spans[root].operation.clone(),
    };

    let mut out = TraceAnalysis {
        entry: has_entry.then(|| entry.clone()),
        client_call,
        chains: Vec::new(),
        depth: 0,
        fan_out: 0,
        closure: BTreeSet::new(),
        cycles: Vec::new(),
        calls: Vec::new(),
        publishes: Vec::new(),
        topics: Vec::new(),
        db_calls: Vec::new(),
        db_accesses: Vec::new(),
        inferred_links,
        cut_chains: 0,
        folded: false,
    };
    out.calls.extend(lost_call);
    let mut paths = Paths(Vec::new());
    let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
    let start = paths.push(entry, None, false);
    // Depth-first over service work: (span doing the work, its path).
    let mut stack: Vec<(usize, usize)> = vec![(root, start)];
    let mut visited = 0usize;
    while let Some((node, path)) = stack.pop() {
        visited += 1;
        if visited > spans.len() * 4 + 16 {
            break;
        }
        let here = &spans[node];
        if has_entry {
            out.closure.insert(here.service.clone());
        }
        // A message delivered to a consumer: an edge from its topic.
        if here.kind == crate::span::SpanKind::Consumer
            && let Peer::Topic { server, name, .. } = &here.peer
        {
            let topic = Peer::topic_name(name, server);
            out.topics.push(topic.clone());
            out.publishes.push(Call {
                caller: topic,
                callee: here.service.clone(),
                caller_error: false,
                callee_error: false,
                client_ns: 0,
                server_ns: None,
                protocol: here.protocol.clone(),
                inferred: false,
            });
        }
        let mut next: Vec<(usize, usize)> = Vec::new();
        let mut callees = BTreeSet::new();
        // Whether the path goes on past this service (else it is a chain).
        let mut extended = false;
        // Past the depth limit the path ends here, counted.
        let at_limit = paths.depth(path) >= max_depth;
        // A root that is itself a call (a job calling out): treat it as its own call.
        let calls = if here.is_call() && node == root {
            vec![node]
        } else {
            g.calls_of(node, &extra)
        };
        for c in calls {
            let call = &spans[c];
            let plain = |callee: String, callee_error: bool, server_ns: Option<u64>| Call {
                caller: call.service.clone(),
                callee,
                caller_error: here.fault,
                callee_error,
                client_ns: call.end_ns.saturating_sub(call.start_ns),
                server_ns,
                protocol: call.protocol.clone(),
                inferred: call.link_inferred,
            };
            if let Peer::Database {
                system,
                server,
                namespace,
            } = &call.peer
            {
                let name = match namespace {
                    Some(ns) => format!("{server}/{ns}"),
                    None => server.clone(),
                };
                out.db_calls.push(plain(name, call.fault, None));
                out.db_accesses.push(DbAccess {
                    service: call.service.clone(),
                    system: system.clone(),
                    server: server.clone(),
                    namespace: namespace.clone(),
                    tables: call.tables.clone(),
                    writes: call.writes,
                });
            }
            // Publishing ends the chain: an asynchronous edge only.
            if !call.is_sync_call() {
                let consumer = g.kids(c, &extra).into_iter().find(|&k| spans[k].is_entry());
                let callee = match (consumer, &call.peer) {
                    (_, Peer::Topic { server, name, .. }) => {
                        let topic = Peer::topic_name(name, server);
                        out.topics.push(topic.clone());
                        topic
                    }
                    (Some(k), _) => spans[k].service.clone(),
                    (None, Peer::Service { name }) => name.clone(),
                    (None, Peer::Address { address }) => address.clone(),
                    _ => "broker".into(),
                };
                out.publishes.push(plain(callee, false, None));
                continue;
            }
            match g.callee(c, &extra) {
                Callee::Database => {}
                Callee::Leaf(hop) => {
                    callees.insert(hop.service.clone());
                    out.closure.insert(hop.service.clone());
                    out.calls.push(plain(hop.service.clone(), call.fault, None));
                    if at_limit || !has_entry {
                        continue;
                    }
                    let leaf = paths.push(hop, Some(path), call.link_inferred);
                    keep_chain(&mut out, &mut seen, paths.chain(leaf));
                    extended = true;
                }
                Callee::Spans(targets) => {
                    for t in targets {
                        let callee = &spans[t];
                        callees.insert(callee.service.clone());
                        let mut c = plain(
                            callee.service.clone(),
                            callee.fault,
                            callee
                                .is_entry()
                                .then(|| callee.end_ns.saturating_sub(callee.start_ns)),
                        );
                        c.inferred |= attached.contains(&t);
                        let inferred = c.inferred;
                        out.calls.push(c);
                        if at_limit {
                            continue;
                        }
                        if callee.service != here.service
                            && paths.has_service(path, &callee.service)
                        {
                            let mut cycle: Vec<String> =
                                paths.hops(path).into_iter().map(|h| h.service).collect();
                            cycle.push(callee.service.clone());
                            out.cycles.push(cycle);
                        }
                        // An orphaned client span stands for its (missing) server span.
                        let op = if callee.is_entry() {
                            callee.operation.clone()
                        } else {
                            call.operation.clone()
                        };
                        let hop = Hop {
                            service: callee.service.clone(),
                            operation: op,
                        };
                        next.push((t, paths.push(hop, Some(path), inferred)));
                        extended = true;
                    }
                }
            }
        }
        if at_limit && !callees.is_empty() {
            out.cut_chains += 1;
        }
        out.fan_out = out.fan_out.max(callees.len());
        // A delivery that called no service is an async edge, not a chain.
        let bare_delivery =
            node == root && here.kind == crate::span::SpanKind::Consumer && callees.is_empty();
        if !extended && has_entry && !bare_delivery {
            keep_chain(&mut out, &mut seen, paths.chain(path));
        }
        stack.extend(next);
    }
    out.chains.sort_by(|a, b| a.hops.cmp(&b.hops));
    out.chains.dedup();
    out.depth = out.chains.iter().map(Chain::depth).max().unwrap_or(0);
    out.cycles.sort();
    out.cycles.dedup();
    out.db_accesses.sort();
    Some(out)
}

/// Keeps `chain` unless the trace showed it already, or showed enough
/// distinct chains (then it is counted as cut). A few chains are compared
/// one by one; past that, `seen` holds their signatures.
fn keep_chain(out: &mut TraceAnalysis, seen: &mut std::collections::HashSet<String>, chain: Chain) {
    const SCANNED: usize = 16;
    let known = if out.chains.len() <= SCANNED {
        out.chains.iter().any(|c| c.signature == chain.signature)
    } else {
        if seen.is_empty() {
            seen.extend(out.chains.iter().map(|c| c.signature.clone()));
        }
        seen.contains(&chain.signature)
    };
    if known {
        return;
    }
    if out.chains.len() >= MAX_CHAINS_PER_TRACE {
        out.cut_chains += 1;
        return;
    }
    if !seen.is_empty() {
        seen.insert(chain.signature.clone());
    }
    out.chains.push(chain);
}

/// Calls per entry request between each pair of services (chattiness).
pub fn calls_per_edge(a: &TraceAnalysis) -> BTreeMap<(String, String), usize> {
    let mut m = BTreeMap::new();
    for c in &a.calls {
        *m.entry((c.caller.clone(), c.callee.clone())).or_default() += 1;
    }
    m
}
