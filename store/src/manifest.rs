//! The manifest: an append-only JSON-lines log with one entry per committed part.
//!
//! The manifest is what makes a part visible to deltann's readers. An entry is appended (and
//! fsynced) only after its file has been fsynced and renamed into place, so every entry names a
//! complete file. A crash while appending can leave a torn last line without a newline: readers
//! ignore it and the next writer truncates it, then recovery re-adopts the part it described from
//! the part's own footer metadata (see [`crate::writer`]).
//!
//! Parts that must become visible together (the outputs of a batch and the errors of its failed
//! repetitions) are a *group*: their lines go down in one write, each tagged with its place in
//! the group, and a reader takes a group only whole. A crash in the middle of the write leaves
//! complete lines of an incomplete group, which readers treat exactly like a torn line.
//!
//! A failed append (a full disk mid-line) is cut back at once, so that a later append cannot glue
//! a good line onto half of one. After a failed fsync nothing more is appended: the kernel may
//! have dropped the dirty pages, so whether the last line is durable is unknown, and only the
//! next writer's recovery (reading what is really on disk) can say.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::faults::{self, Fault, Faults, Step};
use crate::layout::Table;

/// One committed part.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartEntry {
    /// Commit sequence number, unique within the store, also in the file name.
    pub seq: u64,
    /// The table the part belongs to.
    pub table: Table,
    /// Path relative to the store root, `/`-separated.
    pub path: String,
    /// Rows in the part.
    pub rows: u64,
    /// File size in bytes.
    pub bytes: u64,
    /// The cell whose rows these are, for `cells`, `outputs` and cell-level `errors` parts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cell_id: Option<String>,
    /// The `collect` run that wrote the part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// Commit time, microseconds since the Unix epoch.
    pub committed_at_us: i64,
    /// xxh3-64 of the file's bytes, 16 hex digits (absent in entries written before checksums;
    /// `deltann store verify` checks it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xxh3: Option<String>,
    /// The part's place in a group of parts committed together, if it is in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<Group>,
}

/// A part's place in a group of parts that become visible together: members have consecutive
/// sequence numbers, `index` 0 to `len - 1`, and consecutive manifest lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub index: u32,
    pub len: u32,
}

/// What reading a manifest found.
#[derive(Debug, Default)]
pub struct ManifestRead {
    /// Complete entries, in commit order.
    pub entries: Vec<PartEntry>,
    /// Byte length of the complete lines; anything after it is a torn write.
    pub valid_len: u64,
    /// Whether a torn last line was found (and ignored).
    pub torn_tail: bool,
}

/// Reads a manifest. A missing file is an empty manifest.
///
/// # Errors
/// Fails when the file cannot be read, or when a complete (newline-terminated) line is not a valid
/// entry: that is damage, not a torn write, and is reported rather than skipped.
pub fn read(path: &Path) -> Result<ManifestRead> {
    match File::open(path) {
        Ok(file) => parse(BufReader::new(file), path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ManifestRead::default()),
        Err(e) => Err(e).io("open", path),
    }
}

/// Reads manifest lines from `reader`; `path` names the manifest in errors.
///
/// # Errors
/// As [`read`]; also when the lines of a group are out of order.
pub fn parse(mut reader: impl BufRead, path: &Path) -> Result<ManifestRead> {
    let mut out = ManifestRead::default();
    // The lines of a group read so far, and their length: visible only once the group is whole.
    let mut group: Vec<PartEntry> = Vec::new();
    let mut group_bytes = 0;
    let mut line = Vec::new();
    let mut line_no = 0;
    let damaged = |line: usize, reason: String| Error::Manifest {
        path: path.to_path_buf(),
        line,
        reason,
    };
    loop {
        line.clear();
        // Bytes, not text: a torn tail can end inside a multi-byte character.
        let n = reader.read_until(b'\n', &mut line).io("read", path)?;
        if n == 0 {
            break;
        }
        line_no += 1;
        if line.last() != Some(&b'\n') {
            out.torn_tail = true;
            break;
        }
        let entry = serde_json::from_slice::<PartEntry>(line.trim_ascii_end())
            .map_err(|e| damaged(line_no, e.to_string()))?;
        let expected = group.first().map(|first| Group {
            index: u32::try_from(group.len()).unwrap_or(u32::MAX),
            len: first.group.map_or(0, |g| g.len),
        });
        match (entry.group, expected) {
            (None, None) => {
                out.entries.push(entry);
                out.valid_len += n as u64;
            }
            (Some(g), None) if g.index == 0 && g.len > 0 => {
                group_bytes = n as u64;
                group.push(entry);
            }
            (Some(g), Some(want))
                if g == want && group.last().is_some_and(|p| p.seq + 1 == entry.seq) =>
            {
                group_bytes += n as u64;
                group.push(entry);
            }
            (got, want) => {
                return Err(damaged(
                    line_no,
                    format!("group member {got:?} where {want:?} was due"),
                ));
            }
        }
        if group
            .first()
            .and_then(|first| first.group)
            .is_some_and(|g| group.len() == g.len as usize)
        {
            out.entries.append(&mut group);
            out.valid_len += group_bytes;
        }
    }
    // Complete lines of an incomplete group: what a crash inside the group's write leaves.
    out.torn_tail |= !group.is_empty();
    Ok(out)
}

/// Replaces the manifest with `entries` (a temporary file, fsync, rename); returns its length.
/// The caller holds the store's write lock and fsyncs the directory. The new manifest appears
/// whole, so its entries carry no group marks (a group that lost a damaged member stays
/// readable).
///
/// # Errors
/// Fails when the temporary file cannot be written or renamed.
pub fn rewrite(path: &Path, entries: &[PartEntry]) -> Result<u64> {
    let mut text = String::new();
    for entry in entries {
        let entry = PartEntry {
            group: None,
            ..entry.clone()
        };
        text.push_str(
            &serde_json::to_string(&entry)
                .map_err(|e| Error::Invalid(format!("cannot encode manifest entry: {e}")))?,
        );
        text.push('\n');
    }
    let tmp = path.with_extension("jsonl.tmp");
    let mut file = File::create(&tmp).io("create", &tmp)?;
    file.write_all(text.as_bytes()).io("write", &tmp)?;
    file.sync_all().io("fsync", &tmp)?;
    std::fs::rename(&tmp, path).io("rename", path)?;
    Ok(text.len() as u64)
}

/// An open manifest for appending.
#[derive(Debug)]
pub struct ManifestWriter {
    file: File,
    path: std::path::PathBuf,
    /// Length of the complete lines.
    len: u64,
    /// Why appends are refused, after a failure that left the file's state unknown.
    failed: Option<String>,
    faults: Option<Arc<dyn Faults>>,
}

impl ManifestWriter {
    /// Opens the manifest for appending, first cutting off a torn tail at `valid_len`.
    ///
    /// # Errors
    /// Fails when the file cannot be opened, truncated or synced.
    pub fn open(path: &Path, valid_len: u64) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .io("open", path)?;
        let len = file.metadata().io("stat", path)?.len();
        if len > valid_len {
            file.set_len(valid_len).io("truncate torn tail of", path)?;
            file.sync_all().io("fsync", path)?;
        }
        Ok(Self {
            file,
            path: path.to_path_buf(),
            len: len.min(valid_len),
            failed: None,
            faults: None,
        })
    }

    /// Injects faults into later appends (see [`crate::faults`]).
    pub(crate) fn with_faults(mut self, faults: Option<Arc<dyn Faults>>) -> Self {
        self.faults = faults;
        self
    }

    fn fault(&self, step: Step) -> Option<Fault> {
        self.faults.as_ref().and_then(|f| f.at(step, &self.path))
    }

    /// Appends one entry and makes it durable before returning.
    ///
    /// # Errors
    /// As [`ManifestWriter::append_all`].
    pub fn append(&mut self, entry: &PartEntry) -> Result<()> {
        self.append_all(std::slice::from_ref(entry))
    }

    /// Appends entries in one write (a group's lines land together) and makes them durable
    /// before returning.
    ///
    /// # Errors
    /// Fails when the write or the fsync fails. A failed write is cut back to the last complete
    /// line; after a failed fsync (or a failed cut) every later append is refused.
    pub fn append_all(&mut self, entries: &[PartEntry]) -> Result<()> {
        if let Some(reason) = &self.failed {
            return Err(Error::Stopped {
                path: self.path.clone(),
                reason: reason.clone(),
            });
        }
        let mut lines = String::new();
        for entry in entries {
            lines.push_str(
                &serde_json::to_string(entry)
                    .map_err(|e| Error::Invalid(format!("cannot encode manifest entry: {e}")))?,
            );
            lines.push('\n');
        }
        let bytes = lines.as_bytes();
        // One write call for all the lines: with O_APPEND they land contiguously.
        let written = match self.fault(Step::ManifestWrite) {
            None => self.file.write_all(bytes),
            Some(fault) => {
                if fault == Fault::Torn {
                    // What a disk filling up mid-line leaves.
                    let _ = self.file.write_all(&bytes[..bytes.len() / 2]);
                }
                Err(faults::error(Step::ManifestWrite, &self.path))
            }
        };
        if let Err(e) = written {
            if let Err(cut) = self
                .file
                .set_len(self.len)
                .and_then(|()| self.file.sync_all())
            {
                self.failed = Some(format!(
                    "appending to the manifest failed ({e}) and cutting it back failed ({cut})"
                ));
            }
            return Err(e).io("append to", &self.path);
        }
        let synced = match self.fault(Step::ManifestSync) {
            None => self.file.sync_data(),
            Some(_) => Err(faults::error(Step::ManifestSync, &self.path)),
        };
        if let Err(e) = synced {
            self.failed = Some(format!("fsync of the manifest failed: {e}"));
            return Err(e).io("fsync", &self.path);
        }
        self.len += bytes.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64) -> PartEntry {
        PartEntry {
            seq,
            table: Table::Outputs,
            path: format!("outputs/part-{seq:06}.parquet"),
            rows: 10,
            bytes: 100,
            cell_id: Some("c".into()),
            run_id: None,
            committed_at_us: 1,
            xxh3: None,
            group: None,
        }
    }

    #[test]
    fn a_group_is_visible_only_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.jsonl");
        let member = |seq, index| PartEntry {
            group: Some(Group { index, len: 2 }),
            ..entry(seq)
        };
        let mut w = ManifestWriter::open(&path, 0).unwrap();
        w.append(&entry(1)).unwrap();
        w.append_all(&[member(2, 0), member(3, 1)]).unwrap();
        let whole = read(&path).unwrap();
        assert_eq!(whole.entries, vec![entry(1), member(2, 0), member(3, 1)]);
        assert!(!whole.torn_tail);

        // A crash inside the group's write: its first line complete, the second torn or absent.
        let bytes = std::fs::read(&path).unwrap();
        let first_end = bytes.iter().position(|b| *b == b'\n').unwrap() + 1;
        let member_end =
            first_end + bytes[first_end..].iter().position(|b| *b == b'\n').unwrap() + 1;
        for cut in [member_end, member_end + 5] {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            let torn = read(&path).unwrap();
            assert_eq!(torn.entries, vec![entry(1)], "cut at {cut}");
            assert!(torn.torn_tail);
            assert_eq!(torn.valid_len, first_end as u64);
        }

        // Complete lines out of order are damage, not a torn write.
        let line = |e: &PartEntry| serde_json::to_string(e).unwrap() + "\n";
        for bad in [
            line(&member(2, 1)),
            line(&member(2, 0)) + &line(&entry(3)),
            line(&member(2, 0)) + &line(&member(4, 1)),
            line(&PartEntry {
                group: Some(Group { index: 0, len: 0 }),
                ..entry(2)
            }),
        ] {
            std::fs::write(&path, line(&entry(1)) + &bad).unwrap();
            let err = read(&path).unwrap_err().to_string();
            assert!(err.contains("group member"), "{err}");
        }
    }

    #[test]
    fn torn_tail_is_ignored_then_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.jsonl");
        let mut w = ManifestWriter::open(&path, 0).unwrap();
        w.append(&entry(1)).unwrap();
        w.append(&entry(2)).unwrap();
        drop(w);
        // Simulate a crash half-way through the third append.
        let full = serde_json::to_string(&entry(3)).unwrap();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&full.as_bytes()[..full.len() / 2]).unwrap();
        drop(f);

        let read1 = read(&path).unwrap();
        assert_eq!(read1.entries, vec![entry(1), entry(2)]);
        assert!(read1.torn_tail);

        let mut w = ManifestWriter::open(&path, read1.valid_len).unwrap();
        w.append(&entry(3)).unwrap();
        let read2 = read(&path).unwrap();
        assert_eq!(read2.entries, vec![entry(1), entry(2), entry(3)]);
        assert!(!read2.torn_tail);
    }

    #[test]
    fn a_torn_tail_cut_inside_a_character_is_still_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.jsonl");
        let mut e = entry(1);
        e.cell_id = Some("caf\u{e9}".into());
        let good = serde_json::to_string(&entry(2)).unwrap();
        let torn = serde_json::to_string(&e).unwrap();
        let cut = torn.find('\u{e9}').unwrap() + 1; // half of the two-byte character
        let mut bytes = format!("{good}\n").into_bytes();
        bytes.extend_from_slice(&torn.as_bytes()[..cut]);
        std::fs::write(&path, &bytes).unwrap();
        let read = read(&path).unwrap();
        assert_eq!(read.entries, vec![entry(2)]);
        assert!(read.torn_tail);
        // Invalid bytes in a complete line are damage, reported with the line.
        bytes.extend_from_slice(b"\n");
        std::fs::write(&path, &bytes).unwrap();
        let err = super::read(&path).unwrap_err().to_string();
        assert!(err.contains("m.jsonl:2"), "{err}");
    }

    #[test]
    fn damaged_complete_line_is_an_error_with_its_line_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.jsonl");
        let good = serde_json::to_string(&entry(1)).unwrap();
        std::fs::write(&path, format!("{good}\nnot json\n")).unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("m.jsonl:2"), "{err}");
    }

    #[test]
    fn missing_manifest_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let read = read(&dir.path().join("none.jsonl")).unwrap();
        assert!(read.entries.is_empty());
        assert!(!read.torn_tail);
    }
}
