//! Shared helpers for tests that load the real eBPF programs.
#![allow(dead_code)]

pub mod mariadb;
pub mod otlp;
pub mod postgres;

use std::{
    io::{BufRead as _, BufReader},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tangle_agent::{
    capture::probe::{KernelStats, Probe, ProbeOptions},
    capture::ring::Reader,
    connections::{Connection, Sink},
};
use tangle_common::{ConnEvent, DataHeader, Direction, Role};

/// Why this machine cannot run eBPF tests, if it cannot.
pub fn ebpf_skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root: loading eBPF programs needs root".into());
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Some("the kernel has no BTF at /sys/kernel/btf/vmlinux".into());
    }
    None
}

/// Says loudly why a test is skipped; in CI (which runs as root with every
/// tool installed) a skip is a failure, so nothing passes silently there.
pub fn skip(test: &str, reason: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{test} cannot run in CI: {reason}");
    }
    eprintln!("SKIPPED {test}: {reason}");
    append_line("TANGLE_SKIP_LOG", &format!("{test}: {reason}"));
}

/// Appends `line` to the file the environment variable `var` names, if set.
fn append_line(var: &str, line: &str) {
    use std::io::Write as _;
    if let Some(log) = std::env::var_os(var)
        && let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
    {
        let _ = writeln!(f, "{line}");
    }
}

/// A measurement a test reports (libtest hides a passing test's output;
/// `cargo xtask test` prints these at the end).
pub fn report(test: &str, what: &str) {
    eprintln!("REPORT {test}: {what}");
    append_line("TANGLE_REPORT_LOG", &format!("{test}: {what}"));
}

/// `Some(())` if the machine can load eBPF and has `tools`; else prints why.
pub fn require(test: &str, tools: &[&str]) -> Option<()> {
    if let Some(reason) = ebpf_skip_reason() {
        skip(test, &reason);
        return None;
    }
    for tool in tools {
        if which(tool).is_none() {
            skip(
                test,
                &format!("`{tool}` is not installed (run `cargo xtask setup --test-deps`)"),
            );
            return None;
        }
    }
    Some(())
}

pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// A port free now, below the ephemeral range (32768 and up): one from
/// `127.0.0.1:0` could be taken by any outgoing connection (a flood test's,
/// say) between this call and the server's bind. Each call of a test
/// process gets another.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let start = std::process::id().wrapping_mul(7919) % SPAN;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < SPAN, "no free port below the ephemeral range");
        let port = u16::try_from(LOW + (start + n) % SPAN).unwrap();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// An event copied out of the ring buffer.
#[derive(Clone, Debug)]
pub enum Owned {
    Open(Connection, ConnEvent),
    Close(Option<Connection>, ConnEvent),
    Data(Option<Connection>, DataHeader, Vec<u8>),
}

#[derive(Default)]
struct Collect(Vec<Owned>);

impl Sink for Collect {
    type State = ();
    fn open(&mut self, conn: &Connection, _: &mut (), ev: &ConnEvent) {
        self.0.push(Owned::Open(conn.clone(), *ev));
    }
    fn close(&mut self, conn: Option<(Connection, ())>, ev: &ConnEvent) {
        self.0.push(Owned::Close(conn.map(|(c, ())| c), *ev));
    }
    fn data(&mut self, conn: Option<(&Connection, &mut ())>, header: &DataHeader, bytes: &[u8]) {
        self.0.push(Owned::Data(
            conn.map(|(c, _)| c.clone()),
            *header,
            bytes.to_vec(),
        ));
    }
}

/// The real probe, loaded and attached, with everything it has sent so far.
pub struct Capture {
    pub probe: Probe,
    reader: Reader<()>,
    rt: tokio::runtime::Runtime,
    collected: Collect,
}

impl Capture {
    pub fn start(options: ProbeOptions) -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (probe, reader) = rt.block_on(async {
            let mut probe = Probe::load(options).expect("load and attach the eBPF programs");
            let ring = probe.take_events().unwrap();
            let reader = Reader::new(ring, 100_000, Default::default()).unwrap();
            (probe, reader)
        });
        Self {
            probe,
            reader,
            rt,
            collected: Collect::default(),
        }
    }

    /// Reads events until `done` holds for all of them or `timeout` passes.
    /// Returns whether `done` held.
    pub fn until(&mut self, timeout: Duration, done: impl Fn(&[Owned]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let Self {
            reader,
            rt,
            collected,
            ..
        } = self;
        rt.block_on(async {
            loop {
                if done(&collected.0) {
                    return true;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return false;
                }
                let _ = tokio::time::timeout(
                    left.min(Duration::from_millis(200)),
                    reader.next_batch(collected),
                )
                .await;
            }
        })
    }

    /// Reads until `n` connections have closed.
    pub fn until_closes(&mut self, n: usize, timeout: Duration) -> bool {
        self.until(timeout, |ev| {
            ev.iter().filter(|e| matches!(e, Owned::Close(..))).count() >= n
        })
    }

    /// Reads for `d` whatever comes.
    pub fn settle(&mut self, d: Duration) {
        self.until(d, |_| false);
    }

    pub fn events(&self) -> &[Owned] {
        &self.collected.0
    }

    pub fn kernel_stats(&self) -> KernelStats {
        self.probe.stats().unwrap()
    }

    pub fn opens(&self) -> Vec<&Connection> {
        self.events()
            .iter()
            .filter_map(|e| {
                if let Owned::Open(c, _) = e {
                    Some(c)
                } else {
                    None
                }
            })
            .collect()
    }

    pub fn closes(&self) -> Vec<&ConnEvent> {
        self.events()
            .iter()
            .filter_map(|e| {
                if let Owned::Close(_, ev) = e {
                    Some(ev)
                } else {
                    None
                }
            })
            .collect()
    }

    /// Data events of one connection in one direction, in time order.
    pub fn data(&self, conn_id: u64, dir: Direction) -> Vec<(&DataHeader, &[u8])> {
        let mut v: Vec<_> = self
            .events()
            .iter()
            .filter_map(|e| match e {
                Owned::Data(_, h, b) if h.conn_id == conn_id && h.direction == dir as u8 => {
                    Some((h, b.as_slice()))
                }
                _ => None,
            })
            .collect();
        v.sort_by_key(|(h, _)| h.ts_ns);
        v
    }

    /// The captured bytes of one direction of a connection, concatenated.
    pub fn stream(&self, conn_id: u64, dir: Direction) -> Vec<u8> {
        self.data(conn_id, dir)
            .into_iter()
            .flat_map(|(_, b)| b.to_vec())
            .collect()
    }

    pub fn conn_of(&self, pid: u32, role: Role) -> Option<&Connection> {
        self.opens()
            .into_iter()
            .find(|c| c.pid == pid && c.role == role)
    }
}

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Proc {
    /// Starts `cmd` and waits until it prints a line containing `ready`.
    pub fn spawn_ready(cmd: &mut Command, ready: &str) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        loop {
            match lines.next() {
                Some(Ok(l)) if l.contains(ready) => break,
                Some(Ok(_)) => {}
                other => panic!("{cmd:?} exited before it was ready: {other:?}"),
            }
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self(child)
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    /// SIGTERM first, so a server (nginx) stops its own children; then SIGKILL.
    fn drop(&mut self) {
        // SAFETY: signals our own child, whose pid we still hold (not yet reaped).
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `f` until it holds (a server's port open, say) or panics after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, f: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts `tangle-agent ARGS --ready-file FILE`, stdout piped; returns once
/// its programs are attached, with the ready file (the caller removes it).
pub fn start_agent(args: &[&str]) -> (Child, PathBuf) {
    static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let ready = std::env::temp_dir().join(format!("tangle-ready-{}-{n}", std::process::id()));
    let _ = std::fs::remove_file(&ready);
    let agent = Command::new(env!("CARGO_BIN_EXE_tangle-agent"))
        .args(args)
        .arg("--ready-file")
        .arg(&ready)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the agent to attach", Duration::from_secs(30), || {
        ready.exists()
    });
    (agent, ready)
}

/// `curl` GET of `url` with extra `headers`; asserts it succeeded.
pub fn curl(url: &str, headers: &[&str]) {
    let mut c = Command::new("curl");
    c.args(["-sS", "-o", "/dev/null"]);
    for h in headers {
        c.args(["-H", h]);
    }
    let ok = c.arg(url).status().unwrap();
    assert!(ok.success(), "curl {url}");
}

/// Python's `http.server` on 127.0.0.1:`port`, once it serves.
pub fn http_server(port: u16) -> Proc {
    Proc::spawn_ready(
        Command::new("python3").args([
            "-u",
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ]),
        "Serving HTTP",
    )
}

/// A throwaway redis-server on 127.0.0.1:`port` (no persistence).
pub fn redis_server(port: u16) -> Proc {
    Proc::spawn_ready(
        Command::new("redis-server").args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]),
        "Ready to accept connections",
    )
}

/// The cgroup v2 mount, or None after saying why `test` skips.
pub fn cgroup2_root_or_skip(test: &str) -> Option<PathBuf> {
    let root = tangle_agent::capture::probe::cgroup2_root();
    if root.is_none() {
        skip(test, "no cgroup v2 hierarchy is mounted");
    }
    root
}

pub fn python() -> Command {
    let mut c = Command::new("python3");
    c.arg("-u").arg(fixture("peer.py"));
    c
}

/// The test pattern of `peer.py`.
pub fn pattern(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i % 251) as u8).collect()
}

/// Held by tests that run an agent without a filter or flood the machine:
/// within one test binary they take turns, so one test's load is not in
/// another's capture.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A request's number as a word of letters (1 -> `a`, 27 -> `aa`): a path
/// segment that names the request and that route templating keeps (it
/// replaces numbers, which is what identifiers usually are).
pub fn item_word(mut i: u32) -> String {
    let mut w = Vec::new();
    while i > 0 {
        i -= 1;
        w.push(b'a' + (i % 26) as u8);
        i /= 26;
    }
    w.reverse();
    String::from_utf8(w).unwrap()
}

/// The request number of a word [`item_word`] made.
pub fn item_number(w: &str) -> Option<u32> {
    if w.is_empty() || !w.bytes().all(|c| c.is_ascii_lowercase()) {
        return None;
    }
    w.bytes().try_fold(0u32, |n, c| {
        n.checked_mul(26)?.checked_add(u32::from(c - b'a') + 1)
    })
}

/// A process's resident memory, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// One sample of `name` (with its labels, if any) on a Prometheus text page.
pub fn sample(page: &str, name: &str) -> Option<u64> {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// The agent's (or any) metrics page on 127.0.0.1:`port`.
pub fn scrape(port: u16) -> String {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            &format!("http://127.0.0.1:{port}/metrics"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "metrics endpoint answers");
    String::from_utf8(out.stdout).unwrap()
}

/// An nginx configuration answering `200 ok PATH` on both loopbacks.
fn nginx_conf(dir: &std::path::Path, port: u16) -> std::path::PathBuf {
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes 1;\nerror_log stderr warn;\npid {dir}/nginx.pid;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {dir}/body;\n\
               proxy_temp_path {dir}/proxy;\n  fastcgi_temp_path {dir}/fastcgi;\n\
               uwsgi_temp_path {dir}/uwsgi;\n  scgi_temp_path {dir}/scgi;\n\
               keepalive_requests 1000;\n\
               server {{\n    listen 127.0.0.1:{port};\n    listen [::1]:{port};\n\
                 location / {{ return 200 \"ok $uri\\n\"; }}\n  }}\n}}\n",
            dir = dir.display()
        ),
    )
    .unwrap();
    conf
}

/// Starts nginx on both loopbacks; waits until it accepts connections.
pub fn start_nginx(port: u16) -> (Proc, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("tangle-nginx-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = nginx_conf(&dir, port);
    let nginx = which("nginx").unwrap();
    let child = Command::new(nginx)
        .args(["-e", "stderr", "-p"])
        .arg(&dir)
        .arg("-c")
        .arg(&conf)
        .args(["-g", "daemon off;"])
        .spawn()
        .unwrap();
    wait_for("nginx to listen", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    (Proc(child), dir)
}
