//! Any bytes as a partition's produce records or as an extent: validation and iteration
//! return errors, never panic, and iteration never leaves the buffer; reading a batch as a
//! transaction marker never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sidestream::protocol::records;

fuzz_target!(|data: &[u8]| {
    let b = bytes::Bytes::copy_from_slice(data);
    for v in [3, 7, 13] {
        if let Ok((batch, h)) = records::validate_produce(&b, v) {
            assert_eq!(batch.len(), h.size_bytes as usize);
            assert!(records::crc_ok(&batch));
        }
    }
    let mut end = 0;
    for (at, h) in records::batches(data) {
        assert!(at >= end);
        end = at + h.size_bytes as usize;
        assert!(end <= data.len());
        let _ = records::crc_ok(&data[at..end]);
        let _ = records::marker_kind(&data[at..end]);
    }
});
