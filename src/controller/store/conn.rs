//! A store's connections, for both stores: every write through one writer thread that owns
//! the writer connection, fed by a bounded queue ([`STORE_WRITE_QUEUE_MAX`]); reads through a
//! small pool of reader connections. Each connection is opened on first use and again after it
//! broke.
//!
//! Callers block (the [`super::MetadataStore`] trait is blocking): a write waits for queue room,
//! then for its answer. Must not touch: SQL (each store brings its own), the records.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::StoreError;

/// Writes waiting for the writer thread; a caller waits for room when it is full.
pub const STORE_WRITE_QUEUE_MAX: usize = 256;

/// Opens one connection.
pub type Open<C> = Arc<dyn Fn() -> Result<C, StoreError> + Send + Sync>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One connection, opened on first use and again after it broke.
pub struct Slot<C> {
    conn: Option<C>,
    open: Open<C>,
    /// Whether a connection is gone for good (closed by the server, by a network error).
    broken: fn(&C) -> bool,
}

impl<C> Slot<C> {
    pub fn new(open: Open<C>, broken: fn(&C) -> bool) -> Self {
        Self { conn: None, open, broken }
    }

    /// Runs `f` on the connection, opening it first if there is none or it broke.
    pub fn with<T>(&mut self, f: impl FnOnce(&mut C) -> Result<T, StoreError>) -> Result<T, StoreError> {
        if self.conn.as_ref().is_some_and(self.broken) {
            self.conn = None;
        }
        let conn = match &mut self.conn {
            Some(c) => c,
            empty => empty.insert((self.open)()?),
        };
        let out = f(conn);
        if out.is_err() && (self.broken)(conn) {
            self.conn = None;
        }
        out
    }

    /// The connection, if one is open (to close it on a thread of the caller's choosing).
    pub fn take(&mut self) -> Option<C> {
        self.conn.take()
    }
}

type Job<C> = Box<dyn FnOnce(&mut Slot<C>) + Send>;

/// The writer thread's handle. Dropping it lets the thread finish the queued writes and stop;
/// the connection is closed on that thread.
pub struct Writer<C> {
    jobs: SyncSender<Job<C>>,
    /// Writes in the queue (not yet taken by the thread).
    queued: Arc<AtomicIsize>,
}

impl<C: Send + 'static> Writer<C> {
    /// Starts the thread `name`, owning `slot`, behind a queue of `queue_max` writes.
    pub fn start(name: &str, mut slot: Slot<C>, queue_max: usize) -> Result<Self, StoreError> {
        let (jobs, incoming) = sync_channel::<Job<C>>(queue_max);
        let queued = Arc::new(AtomicIsize::new(0));
        let taken = queued.clone();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                for job in incoming {
                    taken.fetch_sub(1, Ordering::Relaxed);
                    // A job that panics (a bug) must not stop every later write: its caller gets
                    // `Internal`, and the connection, maybe inside a transaction, is closed.
                    if catch_unwind(AssertUnwindSafe(|| job(&mut slot))).is_err() {
                        drop(slot.take());
                    }
                }
            })
            .map_err(|e| StoreError::internal(format!("cannot start the thread {name}"), Some(e.into())))?;
        Ok(Self { jobs, queued })
    }

    /// Runs `f` on the writer connection, after the writes queued before it; waits for room in
    /// the queue, then for the answer.
    pub fn call<T: Send + 'static>(&self, f: impl FnOnce(&mut C) -> Result<T, StoreError> + Send + 'static) -> Result<T, StoreError> {
        let (reply, answer) = sync_channel(1);
        let job: Job<C> = Box::new(move |slot| {
            let _ = reply.send(slot.with(f));
        });
        self.jobs.send(job).map_err(|_| StoreError::internal("the store's writer thread stopped", None))?;
        self.queued.fetch_add(1, Ordering::Relaxed);
        answer
            .recv()
            .unwrap_or_else(|_| Err(StoreError::internal("the store's writer thread dropped a write (it panicked)", None)))
    }

    /// Writes waiting in the queue.
    #[cfg(test)]
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed).max(0) as usize
    }
}

/// Reader connections, at most `max` open; a reader waits for a free one.
pub struct ReadPool<C> {
    state: Mutex<PoolState<C>>,
    freed: Condvar,
    open: Open<C>,
    broken: fn(&C) -> bool,
    max: usize,
}

struct PoolState<C> {
    idle: Vec<C>,
    /// Connections open or being opened, idle or in use.
    open: usize,
}

impl<C> ReadPool<C> {
    pub fn new(open: Open<C>, broken: fn(&C) -> bool, max: usize) -> Self {
        assert!(max >= 1, "a read pool needs a connection");
        Self { state: Mutex::new(PoolState { idle: Vec::new(), open: 0 }), freed: Condvar::new(), open, broken, max }
    }

    /// Runs `f` on a free reader connection (opened if none is idle and there is room).
    pub fn with<T>(&self, f: impl FnOnce(&mut C) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let mut reader = Reader { pool: self, conn: Some(self.checkout()?) };
        let Some(conn) = reader.conn.as_mut() else { unreachable!("a reader holds its connection until dropped") };
        f(conn)
    }

    fn checkout(&self) -> Result<C, StoreError> {
        let mut state = lock(&self.state);
        loop {
            if let Some(c) = state.idle.pop() {
                if !(self.broken)(&c) {
                    return Ok(c);
                }
                state.open -= 1;
                continue;
            }
            if state.open < self.max {
                state.open += 1;
                drop(state);
                return (self.open)().inspect_err(|_| {
                    lock(&self.state).open -= 1;
                    self.freed.notify_one();
                });
            }
            state = self.freed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// The idle connections (to close them on a thread of the caller's choosing).
    pub fn take_idle(&self) -> Vec<C> {
        let mut state = lock(&self.state);
        state.open -= state.idle.len();
        std::mem::take(&mut state.idle)
    }
}

/// A connection out of the pool; back in when dropped, or closed if it broke.
struct Reader<'a, C> {
    pool: &'a ReadPool<C>,
    conn: Option<C>,
}

impl<C> Drop for Reader<'_, C> {
    fn drop(&mut self) {
        let Some(c) = self.conn.take() else { return };
        let mut state = lock(&self.pool.state);
        if (self.pool.broken)(&c) || std::thread::panicking() {
            state.open -= 1;
        } else {
            state.idle.push(c);
        }
        drop(state);
        self.pool.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use super::*;

    fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn the_write_queue_is_bounded_and_callers_wait_for_room() {
        let opened = Arc::new(AtomicUsize::new(0));
        let o = opened.clone();
        let open: Open<()> = Arc::new(move || {
            o.fetch_add(1, Ordering::Relaxed);
            Ok(())
        });
        let queue_max = 4;
        let writer = Arc::new(Writer::start("test-writer", Slot::new(open, |_| false), queue_max).unwrap());
        // The first write holds the writer until released.
        let (release, held) = mpsc::channel::<()>();
        let (started_tx, started) = mpsc::channel::<()>();
        let w = writer.clone();
        let first = std::thread::spawn(move || {
            w.call(move |_| {
                started_tx.send(()).unwrap();
                held.recv().unwrap();
                Ok(0)
            })
        });
        started.recv().unwrap();
        let done = Arc::new(AtomicUsize::new(0));
        let callers: Vec<_> = (1..=queue_max + 3)
            .map(|i| {
                let (w, done) = (writer.clone(), done.clone());
                std::thread::spawn(move || {
                    let r = w.call(move |_| Ok(i));
                    done.fetch_add(1, Ordering::Relaxed);
                    r
                })
            })
            .collect();
        wait_until("the queue is full", || writer.queued() >= queue_max);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(writer.queued(), queue_max, "no more than the queue's room is queued; the others wait");
        assert_eq!(done.load(Ordering::Relaxed), 0, "nothing ran past the held write");
        release.send(()).unwrap();
        assert_eq!(first.join().unwrap().unwrap(), 0);
        let mut answers: Vec<_> = callers.into_iter().map(|c| c.join().unwrap().unwrap()).collect();
        answers.sort();
        assert_eq!(answers, (1..=queue_max + 3).collect::<Vec<_>>(), "every waiting caller got its own answer");
        assert_eq!(opened.load(Ordering::Relaxed), 1, "one writer connection");
    }

    #[test]
    fn a_panicking_write_answers_internal_and_the_writer_goes_on() {
        let open: Open<u32> = Arc::new(|| Ok(7));
        let writer = Writer::start("test-writer", Slot::new(open, |_| false), 2).unwrap();
        let r: Result<(), _> = writer.call(|_| panic!("a bug"));
        assert!(matches!(r, Err(StoreError::Internal { .. })), "{r:?}");
        assert_eq!(writer.call(|c| Ok(*c)).unwrap(), 7);
    }

    #[test]
    fn the_read_pool_opens_at_most_max_connections_and_replaces_broken_ones() {
        let opened = Arc::new(AtomicUsize::new(0));
        let o = opened.clone();
        // A connection is its number; number 3 is broken once used.
        let open: Open<(usize, bool)> = Arc::new(move || Ok((o.fetch_add(1, Ordering::Relaxed) + 1, false)));
        let pool = Arc::new(ReadPool::new(open, |c| c.1, 2));
        let in_use = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let readers: Vec<_> = (0..8)
            .map(|_| {
                let (pool, in_use, most) = (pool.clone(), in_use.clone(), most.clone());
                std::thread::spawn(move || {
                    pool.with(|_| {
                        let now = in_use.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(20));
                        in_use.fetch_sub(1, Ordering::SeqCst);
                        Ok(())
                    })
                })
            })
            .collect();
        for r in readers {
            r.join().unwrap().unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 2, "two readers at a time");
        assert_eq!(opened.load(Ordering::Relaxed), 2, "connections are reused");
        // A connection that broke is closed and replaced by the next use.
        let r: Result<(), _> = pool.with(|c| {
            c.1 = true;
            Err(StoreError::retry("connection lost"))
        });
        assert!(r.is_err());
        let idle = pool.take_idle();
        assert_eq!(idle.len(), 1, "the broken connection is not kept");
        assert!(!idle[0].1);
        assert_eq!(pool.with(|c| Ok(c.0)).unwrap(), 3, "room for a new one");
    }
}
