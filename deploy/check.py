#!/usr/bin/env python3
"""Checks deploy/ without a cluster: python3 deploy/check.py

- kustomize: `kubectl kustomize` of deploy/, each overlay, and a combination
  (another namespace with the Prometheus Operator and a label patch); every
  namespaced object in the namespace asked for; no workload (container, init
  or ephemeral container, of any pod template) privileged or with
  CAP_SYS_ADMIN; the agent with exactly its four capabilities; the
  dashboards' ConfigMaps labelled for Grafana;
- schemas: every object of every render validated, offline, against the
  Kubernetes OpenAPI schemas that the `kubernetes-validate` package ships
  (strict: no field the schema does not have), for the oldest Kubernetes
  docs/kubernetes.md supports (1.25) and the newest the package has; the
  Prometheus Operator's objects (ServiceMonitor, PrometheusRule: CRDs, which
  it has no schemas for) checked here by hand: apiVersion and kind, required
  fields, field names, types and patterns, and that each ServiceMonitor
  selects a Service of the render by a port it has;
- configuration: agent.toml and collector.toml have only fields the Rust
  structs have (they are deny_unknown_fields), and the paths they name are
  where the manifests mount things; the Services' ports are the ones they
  listen on;
- generated files: the PrometheusRule and the dashboards are what their
  generators write;
- metrics: every metric the rules and the dashboards use is one that
  collector/src/metrics.rs or agent/src/metrics.rs exports (or `up`), every
  tangle_findings kind one that collector/src/findings.rs has;
- promtool: check rules, test rules (every alert firing and not firing),
  the PromQL of every dashboard query, the scrape config;
- runbooks: every alert has summary, description and a runbook_url whose
  section is in docs/alerts.md.

Needs kubectl, promtool and Python 3 with PyYAML and kubernetes-validate
(pip install -r deploy/requirements.txt). Writes only temporary files under
deploy/, removed at the end.
"""
import json
import pathlib
import re
import subprocess
import sys
import tempfile

try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = None
import yaml

try:
    import kubernetes_validate
except ImportError:  # reported as a failure by check_schemas
    kubernetes_validate = None

DEPLOY = pathlib.Path(__file__).resolve().parent
ROOT = DEPLOY.parent
FAILURES: list = []


def fail(msg: str) -> None:
    FAILURES.append(msg)
    print(f"  FAIL {msg}")


def ok(msg: str) -> None:
    print(f"  ok   {msg}")


def run(cmd, cwd=None):
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


# --- what the code exports -------------------------------------------------

def exported_metrics() -> set:
    names = set()
    for src in ("collector/src/metrics.rs", "agent/src/metrics.rs"):
        text = (ROOT / src).read_text()
        names |= set(re.findall(r'"((?:tangle|traces_service_graph)_[a-z0-9_]+)"', text))
        for h in re.findall(r'head\(\s*"([a-z0-9_]+)",\s*Kind::Histogram', text):
            names |= {h + "_bucket", h + "_sum", h + "_count"}
    return names


def finding_kinds() -> set:
    text = (ROOT / "collector/src/findings.rs").read_text()
    return set(re.findall(r'=> "([a-z_]+)",', text))


def rust_fields(path: str, struct: str) -> set:
    text = (ROOT / path).read_text()
    m = re.search(r"pub struct " + struct + r"\s*\{(.*?)\n\}", text, re.S)
    if not m:
        raise SystemExit(f"struct {struct} not found in {path}")
    return set(re.findall(r"^\s*pub (\w+):", m.group(1), re.M))


# --- kustomize -------------------------------------------------------------

def kustomize(path: pathlib.Path) -> list:
    r = run(["kubectl", "kustomize", str(path)])
    if r.returncode != 0:
        fail(f"kubectl kustomize {path.relative_to(ROOT)}: {r.stderr.strip()}")
        return []
    return [d for d in yaml.safe_load_all(r.stdout) if d]


CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
AGENT_CAPS = {"BPF", "PERFMON", "SYS_PTRACE", "DAC_READ_SEARCH"}


def pod_spec(o: dict):
    """The pod spec of a workload (a Pod, a CronJob's job template, any
    other kind's pod template), or None."""
    spec = o.get("spec") or {}
    if o["kind"] == "Pod":
        return spec
    if o["kind"] == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    return (spec.get("template") or {}).get("spec")


def all_containers(spec: dict) -> list:
    return spec.get("containers", []) + spec.get("initContainers", []) + spec.get("ephemeralContainers", [])


def check_objects(name: str, objs: list, namespace: str, operator: bool) -> None:
    if not objs:
        return
    kinds = sorted({o["kind"] for o in objs})
    bad_ns = [f'{o["kind"]}/{o["metadata"]["name"]}' for o in objs
              if o["kind"] not in CLUSTER_SCOPED and o["metadata"].get("namespace") != namespace]
    if bad_ns:
        fail(f"{name}: not in namespace {namespace}: {bad_ns}")
    nss = [o for o in objs if o["kind"] == "Namespace"]
    if [n["metadata"]["name"] for n in nss] != [namespace]:
        fail(f"{name}: Namespace objects {[n['metadata']['name'] for n in nss]}, expected [{namespace}]")
    for o in objs:
        if o["kind"] == "ClusterRoleBinding":
            subs = [(s.get("kind"), s.get("namespace")) for s in o.get("subjects", [])]
            if subs != [("ServiceAccount", namespace)]:
                fail(f"{name}: ClusterRoleBinding subjects {subs}")
    have = {(o["kind"], o["metadata"]["name"]) for o in objs}
    workloads, containers = 0, 0
    for o in objs:
        spec = pod_spec(o)
        if not spec:
            continue
        workloads += 1
        containers += len(all_containers(spec))
        # Everything the pod refers to is in the build (a generator renamed
        # without its users would leave the pod waiting for it).
        refs = [("ServiceAccount", spec.get("serviceAccountName", "default"))]
        for v in spec.get("volumes", []):
            if "configMap" in v:
                refs.append(("ConfigMap", v["configMap"]["name"]))
            if "secret" in v:
                refs.append(("Secret", v["secret"]["secretName"]))
            if "persistentVolumeClaim" in v:
                refs.append(("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"]))
        for ref in refs:
            if ref not in have:
                fail(f"{name}: {o['kind']}/{o['metadata']['name']} refers to {ref[0]}/{ref[1]}, not in the build")
        for c in all_containers(spec):
            sc = c.get("securityContext", {})
            caps = set(sc.get("capabilities", {}).get("add", []))
            if sc.get("privileged"):
                fail(f"{name}: {o['kind']}/{o['metadata']['name']} container {c['name']} is privileged")
            if caps & {"SYS_ADMIN", "CAP_SYS_ADMIN", "ALL"}:
                fail(f"{name}: {o['kind']}/{o['metadata']['name']} container {c['name']} adds {caps}")
            if sc.get("allowPrivilegeEscalation") is not False:
                fail(f"{name}: {o['kind']}/{o['metadata']['name']} container {c['name']} may escalate privileges")
            if o["kind"] == "DaemonSet" and caps != AGENT_CAPS:
                fail(f"{name}: the agent's capabilities are {sorted(caps)}, expected {sorted(AGENT_CAPS)}")
            if o["kind"] == "Deployment" and (caps or not spec.get("securityContext", {}).get("runAsNonRoot")):
                fail(f"{name}: the collector should add no capability and run as non-root")
    dashboards = [o for o in objs if o["kind"] == "ConfigMap"
                  and o["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
    if len(dashboards) != 5:
        fail(f"{name}: {len(dashboards)} dashboard ConfigMaps, expected 5")
    for d in dashboards:
        for key, text in d.get("data", {}).items():
            json.loads(text)
        size = len(json.dumps(d))
        if size > 250_000:  # kubectl apply's last-applied annotation limit is 256 KiB
            fail(f"{name}: ConfigMap {d['metadata']['name']} is {size} bytes")
    operator_kinds = {"ServiceMonitor", "PrometheusRule"}
    if operator and not operator_kinds <= set(kinds):
        fail(f"{name}: no ServiceMonitor/PrometheusRule")
    if not operator and operator_kinds & set(kinds):
        fail(f"{name}: has Prometheus Operator objects")
    if not [f for f in FAILURES if f.startswith(name)]:
        ok(f"{name}: {len(objs)} objects ({', '.join(kinds)}) in {namespace}; "
           f"{containers} containers of {workloads} workloads, none privileged")


def check_kustomize() -> dict:
    """Checks each render; returns them, by name."""
    print("kustomize")
    renders = {
        "deploy/": kustomize(DEPLOY),
        "overlays/prometheus-operator": kustomize(DEPLOY / "overlays/prometheus-operator"),
        "overlays/custom-namespace": kustomize(DEPLOY / "overlays/custom-namespace"),
    }
    check_objects("deploy/", renders["deploy/"], "tangle", operator=False)
    check_objects("overlays/prometheus-operator", renders["overlays/prometheus-operator"],
                  "tangle", operator=True)
    check_objects("overlays/custom-namespace", renders["overlays/custom-namespace"],
                  "tangle-system", operator=False)
    with tempfile.TemporaryDirectory(prefix=".check-", dir=DEPLOY / "overlays") as tmp:
        (pathlib.Path(tmp) / "kustomization.yaml").write_text(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
            "namespace: observability-tangle\n"
            "resources: [../../base]\ncomponents: [../../grafana, ../../prometheus-operator]\n"
            "patches:\n  - target:\n      group: monitoring.coreos.com\n    patch: |-\n"
            "      - op: add\n        path: /metadata/labels/release\n        value: kube-prometheus-stack\n")
        combo = kustomize(pathlib.Path(tmp))
        check_objects("combination (namespace + operator + label)", combo, "observability-tangle", operator=True)
        labelled = [o for o in combo if o["kind"] in ("ServiceMonitor", "PrometheusRule")
                    and o["metadata"].get("labels", {}).get("release") == "kube-prometheus-stack"]
        if len(labelled) != 3:
            fail(f"the release label patch reached {len(labelled)} of 3 operator objects")
        renders["combination (namespace + operator + label)"] = combo
    return renders


# --- schemas ---------------------------------------------------------------

# The oldest Kubernetes docs/kubernetes.md supports; the newest is the
# newest kubernetes-validate ships.
OLDEST_KUBERNETES = "1.25"
OPERATOR_API = "monitoring.coreos.com/v1"
# The CRDs' patterns (prometheus-operator's monitoring.coreos.com_*.yaml).
DURATION = re.compile(r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$")
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
RELABEL_ACTIONS = {"replace", "keep", "drop", "hashmod", "labelmap", "labeldrop", "labelkeep",
                   "lowercase", "uppercase", "keepequal", "dropequal"}
# Field names this check knows, from the CRDs; a field the CRD has and this
# list lacks is added here once checked against the CRD.
SERVICEMONITOR_SPEC = {
    "attachMetadata", "bodySizeLimit", "endpoints", "fallbackScrapeProtocol", "jobLabel",
    "keepDroppedTargets", "labelLimit", "labelNameLengthLimit", "labelValueLengthLimit",
    "namespaceSelector", "nativeHistogramBucketLimit", "nativeHistogramMinBucketFactor",
    "podTargetLabels", "sampleLimit", "scrapeClass", "scrapeClassicHistograms",
    "scrapeProtocols", "selector", "selectorMechanism", "targetLabels", "targetLimit"}
ENDPOINT = {
    "authorization", "basicAuth", "bearerTokenFile", "bearerTokenSecret", "enableHttp2",
    "filterRunning", "followRedirects", "honorLabels", "honorTimestamps", "interval",
    "metricRelabelings", "noProxy", "oauth2", "params", "path", "port", "proxyConnectHeader",
    "proxyFromEnvironment", "proxyUrl", "relabelings", "scheme", "scrapeTimeout", "targetPort",
    "tlsConfig", "trackTimestampsStaleness"}
RELABELING = {"action", "modulus", "regex", "replacement", "separator", "sourceLabels", "targetLabel"}
RULE_GROUP = {"interval", "labels", "limit", "name", "partial_response_strategy", "query_offset", "rules"}
RULE = {"alert", "annotations", "expr", "for", "keep_firing_for", "labels", "record"}


def seconds(d: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    return sum(int(n) * units[u] for n, u in re.findall(r"([0-9]+)(ms|y|w|d|h|m|s)", d))


def string_map(v) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and isinstance(x, str) for k, x in v.items())


def operator_object_errors(o: dict, objs: list) -> list:
    """What is wrong with a ServiceMonitor or PrometheusRule, by hand (no
    schema for CRDs in kubernetes-validate)."""
    errs = []

    def unknown(where: str, d: dict, known: set) -> None:
        extra = sorted(set(d) - known)
        if extra:
            errs.append(f"{where}: unknown field(s) {extra}")

    if o.get("apiVersion") != OPERATOR_API:
        errs.append(f"apiVersion {o.get('apiVersion')!r}, expected {OPERATOR_API}")
    meta = o.get("metadata") or {}
    unknown("metadata", meta, {"name", "namespace", "labels", "annotations"})
    if not DNS_SUBDOMAIN.match(str(meta.get("name", ""))) or len(meta.get("name", "")) > 253:
        errs.append(f"metadata.name {meta.get('name')!r} is not a DNS subdomain")
    for k in ("labels", "annotations"):
        if k in meta and not string_map(meta[k]):
            errs.append(f"metadata.{k}: not a map of strings")
    unknown("", o, {"apiVersion", "kind", "metadata", "spec"})
    spec = o.get("spec")
    if not isinstance(spec, dict):
        return errs + ["no spec"]
    if o["kind"] == "ServiceMonitor":
        unknown("spec", spec, SERVICEMONITOR_SPEC)
        sel = spec.get("selector")
        if not isinstance(sel, dict) or not (sel.get("matchLabels") or sel.get("matchExpressions")):
            errs.append("spec.selector (required) selects nothing")
            sel = {"matchExpressions": "invalid"}  # no Service matching below
        elif "matchLabels" in sel and not string_map(sel["matchLabels"]):
            errs.append("spec.selector.matchLabels: not a map of strings")
        if "jobLabel" in spec and not isinstance(spec["jobLabel"], str):
            errs.append("spec.jobLabel: not a string")
        # The Services it selects, in its own namespace (no namespaceSelector here).
        want = sel.get("matchLabels") or {}
        services = [s for s in objs if s["kind"] == "Service"
                    and s["metadata"].get("namespace") == meta.get("namespace")
                    and want.items() <= (s["metadata"].get("labels") or {}).items()]
        if "matchExpressions" in sel:
            services = []  # not evaluated here
        elif "namespaceSelector" not in spec and len(services) != 1:
            errs.append(f"spec.selector matches {len(services)} Services of the render, expected 1")
        endpoints = spec.get("endpoints")
        if not isinstance(endpoints, list) or not endpoints:
            errs.append("spec.endpoints: none")
            endpoints = []
        for i, e in enumerate(endpoints):
            where = f"spec.endpoints[{i}]"
            if not isinstance(e, dict):
                errs.append(f"{where}: not an object")
                continue
            unknown(where, e, ENDPOINT)
            if not isinstance(e.get("port"), str) and "targetPort" not in e:
                errs.append(f"{where}: neither a port name nor a targetPort")
            for k in ("interval", "scrapeTimeout"):
                if k in e and not (isinstance(e[k], str) and DURATION.match(e[k])):
                    errs.append(f"{where}.{k}: {e[k]!r} is not a duration")
            if "interval" in e and "scrapeTimeout" in e and seconds(e["scrapeTimeout"]) > seconds(e["interval"]):
                errs.append(f"{where}: scrapeTimeout longer than interval")
            if "path" in e and not str(e["path"]).startswith("/"):
                errs.append(f"{where}.path: {e['path']!r}")
            if "scheme" in e and e["scheme"] not in ("http", "https", "HTTP", "HTTPS"):
                errs.append(f"{where}.scheme: {e['scheme']!r}")
            for s in services:
                names = {p.get("name") for p in s["spec"].get("ports", [])}
                if isinstance(e.get("port"), str) and e["port"] not in names:
                    errs.append(f"{where}.port {e['port']!r} is not a port of Service "
                                f"{s['metadata']['name']} ({sorted(n for n in names if n)})")
            for kind in ("relabelings", "metricRelabelings"):
                for j, r in enumerate(e.get(kind, [])):
                    rw = f"{where}.{kind}[{j}]"
                    if not isinstance(r, dict):
                        errs.append(f"{rw}: not an object")
                        continue
                    unknown(rw, r, RELABELING)
                    if r.get("action", "replace").lower() not in RELABEL_ACTIONS:
                        errs.append(f"{rw}.action: {r.get('action')!r}")
                    for lbl in r.get("sourceLabels", []):
                        if not (isinstance(lbl, str) and LABEL_NAME.match(lbl)):
                            errs.append(f"{rw}.sourceLabels: {lbl!r} is not a label name")
                    if r.get("action", "replace").lower() in ("replace", "hashmod", "lowercase", "uppercase") \
                            and not r.get("targetLabel"):
                        errs.append(f"{rw}: action {r.get('action', 'replace')} needs a targetLabel")
    elif o["kind"] == "PrometheusRule":
        unknown("spec", spec, {"groups"})
        groups = spec.get("groups")
        if not isinstance(groups, list) or not groups:
            return errs + ["spec.groups: none"]
        names = [g.get("name") for g in groups if isinstance(g, dict)]
        if len(set(names)) != len(groups):
            errs.append(f"spec.groups: names missing or repeated: {names}")
        for i, g in enumerate(groups):
            gw = f"spec.groups[{i}]"
            if not isinstance(g, dict):
                errs.append(f"{gw}: not an object")
                continue
            unknown(gw, g, RULE_GROUP)
            if not isinstance(g.get("name"), str) or not g["name"]:
                errs.append(f"{gw}.name (required): {g.get('name')!r}")
            if "interval" in g and not DURATION.match(str(g["interval"])):
                errs.append(f"{gw}.interval: {g['interval']!r} is not a duration")
            rules = g.get("rules")
            if not isinstance(rules, list):
                errs.append(f"{gw}.rules: not a list")
                continue
            for j, r in enumerate(rules):
                rw = f"{gw}.rules[{j}]"
                if not isinstance(r, dict):
                    errs.append(f"{rw}: not an object")
                    continue
                unknown(rw, r, RULE)
                if not isinstance(r.get("expr"), (str, int)) or r.get("expr") == "":
                    errs.append(f"{rw}.expr (required): {r.get('expr')!r}")
                if ("alert" in r) == ("record" in r):
                    errs.append(f"{rw}: needs exactly one of alert and record")
                if "record" in r and not METRIC_NAME.match(str(r["record"])):
                    errs.append(f"{rw}.record: {r['record']!r} is not a metric name")
                if "alert" in r and (not isinstance(r["alert"], str) or not r["alert"]):
                    errs.append(f"{rw}.alert: {r['alert']!r}")
                for k in ("for", "keep_firing_for"):
                    if k in r and not (isinstance(r[k], str) and DURATION.match(r[k])):
                        errs.append(f"{rw}.{k}: {r[k]!r} is not a duration")
                for k in ("labels", "annotations"):
                    if k in r and not string_map(r[k]):
                        errs.append(f"{rw}.{k}: not a map of strings")
                for k in r.get("labels", {}):
                    if not LABEL_NAME.match(k):
                        errs.append(f"{rw}.labels: {k!r} is not a label name")
    else:
        errs.append(f"kind {o['kind']} is not one this check knows")
    return errs


def check_schemas(renders: dict) -> None:
    print("schemas")
    if kubernetes_validate is None:
        fail("kubernetes-validate is not installed: pip install -r deploy/requirements.txt "
             "(or pip install kubernetes-validate); it ships the Kubernetes schemas, no cluster needed")
        return
    from kubernetes_validate.utils import all_versions
    shipped = sorted({".".join(v.split(".")[:2]) for v in all_versions()}, key=lambda v: tuple(map(int, v.split("."))))
    if OLDEST_KUBERNETES not in shipped:
        fail(f"kubernetes-validate {kubernetes_validate.__version__} has no schemas for Kubernetes "
             f"{OLDEST_KUBERNETES} (it has {shipped[0]} to {shipped[-1]})")
        return
    versions = [OLDEST_KUBERNETES, shipped[-1]]
    for name, objs in renders.items():
        if not objs:
            continue
        validated, by_hand = 0, 0
        before = len(FAILURES)
        for o in objs:
            what = f"{name}: {o.get('kind')}/{(o.get('metadata') or {}).get('name')}"
            if str(o.get("apiVersion", "")).startswith("monitoring.coreos.com/"):
                if o.get("kind") not in ("ServiceMonitor", "PrometheusRule"):
                    fail(f"{what}: a Prometheus Operator kind this check does not know")
                    continue
                for e in operator_object_errors(o, objs):
                    fail(f"{what}: {e}")
                by_hand += 1
                continue
            for v in versions:
                try:
                    got = kubernetes_validate.validate(o, v, strict=True)
                except kubernetes_validate.ValidationError as e:
                    path = ".".join(str(p) for p in e.path)
                    fail(f"{what} against Kubernetes {v}: {path}: {e.message}")
                except kubernetes_validate.SchemaNotFoundError as e:
                    fail(f"{what}: {e.message}")
                except Exception as e:  # noqa: BLE001 (any other error is a failure to validate)
                    fail(f"{what} against Kubernetes {v}: could not validate: {e}")
                else:
                    if got != v:
                        fail(f"{what}: validated against {got}, not {v}")
            validated += 1
        if len(FAILURES) == before:
            ok(f"{name}: {validated} objects valid against Kubernetes {' and '.join(versions)} "
               f"(strict)" + (f", {by_hand} Prometheus Operator objects checked by hand" if by_hand else ""))
    print(f"  (kubernetes-validate {kubernetes_validate.__version__}, its own schemas, offline)")


# --- configuration ---------------------------------------------------------

def check_toml(path: pathlib.Path, tables: dict, where: str) -> dict:
    if tomllib is None:
        print(f"  skip {where}: needs Python 3.11 (tomllib)")
        return {}
    data = tomllib.loads(path.read_text())

    def walk(d: dict, key: str) -> None:
        src, struct = tables[key]
        known = rust_fields(src, struct) if struct else None
        for k, v in d.items():
            sub = f"{key}.{k}" if key else k
            if known is not None and k not in known:
                fail(f"{where}: unknown field `{sub}` (not in {struct}, {src})")
            if isinstance(v, dict) and sub in tables:
                walk(v, sub)
            elif isinstance(v, list) and v and isinstance(v[0], dict) and sub in tables:
                for item in v:
                    walk(item, sub)
    walk(data, "")
    return data


def check_config(objs: list) -> None:
    print("configuration")
    agent = check_toml(DEPLOY / "base/agent.toml", {
        "": ("agent/src/config.rs", "Config"),
        "export": ("agent/src/config.rs", "ExportConfig"),
        "export.tls": ("agent/src/config.rs", "TlsConfig"),
        "metrics": ("agent/src/config.rs", "MetricsConfig"),
        "identity": ("agent/src/config.rs", "IdentityConfig"),
        "identity.rules": ("agent/src/config.rs", "NamingRule"),
        "parsing": ("agent/src/config.rs", "ParsingConfig"),
    }, "base/agent.toml")
    collector = check_toml(DEPLOY / "base/collector.toml", {
        "": ("collector/src/config.rs", "Config"),
        "thresholds": ("collector/src/model.rs", "Thresholds"),
        "intake": ("collector/src/intake/mod.rs", "IntakeLimits"),
        "limits": ("collector/src/config.rs", "Limits"),
        "owners": ("", None),
        "auth": ("collector/src/config.rs", "AuthConfig"),
        "tls": ("collector/src/config.rs", "TlsConfig"),
    }, "base/collector.toml")
    if not objs or not agent or not collector:
        return
    by = {(o["kind"], o["metadata"]["name"]): o for o in objs}
    ds = by[("DaemonSet", "tangle-agent")]["spec"]["template"]["spec"]
    dep = by[("Deployment", "tangle-collector")]["spec"]["template"]["spec"]

    def mounts(spec):
        c = spec["containers"][0]
        vols = {v["name"]: v for v in spec["volumes"]}
        return c, {m["mountPath"]: vols[m["name"]] for m in c["volumeMounts"]}

    def mounted(spec, path, kind):
        _, ms = mounts(spec)
        return any(str(path).startswith(p.rstrip("/") + "/") and kind in v for p, v in ms.items())

    c, _ = mounts(ds)
    checks = [
        ("agent --config file is on the config volume", mounted(ds, c["args"][c["args"].index("--config") + 1], "configMap")),
        ("agent token_file is on the token Secret", mounted(ds, agent["export"]["token_file"], "secret")),
        ("agent endpoint is the collector Service's OTLP/gRPC port",
         agent["export"]["endpoint"] == "http://tangle-collector:4317"),
        ("agent metrics port is the container's metrics port",
         agent["metrics"]["listen"].rsplit(":", 1)[1] == str(next(p["containerPort"] for p in c["ports"] if p["name"] == "metrics"))),
    ]
    c, ms = mounts(dep)
    checks += [
        ("collector --config file is on the config volume", mounted(dep, c["args"][c["args"].index("--config") + 1], "configMap")),
        ("collector token_file is on the token Secret", mounted(dep, collector["auth"]["token_file"], "secret")),
        ("collector data_dir is the PersistentVolumeClaim",
         "persistentVolumeClaim" in ms.get(collector["data_dir"], {})),
    ]
    svc_ports = {p["name"]: p["port"] for p in by[("Service", "tangle-collector")]["spec"]["ports"]}
    for field, port in (("otlp_grpc", "otlp-grpc"), ("otlp_http", "otlp-http"), ("http", "http")):
        checks.append((f"collector {field} port is the Service's {port} port",
                       collector[field].rsplit(":", 1)[1] == str(svc_ports.get(port))))
    for what, good in checks:
        (ok if good else fail)(what)


# --- rules, dashboards, promtool ------------------------------------------

METRIC_AT = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(?=\{|\[)")
PREFIXED = re.compile(r"\b((?:tangle|traces_service_graph)_[a-z0-9_]+)\b")
KIND = re.compile(r'tangle_findings\{[^}]*kind="([a-z_]+)"')
NOT_METRICS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset"}


def check_exprs(where: str, exprs: list, known: set, kinds: set) -> None:
    bad = set()
    for e in exprs:
        for name in set(PREFIXED.findall(e)) | set(METRIC_AT.findall(e)):
            if name not in known and name != "up" and name not in NOT_METRICS:
                bad.add(name)
        for k in KIND.findall(e):
            if k not in kinds:
                bad.add(f'tangle_findings{{kind="{k}"}}')
    if bad:
        fail(f"{where}: not exported by the collector or the agent: {sorted(bad)}")
    else:
        ok(f"{where}: {len(exprs)} expressions, every metric exported")


def slug(heading: str) -> str:
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def check_rules(known: set, kinds: set) -> None:
    print("alert rules")
    src = DEPLOY / "prometheus/rules.yml"
    rules = yaml.safe_load(src.read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]
    check_exprs("prometheus/rules.yml", [a["expr"] for a in alerts], known, kinds)
    anchors = {slug(m) for m in re.findall(r"^#+ (.+)$", (ROOT / "docs/alerts.md").read_text(), re.M)}
    for a in alerts:
        ann = a.get("annotations", {})
        missing = {"summary", "description", "runbook_url"} - set(ann)
        if missing:
            fail(f"{a['alert']}: no {sorted(missing)}")
            continue
        doc, _, anchor = ann["runbook_url"].partition("#")
        if doc != "docs/alerts.md" or anchor not in anchors or anchor != a["alert"].lower():
            fail(f"{a['alert']}: runbook_url {ann['runbook_url']} has no section in docs/alerts.md")
    if not [f for f in FAILURES if "runbook" in f or ": no [" in f]:
        ok(f"{len(alerts)} alerts, each with summary, description and a runbook section in docs/alerts.md")

    tests = yaml.safe_load((DEPLOY / "prometheus/rules.test.yml").read_text())
    cases = [c for t in tests["tests"] for c in t.get("alert_rule_test", [])]
    fired = {c["alertname"] for c in cases if c.get("exp_alerts")}
    quiet = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    names = {a["alert"] for a in alerts}
    if names - fired or names - quiet:
        fail(f"rules.test.yml: no firing test for {sorted(names - fired)}, no quiet test for {sorted(names - quiet)}")
    else:
        ok("rules.test.yml: every alert tested firing and not firing")

    for cmd in (["promtool", "check", "rules", "rules.yml"], ["promtool", "test", "rules", "rules.test.yml"]):
        r = run(cmd, cwd=DEPLOY / "prometheus")
        out = (r.stdout + r.stderr).strip()
        if r.returncode:
            fail(f"{' '.join(cmd)}:\n{out}")
        else:
            ok(f"{' '.join(cmd)}: {out.splitlines()[-1].strip()}")

    r = run([sys.executable, str(DEPLOY / "gen-prometheusrule.py"), "--check"])
    generated = yaml.safe_load((DEPLOY / "prometheus-operator/prometheusrule.yaml").read_text())
    if r.returncode or generated["spec"]["groups"] != rules["groups"]:
        fail("prometheus-operator/prometheusrule.yaml differs from prometheus/rules.yml: run deploy/gen-prometheusrule.py")
    else:
        ok("the PrometheusRule's groups are rules.yml's")


def dashboard_exprs(board: dict) -> list:
    out = []
    for p in board["panels"]:
        for t in p.get("targets", []):
            out.append((p["title"], t["expr"]))
    return out


def check_dashboards(known: set, kinds: set) -> None:
    print("dashboards")
    r = run([sys.executable, str(DEPLOY / "grafana/generate.py"), "--check"])
    if r.returncode:
        fail(r.stdout.strip())
    else:
        ok("the JSON files are what generate.py writes")
    exprs = []
    for f in sorted((DEPLOY / "grafana").glob("*.json")):
        board = json.loads(f.read_text())
        cells = {}
        for p in board["panels"]:
            g = p["gridPos"]
            if g["x"] + g["w"] > 24:
                fail(f"grafana/{f.name}: panel {p['title']!r} is wider than the dashboard")
            for x in range(g["x"], g["x"] + g["w"]):
                for y in range(g["y"], g["y"] + g["h"]):
                    if (x, y) in cells:
                        fail(f"grafana/{f.name}: panels {cells[(x, y)]!r} and {p['title']!r} overlap")
                        break
                    cells[(x, y)] = p["title"]
        if len({p["id"] for p in board["panels"]}) != len(board["panels"]):
            fail(f"grafana/{f.name}: panel ids repeat")
        ex = dashboard_exprs(board)
        check_exprs(f"grafana/{f.name}", [e for _, e in ex], known, kinds)
        exprs += [(f.name, t, e) for t, e in ex]
    # promtool parses the PromQL: each query as a recording rule, Grafana's
    # variables replaced by values of their kind.
    subst = {"$__range": "1h", "$__rate_interval": "2m", "$__interval": "1m", "$namespace": ".*"}
    records = []
    for i, (f, title, e) in enumerate(exprs):
        for k, v in subst.items():
            e = e.replace(k, v)
        records.append({"record": f"dashboard:query_{i}", "expr": e})
    with tempfile.TemporaryDirectory(prefix=".check-", dir=DEPLOY) as tmp:
        path = pathlib.Path(tmp) / "dashboards.rules.yml"
        path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": records}]}))
        r = run(["promtool", "check", "rules", str(path)])
    if r.returncode:
        fail("dashboard PromQL:\n" + (r.stdout + r.stderr).strip())
    else:
        ok(f"promtool parses all {len(records)} dashboard queries")


def check_scrape_config() -> None:
    print("scrape config")
    src = DEPLOY / "prometheus/scrape-config.yml"
    conf = yaml.safe_load(src.read_text())
    jobs = [j["job_name"] for j in conf["scrape_configs"]]
    if sorted(jobs) != ["tangle-agent", "tangle-collector"]:
        fail(f"scrape-config.yml jobs {jobs}")
    # Debian's promtool has no Kubernetes discovery: check the rest with
    # static targets in its place, and the rules file loaded beside it.
    for j in conf["scrape_configs"]:
        j.pop("kubernetes_sd_configs", None)
        j["static_configs"] = [{"targets": ["127.0.0.1:1"]}]
    conf["rule_files"] = [str(DEPLOY / "prometheus/rules.yml")]
    with tempfile.TemporaryDirectory(prefix=".check-", dir=DEPLOY) as tmp:
        path = pathlib.Path(tmp) / "prometheus.yml"
        path.write_text(yaml.safe_dump(conf))
        r = run(["promtool", "check", "config", str(path)])
    if r.returncode:
        fail("promtool check config (scrape-config.yml, static targets):\n" + (r.stdout + r.stderr).strip())
    else:
        ok("promtool check config: scrape-config.yml (relabeling; discovery replaced by static targets) with rules.yml")


def main() -> int:
    known, kinds = exported_metrics(), finding_kinds()
    print(f"{len(known)} metric names exported by the collector and the agent; finding kinds: {sorted(kinds)}")
    renders = check_kustomize()
    check_schemas(renders)
    check_config(renders["deploy/"])
    check_rules(known, kinds)
    check_dashboards(known, kinds)
    check_scrape_config()
    print()
    if FAILURES:
        print(f"{len(FAILURES)} failed")
        return 1
    print("all passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
