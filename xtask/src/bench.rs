//! `cargo xtask bench`: the agent's cost to the traffic it watches. wrk
//! drives nginx on loopback, alternating runs without and with the agent
//! attached, and reports ratios measured in the same session. With
//! `--export` the agent runs the whole pipeline (parse, link, export to a
//! local collector) rather than the capture alone. With `--node-tax` it
//! measures what the agent costs a process that never touches a socket:
//! `dd bs=1` copying /dev/zero to /dev/null (a read and a write per byte),
//! without and with the agent attached to the whole node.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::util::{
    Child, build_agent, build_collector, is_root, output, root, wait_file, wait_port, which,
};

const PORT: u16 = 18090;
/// The collector's ports with `--export` (OTLP/gRPC, OTLP/HTTP, API).
const COLLECTOR_PORTS: [u16; 3] = [19317, 19318, 19465];

#[derive(Clone, Copy, Debug, Default)]
struct WrkResult {
    requests_per_s: f64,
    mean_latency_us: f64,
    p99_latency_us: f64,
}

#[derive(Clone, Copy, Debug, Default)]
struct AgentResult {
    events: f64,
    lost: f64,
    cpu_s: f64,
    exchanges: f64,
    exported: f64,
    dropped: f64,
}

fn micros(v: &str) -> Option<f64> {
    let (num, unit) = v
        .find(|c: char| c.is_ascii_alphabetic())
        .map(|i| v.split_at(i))?;
    let n: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => n,
        "ms" => n * 1e3,
        "s" => n * 1e6,
        _ => return None,
    })
}

fn parse_wrk(out: &str) -> Option<WrkResult> {
    let mut r = WrkResult::default();
    for line in out.lines().map(str::trim) {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["Latency", avg, ..] => r.mean_latency_us = micros(avg).unwrap_or(r.mean_latency_us),
            ["99%", v] => r.p99_latency_us = micros(v)?,
            ["Requests/sec:", v] => r.requests_per_s = v.parse().ok()?,
            _ => {}
        }
    }
    (r.requests_per_s > 0.0 && r.p99_latency_us > 0.0).then_some(r)
}

fn wrk(duration: Duration, connections: u32) -> anyhow::Result<WrkResult> {
    let out = output(Command::new("wrk").args([
        "-t1",
        &format!("-c{connections}"),
        &format!("-d{}s", duration.as_secs()),
        "--latency",
        &format!("http://127.0.0.1:{PORT}/"),
    ]))
    .context("wrk failed")?;
    parse_wrk(&out).with_context(|| format!("could not read wrk's output:\n{out}"))
}

/// CPU seconds (user + system) a process has used, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or_default();
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 (utime, stime) are at 11 and 12 after the comm.
    (ticks(11) + ticks(12)) / 100.0
}

fn start_nginx(dir: &Path) -> anyhow::Result<Child> {
    std::fs::create_dir_all(dir)?;
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes 1;\nerror_log stderr warn;\npid {d}/nginx.pid;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  keepalive_requests 1000000;\n\
               client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               server {{ listen 127.0.0.1:{PORT}; location / {{ return 200 \"hello from nginx\\n\"; }} }}\n}}\n",
            d = dir.display()
        ),
    )?;
    let nginx = which("nginx").context("nginx is not installed (cargo xtask setup --test-deps)")?;
    let child = Child::spawn(
        Command::new(nginx)
            .args(["-e", "stderr", "-p"])
            .arg(dir)
            .arg("-c")
            .arg(&conf)
            .args(["-g", "daemon off;"]),
    )?;
    wait_port(PORT, "nginx")?;
    Ok(child)
}

fn with_agent(
    agent: &Path,
    dir: &Path,
    duration: Duration,
    connections: u32,
    export: bool,
) -> anyhow::Result<(WrkResult, AgentResult)> {
    let ready = dir.join("ready");
    let _ = std::fs::remove_file(&ready);
    let mut cmd = Command::new(agent);
    if export {
        cmd.args([
            "run",
            "--collector",
            &format!("http://127.0.0.1:{}", COLLECTOR_PORTS[0]),
        ]);
    } else {
        cmd.arg("capture");
    }
    let mut proc = Child::spawn(
        cmd.args(["--quiet", "--port", &PORT.to_string(), "--ready-file"])
            .arg(&ready)
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    )?;
    wait_file(&ready, "the agent")?;
    let cpu_before = cpu_seconds(proc.0.id());
    let result = wrk(duration, connections);
    let cpu_s = cpu_seconds(proc.0.id()) - cpu_before;
    proc.terminate();
    let mut stdout = String::new();
    if let Some(mut s) = proc.0.stdout.take() {
        use std::io::Read as _;
        s.read_to_string(&mut stdout)?;
    }
    let stats: serde_json::Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .with_context(|| format!("no stats from the agent: {stdout}"))?;
    let n = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0);
    Ok((
        result?,
        AgentResult {
            events: n(&stats["agent"]["events"]),
            lost: n(&stats["kernel"]["events_lost"]),
            cpu_s,
            exchanges: n(&stats["parsers"]["exchanges"]),
            exported: n(&stats["parsers"]["export"]["exported"]),
            dropped: n(&stats["parsers"]["export"]["dropped"]),
        },
    ))
}

/// Bytes `dd` copies one at a time: two syscalls each.
const DD_BYTES: u64 = 2_000_000;

/// Seconds `dd bs=1 count=DD_BYTES` takes.
fn dd() -> anyhow::Result<f64> {
    let started = std::time::Instant::now();
    let status = Command::new("dd")
        .args(["if=/dev/zero", "of=/dev/null", "bs=1"])
        .arg(format!("count={DD_BYTES}"))
        .stderr(Stdio::null())
        .status()
        .context("running dd")?;
    if !status.success() {
        bail!("dd failed: {status}");
    }
    Ok(started.elapsed().as_secs_f64())
}

/// The tax on the node's other work: `dd` without and with `tangle-agent
/// capture` watching every process, alternating, `rounds` times.
pub fn node_tax(rounds: u32) -> anyhow::Result<()> {
    if !is_root() {
        bail!("the benchmark loads eBPF programs: run it as root");
    }
    let agent = build_agent()?;
    let dir = root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let ready = dir.join("ready");
    eprintln!(
        "bench: dd if=/dev/zero of=/dev/null bs=1 count={DD_BYTES} ({} syscalls, no socket), \
         without and with `tangle-agent capture` on the whole node, {rounds} rounds",
        2 * DD_BYTES
    );
    println!("| round | baseline s | with agent s | ratio | added per syscall |");
    println!("| --- | --- | --- | --- | --- |");
    let (mut ratios, mut added) = (vec![], vec![]);
    for round in 1..=rounds {
        let base = dd()?;
        let _ = std::fs::remove_file(&ready);
        let mut proc = Child::spawn(
            Command::new(&agent)
                .args(["capture", "--quiet", "--ready-file"])
                .arg(&ready)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )?;
        wait_file(&ready, "the agent")?;
        let with = dd();
        proc.terminate();
        let with = with?;
        let ns = (with - base) / (2 * DD_BYTES) as f64 * 1e9;
        ratios.push(with / base);
        added.push(ns);
        println!(
            "| {round} | {base:.3} | {with:.3} | {:.2} | {ns:.0} ns |",
            with / base
        );
    }
    println!(
        "\nmedian of {rounds}: dd takes {:.2}x as long with the agent attached, {:.0} ns added to \
         each read and write of a process that never touches a socket",
        median(ratios),
        median(added)
    );
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Starts `tangle-collector` on [`COLLECTOR_PORTS`].
fn start_collector(dir: &Path) -> anyhow::Result<Child> {
    let collector = build_collector()?;
    let [grpc, http, api] = COLLECTOR_PORTS;
    let child = Child::spawn(
        Command::new(collector)
            .arg("--data-dir")
            .arg(dir.join("collector"))
            .args(["--otlp-grpc", &format!("127.0.0.1:{grpc}")])
            .args(["--otlp-http", &format!("127.0.0.1:{http}")])
            .args(["--http", &format!("127.0.0.1:{api}")])
            .stderr(Stdio::null()),
    )?;
    wait_port(api, "the collector")?;
    Ok(child)
}

pub fn run(duration: Duration, connections: u32, rounds: u32, export: bool) -> anyhow::Result<()> {
    if !is_root() {
        bail!("the benchmark loads eBPF programs: run it as root");
    }
    if which("wrk").is_none() {
        bail!("wrk is not installed (cargo xtask setup --test-deps)");
    }
    let agent = build_agent()?;
    let dir = root().join("target/bench");
    let _nginx = start_nginx(&dir)?;
    let collector = if export {
        Some(start_collector(&dir)?)
    } else {
        None
    };
    eprintln!(
        "bench: wrk -t1 -c{connections} -d{}s against nginx on loopback, {rounds} rounds, agent {}",
        duration.as_secs(),
        if export {
            "`run` (parse, link, export to a local collector)"
        } else {
            "`capture`"
        }
    );
    println!(
        "| round | baseline req/s | with agent req/s | ratio | baseline p99 | with agent p99 | p99 ratio | events/s | lost | agent CPU |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let (mut tput, mut p99, mut added, mut eps, mut cpu) = (vec![], vec![], vec![], vec![], vec![]);
    let (mut xps, mut exported, mut dropped, mut collector_cpu) = (vec![], vec![], vec![], vec![]);
    for round in 1..=rounds {
        let base = wrk(duration, connections)?;
        let collector_before = collector.as_ref().map_or(0.0, |c| cpu_seconds(c.0.id()));
        let (with, a) = with_agent(&agent, &dir, duration, connections, export)?;
        let collector_s =
            collector.as_ref().map_or(0.0, |c| cpu_seconds(c.0.id())) - collector_before;
        let secs = duration.as_secs_f64();
        let round_tput = with.requests_per_s / base.requests_per_s;
        let round_p99 = with.p99_latency_us / base.p99_latency_us;
        let (round_eps, round_cpu) = (a.events / secs, a.cpu_s / secs * 100.0);
        tput.push(round_tput);
        p99.push(round_p99);
        // Per request: the extra serial time each request costs the server.
        added.push(1e6 / with.requests_per_s - 1e6 / base.requests_per_s);
        eps.push(round_eps);
        cpu.push(round_cpu);
        xps.push(a.exchanges / secs);
        exported.push(a.exported);
        dropped.push(a.dropped);
        collector_cpu.push(collector_s / secs * 100.0);
        println!(
            "| {round} | {:.0} | {:.0} | {:.3} | {:.0} us | {:.0} us | {:.3} | {:.0} | {} | {:.1}% |",
            base.requests_per_s,
            with.requests_per_s,
            round_tput,
            base.p99_latency_us,
            with.p99_latency_us,
            round_p99,
            round_eps,
            a.lost,
            round_cpu
        );
    }
    println!(
        "\nmedian of {rounds}: throughput ratio {:.3}, p99 latency ratio {:.3}, \
         added server time per request {:.2} us, {:.0} events/s handled, agent CPU {:.1}% of a core",
        median(tput),
        median(p99),
        median(added),
        median(eps),
        median(cpu)
    );
    if export {
        println!(
            "pipeline: {:.0} exchanges/s parsed, {:.0} spans exported and {:.0} dropped per round \
             (median), collector CPU {:.1}% of a core",
            median(xps),
            median(exported),
            median(dropped),
            median(collector_cpu)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_output() {
        let out = "Running 1s test @ http://127.0.0.1:18090/\n  1 threads and 50 connections\n  \
                   Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   441.13us  100.00us   2.00ms   90.00%\n  \
                   Latency Distribution\n     50%  400.00us\n     75%  450.00us\n     90%  500.00us\n     99%    1.23ms\n  \
                   113281 requests in 1.00s, 18.00MB read\nRequests/sec: 113281.57\nTransfer/sec:     18.00MB\n";
        let r = parse_wrk(out).unwrap();
        assert_eq!(r.requests_per_s, 113281.57);
        assert_eq!(r.p99_latency_us, 1230.0);
        assert_eq!(r.mean_latency_us, 441.13);
        assert!(parse_wrk("garbage").is_none());
    }
}
