//! Any bytes as a PushTelemetry payload: as OTLP metrics directly, and through each codec's
//! bounded decompression first. Reading refuses or yields points, never panics, and the
//! decompressed size never passes its bound.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sidestream::format::otlp_metrics::read_all;
use sidestream::format::records::decompress_bounded;

const MAX_DECOMPRESSED_BYTES: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    if let Ok(points) = read_all(data) {
        assert!(points.len() <= data.len());
    }
    let Some((&codec, rest)) = data.split_first() else { return };
    if let Ok(out) = decompress_bounded(i16::from(codec % 5), rest, MAX_DECOMPRESSED_BYTES) {
        assert!(out.len() <= MAX_DECOMPRESSED_BYTES);
        let _ = read_all(&out);
    }
});
