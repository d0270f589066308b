//! Arbitrary transfers into one connection: detection, then whichever
//! parser it picks. No panic, bounded memory.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tangle_protocols::Connection;

fuzz_target!(|data: &[u8]| {
    let mut conn = Connection::default();
    let mut out = tangle_protocols_fuzz::transfers(data, |chunk, out| conn.feed(chunk, out));
    conn.finish(u64::MAX, &mut out);
});
