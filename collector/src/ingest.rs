//! Spans into the model, on a thread of its own: the receivers hand over
//! mapped spans through a bounded queue and go back to their connections;
//! here their names are bounded, traces assembled and analysed, and the
//! model counted. Findings are worked out again when the model changed,
//! at most once per tick, never per scrape.

use std::{
    sync::{Arc, Mutex, MutexGuard, mpsc},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use crate::{
    assembly::Assembler,
    chains::analyze_to_depth,
    intake::Batch,
    model::{Finding, Model},
    names::Names,
    otlp::MappingStats,
    span::Span,
};

/// How often traces past their window are closed and findings refreshed.
pub const TICK: Duration = Duration::from_millis(250);

/// Everything the collector knows, shared by the ingest thread (the only
/// writer) and the pages (readers).
pub struct State {
    pub assembler: Assembler,
    pub model: Model,
    pub mapping: MappingStats,
    pub names: Names,
    /// Hops a chain is followed to.
    pub max_depth: usize,
    /// The findings as of `findings_version` of the model.
    pub findings: Arc<Vec<Finding>>,
    findings_version: u64,
}

pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl State {
    pub fn new(assembler: Assembler, model: Model, names: Names, max_depth: usize) -> Self {
        Self {
            assembler,
            model,
            mapping: MappingStats::default(),
            names,
            max_depth,
            findings: Arc::new(Vec::new()),
            findings_version: 0,
        }
    }

    /// Takes one batch of mapped spans.
    pub fn add(&mut self, spans: Vec<Span>, mapping: MappingStats) {
        self.mapping.accepted += mapping.accepted;
        self.mapping.bad_ids += mapping.bad_ids;
        let now = now_ns();
        for mut span in spans {
            self.names.cut_span(&mut span);
            for trace in self.assembler.add(span, now) {
                self.analyse(&trace, now);
            }
        }
    }

    /// Closes the traces whose window has passed (all of them with `all`),
    /// and refreshes the findings if the model changed.
    pub fn tick(&mut self, all: bool) {
        let now = now_ns();
        let closed = if all {
            self.assembler.flush_all()
        } else {
            self.assembler.flush(now)
        };
        for trace in closed {
            self.analyse(&trace, now);
        }
        if self.model.version != self.findings_version {
            self.findings = Arc::new(self.model.findings());
            self.findings_version = self.model.version;
        }
    }

    fn analyse(&mut self, trace: &[Span], now: u64) {
        let Some(mut a) = analyze_to_depth(trace, self.max_depth) else {
            return;
        };
        let mut served: Vec<(String, bool)> = trace
            .iter()
            .filter(|s| s.is_entry())
            .map(|s| (s.service.clone(), s.error))
            // Only what the analysis followed (not past the depth limit).
            .filter(|(s, _)| a.closure.contains(s))
            .collect();
        self.names.bound(&mut a, &mut served);
        let trace_id = trace.first().map(|s| s.trace_id).unwrap_or_default();
        self.model.ingest(&trace_id, &a, &served, now);
    }
}

/// Locks the state; a panic elsewhere leaves it consistent enough to go on.
pub fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs the ingest thread until every sender is gone; then closes every
/// trace still open.
pub fn start(
    state: Arc<Mutex<State>>,
    batches: mpsc::Receiver<Batch>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("tangle-ingest".into())
        .spawn(move || {
            let mut last_tick = Instant::now();
            loop {
                match batches.recv_timeout(TICK) {
                    Ok(mut batch) => {
                        let spans = std::mem::take(&mut batch.spans);
                        lock(&state).add(spans, batch.mapping);
                        // Its place in the queue is given back now.
                        drop(batch);
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
                if last_tick.elapsed() >= TICK {
                    lock(&state).tick(false);
                    last_tick = Instant::now();
                }
            }
            lock(&state).tick(true);
        })
}
