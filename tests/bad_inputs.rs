//! Bad input: broken and unusual images are either processed correctly or recorded with a reason
//! (never a panic, never a lost row); bad configuration is a clear error naming the file, before
//! any work starts.

use std::collections::BTreeMap;
use std::path::Path;

use deltann_collector::preprocess;
use image::{ImageEncoder, Rgb, RgbImage};

use crate::util::{self, ints, read_table, strings, text};

fn fixture(name: &str) -> std::path::PathBuf {
    util::root().join("tests/fixtures/images").join(name)
}

fn png(path: &Path, width: u32, height: u32, color: image::ExtendedColorType, bytes: &[u8]) {
    let file = std::fs::File::create(path).unwrap();
    image::codecs::png::PngEncoder::new(file)
        .write_image(bytes, width, height, color)
        .unwrap();
}

/// CRC-32 (IEEE), as PNG chunks carry it.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A lossless WebP of `width` x `height` opaque black pixels that costs zero bits per pixel:
/// no transform, no colour cache, and five prefix codes of one symbol each (VP8L, RFC 9649).
fn webp_solid(width: u32, height: u32) -> Vec<u8> {
    let mut bits: Vec<bool> = Vec::new();
    let mut put = |value: u32, n: u32| bits.extend((0..n).map(|i| (value >> i) & 1 == 1));
    put(0x2F, 8); // signature
    put(width - 1, 14);
    put(height - 1, 14);
    put(0, 1); // alpha not used
    put(0, 3); // version
    put(0, 1); // no transform
    put(0, 1); // no colour cache
    put(0, 1); // no meta prefix codes
    for symbol in [0, 0, 0, 255, 0] {
        // green, red, blue, alpha, distance: a simple code of one symbol
        put(1, 1);
        put(0, 1);
        if symbol < 2 {
            put(0, 1);
            put(symbol, 1);
        } else {
            put(1, 1);
            put(symbol, 8);
        }
    }
    let mut body = vec![0u8; bits.len().div_ceil(8)];
    for (i, bit) in bits.iter().enumerate() {
        body[i / 8] |= u8::from(*bit) << (i % 8);
    }
    if body.len() % 2 == 1 {
        body.push(0);
    }
    let mut w = b"RIFF\0\0\0\0WEBPVP8L".to_vec();
    w.extend_from_slice(&u32::try_from(body.len()).unwrap().to_le_bytes());
    w.extend_from_slice(&body);
    let riff = u32::try_from(w.len() - 8).unwrap();
    w[4..8].copy_from_slice(&riff.to_le_bytes());
    w
}

#[test]
fn the_zero_bit_webp_is_a_valid_image() {
    let small = image::load_from_memory(&webp_solid(300, 200))
        .unwrap()
        .to_rgb8();
    assert_eq!(small.dimensions(), (300, 200));
    assert!(small.pixels().all(|p| p.0 == [0, 0, 0]));
}

/// Decompression bombs: real files whose headers declare 65000 x 65000 pixels (12.7 GB as RGB),
/// as a hostile or corrupt dataset can hold. Before deltann read limits, the JPEG alone grew
/// `collect` to 24 GB until the kernel killed it.
fn bombs(dir: &Path, jpeg: &[u8]) {
    const SIDE: u16 = 65000;
    // JPEG: the first start-of-frame marker's height and width.
    let mut j = jpeg.to_vec();
    let sof = j
        .windows(2)
        .position(|w| w[0] == 0xFF && matches!(w[1], 0xC0..=0xC2))
        .unwrap();
    j[sof + 5..sof + 7].copy_from_slice(&SIDE.to_be_bytes());
    j[sof + 7..sof + 9].copy_from_slice(&SIDE.to_be_bytes());
    std::fs::write(dir.join("bomb.jpg"), &j).unwrap();
    // PNG: IHDR's width and height, with its CRC made right again.
    let small = dir.join("bomb.png");
    png(&small, 4, 4, image::ExtendedColorType::L8, &[0; 16]);
    let mut p = std::fs::read(&small).unwrap();
    p[16..20].copy_from_slice(&u32::from(SIDE).to_be_bytes());
    p[20..24].copy_from_slice(&u32::from(SIDE).to_be_bytes());
    let crc = crc32(&p[12..29]);
    p[29..33].copy_from_slice(&crc.to_be_bytes());
    std::fs::write(&small, &p).unwrap();
    // GIF: the logical screen and the first image descriptor.
    let mut g = Vec::new();
    image::codecs::gif::GifEncoder::new(&mut g)
        .encode(&[0u8; 4 * 4 * 4], 4, 4, image::ExtendedColorType::Rgba8)
        .unwrap();
    g[6..8].copy_from_slice(&SIDE.to_le_bytes());
    g[8..10].copy_from_slice(&SIDE.to_le_bytes());
    let mut at = 13;
    if g[10] & 0x80 != 0 {
        at += 3 << ((g[10] & 7) + 1);
    }
    while g[at] == 0x21 {
        at += 2;
        while g[at] != 0 {
            at += usize::from(g[at]) + 1;
        }
        at += 1;
    }
    assert_eq!(g[at], 0x2C, "image descriptor");
    g[at + 5..at + 7].copy_from_slice(&SIDE.to_le_bytes());
    g[at + 7..at + 9].copy_from_slice(&SIDE.to_le_bytes());
    std::fs::write(dir.join("bomb.gif"), &g).unwrap();
    // WebP (lossless): 16383 x 16383 (268 megapixels, 1 GiB as RGBA; 16384, the most its header
    // can state, is misread as 0 by image-webp 0.2.4), in a valid bitstream of 8 bytes: every prefix code has a single symbol,
    // so each pixel costs zero bits. The WebP decoder takes it (a small one decodes, below);
    // only deltann's limits stop it.
    std::fs::write(dir.join("bomb.webp"), webp_solid(16383, 16383)).unwrap();
    // TIFF: one strip of RGB, width and length 65000, the strip itself absent.
    let mut t = b"II*\0".to_vec();
    t.extend_from_slice(&8u32.to_le_bytes());
    let entries: [(u16, u16, u32); 9] = [
        (256, 4, 65000), // ImageWidth, LONG
        (257, 4, 65000), // ImageLength
        (258, 3, 8),     // BitsPerSample
        (259, 3, 1),     // Compression: none
        (262, 3, 2),     // Photometric: RGB
        (273, 4, 200),   // StripOffsets
        (277, 3, 3),     // SamplesPerPixel
        (278, 4, 65000), // RowsPerStrip
        (279, 4, 16),    // StripByteCounts
    ];
    t.extend_from_slice(&u16::try_from(entries.len()).unwrap().to_le_bytes());
    for (tag, kind, value) in entries {
        t.extend_from_slice(&tag.to_le_bytes());
        t.extend_from_slice(&kind.to_le_bytes());
        t.extend_from_slice(&1u32.to_le_bytes());
        if kind == 3 {
            t.extend_from_slice(&u16::try_from(value).unwrap().to_le_bytes());
            t.extend_from_slice(&[0, 0]);
        } else {
            t.extend_from_slice(&value.to_le_bytes());
        }
    }
    t.extend_from_slice(&0u32.to_le_bytes());
    t.resize(216, 0);
    std::fs::write(dir.join("bomb.tiff"), &t).unwrap();
}

/// A folder with every kind of bad and unusual image next to a good one.
fn bad_dataset(dir: &Path) {
    let photo = util::data().join("images/pelican.jpeg");
    let good = std::fs::read(&photo).unwrap();
    std::fs::write(dir.join("good.jpeg"), &good).unwrap();
    // The same photo under a name that is not UTF-8 (Latin-1 "café").
    let latin1 = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"caf\xe9.jpeg");
    std::fs::write(dir.join(latin1), &good).unwrap();
    std::fs::write(dir.join("empty.jpg"), b"").unwrap();
    std::fs::write(dir.join("truncated.jpg"), &good[..good.len() / 3]).unwrap();
    std::fs::write(
        dir.join("not-an-image.jpg"),
        b"this is a text file, not a JPEG\n",
    )
    .unwrap();
    std::os::unix::fs::symlink(dir.join("nowhere.jpg"), dir.join("dangling.jpg")).unwrap();
    std::fs::write(dir.join("notes.txt"), b"skipped: not an image extension").unwrap();

    let rgb = image::load_from_memory(&good).unwrap().to_rgb8();
    let (w, h) = rgb.dimensions();
    let gray: Vec<u8> = rgb.pixels().map(|p| p[1]).collect();
    png(
        &dir.join("gray.png"),
        w,
        h,
        image::ExtendedColorType::L8,
        &gray,
    );
    let rgba: Vec<u8> = rgb.pixels().flat_map(|p| [p[0], p[1], p[2], 128]).collect();
    png(
        &dir.join("alpha.png"),
        w,
        h,
        image::ExtendedColorType::Rgba8,
        &rgba,
    );
    let deep: Vec<u8> = rgb
        .pixels()
        .flat_map(|p| p.0.map(|c| u16::from(c) * 257))
        .flat_map(u16::to_be_bytes)
        .collect();
    png(
        &dir.join("deep.png"),
        w,
        h,
        image::ExtendedColorType::Rgb16,
        &deep,
    );
    std::fs::copy(fixture("cmyk.jpg"), dir.join("cmyk.jpg")).unwrap();
    std::fs::copy(fixture("exif-rotated.jpg"), dir.join("exif-rotated.jpg")).unwrap();
    bombs(dir, &good);
}

#[test]
fn bad_images_are_recorded_unusual_ones_processed() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("imgs");
    std::fs::create_dir(&images).unwrap();
    bad_dataset(&images);
    let sweep = util::write_sweep(
        dir.path(),
        r#"
store = "store"
warmup = 0
[dataset]
images = "imgs"
[[model]]
name = "efficientnet-lite0"
path = "{data}/efficientnet-lite0.onnx"
preset = "tf127"
[environments]
engine = ["tract"]
"#,
    );
    let out = util::run(&["collect", "--quiet", sweep.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("9 undecodable images"),
        "{}",
        text(&out)
    );

    let store = dir.path().join("store");
    let rows = read_table(&store, "images").all().unwrap();
    assert_eq!(
        rows.num_rows(),
        16,
        "every image file has a row (notes.txt is not one)"
    );
    let ids = strings(&rows, "image_id");
    let status = strings(&rows, "status");
    let error = strings(&rows, "error");
    let color = strings(&rows, "color");
    let exif = ints(&rows, "exif_orientation");
    let by_id: BTreeMap<String, usize> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.clone().unwrap(), i))
        .collect();
    let reason = |id: &str| error[by_id[id]].clone().unwrap_or_default();
    for (id, needle) in [
        ("empty.jpg", "empty file"),
        ("truncated.jpg", "truncated JPEG"),
        ("not-an-image.jpg", "not an image"),
        ("dangling.jpg", "cannot read file"),
        ("bomb.jpg", "declares 65000x65000 pixels"),
        ("bomb.png", "declares 65000x65000 pixels"),
        ("bomb.gif", "declares 65000x65000 pixels"),
        ("bomb.webp", "declares 16383x16383 pixels"),
        ("bomb.tiff", "declares 65000x65000 pixels"),
    ] {
        assert_eq!(status[by_id[id]].as_deref(), Some("failed"), "{id}");
        assert!(reason(id).contains(needle), "{id}: {}", reason(id));
    }
    for id in [
        "good.jpeg",
        "caf\\xE9.jpeg",
        "gray.png",
        "alpha.png",
        "deep.png",
        "cmyk.jpg",
        "exif-rotated.jpg",
    ] {
        assert_eq!(
            status[by_id[id]].as_deref(),
            Some("ok"),
            "{id}: {}",
            reason(id)
        );
    }
    assert_eq!(color[by_id["gray.png"]].as_deref(), Some("L8"));
    assert_eq!(color[by_id["alpha.png"]].as_deref(), Some("Rgba8"));
    assert_eq!(color[by_id["deep.png"]].as_deref(), Some("Rgb16"));
    assert_eq!(exif[by_id["exif-rotated.jpg"]], Some(6));

    // The failures are in `errors` with their reason; the rest ran.
    let errors = read_table(&store, "errors").all().unwrap();
    let failed: std::collections::BTreeSet<String> =
        strings(&errors, "image_id").into_iter().flatten().collect();
    assert_eq!(failed.len(), 9, "{failed:?}");
    assert!(
        strings(&errors, "stage")
            .iter()
            .all(|s| s.as_deref() == Some("decode"))
    );
    let outputs = read_table(&store, "outputs").all().unwrap();
    let ran: std::collections::BTreeSet<String> = strings(&outputs, "image_id")
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(ran.len(), 7);
    assert!(ran.is_disjoint(&failed));

    // The same photo as gray, alpha and 16-bit: alpha and 16-bit lose nothing, so they classify
    // exactly like the original (pelican).
    let top1: BTreeMap<String, i32> = strings(&outputs, "image_id")
        .into_iter()
        .zip(ints(&outputs, "top1"))
        .map(|(i, t)| (i.unwrap(), t.unwrap()))
        .collect();
    for id in ["good.jpeg", "caf\\xE9.jpeg", "alpha.png", "deep.png"] {
        assert_eq!(top1[id], 144, "{id}");
    }
}

fn mean_abs_diff(a: &RgbImage, b: &RgbImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions());
    let total: u64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| u64::from(x.abs_diff(*y)))
        .sum();
    total as f64 / a.as_raw().len() as f64
}

#[test]
fn cmyk_and_exif_decode_like_pillow() {
    // Pillow's decodes of the same files (tests/fixtures/make_fixtures.py). JPEG decoders differ
    // by a level or two here and there; a wrong colour conversion or a missed rotation would
    // differ by tens.
    for name in ["cmyk", "exif-rotated"] {
        let bytes = std::fs::read(fixture(&format!("{name}.jpg"))).unwrap();
        let (ours, _) = preprocess::decode(&bytes).unwrap();
        let expected = image::open(fixture(&format!("{name}.expected.png")))
            .unwrap()
            .to_rgb8();
        let diff = mean_abs_diff(&ours, &expected);
        assert!(diff < 2.0, "{name}: mean difference {diff} levels");
    }
    // Sanity check of the measure: the unrotated pixels are far from the upright expectation.
    let stored = image::open(fixture("exif-rotated.jpg")).unwrap().to_rgb8();
    let upright = image::open(fixture("exif-rotated.expected.png"))
        .unwrap()
        .to_rgb8();
    let wrong = image::imageops::rotate270(&stored);
    assert!(mean_abs_diff(&wrong, &upright) > 10.0);
    let _ = Rgb([0u8; 3]);
}

#[test]
fn bad_configuration_is_a_clear_error_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let base = r#"
store = "store"
[dataset]
images = "{data}/images"
labels = "LABELS"
[[model]]
name = "m"
path = "MODEL"
preset = "tf127"
[environments]
engine = ["tract"]
"#;
    let garbage = dir.path().join("garbage.onnx");
    std::fs::write(&garbage, b"\x08\x01 not a model at all \xff").unwrap();
    let bad_labels = dir.path().join("labels.csv");
    std::fs::write(
        &bad_labels,
        "file,class_index\nimages/pelican.jpeg,pelican\n",
    )
    .unwrap();
    let big_labels = dir.path().join("big.csv");
    std::fs::write(
        &big_labels,
        format!(
            "file,class_index\n{}/images/pelican.jpeg,1000\n",
            util::data().display()
        ),
    )
    .unwrap();
    let model = util::data().join("efficientnet-lite0.onnx");
    let good_labels = util::data().join("labels.csv");
    let cases: Vec<(String, String, &str)> = vec![
        (
            dir.path().join("missing.onnx").display().to_string(),
            good_labels.display().to_string(),
            "missing.onnx: model file does not exist",
        ),
        (
            garbage.display().to_string(),
            good_labels.display().to_string(),
            "garbage.onnx: not a valid ONNX model",
        ),
        (
            model.display().to_string(),
            bad_labels.display().to_string(),
            "labels.csv: line 2: class_index `pelican` is not a non-negative integer",
        ),
        (
            model.display().to_string(),
            big_labels.display().to_string(),
            "big.csv: `pelican.jpeg` has class 1000 but model m has 1000 classes",
        ),
    ];
    for (model, labels, expected) in cases {
        let sweep = util::write_sweep(
            dir.path(),
            &base.replace("MODEL", &model).replace("LABELS", &labels),
        );
        let out = util::run(&["collect", "--quiet", sweep.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(expected),
            "expected {expected:?} in:\n{stderr}"
        );
        assert!(
            !dir.path().join("store").exists(),
            "work started despite: {expected}"
        );
    }

    // Unknown key, with its name and line.
    let sweep = util::write_sweep(
        dir.path(),
        &base
            .replace("MODEL", &model.display().to_string())
            .replace("LABELS", &good_labels.display().to_string())
            .replace("preset = \"tf127\"", "preset = \"tf127\"\nresize = 256"),
    );
    let out = util::run(&["plan", sweep.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("sweep.toml") && stderr.contains("line 10") && stderr.contains("resize"),
        "{stderr}"
    );

    // A missing sweep file, and a store that is someone else's folder.
    let out = util::run(&["collect", "nope.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.toml does not exist"));
    let foreign = dir.path().join("thesis");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("chapter1.tex"), "precious").unwrap();
    let sweep = util::write_sweep(
        dir.path(),
        &base
            .replace("MODEL", &model.display().to_string())
            .replace("LABELS", &good_labels.display().to_string()),
    );
    let out = util::run(&[
        "collect",
        "--store",
        foreign.to_str().unwrap(),
        sweep.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to write results into it"));
    assert_eq!(std::fs::read_dir(&foreign).unwrap().count(), 1);
}
