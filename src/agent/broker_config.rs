//! The broker's own configs as Kafka's config APIs show them (the BROKER and BROKER_LOGGER
//! resources): this agent's settings under Kafka's names where Kafka has one (`broker.id`,
//! `num.partitions`, `log.dirs` = the object store...), each STATIC_BROKER_CONFIG when
//! `proxy.toml` (or the environment) moved it off Sidestream's default, DEFAULT_CONFIG otherwise;
//! and the one setting that changes at run time, the log filter (`sidestream.log.level`, and per
//! module as BROKER_LOGGER loggers), applied through [`crate::log_level`].
//!
//! Every other broker config is read only here (settings are read at start), so altering it is
//! refused as Kafka refuses a config it cannot update dynamically. Broker configs belong to one
//! agent: nothing is stored in the controller.
//!
//! Must not touch: Kafka wire types (the handler's), topic configs (the controller's).

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::api::ControllerError;
use crate::api::configs::{ConfigOpKind, ConfigType};
use crate::config::{ClientAuth, Config, ControllerMode, ObjectStoreUrl, SecurityProtocol};

/// The dynamic broker config that holds the log filter (tracing's `EnvFilter` syntax).
pub const LOG_LEVEL: &str = "sidestream.log.level";
/// Kafka's dynamic replication throttles. There is no replication here (the object store
/// keeps the copies), so there is nothing to throttle: deleting one is a no-op that succeeds
/// (`kafka-reassign-partitions.sh --verify` clears them), setting one is refused.
const REPLICATION_THROTTLES: &[&str] =
    &["leader.replication.throttled.rate", "follower.replication.throttled.rate", "replica.alter.log.dirs.io.max.bytes.per.second"];
/// Kafka's name of the root logger (BROKER_LOGGER).
pub const ROOT_LOGGER: &str = "root";
/// Loggers BROKER_LOGGER lists besides the root: the crate and its top-level modules. A logger is
/// a tracing target with dots for `::`, as Kafka's tools accept only such names.
const LOGGERS: &[&str] = &[
    "sidestream",
    "sidestream.agent",
    "sidestream.api",
    "sidestream.controller",
    "sidestream.object",
    "sidestream.protocol",
    "sidestream.server",
];
/// Kafka's log levels (Log4jController), upper case as it shows them.
const LEVELS: &[&str] = &["DEBUG", "ERROR", "FATAL", "INFO", "TRACE", "WARN"];

/// Where a config's value comes from (Kafka's DescribeConfigs sources).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// DYNAMIC_TOPIC_CONFIG (a topic's own, for the describe of topics).
    Topic = 1,
    DynamicBroker = 2,
    StaticBroker = 4,
    Default = 5,
    DynamicBrokerLogger = 6,
    /// DYNAMIC_GROUP_CONFIG (a group's own, KIP-848/KIP-932).
    DynamicGroup = 8,
    /// CLIENT_METRICS_CONFIG (a client metrics subscription's own).
    ClientMetrics = 7,
}

/// One config as DescribeConfigs shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Described {
    pub name: String,
    pub value: Option<String>,
    pub source: Source,
    pub read_only: bool,
    pub ty: ConfigType,
    /// Where the value could come from, most important first (Kafka's synonyms).
    pub synonyms: Vec<(String, Option<String>, Source)>,
}

/// One static setting: its value and Sidestream's default (`None`: always set by the operator,
/// such as `broker.id`).
#[derive(Debug, Clone)]
struct Static {
    name: &'static str,
    value: Option<String>,
    default: Option<String>,
    ty: ConfigType,
}

/// A bound Kafka listener, for `listeners`, `advertised.listeners` and the protocol map.
pub struct BoundListener {
    pub name: String,
    pub protocol: SecurityProtocol,
    pub bound: String,
    pub advertised: String,
}

/// This agent's broker configs.
pub struct BrokerConfigs {
    node_id: i32,
    settings: Vec<Static>,
    /// The log filter set through the config APIs; `None`: the one given at start.
    log_filter: Mutex<Option<String>>,
}

impl BrokerConfigs {
    /// From the agent's settings and its bound listeners.
    pub fn new(config: &Config, listeners: &[BoundListener]) -> Self {
        let d = Config::default();
        let mut settings = Vec::new();
        let mut add = |name: &'static str, value: String, default: Option<String>, ty: ConfigType| {
            settings.push(Static { name, value: Some(value), default, ty });
        };
        let join = |f: &dyn Fn(&BoundListener) -> String| listeners.iter().map(f).collect::<Vec<_>>().join(",");
        use ConfigType::{Boolean, Int, List, Long};
        let s = ConfigType::String;
        add("advertised.listeners", join(&|l| format!("{}://{}", l.name, l.advertised)), None, s);
        add("allow.everyone.if.no.acl.found", config.acl.allow_if_no_acl.to_string(), Some(d.acl.allow_if_no_acl.to_string()), Boolean);
        let authorizer = |on: bool| if on { "org.apache.kafka.metadata.authorizer.StandardAuthorizer" } else { "" }.to_string();
        add("authorizer.class.name", authorizer(config.acl.enabled), Some(authorizer(d.acl.enabled)), s);
        add("auto.create.topics.enable", config.topics.auto_create.to_string(), Some(d.topics.auto_create.to_string()), Boolean);
        add("broker.id", config.agent.node_id.to_string(), None, Int);
        add("broker.rack", config.agent.zone.clone().unwrap_or_default(), Some(String::new()), s);
        add(
            "connections.max.idle.ms",
            config.agent.connections_max_idle_ms.to_string(),
            Some(d.agent.connections_max_idle_ms.to_string()),
            Long,
        );
        add(
            "connections.max.reauth.ms",
            config.sasl.connections_max_reauth_ms.to_string(),
            Some(d.sasl.connections_max_reauth_ms.to_string()),
            Long,
        );
        add(
            "group.initial.rebalance.delay.ms",
            config.groups.initial_rebalance_delay_ms.to_string(),
            Some(d.groups.initial_rebalance_delay_ms.to_string()),
            Int,
        );
        add(
            "group.max.session.timeout.ms",
            config.groups.max_session_timeout_ms.to_string(),
            Some(d.groups.max_session_timeout_ms.to_string()),
            Int,
        );
        add("group.max.size", config.groups.max_members_per_group.to_string(), Some(d.groups.max_members_per_group.to_string()), Int);
        add(
            "group.min.session.timeout.ms",
            config.groups.min_session_timeout_ms.to_string(),
            Some(d.groups.min_session_timeout_ms.to_string()),
            Int,
        );
        add("listener.security.protocol.map", join(&|l| format!("{}:{}", l.name, l.protocol.name())), None, s);
        add("listeners", join(&|l| format!("{}://{}", l.name, l.bound)), None, s);
        add("log.cleanup.policy", "delete".into(), Some("delete".into()), List);
        let dirs = match config.object_store_url() {
            Ok(ObjectStoreUrl::Local(p)) => format!("file://{}", p.display()),
            Ok(ObjectStoreUrl::Memory) => "memory://".into(),
            Ok(ObjectStoreUrl::S3 { bucket, root }) => format!("s3://{bucket}/{root}"),
            Err(e) => e,
        };
        add("log.dirs", dirs, None, s);
        add("log.retention.bytes", config.topics.retention_bytes.to_string(), Some(d.topics.retention_bytes.to_string()), Long);
        add(
            "log.retention.check.interval.ms",
            config.retention.check_interval_ms.to_string(),
            Some(d.retention.check_interval_ms.to_string()),
            Long,
        );
        add("log.retention.ms", config.topics.retention_ms.to_string(), Some(d.topics.retention_ms.to_string()), Long);
        add("max.connections", config.agent.max_connections.to_string(), Some(d.agent.max_connections.to_string()), Int);
        add(
            "max.connections.per.ip",
            config.agent.max_connections_per_ip.to_string(),
            Some(d.agent.max_connections_per_ip.to_string()),
            Int,
        );
        add("message.max.bytes", config.topics.max_message_bytes.to_string(), Some(d.topics.max_message_bytes.to_string()), Int);
        add("node.id", config.agent.node_id.to_string(), None, Int);
        add("num.partitions", config.topics.num_partitions.to_string(), Some(d.topics.num_partitions.to_string()), Int);
        add(
            "offset.metadata.max.bytes",
            config.groups.max_offset_metadata_bytes.to_string(),
            Some(d.groups.max_offset_metadata_bytes.to_string()),
            Int,
        );
        let minutes = |ms: u64| (ms / 60_000).to_string();
        add("offsets.retention.minutes", minutes(config.groups.offsets_retention_ms), Some(minutes(d.groups.offsets_retention_ms)), Int);
        let roles = |m: ControllerMode| if m == ControllerMode::Embedded { "broker,controller" } else { "broker" }.to_string();
        add("process.roles", roles(config.controller.mode), None, List);
        add(
            "producer.id.expiration.ms",
            config.controller.producer_id_expiration_ms.to_string(),
            Some(d.controller.producer_id_expiration_ms.to_string()),
            Int,
        );
        add(
            "queued.max.request.bytes",
            config.agent.max_in_flight_request_bytes.to_string(),
            Some(d.agent.max_in_flight_request_bytes.to_string()),
            Long,
        );
        add("sasl.enabled.mechanisms", config.sasl.mechanisms.join(","), Some(d.sasl.mechanisms.join(",")), List);
        add("socket.request.max.bytes", config.agent.max_request_bytes.to_string(), Some(d.agent.max_request_bytes.to_string()), Int);
        let client_auth = |a: ClientAuth| format!("{a:?}").to_lowercase();
        add("ssl.client.auth", client_auth(config.tls.client_auth), Some(client_auth(d.tls.client_auth)), s);
        let path = |p: &Option<std::path::PathBuf>| p.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        add("ssl.keystore.location", path(&config.tls.cert_file), Some(String::new()), s);
        add("ssl.truststore.location", path(&config.tls.client_ca_file), Some(String::new()), s);
        add("super.users", config.acl.super_users.join(";"), Some(d.acl.super_users.join(";")), s);
        add(
            "transactional.id.expiration.ms",
            config.controller.transactional_id_expiration_ms.to_string(),
            Some(d.controller.transactional_id_expiration_ms.to_string()),
            Int,
        );
        settings.push(Static { name: LOG_LEVEL, value: None, default: Some(d.log.level.clone()), ty: s });
        settings.sort_by_key(|s| s.name);
        assert!(settings.windows(2).all(|w| w[0].name < w[1].name), "broker config names are unique");
        assert!(settings.iter().all(|s| s.value.is_some() || s.default.is_some()), "every broker config has a value or a default");
        BrokerConfigs { node_id: config.agent.node_id, settings, log_filter: Mutex::new(None) }
    }

    pub fn node_id(&self) -> i32 {
        self.node_id
    }

    fn log_filter(&self) -> Option<String> {
        self.log_filter.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Every broker config, sorted by name (DescribeConfigs of this broker). Its value and
    /// source are its first synonym's: dynamic, then static (set off the default), then default.
    pub fn describe(&self) -> Vec<Described> {
        self.settings
            .iter()
            .map(|s| {
                let name = || s.name.to_string();
                let mut synonyms = Vec::new();
                let value = if s.name == LOG_LEVEL {
                    if let Some(dynamic) = self.log_filter() {
                        synonyms.push((name(), Some(dynamic), Source::DynamicBroker));
                    }
                    crate::log_level::initial()
                } else {
                    s.value.clone()
                };
                if value.is_some() && value != s.default {
                    synonyms.push((name(), value, Source::StaticBroker));
                }
                if let Some(d) = &s.default {
                    synonyms.push((name(), Some(d.clone()), Source::Default));
                }
                // Not empty: every setting has a value or a default (asserted at start-up).
                let (_, value, source) = synonyms.first().cloned().unwrap_or((name(), None, Source::Default));
                Described { name: name(), value, source, read_only: s.name != LOG_LEVEL, ty: s.ty, synonyms }
            })
            .collect()
    }

    /// Changes this broker's configs (IncrementalAlterConfigs and AlterConfigs on its id, or
    /// on the cluster default when `cluster_default`). Only the log filter can change:
    /// anything else is refused as Kafka refuses what it cannot update dynamically.
    /// `replace`: AlterConfigs, whose request is the whole dynamic set (a log filter left out
    /// goes back to the one given at start).
    pub fn alter(
        &self,
        ops: &[(String, ConfigOpKind, Option<String>)],
        replace: bool,
        cluster_default: bool,
        validate_only: bool,
    ) -> Result<(), ControllerError> {
        check_unique(ops)?;
        let unthrottle = |(n, op, _): &&(String, ConfigOpKind, Option<String>)| {
            *op == ConfigOpKind::Delete && REPLICATION_THROTTLES.contains(&n.as_str())
        };
        let ops: Vec<(String, ConfigOpKind, Option<String>)> = ops.iter().filter(|o| !unthrottle(o)).cloned().collect();
        let throttles: Vec<&str> = ops.iter().map(|(n, ..)| n.as_str()).filter(|n| REPLICATION_THROTTLES.contains(n)).collect();
        if !throttles.is_empty() {
            return Err(ControllerError::InvalidRequest(format!(
                "There is no replication to throttle: partitions have one replica and their data is in the object store: [{}]",
                throttles.join(", ")
            )));
        }
        let fixed: Vec<&str> = ops.iter().map(|(n, ..)| n.as_str()).filter(|n| *n != LOG_LEVEL).collect();
        if !fixed.is_empty() {
            return Err(ControllerError::InvalidRequest(format!("Cannot update these configs dynamically: [{}]", fixed.join(", "))));
        }
        if cluster_default && !ops.is_empty() {
            return Err(ControllerError::InvalidRequest(format!(
                "Cannot update these configs at default cluster level, broker id must be specified: [{LOG_LEVEL}]"
            )));
        }
        let mut filter = if replace { None } else { self.log_filter() };
        for (name, op, value) in &ops {
            match op {
                ConfigOpKind::Set => {
                    let v = value.clone().unwrap_or_default();
                    crate::log_level::check(&v)
                        .map_err(|e| ControllerError::InvalidRequest(format!("Invalid value {v} for configuration {name}: {e}")))?;
                    filter = Some(v);
                }
                ConfigOpKind::Delete => filter = None,
                ConfigOpKind::Append | ConfigOpKind::Subtract => {
                    return Err(ControllerError::InvalidRequest(format!("Can't {op:?} to key {name} because its type is not LIST.")));
                }
            }
        }
        if validate_only || ops.is_empty() && !replace {
            return Ok(());
        }
        self.apply(filter)
    }

    /// SIGHUP: `filter` is the configuration's `[log] level` read again. It becomes the static
    /// value (Kafka's `STATIC_BROKER_CONFIG`), put in force unless a filter set at run time
    /// through Kafka's config APIs (`DYNAMIC_BROKER_CONFIG`) holds, as a dynamic broker config
    /// overrides the file in Kafka. Returns whether it was put in force.
    pub fn reload_static_log_level(&self, filter: &str) -> Result<bool, String> {
        let held = self.log_filter.lock().unwrap_or_else(|p| p.into_inner());
        crate::log_level::set_initial(filter)?;
        if held.is_some() {
            return Ok(false);
        }
        crate::log_level::set(filter)?;
        Ok(true)
    }

    /// Puts `filter` (`None`: the one given at start) in force and remembers it.
    fn apply(&self, filter: Option<String>) -> Result<(), ControllerError> {
        let mut held = self.log_filter.lock().unwrap_or_else(|p| p.into_inner());
        let effective = filter.clone().or_else(crate::log_level::initial).unwrap_or_else(|| "info".into());
        crate::log_level::set(&effective).map_err(ControllerError::InvalidRequest)?;
        *held = filter;
        Ok(())
    }

    /// The BROKER_LOGGER resource: `root` and the crate's modules, each with its level now.
    pub fn loggers(&self) -> Vec<Described> {
        let filter = self.log_filter().or_else(crate::log_level::current).unwrap_or_else(|| "info".into());
        let (root, targets, _) = parse_filter(&filter);
        let mut names: Vec<String> = LOGGERS.iter().map(|s| s.to_string()).collect();
        names.extend(targets.keys().filter(|t| !LOGGERS.contains(&t.as_str())).cloned());
        let mut out = vec![logger(ROOT_LOGGER, &root)];
        for name in names {
            // A module's level: the most specific directive that covers it, else the root's.
            let level = targets
                .iter()
                .filter(|(t, _)| name == **t || name.starts_with(&format!("{t}.")))
                .max_by_key(|(t, _)| t.len())
                .map_or(root.clone(), |(_, l)| l.clone());
            out.push(logger(&name, &level));
        }
        out
    }

    /// IncrementalAlterConfigs on BROKER_LOGGER: SET a logger's level, DELETE a module's
    /// (it follows the root again); the root cannot be removed (Kafka's rules and messages).
    pub fn alter_loggers(&self, ops: &[(String, ConfigOpKind, Option<String>)], validate_only: bool) -> Result<(), ControllerError> {
        check_unique(ops)?;
        let filter = self.log_filter().or_else(crate::log_level::current).unwrap_or_else(|| "info".into());
        let (mut root, mut targets, others) = parse_filter(&filter);
        for (name, op, value) in ops {
            match op {
                ConfigOpKind::Set => {
                    let level = value.clone().unwrap_or_default().to_uppercase();
                    if !LEVELS.contains(&level.as_str()) {
                        return Err(ControllerError::InvalidConfig(format!(
                            "Cannot set the log level of {name} to {} as it is not a supported log level. Valid log levels are {}",
                            value.clone().unwrap_or_default(),
                            LEVELS.join(", ")
                        )));
                    }
                    let level = if level == "FATAL" { "ERROR".to_string() } else { level };
                    if name == ROOT_LOGGER {
                        root = level;
                    } else {
                        targets.insert(name.clone(), level);
                    }
                }
                ConfigOpKind::Delete if name == ROOT_LOGGER => {
                    return Err(ControllerError::InvalidRequest("Removing the log level of the root logger is not allowed".into()));
                }
                ConfigOpKind::Delete => {
                    targets.remove(name);
                }
                ConfigOpKind::Append | ConfigOpKind::Subtract => {
                    let op = if *op == ConfigOpKind::Append { "APPEND" } else { "SUBTRACT" };
                    return Err(ControllerError::InvalidRequest(format!("{op} operation is not allowed for the BROKER_LOGGER resource")));
                }
            }
        }
        if validate_only {
            return Ok(());
        }
        let mut directives = vec![root.to_lowercase()];
        directives.extend(targets.iter().map(|(t, l)| format!("{}={}", t.replace('.', "::"), l.to_lowercase())));
        directives.extend(others);
        self.apply(Some(directives.join(",")))
    }
}

/// Kafka's check of a request's operations: one per config name.
fn check_unique(ops: &[(String, ConfigOpKind, Option<String>)]) -> Result<(), ControllerError> {
    let mut seen = std::collections::HashSet::new();
    if ops.iter().all(|(n, ..)| seen.insert(n)) {
        Ok(())
    } else {
        Err(ControllerError::InvalidRequest("Error due to duplicate config keys".into()))
    }
}

fn logger(name: &str, level: &str) -> Described {
    Described {
        name: name.to_string(),
        value: Some(level.to_string()),
        source: Source::DynamicBrokerLogger,
        read_only: false,
        ty: ConfigType::String,
        synonyms: Vec::new(),
    }
}

/// A filter's root level, its `target=level` directives by logger name (levels upper case, as
/// Kafka shows them) and the directives of other shapes (kept as they are).
fn parse_filter(filter: &str) -> (String, BTreeMap<String, String>, Vec<String>) {
    let level = |s: &str| {
        let up = s.trim().to_uppercase();
        (LEVELS.contains(&up.as_str()) || up == "OFF").then_some(up)
    };
    let mut root = "ERROR".to_string();
    let mut targets = BTreeMap::new();
    let mut others = Vec::new();
    for d in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        match d.split_once('=') {
            None if level(d).is_some() => root = level(d).unwrap_or_default(),
            Some((t, l)) if !t.contains('[') && !t.contains('.') && level(l).is_some() => {
                targets.insert(t.replace("::", "."), level(l).unwrap_or_default());
            }
            _ => others.push(d.to_string()),
        }
    }
    (root, targets, others)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configs() -> BrokerConfigs {
        let mut c = Config::default();
        c.agent.node_id = 7;
        c.topics.num_partitions = 3;
        let l = BoundListener {
            name: "PLAINTEXT".into(),
            protocol: SecurityProtocol::Plaintext,
            bound: "127.0.0.1:9092".into(),
            advertised: "h:9092".into(),
        };
        BrokerConfigs::new(&c, &[l])
    }

    #[test]
    fn settings_show_under_kafkas_names_with_their_sources() {
        let got = configs().describe();
        let find = |n: &str| got.iter().find(|d| d.name == n).cloned().unwrap_or_else(|| panic!("{n}"));
        let p = find("num.partitions");
        assert_eq!((p.value.as_deref(), p.source, p.read_only), (Some("3"), Source::StaticBroker, true));
        assert_eq!(p.synonyms[1], ("num.partitions".into(), Some("1".into()), Source::Default));
        let m = find("message.max.bytes");
        assert_eq!((m.value.as_deref(), m.source), (Some("1048588"), Source::Default));
        assert_eq!(find("broker.id").value.as_deref(), Some("7"));
        assert_eq!(find("broker.id").source, Source::StaticBroker);
        assert_eq!(find("advertised.listeners").value.as_deref(), Some("PLAINTEXT://h:9092"));
        assert_eq!(find("process.roles").value.as_deref(), Some("broker,controller"));
        assert!(!find(LOG_LEVEL).read_only);
        assert!(got.windows(2).all(|w| w[0].name < w[1].name));
    }

    #[test]
    fn only_the_log_filter_changes_and_the_rest_is_refused_as_kafka_does() {
        let b = configs();
        let set = |n: &str, v: &str| (n.to_string(), ConfigOpKind::Set, Some(v.to_string()));
        let e = b.alter(&[set("broker.id", "5"), set("num.partitions", "2")], false, false, false).unwrap_err();
        assert_eq!(e, ControllerError::InvalidRequest("Cannot update these configs dynamically: [broker.id, num.partitions]".into()));
        let e = b.alter(&[set(LOG_LEVEL, "debug")], false, true, false).unwrap_err();
        assert!(matches!(e, ControllerError::InvalidRequest(m) if m.contains("default cluster level")));
        let e = b.alter(&[set(LOG_LEVEL, "debug"), set(LOG_LEVEL, "info")], false, false, false).unwrap_err();
        assert_eq!(e, ControllerError::InvalidRequest("Error due to duplicate config keys".into()));
        assert!(b.alter(&[set(LOG_LEVEL, "debug")], false, false, true).is_ok(), "validate only");
        assert!(b.alter(&[set(LOG_LEVEL, "sidestream=[{")], false, false, true).is_err(), "a bad filter");
        // Replication throttles: cleared as a no-op (kafka-reassign-partitions --verify), never set.
        let delete = |n: &str| (n.to_string(), ConfigOpKind::Delete, None);
        let clear: Vec<_> = REPLICATION_THROTTLES.iter().map(|n| delete(n)).collect();
        assert!(b.alter(&clear, false, false, false).is_ok());
        let e = b.alter(&[set("leader.replication.throttled.rate", "100")], false, false, false).unwrap_err();
        assert!(matches!(e, ControllerError::InvalidRequest(m) if m.contains("no replication to throttle")));
    }

    #[test]
    fn loggers_follow_the_filters_directives() {
        let (root, targets, others) = parse_filter("info,sidestream::agent=debug,h2[x]=warn,tower=trace");
        assert_eq!(root, "INFO");
        assert_eq!(targets.get("sidestream.agent").map(String::as_str), Some("DEBUG"));
        assert_eq!(targets.get("tower").map(String::as_str), Some("TRACE"));
        assert_eq!(others, vec!["h2[x]=warn".to_string()]);
        let b = configs();
        *b.log_filter.lock().unwrap() = Some("warn,sidestream::agent=debug".into());
        let got = b.loggers();
        let level = |n: &str| got.iter().find(|d| d.name == n).and_then(|d| d.value.clone());
        assert_eq!(level(ROOT_LOGGER).as_deref(), Some("WARN"));
        assert_eq!(level("sidestream.agent").as_deref(), Some("DEBUG"));
        assert_eq!(level("sidestream.controller").as_deref(), Some("WARN"));
        let bad = b.alter_loggers(&[("root".into(), ConfigOpKind::Set, Some("LOUD".into()))], true).unwrap_err();
        assert!(matches!(bad, ControllerError::InvalidConfig(m) if m.starts_with("Cannot set the log level of root to LOUD")));
        let root = b.alter_loggers(&[("root".into(), ConfigOpKind::Delete, None)], true).unwrap_err();
        assert_eq!(root, ControllerError::InvalidRequest("Removing the log level of the root logger is not allowed".into()));
    }
}
