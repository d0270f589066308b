//! Hostile traffic, as root with real processes and servers: statements
//! that once crashed the agent, messages written a byte at a time, an HPACK
//! flood, a flood of connections, a scanner of random paths. In each case
//! the agent lives, its counters say what it refused or forgot, its memory
//! stays under a stated bound, and the ordinary traffic sent meanwhile is
//! still reported, correctly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // a panic here is a failed test

mod support;

use std::{
    io::Write as _,
    process::{Command, Stdio},
    time::Duration,
};

use support::{otlp::*, *};

/// The agent's memory stays under this, whatever the traffic (its parsers
/// are given 64 MiB in these tests).
const AGENT_RSS_BOUND_KIB: u64 = 256 * 1024;

fn hostile() -> Command {
    let mut c = Command::new("python3");
    c.arg("-u").arg(fixture("hostile.py"));
    c
}

/// An agent configuration with a small parsing budget.
fn config(name: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("tangle-{name}-{}.toml", std::process::id()));
    std::fs::write(&path, "[parsing]\nmemory_mib = 64\nconnection_mib = 4\n").unwrap();
    path
}

/// Runs `f` while `tangle-agent run` (with its metrics on a port) exports to
/// a receiver; then a plain request to a Python server, which must arrive.
/// Returns the spans received, the agent's last metrics page, and its
/// largest resident memory seen.
fn with_agent(
    name: &str,
    extra: &[&str],
    f: impl FnOnce(u32, u16),
) -> (
    Vec<(String, opentelemetry_proto::tonic::trace::v1::Span)>,
    String,
    u64,
) {
    let (otlp_port, metrics_port, web_port) = (free_port(), free_port(), free_port());
    let received = receiver(otlp_port);
    let _web = http_server(web_port);
    let cfg = config(name);
    let listen = format!("127.0.0.1:{metrics_port}");
    let mut args = vec![
        "--config",
        cfg.to_str().unwrap(),
        "--metrics-listen",
        &listen,
        "--duration",
        "60s",
    ];
    args.extend_from_slice(extra);
    let (mut agent, ready) = run_agent(otlp_port, &args);
    let pid = agent.id();
    f(pid, metrics_port);
    let mut peak = rss_kib(pid);
    // Ordinary traffic after the hostile part: reported, correctly.
    curl(&format!("http://127.0.0.1:{web_port}/after/the/storm"), &[]);
    wait_for(
        "the ordinary call to be exported",
        Duration::from_secs(30),
        || {
            received.spans().iter().any(|(_, s)| {
                s.kind == 2 && attr(s, "url.path").as_deref() == Some("/after/the/storm")
            })
        },
    );
    peak = peak.max(rss_kib(pid));
    // The page is rendered once a second: wait for one that counts every
    // span received so far.
    let received_now = received.len() as u64;
    wait_for(
        "the metrics page to catch up",
        Duration::from_secs(10),
        || {
            sample(&scrape(metrics_port), "tangle_agent_spans_queued_total").unwrap_or(0)
                >= received_now
        },
    );
    let page = scrape(metrics_port);
    assert!(
        agent.try_wait().unwrap().is_none(),
        "the agent is still running"
    );
    let _ = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status();
    let out = agent.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the agent stopped cleanly: {}",
        out.status
    );
    let _ = std::fs::remove_file(ready);
    let _ = std::fs::remove_file(cfg);
    (received.spans(), page, peak)
}

/// Statements of more than 2 KB whose cut falls inside a multi-byte
/// character once crashed the agent's one capture thread: over real
/// PostgreSQL and MariaDB servers, they are exported (cut on a character,
/// literals masked), and the agent goes on exporting.
#[test]
fn long_non_ascii_statements_over_postgres_and_mariadb() {
    let name = "long_non_ascii_statements_over_postgres_and_mariadb";
    let _serial = serial();
    if require(name, &["curl", "python3", "setpriv"]).is_none() {
        return;
    }
    let Some(pg_bin) = postgres::bin_dir() else {
        skip(
            name,
            "PostgreSQL is not installed (Debian package postgresql)",
        );
        return;
    };
    if !mariadb::installed() {
        skip(
            name,
            "MariaDB is not installed (Debian packages mariadb-server, mariadb-client)",
        );
        return;
    }
    let password = "pg-Pass-for-hostile";
    let pg = postgres::start(&pg_bin, password);
    let my = mariadb::start();
    // 30 column names of 60 two-, three- or four-byte characters (names
    // are at most 64 characters; MariaDB's take three bytes at most), each
    // set shifted by a byte so that the 2 KB cut falls inside a character
    // whatever its width, and a literal that must never be exported. The
    // agent captures 8 KiB of each transfer: the whole statement.
    let statements = |chars: &[&str]| -> Vec<(Vec<String>, String)> {
        chars
            .iter()
            .flat_map(|ch| (0..ch.len()).map(move |shift| (ch, shift)))
            .enumerate()
            .map(|(i, (ch, shift))| {
                let names = (0..30)
                    .map(|n| format!("{}{n}{}", "x".repeat(shift), ch.repeat(60)))
                    .collect();
                (names, format!("secret-literal-{i}"))
            })
            .collect()
    };
    let (pg_statements, my_statements) = (statements(&["é", "€", "𝄞"]), statements(&["é", "€"]));
    let columns = |names: &[String], q: char| {
        names
            .iter()
            .map(|n| format!("1 AS {q}{n}{q}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (spans, page, peak) = with_agent(name, &["--capture-size", "8192"], |_, _| {
        for (names, secret) in &pg_statements {
            let sql = format!("SELECT '{secret}' AS s, {}", columns(names, '"'));
            let out = Command::new("psql")
                .env("PGPASSWORD", password)
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &pg.port.to_string(),
                    "-U",
                    "tangle",
                    "-d",
                    "postgres",
                    "-X",
                    "-q",
                    "-c",
                    &sql,
                ])
                .stdout(Stdio::null())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "psql: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        for (names, secret) in &my_statements {
            let sql = format!("SELECT '{secret}' AS s, {}", columns(names, '`'));
            let out = my.client(&sql).stdout(Stdio::null()).output().unwrap();
            assert!(
                out.status.success(),
                "mariadb: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    });
    assert!(peak < AGENT_RSS_BOUND_KIB, "agent RSS {peak} KiB");
    let everything = format!("{spans:?}");
    for (_, secret) in pg_statements.iter().chain(&my_statements) {
        assert!(
            !everything.contains(secret.as_str()),
            "{secret} was exported"
        );
    }
    for (system, sent) in [
        ("postgresql", pg_statements.len()),
        ("mysql", my_statements.len()),
    ] {
        let long: Vec<String> = spans
            .iter()
            .filter(|(_, s)| attr(s, "db.system.name").as_deref() == Some(system))
            .filter_map(|(_, s)| attr(s, "db.query.text"))
            .filter(|q| q.ends_with("..."))
            .collect();
        // Each statement seen from both ends (client and server).
        assert_eq!(
            long.len(),
            2 * sent,
            "{system}: the long statements, cut: {long:?}"
        );
        for q in &long {
            assert!(q.starts_with("SELECT ? AS s, ? AS "), "{system}: {q}");
            assert!(q.len() <= 2048 + 3);
        }
    }
    assert_eq!(
        sample(
            &page,
            "tangle_agent_parser_panics_total{protocol=\"postgres\"}"
        )
        .unwrap_or(0)
            + sample(
                &page,
                "tangle_agent_parser_panics_total{protocol=\"mysql\"}"
            )
            .unwrap_or(0),
        0,
        "no parser failed"
    );
    report(
        name,
        &format!(
            "2 KB+ statements of é, € and 𝄞 names over PostgreSQL and MariaDB: exported cut on \
             a character, literals masked; agent peak RSS {} MiB",
            peak / 1024
        ),
    );
}

/// Messages written a byte at a time (a 60 KiB HTTP head of short lines, a
/// Redis MSET of 3,000 keys) are read once, not again from their start with
/// every byte; an HPACK flood (a table size update to 1 GiB, 3 MiB of
/// indexed headers) is refused, and costs no more than the table's limit.
#[test]
fn byte_at_a_time_messages_and_an_hpack_flood() {
    let name = "byte_at_a_time_messages_and_an_hpack_flood";
    let _serial = serial();
    if require(name, &["curl", "python3", "redis-server", "nginx"]).is_none() {
        return;
    }
    let (redis_port, sink_port) = (free_port(), free_port());
    let _redis = redis_server(redis_port);
    let _sink = Proc::spawn_ready(
        hostile().args(["sink", &sink_port.to_string()]),
        "listening",
    );
    let slow_port = free_port();
    let _slow = Proc::spawn_ready(
        hostile().args(["http-sink", &slow_port.to_string()]),
        "listening",
    );
    let mut cpu = 0.0;
    let (spans, page, peak) = with_agent(name, &[], |pid, _| {
        let out = hostile()
            .args(["slow-http", &slow_port.to_string(), "60"])
            .output()
            .unwrap();
        assert!(out.status.success());
        let out = hostile()
            .args(["slow-redis", &redis_port.to_string(), "3000"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "+OK");
        let out = hostile()
            .args(["hpack-flood", &sink_port.to_string()])
            .output()
            .unwrap();
        assert!(out.status.success());
        cpu = cpu_seconds(pid);
    });
    assert!(peak < AGENT_RSS_BOUND_KIB, "agent RSS {peak} KiB");
    // The byte-at-a-time messages were parsed whole.
    assert!(
        spans
            .iter()
            .any(|(_, s)| s.kind == 2 && attr(s, "url.path").as_deref() == Some("/slow/item")),
        "the 60 KiB head written a byte at a time"
    );
    assert!(
        spans
            .iter()
            .any(|(_, s)| s.kind == 2 && attr(s, "db.operation.name").as_deref() == Some("MSET")),
        "the MSET written a byte at a time"
    );
    let h2_errors =
        sample(&page, "tangle_agent_parse_errors_total{protocol=\"http2\"}").unwrap_or(0);
    assert!(h2_errors >= 1, "the table size update was refused: {page}");
    report(
        name,
        &format!(
            "60 KiB HTTP head and a 3,000-key MSET a byte at a time, and an HPACK flood: parsed, \
             refused ({h2_errors} HTTP/2 errors); agent CPU {cpu:.1} s, peak RSS {} MiB",
            peak / 1024
        ),
    );
}

/// User and system CPU seconds of `pid` so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// 40,002 connections from one cgroup, held open, against an agent that
/// tracks 4,096: the least recently used are forgotten (counted, in the
/// kernel and in the agent), not the new ones, so the ordinary traffic
/// sent during the flood is reported.
#[test]
fn a_flood_of_connections_evicts_idle_ones_not_new_traffic() {
    let name = "a_flood_of_connections_evicts_idle_ones_not_new_traffic";
    let _serial = serial();
    if require(name, &["curl", "python3"]).is_none() {
        return;
    }
    let Some(cgroot) = cgroup2_root_or_skip(name) else {
        return;
    };
    // A process may hold 20,000 files here (and may not raise that): three
    // sinks and three flooders, 13,334 connections each.
    let ports = [free_port(), free_port(), free_port()];
    let _sinks: Vec<Proc> = ports
        .iter()
        .map(|p| Proc::spawn_ready(hostile().args(["sink", &p.to_string()]), "listening"))
        .collect();
    let cgroup = cgroot.join(format!("tangle-flood-{}", std::process::id()));
    std::fs::create_dir_all(&cgroup).unwrap();
    let web_port = free_port();
    let _web = http_server(web_port);
    let port_args: Vec<String> = ports.iter().map(u16::to_string).collect();
    let (spans, page, peak) = with_agent(name, &["--max-connections", "4096"], |_, metrics| {
        let mut floods: Vec<std::process::Child> = (0..3)
            .map(|_| {
                let f = hostile()
                    .args(["flood", "13334"])
                    .args(&port_args)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()
                    .unwrap();
                std::fs::write(cgroup.join("cgroup.procs"), f.id().to_string()).unwrap();
                f
            })
            .collect();
        for f in &mut floods {
            let mut line = String::new();
            std::io::BufRead::read_line(
                &mut std::io::BufReader::new(f.stdout.take().unwrap()),
                &mut line,
            )
            .unwrap();
            assert_eq!(line.trim(), "opened 13334");
        }
        // During the flood: an ordinary call, reported below.
        curl(
            &format!("http://127.0.0.1:{web_port}/during/the/flood"),
            &[],
        );
        wait_for(
            "the agent to count evictions",
            Duration::from_secs(20),
            || sample(&scrape(metrics), "tangle_agent_conns_evicted_total").unwrap_or(0) > 0,
        );
        for mut f in floods {
            let _ = f.stdin.take().map(|mut i| i.write_all(b""));
            let _ = f.kill();
            let _ = f.wait();
        }
    });
    let _ = std::fs::remove_dir(&cgroup);
    assert!(peak < AGENT_RSS_BOUND_KIB, "agent RSS {peak} KiB");
    let kernel = sample(&page, "tangle_agent_kernel_conns_evicted_total").unwrap_or(0);
    let user = sample(&page, "tangle_agent_conns_evicted_total").unwrap_or(0);
    assert!(kernel > 0, "the kernel table evicted: {page}");
    assert!(user > 0, "the agent's table evicted: {page}");
    let during = spans
        .iter()
        .filter(|(_, s)| attr(s, "url.path").as_deref() == Some("/during/the/flood"))
        .count();
    assert_eq!(during, 2, "the call made during the flood, from both ends");
    report(
        name,
        &format!(
            "40,002 connections held by one cgroup, 4,096 tracked: {kernel} evicted in the kernel, \
             {user} in the agent; the call made meanwhile exported from both ends; peak RSS {} MiB",
            peak / 1024
        ),
    );
}

/// A scanner hitting 100,000 random paths of one server, through the agent
/// and a real collector: the collector keeps 200 operations of that server
/// and folds the rest into `{other}` (counted), so its chains, its metric
/// series and its memory stay bounded, while another service's calls made
/// meanwhile keep their own names.
#[test]
fn a_scanner_of_random_paths_is_folded_not_kept() {
    let name = "a_scanner_of_random_paths_is_folded_not_kept";
    let _serial = serial();
    if require(name, &["curl", "python3", "nginx"]).is_none() {
        return;
    }
    let collector = InProcessCollector::start(name);
    let web_port = free_port();
    let (nginx, nginx_dir) = start_nginx(web_port);
    let shop_port = free_port();
    let _shop = http_server(shop_port);
    let metrics_port = free_port();
    let listen = format!("127.0.0.1:{metrics_port}");
    let (agent, ready) = run_agent(
        collector.grpc_port,
        &["--metrics-listen", &listen, "--duration", "120s"],
    );
    let pid = agent.id();
    let scanner = hostile()
        .args(["scan", &web_port.to_string(), "100000"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    for i in 1..=5 {
        curl(&format!("http://127.0.0.1:{shop_port}/orders/{i}"), &[]);
    }
    let out = scanner.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "scanned 100000"
    );
    for i in 6..=10 {
        curl(&format!("http://127.0.0.1:{shop_port}/orders/{i}"), &[]);
    }
    let agent_rss = rss_kib(pid);
    wait_for(
        "the collector to fold operations",
        Duration::from_secs(60),
        || {
            let page = collector.get("/metrics");
            sample(&page, "tangle_names_folded_total{kind=\"operation\"}").unwrap_or(0) > 90_000
        },
    );
    let _ = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status();
    assert!(agent.wait_with_output().unwrap().status.success());
    let _ = std::fs::remove_file(ready);
    drop(nginx);
    let _ = std::fs::remove_dir_all(nginx_dir);
    let page = collector.get("/metrics");
    let series = page.lines().filter(|l| !l.starts_with('#')).count();
    let chains: serde_json::Value = serde_json::from_str(&collector.get("/api/chains")).unwrap();
    let chains = chains["chains"].as_array().cloned().unwrap_or_default();
    let collector_rss = rss_kib(std::process::id());
    assert!(chains.len() < 1_000, "{} chains", chains.len());
    assert!(series < 20_000, "{series} metric series");
    assert!(agent_rss < AGENT_RSS_BOUND_KIB, "agent RSS {agent_rss} KiB");
    // The other service's calls keep their names.
    let shop_chain = chains.iter().find(|c| {
        c["hops"]
            .as_array()
            .is_some_and(|h| h.iter().any(|hop| hop["operation"] == "GET /orders/{id}"))
    });
    assert!(shop_chain.is_some(), "the shop's chain, by its name");
    let others = chains
        .iter()
        .filter(|c| c.to_string().contains("{other}"))
        .count();
    assert!(others >= 1, "the scan's excess is visible as {{other}}");
    report(
        name,
        &format!(
            "100,000 random paths through the agent to a collector: {} chains, {series} metric \
             series, {} operations folded into {{other}}; agent RSS {} MiB, test process (collector) RSS {} MiB",
            chains.len(),
            sample(&page, "tangle_names_folded_total{kind=\"operation\"}").unwrap_or(0),
            agent_rss / 1024,
            collector_rss / 1024
        ),
    );
}

/// `tangle-collector` run in this process, on ports of its own.
struct InProcessCollector {
    grpc_port: u16,
    http_port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    dir: std::path::PathBuf,
}

impl InProcessCollector {
    fn start(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("tangle-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (grpc_port, otlp_http, http_port) = (free_port(), free_port(), free_port());
        let config = tangle_collector::config::Config {
            otlp_grpc: ([127, 0, 0, 1], grpc_port).into(),
            otlp_http: ([127, 0, 0, 1], otlp_http).into(),
            http: ([127, 0, 0, 1], http_port).into(),
            data_dir: dir.clone(),
            trace_window_ms: 500,
            ..Default::default()
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(tangle_collector::server::run(config, async {
                let _ = stopped.await;
            }))
            .unwrap();
        });
        let c = Self {
            grpc_port,
            http_port,
            stop: Some(stop),
            thread: Some(thread),
            dir,
        };
        wait_for("the collector", Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", http_port)).is_ok()
        });
        c
    }

    fn get(&self, path: &str) -> String {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10"])
            .arg(format!("http://127.0.0.1:{}{path}", self.http_port))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for InProcessCollector {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
