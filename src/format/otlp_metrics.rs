//! OTLP metrics (`opentelemetry.proto.metrics.v1.MetricsData`, protobuf), read without
//! materialising the message: what KIP-714 clients push in PushTelemetry, after decompression.
//!
//! The reader walks the bytes once per level (a few passes over a `Metric` or a `Sum`, whose
//! fields may come in any order) and hands every number it finds to a callback as a [`Point`]
//! borrowing from the input: a gauge's or a sum's data point, or a histogram's `_count` and
//! `_sum`. Nothing is allocated per message, so an input of N bytes costs O(N) time and at most
//! [`ATTRIBUTES_PER_POINT_MAX`] attributes of memory, whatever it claims; nesting is fixed
//! (no recursion: `AnyValue` arrays and key-value lists are skipped). Unknown fields are skipped
//! as protobuf requires; a truncated field, a bad wire type or a name that is not UTF-8 is an
//! error ([`OtlpError`]): the client gets INVALID_RECORD.
//!
//! Field numbers (`metrics.proto`, `common.proto`): MetricsData.resource_metrics 1;
//! ResourceMetrics.scope_metrics 2; ScopeMetrics.metrics 2; Metric name 1, gauge 5, sum 7,
//! histogram 9; Gauge/Sum/Histogram data_points 1; Sum aggregation_temporality 2, is_monotonic
//! 3; Histogram aggregation_temporality 2; NumberDataPoint attributes 7, as_double 4 (fixed64),
//! as_int 6 (sfixed64); HistogramDataPoint attributes 9, count 4 (fixed64), sum 5 (double);
//! KeyValue key 1, value 2; AnyValue string 1, bool 2, int 3, double 4.
//!
//! Must not touch: anything outside this file (a leaf, fuzzed by `fuzz_otlp_metrics`).

use std::borrow::Cow;

/// Attributes kept per data point; later ones are ignored.
pub const ATTRIBUTES_PER_POINT_MAX: usize = 16;

/// What an input that is not OTLP metrics looks like.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OtlpError {
    #[error("truncated protobuf field")]
    Truncated,
    #[error("protobuf varint longer than 10 bytes")]
    BadVarint,
    #[error("unsupported protobuf wire type {0}")]
    BadWireType(u8),
    #[error("a string is not UTF-8")]
    NotUtf8,
}

/// How a point's value behaves over time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A value now (a gauge, a non-monotonic sum).
    Gauge,
    /// A monotonic sum, cumulative: the value is the total since the start.
    Counter,
    /// A monotonic sum, delta: the value is the increase since the previous push.
    DeltaCounter,
}

/// One number of the payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Point<'a> {
    /// The OTLP metric name, e.g. `org.apache.kafka.producer.record.queue.time.avg`.
    pub metric: &'a str,
    /// Appended to the name: "" for gauges and sums, `_count` / `_sum` for a histogram's.
    pub suffix: &'static str,
    pub kind: Kind,
    /// The data point's attributes, values as text (at most [`ATTRIBUTES_PER_POINT_MAX`]).
    pub attributes: Vec<(&'a str, Cow<'a, str>)>,
    pub value: f64,
}

/// OTLP's AggregationTemporality DELTA (CUMULATIVE is 2, UNSPECIFIED 0).
const TEMPORALITY_DELTA: u64 = 1;

/// A field's value as its wire type carries it.
#[derive(Clone, Copy)]
enum Field<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32,
}

/// The fields of one message, in order.
struct Fields<'a> {
    rest: &'a [u8],
}

fn read_varint(buf: &mut &[u8]) -> Result<u64, OtlpError> {
    let mut value = 0u64;
    for i in 0..10 {
        let (&b, rest) = buf.split_first().ok_or(OtlpError::Truncated)?;
        *buf = rest;
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(OtlpError::BadVarint)
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], OtlpError> {
    if buf.len() < n {
        return Err(OtlpError::Truncated);
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Ok(head)
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u64, Field<'a>), OtlpError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let field = (|| {
            let key = read_varint(&mut self.rest)?;
            let number = key >> 3;
            let value = match (key & 7) as u8 {
                0 => Field::Varint(read_varint(&mut self.rest)?),
                1 => {
                    let b = take(&mut self.rest, 8)?;
                    Field::Fixed64(u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
                }
                2 => {
                    let n = read_varint(&mut self.rest)?;
                    let n = usize::try_from(n).map_err(|_| OtlpError::Truncated)?;
                    Field::Bytes(take(&mut self.rest, n)?)
                }
                5 => {
                    take(&mut self.rest, 4)?;
                    Field::Fixed32
                }
                other => return Err(OtlpError::BadWireType(other)),
            };
            Ok((number, value))
        })();
        if field.is_err() {
            self.rest = &[]; // one error ends the walk
        }
        Some(field)
    }
}

fn fields(buf: &[u8]) -> Fields<'_> {
    Fields { rest: buf }
}

fn utf8(b: &[u8]) -> Result<&str, OtlpError> {
    std::str::from_utf8(b).map_err(|_| OtlpError::NotUtf8)
}

/// Calls `each` with every point of a `MetricsData` message.
pub fn read_metrics_data<'a>(input: &'a [u8], each: &mut dyn FnMut(Point<'a>)) -> Result<(), OtlpError> {
    for f in fields(input) {
        if let (1, Field::Bytes(resource_metrics)) = f? {
            for f in fields(resource_metrics) {
                if let (2, Field::Bytes(scope_metrics)) = f? {
                    for f in fields(scope_metrics) {
                        if let (2, Field::Bytes(metric)) = f? {
                            read_metric(metric, each)?;
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

fn read_metric<'a>(metric: &'a [u8], each: &mut dyn FnMut(Point<'a>)) -> Result<(), OtlpError> {
    // The name first: encoders put it first, but protobuf does not promise it.
    let mut name = "";
    for f in fields(metric) {
        if let (1, Field::Bytes(b)) = f? {
            name = utf8(b)?;
        }
    }
    for f in fields(metric) {
        match f? {
            (5, Field::Bytes(gauge)) => read_number_points(gauge, name, Kind::Gauge, each)?,
            (7, Field::Bytes(sum)) => {
                let (mut delta, mut monotonic) = (false, false);
                for f in fields(sum) {
                    match f? {
                        (2, Field::Varint(t)) => delta = t == TEMPORALITY_DELTA,
                        (3, Field::Varint(m)) => monotonic = m != 0,
                        _ => {}
                    }
                }
                let kind = match (monotonic, delta) {
                    (false, _) => Kind::Gauge,
                    (true, false) => Kind::Counter,
                    (true, true) => Kind::DeltaCounter,
                };
                read_number_points(sum, name, kind, each)?;
            }
            (9, Field::Bytes(histogram)) => read_histogram(histogram, name, each)?,
            _ => {}
        }
    }
    Ok(())
}

fn read_number_points<'a>(data: &'a [u8], name: &'a str, kind: Kind, each: &mut dyn FnMut(Point<'a>)) -> Result<(), OtlpError> {
    for f in fields(data) {
        let (1, Field::Bytes(point)) = f? else { continue };
        let mut value = None;
        let mut attributes = Vec::new();
        for f in fields(point) {
            match f? {
                (4, Field::Fixed64(bits)) => value = Some(f64::from_bits(bits)),
                (6, Field::Fixed64(bits)) => value = Some(bits as i64 as f64),
                (7, Field::Bytes(kv)) => read_attribute(kv, &mut attributes)?,
                _ => {}
            }
        }
        if let Some(value) = value {
            each(Point { metric: name, suffix: "", kind, attributes, value });
        }
    }
    Ok(())
}

fn read_histogram<'a>(histogram: &'a [u8], name: &'a str, each: &mut dyn FnMut(Point<'a>)) -> Result<(), OtlpError> {
    let mut delta = false;
    for f in fields(histogram) {
        if let (2, Field::Varint(t)) = f? {
            delta = t == TEMPORALITY_DELTA;
        }
    }
    let kind = if delta { Kind::DeltaCounter } else { Kind::Counter };
    for f in fields(histogram) {
        let (1, Field::Bytes(point)) = f? else { continue };
        let (mut count, mut sum) = (None, None);
        let mut attributes = Vec::new();
        for f in fields(point) {
            match f? {
                (4, Field::Fixed64(c)) => count = Some(c as f64),
                (5, Field::Fixed64(bits)) => sum = Some(f64::from_bits(bits)),
                (9, Field::Bytes(kv)) => read_attribute(kv, &mut attributes)?,
                _ => {}
            }
        }
        if let Some(sum) = sum {
            each(Point { metric: name, suffix: "_sum", kind, attributes: attributes.clone(), value: sum });
        }
        if let Some(count) = count {
            each(Point { metric: name, suffix: "_count", kind, attributes, value: count });
        }
    }
    Ok(())
}

/// Adds a `KeyValue` to `out` (up to [`ATTRIBUTES_PER_POINT_MAX`]): strings, booleans,
/// integers and doubles as text; other values (arrays, lists, bytes) are left out.
fn read_attribute<'a>(kv: &'a [u8], out: &mut Vec<(&'a str, Cow<'a, str>)>) -> Result<(), OtlpError> {
    let mut key = "";
    let mut value = None;
    for f in fields(kv) {
        match f? {
            (1, Field::Bytes(b)) => key = utf8(b)?,
            (2, Field::Bytes(any)) => {
                for f in fields(any) {
                    value = match f? {
                        (1, Field::Bytes(s)) => Some(Cow::Borrowed(utf8(s)?)),
                        (2, Field::Varint(b)) => Some(Cow::Borrowed(if b != 0 { "true" } else { "false" })),
                        (3, Field::Varint(i)) => Some(Cow::Owned((i as i64).to_string())),
                        (4, Field::Fixed64(bits)) => Some(Cow::Owned(f64::from_bits(bits).to_string())),
                        _ => value,
                    };
                }
            }
            _ => {}
        }
    }
    if let Some(value) = value
        && out.len() < ATTRIBUTES_PER_POINT_MAX
    {
        out.push((key, value));
    }
    debug_assert!(out.len() <= ATTRIBUTES_PER_POINT_MAX);
    Ok(())
}

/// Every point of `input`, owned (tests and the fuzz target).
pub fn read_all(input: &[u8]) -> Result<Vec<Point<'_>>, OtlpError> {
    let mut out = Vec::new();
    read_metrics_data(input, &mut |p| out.push(p))?;
    Ok(out)
}

/// A minimal OTLP encoder, for tests (here and in the agent) and the fuzz target's seeds.
pub mod encode {
    /// A protobuf key.
    fn key(out: &mut Vec<u8>, number: u64, wire: u64) {
        varint(out, (number << 3) | wire);
    }

    pub fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    pub fn bytes(out: &mut Vec<u8>, number: u64, b: &[u8]) {
        key(out, number, 2);
        varint(out, b.len() as u64);
        out.extend_from_slice(b);
    }

    pub fn fixed64(out: &mut Vec<u8>, number: u64, v: u64) {
        key(out, number, 1);
        out.extend_from_slice(&v.to_le_bytes());
    }

    pub fn uint(out: &mut Vec<u8>, number: u64, v: u64) {
        key(out, number, 0);
        varint(out, v);
    }

    /// A `KeyValue` with a string value.
    pub fn attribute(k: &str, v: &str) -> Vec<u8> {
        let mut any = Vec::new();
        bytes(&mut any, 1, v.as_bytes());
        let mut kv = Vec::new();
        bytes(&mut kv, 1, k.as_bytes());
        bytes(&mut kv, 2, &any);
        kv
    }

    /// A `NumberDataPoint` with a double value.
    pub fn number_point(value: f64, attributes: &[(&str, &str)]) -> Vec<u8> {
        let mut p = Vec::new();
        for (k, v) in attributes {
            bytes(&mut p, 7, &attribute(k, v));
        }
        fixed64(&mut p, 3, 1);
        fixed64(&mut p, 4, value.to_bits());
        p
    }

    /// A `Metric` holding a gauge of `points`.
    pub fn gauge(name: &str, points: &[Vec<u8>]) -> Vec<u8> {
        let mut g = Vec::new();
        for p in points {
            bytes(&mut g, 1, p);
        }
        let mut m = Vec::new();
        bytes(&mut m, 1, name.as_bytes());
        bytes(&mut m, 5, &g);
        m
    }

    /// A `Metric` holding a monotonic sum of `points` (`delta`: DELTA, else CUMULATIVE).
    pub fn counter(name: &str, points: &[Vec<u8>], delta: bool) -> Vec<u8> {
        let mut s = Vec::new();
        for p in points {
            bytes(&mut s, 1, p);
        }
        uint(&mut s, 2, if delta { 1 } else { 2 });
        uint(&mut s, 3, 1);
        let mut m = Vec::new();
        bytes(&mut m, 1, name.as_bytes());
        bytes(&mut m, 7, &s);
        m
    }

    /// A `MetricsData` with one resource (attributes `resource`) and one scope of `metrics`.
    pub fn metrics_data(resource: &[(&str, &str)], metrics: &[Vec<u8>]) -> Vec<u8> {
        let mut r = Vec::new();
        for (k, v) in resource {
            bytes(&mut r, 1, &attribute(k, v));
        }
        let mut scope = Vec::new();
        for m in metrics {
            bytes(&mut scope, 2, m);
        }
        let mut rm = Vec::new();
        bytes(&mut rm, 1, &r);
        bytes(&mut rm, 2, &scope);
        let mut md = Vec::new();
        bytes(&mut md, 1, &rm);
        md
    }
}

#[cfg(test)]
mod tests {
    use super::encode::*;
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn gauges_sums_and_histograms_come_out_as_points() {
        let mut hist = Vec::new();
        {
            let mut p = Vec::new();
            bytes(&mut p, 9, &attribute("node_id", "1"));
            fixed64(&mut p, 4, 3);
            fixed64(&mut p, 5, 1.5f64.to_bits());
            let mut h = Vec::new();
            bytes(&mut h, 1, &p);
            uint(&mut h, 2, 2);
            bytes(&mut hist, 1, b"lat");
            bytes(&mut hist, 9, &h);
        }
        // A metric whose name comes after its data.
        let mut late_name = Vec::new();
        let mut g = Vec::new();
        bytes(&mut g, 1, &number_point(2.0, &[]));
        bytes(&mut late_name, 5, &g);
        bytes(&mut late_name, 1, b"late");
        let input = metrics_data(
            &[("client_id", "p1")],
            &[
                gauge("a.b", &[number_point(1.25, &[("topic", "t")])]),
                counter("c.total", &[number_point(7.0, &[])], false),
                counter("d.total", &[number_point(1.0, &[])], true),
                hist,
                late_name,
            ],
        );
        let points = read_all(&input).unwrap();
        let summary: Vec<_> = points.iter().map(|p| (p.metric, p.suffix, p.kind, p.value)).collect();
        assert_eq!(
            summary,
            [
                ("a.b", "", Kind::Gauge, 1.25),
                ("c.total", "", Kind::Counter, 7.0),
                ("d.total", "", Kind::DeltaCounter, 1.0),
                ("lat", "_sum", Kind::Counter, 1.5),
                ("lat", "_count", Kind::Counter, 3.0),
                ("late", "", Kind::Gauge, 2.0),
            ]
        );
        assert_eq!(points[0].attributes, [("topic", Cow::Borrowed("t"))]);
        assert_eq!(points[3].attributes, [("node_id", Cow::Borrowed("1"))]);
    }

    #[test]
    fn integer_values_and_non_string_attributes() {
        let mut p = Vec::new();
        let mut any = Vec::new();
        uint(&mut any, 3, (-5i64) as u64);
        let mut kv = Vec::new();
        bytes(&mut kv, 1, b"n");
        bytes(&mut kv, 2, &any);
        bytes(&mut p, 7, &kv);
        fixed64(&mut p, 6, (-3i64) as u64);
        let input = metrics_data(&[], &[gauge("g", &[p])]);
        let points = read_all(&input).unwrap();
        assert_eq!(points[0].value, -3.0);
        assert_eq!(points[0].attributes, [("n", Cow::<str>::Owned("-5".into()))]);
    }

    #[test]
    fn attributes_per_point_are_bounded() {
        let attrs: Vec<(String, String)> = (0..40).map(|i| (format!("k{i}"), "v".to_string())).collect();
        let attrs: Vec<(&str, &str)> = attrs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let input = metrics_data(&[], &[gauge("g", &[number_point(1.0, &attrs)])]);
        assert_eq!(read_all(&input).unwrap()[0].attributes.len(), ATTRIBUTES_PER_POINT_MAX);
    }

    #[test]
    fn broken_inputs_are_errors() {
        let good = metrics_data(&[], &[gauge("g", &[number_point(1.0, &[])])]);
        for cut in 1..good.len() {
            // Every strict prefix either decodes fewer points or is an error; never a panic.
            let _ = read_all(&good[..cut]);
        }
        assert_eq!(read_all(&[0x0a, 0x05, 0x01]).unwrap_err(), OtlpError::Truncated);
        assert_eq!(read_all(&[0x0b]).unwrap_err(), OtlpError::BadWireType(3));
        assert_eq!(read_all(&[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]).unwrap_err(), OtlpError::BadVarint);
        let bad_name = metrics_data(
            &[],
            &[{
                let mut m = Vec::new();
                bytes(&mut m, 1, &[0xff, 0xfe]);
                m
            }],
        );
        assert_eq!(read_all(&bad_name).unwrap_err(), OtlpError::NotUtf8);
        assert!(read_all(&[]).unwrap().is_empty());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// Whatever the bytes, the reader returns (no panic), and never more points than bytes.
        #[test]
        fn arbitrary_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(points) = read_all(&input) {
                prop_assert!(points.len() <= input.len());
            }
        }

        /// Encoded gauges come back with their names, values and attributes.
        #[test]
        fn encoded_gauges_round_trip(names in proptest::collection::vec("[a-z.]{1,20}", 1..8),
                                     values in proptest::collection::vec(-1e9f64..1e9, 8),
                                     attr in "[a-z_]{1,8}", attr_value in "\\PC{0,12}") {
            let metrics: Vec<Vec<u8>> = names.iter().zip(&values)
                .map(|(n, v)| gauge(n, &[number_point(*v, &[(attr.as_str(), attr_value.as_str())])]))
                .collect();
            let input = metrics_data(&[("r", "x")], &metrics);
            let points = read_all(&input).unwrap();
            prop_assert_eq!(points.len(), names.len());
            for ((p, n), v) in points.iter().zip(&names).zip(&values) {
                prop_assert_eq!(p.metric, n.as_str());
                prop_assert_eq!(p.value, *v);
                prop_assert_eq!(&p.attributes[..], &[(attr.as_str(), Cow::Borrowed(attr_value.as_str()))][..]);
            }
        }
    }
}
