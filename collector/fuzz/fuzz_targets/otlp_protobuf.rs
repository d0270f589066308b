//! Any bytes as an OTLP/protobuf export: read in place within the limit or
//! refused, mapped, and analysed as the collector would. Never a panic,
//! never more memory than the limit allows; and where prost decodes the
//! bytes, the spans read in place are the spans its decoded request maps to.
#![no_main]

use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;
use tangle_collector::{
    intake::decode::decode_protobuf,
    intake::otlp::{MappingStats, map_request},
};
use tangle_collector_fuzz::ingest;

fuzz_target!(|data: &[u8]| {
    let Ok((chunks, stats)) = decode_protobuf(data, 8 << 20, 256) else {
        return;
    };
    let spans: Vec<_> = chunks.into_iter().flatten().collect();
    if let Ok(req) = ExportTraceServiceRequest::decode(data) {
        let mut want = MappingStats::default();
        assert_eq!(map_request(&req, &mut want, 256), spans);
        assert_eq!(want, stats);
    }
    ingest(spans);
});
