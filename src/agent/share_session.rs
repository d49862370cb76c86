//! Share sessions (KIP-932): the partitions a share consumer fetches from this agent, so that
//! after its first ShareFetch it names only what changed.
//!
//! A session belongs to (group id, member id) and has an epoch, as in Kafka:
//!
//! | epoch | ShareFetch                                             | ShareAcknowledge              |
//! |-------|--------------------------------------------------------|-------------------------------|
//! | 0     | opens a session (replacing the member's old one)       | INVALID_SHARE_SESSION_EPOCH   |
//! | n > 0 | uses the session, whose next epoch must be n           | the same                      |
//! | -1    | closes the session (acknowledges, fetches nothing)     | closes the session            |
//!
//! An unknown session gets SHARE_SESSION_NOT_FOUND and a wrong epoch INVALID_SHARE_SESSION_EPOCH:
//! the client opens a new session. Sessions live in memory: at most [`SHARE_SESSIONS_MAX`] of
//! them (a new one past that evicts the least recently used, whose client starts over) and
//! [`SESSION_PARTITIONS_MAX`] partitions each. Losing a session costs its client one full
//! request, never a record: what records a member holds is the controller's state, not this.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use tokio::time::Instant;
use uuid::Uuid;

/// Sessions kept at once (Kafka's `group.share.max.share.sessions` is of this order).
pub const SHARE_SESSIONS_MAX: usize = 2_000;
/// Partitions one session may hold.
pub const SESSION_PARTITIONS_MAX: usize = 10_000;
/// The epoch that closes a session.
pub const FINAL_EPOCH: i32 = -1;
/// The epoch that opens one.
pub const INITIAL_EPOCH: i32 = 0;

/// Why a session cannot be used (Kafka's error codes, by the caller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionError {
    NotFound,
    InvalidEpoch,
    TooManyPartitions,
}

struct Session {
    /// The epoch the next request must carry.
    next_epoch: i32,
    partitions: BTreeSet<(Uuid, i32)>,
    used: Instant,
}

#[derive(Default)]
pub struct ShareSessions {
    sessions: Mutex<HashMap<(String, String), Session>>,
}

fn next(epoch: i32) -> i32 {
    if epoch == i32::MAX { 1 } else { epoch + 1 }
}

impl ShareSessions {
    /// A ShareFetch's session step: `add` partitions join it, `forget` ones leave it. Returns
    /// the partitions to fetch (none when the request closes the session).
    pub fn fetch(
        &self,
        group_id: &str,
        member_id: &str,
        epoch: i32,
        add: &[(Uuid, i32)],
        forget: &[(Uuid, i32)],
    ) -> Result<Vec<(Uuid, i32)>, SessionError> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let key = (group_id.to_string(), member_id.to_string());
        let now = Instant::now();
        match epoch {
            INITIAL_EPOCH => {
                if add.len() > SESSION_PARTITIONS_MAX {
                    return Err(SessionError::TooManyPartitions);
                }
                if !sessions.contains_key(&key)
                    && sessions.len() >= SHARE_SESSIONS_MAX
                    && let Some(oldest) = sessions.iter().min_by_key(|(_, s)| s.used).map(|(k, _)| k.clone())
                {
                    sessions.remove(&oldest);
                }
                let partitions: BTreeSet<(Uuid, i32)> = add.iter().copied().collect();
                let out = partitions.iter().copied().collect();
                sessions.insert(key, Session { next_epoch: 1, partitions, used: now });
                Ok(out)
            }
            FINAL_EPOCH => {
                sessions.remove(&key).ok_or(SessionError::NotFound)?;
                Ok(Vec::new())
            }
            n if n > 0 => {
                let s = sessions.get_mut(&key).ok_or(SessionError::NotFound)?;
                if s.next_epoch != n {
                    return Err(SessionError::InvalidEpoch);
                }
                let mut partitions = s.partitions.clone();
                partitions.extend(add.iter().copied());
                for f in forget {
                    partitions.remove(f);
                }
                if partitions.len() > SESSION_PARTITIONS_MAX {
                    return Err(SessionError::TooManyPartitions);
                }
                s.partitions = partitions;
                s.next_epoch = next(n);
                s.used = now;
                Ok(s.partitions.iter().copied().collect())
            }
            _ => Err(SessionError::InvalidEpoch),
        }
    }

    /// A ShareAcknowledge's session step (it must name an open session, or close it).
    pub fn acknowledge(&self, group_id: &str, member_id: &str, epoch: i32) -> Result<(), SessionError> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let key = (group_id.to_string(), member_id.to_string());
        match epoch {
            FINAL_EPOCH => sessions.remove(&key).map(|_| ()).ok_or(SessionError::NotFound),
            n if n > 0 => {
                let s = sessions.get_mut(&key).ok_or(SessionError::NotFound)?;
                if s.next_epoch != n {
                    return Err(SessionError::InvalidEpoch);
                }
                s.next_epoch = next(n);
                s.used = Instant::now();
                Ok(())
            }
            _ => Err(SessionError::InvalidEpoch),
        }
    }

    pub fn len(&self) -> usize {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sessions_follow_kafkas_epochs() {
        let s = ShareSessions::default();
        let (a, b) = ((Uuid::from_u128(1), 0), (Uuid::from_u128(1), 1));
        assert_eq!(s.fetch("g", "m", 1, &[a], &[]), Err(SessionError::NotFound));
        assert_eq!(s.fetch("g", "m", 0, &[a], &[]), Ok(vec![a]));
        assert_eq!(s.fetch("g", "m", 1, &[b], &[]), Ok(vec![a, b]));
        assert_eq!(s.fetch("g", "m", 1, &[], &[]), Err(SessionError::InvalidEpoch), "epoch 1 was used");
        assert_eq!(s.acknowledge("g", "m", 2), Ok(()));
        assert_eq!(s.fetch("g", "m", 3, &[], &[a]), Ok(vec![b]));
        assert_eq!(s.acknowledge("g", "m", 0), Err(SessionError::InvalidEpoch));
        assert_eq!(s.fetch("g", "m", -1, &[], &[]), Ok(vec![]));
        assert_eq!(s.acknowledge("g", "m", -1), Err(SessionError::NotFound));
    }

    #[tokio::test]
    async fn the_least_recently_used_session_makes_room() {
        let s = ShareSessions::default();
        for i in 0..SHARE_SESSIONS_MAX + 5 {
            s.fetch("g", &i.to_string(), 0, &[], &[]).unwrap();
        }
        assert_eq!(s.len(), SHARE_SESSIONS_MAX);
        let too_many: Vec<(Uuid, i32)> = (0..=SESSION_PARTITIONS_MAX as i32).map(|p| (Uuid::nil(), p)).collect();
        assert_eq!(s.fetch("g", "x", 0, &too_many, &[]), Err(SessionError::TooManyPartitions));
    }
}
