//! Any bytes as a request frame: parsing returns a request or an outcome, never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = sidestream::protocol::handlers::parse(bytes::Bytes::copy_from_slice(data));
});
