//! The agent's view of the connections the kernel side tracks: who owns
//! each one, both addresses, and the role. Bounded in size.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use tangle_common::{AF_INET, ConnEvent, Role, SockAddrs};

use crate::identity::{Identities, Identity};

/// A TCP connection seen from one process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    pub conn_id: u64,
    pub pid: u32,
    pub fd: u32,
    /// The executable name (`comm`).
    pub process: String,
    /// Who the process is: its service name and where that came from.
    pub identity: std::sync::Arc<Identity>,
    pub role: Role,
    /// For a client: the service at the remote address, when the cluster
    /// says (its end may be on a node this agent does not see).
    pub peer_service: Option<String>,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub cgroup_id: u64,
    pub opened_ns: u64,
}

impl Connection {
    /// A connection of process 7 (`svc`) for unit tests.
    #[cfg(test)]
    pub(crate) fn sample(conn_id: u64, role: Role, local: &str, remote: &str) -> Self {
        Self {
            conn_id,
            pid: 7,
            fd: 3,
            process: "svc".into(),
            identity: std::sync::Arc::new(Identity::executable("svc")),
            peer_service: None,
            role,
            local: local.parse().expect("test address"),
            remote: remote.parse().expect("test address"),
            cgroup_id: 0,
            opened_ns: 0,
        }
    }
}

/// Socket addresses from the kernel's representation.
pub fn socket_addrs(a: &SockAddrs) -> (SocketAddr, SocketAddr) {
    let ip = |b: &[u8; 16]| -> IpAddr {
        if a.family == AF_INET {
            IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
        } else {
            IpAddr::V6(Ipv6Addr::from(*b))
        }
    };
    (
        SocketAddr::new(ip(&a.local_addr), a.local_port),
        SocketAddr::new(ip(&a.remote_addr), a.remote_port),
    )
}

/// A kernel `comm` field as text.
pub fn comm_str(comm: &[u8]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

/// Live connections by id. Bounded: when full, new connections are counted
/// as untracked rather than growing memory.
pub struct ConnTable {
    conns: HashMap<u64, Connection>,
    identities: Identities,
    max: usize,
    /// Opens dropped because the table was full.
    pub overflow: u64,
}

impl ConnTable {
    pub fn new(max: usize) -> Self {
        Self::with_identities(max, Identities::default())
    }

    pub fn with_identities(max: usize, identities: Identities) -> Self {
        Self {
            conns: HashMap::new(),
            identities,
            max,
            overflow: 0,
        }
    }

    /// Records an open; returns the connection as now known.
    pub fn open(&mut self, ev: &ConnEvent) -> Option<&Connection> {
        if self.conns.len() >= self.max && !self.conns.contains_key(&ev.conn_id) {
            self.overflow += 1;
            return None;
        }
        let (local, remote) = socket_addrs(&ev.addrs);
        let identity = self
            .identities
            .acquire(ev.tgid, &comm_str(&ev.comm), ev.cgroup_id);
        let role = Role::from_u8(ev.role).unwrap_or(Role::Client);
        let conn = Connection {
            conn_id: ev.conn_id,
            pid: ev.tgid,
            fd: ev.fd,
            process: identity.exe.clone(),
            identity,
            peer_service: (role == Role::Client)
                .then(|| self.identities.peer(remote.ip()))
                .flatten(),
            role,
            local,
            remote,
            cgroup_id: ev.cgroup_id,
            opened_ns: ev.ts_ns,
        };
        if let Some(old) = self.conns.insert(ev.conn_id, conn) {
            self.identities.release(old.pid);
        }
        self.conns.get(&ev.conn_id)
    }

    pub fn get(&self, conn_id: u64) -> Option<&Connection> {
        self.conns.get(&conn_id)
    }

    /// Records a close; returns the connection it ends, if it was known.
    pub fn close(&mut self, conn_id: u64) -> Option<Connection> {
        let conn = self.conns.remove(&conn_id)?;
        self.identities.release(conn.pid);
        Some(conn)
    }

    /// Drops connections of processes that no longer exist; returns them.
    pub fn sweep_dead(&mut self) -> Vec<Connection> {
        let dead: Vec<u64> = self
            .conns
            .values()
            .filter(|c| !std::path::Path::new(&format!("/proc/{}", c.pid)).exists())
            .map(|c| c.conn_id)
            .collect();
        dead.into_iter().filter_map(|id| self.close(id)).collect()
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_event(conn_id: u64, pid: u32) -> ConnEvent {
        let mut addrs = SockAddrs {
            family: AF_INET,
            local_port: 40000,
            remote_port: 80,
            ..SockAddrs::default()
        };
        addrs.local_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        addrs.remote_addr[..4].copy_from_slice(&[127, 0, 0, 2]);
        ConnEvent {
            kind: 1,
            role: Role::Client as u8,
            close_reason: 0,
            _pad: [0; 5],
            tgid: pid,
            tid: pid,
            fd: 3,
            _pad2: 0,
            conn_id,
            ts_ns: 1,
            cgroup_id: 0,
            bytes_sent: 0,
            bytes_recv: 0,
            addrs,
            comm: *b"worker\0\0\0\0\0\0\0\0\0\0",
        }
    }

    #[test]
    fn addresses_and_bound() {
        let mut t = ConnTable::new(2);
        // A pid that cannot exist: the name falls back to the kernel's comm.
        let c = t.open(&open_event(1, u32::MAX)).unwrap().clone();
        assert_eq!(c.local.to_string(), "127.0.0.1:40000");
        assert_eq!(c.remote.to_string(), "127.0.0.2:80");
        assert_eq!(c.process, "worker");
        assert!(t.open(&open_event(2, u32::MAX)).is_some());
        assert!(t.open(&open_event(3, u32::MAX)).is_none());
        assert_eq!(t.overflow, 1);
        assert_eq!(t.sweep_dead().len(), 2);
        assert!(t.is_empty());
    }

    #[test]
    fn ipv6() {
        let mut ev = open_event(1, 1);
        ev.addrs.family = tangle_common::AF_INET6;
        ev.addrs.local_addr = Ipv6Addr::LOCALHOST.octets();
        ev.addrs.remote_addr = Ipv6Addr::LOCALHOST.octets();
        let (l, r) = socket_addrs(&ev.addrs);
        assert_eq!(l.to_string(), "[::1]:40000");
        assert_eq!(r.to_string(), "[::1]:80");
    }
}
