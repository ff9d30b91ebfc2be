//! Image preparation: a file's bytes go through the header check, the bounded decode and the
//! model's preprocessing (resize, crop, normalise), within the decode limits, never a panic.
#![no_main]

use deltann_collector::preprocess::{self, DecodeLimits, Preprocess, Preset};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    // Small limits keep each run fast; the checks are the same at any size.
    let limits = DecodeLimits {
        max_pixels: 1 << 22,
        max_alloc: 64 << 20,
        ..DecodeLimits::default()
    };
    let Ok(header) = preprocess::read_header(bytes, &limits) else {
        return;
    };
    assert!(header.peak_bytes() <= limits.max_alloc + 2 * 3 * limits.max_pixels);
    let Ok((rgb, _info)) = header.decode() else {
        return;
    };
    assert!(u64::from(rgb.width()) * u64::from(rgb.height()) <= limits.max_pixels);
    let p = Preprocess::from_preset(Preset::Torchvision, 64);
    let mut tensor = Vec::new();
    if preprocess::preprocess(&rgb, &p, &mut tensor).is_ok() {
        assert_eq!(tensor.len(), p.tensor_len());
        assert!(tensor.iter().all(|v| v.is_finite()));
    }
});
