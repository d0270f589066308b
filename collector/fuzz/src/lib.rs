//! What the collector does with a decoded export, short of the network:
//! mapping, bounded names, assembly, chain analysis.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use tangle_collector::{
    assembly::Assembler,
    chains::analyze,
    names::Names,
    intake::otlp::{MappingStats, map_request},
    span::Span,
};

/// Maps a decoded request, then assembles and analyses its spans.
pub fn ingest_request(req: &ExportTraceServiceRequest) {
    let mut stats = MappingStats::default();
    ingest(map_request(req, &mut stats, 256));
}

/// Assembles and analyses mapped spans.
pub fn ingest(spans: Vec<Span>) {
    let mut names = Names::default();
    let mut asm = Assembler::with_trace_limit(1_000, 100_000, 1_000);
    for s in spans {
        for t in asm.add(s, 0) {
            let _ = analyze(&t);
        }
    }
    for t in asm.flush_all() {
        if let Some(mut a) = analyze(&t) {
            names.bound(&mut a, &mut []);
        }
    }
}
