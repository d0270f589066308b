//! Two "nodes" on one machine: two network namespaces with their own
//! addresses, joined by a veth pair. A client in one calls a service
//! address that a DNAT rule (as kube-proxy writes for a ClusterIP) sends to
//! a server in the other. One agent per namespace, each limited to it,
//! each exporting to its own receiver: the client's span and the server's
//! span carry the same join key although they saw different server
//! addresses.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // a panic here is a failed test

mod support;

use std::{process::Command, time::Duration};

use support::{otlp::*, *};

/// Network namespaces and their veth pair, removed when dropped.
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "delete", ns]).status();
        }
    }
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const CLIENT_IP: &str = "10.231.0.1";
const SERVER_IP: &str = "10.231.0.2";
const SERVICE_IP: &str = "10.232.0.10";

#[test]
fn client_and_server_spans_join_across_namespaces_through_dnat() {
    let name = "client_and_server_spans_join_across_namespaces_through_dnat";
    if require(name, &["ip", "nft", "curl", "python3"]).is_none() {
        return;
    }
    let id = std::process::id();
    let (a, b) = (format!("tangle-a-{id}"), format!("tangle-b-{id}"));
    let (va, vb) = (
        format!("tga{}", id % 100_000),
        format!("tgb{}", id % 100_000),
    );
    let _cleanup = Namespaces(vec![a.clone(), b.clone()]);
    sh(&["ip", "netns", "add", &a]);
    sh(&["ip", "netns", "add", &b]);
    sh(&[
        "ip", "link", "add", &va, "type", "veth", "peer", "name", &vb,
    ]);
    sh(&["ip", "link", "set", &va, "netns", &a]);
    sh(&["ip", "link", "set", &vb, "netns", &b]);
    for (ns, dev, ip) in [(&a, &va, CLIENT_IP), (&b, &vb, SERVER_IP)] {
        sh(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            dev,
        ]);
        sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
        sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    }
    // The service range goes out of the veth; DNAT picks the real server.
    sh(&["ip", "-n", &a, "route", "add", "10.232.0.0/16", "dev", &va]);
    sh(&[
        "ip",
        "netns",
        "exec",
        &a,
        "nft",
        &format!(
            "add table ip tangle; \
             add chain ip tangle out {{ type nat hook output priority -100; }}; \
             add rule ip tangle out ip daddr {SERVICE_IP} tcp dport 80 dnat to {SERVER_IP}:8080"
        ),
    ]);
    let _server = Proc::spawn_ready(
        Command::new("ip").args([
            "netns",
            "exec",
            &b,
            "python3",
            "-u",
            "-m",
            "http.server",
            "8080",
            "--bind",
            SERVER_IP,
        ]),
        "Serving HTTP",
    );

    let (port_a, port_b) = (free_port(), free_port());
    let (rx_a, rx_b) = (receiver(port_a), receiver(port_b));
    let ns_path = |ns: &str| format!("/run/netns/{ns}");
    let (agent_a, ready_a) = run_agent(port_a, &["--duration", "8s", "--netns", &ns_path(&a)]);
    let (agent_b, ready_b) = run_agent(port_b, &["--duration", "8s", "--netns", &ns_path(&b)]);
    for path in ["/", "/missing/1", "/missing/2"] {
        sh(&[
            "ip",
            "netns",
            "exec",
            &a,
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "--max-time",
            "10",
            &format!("http://{SERVICE_IP}{path}"),
        ]);
    }
    wait_for("both ends of three calls", Duration::from_secs(20), || {
        rx_a.len() >= 3 && rx_b.len() >= 3
    });
    for agent in [agent_a, agent_b] {
        assert!(agent.wait_with_output().unwrap().status.success());
    }
    let _ = std::fs::remove_file(ready_a);
    let _ = std::fs::remove_file(ready_b);

    let (clients, servers) = (rx_a.spans(), rx_b.spans());
    // Each agent saw only its own namespace.
    assert!(
        clients.iter().all(|(svc, s)| s.kind == 3 && svc == "curl"),
        "namespace A has only the client: {clients:#?}"
    );
    assert!(
        servers.iter().all(|(_, s)| s.kind == 2),
        "namespace B has only the server: {servers:#?}"
    );
    assert_eq!((clients.len(), servers.len()), (3, 3));
    for (_, c) in &clients {
        // The client dialled the service address; the server saw its own.
        assert_eq!(attr(c, "server.address").as_deref(), Some(SERVICE_IP));
        assert_eq!(attr(c, "server.port").as_deref(), Some("80"));
        let key = (attr(c, "tangle.join.client"), attr(c, "tangle.join.seq"));
        assert!(key.0.as_deref().unwrap().starts_with(CLIENT_IP));
        let (_, s) = servers
            .iter()
            .find(|(_, s)| (attr(s, "tangle.join.client"), attr(s, "tangle.join.seq")) == key)
            .unwrap_or_else(|| panic!("no server span with the join key {key:?}"));
        assert_eq!(attr(s, "server.address").as_deref(), Some(SERVER_IP));
        assert_eq!(attr(s, "server.port").as_deref(), Some("8080"));
        assert_eq!(s.name, c.name);
    }
}
