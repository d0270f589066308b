//! Tangle's kernel side: follows TCP sockets per (process, fd) from
//! connect/accept to close and sends userspace the first bytes of every
//! transfer on them. Tracepoints only: this kernel has no kprobes.
//!
//! Filtering happens here: a data syscall is followed only when its
//! (tgid, fd) is in `CONNS`, which only connect/accept fill.
#![no_std]
#![no_main]

use core::{mem::size_of, ptr};

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
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
    AF_INET, AF_INET6, CloseReason, Config, ConnEvent, ConnInfo, ConnKey, DataEvent, DataHeader,
    Direction, Endpoint, EventKind, KernelOffsets, MAX_CAPTURE, MAX_IOV, PendingIo, Role,
    STAT_COUNT, SockAddrs, SockOwner, Stat, Syscall,
};

/// Events to userspace. The agent sets the real size at load time.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(16 * 1024 * 1024, 0);

/// The tracked connections. LRU: when full, a new connection evicts the
/// least recently used one rather than going untracked, so a flood of idle
/// connections from one process cannot blind the agent to the others.
#[map]
static CONNS: LruHashMap<ConnKey, ConnInfo> = LruHashMap::with_max_entries(65536, 0);

/// `struct sock *` of each tracked connection, to notice `TCP_CLOSE`.
#[map]
static SOCKS: LruHashMap<u64, SockOwner> = LruHashMap::with_max_entries(65536, 0);

/// Processes whose connections are never tracked: Tangle's own (a
/// collector on this node), so Tangle does not trace its own traffic.
#[map]
static IGNORED_TGIDS: HashMap<u32, u8> = HashMap::with_max_entries(4096, 0);

/// Endpoints whose connections are never tracked: the collector's.
#[map]
static IGNORED_ENDPOINTS: HashMap<Endpoint, u8> = HashMap::with_max_entries(256, 0);

/// Processes forked while the agent runs: child tgid -> parent tgid. A
/// child's first transfer on an fd its parent tracked adopts the connection
/// (PostgreSQL and other pre-fork servers accept in one process and serve
/// in another).
#[map]
static FORKED: LruHashMap<u32, u32> = LruHashMap::with_max_entries(16384, 0);

/// Connections a process closed whose socket may live on in a forked child
/// (a pre-fork server closes its copy first), by `struct sock *`: a child
/// adopts the one its own fd holds. Not by the parent's fd number, which
/// the parent reuses at once: PostgreSQL's postmaster accepts the next
/// connection on the same fd before the last child has read a byte.
#[map]
static INHERITABLE: LruHashMap<u64, ConnInfo> = LruHashMap::with_max_entries(16384, 0);

/// (tgid, fd) numbers under which a process closed a tracked connection:
/// a child's fd is looked at (the walk to its socket) only if its parent's
/// same fd number held one, not on every file a forked process reads.
#[map]
static INHERITABLE_FDS: LruHashMap<ConnKey, u8> = LruHashMap::with_max_entries(16384, 0);

/// Data syscalls between their enter and exit, by pid_tgid. LRU: a thread
/// killed inside a syscall never reaches its exit.
#[map]
static IN_FLIGHT: LruHashMap<u64, PendingIo> = LruHashMap::with_max_entries(16384, 0);

/// `connect` calls between their enter and exit, by pid_tgid (LRU, as above).
#[map]
static CONNECTING: LruHashMap<u64, u32> = LruHashMap::with_max_entries(16384, 0);

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

const TCP_CLOSE: i32 = 7;
const IPPROTO_TCP: u16 = 6;
const EINPROGRESS: i64 = 115;
const CAPTURE_MASK: u64 = MAX_CAPTURE as u64 - 1;

// Offsets in the syscall tracepoints' records (see the `format` files).
const ARG0: usize = 16;
const ARG1: usize = 24;
const ARG2: usize = 32;
const RET: usize = 16;
/// `struct user_msghdr`: `msg_iov` and `msg_iovlen`.
const MSG_IOV: usize = 16;
const MSG_IOVLEN: usize = 24;

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

/// Inserts a new connection, counted (the agent counts the connections the
/// full LRU table evicts as those inserted, less those removed and those
/// there now). False when the insert failed.
#[inline(always)]
fn insert_conn(key: &ConnKey, info: &ConnInfo) -> bool {
    if CONNS.insert(key, info, 0).is_err() {
        count(Stat::ConnTableFull);
        return false;
    }
    count(Stat::ConnInserted);
    true
}

/// Removes a connection from `CONNS`, counted; whether this call removed it.
#[inline(always)]
fn remove_conn(key: &ConnKey) -> bool {
    let removed = CONNS.remove(key).is_ok();
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
fn arg<T>(ctx: &TracePointContext, offset: usize) -> Option<T> {
    // SAFETY: offsets come from the tracepoint's format; the read is checked.
    unsafe { ctx.read_at::<T>(offset) }.ok()
}

/// The `struct sock *` behind `fd` in the current task: task->files->fdt->fd[fd]
/// ->private_data (a `struct socket *`)->sk. Only called on fds the kernel has
/// just made into connected sockets (connect/accept succeeded).
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
    let sk: u64 = read_kernel(socket + off.socket_sk as u64)?;
    if sk == 0 { None } else { Some(sk) }
}

/// Both addresses of a TCP socket, or None for anything that is not TCP over IP.
#[inline(always)]
fn tcp_addrs(sk: u64, off: &KernelOffsets) -> Option<SockAddrs> {
    let family: u16 = read_kernel(sk + off.sk_family as u64)?;
    let protocol: u16 = read_kernel(sk + off.sk_protocol as u64)?;
    if protocol != IPPROTO_TCP {
        return None;
    }
    let mut a = SockAddrs {
        family,
        local_port: read_kernel::<u16>(sk + off.sk_num as u64)?,
        remote_port: u16::from_be(read_kernel::<u16>(sk + off.sk_dport as u64)?),
        ..SockAddrs::default()
    };
    if family == AF_INET {
        let local: [u8; 4] = read_kernel(sk + off.sk_rcv_saddr as u64)?;
        let remote: [u8; 4] = read_kernel(sk + off.sk_daddr as u64)?;
        a.local_addr[..4].copy_from_slice(&local);
        a.remote_addr[..4].copy_from_slice(&remote);
    } else if family == AF_INET6 {
        a.local_addr = read_kernel(sk + off.sk_v6_rcv_saddr as u64)?;
        a.remote_addr = read_kernel(sk + off.sk_v6_daddr as u64)?;
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

/// Starts tracking `fd` of the current process as a connection in `role`.
#[inline(always)]
fn track(fd: u32, role: Role) {
    let Some(cfg) = config() else { return };
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if tgid == cfg.self_tgid || (cfg.filter_tgid != 0 && tgid != cfg.filter_tgid) {
        return;
    }
    if IGNORED_TGIDS.get_ptr(&tgid).is_some() {
        count(Stat::Ignored);
        return;
    }
    // SAFETY: no arguments.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    if cfg.filter_cgroup != 0 && cgroup_id != cfg.filter_cgroup {
        return;
    }
    let off = &cfg.offsets;
    let Some(sk) = sock_of_fd(fd, off) else {
        return;
    };
    let Some(addrs) = tcp_addrs(sk, off) else {
        return;
    };
    if cfg.filter_port != 0
        && addrs.local_port != cfg.filter_port
        && addrs.remote_port != cfg.filter_port
    {
        return;
    }
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
    let key = ConnKey { tgid, fd };
    // A tracked fd replaced without a close we saw (dup2): end the old one.
    if let Some(old) = CONNS.get_ptr(&key) {
        close_conn(&key, old, CloseReason::Syscall);
    }
    // SAFETY: no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let info = ConnInfo {
        conn_id: next_conn_id(),
        sock: sk,
        opened_ns: now,
        addrs,
        role: role as u8,
        ..ConnInfo::default()
    };
    if !insert_conn(&key, &info) {
        return;
    }
    // A socket at a freed one's address: what that one left is stale.
    let _ = INHERITABLE.remove(&sk);
    let owner = SockOwner {
        key,
        conn_id: info.conn_id,
    };
    if SOCKS.insert(&sk, &owner, 0).is_err() {
        count(Stat::ConnTableFull);
    }
    emit_conn(EventKind::ConnOpen, &key, &info, 0, now);
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

#[inline(always)]
fn emit_conn(kind: EventKind, key: &ConnKey, info: &ConnInfo, close_reason: u8, now: u64) {
    let Some(mut entry) = EVENTS.reserve::<ConnEvent>(0) else {
        count(Stat::EventsLost);
        return;
    };
    let e = entry.as_mut_ptr();
    let pid_tgid = bpf_get_current_pid_tgid();
    let from_task = kind == EventKind::ConnOpen || close_reason == CloseReason::Syscall as u8;
    // SAFETY: `e` points to a reserved record of `size_of::<ConnEvent>()`
    // bytes; every field is written before the submit. Field by field keeps
    // the event off the 512-byte stack.
    unsafe {
        ptr::addr_of_mut!((*e).kind).write(kind as u8);
        ptr::addr_of_mut!((*e).role).write(info.role);
        ptr::addr_of_mut!((*e).close_reason).write(close_reason);
        ptr::addr_of_mut!((*e)._pad).write([0; 5]);
        ptr::addr_of_mut!((*e).tgid).write(key.tgid);
        ptr::addr_of_mut!((*e).tid).write(if from_task { pid_tgid as u32 } else { 0 });
        ptr::addr_of_mut!((*e).fd).write(key.fd);
        ptr::addr_of_mut!((*e)._pad2).write(0);
        ptr::addr_of_mut!((*e).conn_id).write(info.conn_id);
        ptr::addr_of_mut!((*e).ts_ns).write(now);
        ptr::addr_of_mut!((*e).cgroup_id).write(if from_task {
            bpf_get_current_cgroup_id()
        } else {
            0
        });
        ptr::addr_of_mut!((*e).bytes_sent).write(info.bytes_sent);
        ptr::addr_of_mut!((*e).bytes_recv).write(info.bytes_recv);
        ptr::addr_of_mut!((*e).addrs).write(info.addrs);
        let comm = if from_task {
            bpf_get_current_comm().unwrap_or([0; 16])
        } else {
            [0; 16]
        };
        ptr::addr_of_mut!((*e).comm).write(comm);
    }
    entry.submit(wakeup_flags(config().map_or(0, |c| c.wakeup_bytes)));
    count(Stat::ConnEvents);
}

/// Stops tracking a connection and tells userspace. `info` points into `CONNS`.
#[inline(always)]
fn close_conn(key: &ConnKey, info: *const ConnInfo, reason: CloseReason) {
    // SAFETY: a valid map value pointer, copied before the entry is removed.
    let info = unsafe { *info };
    // Whoever removes the entry closes the connection: a close() and the
    // TCP close racing on two CPUs tell userspace once between them.
    if !remove_conn(key) {
        return;
    }
    let info = &info;
    // SAFETY: no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    emit_conn(EventKind::ConnClose, key, info, reason as u8, now);
    if reason == CloseReason::Syscall {
        let _ = INHERITABLE.insert(&info.sock, info, 0);
        let _ = INHERITABLE_FDS.insert(key, &1, 0);
    }
    // The socket may have passed to a forked child: only drop our own claim.
    if let Some(owner) = SOCKS.get_ptr(&info.sock)
        // SAFETY: a valid map value pointer.
        && unsafe { (*owner).conn_id } == info.conn_id
    {
        let _ = SOCKS.remove(&info.sock);
    }
}

/// The child side of `sched_process_fork`: remember who the parent is.
#[tracepoint]
pub fn process_fork(ctx: TracePointContext) -> u32 {
    // Record: parent_pid at 12, child_pid at 20 (threads too; harmless).
    let Some(child) = arg::<i32>(&ctx, 20) else {
        return 0;
    };
    let parent = (bpf_get_current_pid_tgid() >> 32) as u32;
    let _ = FORKED.insert(&(child as u32), &parent, 0);
    0
}

/// A forked child uses an fd its parent tracked: the same socket, now also
/// this process's connection. Returns whether it was adopted.
#[inline(always)]
fn adopt(key: &ConnKey) -> bool {
    // SAFETY: a valid map value pointer, copied at once.
    let Some(parent) = FORKED.get_ptr(&key.tgid).map(|p| unsafe { *p }) else {
        return false;
    };
    let parent_key = ConnKey {
        tgid: parent,
        fd: key.fd,
    };
    // Cheap lookups first: only an fd number the parent tracked is worth the walk.
    if CONNS.get_ptr(&parent_key).is_none() && INHERITABLE_FDS.get_ptr(&parent_key).is_none() {
        return false;
    }
    let Some(cfg) = config() else { return false };
    let Some(sock) = sock_of_fd(key.fd, &cfg.offsets) else {
        return false;
    };
    let pinfo = match CONNS.get_ptr(&parent_key) {
        // SAFETY: a valid map value pointer, copied at once.
        Some(p) if unsafe { (*p).sock } == sock => unsafe { *p },
        // The parent already closed its copy.
        _ => match INHERITABLE.get_ptr(&sock) {
            // SAFETY: as above.
            Some(p) => unsafe { *p },
            None => return false,
        },
    };
    // The same connection, not a socket at a freed one's address.
    match tcp_addrs(sock, &cfg.offsets) {
        Some(a)
            if a.local_port == pinfo.addrs.local_port
                && a.remote_port == pinfo.addrs.remote_port
                && a.family == pinfo.addrs.family => {}
        _ => return false,
    }
    // SAFETY: no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let info = ConnInfo {
        conn_id: next_conn_id(),
        opened_ns: now,
        bytes_sent: 0,
        bytes_recv: 0,
        ..pinfo
    };
    if !insert_conn(key, &info) {
        return false;
    }
    let owner = SockOwner {
        key: *key,
        conn_id: info.conn_id,
    };
    let _ = SOCKS.insert(&info.sock, &owner, 0);
    emit_conn(EventKind::ConnOpen, key, &info, 0, now);
    true
}

#[tracepoint]
pub fn connect_enter(ctx: TracePointContext) -> u32 {
    let Some(fd) = arg::<u64>(&ctx, ARG0) else {
        return 0;
    };
    let id = bpf_get_current_pid_tgid();
    if CONNECTING.insert(&id, &(fd as u32), 0).is_err() {
        count(Stat::InFlightFull);
    }
    0
}

#[tracepoint]
pub fn connect_exit(ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let Some(fd) = CONNECTING.get_ptr(&id) else {
        return 0;
    };
    // SAFETY: a valid map value pointer; copied out before the remove.
    let fd = unsafe { *fd };
    let _ = CONNECTING.remove(&id);
    let Some(ret) = arg::<i64>(&ctx, RET) else {
        return 0;
    };
    if ret == 0 || ret == -EINPROGRESS {
        track(fd, Role::Client);
    }
    0
}

/// For both accept and accept4: the new fd is the return value.
#[tracepoint]
pub fn accept_exit(ctx: TracePointContext) -> u32 {
    if let Some(ret) = arg::<i64>(&ctx, RET)
        && ret >= 0
    {
        track(ret as u32, Role::Server);
    }
    0
}

#[tracepoint]
pub fn close_enter(ctx: TracePointContext) -> u32 {
    let Some(fd) = arg::<u64>(&ctx, ARG0) else {
        return 0;
    };
    let key = ConnKey {
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        fd: fd as u32,
    };
    if let Some(info) = CONNS.get_ptr(&key) {
        close_conn(&key, info, CloseReason::Syscall);
    }
    0
}

/// The kernel closed a socket (process exit, reset, end of TIME_WAIT entry).
#[tracepoint]
pub fn sock_set_state(ctx: TracePointContext) -> u32 {
    // Record: skaddr at 8, newstate at 20, protocol at 30.
    let Some(newstate) = arg::<i32>(&ctx, 20) else {
        return 0;
    };
    if newstate != TCP_CLOSE {
        return 0;
    }
    let Some(sk) = arg::<u64>(&ctx, 8) else {
        return 0;
    };
    // The socket is gone: a child can no longer inherit it, and its memory
    // may soon hold another socket.
    let _ = INHERITABLE.remove(&sk);
    let Some(owner) = SOCKS.get_ptr(&sk) else {
        return 0;
    };
    // SAFETY: a valid map value pointer; copied out at once.
    let owner = unsafe { *owner };
    match CONNS.get_ptr(&owner.key) {
        // SAFETY: a valid map value pointer.
        Some(info) if unsafe { (*info).conn_id } == owner.conn_id => {
            close_conn(&owner.key, info, CloseReason::TcpClose);
        }
        _ => {
            let _ = SOCKS.remove(&sk);
        }
    }
    0
}

/// Remembers a data syscall on a tracked fd until its exit.
#[inline(always)]
fn io_enter(ctx: &TracePointContext, syscall: Syscall, direction: Direction) {
    let id = bpf_get_current_pid_tgid();
    let Some(fd) = arg::<u64>(ctx, ARG0) else {
        return;
    };
    let key = ConnKey {
        tgid: (id >> 32) as u32,
        fd: fd as u32,
    };
    if CONNS.get_ptr(&key).is_none() && !adopt(&key) {
        return;
    }
    let Some(mut ptr) = arg::<u64>(ctx, ARG1) else {
        return;
    };
    let Some(mut iov_count) = arg::<u64>(ctx, ARG2) else {
        return;
    };
    let vectored = match syscall {
        Syscall::ReadV | Syscall::WriteV => 1,
        Syscall::RecvMsg | Syscall::SendMsg => {
            let msg = ptr;
            ptr = read_user::<u64>(msg + MSG_IOV as u64).unwrap_or(0);
            iov_count = read_user::<u64>(msg + MSG_IOVLEN as u64).unwrap_or(0);
            1
        }
        _ => 0,
    };
    let pending = PendingIo {
        fd: fd as u32,
        syscall: syscall as u8,
        direction: direction as u8,
        vectored,
        _pad: 0,
        ptr,
        iov_count,
        // SAFETY: no arguments.
        start_ns: unsafe { bpf_ktime_get_ns() },
    };
    if IN_FLIGHT.insert(&id, &pending, 0).is_err() {
        count(Stat::InFlightFull);
    }
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

/// On a data syscall's exit: sends the transfer's first bytes to userspace.
#[inline(always)]
fn io_exit(ctx: &TracePointContext) {
    let id = bpf_get_current_pid_tgid();
    let Some(p) = IN_FLIGHT.get_ptr(&id) else {
        return;
    };
    // SAFETY: a valid map value pointer; copied out before the remove.
    let pending = unsafe { *p };
    let _ = IN_FLIGHT.remove(&id);
    let Some(ret) = arg::<i64>(ctx, RET) else {
        return;
    };
    if ret <= 0 {
        return;
    }
    let total = ret as u64;
    let key = ConnKey {
        tgid: (id >> 32) as u32,
        fd: pending.fd,
    };
    let Some(conn) = CONNS.get_ptr_mut(&key) else {
        return;
    };
    let egress = pending.direction == Direction::Egress as u8;
    // SAFETY: a valid map value pointer. Counters are advisory: a lost update
    // between two threads of one process on one fd only skews totals.
    let (conn_id, sock) = unsafe {
        if egress {
            (*conn).bytes_sent += total;
        } else {
            (*conn).bytes_recv += total;
        }
        ((*conn).conn_id, (*conn).sock)
    };
    let Some(cfg) = config() else { return };
    // The sequence number just past the bytes this call moved: what was
    // queued to send, or what was read. Minus the length, it names the
    // transfer's first byte, as the other end numbers it too.
    let seq_field = if egress {
        cfg.offsets.tcp_write_seq
    } else {
        cfg.offsets.tcp_copied_seq
    };
    let seq_after = if sock == 0 {
        None
    } else {
        read_kernel::<u32>(sock + seq_field as u64)
    };
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
    if pending.syscall == Syscall::SendFile as u8 {
        // The bytes come from a file: only the length is known.
    } else if pending.vectored == 0 {
        captured = copy_user(data, 0, pending.ptr, want);
    } else {
        let Some(walk) = IOV_WALK.get_ptr_mut(0) else {
            return;
        };
        // SAFETY: the per-CPU walk slot, used by nothing else until we return.
        unsafe {
            walk.write(IovWalk {
                iov: pending.ptr,
                count: pending.iov_count,
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
    // SAFETY: no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    event.header = DataHeader {
        kind: EventKind::Data as u8,
        direction: pending.direction,
        syscall: pending.syscall,
        has_seq: u8::from(seq_after.is_some()),
        captured_len: captured as u32,
        tgid: key.tgid,
        tid: id as u32,
        fd: key.fd,
        seq: seq_after.unwrap_or(0).wrapping_sub(total as u32),
        conn_id,
        ts_ns: now,
        start_ns: pending.start_ns,
        // SAFETY: no arguments.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
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

macro_rules! io_programs {
    ($($enter:ident, $exit:ident, $syscall:expr, $dir:expr;)*) => {$(
        #[tracepoint]
        pub fn $enter(ctx: TracePointContext) -> u32 {
            io_enter(&ctx, $syscall, $dir);
            0
        }
        #[tracepoint]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            io_exit(&ctx);
            0
        }
    )*};
}

io_programs! {
    read_enter, read_exit, Syscall::Read, Direction::Ingress;
    write_enter, write_exit, Syscall::Write, Direction::Egress;
    recvfrom_enter, recvfrom_exit, Syscall::RecvFrom, Direction::Ingress;
    sendto_enter, sendto_exit, Syscall::SendTo, Direction::Egress;
    readv_enter, readv_exit, Syscall::ReadV, Direction::Ingress;
    writev_enter, writev_exit, Syscall::WriteV, Direction::Egress;
    recvmsg_enter, recvmsg_exit, Syscall::RecvMsg, Direction::Ingress;
    sendmsg_enter, sendmsg_exit, Syscall::SendMsg, Direction::Egress;
}

/// sendfile(out_fd, in_fd, offset, count): a transfer to a tracked socket
/// whose bytes come from a file.
#[tracepoint]
pub fn sendfile_enter(ctx: TracePointContext) -> u32 {
    io_enter(&ctx, Syscall::SendFile, Direction::Egress);
    0
}

#[tracepoint]
pub fn sendfile_exit(ctx: TracePointContext) -> u32 {
    io_exit(&ctx);
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
