//! `cargo xtask`: Tangle's developer tasks.
// JSON values index without panicking (a missing key is null), and the
// medians taken are of non-empty runs.
#![allow(clippy::indexing_slicing)]

mod bench;
mod browser;
mod demo;
mod images;
mod setup;
mod util;

use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Tangle's developer tasks: set-up, build, demo, tests, benchmarks, images")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building eBPF needs (nightly rust-src, bpf-linker); idempotent.
    Setup {
        /// Also install what the tests and benchmarks use: Debian packages
        /// (servers, clients, podman, promtool...), the shop's Python
        /// drivers, and deploy/requirements.txt (PyYAML, kubernetes-validate).
        #[arg(long)]
        test_deps: bool,
    },
    /// Build the agent (and its embedded eBPF programs) in release mode.
    Build,
    /// Run the local demo: the example shop (examples/shop: nine services,
    /// PostgreSQL, Redis) watched by the agent, in three phases (as it is;
    /// payments calling fraud; tax failing), then the map and the coupling
    /// report. As root; installs the shop's Debian packages (PostgreSQL,
    /// Redis, a JDK, Node) and Python drivers if missing.
    Demo {
        /// Requests in the first phase (half as many in each of the others).
        #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(20..))]
        requests: u32,
        /// Requests in flight at once.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
        concurrency: u32,
        /// Compare the collector's map, chains, databases and findings with
        /// examples/shop/truth.json (the truth of these three phases), and
        /// fail on any difference.
        #[arg(long)]
        check: bool,
        /// Runs, one after the other (with --check, all must agree with the truth).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        runs: u32,
        /// Run the shop in a network namespace of its own (`ip netns`) whose
        /// ephemeral ports are only these, e.g. 40000-40049: ports reused
        /// under pressure. Calls that find no free port are real faults, so
        /// --check then does not require every closure up before tax fails.
        #[arg(long, value_parser = port_range)]
        port_range: Option<(u16, u16)>,
    },
    /// Build the agent's and the collector's container images with podman,
    /// FROM scratch (release binaries, each with the libraries it loads):
    /// `tangle-agent:TAG` and `tangle-collector:TAG`. Push them with
    /// `podman push` (docs/kubernetes.md).
    Images {
        /// The images' tag.
        #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
        tag: String,
        /// Instead: build test images from the debug binaries (`cargo
        /// build`), export their file systems and run the binaries from
        /// them (chroot), as the test run does.
        #[arg(long)]
        check: bool,
    },
    /// Run the test suite (eBPF tests need root; they say so when skipped).
    Test {
        /// Extra arguments for `cargo test` (e.g. `-p tangle-agent --test linking`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Measure what Tangle costs: the node's other work (`dd bs=1` with and
    /// without the agent), the capture (wrk against nginx) and the whole
    /// pipeline (agent and collector), then one table of the figures
    /// against their goals.
    Bench {
        /// Length of each wrk run (capture and pipeline stages).
        #[arg(long, default_value = "10s", value_parser = humantime_secs)]
        duration: Duration,
        /// Concurrent wrk connections (capture and pipeline stages).
        #[arg(long, default_value_t = 50)]
        connections: u32,
        /// Rounds of (baseline, with agent) pairs.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
        rounds: u32,
        /// Run only the pipeline stage (`tangle-agent run`: parse, link,
        /// export to a local `tangle-collector`).
        #[arg(long, alias = "export")]
        pipeline: bool,
        /// Run only the node-tax stage (`dd bs=1` with and without the agent).
        #[arg(long, conflicts_with = "pipeline")]
        node_tax: bool,
        /// Run only the capture stage (wrk against nginx with `tangle-agent
        /// capture`, then one round with the eBPF programs timed).
        #[arg(long, conflicts_with_all = ["pipeline", "node_tax"])]
        capture: bool,
    },
}

fn port_range(s: &str) -> Result<(u16, u16), String> {
    let (low, high) = s
        .split_once('-')
        .ok_or_else(|| format!("{s}: use LOW-HIGH, e.g. 40000-40049"))?;
    let parse = |p: &str| p.trim().parse::<u16>().map_err(|e| format!("{p}: {e}"));
    let (low, high) = (parse(low)?, parse(high)?);
    if low < 1024 || high < low {
        return Err(format!(
            "{s}: LOW must be at least 1024 and HIGH at least LOW"
        ));
    }
    // The shop listens on 18100-18432: its ports are not the clients'.
    if low <= 18432 && high >= 18100 {
        return Err(format!("{s}: overlaps the shop's own ports (18100-18432)"));
    }
    Ok((low, high))
}

fn humantime_secs(s: &str) -> Result<Duration, String> {
    let secs = s.strip_suffix('s').unwrap_or(s);
    secs.parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|e| format!("{s}: {e} (use e.g. 10s)"))
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Setup { test_deps } => setup::run(test_deps),
        Command::Build => util::build_agent().map(|_| ()),
        Command::Demo {
            requests,
            concurrency,
            check,
            runs,
            port_range,
        } => {
            for run in 1..=runs {
                if runs > 1 {
                    eprintln!("demo: run {run} of {runs}");
                }
                demo::run(&demo::Options {
                    release: true,
                    requests,
                    concurrency,
                    check,
                    port_range,
                })?;
            }
            Ok(())
        }
        Command::Images { check: true, .. } => {
            // The binaries `cargo test` would build.
            util::run(util::cargo().args([
                "build",
                "-p",
                "tangle-agent",
                "-p",
                "tangle-collector",
            ]))?;
            images::check()
        }
        Command::Images { tag, .. } => {
            util::build_agent()?;
            let collector = util::build_collector()?;
            let bin_dir = collector.parent().context("the release folder")?;
            for name in images::build(bin_dir, &tag)? {
                println!("{name}");
            }
            Ok(())
        }
        Command::Test { args } => test(&args),
        Command::Bench {
            duration,
            connections,
            rounds,
            pipeline,
            node_tax,
            capture,
        } => {
            let all = !(pipeline || node_tax || capture);
            bench::run(&bench::Plan {
                duration,
                connections,
                rounds,
                node_tax: all || node_tax,
                capture: all || capture,
                pipeline: all || pipeline,
            })
        }
    }
}

fn test(args: &[String]) -> anyhow::Result<()> {
    match util::ebpf_unavailable() {
        Some(reason) => eprintln!("xtask: eBPF tests will be SKIPPED: {reason}"),
        None => eprintln!("xtask: running as root with BTF: eBPF tests load the real programs"),
    }
    // Tests that skip write why here; libtest hides the output of passing tests.
    let skip_log = util::root().join("target/test-skips.log");
    let _ = std::fs::remove_file(&skip_log);
    // Measurements tests report (shares of link kinds, memory), shown at the end.
    let report_log = util::root().join("target/test-reports.log");
    let _ = std::fs::remove_file(&report_log);
    // Default members only: the eBPF crate builds for the BPF target alone.
    let mut cmd = util::cargo();
    // Every test binary runs, however many fail: one run shows them all.
    cmd.args(["test", "--no-fail-fast"])
        .args(args)
        .env("TANGLE_SKIP_LOG", &skip_log)
        .env("TANGLE_REPORT_LOG", &report_log)
        .stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn()?;
    let (mut passed, mut failed) = (0u64, 0u64);
    let stdout = child.stdout.take().context("cargo test's output")?;
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |word: &str| {
                rest.split(';')
                    .find_map(|part| {
                        part.trim()
                            .strip_suffix(word)?
                            .trim()
                            .rsplit(' ')
                            .next()?
                            .parse::<u64>()
                            .ok()
                    })
                    .unwrap_or(0)
            };
            passed += count("passed");
            failed += count("failed");
        }
    }
    let status = child.wait()?;
    for line in std::fs::read_to_string(&report_log)
        .unwrap_or_default()
        .lines()
    {
        println!("REPORT {line}");
    }
    let skips = std::fs::read_to_string(&skip_log).unwrap_or_default();
    for line in skips.lines() {
        println!("SKIPPED {line}");
    }
    let skipped = skips.lines().count() as u64;
    println!(
        "tests: {} passed, {failed} failed, {skipped} skipped",
        passed.saturating_sub(skipped)
    );
    if !status.success() {
        anyhow::bail!("cargo test failed ({status})");
    }
    if args.is_empty() {
        deploy_check()?;
        images::check().context("container images check")?;
        shop_check()?;
    }
    Ok(())
}

/// The Kubernetes install, rendered and checked without a cluster
/// (`deploy/check.py`: schemas, capabilities, configurations, rules and
/// their unit tests, dashboards).
fn deploy_check() -> anyhow::Result<()> {
    if util::which("kubectl").is_none() {
        println!("SKIPPED deploy/ checks: kubectl is not installed");
        return Ok(());
    }
    util::run(std::process::Command::new("python3").arg(util::root().join("deploy/check.py")))
        .context("deploy/check.py failed")?;
    println!("tests: the deploy/ checks passed");
    Ok(())
}

/// The end-to-end test: the example shop, watched by the agent and the
/// collector `cargo test` built, three runs in a row and one with ports
/// reused under pressure, each equal to its ground truth (and so to each
/// other).
fn shop_check() -> anyhow::Result<()> {
    if let Some(reason) = util::ebpf_unavailable() {
        println!("SKIPPED shop end-to-end check: {reason}");
        return Ok(());
    }
    // Three runs in a row, then one with local ports reused under pressure:
    // the shop in a namespace with 50 ephemeral ports, ~5,000 connections.
    let runs = [
        (10, None),
        (50, None),
        (50, None),
        (10, Some((40000, 40049))),
    ];
    for (run, (concurrency, port_range)) in runs.into_iter().enumerate() {
        eprintln!(
            "xtask: shop end-to-end check, run {} of {} ({concurrency} requests at a time{})",
            run + 1,
            runs.len(),
            if port_range.is_some() {
                ", 50 local ports"
            } else {
                ""
            }
        );
        demo::run(&demo::Options {
            release: false,
            requests: 200,
            concurrency,
            check: true,
            port_range,
        })
        .with_context(|| format!("shop end-to-end check, run {}", run + 1))?;
    }
    println!(
        "tests: the shop end-to-end check passed {} runs in a row",
        runs.len()
    );
    Ok(())
}
