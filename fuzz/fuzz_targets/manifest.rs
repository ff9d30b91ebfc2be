//! The store's manifest: reads to entries (whole lines, whole groups) or fails naming the file.
#![no_main]

use std::path::Path;

use deltann_store::manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    match manifest::parse(bytes, Path::new("/fuzz/_manifest.jsonl")) {
        Ok(read) => {
            assert!(read.valid_len <= bytes.len() as u64);
            // What was taken is whole lines; what follows is a torn tail or nothing.
            let valid = read.valid_len as usize;
            assert!(valid == 0 || bytes[valid - 1] == b'\n');
            assert_eq!(read.torn_tail, valid < bytes.len());
            for entry in &read.entries {
                if let Some(g) = entry.group {
                    assert!(g.index < g.len);
                }
            }
        }
        Err(e) => assert!(e.to_string().contains("_manifest.jsonl"), "{e}"),
    }
});
