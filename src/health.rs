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
//! [`serve`] is the HTTP listener (`[metrics] listen`): `/metrics` ([`crate::metrics::render`]),
//! `/healthz` and `/readyz`.
//!
//! Must not touch: anything but its own table and the HTTP listener (components call in).

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

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
    let detail: serde_json::Map<String, serde_json::Value> =
        table.iter().map(|(name, c)| (name.to_string(), serde_json::json!({ "ok": c.ok, "reason": c.reason }))).collect();
    (ready, serde_json::json!({ "ready": ready, "checks": detail }).to_string())
}

/// Largest HTTP request head read.
const REQUEST_BYTES_MAX: usize = 8 * 1024;

/// Serves `GET /metrics`, `/healthz` and `/readyz` (see [`readiness`]) until `shutdown`. Minimal HTTP/1.1: one request per connection.
pub async fn serve(listener: TcpListener, shutdown: CancellationToken) {
    loop {
        let (mut socket, _) = tokio::select! {
            a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
            _ = shutdown.cancelled() => return,
        };
        tokio::spawn(async move {
            let mut buf = vec![0u8; REQUEST_BYTES_MAX];
            let mut n = 0;
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while n < buf.len() {
                    match socket.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => return false,
                        Ok(k) => n += k,
                    }
                    if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        return true;
                    }
                }
                false
            })
            .await;
            if !matches!(read, Ok(true)) {
                return;
            }
            let head = String::from_utf8_lossy(&buf[..n]);
            const TEXT: &str = "text/plain; version=0.0.4";
            const JSON: &str = "application/json";
            let (status, content_type, body) = if head.starts_with("GET /metrics ") || head.starts_with("GET / ") {
                ("200 OK", TEXT, crate::metrics::render())
            } else if head.starts_with("GET /healthz ") {
                ("200 OK", JSON, "{\"live\":true}".to_string())
            } else if head.starts_with("GET /readyz ") {
                match readiness() {
                    (true, body) => ("200 OK", JSON, body),
                    (false, body) => ("503 Service Unavailable", JSON, body),
                }
            } else {
                ("404 Not Found", TEXT, "not found\n".to_string())
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
            let _ = socket.shutdown().await;
        });
    }
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
