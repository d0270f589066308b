//! The agent runs with exactly the capabilities deploy/'s DaemonSet grants
//! it: the capabilities are read from the rendered manifest (`kubectl
//! kustomize deploy/`), `tangle-agent run` is started as uid 0 with only
//! those (setpriv: bounding set, no inheritable or ambient ones,
//! no_new_privs as `allowPrivilegeEscalation: false` gives), and capture,
//! identity (`OTEL_SERVICE_NAME` of a server running as another user) and
//! export work; with any one of them fewer it fails at start, naming what
//! is missing.
//!
//! Not reproduced here: the runtime's seccomp profile, the read-only root
//! and the mounts (docs/kubernetes.md).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // a panic here is a failed test

mod support;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use support::{otlp::*, *};

/// Linux's capability numbers (linux/capability.h), by the name Kubernetes
/// gives them (without `CAP_`).
const CAPABILITIES: &[(&str, u32)] = &[
    ("CHOWN", 0),
    ("DAC_OVERRIDE", 1),
    ("DAC_READ_SEARCH", 2),
    ("FOWNER", 3),
    ("FSETID", 4),
    ("KILL", 5),
    ("SETGID", 6),
    ("SETUID", 7),
    ("SETPCAP", 8),
    ("LINUX_IMMUTABLE", 9),
    ("NET_BIND_SERVICE", 10),
    ("NET_BROADCAST", 11),
    ("NET_ADMIN", 12),
    ("NET_RAW", 13),
    ("IPC_LOCK", 14),
    ("IPC_OWNER", 15),
    ("SYS_MODULE", 16),
    ("SYS_RAWIO", 17),
    ("SYS_CHROOT", 18),
    ("SYS_PTRACE", 19),
    ("SYS_PACCT", 20),
    ("SYS_ADMIN", 21),
    ("SYS_BOOT", 22),
    ("SYS_NICE", 23),
    ("SYS_RESOURCE", 24),
    ("SYS_TIME", 25),
    ("SYS_TTY_CONFIG", 26),
    ("MKNOD", 27),
    ("LEASE", 28),
    ("AUDIT_WRITE", 29),
    ("AUDIT_CONTROL", 30),
    ("SETFCAP", 31),
    ("MAC_OVERRIDE", 32),
    ("MAC_ADMIN", 33),
    ("SYSLOG", 34),
    ("WAKE_ALARM", 35),
    ("BLOCK_SUSPEND", 36),
    ("AUDIT_READ", 37),
    ("PERFMON", 38),
    ("BPF", 39),
    ("CHECKPOINT_RESTORE", 40),
];

/// What the manifest says the agent keeps after attaching (the comment on
/// its capabilities; agent/src/privileges.rs `drop_after_attach`).
const KEPT_AFTER_ATTACH: &[&str] = &["SYS_PTRACE", "DAC_READ_SEARCH"];

/// The service name the traced server gives itself.
const SERVICE: &str = "deploy-test-shop";

/// The user the traced server runs as (nobody).
const OTHER_USER: u32 = 65534;

fn mask(caps: &[String]) -> u64 {
    caps.iter().fold(0, |m, c| {
        let n = CAPABILITIES
            .iter()
            .find(|(name, _)| name == c)
            .unwrap_or_else(|| panic!("unknown capability {c}"))
            .1;
        m | 1 << n
    })
}

fn names(mask: u64) -> Vec<&'static str> {
    CAPABILITIES
        .iter()
        .filter(|(_, n)| mask & (1 << n) != 0)
        .map(|(name, _)| *name)
        .collect()
}

/// The agent container of the DaemonSet `kubectl kustomize deploy/`
/// renders, as JSON; None after saying why the test skips.
fn agent_container(test: &str) -> Option<serde_json::Value> {
    if which("kubectl").is_none() {
        skip(
            test,
            "`kubectl` is not installed (its built-in kustomize renders deploy/: \
             https://kubernetes.io/docs/tasks/tools/)",
        );
        return None;
    }
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let rendered = Command::new("kubectl")
        .arg("kustomize")
        .arg(&deploy)
        .output()
        .unwrap();
    assert!(
        rendered.status.success(),
        "kubectl kustomize {}: {}",
        deploy.display(),
        String::from_utf8_lossy(&rendered.stderr)
    );
    // kustomize writes YAML only: PyYAML turns it into JSON.
    let mut python = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml\n\
             json.dump([d for d in yaml.safe_load_all(sys.stdin) if d], sys.stdout)",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        python
            .stdin
            .take()
            .unwrap()
            .write_all(&rendered.stdout)
            .unwrap();
    }
    let json = python.wait_with_output().unwrap();
    if !json.status.success() {
        let err = String::from_utf8_lossy(&json.stderr);
        if err.contains("No module named 'yaml'") {
            skip(
                test,
                "PyYAML is not installed for python3 (apt-get install python3-yaml, or \
                 pip install -r deploy/requirements.txt)",
            );
            return None;
        }
        panic!("YAML to JSON: {err}");
    }
    let objects: Vec<serde_json::Value> = serde_json::from_slice(&json.stdout).unwrap();
    let daemonsets: Vec<&serde_json::Value> = objects
        .iter()
        .filter(|o| o["kind"] == "DaemonSet")
        .collect();
    assert_eq!(daemonsets.len(), 1, "one DaemonSet in deploy/");
    let containers = daemonsets[0]["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    let agent: Vec<&serde_json::Value> = containers
        .iter()
        .filter(|c| c["image"].as_str().unwrap_or("").contains("tangle-agent"))
        .collect();
    assert_eq!(
        agent.len(),
        1,
        "one tangle-agent container: {containers:#?}"
    );
    Some(agent[0].clone())
}

/// The capabilities the container is granted (Kubernetes names, no
/// `CAP_`), after checking it asks for what this test reproduces: root,
/// every default capability dropped, no privilege escalation, not
/// privileged, and `tangle-agent run`.
fn granted(container: &serde_json::Value) -> Vec<String> {
    let sc = &container["securityContext"];
    assert_eq!(sc["runAsUser"], 0, "the agent runs as uid 0: {sc}");
    assert_ne!(sc["privileged"], true, "the agent is not privileged");
    assert_eq!(
        sc["allowPrivilegeEscalation"], false,
        "no privilege escalation: {sc}"
    );
    assert_eq!(
        sc["capabilities"]["drop"],
        serde_json::json!(["ALL"]),
        "the runtime's default capabilities are dropped: {sc}"
    );
    assert_eq!(
        container["args"][0], "run",
        "the container runs `tangle-agent run`"
    );
    let caps: Vec<String> = sc["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let c = c.as_str().unwrap().to_ascii_uppercase();
            c.strip_prefix("CAP_").unwrap_or(&c).to_owned()
        })
        .collect();
    assert!(!caps.is_empty(), "the agent is granted some capabilities");
    mask(&caps); // every name is a capability
    caps
}

/// A Python to run as another user: not one under root's home (pyenv's),
/// which that user cannot read.
fn world_python() -> PathBuf {
    let usr = Path::new("/usr/bin/python3");
    if usr.exists() {
        return usr.to_owned();
    }
    which("python3").unwrap()
}

/// One capability set of a process, from its /proc status text.
fn cap_field(status: &str, field: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap_or_else(|| panic!("no {field} in {status}"))
}

/// `tangle-agent run` started as uid 0 with exactly `caps`; killed when
/// dropped. Its output goes to files, read when it is done.
struct Agent {
    child: Child,
    dir: PathBuf,
}

impl Agent {
    fn start(caps: &[String], tag: &str, args: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!("tangle-deploy-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let bounding: Vec<String> = std::iter::once("-all".to_owned())
            .chain(caps.iter().map(|c| format!("+{}", c.to_ascii_lowercase())))
            .collect();
        // The shell records the capabilities it was given, then becomes the
        // agent (same process; a root exec keeps them: permitted and
        // effective become the bounding set, nothing inheritable).
        let child = Command::new(which("setpriv").unwrap())
            .arg(format!("--bounding-set={}", bounding.join(",")))
            .args([
                "--inh-caps=-all",
                "--ambient-caps=-all",
                "--no-new-privs",
                "--",
            ])
            .args([
                "sh",
                "-c",
                "grep '^Cap\\|^NoNewPrivs' /proc/self/status > \"$1\"; shift; exec \"$@\"",
                "sh",
            ])
            .arg(dir.join("caps-at-start"))
            .arg(env!("CARGO_BIN_EXE_tangle-agent"))
            .args(["run", "--json"])
            .args(args)
            .arg("--ready-file")
            .arg(dir.join("ready"))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("stdout")).unwrap())
            .stderr(std::fs::File::create(dir.join("stderr")).unwrap())
            .spawn()
            .unwrap();
        Self { child, dir }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }

    fn caps_at_start(&self) -> String {
        std::fs::read_to_string(self.dir.join("caps-at-start")).unwrap_or_default()
    }

    /// Waits until the agent has attached (its ready file), failing with
    /// its error output if it exits first or takes longer than `timeout`.
    fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.dir.join("ready").exists() {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "the agent exited ({status}) before attaching:\n{}",
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not attach within {timeout:?}:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its exit status, once it exits by itself within `timeout`.
    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not exit within {timeout:?}:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then its exit status (within 10 s).
    fn stop(&mut self) -> ExitStatus {
        // SAFETY: signals our own child, not yet reaped.
        unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) };
        self.wait_exit(Duration::from_secs(10))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn runs_with_exactly_the_daemonsets_capabilities() {
    let name = "runs_with_exactly_the_daemonsets_capabilities";
    if require(name, &["python3", "setpriv", "curl", "sh", "grep"]).is_none() {
        return;
    }
    let Some(container) = agent_container(name) else {
        return;
    };
    let caps = granted(&container);
    let _serial = serial();

    // The traced service: Python's HTTP server as another user, naming
    // itself in its environment (/proc/PID/environ, mode 0400 of that user:
    // CAP_DAC_READ_SEARCH), its argv[0] a name unlike its executable's, so
    // that the executable's name can only come from /proc/PID/exe
    // (ptrace-read access to another user's process: CAP_SYS_PTRACE).
    let (http_port, otlp_port) = (free_port(), free_port());
    let www = TempDir(std::env::temp_dir().join(format!("tangle-deploy-www-{http_port}")));
    std::fs::create_dir_all(&www.0).unwrap();
    std::fs::write(www.0.join("hello.txt"), "hello\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        let set =
            |p: &Path, mode| std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode));
        set(&www.0, 0o755).unwrap();
        set(&www.0.join("hello.txt"), 0o644).unwrap();
    }
    let python = world_python();
    let server = Proc::spawn_ready(
        Command::new(which("setpriv").unwrap())
            .args([
                &format!("--reuid={OTHER_USER}"),
                &format!("--regid={OTHER_USER}"),
                "--clear-groups",
                "--",
            ])
            .arg(&python)
            .args([
                "-c",
                "import os, sys; os.execv(sys.executable, ['shop-server'] + sys.argv[1:])",
                "-u",
                "-m",
                "http.server",
                &http_port.to_string(),
            ])
            .args(["--bind", "127.0.0.1", "--directory"])
            .arg(&www.0)
            .current_dir(&www.0)
            .env("OTEL_SERVICE_NAME", SERVICE),
        "Serving HTTP",
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("65534")),
        "the server runs as uid {OTHER_USER}"
    );

    let received = receiver(otlp_port);
    let collector = format!("http://127.0.0.1:{otlp_port}");
    let mut agent = Agent::start(
        &caps,
        "all",
        &[
            "--collector",
            &collector,
            "--port",
            &http_port.to_string(),
            "--duration",
            "120s",
        ],
    );
    agent.wait_ready(Duration::from_secs(30));

    // It started with exactly the DaemonSet's capabilities ...
    let at_start = agent.caps_at_start();
    let want = mask(&caps);
    for field in ["CapEff:", "CapPrm:", "CapBnd:"] {
        assert_eq!(
            cap_field(&at_start, field),
            want,
            "{field} at start is {:?}, the DaemonSet grants {caps:?}",
            names(cap_field(&at_start, field))
        );
    }
    for field in ["CapInh:", "CapAmb:"] {
        assert_eq!(cap_field(&at_start, field), 0, "{field} at start");
    }
    assert!(at_start.contains("NoNewPrivs:\t1"), "{at_start}");
    // ... and, attached, keeps only those the manifest says it keeps.
    let now = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).unwrap();
    let kept: Vec<String> = KEPT_AFTER_ATTACH.iter().map(|c| (*c).to_owned()).collect();
    assert_eq!(
        cap_field(&now, "CapEff:"),
        mask(&kept),
        "effective after attaching: {:?}",
        names(cap_field(&now, "CapEff:"))
    );
    assert_eq!(cap_field(&now, "CapPrm:"), mask(&kept));
    assert_eq!(
        cap_field(&now, "CapBnd:"),
        want,
        "the bounding set is the DaemonSet's"
    );

    for path in ["/hello.txt", "/missing"] {
        // curl exits 0 on a 404 too (no --fail).
        curl(&format!("http://127.0.0.1:{http_port}{path}"), &[]);
    }
    let server_spans = || {
        received
            .spans()
            .into_iter()
            .filter(|(_, s)| s.kind == 2)
            .collect::<Vec<_>>()
    };
    wait_for("the server's two spans", Duration::from_secs(20), || {
        server_spans().len() >= 2
    });
    let status = agent.stop();
    assert!(
        status.success(),
        "the agent stopped cleanly ({status}):\n{}",
        agent.stderr()
    );

    // Export: the spans reached the receiver. Identity: the server is named
    // by its own OTEL_SERVICE_NAME and its executable, read from another
    // user's /proc/PID/environ and /proc/PID/exe after the agent kept only
    // what the manifest says.
    // Capture: the HTTP exchanges are in them.
    let spans = server_spans();
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let resources = received.resources.lock().unwrap().clone();
    let resource = resources
        .get(SERVICE)
        .unwrap_or_else(|| panic!("no resource named {SERVICE}: {resources:#?}"));
    assert_eq!(resource["tangle.service.name.source"], "otel_env");
    // comm is `python3`, argv[0] `shop-server`: the file name is the link's.
    let exe = std::fs::canonicalize(&python).unwrap();
    assert_eq!(
        resource["process.executable.name"],
        exe.file_name().unwrap().to_string_lossy(),
        "the other user's /proc/PID/exe was read"
    );
    let mut seen = BTreeSet::new();
    for (service, s) in &spans {
        assert_eq!(service, SERVICE);
        assert_eq!(attr(s, "process.pid"), Some(server.pid().to_string()));
        assert_eq!(attr(s, "http.request.method").as_deref(), Some("GET"));
        assert_eq!(attr(s, "server.port"), Some(http_port.to_string()));
        seen.insert((
            attr(s, "url.path").unwrap_or_default(),
            attr(s, "http.response.status_code").unwrap_or_default(),
        ));
    }
    assert_eq!(
        seen,
        [
            ("/hello.txt".to_owned(), "200".to_owned()),
            ("/missing".to_owned(), "404".to_owned()),
        ]
        .into_iter()
        .collect()
    );
    report(
        name,
        &format!(
            "ran with {caps:?} (from the rendered DaemonSet), kept {:?} after attaching",
            names(mask(&kept))
        ),
    );
}

/// The capabilities an error message says are missing: the names after
/// "missing " up to the message's next ':' or '(', joined by " and ".
fn said_missing(error: &str) -> Option<Vec<String>> {
    let rest = &error[error.find("missing ")? + "missing ".len()..];
    let end = rest.find([':', '(']).unwrap_or(rest.len());
    Some(
        rest[..end]
            .split(" and ")
            .map(|s| s.trim().to_owned())
            .collect(),
    )
}

#[test]
fn one_capability_fewer_fails_naming_it() {
    let name = "one_capability_fewer_fails_naming_it";
    if require(name, &["python3", "setpriv", "sh", "grep"]).is_none() {
        return;
    }
    let Some(container) = agent_container(name) else {
        return;
    };
    let caps = granted(&container);
    let _serial = serial();
    // Nothing listens there: an agent that started anyway would only queue.
    let collector = format!("http://127.0.0.1:{}", free_port());
    for missing in &caps {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != missing).cloned().collect();
        let mut agent = Agent::start(
            &fewer,
            &format!("without-{}", missing.to_ascii_lowercase()),
            &["--collector", &collector, "--duration", "5s"],
        );
        let status = agent.wait_exit(Duration::from_secs(30));
        let stderr = agent.stderr();
        let error = stderr
            .lines()
            .find(|l| l.starts_with("tangle-agent: error:"))
            .unwrap_or_default();
        assert_eq!(
            cap_field(&agent.caps_at_start(), "CapEff:"),
            mask(&fewer),
            "started with {fewer:?}"
        );
        assert!(
            !status.success(),
            "without CAP_{missing} the agent exited {status}:\n{stderr}"
        );
        assert!(
            !agent.dir.join("ready").exists(),
            "without CAP_{missing} the agent attached"
        );
        assert_eq!(
            said_missing(error),
            Some(vec![format!("CAP_{missing}")]),
            "without CAP_{missing} the error names it, and only it:\n{stderr}"
        );
        report(name, &format!("without CAP_{missing}: {error}"));
    }
}

#[test]
fn said_missing_reads_both_messages() {
    assert_eq!(
        said_missing(
            "tangle-agent: error: not allowed to load eBPF programs: missing CAP_BPF and \
             CAP_PERFMON (run as root, or grant CAP_BPF and CAP_PERFMON; effective \
             capabilities here: 0x80004)"
        ),
        Some(vec!["CAP_BPF".to_owned(), "CAP_PERFMON".to_owned()])
    );
    assert_eq!(
        said_missing(
            "tangle-agent: error: missing CAP_SYS_PTRACE: naming the process behind each \
             connection reads other users' /proc/PID/exe"
        ),
        Some(vec!["CAP_SYS_PTRACE".to_owned()])
    );
    assert_eq!(said_missing("tangle-agent: error: no BTF"), None);
}
