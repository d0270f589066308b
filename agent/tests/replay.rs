//! `tangle-agent replay` on the fixtures' pcap files, recorded by tshark
//! from the same real traffic the agent captured: replay must find what the
//! capture found, and agree with tshark's own decoding of the packets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // a panic here is a failed test

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use support::{skip, which};
use tangle_protocols::{normalize::route, sql};

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../protocols/tests/fixtures")
}

fn pcaps() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).into_iter().flatten())
        .map(|f| f.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "pcapng"))
        .collect();
    out.sort();
    assert!(out.len() >= 8, "pcap fixtures missing: {out:?}");
    out
}

/// The exchanges `tangle-agent replay` prints for a capture file.
fn replay(pcap: &Path) -> Vec<serde_json::Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_tangle-agent"))
        .arg("replay")
        .arg(pcap)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "replay {} failed: {}",
        pcap.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let stats = String::from_utf8_lossy(&out.stderr);
    assert!(
        stats.contains("\"parse_errors\":0") && stats.contains("\"desyncs\":0"),
        "{}: {stats}",
        pcap.display()
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn status_key(e: &serde_json::Value) -> String {
    format!(
        "{} {}",
        e["status"]["kind"].as_str().unwrap_or(""),
        e["status"]["code"].as_str().unwrap_or("")
    )
}

fn multiset<T: Ord>(items: impl IntoIterator<Item = T>) -> BTreeMap<T, usize> {
    let mut m = BTreeMap::new();
    for i in items {
        *m.entry(i).or_default() += 1;
    }
    m
}

#[test]
fn replay_finds_what_the_agent_captured() {
    for pcap in pcaps() {
        let golden: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(pcap.with_extension("golden.json")).unwrap(),
        )
        .unwrap();
        let captured = multiset(
            golden
                .as_array()
                .unwrap()
                .iter()
                .filter(|c| c["role"] == "client")
                .flat_map(|c| c["exchanges"].as_array().unwrap().iter())
                .map(|e| (e["operation"].as_str().unwrap().to_owned(), status_key(e))),
        );
        let replayed = replay(&pcap);
        let text = serde_json::to_string(&replayed).unwrap();
        for secret in ["fixture-secret", "fixture-password"] {
            assert!(!text.contains(secret), "{} leaks {secret}", pcap.display());
        }
        let replayed = multiset(
            replayed
                .iter()
                .map(|e| (e["operation"].as_str().unwrap().to_owned(), status_key(e))),
        );
        assert!(!replayed.is_empty(), "{}: nothing found", pcap.display());
        assert_eq!(
            replayed,
            captured,
            "{}: pcap replay vs the agent's capture",
            pcap.display()
        );
    }
}

/// tshark's fields for a capture, one row per packet that has any.
fn tshark(pcap: &Path, decode_as: &str, fields: &[&str]) -> Vec<Vec<Vec<String>>> {
    let mut cmd = Command::new("tshark");
    cmd.arg("-r").arg(pcap).args([
        "-d",
        decode_as,
        "-T",
        "fields",
        "-E",
        "aggregator=\x1f",
        "-E",
        "separator=\x1e",
    ]);
    for f in fields {
        cmd.args(["-e", f]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "tshark: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim_matches(['\x1e', ' ']).is_empty())
        .map(|l| {
            l.split('\x1e')
                .map(|f| {
                    if f.is_empty() {
                        Vec::new()
                    } else {
                        f.split('\x1f').map(str::to_owned).collect()
                    }
                })
                .collect()
        })
        .collect()
}

/// (verb, tables without their database) of a statement, as our SQL reader sees it.
fn sql_key(text: &str, dialect: sql::Dialect) -> (String, Vec<String>) {
    let s = sql::parse(text, dialect);
    let mut t = s.tables;
    t.sort();
    (s.verb, t)
}

/// The statements replay found, keyed as tshark's are (prepared statements'
/// executions and closes name the same statement).
fn replay_sql_keys(
    replayed: &[serde_json::Value],
    dialect: sql::Dialect,
) -> BTreeSet<(String, Vec<String>)> {
    replayed
        .iter()
        .filter_map(|e| e["fields"]["statement"].as_str())
        .map(|q| sql_key(q, dialect))
        .collect()
}

fn error_codes(replayed: &[serde_json::Value]) -> BTreeSet<String> {
    replayed
        .iter()
        .filter(|e| e["status"]["kind"] == "error")
        .map(|e| e["status"]["code"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn tshark_decodes_the_same_calls() {
    if which("tshark").is_none() {
        skip(
            "tshark_decodes_the_same_calls",
            "`tshark` is not installed (cargo xtask setup --test-deps)",
        );
        return;
    }
    let dir = fixtures_dir();
    let mut checked = 0;
    // HTTP/1.1: each request's method and path, each response's code.
    for (name, port) in [("http1/curl-python", 18101), ("http1/curl-nginx", 18102)] {
        let pcap = dir.join(format!("{name}.pcapng"));
        let replayed = replay(&pcap);
        let decode = format!("tcp.port=={port},http");
        let rows = tshark(
            &pcap,
            &decode,
            &[
                "http.request.method",
                "http.request.uri",
                "http.response.code",
            ],
        );
        // Tangle keeps routes only: tshark's targets, templated the same way.
        let theirs = multiset(
            rows.iter()
                .filter(|r| !r[0].is_empty())
                .map(|r| (r[0][0].clone(), route(&r[1][0]))),
        );
        let ours = multiset(replayed.iter().map(|e| {
            (
                e["fields"]["method"].as_str().unwrap().to_owned(),
                e["fields"]["path"].as_str().unwrap().to_owned(),
            )
        }));
        assert_eq!(ours, theirs, "{name}: requests");
        let theirs = multiset(
            rows.iter()
                .filter(|r| !r[2].is_empty())
                .map(|r| r[2][0].clone()),
        );
        let ours = multiset(
            replayed
                .iter()
                .filter_map(|e| e["fields"]["status"].as_u64())
                .map(|c| c.to_string()),
        );
        assert_eq!(ours, theirs, "{name}: responses");
        checked += 1;
    }
    // HTTP/2 and gRPC: method and path per stream; gRPC status from the trailers.
    for (name, port) in [
        ("http2/curl-nghttp-nginx", 18105),
        ("http2/grpc-python", 18106),
    ] {
        let pcap = dir.join(format!("{name}.pcapng"));
        let replayed = replay(&pcap);
        let rows = tshark(
            &pcap,
            &format!("tcp.port=={port},http2"),
            &[
                "http2.headers.method",
                "http2.headers.path",
                "http2.header.name",
                "http2.header.value",
            ],
        );
        let theirs = multiset(rows.iter().flat_map(|r| {
            r[0].iter()
                .zip(&r[1])
                .map(|(m, p)| (m.clone(), route(p)))
                .collect::<Vec<_>>()
        }));
        // gRPC paths are kept whole; templating leaves method names as they are.
        let ours = multiset(replayed.iter().map(|e| {
            (
                e["fields"]["method"].as_str().unwrap().to_owned(),
                route(e["fields"]["path"].as_str().unwrap()),
            )
        }));
        assert_eq!(ours, theirs, "{name}: streams");
        let theirs = multiset(rows.iter().flat_map(|r| {
            r[2].iter()
                .zip(&r[3])
                .filter(|(n, _)| *n == "grpc-status")
                .map(|(_, v)| v.clone())
                .collect::<Vec<_>>()
        }));
        let ours = multiset(
            replayed
                .iter()
                .filter_map(|e| e["fields"]["grpc"]["status"].as_str())
                .map(str::to_owned),
        );
        assert_eq!(ours, theirs, "{name}: grpc-status");
        checked += 1;
    }
    // SQL: the statements tshark finds, and the error codes.
    for (name, decode, query, code) in [
        (
            "postgres/psql",
            "tcp.port==18104,pgsql",
            "pgsql.query",
            "pgsql.code",
        ),
        (
            "postgres/pgbench",
            "tcp.port==18104,pgsql",
            "pgsql.query",
            "pgsql.code",
        ),
        (
            "mysql/mariadb-client",
            "tcp.port==18107,mysql",
            "mysql.query",
            "mysql.error_code",
        ),
        (
            "mysql/connector-prepared",
            "tcp.port==18107,mysql",
            "mysql.query",
            "mysql.error_code",
        ),
    ] {
        let pcap = dir.join(format!("{name}.pcapng"));
        let dialect = if name.starts_with("mysql") {
            sql::Dialect::Mysql
        } else {
            sql::Dialect::Postgres
        };
        let replayed = replay(&pcap);
        let rows = tshark(&pcap, decode, &[query, code]);
        let theirs: BTreeSet<_> = rows
            .iter()
            .flat_map(|r| r[0].iter().map(|q| sql_key(q, dialect)))
            .collect();
        assert!(!theirs.is_empty(), "{name}: tshark found no statement");
        assert_eq!(
            replay_sql_keys(&replayed, dialect),
            theirs,
            "{name}: statements"
        );
        let theirs: BTreeSet<String> = rows.iter().flat_map(|r| r[1].iter().cloned()).collect();
        assert_eq!(error_codes(&replayed), theirs, "{name}: error codes");
        checked += 1;
    }
    assert_eq!(checked, 8);
    // Redis: tshark 4.0 has no RESP dissector; the golden and capture checks cover it.
}

#[test]
fn replay_rejects_a_file_that_is_not_a_capture_and_reads_a_cut_one() {
    let agent = env!("CARGO_BIN_EXE_tangle-agent");
    let dir = std::env::temp_dir().join(format!("tangle-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let junk = dir.join("junk.pcap");
    std::fs::write(&junk, b"this is not a packet capture at all, just text").unwrap();
    let out = Command::new(agent)
        .arg("replay")
        .arg(&junk)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is not a readable pcap or pcapng file"),
        "{err}"
    );
    let out = Command::new(agent)
        .arg("replay")
        .arg(dir.join("missing.pcap"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot open"));
    // A capture cut mid-packet (a full disk, a killed tcpdump): what came before counts.
    let whole = std::fs::read(fixtures_dir().join("postgres/psql.pcapng")).unwrap();
    let cut = dir.join("cut.pcapng");
    std::fs::write(&cut, &whole[..whole.len() * 2 / 3]).unwrap();
    let out = Command::new(agent)
        .arg("replay")
        .arg(&cut)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let found = String::from_utf8_lossy(&out.stdout).lines().count();
    assert!(
        (2..5).contains(&found),
        "a cut capture gives some of the 5 exchanges, got {found}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
