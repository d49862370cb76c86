//! Client quotas as Kafka defines them (KIP-13, KIP-55, KIP-124, KIP-546, KIP-599): who a quota
//! is for (a user, a client id, both, or the defaults of either), which quota keys exist, the
//! versioned set of every quota that agents enforce, and the filters of DescribeClientQuotas.
//!
//! Shared by the controller, which validates and stores quotas as Kafka's
//! `ClientQuotaControlManager` does, and the agents, which enforce them
//! (`agent::quota`). Entities and keys arrive as Kafka spells them (entity types `user` and
//! `client-id`, a null name for the default) and are checked here once.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::ControllerError;

/// Kafka's entity types. `ip` (connection_creation_rate) is known but not supported.
pub const USER: &str = "user";
pub const CLIENT_ID: &str = "client-id";
pub const IP: &str = "ip";

/// How a default entity is shown (kafka-configs.sh `--entity-default`, `<default>`).
pub const DEFAULT_NAME: &str = "<default>";

/// Longest entity name accepted (Kafka has no limit; the store's keys want one).
pub const ENTITY_NAME_BYTES_MAX: usize = 1024;

/// A quota key: what is limited, per second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuotaKey {
    /// Bytes of produce requests per second.
    ProducerByteRate,
    /// Bytes of fetch responses per second.
    ConsumerByteRate,
    /// Percent of one request handler's time per second (100: one thread's worth).
    RequestPercentage,
    /// Partitions created or deleted per second (KIP-599).
    ControllerMutationRate,
}

impl QuotaKey {
    pub const ALL: [QuotaKey; 4] =
        [QuotaKey::ProducerByteRate, QuotaKey::ConsumerByteRate, QuotaKey::RequestPercentage, QuotaKey::ControllerMutationRate];

    /// Kafka's name (`QuotaConfig`).
    pub fn name(self) -> &'static str {
        match self {
            Self::ProducerByteRate => "producer_byte_rate",
            Self::ConsumerByteRate => "consumer_byte_rate",
            Self::RequestPercentage => "request_percentage",
            Self::ControllerMutationRate => "controller_mutation_rate",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Kafka types the byte rates LONG (whole numbers) and the others DOUBLE.
    pub fn integral(self) -> bool {
        matches!(self, Self::ProducerByteRate | Self::ConsumerByteRate)
    }

    /// Checks a value as Kafka's `ClientQuotaControlManager.validateQuotaKeyValue` does
    /// (positive; whole for LONG keys), and refuses what JSON cannot carry (NaN, infinities).
    pub fn check(self, value: f64) -> Result<(), ControllerError> {
        let name = self.name();
        if !value.is_finite() {
            return Err(ControllerError::InvalidRequest(format!("Quota {name} must be a finite number")));
        }
        if value <= 0.0 {
            return Err(ControllerError::InvalidRequest(format!("Quota {name} must be greater than 0")));
        }
        if self.integral() {
            if value > i64::MAX as f64 {
                return Err(ControllerError::InvalidRequest(format!("Proposed value for {name} is too large for a LONG.")));
            }
            if (value % 1.0).abs() > 1e-6 {
                return Err(ControllerError::InvalidRequest(format!("{name} cannot be a fractional value.")));
            }
        }
        Ok(())
    }
}

/// One side of an entity: a name, or the default of its type.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntityName {
    Default,
    Name(String),
}

impl EntityName {
    /// As Kafka's wire carries it: `None` for the default.
    pub fn as_wire(&self) -> Option<&str> {
        match self {
            Self::Default => None,
            Self::Name(n) => Some(n),
        }
    }

    fn from_wire(name: Option<&str>) -> Self {
        name.map_or(Self::Default, |n| Self::Name(n.to_string()))
    }
}

impl fmt::Display for EntityName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_wire().unwrap_or(DEFAULT_NAME))
    }
}

/// Whom a quota is for: a user, a client id, or a user's client id; either side may be the
/// default. At least one side is set.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct QuotaEntity {
    pub user: Option<EntityName>,
    pub client_id: Option<EntityName>,
}

/// One (type, name) of an entity, as Kafka's requests carry it (`None`: the default).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntityPart {
    pub entity_type: String,
    pub name: Option<String>,
}

impl QuotaEntity {
    /// Checks an entity as Kafka's `ClientQuotaControlManager.validateEntity` does: not empty,
    /// each type once, known types, no empty names; `ip` is refused (not supported here).
    pub fn from_parts(parts: &[EntityPart]) -> Result<Self, ControllerError> {
        let invalid = |m: String| Err(ControllerError::InvalidRequest(m));
        if parts.is_empty() {
            return invalid("Invalid empty client quota entity".into());
        }
        let mut entity = QuotaEntity { user: None, client_id: None };
        for p in parts {
            let slot = match p.entity_type.as_str() {
                USER => &mut entity.user,
                CLIENT_ID => &mut entity.client_id,
                IP => return invalid("IP quotas (connection_creation_rate) are not supported".into()),
                other => return invalid(format!("Unhandled client quota entity type: {other}")),
            };
            if slot.is_some() {
                return invalid(format!("Invalid client quota entity, duplicate entity entry {}", p.entity_type));
            }
            match p.name.as_deref() {
                Some("") => return invalid(format!("Empty {} not supported", p.entity_type)),
                Some(n) if n.len() > ENTITY_NAME_BYTES_MAX => {
                    return invalid(format!("{} names have at most {ENTITY_NAME_BYTES_MAX} bytes", p.entity_type));
                }
                name => *slot = Some(EntityName::from_wire(name)),
            }
        }
        Ok(entity)
    }

    /// The (type, name) pairs of Kafka's responses, user first.
    pub fn parts(&self) -> Vec<(&'static str, Option<&str>)> {
        let mut out = Vec::with_capacity(2);
        if let Some(u) = &self.user {
            out.push((USER, u.as_wire()));
        }
        if let Some(c) = &self.client_id {
            out.push((CLIENT_ID, c.as_wire()));
        }
        out
    }

    /// The store's key: `user/<name>`, `client-id/<name>` or both (user first), `<default>` for
    /// a default; names with `%`, `/` or `<` percent-encoded, so the form reads back exactly.
    pub fn to_key(&self) -> String {
        let mut out = Vec::with_capacity(2);
        for (t, n) in [(USER, &self.user), (CLIENT_ID, &self.client_id)] {
            if let Some(n) = n {
                let name = match n {
                    EntityName::Default => DEFAULT_NAME.to_string(),
                    EntityName::Name(s) => encode_name(s),
                };
                out.push(format!("{t}/{name}"));
            }
        }
        out.join("/")
    }

    /// The entity of a store key ([`QuotaEntity::to_key`]); `None` if it is not one.
    pub fn from_key(key: &str) -> Option<Self> {
        let parts: Vec<&str> = key.split('/').collect();
        if parts.is_empty() || !parts.len().is_multiple_of(2) || parts.len() > 4 {
            return None;
        }
        let mut entity = QuotaEntity { user: None, client_id: None };
        for pair in parts.chunks(2) {
            let name = match pair[1] {
                DEFAULT_NAME => EntityName::Default,
                n => EntityName::Name(decode_name(n)?),
            };
            match pair[0] {
                USER if entity.user.is_none() && entity.client_id.is_none() => entity.user = Some(name),
                CLIENT_ID if entity.client_id.is_none() => entity.client_id = Some(name),
                _ => return None,
            }
        }
        Some(entity)
    }
}

impl fmt::Display for QuotaEntity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.parts().iter().map(|(t, n)| format!("{t}={}", n.unwrap_or(DEFAULT_NAME))).collect();
        f.write_str(&parts.join(", "))
    }
}

fn encode_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        match c {
            '%' | '/' | '<' => out.push_str(&format!("%{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

fn decode_name(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let name = String::from_utf8(out).ok()?;
    (!name.is_empty()).then_some(name)
}

/// An entity's quotas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuotaEntry {
    pub entity: QuotaEntity,
    pub values: BTreeMap<QuotaKey, f64>,
}

/// Every quota, as agents hold them. `version` changes with every change (from a random
/// start): an agent that holds another version loads the set again.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QuotaSet {
    pub version: u64,
    /// Sorted by entity, each entity once.
    pub entries: Vec<QuotaEntry>,
}

/// One change of an AlterClientQuotas request: an entity as the client named it, and its
/// operations (`value: None` removes the key), checked by the controller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuotaAlteration {
    pub entity: Vec<EntityPart>,
    pub ops: Vec<QuotaOp>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuotaOp {
    pub key: String,
    pub value: Option<f64>,
}

impl QuotaAlteration {
    /// The entity and its changes (`None`: remove), checked as Kafka checks them: a key named
    /// twice, an unknown key or a bad value fails the entity's whole alteration.
    pub fn check(&self) -> Result<(QuotaEntity, BTreeMap<QuotaKey, Option<f64>>), ControllerError> {
        let entity = QuotaEntity::from_parts(&self.entity)?;
        let mut changes = BTreeMap::new();
        for op in &self.ops {
            let key = QuotaKey::from_name(&op.key)
                .ok_or_else(|| ControllerError::InvalidRequest(format!("Invalid configuration key {}", op.key)))?;
            if changes.contains_key(&key) {
                return Err(ControllerError::InvalidRequest(format!(
                    "Duplicate quota key {} not updating quota for this entity {entity}",
                    op.key
                )));
            }
            if let Some(v) = op.value {
                key.check(v)?;
            }
            changes.insert(key, op.value);
        }
        Ok((entity, changes))
    }
}

/// How a filter component matches an entity type's name (DescribeClientQuotas `match_type`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Match {
    /// This name.
    Exact(String),
    /// The default.
    Default,
    /// Any name, the default included, as long as the entity has this type.
    Any,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterComponent {
    pub entity_type: String,
    pub matching: Match,
}

/// DescribeClientQuotas' filter: every component must match; `strict`: and the entity has no
/// other type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaFilter {
    pub components: Vec<FilterComponent>,
    pub strict: bool,
}

impl QuotaFilter {
    /// Checks the filter as Kafka's `ClientQuotaControlManager.describeClientQuotas` does.
    pub fn check(&self) -> Result<(), ControllerError> {
        let mut seen: Vec<&str> = Vec::new();
        for c in &self.components {
            let t = c.entity_type.as_str();
            if t.is_empty() {
                return Err(ControllerError::InvalidRequest("Invalid empty entity type.".into()));
            }
            if seen.contains(&t) {
                return Err(ControllerError::InvalidRequest(format!("Entity type {t} cannot appear more than once in the filter.")));
            }
            if ![USER, CLIENT_ID, IP].contains(&t) {
                return Err(ControllerError::InvalidRequest(format!("Unsupported entity type {t}")));
            }
            seen.push(t);
        }
        if seen.contains(&IP) && (seen.contains(&USER) || seen.contains(&CLIENT_ID)) {
            return Err(ControllerError::InvalidRequest(
                "Invalid entity filter component combination. IP filter component should not be used with user or clientId \
                 filter component."
                    .into(),
            ));
        }
        Ok(())
    }

    /// Whether `entity` matches (the filter checked first).
    pub fn matches(&self, entity: &QuotaEntity) -> bool {
        let has = entity.user.is_some() as usize + entity.client_id.is_some() as usize;
        if self.strict && has != self.components.len() {
            return false;
        }
        self.components.iter().all(|c| {
            let side = match c.entity_type.as_str() {
                USER => &entity.user,
                CLIENT_ID => &entity.client_id,
                // No entity here has an ip.
                _ => return false,
            };
            match (&c.matching, side) {
                (_, None) => false,
                (Match::Any, Some(_)) => true,
                (Match::Default, Some(n)) => *n == EntityName::Default,
                (Match::Exact(want), Some(n)) => matches!(n, EntityName::Name(have) if have == want),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(t: &str, n: Option<&str>) -> EntityPart {
        EntityPart { entity_type: t.into(), name: n.map(str::to_string) }
    }

    fn name(n: &str) -> Option<EntityName> {
        Some(EntityName::Name(n.into()))
    }

    #[test]
    fn entities_are_checked_as_kafka_checks_them() {
        let e = QuotaEntity::from_parts(&[part(CLIENT_ID, Some("c1")), part(USER, None)]).unwrap();
        assert_eq!(e, QuotaEntity { user: Some(EntityName::Default), client_id: name("c1") });
        assert_eq!(e.parts(), vec![(USER, None), (CLIENT_ID, Some("c1"))]);
        for bad in [
            vec![],
            vec![part(USER, Some("a")), part(USER, Some("b"))],
            vec![part("group", Some("g"))],
            vec![part(USER, Some(""))],
            vec![part(IP, Some("10.0.0.1"))],
        ] {
            assert!(matches!(QuotaEntity::from_parts(&bad), Err(ControllerError::InvalidRequest(_))), "{bad:?}");
        }
    }

    #[test]
    fn store_keys_read_back_exactly() {
        let entities = [
            QuotaEntity { user: name("alice"), client_id: None },
            QuotaEntity { user: None, client_id: Some(EntityName::Default) },
            QuotaEntity { user: Some(EntityName::Default), client_id: name("c/1") },
            QuotaEntity { user: name("<default>"), client_id: name("100%") },
            QuotaEntity { user: name("CN=app,O=Example"), client_id: None },
        ];
        for e in entities {
            let key = e.to_key();
            assert_eq!(QuotaEntity::from_key(&key), Some(e.clone()), "{key}");
        }
        assert_eq!(QuotaEntity { user: name("a"), client_id: name("b") }.to_key(), "user/a/client-id/b");
        assert_eq!(QuotaEntity { user: Some(EntityName::Default), client_id: None }.to_key(), "user/<default>");
        for bad in ["", "user", "client-id/a/user/b", "user/a/user/b", "ip/1", "user/%zz", "user/a/client-id/b/x/y"] {
            assert_eq!(QuotaEntity::from_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn keys_and_values_are_checked_as_kafka_checks_them() {
        let alter = |ops: Vec<(&str, Option<f64>)>| QuotaAlteration {
            entity: vec![part(USER, Some("alice"))],
            ops: ops.into_iter().map(|(k, v)| QuotaOp { key: k.into(), value: v }).collect(),
        };
        let (_, changes) = alter(vec![("producer_byte_rate", Some(1024.0)), ("request_percentage", None)]).check().unwrap();
        assert_eq!(changes[&QuotaKey::ProducerByteRate], Some(1024.0));
        assert_eq!(changes[&QuotaKey::RequestPercentage], None);
        assert!(alter(vec![("request_percentage", Some(12.5))]).check().is_ok());
        assert!(alter(vec![("controller_mutation_rate", Some(0.5))]).check().is_ok());
        for bad in [
            vec![("producer_byte_rate", Some(10.5))],
            vec![("consumer_byte_rate", Some(0.0))],
            vec![("request_percentage", Some(-1.0))],
            vec![("request_percentage", Some(f64::NAN))],
            vec![("connection_creation_rate", Some(10.0))],
            vec![("producer_bytes_rate", Some(10.0))],
            vec![("producer_byte_rate", Some(10.0)), ("producer_byte_rate", None)],
        ] {
            assert!(matches!(alter(bad.clone()).check(), Err(ControllerError::InvalidRequest(_))), "{bad:?}");
        }
    }

    #[test]
    fn filters_match_exact_default_and_any_names() {
        let user = |u: &str| QuotaEntity { user: name(u), client_id: None };
        let both = |u: Option<EntityName>, c: Option<EntityName>| QuotaEntity { user: u, client_id: c };
        let f = |cs: Vec<(&str, Match)>, strict| QuotaFilter {
            components: cs.into_iter().map(|(t, m)| FilterComponent { entity_type: t.into(), matching: m }).collect(),
            strict,
        };
        let alice = f(vec![(USER, Match::Exact("alice".into()))], false);
        assert!(alice.check().is_ok());
        assert!(alice.matches(&user("alice")));
        assert!(alice.matches(&both(name("alice"), name("c1"))));
        assert!(!alice.matches(&user("bob")));
        let strict = f(vec![(USER, Match::Exact("alice".into()))], true);
        assert!(strict.matches(&user("alice")) && !strict.matches(&both(name("alice"), name("c1"))));
        let default = f(vec![(USER, Match::Default)], false);
        assert!(default.matches(&both(Some(EntityName::Default), name("c1"))) && !default.matches(&user("alice")));
        let any_client = f(vec![(CLIENT_ID, Match::Any)], true);
        assert!(any_client.matches(&both(None, Some(EntityName::Default))));
        assert!(any_client.matches(&both(None, name("c1"))));
        assert!(!any_client.matches(&both(name("alice"), name("c1"))));
        assert!(f(vec![], false).matches(&user("x")));
        assert!(!f(vec![], true).matches(&user("x")));
        for bad in [
            f(vec![(USER, Match::Any), (USER, Match::Default)], false),
            f(vec![("", Match::Any)], false),
            f(vec![("group", Match::Any)], false),
            f(vec![(IP, Match::Any), (USER, Match::Any)], false),
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
        assert!(f(vec![(IP, Match::Any)], false).check().is_ok());
    }
}
