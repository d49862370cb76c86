//! Sidestream's `/metrics` text as figures: every series summed over its labels (and each
//! labelled series under its full name too), and each histogram's p50, p99 and p999 as
//! `name:p0.5`, `name:p0.99`, `name:p0.999` (seconds), estimated from its buckets summed over
//! labels, as Prometheus' `histogram_quantile` does. The server keeps buckets, not exact
//! quantiles: these server-side figures are within a bucket's width (at most 2.5x) of the
//! truth; the bench's own latencies (hdrhistogram, per record) are exact.

use std::collections::BTreeMap;

/// The quantiles computed for each histogram.
const QUANTILES: [(f64, &str); 3] = [(0.5, "0.5"), (0.99, "0.99"), (0.999, "0.999")];

pub fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    // Histogram name -> le -> count, summed over the other labels.
    let mut buckets: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("sidestream_")) {
        let (name, value) = line.rsplit_once(' ').unwrap_or((line, "0"));
        let value = value.parse::<f64>().unwrap_or(0.0);
        let base = name.split('{').next().unwrap_or(name);
        if let Some(histogram) = base.strip_suffix("_bucket") {
            let le = name.split_once("le=\"").and_then(|(_, rest)| rest.split('"').next()).unwrap_or("+Inf");
            *buckets.entry(histogram.to_string()).or_default().entry(le.to_string()).or_insert(0.0) += value;
            continue;
        }
        *out.entry(base.to_string()).or_insert(0.0) += value;
        if name.contains('{') {
            out.insert(name.to_string(), value);
        }
    }
    for (name, by_le) in buckets {
        let mut sorted: Vec<(f64, u64)> = by_le
            .iter()
            .map(|(le, c)| (if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or(f64::INFINITY) }, *c as u64))
            .collect();
        sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
        let bounds: Vec<f64> = sorted.iter().map(|(le, _)| *le).filter(|le| le.is_finite()).collect();
        let cumulative: Vec<u64> = sorted.iter().map(|(_, c)| *c).collect();
        for (q, label) in QUANTILES {
            if let Some(v) = sidestream::metrics::quantile(&bounds, &cumulative, q) {
                out.insert(format!("{name}:p{label}"), v);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn sums_and_quantiles_from_buckets() {
        let text = "# TYPE sidestream_x_seconds histogram\n\
            sidestream_x_seconds_bucket{acks=\"1\",le=\"0.001\"} 0\n\
            sidestream_x_seconds_bucket{acks=\"1\",le=\"0.002\"} 10\n\
            sidestream_x_seconds_bucket{acks=\"1\",le=\"+Inf\"} 10\n\
            sidestream_x_seconds_bucket{acks=\"all\",le=\"0.001\"} 0\n\
            sidestream_x_seconds_bucket{acks=\"all\",le=\"0.002\"} 10\n\
            sidestream_x_seconds_bucket{acks=\"all\",le=\"+Inf\"} 10\n\
            sidestream_x_seconds_count{acks=\"1\"} 10\n\
            sidestream_x_seconds_count{acks=\"all\"} 10\n\
            sidestream_wal_syncs_total 7\n";
        let m = super::parse(text);
        assert_eq!(m["sidestream_wal_syncs_total"], 7.0);
        assert_eq!(m["sidestream_x_seconds_count"], 20.0);
        assert_eq!(m["sidestream_x_seconds_count{acks=\"all\"}"], 10.0);
        assert!((m["sidestream_x_seconds:p0.5"] - 0.0015).abs() < 1e-9, "{m:?}");
        assert!(!m.contains_key("sidestream_x_seconds_bucket"));
    }
}
