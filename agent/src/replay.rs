//! `tangle-agent replay`: the parsers on a pcap or pcapng file. TCP streams
//! are reassembled (out-of-order segments, retransmissions, lost segments
//! as gaps) and fed to the same per-connection parsers the live agent uses.

use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    net::{IpAddr, SocketAddr},
    path::Path,
};

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use pcap_parser::{Linktype, PcapBlockOwned, PcapError, pcapng::Block};
use tangle_protocols::{Chunk, Connection, Exchange, ParserStats, Side};

/// Why a capture file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The file could not be opened.
    #[error("cannot open {path}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The file is not pcap or pcapng, or is damaged past a packet boundary.
    #[error("{path} is not a readable pcap or pcapng file: {reason}")]
    Format { path: String, reason: String },
}

/// What a replay read and found.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct ReplayStats {
    pub packets: u64,
    pub tcp_segments: u64,
    /// Packets that were not TCP over IP, or did not decode.
    pub skipped: u64,
    pub connections: u64,
    pub exchanges: u64,
    /// Bytes of TCP streams never seen (lost segments), passed to the parsers as gaps.
    pub gap_bytes: u64,
    pub retransmitted_segments: u64,
    /// The file ends in the middle of a packet (a killed tcpdump, a full disk).
    pub cut_short: bool,
    #[serde(flatten)]
    pub parsers: ParserStats,
}

/// Out-of-order data held per direction before it is declared lost.
const MAX_PENDING_BYTES: usize = 1 << 20;
/// Connections followed at once.
const MAX_FLOWS: usize = 65_536;

#[derive(Default)]
struct Direction {
    /// Initial sequence number (of the first byte, or of the SYN).
    isn: Option<u32>,
    /// Next expected offset from `isn`.
    next: u64,
    pending: BTreeMap<u64, (u64, Vec<u8>)>,
    pending_bytes: usize,
    fin: bool,
}

impl Direction {
    /// The TCP sequence number of the byte at `offset` from `isn`.
    fn seq_at(&self, offset: u64) -> Option<u32> {
        self.isn.map(|isn| isn.wrapping_add(offset as u32))
    }
}

struct Flow {
    client: SocketAddr,
    server: SocketAddr,
    conn: Connection,
    dirs: [Direction; 2],
    last_ts: u64,
}

/// One exchange found in the capture, with its connection.
pub struct Found<'a> {
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub exchange: &'a Exchange,
}

struct Replayer<F: FnMut(Found<'_>)> {
    flows: HashMap<(SocketAddr, SocketAddr), Flow>,
    stats: ReplayStats,
    out: Vec<Exchange>,
    emit: F,
}

fn side_index(side: Side) -> usize {
    match side {
        Side::Request => 0,
        Side::Response => 1,
    }
}

impl<F: FnMut(Found<'_>)> Replayer<F> {
    fn emit(&mut self, client: SocketAddr, server: SocketAddr) {
        for e in self.out.drain(..) {
            self.stats.exchanges += 1;
            (self.emit)(Found {
                client,
                server,
                exchange: &e,
            });
        }
    }

    fn segment(
        &mut self,
        ts: u64,
        src: SocketAddr,
        dst: SocketAddr,
        tcp: &etherparse::TcpSlice<'_>,
    ) {
        self.stats.tcp_segments += 1;
        let key = if src < dst { (src, dst) } else { (dst, src) };
        if !self.flows.contains_key(&key) {
            if self.flows.len() >= MAX_FLOWS {
                self.stats.skipped += 1;
                return;
            }
            // The SYN's sender is the client; without one, the ephemeral (higher) port.
            let src_is_client = if tcp.syn() {
                !tcp.ack()
            } else {
                src.port() > dst.port()
            };
            let (client, server) = if src_is_client {
                (src, dst)
            } else {
                (dst, src)
            };
            self.flows.insert(
                key,
                Flow {
                    client,
                    server,
                    conn: Connection::default(),
                    dirs: Default::default(),
                    last_ts: ts,
                },
            );
            self.stats.connections += 1;
        }
        let Some(flow) = self.flows.get_mut(&key) else {
            return;
        };
        flow.last_ts = ts;
        let side = if src == flow.client {
            Side::Request
        } else {
            Side::Response
        };
        let Some(dir) = flow.dirs.get_mut(side_index(side)) else {
            return;
        };
        let seq = tcp.sequence_number();
        if tcp.syn() {
            dir.isn = Some(seq);
            dir.next = 1;
        }
        let isn = *dir.isn.get_or_insert(seq);
        let payload = tcp.payload();
        if !payload.is_empty() {
            let at = u64::from(seq.wrapping_sub(isn));
            let end = at + payload.len() as u64;
            if end <= dir.next {
                self.stats.retransmitted_segments += 1;
            } else if at <= dir.next {
                let skip = (dir.next - at) as usize;
                let seq = dir.seq_at(dir.next);
                dir.next = end;
                flow.conn.feed(
                    Chunk::whole(side, ts, payload.get(skip..).unwrap_or_default()).with_seq(seq),
                    &mut self.out,
                );
                Self::drain(
                    dir,
                    &mut flow.conn,
                    side,
                    &mut self.out,
                    false,
                    &mut self.stats,
                );
            } else if !dir.pending.contains_key(&at) {
                dir.pending_bytes += payload.len();
                dir.pending.insert(at, (ts, payload.to_vec()));
                if dir.pending_bytes > MAX_PENDING_BYTES {
                    Self::drain(
                        dir,
                        &mut flow.conn,
                        side,
                        &mut self.out,
                        true,
                        &mut self.stats,
                    );
                }
            }
        }
        if tcp.fin() {
            dir.fin = true;
        }
        let closed = tcp.rst() || flow.dirs.iter().all(|d| d.fin);
        let (client, server) = (flow.client, flow.server);
        if closed {
            self.close(key, ts);
        }
        self.emit(client, server);
    }

    /// Delivers held segments that are now in order; with `force`, declares
    /// the missing bytes before the next held segment lost.
    fn drain(
        dir: &mut Direction,
        conn: &mut Connection,
        side: Side,
        out: &mut Vec<Exchange>,
        force: bool,
        stats: &mut ReplayStats,
    ) {
        while let Some((&at, _)) = dir.pending.first_key_value() {
            if at > dir.next {
                if !force {
                    break;
                }
                let gap = at - dir.next;
                stats.gap_bytes += gap;
                let ts = dir.pending.first_key_value().map_or(0, |(_, (ts, _))| *ts);
                conn.feed(
                    Chunk {
                        side,
                        ts_ns: ts,
                        bytes: &[],
                        total_len: gap,
                        seq: dir.seq_at(dir.next),
                    },
                    out,
                );
                dir.next = at;
            }
            let Some((at, (ts, bytes))) = dir.pending.pop_first() else {
                break;
            };
            dir.pending_bytes -= bytes.len();
            let end = at + bytes.len() as u64;
            if end > dir.next {
                let skip = (dir.next - at) as usize;
                conn.feed(
                    Chunk::whole(side, ts, bytes.get(skip..).unwrap_or_default())
                        .with_seq(dir.seq_at(dir.next)),
                    out,
                );
                dir.next = end;
            }
        }
    }

    fn close(&mut self, key: (SocketAddr, SocketAddr), ts: u64) {
        let Some(mut flow) = self.flows.remove(&key) else {
            return;
        };
        for (dir, side) in flow.dirs.iter_mut().zip([Side::Request, Side::Response]) {
            Self::drain(
                dir,
                &mut flow.conn,
                side,
                &mut self.out,
                true,
                &mut self.stats,
            );
        }
        flow.conn.finish(ts, &mut self.out);
        self.stats.parsers = self.stats.parsers + flow.conn.stats();
        self.emit(flow.client, flow.server);
    }

    fn packet(&mut self, linktype: Linktype, ts: u64, data: &[u8]) {
        self.stats.packets += 1;
        let sliced = match linktype {
            Linktype::ETHERNET => SlicedPacket::from_ethernet(data),
            Linktype::LINUX_SLL => SlicedPacket::from_linux_sll(data),
            Linktype::LINUX_SLL2 if data.len() >= 20 => {
                let ether_type = data
                    .get(..2)
                    .and_then(|b| b.try_into().ok())
                    .map_or(0, u16::from_be_bytes);
                SlicedPacket::from_ether_type(ether_type.into(), data.get(20..).unwrap_or_default())
            }
            Linktype::NULL | Linktype::LOOP if data.len() >= 4 => {
                SlicedPacket::from_ip(data.get(4..).unwrap_or_default())
            }
            Linktype::RAW | Linktype::IPV4 | Linktype::IPV6 => SlicedPacket::from_ip(data),
            _ => {
                self.stats.skipped += 1;
                return;
            }
        };
        let Ok(p) = sliced else {
            self.stats.skipped += 1;
            return;
        };
        let (src_ip, dst_ip): (IpAddr, IpAddr) = match &p.net {
            Some(NetSlice::Ipv4(ip)) => (
                ip.header().source_addr().into(),
                ip.header().destination_addr().into(),
            ),
            Some(NetSlice::Ipv6(ip)) => (
                ip.header().source_addr().into(),
                ip.header().destination_addr().into(),
            ),
            _ => {
                self.stats.skipped += 1;
                return;
            }
        };
        match &p.transport {
            Some(TransportSlice::Tcp(tcp)) => {
                let src = SocketAddr::new(src_ip, tcp.source_port());
                let dst = SocketAddr::new(dst_ip, tcp.destination_port());
                self.segment(ts, src, dst, tcp);
            }
            _ => self.stats.skipped += 1,
        }
    }
}

/// Replays a capture file; `emit` gets each exchange as it completes.
pub fn replay(path: &Path, emit: impl FnMut(Found<'_>)) -> Result<ReplayStats, ReplayError> {
    let shown = path.display().to_string();
    let file = File::open(path).map_err(|source| ReplayError::Open {
        path: shown.clone(),
        source,
    })?;
    let format_err = |reason: String| ReplayError::Format {
        path: shown.clone(),
        reason,
    };
    let mut reader =
        pcap_parser::create_reader(1 << 20, file).map_err(|e| format_err(format!("{e:?}")))?;
    let mut r = Replayer {
        flows: HashMap::new(),
        stats: ReplayStats::default(),
        out: Vec::new(),
        emit,
    };
    // Legacy pcap: one link type and time unit; pcapng: per interface.
    let mut legacy = (Linktype::ETHERNET, 1_000u64);
    let mut interfaces: Vec<(Linktype, u64, i64)> = Vec::new();
    loop {
        match reader.next() {
            Ok((offset, block)) => {
                match block {
                    PcapBlockOwned::LegacyHeader(h) => {
                        legacy = (
                            h.network,
                            if h.is_nanosecond_precision() {
                                1
                            } else {
                                1_000
                            },
                        );
                    }
                    PcapBlockOwned::Legacy(b) => {
                        let ts =
                            u64::from(b.ts_sec) * 1_000_000_000 + u64::from(b.ts_usec) * legacy.1;
                        r.packet(legacy.0, ts, b.data);
                    }
                    PcapBlockOwned::NG(Block::SectionHeader(_)) => interfaces.clear(),
                    PcapBlockOwned::NG(Block::InterfaceDescription(idb)) => {
                        interfaces.push((
                            idb.linktype,
                            idb.ts_resolution().unwrap_or(1_000_000),
                            idb.ts_offset(),
                        ));
                    }
                    PcapBlockOwned::NG(Block::EnhancedPacket(epb)) => {
                        let (linktype, units, offset) = interfaces
                            .get(epb.if_id as usize)
                            .copied()
                            .unwrap_or((Linktype::ETHERNET, 1_000_000, 0));
                        let raw = (u64::from(epb.ts_high) << 32) | u64::from(epb.ts_low);
                        let ns = (u128::from(raw) * 1_000_000_000 / u128::from(units.max(1)))
                            as i128
                            + i128::from(offset) * 1_000_000_000;
                        r.packet(linktype, ns.max(0) as u64, epb.data);
                    }
                    PcapBlockOwned::NG(Block::SimplePacket(spb)) => {
                        let linktype = interfaces.first().map_or(Linktype::ETHERNET, |i| i.0);
                        r.packet(linktype, 0, spb.data);
                    }
                    PcapBlockOwned::NG(_) => {}
                }
                reader.consume(offset);
            }
            Err(PcapError::Eof) => break,
            // A file cut in the middle of a packet: what came before counts.
            Err(PcapError::UnexpectedEof) => {
                r.stats.cut_short = true;
                break;
            }
            Err(PcapError::Incomplete(_)) => {
                if reader.reader_exhausted() {
                    r.stats.cut_short = true;
                    break;
                }
                reader.refill().map_err(|e| format_err(format!("{e:?}")))?;
            }
            Err(e) => return Err(format_err(format!("{e:?}"))),
        }
    }
    let keys: Vec<_> = r.flows.keys().copied().collect();
    for key in keys {
        let ts = r.flows.get(&key).map_or(0, |f| f.last_ts);
        r.close(key, ts);
    }
    Ok(r.stats)
}
