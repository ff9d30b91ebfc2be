//! The manifest: an append-only JSON-lines log with one entry per committed part.
//!
//! The manifest is what makes a part visible to deltann's readers. An entry is appended (and
//! fsynced) only after its file has been fsynced and renamed into place, so every entry names a
//! complete file. A crash while appending can leave a torn last line without a newline: readers
//! ignore it and the next writer truncates it, then recovery re-adopts the part it described from
//! the part's own footer metadata (see [`crate::writer`]).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
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
    let mut line = String::new();
    let mut line_no = 0;
    loop {
        line.clear();
        let n = reader.read_line(&mut line).io("read", path)?;
        if n == 0 {
            break;
        }
        line_no += 1;
        if !line.ends_with('\n') {
            out.torn_tail = true;
            break;
        }
        match serde_json::from_str::<PartEntry>(line.trim_end()) {
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

/// An open manifest for appending.
#[derive(Debug)]
pub struct ManifestWriter {
    file: File,
    path: std::path::PathBuf,
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
        })
    }

    /// Appends one entry and makes it durable before returning.
    ///
    /// # Errors
    /// Fails when the write or the fsync fails; the entry may then be torn, which readers tolerate.
    pub fn append(&mut self, entry: &PartEntry) -> Result<()> {
        let mut line = serde_json::to_string(entry)
            .map_err(|e| Error::Invalid(format!("cannot encode manifest entry: {e}")))?;
        line.push('\n');
        // One write call for the whole line: with O_APPEND it lands contiguously.
        self.file
            .write_all(line.as_bytes())
            .io("append to", &self.path)?;
        self.file.sync_data().io("fsync", &self.path)
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
