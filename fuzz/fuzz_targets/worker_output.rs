//! A worker's standard output (JSON lines around an Arrow IPC stream), as the collector decodes
//! it from a process it does not trust: any bytes end in a value, never a panic.
#![no_main]

use deltann_collector::protocol::{self, Output};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let probe = bytes.first().is_some_and(|b| b & 1 == 1);
    // The second flag picks the stream a localisation request is answered with.
    let schema = if bytes.first().is_some_and(|b| b & 2 == 2) {
        protocol::tensors_schema()
    } else {
        protocol::result_schema()
    };
    let mut seen = 0usize;
    protocol::decode_output(bytes, probe, &schema, |out| {
        seen += 1;
        if let Output::Results(batch) = &out {
            assert_eq!(batch.schema(), schema);
        }
        true
    });
    assert!(seen >= 1, "every stream ends in at least one message");
});
