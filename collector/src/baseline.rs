//! The chain signatures seen so far, in an append-only file in the data
//! folder, so that a chain seen before a restart is not new after it.

use std::{
    collections::HashMap,
    fs::{File, OpenOptions},
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// A baseline file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    /// The data folder or the file could not be created, read or written.
    #[error("baseline {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
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

pub struct Baseline {
    path: PathBuf,
    file: File,
    known: HashMap<String, FirstSeen>,
    /// Lines of the file that did not parse (a torn last write), skipped.
    pub skipped_lines: u64,
}

impl Baseline {
    pub const FILE: &'static str = "baseline.jsonl";

    /// Opens (or creates) the baseline in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, BaselineError> {
        let path = data_dir.join(Self::FILE);
        let err = |source| BaselineError::Io {
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(data_dir).map_err(err)?;
        let mut known = HashMap::new();
        let mut skipped_lines = 0;
        if path.exists() {
            let f = File::open(&path).map_err(err)?;
            for line in BufReader::new(f).lines() {
                let line = line.map_err(err)?;
                match serde_json::from_str::<FirstSeen>(&line) {
                    Ok(e) => {
                        known.entry(e.signature.clone()).or_insert(e);
                    }
                    Err(_) => skipped_lines += 1,
                }
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(err)?;
        Ok(Self {
            path,
            file,
            known,
            skipped_lines,
        })
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

    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }

    /// Records a chain; returns true the first time it is seen (a new chain).
    /// The line is on disk before this returns.
    pub fn record(&mut self, entry: FirstSeen) -> Result<bool, BaselineError> {
        if self.known.contains_key(&entry.signature) {
            return Ok(false);
        }
        let err = |source| BaselineError::Io {
            path: self.path.display().to_string(),
            source,
        };
        let mut line = serde_json::to_string(&entry).map_err(|e| err(e.into()))?;
        line.push('\n');
        self.file.write_all(line.as_bytes()).map_err(err)?;
        self.file.sync_data().map_err(err)?;
        self.known.insert(entry.signature.clone(), entry);
        Ok(true)
    }
}
