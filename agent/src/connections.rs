//! The agent's one table of the connections the kernel side tracks: who
//! owns each one, both addresses, the role, and what the consumer of its
//! events keeps for it (its parsers' state). Bounded in size.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use tangle_common::{AF_INET, CloseReason, ConnEvent, DataHeader, Role, SockAddrs};

use crate::{
    capture::events::{Event, decode},
    identity::{Identities, IdentityCell},
};

/// A TCP connection seen from one process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    pub conn_id: u64,
    pub pid: u32,
    pub fd: u32,
    /// Who the process is: its service name and where that came from,
    /// filled in off the capture thread.
    pub identity: std::sync::Arc<IdentityCell>,
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
    /// The executable's name (resolved now if it is not yet).
    pub fn process(&self) -> &str {
        &self.identity.get().exe
    }

    /// A connection of process 7 (`svc`) for unit tests.
    #[cfg(test)]
    pub(crate) fn sample(conn_id: u64, role: Role, local: &str, remote: &str) -> Self {
        Self {
            conn_id,
            pid: 7,
            fd: 3,
            identity: IdentityCell::known(crate::identity::Identity::executable("svc")),
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
    // An IPv4-mapped IPv6 address (a dual-stack socket, as Java's) is
    // the IPv4 address: the other end of the connection says so.
    let ip = |b: &[u8; 16]| -> IpAddr {
        if a.family == AF_INET {
            IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
        } else {
            IpAddr::V6(Ipv6Addr::from(*b)).to_canonical()
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
    String::from_utf8_lossy(comm.get(..end).unwrap_or_default()).into_owned()
}

/// Where the events of tracked connections go, each with its connection
/// and the state the sink keeps for it. Borrowed data is only valid during
/// the call.
pub trait Sink {
    /// What the sink keeps per connection (a parser's state, say). The
    /// table owns it beside the connection, so the two come and go together.
    type State: Default;
    fn open(&mut self, conn: &Connection, state: &mut Self::State, ev: &ConnEvent);
    /// A connection ended: closed, evicted, its process gone, or its id
    /// reused. `conn` is None when its open was not seen.
    fn close(&mut self, conn: Option<(Connection, Self::State)>, ev: &ConnEvent);
    /// `conn` is None when its open was not seen.
    fn data(
        &mut self,
        conn: Option<(&Connection, &mut Self::State)>,
        header: &DataHeader,
        bytes: &[u8],
    );
    /// After each transfer: a chance to take memory back from the states
    /// of the whole table.
    fn rebalance(&mut self, _table: &mut ConnTable<Self::State>) {}
    /// A batch of events ended: a good time to flush.
    fn flush(&mut self) {}
}

/// Counters of the connection table and the events through it.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct ConnStats {
    pub events: u64,
    pub opens: u64,
    pub closes: u64,
    pub data: u64,
    /// Records that did not decode.
    pub decode_errors: u64,
    /// Data for a connection whose open was never seen.
    pub orphan_data: u64,
    /// Connections in the table now.
    pub connections: u64,
    /// Connections forgotten (least recently active) to make room for new ones.
    pub evicted: u64,
    /// Connections whose id came back in a new open before their close was
    /// seen: the old one ended there.
    pub replaced: u64,
    /// Connections of Tangle's own processes, not followed.
    pub ignored: u64,
    /// Processes named by the identity thread.
    pub named_by_thread: u64,
    /// Processes named where the name was first needed (before the
    /// identity thread got to them, or without one).
    pub named_on_demand: u64,
}

/// A connection the table let go of without a close from the kernel.
pub struct Ended<S> {
    pub conn: Connection,
    pub state: S,
    pub reason: CloseReason,
}

struct Entry<S> {
    conn: Connection,
    /// When the connection last moved bytes (or opened), kernel clock.
    last_active: u64,
    state: S,
}

/// Live connections by id, each with the state its sink keeps (`S`): one
/// table, so a connection and its parsers cannot outlive one another.
/// Bounded: when full, the least recently active connections make room
/// for new ones (counted), so idle connections piling up (a flood, or
/// leaks) never blind the agent to new traffic.
pub struct ConnTable<S = ()> {
    conns: HashMap<u64, Entry<S>>,
    identities: Identities,
    max: usize,
    /// Connections forgotten to make room for new ones.
    pub evicted: u64,
    /// Connections ended by a new open with their id.
    pub replaced: u64,
    /// Connections of Tangle's own processes, not tracked.
    pub ignored: u64,
    /// Tangle's own processes seen with a connection since the last look,
    /// for the kernel side to stop following.
    ignored_new: Vec<u32>,
}

impl<S: Default> ConnTable<S> {
    pub fn new(max: usize) -> Self {
        Self::with_identities(max, Identities::default())
    }

    pub fn with_identities(max: usize, identities: Identities) -> Self {
        Self {
            conns: HashMap::new(),
            identities,
            max: max.max(1),
            evicted: 0,
            replaced: 0,
            ignored: 0,
            ignored_new: Vec::new(),
        }
    }

    /// Records an open. Connections it ends go to `ended`: the one that had
    /// its id (the kernel reuses ids, and a close can be lost), and those
    /// evicted to make room. Returns whether the connection is tracked.
    pub fn open(&mut self, ev: &ConnEvent, ended: &mut Vec<Ended<S>>) -> bool {
        if let Some((conn, state)) = self.close(ev.conn_id) {
            self.replaced += 1;
            ended.push(Ended {
                conn,
                state,
                reason: CloseReason::Replaced,
            });
        }
        let identity = self
            .identities
            .acquire(ev.tgid, &comm_str(&ev.comm), ev.cgroup_id);
        // Known already as Tangle's own (named on an earlier connection, or
        // at once without an identity thread); otherwise found by the
        // identity thread, and its spans dropped at export.
        if identity.ready().is_some_and(|id| id.tangle) {
            self.identities.release(ev.tgid);
            self.ignored += 1;
            if self.ignored_new.len() < 1024 && !self.ignored_new.contains(&ev.tgid) {
                self.ignored_new.push(ev.tgid);
            }
            return false;
        }
        if self.conns.len() >= self.max {
            self.evict(ended);
        }
        let (local, remote) = socket_addrs(&ev.addrs);
        let role = Role::from_u8(ev.role).unwrap_or(Role::Client);
        let conn = Connection {
            conn_id: ev.conn_id,
            pid: ev.tgid,
            fd: ev.fd,
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
        self.conns.insert(
            ev.conn_id,
            Entry {
                conn,
                last_active: ev.ts_ns,
                state: S::default(),
            },
        );
        true
    }

    /// Forgets the least recently active sixteenth of the table (at least
    /// one): one scan per many opens, not one per open.
    fn evict(&mut self, out: &mut Vec<Ended<S>>) {
        let n = (self.max / 16).max(1).min(self.conns.len());
        if n == 0 {
            return;
        }
        let mut ages: Vec<(u64, u64)> = self
            .conns
            .iter()
            .map(|(id, e)| (e.last_active, *id))
            .collect();
        ages.select_nth_unstable(n - 1);
        for (_, id) in ages.into_iter().take(n) {
            if let Some((conn, state)) = self.close(id) {
                self.evicted += 1;
                out.push(Ended {
                    conn,
                    state,
                    reason: CloseReason::Evicted,
                });
            }
        }
    }

    pub fn get(&self, conn_id: u64) -> Option<&Connection> {
        self.conns.get(&conn_id).map(|e| &e.conn)
    }

    /// The connection a transfer at `ts_ns` moved bytes on, marked active,
    /// with its state.
    pub fn touch(&mut self, conn_id: u64, ts_ns: u64) -> Option<(&Connection, &mut S)> {
        let e = self.conns.get_mut(&conn_id)?;
        e.last_active = e.last_active.max(ts_ns);
        Some((&e.conn, &mut e.state))
    }

    /// Every connection's state.
    pub fn states(&self) -> impl Iterator<Item = &S> {
        self.conns.values().map(|e| &e.state)
    }

    /// Every connection's state, by connection id.
    pub fn states_mut(&mut self) -> impl Iterator<Item = (u64, &mut S)> {
        self.conns.iter_mut().map(|(id, e)| (*id, &mut e.state))
    }

    /// The state of connection `conn_id`.
    pub fn state_mut(&mut self, conn_id: u64) -> Option<&mut S> {
        self.conns.get_mut(&conn_id).map(|e| &mut e.state)
    }

    /// Records a close; returns the connection it ends, if it was known.
    pub(crate) fn close(&mut self, conn_id: u64) -> Option<(Connection, S)> {
        let e = self.conns.remove(&conn_id)?;
        self.identities.release(e.conn.pid);
        Some((e.conn, e.state))
    }

    /// Drops connections of processes that no longer exist; returns them.
    pub(crate) fn sweep_dead(&mut self) -> Vec<Ended<S>> {
        // One look at /proc per process, not per connection.
        let mut alive: HashMap<u32, bool> = HashMap::new();
        let dead: Vec<u64> = self
            .conns
            .values()
            .filter(|e| {
                !*alive.entry(e.conn.pid).or_insert_with(|| {
                    std::path::Path::new(&format!("/proc/{}", e.conn.pid)).exists()
                })
            })
            .map(|e| e.conn.conn_id)
            .collect();
        dead.into_iter()
            .filter_map(|id| self.close(id))
            .map(|(conn, state)| Ended {
                conn,
                state,
                reason: CloseReason::ProcessGone,
            })
            .collect()
    }

    /// Tangle's own processes seen with a connection since the last call
    /// (at the open, or by the identity thread since).
    pub fn take_ignored(&mut self) -> Vec<u32> {
        let mut pids = std::mem::take(&mut self.ignored_new);
        pids.extend(self.identities.take_tangle_found());
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Time-based work of naming processes ([`Identities::tick`]).
    pub fn tick(&mut self) {
        self.identities.tick();
    }

    /// Counters of naming processes.
    pub fn naming_stats(&self) -> crate::identity::NamingStats {
        self.identities.stats()
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }
}

/// Keeps the table up to date with the events through it: each decoded
/// ring buffer record is applied to the table, then handed to a [`Sink`]
/// with its connection and state.
pub struct Tracker<S> {
    pub(crate) table: ConnTable<S>,
    stats: ConnStats,
    /// Connections ended by the last open (reused, not allocated per open).
    ended: Vec<Ended<S>>,
}

impl<S: Default> Tracker<S> {
    pub fn new(table: ConnTable<S>) -> Self {
        Self {
            table,
            stats: ConnStats::default(),
            ended: Vec::new(),
        }
    }

    pub fn stats(&self) -> ConnStats {
        let naming = self.table.naming_stats();
        ConnStats {
            named_by_thread: naming.by_thread,
            named_on_demand: naming.on_demand,
            connections: self.table.len() as u64,
            evicted: self.table.evicted,
            replaced: self.table.replaced,
            ignored: self.table.ignored,
            ..self.stats
        }
    }

    pub fn table(&self) -> &ConnTable<S> {
        &self.table
    }

    /// Applies one ring buffer record and hands it to `sink`.
    pub fn record(&mut self, record: &[u8], sink: &mut impl Sink<State = S>) {
        match decode(record) {
            Ok(event) => self.event(event, sink),
            Err(err) => {
                self.stats.events += 1;
                self.stats.decode_errors += 1;
                log::debug!("dropped a ring buffer record: {err}");
            }
        }
    }

    /// Applies one event and hands it to `sink`.
    pub fn event(&mut self, event: Event<'_>, sink: &mut impl Sink<State = S>) {
        let Self {
            table,
            stats,
            ended,
        } = self;
        stats.events += 1;
        match event {
            Event::Open(ev) => {
                stats.opens += 1;
                let tracked = table.open(&ev, ended);
                for e in ended.drain(..) {
                    let close = closing(&e.conn, ev.ts_ns, e.reason);
                    sink.close(Some((e.conn, e.state)), &close);
                }
                if tracked && let Some(e) = table.conns.get_mut(&ev.conn_id) {
                    sink.open(&e.conn, &mut e.state, &ev);
                }
            }
            Event::Close(ev) => {
                stats.closes += 1;
                sink.close(table.close(ev.conn_id), &ev);
            }
            Event::Data(header, bytes) => {
                stats.data += 1;
                let conn = table.touch(header.conn_id, header.ts_ns);
                if conn.is_none() {
                    stats.orphan_data += 1;
                }
                sink.data(conn, &header, bytes);
                sink.rebalance(table);
            }
        }
    }

    /// Ends the connections of processes that have exited, as closes to
    /// `sink` (their close was never seen); returns how many.
    pub fn sweep(&mut self, sink: &mut impl Sink<State = S>, now_ns: u64) -> usize {
        let gone = self.table.sweep_dead();
        let n = gone.len();
        for e in gone {
            let close = closing(&e.conn, now_ns, e.reason);
            sink.close(Some((e.conn, e.state)), &close);
        }
        n
    }

    /// Tangle's own processes seen with a connection since the last call,
    /// for the kernel side to stop following.
    pub fn take_ignored(&mut self) -> Vec<u32> {
        self.table.take_ignored()
    }
}

/// A close event for a connection the agent ends itself (evicted, replaced,
/// or its process gone) at `ts_ns`.
fn closing(c: &Connection, ts_ns: u64, reason: CloseReason) -> ConnEvent {
    ConnEvent {
        kind: tangle_common::EventKind::ConnClose as u8,
        close_reason: reason as u8,
        conn_id: c.conn_id,
        tgid: c.pid,
        fd: c.fd,
        ts_ns,
        ..ConnEvent::default()
    }
}

/// Human name of a close reason byte.
pub fn close_reason(r: u8) -> &'static str {
    match r {
        x if x == CloseReason::TcpClose as u8 => "tcp-close",
        x if x == CloseReason::Evicted as u8 => "evicted",
        x if x == CloseReason::ProcessGone as u8 => "process-gone",
        x if x == CloseReason::HandedOver as u8 => "handed-over",
        x if x == CloseReason::Replaced as u8 => "replaced",
        _ => "unknown",
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::identity::Identity;

    pub(crate) fn open_event(conn_id: u64, pid: u32) -> ConnEvent {
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
        let mut t = ConnTable::<()>::new(2);
        let mut evicted = Vec::new();
        // A pid that cannot exist: the name falls back to the kernel's comm.
        assert!(t.open(&open_event(1, u32::MAX), &mut evicted));
        let c = t.get(1).unwrap().clone();
        assert_eq!(c.local.to_string(), "127.0.0.1:40000");
        assert_eq!(c.remote.to_string(), "127.0.0.2:80");
        assert_eq!(c.process(), "worker");
        assert!(t.open(&open_event(2, u32::MAX), &mut evicted));
        // 1 moved bytes since: 2 is the least recently active, and goes.
        assert!(t.touch(1, 10).is_some());
        assert!(t.open(&open_event(3, u32::MAX), &mut evicted));
        assert_eq!(t.evicted, 1);
        assert_eq!(
            evicted.iter().map(|e| e.conn.conn_id).collect::<Vec<_>>(),
            [2]
        );
        assert!(t.get(1).is_some() && t.get(3).is_some() && t.get(2).is_none());
        assert_eq!(t.sweep_dead().len(), 2);
        assert!(t.is_empty());
    }

    #[test]
    fn tangle_is_not_traced() {
        // This test's own process, its executable renamed by the test.
        let me = std::process::id();
        let mut identities = Identities::default();
        identities.preset(
            me,
            Identity {
                tangle: true,
                ..Identity::executable("tangle-agent")
            },
        );
        let mut t = ConnTable::<()>::with_identities(8, identities);
        let ev = open_event(1, me);
        assert!(!t.open(&ev, &mut Vec::new()));
        assert_eq!(t.take_ignored(), [me]);
        assert!(t.is_empty());
        // IdentityCell so by its comm only: traced.
        let mut ev = open_event(2, u32::MAX);
        ev.comm = *b"tangle-collecto\0";
        assert!(t.open(&ev, &mut Vec::new()));
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
        ev.addrs.local_addr = "::ffff:127.0.0.1".parse::<Ipv6Addr>().unwrap().octets();
        let (l, _) = socket_addrs(&ev.addrs);
        assert_eq!(
            l.to_string(),
            "127.0.0.1:40000",
            "a dual-stack socket's IPv4 peer"
        );
    }
}
