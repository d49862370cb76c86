//! The object store trait: what the agent needs from S3 or anything like it, and no more.

use std::ops::Range;

use async_trait::async_trait;
use bytes::Bytes;

/// Failures of an object store, sorted by what the caller must do.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ObjectError {
    /// The key does not exist (or the range lies beyond its end).
    #[error("object not found: {0}")]
    NotFound(String),
    /// Worth retrying with backoff: I/O hiccup, throttling, timeout.
    #[error("object store unavailable: {0}")]
    Transient(String),
    /// Retrying will not help: bad key, permission denied, misconfiguration.
    #[error("object store error: {0}")]
    Permanent(String),
}

impl ObjectError {
    pub fn is_retriable(&self) -> bool {
        matches!(self, ObjectError::Transient(_))
    }
}

/// An object as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size_bytes: u64,
}

/// A flat key -> immutable bytes store. Objects are written once, whole, and never modified.
#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    /// Stores `body` under `key`; once this returns Ok the object is durable.
    async fn put(&self, key: &str, body: Bytes) -> Result<(), ObjectError>;
    /// Stores `body` under `key` only if no object has that key: true if it was written, false
    /// if the key existed (and was left untouched). Backends with a conditional write
    /// (S3 `If-None-Match: *`, a hard link, a map entry) override this; the default, a head then
    /// a put, is not atomic against a concurrent writer.
    async fn put_if_absent(&self, key: &str, body: Bytes) -> Result<bool, ObjectError> {
        if self.head(key).await?.is_some() {
            return Ok(false);
        }
        self.put(key, body).await?;
        Ok(true)
    }
    /// Bytes `range` of the object (the range must lie within it).
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, ObjectError>;
    /// Like [`ObjectStore::get_range`], in one request however long the range (backends that
    /// split long reads into parallel requests, S3, override it): for readers that pay per
    /// request more than they wait (a catch-up read of a per-partition object).
    async fn get_range_once(&self, key: &str, range: Range<u64>) -> Result<Bytes, ObjectError> {
        self.get_range(key, range).await
    }
    /// The whole object.
    async fn get(&self, key: &str) -> Result<Bytes, ObjectError>;
    /// The object's size, or None if it does not exist.
    async fn head(&self, key: &str) -> Result<Option<u64>, ObjectError>;
    /// Removes the object; removing a missing object is not an error.
    async fn delete(&self, key: &str) -> Result<(), ObjectError>;
    /// Every object whose key starts with `prefix`.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, ObjectError>;
    /// Up to `limit` objects whose key starts with `prefix` and sorts after `start_after`, in
    /// key order: one page of a listing (background jobs walk large stores with it). Backends
    /// that can list a page without listing everything (S3) override the default.
    async fn list_page(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<Vec<ObjectMeta>, ObjectError> {
        let mut all = self.list(prefix).await?;
        all.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(all.into_iter().filter(|m| start_after.is_none_or(|s| m.key.as_str() > s)).take(limit).collect())
    }
}

/// Rejects keys that could escape a directory-backed store or are not portable to S3.
pub fn check_key(key: &str) -> Result<(), ObjectError> {
    if crate::format::object::valid_key(key) { Ok(()) } else { Err(ObjectError::Permanent(format!("invalid object key {key:?}"))) }
}
