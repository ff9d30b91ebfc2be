//! Each preprocessing implementation against the real library, byte for byte: deltann's resize
//! and crop of the demo photos (and of synthetic images that upscale, or are long and thin) must
//! equal what Pillow (torchvision's pipeline and the hand-written one that rounds), OpenCV
//! (`cv2.resize`, `INTER_LINEAR`) and TensorFlow (`tf.image.resize`, bilinear) make of the same
//! decoded pixels. The libraries run in the `references` environment (pinned PyPI versions,
//! installed once by `deltann engines install references`) through scripts/preprocess_reference.py.
//! Decoding is deltann's on both sides: this compares preprocessing, not JPEG decoders.

use deltann_collector::preprocess::{self, Implementation, Preprocess, Preset, ResizeFilter};
use deltann_collector::python::{self, PythonEnv};
use image::RgbImage;

use crate::util::{self, text};

/// The images compared: every demo photo, then synthetic ones that a 224 or 240 model upscales
/// (97x61), stretches (1000x150) or resizes from an odd size (333x251, and 251x333, whose odd
/// rows are kept whole with crop 1.0).
fn images() -> Vec<(String, RgbImage)> {
    let mut out = Vec::new();
    let mut paths: Vec<_> = std::fs::read_dir(util::data().join("images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    for path in paths {
        let (rgb, _) = preprocess::decode(&std::fs::read(&path).unwrap()).unwrap();
        out.push((
            path.file_name().unwrap().to_string_lossy().into_owned(),
            rgb,
        ));
    }
    let mut seed = 7u32;
    for (w, h) in [(97, 61), (1000, 150), (333, 251), (251, 333)] {
        let img = RgbImage::from_fn(w, h, |x, y| {
            // Structure plus noise, so that every rounding path is taken.
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let noise = (seed >> 16) as u8 % 32;
            image::Rgb([
                ((x * 255 / w) as u8).wrapping_add(noise),
                ((y * 255 / h) as u8).wrapping_add(noise / 2),
                (((x ^ y) & 0xff) as u8).wrapping_add(noise),
            ])
        });
        out.push((format!("synthetic-{w}x{h}"), img));
    }
    out
}

#[test]
fn every_preprocess_implementation_matches_its_library_byte_for_byte() {
    util::python_engine("references");
    let python = python::python(PythonEnv::References).unwrap();
    let dir = tempfile::tempdir().unwrap();

    let mut recipes = Vec::new();
    for size in [224, 240] {
        for implementation in Implementation::ALL {
            let filters: &[ResizeFilter] = if implementation.uses_filter() {
                &[
                    ResizeFilter::Bilinear,
                    ResizeFilter::Nearest,
                    ResizeFilter::Bicubic,
                    ResizeFilter::Lanczos3,
                    ResizeFilter::Box,
                    ResizeFilter::Hamming,
                ]
            } else {
                &[ResizeFilter::BilinearNoAntialias]
            };
            for &filter in filters {
                // crop 0.875 as the models use it; 1.0 keeps the whole short side, so a portrait
                // image's rows are compared to their last pixel.
                for crop in [0.875, 1.0] {
                    let mut p = Preprocess::from_preset(Preset::Torchvision, size);
                    p.implementation = implementation;
                    p.filter = filter;
                    p.crop = crop;
                    recipes.push(p);
                }
            }
        }
    }

    let mut cases = Vec::new();
    let mut ours = Vec::new();
    for (i, (name, img)) in images().iter().enumerate() {
        let rgb = dir.path().join(format!("{i}.rgb"));
        std::fs::write(&rgb, img.as_raw()).unwrap();
        for (j, p) in recipes.iter().enumerate() {
            let mut pixels = Vec::new();
            preprocess::crop(img, p, &mut pixels).unwrap();
            let out = dir.path().join(format!("{i}-{j}.ref"));
            cases.push(serde_json::json!({
                "rgb": rgb, "width": img.width(), "height": img.height(), "size": p.size,
                "crop": p.crop, "implementation": p.implementation.name(),
                "filter": p.filter.name(), "out": out,
            }));
            ours.push((name.clone(), p.clone(), pixels, out));
        }
    }
    let list = dir.path().join("cases.json");
    std::fs::write(&list, serde_json::to_string(&cases).unwrap()).unwrap();
    let out = std::process::Command::new(python)
        .arg(util::root().join("scripts/preprocess_reference.py"))
        .arg(&list)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    eprintln!("{}", String::from_utf8_lossy(&out.stdout).trim());

    let mut mismatches = Vec::new();
    for (name, p, pixels, reference) in &ours {
        let reference = std::fs::read(reference).unwrap();
        if *pixels != reference {
            let differing: Vec<i32> = pixels
                .iter()
                .zip(&reference)
                .filter(|(a, b)| a != b)
                .map(|(&a, &b)| i32::from(a) - i32::from(b))
                .collect();
            mismatches.push(format!(
                "{name} size {} {} {}: {} of {} bytes differ, by {}..={} (lengths {} and {})",
                p.size,
                p.implementation,
                p.filter,
                differing.len(),
                pixels.len(),
                differing.iter().min().unwrap_or(&0),
                differing.iter().max().unwrap_or(&0),
                pixels.len(),
                reference.len()
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} cases differ from the library:\n{}",
        mismatches.len(),
        ours.len(),
        mismatches.join("\n")
    );
    // The implementations are not one another: on a resized photo each pair differs (rocket.jpg,
    // 640x427, resizes to 410.7 x 274 for a 240 crop: truncated and rounded long sides differ).
    let rocket: Vec<&Vec<u8>> = ours
        .iter()
        .filter(|(n, p, _, _)| {
            n == "rocket.jpg"
                && p.size == 240
                && p.crop == 0.875
                && matches!(
                    p.filter,
                    ResizeFilter::Bilinear | ResizeFilter::BilinearNoAntialias
                )
        })
        .map(|(_, _, px, _)| px)
        .collect();
    assert_eq!(rocket.len(), 4);
    for a in 0..4 {
        for b in a + 1..4 {
            assert!(
                rocket[a] != rocket[b],
                "implementations {} and {} agree",
                Implementation::ALL[a],
                Implementation::ALL[b]
            );
        }
    }
}
