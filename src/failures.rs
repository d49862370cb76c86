//! Failed requests, made visible: every error code an answer carries (top-level, per group,
//! per topic or per partition) is counted on `/metrics` by API and Kafka error name
//! (`sidestream_request_errors_total{api="Produce",error="NOT_LEADER_OR_FOLLOWER"}`: the label
//! sets are the implemented APIs and Kafka's error names, bounded) by [`count`]; a partition
//! Produce or Fetch fails is also logged at most once per cause per minute, with the count of the
//! ones not logged ([`record`]).
//!
//! [`RateLimitedLog`] is the rate limiter itself, for any code that must report a condition that
//! may repeat on every request (a failing disk, an unreachable store) without flooding the log.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::ApiKey;

use crate::metrics;

/// One log line per cause per this interval at most.
pub const LOG_INTERVAL: Duration = Duration::from_secs(60);
/// Causes tracked by one [`RateLimitedLog`]; further causes share one entry.
const CAUSES_MAX: usize = 256;
const OTHER_CAUSE: &str = "other";

/// Says when a line for a cause may be logged: the first time, then once per `interval`.
pub struct RateLimitedLog {
    interval: Duration,
    /// cause -> (when it was last logged, occurrences not logged since).
    last: Mutex<HashMap<String, (Instant, u64)>>,
}

impl RateLimitedLog {
    pub fn new(interval: Duration) -> Self {
        RateLimitedLog { interval, last: Mutex::new(HashMap::new()) }
    }

    /// Records one occurrence of `cause` at `now`. Returns `Some(n)` when it should be logged
    /// (`n`: occurrences suppressed since the last line), `None` when it is suppressed.
    pub fn allow(&self, cause: &str, now: Instant) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let cause = if last.contains_key(cause) || last.len() < CAUSES_MAX { cause } else { OTHER_CAUSE };
        match last.get_mut(cause) {
            Some((at, suppressed)) if now.saturating_duration_since(*at) < self.interval => {
                *suppressed += 1;
                None
            }
            Some((at, suppressed)) => {
                *at = now;
                Some(std::mem::take(suppressed))
            }
            None => {
                last.insert(cause.to_string(), (now, 0));
                Some(0)
            }
        }
    }
}

/// Which request family failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Produce,
    Fetch,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Produce => "produce",
            Op::Fetch => "fetch",
        }
    }

    fn api(self) -> ApiKey {
        match self {
            Op::Produce => ApiKey::Produce,
            Op::Fetch => ApiKey::Fetch,
        }
    }
}

type ErrorCounters = HashMap<(i16, i16), Arc<metrics::Counter>>;

/// The counters of `sidestream_request_errors_total`, by (api key, error code): registered at
/// an error's first occurrence, then found under a read lock without allocating.
fn errors() -> &'static RwLock<ErrorCounters> {
    static ERRORS: OnceLock<RwLock<ErrorCounters>> = OnceLock::new();
    ERRORS.get_or_init(Default::default)
}

/// Counts one error code `code` in an answer to `api` (0, no error, is not counted).
pub fn count(api: ApiKey, code: i16) {
    if code == 0 {
        return;
    }
    let key = (api as i16, code);
    if let Some(c) = errors().read().unwrap_or_else(|p| p.into_inner()).get(&key) {
        c.inc();
        return;
    }
    let c = errors()
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .entry(key)
        .or_insert_with(|| {
            metrics::counter(
                "sidestream_request_errors_total",
                "Error codes in answers (top-level, per group, topic or partition), by API and Kafka error name.",
                &[("api", &format!("{api:?}")), ("error", &error_name(code))],
            )
        })
        .clone();
    c.inc();
}

/// Kafka's name of an error code (`KAFKA_STORAGE_ERROR`); `UNKNOWN` for codes it does not name.
pub fn error_name(code: i16) -> String {
    match ResponseError::try_from_code(code) {
        None => "NONE".to_string(),
        Some(ResponseError::Unknown(_)) => "UNKNOWN".to_string(),
        Some(e) => {
            let camel = e.to_string();
            let mut out = String::with_capacity(camel.len() + 8);
            for (i, c) in camel.chars().enumerate() {
                if c.is_ascii_uppercase() && i > 0 {
                    out.push('_');
                }
                out.push(c.to_ascii_uppercase());
            }
            out
        }
    }
}

fn log() -> &'static RateLimitedLog {
    static LOG: OnceLock<RateLimitedLog> = OnceLock::new();
    LOG.get_or_init(|| RateLimitedLog::new(LOG_INTERVAL))
}

/// Counts one partition answered with error `code` by `op`, and logs it (with `detail`) if its
/// cause was not logged in the last minute.
pub fn record(op: Op, code: i16, detail: &str) {
    count(op.api(), code);
    let name = error_name(code);
    let cause = format!("{}/{name}", op.name());
    if let Some(suppressed) = log().allow(&cause, Instant::now()) {
        tracing::warn!(op = op.name(), error = %name, detail, suppressed_since_last_line = suppressed,
            "{} failed (logged once a minute per error)", op.name());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_cause_per_interval_with_the_suppressed_count() {
        let log = RateLimitedLog::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(log.allow("a", t0), Some(0));
        assert_eq!(log.allow("b", t0), Some(0));
        for s in 1..=30 {
            assert_eq!(log.allow("a", t0 + Duration::from_secs(s)), None);
        }
        assert_eq!(log.allow("a", t0 + Duration::from_secs(60)), Some(30));
        assert_eq!(log.allow("a", t0 + Duration::from_secs(61)), None);
        assert_eq!(log.allow("b", t0 + Duration::from_secs(59)), None);
    }

    #[test]
    fn causes_are_bounded() {
        let log = RateLimitedLog::new(Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..CAUSES_MAX + 10 {
            log.allow(&format!("c{i}"), t0);
        }
        assert!(log.last.lock().unwrap().len() <= CAUSES_MAX + 1);
        assert_eq!(log.allow("c99999", t0), None, "beyond the bound, causes share one entry");
    }

    #[test]
    fn errors_are_counted_by_api_and_kafka_name() {
        count(ApiKey::JoinGroup, 79);
        count(ApiKey::JoinGroup, 79);
        count(ApiKey::JoinGroup, 0);
        record(Op::Fetch, 56, "test");
        let text = metrics::render();
        assert!(text.contains("sidestream_request_errors_total{api=\"JoinGroup\",error=\"MEMBER_ID_REQUIRED\"} 2\n"), "{text}");
        assert!(text.contains("sidestream_request_errors_total{api=\"Fetch\",error=\"KAFKA_STORAGE_ERROR\"} 1\n"), "{text}");
        assert!(!text.contains("error=\"NONE\""), "{text}");
    }

    #[test]
    fn kafka_error_names() {
        assert_eq!(error_name(56), "KAFKA_STORAGE_ERROR");
        assert_eq!(error_name(1), "OFFSET_OUT_OF_RANGE");
        assert_eq!(error_name(3), "UNKNOWN_TOPIC_OR_PARTITION");
        assert_eq!(error_name(-1), "UNKNOWN_SERVER_ERROR");
        assert_eq!(error_name(30_000), "UNKNOWN");
    }
}
