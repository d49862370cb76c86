//! Users: SCRAM credentials, as Kafka's AlterUserScramCredentials and
//! DescribeUserScramCredentials define them. The store holds the salt, the iteration count and
//! the derived keys, never a password; every read goes to the store (no cache to go stale when
//! `sidestream user add` writes to it directly).

use std::collections::BTreeMap;

use super::Controller;
use crate::api::ControllerError;
use crate::api::scram::{ITERATIONS_MAX, ITERATIONS_MIN, ScramAlteration, ScramCredential, ScramMechanism, ScramUser};

/// Longest user name accepted (Kafka has no limit; the store's keys want one).
pub const USER_NAME_BYTES_MAX: usize = 256;

impl Controller {
    pub fn scram_credential(&self, user: &str, mechanism: ScramMechanism) -> Result<Option<ScramCredential>, ControllerError> {
        let found = self.store.scram_credentials(Some(user)).map_err(|e| self.store_error(e))?;
        Ok(found.into_iter().find(|(_, c)| c.mechanism == mechanism).map(|(_, c)| c))
    }

    /// Applies the alterations that are valid, all in one store transaction; the answer has one
    /// result per alteration, in order. A user named twice in one request fails entirely, as
    /// in Kafka (DUPLICATE_RESOURCE).
    pub fn alter_scram_credentials(&self, alterations: &[ScramAlteration]) -> Result<Vec<Result<(), ControllerError>>, ControllerError> {
        let mut mentions: BTreeMap<(&str, ScramMechanism), usize> = BTreeMap::new();
        for a in alterations {
            let m = match a {
                ScramAlteration::Upsert { credential, .. } => credential.mechanism,
                ScramAlteration::Delete { mechanism, .. } => *mechanism,
            };
            *mentions.entry((a.user(), m)).or_default() += 1;
        }
        let existing = self.store.scram_credentials(None).map_err(|e| self.store_error(e))?;
        let mut upserts = Vec::new();
        let mut deletes = Vec::new();
        let results = alterations
            .iter()
            .map(|a| {
                let user = a.user();
                if user.is_empty() || user.len() > USER_NAME_BYTES_MAX {
                    return Err(ControllerError::UnacceptableCredential(format!("user names have 1 to {USER_NAME_BYTES_MAX} bytes")));
                }
                match a {
                    ScramAlteration::Upsert { credential, .. } => {
                        if mentions[&(user, credential.mechanism)] > 1 {
                            return Err(ControllerError::DuplicateResource(format!("credential for user {user} altered twice")));
                        }
                        if !(ITERATIONS_MIN..=ITERATIONS_MAX).contains(&credential.iterations) {
                            return Err(ControllerError::UnacceptableCredential(format!(
                                "iterations must be between {ITERATIONS_MIN} and {ITERATIONS_MAX}"
                            )));
                        }
                        if credential.salt.is_empty() {
                            return Err(ControllerError::UnacceptableCredential("the salt is empty".into()));
                        }
                        upserts.push((user.to_string(), credential.clone()));
                        Ok(())
                    }
                    ScramAlteration::Delete { mechanism, .. } => {
                        if mentions[&(user, *mechanism)] > 1 {
                            return Err(ControllerError::DuplicateResource(format!("credential for user {user} altered twice")));
                        }
                        if !existing.iter().any(|(u, c)| u == user && c.mechanism == *mechanism) {
                            return Err(ControllerError::ResourceNotFound(format!(
                                "Attempt to delete a user credential that does not exist: {user} {}",
                                mechanism.name()
                            )));
                        }
                        deletes.push((user.to_string(), *mechanism));
                        Ok(())
                    }
                }
            })
            .collect();
        if !upserts.is_empty() || !deletes.is_empty() {
            self.store.alter_scram_credentials(&upserts, &deletes).map_err(|e| self.store_error(e))?;
        }
        Ok(results)
    }

    /// The users named (or all users with credentials), with their mechanisms and iterations.
    /// A named user without credentials is listed with none (the handler answers
    /// RESOURCE_NOT_FOUND for it).
    pub fn describe_scram_credentials(&self, users: Option<&[String]>) -> Result<Vec<ScramUser>, ControllerError> {
        let all = self.store.scram_credentials(None).map_err(|e| self.store_error(e))?;
        let mut by_user: BTreeMap<String, Vec<(ScramMechanism, u32)>> = BTreeMap::new();
        for (user, c) in all {
            by_user.entry(user).or_default().push((c.mechanism, c.iterations));
        }
        Ok(match users {
            None => by_user.into_iter().map(|(user, credentials)| ScramUser { user, credentials }).collect(),
            Some(names) => names
                .iter()
                .map(|u| ScramUser { user: u.clone(), credentials: by_user.get(u).cloned().unwrap_or_default() })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::clock::{SeededEntropy, SystemClock};
    use crate::config::TopicsConfig;
    use crate::controller::store::sqlite::SqliteStore;

    fn cred(m: ScramMechanism, iterations: u32) -> ScramCredential {
        ScramCredential::from_password(m, "pw", b"salt".to_vec(), iterations)
    }

    #[test]
    fn credentials_are_upserted_described_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("c.db")).unwrap());
        let c =
            Controller::open(store, TopicsConfig::default(), 86_400_000, Arc::new(SystemClock), Arc::new(SeededEntropy::new(3))).unwrap();
        let up = |user: &str, m, i| ScramAlteration::Upsert { user: user.into(), credential: cred(m, i) };
        let r = c
            .alter_scram_credentials(&[up("alice", ScramMechanism::Sha512, 4096), up("bob", ScramMechanism::Sha256, 100)])
            .unwrap();
        assert!(r[0].is_ok());
        assert!(matches!(r[1], Err(ControllerError::UnacceptableCredential(_))));
        assert_eq!(c.scram_credential("alice", ScramMechanism::Sha512).unwrap(), Some(cred(ScramMechanism::Sha512, 4096)));
        assert_eq!(c.scram_credential("alice", ScramMechanism::Sha256).unwrap(), None);
        assert_eq!(c.scram_credential("bob", ScramMechanism::Sha256).unwrap(), None);
        let all = c.describe_scram_credentials(None).unwrap();
        assert_eq!(all, vec![ScramUser { user: "alice".into(), credentials: vec![(ScramMechanism::Sha512, 4096)] }]);
        let named = c.describe_scram_credentials(Some(&["nobody".to_string()])).unwrap();
        assert!(named[0].credentials.is_empty());
        // Twice in one request: both refused; deleting what is not there: RESOURCE_NOT_FOUND.
        let twice = c
            .alter_scram_credentials(&[up("carol", ScramMechanism::Sha256, 4096), up("carol", ScramMechanism::Sha256, 4096)])
            .unwrap();
        assert!(twice.iter().all(|r| matches!(r, Err(ControllerError::DuplicateResource(_)))));
        let del = |user: &str, m| ScramAlteration::Delete { user: user.into(), mechanism: m };
        let r = c.alter_scram_credentials(&[del("alice", ScramMechanism::Sha512), del("alice", ScramMechanism::Sha256)]).unwrap();
        assert!(r[0].is_ok());
        assert!(matches!(r[1], Err(ControllerError::ResourceNotFound(_))));
        assert!(c.describe_scram_credentials(None).unwrap().is_empty());
    }
}
