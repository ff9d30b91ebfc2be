//! The manifest: an append-only JSON-lines log with one entry per committed part.
//!
//! The manifest is what makes a part visible to deltann's readers. An entry is appended (and
//! fsynced) only after its file has been fsynced and renamed into place, so every entry names a
//! complete file. A crash while appending can leave a torn last line without a newline: readers
//! ignore it and the next writer truncates it, then recovery re-adopts the part it described from
//! the part's own footer metadata (see [`crate::writer`]).
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
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ManifestRead::default()),
        Err(e) => return Err(e).io("open", path),
    };
    let mut reader = BufReader::new(file);
    let mut out = ManifestRead::default();
    let mut line = Vec::new();
    let mut line_no = 0;
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
        match serde_json::from_slice::<PartEntry>(line.trim_ascii_end()) {
            Ok(entry) => out.entries.push(entry),
            Err(e) => {
                return Err(Error::Manifest {
                    path: path.to_path_buf(),
                    line: line_no,
                    reason: e.to_string(),
                });
            }
        }
        out.valid_len += n as u64;
    }
    Ok(out)
}

/// Replaces the manifest with `entries` (a temporary file, fsync, rename); returns its length.
/// The caller holds the store's write lock and fsyncs the directory.
///
/// # Errors
/// Fails when the temporary file cannot be written or renamed.
pub fn rewrite(path: &Path, entries: &[PartEntry]) -> Result<u64> {
    let mut text = String::new();
    for entry in entries {
        text.push_str(
            &serde_json::to_string(entry)
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
    /// Fails when the write or the fsync fails. A failed write is cut back to the last complete
    /// line; after a failed fsync (or a failed cut) every later append is refused.
    pub fn append(&mut self, entry: &PartEntry) -> Result<()> {
        if let Some(reason) = &self.failed {
            return Err(Error::Stopped {
                path: self.path.clone(),
                reason: reason.clone(),
            });
        }
        let mut line = serde_json::to_string(entry)
            .map_err(|e| Error::Invalid(format!("cannot encode manifest entry: {e}")))?;
        line.push('\n');
        let bytes = line.as_bytes();
        // One write call for the whole line: with O_APPEND it lands contiguously.
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
