//! The controller's ACLs: the set every agent authorizes from, and the calls behind Kafka's
//! CreateAcls, DeleteAcls and DescribeAcls.
//!
//! The set lives in memory ([`AclSet`], whole, behind an `Arc` that readers clone) over the
//! store's `acls` table: a change is written to the store first, in one transaction, then
//! replaces the set with a new version (+1). Changes are serialized by their own lock, so they
//! never wait for commits. Agents see the version in the controller service's snapshots and
//! `Watch` events and load the set again when it moved (`agent::client::remote`); an embedded
//! controller's agent reads [`Controller::acls`] directly.
//!
//! Kafka's semantics: a creation of an existing binding succeeds and changes nothing; each
//! creation is validated on its own (INVALID_REQUEST for that one); a deletion answers, per
//! filter, every binding the filter matched when the request came (a binding matched by two
//! filters is reported by both), all deleted in one store transaction.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::Controller;
use crate::api::ControllerError;
use crate::api::acl::{AclBinding, AclFilter, AclSet};

impl Controller {
    /// The current ACLs (cheap: one `Arc`).
    pub fn acls(&self) -> Arc<AclSet> {
        self.acls.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The bindings `filter` matches, sorted.
    pub fn describe_acls(&self, filter: &AclFilter) -> Vec<AclBinding> {
        self.acls().bindings.iter().filter(|b| filter.matches(b)).cloned().collect()
    }

    /// Creates `bindings`: each one's answer (INVALID_REQUEST for a binding Kafka would refuse),
    /// or an error for all of them when the store fails.
    pub fn create_acls(&self, bindings: &[AclBinding]) -> Result<Vec<Result<(), ControllerError>>, ControllerError> {
        let results: Vec<Result<(), ControllerError>> =
            bindings.iter().map(|b| b.validate().map_err(ControllerError::InvalidRequest)).collect();
        let _one = self.acl_write.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.acls();
        let existing: BTreeSet<&AclBinding> = current.bindings.iter().collect();
        let new: BTreeSet<AclBinding> =
            bindings.iter().zip(&results).filter(|(b, r)| r.is_ok() && !existing.contains(b)).map(|(b, _)| b.clone()).collect();
        if !new.is_empty() {
            let new: Vec<AclBinding> = new.into_iter().collect();
            self.store.alter_acls(&new, &[]).map_err(|e| self.store_error(e))?;
            let mut all: BTreeSet<AclBinding> = current.bindings.iter().cloned().collect();
            all.extend(new.iter().cloned());
            self.replace_acls(&current, all);
            for b in &new {
                tracing::info!(acl = %b, "ACL created");
            }
        }
        Ok(results)
    }

    /// Deletes every binding any of `filters` matches: per filter, the bindings it matched.
    pub fn delete_acls(&self, filters: &[AclFilter]) -> Result<Vec<Result<Vec<AclBinding>, ControllerError>>, ControllerError> {
        let _one = self.acl_write.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.acls();
        let matched: Vec<Vec<AclBinding>> =
            filters.iter().map(|f| current.bindings.iter().filter(|b| f.matches(b)).cloned().collect()).collect();
        let doomed: BTreeSet<&AclBinding> = matched.iter().flatten().collect();
        if !doomed.is_empty() {
            let delete: Vec<AclBinding> = doomed.iter().map(|b| (*b).clone()).collect();
            self.store.alter_acls(&[], &delete).map_err(|e| self.store_error(e))?;
            let kept = current.bindings.iter().filter(|b| !doomed.contains(b)).cloned().collect();
            self.replace_acls(&current, kept);
            for b in &delete {
                tracing::info!(acl = %b, "ACL deleted");
            }
        }
        Ok(matched.into_iter().map(Ok).collect())
    }

    /// The set after a change of `previous` (called under `acl_write`, after the store).
    fn replace_acls(&self, previous: &AclSet, bindings: BTreeSet<AclBinding>) {
        let next = AclSet { version: previous.version.wrapping_add(1), bindings: bindings.into_iter().collect() };
        *self.acls.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::api::acl::{AclBinding, AclFilter, AclOperation, AclPermission, PatternType, ResourceType, WILDCARD};
    use crate::api::{ControllerError, TopicKey};
    use crate::clock::{SeededEntropy, SystemClock};
    use crate::config::TopicsConfig;
    use crate::controller::Controller;
    use crate::controller::store::sqlite::SqliteStore;

    fn open(path: &std::path::Path) -> Controller {
        let store = Arc::new(SqliteStore::open(path).unwrap());
        Controller::open(store, TopicsConfig::default(), 60_000, Arc::new(SystemClock), Arc::new(SeededEntropy::new(3))).unwrap()
    }

    fn acl(name: &str, principal: &str, op: AclOperation) -> AclBinding {
        AclBinding {
            resource_type: ResourceType::Topic,
            resource_name: name.into(),
            pattern_type: PatternType::Literal,
            principal: principal.into(),
            host: WILDCARD.into(),
            operation: op,
            permission: AclPermission::Allow,
        }
    }

    #[test]
    fn created_acls_survive_a_restart_and_deletes_answer_per_filter() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let c = open(&path);
        let v0 = c.acls().version;
        let read = acl("a", "User:alice", AclOperation::Read);
        let write = acl("a", "User:bob", AclOperation::Write);
        let bad = AclBinding { pattern_type: PatternType::Match, ..read.clone() };
        let results = c.create_acls(&[read.clone(), bad, write.clone(), read.clone()]).unwrap();
        assert!(results[0].is_ok() && results[2].is_ok() && results[3].is_ok(), "{results:?}");
        assert!(matches!(results[1], Err(ControllerError::InvalidRequest(_))));
        let set = c.acls();
        assert_eq!(set.version, v0.wrapping_add(1));
        assert_eq!(set.bindings.len(), 2);
        // Creating what exists changes nothing, not even the version.
        c.create_acls(std::slice::from_ref(&read)).unwrap();
        assert_eq!(c.acls().version, set.version);
        drop(c);

        let c = open(&path);
        assert_eq!(c.acls().bindings, set.bindings, "loaded from the store");
        let alice = AclFilter { principal: Some("User:alice".into()), ..AclFilter::any() };
        assert_eq!(c.describe_acls(&alice), vec![read.clone()]);
        let topic_a = AclFilter { resource_name: Some("a".into()), ..AclFilter::any() };
        let none = AclFilter { resource_name: Some("zzz".into()), ..AclFilter::any() };
        let deleted = c.delete_acls(&[alice, topic_a, none]).unwrap();
        assert_eq!(deleted[0].as_ref().unwrap(), &vec![read.clone()]);
        assert_eq!(deleted[1].as_ref().unwrap(), &vec![read, write], "both filters report the binding they matched");
        assert!(deleted[2].as_ref().unwrap().is_empty());
        assert!(c.acls().bindings.is_empty());
        drop(c);
        assert!(open(&path).acls().bindings.is_empty(), "deleted in the store");
    }

    #[test]
    fn deleting_a_topic_leaves_its_acls_as_kafka_does() {
        let dir = tempfile::tempdir().unwrap();
        let c = open(&dir.path().join("c.db"));
        let req = crate::api::CreateTopic {
            name: "t".into(),
            partitions: 1,
            replication_factor: -1,
            configs: Default::default(),
            validate_only: false,
        };
        c.create_topic(&req).unwrap();
        c.create_acls(&[acl("t", "User:alice", AclOperation::Read)]).unwrap();
        c.delete_topic(TopicKey::Name("t".into()).as_ref()).unwrap();
        assert_eq!(c.acls().bindings.len(), 1);
    }
}
