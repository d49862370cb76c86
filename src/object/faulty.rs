//! A fault-injecting wrapper around any object store, for failure tests.
//!
//! Seeded and controllable at run time: an error rate (each request fails with a transient
//! error with that probability, drawn from the seeded [`Entropy`]), added latency, and an
//! outage switch (every request fails, or stalls until the outage ends). Tests flip the switch
//! to simulate S3 being down, then back.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::watch;

use super::store::{ObjectError, ObjectMeta, ObjectStore};
use crate::clock::Entropy;

/// What an outage does to requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outage {
    /// Requests behave normally.
    None,
    /// Every request fails at once with a transient error.
    Failing,
    /// Every request waits until the outage ends, then proceeds.
    Stalled,
}

pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    entropy: Arc<dyn Entropy>,
    /// Probability of a transient error, in millionths.
    error_ppm: AtomicU32,
    latency_us: AtomicU64,
    outage: watch::Sender<Outage>,
    /// Requests that failed because of this wrapper.
    pub injected_errors: AtomicU64,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn ObjectStore>, entropy: Arc<dyn Entropy>) -> Self {
        Self {
            inner,
            entropy,
            error_ppm: AtomicU32::new(0),
            latency_us: AtomicU64::new(0),
            outage: watch::channel(Outage::None).0,
            injected_errors: AtomicU64::new(0),
        }
    }

    /// Each request fails with probability `rate` (0.0..=1.0).
    pub fn set_error_rate(&self, rate: f64) {
        self.error_ppm.store((rate.clamp(0.0, 1.0) * 1e6) as u32, Ordering::SeqCst);
    }

    pub fn set_latency(&self, latency: Duration) {
        self.latency_us.store(latency.as_micros() as u64, Ordering::SeqCst);
    }

    pub fn set_outage(&self, outage: Outage) {
        self.outage.send_replace(outage);
    }

    async fn before(&self, what: &str) -> Result<(), ObjectError> {
        let latency = self.latency_us.load(Ordering::SeqCst);
        if latency > 0 {
            tokio::time::sleep(Duration::from_micros(latency)).await;
        }
        let mut rx = self.outage.subscribe();
        loop {
            let current = *rx.borrow_and_update();
            match current {
                Outage::None => break,
                Outage::Failing => {
                    self.injected_errors.fetch_add(1, Ordering::Relaxed);
                    return Err(ObjectError::Transient(format!("injected outage: {what}")));
                }
                Outage::Stalled => {
                    if rx.changed().await.is_err() {
                        break;
                    }
                }
            }
        }
        let ppm = self.error_ppm.load(Ordering::SeqCst);
        if ppm > 0 && (self.entropy.next_u64() % 1_000_000) < u64::from(ppm) {
            self.injected_errors.fetch_add(1, Ordering::Relaxed);
            return Err(ObjectError::Transient(format!("injected error: {what}")));
        }
        Ok(())
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put(&self, key: &str, body: Bytes) -> Result<(), ObjectError> {
        self.before("put").await?;
        self.inner.put(key, body).await
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, ObjectError> {
        self.before("get_range").await?;
        self.inner.get_range(key, range).await
    }
    async fn get_range_once(&self, key: &str, range: Range<u64>) -> Result<Bytes, ObjectError> {
        self.before("get_range").await?;
        self.inner.get_range_once(key, range).await
    }
    async fn get(&self, key: &str) -> Result<Bytes, ObjectError> {
        self.before("get").await?;
        self.inner.get(key).await
    }
    async fn head(&self, key: &str) -> Result<Option<u64>, ObjectError> {
        self.before("head").await?;
        self.inner.head(key).await
    }
    async fn delete(&self, key: &str) -> Result<(), ObjectError> {
        self.before("delete").await?;
        self.inner.delete(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, ObjectError> {
        self.before("list").await?;
        self.inner.list(prefix).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SeededEntropy;
    use crate::object::memory::MemoryStore;

    #[tokio::test]
    async fn outages_and_error_rates() {
        let s = Arc::new(FaultyStore::new(Arc::new(MemoryStore::new()), Arc::new(SeededEntropy::new(9))));
        s.put("a", Bytes::from_static(b"x")).await.unwrap();
        s.set_outage(Outage::Failing);
        assert!(matches!(s.get("a").await, Err(ObjectError::Transient(_))));
        s.set_outage(Outage::Stalled);
        let s2 = s.clone();
        let stalled = tokio::spawn(async move { s2.get("a").await });
        tokio::task::yield_now().await;
        assert!(!stalled.is_finished());
        s.set_outage(Outage::None);
        assert_eq!(stalled.await.unwrap().unwrap(), "x");
        s.set_error_rate(0.5);
        let mut failures = 0;
        for _ in 0..1000 {
            if s.head("a").await.is_err() {
                failures += 1;
            }
        }
        assert!((400..600).contains(&failures), "{failures}");
    }
}
