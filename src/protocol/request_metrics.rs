//! Per-API request metrics: `sidestream_requests_total{api,version}` (requests read) and the
//! histogram `sidestream_request_seconds{api,version}` (from the request read to its answer
//! written; for an acks=0 Produce, which has no answer, to the end of its handling).
//!
//! The label sets are the advertised table ([`SUPPORTED_APIS`]): a fixed slot per API key and
//! version, filled at its first request (so /metrics shows what clients use, not every pair),
//! then reached by two indexings with no lock and no allocation. Requests outside the table
//! close the connection and are not counted here. Error codes are counted by
//! [`crate::failures::count`].

use std::sync::{Arc, OnceLock};

use super::handlers::SUPPORTED_APIS;
use crate::metrics::{self, Counter, Histogram};

/// The metrics of one API version.
pub struct RequestMetrics {
    pub requests: Arc<Counter>,
    pub seconds: Arc<Histogram>,
}

struct Api {
    name: String,
    min_version: i16,
    /// One slot per version from `min_version` up.
    versions: Vec<OnceLock<RequestMetrics>>,
}

/// Indexed by API key.
fn table() -> &'static [Option<Api>] {
    static TABLE: OnceLock<Vec<Option<Api>>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let top = SUPPORTED_APIS.iter().map(|(k, _, _)| *k as i16).max().unwrap_or(0);
        let mut table: Vec<Option<Api>> = (0..=top).map(|_| None).collect();
        for (key, lo, hi) in SUPPORTED_APIS {
            assert!(lo <= hi, "{key:?}: versions {lo}..={hi}");
            table[*key as i16 as usize] =
                Some(Api { name: format!("{key:?}"), min_version: *lo, versions: (*lo..=*hi).map(|_| OnceLock::new()).collect() });
        }
        table
    })
}

/// The metrics of API `key` version `version` as a request header names them; None outside
/// the advertised table.
pub fn of(key: i16, version: i16) -> Option<&'static RequestMetrics> {
    let api = table().get(usize::try_from(key).ok()?)?.as_ref()?;
    let slot = api.versions.get(usize::try_from(version.checked_sub(api.min_version)?).ok()?)?;
    Some(slot.get_or_init(|| {
        let v = version.to_string();
        let labels = [("api", api.name.as_str()), ("version", v.as_str())];
        RequestMetrics {
            requests: metrics::counter("sidestream_requests_total", "Requests read, by Kafka API and version.", &labels),
            seconds: metrics::histogram(
                "sidestream_request_seconds",
                "Time from a request read to its answer written, by Kafka API and version.",
                &labels,
            ),
        }
    }))
}

/// [`of`] for a request frame (without its length prefix): its first four bytes are the API
/// key and version.
pub fn of_frame(frame: &[u8]) -> Option<&'static RequestMetrics> {
    match frame {
        [k0, k1, v0, v1, ..] => of(i16::from_be_bytes([*k0, *k1]), i16::from_be_bytes([*v0, *v1])),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::ApiKey;

    use super::*;

    #[test]
    fn one_slot_per_advertised_version_and_none_outside() {
        let produce = of(ApiKey::Produce as i16, 9).expect("Produce v9 is advertised");
        assert!(std::ptr::eq(produce, of_frame(&[0, 0, 0, 9, 0, 0, 0, 1]).unwrap()), "the same slot, found again");
        produce.requests.inc();
        let text = metrics::render();
        assert!(text.contains("sidestream_requests_total{api=\"Produce\",version=\"9\"} 1\n"), "{text}");
        assert!(text.contains("sidestream_request_seconds_count{api=\"Produce\",version=\"9\"} 0\n"), "{text}");
        assert!(of(ApiKey::Produce as i16, 2).is_none(), "below the advertised versions");
        assert!(of(ApiKey::Produce as i16, 14).is_none(), "above them");
        assert!(of(-1, 0).is_none() && of(i16::MAX, 0).is_none() && of(0, i16::MIN).is_none());
        assert!(of_frame(&[0, 0, 0]).is_none());
        for (key, lo, hi) in SUPPORTED_APIS {
            assert!(of(*key as i16, *lo).is_some() && of(*key as i16, *hi).is_some(), "{key:?}");
        }
    }
}
