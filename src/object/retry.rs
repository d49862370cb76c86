//! Retries for any [`ObjectStore`]: exponential backoff with jitter, bounded by a deadline.
//!
//! Only [`ObjectError::Transient`] is retried: I/O hiccups, timeouts, connection failures, and
//! the throttling answers of S3-like services (503 SlowDown, 429, `Throttling`), which the
//! backends map to `Transient`. Every other 4xx is `Permanent` or `NotFound` and returned at once.
//! A call gives up when its deadline (from the first attempt) would pass before the next try,
//! and an attempt still running at the deadline is abandoned: the caller gets the last error.
//!
//! Waiting uses tokio's clock (tests pause and advance it) and the jitter comes from an injected
//! [`Entropy`], so a run replays from its seed.

use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::time::{Instant, sleep, timeout_at};

use super::store::{ObjectError, ObjectMeta, ObjectStore};
use crate::clock::Entropy;

/// How a call is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first backoff; it doubles after each failure...
    pub backoff_min: Duration,
    /// ...up to this.
    pub backoff_max: Duration,
    /// A call (all its attempts and waits) ends by this long after it started.
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { backoff_min: Duration::from_millis(50), backoff_max: Duration::from_secs(5), deadline: Duration::from_secs(30) }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt number `attempt` (0-based): "equal jitter", half of the
    /// exponential step plus a random part of the other half, so retries neither synchronise
    /// across clients nor spin.
    pub fn backoff(&self, attempt: u32, entropy: &dyn Entropy) -> Duration {
        let step = self.backoff_min.saturating_mul(1u32 << attempt.min(20)).min(self.backoff_max);
        let half_us = u64::try_from(step.as_micros() / 2).unwrap_or(u64::MAX);
        let jitter_us = if half_us == 0 { 0 } else { entropy.next_u64() % (half_us + 1) };
        Duration::from_micros(half_us.saturating_add(jitter_us))
    }
}

/// Retries the calls of `inner` according to `policy`.
pub struct RetryingStore {
    inner: Arc<dyn ObjectStore>,
    policy: RetryPolicy,
    entropy: Arc<dyn Entropy>,
}

impl RetryingStore {
    pub fn new(inner: Arc<dyn ObjectStore>, policy: RetryPolicy, entropy: Arc<dyn Entropy>) -> Self {
        Self { inner, policy, entropy }
    }

    async fn retry<T, F, Fut>(&self, what: &str, key: &str, mut call: F) -> Result<T, ObjectError>
    where
        F: FnMut() -> Fut + Send,
        Fut: Future<Output = Result<T, ObjectError>> + Send,
    {
        let deadline = Instant::now() + self.policy.deadline;
        let mut attempt = 0u32;
        loop {
            let error = match timeout_at(deadline, call()).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) if !e.is_retriable() => return Err(e),
                Ok(Err(e)) => e,
                Err(_) => {
                    return Err(ObjectError::Transient(format!("{what} {key}: no answer within the {:?} deadline", self.policy.deadline)));
                }
            };
            let wait = self.policy.backoff(attempt, &*self.entropy);
            if Instant::now() + wait >= deadline {
                tracing::warn!(what, key, attempt, error = %error, "object store: giving up at the deadline");
                return Err(error);
            }
            tracing::debug!(what, key, attempt, error = %error, ?wait, "object store: retrying");
            sleep(wait).await;
            attempt += 1;
        }
    }
}

#[async_trait]
impl ObjectStore for RetryingStore {
    async fn put(&self, key: &str, body: Bytes) -> Result<(), ObjectError> {
        self.retry("put", key, || self.inner.put(key, body.clone())).await
    }

    async fn put_if_absent(&self, key: &str, body: Bytes) -> Result<bool, ObjectError> {
        // A retried conditional put whose first attempt landed answers "exists": the caller
        // cannot tell its own earlier write from another writer's, as with S3 itself.
        self.retry("put_if_absent", key, || self.inner.put_if_absent(key, body.clone())).await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, ObjectError> {
        self.retry("get_range", key, || self.inner.get_range(key, range.clone())).await
    }

    async fn get_range_once(&self, key: &str, range: Range<u64>) -> Result<Bytes, ObjectError> {
        self.retry("get_range", key, || self.inner.get_range_once(key, range.clone())).await
    }

    async fn get(&self, key: &str) -> Result<Bytes, ObjectError> {
        self.retry("get", key, || self.inner.get(key)).await
    }

    async fn head(&self, key: &str) -> Result<Option<u64>, ObjectError> {
        self.retry("head", key, || self.inner.head(key)).await
    }

    async fn delete(&self, key: &str) -> Result<(), ObjectError> {
        self.retry("delete", key, || self.inner.delete(key)).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, ObjectError> {
        self.retry("list", prefix, || self.inner.list(prefix)).await
    }

    async fn list_page(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<Vec<ObjectMeta>, ObjectError> {
        self.retry("list", prefix, || self.inner.list_page(prefix, start_after, limit)).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::clock::SeededEntropy;
    use crate::object::memory::MemoryStore;

    /// Fails the next calls with the queued errors, then behaves like a memory store.
    #[derive(Default)]
    struct Flaky {
        inner: MemoryStore,
        errors: Mutex<Vec<ObjectError>>,
        calls: Mutex<u32>,
        hang: bool,
    }

    impl Flaky {
        fn failing(errors: Vec<ObjectError>) -> Self {
            Self { errors: Mutex::new(errors), ..Default::default() }
        }
        async fn gate(&self) -> Result<(), ObjectError> {
            *self.calls.lock().unwrap() += 1;
            if self.hang {
                std::future::pending::<()>().await;
            }
            match self.errors.lock().unwrap().pop() {
                Some(e) => Err(e),
                None => Ok(()),
            }
        }
        fn calls(&self) -> u32 {
            *self.calls.lock().unwrap()
        }
    }

    #[async_trait]
    impl ObjectStore for Flaky {
        async fn put(&self, key: &str, body: Bytes) -> Result<(), ObjectError> {
            self.gate().await?;
            self.inner.put(key, body).await
        }
        async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, ObjectError> {
            self.gate().await?;
            self.inner.get_range(key, range).await
        }
        async fn get(&self, key: &str) -> Result<Bytes, ObjectError> {
            self.gate().await?;
            self.inner.get(key).await
        }
        async fn head(&self, key: &str) -> Result<Option<u64>, ObjectError> {
            self.gate().await?;
            self.inner.head(key).await
        }
        async fn delete(&self, key: &str) -> Result<(), ObjectError> {
            self.gate().await?;
            self.inner.delete(key).await
        }
        async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, ObjectError> {
            self.gate().await?;
            self.inner.list(prefix).await
        }
    }

    fn slow_down() -> ObjectError {
        ObjectError::Transient("503 SlowDown".into())
    }

    fn store(flaky: Arc<Flaky>, seed: u64) -> RetryingStore {
        RetryingStore::new(flaky, RetryPolicy::default(), Arc::new(SeededEntropy::new(seed)))
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_retried_with_growing_jittered_waits() {
        let flaky = Arc::new(Flaky::failing(vec![slow_down(), slow_down(), slow_down()]));
        let s = store(flaky.clone(), 1);
        let started = Instant::now();
        s.put("00/a/x.sso", Bytes::from_static(b"x")).await.unwrap();
        assert_eq!(flaky.calls(), 4);
        // Waits of 25-50 ms, 50-100 ms, 100-200 ms under the default policy.
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(175) && waited <= Duration::from_millis(350), "{waited:?}");
        assert_eq!(s.get("00/a/x.sso").await.unwrap(), "x");
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_and_not_found_are_returned_at_once() {
        let flaky = Arc::new(Flaky::failing(vec![ObjectError::Permanent("403 AccessDenied".into())]));
        let s = store(flaky.clone(), 2);
        assert!(matches!(s.put("00/a/x.sso", Bytes::new()).await, Err(ObjectError::Permanent(_))));
        assert_eq!(flaky.calls(), 1);
        assert!(matches!(s.get("00/a/missing").await, Err(ObjectError::NotFound(_))));
        assert_eq!(flaky.calls(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_ends_retries_and_hung_attempts() {
        let flaky = Arc::new(Flaky::failing((0..1000).map(|_| slow_down()).collect()));
        let s = store(flaky.clone(), 3);
        let started = Instant::now();
        assert!(matches!(s.head("00/a/x.sso").await, Err(ObjectError::Transient(_))));
        let waited = started.elapsed();
        assert!(waited <= RetryPolicy::default().deadline, "{waited:?}");
        assert!(flaky.calls() > 5 && flaky.calls() < 40, "{}", flaky.calls());

        let hung = Arc::new(Flaky { hang: true, ..Default::default() });
        let s = store(hung.clone(), 4);
        let started = Instant::now();
        let e = s.get("00/a/x.sso").await.unwrap_err();
        assert!(e.is_retriable() && e.to_string().contains("deadline"), "{e}");
        assert_eq!(started.elapsed(), RetryPolicy::default().deadline);
        assert_eq!(hung.calls(), 1);
    }

    #[test]
    fn backoff_is_reproducible_from_the_seed_and_capped() {
        let p = RetryPolicy::default();
        let waits = |seed| (0..30).map(|a| p.backoff(a, &SeededEntropy::new(seed))).collect::<Vec<_>>();
        assert_eq!(waits(9), waits(9));
        assert!(waits(9).iter().all(|w| *w <= p.backoff_max && *w >= p.backoff_min / 2));
        assert!(waits(9)[29] >= p.backoff_max / 2);
    }
}
