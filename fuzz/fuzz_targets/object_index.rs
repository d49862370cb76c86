//! Any bytes as an object: footer and index parsing return an error, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(entries) = sidestream::format::object::read_index(data) {
        for e in entries {
            assert!(e.position + u64::from(e.length) <= data.len() as u64);
        }
    }
});
