//! `deltann store upgrade` on a real format 1 store (tests/fixtures/store-v1, written by the
//! collector before logits became binary values): refused with the command to run, upgraded with
//! every logit bit for bit, and finished when an earlier upgrade was interrupted.

use std::collections::BTreeMap;
use std::path::Path;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Float32Type, UInt64Type};

use crate::util::{self, read_table, strings, text};

type Logits = BTreeMap<(String, String, i32), (Vec<u32>, u64)>;

/// Every output row's logits (as bits) and hash, read from the files by arrow-rs in whichever
/// form they hold.
fn logits(store: &Path) -> Logits {
    let all = read_table(store, "outputs").all().unwrap();
    let cells = strings(&all, "cell_id");
    let images = strings(&all, "image_id");
    let reps = util::ints(&all, "repetition");
    let hashes = all
        .column_by_name("logits_hash")
        .unwrap()
        .as_primitive::<UInt64Type>();
    let column = all.column_by_name("logits").unwrap();
    (0..all.num_rows())
        .map(|row| {
            let bits: Vec<u32> = match column.as_list_opt::<i32>() {
                Some(list) => list
                    .value(row)
                    .as_primitive::<Float32Type>()
                    .values()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect(),
                None => column
                    .as_binary::<i32>()
                    .value(row)
                    .chunks_exact(4)
                    .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
                    .collect(),
            };
            (
                (
                    cells[row].clone().unwrap(),
                    images[row].clone().unwrap(),
                    reps[row].unwrap(),
                ),
                (bits, hashes.value(row)),
            )
        })
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn fixture(dir: &Path) -> std::path::PathBuf {
    let store = dir.join("store");
    copy_dir(&util::root().join("tests/fixtures/store-v1"), &store);
    std::fs::remove_file(store.join("README.md")).unwrap();
    store
}

#[test]
fn a_format_1_store_is_refused_then_upgraded_with_every_logit_intact() {
    let dir = tempfile::tempdir().unwrap();
    let store = fixture(dir.path());
    let arg = store.to_str().unwrap();
    let before = logits(&store);
    assert_eq!(before.len(), 32);
    assert!(before.values().all(|(bits, _)| bits.len() == 1000));

    let out = util::run(&["report", arg]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("format version 1") && text(&out).contains("store upgrade"),
        "says what to run: {}",
        text(&out)
    );

    let out = util::run(&["store", "upgrade", arg]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("2 outputs part(s) rewritten (32 rows"),
        "{}",
        text(&out)
    );
    let after = logits(&store);
    assert_eq!(before, after, "every logit bit for bit, hashes unchanged");
    let column = read_table(&store, "outputs").all().unwrap();
    let column = column.column_by_name("logits").unwrap().as_binary::<i32>();
    assert!(column.len() == 32 && column.null_count() == 0);
    // The hash is of exactly the stored bytes.
    let hashes = read_table(&store, "outputs").all().unwrap();
    let hashes = hashes
        .column_by_name("logits_hash")
        .unwrap()
        .as_primitive::<UInt64Type>();
    for row in 0..column.len() {
        assert_eq!(
            xxhash_rust::xxh3::xxh3_64(column.value(row)),
            hashes.value(row)
        );
    }
    // Only the new parts remain, and the store is sound and readable.
    let paths = util::manifest_paths(&store);
    let outputs: Vec<_> = paths.iter().filter(|p| p.starts_with("outputs/")).collect();
    assert_eq!(outputs.len(), 2);
    assert!(
        outputs.iter().all(|p| p.ends_with("-v2.parquet")),
        "{outputs:?}"
    );
    assert_eq!(read_table(&store, "outputs").parts.len(), 2);
    let out = util::run(&["store", "verify", arg]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = util::run(&["report", arg]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        util::query_value(
            &store,
            "SELECT count(*) FROM outputs WHERE array_length(logits_values(logits)) = 1000"
        ),
        "32"
    );

    let out = util::run(&["store", "upgrade", arg]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("nothing to do"), "{}", text(&out));
}

#[test]
fn an_interrupted_upgrade_is_finished_by_the_next() {
    // Crash before the manifest switch: a converted file the manifest does not name yet, and a
    // stray part no manifest ever named.
    let dir = tempfile::tempdir().unwrap();
    let store = fixture(dir.path());
    let arg = store.to_str().unwrap();
    let before = logits(&store);
    let first = util::manifest_paths(&store)
        .into_iter()
        .find(|p| p.starts_with("outputs/"))
        .unwrap();
    let half_done = store.join(first.replace(".parquet", "-v2.parquet"));
    std::fs::write(&half_done, b"cut short by a crash").unwrap();
    let stray = store.join("outputs/model=efficientnet-lite0/engine=tract/part-000099-x.parquet");
    std::fs::copy(store.join(&first), &stray).unwrap();
    let out = util::run(&["store", "upgrade", arg]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("quarantined outputs/"),
        "{}",
        text(&out)
    );
    assert!(!stray.exists());
    assert!(
        store
            .join("_quarantine/outputs/model=efficientnet-lite0/engine=tract/part-000099-x.parquet")
            .is_file()
    );
    assert_eq!(logits(&store), before);

    // Crash after the manifest switch, before the format marker: the marker still says 1 and an
    // original file is still there.
    std::fs::copy(
        util::root().join("tests/fixtures/store-v1").join(&first),
        store.join(&first),
    )
    .unwrap();
    std::fs::copy(
        util::root().join("tests/fixtures/store-v1/deltann-store.json"),
        store.join("deltann-store.json"),
    )
    .unwrap();
    let out = util::run(&["store", "upgrade", arg]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("0 outputs part(s) rewritten"),
        "{}",
        text(&out)
    );
    assert!(!store.join(&first).exists(), "the original is removed");
    assert_eq!(logits(&store), before);
    let out = util::run(&["store", "verify", arg]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}
