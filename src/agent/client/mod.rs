//! How an agent talks to the controller: one trait, [`ControllerClient`], and one typed
//! method per call of the table ([`crate::api::calls`]) on `dyn ControllerClient`.
//!
//! The trait has two parts: the cached views every produce and fetch reads (topics, high
//! watermarks, the commit watch, the ACLs: synchronous, never a round trip), and [`ControllerClient::call`],
//! which carries one [`Call`] to the controller and brings its [`Reply`] back. The typed methods
//! (`client.create_topic(req).await`) are generated from the table and wrap `call`.
//!
//! - [`InProcess`]: the embedded controller, in this process: `call` is
//!   `controller::calls::dispatch`.
//! - [`remote::Remote`]: a controller service over gRPC, with its caches ([`extent_cache`]).
//!
//! The data path does not know which it has. Must not touch: controller logic (it runs in
//! `controller/`), Kafka wire types.

pub mod extent_cache;
pub mod remote;

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::watch;
use uuid::Uuid;

use crate::api::calls::prelude::*;
use crate::api::calls::{Call, Reply};
use crate::api::{LiveAgent, PartitionOffsets, TopicRef};
use crate::controller::Controller;

#[async_trait]
pub trait ControllerClient: Send + Sync + 'static {
    fn cluster_id(&self) -> String;
    /// Cached topic metadata (cheap; called on every produce and fetch).
    fn topic(&self, r: TopicRef<'_>) -> Option<Arc<TopicMeta>>;
    fn topics(&self) -> Vec<Arc<TopicMeta>>;
    fn offsets(&self, topic_id: Uuid, partition: i32) -> Result<PartitionOffsets, ControllerError>;
    /// Changes after every commit.
    fn commit_watch(&self) -> watch::Receiver<u64>;
    /// The first offset of the partition's earliest open transaction, else the high watermark.
    fn last_stable_offset(&self, topic_id: Uuid, partition: i32) -> Result<i64, ControllerError>;
    /// Agents in cluster mode that are registered and heartbeating with the controller, sorted
    /// by node id (as last heard from it); empty when the controller does not track them (the
    /// embedded one: sidecar mode only).
    fn live_agents(&self) -> Vec<LiveAgent> {
        Vec::new()
    }
    /// Every ACL, as last loaded from the controller (cheap; read on every authorized request).
    fn acls(&self) -> Arc<AclSet>;

    /// One call to the controller and its reply (a failure to reach it is the reply's error).
    async fn call(&self, call: Call) -> Reply;

    /// Every client quota, as last loaded from the controller (cheap: read on every request
    /// while any quota is set).
    fn client_quotas(&self) -> Arc<QuotaSet>;
}

macro_rules! typed_calls {
    ($([$kind:ident] $variant:ident $method:ident ($($(#[$meta:meta])* $arg:ident: $ty:ty),*) -> $reply:ty;)*) => {
        /// One typed method per call of the table.
        impl dyn ControllerClient {
            $(
                pub async fn $method(&self, $($arg: $ty),*) -> $reply {
                    let call = Call::$variant { $($arg),* };
                    match self.call(call).await {
                        Reply::$variant(r) => r,
                        other => <$reply as crate::api::calls::Failed>::failed(ControllerError::InvalidRequest(format!(
                            "the controller answered {} to {}",
                            other.name(),
                            stringify!($method)
                        ))),
                    }
                }
            )*
        }
    };
}

crate::api::calls::for_each_call!(typed_calls);

/// The embedded controller, called in-process.
#[derive(Clone)]
pub struct InProcess(pub Arc<Controller>);

#[async_trait]
impl ControllerClient for InProcess {
    fn cluster_id(&self) -> String {
        self.0.cluster_id().to_string()
    }
    fn topic(&self, r: TopicRef<'_>) -> Option<Arc<TopicMeta>> {
        self.0.topic(r)
    }
    fn topics(&self) -> Vec<Arc<TopicMeta>> {
        self.0.topics()
    }
    fn offsets(&self, topic_id: Uuid, partition: i32) -> Result<PartitionOffsets, ControllerError> {
        self.0.offsets(topic_id, partition)
    }
    fn commit_watch(&self) -> watch::Receiver<u64> {
        self.0.commit_watch()
    }
    fn last_stable_offset(&self, topic_id: Uuid, partition: i32) -> Result<i64, ControllerError> {
        self.0.last_stable_offset(topic_id, partition)
    }
    fn acls(&self) -> Arc<AclSet> {
        self.0.acls()
    }
    async fn call(&self, call: Call) -> Reply {
        crate::controller::calls::dispatch(&self.0, call).await
    }
    fn client_quotas(&self) -> Arc<QuotaSet> {
        self.0.client_quotas()
    }
}
