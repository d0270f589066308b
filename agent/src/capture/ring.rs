//! Reads the ring buffer and hands each record to the connection table,
//! which passes it on to a [`Sink`] with its connection.

use std::io;

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use crate::connections::{ConnStats, ConnTable, Sink, Tracker};

/// The longest a ready event waits for the reader.
pub const POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(20);

/// The ring buffer and the connection table its records go through; `S`
/// is what the sink keeps per connection.
pub struct Reader<S> {
    ring: AsyncFd<RingBuf<MapData>>,
    connections: Tracker<S>,
}

impl<S: Default> Reader<S> {
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
            connections: Tracker::new(ConnTable::with_identities(max_connections, identities)),
        })
    }

    pub fn stats(&self) -> ConnStats {
        self.connections.stats()
    }

    /// The connection table, with each connection's state.
    pub fn table(&self) -> &ConnTable<S> {
        self.connections.table()
    }

    /// Waits for a wake-up from the kernel or for the poll interval, then
    /// hands every event that is ready to `sink`. Returns how many. The kernel
    /// wakes the reader only once a batch has piled up, so the interval bounds
    /// how late a lone event can be.
    pub async fn next_batch(&mut self, sink: &mut impl Sink<State = S>) -> io::Result<usize> {
        match tokio::time::timeout(POLL_INTERVAL, self.ring.readable_mut()).await {
            Ok(guard) => guard?.clear_ready(),
            Err(_elapsed) => {}
        }
        Ok(self.drain(sink))
    }

    /// Hands over whatever is ready now, without waiting.
    pub fn drain(&mut self, sink: &mut impl Sink<State = S>) -> usize {
        let Self { ring, connections } = self;
        let mut n = 0;
        while let Some(item) = ring.get_mut().next() {
            n += 1;
            connections.record(&item, sink);
        }
        connections.table.tick();
        sink.flush();
        n
    }

    /// Ends the connections of processes that have exited, as closes to
    /// `sink` (their close was never seen); returns how many.
    pub fn sweep(&mut self, sink: &mut impl Sink<State = S>) -> usize {
        self.connections.sweep(sink, crate::output::monotonic_ns())
    }

    /// Tangle's own processes seen with a connection since the last call,
    /// for the kernel side to stop following.
    pub fn take_ignored(&mut self) -> Vec<u32> {
        self.connections.take_ignored()
    }
}
