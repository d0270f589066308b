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
    intake::otlp::MappingStats,
    model::{Finding, Model},
    names::Names,
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
    /// The limits already said to be reached (bits of [`State::warn_limits`]).
    limits_warned: u16,
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
            limits_warned: 0,
        }
    }

    /// Says once, for each limit, that it was reached: past it the
    /// collector folds, cuts or drops, which the map then shows.
    fn warn_limits(&mut self) {
        let (of, names, asm) = (
            &self.model.overflow,
            &self.names.stats,
            &self.assembler.stats,
        );
        let folded = "folded into {other}";
        let reached = [
            (
                of.chains,
                "chains than [limits] max_chains",
                folded,
                "tangle_model_overflow_total{kind=\"chains\"}",
            ),
            (
                of.entries,
                "entry operations than [limits] max_entries",
                folded,
                "tangle_model_overflow_total{kind=\"entries\"}",
            ),
            (
                of.edges,
                "edges of one kind than [limits] max_edges",
                folded,
                "tangle_model_overflow_total{kind=\"edges\"}",
            ),
            (
                of.databases,
                "databases than [limits] max_databases",
                folded,
                "tangle_model_overflow_total{kind=\"databases\"}",
            ),
            (
                of.tables,
                "(database, service, table) entries than [limits] max_tables",
                folded,
                "tangle_model_overflow_total{kind=\"tables\"}",
            ),
            (
                of.cycles,
                "cycles than [limits] max_cycles",
                "counted only",
                "tangle_model_overflow_total{kind=\"cycles\"}",
            ),
            (
                of.cut_chains,
                "hops in a chain than [limits] max_chain_depth",
                "cut there",
                "tangle_model_overflow_total{kind=\"chain_depth\"}",
            ),
            (
                names.services_folded,
                "services than [limits] max_services",
                folded,
                "tangle_names_folded_total{kind=\"service\"}",
            ),
            (
                names.operations_folded,
                "operations of one service than [limits] max_operations_per_service",
                folded,
                "tangle_names_folded_total{kind=\"operation\"}",
            ),
            (
                self.mapping.names_cut,
                "bytes in a name than [limits] max_name_bytes",
                "cut",
                "tangle_names_cut_total",
            ),
            (
                asm.over_trace_limit,
                "spans in one trace than [limits] max_spans_per_trace",
                "dropped",
                "tangle_spans_over_trace_limit_total",
            ),
            (
                asm.evicted,
                "spans in flight than max_spans_in_flight",
                "their oldest traces closed early",
                "tangle_traces_evicted_total",
            ),
        ];
        for (bit, (n, what, done, metric)) in reached.into_iter().enumerate() {
            if n > 0 && self.limits_warned & (1 << bit) == 0 {
                self.limits_warned |= 1 << bit;
                log::warn!(
                    "more {what}: the rest is {done}, counted in {metric}; raise the limit if \
                     this traffic is real (said once)"
                );
            }
        }
    }

    /// Takes one batch of mapped spans.
    pub fn add(&mut self, spans: impl IntoIterator<Item = Span>, mapping: MappingStats) {
        self.mapping.accepted += mapping.accepted;
        self.mapping.bad_ids += mapping.bad_ids;
        self.mapping.names_cut += mapping.names_cut;
        let now = now_ns();
        for span in spans {
            for trace in self.assembler.add(span, now) {
                self.analyse(trace, now);
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
            self.analyse(trace, now);
        }
        if self.model.version != self.findings_version {
            self.findings = Arc::new(self.model.findings());
            self.findings_version = self.model.version;
            self.warn_limits();
        }
    }

    fn analyse(&mut self, mut trace: Vec<Span>, now: u64) {
        // In place: the analysis then has nothing to leave out, and copies nothing.
        trace.retain(crate::chains::in_chains);
        let Some(mut a) = analyze_to_depth(&trace, self.max_depth) else {
            return;
        };
        let mut served: Vec<(String, bool)> = trace
            .iter()
            .filter(|s| s.is_entry())
            .map(|s| (s.service.clone(), s.fault))
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
                        lock(&state).add(spans.into_iter().flatten(), batch.mapping);
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
