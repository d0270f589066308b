//! Identities resolved off the capture thread (in `tangle-agent run`).
//! Naming a process reads /proc (its executable, command line, environment
//! and cgroup), walks the cgroup tree and looks the pod up in the cluster's
//! view: milliseconds the capture thread cannot spend per new process. So
//! an open only asks: the connection holds an [`IdentityCell`] at once, and
//! the identity thread fills it in. The export thread waits for the name (a
//! while: it never reads /proc itself).
//!
//! A process can make reads of its own command line and environment hang
//! (they wait on its memory). An identity thread busy that long with one
//! process is left to it: a new one takes the queue, and that process is
//! named from what cannot hang (its executable's name, its cgroup, its
//! pod). At most [`MAX_STUCK`] threads are left stuck at once.
//!
//! Without an identity thread (`capture`, `exchanges`, tests) a process is
//! named on the spot, when its first connection opens.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, OnceLock, RwLock,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
};

use super::{
    CgroupFacts, Identity, ProcessFacts, cgroup_dir_of, cgroup_facts, inspect,
    kubernetes::{Cluster, PodMeta},
    name,
};
use crate::config::NamingRule;

/// Most processes waiting in the identity thread's queue; more wait,
/// unqueued, for the next tick.
const QUEUE: usize = 4096;

/// Most identities kept; past it the caches start over.
const MAX: usize = 8192;

/// An identity thread busy this long with one process is taken as stuck
/// (its reads of /proc hang): a new one takes over the others.
const STUCK_MS: u64 = 2_000;

/// Identity threads stuck at once, at most; past it the current one is
/// waited for.
const MAX_STUCK: usize = 4;

/// Milliseconds since the first call, monotonic (never 0).
fn now_ms() -> u64 {
    static START: OnceLock<std::time::Instant> = OnceLock::new();
    let start = START.get_or_init(std::time::Instant::now);
    start.elapsed().as_millis() as u64 + 1
}

/// What one identity thread is doing: naming `pid` since `since_ms`, or
/// idle (0). Each thread has its own, so one left behind never speaks for
/// the one that replaced it.
#[derive(Default)]
struct Busy {
    since_ms: AtomicU64,
    pid: std::sync::atomic::AtomicU32,
}

/// A process for the identity thread to name.
struct Ask {
    cell: Arc<IdentityCell>,
    /// Only from what cannot hang: the process got a thread stuck before.
    safe: bool,
}

/// What naming needs, shared by the identity thread and whoever resolves
/// on demand.
struct Naming {
    rules: Vec<NamingRule>,
    cluster: Option<Arc<RwLock<Cluster>>>,
    /// The cgroup v2 mount, to find a cgroup by id.
    cgroup_root: Option<std::path::PathBuf>,
    /// Cgroup id -> what its path says, for processes gone before they
    /// were looked at (short-lived clients).
    by_cgroup: Mutex<HashMap<u64, CgroupFacts>>,
    /// Tangle's own processes found, for the kernel side to stop following.
    tangle_found: Mutex<Vec<u32>>,
    /// Processes named by the identity thread, and on demand.
    resolved_by_thread: AtomicU64,
    resolved_on_demand: AtomicU64,
}

impl Naming {
    fn new(rules: Vec<NamingRule>, cluster: Option<Arc<RwLock<Cluster>>>) -> Self {
        Self {
            rules,
            cluster,
            cgroup_root: crate::capture::probe::cgroup2_root(),
            by_cgroup: Mutex::new(HashMap::new()),
            tangle_found: Mutex::new(Vec::new()),
            resolved_by_thread: AtomicU64::new(0),
            resolved_on_demand: AtomicU64::new(0),
        }
    }

    /// What the path of cgroup `id` says (cached).
    fn cgroup_facts_by_id(&self, id: u64) -> CgroupFacts {
        if let Ok(cache) = self.by_cgroup.lock()
            && let Some(f) = cache.get(&id)
        {
            return f.clone();
        }
        let facts = self
            .cgroup_root
            .as_deref()
            .and_then(|root| {
                let dir = cgroup_dir_of(root, id)?;
                let rel = dir.strip_prefix(root).ok()?;
                Some(cgroup_facts(&format!("0::/{}\n", rel.display())))
            })
            .unwrap_or_default();
        if let Ok(mut cache) = self.by_cgroup.lock() {
            if cache.len() >= MAX {
                cache.clear();
            }
            cache.insert(id, facts.clone());
        }
        facts
    }

    /// The facts of `pid`; when it is gone, its cgroup's by id.
    fn facts(&self, pid: u32, fallback: &str, cgroup_id: u64) -> ProcessFacts {
        inspect(pid, fallback, || {
            if cgroup_id == 0 {
                CgroupFacts::default()
            } else {
                self.cgroup_facts_by_id(cgroup_id)
            }
        })
    }

    /// The pod of a process: by the pod uid in its cgroup path, else by
    /// its container's id (layouts without the uid).
    fn pod(&self, cgroup: &CgroupFacts) -> Option<Arc<PodMeta>> {
        let cluster = self.cluster.as_ref()?.read().ok()?;
        cgroup
            .pod_uid
            .as_deref()
            .and_then(|uid| cluster.pod(uid))
            .or_else(|| cluster.pod_of_container(&cgroup.container.as_ref()?.id))
    }

    /// Names `n`; `safe`: only from what cannot hang (the executable's
    /// file name, the cgroup by id, the pod), never its memory.
    fn resolve(&self, n: &IdentityCell, safe: bool) -> Arc<Identity> {
        let facts = if safe {
            let exe = super::executable_file(n.pid).unwrap_or_else(|| n.comm.clone());
            ProcessFacts {
                program: exe.clone(),
                executable_file: Some(exe.clone()),
                exe,
                cgroup: if n.cgroup_id == 0 {
                    CgroupFacts::default()
                } else {
                    self.cgroup_facts_by_id(n.cgroup_id)
                },
                ..ProcessFacts::default()
            }
        } else {
            self.facts(n.pid, &n.comm, n.cgroup_id)
        };
        let pod = self.pod(&facts.cgroup);
        let identity = Arc::new(name(&self.rules, &facts, pod.as_ref()));
        if identity.tangle
            && let Ok(mut found) = self.tangle_found.lock()
            && found.len() < 1024
            && !found.contains(&n.pid)
        {
            found.push(n.pid);
        }
        identity
    }
}

/// A process's identity as its connections hold it: asked for at the
/// open, filled in off the capture thread.
pub struct IdentityCell {
    pid: u32,
    /// The kernel's name for it, if it is gone before it is looked at.
    comm: String,
    cgroup_id: u64,
    identity: OnceLock<Arc<Identity>>,
    naming: Arc<Naming>,
    /// In an identity thread's queue (or being named) now.
    queued: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for IdentityCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityCell")
            .field("pid", &self.pid)
            .field("identity", &self.identity.get())
            .finish()
    }
}

impl PartialEq for IdentityCell {
    fn eq(&self, other: &Self) -> bool {
        self.pid == other.pid && self.identity.get() == other.identity.get()
    }
}

impl Eq for IdentityCell {}

impl IdentityCell {
    /// A cell for `pid`, not named yet.
    fn new(pid: u32, comm: &str, cgroup_id: u64, naming: Arc<Naming>) -> Arc<Self> {
        Arc::new(Self {
            pid,
            comm: comm.to_owned(),
            cgroup_id,
            identity: OnceLock::new(),
            naming,
            queued: Default::default(),
        })
    }

    /// An identity known already, as if /proc had said so (tests).
    #[cfg(test)]
    pub fn known(identity: Identity) -> Arc<Self> {
        let (cell, name) = Self::pending_for_tests();
        name(identity);
        cell
    }

    /// The identity, resolved now if it is not yet (reading /proc): for the
    /// CLI and tests, never on the export thread, which takes [`IdentityCell::ready`].
    pub fn get(&self) -> &Arc<Identity> {
        self.identity.get_or_init(|| {
            self.naming
                .resolved_on_demand
                .fetch_add(1, Ordering::Relaxed);
            self.naming.resolve(self, false)
        })
    }

    /// A handle not named yet, and what names it (tests of what waits for a name).
    #[cfg(test)]
    pub fn pending_for_tests() -> (Arc<Self>, impl FnOnce(Identity)) {
        let named = Self::new(u32::MAX, "", 0, Arc::new(Naming::new(Vec::new(), None)));
        let slot = named.clone();
        (named, move |id: Identity| {
            let _ = slot.identity.set(Arc::new(id));
        })
    }

    /// The identity, if it is resolved already.
    pub fn ready(&self) -> Option<&Arc<Identity>> {
        self.identity.get()
    }
}

/// Counters of naming.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct NamingStats {
    /// Processes named by the identity thread.
    pub by_thread: u64,
    /// Processes named where the name was first needed, before the
    /// identity thread got to them (or without one).
    pub on_demand: u64,
}

/// The capture thread's side: the identity of each process with open
/// connections, by pid (counted, so a close costs no scan).
pub struct Identities {
    naming: Arc<Naming>,
    /// pid -> (identity, open connections).
    known: HashMap<u32, (Arc<IdentityCell>, usize)>,
    /// To the current identity thread, and what it is doing; without one,
    /// a process is named when its connection opens.
    queue: Option<(mpsc::SyncSender<Ask>, Arc<Busy>)>,
    /// Threads left stuck, each on its process.
    stuck_threads: Vec<Arc<Busy>>,
    /// Processes that got a thread stuck: named from what cannot hang
    /// while they live.
    stuck: Vec<u32>,
    stuck_warned: tangle_throttle::Throttled,
    /// When [`Identities::tick`] last did its work.
    ticked_ms: u64,
    /// Busy this long with one process, a thread is stuck ([`STUCK_MS`]).
    stuck_after_ms: u64,
}

impl Default for Identities {
    fn default() -> Self {
        Self::new(Vec::new(), None)
    }
}

impl Identities {
    /// Identities named on the capture thread, at each process's first
    /// open: for the CLI's `capture` and `exchanges`, and tests.
    pub fn new(rules: Vec<NamingRule>, cluster: Option<Arc<RwLock<Cluster>>>) -> Self {
        Self {
            naming: Arc::new(Naming::new(rules, cluster)),
            known: HashMap::new(),
            queue: None,
            stuck_threads: Vec::new(),
            stuck: Vec::new(),
            stuck_warned: tangle_throttle::Throttled::default(),
            ticked_ms: 0,
            stuck_after_ms: STUCK_MS,
        }
    }

    /// Identities named on a thread of their own ("identity").
    pub fn on_thread(
        rules: Vec<NamingRule>,
        cluster: Option<Arc<RwLock<Cluster>>>,
    ) -> std::io::Result<Self> {
        let mut ids = Self::new(rules, cluster);
        ids.start_thread()?;
        Ok(ids)
    }

    /// Starts an identity thread, which takes the queue from now on.
    fn start_thread(&mut self) -> std::io::Result<()> {
        let (tx, rx) = mpsc::sync_channel::<Ask>(QUEUE);
        let naming = self.naming.clone();
        let busy = Arc::new(Busy::default());
        let mine = busy.clone();
        std::thread::Builder::new()
            .name("identity".into())
            .spawn(move || {
                // Ends when the capture side lets go of its queue.
                while let Ok(ask) = rx.recv() {
                    let cell = &ask.cell;
                    if cell.ready().is_none() {
                        mine.pid.store(cell.pid, Ordering::Relaxed);
                        mine.since_ms.store(now_ms(), Ordering::Relaxed);
                        // Named into a value, then set: a cell being named
                        // never blocks anyone, here or elsewhere.
                        let identity = naming.resolve(cell, ask.safe);
                        if cell.identity.set(identity).is_ok() {
                            naming.resolved_by_thread.fetch_add(1, Ordering::Relaxed);
                        }
                        mine.since_ms.store(0, Ordering::Relaxed);
                    }
                    cell.queued.store(false, Ordering::Relaxed);
                }
            })?;
        self.queue = Some((tx, busy));
        Ok(())
    }

    /// Time-based work, called often from the capture loop: an identity
    /// thread stuck on one process is replaced, processes that could not
    /// be queued are queued, the stuck processes that are gone forgotten.
    pub fn tick(&mut self) {
        // Four times a second is often enough.
        let now = now_ms();
        if self.queue.is_none() || (self.ticked_ms != 0 && now.saturating_sub(self.ticked_ms) < 250)
        {
            return;
        }
        self.ticked_ms = now;
        // A stuck thread that moved on no longer counts.
        self.stuck_threads
            .retain(|b| b.since_ms.load(Ordering::Relaxed) != 0);
        self.watch();
        self.stuck
            .retain(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
        let waiting: Vec<Arc<IdentityCell>> = self
            .known
            .values()
            .map(|(cell, _)| cell)
            .filter(|c| c.ready().is_none() && !c.queued.load(Ordering::Relaxed))
            .cloned()
            .collect();
        self.send(waiting);
    }

    /// An identity thread stuck on one process (its /proc reads hang) is
    /// left to it: a new one names the others, and that process is named
    /// from what cannot hang.
    fn watch(&mut self) {
        let Some((_, busy)) = &self.queue else {
            return;
        };
        let since = busy.since_ms.load(Ordering::Relaxed);
        if since == 0 || now_ms().saturating_sub(since) < self.stuck_after_ms {
            return;
        }
        let pid = busy.pid.load(Ordering::Relaxed);
        if self.stuck_threads.len() >= MAX_STUCK {
            tangle_throttle::warn!(
                self.stuck_warned,
                "naming process {pid} hangs, as do {MAX_STUCK} identity threads already: \
                 naming waits for them (spans wait, then tangle_agent_spans_unnamed_total)"
            );
            return;
        }
        log::warn!(
            "naming process {pid} hangs (reading its /proc): an identity thread is left to \
             it, a new one names the others; {pid} is named from its executable and cgroup"
        );
        if self.stuck.len() < 1024 {
            self.stuck.push(pid);
        }
        let busy = busy.clone();
        self.stuck_threads.push(busy);
        if let Err(e) = self.start_thread() {
            log::warn!("cannot start an identity thread: {e}");
            return;
        }
        // What the stuck thread had queued goes to the new one.
        for (cell, _) in self.known.values() {
            cell.queued.store(false, Ordering::Relaxed);
        }
    }

    /// Takes `identity` as `pid`'s, as if /proc had said so.
    #[cfg(test)]
    pub fn preset(&mut self, pid: u32, identity: Identity) {
        self.known.insert(pid, (IdentityCell::known(identity), 0));
    }

    /// The identity of `pid`, whose thread was in cgroup `cgroup_id`
    /// (`comm`: the kernel's name, if it is gone); counts one more open
    /// connection of it.
    pub fn acquire(&mut self, pid: u32, comm: &str, cgroup_id: u64) -> Arc<IdentityCell> {
        if let Some((named, open)) = self.known.get_mut(&pid) {
            *open += 1;
            // A pod the cluster did not list yet when the process was
            // named: asked again once the cluster knows it (a map lookup).
            let naming = &self.naming;
            let stale = named.ready().is_some_and(|id| {
                id.pod.is_none()
                    && (id.cgroup.pod_uid.is_some() || id.cgroup.container.is_some())
                    && naming.pod(&id.cgroup).is_some()
            });
            if !stale {
                return named.clone();
            }
        }
        let named = self.ask(pid, comm, cgroup_id);
        match self.known.get_mut(&pid) {
            Some((known, _)) => *known = named.clone(),
            None => {
                if self.known.len() >= MAX {
                    self.known.clear();
                }
                self.known.insert(pid, (named.clone(), 1));
            }
        }
        named
    }

    /// A new [`IdentityCell`] for `pid`, queued to the identity thread (or named
    /// now, without one).
    fn ask(&mut self, pid: u32, comm: &str, cgroup_id: u64) -> Arc<IdentityCell> {
        let named = IdentityCell::new(pid, comm, cgroup_id, self.naming.clone());
        if self.queue.is_none() {
            named.get();
            return named;
        }
        // Tangle's own, at once (one readlink, which cannot hang): never
        // traced, from its first connection.
        if super::executable_file(pid).is_some_and(|f| super::is_tangle(&f)) {
            let _ = named.identity.set(Arc::new(Identity {
                tangle: true,
                ..Identity::executable(comm)
            }));
            return named;
        }
        self.send(vec![named.clone()]);
        named
    }

    /// Queues `cells` to the identity thread. What does not fit stays
    /// unqueued: [`Identities::tick`] finds it among the known cells.
    fn send(&self, cells: Vec<Arc<IdentityCell>>) {
        let Some((q, _)) = &self.queue else {
            return;
        };
        for cell in cells {
            if cell.ready().is_some() || cell.queued.load(Ordering::Relaxed) {
                continue;
            }
            let ask = Ask {
                cell: cell.clone(),
                safe: self.stuck.contains(&cell.pid),
            };
            cell.queued.store(true, Ordering::Relaxed);
            if q.try_send(ask).is_err() {
                // Full: the rest waits for the next tick.
                cell.queued.store(false, Ordering::Relaxed);
                return;
            }
        }
    }

    /// One connection of `pid` closed; its identity is dropped with the last.
    pub fn release(&mut self, pid: u32) {
        if let Some((_, open)) = self.known.get_mut(&pid) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                self.known.remove(&pid);
            }
        }
    }

    /// The name of the service at `ip`, from the cluster (pods and
    /// ClusterIP services on any node).
    pub fn peer(&self, ip: std::net::IpAddr) -> Option<String> {
        self.naming.cluster.as_ref()?.read().ok()?.peer(ip)
    }

    /// Tangle's own processes found since the last call.
    pub fn take_tangle_found(&self) -> Vec<u32> {
        self.naming
            .tangle_found
            .lock()
            .map(|mut f| std::mem::take(&mut *f))
            .unwrap_or_default()
    }

    pub fn stats(&self) -> NamingStats {
        NamingStats {
            by_thread: self.naming.resolved_by_thread.load(Ordering::Relaxed),
            on_demand: self.naming.resolved_on_demand.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On its own thread: the open gets its handle at once, the thread
    /// names the process, and the handle then says who it is.
    #[test]
    fn named_off_the_opening_thread() {
        let mut ids = Identities::on_thread(Vec::new(), None).unwrap();
        let me = std::process::id();
        let named = ids.acquire(me, "fallback", 0);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while named.ready().is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let id = named.ready().expect("named by the identity thread");
        assert_ne!(id.exe, "fallback", "read from /proc, not the comm");
        assert_eq!(ids.stats().by_thread, 1);
        assert_eq!(ids.stats().on_demand, 0);
        // The same process's next connection shares it.
        assert!(Arc::ptr_eq(&ids.acquire(me, "fallback", 0), &named));
        ids.release(me);
        ids.release(me);
        assert!(ids.known.is_empty());
    }

    /// A thread stuck on a process is replaced: the new one names the
    /// others, and names that process from what cannot hang.
    #[test]
    fn a_stuck_identity_thread_is_replaced() {
        let mut ids = Identities::on_thread(Vec::new(), None).unwrap();
        ids.stuck_after_ms = 0;
        let me = std::process::id();
        // The thread looks busy with this process, as if its reads hung.
        let first = ids.queue.as_ref().unwrap().1.clone();
        first.pid.store(me, Ordering::Relaxed);
        first.since_ms.store(now_ms(), Ordering::Relaxed);
        ids.tick();
        assert_eq!(ids.stuck, [me]);
        assert_eq!(ids.stuck_threads.len(), 1);
        let second = ids.queue.as_ref().unwrap().1.clone();
        assert!(!Arc::ptr_eq(&first, &second), "a new thread took the queue");
        let named = ids.acquire(me, "fallback", 0);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while named.ready().is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let id = named.ready().expect("named by the new thread");
        assert_eq!(
            Some(id.exe.clone()),
            super::super::executable_file(me),
            "from the executable alone"
        );
        // Once the stuck thread moves on, it no longer counts.
        first.since_ms.store(0, Ordering::Relaxed);
        ids.ticked_ms = 0;
        ids.tick();
        assert!(ids.stuck_threads.is_empty());
    }

    /// A process gone before it is looked at keeps the kernel's name.
    #[test]
    fn named_on_demand_when_needed_first() {
        let mut ids = Identities::default();
        let named = ids.acquire(u32::MAX, "worker", 0);
        assert_eq!(named.get().exe, "worker");
        assert_eq!(ids.stats().on_demand, 1);
    }
}
