//! The S3 server every object-store target shares in a run, with a request counter in front.
//!
//! `s3s-fs` (the S3-compatible server the tests use) keeps objects as files under a root on
//! tmpfs, so object writes stay off the disk the brokers' logs use, as S3 would. Between the
//! brokers and it sits a loopback proxy that parses the client-to-server half of each HTTP/1.1
//! connection (request line, headers, then a Content-Length or chunked body) and counts requests
//! by what a provider bills: PUT class (PutObject, UploadPart, multipart create/complete, List)
//! and GET class (GetObject, HeadObject). Responses are copied through untouched. The same
//! counter measures Sidestream and Tansu, so their requests per GB compare like for like.
//!
//! The proxy can also make the store as slow as a real one (`--store-latency`, [`StoreLatency`]):
//! it holds each response's first byte until `request arrival + delay`, the delay drawn from a
//! log-normal distribution fitted to a preset's p50 and p99 (`mu = ln p50`,
//! `sigma = (ln p99 - ln p50) / 2.326`), by request kind and size:
//!
//! - PUT class with a body (PutObject, UploadPart): p50 and p99 each interpolated linearly in the
//!   body size between a small-object figure (0 bytes) and the published 8 MiB figure, and
//!   extrapolated on the same line above 8 MiB: `pX(size) = pX(0) + (pX(8 MiB) - pX(0)) * size / 8 MiB`.
//! - GetObject: a first-byte delay drawn from the preset's GET figures, plus
//!   `response Content-Length / per-connection throughput` (the first byte is held until the
//!   whole body would have arrived, which is when a reader of a whole object can use it).
//! - Everything else (HEAD, LIST, DELETE, multipart create/complete/abort): the GET first-byte
//!   figures.
//! - 503 SlowDown: a preset's share of PUT-class requests with a body is answered by the proxy
//!   itself (after reading and discarding the body; with `Expect: 100-continue`, before it, and
//!   the connection is closed), after a first-byte delay, never forwarded, counted as
//!   [`SLOW_DOWN`].
//!
//! Sources of the presets' figures (issue #23): S3 Standard, 8 MiB PUT p50 about 100 ms and p99
//! about 400 ms, GET first byte p50 about 30 ms and p99 about 120 ms (published measurements:
//! Aiven's Inkless 200-400 ms p99 for 2-8 MiB PUTs, AutoMQ about 400 ms p99 for 4 MiB); S3 Express
//! One Zone, PUT p50 about 8 ms and p99 about 25 ms (AWS: single-digit millisecond). The small-object PUT figures, the
//! throughputs and the SlowDown rates are this bench's assumptions, stated in [`Preset`]. Draws
//! come from one seeded generator per proxy (SplitMix64, Box-Muller normals): the seed is
//! printed with the run, so a run's delays replay in the order the requests arrived.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

pub const ACCESS_KEY: &str = "sidestream-bench";
pub const SECRET_KEY: &str = "sidestream-bench-secret";

/// Every request name counted (the proxy's and Sidestream's /metrics names agree).
pub const REQUEST_NAMES: &[&str] = &[
    "PutObject",
    "UploadPart",
    "CreateMultipartUpload",
    "CompleteMultipartUpload",
    "AbortMultipartUpload",
    "ListObjects",
    "ListObjectsV2",
    "GetObject",
    "HeadObject",
    "DeleteObject",
    "DeleteObjects",
];

/// Requests seen, by billing name.
#[derive(Clone, Debug, Default)]
pub struct Counts(pub BTreeMap<&'static str, u64>);

/// Not a request: the bytes of PutObject and UploadPart bodies, in [`Counts`].
pub const PUT_BYTES: &str = "PutBytes";

impl Counts {
    pub fn get(&self, k: &str) -> u64 {
        self.0.get(k).copied().unwrap_or(0)
    }
    /// PUT-class requests (billed at the PUT price).
    pub fn puts(&self) -> u64 {
        ["PutObject", "UploadPart", "CreateMultipartUpload", "CompleteMultipartUpload", "ListObjects", "ListObjectsV2"]
            .iter()
            .map(|k| self.get(k))
            .sum()
    }
    /// GET-class requests (billed at the GET price).
    pub fn gets(&self) -> u64 {
        ["GetObject", "HeadObject"].iter().map(|k| self.get(k)).sum()
    }
    pub fn minus(&self, before: &Counts) -> Counts {
        Counts(self.0.iter().map(|(k, v)| (*k, v - before.get(k))).collect())
    }
}

/// Not a request: 503 SlowDown answers the proxy gave instead of forwarding, in [`Counts`].
pub const SLOW_DOWN: &str = "SlowDown";

/// Not a request: the sum of the delays the proxy added, in microseconds, in [`Counts`].
pub const DELAY_US: &str = "StoreDelayUs";

/// How slow the proxy makes the store (`--store-latency`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum StoreLatency {
    /// s3s-fs on tmpfs as it is (no added delay).
    None,
    /// AWS S3 Standard.
    S3Standard,
    /// AWS S3 Express One Zone.
    S3Express,
}

/// One latency figure: the median and the 99th percentile, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Quantiles {
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// A preset's figures (see the module doc for the sources).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Preset {
    /// PUT of an empty body (assumed: the small-object figure the 8 MiB line starts from).
    pub put_small: Quantiles,
    /// PUT of 8 MiB (published).
    pub put_8mib: Quantiles,
    /// GET (and every other request) to the first byte (published for S3 Standard).
    pub first_byte: Quantiles,
    /// Per-connection GET throughput after the first byte (assumed).
    pub get_bytes_per_s: f64,
    /// PUT-class requests with a body answered 503 SlowDown, per million (assumed).
    pub slow_down_per_million: u64,
}

/// Where the PUT line's published end sits.
const PUT_REFERENCE_BYTES: f64 = 8.0 * 1048576.0;

/// No drawn delay exceeds this (a bound on how long a response is held).
pub const DELAY_MS_MAX: f64 = 30_000.0;

/// z of the 99th percentile of the standard normal distribution.
const Z_P99: f64 = 2.326;

impl StoreLatency {
    /// Every preset, in the order `compare` runs them by default.
    pub const ALL: [StoreLatency; 3] = [StoreLatency::None, StoreLatency::S3Standard, StoreLatency::S3Express];

    /// The name on the command line and in results.
    pub fn name(self) -> &'static str {
        match self {
            StoreLatency::None => "none",
            StoreLatency::S3Standard => "s3-standard",
            StoreLatency::S3Express => "s3-express",
        }
    }

    /// The preset's figures; `None` for the store as it is.
    pub fn preset(self) -> Option<Preset> {
        let q = |p50_ms, p99_ms| Quantiles { p50_ms, p99_ms };
        match self {
            StoreLatency::None => None,
            StoreLatency::S3Standard => Some(Preset {
                put_small: q(30.0, 150.0),
                put_8mib: q(100.0, 400.0),
                first_byte: q(30.0, 120.0),
                get_bytes_per_s: 90e6,
                // 0.1% of PUTs.
                slow_down_per_million: 1000,
            }),
            StoreLatency::S3Express => Some(Preset {
                put_small: q(4.0, 10.0),
                put_8mib: q(8.0, 25.0),
                first_byte: q(3.0, 10.0),
                get_bytes_per_s: 500e6,
                slow_down_per_million: 0,
            }),
        }
    }
}

/// The bench's random source: SplitMix64 (Steele, Lea, Flood 2014), seeded, no dependency.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        sidestream::clock::splitmix64_next(&mut self.0)
    }

    /// Uniform in (0, 1] (never 0, so its logarithm is finite).
    pub fn next_unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller, one of the pair).
    pub fn next_normal(&mut self) -> f64 {
        let (u1, u2) = (self.next_unit(), self.next_unit());
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Log-normal with the given median and 99th percentile, in the quantiles' unit.
    pub fn next_log_normal(&mut self, q: Quantiles) -> f64 {
        let mu = q.p50_ms.ln();
        let sigma = (q.p99_ms.ln() - mu).max(0.0) / Z_P99;
        (mu + sigma * self.next_normal()).exp()
    }
}

/// What the proxy does with one request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Decision {
    /// Forward it; hold the response's first byte until arrival + this many ms.
    Delay(f64),
    /// Answer 503 SlowDown at arrival + this many ms; do not forward.
    SlowDown(f64),
}

/// The latency model the proxy draws from: a preset and the seeded generator.
#[derive(Clone, Debug)]
pub struct Model {
    pub preset: StoreLatency,
    pub figures: Option<Preset>,
    rng: SplitMix64,
}

impl Model {
    pub fn new(preset: StoreLatency, seed: u64) -> Model {
        Model { preset, figures: preset.preset(), rng: SplitMix64::new(seed) }
    }

    /// Switches the preset; the generator goes on where it was.
    pub fn set_preset(&mut self, preset: StoreLatency) {
        self.preset = preset;
        self.figures = preset.preset();
    }

    /// The PUT figures for a body of `size_bytes` (the 0..8 MiB line, extrapolated above).
    pub fn put_quantiles(p: &Preset, size_bytes: u64) -> Quantiles {
        let f = size_bytes as f64 / PUT_REFERENCE_BYTES;
        let line = |small: f64, big: f64| small + (big - small) * f;
        Quantiles { p50_ms: line(p.put_small.p50_ms, p.put_8mib.p50_ms), p99_ms: line(p.put_small.p99_ms, p.put_8mib.p99_ms) }
    }

    /// The decision for a request of billing name `name` with a body of `body_bytes`.
    pub fn decide(&mut self, name: &str, body_bytes: u64) -> Decision {
        let Some(p) = self.figures else {
            return Decision::Delay(0.0);
        };
        let put = matches!(name, "PutObject" | "UploadPart");
        if put && p.slow_down_per_million > 0 && self.rng.next_u64() % 1_000_000 < p.slow_down_per_million {
            return Decision::SlowDown(self.rng.next_log_normal(p.first_byte).min(DELAY_MS_MAX));
        }
        let q = if put { Model::put_quantiles(&p, body_bytes) } else { p.first_byte };
        Decision::Delay(self.rng.next_log_normal(q).min(DELAY_MS_MAX))
    }

    /// The delay a GetObject response of `body_bytes` adds to its first-byte delay, in ms.
    pub fn transfer_ms(&self, name: &str, body_bytes: u64) -> f64 {
        match self.figures {
            Some(p) if name == "GetObject" => (body_bytes as f64 / p.get_bytes_per_s * 1000.0).min(DELAY_MS_MAX),
            _ => 0.0,
        }
    }
}

/// The proxy's answer instead of a throttled request (S3's own wording).
const SLOW_DOWN_BODY: &str =
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";

fn slow_down_reply(close: bool) -> Vec<u8> {
    format!(
        "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nx-amz-request-id: sidestream-bench\r\n{}\r\n{}",
        SLOW_DOWN_BODY.len(),
        if close { "Connection: close\r\n" } else { "" },
        SLOW_DOWN_BODY
    )
    .into_bytes()
}

/// s3s-fs plus the counting proxy; dropped: s3s-fs killed, its root removed.
pub struct S3 {
    child: Child,
    root: PathBuf,
    /// What brokers use as their endpoint (the proxy).
    pub endpoint: String,
    counts: Arc<Mutex<Counts>>,
    model: Arc<Mutex<Model>>,
}

impl S3 {
    /// s3s-fs and the proxy, which draws its delays from `preset` seeded with `seed`.
    pub fn start(bin: &str, rt: &tokio::runtime::Runtime, preset: StoreLatency, seed: u64) -> Result<S3> {
        let root = PathBuf::from(if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" })
            .join(format!("sidestream-bench-s3-{}", std::process::id()));
        std::fs::create_dir_all(&root)?;
        let port = crate::target::free_port()?;
        let log = std::fs::File::create(root.with_extension("log"))?;
        let child = Command::new(bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(&root)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {bin} (scripts/test installs s3s-fs; or pass --s3s-fs-bin)"))?;
        let upstream = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&upstream).is_err() {
            if Instant::now() > deadline {
                bail!("s3s-fs not listening on {upstream} within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let counts = Arc::new(Mutex::new(Counts::default()));
        let model = Arc::new(Mutex::new(Model::new(preset, seed)));
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0"))?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        rt.spawn(serve(listener, upstream, counts.clone(), model.clone()));
        Ok(S3 { child, root, endpoint, counts, model })
    }

    /// The preset later requests are delayed by (earlier responses keep their drawn delays).
    pub fn set_store_latency(&self, preset: StoreLatency) {
        if let Ok(mut m) = self.model.lock() {
            m.set_preset(preset);
        }
    }

    /// A new empty bucket (s3s-fs: a directory under its root).
    pub fn bucket(&self, name: &str) -> Result<String> {
        std::fs::create_dir_all(self.root.join(name))?;
        Ok(name.to_string())
    }

    pub fn remove_bucket(&self, name: &str) {
        let _ = std::fs::remove_dir_all(self.root.join(name));
    }

    pub fn counts(&self) -> Counts {
        self.counts.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.root);
        let _ = std::fs::remove_file(self.root.with_extension("log"));
    }
}

/// Accepts connections on `listener`, each proxied to `upstream` (one proxy task each).
async fn serve(listener: TcpListener, upstream: String, counts: Arc<Mutex<Counts>>, model: Arc<Mutex<Model>>) {
    while let Ok((client, _)) = listener.accept().await {
        let (up, c, m) = (upstream.clone(), counts.clone(), model.clone());
        tokio::spawn(async move {
            if let Ok(server) = TcpStream::connect(&up).await {
                let _ = proxy(client, server, c, m).await;
            }
        });
    }
}

/// What the request half tells the response half of one connection, in order.
enum Back {
    /// A request was forwarded: hold the next response bytes until `at` (plus, for a GetObject,
    /// its body's transfer time).
    Response { at: Instant, name: &'static str },
    /// Write `reply` to the client at `at` (a SlowDown); `close`: then end the connection.
    Reply { at: Instant, reply: Vec<u8> },
}

/// Requests forwarded ahead of their responses at most (HTTP/1.1 clients do not pipeline).
const BACK_QUEUE_MAX: usize = 64;

async fn proxy(client: TcpStream, server: TcpStream, counts: Arc<Mutex<Counts>>, model: Arc<Mutex<Model>>) -> std::io::Result<()> {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (crd, cwr) = client.into_split();
    let (srd, mut swr) = server.into_split();
    let (tx, rx) = tokio::sync::mpsc::channel(BACK_QUEUE_MAX);
    let back = tokio::spawn(backward(srd, cwr, rx, counts.clone(), model.clone()));
    let mut rd = BufReader::with_capacity(256 << 10, crd);
    let result = forward_requests(&mut rd, &mut swr, &counts, &model, &tx).await;
    drop(tx);
    let _ = swr.shutdown().await;
    let _ = back.await;
    result
}

/// Copies the server's bytes to the client, holding each response's first byte until its
/// request's time (see [`Back`]), and writes the proxy's own replies.
async fn backward(
    mut srd: tokio::net::tcp::OwnedReadHalf,
    mut cwr: tokio::net::tcp::OwnedWriteHalf,
    mut rx: tokio::sync::mpsc::Receiver<Back>,
    counts: Arc<Mutex<Counts>>,
    model: Arc<Mutex<Model>>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 << 10];
    // The latest hold of requests whose response has not started.
    let mut pending: Option<(Instant, &'static str)> = None;
    let mut requests_open = true;
    loop {
        tokio::select! {
            // A request's hold is queued before the request is forwarded, so it is always seen
            // before the first byte of its response.
            biased;
            msg = rx.recv(), if requests_open => match msg {
                Some(Back::Response { at, name }) => {
                    pending = Some(match pending {
                        Some((earlier, _)) if earlier > at => (earlier, name),
                        _ => (at, name),
                    });
                }
                Some(Back::Reply { at, reply }) => {
                    tokio::time::sleep_until(at.into()).await;
                    cwr.write_all(&reply).await?;
                }
                None => requests_open = false,
            },
            n = srd.read(&mut buf) => {
                let n = n?;
                if n == 0 {
                    break;
                }
                if let Some((mut at, name)) = pending.take() {
                    let transfer_ms = model.lock().map(|m| m.transfer_ms(name, response_length(&buf[..n]))).unwrap_or(0.0);
                    if transfer_ms > 0.0 {
                        at += Duration::from_secs_f64(transfer_ms / 1000.0);
                        if let Ok(mut c) = counts.lock() {
                            *c.0.entry(DELAY_US).or_insert(0) += (transfer_ms * 1000.0) as u64;
                        }
                    }
                    if at > Instant::now() {
                        tokio::time::sleep_until(at.into()).await;
                    }
                }
                cwr.write_all(&buf[..n]).await?;
            }
        }
    }
    // Replies queued after the server closed (a SlowDown that ended the connection).
    while let Ok(Back::Reply { at, reply }) = rx.try_recv() {
        tokio::time::sleep_until(at.into()).await;
        cwr.write_all(&reply).await?;
    }
    cwr.shutdown().await
}

/// The Content-Length of a response whose head starts `first` (0 when it is not there).
fn response_length(first: &[u8]) -> u64 {
    let head = &first[..first.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(first.len())];
    String::from_utf8_lossy(head)
        .split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Billing name of one request (path-style: /bucket/key?query).
fn classify(method: &str, target: &str) -> &'static str {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let has = |k: &str| query.split('&').any(|kv| kv == k || kv.starts_with(&format!("{k}=")));
    let object = path.trim_start_matches('/').contains('/');
    match method {
        "PUT" if has("uploadId") => "UploadPart",
        "PUT" => "PutObject",
        "POST" if has("uploads") => "CreateMultipartUpload",
        "POST" if has("uploadId") => "CompleteMultipartUpload",
        "POST" if has("delete") => "DeleteObjects",
        "GET" if !object || has("list-type") => "ListObjects",
        "GET" => "GetObject",
        "HEAD" => "HeadObject",
        "DELETE" => "DeleteObject",
        _ => "Other",
    }
}

async fn forward_requests(
    rd: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    wr: &mut tokio::net::tcp::OwnedWriteHalf,
    counts: &Mutex<Counts>,
    model: &Mutex<Model>,
    back: &tokio::sync::mpsc::Sender<Back>,
) -> std::io::Result<()> {
    let closed = || std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the response half ended");
    let mut head = Vec::with_capacity(4096);
    loop {
        head.clear();
        loop {
            let n = rd.read_until(b'\n', &mut head).await?;
            if n == 0 {
                return Ok(());
            }
            if head.ends_with(b"\r\n\r\n") || head == b"\r\n" {
                break;
            }
        }
        let arrival = Instant::now();
        let text = String::from_utf8_lossy(&head).into_owned();
        let mut lines = text.split("\r\n");
        let mut first = lines.next().unwrap_or("").split(' ');
        let (method, target) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
        let mut length = 0u64;
        let mut chunked = false;
        let mut expect_continue = false;
        for l in lines {
            if let Some((k, v)) = l.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                if k == "content-length" {
                    length = v.parse().unwrap_or(0);
                } else if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
                    chunked = true;
                } else if k == "expect" && v.eq_ignore_ascii_case("100-continue") {
                    expect_continue = true;
                }
            }
        }
        let mut decision = Decision::Delay(0.0);
        if !method.is_empty() {
            let name = classify(method, target);
            decision = model.lock().map(|mut m| m.decide(name, length)).unwrap_or(Decision::Delay(0.0));
            if let Ok(mut c) = counts.lock() {
                *c.0.entry(name).or_insert(0) += 1;
                // What the bucket is made to store (chunked bodies are not counted).
                if matches!(name, "PutObject" | "UploadPart") {
                    *c.0.entry(PUT_BYTES).or_insert(0) += length;
                }
                let (Decision::Delay(ms) | Decision::SlowDown(ms)) = decision;
                *c.0.entry(DELAY_US).or_insert(0) += (ms * 1000.0) as u64;
                if matches!(decision, Decision::SlowDown(_)) {
                    *c.0.entry(SLOW_DOWN).or_insert(0) += 1;
                }
            }
            if let Decision::Delay(ms) = decision {
                let at = arrival + Duration::from_secs_f64(ms / 1000.0);
                // Queued before the request goes out, so its response cannot overtake it.
                back.send(Back::Response { at, name }).await.map_err(|_| closed())?;
            }
        }
        if let Decision::SlowDown(ms) = decision {
            let at = arrival + Duration::from_secs_f64(ms / 1000.0);
            if expect_continue {
                // The client waits for 100 Continue before its body: answer, then end the
                // connection (the body never comes).
                back.send(Back::Reply { at, reply: slow_down_reply(true) }).await.map_err(|_| closed())?;
                return Ok(());
            }
            if !copy_body(rd, &mut tokio::io::sink(), chunked, length).await? {
                return Ok(());
            }
            back.send(Back::Reply { at, reply: slow_down_reply(false) }).await.map_err(|_| closed())?;
            continue;
        }
        wr.write_all(&head).await?;
        if !copy_body(rd, wr, chunked, length).await? {
            return Ok(());
        }
    }
}

/// Copies one request body (chunked, or `length` bytes) from `rd` to `wr`; false when the
/// client closed before its end.
async fn copy_body<W: tokio::io::AsyncWrite + Unpin>(
    rd: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    wr: &mut W,
    chunked: bool,
    length: u64,
) -> std::io::Result<bool> {
    if chunked {
        let mut line = Vec::new();
        loop {
            line.clear();
            rd.read_until(b'\n', &mut line).await?;
            wr.write_all(&line).await?;
            let size = u64::from_str_radix(String::from_utf8_lossy(&line).trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
            if size == 0 {
                // Trailers, then the empty line.
                loop {
                    line.clear();
                    if rd.read_until(b'\n', &mut line).await? == 0 {
                        return Ok(false);
                    }
                    wr.write_all(&line).await?;
                    if line == b"\r\n" {
                        return Ok(true);
                    }
                }
            }
            tokio::io::copy(&mut (&mut *rd).take(size + 2), wr).await?;
        }
    } else if length > 0 {
        let copied = tokio::io::copy(&mut (&mut *rd).take(length), wr).await?;
        return Ok(copied == length);
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_sorted_by_what_is_billed() {
        assert_eq!(classify("PUT", "/b/k/x.sso"), "PutObject");
        assert_eq!(classify("PUT", "/b/k?partNumber=2&uploadId=abc"), "UploadPart");
        assert_eq!(classify("POST", "/b/k?uploads"), "CreateMultipartUpload");
        assert_eq!(classify("POST", "/b/k?uploadId=abc"), "CompleteMultipartUpload");
        assert_eq!(classify("GET", "/b?list-type=2&prefix=x"), "ListObjects");
        assert_eq!(classify("GET", "/b/k/x.sso"), "GetObject");
        assert_eq!(classify("HEAD", "/b/k"), "HeadObject");
        assert_eq!(classify("DELETE", "/b/k"), "DeleteObject");
        let c = Counts([("PutObject", 3), ("UploadPart", 2), ("GetObject", 5), ("DeleteObject", 7)].into_iter().collect());
        assert_eq!((c.puts(), c.gets()), (5, 5));
    }

    /// The q-quantile of drawn values (sorted in place).
    fn quantile(v: &mut [f64], q: f64) -> f64 {
        v.sort_by(f64::total_cmp);
        v[((v.len() as f64 * q) as usize).min(v.len() - 1)]
    }

    fn within_10_percent(measured: f64, want: f64) -> bool {
        (measured - want).abs() <= 0.1 * want
    }

    #[test]
    fn presets_are_named_on_the_command_line_as_in_results() {
        use clap::ValueEnum as _;
        for p in StoreLatency::ALL {
            assert_eq!(StoreLatency::from_str(p.name(), false), Ok(p));
        }
        assert_eq!(StoreLatency::None.preset(), None);
    }

    #[test]
    fn draws_match_each_presets_p50_and_p99() {
        let seed = 0x5eed_0001;
        eprintln!("seed {seed}");
        let mut rng = SplitMix64::new(seed);
        for preset in [StoreLatency::S3Standard, StoreLatency::S3Express] {
            let p = preset.preset().unwrap();
            for q in [p.put_small, p.put_8mib, p.first_byte] {
                let mut v: Vec<f64> = (0..200_000).map(|_| rng.next_log_normal(q)).collect();
                let (p50, p99) = (quantile(&mut v, 0.5), quantile(&mut v, 0.99));
                assert!(within_10_percent(p50, q.p50_ms) && within_10_percent(p99, q.p99_ms), "{preset:?} {q:?}: drew p50 {p50} p99 {p99}");
            }
            // The model's own draws for an 8 MiB PUT and a GET's first byte.
            let mut m = Model::new(preset, seed);
            let mut draw = |name: &str, size_bytes: u64| -> Vec<f64> {
                (0..200_000)
                    .filter_map(|_| match m.decide(name, size_bytes) {
                        Decision::Delay(ms) => Some(ms),
                        Decision::SlowDown(_) => None,
                    })
                    .collect()
            };
            for (name, size_bytes, q) in
                [("PutObject", 8 << 20, p.put_8mib), ("GetObject", 0, p.first_byte), ("HeadObject", 0, p.first_byte)]
            {
                let mut v = draw(name, size_bytes);
                let (p50, p99) = (quantile(&mut v, 0.5), quantile(&mut v, 0.99));
                assert!(
                    within_10_percent(p50, q.p50_ms) && within_10_percent(p99, q.p99_ms),
                    "{preset:?} {name}: drew p50 {p50} p99 {p99}"
                );
            }
        }
    }

    #[test]
    fn put_latency_grows_with_the_body() {
        let seed = 0x5eed_0002;
        eprintln!("seed {seed}");
        for preset in [StoreLatency::S3Standard, StoreLatency::S3Express] {
            let p = preset.preset().unwrap();
            assert_eq!(Model::put_quantiles(&p, 0), p.put_small);
            assert_eq!(Model::put_quantiles(&p, 8 << 20), p.put_8mib);
            let sizes_bytes = [0u64, 4096, 1 << 20, 4 << 20, 8 << 20, 16 << 20, 64 << 20];
            let mut last = Quantiles { p50_ms: 0.0, p99_ms: 0.0 };
            for &size_bytes in &sizes_bytes {
                let q = Model::put_quantiles(&p, size_bytes);
                assert!(q.p50_ms > last.p50_ms && q.p99_ms > last.p99_ms && q.p99_ms > q.p50_ms, "{preset:?} {size_bytes}: {q:?}");
                last = q;
            }
            // The same draw (same seed) is longer for a larger body (a throttled draw is
            // throttled at every size: skipped).
            for i in 0..100 {
                let delays: Vec<f64> = sizes_bytes
                    .iter()
                    .filter_map(|&size_bytes| match Model::new(preset, seed + i).decide("UploadPart", size_bytes) {
                        Decision::Delay(ms) => Some(ms),
                        Decision::SlowDown(_) => None,
                    })
                    .collect();
                assert!(delays.is_empty() || delays.len() == sizes_bytes.len(), "{preset:?}: {delays:?}");
                assert!(delays.windows(2).all(|w| w[0] < w[1]), "{preset:?} seed {}: {delays:?}", seed + i);
            }
            // GETs pay for their body after the first byte; other requests do not.
            let m = Model::new(preset, seed);
            assert!(m.transfer_ms("GetObject", 8 << 20) > m.transfer_ms("GetObject", 1 << 20));
            assert_eq!(m.transfer_ms("HeadObject", 8 << 20), 0.0);
        }
    }

    #[test]
    fn slow_down_answers_a_presets_share_of_puts() {
        let seed = 0x5eed_0003;
        eprintln!("seed {seed}");
        let count = |preset: StoreLatency, name: &str| {
            let mut m = Model::new(preset, seed);
            (0..1_000_000).filter(|_| matches!(m.decide(name, 1 << 20), Decision::SlowDown(_))).count()
        };
        let standard = count(StoreLatency::S3Standard, "PutObject");
        assert!((800..=1200).contains(&standard), "{standard} SlowDowns of 1e6 PUTs, want about 1000");
        assert_eq!(count(StoreLatency::S3Standard, "GetObject"), 0);
        assert_eq!(count(StoreLatency::S3Express, "PutObject"), 0);
        assert_eq!(count(StoreLatency::None, "PutObject"), 0);
    }

    #[test]
    fn none_adds_no_delay() {
        let mut m = Model::new(StoreLatency::None, 1);
        for name in REQUEST_NAMES {
            assert_eq!(m.decide(name, 8 << 20), Decision::Delay(0.0));
            assert_eq!(m.transfer_ms(name, 8 << 20), 0.0);
        }
        m.set_preset(StoreLatency::S3Express);
        assert!(matches!(m.decide("PutObject", 0), Decision::Delay(ms) if ms > 0.0));
    }

    /// An upstream that answers every request `200` with a 2-byte body, counting requests.
    async fn upstream(served: Arc<std::sync::atomic::AtomicU64>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let served = served.clone();
                tokio::spawn(async move {
                    let (rd, mut wr) = conn.into_split();
                    let mut rd = BufReader::new(rd);
                    loop {
                        let mut length = 0u64;
                        loop {
                            let mut line = String::new();
                            if rd.read_line(&mut line).await.unwrap_or(0) == 0 {
                                return;
                            }
                            if let Some((k, v)) = line.split_once(':')
                                && k.eq_ignore_ascii_case("content-length")
                            {
                                length = v.trim().parse().unwrap();
                            }
                            if line == "\r\n" {
                                break;
                            }
                        }
                        tokio::io::copy(&mut (&mut rd).take(length), &mut tokio::io::sink()).await.unwrap();
                        served.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        wr.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await.unwrap();
                    }
                });
            }
        });
        addr
    }

    /// Sends one request with a `body_bytes` body; the response as text (2-byte or S3 error body).
    async fn request(conn: &mut TcpStream, method: &str, path: &str, body_bytes: usize) -> String {
        let head = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {body_bytes}\r\n\r\n");
        conn.write_all(head.as_bytes()).await.unwrap();
        conn.write_all(&vec![7u8; body_bytes]).await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed after {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).into_owned();
            if let Some(at) = text.find("\r\n\r\n")
                && got.len() - at - 4 >= response_length(&got) as usize
            {
                return text;
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_proxy_holds_responses_for_the_drawn_delay_and_answers_slow_down() {
        let seed = 0x5eed_0004;
        eprintln!("seed {seed}");
        let served = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let up = upstream(served.clone()).await;
        let counts = Arc::new(Mutex::new(Counts::default()));
        let model = Arc::new(Mutex::new(Model::new(StoreLatency::S3Express, seed)));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy_addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, up, counts.clone(), model.clone()));
        let delay_us = || counts.lock().unwrap().get(DELAY_US);

        let mut conn = TcpStream::connect(proxy_addr).await.unwrap();
        for (method, path, body_bytes) in [("PUT", "/b/k", 1 << 20), ("GET", "/b/k", 0), ("HEAD", "/b/k", 0)] {
            let before_us = delay_us();
            let t0 = Instant::now();
            let reply = request(&mut conn, method, path, body_bytes).await;
            let elapsed_us = t0.elapsed().as_micros() as u64;
            let drawn_us = delay_us() - before_us;
            assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
            assert!(drawn_us > 0, "{method}: drew no delay");
            assert!(elapsed_us >= drawn_us, "{method}: answered after {elapsed_us} us, drew {drawn_us} us");
        }
        assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 3);

        // Every PUT throttled: answered by the proxy, never forwarded; the connection goes on.
        model.lock().unwrap().figures.as_mut().unwrap().slow_down_per_million = 1_000_000;
        let reply = request(&mut conn, "PUT", "/b/k2", 100_000).await;
        assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
        assert!(reply.contains("<Code>SlowDown</Code><Message>Please reduce your request rate.</Message>"), "{reply}");
        assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 3);
        assert!(request(&mut conn, "GET", "/b/k", 0).await.starts_with("HTTP/1.1 200"));
        assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 4);
        let c = counts.lock().unwrap().clone();
        assert_eq!((c.get(SLOW_DOWN), c.get("PutObject"), c.get("GetObject")), (1, 2, 2));

        // A client waiting for 100 Continue is answered before its body, and the connection ends.
        let mut waiting = TcpStream::connect(proxy_addr).await.unwrap();
        waiting
            .write_all(b"PUT /b/k4 HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n")
            .await
            .unwrap();
        let mut reply = Vec::new();
        waiting.read_to_end(&mut reply).await.unwrap();
        let reply = String::from_utf8_lossy(&reply);
        assert!(
            reply.starts_with("HTTP/1.1 503") && reply.contains("Connection: close") && reply.contains("<Code>SlowDown</Code>"),
            "{reply}"
        );
        assert_eq!((served.load(std::sync::atomic::Ordering::SeqCst), counts.lock().unwrap().get(SLOW_DOWN)), (4, 2));

        // `none`: no delay drawn.
        model.lock().unwrap().set_preset(StoreLatency::None);
        let before_us = delay_us();
        assert!(request(&mut conn, "PUT", "/b/k3", 1000).await.starts_with("HTTP/1.1 200"));
        assert_eq!(delay_us(), before_us);
    }

    #[test]
    fn a_responses_length_is_read_from_its_head() {
        assert_eq!(response_length(b"HTTP/1.1 200 OK\r\ncontent-length: 123\r\nETag: x\r\n\r\nbody"), 123);
        assert_eq!(response_length(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nContent-Length: 5\r\n"), 9);
        assert_eq!(response_length(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"), 0);
        assert_eq!(response_length(b"HTTP/1.1 200 OK\r\nContent-Len"), 0);
    }
}
