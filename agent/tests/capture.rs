//! The real eBPF programs, loaded and attached, watching real processes on
//! loopback. Each test filters on its own server port, so they can run in
//! parallel without seeing each other's traffic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // a panic here is a failed test

mod support;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    process::Command,
    time::Duration,
};

use support::*;
use tangle_agent::{capture::probe::ProbeOptions, connections::Connection};
use tangle_common::{AF_INET6, Direction, Role, Syscall};

fn options(port: u16) -> ProbeOptions {
    ProbeOptions {
        port: Some(port),
        ..ProbeOptions::default()
    }
}

/// Runs `peer.py send` against `peer.py sink` on `port`; waits for both closes.
/// Returns the sender's and the sink's connections.
fn sink_transfer(
    cap: &mut Capture,
    port: u16,
    writer: &str,
    reader: &str,
    size: usize,
) -> (Connection, Connection) {
    let sink = Proc::spawn_ready(
        python().args(["sink", "127.0.0.1", &port.to_string(), reader]),
        "listening",
    );
    let mut sender = python()
        .args([
            "send",
            "127.0.0.1",
            &port.to_string(),
            writer,
            &size.to_string(),
        ])
        .spawn()
        .unwrap();
    let sender_pid = sender.id();
    assert!(sender.wait().unwrap().success());
    assert!(
        cap.until_closes(2, Duration::from_secs(15)),
        "expected both closes"
    );
    let client = cap
        .conn_of(sender_pid, Role::Client)
        .expect("sender's connection")
        .clone();
    let server = cap
        .conn_of(sink.pid(), Role::Server)
        .expect("sink's connection")
        .clone();
    (client, server)
}

fn closed(cap: &Capture, conn_id: u64) -> bool {
    cap.closes().iter().any(|c| c.conn_id == conn_id)
}

#[test]
fn curl_to_http_server_seen_from_both_processes() {
    let name = "curl_to_http_server_seen_from_both_processes";
    if require(name, &["curl", "python3"]).is_none() {
        return;
    }
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("tangle-http-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("hello.txt"), "hello from tangle\n").unwrap();
    let mut cap = Capture::start(options(port));
    let server = Proc::spawn_ready(
        Command::new("python3")
            .args(["-u", "-m", "http.server", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--directory", dir.to_str().unwrap()]),
        "Serving HTTP",
    );
    let mut curl = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            &format!("http://127.0.0.1:{port}/hello.txt"),
        ])
        .spawn()
        .unwrap();
    let curl_pid = curl.id();
    assert!(curl.wait().unwrap().success());

    let server_pid = server.pid();
    assert!(
        cap.until_closes(2, Duration::from_secs(15)),
        "expected both closes, got {:#?}",
        cap.events()
    );

    let client = cap
        .conn_of(curl_pid, Role::Client)
        .expect("curl's connection")
        .clone();
    let served = cap
        .conn_of(server_pid, Role::Server)
        .expect("the server's connection")
        .clone();
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    assert_eq!(client.process(), "curl");
    assert!(
        served.process().starts_with("python"),
        "server process {}",
        served.process()
    );
    assert_eq!(client.remote, format!("127.0.0.1:{port}").parse().unwrap());
    assert_eq!(client.local.ip(), loopback);
    assert_ne!(client.local.port(), 0);
    // The two processes see the same connection from opposite ends.
    assert_eq!(served.local, client.remote);
    assert_eq!(served.remote, client.local);

    let request = cap.stream(client.conn_id, Direction::Egress);
    let text = String::from_utf8_lossy(&request);
    assert!(
        text.starts_with("GET /hello.txt HTTP/1.1\r\n"),
        "request: {text}"
    );
    assert!(text.contains(&format!("Host: 127.0.0.1:{port}\r\n")));
    assert_eq!(
        cap.stream(served.conn_id, Direction::Ingress),
        request,
        "server read what curl wrote"
    );

    let response = cap.stream(served.conn_id, Direction::Egress);
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.0 200 OK\r\n"), "response: {text}");
    assert!(text.ends_with("hello from tangle\n"));
    assert_eq!(
        cap.stream(client.conn_id, Direction::Ingress),
        response,
        "curl read what the server wrote"
    );

    assert!(closed(&cap, client.conn_id) && closed(&cap, served.conn_id));
    let client_close = cap
        .closes()
        .into_iter()
        .find(|c| c.conn_id == client.conn_id)
        .unwrap();
    assert_eq!(client_close.bytes_sent, request.len() as u64);
    assert_eq!(client_close.bytes_recv, response.len() as u64);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn ipv6_keepalive_connection_to_nginx() {
    let name = "ipv6_keepalive_connection_to_nginx";
    if require(name, &["curl", "nginx"]).is_none() {
        return;
    }
    let port = free_port();
    let (_nginx, dir) = start_nginx(port);
    let mut cap = Capture::start(options(port));
    let url = |p: &str| format!("http://[::1]:{port}/{p}");
    let mut curl = Command::new("curl")
        .args([
            "-sS",
            "-g",
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
        ])
        .args([url("one"), url("two"), url("three")])
        .spawn()
        .unwrap();
    let curl_pid = curl.id();
    assert!(curl.wait().unwrap().success());
    assert!(
        cap.until_closes(2, Duration::from_secs(15)),
        "expected both closes, got {:#?}",
        cap.events()
    );

    let clients: Vec<_> = cap
        .opens()
        .into_iter()
        .filter(|c| c.pid == curl_pid && c.role == Role::Client)
        .collect();
    assert_eq!(
        clients.len(),
        1,
        "three requests on one kept-alive connection"
    );
    let client = clients[0].clone();
    let server = cap
        .opens()
        .into_iter()
        .find(|c| c.role == Role::Server && c.process() == "nginx")
        .expect("nginx worker's side")
        .clone();
    let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    assert_eq!(client.remote, format!("[::1]:{port}").parse().unwrap());
    assert_eq!(client.local.ip(), v6);
    assert_eq!(server.local, client.remote);
    assert_eq!(server.remote, client.local);
    let open = cap
        .events()
        .iter()
        .find_map(|e| match e {
            Owned::Open(c, ev) if c.conn_id == client.conn_id => Some(*ev),
            _ => None,
        })
        .unwrap();
    assert_eq!(open.addrs.family, AF_INET6);

    let requests = String::from_utf8(cap.stream(client.conn_id, Direction::Egress)).unwrap();
    for path in ["one", "two", "three"] {
        assert!(
            requests.contains(&format!("GET /{path} HTTP/1.1\r\n")),
            "{requests}"
        );
    }
    assert_eq!(
        cap.stream(server.conn_id, Direction::Ingress),
        requests.as_bytes()
    );
    let responses = String::from_utf8(cap.stream(server.conn_id, Direction::Egress)).unwrap();
    assert_eq!(
        responses.matches("HTTP/1.1 200 OK\r\n").count(),
        3,
        "{responses}"
    );
    for path in ["one", "two", "three"] {
        assert!(responses.contains(&format!("ok /{path}\n")));
    }
    assert!(
        cap.data(client.conn_id, Direction::Egress).len() >= 3,
        "one write per request at least"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn transfer_larger_than_capture_reports_full_length() {
    let name = "transfer_larger_than_capture_reports_full_length";
    if require(name, &["python3"]).is_none() {
        return;
    }
    const SIZE: usize = 100_000;
    const CAPTURE: u32 = 1024;
    let port = free_port();
    let mut cap = Capture::start(ProbeOptions {
        capture_size: CAPTURE,
        ..options(port)
    });
    let (client, server) = sink_transfer(&mut cap, port, "sendall", "recv", SIZE);
    let expected = pattern(SIZE);
    let sent = cap.data(client.conn_id, Direction::Egress);
    assert_eq!(
        sent.iter().map(|(h, _)| h.total_len).sum::<u64>(),
        SIZE as u64
    );
    let (big, bytes) = sent.iter().max_by_key(|(h, _)| h.total_len).unwrap();
    assert!(
        big.total_len > CAPTURE as u64,
        "one transfer larger than the capture"
    );
    assert_eq!(
        big.captured_len, CAPTURE,
        "capture truncated to the capture size"
    );
    assert_eq!(*bytes, &expected[..CAPTURE as usize]);

    let mut offset = 0usize;
    for (h, bytes) in cap.data(server.conn_id, Direction::Ingress) {
        assert_eq!(h.captured_len as u64, h.total_len.min(CAPTURE as u64));
        assert_eq!(
            bytes,
            &expected[offset..offset + bytes.len()],
            "bytes at offset {offset}"
        );
        offset += h.total_len as usize;
    }
    assert_eq!(
        offset, SIZE,
        "the receiver's reads add up to the whole transfer"
    );
}

fn vectored(writer: &str, reader: &str, sent_by: Syscall, read_by: Syscall) {
    const SIZE: usize = 3000;
    let port = free_port();
    let mut cap = Capture::start(options(port));
    let (client, server) = sink_transfer(&mut cap, port, writer, reader, SIZE);
    let expected = pattern(SIZE);
    let sent = cap.data(client.conn_id, Direction::Egress);
    assert_eq!(sent.len(), 1, "one {writer} call");
    assert_eq!(sent[0].0.syscall, sent_by as u8);
    assert_eq!(sent[0].0.total_len, SIZE as u64);
    assert_eq!(
        sent[0].1,
        expected.as_slice(),
        "all three iovecs captured, in order"
    );

    let read = cap.data(server.conn_id, Direction::Ingress);
    assert!(read.iter().all(|(h, _)| h.syscall == read_by as u8));
    assert_eq!(
        cap.stream(server.conn_id, Direction::Ingress),
        expected,
        "read back across two iovecs"
    );
}

#[test]
fn sendmsg_and_recvmsg_with_several_iovecs() {
    if require("sendmsg_and_recvmsg_with_several_iovecs", &["python3"]).is_none() {
        return;
    }
    vectored(
        "sendmsg",
        "recvmsg_into",
        Syscall::SendMsg,
        Syscall::RecvMsg,
    );
}

#[test]
fn writev_and_readv() {
    if require("writev_and_readv", &["python3"]).is_none() {
        return;
    }
    vectored("writev", "readv", Syscall::WriteV, Syscall::ReadV);
}

#[test]
fn ten_thousand_short_connections_all_seen_and_maps_drain() {
    let name = "ten_thousand_short_connections_all_seen_and_maps_drain";
    if require(name, &["python3"]).is_none() {
        return;
    }
    const N: usize = 10_000;
    let port = free_port();
    let mut cap = Capture::start(options(port));
    let baseline = cap.kernel_stats();
    let server = Proc::spawn_ready(
        python().args(["echo-many", "127.0.0.1", &port.to_string(), &N.to_string()]),
        "listening",
    );
    let mut client = python()
        .args(["ping-many", "127.0.0.1", &port.to_string(), &N.to_string()])
        .spawn()
        .unwrap();
    let client_pid = client.id();
    // Read while the load runs so the ring buffer never fills.
    let all = cap.until_closes(2 * N, Duration::from_secs(240));
    assert!(client.wait().unwrap().success());
    let stats = cap.kernel_stats();
    assert_eq!(stats.events_lost, 0, "the ring buffer kept up");
    assert!(all, "saw {} closes of {}", cap.closes().len(), 2 * N);

    let opens = cap.opens();
    let clients = opens
        .iter()
        .filter(|c| c.pid == client_pid && c.role == Role::Client)
        .count();
    let servers = opens
        .iter()
        .filter(|c| c.pid == server.pid() && c.role == Role::Server)
        .count();
    assert_eq!(
        (clients, servers),
        (N, N),
        "every connection seen from both ends"
    );
    let data = cap
        .events()
        .iter()
        .filter(|e| matches!(e, Owned::Data(..)))
        .count();
    assert_eq!(data, 4 * N, "ping and pong, each written and read");

    // Every connection closed: the kernel maps are back to where they were.
    assert_eq!(
        stats.conns_tracked, baseline.conns_tracked,
        "CONNS back to baseline"
    );
    assert_eq!(
        stats.conns_pending, baseline.conns_pending,
        "PENDING back to baseline"
    );
    eprintln!(
        "{N} connections: {} events, {} lost, kernel table {}",
        cap.events().len(),
        stats.events_lost,
        stats.conns_tracked,
    );
}

#[test]
fn cgroup_filter_keeps_only_that_cgroup() {
    let name = "cgroup_filter_keeps_only_that_cgroup";
    if require(name, &["curl", "python3"]).is_none() {
        return;
    }
    let Some(root) = cgroup2_root_or_skip(name) else {
        return;
    };
    let port = free_port();
    let group = root.join(format!("tangle-test-{port}"));
    std::fs::create_dir_all(&group).unwrap();
    let id = tangle_agent::capture::probe::cgroup_id(&group).unwrap();
    let mut cap = Capture::start(ProbeOptions {
        cgroup_id: Some(id),
        ..options(port)
    });
    let _server = http_server(port);
    // curl moves itself into the cgroup before it connects.
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec curl -sS -o /dev/null http://127.0.0.1:{port}/",
        group.display()
    );
    let mut curl = Command::new("sh").args(["-c", &script]).spawn().unwrap();
    let curl_pid = curl.id();
    assert!(curl.wait().unwrap().success());
    let ok = cap.until(Duration::from_secs(10), |ev| {
        ev.iter().any(|e| matches!(e, Owned::Close(..)))
    });
    cap.settle(Duration::from_millis(500));
    let _ = std::fs::remove_dir(&group);
    assert!(ok, "curl's connection seen");
    let opens = cap.opens();
    assert_eq!(opens.len(), 1, "only the process in the cgroup: {opens:#?}");
    assert_eq!((opens[0].pid, opens[0].role), (curl_pid, Role::Client));
    assert_eq!(opens[0].cgroup_id, id);
}

/// A ring buffer too small for the load, not read meanwhile: the kernel
/// counts every event it could not deliver, and nothing goes unaccounted.
#[test]
fn full_ring_buffer_counts_lost_events() {
    let name = "full_ring_buffer_counts_lost_events";
    if require(name, &["python3"]).is_none() {
        return;
    }
    const N: usize = 300;
    let port = free_port();
    let mut cap = Capture::start(ProbeOptions {
        ring_size: 4096,
        ..options(port)
    });
    let server = Proc::spawn_ready(
        python().args(["echo-many", "127.0.0.1", &port.to_string(), &N.to_string()]),
        "listening",
    );
    let ok = python()
        .args(["ping-many", "127.0.0.1", &port.to_string(), &N.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    drop(server);
    // Only now read what fitted.
    cap.settle(Duration::from_millis(500));
    let stats = cap.kernel_stats();
    let received = cap.events().len() as u64;
    assert!(
        stats.events_lost > 0,
        "a 4 KiB ring buffer cannot hold {} events",
        8 * N
    );
    assert_eq!(
        received,
        stats.data_events + stats.conn_events,
        "delivered = counted as sent"
    );
    assert_eq!(
        received + stats.events_lost,
        8 * N as u64,
        "every event delivered or counted lost"
    );
}

/// A pre-fork server that accepts the next connection on the same fd number
/// before the last child has read a byte (PostgreSQL's postmaster under a
/// burst of connections, as pools open theirs at once): every child's
/// connection is its own, each with its own bytes. Adoption once went by
/// the parent's fd number, and only the last child's was captured.
#[test]
fn forked_children_of_a_burst_of_connections() {
    let name = "forked_children_of_a_burst_of_connections";
    if require(name, &["python3"]).is_none() {
        return;
    }
    let port = free_port();
    let mut cap = Capture::start(options(port));
    let server = Proc::spawn_ready(
        python().args(["fork-serve-many", "127.0.0.1", &port.to_string(), "6"]),
        "listening",
    );
    let ok = python()
        .args(["ping-parallel", "127.0.0.1", &port.to_string(), "6"])
        .status()
        .unwrap();
    assert!(ok.success());
    // Six clients, six children: the parent moves no bytes, so the socket
    // is never its connection.
    assert!(
        cap.until_closes(12, Duration::from_secs(15)),
        "{:#?}",
        cap.events()
    );
    let children: Vec<_> = cap
        .opens()
        .into_iter()
        .filter(|c| c.role == Role::Server && c.pid != server.pid())
        .cloned()
        .collect();
    assert_eq!(children.len(), 6, "every child's connection: {children:#?}");
    assert!(
        cap.conn_of(server.pid(), Role::Server).is_none(),
        "the accepting parent moved no bytes: {:#?}",
        cap.opens()
    );
    let remotes: std::collections::BTreeSet<_> = children.iter().map(|c| c.remote).collect();
    assert_eq!(remotes.len(), 6, "each child has its own client");
    for c in &children {
        assert_eq!(cap.stream(c.conn_id, Direction::Ingress), b"ping");
        assert_eq!(cap.stream(c.conn_id, Direction::Egress), b"pong");
    }
}

/// Pre-fork servers (PostgreSQL, Apache) accept in one process and serve
/// the connection in a forked child: the child's transfers are captured, as
/// the child's own connection; the parent, which moved no bytes, has none.
#[test]
fn forked_child_serving_an_accepted_connection() {
    let name = "forked_child_serving_an_accepted_connection";
    if require(name, &["python3"]).is_none() {
        return;
    }
    let port = free_port();
    let mut cap = Capture::start(options(port));
    let server = Proc::spawn_ready(
        python().args(["fork-serve", "127.0.0.1", &port.to_string()]),
        "listening",
    );
    let ok = python()
        .args(["ping-many", "127.0.0.1", &port.to_string(), "1"])
        .status()
        .unwrap();
    assert!(ok.success());
    assert!(
        cap.until_closes(2, Duration::from_secs(15)),
        "client and child closes: {:#?}",
        cap.events()
    );
    let client = cap
        .opens()
        .into_iter()
        .find(|c| c.role == Role::Client)
        .expect("the client's connection")
        .clone();
    assert!(
        cap.conn_of(server.pid(), Role::Server).is_none(),
        "the accepting process moved no bytes: {:#?}",
        cap.opens()
    );
    let child = cap
        .opens()
        .into_iter()
        .find(|c| c.role == Role::Server && c.pid != server.pid())
        .expect("the forked child's connection")
        .clone();
    assert_eq!(
        (child.local, child.remote),
        (client.remote, client.local),
        "the child holds the server end of the client's connection"
    );
    assert_eq!(cap.stream(child.conn_id, Direction::Ingress), b"ping");
    assert_eq!(cap.stream(child.conn_id, Direction::Egress), b"pong");
    assert!(closed(&cap, child.conn_id) && closed(&cap, client.conn_id));
}
