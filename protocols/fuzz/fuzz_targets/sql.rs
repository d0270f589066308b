//! Any text read as SQL in each dialect: never a panic, and the
//! normalised statement is bounded and never longer than promised.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tangle_protocols::sql::{self, Dialect};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for d in [Dialect::Postgres, Dialect::Mysql, Dialect::Generic] {
        let s = sql::parse(&text, d);
        assert!(s.normalized.len() <= 2048 + 3);
        assert!(s.tables.len() <= 16);
    }
});
