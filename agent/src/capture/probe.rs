//! Loads Tangle's eBPF programs, attaches them, and gives access to their
//! maps: the event ring buffer, the connection table and the counters.

use std::{
    io,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::TracePoint,
};
use tangle_common::{
    AF_INET, AF_INET6, Config, ConnInfo, DEFAULT_CAPTURE, DEFAULT_WAKEUP_BYTES, Endpoint,
    KernelOffsets, MAX_CAPTURE, STAT_COUNT, Stat, SyscallNumbers,
};

use crate::capture::btf::{Btf, BtfError, VMLINUX_BTF};

/// The compiled eBPF object, built by this crate's build script.
static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tangle-agent-ebpf"));

/// Each program and the tracepoint (category, name) it attaches to. Socket
/// events only: a process that never touches a socket pays nothing.
const ATTACHMENTS: &[(&str, &str, &str)] = &[
    ("sock_set_state", "sock", "inet_sock_set_state"),
    ("sock_send", "sock", "sock_send_length"),
    ("sock_recv", "sock", "sock_recv_length"),
];

/// Where tracefs is mounted when nothing else has mounted it.
const TRACEFS: &str = "/sys/kernel/tracing";
/// Where tracefs may be mounted already.
const TRACEFS_DIRS: [&str; 2] = [TRACEFS, "/sys/kernel/debug/tracing"];

/// Why the probe could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The process lacks the capabilities to load eBPF programs.
    #[error(
        "not allowed to load eBPF programs: missing {missing} (run as root, or grant CAP_BPF \
         and CAP_PERFMON; effective capabilities here: {caps:#x})"
    )]
    NotPrivileged { missing: String, caps: u64 },
    /// The kernel publishes no BTF, which the agent needs to find sockets.
    #[error("the kernel has no BTF at {VMLINUX_BTF} (needs CONFIG_DEBUG_INFO_BTF=y)")]
    NoBtf,
    /// The kernel's BTF lacks something the agent needs.
    #[error(transparent)]
    Btf(#[from] BtfError),
    /// Tracepoints need tracefs, which is not mounted and could not be.
    #[error("tracefs is not mounted and mounting it at {TRACEFS} failed: {0}")]
    NoTracefs(io::Error),
    /// The kernel lacks a tracepoint the programs attach to.
    #[error(
        "the kernel has no tracepoint {0} (the capture needs Linux 6.3 or later: \
         sock:sock_send_length and sock:sock_recv_length)"
    )]
    NoTracepoint(String),
    /// The kernel refused the eBPF object.
    #[error("loading the eBPF object failed: {0}")]
    Load(#[from] Box<aya::EbpfError>),
    /// The kernel refused a program (the verifier's log follows).
    #[error("loading or attaching program `{name}` to {tracepoint} failed")]
    Program {
        name: String,
        tracepoint: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    /// A map operation failed.
    #[error("eBPF map `{name}`")]
    Map {
        name: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    /// The object lacks a map or program this code expects (a build mismatch).
    #[error("the eBPF object has no {0}")]
    Missing(String),
    /// An option is out of range.
    #[error("invalid option: {0}")]
    Invalid(String),
    /// Something the probe reads about this host could not be read.
    #[error("{0}")]
    Io(&'static str, #[source] io::Error),
}

/// What to capture. `Default` captures everything with default sizes.
#[derive(Clone, Debug)]
pub struct ProbeOptions {
    /// Bytes captured per transfer (1..=`MAX_CAPTURE`).
    pub capture_size: u32,
    /// Ring buffer size in bytes; rounded up to a power of two pages.
    pub ring_size: u32,
    /// Most connections tracked at once.
    pub max_connections: u32,
    /// Only this process (thread-group id).
    pub pid: Option<u32>,
    /// Only processes in this cgroup (v2 id, see [`cgroup_id`]).
    pub cgroup_id: Option<u64>,
    /// Only connections with this local or remote port.
    pub port: Option<u16>,
    /// Only sockets in this network namespace (inode, see [`netns_inode`]).
    pub netns: Option<u32>,
    /// Bytes pending before the kernel wakes the reader; 0 wakes it per event.
    pub wakeup_bytes: u32,
    /// Have the kernel time every program run while the probe lives (see
    /// [`Probe::program_stats`]); the timing itself costs each run a little.
    pub program_stats: bool,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        Self {
            capture_size: DEFAULT_CAPTURE,
            ring_size: 16 * 1024 * 1024,
            max_connections: 65536,
            pid: None,
            cgroup_id: None,
            port: None,
            netns: None,
            wakeup_bytes: DEFAULT_WAKEUP_BYTES,
            program_stats: false,
        }
    }
}

/// Kernel-side counters, summed over CPUs, and the maps' current sizes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct KernelStats {
    /// Events dropped because the ring buffer was full.
    pub events_lost: u64,
    pub conn_table_full: u64,
    pub data_events: u64,
    pub conn_events: u64,
    pub read_faults: u64,
    /// Connections the full table forgot (least recently used) for new ones.
    pub conns_evicted: u64,
    /// Connections not tracked: Tangle's own processes and endpoints.
    pub ignored: u64,
    /// Connections in the kernel's table now, claimed by a process.
    pub conns_tracked: u64,
    /// Connections established and not claimed yet (no transfer so far).
    pub conns_pending: u64,
}

/// How often one eBPF program ran and for how long, while timed.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ProgramStats {
    pub program: String,
    pub runs: u64,
    pub run_ns: u64,
}

/// The loaded, attached programs and their maps.
pub struct Probe {
    ebpf: Ebpf,
    /// While held, the kernel times every eBPF program's runs.
    timing: Option<std::os::fd::OwnedFd>,
    counters: KernelCounters,
    /// Processes in `IGNORED_TGIDS`, by their start time: once one exits,
    /// its id is taken out before another process can be given it.
    ignored: std::collections::HashMap<u32, u64>,
}

/// What [`KernelStats`] is read from, by handles of its own: the probe
/// reads it when asked, and [`Probe::watch_stats`] on a thread of its own,
/// since counting a table's entries is a syscall per entry.
struct KernelCounters {
    stats: PerCpuArray<MapData, u64>,
    conns: HashMap<MapData, u64, ConnInfo>,
    pending: HashMap<MapData, u64, ConnInfo>,
    /// Connections removed from the kernel's table by the agent (not evicted).
    swept: Arc<AtomicU64>,
    /// The kernel's evictions last reported: the estimate is taken from
    /// counters read one after another, and must never go down.
    evicted_reported: Arc<AtomicU64>,
}

/// A handle of its own on map `name` of `ebpf`.
fn map_handle(ebpf: &Ebpf, name: &'static str) -> Result<aya::maps::Map, ProbeError> {
    use aya::maps::Map;
    let map = ebpf
        .map(name)
        .ok_or_else(|| ProbeError::Missing(format!("map {name}")))?;
    let (Map::HashMap(data) | Map::LruHashMap(data) | Map::PerCpuArray(data)) = map else {
        return Err(ProbeError::Missing(format!("map {name} of a counted kind")));
    };
    let fd = data
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| ProbeError::Io("duplicating a map's descriptor", e))?;
    let data = MapData::from_fd(fd).map_err(map_error(name))?;
    Ok(match map {
        Map::HashMap(_) => Map::HashMap(data),
        Map::LruHashMap(_) => Map::LruHashMap(data),
        _ => Map::PerCpuArray(data),
    })
}

impl KernelCounters {
    fn open(
        ebpf: &Ebpf,
        swept: Arc<AtomicU64>,
        evicted_reported: Arc<AtomicU64>,
    ) -> Result<Self, ProbeError> {
        let table = |name| HashMap::try_from(map_handle(ebpf, name)?).map_err(map_error(name));
        Ok(Self {
            stats: PerCpuArray::try_from(map_handle(ebpf, "STATS")?).map_err(map_error("STATS"))?,
            conns: table("CONNS")?,
            pending: table("PENDING")?,
            swept,
            evicted_reported,
        })
    }

    fn read(&self) -> Result<KernelStats, ProbeError> {
        let conns_tracked = self.conns.keys().count() as u64;
        let sum = |stat: Stat| -> Result<u64, ProbeError> {
            let values = self
                .stats
                .get(&(stat as u32), 0)
                .map_err(map_error("STATS"))?;
            Ok(values.iter().sum())
        };
        debug_assert_eq!(STAT_COUNT, 8);
        let swept = self.swept.load(Ordering::Relaxed);
        let evicted = sum(Stat::ConnInserted)?
            .saturating_sub(sum(Stat::ConnRemoved)? + swept + conns_tracked);
        let evicted = self
            .evicted_reported
            .fetch_max(evicted, Ordering::Relaxed)
            .max(evicted);
        Ok(KernelStats {
            events_lost: sum(Stat::EventsLost)?,
            conn_table_full: sum(Stat::ConnTableFull)?,
            data_events: sum(Stat::DataEvents)?,
            conn_events: sum(Stat::ConnEvents)?,
            read_faults: sum(Stat::ReadFaults)?,
            ignored: sum(Stat::Ignored)?,
            conns_tracked,
            conns_evicted: evicted,
            conns_pending: self.pending.keys().count() as u64,
        })
    }
}

/// The kernel's counters as a thread reads them, every so often.
pub struct StatsWatch {
    latest: Arc<Mutex<Option<KernelStats>>>,
}

impl StatsWatch {
    /// The last reading; none before the first.
    pub fn latest(&self) -> Option<KernelStats> {
        *self.latest.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// When process `tgid` started (clock ticks after boot, `/proc/PID/stat`
/// field 22): with the id, what tells a process from a later one given
/// the same id.
fn process_start(tgid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{tgid}/stat")).ok()?;
    // The name (field 2) may hold spaces and parentheses: count from its end.
    let after_name = stat.rsplit_once(')')?.1;
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// Checks the things whose absence gives an obscure error later.
fn preflight() -> Result<(), ProbeError> {
    let caps = effective_caps();
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    if caps & (1 << CAP_SYS_ADMIN) == 0
        && let Some(missing) =
            crate::privileges::missing(caps, &[(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")])
    {
        return Err(ProbeError::NotPrivileged { missing, caps });
    }
    if !Path::new(VMLINUX_BTF).exists() {
        return Err(ProbeError::NoBtf);
    }
    ensure_tracefs()?;
    for &(_, category, name) in ATTACHMENTS {
        let known = TRACEFS_DIRS.iter().any(|dir| {
            Path::new(dir)
                .join("events")
                .join(category)
                .join(name)
                .exists()
        });
        if !known {
            return Err(ProbeError::NoTracepoint(format!("{category}:{name}")));
        }
    }
    // Kernels before 5.11 charge eBPF maps to RLIMIT_MEMLOCK; raising it is harmless later.
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct we pass; failure is only logged.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        log::debug!(
            "could not raise RLIMIT_MEMLOCK: {}",
            io::Error::last_os_error()
        );
    }
    Ok(())
}

/// The effective capability set of this process, from /proc.
fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

fn ensure_tracefs() -> Result<(), ProbeError> {
    for dir in TRACEFS_DIRS {
        if Path::new(dir).join("events/sock").exists() {
            return Ok(());
        }
    }
    let target = std::ffi::CString::new(TRACEFS).map_err(|e| ProbeError::NoTracefs(e.into()))?;
    // SAFETY: plain mount(2) with NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let err = io::Error::last_os_error();
        // Another process (or thread) may have mounted it meanwhile (EBUSY).
        if Path::new(TRACEFS).join("events/sock").exists() {
            return Ok(());
        }
        return Err(ProbeError::NoTracefs(err));
    }
    log::info!("mounted tracefs at {TRACEFS}");
    Ok(())
}

impl Probe {
    /// Loads and attaches every program. Traffic is followed from here on.
    pub fn load(options: ProbeOptions) -> Result<Self, ProbeError> {
        if options.capture_size == 0 || options.capture_size as usize > MAX_CAPTURE {
            return Err(ProbeError::Invalid(format!(
                "capture size {} is not in 1..={MAX_CAPTURE}",
                options.capture_size
            )));
        }
        if options.max_connections == 0 {
            return Err(ProbeError::Invalid(
                "max connections must be at least 1".into(),
            ));
        }
        preflight()?;
        let offsets = Btf::from_file(Path::new(VMLINUX_BTF))?.kernel_offsets()?;
        let ring_size = options.ring_size.max(4096).next_power_of_two();
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("EVENTS", ring_size)
            .map_max_entries("CONNS", options.max_connections)
            .map_max_entries("PENDING", options.max_connections)
            .load(EBPF_OBJECT)
            .map_err(Box::new)?;
        write_config(&mut ebpf, &options, offsets)?;
        let mut loaded: Vec<&str> = Vec::new();
        for &(name, category, tracepoint) in ATTACHMENTS {
            let err = |source| ProbeError::Program {
                name: name.to_owned(),
                tracepoint: format!("{category}:{tracepoint}"),
                source: Box::new(source),
            };
            let program: &mut TracePoint = ebpf
                .program_mut(name)
                .ok_or_else(|| ProbeError::Missing(format!("program {name}")))?
                .try_into()
                .map_err(err)?;
            if !loaded.contains(&name) {
                program.load().map_err(err)?;
                loaded.push(name);
            }
            program.attach(category, tracepoint).map_err(err)?;
        }
        let counters = KernelCounters::open(&ebpf, Default::default(), Default::default())?;
        log::info!(
            "eBPF programs attached to {} tracepoints (capture {} bytes, ring buffer {} KiB)",
            ATTACHMENTS.len(),
            options.capture_size,
            ring_size / 1024
        );
        let timing = if options.program_stats {
            Some(
                aya::sys::enable_stats(aya::sys::Stats::RunTime)
                    .map_err(|e| ProbeError::Io("enabling eBPF run-time stats", e.io_error))?,
            )
        } else {
            None
        };
        Ok(Self {
            ebpf,
            timing,
            counters,
            ignored: Default::default(),
        })
    }

    /// The event ring buffer, for one reader. Call once.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, ProbeError> {
        RingBuf::try_from(take_map(&mut self.ebpf, "EVENTS")?).map_err(map_error("EVENTS"))
    }

    /// The kernel's counters and map sizes now: a walk of the connection
    /// tables, a syscall per entry (see [`Probe::watch_stats`]).
    pub fn stats(&self) -> Result<KernelStats, ProbeError> {
        self.counters.read()
    }

    /// Reads the kernel's counters every `every` on a thread of its own,
    /// so that a node's many connections cost the capture nothing; the
    /// thread ends when the watch is dropped.
    pub fn watch_stats(&self, every: Duration) -> Result<StatsWatch, ProbeError> {
        let counters = KernelCounters::open(
            &self.ebpf,
            self.counters.swept.clone(),
            self.counters.evicted_reported.clone(),
        )?;
        let latest = Arc::new(Mutex::new(None));
        let shared = Arc::downgrade(&latest);
        let warned = tangle_throttle::Throttled::default();
        std::thread::Builder::new()
            .name("tangle-kstats".into())
            .spawn(move || {
                while let Some(latest) = shared.upgrade() {
                    match counters.read() {
                        Ok(read) => *latest.lock().unwrap_or_else(|e| e.into_inner()) = Some(read),
                        Err(e) => {
                            tangle_throttle::warn!(warned, "reading the kernel's counters: {e}");
                        }
                    }
                    drop(latest);
                    std::thread::sleep(every);
                }
            })
            .map_err(|e| ProbeError::Io("starting the kernel counters' thread", e))?;
        Ok(StatsWatch { latest })
    }

    /// Each program's runs and run time so far, when the probe was loaded
    /// with `program_stats`; empty otherwise.
    pub fn program_stats(&self) -> Vec<ProgramStats> {
        if self.timing.is_none() {
            return Vec::new();
        }
        self.ebpf
            .programs()
            .filter_map(|(name, program)| {
                let info = program.info().ok()?;
                Some(ProgramStats {
                    program: name.to_owned(),
                    runs: info.run_count(),
                    run_ns: info.run_time().as_nanos() as u64,
                })
            })
            .collect()
    }

    /// Gives back the connections of processes that no longer exist (a
    /// safety net: the kernel side ends them when it sees the socket
    /// close): their sockets may live on in another process (a daemon that
    /// forked after connecting), which claims them again with its next
    /// transfer. Returns how many.
    pub fn sweep_dead_processes(&mut self) -> Result<usize, ProbeError> {
        // One look at /proc per process, not per connection: a pool of
        // thousands of connections costs one stat.
        let mut alive: std::collections::HashMap<u32, bool> = std::collections::HashMap::new();
        let dead = self.remove_conns(|tgid| {
            !*alive
                .entry(tgid)
                .or_insert_with(|| Path::new(&format!("/proc/{tgid}")).exists())
        })?;
        let mut pending = self.hash_map::<u64, ConnInfo>("PENDING")?;
        for (sk, info) in &dead {
            let unclaimed = ConnInfo {
                tgid: 0,
                fd: u32::MAX,
                ..*info
            };
            // A full table forgets its oldest: the socket goes untracked.
            let _ = pending.insert(sk, unclaimed, 0);
        }
        Ok(dead.len())
    }

    /// Removes the kernel's claimed connections whose process `doomed`
    /// says; counted as swept. Returns them.
    fn remove_conns(
        &mut self,
        mut doomed: impl FnMut(u32) -> bool,
    ) -> Result<Vec<(u64, ConnInfo)>, ProbeError> {
        let mut conns = self.hash_map::<u64, ConnInfo>("CONNS")?;
        let gone: Vec<(u64, ConnInfo)> = conns
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, info)| doomed(info.tgid))
            .collect();
        let mut removed = Vec::with_capacity(gone.len());
        for (sk, info) in gone {
            if conns.remove(&sk).is_ok() {
                removed.push((sk, info));
            }
        }
        self.counters
            .swept
            .fetch_add(removed.len() as u64, Ordering::Relaxed);
        Ok(removed)
    }

    /// The kernel's hash map `name`, to change.
    fn hash_map<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<HashMap<&mut MapData, K, V>, ProbeError> {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or_else(|| ProbeError::Missing(format!("map {name}")))?;
        HashMap::try_from(map).map_err(map_error(name))
    }

    /// Never tracks `tgid`'s connections from now on, and forgets those it
    /// has (Tangle's own processes). Fails when the kernel's table of them
    /// is full: the process is then traced (counted, logged by the caller).
    pub fn ignore_process(&mut self, tgid: u32) -> Result<(), ProbeError> {
        use crate::identity::{executable_file, is_tangle};
        if !self.ignored.contains_key(&tgid) {
            // Checked again here: a pid found Tangle's a moment ago may be
            // another process's by now.
            if !executable_file(tgid).is_some_and(|f| is_tangle(&f)) {
                return Ok(());
            }
            let Some(started) = process_start(tgid) else {
                // Gone already: nothing left to ignore.
                return Ok(());
            };
            let mut ignored = self.hash_map::<u32, u8>("IGNORED_TGIDS")?;
            ignored
                .insert(tgid, 1, 0)
                .map_err(map_error("IGNORED_TGIDS"))?;
            self.ignored.insert(tgid, started);
        }
        self.remove_conns(|owner| owner == tgid)?;
        Ok(())
    }

    /// Takes the processes that exited (or whose id another process has
    /// now, or that exec'd something else) out of `IGNORED_TGIDS`.
    pub fn forget_exited_ignored(&mut self) -> Result<(), ProbeError> {
        use crate::identity::{executable_file, is_tangle};
        let gone: Vec<u32> = self
            .ignored
            .iter()
            .filter(|(tgid, started)| {
                process_start(**tgid) != Some(**started)
                    || !executable_file(**tgid).is_some_and(|f| is_tangle(&f))
            })
            .map(|(tgid, _)| *tgid)
            .collect();
        if gone.is_empty() {
            return Ok(());
        }
        let mut ignored = self.hash_map::<u32, u8>("IGNORED_TGIDS")?;
        for tgid in &gone {
            let _ = ignored.remove(tgid);
        }
        for tgid in &gone {
            self.ignored.remove(tgid);
        }
        Ok(())
    }

    /// Never tracks connections to or from `addr` (the collector's): an
    /// IPv4 address in both the forms a socket may show it in.
    pub fn ignore_endpoint(&mut self, addr: std::net::SocketAddr) -> Result<(), ProbeError> {
        let mut ignored = self.hash_map::<Endpoint, u8>("IGNORED_ENDPOINTS")?;
        let mut forms = Vec::new();
        match addr.ip() {
            std::net::IpAddr::V4(v4) => {
                let mut a = [0u8; 16];
                a[..4].copy_from_slice(&v4.octets());
                forms.push((AF_INET, a));
                forms.push((AF_INET6, v4.to_ipv6_mapped().octets()));
            }
            std::net::IpAddr::V6(v6) => {
                forms.push((AF_INET6, v6.octets()));
                if let Some(v4) = v6.to_ipv4_mapped() {
                    let mut a = [0u8; 16];
                    a[..4].copy_from_slice(&v4.octets());
                    forms.push((AF_INET, a));
                }
            }
        }
        for (family, a) in forms {
            // Loopback is this namespace's only: a pod's own 127.0.0.1
            // with a service on the same port is traced.
            let netns = if Endpoint::is_loopback(family, &a) {
                netns_inode(Path::new("/proc/self/ns/net"))
                    .map_err(|e| ProbeError::Io("reading this network namespace", e))?
            } else {
                0
            };
            let e = Endpoint {
                addr: a,
                port: addr.port(),
                _pad: 0,
                netns,
            };
            ignored
                .insert(e, 1, 0)
                .map_err(map_error("IGNORED_ENDPOINTS"))?;
        }
        Ok(())
    }
}

/// A map operation's error, named by its map.
fn map_error(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> ProbeError {
    move |source| ProbeError::Map {
        name,
        source: Box::new(source),
    }
}

fn take_map(ebpf: &mut Ebpf, name: &str) -> Result<aya::maps::Map, ProbeError> {
    ebpf.take_map(name)
        .ok_or_else(|| ProbeError::Missing(format!("map {name}")))
}

fn write_config(
    ebpf: &mut Ebpf,
    options: &ProbeOptions,
    offsets: KernelOffsets,
) -> Result<(), ProbeError> {
    let config = Config {
        capture_size: options.capture_size,
        filter_tgid: options.pid.unwrap_or(0),
        filter_cgroup: options.cgroup_id.unwrap_or(0),
        filter_port: options.port.unwrap_or(0),
        self_tgid: std::process::id(),
        filter_netns: options.netns.unwrap_or(0),
        wakeup_bytes: options.wakeup_bytes,
        id_base: run_id() << 48,
        offsets,
        syscalls: SyscallNumbers {
            read: libc::SYS_read as u32,
            write: libc::SYS_write as u32,
            readv: libc::SYS_readv as u32,
            writev: libc::SYS_writev as u32,
            sendto: libc::SYS_sendto as u32,
            recvfrom: libc::SYS_recvfrom as u32,
            sendmsg: libc::SYS_sendmsg as u32,
            recvmsg: libc::SYS_recvmsg as u32,
            sendfile: libc::SYS_sendfile as u32,
            _pad: 0,
        },
        ..Config::default()
    };
    let map = ebpf
        .map_mut("CONFIG")
        .ok_or_else(|| ProbeError::Missing("map CONFIG".into()))?;
    let mut array = Array::<_, Config>::try_from(map).map_err(map_error("CONFIG"))?;
    array.set(0, config, 0).map_err(map_error("CONFIG"))
}

/// Where the cgroup v2 hierarchy is mounted: `/sys/fs/cgroup` on a unified
/// system, `/sys/fs/cgroup/unified` on a hybrid one.
pub fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, dir, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(dir))
    })
}

/// 16 bits that differ between agent runs on one boot: the start time in
/// seconds since boot (CLOCK_MONOTONIC), wrapping after 18 hours.
fn run_id() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) & 0xffff
}

/// The cgroup v2 id of a cgroup directory (its inode number), for `--cgroup`.
/// A relative path is taken under the cgroup v2 mount.
pub fn cgroup_id(path: &Path) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    let path: PathBuf = if path.is_absolute() {
        path.to_owned()
    } else {
        cgroup2_root()
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, "no cgroup v2 hierarchy is mounted")
            })?
            .join(path)
    };
    Ok(std::fs::metadata(path)?.ino())
}

/// The inode of a network namespace file (`/proc/PID/ns/net`, `/run/netns/NAME`).
pub fn netns_inode(path: &Path) -> io::Result<u32> {
    use std::os::unix::fs::MetadataExt as _;
    let ino = std::fs::metadata(path)?.ino();
    u32::try_from(ino).map_err(|_| io::Error::other("namespace inode does not fit 32 bits"))
}
