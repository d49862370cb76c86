//! The S3 backend (`s3://bucket/root`): AWS S3 and the services that speak its API (MinIO,
//! Cloudflare R2, Alibaba OSS, GCS interop, s3s-fs, moto...), on `aws-sdk-s3`.
//!
//! - Keys given to the store are relative; the backend prefixes them with the URL's root path
//!   (`keys::rooted`), so a store can move to another bucket or root without touching what
//!   the controller recorded.
//! - Objects larger than `part_bytes` are uploaded as multipart uploads (parts sent in
//!   parallel); ranged reads longer than `part_bytes` are split into parallel ranged GETs.
//! - At most `max_concurrent_requests` HTTP requests are in flight at once.
//! - The SDK's own retries are off: retries belong to [`super::retry::RetryingStore`], so that
//!   every attempt is counted by the metrics wrapper and bounded by one deadline. Each attempt
//!   has a timeout (`request_timeout`), so a hung connection becomes a transient error.
//! - Errors are sorted for the retry wrapper: throttling (503 SlowDown, 429), 5xx, timeouts
//!   and connection failures are transient; 404 is not-found; any other 4xx is permanent.
//! - HTTP requests are counted by name in [`StoreMetrics`] (a multipart upload is several).
//!
//! TLS is rustls with the ring provider (no C toolchain beyond ring's); `http://` endpoints
//! work too (loopback test servers). Credentials: the static keys from the config if set, else
//! the standard AWS chain (environment, profile files, web identity/IRSA, ECS, instance).

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation, retry::RetryConfig,
    timeout::TimeoutConfig,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::{Bytes, BytesMut};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::keys;
use super::metrics::StoreMetrics;
use super::store::{ObjectError, ObjectMeta, ObjectStore, check_key};
use crate::config::Secret;

/// S3 allows at most 10,000 parts per upload, each at least 5 MiB but the last.
const PARTS_MAX: u64 = 10_000;
pub const PART_BYTES_MIN: u64 = 5 << 20;
/// A whole-object GET refuses objects larger than this (our objects are far smaller).
const GET_BYTES_MAX: u64 = 5 << 30;
/// A listing stops with an error past this many keys (use `list_page` to walk more).
const LIST_KEYS_MAX: usize = 10_000_000;
/// Keys per ListObjectsV2 page (the S3 maximum).
const LIST_PAGE_KEYS: usize = 1000;

/// Connection settings, from `[object_store]`.
#[derive(Debug, Clone)]
pub struct S3Settings {
    pub bucket: String,
    /// The URL's path: every key lives under it.
    pub root: String,
    /// e.g. `http://127.0.0.1:9000`; None: the AWS endpoint of the region.
    pub endpoint: Option<String>,
    /// None: the AWS region chain (`AWS_REGION`, profile), then `us-east-1`.
    pub region: Option<String>,
    /// `https://endpoint/bucket/key` instead of `https://bucket.endpoint/key`.
    pub path_style: bool,
    /// Both set: static credentials; both unset: the standard AWS credential chain.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<Secret>,
    /// Multipart part size; objects larger than this are uploaded in parts.
    pub part_bytes: u64,
    /// SigV4-sign request bodies (a SHA-256 of every body); false: `UNSIGNED-PAYLOAD`.
    pub sign_payload: bool,
    pub max_concurrent_requests: usize,
    /// Timeout of one HTTP attempt (connect + request + response).
    pub request_timeout: Duration,
}

/// An S3 bucket (under a root path) as an [`ObjectStore`].
pub struct S3Store {
    client: Client,
    bucket: String,
    root: String,
    part_bytes: u64,
    sign_payload: bool,
    requests: Arc<Semaphore>,
    metrics: Arc<StoreMetrics>,
}

impl S3Store {
    /// Builds the client. Sends no request: a wrong endpoint or credential shows at first use.
    pub async fn connect(settings: S3Settings, metrics: Arc<StoreMetrics>) -> Result<Self, ObjectError> {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring))
            .build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(http);
        if let Some(region) = &settings.region {
            loader = loader.region(Region::new(region.clone()));
        }
        match (&settings.access_key_id, &settings.secret_access_key) {
            (Some(id), Some(secret)) => {
                loader = loader.credentials_provider(Credentials::new(id, &secret.0, None, None, "sidestream-config"));
            }
            (None, None) => {}
            _ => {
                return Err(ObjectError::Permanent("set both access_key_id and secret_access_key, or neither".into()));
            }
        }
        let shared = loader.load().await;
        let mut config = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(settings.path_style)
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(settings.request_timeout.min(Duration::from_secs(10)))
                    .operation_attempt_timeout(settings.request_timeout)
                    .build(),
            )
            // Our objects carry their own CRC32C; the SDK's default request checksums use
            // streaming trailers that several S3-compatible services reject.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if shared.region().is_none() {
            config = config.region(Region::new("us-east-1"));
        }
        if let Some(endpoint) = &settings.endpoint {
            config = config.endpoint_url(endpoint);
        }
        tracing::info!(?settings, "object store: S3");
        Ok(Self {
            client: Client::from_conf(config.build()),
            bucket: settings.bucket,
            root: settings.root,
            part_bytes: settings.part_bytes.max(PART_BYTES_MIN),
            sign_payload: settings.sign_payload,
            requests: Arc::new(Semaphore::new(settings.max_concurrent_requests.max(1))),
            metrics,
        })
    }

    fn full_key(&self, key: &str) -> Result<String, ObjectError> {
        check_key(key)?;
        Ok(keys::rooted(&self.root, key))
    }

    /// Waits for a request slot and counts the request.
    async fn slot(&self, name: &'static str) -> Result<OwnedSemaphorePermit, ObjectError> {
        let permit = self.requests.clone().acquire_owned().await.map_err(|_| ObjectError::Transient("object store is closing".into()))?;
        self.metrics.record_request(name);
        Ok(permit)
    }

    async fn put_object(&self, full: &str, body: Bytes, only_if_absent: bool) -> Result<bool, ObjectError> {
        let _slot = self.slot("PutObject").await?;
        let mut req = self.client.put_object().bucket(&self.bucket).key(full).body(ByteStream::from(body));
        if only_if_absent {
            req = req.if_none_match("*");
        }
        let sent = if self.sign_payload { req.send().await } else { req.customize().disable_payload_signing().send().await };
        match sent {
            Ok(_) => Ok(true),
            Err(e) if only_if_absent && is_precondition_failed(&e) => Ok(false),
            Err(e) => Err(classify("PutObject", full, e)),
        }
    }

    async fn put_multipart(&self, full: &str, body: Bytes, only_if_absent: bool) -> Result<bool, ObjectError> {
        let upload_id = {
            let _slot = self.slot("CreateMultipartUpload").await?;
            let created = self
                .client
                .create_multipart_upload()
                .bucket(&self.bucket)
                .key(full)
                .send()
                .await
                .map_err(|e| classify("CreateMultipartUpload", full, e))?;
            created
                .upload_id()
                .ok_or_else(|| ObjectError::Transient(format!("CreateMultipartUpload {full}: no upload id")))?
                .to_string()
        };
        let result = self.upload_parts_and_complete(full, &upload_id, body, only_if_absent).await;
        if result.is_err() {
            // Best effort: a failed upload's parts are billed until aborted (or a bucket
            // lifecycle rule removes them).
            if let Ok(_slot) = self.slot("AbortMultipartUpload").await {
                let abort = self.client.abort_multipart_upload().bucket(&self.bucket).key(full).upload_id(&upload_id).send();
                if let Err(e) = abort.await {
                    tracing::warn!(key = full, error = %DisplayErrorContext(&e), "abort of a failed multipart upload failed");
                }
            }
        }
        result
    }

    async fn upload_parts_and_complete(&self, full: &str, upload_id: &str, body: Bytes, only_if_absent: bool) -> Result<bool, ObjectError> {
        let len = body.len() as u64;
        let part_bytes = self.part_bytes.max(len.div_ceil(PARTS_MAX));
        let mut tasks = JoinSet::new();
        for (i, start) in (0..len).step_by(part_bytes as usize).enumerate() {
            let part_number = i as i32 + 1;
            let chunk = body.slice(start as usize..(start + part_bytes).min(len) as usize);
            let slot = self.slot("UploadPart").await?;
            let req = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(full)
                .upload_id(upload_id)
                .part_number(part_number)
                .body(ByteStream::from(chunk));
            let full = full.to_string();
            let sign_payload = self.sign_payload;
            tasks.spawn(async move {
                let _slot = slot;
                let sent = if sign_payload { req.send().await } else { req.customize().disable_payload_signing().send().await };
                let out = sent.map_err(|e| classify("UploadPart", &full, e))?;
                let etag = out.e_tag().ok_or_else(|| ObjectError::Transient(format!("UploadPart {full}: no ETag")))?.to_string();
                Ok::<_, ObjectError>(CompletedPart::builder().part_number(part_number).e_tag(etag).build())
            });
        }
        let mut parts = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            let part = joined.map_err(|e| ObjectError::Transient(format!("UploadPart task failed: {e}")))??;
            parts.push(part);
        }
        parts.sort_by_key(|p| p.part_number());
        let _slot = self.slot("CompleteMultipartUpload").await?;
        let mut req = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(full)
            .upload_id(upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build());
        if only_if_absent {
            req = req.if_none_match("*");
        }
        match req.send().await {
            Ok(_) => Ok(true),
            Err(e) if only_if_absent && is_precondition_failed(&e) => Ok(false),
            Err(e) => Err(classify("CompleteMultipartUpload", full, e)),
        }
    }

    async fn put_any(&self, key: &str, body: Bytes, only_if_absent: bool) -> Result<bool, ObjectError> {
        let full = self.full_key(key)?;
        if body.len() as u64 > self.part_bytes {
            self.put_multipart(&full, body, only_if_absent).await
        } else {
            self.put_object(&full, body, only_if_absent).await
        }
    }

    /// One GET of `full`, whole or a byte range; checks the length it got.
    async fn get_one(&self, full: &str, range: Option<Range<u64>>) -> Result<Bytes, ObjectError> {
        let _slot = self.slot("GetObject").await?;
        let mut req = self.client.get_object().bucket(&self.bucket).key(full);
        if let Some(r) = &range {
            req = req.range(format!("bytes={}-{}", r.start, r.end - 1));
        }
        let out = req.send().await.map_err(|e| match classify("GetObject", full, e) {
            // 416: the range starts beyond the object.
            ObjectError::Permanent(m) if m.contains("InvalidRange") => ObjectError::NotFound(m),
            other => other,
        })?;
        let want = match &range {
            Some(r) => r.end - r.start,
            None => u64::try_from(out.content_length().unwrap_or(-1))
                .map_err(|_| ObjectError::Transient(format!("GetObject {full}: no content length")))?,
        };
        if want > GET_BYTES_MAX {
            return Err(ObjectError::Permanent(format!("GetObject {full}: {want} bytes is more than {GET_BYTES_MAX}")));
        }
        let body = out
            .body
            .collect()
            .await
            .map_err(|e| ObjectError::Transient(format!("GetObject {full}: reading the body: {e}")))?
            .into_bytes();
        if body.len() as u64 != want {
            // S3 answers a range that ends beyond the object with what exists.
            return Err(ObjectError::NotFound(format!("{full} range {range:?}: got {} bytes, expected {want}", body.len())));
        }
        Ok(body)
    }
}

fn is_precondition_failed<E>(e: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> bool {
    matches!(e, SdkError::ServiceError(se) if se.raw().status().as_u16() == 412)
}

/// Error codes S3 and compatible services use for "slow down and try again".
const TRANSIENT_CODES: &[&str] = &[
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "TooManyRequests",
    "RequestLimitExceeded",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
    "OperationAborted",
];

/// Sorts an SDK error for the retry wrapper (see the module doc).
fn classify<E>(what: &str, key: &str, e: SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> ObjectError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = match &e {
        SdkError::ServiceError(se) => Some(se.raw().status().as_u16()),
        SdkError::ResponseError(re) => Some(re.raw().status().as_u16()),
        _ => None,
    };
    let code = e.code().map(str::to_string);
    let message = format!("{what} {key}: {}", DisplayErrorContext(&e));
    match (&e, status) {
        (SdkError::ConstructionFailure(_), _) => ObjectError::Permanent(message),
        (SdkError::TimeoutError(_) | SdkError::DispatchFailure(_), _) => ObjectError::Transient(message),
        (_, Some(404)) if code.as_deref() != Some("NoSuchBucket") => ObjectError::NotFound(message),
        (_, Some(s)) if s == 429 || s >= 500 => ObjectError::Transient(message),
        _ if code.as_deref().is_some_and(|c| TRANSIENT_CODES.contains(&c)) => ObjectError::Transient(message),
        (_, Some(416)) => ObjectError::Permanent(format!("InvalidRange: {message}")),
        (_, Some(_)) => ObjectError::Permanent(message),
        // No HTTP answer we could read (a broken response): worth another try.
        (_, None) => ObjectError::Transient(message),
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn put(&self, key: &str, body: Bytes) -> Result<(), ObjectError> {
        self.put_any(key, body, false).await.map(|_| ())
    }

    async fn put_if_absent(&self, key: &str, body: Bytes) -> Result<bool, ObjectError> {
        self.put_any(key, body, true).await
    }

    async fn get_range_once(&self, key: &str, range: Range<u64>) -> Result<Bytes, ObjectError> {
        if range.is_empty() {
            return self.get_range(key, range).await;
        }
        let full = self.full_key(key)?;
        self.get_one(&full, Some(range)).await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, ObjectError> {
        let full = self.full_key(key)?;
        if range.start > range.end {
            return Err(ObjectError::NotFound(format!("{full}: empty range {range:?}")));
        }
        let len = range.end - range.start;
        if len == 0 {
            // A zero-length range cannot be asked for; an existing object has it.
            return match self.head(key).await? {
                Some(size) if range.end <= size => Ok(Bytes::new()),
                _ => Err(ObjectError::NotFound(format!("{full} range {range:?}"))),
            };
        }
        if len <= self.part_bytes {
            return self.get_one(&full, Some(range)).await;
        }
        // A large read: parallel ranged GETs of part_bytes each, reassembled in order.
        let this = self.clone_handle();
        let mut tasks = JoinSet::new();
        for (i, start) in (range.start..range.end).step_by(self.part_bytes as usize).enumerate() {
            let piece = start..(start + self.part_bytes).min(range.end);
            let (this, full) = (this.clone(), full.clone());
            tasks.spawn(async move { (i, this.get_one(&full, Some(piece)).await) });
        }
        let mut pieces = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            let (i, piece) = joined.map_err(|e| ObjectError::Transient(format!("GetObject task failed: {e}")))?;
            pieces.push((i, piece?));
        }
        pieces.sort_by_key(|(i, _)| *i);
        let mut out = BytesMut::with_capacity(len as usize);
        for (_, p) in pieces {
            out.extend_from_slice(&p);
        }
        Ok(out.freeze())
    }

    async fn get(&self, key: &str) -> Result<Bytes, ObjectError> {
        let full = self.full_key(key)?;
        self.get_one(&full, None).await
    }

    async fn head(&self, key: &str) -> Result<Option<u64>, ObjectError> {
        let full = self.full_key(key)?;
        let _slot = self.slot("HeadObject").await?;
        match self.client.head_object().bucket(&self.bucket).key(&full).send().await {
            Ok(out) => Ok(Some(u64::try_from(out.content_length().unwrap_or(0)).unwrap_or(0))),
            Err(e) => match classify("HeadObject", &full, e) {
                ObjectError::NotFound(_) => Ok(None),
                other => Err(other),
            },
        }
    }

    async fn delete(&self, key: &str) -> Result<(), ObjectError> {
        let full = self.full_key(key)?;
        let _slot = self.slot("DeleteObject").await?;
        match self.client.delete_object().bucket(&self.bucket).key(&full).send().await {
            Ok(_) => Ok(()),
            Err(e) => match classify("DeleteObject", &full, e) {
                ObjectError::NotFound(_) => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, ObjectError> {
        let mut out: Vec<ObjectMeta> = Vec::new();
        loop {
            let after = out.last().map(|m| m.key.clone());
            let page = self.list_page(prefix, after.as_deref(), LIST_PAGE_KEYS).await?;
            let done = page.len() < LIST_PAGE_KEYS;
            out.extend(page);
            if done {
                return Ok(out);
            }
            if out.len() > LIST_KEYS_MAX {
                return Err(ObjectError::Permanent(format!("listing {prefix:?}: more than {LIST_KEYS_MAX} keys; walk it with list_page")));
            }
        }
    }

    async fn list_page(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<Vec<ObjectMeta>, ObjectError> {
        let full_prefix = keys::rooted(&self.root, prefix);
        let _slot = self.slot("ListObjectsV2").await?;
        let mut req = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&full_prefix)
            .max_keys(limit.clamp(1, LIST_PAGE_KEYS) as i32);
        if let Some(after) = start_after {
            req = req.start_after(keys::rooted(&self.root, after));
        }
        let out = req.send().await.map_err(|e| classify("ListObjectsV2", &full_prefix, e))?;
        Ok(out
            .contents()
            .iter()
            .filter_map(|o| {
                let key = keys::unrooted(&self.root, o.key()?)?.to_string();
                Some(ObjectMeta { key, size_bytes: u64::try_from(o.size().unwrap_or(0)).unwrap_or(0) })
            })
            .collect())
    }
}

impl S3Store {
    /// A second handle on the same client, slots and counters (for spawned sub-requests).
    fn clone_handle(&self) -> Arc<S3Store> {
        Arc::new(S3Store {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            root: self.root.clone(),
            part_bytes: self.part_bytes,
            sign_payload: self.sign_payload,
            requests: self.requests.clone(),
            metrics: self.metrics.clone(),
        })
    }
}
