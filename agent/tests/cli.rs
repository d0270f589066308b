//! `tangle-agent` as a user runs it: the binary, its output, its errors.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // a panic here is a failed test

mod support;

use std::process::Command;

use support::*;

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tangle-agent"))
}

#[test]
fn help_lists_capture_and_filters() {
    let out = agent().args(["capture", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--json",
        "--pid",
        "--cgroup",
        "--port",
        "--netns",
        "--capture-size",
        "--duration",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
}

#[test]
fn bad_options_are_clear_errors() {
    let out = agent()
        .args(["capture", "--port", "banana"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--port"));
    if ebpf_skip_reason().is_some() {
        return; // the next check needs to get as far as loading
    }
    let out = agent()
        .args(["capture", "--capture-size", "0", "--duration", "1s"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("capture size 0 is not in 1..=8192"), "{err}");
}

/// `run`'s configuration: checked before anything loads, errors that name
/// the file and the field; `check-config` prints it (a token masked).
#[test]
fn config_errors_name_the_file_and_field() {
    let dir = std::env::temp_dir().join(format!("tangle-cli-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let typo = write("typo.toml", "[export]\nendpont = \"http://c:4317\"\n");
    let good = write(
        "good.toml",
        "[export]\nendpoint = \"http://c:4317\"\ntoken = \"s3cret-value\"\n[metrics]\nlisten = \"127.0.0.1:9465\"\n",
    );
    let no_token = write(
        "nofile.toml",
        &format!("[export]\ntoken_file = \"{}/absent\"\n", dir.display()),
    );
    for (args, wanted) in [
        (vec!["check-config", typo.to_str().unwrap()], "endpont"),
        (vec!["run", "--config", typo.to_str().unwrap()], "endpont"),
        (
            vec!["run", "--config", "/nonexistent/agent.toml"],
            "/nonexistent/agent.toml",
        ),
        (vec!["run", "--collector", "c:4317"], "http://"),
        (vec!["check-config", no_token.to_str().unwrap()], "absent"),
    ] {
        let out = agent().args(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(wanted), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let out = agent()
        .args(["check-config", good.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("endpoint = \"http://c:4317\""),
        "{printed}"
    );
    assert!(
        !printed.contains("s3cret-value"),
        "the token is not printed"
    );
    let _ = std::fs::remove_dir_all(&dir);
    // The example shipped beside the agent stays valid.
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/agent.example.toml");
    let out = agent().args(["check-config", example]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Without privileges the agent says why it cannot run, and fails.
#[test]
fn unprivileged_run_says_why() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut cmd = if root {
        let Some(setpriv) = which("setpriv") else {
            skip(
                "unprivileged_run_says_why",
                "`setpriv` (util-linux) is not installed",
            );
            return;
        };
        let mut c = Command::new(setpriv);
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ]);
        c.arg(env!("CARGO_BIN_EXE_tangle-agent"));
        c
    } else {
        agent()
    };
    let out = cmd.args(["capture", "--duration", "1s"]).output().unwrap();
    assert!(!out.status.success(), "must fail without privileges");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not allowed to load eBPF programs"),
        "unclear error: {err}"
    );
}

/// JSON lines, with a pid filter: only the server's side of the connection.
#[test]
fn json_lines_with_pid_filter() {
    let name = "json_lines_with_pid_filter";
    if require(name, &["curl", "python3"]).is_none() {
        return;
    }
    let port = free_port();
    let server = http_server(port);
    let pid = server.pid().to_string();
    let (agent, ready) = start_agent(&[
        "capture",
        "--json",
        "--duration",
        "8s",
        "--port",
        &port.to_string(),
        "--pid",
        &pid,
    ]);
    for _ in 0..2 {
        curl(&format!("http://127.0.0.1:{port}/"), &[]);
    }
    let out = agent.wait_with_output().unwrap();
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let of = |t: &str| lines.iter().filter(|l| l["type"] == t).collect::<Vec<_>>();
    let opens = of("open");
    assert_eq!(
        opens.len(),
        2,
        "two connections, server side only: {opens:#?}"
    );
    for open in &opens {
        assert_eq!(open["pid"], server.pid());
        assert_eq!(open["role"], "server");
        assert_eq!(open["local"], format!("127.0.0.1:{port}"));
    }
    let requests: Vec<_> = of("data")
        .into_iter()
        .filter(|d| d["direction"] == "ingress")
        .collect();
    assert_eq!(requests.len(), 2);
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(requests[0]["data"].as_str().unwrap())
        .unwrap();
    assert!(bytes.starts_with(b"GET / HTTP/1.1\r\n"));
    assert_eq!(requests[0]["len"], bytes.len());
    assert_eq!(of("close").len(), 2, "{lines:#?}");
    let stats = of("stats");
    let last = stats.last().expect("a final stats line");
    assert_eq!(last["kernel"]["events_lost"], 0);
    assert_eq!(last["agent"]["decode_errors"], 0);
    let _ = std::fs::remove_file(&ready);
}

/// `tangle-agent exchanges`: live traffic into exchanges, seen from both
/// ends, with nothing secret in the output.
#[test]
fn live_exchanges_from_http_and_redis() {
    let name = "live_exchanges_from_http_and_redis";
    if require(name, &["curl", "python3", "redis-server", "redis-cli"]).is_none() {
        return;
    }
    let (http_port, redis_port) = (free_port(), free_port());
    let _http = http_server(http_port);
    let _redis = redis_server(redis_port);
    // No port filter: two servers; the agent's own traffic is never tracked.
    let (agent, ready) = start_agent(&["exchanges", "--json", "--duration", "6s"]);
    curl(
        &format!("http://127.0.0.1:{http_port}/missing/42"),
        &["Authorization: Bearer live-secret"],
    );
    for cmd in [vec!["set", "greeting", "hello"], vec!["get", "greeting"]] {
        let ok = Command::new("redis-cli")
            .args(["-p", &redis_port.to_string()])
            .args(&cmd)
            .status()
            .unwrap();
        assert!(ok.success());
    }
    let out = agent.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains("live-secret"), "a secret reached the output");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ports = [http_port.to_string(), redis_port.to_string()];
    let ours = |l: &serde_json::Value| {
        ["local", "remote"].iter().any(|k| {
            l[k].as_str()
                .is_some_and(|a| ports.iter().any(|p| a.ends_with(&format!(":{p}"))))
        })
    };
    let seen = |process: &str, role: &str, op: &str| {
        lines.iter().any(|l| {
            l["type"] == "exchange"
                && ours(l)
                // The executable's file name: python3 may be python3.11.
                && l["process"].as_str().is_some_and(|p| p.starts_with(process))
                && l["role"] == role
                && l["operation"] == op
        })
    };
    assert!(seen("curl", "client", "GET /missing/{id}"), "{text}");
    assert!(seen("python3", "server", "GET /missing/{id}"), "{text}");
    // Other tests run meanwhile: pick this test's call by its server's address.
    let server = format!("127.0.0.1:{http_port}");
    let http = lines
        .iter()
        .find(|l| l["process"] == "curl" && l["remote"] == server.as_str())
        .unwrap();
    assert_eq!(http["status"]["code"], "404");
    assert_eq!(http["operation"], "GET /missing/{id}");
    for op in ["redis SET", "redis GET"] {
        assert!(seen("redis-cli", "client", op), "{op}: {text}");
        assert!(seen("redis-server", "server", op), "{op}: {text}");
    }
    let stats = lines
        .iter()
        .rev()
        .find(|l| l["type"] == "stats")
        .expect("stats");
    for proto in ["http1", "redis"] {
        assert_eq!(
            stats["parsers"]["protocols"][proto]["parse_errors"], 0,
            "{stats}"
        );
    }
    let _ = std::fs::remove_file(&ready);
}
