//! Turns fuzzer bytes into transfers: each record is a flags byte (bit 0:
//! the side; bit 1: the capture was cut short, by `flags >> 2` thousand
//! bytes), a length byte, then that many bytes.

use tangle_protocols::{Chunk, Exchange, Side};

pub fn transfers(
    data: &[u8],
    mut feed: impl FnMut(Chunk<'_>, &mut Vec<Exchange>),
) -> Vec<Exchange> {
    let mut out = Vec::new();
    let mut rest = data;
    let mut ts = 0;
    while rest.len() >= 2 {
        let (flags, len) = (rest[0], rest[1] as usize);
        let body = &rest[2..];
        let n = len.min(body.len());
        let side = if flags & 1 == 0 {
            Side::Request
        } else {
            Side::Response
        };
        let missing = if flags & 2 != 0 {
            u64::from(flags >> 2) * 1000
        } else {
            0
        };
        ts += 1;
        feed(
            Chunk {
                side,
                ts_ns: ts,
                bytes: &body[..n],
                total_len: n as u64 + missing,
                seq: Some(ts as u32 * 1000),
            },
            &mut out,
        );
        rest = &body[n..];
        if out.len() > 10_000 {
            out.clear();
        }
    }
    out
}
