//! Reads the ring buffer, keeps the connection table, and hands each event
//! to a [`Sink`] with the connection it belongs to.

use std::io;

use aya::maps::{MapData, RingBuf};
use tangle_common::{CloseReason, ConnEvent, DataHeader};
use tokio::io::unix::AsyncFd;

use crate::{
    conntrack::{ConnTable, Connection},
    events::{Event, decode},
};

/// Where decoded events go. Borrowed data is only valid during the call.
pub trait Sink {
    fn open(&mut self, conn: &Connection, ev: &ConnEvent);
    /// `conn` is None when the open was not seen (table full).
    fn close(&mut self, conn: Option<&Connection>, ev: &ConnEvent);
    fn data(&mut self, conn: Option<&Connection>, header: &DataHeader, bytes: &[u8]);
    /// A batch of events ended: a good time to flush.
    fn flush(&mut self) {}
}

/// Counters of the userspace side.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct ReaderStats {
    pub events: u64,
    pub opens: u64,
    pub closes: u64,
    pub data: u64,
    /// Records that did not decode.
    pub decode_errors: u64,
    /// Data for a connection whose open was never seen.
    pub orphan_data: u64,
    /// Connections in the userspace table now.
    pub connections: u64,
    /// Connections forgotten (least recently active) to make room for new ones.
    pub evicted: u64,
    /// Connections of Tangle's own processes, not followed.
    pub ignored: u64,
}

/// The longest a ready event waits for the reader.
pub const POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(20);

pub struct Reader {
    ring: AsyncFd<RingBuf<MapData>>,
    table: ConnTable,
    stats: ReaderStats,
    /// Connections evicted by the last open (reused, not allocated per open).
    evicted: Vec<Connection>,
}

/// Human name of a close reason byte.
pub fn close_reason(r: u8) -> &'static str {
    match r {
        x if x == CloseReason::TcpClose as u8 => "tcp-close",
        x if x == CloseReason::Evicted as u8 => "evicted",
        x if x == CloseReason::ProcessGone as u8 => "process-gone",
        x if x == CloseReason::HandedOver as u8 => "handed-over",
        _ => "unknown",
    }
}

impl Reader {
    pub fn new(
        ring: RingBuf<MapData>,
        max_connections: usize,
        identities: crate::identity::Identities,
    ) -> io::Result<Self> {
        // SAFETY: the ring buffer owns its fd and the AsyncFd owns the ring
        // buffer, so the fd stays open for as long as it is registered.
        let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(Self {
            ring,
            table: ConnTable::with_identities(max_connections, identities),
            stats: ReaderStats::default(),
            evicted: Vec::new(),
        })
    }

    pub fn stats(&self) -> ReaderStats {
        ReaderStats {
            connections: self.table.len() as u64,
            evicted: self.table.evicted,
            ignored: self.table.ignored,
            ..self.stats
        }
    }

    pub fn table(&self) -> &ConnTable {
        &self.table
    }

    /// Waits for a wake-up from the kernel or for the poll interval, then
    /// hands every event that is ready to `sink`. Returns how many. The kernel
    /// wakes the reader only once a batch has piled up, so the interval bounds
    /// how late a lone event can be.
    pub async fn next_batch(&mut self, sink: &mut impl Sink) -> io::Result<usize> {
        match tokio::time::timeout(POLL_INTERVAL, self.ring.readable_mut()).await {
            Ok(guard) => guard?.clear_ready(),
            Err(_elapsed) => {}
        }
        Ok(self.drain(sink))
    }

    /// Hands over whatever is ready now, without waiting.
    pub fn drain(&mut self, sink: &mut impl Sink) -> usize {
        let Self {
            ring,
            table,
            stats,
            evicted,
        } = self;
        let mut n = 0;
        while let Some(item) = ring.get_mut().next() {
            n += 1;
            dispatch(&item, table, stats, evicted, sink);
        }
        sink.flush();
        n
    }

    /// Ends the connections of processes that have exited, as closes to
    /// `sink` (their close was never seen); returns how many.
    pub fn sweep(&mut self, sink: &mut impl Sink) -> usize {
        let gone = self.table.sweep_dead();
        let now = crate::output::monotonic_ns();
        for c in &gone {
            sink.close(Some(c), &ended(c, now, CloseReason::ProcessGone));
        }
        gone.len()
    }

    /// Tangle's own processes seen with a connection since the last call,
    /// for the kernel side to stop following.
    pub fn take_ignored(&mut self) -> Vec<u32> {
        self.table.take_ignored()
    }
}

/// A close event for a connection the agent ends itself (evicted, or its
/// process gone) at `ts_ns`.
fn ended(c: &Connection, ts_ns: u64, reason: CloseReason) -> ConnEvent {
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

fn dispatch(
    record: &[u8],
    table: &mut ConnTable,
    stats: &mut ReaderStats,
    evicted: &mut Vec<Connection>,
    sink: &mut impl Sink,
) {
    stats.events += 1;
    match decode(record) {
        Ok(Event::Open(ev)) => {
            stats.opens += 1;
            let tracked = table.open(&ev, evicted);
            for c in evicted.drain(..) {
                sink.close(Some(&c), &ended(&c, ev.ts_ns, CloseReason::Evicted));
            }
            if tracked && let Some(conn) = table.get(ev.conn_id) {
                sink.open(conn, &ev);
            }
        }
        Ok(Event::Close(ev)) => {
            stats.closes += 1;
            let conn = table.close(ev.conn_id);
            sink.close(conn.as_ref(), &ev);
        }
        Ok(Event::Data(header, bytes)) => {
            stats.data += 1;
            let conn = table.touch(header.conn_id, header.ts_ns);
            if conn.is_none() {
                stats.orphan_data += 1;
            }
            sink.data(conn, &header, bytes);
        }
        Err(err) => {
            stats.decode_errors += 1;
            log::debug!("dropped a ring buffer record: {err}");
        }
    }
}
