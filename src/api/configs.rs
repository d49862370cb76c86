//! Topic configs, Kafka's model: every name Kafka 4.4 accepts on a topic with its type, default
//! and check ([`TOPIC_CONFIGS`], [`check_topic_config`], with Kafka's messages), and the config
//! changes an agent sends the controller ([`TopicConfigChange`]: AlterConfigs replaces a topic's
//! set, IncrementalAlterConfigs edits it with SET, DELETE, APPEND and SUBTRACT, [`apply`]).
//!
//! The controller validates with it (CreateTopics, the alter calls); the agent's DescribeConfigs
//! lists its defaults. Must not touch: where configs are stored, what they do.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ControllerError;

/// Kafka's ConfigDef types, with DescribeConfigs v3+'s codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigType {
    Boolean = 1,
    String = 2,
    Int = 3,
    Long = 5,
    Double = 6,
    List = 7,
}

/// What a value must be besides its type (Kafka's validators).
#[derive(Debug, Clone, Copy)]
pub enum Check {
    Any,
    /// A number at least this.
    AtLeast(i64),
    /// A number between these (inclusive).
    Between(f64, f64),
    /// One of these strings.
    OneOf(&'static [&'static str]),
    /// A list each of whose items is one of these (empty allowed).
    ListOf(&'static [&'static str]),
}

/// One topic config Kafka knows.
#[derive(Debug, Clone, Copy)]
pub struct TopicConfigDef {
    pub name: &'static str,
    pub ty: ConfigType,
    /// Kafka 4.4's default as DescribeConfigs shows it; `None`: not listed unless set (a name
    /// older clients still send). `max.message.bytes`'s comes from the agent's settings.
    pub default: Option<&'static str>,
    pub check: Check,
}

const fn def(name: &'static str, ty: ConfigType, default: &'static str, check: Check) -> TopicConfigDef {
    TopicConfigDef { name, ty, default: Some(default), check }
}

use Check::{Any, AtLeast};
use ConfigType::{Boolean, Double, Int, List, Long};

const COMPRESSION_TYPES: &[&str] = &["uncompressed", "zstd", "lz4", "snappy", "gzip", "producer"];
const CLEANUP_POLICIES: &[&str] = &["compact", "delete"];
const TIMESTAMP_TYPES: &[&str] = &["CreateTime", "LogAppendTime"];
const LONG_MAX: &str = "9223372036854775807";

/// Kafka's topic configs (LogConfig); any other name is INVALID_CONFIG, as in Kafka. Sorted by
/// name.
pub const TOPIC_CONFIGS: &[TopicConfigDef] = &[
    def("cleanup.policy", List, "delete", Check::ListOf(CLEANUP_POLICIES)),
    def("compression.gzip.level", Int, "-1", Any),
    def("compression.lz4.level", Int, "9", Any),
    def("compression.type", ConfigType::String, "producer", Check::OneOf(COMPRESSION_TYPES)),
    def("compression.zstd.level", Int, "3", Any),
    def("delete.retention.ms", Long, "86400000", AtLeast(0)),
    def("file.delete.delay.ms", Long, "60000", AtLeast(0)),
    def("flush.messages", Long, LONG_MAX, AtLeast(1)),
    def("flush.ms", Long, LONG_MAX, AtLeast(0)),
    def("follower.replication.throttled.replicas", List, "", Any),
    def("index.interval.bytes", Int, "4096", AtLeast(0)),
    def("leader.replication.throttled.replicas", List, "", Any),
    def("local.retention.bytes", Long, "-2", AtLeast(-2)),
    def("local.retention.ms", Long, "-2", AtLeast(-2)),
    def("max.compaction.lag.ms", Long, LONG_MAX, AtLeast(1)),
    def("max.message.bytes", Int, "", AtLeast(0)),
    // Removed in Kafka 4.0; still accepted from older tools, never listed.
    TopicConfigDef { name: "message.downconversion.enable", ty: Boolean, default: None, check: Any },
    def("message.timestamp.after.max.ms", Long, "3600000", AtLeast(0)),
    def("message.timestamp.before.max.ms", Long, LONG_MAX, AtLeast(0)),
    TopicConfigDef { name: "message.timestamp.difference.max.ms", ty: Long, default: None, check: AtLeast(0) },
    def("message.timestamp.type", ConfigType::String, "CreateTime", Check::OneOf(TIMESTAMP_TYPES)),
    def("min.cleanable.dirty.ratio", Double, "0.5", Check::Between(0.0, 1.0)),
    def("min.compaction.lag.ms", Long, "0", AtLeast(0)),
    def("min.insync.replicas", Int, "1", AtLeast(1)),
    def("preallocate", Boolean, "false", Any),
    def("remote.log.copy.disable", Boolean, "false", Any),
    def("remote.log.delete.on.disable", Boolean, "false", Any),
    def("remote.storage.enable", Boolean, "false", Any),
    def("retention.bytes", Long, "-1", Any),
    def("retention.ms", Long, "604800000", AtLeast(-1)),
    def("segment.bytes", Int, "1073741824", AtLeast(1 << 20)),
    def("segment.index.bytes", Int, "10485760", AtLeast(4)),
    def("segment.jitter.ms", Long, "0", AtLeast(0)),
    def("segment.ms", Long, "604800000", AtLeast(1)),
    def("unclean.leader.election.enable", Boolean, "false", Any),
];

/// The definition of a topic config name.
pub fn topic_config(name: &str) -> Option<&'static TopicConfigDef> {
    TOPIC_CONFIGS.iter().find(|d| d.name == name)
}

/// Checks one topic config as Kafka's ConfigDef does (INVALID_CONFIG with Kafka's message).
pub fn check_topic_config(name: &str, value: &str) -> Result<(), ControllerError> {
    let Some(d) = topic_config(name) else {
        return Err(ControllerError::InvalidConfig(format!("Unknown topic config name: {name}")));
    };
    let bad = |why: &str| ControllerError::InvalidConfig(format!("Invalid value {value} for configuration {name}: {why}"));
    let v = value.trim();
    let number: Option<f64> = match d.ty {
        Int => Some(v.parse::<i32>().map_err(|_| bad("Not a number of type INT"))?.into()),
        Long => Some(v.parse::<i64>().map_err(|_| bad("Not a number of type LONG"))? as f64),
        Double => Some(v.parse::<f64>().map_err(|_| bad("Not a number of type DOUBLE"))?),
        Boolean if v.eq_ignore_ascii_case("true") || v.eq_ignore_ascii_case("false") => None,
        Boolean => return Err(bad("Expected value to be either true or false")),
        ConfigType::String | List => None,
    };
    match (d.check, number) {
        (AtLeast(min), Some(n)) if n < min as f64 => Err(bad(&format!("Value must be at least {min}"))),
        (Check::Between(lo, _), Some(n)) if n < lo => Err(bad(&format!("Value must be at least {lo:?}"))),
        (Check::Between(_, hi), Some(n)) if n > hi => Err(bad(&format!("Value must be no more than {hi:?}"))),
        (Check::OneOf(allowed), _) if !allowed.contains(&v) => Err(bad(&format!("String must be one of: {}", allowed.join(", ")))),
        (Check::ListOf(allowed), _) if list_items(v).any(|item| !allowed.contains(&item)) => {
            Err(bad(&format!("String must be one of: {}", allowed.join(", "))))
        }
        _ => Ok(()),
    }
}

/// The items of a LIST config's value (Kafka splits on commas and trims).
pub fn list_items(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// IncrementalAlterConfigs' operations (Kafka's AlterConfigOp.OpType).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfigOpKind {
    Set,
    Delete,
    Append,
    Subtract,
}

/// One config operation; `value` is unused by `Delete`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigOp {
    pub name: String,
    pub op: ConfigOpKind,
    pub value: Option<String>,
}

/// A change of one topic's configs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicConfigChange {
    pub topic: String,
    /// AlterConfigs (the legacy API): the topic's configs become exactly the `Set` operations'
    /// values; every other config goes back to its default.
    pub replace: bool,
    pub ops: Vec<ConfigOp>,
}

/// The configs `current` becomes under `change` (not yet validated), as Kafka's controller
/// computes them (`ConfigurationControlManager`): APPEND and SUBTRACT apply to LIST configs
/// only, starting from the default when the config is not set.
pub fn apply(current: &BTreeMap<String, String>, change: &TopicConfigChange) -> Result<BTreeMap<String, String>, ControllerError> {
    apply_ops(current, change.replace, &change.ops, |name| {
        let def = topic_config(name).ok_or_else(|| ControllerError::InvalidConfig(format!("Unknown topic config name: {name}")))?;
        Ok((def.ty == List, def.default))
    })
}

/// The configs `current` becomes under `ops` (`replace`: AlterConfigs, starting empty), for
/// any resource type: `list(name)` says whether a config is a LIST and its default (APPEND and
/// SUBTRACT start from it), or refuses an unknown name.
pub fn apply_ops(
    current: &BTreeMap<String, String>,
    replace: bool,
    ops: &[ConfigOp],
    list: impl Fn(&str) -> Result<(bool, Option<&'static str>), ControllerError>,
) -> Result<BTreeMap<String, String>, ControllerError> {
    let mut out = if replace { BTreeMap::new() } else { current.clone() };
    for op in ops {
        let value = || op.value.clone().unwrap_or_default();
        match op.op {
            ConfigOpKind::Set => {
                out.insert(op.name.clone(), value());
            }
            ConfigOpKind::Delete => {
                out.remove(&op.name);
            }
            ConfigOpKind::Append | ConfigOpKind::Subtract => {
                let (is_list, default) = list(&op.name)?;
                if !is_list {
                    let verb = if op.op == ConfigOpKind::Append { "APPEND" } else { "SUBTRACT" };
                    return Err(ControllerError::InvalidConfig(format!("Can't {verb} to key {} because its type is not LIST.", op.name)));
                }
                let old = out.get(&op.name).map(String::as_str).or(default).unwrap_or("");
                let mut items: Vec<String> = list_items(old).map(str::to_string).collect();
                let given = value();
                for v in list_items(&given) {
                    if op.op == ConfigOpKind::Append {
                        if !items.iter().any(|i| i == v) {
                            items.push(v.to_string());
                        }
                    } else {
                        items.retain(|i| i != v);
                    }
                }
                out.insert(op.name.clone(), items.join(","));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(ops: &[(&str, ConfigOpKind, Option<&str>)], replace: bool) -> TopicConfigChange {
        TopicConfigChange {
            topic: "t".into(),
            replace,
            ops: ops.iter().map(|(n, op, v)| ConfigOp { name: n.to_string(), op: *op, value: v.map(str::to_string) }).collect(),
        }
    }

    fn configs(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn the_table_is_sorted_and_every_default_passes_its_own_check() {
        assert!(TOPIC_CONFIGS.windows(2).all(|w| w[0].name < w[1].name));
        for d in TOPIC_CONFIGS {
            if let Some(v) = d.default.filter(|v| !v.is_empty() || d.ty == List) {
                check_topic_config(d.name, v).unwrap_or_else(|e| panic!("{}: {e}", d.name));
            }
        }
    }

    #[test]
    fn values_are_checked_with_kafkas_messages() {
        let msg = |k: &str, v: &str| match check_topic_config(k, v) {
            Err(ControllerError::InvalidConfig(m)) => m,
            other => panic!("{k}={v}: {other:?}"),
        };
        assert_eq!(msg("foo.bar", "1"), "Unknown topic config name: foo.bar");
        assert_eq!(msg("retention.ms", "abc"), "Invalid value abc for configuration retention.ms: Not a number of type LONG");
        assert_eq!(msg("retention.ms", "-7"), "Invalid value -7 for configuration retention.ms: Value must be at least -1");
        assert_eq!(
            msg("cleanup.policy", "foo"),
            "Invalid value foo for configuration cleanup.policy: String must be one of: compact, delete"
        );
        assert_eq!(msg("preallocate", "yes"), "Invalid value yes for configuration preallocate: Expected value to be either true or false");
        assert_eq!(msg("segment.bytes", "10"), "Invalid value 10 for configuration segment.bytes: Value must be at least 1048576");
        assert_eq!(
            msg("min.cleanable.dirty.ratio", "x"),
            "Invalid value x for configuration min.cleanable.dirty.ratio: Not a number of type DOUBLE"
        );
        assert_eq!(
            msg("max.message.bytes", "3000000000"),
            "Invalid value 3000000000 for configuration max.message.bytes: Not a number of type INT"
        );
        for (k, v) in [("cleanup.policy", "compact,delete"), ("cleanup.policy", ""), ("compression.type", "zstd"), ("preallocate", "TRUE")]
        {
            assert!(check_topic_config(k, v).is_ok(), "{k}={v}");
        }
    }

    #[test]
    fn incremental_operations_edit_lists_from_their_default() {
        use ConfigOpKind::*;
        let cur = configs(&[("retention.ms", "5")]);
        let got = apply(&cur, &change(&[("cleanup.policy", Append, Some("compact"))], false)).unwrap();
        assert_eq!(got, configs(&[("cleanup.policy", "delete,compact"), ("retention.ms", "5")]));
        let got =
            apply(&got, &change(&[("cleanup.policy", Subtract, Some("compact,delete")), ("retention.ms", Delete, None)], false)).unwrap();
        assert_eq!(got, configs(&[("cleanup.policy", "")]));
        let got = apply(&cur, &change(&[("cleanup.policy", Subtract, Some("compact"))], false)).unwrap();
        assert_eq!(got["cleanup.policy"], "delete");
        let got = apply(&cur, &change(&[("cleanup.policy", Append, Some("delete"))], false)).unwrap();
        assert_eq!(got["cleanup.policy"], "delete", "an item already there is not added twice");
        let e = apply(&cur, &change(&[("retention.ms", Append, Some("5"))], false)).unwrap_err();
        assert_eq!(e, ControllerError::InvalidConfig("Can't APPEND to key retention.ms because its type is not LIST.".into()));
    }

    #[test]
    fn alter_configs_replaces_the_whole_set() {
        let cur = configs(&[("retention.ms", "5"), ("segment.ms", "9")]);
        let got = apply(&cur, &change(&[("cleanup.policy", ConfigOpKind::Set, Some("compact"))], true)).unwrap();
        assert_eq!(got, configs(&[("cleanup.policy", "compact")]));
        assert!(apply(&cur, &change(&[], true)).unwrap().is_empty());
    }
}
