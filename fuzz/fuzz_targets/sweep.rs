//! A sweep file: parses to a plan or fails with an error naming the file, never panics.
#![no_main]

use std::path::Path;

use deltann_collector::sweep::Sweep;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Err(e) = Sweep::parse(Path::new("/fuzz/sweep.toml"), text) {
        assert!(e.to_string().contains("sweep.toml"), "{e}");
    }
});
