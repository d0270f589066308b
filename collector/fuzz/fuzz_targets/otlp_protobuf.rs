//! Any bytes as an OTLP/protobuf export: sized, decoded within the limit
//! or refused, mapped, and analysed as the collector would. Never a panic,
//! never more memory than the limit allows.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tangle_collector_fuzz::ingest;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = tangle_collector::intake::decode::decode_protobuf(data, 8 << 20) {
        ingest(&req);
    }
});
