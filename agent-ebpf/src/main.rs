//! Tangle's kernel side: follows TCP connections by socket, from the end
//! of the handshake to `TCP_CLOSE`, and sends userspace the first bytes of
//! every transfer on them. Tracepoints only: many kernels have no kprobes.
//!
//! Only socket events are hooked: `sock:inet_sock_set_state` (a connection
//! established or closed) and `sock:sock_{send,recv}_length` (a transfer on
//! a socket, just done). A process that never touches a socket pays
//! nothing; one that uses an untracked socket pays one map lookup. The
//! transfer's buffer is found from the syscall's arguments in the task's
//! saved user registers.
#![no_std]
#![no_main]

use core::{mem::size_of, ptr};

use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_task, bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_kernel,
        bpf_probe_read_user, generated,
    },
    macros::{map, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use tangle_common::{
    AF_INET, AF_INET6, CloseReason, Config, ConnEvent, ConnInfo, DataEvent, DataHeader, Direction,
    Endpoint, EventKind, KernelOffsets, MAX_CAPTURE, MAX_IOV, Role, STAT_COUNT, SockAddrs, Stat,
    Syscall, SyscallRegs,
};

/// Events to userspace. The agent sets the real size at load time.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(16 * 1024 * 1024, 0);

/// The tracked connections, by `struct sock *`. LRU: when full, a new
/// connection evicts the least recently used one rather than going
/// untracked, so a flood of idle connections cannot blind the agent to the
/// others. A socket is one connection whichever processes hold it.
#[map]
static CONNS: LruHashMap<u64, ConnInfo> = LruHashMap::with_max_entries(65536, 0);

/// Connections established and not claimed yet, by `struct sock *`: every
/// TCP connection of the node passes through here, before the pid and
/// cgroup filters can apply, so it is a table of its own: a flood of idle
/// connections evicts only idle connections, never claimed ones.
#[map]
static PENDING: LruHashMap<u64, ConnInfo> = LruHashMap::with_max_entries(65536, 0);

/// Processes whose connections are never tracked: Tangle's own (a
/// collector on this node), so Tangle does not trace its own traffic.
#[map]
static IGNORED_TGIDS: HashMap<u32, u8> = HashMap::with_max_entries(4096, 0);

/// Endpoints whose connections are never tracked: the collector's.
#[map]
static IGNORED_ENDPOINTS: HashMap<Endpoint, u8> = HashMap::with_max_entries(256, 0);

#[map]
static SCRATCH: PerCpuArray<DataEvent> = PerCpuArray::with_max_entries(1, 0);

#[map]
static IOV_WALK: PerCpuArray<IovWalk> = PerCpuArray::with_max_entries(1, 0);

#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

/// Per-CPU sequence for connection ids.
#[map]
static NEXT_ID: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[repr(C)]
#[derive(Clone, Copy)]
struct Iovec {
    base: u64,
    len: u64,
}

const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_CLOSE: i32 = 7;
const IPPROTO_TCP: u16 = 6;
const MSG_PEEK: i32 = 2;
/// `task_struct.flags`: a kernel thread (NFS, iSCSI and the like use TCP
/// from the kernel; no process owns those sockets).
const PF_KTHREAD: u32 = 0x0020_0000;
const NO_FD: u32 = u32::MAX;
const CAPTURE_MASK: u64 = MAX_CAPTURE as u64 - 1;
/// `struct user_msghdr`: `msg_iov` and `msg_iovlen`.
const MSG_IOV: u64 = 16;
const MSG_IOVLEN: u64 = 24;

/// Fields of `sock:inet_sock_set_state` (see its `format` file).
mod state_record {
    pub const SK: usize = 8;
    pub const OLDSTATE: usize = 16;
    pub const NEWSTATE: usize = 20;
    pub const SPORT: usize = 24;
    pub const DPORT: usize = 26;
    pub const FAMILY: usize = 28;
    pub const PROTOCOL: usize = 30;
    pub const SADDR: usize = 32;
    pub const DADDR: usize = 36;
    pub const SADDR_V6: usize = 40;
    pub const DADDR_V6: usize = 56;
}

/// Fields of `sock:sock_send_length` and `sock:sock_recv_length`.
mod length_record {
    pub const SK: usize = 8;
    pub const FAMILY: usize = 16;
    pub const RET: usize = 20;
    pub const FLAGS: usize = 24;
}

#[inline(always)]
fn count(stat: Stat) {
    if let Some(p) = STATS.get_ptr_mut(stat as u32) {
        // SAFETY: a per-CPU slot, so no other writer on this CPU meanwhile.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
fn config() -> Option<&'static Config> {
    CONFIG.get(0)
}

/// Whether this call removed `sk`'s connection from `CONNS` (counted).
#[inline(always)]
fn remove_conn(sk: u64) -> bool {
    let removed = CONNS.remove(&sk).is_ok();
    if removed {
        count(Stat::ConnRemoved);
    }
    removed
}

/// Whether an endpoint is one whose connections are never tracked; a
/// loopback one only in the namespace `netns` it was given for.
#[inline(always)]
fn ignored_endpoint(family: u16, addr: [u8; 16], port: u16, netns: u32) -> bool {
    let netns = if Endpoint::is_loopback(family, &addr) {
        netns
    } else {
        0
    };
    let e = Endpoint {
        addr,
        port,
        _pad: 0,
        netns,
    };
    IGNORED_ENDPOINTS.get_ptr(&e).is_some()
}

#[inline(always)]
fn read_kernel<T>(addr: u64) -> Option<T> {
    // SAFETY: the helper checks the address; a bad one is an error, not a fault.
    match unsafe { bpf_probe_read_kernel(addr as *const T) } {
        Ok(v) => Some(v),
        Err(_) => {
            count(Stat::ReadFaults);
            None
        }
    }
}

#[inline(always)]
fn read_user<T>(addr: u64) -> Option<T> {
    // SAFETY: the helper checks the address; a bad one is an error, not a fault.
    match unsafe { bpf_probe_read_user(addr as *const T) } {
        Ok(v) => Some(v),
        Err(_) => {
            count(Stat::ReadFaults);
            None
        }
    }
}

#[inline(always)]
fn field<T>(ctx: &TracePointContext, offset: usize) -> Option<T> {
    // SAFETY: offsets come from the tracepoint's format; the read is checked.
    unsafe { ctx.read_at::<T>(offset) }.ok()
}

/// Both addresses of a connection, from an `inet_sock_set_state` record.
#[inline(always)]
fn state_addrs(ctx: &TracePointContext, family: u16) -> Option<SockAddrs> {
    use state_record::*;
    let mut a = SockAddrs {
        family,
        local_port: field(ctx, SPORT)?,
        remote_port: field(ctx, DPORT)?,
        ..SockAddrs::default()
    };
    if family == AF_INET {
        let local: [u8; 4] = field(ctx, SADDR)?;
        let remote: [u8; 4] = field(ctx, DADDR)?;
        a.local_addr[..4].copy_from_slice(&local);
        a.remote_addr[..4].copy_from_slice(&remote);
    } else if family == AF_INET6 {
        a.local_addr = field(ctx, SADDR_V6)?;
        a.remote_addr = field(ctx, DADDR_V6)?;
    } else {
        return None;
    }
    Some(a)
}

#[inline(always)]
fn next_conn_id() -> u64 {
    // SAFETY: no arguments; returns the current CPU.
    let cpu = unsafe { bpf_get_smp_processor_id() } as u64;
    let seq = match NEXT_ID.get_ptr_mut(0) {
        Some(p) => {
            // SAFETY: a per-CPU slot, so no other writer on this CPU meanwhile.
            unsafe {
                *p += 1;
                *p
            }
        }
        None => 0,
    };
    // 16 bits of agent run, 8 of CPU, 40 of sequence.
    let base = config().map_or(0, |c| c.id_base);
    base | ((cpu & 0xff) << 40) | (seq & 0xff_ffff_ffff)
}

/// Ring buffer flags for the next record: wake the reader only when
/// `threshold` bytes (the config's `wakeup_bytes`) have piled up, so it
/// reads in batches instead of once per event.
#[inline(always)]
fn wakeup_flags(threshold: u32) -> u64 {
    let threshold = threshold as u64;
    if threshold == 0 {
        return 0;
    }
    if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= threshold {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// Tells userspace a connection opened or closed. The process's details
/// (thread, cgroup, name) are the current task's only when `in_task`: a
/// close may come from softirq, on whatever task was running.
#[inline(always)]
fn emit_conn(kind: EventKind, info: &ConnInfo, close_reason: u8, now: u64, in_task: bool) {
    let Some(mut entry) = EVENTS.reserve::<ConnEvent>(0) else {
        count(Stat::EventsLost);
        return;
    };
    let e = entry.as_mut_ptr();
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: `e` points to a reserved record of `size_of::<ConnEvent>()`
    // bytes; every field is written before the submit. Field by field keeps
    // the event off the 512-byte stack.
    unsafe {
        ptr::addr_of_mut!((*e).kind).write(kind as u8);
        ptr::addr_of_mut!((*e).role).write(info.role);
        ptr::addr_of_mut!((*e).close_reason).write(close_reason);
        ptr::addr_of_mut!((*e)._pad).write([0; 5]);
        ptr::addr_of_mut!((*e).tgid).write(info.tgid);
        ptr::addr_of_mut!((*e).tid).write(if in_task { pid_tgid as u32 } else { 0 });
        ptr::addr_of_mut!((*e).fd).write(info.fd);
        ptr::addr_of_mut!((*e)._pad2).write(0);
        ptr::addr_of_mut!((*e).conn_id).write(info.conn_id);
        ptr::addr_of_mut!((*e).ts_ns).write(now);
        ptr::addr_of_mut!((*e).cgroup_id).write(if in_task {
            bpf_get_current_cgroup_id()
        } else {
            0
        });
        ptr::addr_of_mut!((*e).bytes_sent).write(info.bytes_sent);
        ptr::addr_of_mut!((*e).bytes_recv).write(info.bytes_recv);
        ptr::addr_of_mut!((*e).addrs).write(info.addrs);
        let comm = if in_task {
            bpf_get_current_comm().unwrap_or([0; 16])
        } else {
            [0; 16]
        };
        ptr::addr_of_mut!((*e).comm).write(comm);
    }
    entry.submit(wakeup_flags(config().map_or(0, |c| c.wakeup_bytes)));
    count(Stat::ConnEvents);
}

/// A TCP handshake ended: the socket is a connection in `role`, waiting
/// for the process that moves its bytes.
#[inline(always)]
fn established(ctx: &TracePointContext, sk: u64, role: Role) {
    let Some(cfg) = config() else { return };
    let Some(family) = field::<u16>(ctx, state_record::FAMILY) else {
        return;
    };
    let Some(addrs) = state_addrs(ctx, family) else {
        return;
    };
    if cfg.filter_port != 0
        && addrs.local_port != cfg.filter_port
        && addrs.remote_port != cfg.filter_port
    {
        return;
    }
    let off = &cfg.offsets;
    let Some(net) = read_kernel::<u64>(sk + off.sk_net as u64) else {
        return;
    };
    let Some(netns) = read_kernel::<u32>(net + off.net_ns_inum as u64) else {
        return;
    };
    if cfg.filter_netns != 0 && netns != cfg.filter_netns {
        return;
    }
    if ignored_endpoint(addrs.family, addrs.remote_addr, addrs.remote_port, netns)
        || ignored_endpoint(addrs.family, addrs.local_addr, addrs.local_port, netns)
    {
        count(Stat::Ignored);
        return;
    }
    // SAFETY: no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // A socket at a freed one's address whose close we missed: end that one.
    closed(sk, now);
    let info = ConnInfo {
        conn_id: next_conn_id(),
        opened_ns: now,
        addrs,
        role: role as u8,
        ..ConnInfo::default()
    };
    if PENDING.insert(&sk, &info, 0).is_err() {
        count(Stat::ConnTableFull);
    }
}

/// The socket is gone: its connection ends, and userspace hears of it if
/// a process had claimed it.
#[inline(always)]
fn closed(sk: u64, now: u64) {
    let _ = PENDING.remove(&sk);
    let Some(info) = CONNS.get_ptr(&sk) else {
        return;
    };
    // SAFETY: a valid map value pointer, copied before the entry is removed.
    let info = unsafe { *info };
    // Whoever removes the entry closes the connection: two CPUs racing
    // tell userspace once between them.
    if remove_conn(sk) {
        emit_conn(
            EventKind::ConnClose,
            &info,
            CloseReason::TcpClose as u8,
            now,
            false,
        );
    }
}

#[tracepoint]
pub fn sock_set_state(ctx: TracePointContext) -> u32 {
    use state_record::*;
    if field::<u16>(&ctx, PROTOCOL) != Some(IPPROTO_TCP) {
        return 0;
    }
    let (Some(sk), Some(old), Some(new)) = (
        field::<u64>(&ctx, SK),
        field::<i32>(&ctx, OLDSTATE),
        field::<i32>(&ctx, NEWSTATE),
    ) else {
        return 0;
    };
    match (old, new) {
        (_, TCP_CLOSE) => {
            // SAFETY: no arguments.
            closed(sk, unsafe { bpf_ktime_get_ns() });
        }
        (TCP_SYN_SENT, TCP_ESTABLISHED) => established(&ctx, sk, Role::Client),
        (TCP_SYN_RECV, TCP_ESTABLISHED) => established(&ctx, sk, Role::Server),
        _ => {}
    }
    0
}

/// Whether the current process's connections are followed at all.
#[inline(always)]
fn process_followed(cfg: &Config, tgid: u32) -> bool {
    if tgid == 0 || tgid == cfg.self_tgid || (cfg.filter_tgid != 0 && tgid != cfg.filter_tgid) {
        return false;
    }
    if IGNORED_TGIDS.get_ptr(&tgid).is_some() {
        count(Stat::Ignored);
        return false;
    }
    // SAFETY: no arguments.
    cfg.filter_cgroup == 0 || unsafe { bpf_get_current_cgroup_id() } == cfg.filter_cgroup
}

/// The `struct sock *` behind `fd` in the current task:
/// task->files->fdt->fd[fd]->private_data (a `struct socket *`)->sk.
#[inline(always)]
fn sock_of_fd(fd: u32, off: &KernelOffsets) -> Option<u64> {
    // SAFETY: returns the current task pointer; only read through helpers.
    let task = unsafe { bpf_get_current_task() };
    let files: u64 = read_kernel(task + off.task_files as u64)?;
    let fdt: u64 = read_kernel(files + off.files_fdt as u64)?;
    let max_fds: u32 = read_kernel(fdt + off.fdt_max_fds as u64)?;
    if fd >= max_fds {
        return None;
    }
    let fd_array: u64 = read_kernel(fdt + off.fdt_fd as u64)?;
    let file: u64 = read_kernel(fd_array + fd as u64 * 8)?;
    let socket: u64 = read_kernel(file + off.file_private_data as u64)?;
    read_kernel(socket + off.socket_sk as u64)
}

/// Whether the current task may own a connection: a process followed,
/// not a kernel thread.
#[inline(always)]
fn may_claim(cfg: &Config, tgid: u32) -> bool {
    if !process_followed(cfg, tgid) {
        return false;
    }
    // SAFETY: returns the current task pointer; only read through helpers.
    let task = unsafe { bpf_get_current_task() };
    read_kernel::<u32>(task + cfg.offsets.task_flags as u64).is_some_and(|f| f & PF_KTHREAD == 0)
}

/// `fd` if the syscall's fd is checked to hold socket `sk`, else [`NO_FD`]:
/// the registers may belong to another call (io_uring completes a transfer
/// after whatever syscall its task made last).
#[inline(always)]
fn checked_fd(sk: u64, fd: u32, off: &KernelOffsets) -> u32 {
    if fd != NO_FD && sock_of_fd(fd, off) == Some(sk) {
        fd
    } else {
        NO_FD
    }
}

/// The first transfer of process `tgid` on a connection waiting in
/// `PENDING` makes it that process's: it moves to `CONNS`, and userspace
/// hears of the open. False when the process is not followed or the
/// socket went meanwhile.
#[inline(always)]
fn claim(sk: u64, pending: &ConnInfo, cfg: &Config, tgid: u32, fd: u32, now: u64) -> bool {
    if !may_claim(cfg, tgid) {
        // Nobody followed holds it: later transfers cost two lookups.
        let _ = PENDING.remove(&sk);
        return false;
    }
    let info = ConnInfo {
        tgid,
        fd: checked_fd(sk, fd, &cfg.offsets),
        opened_ns: now,
        ..*pending
    };
    // Another thread of the process claimed it first: its claim stands.
    if CONNS.insert(&sk, &info, BPF_NOEXIST as u64).is_err() {
        return false;
    }
    // The socket closed meanwhile (its close found nothing in `CONNS`).
    if PENDING.remove(&sk).is_err() {
        let _ = CONNS.remove(&sk);
        return false;
    }
    count(Stat::ConnInserted);
    emit_conn(EventKind::ConnOpen, &info, 0, now, true);
    true
}

/// Process `tgid` moved bytes on a connection another process had: it is
/// closed for that one (`HandedOver`: a pre-fork server's child took over
/// what its parent accepted) and opened for this one. False when the
/// process is not followed.
#[inline(always)]
fn hand_over(sk: u64, conn: *mut ConnInfo, cfg: &Config, tgid: u32, fd: u32, now: u64) -> bool {
    if !may_claim(cfg, tgid) {
        return false;
    }
    // SAFETY: a valid map value pointer; another CPU may write it at once
    // (checked below).
    let info = unsafe { &mut *conn };
    let old = *info;
    emit_conn(
        EventKind::ConnClose,
        &old,
        CloseReason::HandedOver as u8,
        now,
        // The current task is the new owner, not the old.
        false,
    );
    let conn_id = next_conn_id();
    info.conn_id = conn_id;
    info.tgid = tgid;
    info.fd = checked_fd(sk, fd, &cfg.offsets);
    info.opened_ns = now;
    info.bytes_sent = 0;
    info.bytes_recv = 0;
    let opened = *info;
    emit_conn(EventKind::ConnOpen, &opened, 0, now, true);
    // Another CPU closed the socket or took it over at the same time:
    // this open must not stay without its close.
    // SAFETY: a valid map value pointer, read at once.
    let still = CONNS
        .get_ptr(&sk)
        .is_some_and(|p| unsafe { (*p).conn_id } == conn_id);
    if !still {
        emit_conn(
            EventKind::ConnClose,
            &opened,
            CloseReason::TcpClose as u8,
            now,
            false,
        );
        return false;
    }
    true
}

/// The current task's saved user registers (`struct pt_regs`).
#[inline(always)]
fn user_regs() -> u64 {
    // SAFETY: the helpers take the current task, which is always valid.
    unsafe { generated::bpf_task_pt_regs(generated::bpf_get_current_task_btf()) as u64 }
}

/// Where a transfer's bytes are in user memory, from the syscall in progress.
#[derive(Clone, Copy)]
struct Buffers {
    syscall: Syscall,
    fd: u32,
    /// A buffer, or an iovec array when `iov_count` is not 0.
    ptr: u64,
    iov_count: u64,
}

impl Buffers {
    /// Only the length is known.
    const NONE: Self = Self {
        syscall: Syscall::Other,
        fd: NO_FD,
        ptr: 0,
        iov_count: 0,
    };
}

/// Where the syscall in progress says its buffers are.
#[inline(always)]
fn syscall_buffers(cfg: &Config) -> Buffers {
    let nr = &cfg.syscalls;
    let Some(regs) = read_kernel::<SyscallRegs>(user_regs() + cfg.offsets.regs_syscall as u64)
    else {
        return Buffers::NONE;
    };
    let call = regs.nr as u32;
    let syscall = if call == nr.read {
        Syscall::Read
    } else if call == nr.write {
        Syscall::Write
    } else if call == nr.recvfrom {
        Syscall::RecvFrom
    } else if call == nr.sendto {
        Syscall::SendTo
    } else if call == nr.readv {
        Syscall::ReadV
    } else if call == nr.writev {
        Syscall::WriteV
    } else if call == nr.recvmsg {
        Syscall::RecvMsg
    } else if call == nr.sendmsg {
        Syscall::SendMsg
    } else if call == nr.sendfile {
        Syscall::SendFile
    } else {
        return Buffers::NONE;
    };
    let (ptr, iov_count) = match syscall {
        Syscall::ReadV | Syscall::WriteV => (regs.arg1, regs.arg2),
        Syscall::RecvMsg | Syscall::SendMsg => (
            read_user::<u64>(regs.arg1 + MSG_IOV).unwrap_or(0),
            read_user::<u64>(regs.arg1 + MSG_IOVLEN).unwrap_or(0),
        ),
        // The bytes come from a file.
        Syscall::SendFile => (0, 0),
        _ => (regs.arg1, 0),
    };
    Buffers {
        syscall,
        fd: regs.arg0 as u32,
        ptr,
        iov_count,
    }
}

/// `b`, the syscall's buffers, if they are the transfer's: a call of the
/// transfer's direction on an fd that holds the socket (`conn.fd`, or one
/// checked now, then remembered); else [`Buffers::NONE`].
#[inline(always)]
fn trusted(
    cfg: &Config,
    sk: u64,
    conn: *mut ConnInfo,
    direction: Direction,
    b: Buffers,
) -> Buffers {
    if b.syscall.direction() != Some(direction) {
        return Buffers::NONE;
    }
    // SAFETY: a valid map value pointer; `fd` is advisory (a race only
    // costs a check).
    let known = unsafe { (*conn).fd };
    if b.fd != known {
        if checked_fd(sk, b.fd, &cfg.offsets) == NO_FD {
            return Buffers::NONE;
        }
        // SAFETY: as above.
        unsafe { (*conn).fd = b.fd };
    }
    b
}

/// Copies `len` (at most `MAX_CAPTURE`) bytes of user memory to `dst + off`.
/// Returns the bytes copied.
#[inline(always)]
fn copy_user(data: *mut u8, off: u64, src: u64, len: u64) -> u64 {
    let len = if len > MAX_CAPTURE as u64 {
        MAX_CAPTURE as u64
    } else {
        len
    };
    let off = off & CAPTURE_MASK;
    // SAFETY: `off < MAX_CAPTURE` and `len <= MAX_CAPTURE`, and the buffer is
    // `2 * MAX_CAPTURE` long; the helper checks the user address.
    let ret = unsafe {
        generated::bpf_probe_read_user(data.add(off as usize).cast(), len as u32, src as *const _)
    };
    if ret == 0 {
        len
    } else {
        count(Stat::ReadFaults);
        0
    }
}

/// State of a walk over an iovec array, shared with `iov_step`. It lives in a
/// map, not on the stack: the verifier does not track map values, so the
/// loop's states converge instead of being explored one length at a time.
#[repr(C)]
struct IovWalk {
    iov: u64,
    count: u64,
    remaining: u64,
    captured: u64,
}

/// One iovec of a walk: copies its bytes after those already captured.
/// Returns 1 to stop the loop.
#[inline(never)]
extern "C" fn iov_step(index: u64, _ctx: *mut core::ffi::c_void) -> i64 {
    let Some(walk) = IOV_WALK.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: the per-CPU walk slot the caller set up.
    let walk = unsafe { &mut *walk };
    if walk.remaining == 0 || index >= walk.count {
        return 1;
    }
    let Some(iov) = read_user::<Iovec>(walk.iov + index * size_of::<Iovec>() as u64) else {
        return 1;
    };
    let Some(event) = SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: the per-CPU scratch slot the caller is filling.
    let data = unsafe { (*event).data.as_mut_ptr() };
    let n = if iov.len < walk.remaining {
        iov.len
    } else {
        walk.remaining
    };
    let got = copy_user(data, walk.captured, iov.base, n);
    walk.captured += got;
    walk.remaining -= got;
    if got == n { 0 } else { 1 }
}

/// A transfer on a socket just finished: if the socket is a tracked
/// connection, its first bytes go to userspace.
#[inline(always)]
fn transfer(ctx: &TracePointContext, direction: Direction) {
    use length_record::*;
    let p = ctx.as_ptr() as *const u8;
    // SAFETY: aligned reads of the tracepoint record at the offsets its
    // format gives; the verifier checks tracepoint context reads.
    let (sk, family, ret, flags) = unsafe {
        (
            *(p.add(SK) as *const u64),
            *(p.add(FAMILY) as *const u16),
            *(p.add(RET) as *const i32),
            *(p.add(FLAGS) as *const i32),
        )
    };
    if ret <= 0 || (family != AF_INET && family != AF_INET6) {
        return;
    }
    // A peek is read again, for real, later.
    if direction == Direction::Ingress && flags & MSG_PEEK != 0 {
        return;
    }
    let Some(cfg) = config() else { return };
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let total = ret as u64;
    // SAFETY: no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let tracked = CONNS.get_ptr_mut(&sk);
    if tracked.is_none() && PENDING.get_ptr(&sk).is_none() {
        return;
    }
    let raw = syscall_buffers(cfg);
    let conn = match tracked {
        // SAFETY: a valid map value pointer.
        Some(c) if unsafe { (*c).tgid } == tgid => c,
        Some(c) => {
            if !hand_over(sk, c, cfg, tgid, raw.fd, now) {
                return;
            }
            c
        }
        None => {
            let Some(p) = PENDING.get_ptr(&sk) else {
                return;
            };
            // SAFETY: a valid map value pointer, copied at once.
            let pending = unsafe { *p };
            if !claim(sk, &pending, cfg, tgid, raw.fd, now) {
                return;
            }
            match CONNS.get_ptr_mut(&sk) {
                Some(c) => c,
                None => return,
            }
        }
    };
    let bufs = trusted(cfg, sk, conn, direction, raw);
    let egress = direction == Direction::Egress;
    // SAFETY: a valid map value pointer. Counters are advisory: a lost update
    // between two threads on one socket only skews totals.
    let conn_id = unsafe {
        if egress {
            (*conn).bytes_sent += total;
        } else {
            (*conn).bytes_recv += total;
        }
        (*conn).conn_id
    };
    // The sequence number just past the bytes this call moved: what was
    // queued to send, or what was read. Minus the length, it names the
    // transfer's first byte, as the other end numbers it too.
    let seq_field = if egress {
        cfg.offsets.tcp_write_seq
    } else {
        cfg.offsets.tcp_copied_seq
    };
    let seq_after = read_kernel::<u32>(sk + seq_field as u64);
    let Some(event) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the per-CPU scratch slot, used by nothing else until we return.
    let event = unsafe { &mut *event };
    let mut want = if total < cfg.capture_size as u64 {
        total
    } else {
        cfg.capture_size as u64
    };
    if want > MAX_CAPTURE as u64 {
        want = MAX_CAPTURE as u64;
    }
    let data = event.data.as_mut_ptr();
    let mut captured: u64 = 0;
    if bufs.ptr == 0 {
        // The bytes come from a file, or a call whose buffers are not
        // followed or not trusted: only the length is known.
    } else if bufs.iov_count == 0 {
        captured = copy_user(data, 0, bufs.ptr, want);
    } else {
        let Some(walk) = IOV_WALK.get_ptr_mut(0) else {
            return;
        };
        // SAFETY: the per-CPU walk slot, used by nothing else until we return.
        unsafe {
            walk.write(IovWalk {
                iov: bufs.ptr,
                count: bufs.iov_count,
                remaining: want,
                captured: 0,
            })
        };
        // SAFETY: `iov_step` has the callback signature bpf_loop expects.
        unsafe {
            generated::bpf_loop(
                MAX_IOV,
                iov_step as *mut core::ffi::c_void,
                ptr::null_mut(),
                0,
            );
        }
        // SAFETY: as above.
        captured = unsafe { (*walk).captured };
    }
    event.header = DataHeader {
        kind: EventKind::Data as u8,
        direction: direction as u8,
        syscall: bufs.syscall as u8,
        has_seq: u8::from(seq_after.is_some()),
        captured_len: captured as u32,
        tgid,
        tid: pid_tgid as u32,
        fd: bufs.fd,
        seq: seq_after.unwrap_or(0).wrapping_sub(total as u32),
        conn_id,
        ts_ns: now,
        total_len: total,
    };
    let size = size_of::<DataHeader>() as u64 + (captured & (2 * MAX_CAPTURE as u64 - 1));
    // SAFETY: `event` is `size_of::<DataEvent>()` bytes, larger than `size`.
    let bytes = unsafe {
        core::slice::from_raw_parts(ptr::from_mut(event).cast::<u8>(), size_of::<DataEvent>())
    };
    let Some(record) = bytes.get(..size as usize) else {
        return;
    };
    if EVENTS
        .output::<[u8]>(record, wakeup_flags(cfg.wakeup_bytes))
        .is_err()
    {
        count(Stat::EventsLost);
    } else {
        count(Stat::DataEvents);
    }
}

#[tracepoint]
pub fn sock_send(ctx: TracePointContext) -> u32 {
    transfer(&ctx, Direction::Egress);
    0
}

#[tracepoint]
pub fn sock_recv(ctx: TracePointContext) -> u32 {
    transfer(&ctx, Direction::Ingress);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
