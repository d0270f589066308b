//! The chain signatures seen so far, in an append-only file in the data
//! folder, so that a chain seen before a restart is not new after it.
//!
//! The file is read line by line as bytes: a line that does not parse (a
//! torn write, a bad byte) is skipped and counted, and a last line without
//! its newline is cut off the file at open, so the next record starts on a
//! line of its own. Records are appended and synced by a thread of their
//! own, never under the model's lock; a failed write is cut back off the
//! file. A lock file keeps a second collector off the same data folder.

use std::{
    collections::HashMap,
    fs::{File, OpenOptions},
    io::Write as _,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
};

use serde::{Deserialize, Serialize};

/// A baseline that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    /// The data folder or the file could not be created, read or written.
    #[error("baseline {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Another collector holds the data folder.
    #[error(
        "data folder {dir} is in use by another collector (it holds {lock}); give each collector a data folder of its own"
    )]
    InUse { dir: String, lock: String },
}

/// What is kept of a chain the first time it is seen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirstSeen {
    pub signature: String,
    /// `service:operation` hops joined by ` -> `.
    pub chain: String,
    /// Nanoseconds since the Unix epoch.
    pub first_seen_ns: u64,
    /// A trace id (hex) that showed it.
    pub example_trace: String,
}

/// The baseline's writes, counted.
#[derive(Debug, Default)]
pub struct BaselineStats {
    /// Records on disk (synced) since the start.
    pub written: AtomicU64,
    /// Records that could not be written (their chains are still known
    /// until the next restart).
    pub write_errors: AtomicU64,
    /// Records not written because the writer was too far behind.
    pub dropped: AtomicU64,
    /// Lines of the file that did not parse when it was read, skipped (a
    /// partial last line included).
    pub skipped_lines: AtomicU64,
}

/// Records waiting for the writer, at most.
const QUEUE: usize = 10_000;

pub struct Baseline {
    known: HashMap<String, FirstSeen>,
    /// When its first chain was seen: where learning starts.
    started_ns: Option<u64>,
    pub stats: Arc<BaselineStats>,
    writer: Option<(mpsc::SyncSender<FirstSeen>, std::thread::JoinHandle<()>)>,
}

impl Baseline {
    pub const FILE: &'static str = "baseline.jsonl";
    pub const LOCK: &'static str = "lock";

    /// Opens (or creates) the baseline in `data_dir`, which it holds until dropped.
    pub fn open(data_dir: &Path) -> Result<Self, BaselineError> {
        Self::open_bounded(data_dir, usize::MAX)
    }

    /// Opens the baseline keeping `max_records` at most: when the file
    /// holds more (chains come and go across restarts), it is rewritten
    /// with the earliest seen, the established ones. A flood of made-up
    /// chains comes after them; one of the others seen again is new again.
    pub fn open_bounded(data_dir: &Path, max_records: usize) -> Result<Self, BaselineError> {
        let path = data_dir.join(Self::FILE);
        let io = |p: &Path| {
            let p = p.display().to_string();
            move |source| BaselineError::Io { path: p, source }
        };
        std::fs::create_dir_all(data_dir).map_err(io(data_dir))?;
        let lock_path = data_dir.join(Self::LOCK);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(BaselineError::InUse {
                    dir: data_dir.display().to_string(),
                    lock: lock_path.display().to_string(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(&lock_path)(e)),
        }
        let mut known = HashMap::new();
        let mut skipped_lines = 0;
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io(&path)(e)),
        };
        let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
        for line in bytes
            .get(..whole)
            .unwrap_or_default()
            .split(|&b| b == b'\n')
        {
            if line.is_empty() {
                continue;
            }
            match serde_json::from_slice::<FirstSeen>(line) {
                Ok(e) => {
                    known.entry(e.signature.clone()).or_insert(e);
                }
                Err(_) => skipped_lines += 1,
            }
        }
        // A record cut short (a crash, a full disk) is a line skipped.
        let torn = whole < bytes.len();
        if torn {
            skipped_lines += 1;
        }
        let mut whole = whole;
        let mut rewritten = false;
        if known.len() > max_records {
            let mut records: Vec<FirstSeen> = known.into_values().collect();
            let dropped = records.len().saturating_sub(max_records);
            records.sort_by_key(|r| r.first_seen_ns);
            records.truncate(max_records);
            let mut buf = Vec::new();
            for r in &records {
                if serde_json::to_writer(&mut buf, r).is_ok() {
                    buf.push(b'\n');
                }
            }
            let tmp = data_dir.join(format!("{}.tmp", Self::FILE));
            let written = File::create(&tmp)
                .and_then(|mut f| f.write_all(&buf).and_then(|()| f.sync_all()))
                .and_then(|()| std::fs::rename(&tmp, &path));
            written.map_err(io(&path))?;
            log::warn!(
                "baseline {}: past its bound (4 x [limits] max_chains), kept the {} chains \
                 seen earliest of {}; the others, if seen again, are reported as new",
                path.display(),
                records.len(),
                records.len() + dropped
            );
            whole = buf.len();
            rewritten = true;
            known = records
                .into_iter()
                .map(|r| (r.signature.clone(), r))
                .collect();
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        if torn && !rewritten {
            // Off the file, so the next record starts on its own line.
            file.set_len(whole as u64).map_err(io(&path))?;
        }
        let stats = Arc::new(BaselineStats {
            skipped_lines: AtomicU64::new(skipped_lines),
            ..BaselineStats::default()
        });
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let writer_stats = stats.clone();
        let handle = std::thread::Builder::new()
            .name("tangle-baseline".into())
            .spawn(move || write_records(file, whole as u64, path, lock, rx, &writer_stats))
            .map_err(io(data_dir))?;
        let started_ns = known.values().map(|f| f.first_seen_ns).min();
        Ok(Self {
            known,
            started_ns,
            stats,
            writer: Some((tx, handle)),
        })
    }

    /// Lines of the file that did not parse when it was read.
    pub fn skipped_lines(&self) -> u64 {
        self.stats.skipped_lines.load(Ordering::Relaxed)
    }

    pub fn contains(&self, signature: &str) -> bool {
        self.known.contains_key(signature)
    }

    pub fn get(&self, signature: &str) -> Option<&FirstSeen> {
        self.known.get(signature)
    }

    pub fn len(&self) -> usize {
        self.known.len()
    }

    /// When the baseline's first chain was seen, if any was.
    pub fn started_ns(&self) -> Option<u64> {
        self.started_ns
    }

    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }

    /// Records a chain; returns true the first time it is seen (a new
    /// chain). The line reaches the disk shortly after, from the writer.
    pub fn record(&mut self, entry: FirstSeen) -> bool {
        if self.known.contains_key(&entry.signature) {
            return false;
        }
        self.started_ns = Some(
            self.started_ns
                .map_or(entry.first_seen_ns, |s| s.min(entry.first_seen_ns)),
        );
        self.known.insert(entry.signature.clone(), entry.clone());
        if let Some((tx, _)) = &self.writer {
            match tx.try_send(entry) {
                Ok(()) => {}
                Err(mpsc::TrySendError::Full(_)) => {
                    self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                }
                Err(mpsc::TrySendError::Disconnected(_)) => {
                    self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        true
    }
}

impl Drop for Baseline {
    /// Waits for the writer to write what was recorded.
    fn drop(&mut self) {
        if let Some((tx, handle)) = self.writer.take() {
            drop(tx);
            let _ = handle.join();
        }
    }
}

/// The writer: appends records in batches, one sync per batch; a failed
/// write is cut back off the file. Holds the lock until it ends.
fn write_records(
    mut file: File,
    mut good_len: u64,
    path: PathBuf,
    _lock: File,
    rx: mpsc::Receiver<FirstSeen>,
    stats: &BaselineStats,
) {
    let mut last_warned: Option<std::time::Instant> = None;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < 1024
            && let Ok(more) = rx.try_recv()
        {
            batch.push(more);
        }
        let mut buf = Vec::new();
        for e in &batch {
            if serde_json::to_writer(&mut buf, e).is_ok() {
                buf.push(b'\n');
            }
        }
        let n = batch.len() as u64;
        match file.write_all(&buf).and_then(|()| file.sync_data()) {
            Ok(()) => {
                good_len += buf.len() as u64;
                stats.written.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => {
                stats.write_errors.fetch_add(n, Ordering::Relaxed);
                // No half record left behind for the next to be glued to.
                let _ = file.set_len(good_len);
                if last_warned.is_none_or(|t| t.elapsed().as_secs() >= 30) {
                    log::error!("baseline {}: {e}", path.display());
                    last_warned = Some(std::time::Instant::now());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(sig: &str) -> FirstSeen {
        FirstSeen {
            signature: sig.into(),
            chain: "a:GET / -> b:GET /".into(),
            first_seen_ns: 1,
            example_trace: "00".into(),
        }
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tangle-bl-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn bad_bytes_and_torn_lines_are_skipped_not_fatal() {
        let d = dir("torn");
        {
            let mut b = Baseline::open(&d).unwrap();
            assert!(b.record(entry("aaaa")));
        }
        // A line cut inside a UTF-8 character, invalid bytes, then a torn tail.
        let mut f = OpenOptions::new()
            .append(true)
            .open(d.join(Baseline::FILE))
            .unwrap();
        f.write_all(b"{\"signature\":\"\xc3\n\xff\xfe\n").unwrap();
        f.write_all(&serde_json::to_vec(&entry("bbbb")).unwrap())
            .unwrap();
        f.write_all(b"\n{\"signat").unwrap();
        drop(f);
        let mut b = Baseline::open(&d).unwrap();
        assert_eq!(b.skipped_lines(), 3, "two bad lines and the torn tail");
        assert!(b.contains("aaaa") && b.contains("bbbb"));
        assert!(b.record(entry("cccc")));
        drop(b);
        // The tail was cut: the new record is on a line of its own.
        let b = Baseline::open(&d).unwrap();
        assert_eq!(b.skipped_lines(), 2);
        assert!(b.contains("cccc"));
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn a_baseline_past_its_bound_keeps_its_established_chains() {
        let d = dir("bound");
        {
            let mut b = Baseline::open(&d).unwrap();
            for i in 0..10u64 {
                let mut e = entry(&format!("sig{i}"));
                e.first_seen_ns = i;
                assert!(b.record(e));
            }
        }
        let b = Baseline::open_bounded(&d, 4).unwrap();
        assert_eq!(b.len(), 4);
        assert!(b.contains("sig0") && b.contains("sig3") && !b.contains("sig4"));
        drop(b);
        let lines = std::fs::read_to_string(d.join(Baseline::FILE)).unwrap();
        assert_eq!(lines.lines().count(), 4, "the file was rewritten");
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn a_second_collector_is_kept_off_the_folder() {
        let d = dir("lock");
        let first = Baseline::open(&d).unwrap();
        let err = Baseline::open(&d)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("in use by another collector"), "{err}");
        drop(first);
        assert!(Baseline::open(&d).is_ok(), "free once the first is gone");
        let _ = std::fs::remove_dir_all(d);
    }
}
