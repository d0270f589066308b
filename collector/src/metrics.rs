//! `/metrics`: Prometheus text exposition, rendered from the model (at
//! most once a second, however many scrape). Cardinality is bounded by services, entry operations and chain
//! signatures; chain details are in the JSON API.

use std::sync::atomic::Ordering;

use tangle_exposition::{Kind, Page};

use crate::{
    ingest::State,
    intake::{IntakeStats, Reason},
    model::{LATENCY_BUCKETS, Latency},
};

/// A sample's value, as the exposition takes it.
trait Sample: Copy {
    fn f64(self) -> f64;
}

impl Sample for u64 {
    fn f64(self) -> f64 {
        self as f64
    }
}

impl Sample for usize {
    fn f64(self) -> f64 {
        self as f64
    }
}

impl Sample for f64 {
    fn f64(self) -> f64 {
        self
    }
}

/// The page, written family head first, then its samples.
struct Out<'a>(&'a mut Page);

impl Out<'_> {
    fn head(&mut self, name: &str, kind: Kind, help: &str) {
        self.0.family(name, kind, help);
    }
    fn line(&mut self, name: &str, l: &[(&str, &str)], v: impl Sample) {
        self.0.sample(name, l, v.f64());
    }
    fn histogram(&mut self, name: &str, l: &[(&str, &str)], h: &Latency) {
        self.0.histogram(
            name,
            l,
            &LATENCY_BUCKETS,
            &h.buckets,
            h.sum_seconds,
            h.count,
        );
    }
}

/// The receivers' counters: connections and refusals by reason.
pub fn intake(page: &mut Page, stats: &IntakeStats, queued_spans: usize) {
    let mut o = Out(page);
    let receivers = [
        ("otlp_grpc", Some(&stats.grpc), &*stats.grpc.conns),
        ("otlp_http", Some(&stats.http), &*stats.http.conns),
        ("pages", None, &*stats.pages),
    ];
    o.head(
        "tangle_intake_connections_total",
        Kind::Counter,
        "Connections to each listener: accepted, refused at a limit (over_limit, over_address_limit), and those accepted that ended early (tls_failed, header_timeout, idle_closed, http_error).",
    );
    for (r, _, c) in &receivers {
        for (outcome, n) in c.outcomes() {
            o.line(
                "tangle_intake_connections_total",
                &[("receiver", r), ("outcome", outcome)],
                n,
            );
        }
    }
    o.head(
        "tangle_intake_connections_open",
        Kind::Gauge,
        "Connections open now, per receiver.",
    );
    for (r, _, c) in &receivers {
        o.line(
            "tangle_intake_connections_open",
            &[("receiver", r)],
            c.open.load(Ordering::Relaxed),
        );
    }
    o.head(
        "tangle_intake_requests_total",
        Kind::Counter,
        "OTLP export requests taken, per receiver.",
    );
    o.head(
        "tangle_intake_refused_total",
        Kind::Counter,
        "OTLP export requests (or connections) refused, per receiver and reason.",
    );
    let mut unauthenticated = 0;
    for (r, stats, _) in &receivers {
        let Some(stats) = stats else { continue };
        o.line(
            "tangle_intake_requests_total",
            &[("receiver", r)],
            stats.accepted.load(Ordering::Relaxed),
        );
        for (reason, n) in stats.refusals() {
            if reason == Reason::Unauthenticated.label() {
                unauthenticated += n;
            }
            o.line(
                "tangle_intake_refused_total",
                &[("receiver", r), ("reason", reason)],
                n,
            );
        }
    }
    o.line(
        "tangle_intake_refused_total",
        &[
            ("receiver", "pages"),
            ("reason", Reason::Unauthenticated.label()),
        ],
        stats.pages_unauthenticated.load(Ordering::Relaxed),
    );
    o.head(
        "tangle_exports_refused_total",
        Kind::Counter,
        "Exports refused for a missing or wrong token: the sum of \
         tangle_intake_refused_total{reason=\"unauthenticated\"} over both receivers.",
    );
    o.line("tangle_exports_refused_total", &[], unauthenticated);
    o.head(
        "tangle_intake_queued_spans",
        Kind::Gauge,
        "Spans received and waiting to be assembled.",
    );
    o.line("tangle_intake_queued_spans", &[], queued_spans);
}

/// The model's page alone.
pub fn render(state: &State) -> String {
    let mut page = Page::default();
    model(state, &mut page);
    page.render()
}

/// The model's families: spans, traces, chains, edges, databases, findings.
pub fn model(state: &State, page: &mut Page) {
    let (model, assembly, mapping) = (&state.model, &state.assembler.stats, &state.mapping);
    let mut o = Out(page);
    o.head(
        "tangle_spans_received_total",
        Kind::Counter,
        "Spans received and kept.",
    );
    o.line("tangle_spans_received_total", &[], mapping.accepted);
    o.head(
        "tangle_spans_rejected_total",
        Kind::Counter,
        "Spans rejected for bad trace or span ids.",
    );
    o.line("tangle_spans_rejected_total", &[], mapping.bad_ids);
    o.head(
        "tangle_spans_duplicate_total",
        Kind::Counter,
        "Spans received twice, dropped.",
    );
    o.line("tangle_spans_duplicate_total", &[], assembly.duplicates);
    o.head(
        "tangle_traces_assembled_total",
        Kind::Counter,
        "Traces assembled and analysed.",
    );
    o.line("tangle_traces_assembled_total", &[], assembly.traces);
    o.head(
        "tangle_traces_evicted_total",
        Kind::Counter,
        "Traces closed early because the spans in flight reached max_spans_in_flight (oldest first).",
    );
    o.line("tangle_traces_evicted_total", &[], assembly.evicted);
    o.head(
        "tangle_spans_joined_total",
        Kind::Counter,
        "Server spans joined under their client span by the agents' join keys.",
    );
    o.line("tangle_spans_joined_total", &[], assembly.joined);
    o.head(
        "tangle_join_keys_unmatched_total",
        Kind::Counter,
        "Join keys whose other end never came within the trace window.",
    );
    o.line("tangle_join_keys_unmatched_total", &[], assembly.unjoined);
    o.head(
        "tangle_spans_in_flight",
        Kind::Gauge,
        "Spans held while their traces are assembled.",
    );
    o.line("tangle_spans_in_flight", &[], assembly.spans_in_flight);
    o.head(
        "tangle_new_sync_chains_total",
        Kind::Counter,
        "Synchronous chains never seen before (against the persisted baseline).",
    );
    o.line("tangle_new_sync_chains_total", &[], model.new_chains);
    o.head(
        "tangle_sync_chains",
        Kind::Gauge,
        "Distinct synchronous chains seen by this collector.",
    );
    o.line("tangle_sync_chains", &[], model.chains.len());

    o.head(
        "tangle_entry_traces_total",
        Kind::Counter,
        "Traces per entry operation.",
    );
    for (e, s) in &model.entries {
        o.line(
            "tangle_entry_traces_total",
            &[
                ("entry_service", &e.service),
                ("entry_operation", &e.operation),
            ],
            s.traces,
        );
    }
    for (name, help) in [
        (
            "tangle_sync_depth_max",
            "Longest synchronous chain (service-to-service hops) of the entry operation.",
        ),
        (
            "tangle_sync_depth_p95",
            "95th percentile of the entry operation's sync depth.",
        ),
        (
            "tangle_sync_fan_out_max",
            "Most distinct services one operation calls synchronously.",
        ),
        (
            "tangle_sync_closure_services",
            "Services the entry operation needs up.",
        ),
    ] {
        o.head(name, Kind::Gauge, help);
        for (e, s) in &model.entries {
            let v = match name {
                "tangle_sync_depth_max" => s.max_depth,
                "tangle_sync_depth_p95" => s.p95_depth(),
                "tangle_sync_fan_out_max" => s.max_fan_out,
                _ => s.closure.len(),
            };
            o.line(
                name,
                &[
                    ("entry_service", &e.service),
                    ("entry_operation", &e.operation),
                ],
                v,
            );
        }
    }
    o.head(
        "tangle_sync_closure_availability",
        Kind::Gauge,
        "Availability the closure implies: product of its services' success rates.",
    );
    for (e, s) in &model.entries {
        if let Some(a) = model.availability(&s.closure) {
            o.line(
                "tangle_sync_closure_availability",
                &[
                    ("entry_service", &e.service),
                    ("entry_operation", &e.operation),
                ],
                a,
            );
        }
    }
    o.head(
        "tangle_sync_chain_traces_total",
        Kind::Counter,
        "Traces per synchronous chain (details: /api/chains).",
    );
    for (sig, c) in &model.chains {
        let depth = c.depth.to_string();
        o.line(
            "tangle_sync_chain_traces_total",
            &[
                ("entry_service", &c.entry.service),
                ("entry_operation", &c.entry.operation),
                ("signature", sig),
                ("depth", &depth),
            ],
            c.traces,
        );
    }
    o.head(
        "tangle_database_accessors",
        Kind::Gauge,
        "Services that access each database.",
    );
    for (db, users) in &model.databases {
        o.line(
            "tangle_database_accessors",
            &[("database", &db.name())],
            users.len(),
        );
    }
    o.head(
        "tangle_spans_over_trace_limit_total",
        Kind::Counter,
        "Spans dropped because their trace held the most spans a trace may.",
    );
    o.line(
        "tangle_spans_over_trace_limit_total",
        &[],
        assembly.over_trace_limit,
    );
    let n = &state.names.stats;
    o.head(
        "tangle_names_folded_total",
        Kind::Counter,
        "Names past [limits] max_services or max_operations_per_service, folded into {other}, by kind.",
    );
    for (kind, v) in [
        ("service", n.services_folded),
        ("operation", n.operations_folded),
    ] {
        o.line("tangle_names_folded_total", &[("kind", kind)], v);
    }
    o.head(
        "tangle_names_cut_total",
        Kind::Counter,
        "Names longer than [limits] max_name_bytes, cut to it.",
    );
    o.line("tangle_names_cut_total", &[], mapping.names_cut);
    o.head(
        "tangle_model_overflow_total",
        Kind::Counter,
        "What the model's limits turned away (folded into {other}, or cut), by kind.",
    );
    let of = &model.overflow;
    for (what, v) in [
        ("chains", of.chains),
        ("entries", of.entries),
        ("edges", of.edges),
        ("databases", of.databases),
        ("tables", of.tables),
        ("cycles", of.cycles),
        ("chain_depth", of.cut_chains),
    ] {
        o.line("tangle_model_overflow_total", &[("kind", what)], v);
    }
    let b = model.baseline_stats();
    o.head(
        "tangle_baseline_write_errors_total",
        Kind::Counter,
        "Chains that could not be written to the baseline (or were dropped, the writer being behind).",
    );
    o.line(
        "tangle_baseline_write_errors_total",
        &[],
        b.write_errors.load(Ordering::Relaxed) + b.dropped.load(Ordering::Relaxed),
    );
    o.head(
        "tangle_baseline_skipped_lines",
        Kind::Gauge,
        "Lines of the baseline file that did not parse when it was read, skipped.",
    );
    o.line(
        "tangle_baseline_skipped_lines",
        &[],
        b.skipped_lines.load(Ordering::Relaxed),
    );
    let findings = &state.findings;
    let mut by_kind = std::collections::BTreeMap::new();
    for f in findings.iter() {
        *by_kind.entry(f.kind()).or_insert(0u64) += 1;
    }
    o.head(
        "tangle_findings",
        Kind::Gauge,
        "Distributed-monolith findings now, by kind (details: /api/findings).",
    );
    for (k, n) in &by_kind {
        o.line("tangle_findings", &[("kind", k)], *n);
    }

    // Grafana's service graph, as Tempo and Beyla expose it: service to
    // service (connection_type ""), to databases ("database"), and
    // publishes ("messaging_system").
    let graph: Vec<(&(String, String), &crate::model::EdgeStats, &str)> = model
        .edges
        .iter()
        .map(|(k, e)| (k, e, ""))
        // A pure client to the service it calls: Tempo's name for an edge
        // from a node outside the traced services.
        .chain(
            model
                .client_edges
                .iter()
                .map(|(k, e)| (k, e, "virtual_node")),
        )
        .chain(model.db_edges.iter().map(|(k, e)| (k, e, "database")))
        .chain(
            model
                .async_edges
                .iter()
                .map(|(k, e)| (k, e, "messaging_system")),
        )
        .collect();
    o.head(
        "traces_service_graph_request_total",
        Kind::Counter,
        "Requests between two services.",
    );
    for ((c, s), e, t) in &graph {
        o.line(
            "traces_service_graph_request_total",
            &[("client", c), ("server", s), ("connection_type", t)],
            e.calls,
        );
    }
    o.head(
        "tangle_edge_links_total",
        Kind::Counter,
        "Calls on each edge by how they were linked to the caller's request: exact (propagated context, the thread rule, the wire join) or inferred (a heuristic).",
    );
    for ((c, s), e, t) in &graph {
        for (how, n) in [("exact", e.exact), ("inferred", e.inferred)] {
            o.line(
                "tangle_edge_links_total",
                &[
                    ("client", c),
                    ("server", s),
                    ("connection_type", t),
                    ("link", how),
                ],
                n,
            );
        }
    }
    o.head(
        "traces_service_graph_request_failed_total",
        Kind::Counter,
        "Failed requests between two services.",
    );
    for ((c, s), e, t) in &graph {
        o.line(
            "traces_service_graph_request_failed_total",
            &[("client", c), ("server", s), ("connection_type", t)],
            e.callee_failures,
        );
    }
    o.head(
        "traces_service_graph_request_client_seconds",
        Kind::Histogram,
        "Request time as the client measured it.",
    );
    for ((c, s), e, t) in &graph {
        o.histogram(
            "traces_service_graph_request_client_seconds",
            &[("client", c), ("server", s), ("connection_type", t)],
            &e.client_latency,
        );
    }
    o.head(
        "traces_service_graph_request_server_seconds",
        Kind::Histogram,
        "Request time as the server measured it.",
    );
    for ((c, s), e, t) in &graph {
        o.histogram(
            "traces_service_graph_request_server_seconds",
            &[("client", c), ("server", s), ("connection_type", t)],
            &e.server_latency,
        );
    }
}
