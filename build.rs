//! Generates the controller's gRPC service code (server trait and client) from a Rust
//! description, with tonic's manual builder: the messages are hand-written prost structs in
//! `src/controller/rpc.rs`, so the build needs no `protoc` and no `.proto` file.

use tonic_build::manual::{Builder, Method, Service};

/// (rust name, route name, input, output, server streaming)
const METHODS: &[(&str, &str, &str, &str, bool)] = &[
    ("register", "Register", "RegisterRequest", "RegisterReply", false),
    ("heartbeat", "Heartbeat", "HeartbeatRequest", "HeartbeatReply", false),
    ("snapshot", "Snapshot", "Empty", "SnapshotReply", false),
    ("watch", "Watch", "Empty", "WatchEvent", true),
    ("create_topic", "CreateTopic", "CreateTopicRequest", "Topic", false),
    ("delete_topic", "DeleteTopic", "TopicRefRequest", "Topic", false),
    ("commit_object", "CommitObject", "CommitObjectRequest", "CommitObjectReply", false),
    ("find_extents", "FindExtents", "FindExtentsRequest", "Extents", false),
    ("wal_mark", "WalMark", "WalMarkRequest", "WalMarkReply", false),
    ("init_producer_id", "InitProducerId", "Empty", "ProducerIdReply", false),
    ("collect_orphans", "CollectOrphans", "OrphansRequest", "OrphansReply", false),
    ("coordinate", "Coordinate", "CoordinateRequest", "CoordinateReply", false),
];

fn main() {
    let mut service = Service::builder().name("Controller").package("sidestream.controller");
    for (name, route, input, output, streaming) in METHODS {
        let mut m = Method::builder()
            .name(*name)
            .route_name(*route)
            .input_type(format!("crate::controller::rpc::{input}"))
            .output_type(format!("crate::controller::rpc::{output}"))
            .codec_path("tonic_prost::ProstCodec");
        if *streaming {
            m = m.server_streaming();
        }
        service = service.method(m.build());
    }
    Builder::new().compile(&[service.build()]);
    println!("cargo:rerun-if-changed=build.rs");
}
