//! `cargo xtask images`: the agent's and the collector's container images,
//! built with podman FROM scratch (no base image can be pulled). Each image
//! is a root filesystem of its own: the binary, the shared libraries `ldd`
//! says it loads, and the dynamic loader, at their own paths; nothing else.
//!
//! The test run checks them too ([`check`]): the images are built, each
//! one's file system is exported and the binaries are run from it with
//! `chroot` (no container runtime can run here), the collector serving its
//! health page and the shipped configurations accepted by both.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::util::{Child, is_root, output, root, run, wait_port, which};

/// An image: its binary, and the Containerfile under `deploy/images/`.
pub struct Image {
    pub binary: &'static str,
    containerfile: &'static str,
}

pub const IMAGES: [Image; 2] = [
    Image {
        binary: "tangle-agent",
        containerfile: "agent.Containerfile",
    },
    Image {
        binary: "tangle-collector",
        containerfile: "collector.Containerfile",
    },
];

/// The files `binary` loads (`ldd`): its libraries and the dynamic loader.
fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = output(Command::new("ldd").arg(binary))
        .with_context(|| format!("ldd {} failed", binary.display()))?;
    let mut libs = Vec::new();
    for line in out.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x...)"; the vDSO has no file.
        let path = match line.split_once("=>") {
            Some((_, after)) => after.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(path));
        }
    }
    if libs.is_empty() {
        bail!("ldd found no libraries for {}", binary.display());
    }
    Ok(libs)
}

/// Lays out `binary`'s root filesystem in `context/rootfs`: the binary at
/// `/`, each library at its own path (symbolic links followed).
fn stage(binary: &Path, context: &Path) -> anyhow::Result<()> {
    let rootfs = context.join("rootfs");
    let _ = std::fs::remove_dir_all(&rootfs);
    std::fs::create_dir_all(&rootfs)?;
    let name = binary.file_name().context("a binary's name")?;
    std::fs::copy(binary, rootfs.join(name))
        .with_context(|| format!("copying {}", binary.display()))?;
    for lib in shared_libraries(binary)? {
        let at = rootfs.join(lib.strip_prefix("/").unwrap_or(&lib));
        if let Some(dir) = at.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::copy(&lib, &at).with_context(|| format!("copying {}", lib.display()))?;
    }
    Ok(())
}

/// Builds both images from the binaries in `bin_dir`, tagged `tag`;
/// returns the images' names.
pub fn build(bin_dir: &Path, tag: &str) -> anyhow::Result<Vec<String>> {
    let context = |image: &Image| root().join("target/image").join(image.binary);
    for image in &IMAGES {
        stage(&bin_dir.join(image.binary), &context(image))?;
    }
    if which("podman").is_none() {
        let how: Vec<String> = IMAGES
            .iter()
            .map(|i| {
                format!(
                    "  docker build --tag {}:{tag} --file deploy/images/{} {}",
                    i.binary,
                    i.containerfile,
                    context(i).display()
                )
            })
            .collect();
        bail!(
            "podman is not installed (apt-get install podman); the build contexts are laid \
             out, and docker builds them the same way:\n{}",
            how.join("\n")
        );
    }
    let mut names = Vec::new();
    for image in &IMAGES {
        let context = context(image);
        let name = format!("{}:{tag}", image.binary);
        run(Command::new("podman")
            .args(["build", "--quiet", "--tag", &name, "--file"])
            .arg(root().join("deploy/images").join(image.containerfile))
            .arg(&context))
        .with_context(|| format!("podman build of {name} failed"))?;
        eprintln!("images: built {name}");
        names.push(name);
    }
    Ok(names)
}

/// Exports `image`'s file system into `dir` (a container is created, never run).
fn export(image: &str, dir: &Path) -> anyhow::Result<()> {
    let id = output(Command::new("podman").args(["create", image]))
        .with_context(|| format!("podman create {image} failed"))?;
    let id = id.trim().lines().last().unwrap_or_default().to_owned();
    let tar = dir.with_extension("tar");
    let exported = run(Command::new("podman")
        .args(["export", "--output"])
        .arg(&tar)
        .arg(&id));
    let _ = Command::new("podman").args(["rm", &id]).output();
    exported.with_context(|| format!("podman export of {image} failed"))?;
    remove_unmounted(dir)?;
    std::fs::create_dir_all(dir)?;
    run(Command::new("tar").arg("-xf").arg(&tar).arg("-C").arg(dir))?;
    let _ = std::fs::remove_file(&tar);
    Ok(())
}

/// Removes `dir`, unless something is still mounted under it (the host's
/// /proc or /sys lent to a root filesystem): never a walk into those.
fn remove_unmounted(dir: &Path) -> anyhow::Result<()> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let dir_text = dir.to_string_lossy();
    if let Some(line) = mounts.lines().find(|l| {
        l.split(' ')
            .nth(4)
            .is_some_and(|at| at.starts_with(&*dir_text))
    }) {
        bail!(
            "not removing {}: still mounted there: {line}",
            dir.display()
        );
    }
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

/// Runs `args` in `rootfs` with chroot; returns its standard output.
fn in_rootfs(rootfs: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("chroot")
        .arg(rootfs)
        .args(args)
        .output()
        .with_context(|| format!("chroot {} {args:?}", rootfs.display()))?;
    if !out.status.success() {
        bail!(
            "{args:?} in the image failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The images built from the binaries `cargo test` built, exported, and
/// their binaries run from their own file systems: what the test run
/// checks. Skipped (said so) without root or podman.
pub fn check() -> anyhow::Result<()> {
    if !is_root() {
        println!("SKIPPED container images check: chroot needs root");
        return Ok(());
    }
    if which("podman").is_none() {
        println!("SKIPPED container images check: podman is not installed");
        return Ok(());
    }
    let names = build(&root().join("target/debug"), "test")?;
    let work = root().join("target/image/exported");
    std::fs::create_dir_all(&work)?;
    for (image, name) in IMAGES.iter().zip(&names) {
        let rootfs = work.join(image.binary);
        export(name, &rootfs)?;
        let entry = format!("/{}", image.binary);
        let version = in_rootfs(&rootfs, &[&entry, "--version"])?;
        if !version.starts_with(image.binary) {
            bail!("{name}: `--version` said {version:?}");
        }
        // The shipped configuration, as the ConfigMap mounts it.
        let short = image.binary.trim_start_matches("tangle-");
        let etc = rootfs.join("etc/tangle");
        std::fs::create_dir_all(&etc)?;
        std::fs::copy(
            root().join(format!("deploy/base/{short}.toml")),
            etc.join(format!("{short}.toml")),
        )?;
        let config = format!("/etc/tangle/{short}.toml");
        let checked = if image.binary == "tangle-agent" {
            // The token file the Secret mounts.
            let secrets = rootfs.join("var/run/secrets/tangle");
            std::fs::create_dir_all(&secrets)?;
            std::fs::write(secrets.join("token"), "image-check-token\n")?;
            in_rootfs(&rootfs, &[&entry, "check-config", &config])?
        } else {
            let secrets = rootfs.join("etc/tangle/token");
            std::fs::create_dir_all(&secrets)?;
            std::fs::write(secrets.join("token"), "image-check-token\n")?;
            in_rootfs(&rootfs, &[&entry, "--config", &config, "check-config"])?
        };
        if checked.is_empty() {
            bail!("{name}: check-config printed nothing");
        }
        if image.binary == "tangle-collector" {
            serve_from(&rootfs, &entry, &config)?;
        } else {
            capture_from(&rootfs, &entry)?;
        }
        eprintln!("images: {name} runs from its own file system");
    }
    for name in &names {
        let _ = Command::new("podman").args(["rmi", name]).output();
    }
    remove_unmounted(&work)?;
    println!(
        "tests: the container images built, and their binaries ran from the images' own file systems"
    );
    Ok(())
}

/// The collector started from the image's file system answers its health
/// page.
fn serve_from(rootfs: &Path, entry: &str, config: &str) -> anyhow::Result<()> {
    const PORTS: [u16; 3] = [19517, 19518, 19564];
    let [grpc, http, api] = PORTS;
    std::fs::create_dir_all(rootfs.join("var/lib/tangle"))?;
    let _collector = Child::spawn(
        Command::new("chroot")
            .arg(rootfs)
            .args([entry, "--config", config, "--data-dir", "/var/lib/tangle"])
            .args(["--otlp-grpc", &format!("127.0.0.1:{grpc}")])
            .args(["--otlp-http", &format!("127.0.0.1:{http}")])
            .args(["--http", &format!("127.0.0.1:{api}")]),
    )?;
    wait_port(api, "the collector in the image")?;
    let health = output(Command::new("curl").args([
        "-sf",
        "--max-time",
        "5",
        &format!("http://127.0.0.1:{api}/healthz"),
    ]))
    .context("the collector in the image did not answer /healthz")?;
    if health.trim().is_empty() {
        bail!("the collector in the image answered /healthz with nothing");
    }
    Ok(())
}

/// The agent started from the image's file system, with the host's /proc
/// and /sys lent to it (as the DaemonSet lends them), loads and attaches
/// its programs and captures. The mounts are made in a mount namespace of
/// the check's own: they end with it, however the check ends.
fn capture_from(rootfs: &Path, entry: &str) -> anyhow::Result<()> {
    for dir in ["proc", "sys"] {
        std::fs::create_dir_all(rootfs.join(dir))?;
    }
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(
            "mount --rbind /proc \"$1/proc\" && mount --rbind /sys \"$1/sys\" && \
             exec chroot \"$1\" \"$2\" capture --quiet --duration 2s",
        )
        .arg("sh")
        .arg(rootfs)
        .arg(entry)
        .output()
        .context("unshare")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !stdout.contains("\"kernel\"") {
        bail!(
            "the agent in the image did not capture: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
