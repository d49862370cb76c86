//! The S3 backend against a real S3-compatible server: s3s-fs (HTTP, SigV4) on a free loopback
//! port with a temporary root, killed when the test ends.
//!
//! Covers what the Kafka-level tests do not reach with 8 MiB objects: multipart uploads, large
//! reads split into parallel ranged GETs, conditional puts, paged listings under a root path,
//! not-found and range answers, and bad credentials as a permanent error. Needs `s3s-fs`
//! (`S3S_FS_BIN`, else PATH, else ~/.cargo/bin; scripts/test installs it): without it the test
//! is skipped, except under CI where it fails.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sidestream::config::Secret;
use sidestream::object::metrics::StoreMetrics;
use sidestream::object::s3::{PART_BYTES_MIN, S3Settings, S3Store};
use sidestream::object::{ObjectError, ObjectStore};

struct S3sFs {
    child: Child,
    port: u16,
    _root: tempfile::TempDir,
}

impl Drop for S3sFs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn binary() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("S3S_FS_BIN") {
        return Some(PathBuf::from(p));
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| std::env::split_paths(&paths).map(|d| d.join("s3s-fs")).find(|p| p.exists()));
    on_path.or_else(|| {
        let p = PathBuf::from(std::env::var_os("HOME")?).join(".cargo/bin/s3s-fs");
        p.exists().then_some(p)
    })
}

fn start() -> Option<S3sFs> {
    let Some(bin) = binary() else {
        assert!(std::env::var_os("CI").is_none(), "s3s-fs is not installed (scripts/test installs it)");
        eprintln!("skipped: s3s-fs is not installed");
        return None;
    };
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("bucket")).unwrap();
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(bin)
        .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--access-key", "k", "--secret-key", "s"])
        .arg(root.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = S3sFs { child, port, _root: root };
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "s3s-fs did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(server)
}

/// Bodies unsigned (`UNSIGNED-PAYLOAD`, the default); headers always signed.
fn settings(port: u16, secret: &str) -> S3Settings {
    S3Settings {
        bucket: "bucket".into(),
        root: "root/path".into(),
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        region: Some("us-east-1".into()),
        path_style: true,
        access_key_id: Some("k".into()),
        secret_access_key: Some(Secret(secret.into())),
        part_bytes: PART_BYTES_MIN,
        sign_payload: false,
        max_concurrent_requests: 8,
        request_timeout: Duration::from_secs(10),
    }
}

/// Bytes that differ at every offset, so a misplaced part or range shows.
fn pattern(len: usize) -> Bytes {
    (0..len).map(|i| (i.wrapping_mul(31) ^ (i >> 13)) as u8).collect::<Vec<u8>>().into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_backend_against_a_real_server() {
    let Some(server) = start() else { return };
    let metrics = Arc::new(StoreMetrics::new());
    let s3 = S3Store::connect(settings(server.port, "s"), metrics.clone()).await.unwrap();

    // Small object: one PutObject.
    s3.put("00/a/small.sso", Bytes::from_static(b"hello world")).await.unwrap();
    assert_eq!(s3.get("00/a/small.sso").await.unwrap(), "hello world");
    assert_eq!(s3.get_range("00/a/small.sso", 6..11).await.unwrap(), "world");
    assert_eq!(s3.head("00/a/small.sso").await.unwrap(), Some(11));
    assert!(matches!(s3.get_range("00/a/small.sso", 6..12).await, Err(ObjectError::NotFound(_))));
    assert!(matches!(s3.get_range("00/a/small.sso", 20..30).await, Err(ObjectError::NotFound(_))));
    assert!(matches!(s3.get("00/a/missing.sso").await, Err(ObjectError::NotFound(_))));
    assert_eq!(s3.head("00/a/missing.sso").await.unwrap(), None);

    // Large object: a multipart upload of 3 parts, read back whole and by parallel ranges.
    let big = pattern(2 * PART_BYTES_MIN as usize + 12345);
    s3.put("01/a/big.sso", big.clone()).await.unwrap();
    assert_eq!(s3.head("01/a/big.sso").await.unwrap(), Some(big.len() as u64));
    assert_eq!(s3.get("01/a/big.sso").await.unwrap(), big);
    let range = 1000..(big.len() as u64 - 7);
    let read = s3.get_range("01/a/big.sso", range.clone()).await.unwrap();
    assert!(read == big.slice(range.start as usize..range.end as usize), "ranged read differs");
    let requests = metrics.snapshot().requests;
    assert_eq!(requests.get("CreateMultipartUpload"), Some(&1));
    assert_eq!(requests.get("UploadPart"), Some(&3));
    assert_eq!(requests.get("CompleteMultipartUpload"), Some(&1));
    assert_eq!(requests.get("PutObject"), Some(&1));
    // The big ranged read was 3 GETs (plus the small reads above and the whole-object GET).
    assert!(requests.get("GetObject").copied().unwrap_or(0) > 3 + 1);

    // Conditional put: s3s-fs honours If-None-Match for one writer at a time.
    assert!(!s3.put_if_absent("00/a/small.sso", Bytes::from_static(b"other")).await.unwrap());
    assert_eq!(s3.get("00/a/small.sso").await.unwrap(), "hello world");
    assert!(s3.put_if_absent("02/a/new.sso", Bytes::from_static(b"new")).await.unwrap());

    // Listings are relative to the root path, sorted, paged.
    let all = s3.list("").await.unwrap();
    let keys: Vec<&str> = all.iter().map(|m| m.key.as_str()).collect();
    assert_eq!(keys, ["00/a/small.sso", "01/a/big.sso", "02/a/new.sso"]);
    let page = s3.list_page("", Some("00/a/small.sso"), 1).await.unwrap();
    assert_eq!(page.iter().map(|m| m.key.as_str()).collect::<Vec<_>>(), ["01/a/big.sso"]);
    assert_eq!(s3.list("01/").await.unwrap()[0].size_bytes, big.len() as u64);

    s3.delete("01/a/big.sso").await.unwrap();
    s3.delete("01/a/big.sso").await.unwrap();
    assert_eq!(s3.head("01/a/big.sso").await.unwrap(), None);

    // Wrong credentials: a 403, which retrying cannot fix.
    let bad = S3Store::connect(settings(server.port, "wrong"), Arc::new(StoreMetrics::new())).await.unwrap();
    let e = bad.get("00/a/small.sso").await.unwrap_err();
    assert!(matches!(e, ObjectError::Permanent(_)), "{e}");
    let e = bad.put("03/a/refused.sso", Bytes::from_static(b"x")).await.unwrap_err();
    assert!(matches!(e, ObjectError::Permanent(_)), "an unsigned body still needs signed headers: {e}");

    // Signed bodies (`sign_payload = true`): the server checks each body's SHA-256.
    let signed = S3Settings { sign_payload: true, ..settings(server.port, "s") };
    let signed = S3Store::connect(signed, Arc::new(StoreMetrics::new())).await.unwrap();
    signed.put("04/a/signed.sso", Bytes::from_static(b"signed")).await.unwrap();
    signed.put("04/a/signed-big.sso", big.clone()).await.unwrap();
    assert_eq!(s3.get("04/a/signed.sso").await.unwrap(), "signed");
    assert_eq!(s3.get("04/a/signed-big.sso").await.unwrap(), big);

    // The server gone: a transient error (connection refused), worth retrying.
    drop(server);
    let e = s3.get("00/a/small.sso").await.unwrap_err();
    assert!(e.is_retriable(), "{e}");
}
