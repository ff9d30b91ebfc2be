//! Random-input robustness of the collector's parsers: the sweep file, the worker protocol's
//! message lines, image preparation and the store's manifest reader are fed thousands of mutated
//! valid inputs (bytes replaced, inserted, deleted, truncated) from a fixed seed. Each must answer
//! with a value or an error, never a panic; image decoding must also stay within its limits.
//! This is not coverage-guided fuzzing (that needs a nightly toolchain here), but it exercises
//! the same entry points with the same kinds of damage, reproducibly.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use deltann_collector::{preprocess, protocol, sweep::Sweep};

/// A copy of `valid` with a few random edits.
fn mutate(rng: &mut fastrand::Rng, valid: &[u8], printable: bool) -> Vec<u8> {
    let mut out = valid.to_vec();
    let byte = |rng: &mut fastrand::Rng| {
        if printable {
            rng.u8(0x20..0x7F)
        } else {
            rng.u8(..)
        }
    };
    for _ in 0..rng.usize(1..=8) {
        if out.is_empty() {
            out.push(byte(rng));
            continue;
        }
        let at = rng.usize(..out.len());
        match rng.u8(0..5) {
            0 => out[at] = byte(rng),
            1 => out.insert(at, byte(rng)),
            2 => {
                out.remove(at);
            }
            3 => out.truncate(at),
            _ => {
                // Duplicate a slice: repeated keys, sections and markers.
                let end = (at + rng.usize(1..64)).min(out.len());
                let slice = out[at..end].to_vec();
                let to = rng.usize(..=out.len());
                out.splice(to..to, slice);
            }
        }
    }
    out
}

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data")
}

#[test]
fn mutated_sweep_files_parse_or_fail_cleanly() {
    let valid = br#"
store = "results/x"
warmup = 2
logits = "full"
[dataset]
images = "imgs"
labels = "labels.csv"
limit = 10
[[model]]
name = "m"
path = "m.onnx"
preset = "torchvision"
size = 224
crop = 0.875
[environments]
engine = ["tract"]
tract_plan = ["decluttered", "optimized"]
threads = [1, 2]
batch_size = [1, 4]
repetitions = [3]
exclude = [{ threads = 2, batch_size = 4 }]
"#;
    let mut rng = fastrand::Rng::with_seed(1);
    let (mut ok, mut err) = (0, 0);
    for _ in 0..20_000 {
        let text = mutate(&mut rng, valid, true);
        let text = String::from_utf8(text).unwrap();
        match Sweep::parse(Path::new("/sweeps/s.toml"), &text) {
            Ok(_) => ok += 1,
            Err(e) => {
                assert!(e.to_string().contains("s.toml"), "{e}");
                err += 1;
            }
        }
    }
    assert!(ok > 0 && err > 0, "{ok} parsed, {err} refused");
}

#[test]
fn mutated_protocol_lines_decode_or_fail_cleanly() {
    let ready = serde_json::to_string(&protocol::Done {
        batches: 12,
        peak_rss_kib: Some(1024),
    })
    .unwrap();
    let mut rng = fastrand::Rng::with_seed(2);
    for i in 0..20_000 {
        let mut line = mutate(&mut rng, ready.as_bytes(), i % 2 == 0);
        line.push(b'\n');
        let mut input = std::io::Cursor::new(line);
        let _ = protocol::read_line::<protocol::Done>(&mut input);
        let _ = protocol::read_line::<protocol::Ready>(&mut input);
    }
}

#[test]
fn mutated_images_decode_or_fail_within_limits() {
    let mut rng = fastrand::Rng::with_seed(3);
    let limits = preprocess::DecodeLimits::default();
    let mut decoded = 0;
    for name in ["pelican.jpeg", "horse.png"] {
        let valid = std::fs::read(data().join("images").join(name)).unwrap();
        for _ in 0..1000 {
            let bytes = mutate(&mut rng, &valid, false);
            let Ok(header) = preprocess::read_header(&bytes, &limits) else {
                continue;
            };
            assert!(header.peak_bytes() <= limits.max_alloc + 2 * 3 * limits.max_pixels);
            if let Ok((rgb, _)) = header.decode() {
                decoded += 1;
                let pixels = u64::from(rgb.width()) * u64::from(rgb.height());
                assert!(pixels <= limits.max_pixels);
            }
        }
    }
    assert!(decoded > 0, "no mutated image decoded at all");
}

#[test]
fn mutated_manifests_read_or_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("_manifest.jsonl");
    let line = r#"{"seq":4,"table":"outputs","path":"outputs/model=m/engine=ort/part-000004-f71de32f3b03656e.parquet","rows":24,"bytes":93811,"cell_id":"f71de32f3b03656e","run_id":"r","committed_at_us":1795704434123456,"xxh3":"3f0c5e1b9a27d4c8"}"#;
    let valid = format!("{line}\n{line}\n{line}\n");
    let mut rng = fastrand::Rng::with_seed(4);
    let (mut ok, mut err) = (0, 0);
    for i in 0..5000 {
        std::fs::write(&path, mutate(&mut rng, valid.as_bytes(), i % 2 == 0)).unwrap();
        match deltann_store::manifest::read(&path) {
            Ok(read) => {
                ok += 1;
                assert!(read.valid_len <= std::fs::metadata(&path).unwrap().len());
            }
            Err(e) => {
                assert!(e.to_string().contains("_manifest.jsonl"), "{e}");
                err += 1;
            }
        }
    }
    assert!(ok > 0 && err > 0, "{ok} read, {err} refused");
}
