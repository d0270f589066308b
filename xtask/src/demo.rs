//! `cargo xtask demo`: three services on loopback, calling each other for
//! every request, watched by the agent, which exports what it sees to a
//! collector; then the collector's map and coupling report.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::util::{Child, build_agent, build_collector, is_root, root, wait_file, wait_port};

/// The demo collector's ports (loopback only).
const OTLP_GRPC: u16 = 14317;
const API: u16 = 19464;

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
        Some(g) => c.args([
            "-c",
            &format!("echo $$ > {}/cgroup.procs && exec {cmd}", g.display()),
        ]),
        None => c.args(["-c", &format!("exec {cmd}")]),
    };
    c
}

pub fn run(duration: Duration) -> anyhow::Result<()> {
    if !is_root() {
        bail!("the demo loads eBPF programs: run it as root (sudo -E cargo xtask demo)");
    }
    let agent = build_agent()?;
    let collector = build_collector()?;
    let dir = root().join("target/demo");
    std::fs::create_dir_all(&dir)?;
    let ready = dir.join("ready");
    let _ = std::fs::remove_file(&ready);
    let log = dir.join("agent.jsonl");
    let data = dir.join("collector-data");
    let _ = std::fs::remove_dir_all(&data);
    eprintln!(
        "demo: starting the collector (tangle-collector, OTLP on 127.0.0.1:{OTLP_GRPC}, API on 127.0.0.1:{API})"
    );
    let collector_log = std::fs::File::create(dir.join("collector.log"))?;
    let _collector = Child::spawn(
        Command::new(&collector)
            .arg("--data-dir")
            .arg(&data)
            .args([
                "--otlp-grpc",
                &format!("127.0.0.1:{OTLP_GRPC}"),
                "--otlp-http",
                "127.0.0.1:14318",
            ])
            .args([
                "--http",
                &format!("127.0.0.1:{API}"),
                "--trace-window-ms",
                "3000",
            ])
            .stderr(collector_log),
    )?;
    wait_port(API, "the collector")?;

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
        .args([
            "run",
            "--json",
            "--collector",
            &format!("http://127.0.0.1:{OTLP_GRPC}"),
            "--ready-file",
        ])
        .arg(&ready);
    if let Some(g) = &cgroup {
        capture.arg("--cgroup").arg(g);
    }
    let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    eprintln!("demo: starting the agent (tangle-agent run)");
    let mut agent_proc = Child::spawn(capture.stdout(out))?;
    wait_file(&ready, "the agent")?;

    let shop = root().join("demo/shop.py");
    let mut services = Vec::new();
    for (name, port) in SERVICES {
        let cmd = format!("python3 {} {name}", shop.display());
        services.push(Child::spawn(
            in_cgroup(cgroup.as_deref(), &cmd).stdout(Stdio::null()),
        )?);
        wait_port(*port, name)?;
    }
    eprintln!("demo: gateway, orders and inventory are up; sending requests for {duration:?}");
    let started = Instant::now();
    let mut sent = 0u32;
    while started.elapsed() < duration {
        sent += 1;
        let cmd = format!(
            "curl -s -o /dev/null -w %{{http_code}} http://127.0.0.1:18080/checkout/{sent}"
        );
        let out = in_cgroup(cgroup.as_deref(), &cmd)
            .output()
            .context("running curl")?;
        eprintln!(
            "demo: GET /checkout/{sent} -> {}",
            String::from_utf8_lossy(&out.stdout)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_millis(300));
    agent_proc.terminate();
    drop(services);
    if let Some(g) = &cgroup {
        let _ = std::fs::remove_dir(g);
    }
    // Let the collector close the last traces' window (longer than the
    // agent's hold of outbound calls: see tangle_agent::export::HOLD).
    std::thread::sleep(Duration::from_millis(3500));
    summarize(&log)?;
    let report = Command::new(&collector)
        .args(["report", "--url", &format!("http://127.0.0.1:{API}")])
        .output()
        .context("running tangle-collector report")?;
    println!("\n{}", String::from_utf8_lossy(&report.stdout));
    println!(
        "The services are thread-per-request: the agent links each call to the request its thread \
         was serving (the thread rule), so the chains above are whole requests."
    );
    Ok(())
}

/// The collector's map: who called whom, with what, from `/api/graph`.
fn summarize(agent_log: &Path) -> anyhow::Result<()> {
    let graph = fetch_json(&format!("127.0.0.1:{API}"), "/api/graph")?;
    let text = std::fs::read_to_string(agent_log).unwrap_or_default();
    let stats: Option<serde_json::Value> = text
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok());
    let events = stats
        .as_ref()
        .map_or(0, |s| s["agent"]["events"].as_u64().unwrap_or(0));
    let lost = stats
        .as_ref()
        .map_or(0, |s| s["kernel"]["events_lost"].as_u64().unwrap_or(0));
    let exported = stats.as_ref().map_or(0, |s| {
        s["parsers"]["export"]["exported"].as_u64().unwrap_or(0)
    });
    println!(
        "\nThe agent saw {events} events ({lost} lost) and exported {exported} spans; the collector's map:\n"
    );
    println!(
        "  {:<10} -> {:<10} {:>6} {:>7} {:>9}  protocols",
        "caller", "callee", "calls", "errors", "avg (us)"
    );
    let edges = graph["edges"].as_array().cloned().unwrap_or_default();
    for e in &edges {
        let calls = e["calls"].as_u64().unwrap_or(0);
        let sum = e["client_seconds"]["sum_seconds"].as_f64().unwrap_or(0.0);
        println!(
            "  {:<10} -> {:<10} {:>6} {:>7} {:>9.0}  {}",
            e["client"].as_str().unwrap_or("?"),
            e["server"].as_str().unwrap_or("?"),
            calls,
            e["failed"].as_u64().unwrap_or(0),
            sum * 1e6 / calls.max(1) as f64,
            e["protocols"]
                .as_array()
                .map(|p| p
                    .iter()
                    .filter_map(|v| v.as_str())
                    .collect::<Vec<_>>()
                    .join(","))
                .unwrap_or_default()
        );
    }
    println!(
        "\nThe agent's counters are in {}; the collector's API is on http://127.0.0.1:{API}/api/ while it runs.",
        agent_log.display()
    );
    if edges.is_empty() {
        bail!("the collector saw no calls between the demo services");
    }
    Ok(())
}

/// A GET on loopback (no HTTP client crate for one call).
fn fetch_json(addr: &str, path: &str) -> anyhow::Result<serde_json::Value> {
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
