//! `sidestream-bench`: load against a real `sidestream serve` process, measured from outside.
//!
//! The load generator speaks the Kafka protocol itself (pipelined Produce requests over a few
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
use clap::{Args, Parser, Subcommand};
use hdrhistogram::Histogram;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, CreateTopicsRequest, ProduceRequest, ProduceResponse, RequestHeader, ResponseHeader,
    TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

#[derive(Parser)]
#[command(name = "sidestream-bench", about = "Sidestream load generator and scenarios")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Produce load: max throughput (no --rate) or fixed-rate latency (--rate N records/s).
    Produce(ProduceArgs),
}

#[derive(Args, Clone, Debug)]
struct ProduceArgs {
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
    /// Name of the result file under bench/results/ (default: derived from the parameters).
    #[arg(long)]
    name: Option<String>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    match cli.command {
        Command::Produce(args) => rt.block_on(produce(args)),
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
    async fn start(bin: &PathBuf, env: &[(&str, String)]) -> Result<Server> {
        let kafka = format!("127.0.0.1:{}", free_port()?);
        let metrics = format!("127.0.0.1:{}", free_port()?);
        let data_dir = std::env::temp_dir().join(format!("sidestream-bench-{}-{}", std::process::id(), free_port()?));
        std::fs::create_dir_all(&data_dir)?;
        let log = std::fs::File::create(data_dir.join("server.log"))?;
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
            if let Ok(mut s) = TcpStream::connect(&server.kafka).await {
                if roundtrip(&mut s, ApiKey::ApiVersions, 3, 0, &ApiVersionsRequest::default()).await.is_ok() {
                    return Ok(server);
                }
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
        let mut out = BTreeMap::new();
        let Ok(mut s) = TcpStream::connect(&self.metrics).await else { return out };
        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n").await;
        let mut text = String::new();
        let _ = s.read_to_string(&mut text).await;
        for line in text.lines().filter(|l| !l.starts_with('#') && !l.starts_with("HTTP") && l.contains(' ')) {
            let (name, value) = line.rsplit_once(' ').unwrap_or((line, "0"));
            if name.contains("quantile") {
                continue;
            }
            let base = name.split('{').next().unwrap_or(name).to_string();
            *out.entry(base).or_insert(0.0) += value.parse::<f64>().unwrap_or(0.0);
        }
        out
    }

    async fn stop(mut self) {
        let _ = tokio::process::Command::new("kill").arg("-TERM").arg(self.pid.to_string()).status().await;
        let _ = tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await;
        let _ = std::fs::remove_dir_all(&self.data_dir);
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

async fn produce(args: ProduceArgs) -> Result<()> {
    let acks: i16 = match args.acks.as_str() {
        "1" => 1,
        "all" | "-1" => -1,
        other => bail!("--acks must be 1 or all, not {other}"),
    };
    let server = Server::start(
        &args.bin,
        &[
            ("SIDESTREAM_UPLOAD_FLUSH_INTERVAL_MS", args.flush_interval_ms.to_string()),
            ("SIDESTREAM_WAL_SYNC", args.wal_sync.clone()),
        ],
    )
    .await?;
    let mut admin = TcpStream::connect(&server.kafka).await?;
    let create = CreateTopicsRequest::default().with_timeout_ms(10_000).with_topics(vec![
        CreatableTopic::default()
            .with_name(TopicName(StrBytes::from_static_str(TOPIC)))
            .with_num_partitions(args.partitions)
            .with_replication_factor(1),
    ]);
    roundtrip(&mut admin, ApiKey::CreateTopics, 5, 1, &create).await?;

    // One pre-encoded request per partition; only the correlation id changes per send.
    let value: Vec<u8> = (0..args.record_bytes).map(|i| (i * 31 % 251) as u8).collect();
    let values: Vec<&[u8]> = vec![&value; args.records_per_batch];
    let batch = sidestream::protocol::records::encode_batch(0, &values);
    let requests: Vec<Bytes> = (0..args.partitions)
        .map(|p| {
            let req = ProduceRequest::default().with_acks(acks).with_timeout_ms(30_000).with_topic_data(vec![
                TopicProduceData::default().with_name(TopicName(StrBytes::from_static_str(TOPIC))).with_partition_data(
                    vec![PartitionProduceData::default().with_index(p).with_records(Some(batch.clone()))],
                ),
            ]);
            encode_request(ApiKey::Produce, PRODUCE_VERSION, 0, &req)
        })
        .collect::<Result<_>>()?;

    let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?));
    let totals = Arc::new(Totals { records: AtomicU64::new(0), errors: AtomicU64::new(0) });
    let (cpu0, _) = server.usage();
    let metrics0 = server.metrics().await;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.duration_s);
    // With --rate: connection c sends its k-th request at start + (k * connections + c) * interval.
    let interval = (args.rate > 0).then(|| {
        Duration::from_secs_f64(args.records_per_batch as f64 / args.rate as f64)
    });
    let mut tasks = Vec::new();
    for c in 0..args.connections {
        let addr = server.kafka.clone();
        let (requests, hist, totals, args) = (requests.clone(), hist.clone(), totals.clone(), args.clone());
        tasks.push(tokio::spawn(async move {
            load_connection(addr, c, requests, args, start, deadline, interval, hist, totals).await
        }));
    }
    for t in tasks {
        t.await??;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (cpu1, peak_rss) = server.usage();
    let metrics1 = server.metrics().await;
    let delta = |k: &str| metrics1.get(k).copied().unwrap_or(0.0) - metrics0.get(k).copied().unwrap_or(0.0);
    let records = totals.records.load(Ordering::Relaxed);
    let bytes = records as f64 * args.record_bytes as f64;
    let h = hist.lock().map_err(|_| anyhow::anyhow!("histogram lock"))?;
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let puts = delta("sidestream_objects_uploaded_total");
    let uploaded = delta("sidestream_object_bytes_uploaded_total");
    let syncs = delta("sidestream_wal_syncs_total");
    let entries = delta("sidestream_wal_entries_total");
    let rows = [
        ("records/s", format!("{:.0}", records as f64 / elapsed)),
        ("MB/s", format!("{:.1}", bytes / elapsed / 1e6)),
        ("p50 ms", format!("{:.2}", ms(0.5))),
        ("p99 ms", format!("{:.2}", ms(0.99))),
        ("p999 ms", format!("{:.2}", ms(0.999))),
        ("max ms", format!("{:.2}", h.max() as f64 / 1000.0)),
        ("errors", totals.errors.load(Ordering::Relaxed).to_string()),
        ("server CPU s", format!("{:.2}", cpu1 - cpu0)),
        ("server CPU %", format!("{:.0}", (cpu1 - cpu0) / elapsed * 100.0)),
        ("server peak RSS MiB", format!("{:.0}", peak_rss as f64 / 1048576.0)),
        ("PUTs", format!("{puts:.0}")),
        ("PUTs per GB", format!("{:.1}", if uploaded > 0.0 { puts / (uploaded / 1e9) } else { 0.0 })),
        ("avg object MiB", format!("{:.2}", if puts > 0.0 { uploaded / puts / 1048576.0 } else { 0.0 })),
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
    println!("## {name}\n");
    println!("parameters: {args:?}\n");
    println!("| metric | value |\n|---|---|");
    for (k, v) in &rows {
        println!("| {k} | {v} |");
    }
    let json = format!(
        "{{\"scenario\":\"{name}\",\"params\":\"{}\",{}}}\n",
        format!("{args:?}").replace('"', "'"),
        rows.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect::<Vec<_>>().join(",")
    );
    let dir = PathBuf::from("bench/results");
    if std::fs::create_dir_all(&dir).is_ok() {
        if let Ok(mut f) = std::fs::File::create(dir.join(format!("{name}.json"))) {
            let _ = f.write_all(json.as_bytes());
        }
    }
    drop(h);
    server.stop().await;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn load_connection(
    addr: String,
    c: usize,
    requests: Vec<Bytes>,
    args: ProduceArgs,
    start: Instant,
    deadline: Instant,
    interval: Option<Duration>,
    hist: Arc<Mutex<Histogram<u64>>>,
    totals: Arc<Totals>,
) -> Result<()> {
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
