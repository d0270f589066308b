use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let meta = cargo_metadata()?;
    let root = meta
        .lines()
        .find_map(|l| l.strip_prefix("ebpf_root="))
        .ok_or_else(|| anyhow!("cannot find the eBPF crate"))?
        .to_owned();
    aya_build::build_ebpf(
        [Package { name: "tangle-agent-ebpf", root_dir: &root, ..Default::default() }],
        Toolchain::default(),
    )
    .context("building the eBPF programs failed; run `cargo xtask setup` to install the nightly rust-src and bpf-linker")
}

/// The eBPF crate sits beside this one in the workspace.
fn cargo_metadata() -> anyhow::Result<String> {
    let dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let root = std::path::Path::new(&dir).join("../agent-ebpf");
    let root = root.canonicalize().with_context(|| format!("{}", root.display()))?;
    Ok(format!("ebpf_root={}", root.display()))
}
