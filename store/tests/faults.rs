//! The commit protocol under injected faults: each step (part write, part fsync, rename,
//! directory fsync, manifest append, manifest fsync) fails once, at each of its occurrences in a
//! run of commits, by failing outright or by writing half its bytes. Then the store is reopened
//! (recovery) and read back with the Parquet crate directly, not with deltann's reader. What must
//! hold every time: a commit reported done is in the store with all its rows; nothing else is,
//! except the one part whose commit failed after it was complete (adopted whole, never in part);
//! no part appears twice; a failure at or after the rename stops the writer; and the store takes
//! new commits afterwards.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arrow::array::{Array, AsArray, RecordBatch, StringArray, TimestampMicrosecondArray};
use deltann_store::faults::{Fault, Faults, Step};
use deltann_store::schema::schema;
use deltann_store::{Error, PartMeta, Partition, StoreWriter, Table, layout, manifest};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// Fails the `nth` occurrence of `step`; counts every step it is asked about.
#[derive(Debug)]
struct At {
    step: Step,
    fault: Fault,
    nth: usize,
    seen: Vec<AtomicUsize>,
}

impl At {
    fn new(step: Step, fault: Fault, nth: usize) -> Self {
        Self {
            step,
            fault,
            nth,
            seen: Step::ALL.iter().map(|_| AtomicUsize::new(0)).collect(),
        }
    }

    fn count(&self, step: Step) -> usize {
        self.seen[index(step)].load(Ordering::SeqCst)
    }

    /// Every (step, fault, occurrence) of the steps this counter saw: plain failures of each
    /// step, and half-written ones of the steps that write.
    fn cases(&self) -> Vec<(Step, Fault, usize)> {
        let mut cases = Vec::new();
        for step in Step::ALL {
            let kinds: &[Fault] = if step.writes() {
                &[Fault::Fail, Fault::Torn]
            } else {
                &[Fault::Fail]
            };
            for &fault in kinds {
                cases.extend((0..self.count(step)).map(|nth| (step, fault, nth)));
            }
        }
        cases
    }
}

fn index(step: Step) -> usize {
    Step::ALL.iter().position(|s| *s == step).unwrap()
}

impl Faults for At {
    fn at(&self, step: Step, _path: &Path) -> Option<Fault> {
        let n = self.seen[index(step)].fetch_add(1, Ordering::SeqCst);
        (step == self.step && n == self.nth).then_some(self.fault)
    }
}

const PARTS: usize = 5;

/// Part `i` holds `i + 1` rows of cell `cell{i}`.
fn batch(i: usize) -> RecordBatch {
    let n = i + 1;
    let text = |v: &str| Arc::new(StringArray::from(vec![v; n])) as _;
    let ts = TimestampMicrosecondArray::from(vec![0; n]).with_timezone("UTC");
    RecordBatch::try_new(
        schema(Table::Errors),
        vec![
            text("run"),
            Arc::new(StringArray::from(vec![Some(format!("cell{i}")); n])),
            text("img.jpg"),
            text("decode"),
            text("injected"),
            Arc::new(ts),
        ],
    )
    .unwrap()
}

fn commit(w: &StoreWriter, i: usize) -> deltann_store::Result<Option<deltann_store::PartEntry>> {
    w.write_part(
        Table::Errors,
        Partition::none(),
        PartMeta {
            cell_id: Some(format!("cell{i}")),
            run_id: Some("run".into()),
        },
        &[batch(i)],
    )
}

/// Rows per cell in the store, read from the files its manifest lists with the Parquet crate;
/// fails on a listed file that cannot be read, a part holding two cells, or a cell twice.
fn read_back(root: &Path) -> HashMap<String, usize> {
    let read = manifest::read(&root.join(layout::MANIFEST_FILE)).unwrap();
    assert!(!read.torn_tail);
    let mut rows = HashMap::new();
    let mut seqs = std::collections::HashSet::new();
    for entry in &read.entries {
        assert!(seqs.insert(entry.seq), "sequence {} twice", entry.seq);
        let file = std::fs::File::open(root.join(&entry.path)).unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        let mut cells = Vec::new();
        for b in reader {
            let b = b.unwrap();
            let c = b.column_by_name("cell_id").unwrap().as_string::<i32>();
            cells.extend((0..c.len()).map(|i| c.value(i).to_string()));
        }
        assert_eq!(cells.len() as u64, entry.rows, "{}", entry.path);
        let cell = cells[0].clone();
        assert!(cells.iter().all(|c| *c == cell), "{}", entry.path);
        assert!(
            rows.insert(cell.clone(), cells.len()).is_none(),
            "{cell} twice"
        );
    }
    rows
}

/// One run of commits with one fault; what it committed, and which commit failed how.
fn run(root: &Path, faults: Arc<At>) -> (Vec<usize>, Option<(usize, Error)>) {
    let (w, _) = StoreWriter::open_with_faults(root, Some(faults.clone())).unwrap();
    let mut done = Vec::new();
    let mut failed: Option<(usize, Error)> = None;
    for i in 0..PARTS {
        match commit(&w, i) {
            Ok(Some(_)) => done.push(i),
            Ok(None) => panic!("part {i} is not empty"),
            Err(e) => {
                if let Some((first, why)) = &failed {
                    // After a failure at or after the rename, the writer commits nothing more.
                    let stopped = matches!(why, Error::Stopped { .. })
                        || !matches!(faults.step, Step::PartWrite | Step::PartSync);
                    assert!(
                        stopped && matches!(e, Error::Stopped { .. }),
                        "part {i} after part {first} failed: {e}"
                    );
                } else {
                    failed = Some((i, e));
                }
            }
        }
    }
    // A cut-back manifest never shows a torn line, even before recovery.
    let read = manifest::read(&root.join(layout::MANIFEST_FILE)).unwrap();
    assert!(!read.torn_tail, "{faults:?}: torn manifest left behind");
    (done, failed)
}

#[test]
fn every_step_of_the_commit_protocol_fails_safely() {
    // How often each step occurs in a run without faults.
    let dir = tempfile::tempdir().unwrap();
    let counter = Arc::new(At::new(Step::PartWrite, Fault::Fail, usize::MAX));
    let (done, failed) = run(&dir.path().join("s"), counter.clone());
    assert_eq!(done.len(), PARTS);
    assert!(failed.is_none());

    let mut cases = 0;
    for (step, fault, nth) in counter.cases() {
        cases += 1;
        let root = dir.path().join(format!("{step:?}-{fault:?}-{nth}"));
        let faults = Arc::new(At::new(step, fault, nth));
        let (done, failed) = run(&root, faults);
        let at = format!("{step:?} {fault:?} #{nth}");
        let (bad, error) = failed.unwrap_or_else(|| panic!("{at}: no commit failed"));
        assert!(
            error.to_string().contains("fault injected"),
            "{at}: the error names its cause: {error}"
        );

        // Recovery, then an independent read.
        let (w, recovery) = StoreWriter::open(&root).unwrap();
        let rows = read_back(&root);
        for &i in &done {
            assert_eq!(
                rows.get(&format!("cell{i}")),
                Some(&(i + 1)),
                "{at}: part {i}"
            );
        }
        let extra: Vec<&String> = rows
            .keys()
            .filter(|c| !done.iter().any(|i| **c == format!("cell{i}")))
            .collect();
        match extra.as_slice() {
            [] => {}
            // Only the failed part, complete, and only if it got as far as its rename.
            [cell] => {
                assert_eq!(**cell, format!("cell{bad}"), "{at}");
                assert_eq!(rows[*cell], bad + 1, "{at}: adopted in part");
                assert!(
                    !matches!(step, Step::PartWrite | Step::PartSync | Step::Rename),
                    "{at}: adopted a part that was never renamed"
                );
                // A failed manifest fsync leaves the line in place (its durability
                // unknown): the part is listed, not adopted.
                let adopted = usize::from(step != Step::ManifestSync);
                assert_eq!(recovery.adopted.len(), adopted, "{at}");
            }
            _ => panic!("{at}: rows of parts never committed: {extra:?}"),
        }
        assert!(recovery.quarantined.is_empty(), "{at}: {recovery:?}");
        let tmp = std::fs::read_dir(root.join(layout::TMP_DIR))
            .unwrap()
            .count();
        assert_eq!(tmp, 0, "{at}: temporary files left");

        // The store goes on: the failed part again, then a clean reopen.
        if !rows.contains_key(&format!("cell{bad}")) {
            commit(&w, bad).unwrap().unwrap();
        }
        drop(w);
        let (_w, recovery) = StoreWriter::open(&root).unwrap();
        assert!(recovery.is_clean(), "{at}: {recovery:?}");
        assert_eq!(read_back(&root)[&format!("cell{bad}")], bad + 1, "{at}");
    }
    assert!(cases >= 6 * PARTS, "{cases} cases");
}

#[test]
fn stray_copies_are_quarantined_not_adopted() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (w, _) = StoreWriter::open(root).unwrap();
    let first = commit(&w, 0).unwrap().unwrap();
    commit(&w, 1).unwrap().unwrap();
    drop(w);
    let original = root.join(&first.path);
    let table_dir = original.parent().unwrap();
    // What a file manager, a backup tool or a hand copy leaves: the same sequence number in
    // another name, a later sequence number than the next, a valid part under a foreign name.
    let strays = [
        "part-000001-cell0 (copy).parquet",
        "part-000009-cell0.parquet",
        "part-000003-cell7.parquet",
    ];
    for s in strays {
        std::fs::copy(&original, table_dir.join(s)).unwrap();
    }
    let (_w, recovery) = StoreWriter::open(root).unwrap();
    assert!(recovery.adopted.is_empty(), "{recovery:?}");
    assert_eq!(recovery.quarantined.len(), strays.len(), "{recovery:?}");
    for s in strays {
        assert!(
            root.join(layout::QUARANTINE_DIR)
                .join("errors")
                .join(s)
                .is_file()
        );
    }
    let rows = read_back(root);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows["cell0"], 1);
}

#[test]
fn verify_names_damaged_parts_and_repair_keeps_every_sound_one() {
    use deltann_store::verify::{self, Problem};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (w, _) = StoreWriter::open(root).unwrap();
    let entries: Vec<_> = (0..4).map(|i| commit(&w, i).unwrap().unwrap()).collect();
    drop(w);
    let clean = verify::verify(root).unwrap();
    assert!(clean.is_sound(), "{:?}", clean.damaged);
    assert_eq!((clean.parts, clean.without_checksum), (4, 0));

    // A part deleted by hand, one cut short, one with a flipped byte (bit rot: same size), and a
    // stray copy.
    let path = |i: usize| root.join(&entries[i].path);
    std::fs::remove_file(path(0)).unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path(1))
        .unwrap();
    f.set_len(entries[1].bytes - 10).unwrap();
    let mut bytes = std::fs::read(path(2)).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(path(2), &bytes).unwrap();
    std::fs::copy(
        path(3),
        path(3).with_file_name("part-000004-cell3 (1).parquet"),
    )
    .unwrap();

    let found = verify::verify(root).unwrap();
    let problems: Vec<(String, Problem)> = found
        .damaged
        .iter()
        .map(|d| (d.entry.path.clone(), d.problem.clone()))
        .collect();
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert_eq!(problems[0], (entries[0].path.clone(), Problem::Missing));
    assert!(
        matches!(problems[1].1, Problem::Size { .. }),
        "{problems:?}"
    );
    assert!(
        matches!(problems[2].1, Problem::Checksum { .. }),
        "{problems:?}"
    );
    assert_eq!(found.strays.len(), 1);

    // Repair: recovery quarantines the stray, repair drops the three dead entries.
    let (w, recovery) = StoreWriter::open(root).unwrap();
    assert_eq!(recovery.quarantined.len(), 1, "{recovery:?}");
    let dropped = w.repair().unwrap();
    assert_eq!(dropped.len(), 3);
    let rows = read_back(root);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows["cell3"], 4);
    for i in [1, 2] {
        assert!(
            root.join(layout::QUARANTINE_DIR)
                .join(&entries[i].path)
                .is_file()
        );
    }
    // Sequence numbers are not reused; the store is sound and takes commits.
    assert_eq!(commit(&w, 0).unwrap().unwrap().seq, 5);
    drop(w);
    let after = verify::verify(root).unwrap();
    assert!(after.is_sound() && after.strays.is_empty(), "{after:?}");
    assert_eq!(after.parts, 2);
}

const GROUPS: usize = 3;

/// Group `g`: parts `2g` and `2g + 1`, committed together.
fn commit_pair(w: &StoreWriter, g: usize) -> deltann_store::Result<Vec<deltann_store::PartEntry>> {
    let parts = [2 * g, 2 * g + 1]
        .into_iter()
        .map(|i| {
            let mut part = w.begin(
                Table::Errors,
                Partition::none(),
                PartMeta {
                    cell_id: Some(format!("cell{i}")),
                    run_id: Some("run".into()),
                },
            )?;
            part.write(&batch(i))?;
            Ok(part)
        })
        .collect::<deltann_store::Result<Vec<_>>>()?;
    w.commit_group(parts)
}

#[test]
fn a_group_commits_whole_or_not_at_all_under_every_fault() {
    let dir = tempfile::tempdir().unwrap();
    let counter = Arc::new(At::new(Step::PartWrite, Fault::Fail, usize::MAX));
    {
        let (w, _) =
            StoreWriter::open_with_faults(&dir.path().join("s"), Some(counter.clone())).unwrap();
        for g in 0..GROUPS {
            let entries = commit_pair(&w, g).unwrap();
            assert_eq!(entries.len(), 2);
            assert_eq!(entries[0].seq + 1, entries[1].seq);
        }
    }
    let mut cases = 0;
    for (step, fault, nth) in counter.cases() {
        cases += 1;
        let at = format!("{step:?} {fault:?} #{nth}");
        let root = dir.path().join(format!("group-{step:?}-{fault:?}-{nth}"));
        let faults = Arc::new(At::new(step, fault, nth));
        let (w, _) = StoreWriter::open_with_faults(&root, Some(faults)).unwrap();
        let mut done = Vec::new();
        let mut failed = None;
        for g in 0..GROUPS {
            match commit_pair(&w, g) {
                Ok(_) => done.push(g),
                Err(_) if failed.is_none() => failed = Some(g),
                Err(_) => {}
            }
        }
        let bad = failed.unwrap_or_else(|| panic!("{at}: no commit failed"));
        drop(w);
        // Readers before recovery see whole groups only.
        let before = manifest::read(&root.join(layout::MANIFEST_FILE)).unwrap();
        assert_eq!(before.entries.len() % 2, 0, "{at}: {before:?}");

        let (_w, recovery) = StoreWriter::open(&root).unwrap();
        let rows = read_back(&root);
        for g in 0..GROUPS {
            let (a, b) = (format!("cell{}", 2 * g), format!("cell{}", 2 * g + 1));
            assert_eq!(
                rows.contains_key(&a),
                rows.contains_key(&b),
                "{at}: group {g} in part: {rows:?}"
            );
            if done.contains(&g) {
                assert_eq!(rows.get(&a), Some(&(2 * g + 1)), "{at}");
                assert_eq!(rows.get(&b), Some(&(2 * g + 2)), "{at}");
            } else if g != bad {
                assert!(!rows.contains_key(&a), "{at}: group {g} never committed");
            }
        }
        // Only members of the failed group can be set aside.
        for q in &recovery.quarantined {
            assert!(
                q.contains(&format!("cell{}", 2 * bad))
                    || q.contains(&format!("cell{}", 2 * bad + 1)),
                "{at}: quarantined {q}"
            );
        }
    }
    assert!(cases >= 6 * GROUPS, "{cases} cases");
}

#[test]
fn recovery_adopts_a_renamed_group_whole_and_sets_a_half_one_aside() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (w, _) = StoreWriter::open(root).unwrap();
    commit(&w, 9).unwrap().unwrap();
    let entries = commit_pair(&w, 0).unwrap();
    drop(w);
    // A crash after both renames, before the manifest append: the group's lines are missing.
    let path = root.join(layout::MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).unwrap();
    let first_line = text.lines().next().unwrap();
    std::fs::write(&path, format!("{first_line}\n")).unwrap();
    let (w, recovery) = StoreWriter::open(root).unwrap();
    assert_eq!(recovery.adopted.len(), 2, "{recovery:?}");
    let read = manifest::read(&path).unwrap();
    assert_eq!(
        read.entries[1..]
            .iter()
            .map(|e| e.group)
            .collect::<Vec<_>>(),
        entries.iter().map(|e| e.group).collect::<Vec<_>>()
    );
    assert_eq!(read_back(root).len(), 3);
    drop(w);

    // A crash between the renames: the first member is in place, the second is not.
    std::fs::write(&path, format!("{first_line}\n")).unwrap();
    std::fs::remove_file(root.join(&entries[1].path)).unwrap();
    let (_w, recovery) = StoreWriter::open(root).unwrap();
    assert!(recovery.adopted.is_empty(), "{recovery:?}");
    assert_eq!(recovery.quarantined, vec![entries[0].path.clone()]);
    let rows = read_back(root);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(rows.contains_key("cell9"));
}
