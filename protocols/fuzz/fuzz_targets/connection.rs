//! Arbitrary transfers, on either side, possibly cut short, into one
//! connection's parsers: no panic, bounded memory.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tangle_protocols::{Chunk, Connection, Side};

fuzz_target!(|data: &[u8]| {
    let mut conn = Connection::default();
    let mut out = Vec::new();
    // Each record: side/flags byte, length byte, then that many bytes.
    let mut rest = data;
    let mut ts = 0;
    while rest.len() >= 2 {
        let (flags, len) = (rest[0], rest[1] as usize);
        let body = &rest[2..];
        let n = len.min(body.len());
        let side = if flags & 1 == 0 { Side::Request } else { Side::Response };
        // Bit 1: the capture was cut short by a few bytes or a lot.
        let missing = if flags & 2 != 0 { u64::from(flags >> 2) * 1000 } else { 0 };
        ts += 1;
        conn.feed(Chunk { side, ts_ns: ts, bytes: &body[..n], total_len: n as u64 + missing }, &mut out);
        rest = &body[n..];
        if out.len() > 10_000 {
            out.clear();
        }
    }
    conn.finish(ts + 1, &mut out);
});
