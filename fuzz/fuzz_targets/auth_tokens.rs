//! Any bytes as a SASL token (PLAIN, SCRAM client-first and client-final) and as a client
//! certificate's DER: parsing refuses or accepts, never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sidestream::protocol::sasl::parse_any_token(data);
    let _ = sidestream::protocol::tls::subject_name(data);
});
