//! The parsers on traffic recorded from real servers and clients
//! (`tests/fixtures/record.sh`): golden outputs, both ends agreeing, no
//! secret surviving, and the same exchanges however the bytes are split.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // a panic here is a failed test

use std::path::{Path, PathBuf};

use base64::Engine as _;
use proptest::prelude::*;
use tangle_protocols::{Chunk, Connection, Exchange, Side};

struct Transfer {
    side: Side,
    ts_ns: u64,
    bytes: Vec<u8>,
    total_len: u64,
}

struct Conn {
    role: String,
    process: String,
    local: String,
    remote: String,
    transfers: Vec<Transfer>,
    close_ns: u64,
}

fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut out = Vec::new();
    for proto in std::fs::read_dir(&dir).unwrap() {
        let proto = proto.unwrap().path();
        if !proto.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&proto).unwrap() {
            let f = f.unwrap().path();
            if f.extension().is_some_and(|e| e == "jsonl") {
                out.push(f);
            }
        }
    }
    out.sort();
    assert!(!out.is_empty(), "no fixtures in {}", dir.display());
    out
}

/// Connections of a capture, in the order they opened.
fn load(path: &Path) -> Vec<Conn> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut conns: Vec<(u64, Conn)> = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let id = v["conn_id"].as_u64().unwrap_or(0);
        match v["type"].as_str() {
            Some("open") => conns.push((
                id,
                Conn {
                    role: v["role"].as_str().unwrap().to_owned(),
                    process: v["process"].as_str().unwrap().to_owned(),
                    local: v["local"].as_str().unwrap().to_owned(),
                    remote: v["remote"].as_str().unwrap().to_owned(),
                    transfers: Vec::new(),
                    close_ns: 0,
                },
            )),
            Some("data") => {
                let Some((_, c)) = conns.iter_mut().find(|(i, _)| *i == id) else {
                    continue;
                };
                let egress = v["direction"] == "egress";
                let side = if egress == (c.role == "client") {
                    Side::Request
                } else {
                    Side::Response
                };
                c.transfers.push(Transfer {
                    side,
                    ts_ns: v["ts_ns"].as_u64().unwrap(),
                    bytes: base64::engine::general_purpose::STANDARD
                        .decode(v["data"].as_str().unwrap())
                        .unwrap(),
                    total_len: v["len"].as_u64().unwrap(),
                });
            }
            Some("close") => {
                if let Some((_, c)) = conns.iter_mut().find(|(i, _)| *i == id) {
                    c.close_ns = v["ts_ns"].as_u64().unwrap();
                }
            }
            _ => {}
        }
    }
    let mut conns: Vec<Conn> = conns.into_iter().map(|(_, c)| c).collect();
    for c in &mut conns {
        c.transfers.sort_by_key(|t| t.ts_ns);
    }
    conns
}

/// Each side's bytes numbered from its own initial sequence number, as
/// TCP does; both ends of a connection number them alike, however each
/// cut them into transfers. The requests' initial number is near the wrap.
const ISN: [u32; 2] = [u32::MAX - 100, 7_000];

fn parse(transfers: &[Transfer], close_ns: u64) -> (Vec<Exchange>, Connection) {
    let mut conn = Connection::default();
    let mut out = Vec::new();
    let mut next = ISN;
    for t in transfers {
        let at = &mut next[usize::from(t.side == Side::Response)];
        conn.feed(
            Chunk {
                side: t.side,
                ts_ns: t.ts_ns,
                bytes: &t.bytes,
                total_len: t.total_len,
                seq: Some(*at),
            },
            &mut out,
        );
        *at = at.wrapping_add(t.total_len as u32);
    }
    conn.finish(close_ns, &mut out);
    (out, conn)
}

/// What must not change with how the bytes were split: no timestamps.
fn essence(ex: &[Exchange]) -> Vec<(String, String, u64, u64, bool)> {
    ex.iter()
        .map(|e| {
            (
                e.operation.clone(),
                format!("{:?}", e.status),
                e.request_size,
                e.response_size,
                e.sync,
            )
        })
        .collect()
}

#[test]
fn golden_outputs() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    for path in fixtures() {
        let conns = load(&path);
        let base = conns
            .iter()
            .flat_map(|c| c.transfers.first())
            .map(|t| t.ts_ns)
            .min()
            .unwrap_or(0);
        let mut report = Vec::new();
        for c in &conns {
            let (ex, conn) = parse(&c.transfers, c.close_ns);
            requests_start_where_numbered(&c.transfers, &ex, &path);
            let stats = conn.stats();
            assert_eq!(
                stats.parse_errors + stats.desyncs,
                0,
                "{}: {} {}: {stats:?}",
                path.display(),
                c.role,
                c.process
            );
            let mut ex = serde_json::to_value(&ex).unwrap();
            for e in ex.as_array_mut().unwrap() {
                for k in ["start_ns", "end_ns"] {
                    e[k] = (e[k].as_u64().unwrap() - base).into();
                }
            }
            report.push(serde_json::json!({
                "role": c.role, "process": c.process,
                "protocol": conn.protocol(), "exchanges": ex, "stats": stats,
            }));
        }
        let text = serde_json::to_string_pretty(&report).unwrap() + "\n";
        for secret in ["fixture-secret", "fixture-password"] {
            assert!(
                !text.contains(secret),
                "{} leaks `{secret}`",
                path.display()
            );
        }
        let golden = path.with_extension("golden.json");
        if update || !golden.exists() {
            std::fs::write(&golden, &text).unwrap();
            eprintln!("wrote {}", golden.display());
        } else {
            let want = std::fs::read_to_string(&golden).unwrap();
            assert!(
                want == text,
                "{} differs from {}; UPDATE_GOLDEN=1 to accept",
                path.display(),
                golden.display()
            );
        }
    }
}

/// An HTTP/1 request numbered `seq` starts with its method at that place
/// of the request stream.
fn requests_start_where_numbered(transfers: &[Transfer], ex: &[Exchange], path: &Path) {
    let mut stream = Vec::new();
    for t in transfers.iter().filter(|t| t.side == Side::Request) {
        stream.extend_from_slice(&t.bytes);
        // Bytes not captured: their places are kept.
        stream.resize(stream.len() + (t.total_len as usize - t.bytes.len()), 0);
    }
    for e in ex {
        let (Some(seq), tangle_protocols::Fields::Http(h)) = (e.request_seq, &e.fields) else {
            continue;
        };
        if e.protocol != tangle_protocols::Protocol::Http1 {
            continue;
        }
        let at = seq.wrapping_sub(ISN[0]) as usize;
        assert!(
            stream[at..].starts_with(h.method.as_bytes()),
            "{}: {} numbered {seq} (offset {at}) is not where it starts",
            path.display(),
            e.operation
        );
    }
}

/// The client's and the server's captures of each connection are parsed
/// separately: they must find the same exchanges.
#[test]
fn both_ends_agree() {
    for path in fixtures() {
        let conns = load(&path);
        let mut pairs = 0;
        // A client that closed before sending anything has nothing to compare.
        for client in conns
            .iter()
            .filter(|c| c.role == "client" && !c.transfers.is_empty())
        {
            // A pre-fork server (PostgreSQL) shows the accepting process's
            // copy, with no transfers, and the serving child's.
            let Some(server) = conns.iter().find(|s| {
                s.role == "server"
                    && s.local == client.remote
                    && s.remote == client.local
                    && !s.transfers.is_empty()
            }) else {
                continue;
            };
            let (a, _) = parse(&client.transfers, client.close_ns);
            let (b, _) = parse(&server.transfers, server.close_ns);
            assert!(
                !a.is_empty(),
                "{}: no exchange on {}",
                path.display(),
                client.local
            );
            // The same operations, and each request numbered alike at both
            // ends: the join key.
            let ops = |e: &[Exchange]| {
                e.iter()
                    .map(|e| {
                        (
                            e.operation.clone(),
                            format!("{:?}", e.status),
                            e.request_seq,
                        )
                    })
                    .collect::<Vec<_>>()
            };
            assert!(
                a.iter().filter(|e| e.request_seq.is_some()).count() > 0,
                "{}: no request numbered",
                path.display()
            );
            assert_eq!(
                ops(&a),
                ops(&b),
                "{}: {} vs {}",
                path.display(),
                client.process,
                server.process
            );
            pairs += 1;
        }
        assert!(
            pairs > 0,
            "{}: no connection seen from both ends",
            path.display()
        );
    }
}

/// Every side's stream, as one run of bytes per side, for transfers that
/// were captured whole.
fn whole_transfers() -> Vec<(String, Vec<Transfer>, u64)> {
    let mut out = Vec::new();
    for path in fixtures() {
        for c in load(&path) {
            if c.transfers
                .iter()
                .all(|t| t.bytes.len() as u64 == t.total_len)
                && !c.transfers.is_empty()
            {
                out.push((
                    format!("{} {}", path.display(), c.process),
                    c.transfers,
                    c.close_ns,
                ));
            }
        }
    }
    out
}

/// Re-cuts each run of same-side transfers at the given fractions.
fn resplit(transfers: &[Transfer], cuts: &[u16]) -> Vec<Transfer> {
    let mut out = Vec::new();
    let mut i = 0;
    let mut k = 0;
    while i < transfers.len() {
        let side = transfers[i].side;
        let mut run = Vec::new();
        let mut ts = transfers[i].ts_ns;
        while i < transfers.len() && transfers[i].side == side {
            run.extend_from_slice(&transfers[i].bytes);
            ts = transfers[i].ts_ns;
            i += 1;
        }
        let mut at = 0;
        while at < run.len() {
            let frac = cuts[k % cuts.len()] as usize;
            k += 1;
            let n = (1 + frac * (run.len() - at) / 1000).min(run.len() - at);
            out.push(Transfer {
                side,
                ts_ns: ts,
                bytes: run[at..at + n].to_vec(),
                total_len: n as u64,
            });
            at += n;
        }
    }
    out
}

/// 64 cases from a fixed seed, so CI is repeatable; `PROPTEST_RNG_SEED` and
/// `PROPTEST_CASES` explore further (1,500 random cases passed when written).
fn config() -> ProptestConfig {
    let base = ProptestConfig::default();
    let rng_seed = if std::env::var_os("PROPTEST_RNG_SEED").is_some() {
        base.rng_seed
    } else {
        proptest::test_runner::RngSeed::Fixed(0x7a6e_676c)
    };
    let cases = if std::env::var_os("PROPTEST_CASES").is_some() {
        base.cases
    } else {
        64
    };
    ProptestConfig {
        cases,
        rng_seed,
        ..base
    }
}

proptest! {
    #![proptest_config(config())]

    /// Any split of the recorded streams gives the same exchanges.
    #[test]
    fn any_split_gives_the_same_exchanges(cuts in proptest::collection::vec(0u16..1000, 1..40)) {
        for (name, transfers, close) in whole_transfers() {
            let (want, _) = parse(&transfers, close);
            let (got, conn) = parse(&resplit(&transfers, &cuts), close);
            prop_assert_eq!(essence(&got), essence(&want), "{}", name);
            prop_assert_eq!(conn.stats().parse_errors, 0);
        }
    }

    /// Cutting captures short (as the kernel does past the capture size)
    /// never invents an exchange: each one not marked truncated is among the
    /// original exchanges (some may be lost where a cut hides a message head).
    #[test]
    fn truncation_never_invents_exchanges(keep in proptest::collection::vec(1usize..600, 1..20)) {
        for (name, transfers, close) in whole_transfers() {
            let (want, _) = parse(&transfers, close);
            let cut: Vec<Transfer> = transfers
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let n = keep[i % keep.len()].min(t.bytes.len());
                    Transfer { side: t.side, ts_ns: t.ts_ns, bytes: t.bytes[..n].to_vec(), total_len: t.total_len }
                })
                .collect();
            let (got, _) = parse(&cut, close);
            let mut left: Vec<_> = want.iter().map(|e| e.operation.clone()).collect();
            // An exchange a gap cut into may have lost its operation; it is marked.
            for e in got.iter().filter(|e| !e.truncated) {
                let found = left.iter().position(|op| *op == e.operation);
                prop_assert!(found.is_some(), "{}: invented {:?}", name, e.operation);
                left.remove(found.unwrap_or(0));
            }
        }
    }
}
