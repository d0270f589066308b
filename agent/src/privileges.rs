//! The agent needs root's powers to load and attach its programs, and
//! almost none after: once attached, it keeps only the capabilities that
//! naming processes needs, and sets `no_new_privs` so that nothing it could
//! be made to run gains any.
//!
//! Capabilities are per thread: this runs before the agent starts any
//! thread of its own, so every thread after it inherits the reduced set.

use std::io;

/// Reading other users' `/proc/PID/environ` (`OTEL_SERVICE_NAME`), which is
/// mode 0400 of the process's owner.
const CAP_DAC_READ_SEARCH: u32 = 2;
/// Reading other users' `/proc/PID/exe` (the executable's name) and
/// `/proc/PID/environ` needs ptrace-read access (environ needs both).
const CAP_SYS_PTRACE: u32 = 19;

/// What the running agent keeps.
pub const KEPT: &[u32] = &[CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE];

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Privileges could not be dropped, or the agent lacks some it needs.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// Naming the process behind each connection needs these capabilities.
    #[error(
        "missing {missing}: naming the process behind each connection reads other users' \
         /proc/PID/exe (CAP_SYS_PTRACE) and /proc/PID/environ (CAP_SYS_PTRACE and \
         CAP_DAC_READ_SEARCH); grant both, or run as root"
    )]
    NamingNotAllowed { missing: String },
    /// The kernel refused a call that drops privileges.
    #[error("cannot drop privileges after attaching ({what})")]
    Refused {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

fn check(rc: libc::c_long, what: &'static str) -> Result<(), PrivilegeError> {
    if rc < 0 {
        return Err(PrivilegeError::Refused {
            what,
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// The highest capability number this kernel knows.
fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// Keeps only [`KEPT`] (those of them the agent has): effective and
/// permitted sets, bounding set; no inheritable or ambient capabilities;
/// and `no_new_privs`. Call after attaching, before starting any thread.
pub fn drop_after_attach() -> Result<(), PrivilegeError> {
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    check(rc.into(), "no_new_privs")?;
    for cap in 0..=last_cap() {
        if !KEPT.contains(&cap) {
            // SAFETY: prctl with integer arguments only. Fails with EPERM
            // without CAP_SETPCAP (then the bounding set was not ours to
            // change) and EINVAL for numbers the kernel does not know.
            unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        }
    }
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    check(rc.into(), "clearing ambient capabilities")?;
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes two `CapData` (version 3) into the array we own.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    check(rc, "reading capabilities")?;
    let mut keep = [0u32; 2];
    for &cap in KEPT {
        if let Some(word) = keep.get_mut((cap / 32) as usize) {
            *word |= 1 << (cap % 32);
        }
    }
    for (d, k) in data.iter_mut().zip(keep) {
        d.permitted &= k;
        d.effective = d.permitted;
        d.inheritable = 0;
    }
    // SAFETY: capset reads the header and two `CapData` we own.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
    check(rc, "setting capabilities")
}

/// The names of `wanted` (number, name) missing from the effective set
/// `effective`, joined with " and ".
pub fn missing(effective: u64, wanted: &[(u32, &str)]) -> Option<String> {
    let names: Vec<&str> = wanted
        .iter()
        .filter(|(cap, _)| effective & (1 << cap) == 0)
        .map(|(_, name)| *name)
        .collect();
    (!names.is_empty()).then(|| names.join(" and "))
}

/// Fails, naming them, when the capabilities naming processes needs are
/// not effective.
pub fn require_naming() -> Result<(), PrivilegeError> {
    let effective = current().map_or(0, |(e, _, _)| e);
    match missing(
        effective,
        &[
            (CAP_SYS_PTRACE, "CAP_SYS_PTRACE"),
            (CAP_DAC_READ_SEARCH, "CAP_DAC_READ_SEARCH"),
        ],
    ) {
        Some(missing) => Err(PrivilegeError::NamingNotAllowed { missing }),
        None => Ok(()),
    }
}

/// This thread's capability sets, as `/proc/self/status` shows them:
/// (effective, permitted, bounding).
pub fn current() -> Option<(u64, u64, u64)> {
    let status = std::fs::read_to_string("/proc/thread-self/status").ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
    };
    Some((field("CapEff:")?, field("CapPrm:")?, field("CapBnd:")?))
}
