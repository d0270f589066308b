//! `cargo xtask bench`: what Tangle costs, as ratios measured in the same
//! session. Three stages, each alternating runs without and with the agent:
//!
//! - node tax: `dd bs=1` copying /dev/zero to /dev/null (a read and a write
//!   per byte, no socket anywhere) with `tangle-agent capture` watching the
//!   whole node: what a process that never touches a socket pays;
//! - capture: wrk driving nginx on loopback with `tangle-agent capture`,
//!   then one round with the kernel timing each eBPF program, for the CPU
//!   each captured transfer costs;
//! - pipeline: the same load with `tangle-agent run` exporting to a local
//!   `tangle-collector` (parse, link, export, assemble).
//!
//! One table at the end gives each figure and its goal.

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
/// The shortest pipeline round: twice the collector's trace window.
const PIPELINE_MIN_ROUND: Duration = Duration::from_secs(20);
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
    /// Runs and run time of the send and receive programs (with
    /// `--program-stats`).
    transfer_runs: f64,
    transfer_run_ns: f64,
    /// The collector's spans received per CPU second over the second half
    /// of the load (with a collector): its steady state, once its trace
    /// window has filled and its memory is in use.
    collector_steady: f64,
}

/// What to measure.
#[derive(Clone, Copy)]
pub struct Plan {
    pub duration: Duration,
    pub connections: u32,
    pub rounds: u32,
    pub node_tax: bool,
    pub capture: bool,
    pub pipeline: bool,
}

/// One line of the summary: a figure and its goal.
struct Figure {
    stage: &'static str,
    what: &'static str,
    value: String,
    goal: &'static str,
    met: bool,
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

/// The collector's CPU seconds and spans received so far.
fn collector_sample(collector: &Child) -> (f64, f64) {
    let page = output(Command::new("curl").args([
        "-sf",
        &format!("http://127.0.0.1:{}/metrics", COLLECTOR_PORTS[2]),
    ]))
    .unwrap_or_default();
    let received = page
        .lines()
        .find_map(|l| l.strip_prefix("tangle_spans_received_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    (cpu_seconds(collector.0.id()), received)
}

fn with_agent(
    agent: &Path,
    dir: &Path,
    duration: Duration,
    connections: u32,
    collector: Option<&Child>,
    program_stats: bool,
) -> anyhow::Result<(WrkResult, AgentResult)> {
    let export = collector.is_some();
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
    if program_stats {
        cmd.arg("--program-stats");
    }
    let mut proc = Child::spawn(
        cmd.args(["--quiet", "--port", &PORT.to_string(), "--ready-file"])
            .arg(&ready)
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    )?;
    wait_file(&ready, "the agent")?;
    let cpu_before = cpu_seconds(proc.0.id());
    let (result, collector_steady) = std::thread::scope(|scope| {
        let steady = collector.map(|c| {
            scope.spawn(move || {
                std::thread::sleep(duration / 2);
                let (cpu_a, spans_a) = collector_sample(c);
                std::thread::sleep((duration / 2).saturating_sub(Duration::from_millis(500)));
                let (cpu_b, spans_b) = collector_sample(c);
                (spans_b - spans_a) / (cpu_b - cpu_a).max(1e-9)
            })
        });
        let result = wrk(duration, connections);
        (result, steady.and_then(|t| t.join().ok()).unwrap_or(0.0))
    });
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
    let transfer_programs = || {
        stats["programs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| matches!(p["program"].as_str(), Some("sock_send" | "sock_recv")))
    };
    Ok((
        result?,
        AgentResult {
            events: n(&stats["agent"]["events"]),
            lost: n(&stats["kernel"]["events_lost"]),
            cpu_s,
            exchanges: n(&stats["parsers"]["exchanges"]),
            exported: n(&stats["parsers"]["export"]["exported"]),
            dropped: n(&stats["parsers"]["export"]["dropped"]),
            transfer_runs: transfer_programs().map(|p| n(&p["runs"])).sum(),
            transfer_run_ns: transfer_programs().map(|p| n(&p["run_ns"])).sum(),
            collector_steady,
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
fn node_tax(agent: &Path, dir: &Path, rounds: u32) -> anyhow::Result<Vec<Figure>> {
    let ready = dir.join("ready");
    eprintln!(
        "bench: dd if=/dev/zero of=/dev/null bs=1 count={DD_BYTES} ({} syscalls, no socket), \
         without and with `tangle-agent capture` on the whole node, {rounds} rounds",
        2 * DD_BYTES
    );
    println!("| round | baseline s | with agent s | throughput ratio | added per syscall |");
    println!("| --- | --- | --- | --- | --- |");
    let (mut ratios, mut added) = (vec![], vec![]);
    for round in 1..=rounds {
        let base = dd()?;
        let _ = std::fs::remove_file(&ready);
        let mut proc = Child::spawn(
            Command::new(agent)
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
        ratios.push(base / with);
        added.push(ns);
        println!(
            "| {round} | {base:.3} | {with:.3} | {:.2} | {ns:.0} ns |",
            base / with
        );
    }
    let (ratio, added) = (median(ratios), median(added));
    println!(
        "\nmedian of {rounds}: dd runs at {ratio:.2}x its speed with the agent attached, \
         {added:.0} ns added to each read and write of a process that never touches a socket\n"
    );
    Ok(vec![Figure {
        stage: "node tax",
        what: "dd bs=1 throughput, with the agent / without",
        value: format!("{ratio:.2} ({added:.0} ns per syscall)"),
        goal: "≥ 0.95",
        met: ratio >= 0.95,
    }])
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

/// Medians of the wrk rounds of one stage.
#[derive(Default)]
struct Rounds {
    throughput: f64,
    agent_cpu_per_exchange_ns: f64,
    exchanges_per_s: f64,
    dropped: f64,
    collector_spans_per_core_s: f64,
    collector_steady_spans_per_core_s: f64,
}

/// wrk rounds without and with the agent (`capture`, or with `collector`
/// the whole pipeline), each pair's figures printed.
fn wrk_rounds(
    plan: &Plan,
    agent: &Path,
    dir: &Path,
    collector: Option<&Child>,
) -> anyhow::Result<Rounds> {
    let (duration, connections, rounds) = (plan.duration, plan.connections, plan.rounds);
    let export = collector.is_some();
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
        "| round | baseline req/s | with agent req/s | ratio | baseline p99 | with agent p99 | events/s | lost | agent CPU | exchanges/s | dropped | collector CPU | collector spans/s per core: round, second half |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let mut m: [Vec<f64>; 6] = Default::default();
    for round in 1..=rounds {
        let base = wrk(duration, connections)?;
        let collector_before = collector.map_or(0.0, |c| cpu_seconds(c.0.id()));
        let (with, a) = with_agent(agent, dir, duration, connections, collector, false)?;
        let collector_s = collector.map_or(0.0, |c| cpu_seconds(c.0.id())) - collector_before;
        let secs = duration.as_secs_f64();
        let ratio = with.requests_per_s / base.requests_per_s;
        println!(
            "| {round} | {:.0} | {:.0} | {ratio:.3} | {:.0} us | {:.0} us | {:.0} | {} | {:.1}% | {:.0} | {} | {:.1}% | {:.0}, {:.0} |",
            base.requests_per_s,
            with.requests_per_s,
            base.p99_latency_us,
            with.p99_latency_us,
            a.events / secs,
            a.lost,
            a.cpu_s / secs * 100.0,
            a.exchanges / secs,
            a.dropped,
            collector_s / secs * 100.0,
            a.exported / collector_s.max(1e-9),
            a.collector_steady,
        );
        m[0].push(ratio);
        m[1].push(a.cpu_s * 1e9 / a.exchanges.max(1.0));
        m[2].push(a.exchanges / secs);
        m[3].push(a.dropped);
        m[4].push(a.exported / collector_s.max(1e-9));
        m[5].push(a.collector_steady);
    }
    let [t, ex, xps, dropped, spc, steady] = m.map(median);
    println!();
    Ok(Rounds {
        throughput: t,
        agent_cpu_per_exchange_ns: ex,
        exchanges_per_s: xps,
        dropped,
        collector_spans_per_core_s: spc,
        collector_steady_spans_per_core_s: steady,
    })
}

/// The capture's cost: throughput rounds, then one round with the kernel
/// timing the programs (the timing itself costs a little; it is kept out
/// of the throughput figure).
fn capture(plan: &Plan, agent: &Path, dir: &Path) -> anyhow::Result<Vec<Figure>> {
    let r = wrk_rounds(plan, agent, dir, None)?;
    let (_, a) = with_agent(agent, dir, plan.duration, plan.connections, None, true)?;
    let kernel_ns = a.transfer_run_ns / a.transfer_runs.max(1.0);
    let user_ns = a.cpu_s * 1e9 / a.events.max(1.0);
    println!(
        "eBPF programs: {:.0} transfers timed, {kernel_ns:.0} ns each in the kernel; the agent \
         {user_ns:.0} ns of CPU per event\n",
        a.transfer_runs
    );
    Ok(vec![
        Figure {
            stage: "capture",
            what: "wrk → nginx throughput, with the agent / without",
            value: format!("{:.2}", r.throughput),
            goal: "≥ 0.9",
            met: r.throughput >= 0.9,
        },
        Figure {
            stage: "capture",
            what: "CPU per captured transfer: eBPF program + agent",
            value: format!(
                "{:.0} ns ({kernel_ns:.0} + {user_ns:.0})",
                kernel_ns + user_ns
            ),
            goal: "≤ 300 ns",
            met: kernel_ns + user_ns <= 300.0,
        },
    ])
}

/// The whole pipeline's cost.
fn pipeline(plan: &Plan, agent: &Path, dir: &Path) -> anyhow::Result<Vec<Figure>> {
    // The collector's steady state is measured over a round's second half:
    // past its trace window (8 s), once the spans it holds stop growing.
    let plan = &Plan {
        duration: plan.duration.max(PIPELINE_MIN_ROUND),
        ..*plan
    };
    let collector = start_collector(dir)?;
    let r = wrk_rounds(plan, agent, dir, Some(&collector))?;
    Ok(vec![
        Figure {
            stage: "pipeline",
            what: "wrk → nginx throughput, with agent and collector / without",
            value: format!("{:.2}", r.throughput),
            goal: "≥ 0.8",
            met: r.throughput >= 0.8,
        },
        Figure {
            stage: "pipeline",
            what: "agent CPU per exchange (capture, parse, link, encode, send)",
            value: format!("{:.2} µs", r.agent_cpu_per_exchange_ns / 1000.0),
            goal: "≤ 1 µs",
            met: r.agent_cpu_per_exchange_ns <= 1000.0,
        },
        Figure {
            stage: "pipeline",
            what: "collector spans per second per core, through its OTLP intake: steady (second half of a round)",
            value: format!(
                "{:.0} (whole round, filling its window: {:.0})",
                r.collector_steady_spans_per_core_s, r.collector_spans_per_core_s
            ),
            goal: "≥ 1,000,000",
            met: r.collector_steady_spans_per_core_s >= 1e6,
        },
        Figure {
            stage: "pipeline",
            what: "spans dropped per round",
            value: format!("{:.0} at {:.0} exchanges/s", r.dropped, r.exchanges_per_s),
            goal: "0 at 100,000/s",
            met: r.dropped == 0.0 && r.exchanges_per_s >= 100_000.0,
        },
    ])
}

pub fn run(plan: &Plan) -> anyhow::Result<()> {
    if !is_root() {
        bail!("the benchmark loads eBPF programs: run it as root");
    }
    if (plan.capture || plan.pipeline) && which("wrk").is_none() {
        bail!("wrk is not installed (cargo xtask setup --test-deps)");
    }
    let agent = build_agent()?;
    let dir = root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let mut figures = Vec::new();
    if plan.node_tax {
        figures.extend(node_tax(&agent, &dir, plan.rounds)?);
    }
    if plan.capture || plan.pipeline {
        let _nginx = start_nginx(&dir)?;
        if plan.capture {
            figures.extend(capture(plan, &agent, &dir)?);
        }
        if plan.pipeline {
            figures.extend(pipeline(plan, &agent, &dir)?);
        }
    }
    println!("| stage | figure | measured (median) | goal | met |");
    println!("| --- | --- | --- | --- | --- |");
    for f in &figures {
        let met = if f.met { "yes" } else { "no" };
        println!(
            "| {} | {} | {} | {} | {met} |",
            f.stage, f.what, f.value, f.goal
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
