//! `sidestream controller-bench`: commit latency and throughput of the controller service,
//! driven through its gRPC API exactly as agents drive it (register, then `commit_object` calls), with
//! N simulated agents against one in-process service on loopback, over SQLite or PostgreSQL.
//!
//! Each simulated agent commits one object at a time (closed loop), each object holding one
//! extent in each of `partitions` partitions of one topic: the controller's work per commit is
//! real (offset planning, one store transaction per group commit); no object bytes exist, as
//! the controller never reads them. Must not touch: anything but the public gRPC surface.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::transport::Endpoint;

use crate::api::calls::{self, Call, Reply};
use crate::api::rpc::{self, GrpcClient};
use crate::api::{CommitRequest, CreateTopic};
use crate::clock::{SeededEntropy, SystemClock};
use crate::config::{GroupsConfig, StoreUrl, TopicsConfig};
use crate::controller::service::{ServiceSettings, start};
use crate::format::object::ExtentInfo;

#[derive(Debug, Clone)]
pub struct BenchSettings {
    pub store: StoreUrl,
    pub agents: usize,
    pub duration: Duration,
    pub partitions: i32,
}

#[derive(Debug, Clone)]
pub struct BenchReport {
    pub commits: u64,
    pub commits_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Runs one scenario; `Err` names what failed.
pub async fn run(s: &BenchSettings) -> Result<BenchReport, String> {
    let service = start(
        ServiceSettings {
            listen: "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?,
            advertised: "127.0.0.1:0".into(),
            store: s.store.clone(),
            store_settings: crate::controller::store::StoreSettings::default(),
            token: None,
            tls: Default::default(),
            failover_ms: 5_000,
            agent_lease_ms: 60_000,
            topics: TopicsConfig::default(),
            groups: GroupsConfig::default(),
            producer_id_expiration_ms: 86_400_000,
            transactional_id_expiration_ms: 604_800_000,
            job_lease_ms: 30_000,
            object_commit_window_ms: 86_400_000,
        },
        Arc::new(SystemClock),
        Arc::new(SeededEntropy::from_os()),
    )
    .await
    .map_err(|e| e.to_string())?;
    let addr = service.local_addr;
    let channel = Endpoint::from_shared(format!("http://{addr}")).map_err(|e| e.to_string())?.connect_lazy();
    // A PostgreSQL replica becomes active once it holds the lease.
    let deadline = Instant::now() + Duration::from_secs(30);
    let topic = loop {
        let req = CreateTopic {
            name: format!("bench-{}", uuid::Uuid::new_v4().simple()),
            partitions: s.partitions,
            replication_factor: 1,
            configs: Default::default(),
            validate_only: false,
        };
        match send(&mut GrpcClient::new(channel.clone()), Call::CreateTopic { req }, "", 0).await {
            Ok(Reply::CreateTopic(Ok(t))) => break t,
            Ok(other) => return Err(format!("create topic: {other:?}")),
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "controller not active yet");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(format!("create topic: {e}")),
        }
    };
    let start_at = Instant::now();
    let end_at = start_at + s.duration;
    let mut tasks = Vec::new();
    for a in 0..s.agents {
        let mut client = GrpcClient::new(Endpoint::from_shared(format!("http://{addr}")).map_err(|e| e.to_string())?.connect_lazy());
        let topic_id = topic.id;
        let partitions = s.partitions;
        tasks.push(tokio::spawn(async move {
            let agent = format!("bench-agent-{a}");
            let epoch = client
                .register(rpc::RegisterRequest { agent: agent.clone(), ..Default::default() })
                .await
                .map_err(|e| format!("register: {e}"))?
                .into_inner()
                .epoch;
            let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
            let mut n = 0u64;
            while Instant::now() < end_at {
                let extents = (0..partitions)
                    .map(|p| ExtentInfo {
                        topic_id,
                        partition: p,
                        position: p as u64 * 1000,
                        length: 1000,
                        batch_count: 1,
                        offset_count: 10,
                        max_timestamp: 1,
                        producer: None,
                    })
                    .collect();
                let req = CommitRequest {
                    object_key: format!("00/{agent}/{n:010}.sso"),
                    object_size_bytes: partitions as u64 * 1000,
                    agent: agent.clone(),
                    extents,
                    wal: None,
                    txn_end: None,
                };
                let t = Instant::now();
                match send(&mut client, Call::CommitObject { req }, &agent, epoch).await? {
                    Reply::CommitObject(Ok(_)) => {}
                    other => return Err(format!("commit: {other:?}")),
                }
                h.record(t.elapsed().as_micros().max(1) as u64).map_err(|e| e.to_string())?;
                n += 1;
            }
            Ok::<_, String>(h)
        }));
    }
    let mut all = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
    for t in tasks {
        let h = t.await.map_err(|e| e.to_string())??;
        all.add(&h).map_err(|e| e.to_string())?;
    }
    let elapsed = start_at.elapsed().as_secs_f64();
    service.shutdown().await;
    Ok(BenchReport {
        commits: all.len(),
        commits_per_sec: all.len() as f64 / elapsed,
        p50_ms: all.value_at_quantile(0.50) as f64 / 1000.0,
        p99_ms: all.value_at_quantile(0.99) as f64 / 1000.0,
        max_ms: all.max() as f64 / 1000.0,
    })
}

/// One call as an agent sends it (see `agent::client::remote`), without retries.
async fn send(client: &mut GrpcClient<tonic::transport::Channel>, call: Call, agent: &str, epoch: u64) -> Result<Reply, String> {
    let body = calls::encode(&call).map_err(|e| e.to_string())?;
    let msg = rpc::CallRequest { version: calls::WIRE_VERSION, agent: agent.to_string(), epoch, body };
    let reply = client.call(msg).await.map_err(|e| e.to_string())?.into_inner();
    calls::decode(&reply.body).map_err(|e| e.to_string())
}
