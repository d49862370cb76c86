//! Any bytes as what a controller receives from an agent (and an agent from a controller): a
//! call's envelope and JSON body, a reply's body, and a Watch event, each decoded and converted
//! into the API's types. Errors, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use prost::Message;
use sidestream::api::calls::{self, Call, Reply};
use sidestream::api::rpc;

fuzz_target!(|data: &[u8]| {
    let _ = calls::decode::<Call>(data);
    let _ = calls::decode::<Reply>(data);
    if let Ok(m) = rpc::CallRequest::decode(data) {
        let _ = calls::check_version(m.version);
        let _ = calls::decode::<Call>(&m.body);
    }
    if let Ok(m) = rpc::WatchEvent::decode(data) {
        for e in m.extents {
            let _ = rpc::extent_from(e);
        }
        for p in m.partitions {
            let _ = rpc::uuid(&p.topic_id);
        }
    }
});
