#!/usr/bin/env python3
"""Writes Tangle's Grafana dashboards (the *.json beside this file).

    python3 deploy/grafana/generate.py           # write them
    python3 deploy/grafana/generate.py --check   # exit 1 if one is stale

The JSON files are what Grafana and the ConfigMaps (kustomization.yaml) use;
this script is where they are edited. Every query uses only metrics that
collector/src/metrics.rs and agent/src/metrics.rs export (plus Prometheus's
`up`); deploy/check.py checks that, and the PromQL syntax, with promtool.
"""
import json
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
DS = {"type": "prometheus", "uid": "${datasource}"}
NS = 'namespace=~"$namespace"'
INFERRED = 'link="inferred"'
SYNC = 'connection_type=""'
DATA = 'connection_type="database"'
NOT_ACCEPTED = 'outcome!="accepted"'


def kind(k: str) -> str:
    return f'kind="{k}"'

# The distributed-monolith symptoms, as tangle_findings{kind} names them
# (collector/src/findings.rs), with where their evidence is.
SYMPTOMS = [
    ("deep_sync_chain", "Deep synchronous chains",
     "Entry operations whose longest synchronous chain is deeper than [thresholds] max_sync_depth. Evidence: the entry table below; hops in /api/findings or `tangle-collector report`."),
    ("wide_closure", "Wide closures",
     "Entry operations that need more than [thresholds] max_closure services up. Evidence: the entry table below (closure, implied availability)."),
    ("cycle", "Circular dependencies",
     "Cycles of synchronous calls. Evidence: the services on each cycle in /api/findings (kind cycle)."),
    ("cascading_failure", "Cascading failures",
     "Edges where most callee faults come back as caller faults (over [thresholds] cascade_ratio). Evidence: failed calls per edge below; ratios in /api/findings."),
    ("chatty_edge", "Chatty APIs",
     "Edges with more than [thresholds] max_calls_per_request calls for one request. Evidence: calls per request in /api/findings (kind chatty_edge)."),
    ("shared_database", "Shared databases",
     "Databases used by more than one service. Evidence: accessors per database below; tables in /api/databases."),
    ("cross_service_access", "Cross-service database access",
     "A service reading or writing a database another service owns. Evidence: /api/findings (kind cross_service_access)."),
    ("table_written_by_many", "Tables written by several services",
     "Tables with more than one writer. Evidence: /api/findings (kind table_written_by_many)."),
    ("new_sync_chain", "New synchronous chains",
     "Chains first seen after the learning period (since the collector started). Evidence: the Chains dashboard; /api/findings (kind new_sync_chain)."),
]


def sel(metric: str, extra: str = "") -> str:
    """`metric{extra,namespace=~"$namespace"}`."""
    labels = ",".join(x for x in (extra, NS) if x)
    return f"{metric}{{{labels}}}"


def target(expr: str, ref: str = "A", legend: str = "", instant: bool = False, table: bool = False) -> dict:
    t = {"datasource": DS, "refId": ref, "expr": expr, "range": not instant, "instant": instant}
    if legend:
        t["legendFormat"] = legend
    if table:
        t["format"] = "table"
    return t


def red_green(red_at: float = 1, invert: bool = False) -> dict:
    steps = ([{"color": "red", "value": None}, {"color": "green", "value": red_at}] if invert
             else [{"color": "green", "value": None}, {"color": "red", "value": red_at}])
    return {"mode": "absolute", "steps": steps}


class Board:
    def __init__(self, uid: str, title: str, description: str):
        self.uid, self.title, self.description = uid, title, description
        self.panels: list = []
        self.x = self.y = self.row_h = 0

    def _place(self, w: int, h: int) -> dict:
        if self.x + w > 24:
            self.x, self.y = 0, self.y + self.row_h
            self.row_h = 0
        pos = {"x": self.x, "y": self.y, "w": w, "h": h}
        self.x += w
        self.row_h = max(self.row_h, h)
        return pos

    def add(self, panel: dict, w: int, h: int) -> None:
        panel["id"] = len(self.panels) + 1
        panel["gridPos"] = self._place(w, h)
        panel.setdefault("datasource", DS)
        self.panels.append(panel)

    def row(self, title: str) -> None:
        if self.x:
            self.x, self.y = 0, self.y + self.row_h
        self.row_h = 0
        self.add({"type": "row", "title": title, "collapsed": False, "panels": []}, 24, 1)
        self.x, self.y, self.row_h = 0, self.y + 1, 0

    def stat(self, title, expr, w=6, h=4, thresholds=None, unit=None, description="", decimals=None):
        """expr: one query, or (query, name) pairs shown side by side."""
        pairs = [(expr, "")] if isinstance(expr, str) else expr
        d = {"color": {"mode": "thresholds"}, "thresholds": thresholds or red_green()}
        if unit:
            d["unit"] = unit
        if decimals is not None:
            d["decimals"] = decimals
        self.add({
            "type": "stat", "title": title, "description": description,
            "targets": [target(e, ref=chr(65 + i), legend=l, instant=True) for i, (e, l) in enumerate(pairs)],
            "fieldConfig": {"defaults": d, "overrides": []},
            "options": {"colorMode": "background", "graphMode": "none",
                        "textMode": "value" if len(pairs) == 1 else "value_and_name",
                        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}},
        }, w, h)

    def timeseries(self, title, targets, w=12, h=8, unit=None, description="", bars=False, red=False):
        d = {"custom": {"drawStyle": "bars" if bars else "line", "fillOpacity": 60 if bars else 10,
                        "showPoints": "never"}}
        if unit:
            d["unit"] = unit
        if red:
            d["color"] = {"mode": "fixed", "fixedColor": "red"}
        self.add({
            "type": "timeseries", "title": title, "description": description,
            "targets": [target(e, ref=chr(65 + i), legend=l) for i, (e, l) in enumerate(targets)],
            "fieldConfig": {"defaults": d, "overrides": []},
            "options": {"legend": {"displayMode": "table", "placement": "right", "calcs": ["lastNotNull", "max"]},
                        "tooltip": {"mode": "multi", "sort": "desc"}},
        }, w, h)

    def table(self, title, columns, w=24, h=8, description="", exclude=(), sort=None):
        """columns: (expr, name, overrides-defaults or None), one instant query each,
        merged on their labels."""
        targets, rename, overrides = [], {}, []
        for i, (expr, name, custom) in enumerate(columns):
            ref = chr(65 + i)
            targets.append(target(expr, ref=ref, instant=True, table=True))
            rename[f"Value #{ref}" if len(columns) > 1 else "Value"] = name
            if custom:
                overrides.append({"matcher": {"id": "byName", "options": name},
                                  "properties": [{"id": k, "value": v} for k, v in custom.items()]})
        excluded = {"Time": True, "job": True, "instance": True, "pod": True, "namespace": True,
                    "endpoint": True, "service": True, "container": True}
        excluded.update({e: True for e in exclude})
        panel = {
            "type": "table", "title": title, "description": description, "targets": targets,
            "transformations": [
                {"id": "merge", "options": {}},
                {"id": "organize", "options": {"excludeByName": excluded, "renameByName": rename}},
            ],
            "fieldConfig": {"defaults": {"custom": {"align": "auto", "filterable": True}}, "overrides": overrides},
            "options": {"showHeader": True, "footer": {"show": False}},
        }
        if sort:
            panel["options"]["sortBy"] = [{"displayName": sort[0], "desc": sort[1]}]
        self.add(panel, w, h)

    def text(self, title, content, w=24, h=4):
        self.add({"type": "text", "title": title, "options": {"mode": "markdown", "content": content}}, w, h)

    def json(self) -> dict:
        return {
            "uid": self.uid, "title": self.title, "description": self.description,
            "tags": ["tangle"], "timezone": "", "editable": True, "graphTooltip": 1,
            "schemaVersion": 39, "version": 1, "refresh": "30s",
            "time": {"from": "now-6h", "to": "now"},
            "links": [{"title": "Tangle", "type": "dashboards", "tags": ["tangle"], "asDropdown": True}],
            "templating": {"list": [
                {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
                 "current": {}, "hide": 0, "refresh": 1},
                {"name": "namespace", "label": "Namespace", "type": "query", "datasource": DS,
                 "query": {"query": "label_values(tangle_spans_received_total, namespace)", "refId": "ns"},
                 "definition": "label_values(tangle_spans_received_total, namespace)",
                 "includeAll": True, "allValue": ".*", "multi": False, "current": {}, "hide": 0, "refresh": 2,
                 "sort": 1},
            ]},
            "annotations": {"list": []},
            "panels": self.panels,
        }


# Colour a table cell by thresholds.
def cell(thresholds, unit=None):
    c = {"custom.cellOptions": {"type": "color-background"}, "thresholds": thresholds,
         "color": {"mode": "thresholds"}}
    if unit:
        c["unit"] = unit
    return c


ENTRY = "entry_service, entry_operation"


def entry_columns(with_traces: bool) -> list:
    cols = []
    if with_traces:
        cols.append((f"sum by ({ENTRY}) (increase({sel('tangle_entry_traces_total')}[$__range]))",
                     "traces (range)", {"decimals": 0}))
    cols += [
        (f"max by ({ENTRY}) ({sel('tangle_sync_depth_max')})", "depth (max)", cell(red_green(4))),
        (f"max by ({ENTRY}) ({sel('tangle_sync_depth_p95')})", "depth (p95)", None),
        (f"max by ({ENTRY}) ({sel('tangle_sync_fan_out_max')})", "fan-out (max)", None),
        (f"max by ({ENTRY}) ({sel('tangle_sync_closure_services')})", "services needed up", cell(red_green(6))),
        (f"min by ({ENTRY}) ({sel('tangle_sync_closure_availability')})", "implied availability",
         cell(red_green(0.99, invert=True), unit="percentunit")),
    ]
    return cols


def overview() -> Board:
    b = Board("tangle-overview", "Tangle / Coupling overview",
              "Is it a distributed monolith? Each symptom red or green, with its evidence.")
    b.row("Verdict")
    b.stat("Distributed-monolith symptoms", f"sum({sel('tangle_findings')}) or vector(0)", w=8,
           description="Findings now, all kinds (tangle_findings). Green: no symptom past the collector's [thresholds].")
    b.stat("Calls linked by a heuristic",
           f"sum({sel('tangle_edge_links_total', INFERRED)}) / sum({sel('tangle_edge_links_total')})",
           w=8, unit="percentunit", decimals=1,
           thresholds={"mode": "absolute", "steps": [{"color": "green", "value": None}, {"color": "orange", "value": 0.1}]},
           description="Share of calls linked to their caller's request by a heuristic, not exactly (propagated context, the thread rule, the wire join): how far to trust chains and cascades.")
    b.stat("Entry operations seen", f"count(max by ({ENTRY}) ({sel('tangle_sync_depth_max')})) or vector(0)", w=8,
           thresholds={"mode": "absolute", "steps": [{"color": "blue", "value": None}]})
    b.row("Symptoms (red: found; details in /api/findings or `tangle-collector report`)")
    for k, title, desc in SYMPTOMS:
        b.stat(title, f"max({sel('tangle_findings', kind(k))}) or vector(0)", w=8, h=4, description=desc)
    b.row("Evidence")
    b.table("Entry operations: depth, closure, implied availability", entry_columns(False), h=9,
            description="Red: past the collector's thresholds (depth > 3, more than 5 services, availability < 99%). Availability: the product of the closure's success rates (faults only) since the collector started.",
            sort=("depth (max)", True))
    b.table("Databases and how many services use them",
            [(f"max by (database) ({sel('tangle_database_accessors')})", "services", cell(red_green(2)))],
            w=12, h=8, description="Red: shared by more than one service. Which services and tables: /api/databases.",
            sort=("services", True))
    b.table("Service-to-service edges with faults (range)", [
        (f"sum by (client, server) (increase({sel('traces_service_graph_request_total', SYNC)}[$__range]))",
         "calls", {"decimals": 0}),
        (f"sum by (client, server) (increase({sel('traces_service_graph_request_failed_total', SYNC)}[$__range]))",
         "callee faults", cell(red_green(1))),
    ], w=12, h=8, description="Faults of the callee on each synchronous edge. Whether they came back as the caller's faults (cascade ratio) is only in /api/graph (propagated) and /api/findings.",
        sort=("callee faults", True))
    b.timeseries("New synchronous chains", [
        (f"sum(increase({sel('tangle_new_sync_chains_total')}[$__interval]))", "new chains"),
    ], w=24, h=6, bars=True, red=True,
        description="Chains never seen before (against the persisted baseline). Which ones: the Chains dashboard, /api/findings.")
    b.text("Where the rest of the evidence is",
           "Metrics carry counts and per-entry measurements. The hops of a chain, the services on a cycle, "
           "the tables each service reads and writes and the cascade ratio of an edge are in the collector's "
           "API (`/api/findings`, `/api/chains`, `/api/databases`, `/api/graph` on port 9464) and in "
           "`tangle-collector report --url http://tangle-collector:9464`.", h=3)
    return b


def dependency_map() -> Board:
    b = Board("tangle-dependency-map", "Tangle / Dependency map",
              "Who calls whom: services, databases, topics and external clients, from traces_service_graph_*.")
    edges = ("label_join(label_replace(label_replace("
             f"sum by (client, server, connection_type) (increase({sel('traces_service_graph_request_total')}[$__range])),"
             ' "source", "$1", "client", "(.*)"), "target", "$1", "server", "(.*)"),'
             ' "id", "|", "client", "server", "connection_type")')
    b.add({
        "type": "nodeGraph", "title": "Map (calls over the time range)",
        "description": "Edges from traces_service_graph_request_total; nodes are made from the edges (Grafana 9.3+). connection_type: \"\" service to service, virtual_node an external client, database, messaging_system.",
        "targets": [target(edges, instant=True, table=True)],
        "transformations": [{"id": "organize", "options": {
            "excludeByName": {"Time": True, "client": True, "server": True},
            "renameByName": {"Value": "mainstat", "connection_type": "detail__connection_type"}}}],
        "options": {"edges": {"mainStatUnit": "short"}, "nodes": {}},
        "fieldConfig": {"defaults": {}, "overrides": []},
    }, 24, 14)
    b.table("Edges (time range)", [
        (f"sum by (client, server, connection_type) (increase({sel('traces_service_graph_request_total')}[$__range]))",
         "calls", {"decimals": 0}),
        (f"sum by (client, server, connection_type) (increase({sel('traces_service_graph_request_failed_total')}[$__range]))",
         "callee faults", cell(red_green(1))),
        ("histogram_quantile(0.95, sum by (client, server, connection_type, le) "
         f"(rate({sel('traces_service_graph_request_client_seconds_bucket')}[$__range])))", "p95 (client side)",
         {"unit": "s"}),
        (f"sum by (client, server, connection_type) (increase({sel('tangle_edge_links_total', INFERRED)}[$__range]))"
         f" / sum by (client, server, connection_type) (increase({sel('tangle_edge_links_total')}[$__range]))",
         "linked by heuristic", {"unit": "percentunit"}),
    ], h=10, description="connection_type: empty for service to service, virtual_node (an external client), database, messaging_system.",
        sort=("calls", True))
    b.timeseries("Calls/s, service to service", [
        (f"sum by (client, server) (rate({sel('traces_service_graph_request_total', SYNC)}[$__rate_interval]))",
         "{{client}} → {{server}}")], unit="reqps")
    b.timeseries("Callee faults/s, service to service", [
        (f"sum by (client, server) (rate({sel('traces_service_graph_request_failed_total', SYNC)}[$__rate_interval]))",
         "{{client}} → {{server}}")], unit="reqps")
    b.timeseries("p95 latency, service to service (client side)", [
        ("histogram_quantile(0.95, sum by (client, server, le) "
         f"(rate({sel('traces_service_graph_request_client_seconds_bucket', SYNC)}[$__rate_interval])))",
         "{{client}} → {{server}}")], unit="s")
    b.timeseries("p95 latency, service to service (server side)", [
        ("histogram_quantile(0.95, sum by (client, server, le) "
         f"(rate({sel('traces_service_graph_request_server_seconds_bucket', SYNC)}[$__rate_interval])))",
         "{{client}} → {{server}}")], unit="s")
    return b


def chains() -> Board:
    b = Board("tangle-chains", "Tangle / Synchronous chains",
              "Entry operations, their chains, depth, closure and implied availability; new chains.")
    b.stat("Distinct chains", f"max({sel('tangle_sync_chains')}) or vector(0)", w=8,
           thresholds={"mode": "absolute", "steps": [{"color": "blue", "value": None}]})
    b.stat("New chains (time range)", f"sum(increase({sel('tangle_new_sync_chains_total')}[$__range])) or vector(0)",
           w=8, decimals=0)
    b.stat("Deep chains / wide closures now",
           f"(max({sel('tangle_findings', kind('deep_sync_chain'))}) or vector(0))"
           f" + (max({sel('tangle_findings', kind('wide_closure'))}) or vector(0))", w=8)
    b.table("Entry operations", entry_columns(True), h=9,
            description="Red: past the collector's thresholds. Depth: service-to-service hops on the longest chain. Services needed up: the closure. Implied availability: the product of their success rates (faults only) since the collector started.",
            sort=("depth (max)", True))
    b.table("Chains by signature (time range)", [
        (f"sum by ({ENTRY}, signature, depth) (increase({sel('tangle_sync_chain_traces_total')}[$__range]))",
         "traces", {"decimals": 0}),
    ], h=10, description="Each chain's hops, first-seen time and example trace: /api/chains (by signature).",
        sort=("depth", True))
    b.timeseries("Sync depth (max) per entry", [
        (f"max by ({ENTRY}) ({sel('tangle_sync_depth_max')})", "{{entry_service}} {{entry_operation}}")])
    b.timeseries("Implied availability per entry", [
        (f"min by ({ENTRY}) ({sel('tangle_sync_closure_availability')})", "{{entry_service}} {{entry_operation}}")],
        unit="percentunit")
    b.timeseries("Traces/s per entry operation", [
        (f"sum by ({ENTRY}) (rate({sel('tangle_entry_traces_total')}[$__rate_interval]))",
         "{{entry_service}} {{entry_operation}}")], unit="reqps")
    b.timeseries("New synchronous chains", [
        (f"sum(increase({sel('tangle_new_sync_chains_total')}[$__interval]))", "new chains")], bars=True, red=True)
    return b


def databases() -> Board:
    b = Board("tangle-databases", "Tangle / Databases",
              "Which services use which database, shared databases and cross-service access.")
    for k, title, desc in SYMPTOMS:
        if k in ("shared_database", "cross_service_access", "table_written_by_many"):
            b.stat(title, f"max({sel('tangle_findings', kind(k))}) or vector(0)", w=8, description=desc)
    b.table("Services per database",
            [(f"max by (database) ({sel('tangle_database_accessors')})", "services", cell(red_green(2)))],
            w=8, h=10, description="Red: used by more than one service. Which ones, their tables, reads and writes, and the owner: /api/databases.",
            sort=("services", True))
    b.table("Service → database (time range)", [
        (f"sum by (client, server) (increase({sel('traces_service_graph_request_total', DATA)}[$__range]))",
         "calls", {"decimals": 0}),
        (f"sum by (client, server) (increase({sel('traces_service_graph_request_failed_total', DATA)}[$__range]))",
         "faults", cell(red_green(1))),
        ("histogram_quantile(0.95, sum by (client, server, le) "
         f"(rate({sel('traces_service_graph_request_client_seconds_bucket', DATA)}[$__range])))", "p95 (client side)",
         {"unit": "s"}),
    ], w=16, h=10, description="Data edges (databases and caches). client: the service; server: the database (server/namespace).",
        sort=("calls", True))
    b.timeseries("Calls/s per service and database", [
        (f"sum by (client, server) (rate({sel('traces_service_graph_request_total', DATA)}[$__rate_interval]))",
         "{{client}} → {{server}}")], w=24, unit="reqps")
    b.text("Not in the metrics",
           "Tables, reads and writes per service, and each database's owner (configured or inferred) are in "
           "`/api/databases` and `tangle-collector report` (Shared databases, Cross-service database access, "
           "Tables written by more than one service).", h=3)
    return b


def health() -> Board:
    b = Board("tangle-health", "Tangle / Agent and collector health",
              "Is Tangle seeing everything? Lost events, dropped spans, export, intake refusals, limits reached.")
    b.row("Agents")
    b.stat("Agents up", 'sum(up{job="tangle-agent",' + NS + '}) or vector(0)', w=6,
           thresholds={"mode": "absolute", "steps": [{"color": "red", "value": None}, {"color": "green", "value": 1}]})
    b.stat("Agents down", 'count(up{job="tangle-agent",' + NS + '} == 0) or vector(0)', w=6)
    b.stat("Events lost/s (all nodes)", f"sum(rate({sel('tangle_agent_events_lost_total')}[$__rate_interval])) or vector(0)",
           w=6, unit="short", decimals=2, thresholds=red_green(0.000001))
    b.stat("Spans dropped/s (all nodes)",
           f"sum(rate({sel('tangle_agent_spans_dropped_total')}[$__rate_interval])"
           f" + rate({sel('tangle_agent_spans_given_up_total')}[$__rate_interval])"
           f" + rate({sel('tangle_agent_spans_refused_total')}[$__rate_interval])) or vector(0)",
           w=6, unit="short", decimals=2, thresholds=red_green(0.000001))
    b.timeseries("Events read/s per node", [
        (f"sum by (node) (rate({sel('tangle_agent_events_total')}[$__rate_interval]))", "{{node}}")], unit="ops")
    b.timeseries("Events lost/s per node (ring buffer full)", [
        (f"sum by (node) (rate({sel('tangle_agent_events_lost_total')}[$__rate_interval]))", "{{node}}")],
        unit="ops", red=True)
    b.timeseries("Spans/s (all nodes)", [
        (f"sum(rate({sel('tangle_agent_spans_queued_total')}[$__rate_interval]))", "queued"),
        (f"sum(rate({sel('tangle_agent_spans_exported_total')}[$__rate_interval]))", "exported"),
        (f"sum(rate({sel('tangle_agent_spans_dropped_total')}[$__rate_interval]))", "dropped (queue full)"),
        (f"sum(rate({sel('tangle_agent_spans_given_up_total')}[$__rate_interval]))", "given up (retried a minute)"),
        (f"sum(rate({sel('tangle_agent_spans_refused_total')}[$__rate_interval]))", "refused by the collector"),
    ], unit="ops")
    b.timeseries("Export failures/s per node", [
        (f"sum by (node) (rate({sel('tangle_agent_export_failures_total')}[$__rate_interval]))", "{{node}}"),
        (f"sum(rate({sel('tangle_agent_export_batches_split_total')}[$__rate_interval]))", "batches split (too large)"),
    ], unit="ops")
    b.timeseries("Connections tracked per node", [
        (f"sum by (node) ({sel('tangle_agent_connections')})", "{{node}} (agent)"),
        (f"sum by (node) ({sel('tangle_agent_kernel_connections')})", "{{node}} (kernel)"),
    ])
    b.timeseries("Connections forgotten or untracked/s", [
        (f"sum(rate({sel('tangle_agent_conns_evicted_total')}[$__rate_interval]))", "evicted (agent table full)"),
        (f"sum(rate({sel('tangle_agent_kernel_conns_evicted_total')}[$__rate_interval]))", "evicted (kernel table full)"),
        (f"sum(rate({sel('tangle_agent_conn_table_full_total')}[$__rate_interval]))", "not tracked (kernel table full)"),
        (f"sum(rate({sel('tangle_agent_read_faults_total')}[$__rate_interval]))", "read faults"),
        (f"sum(rate({sel('tangle_agent_parser_budget_drops_total')}[$__rate_interval]))", "parsing stopped (memory budget)"),
    ], unit="ops")
    b.timeseries("Exchanges parsed/s and transfers not parsed/s", [
        (f"sum(rate({sel('tangle_agent_exchanges_total')}[$__rate_interval]))", "exchanges"),
        (f"sum(rate({sel('tangle_agent_undetected_transfers_total')}[$__rate_interval]))", "transfers, protocol not parsed"),
        (f"sum(rate({sel('tangle_agent_own_conns_ignored_total')}[$__rate_interval]))", "Tangle's own connections, ignored"),
    ], unit="ops")
    b.timeseries("Parser problems/s per protocol", [
        (f"sum by (protocol) (rate({sel('tangle_agent_parse_errors_total')}[$__rate_interval]))", "{{protocol}} parse errors"),
        (f"sum by (protocol) (rate({sel('tangle_agent_desyncs_total')}[$__rate_interval]))", "{{protocol}} desyncs"),
        (f"sum by (protocol) (rate({sel('tangle_agent_unmatched_responses_total')}[$__rate_interval]))", "{{protocol}} unmatched responses"),
        (f"sum by (protocol) (rate({sel('tangle_agent_dropped_requests_total')}[$__rate_interval]))", "{{protocol}} dropped requests"),
        (f"sum by (protocol) (rate({sel('tangle_agent_parser_panics_total')}[$__rate_interval]))", "{{protocol}} parser failures"),
    ], unit="ops")
    b.timeseries("Memory held per node", [
        (f"sum by (node) ({sel('tangle_agent_parser_buffered_bytes')})", "{{node}} parsers"),
    ], unit="bytes")
    b.timeseries("Calls held for their request, per node", [
        (f"sum by (node) ({sel('tangle_agent_spans_held')})", "{{node}}"),
    ])
    b.row("Collector")
    b.stat("Collector up", 'sum(up{job="tangle-collector",' + NS + '}) or vector(0)', w=6,
           thresholds={"mode": "absolute", "steps": [{"color": "red", "value": None}, {"color": "green", "value": 1}]})
    b.stat("Spans received/s", f"sum(rate({sel('tangle_spans_received_total')}[$__rate_interval])) or vector(0)", w=6,
           unit="ops", thresholds={"mode": "absolute", "steps": [{"color": "blue", "value": None}]})
    b.stat("Exports refused for the token/s", f"sum(rate({sel('tangle_exports_refused_total')}[$__rate_interval])) or vector(0)",
           w=6, unit="ops", decimals=2, thresholds=red_green(0.000001))
    b.stat("Baseline", [
        (f"sum({sel('tangle_baseline_write_errors_total')}) or vector(0)", "write errors"),
        (f"sum({sel('tangle_baseline_skipped_lines')}) or vector(0)", "lines skipped at start"),
    ], w=6, description="Chains not written to the baseline file, and lines of it that did not parse when it was read: new-chain detection may repeat or miss chains after a restart.")
    b.timeseries("Spans/s", [
        (f"sum(rate({sel('tangle_spans_received_total')}[$__rate_interval]))", "received"),
        (f"sum(rate({sel('tangle_spans_rejected_total')}[$__rate_interval]))", "rejected (bad ids)"),
        (f"sum(rate({sel('tangle_spans_duplicate_total')}[$__rate_interval]))", "duplicates"),
        (f"sum(rate({sel('tangle_spans_joined_total')}[$__rate_interval]))", "joined by the agents' keys"),
        (f"sum(rate({sel('tangle_join_keys_unmatched_total')}[$__rate_interval]))", "join keys unmatched"),
        (f"sum(rate({sel('tangle_spans_over_trace_limit_total')}[$__rate_interval]))", "over the trace limit"),
    ], unit="ops")
    b.timeseries("Intake refused/s by receiver and reason", [
        (f"sum by (receiver, reason) (rate({sel('tangle_intake_refused_total')}[$__rate_interval]))",
         "{{receiver}} {{reason}}")], unit="ops", red=True)
    b.timeseries("Traces/s", [
        (f"sum(rate({sel('tangle_traces_assembled_total')}[$__rate_interval]))", "assembled"),
        (f"sum(rate({sel('tangle_traces_evicted_total')}[$__rate_interval]))", "closed early (max_spans_in_flight)"),
    ], unit="ops")
    b.timeseries("Spans waiting", [
        (f"sum({sel('tangle_intake_queued_spans')})", "queued for assembly"),
        (f"sum({sel('tangle_spans_in_flight')})", "in traces being assembled"),
    ])
    b.timeseries("Connections", [
        (f"sum by (receiver) ({sel('tangle_intake_connections_open')})", "{{receiver}} open"),
        (f"sum by (receiver, outcome) (rate({sel('tangle_intake_connections_total', NOT_ACCEPTED)}[$__rate_interval]))",
         "{{receiver}} {{outcome}}/s"),
    ])
    b.timeseries("Limits reached/s (folded into {other} or cut)", [
        (f"sum by (kind) (rate({sel('tangle_model_overflow_total')}[$__rate_interval]))", "model: {{kind}}"),
        (f"sum by (kind) (rate({sel('tangle_names_folded_total')}[$__rate_interval]))", "names folded: {{kind}}"),
        (f"sum(rate({sel('tangle_names_cut_total')}[$__rate_interval]))", "names cut"),
    ], unit="ops")
    return b


BOARDS = {
    "tangle-overview.json": overview,
    "tangle-dependency-map.json": dependency_map,
    "tangle-chains.json": chains,
    "tangle-databases.json": databases,
    "tangle-health.json": health,
}


def main() -> int:
    check = "--check" in sys.argv[1:]
    stale = []
    for name, make in BOARDS.items():
        text = json.dumps(make().json(), indent=2, ensure_ascii=False) + "\n"
        path = HERE / name
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print(f"wrote deploy/grafana/{name}")
    if stale:
        print("stale: " + ", ".join(stale) + ": run python3 deploy/grafana/generate.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
