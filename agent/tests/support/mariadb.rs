//! A real MariaDB server (Debian's) of the test's own: a fresh data folder
//! in a temporary folder, on loopback, root without a password.

use std::{path::PathBuf, process::Command, time::Duration};

use super::{Proc, free_port, wait_for, which};

pub struct Mariadb {
    pub port: u16,
    pub dir: PathBuf,
    _server: Proc,
}

impl Drop for Mariadb {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Mariadb {
    /// The `mariadb` client on this server as root, running `sql`.
    pub fn client(&self, sql: &str) -> Command {
        let mut c = Command::new("mariadb");
        c.args([
            "-uroot",
            "-h127.0.0.1",
            &format!("-P{}", self.port),
            "--ssl=0",
            "-e",
            sql,
        ]);
        c
    }
}

/// Whether MariaDB's server and client are installed.
pub fn installed() -> bool {
    which("mariadbd").is_some()
        && which("mariadb-install-db").is_some()
        && which("mariadb").is_some()
}

/// Starts a server; panics (with MariaDB's words) if it cannot.
pub fn start() -> Mariadb {
    let dir = std::env::temp_dir().join(format!("tangle-my-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let data = dir.join("data");
    let out = Command::new("mariadb-install-db")
        .args(["--user=root", "--auth-root-authentication-method=normal"])
        .arg(format!("--datadir={}", data.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mariadb-install-db: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = free_port();
    let server = Proc(
        Command::new("mariadbd")
            .args([
                "--no-defaults",
                "--user=root",
                "--bind-address=127.0.0.1",
                "--skip-log-bin",
                "--innodb-buffer-pool-size=16M",
                &format!("--port={port}"),
            ])
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", dir.join("sock").display()))
            .arg(format!("--pid-file={}", dir.join("pid").display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let my = Mariadb {
        port,
        dir,
        _server: server,
    };
    wait_for(
        "MariaDB to accept connections",
        Duration::from_secs(60),
        || {
            my.client("SELECT 1")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        },
    );
    my
}
