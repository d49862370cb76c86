//! Topic config changes (AlterConfigs, IncrementalAlterConfigs): each topic's new set computed
//! from its current one ([`crate::api::configs::apply`]), validated whole as at CreateTopics,
//! written in one store transaction, then swapped into memory, where retention and the agents'
//! topic metadata read it.
//!
//! Must not touch: Kafka wire types, the broker's own configs (the agent's).

use std::sync::Arc;

use crate::api::configs::{TopicConfigChange, apply};
use crate::api::{ControllerError, TopicMeta, TopicRef};

use super::{Controller, validate_configs};

/// Topics changed per call (a request's resources; Kafka sets no bound).
pub const TOPIC_CONFIG_CHANGES_MAX: usize = 10_000;

impl Controller {
    /// Blocking. Each change's topic with its new configs, or why it was refused
    /// (UNKNOWN_TOPIC_OR_PARTITION, INVALID_CONFIG); the accepted ones are written together.
    /// `validate_only`: answered the same, nothing written.
    pub fn alter_topic_configs(
        &self,
        changes: &[TopicConfigChange],
        validate_only: bool,
    ) -> Result<Vec<Result<Arc<TopicMeta>, ControllerError>>, ControllerError> {
        if changes.len() > TOPIC_CONFIG_CHANGES_MAX {
            return Err(ControllerError::InvalidRequest(format!("more than {TOPIC_CONFIG_CHANGES_MAX} topics in one config change")));
        }
        // Under the write lock: no topic is created, deleted or changed between the read of
        // its configs and the swap.
        let _w = self.lock_writes();
        let results: Vec<Result<Arc<TopicMeta>, ControllerError>> = changes
            .iter()
            .map(|c| {
                let meta = self.topic(TopicRef::Name(&c.topic)).ok_or(ControllerError::UnknownTopicOrPartition)?;
                let configs = apply(&meta.configs, c)?;
                validate_configs(&configs)?;
                Ok(Arc::new(TopicMeta { configs, ..TopicMeta::clone(&meta) }))
            })
            .collect();
        if validate_only {
            return Ok(results);
        }
        let writes: Vec<_> = results.iter().flatten().map(|t| (t.id, t.configs.clone())).collect();
        if writes.is_empty() {
            return Ok(results);
        }
        self.store.set_topic_configs(&writes).map_err(|e| self.store_error(e))?;
        let mut s = self.write();
        for t in results.iter().flatten() {
            // The topic cannot have gone: deletion takes the write lock held here.
            assert!(s.by_id.contains_key(&t.id), "topic {} changed its configs while deleted", t.name);
            s.by_name.insert(t.name.clone(), t.clone());
            s.by_id.insert(t.id, t.clone());
        }
        Ok(results)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::api::CreateTopic;
    use crate::api::configs::{ConfigOp, ConfigOpKind};

    use super::super::open_for_test as open;

    fn set(topic: &str, kv: &[(&str, &str)]) -> TopicConfigChange {
        let ops = kv
            .iter()
            .map(|(k, v)| ConfigOp { name: k.to_string(), op: ConfigOpKind::Set, value: Some(v.to_string()) })
            .collect();
        TopicConfigChange { topic: topic.into(), replace: false, ops }
    }

    #[test]
    fn changes_are_validated_written_and_seen_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let c = open(&path);
        let create =
            CreateTopic { name: "t".into(), partitions: 1, replication_factor: -1, configs: BTreeMap::new(), validate_only: false };
        c.create_topic(&create).unwrap();
        let got = c
            .alter_topic_configs(&[set("t", &[("retention.ms", "1000")]), set("nope", &[]), set("t", &[("retention.ms", "x")])], true)
            .unwrap();
        assert_eq!(got[0].as_ref().unwrap().configs["retention.ms"], "1000");
        assert_eq!(got[1], Err(ControllerError::UnknownTopicOrPartition));
        assert!(matches!(&got[2], Err(ControllerError::InvalidConfig(m)) if m.contains("Not a number of type LONG")));
        assert!(c.topic(TopicRef::Name("t")).unwrap().configs.is_empty(), "validate_only changes nothing");

        let got = c.alter_topic_configs(&[set("t", &[("retention.ms", "1000"), ("cleanup.policy", "compact")])], false).unwrap();
        assert!(got[0].is_ok());
        assert_eq!(c.topic(TopicRef::Name("t")).unwrap().configs["cleanup.policy"], "compact");
        let unknown = c.alter_topic_configs(&[set("t", &[("foo", "1")])], false).unwrap();
        assert_eq!(unknown[0], Err(ControllerError::InvalidConfig("Unknown topic config name: foo".into())));
        drop(c);
        let c = open(&path);
        let t = c.topic(TopicRef::Name("t")).unwrap();
        assert_eq!(t.configs, BTreeMap::from([("cleanup.policy".into(), "compact".into()), ("retention.ms".into(), "1000".into())]));
    }
}
