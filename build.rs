//! Generates the controller's gRPC service code (server trait and client) from a Rust
//! description, with tonic's manual builder: the messages are hand-written prost structs in
//! `src/api/rpc.rs`, so the build needs no `protoc` and no `.proto` file.

use tonic_build::manual::{Builder, Method, Service};

/// (rust name, route name, input, output, server streaming)
const METHODS: &[(&str, &str, &str, &str, bool)] = &[
    ("register", "Register", "RegisterRequest", "RegisterReply", false),
    ("heartbeat", "Heartbeat", "HeartbeatRequest", "HeartbeatReply", false),
    ("snapshot", "Snapshot", "Empty", "SnapshotReply", false),
    ("watch", "Watch", "Empty", "WatchEvent", true),
    ("call", "Call", "CallRequest", "CallReply", false),
];

fn main() {
    let mut service = Service::builder().name("Controller").package("sidestream.controller");
    for (name, route, input, output, streaming) in METHODS {
        let mut m = Method::builder()
            .name(*name)
            .route_name(*route)
            .input_type(format!("crate::api::rpc::{input}"))
            .output_type(format!("crate::api::rpc::{output}"))
            .codec_path("tonic_prost::ProstCodec");
        if *streaming {
            m = m.server_streaming();
        }
        service = service.method(m.build());
    }
    Builder::new().compile(&[service.build()]);
    println!("cargo:rerun-if-changed=build.rs");
}
