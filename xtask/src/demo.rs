//! `cargo xtask demo`: the example system (`examples/shop/`: nine services
//! in Python, Java and Node, a shared PostgreSQL, Redis as a cache and for
//! pub/sub), watched by the agent, which exports to a collector; then the
//! collector's map and coupling report. With `--check`, the map, chains,
//! databases and findings are compared with the system's ground truth
//! (`examples/shop/truth.json`): every true node, edge and finding, and
//! nothing else.
//!
//! The traffic comes in three phases: the system as it is (the collector
//! learns its chains), then `payments` starts calling `fraud` (a new
//! synchronous chain), then `tax` fails (a cascading failure).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::util::{Child, build_agent, build_collector, is_root, root, wait_file, wait_port};

/// The demo collector's ports (loopback only).
const OTLP_GRPC: u16 = 14317;
const API: u16 = 19464;
/// Seconds the collector learns chains before it calls one new.
const LEARNING_SECONDS: u64 = 10;
/// The collector's trace window.
const TRACE_WINDOW_MS: u64 = 8000;
/// How long the agent holds an outbound call for its request (`HOLD`).
const AGENT_HOLD_SECONDS: u64 = 5;

/// The shop's folder, removed when the demo ends; its logs are kept.
struct RemoveOnDrop(PathBuf, PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.1);
        let _ = std::fs::rename(self.0.join("logs"), &self.1);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Where cgroup v2 is mounted (`/sys/fs/cgroup`, or `.../unified` on hybrid systems).
fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
    })
}

/// Where the shop and its load run: the demo cgroup (which keeps the
/// capture to them), and a network namespace of the demo's own, if any.
struct Place<'a> {
    cgroup: Option<&'a Path>,
    netns: Option<&'a str>,
}

impl Place<'_> {
    /// `argv` run in the cgroup (a shell moves itself there, then execs
    /// it) and the namespace. Paths travel as arguments, never through the
    /// shell's parsing.
    fn command(&self, argv: &[&std::ffi::OsStr]) -> Command {
        let mut full: Vec<&std::ffi::OsStr> = Vec::new();
        if let Some(ns) = self.netns {
            full.extend(["ip", "netns", "exec", ns].map(std::ffi::OsStr::new));
        }
        full.extend(argv);
        match self.cgroup {
            Some(g) => {
                let mut c = Command::new("sh");
                c.args(["-c", "echo $$ > \"$0/cgroup.procs\" && exec \"$@\""])
                    .arg(g)
                    .args(full);
                c
            }
            None => {
                let mut c = Command::new(full.first().copied().unwrap_or_default());
                c.args(full.get(1..).unwrap_or_default());
                c
            }
        }
    }
}

/// A network namespace whose loopback is up and whose ephemeral ports are
/// few: every connection's local port is reused within seconds, and the
/// same port serves connections to different servers at once. Deleted
/// when dropped.
struct CrampedNetns(String);

impl CrampedNetns {
    fn new(low: u16, high: u16) -> anyhow::Result<Self> {
        let name = format!("tangle-demo-{}", std::process::id());
        crate::util::run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Self(name);
        crate::util::run(Command::new("ip").args(["-n", &ns.0, "link", "set", "lo", "up"]))?;
        crate::util::run(
            Command::new("ip")
                .args(["netns", "exec", &ns.0, "sysctl", "-q"])
                .arg(format!("net.ipv4.ip_local_port_range={low} {high}")),
        )?;
        // A port in TIME_WAIT is taken again at once (after a second on
        // kernels without tcp_tw_reuse_delay), not after a minute.
        crate::util::run(
            Command::new("ip")
                .args(["netns", "exec", &ns.0, "sysctl", "-q"])
                .arg("net.ipv4.tcp_tw_reuse=1"),
        )?;
        if Path::new("/proc/sys/net/ipv4/tcp_tw_reuse_delay").exists() {
            crate::util::run(
                Command::new("ip")
                    .args(["netns", "exec", &ns.0, "sysctl", "-q"])
                    .arg("net.ipv4.tcp_tw_reuse_delay=1"),
            )?;
        }
        Ok(ns)
    }
}

impl Drop for CrampedNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

/// What a run is for: show the findings, or check them against the truth.
pub struct Options {
    /// Release binaries (the demo) or those `cargo test` built (the check).
    pub release: bool,
    /// Requests per phase.
    pub requests: u32,
    pub concurrency: u32,
    /// Compare with the ground truth; fail on any difference.
    pub check: bool,
    /// Run the shop in a network namespace of its own whose ephemeral
    /// port range is this one (port reuse under pressure).
    pub port_range: Option<(u16, u16)>,
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    if !is_root() {
        bail!("the demo loads eBPF programs: run it as root (sudo -E cargo xtask demo)");
    }
    // The shop's servers, runtimes and drivers (installed once).
    crate::setup::debian_packages_of(crate::setup::SHOP_PACKAGES)
        .context("installing the example shop's Debian packages")?;
    crate::setup::python_packages().context("installing the example shop's Python drivers")?;
    let (agent, collector) = if opts.release {
        (build_agent()?, build_collector()?)
    } else {
        let d = root().join("target/debug");
        (d.join("tangle-agent"), d.join("tangle-collector"))
    };
    let dir = root().join("target/demo");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let ready = dir.join("ready");
    let config = dir.join("collector.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\ntrace_window_ms = {TRACE_WINDOW_MS}\n\
             [thresholds]\nlearning_seconds = {LEARNING_SECONDS}\n\
             [owners]\n# The shop's database belongs to orders: the others reach into it.\nshop = \"orders\"\n",
            dir.join("collector-data")
        ),
    )?;
    eprintln!(
        "demo: starting the collector (OTLP on 127.0.0.1:{OTLP_GRPC}, API on 127.0.0.1:{API})"
    );
    let _collector = Child::spawn(
        Command::new(&collector)
            .arg("--config")
            .arg(&config)
            .args(["--otlp-grpc", &format!("127.0.0.1:{OTLP_GRPC}")])
            .args(["--otlp-http", "127.0.0.1:14318"])
            .args(["--http", &format!("127.0.0.1:{API}")])
            .stderr(std::fs::File::create(dir.join("collector.log"))?),
    )?;
    wait_port(API, "the collector")?;
    eprintln!("demo: the map, live while the demo runs: http://127.0.0.1:{API}/");

    // A cgroup keeps the capture to the demo's own processes.
    let cgroup = cgroup2_root().and_then(|r| {
        let g = r.join("tangle-demo");
        std::fs::create_dir_all(&g).ok().map(|()| g)
    });
    if cgroup.is_none() {
        eprintln!("demo: no cgroup v2 hierarchy: the capture will show every process's traffic");
    }
    let mut capture = Command::new(&agent);
    capture
        .args(["run", "--json"])
        .args(["--collector", &format!("http://127.0.0.1:{OTLP_GRPC}")])
        .arg("--ready-file")
        .arg(&ready);
    if let Some(g) = &cgroup {
        capture.arg("--cgroup").arg(g);
    }
    let log = dir.join("agent.jsonl");
    eprintln!("demo: starting the agent (tangle-agent run)");
    let mut agent_proc = Child::spawn(capture.stdout(std::fs::File::create(&log)?))?;
    wait_file(&ready, "the agent")?;

    let netns = match opts.port_range {
        Some((low, high)) => {
            eprintln!(
                "demo: the shop runs in a network namespace with local ports {low}-{high} only"
            );
            Some(CrampedNetns::new(low, high)?)
        }
        None => None,
    };
    let place = Place {
        cgroup: cgroup.as_deref(),
        netns: netns.as_ref().map(|n| n.0.as_str()),
    };
    // PostgreSQL runs as its own user, which must reach the folder: not
    // under a root-only home where the repository may be.
    let shop_dir = std::env::temp_dir().join(format!("tangle-demo-shop-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&shop_dir);
    std::fs::create_dir(&shop_dir).with_context(|| format!("creating {}", shop_dir.display()))?;
    let _cleanup = RemoveOnDrop(shop_dir.clone(), dir.join("shop-logs"));
    let examples = root().join("examples/shop");
    eprintln!(
        "demo: starting the shop in {} (PostgreSQL, Redis and nine services; their logs end up in {})",
        shop_dir.display(),
        dir.join("shop-logs").display()
    );
    let shop = spawn_shop(&place, &examples, &shop_dir)?;
    let load = |what: &str, n: u32| -> anyhow::Result<Value> {
        eprintln!("demo: {what}: {n} requests, {} at a time", opts.concurrency);
        let load_py = examples.join("load.py");
        let (n, c) = (n.to_string(), opts.concurrency.to_string());
        let out = place
            .command(&[
                "python3".as_ref(),
                load_py.as_os_str(),
                "--requests".as_ref(),
                n.as_ref(),
                "--concurrency".as_ref(),
                c.as_ref(),
                "--progress".as_ref(),
            ])
            .stderr(Stdio::inherit())
            .output()
            .context("running load.py")?;
        if !out.status.success() {
            bail!("load.py failed: {}", String::from_utf8_lossy(&out.stdout));
        }
        let result: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        eprintln!(
            "demo: answers: {} ({} requests/s)",
            result["counts"], result["rps"]
        );
        Ok(result)
    };
    let started = Instant::now();
    load(
        "phase 1, the shop as it is (the collector learns its chains)",
        opts.requests,
    )?;
    // The last traces close a trace window (plus the agent's hold of
    // outbound calls) later; the learning period runs from the first.
    let learned = Duration::from_secs(LEARNING_SECONDS + 2);
    std::thread::sleep(learned.saturating_sub(started.elapsed()));
    let healthy = fetch_json(&format!("127.0.0.1:{API}"), "/api/chains")?;
    // With --check, the map is watched in a browser from here on: the new
    // chain of phase 2 must appear on it.
    let mut page = match (opts.check, crate::browser::available()) {
        (false, _) => None,
        (true, Ok(_)) => {
            eprintln!("demo: opening the map in Chromium");
            Some(crate::browser::Page::open(
                &format!("http://127.0.0.1:{API}/"),
                &dir,
            )?)
        }
        (true, Err(reason)) if std::env::var_os("CI").is_some() => {
            bail!("the map's browser check cannot run in CI: {reason}")
        }
        (true, Err(reason)) => {
            eprintln!("demo: SKIPPED the map's browser check: {reason}");
            None
        }
    };
    std::fs::write(shop_dir.join("fraud.on"), "")?;
    load(
        "phase 2, payments now calls fraud: a new synchronous chain",
        opts.requests / 2,
    )?;
    std::fs::write(shop_dir.join("tax.fail"), "")?;
    load(
        "phase 3, tax fails: does the failure cascade?",
        opts.requests / 2,
    )?;
    // Calls held for their request go out within the agent's hold; then
    // the last traces close a trace window after their last span.
    eprintln!("demo: waiting for the last traces to close");
    std::thread::sleep(Duration::from_secs(AGENT_HOLD_SECONDS + 1));
    agent_proc.terminate();
    std::thread::sleep(Duration::from_millis(TRACE_WINDOW_MS + 1500));
    drop(shop);
    if let Some(g) = &cgroup {
        let _ = std::fs::remove_dir(g);
    }
    let api = |what: &str| fetch_json(&format!("127.0.0.1:{API}"), &format!("/api/{what}"));
    let (graph, chains, databases, findings) = (
        api("graph")?,
        api("chains")?,
        api("databases")?,
        api("findings")?,
    );
    print_map(&graph);
    let report = Command::new(&collector)
        .args(["report", "--url", &format!("http://127.0.0.1:{API}")])
        .output()
        .context("running tangle-collector report")?;
    if !report.status.success() {
        bail!(
            "tangle-collector report failed: {}",
            String::from_utf8_lossy(&report.stderr)
        );
    }
    println!("\n{}", String::from_utf8_lossy(&report.stdout));
    // The map and the findings as one file, to open in a browser.
    let html = Command::new(&collector)
        .args([
            "report",
            "--format",
            "html",
            "--url",
            &format!("http://127.0.0.1:{API}"),
        ])
        .output()
        .context("running tangle-collector report --format html")?;
    if !html.status.success() {
        bail!(
            "tangle-collector report --format html failed: {}",
            String::from_utf8_lossy(&html.stderr)
        );
    }
    let map_file = root().join("target/demo/map.html");
    std::fs::create_dir_all(root().join("target/demo"))?;
    std::fs::write(&map_file, &html.stdout).context("writing the map")?;
    println!(
        "The coupling map: open {} in a browser.",
        map_file.display()
    );
    let stats = last_json_line(&log);
    println!(
        "The agent saw {} events ({} lost) and exported {} spans; its counters are in {}.",
        stats["agent"]["events"],
        stats["kernel"]["events_lost"],
        stats["parsers"]["export"]["exported"],
        log.display()
    );
    if opts.check {
        let truth: Value = serde_json::from_str(
            &std::fs::read_to_string(examples.join("truth.json")).context("reading truth.json")?,
        )?;
        // With few ports, calls fail for want of one (EADDRNOTAVAIL): real
        // faults, so the closures were not all up even before tax failed.
        let healthy = if opts.port_range.is_some() {
            Value::Null
        } else {
            healthy
        };
        let mut problems = compare(&truth, &graph, &chains, &databases, &findings, &healthy);
        if let Some(page) = &mut page {
            problems.extend(check_page(page, &graph, &findings)?);
        }
        let a = &graph["assembly"];
        println!(
            "check: {} server spans joined to their client span; left unjoined: {} calls, {} served spans",
            a["joined"],
            a["unjoined_calls"],
            a["unjoined"].as_u64().unwrap_or(0) - a["unjoined_calls"].as_u64().unwrap_or(0)
        );
        if !problems.is_empty() {
            bail!(
                "the map differs from examples/shop/truth.json:\n  {}",
                problems.join("\n  ")
            );
        }
        println!("check: the map, chains, databases and findings equal examples/shop/truth.json");
        if page.is_some() {
            println!(
                "check: the map in Chromium showed them, the new chain appeared on it, and its \
                 finding lit it (screenshot: target/demo/shop-map.png)"
            );
        }
    }
    Ok(())
}

/// What the page in the browser got wrong: it must show exactly the
/// graph's nodes and edges with their kinds (the graph is checked against
/// the truth), must have gained the new chain's services since phase 1,
/// must light exactly that chain when its finding is selected, and must
/// have had no console error and made no request elsewhere.
fn check_page(
    page: &mut crate::browser::Page,
    graph: &Value,
    findings: &Value,
) -> anyhow::Result<Vec<String>> {
    let pairs = |v: &Value| -> BTreeSet<(String, String)> {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                (
                    p[0].as_str().unwrap_or("").into(),
                    p[1].as_str().unwrap_or("").into(),
                )
            })
            .collect()
    };
    let strings = |v: &Value| -> BTreeSet<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect()
    };
    let before = page.loaded["map"].clone();
    // A poll after the last traces closed: the final model.
    let now = page.ask("next")?["map"].clone();
    let selected = page.ask("select new_sync_chain")?["map"].clone();
    page.ask("shot shop-map")?;
    let troubles = page.ask("quit")?["problems"].clone();
    let mut problems = Vec::new();
    for t in strings(&troubles) {
        problems.push(format!("the page: {t}"));
    }
    let api_nodes: BTreeSet<(String, String)> = graph["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            (
                n["name"].as_str().unwrap_or("").into(),
                n["kind"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    let api_edges: BTreeSet<(String, String)> = graph["edges"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                format!(
                    "{}\u{2192}{}",
                    e["client"].as_str().unwrap_or(""),
                    e["server"].as_str().unwrap_or("")
                ),
                e["kind"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    if pairs(&now["nodes"]) != api_nodes {
        problems.push(format!(
            "the page's nodes {:?} are not the graph's {api_nodes:?}",
            pairs(&now["nodes"])
        ));
    }
    if pairs(&now["edges"]) != api_edges {
        problems.push(format!(
            "the page's edges {:?} are not the graph's {api_edges:?}",
            pairs(&now["edges"])
        ));
    }
    let chains: Vec<Vec<String>> = findings["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f["kind"] == "new_sync_chain")
        .map(|f| {
            f["chain"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|h| h["service"].as_str().map(str::to_owned))
                .collect()
        })
        .collect();
    let chain: Vec<String> = chains.iter().flatten().cloned().collect();
    let had: BTreeSet<String> = pairs(&before["nodes"])
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    if chain.is_empty() || chain.iter().all(|s| had.contains(s)) {
        problems.push(format!(
            "the new chain {chain:?} brought no service the page did not show in phase 1"
        ));
    }
    let lit = strings(&selected["highlighted"]["nodes"]);
    if lit != chain.iter().cloned().collect() {
        problems.push(format!(
            "selecting the new chains lit {lit:?}, not {chain:?}"
        ));
    }
    Ok(problems)
}

/// Starts the shop in the cgroup and waits for `shop: ready`.
fn spawn_shop(place: &Place<'_>, examples: &Path, dir: &Path) -> anyhow::Result<Child> {
    let shop_py = examples.join("shop.py");
    let mut c = place.command(&[
        "python3".as_ref(),
        shop_py.as_os_str(),
        "up".as_ref(),
        "--dir".as_ref(),
        dir.as_os_str(),
    ]);
    c.stdout(Stdio::piped());
    let mut child = Child::spawn(&mut c)?;
    let out = child.stdout().context("the shop's output")?;
    let mut line = String::new();
    let mut reader = std::io::BufReader::new(out);
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        line.clear();
        if std::io::BufRead::read_line(&mut reader, &mut line)? == 0 {
            bail!("the shop did not start: see {}/logs", dir.display());
        }
        if line.contains("shop: ready") {
            return Ok(child);
        }
    }
    bail!("the shop did not start in 90 s: see {}/logs", dir.display())
}

/// The collector's map, by node kind and edge kind.
fn print_map(graph: &Value) {
    println!("\nThe collector's map:\n");
    let kinds = [
        "external_client",
        "service",
        "database",
        "cache",
        "topic",
        "external_endpoint",
    ];
    let rank = |k: &str| kinds.iter().position(|x| *x == k).unwrap_or(kinds.len());
    let mut nodes: Vec<&Value> = graph["nodes"].as_array().into_iter().flatten().collect();
    nodes.sort_by_key(|n| rank(n["kind"].as_str().unwrap_or("")));
    for n in nodes {
        println!(
            "  {:<18} {}",
            n["kind"].as_str().unwrap_or("?"),
            n["name"].as_str().unwrap_or("?")
        );
    }
    println!(
        "\n  {:<6} {:<30} -> {:<30} {:>6} {:>7} {:>6} {:>8}",
        "kind", "from", "to", "calls", "faults", "exact", "inferred"
    );
    let order = ["client", "sync", "async", "data"];
    let mut edges: Vec<&Value> = graph["edges"].as_array().into_iter().flatten().collect();
    edges.sort_by_key(|e| {
        order
            .iter()
            .position(|k| e["kind"].as_str() == Some(k))
            .unwrap_or(order.len())
    });
    for e in edges {
        println!(
            "  {:<6} {:<30} -> {:<30} {:>6} {:>7} {:>6} {:>8}",
            e["kind"].as_str().unwrap_or("?"),
            e["client"].as_str().unwrap_or("?"),
            e["server"].as_str().unwrap_or("?"),
            e["calls"].as_u64().unwrap_or(0),
            e["failed"].as_u64().unwrap_or(0),
            e["exact"].as_u64().unwrap_or(0),
            e["inferred"].as_u64().unwrap_or(0),
        );
    }
}

fn strings(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect()
}

/// Where a set differs from the truth: what is missing and what is extra.
fn diff<T: Ord + std::fmt::Debug>(
    what: &str,
    want: &BTreeSet<T>,
    got: &BTreeSet<T>,
    out: &mut Vec<String>,
) {
    for m in want.difference(got) {
        out.push(format!("{what}: missing {m:?}"));
    }
    for x in got.difference(want) {
        out.push(format!("{what}: not in the truth {x:?}"));
    }
}

/// A finding as the truth names it: its kind and what it is about.
fn finding_key(f: &Value) -> String {
    let hop = |h: &Value| {
        format!(
            "{} {}",
            h["service"].as_str().unwrap_or(""),
            h["operation"].as_str().unwrap_or("")
        )
    };
    let list = |v: &Value| strings(v).into_iter().collect::<Vec<_>>().join(",");
    let kind = f["kind"].as_str().unwrap_or("?");
    let about = match kind {
        "new_sync_chain" => f["chain"]
            .as_array()
            .into_iter()
            .flatten()
            .map(hop)
            .collect::<Vec<_>>()
            .join(" -> "),
        "deep_sync_chain" | "wide_closure" => hop(&f["entry"]),
        "cycle" => f["services"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(","),
        "cascading_failure" | "chatty_edge" => format!(
            "{} -> {}",
            f["caller"].as_str().unwrap_or(""),
            f["callee"].as_str().unwrap_or("")
        ),
        "shared_database" => format!(
            "{} {}",
            f["database"].as_str().unwrap_or(""),
            list(&f["services"])
        ),
        "cross_service_access" => format!(
            "{} {}",
            f["database"].as_str().unwrap_or(""),
            f["accessor"].as_str().unwrap_or("")
        ),
        "table_written_by_many" => format!(
            "{} {}",
            f["table"].as_str().unwrap_or(""),
            list(&f["services"])
        ),
        _ => String::new(),
    };
    format!("{kind}: {about}")
}

/// Every difference between the collector's view and the truth.
fn compare(
    truth: &Value,
    graph: &Value,
    chains: &Value,
    databases: &Value,
    findings: &Value,
    healthy: &Value,
) -> Vec<String> {
    let mut out = Vec::new();
    let want_nodes: BTreeSet<(String, String)> = truth["nodes"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(n, k)| (n.clone(), k.as_str().unwrap_or("").to_owned()))
        .collect();
    let got_nodes: BTreeSet<(String, String)> = graph["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            (
                n["name"].as_str().unwrap_or("").to_owned(),
                n["kind"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    diff("node", &want_nodes, &got_nodes, &mut out);
    let triple = |e: &Value, a: &str, b: &str, c: &str| {
        (
            e[a].as_str().unwrap_or("").to_owned(),
            e[b].as_str().unwrap_or("").to_owned(),
            e[c].as_str().unwrap_or("").to_owned(),
        )
    };
    let want_edges: BTreeSet<_> = truth["edges"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e[0].as_str().unwrap_or("").to_owned(),
                e[1].as_str().unwrap_or("").to_owned(),
                e[2].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let got_edges: BTreeSet<_> = graph["edges"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| triple(e, "kind", "client", "server"))
        .collect();
    diff("edge", &want_edges, &got_edges, &mut out);
    // Entries: depth and closure.
    let entry_name = |e: &Value| {
        format!(
            "{} {}",
            e["service"].as_str().unwrap_or(""),
            e["operation"].as_str().unwrap_or("")
        )
    };
    let want_entries: BTreeMap<String, (u64, BTreeSet<String>)> = truth["entries"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            (
                k.clone(),
                (v["depth"].as_u64().unwrap_or(0), strings(&v["closure"])),
            )
        })
        .collect();
    let got_entries: BTreeMap<String, (u64, BTreeSet<String>)> = chains["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                entry_name(&e["entry"]),
                (e["max_depth"].as_u64().unwrap_or(0), strings(&e["closure"])),
            )
        })
        .collect();
    diff(
        "entry",
        &want_entries
            .iter()
            .map(|(k, v)| format!("{k}: depth {}, closure {:?}", v.0, v.1))
            .collect(),
        &got_entries
            .iter()
            .map(|(k, v)| format!("{k}: depth {}, closure {:?}", v.0, v.1))
            .collect(),
        &mut out,
    );
    // Chains are service paths from an entry: none starts elsewhere.
    for c in chains["chains"].as_array().into_iter().flatten() {
        let entry = entry_name(&c["entry"]);
        if !want_entries.contains_key(&entry) {
            out.push(format!("chain from an entry not in the truth: {entry}"));
        }
    }
    // Before anything failed: caller errors (404s, Redis refusing a
    // handshake command) are not faults, so every entry's closure was up.
    for e in healthy["entries"].as_array().into_iter().flatten() {
        let a = e["availability"].as_f64();
        if a != Some(1.0) {
            out.push(format!(
                "availability of {} before any fault: {a:?}, not 1",
                entry_name(&e["entry"])
            ));
        }
    }
    let want_dbs: BTreeSet<String> = truth["databases"]
        .as_object()
        .into_iter()
        .flatten()
        .flat_map(|(db, acc)| {
            acc.as_object()
                .into_iter()
                .flatten()
                .map(move |(svc, tables)| format!("{db} {svc} {:?}", strings(tables)))
        })
        .collect();
    let got_dbs: BTreeSet<String> = databases["databases"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|d| {
            let db = d["database"].as_str().unwrap_or("").to_owned();
            d["accessors"]
                .as_object()
                .into_iter()
                .flatten()
                .map(move |(svc, tables)| {
                    let t: BTreeSet<String> = tables
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(t, _)| t.clone())
                        .collect();
                    format!("{db} {svc} {t:?}")
                })
        })
        .collect();
    diff("database access", &want_dbs, &got_dbs, &mut out);
    let want_findings = strings(&truth["findings"]);
    let got_findings: BTreeSet<String> = findings["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .map(finding_key)
        .collect();
    diff("finding", &want_findings, &got_findings, &mut out);
    out
}

/// The agent's last counters line.
fn last_json_line(path: &Path) -> Value {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or(Value::Null)
}

/// A GET on loopback (no HTTP client crate for one call).
fn fetch_json(addr: &str, path: &str) -> anyhow::Result<Value> {
    use std::io::{Read as _, Write as _};
    let mut s =
        std::net::TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no HTTP response")?;
    Ok(serde_json::from_slice(&out[split + 4..])?)
}
