// The coupling map: the collector's model (/api/graph, /api/chains,
// /api/databases, /api/findings) drawn and kept up to date. Every name on
// the page comes from traffic, so text goes in as text (textContent),
// never as markup.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const POLL_MS = 5000;
const LAYER_GAP = 200;

const SYMPTOMS = [
  ["deep_sync_chain", "Synchronous chains deeper than the threshold"],
  ["wide_closure", "Operations that need many services up"],
  ["cascading_failure", "Failures that cascade to callers"],
  ["cycle", "Services that call each other in a cycle"],
  ["chatty_edge", "Chatty calls (many per request)"],
  ["shared_database", "Databases shared by services"],
  ["cross_service_access", "Tables read or written by a service that does not own them"],
  ["table_written_by_many", "Tables written by several services"],
  ["new_sync_chain", "New synchronous chains"],
];

const state = {
  graph: { nodes: [], edges: [] },
  chains: { chains: [], entries: [] },
  databases: { databases: [] },
  findings: { findings: [] },
  // Where each node was put: kept across updates so the picture holds still.
  positions: new Map(),
  // The view is fitted to the map until the user zooms or moves it.
  view: { k: 1, x: 0, y: 0, touched: false },
  lastUpdate: null,
  loading: false,
  // What is highlighted: { what: "finding"|"entry"|"database"|"node", key }.
  selected: null,
  updates: 0,
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function svgEl(tag, attrs = {}) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

const hop = (h) => `${h.service} ${h.operation}`;

// A finding's identity, stable across updates (its counts change, its
// subject does not): the selection follows it.
function findingKey(f) {
  switch (f.kind) {
    case "new_sync_chain": return `${f.kind}:${f.signature}`;
    case "deep_sync_chain":
    case "wide_closure": return `${f.kind}:${hop(f.entry)}`;
    case "cycle": return `${f.kind}:${f.services.join(">")}`;
    case "cascading_failure":
    case "chatty_edge": return `${f.kind}:${f.caller}>${f.callee}`;
    case "shared_database": return `${f.kind}:${f.database}`;
    case "cross_service_access": return `${f.kind}:${f.database}>${f.accessor}`;
    case "table_written_by_many": return `${f.kind}:${f.database}>${f.table}`;
    default: return `${f.kind}:${JSON.stringify(f)}`;
  }
}
const edgeKey = (client, server) => `${client}\u2192${server}`;
const pct = (x) => (x == null ? "n/a" : `${(x * 100).toFixed(2)}%`);

// A report made by `tangle-collector report --format html`: the model as
// it was, in the file; nothing is fetched.
const SNAPSHOT = document.getElementById("snapshot");

async function getJson(path) {
  const r = await fetch(path, { credentials: "same-origin", cache: "no-store" });
  if (!r.ok) throw Object.assign(new Error(`${path}: HTTP ${r.status}`), { status: r.status });
  return r.json();
}

async function load() {
  if (state.loading) return;
  state.loading = true;
  const s = $("status");
  try {
    const [graph, chains, databases, findings] = SNAPSHOT
      ? (({ graph, chains, databases, findings }) => [graph, chains, databases, findings])(JSON.parse(SNAPSHOT.textContent))
      : await Promise.all(["graph", "chains", "databases", "findings"].map((p) => getJson(`api/${p}`)));
    Object.assign(state, { graph, chains, databases, findings });
    state.updates += 1;
    state.lastUpdate = new Date();
    render();
    s.classList.remove("error");
    s.dataset.updates = String(state.updates);
    s.textContent = graph.nodes.length === 0
      ? "no traffic yet: is an agent (or an instrumented service) exporting to this collector?"
      : `${graph.nodes.length} nodes, ${graph.edges.length} edges, ${findings.findings.length} findings · ` +
        (SNAPSHOT ? "a snapshot (report)" : `updated ${state.lastUpdate.toLocaleTimeString()}`);
  } catch (e) {
    s.classList.add("error");
    const since = state.lastUpdate ? ` (the map is from ${state.lastUpdate.toLocaleTimeString()})` : "";
    s.textContent = e.status === 401
      ? "the collector asks for its API token: reload the page to give it"
      : `cannot reach the collector: ${e.message}${since}`;
  } finally {
    state.loading = false;
  }
}

// Layers, left to right: who only calls, then services by how far they are
// from an entry, then topics, then data stores.
function layers(nodes, edges) {
  const kind = new Map(nodes.map((n) => [n.name, n.kind]));
  const out = new Map();
  const incoming = new Map();
  for (const e of edges) {
    if (e.kind !== "sync" && e.kind !== "client") continue;
    if (!out.has(e.client)) out.set(e.client, []);
    out.get(e.client).push(e.server);
    incoming.set(e.server, (incoming.get(e.server) || 0) + 1);
  }
  const asyncIn = new Set(edges.filter((e) => e.kind === "async" && kind.get(e.client) === "topic").map((e) => e.server));
  const layer = new Map();
  const queue = [];
  for (const n of nodes) {
    if (n.kind === "external_client" || (n.kind === "service" && !incoming.has(n.name) && !asyncIn.has(n.name))) {
      layer.set(n.name, n.kind === "external_client" ? 0 : 1);
      queue.push(n.name);
    }
  }
  // Breadth first, each node at its shortest distance: cycles end.
  for (let i = 0; i < queue.length; i++) {
    const from = queue[i];
    for (const to of out.get(from) || []) {
      if (layer.has(to)) continue;
      layer.set(to, layer.get(from) + 1);
      queue.push(to);
    }
  }
  let deepest = 1;
  for (const [name, l] of layer) if (kind.get(name) === "service") deepest = Math.max(deepest, l);
  // Topics after the services that publish, their consumers after them,
  // data stores last.
  for (const n of nodes) {
    if (layer.has(n.name) && n.kind !== "database" && n.kind !== "cache" && n.kind !== "topic") continue;
    if (n.kind === "topic") layer.set(n.name, deepest + 1);
    else if (n.kind === "database" || n.kind === "cache") layer.set(n.name, deepest + 3);
    else if (!layer.has(n.name)) layer.set(n.name, asyncIn.has(n.name) ? deepest + 2 : deepest + 1);
  }
  return layer;
}

// Positions: nodes placed before keep theirs; new ones start beside a
// neighbour and settle with the others held in place.
function layout(nodes, edges) {
  const layer = layers(nodes, edges);
  const sim = nodes.map((n) => {
    const p = state.positions.get(n.name);
    const d = { id: n.name, layer: layer.get(n.name) || 0 };
    if (p) Object.assign(d, { x: p.x, y: p.y, fx: p.x, fy: p.y });
    return d;
  });
  const byId = new Map(sim.map((d) => [d.id, d]));
  const links = edges
    .filter((e) => byId.has(e.client) && byId.has(e.server))
    .map((e) => ({ source: e.client, target: e.server }));
  const fresh = sim.filter((d) => d.fx === undefined);
  if (fresh.length === 0) return;
  for (const d of fresh) {
    const l = links.find((k) => k.source === d.id || k.target === d.id);
    const other = l && byId.get(l.source === d.id ? l.target : l.source);
    d.x = other && other.x !== undefined ? other.x + 30 : d.layer * LAYER_GAP;
    d.y = other && other.y !== undefined ? other.y + 30 : (Math.random() - 0.5) * 300;
  }
  const n = sim.length;
  // A crowded layer spreads out in both directions rather than as a column.
  const crowd = new Map();
  for (const d of sim) crowd.set(d.layer, (crowd.get(d.layer) || 0) + 1);
  const pull = (d) => (crowd.get(d.layer) > 24 ? 0.03 : 0.6);
  const simulation = d3.forceSimulation(sim)
    .force("link", d3.forceLink(links).id((d) => d.id).distance(90).strength(0.2))
    .force("charge", d3.forceManyBody().strength(n > 100 ? -120 : -400).distanceMax(600))
    .force("collide", d3.forceCollide(28))
    .force("x", d3.forceX((d) => d.layer * LAYER_GAP).strength(pull))
    .force("y", d3.forceY(0).strength(0.04))
    .stop();
  const ticks = Math.min(300, Math.ceil(Math.log(simulation.alphaMin()) / Math.log(1 - simulation.alphaDecay())));
  for (let i = 0; i < ticks; i++) simulation.tick();
  for (const d of sim) state.positions.set(d.id, { x: d.x, y: d.y });
}

function shape(kind) {
  switch (kind) {
    case "database":
      return svgEl("rect", { class: "shape", x: -12, y: -14, width: 24, height: 28, rx: 6 });
    case "cache":
      return svgEl("rect", { class: "shape", x: -11, y: -11, width: 22, height: 22, transform: "rotate(45)" });
    case "topic":
      return svgEl("path", { class: "shape", d: "M 0 -15 L 14 11 L -14 11 Z" });
    case "external_client":
      return svgEl("rect", { class: "shape", x: -11, y: -11, width: 22, height: 22 });
    default:
      return svgEl("circle", { class: "shape", r: 13 });
  }
}

function average(latency) {
  return latency && latency.count ? `${((latency.sum_seconds / latency.count) * 1000).toFixed(1)} ms` : "n/a";
}

function tooltip(evt, lines) {
  const t = $("tooltip");
  t.textContent = lines.join("\n");
  const pane = $("map-pane").getBoundingClientRect();
  t.style.left = `${evt.clientX - pane.left + 14}px`;
  t.style.top = `${evt.clientY - pane.top + 10}px`;
  t.hidden = false;
}

// Data edges from a service into a database another service owns.
function crossEdges() {
  const cross = new Set();
  for (const d of state.databases.databases) {
    if (!d.owner) continue;
    for (const s of Object.keys(d.accessors)) if (s !== d.owner.service) cross.add(edgeKey(s, d.database));
  }
  return cross;
}

function drawMap() {
  const { nodes, edges } = state.graph;
  layout(nodes, edges);
  const cross = crossEdges();
  const edgesG = $("edges");
  const nodesG = $("nodes");
  edgesG.replaceChildren();
  nodesG.replaceChildren();
  $("tooltip").hidden = true;
  for (const e of edges) {
    const a = state.positions.get(e.client);
    const b = state.positions.get(e.server);
    if (!a || !b) continue;
    // Stop short of the target's shape; bend so two-way edges do not overlap.
    const dx = b.x - a.x;
    const dy = b.y - a.y;
    const len = Math.hypot(dx, dy) || 1;
    const ex = b.x - (dx / len) * 18;
    const ey = b.y - (dy / len) * 18;
    const mx = (a.x + ex) / 2 - (dy / len) * 12;
    const my = (a.y + ey) / 2 + (dx / len) * 12;
    const path = svgEl("path", {
      class: `edge kind-${e.kind}${e.failed > 0 ? " failing" : ""}${cross.has(edgeKey(e.client, e.server)) ? " cross" : ""}`,
      d: `M ${a.x} ${a.y} Q ${mx} ${my} ${ex} ${ey}`,
      "data-edge": edgeKey(e.client, e.server),
      "data-kind": e.kind,
    });
    // A wide invisible twin catches the mouse: a thin line is hard to hover.
    const hit = svgEl("path", { class: "edge-hit", d: path.getAttribute("d") });
    hit.addEventListener("mousemove", (evt) => tooltip(evt, [
      `${e.client} \u2192 ${e.server}`,
      `${e.kind} · ${e.protocols.join(", ") || "?"}`,
      `calls ${e.calls}, faults of the callee ${e.failed} (of which ${e.propagated} made the caller fail too)`,
      `latency (client) ${average(e.client_seconds)}`,
      `at most ${e.max_calls_per_request} calls per request`,
      e.inferred ? `${e.inferred} calls linked by inference` : "linked exactly",
      ...(cross.has(edgeKey(e.client, e.server)) ? ["into a database another service owns"] : []),
    ]));
    hit.addEventListener("mouseleave", () => { $("tooltip").hidden = true; });
    edgesG.append(path, hit);
  }
  for (const n of nodes) {
    const p = state.positions.get(n.name);
    if (!p) continue;
    const g = svgEl("g", {
      class: `node kind-${n.kind}${n.faults ? " faulty" : ""}`,
      transform: `translate(${p.x},${p.y})`,
      "data-node": n.name,
      "data-kind": n.kind,
    });
    g.append(shape(n.kind));
    const label = svgEl("text", { y: 28, "text-anchor": "middle" });
    label.textContent = n.name;
    g.append(label);
    g.addEventListener("mousemove", (evt) => tooltip(evt, [
      n.name,
      { external_client: "external client", external_endpoint: "outside endpoint" }[n.kind] || n.kind,
      ...(n.served != null ? [`served ${n.served}, faults ${n.faults}, success ${pct(n.success_rate)}`] : []),
    ]));
    g.addEventListener("mouseleave", () => { $("tooltip").hidden = true; });
    g.addEventListener("click", (evt) => {
      evt.stopPropagation();
      select({ what: "node", key: n.name });
    });
    nodesG.append(g);
  }
  if (!state.view.touched && nodes.length) fit();
  applyView();
}

function fit() {
  const svg = $("map");
  const box = svg.getBoundingClientRect();
  const xs = [...state.positions.values()];
  if (!xs.length || !box.width) return;
  const minX = Math.min(...xs.map((p) => p.x)) - 60;
  const maxX = Math.max(...xs.map((p) => p.x)) + 60;
  const minY = Math.min(...xs.map((p) => p.y)) - 40;
  const maxY = Math.max(...xs.map((p) => p.y)) + 50;
  const k = Math.min(2, box.width / (maxX - minX), box.height / (maxY - minY));
  state.view = { k, x: box.width / 2 - k * (minX + maxX) / 2, y: box.height / 2 - k * (minY + maxY) / 2, touched: false };
}

function applyView() {
  const { k, x, y } = state.view;
  $("viewport").setAttribute("transform", `translate(${x},${y}) scale(${k})`);
}

function panAndZoom() {
  const svg = $("map");
  svg.addEventListener("wheel", (evt) => {
    evt.preventDefault();
    const box = svg.getBoundingClientRect();
    const px = evt.clientX - box.left;
    const py = evt.clientY - box.top;
    const v = state.view;
    const k = Math.max(0.05, Math.min(8, v.k * Math.exp(-evt.deltaY * 0.0015)));
    v.x = px - (px - v.x) * (k / v.k);
    v.y = py - (py - v.y) * (k / v.k);
    v.k = k;
    v.touched = true;
    applyView();
  }, { passive: false });
  let drag = null;
  svg.addEventListener("mousedown", (evt) => {
    drag = { x: evt.clientX, y: evt.clientY, vx: state.view.x, vy: state.view.y, moved: false };
    svg.classList.add("dragging");
  });
  window.addEventListener("mousemove", (evt) => {
    if (!drag) return;
    const dx = evt.clientX - drag.x;
    const dy = evt.clientY - drag.y;
    if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
    state.view.x = drag.vx + dx;
    state.view.y = drag.vy + dy;
    if (drag.moved) state.view.touched = true;
    applyView();
  });
  window.addEventListener("mouseup", () => {
    if (drag && !drag.moved) select(null);
    drag = null;
    svg.classList.remove("dragging");
  });
  window.addEventListener("keydown", (evt) => {
    if (evt.key === "Escape") select(null);
    if (evt.key === "f" && evt.target === document.body) { fit(); applyView(); }
  });
}

// What a finding, an entry, a database or a node points at on the map.
function involved(sel) {
  const nodes = new Set();
  const edges = new Set();
  const path = (hops) => {
    hops.forEach((h) => nodes.add(h.service));
    for (let i = 1; i < hops.length; i++) edges.add(edgeKey(hops[i - 1].service, hops[i].service));
  };
  const among = (names) => {
    for (const e of state.graph.edges) if (names.has(e.client) && names.has(e.server)) edges.add(edgeKey(e.client, e.server));
  };
  const dataEdges = (db, services) => {
    nodes.add(db);
    for (const s of services) { nodes.add(s); edges.add(edgeKey(s, db)); }
  };
  if (!sel) return { nodes, edges };
  if (sel.what === "symptom") {
    for (const f of state.findings.findings.filter((x) => x.kind === sel.key)) {
      const part = involved({ what: "finding", key: findingKey(f) });
      part.nodes.forEach((n) => nodes.add(n));
      part.edges.forEach((e) => edges.add(e));
    }
  } else if (sel.what === "node") {
    nodes.add(sel.key);
    for (const e of state.graph.edges) {
      if (e.client === sel.key || e.server === sel.key) {
        nodes.add(e.client); nodes.add(e.server); edges.add(edgeKey(e.client, e.server));
      }
    }
  } else if (sel.what === "entry") {
    const entry = state.chains.entries.find((x) => hop(x.entry) === sel.key);
    for (const c of state.chains.chains) if (hop(c.entry) === sel.key) path(c.hops);
    if (entry) { entry.closure.forEach((s) => nodes.add(s)); among(new Set(entry.closure)); }
  } else if (sel.what === "database") {
    const db = state.databases.databases.find((d) => d.database === sel.key);
    if (db) dataEdges(db.database, Object.keys(db.accessors));
  } else if (sel.what === "finding") {
    const f = state.findings.findings.find((x) => findingKey(x) === sel.key);
    if (!f) return { nodes, edges };
    switch (f.kind) {
      case "new_sync_chain": path(f.chain); break;
      case "deep_sync_chain": path(f.longest); break;
      case "wide_closure": f.services.forEach((s) => nodes.add(s)); among(new Set(f.services)); break;
      case "cycle":
        f.services.forEach((s) => nodes.add(s));
        f.services.forEach((s, i) => edges.add(edgeKey(s, f.services[(i + 1) % f.services.length])));
        break;
      case "cascading_failure":
      case "chatty_edge":
        nodes.add(f.caller); nodes.add(f.callee); edges.add(edgeKey(f.caller, f.callee));
        break;
      case "shared_database": dataEdges(f.database, f.services); break;
      case "cross_service_access": dataEdges(f.database, [f.accessor, f.owner.service]); break;
      case "table_written_by_many": dataEdges(f.database, f.services); break;
      default: break;
    }
  }
  return { nodes, edges };
}

// Whether what `sel` points at is still in the model.
function present(sel) {
  switch (sel.what) {
    case "finding": return state.findings.findings.some((f) => findingKey(f) === sel.key);
    case "symptom": return state.findings.findings.some((f) => f.kind === sel.key);
    case "entry": return state.chains.entries.some((e) => hop(e.entry) === sel.key);
    case "database": return state.databases.databases.some((d) => d.database === sel.key);
    default: return state.graph.nodes.some((n) => n.name === sel.key);
  }
}

function select(sel) {
  state.selected = sel && present(sel) ? sel : null;
  sel = state.selected;
  highlight();
  for (const li of document.querySelectorAll("aside li[data-select]")) {
    li.classList.toggle("selected", !!sel && li.dataset.select === `${sel.what}:${sel.key}`);
  }
  if (sel && sel.what === "entry") chainDetail(sel.key);
  else $("chain-detail").replaceChildren();
}

function highlight() {
  const { nodes, edges } = involved(state.selected);
  $("map").classList.toggle("focused", !!state.selected);
  for (const g of document.querySelectorAll(".node")) g.classList.toggle("highlight", nodes.has(g.dataset.node));
  for (const p of document.querySelectorAll(".edge")) p.classList.toggle("highlight", edges.has(p.dataset.edge));
}

function describe(f) {
  switch (f.kind) {
    case "new_sync_chain": return `New sync chain: ${f.chain.map((h) => h.service).join(" \u2192 ")}`;
    case "deep_sync_chain": return `Deep chain from ${hop(f.entry)}: depth ${f.depth} (p95 ${f.p95_depth})`;
    case "wide_closure": return `${hop(f.entry)} needs ${f.services.length} services up (availability ${pct(f.availability)})`;
    case "cycle": return `Cycle: ${f.services.join(" \u2192 ")}`;
    case "cascading_failure": return `${f.callee}'s faults cascade to ${f.caller}: ${f.propagated} of ${f.callee_failures}`;
    case "chatty_edge": return `${f.caller} \u2192 ${f.callee}: up to ${f.max_calls_per_request} calls per request`;
    case "shared_database": return `${f.database} shared by ${f.services.join(", ")}`;
    case "cross_service_access": return `${f.accessor} uses ${Object.keys(f.tables).join(", ")} in ${f.database}, owned by ${f.owner.service}`;
    case "table_written_by_many": return `${f.table} in ${f.database} written by ${f.services.join(", ")}`;
    default: return f.kind;
  }
}

function item(list, key, text, extra) {
  const li = el("li", { "data-select": key, tabindex: "0" }, text);
  li.addEventListener("keydown", (evt) => { if (evt.key === "Enter") li.click(); });
  if (extra) li.append(" ", extra);
  list.append(li);
  return li;
}

function drawPanels() {
  const findings = state.findings.findings;
  const symptoms = $("symptoms");
  symptoms.replaceChildren();
  for (const [kind, text] of SYMPTOMS) {
    const of = findings.filter((f) => f.kind === kind);
    // New chains are news, not a symptom; nothing is measured without traffic.
    const color = state.graph.nodes.length === 0 ? "unknown" : of.length ? (kind === "new_sync_chain" ? "news" : "red") : "green";
    const li = el("li", { class: color, "data-symptom": kind }, of.length ? `${text}: ${of.length}` : text);
    if (of.length) {
      li.dataset.select = `symptom:${kind}`;
      li.addEventListener("click", () => select({ what: "symptom", key: kind }));
    }
    symptoms.append(li);
  }
  const list = $("findings");
  list.replaceChildren();
  if (!findings.length) list.append(el("li", { class: "muted" }, "none"));
  for (const f of findings) {
    const key = findingKey(f);
    const li = item(list, `finding:${key}`, describe(f));
    li.dataset.kind = f.kind;
    li.addEventListener("click", () => select({ what: "finding", key }));
  }
  const entries = $("entries");
  entries.replaceChildren();
  if (!state.chains.entries.length) entries.append(el("li", { class: "muted" }, "none yet"));
  const newChains = new Set(state.chains.chains.filter((c) => c.new).map((c) => hop(c.entry)));
  for (const e of [...state.chains.entries].sort((a, b) => b.max_depth - a.max_depth)) {
    const key = hop(e.entry);
    const li = item(entries, `entry:${key}`, `${key}: depth ${e.max_depth}, closure ${e.closure.length}, availability ${pct(e.availability)}`,
      newChains.has(key) ? el("span", { class: "new" }, "new chain") : undefined);
    li.addEventListener("click", () => select({ what: "entry", key }));
  }
  const dbs = $("databases");
  dbs.replaceChildren();
  if (!state.databases.databases.length) dbs.append(el("li", { class: "muted" }, "none"));
  for (const d of state.databases.databases) {
    const owner = d.owner ? d.owner.service : null;
    const li = item(dbs, `database:${d.database}`, `${d.database} (${d.system})` +
      (owner ? `, owned by ${owner} (${d.owner.source})` : ", no owner known"));
    const ul = el("ul");
    for (const [service, tables] of Object.entries(d.accessors)) {
      const uses = Object.entries(tables)
        .map(([t, u]) => `${t} (${u.reads} reads, ${u.writes} writes)`)
        .join(", ");
      const crossing = owner && service !== owner;
      ul.append(el("li", crossing ? { class: "cross" } : {}, `${service}${crossing ? " (cross-service)" : ""}: ${uses || "no table named"}`));
    }
    li.append(ul);
    li.addEventListener("click", () => select({ what: "database", key: d.database }));
  }
}

function chainDetail(key) {
  const box = $("chain-detail");
  box.replaceChildren();
  const entry = state.chains.entries.find((x) => hop(x.entry) === key);
  if (!entry) return;
  box.append(el("div", {}, `${entry.traces} traces; depth max ${entry.max_depth}, p95 ${entry.p95_depth}; ` +
    `fan-out ${entry.max_fan_out}; needs up: ${entry.closure.join(", ")}`));
  const ul = el("ul");
  for (const c of state.chains.chains.filter((c) => hop(c.entry) === key)) {
    const li = el("li");
    li.append(el("div", { class: c.new ? "new" : "muted" },
      `depth ${c.depth}, ${c.traces} traces, first seen ${new Date(c.first_seen_ns / 1e6).toLocaleString()}${c.new ? " · new" : ""}`));
    c.hops.forEach((h, i) => li.append(el("div", { class: "hop" }, `${"  ".repeat(i)}${i ? "\u2514 " : ""}${hop(h)}`)));
    ul.append(li);
  }
  const data = state.graph.edges.filter((e) => e.kind === "data" && entry.closure.includes(e.client));
  if (data.length) {
    box.append(ul, el("div", {}, `data: ${[...new Set(data.map((e) => `${e.client} \u2192 ${e.server}`))].join("; ")}`));
  } else {
    box.append(ul);
  }
}

function render() {
  drawMap();
  drawPanels();
  select(state.selected);
}

panAndZoom();
window.addEventListener("resize", () => { if (!state.view.touched) { fit(); applyView(); } });
load();
if (!SNAPSHOT) setInterval(load, POLL_MS);
