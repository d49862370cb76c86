//! Client metrics subscriptions (KIP-714's CLIENT_METRICS config resources): each change is
//! computed from the subscription's current configs ([`crate::api::client_metrics::apply`]),
//! validated whole as Kafka does ([`crate::api::client_metrics::parse`]), written in one store
//! transaction, then swapped into memory. A subscription left with no config is deleted.
//! Agents load the whole set (`all_client_metrics`) and match their clients against it
//! (`agent::client_telemetry`).
//!
//! Must not touch: Kafka wire types, the client instances (the agents').

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use super::Controller;
use super::store::MetadataStore;
use crate::api::ControllerError;
use crate::api::client_metrics::{ClientMetricsChange, ClientMetricsResource, SUBSCRIPTIONS_MAX, apply, parse};

/// Subscriptions changed per call (a request's resources).
pub const CLIENT_METRICS_CHANGES_MAX: usize = 1_000;

/// The controller's subscriptions, sorted by name, and the lock that orders changes.
pub struct ClientMetrics {
    set: RwLock<Arc<Vec<ClientMetricsResource>>>,
    /// Serializes changes (store, then memory), apart from the commits' `write_lock`.
    write: Mutex<()>,
}

impl ClientMetrics {
    /// The stored subscriptions. One this release cannot parse is kept as stored (agents skip
    /// it, with a warning).
    pub fn load(store: &dyn MetadataStore) -> Result<Self, ControllerError> {
        let mut set = store.client_metrics()?;
        set.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Self { set: RwLock::new(Arc::new(set)), write: Mutex::new(()) })
    }
}

impl Controller {
    /// Every subscription, sorted by name (cheap).
    pub fn client_metrics(&self) -> Arc<Vec<ClientMetricsResource>> {
        self.client_metrics.set.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Blocking. Applies the changes that check out, all in one store transaction (none with
    /// `validate_only`); one result per change, in order. A name changed twice in one call is
    /// refused every time, as Kafka refuses a resource named twice in one request.
    pub fn alter_client_metrics(
        &self,
        changes: &[ClientMetricsChange],
        validate_only: bool,
    ) -> Result<Vec<Result<(), ControllerError>>, ControllerError> {
        if changes.len() > CLIENT_METRICS_CHANGES_MAX {
            return Err(ControllerError::InvalidRequest(format!("more than {CLIENT_METRICS_CHANGES_MAX} subscriptions in one change")));
        }
        let mut mentions: BTreeMap<&str, usize> = BTreeMap::new();
        for c in changes {
            *mentions.entry(c.name.as_str()).or_default() += 1;
        }
        let _write = self.client_metrics.write.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.client_metrics();
        let mut next: BTreeMap<String, BTreeMap<String, String>> = current.iter().map(|r| (r.name.clone(), r.configs.clone())).collect();
        let mut writes: Vec<(String, Option<BTreeMap<String, String>>)> = Vec::new();
        let results: Vec<Result<(), ControllerError>> = changes
            .iter()
            .map(|c| {
                if mentions[c.name.as_str()] > 1 {
                    return Err(ControllerError::InvalidRequest(format!("Duplicate resource {} in one request", c.name)));
                }
                let empty = BTreeMap::new();
                let configs = apply(next.get(&c.name).unwrap_or(&empty), c)?;
                parse(&ClientMetricsResource { name: c.name.clone(), configs: configs.clone() })?;
                let existed = next.contains_key(&c.name);
                if configs.is_empty() {
                    if existed {
                        next.remove(&c.name);
                        writes.push((c.name.clone(), None));
                    }
                } else {
                    if !existed && next.len() >= SUBSCRIPTIONS_MAX {
                        return Err(ControllerError::InvalidRequest(format!(
                            "there are {SUBSCRIPTIONS_MAX} client metrics subscriptions already, the most sidestream keeps"
                        )));
                    }
                    next.insert(c.name.clone(), configs.clone());
                    writes.push((c.name.clone(), Some(configs)));
                }
                Ok(())
            })
            .collect();
        if validate_only || writes.is_empty() {
            return Ok(results);
        }
        self.store.set_client_metrics(&writes).map_err(|e| self.store_error(e))?;
        let set: Vec<ClientMetricsResource> = next.into_iter().map(|(name, configs)| ClientMetricsResource { name, configs }).collect();
        assert!(set.len() <= SUBSCRIPTIONS_MAX, "more client metrics subscriptions than SUBSCRIPTIONS_MAX");
        tracing::info!(subscriptions = set.len(), changes = writes.len(), "client metrics subscriptions changed");
        *self.client_metrics.set.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
        Ok(results)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::configs::{ConfigOp, ConfigOpKind};

    use super::super::open_for_test as open;

    fn change(name: &str, ops: &[(&str, ConfigOpKind, &str)]) -> ClientMetricsChange {
        let ops = ops.iter().map(|(k, op, v)| ConfigOp { name: k.to_string(), op: *op, value: Some(v.to_string()) }).collect();
        ClientMetricsChange { name: name.into(), replace: false, ops }
    }

    #[test]
    fn changes_are_validated_written_deleted_and_seen_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let c = open(&path);
        let set = ConfigOpKind::Set;
        let sub1 = change("sub1", &[("metrics", set, "org.apache.kafka.producer."), ("interval.ms", set, "1000")]);
        let got = c.alter_client_metrics(&[sub1.clone(), change("bad", &[("interval.ms", set, "5")])], true).unwrap();
        assert!(got[0].is_ok() && matches!(got[1], Err(ControllerError::InvalidRequest(_))));
        assert!(c.client_metrics().is_empty(), "validate_only changes nothing");
        let got = c.alter_client_metrics(&[sub1.clone(), change("sub2", &[("match", set, "client_id=x")])], false).unwrap();
        assert_eq!(got, vec![Ok(()), Ok(())]);
        let dup = c.alter_client_metrics(&[sub1.clone(), sub1], false).unwrap();
        assert!(dup.iter().all(|r| matches!(r, Err(ControllerError::InvalidRequest(_)))));
        // Deleting every key deletes the subscription.
        let delete = change("sub2", &[("match", ConfigOpKind::Delete, "")]);
        assert_eq!(c.alter_client_metrics(&[delete], false).unwrap(), vec![Ok(())]);
        drop(c);
        let c = open(&path);
        let names: Vec<_> = c.client_metrics().iter().map(|r| (r.name.clone(), r.configs.len())).collect();
        assert_eq!(names, vec![("sub1".to_string(), 2)]);
    }

    #[test]
    fn the_number_of_subscriptions_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let c = open(&dir.path().join("c.db"));
        let changes: Vec<_> = (0..=SUBSCRIPTIONS_MAX).map(|i| change(&format!("s{i}"), &[("metrics", ConfigOpKind::Set, "a.")])).collect();
        let got = c.alter_client_metrics(&changes, false).unwrap();
        assert!(got[..SUBSCRIPTIONS_MAX].iter().all(Result::is_ok));
        assert!(matches!(got[SUBSCRIPTIONS_MAX], Err(ControllerError::InvalidRequest(_))));
        assert_eq!(c.client_metrics().len(), SUBSCRIPTIONS_MAX);
    }
}
