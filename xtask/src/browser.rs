//! The coupling map open in Debian's Chromium, driven through
//! `collector/tests/web/map.mjs` (Playwright): for `demo --check`, which
//! watches the shop's map while its traffic flows.

use std::{
    io::{BufRead as _, BufReader, Lines, Write as _},
    path::PathBuf,
    process::{ChildStdin, ChildStdout, Command, Stdio},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::util::{Child, root, which};

/// node and the folder of `map.mjs`, or why the browser cannot be driven.
pub fn available() -> Result<(PathBuf, PathBuf), String> {
    let node = which("node").ok_or("no node (Debian: nodejs)")?;
    which("chromium").ok_or("no chromium (Debian: chromium)")?;
    let dir = root().join("collector/tests/web");
    if !dir.join("node_modules/playwright-core").is_dir() {
        return Err("no playwright-core: cargo xtask setup --test-deps installs it".into());
    }
    Ok((node, dir))
}

/// The page, open.
pub struct Page {
    _child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    /// What the page said once it had loaded: `{"map": ...}`.
    pub loaded: Value,
}

impl Page {
    /// Opens `url`; screenshots go to `shots`.
    pub fn open(url: &str, shots: &std::path::Path) -> anyhow::Result<Self> {
        let (node, dir) = available().map_err(anyhow::Error::msg)?;
        let mut cmd = Command::new(node);
        cmd.arg(dir.join("map.mjs"))
            .arg(url)
            .arg("")
            .arg(shots)
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = Child::spawn(&mut cmd).context("starting the browser")?;
        let stdin = child.0.stdin.take().context("the browser's stdin")?;
        let stdout = child.0.stdout.take().context("the browser's stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let loaded = next(&mut lines)?;
        Ok(Self {
            _child: child,
            stdin,
            lines,
            loaded,
        })
    }

    /// Sends one of `map.mjs`'s commands; its answer.
    pub fn ask(&mut self, command: &str) -> anyhow::Result<Value> {
        writeln!(self.stdin, "{command}").context("talking to the browser")?;
        let answer = next(&mut self.lines)?;
        if answer["event"] == "error" {
            bail!("the browser: {}", answer["message"]);
        }
        Ok(answer)
    }
}

fn next(lines: &mut Lines<BufReader<ChildStdout>>) -> anyhow::Result<Value> {
    let line = lines
        .next()
        .context("the browser stopped")?
        .context("reading the browser")?;
    serde_json::from_str(&line).with_context(|| format!("the browser said {line}"))
}
