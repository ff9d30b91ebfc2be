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
    let mut child = util::deltann()
        .args([
            "collect",
            "--quiet",
            "--part-rows",
            "3",
            sweep.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
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

    // Exactly one row per (cell, image, repetition), read by arrow-rs from the files on disk.
    let outputs = read_table(&store, "outputs").all().unwrap();
    let keys: Vec<(String, String, i32)> = strings(&outputs, "cell_id")
        .into_iter()
        .zip(strings(&outputs, "image_id"))
        .zip(ints(&outputs, "repetition"))
        .map(|((c, i), r)| (c.unwrap(), i.unwrap(), r.unwrap()))
        .collect();
    let distinct: BTreeSet<_> = keys.iter().cloned().collect();
    assert_eq!(keys.len(), distinct.len(), "duplicate rows after resume");
    assert_eq!(keys.len(), cells * images * reps);

    // Each cell is ok, and the interrupted one was finished by a second attempt.
    let cells_table = read_table(&store, "cells").all().unwrap();
    let ok: BTreeSet<String> = strings(&cells_table, "cell_id")
        .into_iter()
        .zip(strings(&cells_table, "status"))
        .filter(|(_, s)| s.as_deref() == Some("ok"))
        .map(|(c, _)| c.unwrap())
        .collect();
    assert_eq!(ok.len(), cells);
    assert!(ints(&cells_table, "attempt").iter().all(|a| *a == Some(1)));
}
