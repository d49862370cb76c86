//! Any bytes as a partition's produce records or as an extent: validation (down to every
//! record, decompressing with every codec, CRC or not) and iteration return errors, never panic,
//! and iteration never leaves the buffer; reading a batch as a transaction marker never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sidestream::format::records;

fuzz_target!(|data: &[u8]| {
    let checks = records::RecordChecks {
        topic: "t",
        partition: 0,
        now_ms: 1_700_000_000_000,
        timestamp_before_max_ms: i64::MAX,
        timestamp_after_max_ms: 3_600_000,
        compacted: data.first().is_some_and(|b| b & 1 == 1),
        max_decompressed_bytes: 1 << 20,
    };
    let b = bytes::Bytes::copy_from_slice(data);
    for v in [3, 7, 13] {
        if let Ok((batch, h)) = records::validate_produce(&b, v) {
            assert_eq!(batch.len(), h.size_bytes as usize);
            assert!(records::crc_ok(&batch));
            let _ = records::validate_records(&batch, &h, &checks);
        }
    }
    let mut end = 0;
    for (at, h) in records::batches(data) {
        assert!(at >= end);
        end = at + h.size_bytes as usize;
        assert!(end <= data.len());
        let _ = records::crc_ok(&data[at..end]);
        let _ = records::marker_kind(&data[at..end]);
        // The record walk and the decompressors behind it, without needing a valid CRC.
        let _ = records::validate_records(&data[at..end], &h, &checks);
    }
});
