//! `cargo xtask setup`: what a fresh machine needs to build and test Tangle.
//! Every step checks first and does nothing when already done.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

use crate::util::{self, is_root, output, which};

/// bpf-linker's version known to work with the nightly's LLVM (EBPF-NOTES.md).
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages the tests and benchmarks use, with a program (or file) that shows each is there.
const TEST_PACKAGES: &[(&str, &str)] = &[
    ("curl", "curl"),
    ("nginx-light", "nginx"),
    ("wrk", "wrk"),
    ("python3", "python3"),
    ("iproute2", "ip"),
    ("util-linux", "setpriv"),
    ("tshark", "tshark"),
    ("redis-server", "redis-server"),
    ("redis-tools", "redis-cli"),
    ("prometheus", "promtool"),
    ("postgresql", "pg_ctlcluster"),
    (
        "python3-psycopg2",
        "/usr/lib/python3/dist-packages/psycopg2/__init__.py",
    ),
    ("mariadb-server", "mariadbd"),
    ("mariadb-client", "mariadb"),
    ("nodejs", "node"),
    ("default-jdk-headless", "java"),
    ("nftables", "nft"),
    ("openssl", "openssl"),
    ("podman", "podman"),
    // The coupling map's browser test (collector/tests/web.rs).
    ("chromium", "chromium"),
    ("npm", "npm"),
];

fn run_step(name: &str, f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
    eprintln!("setup: {name} ...");
    f().with_context(|| format!("setup step `{name}` failed"))?;
    eprintln!("setup: {name}: ok");
    Ok(())
}

pub fn run(test_deps: bool) -> anyhow::Result<()> {
    run_step("nightly toolchain", nightly)?;
    run_step("rust-src for nightly", || {
        util::run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))
    })?;
    run_step("bpf-linker", bpf_linker)?;
    if test_deps {
        run_step("Debian packages for tests", debian_packages)?;
        run_step("Python drivers of the example shop", python_packages)?;
        run_step("Python tools of the deploy/ checks", deploy_tools)?;
        run_step("Playwright for the browser test", browser_tools)?;
    }
    eprintln!("setup: done");
    Ok(())
}

fn nightly() -> anyhow::Result<()> {
    if which("rustup").is_none() {
        bail!("rustup is not installed; Tangle's eBPF build needs rustup's nightly toolchain");
    }
    if output(Command::new("rustc").arg("+nightly").arg("--version")).is_some() {
        return Ok(());
    }
    util::run(Command::new("rustup").args([
        "toolchain",
        "install",
        "nightly",
        "--profile",
        "minimal",
    ]))
    .context("could not install the nightly toolchain (no network to rustup's servers?)")
}

/// The nightly's own libLLVM and its major version, e.g. (path, 22).
fn nightly_llvm() -> anyhow::Result<(PathBuf, u32)> {
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .context("`rustc +nightly --print sysroot` failed")?;
    let lib = PathBuf::from(sysroot.trim()).join("lib");
    for entry in std::fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        // libLLVM.so.22.1-rust-1.97.0-nightly
        if let Some(rest) = name.strip_prefix("libLLVM.so.")
            && rest.contains("-rust-")
        {
            let major = rest.split('.').next().and_then(|m| m.parse().ok());
            if let Some(major) = major {
                return Ok((path, major));
            }
        }
    }
    bail!(
        "no libLLVM.so.*-rust-* in {}: is the nightly toolchain complete?",
        lib.display()
    )
}

fn bpf_linker() -> anyhow::Result<()> {
    if let Some(v) = output(Command::new("bpf-linker").arg("--version")) {
        eprintln!("setup: found {}", v.trim());
        return Ok(());
    }
    let (llvm, major) = nightly_llvm()?;
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    // bpf-linker links against this folder's libLLVM and finds it there at run time.
    let prefix = cargo_home.join("tangle-llvm");
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    let soname = lib.join(llvm.file_name().context("libLLVM path has no file name")?);
    for link in [soname, lib.join("libLLVM.so")] {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&llvm, &link)
            .with_context(|| format!("linking {} to {}", link.display(), llvm.display()))?;
    }
    eprintln!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against the nightly's LLVM {major} (about a minute)"
    );
    util::run(
        Command::new("cargo")
            .args([
                "+nightly",
                "install",
                "--force",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
            ])
            .env("LLVM_PREFIX", &prefix),
    )
    .context("building bpf-linker failed")?;
    output(Command::new("bpf-linker").arg("--version"))
        .context("bpf-linker was installed but does not run (is ~/.cargo/bin on PATH?)")?;
    Ok(())
}

/// What the example shop needs (`cargo xtask demo`): its servers and
/// runtimes, and `ip` for `--port-range`.
pub const SHOP_PACKAGES: &[(&str, &str)] = &[
    ("python3", "python3"),
    ("postgresql", "pg_ctlcluster"),
    ("redis-server", "redis-server"),
    ("default-jdk-headless", "java"),
    ("nodejs", "node"),
    ("iproute2", "ip"),
];

/// playwright-core (npm, the version `collector/tests/web/package-lock.json`
/// pins), which drives Debian's Chromium in the coupling map's test.
pub fn browser_tools() -> anyhow::Result<()> {
    let dir = util::root().join("collector/tests/web");
    if dir
        .join("node_modules/playwright-core/package.json")
        .is_file()
    {
        return Ok(());
    }
    if which("npm").is_none() {
        bail!("npm is not installed (Debian: npm) and the browser test needs playwright-core");
    }
    // playwright-core needs Node.js 20 or later (Debian 12's own is 18).
    let version = output(Command::new("node").arg("--version")).unwrap_or_default();
    let major: u32 = version
        .trim()
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if major < 20 {
        bail!(
            "the browser test's playwright-core needs Node.js 20 or later, this is {}: \
             install a newer one (NodeSource, or Debian 13's)",
            version.trim()
        );
    }
    util::run(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir),
    )
}

/// The PostgreSQL and Redis drivers the example shop's services use: from
/// PyPI where `python3` has pip and may install (a pyenv or venv Python),
/// else Debian's (`python3-psycopg`, `python3-redis`) for Debian's Python,
/// which refuses pip installs (PEP 668).
pub fn python_packages() -> anyhow::Result<()> {
    let importable = || {
        Command::new("python3")
            .args(["-c", "import psycopg, redis"])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if importable() {
        return Ok(());
    }
    let pip_may = Command::new("python3")
        .args(["-c", "import pip"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
        && !externally_managed();
    if pip_may {
        eprintln!("setup: installing psycopg and redis from PyPI");
        util::run(Command::new("python3").args([
            "-m",
            "pip",
            "install",
            "-q",
            "psycopg[binary]==3.3.9",
            "redis==8.1.0",
        ]))?;
    } else {
        install_debian(&["python3-psycopg", "python3-redis"])?;
    }
    if !importable() {
        bail!("python3 cannot import psycopg and redis, even after installing them");
    }
    Ok(())
}

/// What `deploy/check.py` and the capability test import (PyYAML, the
/// Kubernetes schemas), from `deploy/requirements.txt`; kubectl itself is
/// not packaged by Debian (its `kubernetes-client` does not install here).
fn deploy_tools() -> anyhow::Result<()> {
    let importable = || {
        Command::new("python3")
            .args(["-c", "import yaml, kubernetes_validate"])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !importable() {
        let has_pip = Command::new("python3")
            .args(["-m", "pip", "--version"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !has_pip {
            install_debian(&["python3-pip"])?;
        }
        eprintln!("setup: installing deploy/requirements.txt from PyPI");
        let mut pip = Command::new("python3");
        pip.args(["-m", "pip", "install", "-q", "-r"])
            .arg(util::root().join("deploy/requirements.txt"));
        // Debian's own python3 refuses pip (PEP 668) unless told: this is a
        // test machine, set up as root.
        if externally_managed() {
            pip.arg("--break-system-packages");
        }
        util::run(&mut pip)?;
    }
    if which("kubectl").is_none() {
        eprintln!(
            "setup: kubectl is not installed: the deploy/ checks need it (kustomize v5; \
             the Google Cloud CLI packages ship it)"
        );
    }
    Ok(())
}

/// Whether python3 is a distribution's, which refuses `pip install` (PEP 668).
fn externally_managed() -> bool {
    Command::new("python3")
        .args([
            "-c",
            "import sys, sysconfig, os; \
             sys.exit(not os.path.exists(os.path.join(sysconfig.get_path('stdlib'), 'EXTERNALLY-MANAGED')))",
        ])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The Debian packages the tests and benchmarks use.
pub fn debian_packages() -> anyhow::Result<()> {
    debian_packages_of(TEST_PACKAGES)
}

/// The Debian packages of `list` (package, a file it installs) that are missing.
pub fn debian_packages_of(list: &[(&str, &str)]) -> anyhow::Result<()> {
    let missing: Vec<&str> = list
        .iter()
        .filter(|(_, bin)| which(bin).is_none())
        .map(|(pkg, _)| *pkg)
        .collect();
    install_debian(&missing)
}

fn install_debian(missing: &[&str]) -> anyhow::Result<()> {
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing packages {missing:?}; as root run: apt-get install -y {}",
            missing.join(" ")
        );
    }
    eprintln!("setup: installing {}", missing.join(" "));
    util::run(Command::new("apt-get").args(["update", "-q"]))?;
    util::run(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}
