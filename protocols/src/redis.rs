//! Placeholder until the Redis parser lands.
use crate::{Chunk, Exchange, Parser, ParserStats, Protocol, Side};

pub fn looks_like(_side: Side, _first: &[u8]) -> bool {
    false
}

#[derive(Default)]
pub struct RedisParser;

impl Parser for RedisParser {
    fn protocol(&self) -> Protocol {
        Protocol::Redis
    }
    fn feed(&mut self, _chunk: Chunk<'_>, _out: &mut Vec<Exchange>) {}
    fn finish(&mut self, _ts_ns: u64, _out: &mut Vec<Exchange>) {}
    fn stats(&self) -> ParserStats {
        ParserStats::default()
    }
}
