//! CLIENT_METRICS config resources (KIP-714), Kafka's model (`ClientMetricsConfigs`): named
//! subscriptions an operator defines at run time (`kafka-client-metrics.sh`), each a set of
//! metric name prefixes (`metrics`), a push interval (`interval.ms`) and client selectors
//! (`match`, `selector=regex`, every one must match the whole value; none: every client).
//!
//! The controller stores them as the configs were set ([`ClientMetricsResource`]) and validates
//! each change with [`parse`]; agents parse the set they load and give each client the union of
//! the subscriptions it matches ([`ParsedSubscription::matches`]). Validation answers Kafka's
//! errors: an empty name, an unknown key or an interval out of range is INVALID_REQUEST; a value
//! of the wrong type or a bad selector is INVALID_CONFIG. Bounds Kafka does not have (each
//! refused as INVALID_CONFIG, the count as INVALID_REQUEST): [`SUBSCRIPTIONS_MAX`] subscriptions,
//! [`METRICS_PER_SUBSCRIPTION_MAX`] prefixes of at most [`METRIC_PREFIX_BYTES_MAX`] bytes,
//! regular expressions of at most [`MATCH_REGEX_BYTES_MAX`] bytes (linear-time matching:
//! `regex-lite`, no backreferences), names of at most [`NAME_BYTES_MAX`] bytes.
//!
//! Must not touch: where subscriptions are stored, the client instances (`agent::client_telemetry`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ControllerError;
use super::configs::{ConfigOp, apply_ops, list_items};

/// Kafka's ConfigResource.Type of client metrics subscriptions.
pub const RESOURCE_TYPE: i8 = 16;
/// The config keys (Kafka's names).
pub const METRICS: &str = "metrics";
pub const INTERVAL_MS: &str = "interval.ms";
pub const MATCH: &str = "match";
/// `metrics` value that subscribes every metric.
pub const ALL_METRICS: &str = "*";
/// Kafka's `interval.ms` default, bounds, and the interval when no subscription matches.
pub const INTERVAL_MS_DEFAULT: u64 = 300_000;
pub const INTERVAL_MS_MIN: u64 = 100;
pub const INTERVAL_MS_MAX: u64 = 3_600_000;
/// Subscriptions stored (Kafka sets no bound).
pub const SUBSCRIPTIONS_MAX: usize = 256;
/// Metric name prefixes per subscription, and the longest one.
pub const METRICS_PER_SUBSCRIPTION_MAX: usize = 128;
pub const METRIC_PREFIX_BYTES_MAX: usize = 256;
/// The longest selector regular expression, and its compiled size limit.
pub const MATCH_REGEX_BYTES_MAX: usize = 512;
const MATCH_REGEX_COMPILED_BYTES_MAX: usize = 256 << 10;
/// The longest subscription name.
pub const NAME_BYTES_MAX: usize = 255;

/// One subscription as set: its name and its configs (keys of [`METRICS`], [`INTERVAL_MS`],
/// [`MATCH`] with their values as given).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientMetricsResource {
    pub name: String,
    pub configs: BTreeMap<String, String>,
}

/// A change of one subscription (IncrementalAlterConfigs, or AlterConfigs with `replace`). A
/// subscription left with no config is deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientMetricsChange {
    pub name: String,
    pub replace: bool,
    pub ops: Vec<ConfigOp>,
}

/// What a `match` selector looks at (Kafka's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selector {
    ClientInstanceId,
    ClientId,
    ClientSoftwareName,
    ClientSoftwareVersion,
    ClientSourceAddress,
    ClientSourcePort,
}

impl Selector {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "client_instance_id" => Self::ClientInstanceId,
            "client_id" => Self::ClientId,
            "client_software_name" => Self::ClientSoftwareName,
            "client_software_version" => Self::ClientSoftwareVersion,
            "client_source_address" => Self::ClientSourceAddress,
            "client_source_port" => Self::ClientSourcePort,
            _ => return None,
        })
    }
}

/// What a client is matched on, as Kafka's `ClientMetricsInstanceMetadata` spells each value
/// (the instance id as Kafka's base64 `Uuid.toString`, the address without a port).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientMeta {
    pub client_instance_id: String,
    pub client_id: String,
    pub software_name: String,
    pub software_version: String,
    pub source_address: String,
    pub source_port: String,
}

impl ClientMeta {
    fn get(&self, s: Selector) -> &str {
        match s {
            Selector::ClientInstanceId => &self.client_instance_id,
            Selector::ClientId => &self.client_id,
            Selector::ClientSoftwareName => &self.software_name,
            Selector::ClientSoftwareVersion => &self.software_version,
            Selector::ClientSourceAddress => &self.source_address,
            Selector::ClientSourcePort => &self.source_port,
        }
    }
}

/// A subscription ready to match clients.
#[derive(Debug, Clone)]
pub struct ParsedSubscription {
    pub name: String,
    pub metrics: Vec<String>,
    pub interval_ms: u64,
    /// One regular expression per selector named (the last one given wins, as in Kafka's map),
    /// anchored to match the whole value.
    matches: Vec<(Selector, regex_lite::Regex)>,
}

impl ParsedSubscription {
    /// Whether the client matches every selector (no selector: every client).
    pub fn matches(&self, client: &ClientMeta) -> bool {
        self.matches.iter().all(|(s, re)| re.is_match(client.get(*s)))
    }
}

fn invalid_config(m: String) -> ControllerError {
    ControllerError::InvalidConfig(m)
}

/// Checks a subscription as Kafka's `ClientMetricsConfigs.validate` does (plus this module's
/// bounds) and makes it ready to match clients.
pub fn parse(r: &ClientMetricsResource) -> Result<ParsedSubscription, ControllerError> {
    if r.name.is_empty() {
        return Err(ControllerError::InvalidRequest("Subscription name can't be empty".into()));
    }
    if r.name.len() > NAME_BYTES_MAX {
        return Err(ControllerError::InvalidRequest(format!("Subscription name is longer than {NAME_BYTES_MAX} bytes")));
    }
    if let Some(k) = r.configs.keys().find(|k| ![METRICS, INTERVAL_MS, MATCH].contains(&k.as_str())) {
        return Err(ControllerError::InvalidRequest(format!("Unknown client metrics configuration: {k}")));
    }
    let metrics: Vec<String> = r.configs.get(METRICS).map_or_else(Vec::new, |v| list_items(v).map(str::to_string).collect());
    if metrics.len() > METRICS_PER_SUBSCRIPTION_MAX {
        return Err(invalid_config(format!("more than {METRICS_PER_SUBSCRIPTION_MAX} metric prefixes in {METRICS}")));
    }
    if let Some(m) = metrics.iter().find(|m| m.len() > METRIC_PREFIX_BYTES_MAX) {
        return Err(invalid_config(format!("metric prefix {m} is longer than {METRIC_PREFIX_BYTES_MAX} bytes")));
    }
    let interval_ms = match r.configs.get(INTERVAL_MS) {
        None => INTERVAL_MS_DEFAULT,
        Some(v) => {
            let n: i32 = v
                .trim()
                .parse()
                .map_err(|_| invalid_config(format!("Invalid value {v} for configuration {INTERVAL_MS}: Not a number of type INT")))?;
            if i64::from(n) < INTERVAL_MS_MIN as i64 || i64::from(n) > INTERVAL_MS_MAX as i64 {
                return Err(ControllerError::InvalidRequest(format!(
                    "Invalid value {n} for {INTERVAL_MS}, interval must be between {INTERVAL_MS_MIN} and {INTERVAL_MS_MAX} (1 hour)"
                )));
            }
            n as u64
        }
    };
    let mut matches: Vec<(Selector, regex_lite::Regex)> = Vec::new();
    for pattern in r.configs.get(MATCH).map_or_else(Vec::new, |v| list_items(v).collect()) {
        let illegal = || invalid_config(format!("Illegal client matching pattern: {pattern}"));
        // Java's split("="): trailing empty parts are dropped; exactly a name and a value.
        let mut parts: Vec<&str> = pattern.split('=').collect();
        while parts.len() > 1 && parts.last() == Some(&"") {
            parts.pop();
        }
        let [name, value] = parts[..] else { return Err(illegal()) };
        let selector = Selector::from_name(name.trim()).ok_or_else(illegal)?;
        let value = value.trim();
        if value.len() > MATCH_REGEX_BYTES_MAX {
            return Err(invalid_config(format!("Illegal client matching pattern: {pattern} (longer than {MATCH_REGEX_BYTES_MAX} bytes)")));
        }
        let re = regex_lite::RegexBuilder::new(&format!("^(?:{value})$"))
            .size_limit(MATCH_REGEX_COMPILED_BYTES_MAX)
            .build()
            .map_err(|_| illegal())?;
        matches.retain(|(s, _)| *s != selector);
        matches.push((selector, re));
    }
    Ok(ParsedSubscription { name: r.name.clone(), metrics, interval_ms, matches })
}

/// The configs a subscription has after `change` (not yet validated): APPEND and SUBTRACT
/// apply to the LIST keys (`metrics`, `match`).
pub fn apply(current: &BTreeMap<String, String>, change: &ClientMetricsChange) -> Result<BTreeMap<String, String>, ControllerError> {
    apply_ops(current, change.replace, &change.ops, |name| match name {
        METRICS | MATCH => Ok((true, None)),
        INTERVAL_MS => Ok((false, None)),
        other => Err(ControllerError::InvalidRequest(format!("Unknown client metrics configuration: {other}"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::configs::ConfigOpKind;

    fn resource(kv: &[(&str, &str)]) -> ClientMetricsResource {
        ClientMetricsResource { name: "s".into(), configs: kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() }
    }

    fn client(id: &str) -> ClientMeta {
        ClientMeta {
            client_id: id.into(),
            software_name: "apache-kafka-java".into(),
            software_version: "4.4.0".into(),
            source_address: "127.0.0.1".into(),
            source_port: "50000".into(),
            ..Default::default()
        }
    }

    #[test]
    fn parses_kafka_values() {
        let s = parse(&resource(&[
            ("metrics", "org.apache.kafka.producer., org.apache.kafka.consumer.fetch"),
            ("interval.ms", "1000"),
            ("match", "client_id=foo.*,client_software_name=apache-kafka-java"),
        ]))
        .unwrap();
        assert_eq!(s.metrics, vec!["org.apache.kafka.producer.", "org.apache.kafka.consumer.fetch"]);
        assert_eq!(s.interval_ms, 1000);
        assert!(s.matches(&client("foo-1")));
        assert!(!s.matches(&client("xfoo")), "the whole value must match");
        let every = parse(&resource(&[("metrics", "*")])).unwrap();
        assert_eq!(every.interval_ms, INTERVAL_MS_DEFAULT);
        assert!(every.matches(&client("anything")));
        let port = parse(&resource(&[("match", "client_source_port=5000[0-9],client_source_address=127\\.0\\.0\\.1")])).unwrap();
        assert!(port.matches(&client("x")));
    }

    #[test]
    fn refuses_what_kafka_refuses_with_its_codes() {
        let code = |kv: &[(&str, &str)]| parse(&resource(kv)).unwrap_err();
        assert!(matches!(code(&[("foo", "1")]), ControllerError::InvalidRequest(m) if m == "Unknown client metrics configuration: foo"));
        assert!(matches!(code(&[("interval.ms", "99")]), ControllerError::InvalidRequest(m) if m.contains("between 100 and 3600000")));
        assert!(matches!(code(&[("interval.ms", "3600001")]), ControllerError::InvalidRequest(_)));
        assert!(matches!(code(&[("interval.ms", "abc")]), ControllerError::InvalidConfig(_)));
        for bad in ["client_id", "nope=x", "client_id=a=b", "client_id=("] {
            assert!(
                matches!(code(&[("match", bad)]), ControllerError::InvalidConfig(m) if m.starts_with("Illegal client matching pattern")),
                "{bad}"
            );
        }
        let mut named = resource(&[]);
        named.name.clear();
        assert!(matches!(parse(&named), Err(ControllerError::InvalidRequest(m)) if m == "Subscription name can't be empty"));
        let long = "x".repeat(MATCH_REGEX_BYTES_MAX + 1);
        assert!(matches!(code(&[("match", &format!("client_id={long}"))]), ControllerError::InvalidConfig(_)));
        let many = (0..=METRICS_PER_SUBSCRIPTION_MAX).map(|i| format!("m{i}")).collect::<Vec<_>>().join(",");
        assert!(matches!(code(&[("metrics", &many)]), ControllerError::InvalidConfig(_)));
    }

    #[test]
    fn append_and_subtract_edit_the_lists() {
        let op = |name: &str, op, value: &str| ConfigOp { name: name.into(), op, value: Some(value.into()) };
        let current = resource(&[("metrics", "a,b")]).configs;
        let change = ClientMetricsChange {
            name: "s".into(),
            replace: false,
            ops: vec![op("metrics", ConfigOpKind::Append, "c"), op("metrics", ConfigOpKind::Subtract, "a")],
        };
        assert_eq!(apply(&current, &change).unwrap()["metrics"], "b,c");
        let bad = ClientMetricsChange { name: "s".into(), replace: false, ops: vec![op("interval.ms", ConfigOpKind::Append, "1")] };
        assert!(matches!(apply(&current, &bad), Err(ControllerError::InvalidConfig(_))));
    }
}
