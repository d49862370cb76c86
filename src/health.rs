//! Liveness and readiness: named checks that components set, served as `/healthz` and `/readyz`
//! on the metrics listener.
//!
//! A component that can tell whether the agent keeps its promises (the WAL replayed, the
//! object store and the controller answering, nothing acknowledged given up) sets its check with
//! [`set`] when the state changes; the change is logged once (warn when it turns bad, info when
//! it recovers), never once per request. `/healthz` answers 200 while the process serves HTTP;
//! `/readyz` answers 200 only while every check is ok, else 503, both with a JSON body naming
//! each check and why. Process-wide, like the metrics registry.
//!
//! Must not touch: anything but its own table (components call in; it calls nobody).

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

#[derive(Debug, Clone, PartialEq, Eq)]
struct Check {
    ok: bool,
    reason: String,
}

fn checks() -> &'static Mutex<BTreeMap<&'static str, Check>> {
    static CHECKS: OnceLock<Mutex<BTreeMap<&'static str, Check>>> = OnceLock::new();
    CHECKS.get_or_init(|| {
        // The same table on /metrics: `sidestream_ready` and one `sidestream_health_check` per
        // check, for alerts (Prometheus does not read /readyz).
        crate::metrics::gauges("sidestream_ready", "1 while /readyz answers 200 (every check ok), else 0.", || {
            vec![(Vec::new(), i64::from(readiness().0))]
        });
        crate::metrics::gauges("sidestream_health_check", "1 while the named readiness check is ok, else 0.", || {
            let table = checks().lock().unwrap_or_else(|p| p.into_inner());
            table.iter().map(|(name, c)| (vec![("check", name.to_string())], i64::from(c.ok))).collect()
        });
        Default::default()
    })
}

/// Sets check `name`; logs when its ok-ness changes (or when it is first set bad).
pub fn set(name: &'static str, ok: bool, reason: impl Into<String>) {
    let reason = reason.into();
    let mut table = checks().lock().unwrap_or_else(|p| p.into_inner());
    let before = table.insert(name, Check { ok, reason: reason.clone() });
    match before {
        Some(b) if b.ok == ok => {}
        None if ok => {}
        _ if ok => tracing::info!(check = name, reason, "ready again"),
        _ => tracing::warn!(check = name, reason, "not ready"),
    }
}

/// Whether check `name` is set and ok.
pub fn is_ok(name: &str) -> bool {
    checks().lock().unwrap_or_else(|p| p.into_inner()).get(name).is_some_and(|c| c.ok)
}

/// Whether every check is ok, and the JSON body that says so.
pub fn readiness() -> (bool, String) {
    let table = checks().lock().unwrap_or_else(|p| p.into_inner());
    let ready = table.values().all(|c| c.ok);
    let detail: serde_json::Map<String, serde_json::Value> = table
        .iter()
        .map(|(name, c)| (name.to_string(), serde_json::json!({ "ok": c.ok, "reason": c.reason })))
        .collect();
    (ready, serde_json::json!({ "ready": ready, "checks": detail }).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_is_the_and_of_every_check() {
        set("test_a", true, "fine");
        set("test_b", false, "down");
        let (ready, body) = readiness();
        assert!(!ready);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["checks"]["test_b"]["reason"], "down");
        assert!(!is_ok("test_b") && is_ok("test_a"));
        set("test_b", true, "back");
        assert!(is_ok("test_b"));
        let text = crate::metrics::render();
        assert!(text.contains("sidestream_health_check{check=\"test_a\"} 1"), "{text}");
        assert!(text.contains("# TYPE sidestream_ready gauge"), "{text}");
    }
}
