//! Fetch sessions (KIP-227): a consumer with many partitions sends its full partition list
//! once, then only what changed (incremental fetches), and the agent answers only the
//! partitions that have something new.
//!
//! A session remembers, per partition, the fetch position and byte budget the client last
//! sent and the high watermark / last stable offset / log start offset the agent last
//! answered. The request's `session_id` and `session_epoch` pick the mode, as in Kafka:
//!
//! | session_id | epoch | meaning                                                        |
//! |------------|-------|----------------------------------------------------------------|
//! | 0          | -1    | sessionless full fetch                                          |
//! | any        | 0     | full fetch; closes `session_id` if set, opens a new session    |
//! | id         | -1    | full fetch that closes session `id`                            |
//! | id         | n > 0 | incremental fetch in session `id`, whose next epoch must be n  |
//!
//! Sessions live in memory, at most [`FETCH_SESSIONS_MAX`] of them and at most
//! `fetch_sessions_bytes_max` bytes of them (estimated per partition, [`ENTRY_BYTES`]); the least
//! recently used are evicted to stay under both (their clients get FETCH_SESSION_ID_NOT_FOUND and
//! start over with a full fetch), and a session that alone would exceed the bytes is not opened
//! (the fetch is answered sessionless). At most [`SESSION_PARTITIONS_MAX`] partitions each. A
//! session belongs to the connection that last used it and is closed with it
//! ([`FetchSessions::close_owner`]): clients open a new one after reconnecting anyway. Losing
//! them (restart, eviction) costs a client one full fetch, never data. Topic names are copied out
//! of the request (one copy per topic), so a session never keeps a request's buffer alive.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use indexmap::IndexMap;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::TopicName;
use kafka_protocol::messages::fetch_request::FetchRequest;
use kafka_protocol::protocol::StrBytes;
use uuid::Uuid;

/// Sessions kept at once (Kafka's `max.incremental.fetch.session.cache.slots` default).
pub const FETCH_SESSIONS_MAX: usize = 1000;
/// Partitions one session may hold; a client going beyond starts over sessionless.
pub const SESSION_PARTITIONS_MAX: usize = 50_000;
/// Memory of all sessions (the `[agent] fetch_sessions_bytes_max` default).
pub const FETCH_SESSIONS_BYTES_MAX: usize = 64 << 20;
/// Estimated bytes per partition of a session: the entry, its hash and index slot, and the
/// spare capacity of the map's growth.
pub const ENTRY_BYTES: usize = 2 * size_of::<(u64, PartitionKey, (Wanted, Answered))>() + 16;
/// Estimated bytes of a session besides its partitions.
const SESSION_BYTES: usize = 256;
/// `session_epoch` meaning "no session" / "close the session".
pub const FINAL_EPOCH: i32 = -1;
/// `session_epoch` meaning "open a new session".
pub const INITIAL_EPOCH: i32 = 0;

/// A partition as a fetch names it: by topic id from Fetch v13 on, by name before.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PartitionKey {
    pub topic: TopicName,
    pub topic_id: Uuid,
    pub partition: i32,
}

/// What a fetch asks of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted {
    pub fetch_offset: i64,
    pub partition_max_bytes: i32,
}

/// What the agent last answered for a partition of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answered {
    pub high_watermark: i64,
    pub last_stable_offset: i64,
    pub log_start_offset: i64,
}

impl Answered {
    const NONE: Answered = Answered { high_watermark: -1, last_stable_offset: -1, log_start_offset: -1 };
}

struct Session {
    /// The epoch the next incremental request must carry.
    next_epoch: i32,
    partitions: IndexMap<PartitionKey, (Wanted, Answered)>,
    last_used: u64,
    /// The connection that last used it.
    owner: SocketAddr,
    /// Estimated memory, as counted in [`Inner::bytes`].
    bytes: usize,
}

/// A session's estimated memory.
fn estimate(partitions: &IndexMap<PartitionKey, (Wanted, Answered)>) -> usize {
    SESSION_BYTES + partitions.len() * ENTRY_BYTES
}

/// How a request relates to sessions, decided by [`FetchSessions::begin`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Full fetch, answered with session id 0.
    Sessionless,
    /// Full fetch that opened session `id`: every partition is answered.
    Full { id: i32 },
    /// Incremental fetch in session `id`, epoch `epoch`: only changed partitions are answered.
    Incremental { id: i32, epoch: i32 },
}

impl Mode {
    pub fn session_id(&self) -> i32 {
        match self {
            Mode::Sessionless => 0,
            Mode::Full { id } | Mode::Incremental { id, .. } => *id,
        }
    }
}

/// What [`FetchSessions::begin`] decides: the mode and the partitions to read, in answer order;
/// or the top-level error code to answer with.
pub type Begun = Result<(Mode, Vec<(PartitionKey, Wanted)>), i16>;

/// One answered partition, as [`FetchSessions::finish`] sees it.
pub struct Outcome {
    pub key: PartitionKey,
    pub answered: Answered,
    pub has_records: bool,
    pub has_error: bool,
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<i32, Session>,
    uses: u64,
    /// Sum of the sessions' `bytes`.
    bytes: usize,
}

impl Inner {
    fn remove(&mut self, id: i32) {
        if let Some(s) = self.sessions.remove(&id) {
            self.bytes -= s.bytes;
        }
    }

    /// Evicts least recently used sessions (never `keep`) until `more` sessions and `bytes` more
    /// bytes fit under the limits. False if they cannot.
    fn make_room(&mut self, keep: i32, more: usize, bytes: usize, max_sessions: usize, max_bytes: usize) -> bool {
        while self.sessions.len() + more > max_sessions || self.bytes + bytes > max_bytes {
            let oldest = self.sessions.iter().filter(|(id, _)| **id != keep).min_by_key(|(_, s)| s.last_used).map(|(id, _)| *id);
            match oldest {
                Some(id) => {
                    self.remove(id);
                    evicted().inc();
                }
                None => return false,
            }
        }
        true
    }
}

fn evicted() -> &'static crate::metrics::Counter {
    static C: std::sync::OnceLock<std::sync::Arc<crate::metrics::Counter>> = std::sync::OnceLock::new();
    C.get_or_init(|| {
        crate::metrics::counter(
            "sidestream_fetch_sessions_evicted_total",
            "Fetch sessions evicted to stay under the session count or fetch_sessions_bytes_max.",
            &[],
        )
    })
}

/// Every fetch session of the agent.
pub struct FetchSessions {
    inner: Mutex<Inner>,
    max_sessions: usize,
    max_bytes: usize,
}

impl Default for FetchSessions {
    fn default() -> Self {
        Self::new(FETCH_SESSIONS_MAX, FETCH_SESSIONS_BYTES_MAX)
    }
}

/// The partitions a request lists, in request order.
pub fn requested(version: i16, req: &FetchRequest) -> Vec<(PartitionKey, Wanted)> {
    let mut out = Vec::new();
    for t in &req.topics {
        // An owned copy of the name, shared by the topic's partitions: the request's would keep
        // the whole request buffer alive as long as a session holds it.
        let topic = TopicName(StrBytes::from_string(t.topic.0.to_string()));
        for p in &t.partitions {
            out.push((
                key(version, &topic, t.topic_id, p.partition),
                Wanted { fetch_offset: p.fetch_offset, partition_max_bytes: p.partition_max_bytes },
            ));
        }
    }
    out
}

fn key(version: i16, topic: &TopicName, topic_id: Uuid, partition: i32) -> PartitionKey {
    // From v13 the topic id names the topic and the name is empty; before, the other way round.
    if version >= 13 {
        PartitionKey { topic: TopicName::default(), topic_id, partition }
    } else {
        PartitionKey { topic: topic.clone(), topic_id: Uuid::nil(), partition }
    }
}

impl FetchSessions {
    pub fn new(max_sessions: usize, max_bytes: usize) -> Self {
        Self { inner: Mutex::new(Inner::default()), max_sessions: max_sessions.max(1), max_bytes }
    }

    /// Estimated memory of all sessions.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Closes session `id` (one just opened by a fetch answered without it).
    pub fn close(&self, id: i32) {
        self.lock().remove(id);
    }

    /// Closes every session `owner` (a connection) used last.
    pub fn close_owner(&self, owner: SocketAddr) {
        let mut inner = self.lock();
        let ids: Vec<i32> = inner.sessions.iter().filter(|(_, s)| s.owner == owner).map(|(id, _)| *id).collect();
        for id in ids {
            inner.remove(id);
        }
    }

    /// The sessions; a panic elsewhere while holding them leaves them usable (each update is
    /// complete or not started).
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn len(&self) -> usize {
        self.lock().sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Decides the request's mode and the partitions to read, in answer order. An error is the
    /// top-level error code to answer with (and nothing else).
    pub fn begin(&self, version: i16, req: &FetchRequest, owner: SocketAddr) -> Begun {
        let requested = requested(version, req);
        if version < 7 {
            return Ok((Mode::Sessionless, requested));
        }
        let mut inner = self.lock();
        inner.uses += 1;
        let now = inner.uses;
        if req.session_epoch == INITIAL_EPOCH || req.session_epoch == FINAL_EPOCH {
            if req.session_id != 0 {
                inner.remove(req.session_id);
            }
            if req.session_epoch == FINAL_EPOCH || requested.is_empty() || requested.len() > SESSION_PARTITIONS_MAX {
                return Ok((Mode::Sessionless, requested));
            }
            let partitions: IndexMap<_, _> = requested.iter().map(|(k, w)| (k.clone(), (*w, Answered::NONE))).collect();
            let bytes = estimate(&partitions);
            // Too big alone: answered sessionless, evicting nobody.
            if bytes > self.max_bytes || !inner.make_room(0, 1, bytes, self.max_sessions, self.max_bytes) {
                return Ok((Mode::Sessionless, requested));
            }
            let id = loop {
                let id = (Uuid::new_v4().as_u128() as i32) & i32::MAX;
                if id != 0 && !inner.sessions.contains_key(&id) {
                    break id;
                }
            };
            inner.bytes += bytes;
            inner.sessions.insert(id, Session { next_epoch: 1, partitions, last_used: now, owner, bytes });
            return Ok((Mode::Full { id }, requested));
        }
        let Some(session) = inner.sessions.get_mut(&req.session_id) else {
            return Err(ResponseError::FetchSessionIdNotFound.code());
        };
        if session.next_epoch != req.session_epoch {
            return Err(ResponseError::InvalidFetchSessionEpoch.code());
        }
        for f in &req.forgotten_topics_data {
            for &p in &f.partitions {
                session.partitions.shift_remove(&key(version, &f.topic, f.topic_id, p));
            }
        }
        for (k, w) in requested {
            session.partitions.entry(k).and_modify(|(old, _)| *old = w).or_insert((w, Answered::NONE));
        }
        if session.partitions.len() > SESSION_PARTITIONS_MAX {
            inner.remove(req.session_id);
            return Err(ResponseError::FetchSessionIdNotFound.code());
        }
        if session.partitions.is_empty() {
            inner.remove(req.session_id);
            return Ok((Mode::Sessionless, Vec::new()));
        }
        session.next_epoch = next_epoch(session.next_epoch);
        session.last_used = now;
        session.owner = owner;
        let (old, new) = (session.bytes, estimate(&session.partitions));
        session.bytes = new;
        let wanted = session.partitions.iter().map(|(k, (w, _))| (k.clone(), *w)).collect();
        inner.bytes = inner.bytes - old + new;
        if new > old && (new > self.max_bytes || !inner.make_room(req.session_id, 0, 0, self.max_sessions, self.max_bytes)) {
            // Grown past the bytes alone: the client starts over (sessionless, as it is too big).
            inner.remove(req.session_id);
            return Err(ResponseError::FetchSessionIdNotFound.code());
        }
        debug_assert_eq!(inner.bytes, inner.sessions.values().map(|s| s.bytes).sum::<usize>());
        Ok((Mode::Incremental { id: req.session_id, epoch: req.session_epoch }, wanted))
    }

    /// Records what was answered and says, per outcome, whether it goes into the response: all
    /// of them for full fetches; for incremental ones only partitions with records, an error or
    /// a changed high watermark, last stable offset or log start offset (KIP-227). Partitions
    /// that returned records move to the end of the session's order, so a partition with a lot
    /// of data cannot starve the others of the response's byte budget.
    pub fn finish(&self, mode: &Mode, outcomes: &[Outcome]) -> Vec<bool> {
        let (id, incremental) = match mode {
            Mode::Sessionless => return vec![true; outcomes.len()],
            Mode::Full { id } => (*id, false),
            Mode::Incremental { id, .. } => (*id, true),
        };
        let mut inner = self.lock();
        let Some(session) = inner.sessions.get_mut(&id) else {
            // Evicted meanwhile: the client learns it on its next request.
            return vec![true; outcomes.len()];
        };
        let mut include = Vec::with_capacity(outcomes.len());
        for o in outcomes {
            let Some((_, answered)) = session.partitions.get_mut(&o.key) else {
                include.push(true);
                continue;
            };
            let changed = *answered != o.answered;
            *answered = o.answered;
            include.push(!incremental || changed || o.has_records || o.has_error);
            if incremental
                && o.has_records
                && let Some(i) = session.partitions.get_index_of(&o.key)
            {
                let last = session.partitions.len() - 1;
                session.partitions.move_index(i, last);
            }
        }
        include
    }
}

/// Epochs wrap from i32::MAX to 1 (0 and -1 have their own meanings).
fn next_epoch(epoch: i32) -> i32 {
    if epoch == i32::MAX { 1 } else { epoch + 1 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic, ForgottenTopic};
    use kafka_protocol::protocol::StrBytes;

    fn peer(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn begin(s: &FetchSessions, version: i16, req: &FetchRequest) -> Begun {
        s.begin(version, req, peer(1))
    }

    fn name(s: &str) -> TopicName {
        TopicName(StrBytes::from_string(s.to_string()))
    }

    fn request(id: i32, epoch: i32, parts: &[(&str, i32, i64)], forget: &[(&str, i32)]) -> FetchRequest {
        let mut topics: Vec<FetchTopic> = Vec::new();
        for (t, p, o) in parts {
            let part = FetchPartition::default().with_partition(*p).with_fetch_offset(*o).with_partition_max_bytes(1 << 20);
            match topics.iter_mut().find(|x| x.topic == name(t)) {
                Some(x) => x.partitions.push(part),
                None => topics.push(FetchTopic::default().with_topic(name(t)).with_partitions(vec![part])),
            }
        }
        let forgotten = forget.iter().map(|(t, p)| ForgottenTopic::default().with_topic(name(t)).with_partitions(vec![*p])).collect();
        FetchRequest::default()
            .with_session_id(id)
            .with_session_epoch(epoch)
            .with_topics(topics)
            .with_forgotten_topics_data(forgotten)
    }

    fn outcome(t: &str, p: i32, hw: i64, records: bool) -> Outcome {
        Outcome {
            key: PartitionKey { topic: name(t), topic_id: Uuid::nil(), partition: p },
            answered: Answered { high_watermark: hw, last_stable_offset: hw, log_start_offset: 0 },
            has_records: records,
            has_error: false,
        }
    }

    #[test]
    fn full_then_incremental_answers_only_changes_and_keeps_positions() {
        let s = FetchSessions::default();
        let (mode, wanted) = begin(&s, 12, &request(0, 0, &[("a", 0, 5), ("a", 1, 7), ("b", 0, 0)], &[])).unwrap();
        let Mode::Full { id } = mode else { panic!("{mode:?}") };
        assert_eq!(wanted.len(), 3);
        let all = [outcome("a", 0, 10, true), outcome("a", 1, 7, false), outcome("b", 0, 0, false)];
        assert_eq!(s.finish(&mode, &all), vec![true, true, true]);

        // Incremental: a-0 moved on; nothing else said. Every partition is read, at the
        // remembered positions, records-holding a-0 last (it returned records before).
        let (mode, wanted) = begin(&s, 12, &request(id, 1, &[("a", 0, 10)], &[])).unwrap();
        assert_eq!(mode, Mode::Incremental { id, epoch: 1 });
        let offsets: Vec<_> = wanted.iter().map(|(k, w)| (k.partition, w.fetch_offset)).collect();
        assert_eq!(offsets, vec![(0, 10), (1, 7), (0, 0)]);
        let answered = [outcome("a", 0, 10, false), outcome("a", 1, 9, false), outcome("b", 0, 0, false)];
        // a-1's high watermark moved: answered; the others are unchanged: left out.
        assert_eq!(s.finish(&mode, &answered), vec![false, true, false]);

        // Wrong epoch, unknown session.
        assert_eq!(begin(&s, 12, &request(id, 1, &[], &[])), Err(ResponseError::InvalidFetchSessionEpoch.code()));
        assert_eq!(begin(&s, 12, &request(id + 1, 2, &[], &[])), Err(ResponseError::FetchSessionIdNotFound.code()));

        // Forget b-0; then forget the rest: the session closes.
        let (_, wanted) = begin(&s, 12, &request(id, 2, &[], &[("b", 0)])).unwrap();
        assert_eq!(wanted.len(), 2);
        let (mode, wanted) = begin(&s, 12, &request(id, 3, &[], &[("a", 0), ("a", 1)])).unwrap();
        assert_eq!((mode, wanted.len()), (Mode::Sessionless, 0));
        assert!(s.is_empty());
    }

    #[test]
    fn final_epoch_closes_and_old_versions_and_overflow_are_sessionless() {
        let s = FetchSessions::new(2, usize::MAX);
        let (Mode::Full { id }, _) = begin(&s, 12, &request(0, 0, &[("a", 0, 0)], &[])).unwrap() else { panic!() };
        assert_eq!(begin(&s, 12, &request(id, FINAL_EPOCH, &[("a", 0, 0)], &[])).unwrap().0, Mode::Sessionless);
        assert!(s.is_empty());
        assert_eq!(begin(&s, 6, &request(0, 0, &[("a", 0, 0)], &[])).unwrap().0, Mode::Sessionless);
        assert_eq!(begin(&s, 12, &request(0, FINAL_EPOCH, &[("a", 0, 0)], &[])).unwrap().0, Mode::Sessionless);

        // A third session evicts the least recently used one.
        let open = |s: &FetchSessions| match begin(s, 12, &request(0, 0, &[("a", 0, 0)], &[])).unwrap().0 {
            Mode::Full { id } => id,
            m => panic!("{m:?}"),
        };
        let (first, second) = (open(&s), open(&s));
        begin(&s, 12, &request(first, 1, &[], &[])).unwrap();
        let _third = open(&s);
        assert_eq!(s.len(), 2);
        assert_eq!(begin(&s, 12, &request(second, 1, &[], &[])), Err(ResponseError::FetchSessionIdNotFound.code()));
        assert!(begin(&s, 12, &request(first, 2, &[], &[])).is_ok());
    }

    #[test]
    fn epochs_wrap_past_the_maximum() {
        assert_eq!(next_epoch(i32::MAX), 1);
        assert_eq!(next_epoch(1), 2);
    }

    #[test]
    fn sessions_stay_under_their_bytes_and_die_with_their_connection() {
        let parts: Vec<(&str, i32, i64)> = (0..100).map(|p| ("a", p, 0)).collect();
        let one = estimate(
            &(0..100)
                .map(|p| {
                    (
                        PartitionKey { topic: name("a"), topic_id: Uuid::nil(), partition: p },
                        (Wanted { fetch_offset: 0, partition_max_bytes: 0 }, Answered::NONE),
                    )
                })
                .collect(),
        );
        // Room for three sessions of 100 partitions.
        let s = FetchSessions::new(1000, 3 * one + one / 2);
        let mut ids = Vec::new();
        for port in 0..10 {
            let (Mode::Full { id }, _) = s.begin(12, &request(0, 0, &parts, &[]), peer(port)).unwrap() else { panic!() };
            ids.push(id);
            assert!(s.bytes() <= 3 * one + one / 2, "{} bytes", s.bytes());
        }
        assert_eq!(s.len(), 3);
        // The oldest were evicted, the newest live.
        assert_eq!(s.begin(12, &request(ids[0], 1, &[], &[]), peer(0)), Err(ResponseError::FetchSessionIdNotFound.code()));
        assert!(s.begin(12, &request(ids[9], 1, &[], &[]), peer(9)).is_ok());
        // A session bigger than all the room is not opened: sessionless.
        let many: Vec<(&str, i32, i64)> = (0..400).map(|p| ("a", p, 0)).collect();
        assert_eq!(s.begin(12, &request(0, 0, &many, &[]), peer(20)).unwrap().0, Mode::Sessionless);
        assert_eq!(s.len(), 3, "a session too big to open evicts nobody");
        // Growing one past the room evicts the others; past all of it, the grown one itself.
        let (mode, _) = s.begin(12, &request(ids[9], 2, &many[..300], &[]), peer(9)).unwrap();
        assert_eq!(mode, Mode::Incremental { id: ids[9], epoch: 2 });
        assert_eq!(s.len(), 1);
        assert_eq!(s.begin(12, &request(ids[9], 3, &many, &[]), peer(9)), Err(ResponseError::FetchSessionIdNotFound.code()));
        assert_eq!((s.len(), s.bytes()), (0, 0));
        // Closing a connection closes the sessions it used last, only those.
        let (Mode::Full { id: a }, _) = s.begin(12, &request(0, 0, &parts, &[]), peer(30)).unwrap() else { panic!() };
        let (Mode::Full { id: b }, _) = s.begin(12, &request(0, 0, &parts, &[]), peer(31)).unwrap() else { panic!() };
        s.begin(12, &request(b, 1, &[], &[]), peer(30)).unwrap();
        let (Mode::Full { .. }, _) = s.begin(12, &request(0, 0, &parts, &[]), peer(32)).unwrap() else { panic!() };
        s.close_owner(peer(30));
        assert_eq!(s.len(), 1);
        assert_eq!(s.begin(12, &request(a, 1, &[], &[]), peer(30)), Err(ResponseError::FetchSessionIdNotFound.code()));
        s.close_owner(peer(32));
        assert_eq!((s.len(), s.bytes()), (0, 0));
    }
}
