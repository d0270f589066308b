//! Any bytes as an OTLP/JSON export, as `otlp_protobuf` does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tangle_collector_fuzz::ingest_request;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = tangle_collector::intake::decode::decode_json(data, 8 << 20) {
        ingest_request(&req);
    }
});
