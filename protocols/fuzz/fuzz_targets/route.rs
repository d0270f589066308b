//! Any request target becomes a bounded route that keeps no query,
//! fragment, parameters or userinfo.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tangle_protocols::normalize::route;

fuzz_target!(|data: &[u8]| {
    let target = String::from_utf8_lossy(data);
    let r = route(&target);
    assert!(r.len() <= 256 + 3);
    assert!(!r.contains('?') && !r.contains('#'));
    if target.starts_with('/') {
        assert!(!r.contains(';'));
    }
});
