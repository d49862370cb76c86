//! `sidestream-bench own ...`: the first load generator, kept as a Sidestream-only diagnostic.
//!
//! It speaks the Kafka protocol itself (pipelined Produce requests over a few
//! connections), so it costs little CPU and its latencies are exact per request. It starts the
//! server binary on free ports with a temporary data dir (or targets `--bootstrap`), and reports
//! throughput, latency percentiles (hdrhistogram; with `--rate`, measured from each request's
//! intended send time, so a stalled server is not hidden by coordinated omission), the server
//! process's CPU seconds and peak RSS, object-store PUTs per GB and WAL group commits (from the
//! server's /metrics).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::{BufMut, Bytes, BytesMut};
use clap::{Args, Subcommand};
use crc32c::crc32c;
use hdrhistogram::Histogram;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, CreateTopicsRequest, ProduceRequest, ProduceResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

/// The own-client scenarios (Sidestream only; the librdkafka scenarios are the published ones).
#[derive(Subcommand)]
pub enum Command {
    /// Produce load: max throughput (no --rate) or fixed-rate latency (--rate N records/s).
    Produce(ProduceArgs),
    /// End-to-end latency (produce timestamp to fetch) for a tail consumer on the same agent.
    E2e(ProduceArgs),
    /// Producer latency at a fixed rate, alone and then with a consumer catching up on
    /// --history-s seconds of max-rate writes read cold (cache wiped, server restarted).
    Catchup(CatchupArgs),
}

#[derive(Args, Clone, Debug)]
pub struct CatchupArgs {
    #[command(flatten)]
    produce: ProduceArgs,
    /// Seconds of max-rate writes that form the history the consumer catches up on.
    #[arg(long, default_value_t = 10)]
    history_s: u64,
}

#[derive(Args, Clone, Debug)]
pub struct ProduceArgs {
    /// The server binary to start.
    #[arg(long, default_value = "target/release/sidestream")]
    bin: PathBuf,
    /// acks: 1 or all.
    #[arg(long, default_value = "1")]
    acks: String,
    #[arg(long, default_value_t = 1024)]
    record_bytes: usize,
    /// Records per batch (one batch per produce request).
    #[arg(long, default_value_t = 1)]
    records_per_batch: usize,
    #[arg(long, default_value_t = 1)]
    partitions: i32,
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 16)]
    in_flight: usize,
    #[arg(long, default_value_t = 10)]
    duration_s: u64,
    /// Records per second over all connections; 0: as fast as the in-flight window allows.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// The server's [upload] flush_interval_ms.
    #[arg(long, default_value_t = 250)]
    flush_interval_ms: u64,
    /// The server's [wal] sync: fsync or none.
    #[arg(long, default_value = "fsync")]
    wal_sync: String,
    /// The server's [object_store] url (default: a directory in its data dir, on the WAL's
    /// disk; e.g. file:///dev/shm/x keeps object writes off the WAL's disk, as S3 would).
    #[arg(long)]
    object_store_url: Option<String>,
    /// Extra server settings, SIDESTREAM_<SECTION>_<KEY>=VALUE (repeatable).
    #[arg(long = "server-env", value_parser = parse_key_value)]
    server_env: Vec<(String, String)>,
    /// Name of the result file under bench/results/ (default: derived from the parameters).
    #[arg(long)]
    name: Option<String>,
}

/// Runs one own-client scenario on its own runtime.
pub fn run(command: Command) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    match command {
        Command::Produce(args) => rt.block_on(produce(args)),
        Command::E2e(args) => rt.block_on(e2e(args)),
        Command::Catchup(args) => rt.block_on(catchup(args)),
    }
}

/// A `sidestream serve` child process on free ports with a temporary data dir.
struct Server {
    child: tokio::process::Child,
    pid: u32,
    kafka: String,
    metrics: String,
    data_dir: PathBuf,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Server {
    async fn start(bin: &PathBuf, env: &[(String, String)]) -> Result<Server> {
        let data_dir = std::env::temp_dir().join(format!("sidestream-bench-{}-{}", std::process::id(), free_port()?));
        Self::start_in(bin, env, data_dir).await
    }

    async fn start_in(bin: &PathBuf, env: &[(String, String)], data_dir: PathBuf) -> Result<Server> {
        let kafka = format!("127.0.0.1:{}", free_port()?);
        let metrics = format!("127.0.0.1:{}", free_port()?);
        std::fs::create_dir_all(&data_dir)?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(data_dir.join("server.log"))?;
        let mut cmd = tokio::process::Command::new(bin);
        cmd.arg("serve")
            .env("SIDESTREAM_AGENT_LISTEN", &kafka)
            .env("SIDESTREAM_AGENT_DATA_DIR", &data_dir)
            .env("SIDESTREAM_METRICS_LISTEN", &metrics)
            .env("SIDESTREAM_LOG_LEVEL", "warn")
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().with_context(|| format!("cannot start {}", bin.display()))?;
        let pid = child.id().context("server exited at once")?;
        let server = Server { child, pid, kafka, metrics, data_dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut s) = TcpStream::connect(&server.kafka).await
                && roundtrip(&mut s, ApiKey::ApiVersions, 3, 0, &ApiVersionsRequest::default()).await.is_ok()
            {
                return Ok(server);
            }
            if Instant::now() > deadline {
                bail!("server not ready on {} within 30 s", server.kafka);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// (cpu seconds, peak RSS bytes) of the server process so far.
    fn usage(&self) -> (f64, u64) {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let after = stat.rsplit_once(')').map(|(_, a)| a).unwrap_or("");
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        let cpu = (ticks(11) + ticks(12)) / 100.0;
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        let hwm = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0);
        (cpu, hwm * 1024)
    }

    async fn metrics(&self) -> BTreeMap<String, f64> {
        let Ok(mut s) = TcpStream::connect(&self.metrics).await else {
            return BTreeMap::new();
        };
        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n").await;
        let mut text = String::new();
        let _ = s.read_to_string(&mut text).await;
        crate::scrape::parse(&text)
    }

    /// SIGTERM and wait; keeps the data dir (returned).
    async fn halt(mut self) -> PathBuf {
        if self.pid > 1 {
            // SAFETY: kill(2) on our own child's pid; no memory effects.
            unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) };
        }
        let _ = tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await;
        self.data_dir.clone()
    }

    async fn stop(self) {
        let dir = self.halt().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}

fn encode_request<R: Encodable>(key: ApiKey, version: i16, correlation_id: i32, body: &R) -> Result<Bytes> {
    let mut b = BytesMut::new();
    b.put_i32(0);
    RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("sidestream-bench")))
        .encode(&mut b, key.request_header_version(version))?;
    body.encode(&mut b, version)?;
    let n = (b.len() - 4) as i32;
    b[..4].copy_from_slice(&n.to_be_bytes());
    Ok(b.freeze())
}

async fn read_frame(r: &mut (impl AsyncReadExt + Unpin)) -> Result<Bytes> {
    let n = r.read_i32().await? as usize;
    let mut buf = vec![0u8; n];
    r.read_exact(&mut buf).await?;
    Ok(Bytes::from(buf))
}

async fn roundtrip<R: Encodable>(s: &mut TcpStream, key: ApiKey, version: i16, cid: i32, body: &R) -> Result<Bytes> {
    s.write_all(&encode_request(key, version, cid, body)?).await?;
    let mut b = read_frame(s).await?;
    ResponseHeader::decode(&mut b, key.response_header_version(version))?;
    Ok(b)
}

const PRODUCE_VERSION: i16 = 9;
const TOPIC: &str = "bench";

struct Totals {
    records: AtomicU64,
    errors: AtomicU64,
}

fn parse_acks(acks: &str) -> Result<i16> {
    match acks {
        "1" => Ok(1),
        "all" | "-1" => Ok(-1),
        other => bail!("--acks must be 1 or all, not {other}"),
    }
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

fn server_env(args: &ProduceArgs) -> Vec<(String, String)> {
    let mut env = vec![
        ("SIDESTREAM_UPLOAD_FLUSH_INTERVAL_MS".to_string(), args.flush_interval_ms.to_string()),
        ("SIDESTREAM_WAL_SYNC".to_string(), args.wal_sync.clone()),
    ];
    if let Some(url) = &args.object_store_url {
        env.push(("SIDESTREAM_OBJECT_STORE_URL".to_string(), url.clone()));
    }
    env.extend(args.server_env.iter().cloned());
    env
}

async fn create_topic(kafka: &str, topic: &str, partitions: i32) -> Result<()> {
    let mut admin = TcpStream::connect(kafka).await?;
    let create = CreateTopicsRequest::default().with_timeout_ms(10_000).with_topics(vec![
        CreatableTopic::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_num_partitions(partitions)
            .with_replication_factor(1),
    ]);
    roundtrip(&mut admin, ApiKey::CreateTopics, 5, 1, &create).await?;
    Ok(())
}

/// Microseconds since the bench started: the timestamp written into batches for e2e latency.
fn now_us() -> i64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(std::time::Instant::now).elapsed().as_micros() as i64
}

/// What one produce run measured.
struct LoadResult {
    records: u64,
    errors: u64,
    elapsed_s: f64,
    latency_us: Histogram<u64>,
}

/// Runs the produce load of `args` against `kafka` on `topic`. With `stamp`, every batch carries
/// its send time (see [`now_us`]) as its timestamps.
async fn run_load(kafka: &str, topic: &str, args: &ProduceArgs, stamp: bool) -> Result<LoadResult> {
    let acks = parse_acks(&args.acks)?;
    // One pre-encoded request per partition; the correlation id (and with `stamp` the batch
    // timestamps and CRC) are patched per send.
    let value: Vec<u8> = (0..args.record_bytes).map(|i| (i * 31 % 251) as u8).collect();
    let values: Vec<&[u8]> = vec![&value; args.records_per_batch];
    let batch = sidestream::format::records::encode_batch(0, &values);
    let requests: Vec<Bytes> = (0..args.partitions)
        .map(|p| {
            let req = ProduceRequest::default().with_acks(acks).with_timeout_ms(30_000).with_topic_data(vec![
                TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                    .with_partition_data(vec![PartitionProduceData::default().with_index(p).with_records(Some(batch.clone()))]),
            ]);
            encode_request(ApiKey::Produce, PRODUCE_VERSION, 0, &req)
        })
        .collect::<Result<_>>()?;
    let batch_at = requests[0]
        .windows(batch.len())
        .rposition(|w| w == &batch[..])
        .ok_or_else(|| anyhow::anyhow!("batch not found in its request"))?;
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?));
    let totals = Arc::new(Totals { records: AtomicU64::new(0), errors: AtomicU64::new(0) });
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.duration_s);
    // With --rate: connection c sends its k-th request at start + (k * connections + c) * interval.
    let interval = (args.rate > 0).then(|| Duration::from_secs_f64(args.records_per_batch as f64 / args.rate as f64));
    let mut tasks = Vec::new();
    for c in 0..args.connections {
        let addr = kafka.to_string();
        let (requests, hist, totals, args) = (requests.clone(), hist.clone(), totals.clone(), args.clone());
        let plan = LoadPlan { c, start, deadline, interval, stamp_at: stamp.then_some((batch_at, batch.len())) };
        tasks.push(tokio::spawn(async move { load_connection(addr, requests, args, plan, hist, totals).await }));
    }
    for t in tasks {
        t.await??;
    }
    let latency_us = hist.lock().map_err(|_| anyhow::anyhow!("histogram lock"))?.clone();
    Ok(LoadResult {
        records: totals.records.load(Ordering::Relaxed),
        errors: totals.errors.load(Ordering::Relaxed),
        elapsed_s: start.elapsed().as_secs_f64(),
        latency_us,
    })
}

fn ms(h: &Histogram<u64>, q: f64) -> String {
    format!("{:.2}", h.value_at_quantile(q) as f64 / 1000.0)
}

/// Prints the rows as a Markdown table and writes them to bench/results/<name>.json.
fn report(name: &str, params: &str, rows: &[(&str, String)]) {
    let name = format!("own-{name}");
    println!("## {name}\n");
    println!("parameters: {params}\n");
    println!("| metric | value |\n|---|---|");
    for (k, v) in rows {
        println!("| {k} | {v} |");
    }
    let json = format!(
        "{{\"scenario\":\"{name}\",\"params\":\"{}\",{}}}\n",
        params.replace('"', "'"),
        rows.iter().map(|(k, v)| format!("\"{k}\":\"{v}\"")).collect::<Vec<_>>().join(",")
    );
    let dir = PathBuf::from("bench/results");
    if std::fs::create_dir_all(&dir).is_ok()
        && let Ok(mut f) = std::fs::File::create(dir.join(format!("{name}.json")))
    {
        let _ = f.write_all(json.as_bytes());
    }
}

async fn produce(args: ProduceArgs) -> Result<()> {
    let server = Server::start(&args.bin, &server_env(&args)).await?;
    create_topic(&server.kafka, TOPIC, args.partitions).await?;
    let (cpu0, _) = server.usage();
    let metrics0 = server.metrics().await;
    let load = run_load(&server.kafka, TOPIC, &args, false).await?;
    let elapsed = load.elapsed_s;
    let (cpu1, peak_rss) = server.usage();
    let metrics1 = server.metrics().await;
    let delta = |k: &str| metrics1.get(k).copied().unwrap_or(0.0) - metrics0.get(k).copied().unwrap_or(0.0);
    let bytes = load.records as f64 * args.record_bytes as f64;
    let h = &load.latency_us;
    let puts = delta("sidestream_objects_uploaded_total");
    let uploaded = delta("sidestream_object_upload_bytes_total");
    let syncs = delta("sidestream_wal_syncs_total");
    let entries = delta("sidestream_wal_entries_total");
    let server_ms = |k: &str| format!("{:.1}", metrics1.get(k).copied().unwrap_or(0.0) * 1e3);
    let rows = [
        ("records/s", format!("{:.0}", load.records as f64 / elapsed)),
        ("MB/s", format!("{:.1}", bytes / elapsed / 1e6)),
        ("p50 ms", ms(h, 0.5)),
        ("p99 ms", ms(h, 0.99)),
        ("p999 ms", ms(h, 0.999)),
        ("max ms", format!("{:.2}", h.max() as f64 / 1000.0)),
        ("errors", load.errors.to_string()),
        ("server CPU s", format!("{:.2}", cpu1 - cpu0)),
        ("server CPU %", format!("{:.0}", (cpu1 - cpu0) / elapsed * 100.0)),
        ("server peak RSS MiB", format!("{:.0}", peak_rss as f64 / 1048576.0)),
        ("PUTs", format!("{puts:.0}")),
        ("PUTs per GB", format!("{:.1}", if uploaded > 0.0 { puts / (uploaded / 1e9) } else { 0.0 })),
        ("avg object MiB", format!("{:.2}", if puts > 0.0 { uploaded / puts / 1048576.0 } else { 0.0 })),
        ("server produce p50 ms", server_ms("sidestream_produce_seconds:p0.5")),
        ("server produce p99 ms", server_ms("sidestream_produce_seconds:p0.99")),
        ("server PUT p99 ms", server_ms("sidestream_object_upload_seconds:p0.99")),
        ("server commit p99 ms", server_ms("sidestream_commit_seconds:p0.99")),
        ("WAL sync p99 ms", server_ms("sidestream_wal_sync_seconds:p0.99")),
        ("WAL syncs/s", format!("{:.0}", syncs / elapsed)),
        ("WAL entries per sync", format!("{:.1}", if syncs > 0.0 { entries / syncs } else { 0.0 })),
    ];
    let name = args.name.clone().unwrap_or_else(|| {
        format!(
            "produce-acks{}-{}B-x{}-p{}-{}",
            args.acks,
            args.record_bytes,
            args.records_per_batch,
            args.partitions,
            if args.rate > 0 { format!("rate{}", args.rate) } else { "max".into() }
        )
    });
    report(&name, &format!("{args:?}"), &rows);
    server.stop().await;
    Ok(())
}

/// Fetches partition 0 of `topic` from `offset` in a loop until `stop`, long-polling at the end
/// of the log. Calls `on_batch(base_timestamp)` per batch; returns the bytes read.
async fn consume(
    kafka: String,
    topic: String,
    mut offset: i64,
    max_wait_ms: i32,
    until_offset: Option<i64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    mut on_batch: impl FnMut(i64) + Send,
) -> Result<u64> {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::{FetchRequest, FetchResponse};
    let mut s = TcpStream::connect(&kafka).await?;
    let mut bytes = 0u64;
    let mut cid = 0;
    while !stop.load(Ordering::Relaxed) && until_offset.is_none_or(|end| offset < end) {
        let req = FetchRequest::default().with_max_wait_ms(max_wait_ms).with_min_bytes(1).with_max_bytes(64 << 20).with_topics(vec![
            FetchTopic::default().with_topic(TopicName(StrBytes::from_string(topic.clone()))).with_partitions(vec![
                FetchPartition::default().with_partition(0).with_fetch_offset(offset).with_partition_max_bytes(16 << 20),
            ]),
        ]);
        cid += 1;
        let mut b = roundtrip(&mut s, ApiKey::Fetch, 12, cid, &req).await?;
        let f = FetchResponse::decode(&mut b, 12)?;
        let Some(records) = f.responses.first().and_then(|t| t.partitions.first()).and_then(|p| p.records.clone()) else {
            continue;
        };
        bytes += records.len() as u64;
        for (at, h) in sidestream::format::records::batches(&records) {
            if h.base_offset + h.offset_count() > offset {
                offset = h.base_offset + h.offset_count();
                on_batch(i64::from_be_bytes(records[at + 27..at + 35].try_into()?));
            }
        }
    }
    Ok(bytes)
}

async fn e2e(args: ProduceArgs) -> Result<()> {
    let server = Server::start(&args.bin, &server_env(&args)).await?;
    create_topic(&server.kafka, TOPIC, 1).await?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let e2e = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?));
    let (h, st) = (e2e.clone(), stop.clone());
    let consumer = tokio::spawn(consume(server.kafka.clone(), TOPIC.into(), 0, 500, None, st, move |sent_us| {
        if let Ok(mut h) = h.lock() {
            let _ = h.record((now_us() - sent_us).max(1) as u64);
        }
    }));
    let mut one_partition = args.clone();
    one_partition.partitions = 1;
    let load = run_load(&server.kafka, TOPIC, &one_partition, true).await?;
    stop.store(true, Ordering::Relaxed);
    let _ = tokio::time::timeout(Duration::from_secs(5), consumer).await;
    let h = e2e.lock().map_err(|_| anyhow::anyhow!("histogram lock"))?.clone();
    let rows = [
        ("records/s", format!("{:.0}", load.records as f64 / load.elapsed_s)),
        ("produce errors", load.errors.to_string()),
        ("produce p50 ms", ms(&load.latency_us, 0.5)),
        ("produce p99 ms", ms(&load.latency_us, 0.99)),
        ("e2e batches", h.len().to_string()),
        ("e2e p50 ms", ms(&h, 0.5)),
        ("e2e p99 ms", ms(&h, 0.99)),
        ("e2e p999 ms", ms(&h, 0.999)),
        ("e2e max ms", format!("{:.2}", h.max() as f64 / 1000.0)),
    ];
    let name = args.name.clone().unwrap_or_else(|| format!("e2e-acks{}-rate{}", args.acks, args.rate));
    report(&name, &format!("{args:?}"), &rows);
    server.stop().await;
    Ok(())
}

async fn catchup(args: CatchupArgs) -> Result<()> {
    let p = &args.produce;
    let env = server_env(p);
    let server = Server::start(&p.bin, &env).await?;
    create_topic(&server.kafka, "history", 1).await?;
    create_topic(&server.kafka, TOPIC, p.partitions).await?;
    let mut fill = p.clone();
    fill.rate = 0;
    fill.duration_s = args.history_s;
    fill.partitions = 1;
    fill.acks = "1".into();
    let history = run_load(&server.kafka, "history", &fill, false).await?;
    // Cold reads: restart without the read cache (as on a new host).
    let dir = server.halt().await;
    let _ = std::fs::remove_dir_all(dir.join("cache"));
    let server = Server::start_in(&p.bin, &env, dir).await?;
    let alone = run_load(&server.kafka, TOPIC, p, false).await?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let end = history.records as i64;
    let started = Instant::now();
    let reader = tokio::spawn(consume(server.kafka.clone(), "history".into(), 0, 0, Some(end), stop.clone(), |_| {}));
    let with = run_load(&server.kafka, TOPIC, p, false).await?;
    let read = reader.await??;
    let read_s = started.elapsed().as_secs_f64();
    let metrics = server.metrics().await;
    let gets = metrics.get("sidestream_cache_block_gets_total").copied().unwrap_or(0.0);
    let rows = [
        ("history MB", format!("{:.0}", history.records as f64 * p.record_bytes as f64 / 1e6)),
        ("catch-up MB/s", format!("{:.1}", read as f64 / read_s / 1e6)),
        ("GETs per GB read", format!("{:.1}", gets / (read as f64 / 1e9))),
        ("producer records/s", format!("{:.0}", with.records as f64 / with.elapsed_s)),
        ("producer p50 ms alone", ms(&alone.latency_us, 0.5)),
        ("producer p99 ms alone", ms(&alone.latency_us, 0.99)),
        ("producer p50 ms with catch-up", ms(&with.latency_us, 0.5)),
        ("producer p99 ms with catch-up", ms(&with.latency_us, 0.99)),
    ];
    let name = p.name.clone().unwrap_or_else(|| format!("catchup-acks{}-rate{}", p.acks, p.rate));
    report(&name, &format!("{args:?}"), &rows);
    server.stop().await;
    Ok(())
}

/// One connection's share of a load.
struct LoadPlan {
    c: usize,
    start: Instant,
    deadline: Instant,
    interval: Option<Duration>,
    /// Where the batch is in the request (start, length), when its timestamps are stamped per send.
    stamp_at: Option<(usize, usize)>,
}

async fn load_connection(
    addr: String,
    requests: Vec<Bytes>,
    args: ProduceArgs,
    plan: LoadPlan,
    hist: Arc<Mutex<Histogram<u64>>>,
    totals: Arc<Totals>,
) -> Result<()> {
    let LoadPlan { c, start, deadline, interval, stamp_at } = plan;
    let s = TcpStream::connect(&addr).await?;
    s.set_nodelay(true)?;
    let (mut rd, mut wr) = s.into_split();
    let window = Arc::new(Semaphore::new(args.in_flight));
    let (sent_tx, mut sent_rx) = mpsc::unbounded_channel::<Instant>();
    let reader_window = window.clone();
    let per_batch = args.records_per_batch as u64;
    let reader = tokio::spawn(async move {
        let mut local = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
        while let Some(sent) = sent_rx.recv().await {
            let mut b = read_frame(&mut rd).await?;
            let latency = sent.elapsed();
            reader_window.add_permits(1);
            ResponseHeader::decode(&mut b, ApiKey::Produce.response_header_version(PRODUCE_VERSION))?;
            let r = ProduceResponse::decode(&mut b, PRODUCE_VERSION)?;
            let ok = r.responses.iter().all(|t| t.partition_responses.iter().all(|p| p.error_code == 0));
            if ok {
                totals.records.fetch_add(per_batch, Ordering::Relaxed);
                local.record((latency.as_micros() as u64).max(1))?;
            } else {
                totals.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        hist.lock().map_err(|_| anyhow::anyhow!("histogram lock"))?.add(&local)?;
        anyhow::Ok(())
    });
    let mut k: u64 = 0;
    let mut cid: i32 = 0;
    loop {
        let intended = match interval {
            Some(i) => start + i.mul_f64((k * args.connections as u64 + c as u64) as f64),
            None => Instant::now(),
        };
        if intended >= deadline {
            break;
        }
        if intended > Instant::now() {
            tokio::time::sleep_until(intended).await;
        }
        window.acquire().await?.forget();
        if Instant::now() >= deadline {
            break;
        }
        let mut frame = BytesMut::from(&requests[(k as usize + c) % requests.len()][..]);
        frame[8..12].copy_from_slice(&cid.to_be_bytes());
        if let Some((at, len)) = stamp_at {
            let ts = now_us().to_be_bytes();
            frame[at + 27..at + 35].copy_from_slice(&ts);
            frame[at + 35..at + 43].copy_from_slice(&ts);
            let crc = crc32c(&frame[at + 21..at + len]);
            frame[at + 17..at + 21].copy_from_slice(&crc.to_be_bytes());
        }
        // Open-loop latency: from when the request should have been sent.
        let sent_at = if interval.is_some() { intended } else { Instant::now() };
        wr.write_all(&frame).await?;
        sent_tx.send(sent_at)?;
        k += 1;
        cid = cid.wrapping_add(1);
    }
    drop(sent_tx);
    reader.await??;
    Ok(())
}
