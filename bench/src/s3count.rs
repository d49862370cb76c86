//! The S3 server every object-store target shares in a run, with a request counter in front.
//!
//! `s3s-fs` (the S3-compatible server the tests use) keeps objects as files under a root on
//! tmpfs, so object writes stay off the disk the brokers' logs use, as S3 would. Between the
//! brokers and it sits a loopback proxy that parses the client-to-server half of each HTTP/1.1
//! connection (request line, headers, then a Content-Length or chunked body) and counts requests
//! by what a provider bills: PUT class (PutObject, UploadPart, multipart create/complete, List)
//! and GET class (GetObject, HeadObject). Responses are copied through untouched. The same
//! counter measures Sidestream and Tansu, so their requests per GB compare like for like.

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

/// s3s-fs plus the counting proxy; dropped: s3s-fs killed, its root removed.
pub struct S3 {
    child: Child,
    root: PathBuf,
    /// What brokers use as their endpoint (the proxy).
    pub endpoint: String,
    counts: Arc<Mutex<Counts>>,
}

impl S3 {
    pub fn start(bin: &str, rt: &tokio::runtime::Runtime) -> Result<S3> {
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
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0"))?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let c = counts.clone();
        rt.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (up, c) = (upstream.clone(), c.clone());
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(&up).await {
                        let _ = proxy(client, server, c).await;
                    }
                });
            }
        });
        Ok(S3 { child, root, endpoint, counts })
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

async fn proxy(client: TcpStream, server: TcpStream, counts: Arc<Mutex<Counts>>) -> std::io::Result<()> {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (crd, mut cwr) = client.into_split();
    let (mut srd, mut swr) = server.into_split();
    let back = tokio::spawn(async move { tokio::io::copy(&mut srd, &mut cwr).await });
    let mut rd = BufReader::with_capacity(256 << 10, crd);
    let result = forward_requests(&mut rd, &mut swr, &counts).await;
    let _ = swr.shutdown().await;
    let _ = back.await;
    result
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
) -> std::io::Result<()> {
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
        let text = String::from_utf8_lossy(&head).into_owned();
        let mut lines = text.split("\r\n");
        let mut first = lines.next().unwrap_or("").split(' ');
        let (method, target) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
        let mut length = 0u64;
        let mut chunked = false;
        for l in lines {
            if let Some((k, v)) = l.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                if k == "content-length" {
                    length = v.parse().unwrap_or(0);
                } else if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
                    chunked = true;
                }
            }
        }
        if !method.is_empty() {
            let name = classify(method, target);
            if let Ok(mut c) = counts.lock() {
                *c.0.entry(name).or_insert(0) += 1;
                // What the bucket is made to store (chunked bodies are not counted).
                if matches!(name, "PutObject" | "UploadPart") {
                    *c.0.entry(PUT_BYTES).or_insert(0) += length;
                }
            }
        }
        wr.write_all(&head).await?;
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
                            return Ok(());
                        }
                        wr.write_all(&line).await?;
                        if line == b"\r\n" {
                            break;
                        }
                    }
                    break;
                }
                tokio::io::copy(&mut (&mut *rd).take(size + 2), wr).await?;
            }
        } else if length > 0 {
            let copied = tokio::io::copy(&mut (&mut *rd).take(length), wr).await?;
            if copied < length {
                return Ok(());
            }
        }
    }
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
}
