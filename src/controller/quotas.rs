//! Client quotas, as Kafka's `ClientQuotaControlManager` keeps them: AlterClientQuotas checks
//! each entity and its keys, writes the valid changes in one store transaction, then replaces
//! the in-memory [`QuotaSet`] whole with the next version; DescribeClientQuotas filters it.
//! Agents hold a copy of the set (`all_client_quotas`) and enforce it (`agent::quota`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use super::Controller;
use super::store::MetadataStore;
use crate::api::ControllerError;
use crate::api::quota::{QuotaAlteration, QuotaEntity, QuotaEntry, QuotaFilter, QuotaKey, QuotaSet};

/// The controller's quotas: the set agents load, and the lock that orders changes.
pub struct Quotas {
    set: RwLock<Arc<QuotaSet>>,
    /// Serializes changes (store, then memory), apart from the commits' `write_lock`.
    write: Mutex<()>,
}

impl Quotas {
    /// The stored quotas. Rows this release cannot read (a later release's key) are left out,
    /// with a warning.
    pub fn load(store: &dyn MetadataStore) -> Result<Self, ControllerError> {
        let mut by_entity: BTreeMap<QuotaEntity, BTreeMap<QuotaKey, f64>> = BTreeMap::new();
        for (entity, key, value) in store.client_quotas()? {
            match (QuotaEntity::from_key(&entity), QuotaKey::from_name(&key)) {
                (Some(e), Some(k)) => {
                    by_entity.entry(e).or_default().insert(k, value);
                }
                _ => tracing::warn!(entity, key, "a stored client quota this release does not know is ignored"),
            }
        }
        let entries = by_entity.into_iter().map(|(entity, values)| QuotaEntry { entity, values }).collect();
        Ok(Self { set: RwLock::new(Arc::new(QuotaSet { version: 0, entries })), write: Mutex::new(()) })
    }

    /// The same quotas as version `version` (random at start-up: another controller instance
    /// shows another one, so agents load the set again after a failover).
    pub fn at_version(self, version: u64) -> Self {
        let mut set = self.set.into_inner().unwrap_or_else(|p| p.into_inner());
        Arc::make_mut(&mut set).version = version;
        Self { set: RwLock::new(set), write: self.write }
    }
}

impl Controller {
    /// Every quota (cheap: agents load it when its version changes).
    pub fn client_quotas(&self) -> Arc<QuotaSet> {
        self.quotas.set.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The entities `filter` matches, with their quotas.
    pub fn describe_client_quotas(&self, filter: &QuotaFilter) -> Result<Vec<QuotaEntry>, ControllerError> {
        filter.check()?;
        Ok(self.client_quotas().entries.iter().filter(|e| filter.matches(&e.entity)).cloned().collect())
    }

    /// Applies the alterations that check out, all in one store transaction (none with
    /// `validate_only`); one result per alteration, in order. An entity named twice in one
    /// request is refused every time (Kafka: "Ignoring duplicate entity").
    pub fn alter_client_quotas(
        &self,
        alterations: &[QuotaAlteration],
        validate_only: bool,
    ) -> Result<Vec<Result<(), ControllerError>>, ControllerError> {
        let checked: Vec<_> = alterations.iter().map(QuotaAlteration::check).collect();
        let mut mentions: BTreeMap<&QuotaEntity, usize> = BTreeMap::new();
        for (entity, _) in checked.iter().flatten() {
            *mentions.entry(entity).or_default() += 1;
        }
        let _write = self.quotas.write.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.client_quotas();
        let mut next: BTreeMap<QuotaEntity, BTreeMap<QuotaKey, f64>> =
            current.entries.iter().map(|e| (e.entity.clone(), e.values.clone())).collect();
        let mut changes = Vec::new();
        let mut results = Vec::with_capacity(checked.len());
        for c in &checked {
            let (entity, keys) = match c {
                Err(e) => {
                    results.push(Err(e.clone()));
                    continue;
                }
                Ok(ok) => ok,
            };
            if mentions[entity] > 1 {
                results.push(Err(ControllerError::InvalidRequest(format!("Ignoring duplicate entity {entity}"))));
                continue;
            }
            let values = next.entry(entity.clone()).or_default();
            for (key, value) in keys {
                let changed = match value {
                    Some(v) => values.insert(*key, *v) != Some(*v),
                    None => values.remove(key).is_some(),
                };
                if changed {
                    changes.push((entity.to_key(), key.name().to_string(), *value));
                }
            }
            results.push(Ok(()));
        }
        if validate_only || changes.is_empty() {
            return Ok(results);
        }
        self.store.alter_client_quotas(&changes).map_err(|e| self.store_error(e))?;
        let entries = next.into_iter().filter(|(_, v)| !v.is_empty()).map(|(entity, values)| QuotaEntry { entity, values }).collect();
        let set = QuotaSet { version: current.version.wrapping_add(1), entries };
        tracing::info!(version = set.version, changes = changes.len(), "client quotas changed");
        *self.quotas.set.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
        Ok(results)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::quota::{CLIENT_ID, EntityName, EntityPart, FilterComponent, Match, QuotaOp, USER};
    use crate::clock::{SeededEntropy, SystemClock};
    use crate::config::TopicsConfig;
    use crate::controller::store::sqlite::SqliteStore;

    fn alteration(parts: &[(&str, Option<&str>)], ops: &[(&str, Option<f64>)]) -> QuotaAlteration {
        QuotaAlteration {
            entity: parts.iter().map(|(t, n)| EntityPart { entity_type: t.to_string(), name: n.map(str::to_string) }).collect(),
            ops: ops.iter().map(|(k, v)| QuotaOp { key: k.to_string(), value: *v }).collect(),
        }
    }

    fn open(path: &std::path::Path) -> Controller {
        let store = Arc::new(SqliteStore::open(path).unwrap());
        Controller::open(store, TopicsConfig::default(), 86_400_000, Arc::new(SystemClock), Arc::new(SeededEntropy::new(5))).unwrap()
    }

    #[test]
    fn quotas_are_altered_described_and_kept_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let c = open(&path);
        let v0 = c.client_quotas().version;
        let results = c
            .alter_client_quotas(
                &[
                    alteration(&[(USER, Some("alice"))], &[("producer_byte_rate", Some(1024.0))]),
                    alteration(&[(USER, None), (CLIENT_ID, Some("c1"))], &[("request_percentage", Some(50.0))]),
                    alteration(&[(CLIENT_ID, None)], &[("consumer_byte_rate", Some(2048.0)), ("nope", Some(1.0))]),
                    alteration(&[(USER, Some("bob"))], &[("producer_byte_rate", Some(1.0))]),
                    alteration(&[(USER, Some("bob"))], &[("consumer_byte_rate", Some(1.0))]),
                ],
                false,
            )
            .unwrap();
        assert!(results[0].is_ok() && results[1].is_ok());
        assert!(results[2..].iter().all(|r| matches!(r, Err(ControllerError::InvalidRequest(_)))), "{results:?}");
        let set = c.client_quotas();
        assert_eq!(set.version, v0.wrapping_add(1));
        assert_eq!(set.entries.len(), 2);

        // validate_only and no-op changes change nothing, not even the version.
        let noop = alteration(&[(USER, Some("alice"))], &[("producer_byte_rate", Some(1024.0)), ("request_percentage", None)]);
        assert_eq!(c.alter_client_quotas(&[noop], false).unwrap(), vec![Ok(())]);
        let dry = alteration(&[(USER, Some("carol"))], &[("producer_byte_rate", Some(5.0))]);
        assert_eq!(c.alter_client_quotas(&[dry], true).unwrap(), vec![Ok(())]);
        assert_eq!(c.client_quotas().version, v0.wrapping_add(1));

        let users = QuotaFilter { components: vec![FilterComponent { entity_type: USER.into(), matching: Match::Any }], strict: false };
        let found = c.describe_client_quotas(&users).unwrap();
        assert_eq!(found.len(), 2);
        let exact = QuotaFilter {
            components: vec![FilterComponent { entity_type: USER.into(), matching: Match::Exact("alice".into()) }],
            strict: true,
        };
        let found = c.describe_client_quotas(&exact).unwrap();
        assert_eq!(
            found,
            vec![QuotaEntry {
                entity: QuotaEntity { user: Some(EntityName::Name("alice".into())), client_id: None },
                values: BTreeMap::from([(QuotaKey::ProducerByteRate, 1024.0)]),
            }]
        );

        // Removing the last key removes the entity; a restart reads back what is stored.
        let remove = alteration(&[(USER, Some("alice"))], &[("producer_byte_rate", None)]);
        assert_eq!(c.alter_client_quotas(&[remove], false).unwrap(), vec![Ok(())]);
        assert!(c.describe_client_quotas(&exact).unwrap().is_empty());
        drop(c);
        let again = open(&path);
        let set = again.client_quotas();
        assert_eq!(set.entries.len(), 1);
        assert_eq!(set.entries[0].entity, QuotaEntity { user: Some(EntityName::Default), client_id: Some(EntityName::Name("c1".into())) });
        assert_eq!(set.entries[0].values[&QuotaKey::RequestPercentage], 50.0);
    }
}
