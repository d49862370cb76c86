//! OpenTelemetry export: the metrics registry and sampled request traces, sent over OTLP/HTTP
//! (JSON bodies) to a collector by one background task. Off unless `[telemetry] otlp_endpoint`
//! is set.
//!
//! - [`trace`]: spans, the sampling decision at a request's root, the task-local current span,
//!   the bounded queue ended spans wait in.
//! - [`otlp`]: the JSON encoding of spans and metrics, and the HTTP POST.
//!
//! The exporter ([`Telemetry::start`]) drains the span queue every [`TRACES_EXPORT_INTERVAL`]
//! (at most [`SPANS_PER_EXPORT_MAX`] per POST) and sends every series of [`crate::metrics`]
//! every `metrics_interval_ms` (cumulative, with the same names as `GET /metrics`). It never
//! makes a request wait: a slow or absent receiver only fills the span queue, whose overflow is
//! dropped and counted; each export is bounded by `timeout_ms`; failures are counted
//! (`sidestream_otlp_exports_total{signal,outcome}`) and logged once a minute per signal. This
//! module imports only [`crate::metrics`] and [`crate::failures`] (its rate-limited log).

pub mod otlp;
pub mod trace;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::failures::{LOG_INTERVAL, RateLimitedLog};
use crate::metrics::{self, Counter};
use otlp::Resource;
use trace::SpanData;

/// How often queued spans are sent.
pub const TRACES_EXPORT_INTERVAL: Duration = Duration::from_secs(1);
/// Spans in one POST at most (a bounded body).
pub const SPANS_PER_EXPORT_MAX: usize = 512;

/// What can go wrong with one export. Every kind is worth retrying at the next interval; none
/// stops the agent.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot connect to the OTLP receiver: {0}")]
    Connect(#[source] std::io::Error),
    #[error("OTLP request failed: {0}")]
    Io(#[source] std::io::Error),
    #[error("the OTLP receiver did not answer within timeout_ms")]
    Timeout,
    #[error("the OTLP receiver answered HTTP {0}: {1}")]
    Status(u16, String),
    #[error("the OTLP receiver's answer is not HTTP/1.x: {0:?}")]
    BadAnswer(String),
}

/// The exporter's settings, from `[telemetry]` (endpoint parsed and checked by the config).
#[derive(Debug, Clone)]
pub struct TelemetrySettings {
    pub host: String,
    pub port: u16,
    /// Base path ("" or "/prefix"): signals go to `<path>/v1/traces` and `<path>/v1/metrics`.
    pub path: String,
    pub service_name: String,
    /// `service.instance.id`: which agent (or controller) of the service this is.
    pub instance_id: String,
    pub metrics_interval: Duration,
    pub trace_sample_ratio: f64,
    pub timeout: Duration,
    pub max_queued_spans: usize,
}

/// The running exporter.
pub struct Telemetry {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Telemetry {
    /// Starts sampling requests and the export task.
    pub fn start(settings: TelemetrySettings) -> Telemetry {
        assert!(settings.max_queued_spans > 0 && !settings.metrics_interval.is_zero());
        let spans = trace::install(settings.trace_sample_ratio, settings.max_queued_spans);
        let stop = CancellationToken::new();
        tracing::info!(endpoint = %format!("http://{}:{}{}", settings.host, settings.port, settings.path),
            ratio = settings.trace_sample_ratio, "OpenTelemetry export on");
        let task = tokio::spawn(run(settings, spans, stop.clone()));
        Telemetry { stop, task }
    }

    /// Stops sampling, sends what is queued and the metrics a last time (within `timeout_ms`
    /// each), and ends the task.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

struct Exporter {
    settings: TelemetrySettings,
    resource: Resource,
    start_unix_ns: u64,
    log: RateLimitedLog,
    spans_sent: Arc<Counter>,
}

impl Exporter {
    fn outcome(&self, signal: &'static str, result: &Result<(), TelemetryError>) {
        let outcome = if result.is_ok() { "ok" } else { "failed" };
        metrics::counter(
            "sidestream_otlp_exports_total",
            "OTLP exports attempted, by signal (traces, metrics) and outcome (ok, failed).",
            &[("signal", signal), ("outcome", outcome)],
        )
        .inc();
        if let Err(e) = result
            && let Some(suppressed) = self.log.allow(signal, std::time::Instant::now())
        {
            tracing::warn!(signal, error = %e, suppressed, "OpenTelemetry export failed (logged once a minute)");
        }
    }

    async fn post(&self, signal: &str, body: &[u8]) -> Result<(), TelemetryError> {
        let s = &self.settings;
        let path = format!("{}/v1/{signal}", s.path);
        otlp::post(&s.host, s.port, &path, body, Instant::now() + s.timeout).await
    }

    async fn export_metrics(&self) {
        let series = metrics::snapshot();
        let body = otlp::encode_metrics(&self.resource, &series, self.start_unix_ns, unix_ns());
        let result = self.post("metrics", &body).await;
        self.outcome("metrics", &result);
    }

    /// Sends every span queued now, [`SPANS_PER_EXPORT_MAX`] per POST. A failed POST's spans
    /// are dropped (and counted): holding them would only grow memory while the receiver is away.
    async fn export_spans(&self, rx: &mut mpsc::Receiver<Box<SpanData>>) {
        let mut batch = Vec::with_capacity(SPANS_PER_EXPORT_MAX);
        loop {
            batch.clear();
            while batch.len() < SPANS_PER_EXPORT_MAX
                && let Ok(span) = rx.try_recv()
            {
                batch.push(span);
            }
            if batch.is_empty() {
                return;
            }
            let body = otlp::encode_spans(&self.resource, &batch);
            let result = self.post("traces", &body).await;
            match &result {
                Ok(()) => self.spans_sent.add(batch.len() as u64),
                Err(_) => trace::count_dropped(batch.len() as u64),
            }
            self.outcome("traces", &result);
            if batch.len() < SPANS_PER_EXPORT_MAX {
                return;
            }
        }
    }
}

async fn run(settings: TelemetrySettings, mut spans: mpsc::Receiver<Box<SpanData>>, stop: CancellationToken) {
    let resource = Resource {
        service_name: settings.service_name.clone(),
        instance_id: settings.instance_id.clone(),
        version: env!("CARGO_PKG_VERSION"),
    };
    let mut metrics_tick = tokio::time::interval(settings.metrics_interval);
    metrics_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut traces_tick = tokio::time::interval(TRACES_EXPORT_INTERVAL);
    traces_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let exporter = Exporter {
        settings,
        resource,
        start_unix_ns: unix_ns(),
        log: RateLimitedLog::new(LOG_INTERVAL),
        spans_sent: metrics::counter("sidestream_otlp_spans_exported_total", "Spans the OTLP receiver accepted.", &[]),
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = metrics_tick.tick() => exporter.export_metrics().await,
            _ = traces_tick.tick() => exporter.export_spans(&mut spans).await,
        }
    }
    trace::uninstall();
    exporter.export_spans(&mut spans).await;
    exporter.export_metrics().await;
}

fn unix_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}
