//! Kill-and-resume: the collector is SIGKILLed in the middle of a sweep, then run again; the store
//! must end with exactly one row per (cell, image, repetition), and nothing committed before the
//! kill may be lost.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::util::{self, data_sweep, ints, read_table, strings, text};

#[test]
fn sigkill_mid_sweep_then_resume_gives_exactly_one_row_each() {
    util::ort_library("1.32.0");
    let dir = tempfile::tempdir().unwrap();
    // tract's decluttered plan is slow (~0.25 s an image here), which leaves time to kill.
    let sweep = data_sweep(
        dir.path(),
        r#"
engine = ["ort", "tract"]
ort_library = ["1.32.0"]
tract_plan = ["decluttered", "optimized"]
repetitions = [3]
"#,
    );
    let store = dir.path().join("store");
    let cells = 3;
    let images = 8;
    let reps = 3;

    // Each image's three repetitions are one part (--part-rows 3), so parts appear steadily.
    let mut child = util::spawn_collect(&sweep, 3);
    let started = Instant::now();
    let mut killed_at = None;
    let mut finished_early = None;
    while started.elapsed() < Duration::from_secs(120) {
        let parts = util::manifest_paths(&store);
        let outputs = parts.iter().filter(|p| p.starts_with("outputs/")).count();
        // Kill once the ORT cell is done and tract is part-way through.
        if outputs >= images + 2 {
            let _ = child.kill(); // SIGKILL
            killed_at = Some(parts);
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            finished_early = Some(status);
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        finished_early.is_none(),
        "collect finished ({finished_early:?}) before the kill"
    );
    let before = killed_at.expect("collect never committed enough parts to kill it mid-sweep");
    let cells_before = before.iter().filter(|p| p.starts_with("cells/")).count();
    assert!(
        cells_before < cells,
        "the kill came after the sweep finished"
    );

    let out = util::run(&[
        "collect",
        "--quiet",
        "--part-rows",
        "3",
        sweep.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));

    // Nothing committed before the kill is lost: same paths, still on disk.
    let after: BTreeSet<String> = util::manifest_paths(&store).into_iter().collect();
    for path in &before {
        assert!(after.contains(path), "{path} vanished from the manifest");
        assert!(store.join(path).is_file(), "{path} vanished from disk");
    }

    assert_one_row_each(&store, cells * images * reps, cells);
    // The interrupted cell was finished by a second attempt.
    let cells_table = read_table(&store, "cells").all().unwrap();
    assert!(ints(&cells_table, "attempt").iter().all(|a| *a == Some(1)));
}

/// Exactly `rows` output rows, one per (cell, image, repetition), read by arrow-rs from the files
/// on disk, and `cells` cells whose status is ok.
fn assert_one_row_each(store: &std::path::Path, rows: usize, cells: usize) {
    let outputs = read_table(store, "outputs").all().unwrap();
    let keys: Vec<(String, String, i32)> = strings(&outputs, "cell_id")
        .into_iter()
        .zip(strings(&outputs, "image_id"))
        .zip(ints(&outputs, "repetition"))
        .map(|((c, i), r)| (c.unwrap(), i.unwrap(), r.unwrap()))
        .collect();
    let distinct: BTreeSet<_> = keys.iter().cloned().collect();
    assert_eq!(keys.len(), distinct.len(), "duplicate rows after resume");
    assert_eq!(keys.len(), rows, "rows lost");
    let cells_table = read_table(store, "cells").all().unwrap();
    let ok: BTreeSet<String> = strings(&cells_table, "cell_id")
        .into_iter()
        .zip(strings(&cells_table, "status"))
        .filter(|(_, s)| s.as_deref() == Some("ok"))
        .map(|(c, _)| c.unwrap())
        .collect();
    assert_eq!(ok.len(), cells);
}

/// Every file under `dir` whose name starts with `chunk-` and ends with `.arrow`, with its size
/// and modification time.
fn chunks(
    dir: &std::path::Path,
) -> std::collections::BTreeMap<String, (u64, std::time::SystemTime)> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(geometries) = std::fs::read_dir(dir) else {
        return out;
    };
    for g in geometries {
        let g = g.unwrap().path();
        if !g.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&g).unwrap() {
            let f = f.unwrap();
            let name = f.file_name().to_string_lossy().to_string();
            if name.starts_with("chunk-") && name.ends_with(".arrow") {
                let meta = f.metadata().unwrap();
                out.insert(name, (meta.len(), meta.modified().unwrap()));
            }
        }
    }
    out
}

#[test]
fn sigkill_while_preparing_loses_at_most_one_chunk() {
    util::ort_library("1.32.0");
    let dir = tempfile::tempdir().unwrap();
    // The 8 photos under 100 names each: 800 images, 4 cache chunks of 256.
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    let photos: Vec<_> = std::fs::read_dir(util::data().join("images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    for copy in 0..100 {
        for p in &photos {
            let name = format!("{copy:03}-{}", p.file_name().unwrap().to_string_lossy());
            std::fs::copy(p, images.join(name)).unwrap();
        }
    }
    let sweep = util::write_sweep(
        dir.path(),
        &format!(
            r#"
store = "store"
warmup = 1
logits = "top5"

[dataset]
images = "{}"

[[model]]
name = "efficientnet-lite0"
path = "{{data}}/efficientnet-lite0.onnx"
preset = "tf127"

[environments]
engine = ["ort"]
ort_library = ["1.32.0"]
"#,
            images.display()
        ),
    );
    let store = dir.path().join("store");
    let cache = store.join("_cache/tensors");

    let mut child = util::deltann()
        .args([
            "collect",
            "--quiet",
            "--keep-tensors",
            sweep.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut before = None;
    while started.elapsed() < Duration::from_secs(120) {
        let done = chunks(&cache);
        if !done.is_empty() {
            let _ = child.kill(); // SIGKILL, while chunk 2 is being decoded
            before = Some(done);
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("collect finished ({status}) before a chunk was written");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = child.kill();
    let _ = child.wait();
    let before = before.expect("no cache chunk appeared");
    assert!(
        before.len() < 4,
        "the kill came after preparation: {before:?}"
    );
    // Let a rename in flight at the kill settle, then take what survived.
    let before = chunks(&cache);
    // Whatever the kill left half-written, plus one planted: the resume removes them.
    let geometry = std::fs::read_dir(&cache)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::write(geometry.join("chunk-000099.arrow.tmp"), b"half").unwrap();

    let out = util::run(&[
        "collect",
        "--quiet",
        "--keep-tensors",
        sweep.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let after = chunks(&cache);
    assert_eq!(after.len(), 4, "{after:?}");
    let leftovers: Vec<_> = std::fs::read_dir(&geometry)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // Every chunk completed before the kill was kept as it was, not decoded again.
    for (name, meta) in &before {
        assert_eq!(after.get(name), Some(meta), "{name} was rewritten");
    }
    // One byte per input element (224 x 224 x 3), plus Arrow framing under 1%.
    let bytes: u64 = after.values().map(|(len, _)| len).sum();
    let elements = 800 * 224 * 224 * 3;
    assert!(
        bytes >= elements && bytes < elements + elements / 100,
        "{bytes} bytes"
    );
    // Every image recorded once, every output row once.
    assert_eq!(read_table(&store, "images").rows(), 800);
    assert_eq!(read_table(&store, "outputs").rows(), 800);

    // A run without --keep-tensors (here with nothing left to do) removes every cache, also
    // those of recipes it does not use.
    let other = cache.join("other-recipe-0123456789abcdef");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("chunk-000000.arrow"), b"old").unwrap();
    let out = util::run(&["collect", "--quiet", sweep.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!cache.exists(), "{:?}", chunks(&cache));
}

/// Kills `collect` and its workers (the whole process group) with SIGKILL.
fn kill_group(child: &mut std::process::Child) {
    let group = format!("-{}", child.id());
    let _ = std::process::Command::new("kill")
        .args(["-9", "--", &group])
        .status();
    let _ = child.wait();
}

#[test]
fn random_kills_with_two_jobs_lose_nothing_and_double_nothing() {
    use std::os::unix::process::CommandExt;
    util::ort_library("1.32.0");
    let dir = tempfile::tempdir().unwrap();
    let sweep = data_sweep(
        dir.path(),
        r#"
engine = ["ort", "tract"]
ort_library = ["1.32.0"]
tract_plan = ["decluttered", "optimized"]
threads = [1, 2]
repetitions = [2]
"#,
    );
    let store = dir.path().join("store");
    let (cells, images, reps) = (6, 8, 2);
    let args = [
        "collect",
        "--quiet",
        "-j",
        "2",
        "--part-rows",
        "2",
        sweep.to_str().unwrap(),
    ];
    let mut rng = fastrand::Rng::with_seed(11);
    let mut kills = 0;
    for _ in 0..5 {
        let mut child = util::deltann()
            .args(args)
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Anywhere: preparing the tensor cache, in cells, in commits.
        std::thread::sleep(Duration::from_millis(rng.u64(10..1500)));
        if child.try_wait().unwrap().is_some() {
            break;
        }
        kill_group(&mut child);
        kills += 1;
        // Whatever the instant, every part the manifest lists is complete and readable.
        let out = util::run(&["store", "verify", store.to_str().unwrap()]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "after kill {kills}: {}",
            text(&out)
        );
    }
    assert!(kills >= 3, "the sweep ended before the kills ({kills})");
    let out = util::run(&args);
    assert!(out.status.success(), "{}", text(&out));

    assert_one_row_each(&store, cells * images * reps, cells);
    let out = util::run(&["store", "verify", store.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}
