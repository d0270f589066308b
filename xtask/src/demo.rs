//! `cargo xtask demo`: three services on loopback, calling each other for
//! every request, watched by the agent; then who called whom, from the
//! agent's capture alone.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use base64::Engine as _;

use crate::util::{Child, build_agent, is_root, root, wait_file, wait_port};

/// Where cgroup v2 is mounted (`/sys/fs/cgroup`, or `.../unified` on hybrid systems).
fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
    })
}

const SERVICES: &[(&str, u16)] = &[("gateway", 18080), ("orders", 18081), ("inventory", 18082)];

/// A shell prefix that moves the shell into the demo cgroup, if there is one.
fn in_cgroup(cgroup: Option<&Path>, cmd: &str) -> Command {
    let mut c = Command::new("sh");
    match cgroup {
        Some(g) => c.args(["-c", &format!("echo $$ > {}/cgroup.procs && exec {cmd}", g.display())]),
        None => c.args(["-c", &format!("exec {cmd}")]),
    };
    c
}

pub fn run(duration: Duration) -> anyhow::Result<()> {
    if !is_root() {
        bail!("the demo loads eBPF programs: run it as root (sudo -E cargo xtask demo)");
    }
    let agent = build_agent()?;
    let dir = root().join("target/demo");
    std::fs::create_dir_all(&dir)?;
    let ready = dir.join("ready");
    let _ = std::fs::remove_file(&ready);
    let log = dir.join("capture.jsonl");

    // A cgroup keeps the capture to the demo's own processes.
    let cgroup = cgroup2_root().and_then(|r| {
        let g = r.join("tangle-demo");
        std::fs::create_dir_all(&g).ok().map(|()| g)
    });
    if cgroup.is_none() {
        eprintln!("demo: no cgroup v2 hierarchy: the capture will show every process's traffic");
    }
    let mut capture = Command::new(&agent);
    capture.args(["capture", "--json", "--ready-file"]).arg(&ready);
    if let Some(g) = &cgroup {
        capture.arg("--cgroup").arg(g);
    }
    let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    eprintln!("demo: starting the agent (tangle-agent capture)");
    let mut agent_proc = Child::spawn(capture.stdout(out))?;
    wait_file(&ready, "the agent")?;

    let shop = root().join("demo/shop.py");
    let mut services = Vec::new();
    for (name, port) in SERVICES {
        let cmd = format!("python3 {} {name}", shop.display());
        services.push(Child::spawn(in_cgroup(cgroup.as_deref(), &cmd).stdout(Stdio::null()))?);
        wait_port(*port, name)?;
    }
    eprintln!("demo: gateway, orders and inventory are up; sending requests for {duration:?}");
    let started = Instant::now();
    let mut sent = 0u32;
    while started.elapsed() < duration {
        sent += 1;
        let cmd = format!("curl -s -o /dev/null -w %{{http_code}} http://127.0.0.1:18080/checkout/{sent}");
        let out = in_cgroup(cgroup.as_deref(), &cmd).output().context("running curl")?;
        eprintln!("demo: GET /checkout/{sent} -> {}", String::from_utf8_lossy(&out.stdout));
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_millis(300));
    agent_proc.terminate();
    drop(services);
    if let Some(g) = &cgroup {
        let _ = std::fs::remove_dir(g);
    }
    summarize(&log)
}

#[derive(Default)]
struct Edge {
    connections: u32,
    requests: u32,
    bytes: u64,
    example: String,
}

/// Who called whom: each client connection joined to the server connection
/// whose addresses mirror it.
fn summarize(log: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(log)?;
    let lines: Vec<serde_json::Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let mut server_of = BTreeMap::new(); // (local, remote) -> process
    for l in lines.iter().filter(|l| l["type"] == "open" && l["role"] == "server") {
        server_of.insert((l["local"].to_string(), l["remote"].to_string()), l["process"].to_string());
    }
    let mut client_conns = BTreeMap::new(); // conn_id -> (caller, callee)
    for l in lines.iter().filter(|l| l["type"] == "open" && l["role"] == "client") {
        let callee = server_of
            .get(&(l["remote"].to_string(), l["local"].to_string()))
            .cloned()
            .unwrap_or_else(|| l["remote"].to_string());
        client_conns.insert(l["conn_id"].to_string(), (l["process"].to_string(), callee));
    }
    let mut edges: BTreeMap<(String, String), Edge> = BTreeMap::new();
    for (caller_callee, _) in client_conns.values().map(|e| (e.clone(), ())) {
        edges.entry(caller_callee).or_default().connections += 1;
    }
    for l in lines.iter().filter(|l| l["type"] == "data" && l["direction"] == "egress") {
        let Some(key) = client_conns.get(&l["conn_id"].to_string()) else { continue };
        let edge = edges.entry(key.clone()).or_default();
        edge.bytes += l["len"].as_u64().unwrap_or(0);
        let data = base64::engine::general_purpose::STANDARD
            .decode(l["data"].as_str().unwrap_or_default())
            .unwrap_or_default();
        let first = String::from_utf8_lossy(&data).lines().next().unwrap_or_default().to_owned();
        if ["GET ", "POST ", "PUT ", "DELETE "].iter().any(|m| first.starts_with(m)) {
            edge.requests += 1;
            if edge.example.is_empty() {
                edge.example = first;
            }
        }
    }
    let stats = lines.iter().rev().find(|l| l["type"] == "stats");
    let events = stats.map_or(0, |s| s["agent"]["events"].as_u64().unwrap_or(0));
    let lost = stats.map_or(0, |s| s["kernel"]["events_lost"].as_u64().unwrap_or(0));
    let unquote = |s: &str| s.trim_matches('"').to_owned();
    println!("\nWhat the agent saw ({events} events, {lost} lost), from the bytes alone:\n");
    println!("  {:<10} -> {:<22} {:>11} {:>9} {:>10}  example", "caller", "callee", "connections", "requests", "bytes out");
    for ((caller, callee), e) in &edges {
        println!(
            "  {:<10} -> {:<22} {:>11} {:>9} {:>10}  {}",
            unquote(caller),
            unquote(callee),
            e.connections,
            e.requests,
            e.bytes,
            e.example
        );
    }
    println!("\nEvery event is in {} (JSON lines).", log.display());
    println!("Watch any machine live with: sudo target/release/tangle-agent capture");
    if edges.is_empty() {
        bail!("the agent saw no calls between the demo services");
    }
    Ok(())
}
