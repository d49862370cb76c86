//! Any bytes as what a controller receives from an agent (and an agent from a controller): a
//! coordinator call's JSON body, a CommitObject request and a Watch event, each decoded and
//! converted into the controller's types. Errors, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use prost::Message;
use sidestream::controller::{coordinate, rpc};

fuzz_target!(|data: &[u8]| {
    let _ = coordinate::decode::<coordinate::Call>(data);
    if let Ok(m) = rpc::CommitObjectRequest::decode(data) {
        let _ = rpc::commit_from(m);
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
