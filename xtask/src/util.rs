//! Helpers shared by the tasks.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// The workspace root (xtask's parent folder).
pub fn root() -> PathBuf {
    let xtask = Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask.parent().unwrap_or(xtask).to_owned()
}

pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(root());
    c
}

/// Runs a command, failing with its name if it fails.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// Runs a command and returns its stdout, or None if it fails to run or fails.
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// Why eBPF programs cannot be loaded here, if they cannot.
pub fn ebpf_unavailable() -> Option<String> {
    if !is_root() {
        return Some("not root".into());
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Some("no kernel BTF at /sys/kernel/btf/vmlinux".into());
    }
    let tracepoint = "events/sock/sock_send_length";
    if !["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .any(|t| Path::new(t).join(tracepoint).exists())
    {
        return Some(
            "no tracepoint sock:sock_send_length (Linux 6.3 or later needed), or tracefs not mounted"
                .into(),
        );
    }
    None
}

/// Builds the release agent; returns the binary's path.
pub fn build_agent() -> anyhow::Result<PathBuf> {
    run(cargo().args(["build", "--release", "-p", "tangle-agent"]))
        .context("building the agent failed; did `cargo xtask setup` run?")?;
    Ok(root().join("target/release/tangle-agent"))
}

/// Builds the release collector; returns the binary's path.
pub fn build_collector() -> anyhow::Result<PathBuf> {
    run(cargo().args(["build", "--release", "-p", "tangle-collector"]))
        .context("building the collector failed")?;
    Ok(root().join("target/release/tangle-collector"))
}

/// A child process stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Child(pub std::process::Child);

impl Child {
    pub fn spawn(cmd: &mut Command) -> anyhow::Result<Self> {
        Ok(Self(
            cmd.spawn()
                .with_context(|| format!("could not start {cmd:?}"))?,
        ))
    }

    /// Its standard output, if it was piped (once).
    pub fn stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.0.stdout.take()
    }

    pub fn terminate(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .stderr(std::process::Stdio::null())
            .status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(30));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Waits until a TCP port on loopback accepts connections.
pub fn wait_port(port: u16, what: &str) -> anyhow::Result<()> {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    bail!("{what} did not start listening on port {port}")
}

/// Waits until a file exists (the agent's --ready-file).
pub fn wait_file(path: &Path, what: &str) -> anyhow::Result<()> {
    for _ in 0..600 {
        if path.exists() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    bail!("{what} did not become ready within 30 s")
}
