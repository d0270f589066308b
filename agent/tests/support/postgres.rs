//! A real PostgreSQL server (Debian's) of the test's own: a fresh cluster
//! in a temporary folder, on loopback, with cleartext password
//! authentication so the password crosses the wire as it is.

use std::{path::PathBuf, process::Command, time::Duration};

use super::{Proc, free_port, wait_for};

pub struct Postgres {
    pub port: u16,
    pub dir: PathBuf,
    _server: Proc,
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The folder of PostgreSQL's programs (`initdb`, `postgres`), if installed.
pub fn bin_dir() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    dirs.sort();
    dirs.pop()
}

/// A command run as the `postgres` user (exec'd, so signals reach it).
fn as_postgres() -> Command {
    let mut c = Command::new("setpriv");
    c.args([
        "--reuid",
        "postgres",
        "--regid",
        "postgres",
        "--init-groups",
    ]);
    c
}

/// Starts a cluster whose superuser is `tangle` with `password`.
pub fn start(bin: &std::path::Path, password: &str) -> Postgres {
    let dir = std::env::temp_dir().join(format!("tangle-pg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("pw"), password).unwrap();
    // initdb and the server refuse to run as root.
    assert!(
        Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status()
            .unwrap()
            .success()
    );
    let data = dir.join("data");
    let out = as_postgres()
        .arg(bin.join("initdb"))
        .args(["-U", "tangle", "--auth=password", "--no-sync", "-D"])
        .arg(&data)
        .arg(format!("--pwfile={}", dir.join("pw").display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "initdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = free_port();
    let server = Proc(
        as_postgres()
            .arg(bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(&dir)
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=200",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(
        "PostgreSQL to accept connections",
        Duration::from_secs(30),
        || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
    );
    Postgres {
        port,
        dir,
        _server: server,
    }
}
