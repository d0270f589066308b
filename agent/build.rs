use anyhow::Context as _;
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    // The eBPF crate sits beside this one in the workspace.
    let dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let root = std::path::Path::new(&dir).join("../agent-ebpf");
    let root = root
        .canonicalize()
        .with_context(|| format!("the eBPF crate at {}", root.display()))?;
    let root = root
        .to_str()
        .context("the eBPF crate's path is not UTF-8")?;
    aya_build::build_ebpf(
        [Package { name: "tangle-agent-ebpf", root_dir: root, ..Default::default() }],
        Toolchain::default(),
    )
    .context("building the eBPF programs failed; run `cargo xtask setup` to install the nightly rust-src and bpf-linker")
}
