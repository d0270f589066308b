//! `tangle-agent capture` output: one line per connection open/close and per
//! data event, human-readable or JSON lines.

use std::io::{self, Write};

use base64::Engine as _;
use serde::Serialize;
use tangle_common::{ConnEvent, DataHeader, Direction, Role, Syscall};

use tangle_protocols::{Exchange, Status};

use crate::{
    connections::{Connection, Sink, close_reason},
    exchanges::ExchangeSink,
};

/// Converts the kernel's monotonic timestamps to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// realtime - monotonic, in ns.
    offset_ns: i128,
}

fn clock_ns(id: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// Now on the kernel's event clock (CLOCK_MONOTONIC, as `bpf_ktime_get_ns`).
pub fn monotonic_ns() -> u64 {
    u64::try_from(clock_ns(libc::CLOCK_MONOTONIC)).unwrap_or(0)
}

impl Clock {
    pub fn now() -> Self {
        Self {
            offset_ns: clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_MONOTONIC),
        }
    }

    /// realtime - monotonic, in ns: add it to a kernel timestamp.
    pub fn offset_ns(&self) -> i128 {
        self.offset_ns
    }

    /// Nanoseconds since the Unix epoch.
    pub fn wall_ns(&self, monotonic_ns: u64) -> u64 {
        (monotonic_ns as i128 + self.offset_ns).max(0) as u64
    }

    pub fn rfc3339(&self, monotonic_ns: u64) -> String {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(self.wall_ns(monotonic_ns));
        humantime::format_rfc3339_micros(t).to_string()
    }
}

fn role_str(r: Role) -> &'static str {
    match r {
        Role::Client => "client",
        Role::Server => "server",
    }
}

fn direction_str(d: u8) -> &'static str {
    match Direction::from_u8(d) {
        Some(Direction::Egress) => "egress",
        Some(Direction::Ingress) => "ingress",
        None => "unknown",
    }
}

fn syscall_str(s: u8) -> &'static str {
    Syscall::from_u8(s).map_or("unknown", Syscall::name)
}

/// Printable preview of captured bytes: ASCII kept, the rest escaped.
pub fn preview(bytes: &[u8], max: usize) -> String {
    let mut s = String::with_capacity(max.min(bytes.len()) + 8);
    for &b in bytes.iter().take(max) {
        match b {
            b'\r' => s.push_str("\\r"),
            b'\n' => s.push_str("\\n"),
            b'\t' => s.push_str("\\t"),
            b'"' => s.push_str("\\\""),
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(b as char),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    if bytes.len() > max {
        s.push_str("...");
    }
    s
}

/// One JSON line. Field names are stable: tests and users parse them.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Line<'a> {
    Open {
        ts: String,
        ts_ns: u64,
        conn_id: u64,
        pid: u32,
        tid: u32,
        process: &'a str,
        fd: u32,
        role: &'static str,
        local: String,
        remote: String,
        cgroup_id: u64,
    },
    Close {
        ts: String,
        ts_ns: u64,
        conn_id: u64,
        pid: u32,
        fd: u32,
        process: Option<&'a str>,
        role: Option<&'static str>,
        local: Option<String>,
        remote: Option<String>,
        reason: &'static str,
        bytes_sent: u64,
        bytes_recv: u64,
    },
    Data {
        ts: String,
        ts_ns: u64,
        conn_id: u64,
        pid: u32,
        tid: u32,
        fd: u32,
        process: Option<&'a str>,
        role: Option<&'static str>,
        local: Option<String>,
        remote: Option<String>,
        direction: &'static str,
        syscall: &'static str,
        /// The whole transfer's length.
        len: u64,
        /// How many of its bytes were captured (`data`).
        captured: u32,
        truncated: bool,
        /// Base64 of the captured bytes.
        data: String,
    },
}

/// Output format of `capture`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Human,
    Json,
    /// No line per event, only the counters (as JSON): for benchmarks.
    None,
}

pub struct LineWriter<W: Write> {
    out: W,
    format: Format,
    clock: Clock,
    /// Lines written.
    pub lines: u64,
    /// Write errors (a closed pipe): counted, the capture stops on them.
    pub write_error: Option<io::Error>,
}

impl<W: Write> LineWriter<W> {
    pub fn new(out: W, format: Format) -> Self {
        Self {
            out,
            format,
            clock: Clock::now(),
            lines: 0,
            write_error: None,
        }
    }

    fn emit<T: Serialize>(
        &mut self,
        human: impl FnOnce(&Clock) -> String,
        json: impl FnOnce(&Clock) -> T,
    ) {
        if self.write_error.is_some() {
            return;
        }
        let res = match self.format {
            Format::None => Ok(()),
            Format::Human => writeln!(self.out, "{}", human(&self.clock)),
            Format::Json => serde_json::to_writer(&mut self.out, &json(&self.clock))
                .map_err(io::Error::other)
                .and_then(|()| self.out.write_all(b"\n")),
        };
        match res {
            Ok(()) => self.lines += 1,
            Err(e) => self.write_error = Some(e),
        }
    }

    /// Writes a free-form JSON object (stats) in JSON mode, or `human` otherwise.
    pub fn note(&mut self, human: &str, json: &serde_json::Value) {
        let res = match self.format {
            Format::Human => writeln!(self.out, "{human}"),
            // Nothing else is on stdout: the counters go there, machine-readable.
            Format::None => writeln!(self.out, "{json}"),
            Format::Json => writeln!(self.out, "{json}"),
        };
        if let Err(e) = res.and_then(|()| self.out.flush()) {
            self.write_error = Some(e);
        }
    }
}

impl<W: Write> ExchangeSink for LineWriter<W> {
    fn tick(&mut self) {
        if let Err(e) = self.out.flush() {
            self.write_error.get_or_insert(e);
        }
    }

    fn exchange(&mut self, c: &Connection, _tid: u32, e: Exchange) {
        let e = &e;
        let status = match &e.status {
            Status::Ok { code: Some(code) } => code.clone(),
            Status::Ok { code: None } => "ok".into(),
            Status::Error { code } => format!("error {code}"),
            Status::NoResponse => "no response".into(),
        };
        let duration_us = e.end_ns.saturating_sub(e.start_ns) / 1000;
        self.emit(
            |clock| {
                format!(
                    "{} {} pid={} ({}) {} {} -> {} {:?} {} [{}] {} us{}",
                    clock.rfc3339(e.start_ns),
                    if c.role == Role::Client {
                        "CALL "
                    } else {
                        "SERVE"
                    },
                    c.pid,
                    c.process(),
                    role_str(c.role),
                    c.local,
                    c.remote,
                    e.protocol,
                    e.operation,
                    status,
                    duration_us,
                    if e.truncated { " (truncated)" } else { "" }
                )
            },
            |clock| ExchangeLine {
                kind: ExchangeTag::Exchange,
                ts: clock.rfc3339(e.start_ns),
                conn_id: c.conn_id,
                pid: c.pid,
                process: c.process(),
                role: role_str(c.role),
                local: c.local.to_string(),
                remote: c.remote.to_string(),
                duration_us,
                exchange: e,
            },
        );
    }
}

/// One exchange as a JSON line: the exchange and the connection it was seen on.
#[derive(Serialize)]
struct ExchangeLine<'a> {
    #[serde(rename = "type")]
    kind: ExchangeTag,
    ts: String,
    conn_id: u64,
    pid: u32,
    process: &'a str,
    role: &'static str,
    local: String,
    remote: String,
    duration_us: u64,
    #[serde(flatten)]
    exchange: &'a Exchange,
}

#[derive(Serialize, Default)]
#[serde(rename_all = "snake_case")]
enum ExchangeTag {
    #[default]
    Exchange,
}

impl<W: Write> Sink for LineWriter<W> {
    type State = ();

    fn open(&mut self, c: &Connection, _: &mut (), ev: &ConnEvent) {
        self.emit(
            |clock| {
                format!(
                    "{} OPEN  conn={:#x} pid={} ({}) fd={} {} {} -> {}",
                    clock.rfc3339(ev.ts_ns),
                    c.conn_id,
                    c.pid,
                    c.process(),
                    c.fd,
                    role_str(c.role),
                    c.local,
                    c.remote
                )
            },
            |clock| Line::Open {
                ts: clock.rfc3339(ev.ts_ns),
                ts_ns: clock.wall_ns(ev.ts_ns),
                conn_id: c.conn_id,
                pid: c.pid,
                tid: ev.tid,
                process: c.process(),
                fd: c.fd,
                role: role_str(c.role),
                local: c.local.to_string(),
                remote: c.remote.to_string(),
                cgroup_id: c.cgroup_id,
            },
        );
    }

    fn close(&mut self, c: Option<(Connection, ())>, ev: &ConnEvent) {
        let c = c.as_ref().map(|(c, ())| c);
        self.emit(
            |clock| {
                format!(
                    "{} CLOSE conn={:#x} pid={} ({}) fd={} sent={} recv={} reason={}",
                    clock.rfc3339(ev.ts_ns),
                    ev.conn_id,
                    ev.tgid,
                    c.map_or("?", |c| c.process()),
                    ev.fd,
                    ev.bytes_sent,
                    ev.bytes_recv,
                    close_reason(ev.close_reason)
                )
            },
            |clock| Line::Close {
                ts: clock.rfc3339(ev.ts_ns),
                ts_ns: clock.wall_ns(ev.ts_ns),
                conn_id: ev.conn_id,
                pid: ev.tgid,
                fd: ev.fd,
                process: c.map(|c| c.process()),
                role: c.map(|c| role_str(c.role)),
                local: c.map(|c| c.local.to_string()),
                remote: c.map(|c| c.remote.to_string()),
                reason: close_reason(ev.close_reason),
                bytes_sent: ev.bytes_sent,
                bytes_recv: ev.bytes_recv,
            },
        );
    }

    fn data(&mut self, c: Option<(&Connection, &mut ())>, h: &DataHeader, bytes: &[u8]) {
        let c = c.map(|(c, _)| c);
        self.emit(
            |clock| {
                format!(
                    "{} DATA  conn={:#x} pid={} ({}) tid={} {} {} {} bytes{} \"{}\"",
                    clock.rfc3339(h.ts_ns),
                    h.conn_id,
                    h.tgid,
                    c.map_or("?", |c| c.process()),
                    h.tid,
                    direction_str(h.direction),
                    syscall_str(h.syscall),
                    h.total_len,
                    if (h.captured_len as u64) < h.total_len {
                        format!(" (captured {})", h.captured_len)
                    } else {
                        String::new()
                    },
                    preview(bytes, 96)
                )
            },
            |clock| Line::Data {
                ts: clock.rfc3339(h.ts_ns),
                ts_ns: clock.wall_ns(h.ts_ns),
                conn_id: h.conn_id,
                pid: h.tgid,
                tid: h.tid,
                fd: h.fd,
                process: c.map(|c| c.process()),
                role: c.map(|c| role_str(c.role)),
                local: c.map(|c| c.local.to_string()),
                remote: c.map(|c| c.remote.to_string()),
                direction: direction_str(h.direction),
                syscall: syscall_str(h.syscall),
                len: h.total_len,
                captured: h.captured_len,
                truncated: (h.captured_len as u64) < h.total_len,
                data: base64::engine::general_purpose::STANDARD.encode(bytes),
            },
        );
    }

    fn flush(&mut self) {
        if let Err(e) = self.out.flush() {
            self.write_error.get_or_insert(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preview_escapes() {
        assert_eq!(preview(b"GET / HTTP/1.1\r\n", 64), "GET / HTTP/1.1\\r\\n");
        assert_eq!(preview(&[0, 0xff, b'a'], 64), "\\x00\\xffa");
        assert_eq!(preview(b"abcdef", 3), "abc...");
    }

    #[test]
    fn clock_is_near_now() {
        let c = Clock::now();
        let mono = clock_ns(libc::CLOCK_MONOTONIC) as u64;
        let wall = clock_ns(libc::CLOCK_REALTIME) as u64;
        let diff = c.wall_ns(mono).abs_diff(wall);
        assert!(
            diff < 1_000_000_000,
            "monotonic-to-wall conversion off by {diff} ns"
        );
    }
}
