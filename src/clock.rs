//! Injectable time and randomness.
//!
//! The core paths never call `SystemTime::now` or a global RNG directly: they take a [`Clock`] and
//! an [`Entropy`] so that a test (and later the deterministic simulation) can replay a run from a
//! seed. Monotonic waiting (timeouts, flush timers) uses tokio's clock, which tests can pause.
//! CPU-bound or blocking work the async paths hand off goes through [`run_blocking`], which the
//! deterministic simulation (tests/sim) runs on the caller's thread ([`set_blocking_inline`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock milliseconds since the Unix epoch (record timestamps, object key ULIDs).
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> i64;
}

/// The real wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
    }
}

/// A clock that only moves when told to (tests).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(start_ms: u64) -> Self {
        Self(AtomicU64::new(start_ms))
    }
    pub fn advance_ms(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst) as i64
    }
}

/// A source of random 64-bit words (ids, jitter).
pub trait Entropy: Send + Sync + 'static {
    fn next_u64(&self) -> u64;

    fn uuid(&self) -> uuid::Uuid {
        let hi = self.next_u64().to_be_bytes();
        let lo = self.next_u64().to_be_bytes();
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&hi);
        b[8..].copy_from_slice(&lo);
        uuid::Builder::from_random_bytes(b).into_uuid()
    }
}

/// SplitMix64 over an atomic counter: fast, thread-safe, reproducible from its seed.
#[derive(Debug)]
pub struct SeededEntropy(AtomicU64);

impl SeededEntropy {
    pub fn new(seed: u64) -> Self {
        Self(AtomicU64::new(seed))
    }

    /// Seeded from the OS: the process's random hasher keys, the time and the pid.
    pub fn from_os() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
        h.write_u32(std::process::id());
        Self::new(h.finish())
    }
}

/// SplitMix64's increment (Steele, Lea, Flood 2014).
const SPLITMIX64_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output of a state.
fn splitmix64_mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// SplitMix64 on a plain state (single-threaded users: the bench, the simulation); the same
/// sequence [`SeededEntropy`] gives from the same seed.
pub fn splitmix64_next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(SPLITMIX64_GAMMA);
    splitmix64_mix(*state)
}

impl Entropy for SeededEntropy {
    fn next_u64(&self) -> u64 {
        splitmix64_mix(self.0.fetch_add(SPLITMIX64_GAMMA, Ordering::Relaxed).wrapping_add(SPLITMIX64_GAMMA))
    }
}

/// Whether [`run_blocking`] runs its work on the caller's thread (set once by the simulation).
static BLOCKING_INLINE: AtomicBool = AtomicBool::new(false);

/// Makes [`run_blocking`] run its work on the caller's thread, for the whole process: the
/// deterministic simulation's single thread then sees each piece of work finish before any
/// other task runs (a thread pool would finish it at a moment real time decides).
pub fn set_blocking_inline(inline: bool) {
    BLOCKING_INLINE.store(inline, Ordering::SeqCst);
}

/// Whether blocking work runs on the caller's thread (see [`set_blocking_inline`]); the WAL's
/// writer then runs in the appending task instead of on its own thread.
pub fn blocking_inline() -> bool {
    BLOCKING_INLINE.load(Ordering::Relaxed)
}

/// Runs `f` on tokio's blocking pool (or inline, see [`set_blocking_inline`]); `Err` if it
/// panicked on the pool.
pub async fn run_blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> Result<R, String> {
    if BLOCKING_INLINE.load(Ordering::Relaxed) {
        return Ok(f());
    }
    tokio::task::spawn_blocking(f).await.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_entropy_is_reproducible() {
        let a = SeededEntropy::new(7);
        let b = SeededEntropy::new(7);
        let xs: Vec<u64> = (0..4).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..4).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs[0], xs[1]);
        assert_eq!(a.uuid().get_version_num(), 4);
    }
}
