//! OTLP/HTTP with JSON bodies: the encoding of spans and metrics (opentelemetry-proto's JSON
//! mapping: ids in hex, 64-bit integers as strings, enums as numbers, lowerCamelCase names),
//! and the POST that sends them.
//!
//! The client is HTTP/1.1 over one TCP connection per export (`Connection: close`): an export
//! happens every second at most, so a connection pool would save nothing worth its code. Every
//! step runs under the caller's deadline; the answer is read up to [`RESPONSE_BYTES_MAX`].

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

use super::TelemetryError;
use super::trace::{AttrValue, SpanData};
use crate::metrics::{BUCKETS_SECONDS, Series, Value as MetricValue};

/// How much of a receiver's answer is read (its status line is what matters).
pub const RESPONSE_BYTES_MAX: usize = 64 * 1024;

/// OTLP's `AggregationTemporality.CUMULATIVE`.
const CUMULATIVE: u8 = 2;
/// OTLP's `Status.StatusCode.ERROR`.
const STATUS_ERROR: u8 = 2;

/// What every export says about its sender.
#[derive(Debug, Clone)]
pub struct Resource {
    pub service_name: String,
    pub instance_id: String,
    pub version: &'static str,
}

impl Resource {
    fn json(&self) -> Value {
        json!({ "attributes": [
            attr("service.name", &AttrValue::Str(self.service_name.clone())),
            attr("service.instance.id", &AttrValue::Str(self.instance_id.clone())),
            attr("service.version", &AttrValue::Str(self.version.to_string())),
        ]})
    }

    fn scope(&self) -> Value {
        json!({ "name": "sidestream", "version": self.version })
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn attr(key: &str, v: &AttrValue) -> Value {
    let value = match v {
        AttrValue::Str(s) => json!({ "stringValue": s }),
        AttrValue::Int(i) => json!({ "intValue": i.to_string() }),
        AttrValue::Bool(b) => json!({ "boolValue": b }),
    };
    json!({ "key": key, "value": value })
}

/// The body of `POST /v1/traces` (an `ExportTraceServiceRequest`).
pub fn encode_spans(resource: &Resource, spans: &[Box<SpanData>]) -> Vec<u8> {
    let spans: Vec<Value> = spans
        .iter()
        .map(|s| {
            let mut span = json!({
                "traceId": hex(&s.context.trace_id),
                "spanId": hex(&s.context.span_id),
                "name": s.name,
                "kind": s.kind as u8,
                "startTimeUnixNano": s.start_unix_ns.to_string(),
                "endTimeUnixNano": s.end_unix_ns.to_string(),
                "attributes": s.attributes.iter().map(|(k, v)| attr(k, v)).collect::<Vec<_>>(),
            });
            if let Some(parent) = &s.parent {
                span["parentSpanId"] = json!(hex(parent));
            }
            if !s.links.is_empty() {
                span["links"] = s.links.iter().map(|l| json!({ "traceId": hex(&l.trace_id), "spanId": hex(&l.span_id) })).collect();
            }
            if let Some(why) = &s.error {
                span["status"] = json!({ "code": STATUS_ERROR, "message": why });
            }
            span
        })
        .collect();
    let body = json!({ "resourceSpans": [{
        "resource": resource.json(),
        "scopeSpans": [{ "scope": resource.scope(), "spans": spans }],
    }]});
    serde_json::to_vec(&body).unwrap_or_default()
}

/// The body of `POST /v1/metrics` (an `ExportMetricsServiceRequest`): counters as cumulative
/// monotonic sums, gauges as gauges, histograms as cumulative explicit-bucket histograms
/// (bounds [`BUCKETS_SECONDS`]), each series' labels as its point's attributes. `start_unix_ns`:
/// when the counters started (the process), `now_unix_ns`: the time of the values.
pub fn encode_metrics(resource: &Resource, series: &[Series], start_unix_ns: u64, now_unix_ns: u64) -> Vec<u8> {
    let (start, now) = (start_unix_ns.to_string(), now_unix_ns.to_string());
    // One metric per name, its points in the order given (sorted by name: consecutive).
    let mut metrics: Vec<Value> = Vec::new();
    let mut last: Option<&str> = None;
    for s in series {
        let attributes: Vec<Value> = s.labels.iter().map(|(k, v)| attr(k, &AttrValue::Str(v.clone()))).collect();
        let (kind, point) = match &s.value {
            MetricValue::Counter(n) => {
                ("sum", json!({ "attributes": attributes, "startTimeUnixNano": start, "timeUnixNano": now, "asInt": n.to_string() }))
            }
            MetricValue::Seconds(x) => {
                ("sum", json!({ "attributes": attributes, "startTimeUnixNano": start, "timeUnixNano": now, "asDouble": x }))
            }
            MetricValue::Gauge(n) => ("gauge", json!({ "attributes": attributes, "timeUnixNano": now, "asInt": n.to_string() })),
            MetricValue::Histogram(h) => {
                // OTLP counts per bucket, not cumulatively; the last bucket is +Inf's.
                let mut below = 0;
                let counts: Vec<String> = h
                    .cumulative
                    .iter()
                    .map(|&c| {
                        let n = c - below;
                        below = c;
                        n.to_string()
                    })
                    .collect();
                let point = json!({
                    "attributes": attributes, "startTimeUnixNano": start, "timeUnixNano": now,
                    "count": h.count().to_string(), "sum": h.sum_seconds,
                    "bucketCounts": counts, "explicitBounds": BUCKETS_SECONDS,
                });
                ("histogram", point)
            }
        };
        if last != Some(s.name) || metrics.last().is_none_or(|m| m.get(kind).is_none()) {
            let mut data = json!({ "dataPoints": [] });
            match kind {
                "sum" => {
                    data["aggregationTemporality"] = json!(CUMULATIVE);
                    data["isMonotonic"] = json!(true);
                }
                "histogram" => data["aggregationTemporality"] = json!(CUMULATIVE),
                _ => {}
            }
            let unit = if s.name.ends_with("_seconds") || s.name.ends_with("_seconds_total") {
                "s"
            } else if s.name.ends_with("_bytes") || s.name.ends_with("_bytes_total") {
                "By"
            } else {
                ""
            };
            metrics.push(json!({ "name": s.name, "description": s.help, "unit": unit, kind: data }));
            last = Some(s.name);
        }
        if let Some(points) = metrics.last_mut().and_then(|m| m[kind]["dataPoints"].as_array_mut()) {
            points.push(point);
        }
    }
    let body = json!({ "resourceMetrics": [{
        "resource": resource.json(),
        "scopeMetrics": [{ "scope": resource.scope(), "metrics": metrics }],
    }]});
    serde_json::to_vec(&body).unwrap_or_default()
}

/// POSTs `body` (JSON) to `http://host:port{path}`, everything before `deadline`. Ok on a 2xx
/// answer.
pub async fn post(host: &str, port: u16, path: &str, body: &[u8], deadline: Instant) -> Result<(), TelemetryError> {
    let exchange = async {
        let mut stream = TcpStream::connect((host, port)).await.map_err(TelemetryError::Connect)?;
        let _ = stream.set_nodelay(true);
        let authority = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nUser-Agent: sidestream/{}\r\n\r\n",
            body.len(),
            env!("CARGO_PKG_VERSION"),
        );
        stream.write_all(head.as_bytes()).await.map_err(TelemetryError::Io)?;
        stream.write_all(body).await.map_err(TelemetryError::Io)?;
        stream.flush().await.map_err(TelemetryError::Io)?;
        let mut answer = Vec::with_capacity(1024);
        let mut limited = (&mut stream).take(RESPONSE_BYTES_MAX as u64);
        // The status line is enough: stop reading once it and the headers are in.
        loop {
            let mut chunk = [0u8; 4096];
            let n = limited.read(&mut chunk).await.map_err(TelemetryError::Io)?;
            answer.extend_from_slice(&chunk[..n]);
            if n == 0 || answer.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        status(&answer)
    };
    match timeout_at(deadline, exchange).await {
        Ok(r) => r,
        Err(_) => Err(TelemetryError::Timeout),
    }
}

/// The status of an HTTP/1.x answer: Ok for 2xx.
fn status(answer: &[u8]) -> Result<(), TelemetryError> {
    let line_end = answer.iter().position(|&b| b == b'\r' || b == b'\n').unwrap_or(answer.len());
    let line = String::from_utf8_lossy(&answer[..line_end]);
    let mut parts = line.split(' ');
    let code = match (parts.next(), parts.next().and_then(|c| c.parse::<u16>().ok())) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") => code,
        _ => return Err(TelemetryError::BadAnswer(line.chars().take(200).collect())),
    };
    if (200..300).contains(&code) { Ok(()) } else { Err(TelemetryError::Status(code, line.chars().take(200).collect())) }
}

#[cfg(test)]
mod tests {
    use super::super::trace::{SpanContext, SpanKind};
    use super::*;
    use crate::metrics::HistogramSnapshot;

    fn resource() -> Resource {
        Resource { service_name: "svc".into(), instance_id: "agent-1".into(), version: "0.1.0" }
    }

    #[test]
    fn spans_encode_as_otlp_json() {
        let span = SpanData {
            context: SpanContext { trace_id: [0xab; 16], span_id: [1, 2, 3, 4, 5, 6, 7, 8] },
            parent: Some([9; 8]),
            name: "Produce",
            kind: SpanKind::Server,
            start_unix_ns: 1_700_000_000_000_000_001,
            end_unix_ns: 1_700_000_000_000_000_999,
            attributes: vec![("messaging.system", "kafka".into()), ("kafka.api_version", 9i16.into()), ("ok", true.into())],
            links: vec![SpanContext { trace_id: [1; 16], span_id: [2; 8] }],
            error: Some("timed out".into()),
        };
        let body: Value = serde_json::from_slice(&encode_spans(&resource(), &[Box::new(span)])).unwrap();
        let rs = &body["resourceSpans"][0];
        assert_eq!(rs["resource"]["attributes"][0], json!({"key": "service.name", "value": {"stringValue": "svc"}}));
        assert_eq!(rs["resource"]["attributes"][1]["value"]["stringValue"], "agent-1");
        let s = &rs["scopeSpans"][0]["spans"][0];
        assert_eq!(s["traceId"], "abababababababababababababababab");
        assert_eq!(s["spanId"], "0102030405060708");
        assert_eq!(s["parentSpanId"], "0909090909090909");
        assert_eq!((s["name"].as_str(), s["kind"].as_u64()), (Some("Produce"), Some(2)));
        assert_eq!(s["startTimeUnixNano"], "1700000000000000001", "int64 as a string");
        assert_eq!(s["endTimeUnixNano"], "1700000000000000999");
        assert_eq!(s["attributes"][1], json!({"key": "kafka.api_version", "value": {"intValue": "9"}}));
        assert_eq!(s["attributes"][2]["value"], json!({"boolValue": true}));
        assert_eq!(s["links"][0], json!({"traceId": "01010101010101010101010101010101", "spanId": "0202020202020202"}));
        assert_eq!(s["status"], json!({"code": 2, "message": "timed out"}));
    }

    #[test]
    fn metrics_encode_as_cumulative_sums_gauges_and_histograms() {
        let mut cumulative = [0u64; BUCKETS_SECONDS.len() + 1];
        cumulative[3..].iter_mut().for_each(|c| *c = 2);
        cumulative[BUCKETS_SECONDS.len()] = 3;
        let series = vec![
            Series { name: "a_total", help: "A.", labels: vec![("api", "Produce".into())], value: MetricValue::Counter(7) },
            Series { name: "a_total", help: "A.", labels: vec![("api", "Fetch".into())], value: MetricValue::Counter(1) },
            Series {
                name: "b_seconds",
                help: "B.",
                labels: vec![],
                value: MetricValue::Histogram(HistogramSnapshot { cumulative, sum_seconds: 61.5 }),
            },
            Series { name: "c_seconds_total", help: "C.", labels: vec![], value: MetricValue::Seconds(1.5) },
            Series { name: "d", help: "D.", labels: vec![("g", "x".into())], value: MetricValue::Gauge(-4) },
        ];
        let body: Value = serde_json::from_slice(&encode_metrics(&resource(), &series, 10, 20)).unwrap();
        let m = &body["resourceMetrics"][0]["scopeMetrics"][0]["metrics"];
        assert_eq!(m.as_array().unwrap().len(), 4, "one metric per name: {m}");
        let a = &m[0];
        assert_eq!((a["name"].as_str(), a["description"].as_str()), (Some("a_total"), Some("A.")));
        assert_eq!((a["sum"]["aggregationTemporality"].as_u64(), a["sum"]["isMonotonic"].as_bool()), (Some(2), Some(true)));
        let p = &a["sum"]["dataPoints"];
        assert_eq!((p[0]["asInt"].as_str(), p[1]["asInt"].as_str()), (Some("7"), Some("1")));
        assert_eq!(p[0]["attributes"][0], json!({"key": "api", "value": {"stringValue": "Produce"}}));
        assert_eq!((p[0]["startTimeUnixNano"].as_str(), p[0]["timeUnixNano"].as_str()), (Some("10"), Some("20")));
        let h = &m[1]["histogram"];
        assert_eq!((m[1]["unit"].as_str(), h["aggregationTemporality"].as_u64()), (Some("s"), Some(2)));
        let hp = &h["dataPoints"][0];
        assert_eq!((hp["count"].as_str(), hp["sum"].as_f64()), (Some("3"), Some(61.5)));
        let counts: Vec<&str> = hp["bucketCounts"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
        assert_eq!(counts.len(), BUCKETS_SECONDS.len() + 1, "one more count than bounds (+Inf)");
        assert_eq!((counts[2], counts[3], counts[4], counts[19]), ("0", "2", "0", "1"), "per bucket, not cumulative");
        assert_eq!(hp["explicitBounds"].as_array().unwrap().len(), BUCKETS_SECONDS.len());
        assert_eq!(m[2]["sum"]["dataPoints"][0]["asDouble"].as_f64(), Some(1.5));
        assert_eq!(m[3]["gauge"]["dataPoints"][0]["asInt"], "-4");
        assert!(m[3]["gauge"].get("aggregationTemporality").is_none());
    }

    #[test]
    fn answers_are_judged_by_their_status_line() {
        assert!(status(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").is_ok());
        assert!(status(b"HTTP/1.0 202 Accepted\r\n\r\n").is_ok());
        assert!(matches!(status(b"HTTP/1.1 404 Not Found\r\n\r\n"), Err(TelemetryError::Status(404, _))));
        assert!(matches!(status(b""), Err(TelemetryError::BadAnswer(_))));
        assert!(matches!(status(b"SSH-2.0-OpenSSH\r\n"), Err(TelemetryError::BadAnswer(_))));
    }

    #[tokio::test]
    async fn posts_to_a_listener_and_reads_its_status() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !got.ends_with(b"{\"x\":1}") {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0);
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await.unwrap();
            String::from_utf8(got).unwrap()
        });
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        post("127.0.0.1", port, "/v1/traces", b"{\"x\":1}", deadline).await.unwrap();
        let request = server.await.unwrap();
        assert!(request.starts_with("POST /v1/traces HTTP/1.1\r\n"), "{request}");
        assert!(request.contains("Content-Type: application/json\r\n") && request.contains("Content-Length: 7\r\n"), "{request}");
        // Nobody listening: a connection error, quickly.
        drop(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap());
        let e = post("127.0.0.1", 1, "/v1/metrics", b"{}", deadline).await.unwrap_err();
        assert!(matches!(e, TelemetryError::Connect(_)), "{e}");
    }
}
