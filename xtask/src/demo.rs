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
    let log = dir.join("exchanges.jsonl");

    // A cgroup keeps the capture to the demo's own processes.
    let cgroup = cgroup2_root().and_then(|r| {
        let g = r.join("tangle-demo");
        std::fs::create_dir_all(&g).ok().map(|()| g)
    });
    if cgroup.is_none() {
        eprintln!("demo: no cgroup v2 hierarchy: the capture will show every process's traffic");
    }
    let mut capture = Command::new(&agent);
    capture.args(["exchanges", "--json", "--ready-file"]).arg(&ready);
    if let Some(g) = &cgroup {
        capture.arg("--cgroup").arg(g);
    }
    let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    eprintln!("demo: starting the agent (tangle-agent exchanges)");
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
    calls: u32,
    errors: u32,
    total_us: u64,
    operations: std::collections::BTreeSet<String>,
}

/// Who called whom, with what: each client-side exchange, its callee named by
/// the server-side exchanges seen on the address it called.
fn summarize(log: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(log)?;
    let lines: Vec<serde_json::Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let exchanges = || lines.iter().filter(|l| l["type"] == "exchange");
    let server_at: BTreeMap<String, String> = exchanges()
        .filter(|l| l["role"] == "server")
        .map(|l| (l["local"].as_str().unwrap_or("").to_owned(), l["process"].as_str().unwrap_or("").to_owned()))
        .collect();
    let mut edges: BTreeMap<(String, String), Edge> = BTreeMap::new();
    for l in exchanges().filter(|l| l["role"] == "client") {
        let remote = l["remote"].as_str().unwrap_or("");
        let callee = server_at.get(remote).cloned().unwrap_or_else(|| remote.to_owned());
        let e = edges.entry((l["process"].as_str().unwrap_or("").to_owned(), callee)).or_default();
        e.calls += 1;
        e.errors += u32::from(l["status"]["kind"] == "error");
        e.total_us += l["duration_us"].as_u64().unwrap_or(0);
        e.operations.insert(l["operation"].as_str().unwrap_or("").to_owned());
    }
    let stats = lines.iter().rev().find(|l| l["type"] == "stats");
    let events = stats.map_or(0, |s| s["agent"]["events"].as_u64().unwrap_or(0));
    let lost = stats.map_or(0, |s| s["kernel"]["events_lost"].as_u64().unwrap_or(0));
    println!("\nWhat the agent saw ({events} events, {lost} lost), parsed from the bytes alone:\n");
    println!("  {:<10} -> {:<10} {:>6} {:>7} {:>9}  operations", "caller", "callee", "calls", "errors", "avg (us)");
    for ((caller, callee), e) in &edges {
        let ops: Vec<&str> = e.operations.iter().map(String::as_str).collect();
        println!(
            "  {:<10} -> {:<10} {:>6} {:>7} {:>9}  {}",
            caller,
            callee,
            e.calls,
            e.errors,
            e.total_us / u64::from(e.calls.max(1)),
            ops.join(", ")
        );
    }
    println!("\nEvery exchange is in {} (JSON lines).", log.display());
    println!("Watch any machine live with: sudo target/release/tangle-agent exchanges");
    if edges.is_empty() {
        bail!("the agent saw no calls between the demo services");
    }
    Ok(())
}
