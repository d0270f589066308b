//! Types shared by the eBPF programs (`tangle-agent-ebpf`) and the agent.
//!
//! Every type here is `#[repr(C)]` with explicit padding, so both sides see
//! the same bytes. With the `user` feature they implement `aya::Pod` and can
//! be read from maps and the ring buffer.
#![no_std]

/// The largest capture size the kernel side supports (bytes of one transfer).
/// Twice this plus a header must fit a per-CPU map value (32 KiB at most).
pub const MAX_CAPTURE: usize = 8 * 1024;
/// Bytes waiting in the ring buffer before the reader is woken.
pub const DEFAULT_WAKEUP_BYTES: u32 = 256 * 1024;
/// The capture size used when the user does not choose one.
pub const DEFAULT_CAPTURE: u32 = 4096;
/// The most iovec entries walked in one readv/writev/sendmsg/recvmsg: the
/// kernel's own limit (`UIO_MAXIOV`). gRPC writes a frame as dozens of small
/// slices; the walk stops as soon as the capture size is reached.
pub const MAX_IOV: u32 = 1024;
/// Length of a task's command name (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;

/// Address families, as in `<sys/socket.h>`.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// Which end of the TCP connection this process is.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// This end sent the SYN (`SYN_SENT` → `ESTABLISHED`).
    Client = 1,
    /// This end answered it (`SYN_RECV` → `ESTABLISHED`).
    Server = 2,
}

impl Role {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Client),
            2 => Some(Self::Server),
            _ => None,
        }
    }
}

/// Both ends of a TCP connection as this process sees them.
/// IPv4 addresses are stored in the first 4 bytes of the 16.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockAddrs {
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    /// Host byte order.
    pub local_port: u16,
    /// Host byte order.
    pub remote_port: u16,
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    pub _pad: u16,
}

/// An address and port whose connections are never tracked (the
/// collector's), a key of the kernel's `IGNORED_ENDPOINTS` map. Addresses
/// are stored as in [`SockAddrs`]: IPv4 in the first 4 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub addr: [u8; 16],
    /// Host byte order.
    pub port: u16,
    pub _pad: u16,
    /// For a loopback address, the network namespace (inode) it is in:
    /// every namespace has its own 127.0.0.1. 0 for other addresses.
    pub netns: u32,
}

impl Endpoint {
    /// Whether `addr` (as stored here, of `family`) is a loopback address,
    /// IPv4-mapped ones included.
    #[inline(always)]
    pub fn is_loopback(family: u16, addr: &[u8; 16]) -> bool {
        if family == AF_INET {
            return addr[0] == 127;
        }
        let zeros = addr[0]
            | addr[1]
            | addr[2]
            | addr[3]
            | addr[4]
            | addr[5]
            | addr[6]
            | addr[7]
            | addr[8]
            | addr[9];
        zeros == 0
            && ((addr[10] == 0xff && addr[11] == 0xff && addr[12] == 127)
                || (addr[10] | addr[11] | addr[12] | addr[13] | addr[14] == 0 && addr[15] == 1))
    }
}

/// A tracked connection, kept under its `struct sock *`: in the kernel's
/// `PENDING` map from the TCP handshake's end (role and both addresses
/// known, no process yet), in `CONNS` once the first transfer in a process
/// claims it for that process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnInfo {
    /// Unique on the node for the agent's lifetime.
    pub conn_id: u64,
    pub opened_ns: u64,
    pub bytes_sent: u64,
    pub bytes_recv: u64,
    pub addrs: SockAddrs,
    /// The process that moves its bytes; 0 until the first transfer.
    pub tgid: u32,
    /// An fd of the socket in that process, checked to hold it: a transfer
    /// on it reads its buffer from the syscall's arguments. `u32::MAX`
    /// while none is known (io_uring).
    pub fd: u32,
    pub role: u8,
    pub _pad: [u8; 7],
}

/// What the kernel tells userspace about; the first byte of every event.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    ConnOpen = 1,
    ConnClose = 2,
    Data = 3,
}

impl EventKind {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::ConnOpen),
            2 => Some(Self::ConnClose),
            3 => Some(Self::Data),
            _ => None,
        }
    }
}

/// Why a connection event of kind `ConnClose` was sent.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The kernel moved the socket to `TCP_CLOSE`: both ends closed, a
    /// reset, or the process exited.
    TcpClose = 2,
    /// The agent forgot it to make room in its full table (never sent by
    /// the kernel side).
    Evicted = 3,
    /// Its process is gone and no close was seen (never sent by the kernel side).
    ProcessGone = 4,
    /// Another process moved bytes on the socket and took it over (a
    /// pre-fork server's child serving what its parent accepted).
    HandedOver = 5,
    /// A new open came with its id before its close was seen (never sent
    /// by the kernel side): the old connection ends there.
    Replaced = 6,
}

/// A connection opened or closed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnEvent {
    /// `EventKind::ConnOpen` or `EventKind::ConnClose`.
    pub kind: u8,
    pub role: u8,
    /// `CloseReason` for closes, 0 for opens.
    pub close_reason: u8,
    pub _pad: [u8; 5],
    pub tgid: u32,
    pub tid: u32,
    pub fd: u32,
    pub _pad2: u32,
    pub conn_id: u64,
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    pub cgroup_id: u64,
    pub bytes_sent: u64,
    pub bytes_recv: u64,
    pub addrs: SockAddrs,
    pub comm: [u8; COMM_LEN],
}

/// Direction of a data transfer, seen from the process.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The process wrote (sent) the bytes.
    Egress = 1,
    /// The process read (received) the bytes.
    Ingress = 2,
}

impl Direction {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Egress),
            2 => Some(Self::Ingress),
            _ => None,
        }
    }
}

/// The syscall family a transfer came from.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Syscall {
    Read = 1,
    Write = 2,
    RecvFrom = 3,
    SendTo = 4,
    ReadV = 5,
    WriteV = 6,
    RecvMsg = 7,
    SendMsg = 8,
    /// Only the length is known: the bytes came from a file.
    SendFile = 9,
    /// A call whose buffers are not followed (sendmmsg, recvmmsg, splice,
    /// io_uring): only the length is known.
    Other = 10,
}

impl Syscall {
    /// Which way a call of this family moves bytes; None for `Other`.
    pub fn direction(self) -> Option<Direction> {
        match self {
            Self::Read | Self::RecvFrom | Self::ReadV | Self::RecvMsg => Some(Direction::Ingress),
            Self::Write | Self::SendTo | Self::WriteV | Self::SendMsg | Self::SendFile => {
                Some(Direction::Egress)
            }
            Self::Other => None,
        }
    }

    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Read,
            2 => Self::Write,
            3 => Self::RecvFrom,
            4 => Self::SendTo,
            5 => Self::ReadV,
            6 => Self::WriteV,
            7 => Self::RecvMsg,
            8 => Self::SendMsg,
            9 => Self::SendFile,
            10 => Self::Other,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::RecvFrom => "recvfrom",
            Self::SendTo => "sendto",
            Self::ReadV => "readv",
            Self::WriteV => "writev",
            Self::RecvMsg => "recvmsg",
            Self::SendMsg => "sendmsg",
            Self::SendFile => "sendfile",
            Self::Other => "other",
        }
    }
}

/// The fixed part of a data event; `captured_len` bytes follow it in the
/// ring buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DataHeader {
    /// `EventKind::Data`.
    pub kind: u8,
    /// `Direction`.
    pub direction: u8,
    /// `Syscall`.
    pub syscall: u8,
    /// `1` when `seq` was read from the socket.
    pub has_seq: u8,
    /// How many bytes follow the header.
    pub captured_len: u32,
    pub tgid: u32,
    pub tid: u32,
    pub fd: u32,
    /// The TCP sequence number of the transfer's first byte: both ends of
    /// the connection see the same number for the same byte.
    pub seq: u32,
    pub conn_id: u64,
    /// `bpf_ktime_get_ns` when the transfer was done.
    pub ts_ns: u64,
    /// The whole transfer's length (what the socket call returned).
    pub total_len: u64,
}

/// A data event as built in the per-CPU scratch buffer. The buffer is twice
/// the capture limit so that copies at a bounded offset pass the verifier.
#[repr(C)]
pub struct DataEvent {
    pub header: DataHeader,
    pub data: [u8; 2 * MAX_CAPTURE],
}

/// Byte offsets of kernel struct members, read from BTF by the agent, so the
/// eBPF side needs no CO-RE.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// The walk from a task's fd to its socket:
    /// `task->files->fdt->fd[fd]->private_data->sk`.
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    pub file_private_data: u32,
    pub socket_sk: u32,
    /// `task_struct.flags` (`PF_KTHREAD`).
    pub task_flags: u32,
    pub _pad2: u32,
    /// `sock_common.skc_net` (a `struct net *`).
    pub sk_net: u32,
    /// `net.ns.inum`: the network namespace's inode number.
    pub net_ns_inum: u32,
    /// `tcp_sock.write_seq`: the sequence number after the last byte queued to send.
    pub tcp_write_seq: u32,
    /// `tcp_sock.copied_seq`: the sequence number after the last byte read.
    pub tcp_copied_seq: u32,
    /// Where, in `struct pt_regs` (the task's saved user registers), the
    /// registers [`SyscallRegs`] lists start, in its order.
    pub regs_syscall: u32,
    pub _pad: u32,
}

/// The registers holding a syscall's number and first three arguments,
/// as they lie in x86-64's `struct pt_regs` (`dx`, `si`, `di`, `orig_ax`):
/// one read takes them all.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyscallRegs {
    pub arg2: u64,
    pub arg1: u64,
    pub arg0: u64,
    pub nr: u64,
}

/// This architecture's numbers of the syscalls whose buffers are followed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyscallNumbers {
    pub read: u32,
    pub write: u32,
    pub readv: u32,
    pub writev: u32,
    pub sendto: u32,
    pub recvfrom: u32,
    pub sendmsg: u32,
    pub recvmsg: u32,
    pub sendfile: u32,
    pub _pad: u32,
}

/// Runtime settings of the eBPF programs, element 0 of the `CONFIG` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Config {
    /// Bytes captured per transfer, at most `MAX_CAPTURE`.
    pub capture_size: u32,
    /// Only track this process (thread-group id); 0 for all.
    pub filter_tgid: u32,
    /// Only track processes in this cgroup (v2 id); 0 for all.
    pub filter_cgroup: u64,
    /// Only track connections with this local or remote port; 0 for all.
    pub filter_port: u16,
    pub _pad: u16,
    /// The agent's own process, never tracked.
    pub self_tgid: u32,
    /// Only track processes in this network namespace (inode); 0 for all.
    pub filter_netns: u32,
    /// Wake the reader only once this many bytes wait in the ring buffer
    /// (it also polls on a timer); 0 wakes it for every event.
    pub wakeup_bytes: u32,
    /// The high 16 bits of every connection id: differs between agent runs,
    /// so ids stay unique on the node across restarts.
    pub id_base: u64,
    pub offsets: KernelOffsets,
    pub syscalls: SyscallNumbers,
}

/// Counters kept per CPU in the `STATS` map; the index of each.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// Events dropped because the ring buffer was full.
    EventsLost = 0,
    /// Connections not tracked because the connection table was full.
    ConnTableFull = 1,
    /// Data events sent.
    DataEvents = 2,
    /// Connection events sent.
    ConnEvents = 3,
    /// Reads of user or kernel memory that failed.
    ReadFaults = 4,
    /// Connections added to the connection table.
    ConnInserted = 5,
    /// Connections removed from the connection table by the programs (the
    /// rest of those added are there now, or were evicted by the LRU table
    /// to make room: the agent counts those as the difference).
    ConnRemoved = 6,
    /// Connections not tracked because their process or endpoint is
    /// Tangle's own.
    Ignored = 7,
}

/// The number of `Stat` counters.
pub const STAT_COUNT: u32 = 8;

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are #[repr(C)], made only of integers and byte
    // arrays, with explicit padding fields, so any bit pattern is valid.
    unsafe impl aya::Pod for ConnInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Config {}
    // SAFETY: as above.
    unsafe impl aya::Pod for KernelOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Endpoint {}
}
