//! Arbitrary transfers straight into the Mysql parser (no detection
//! first), so the fuzzer reaches its states directly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tangle_protocols::{Protocol, parser_for};

fuzz_target!(|data: &[u8]| {
    let mut parser = parser_for(Protocol::Mysql);
    let mut out = tangle_protocols_fuzz::transfers(data, |chunk, out| parser.feed(chunk, out));
    parser.finish(u64::MAX, &mut out);
});
