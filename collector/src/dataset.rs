//! The dataset: which image files a sweep runs, in which order, with which labels.
//!
//! Images are the files under the dataset folder whose extension is an image format, found
//! recursively and sorted by relative path, which is also their id (stable across machines and
//! readable in reports). Other files are counted and skipped. A file with an image extension that
//! is not an image stays in: it is recorded as a decode error, not silently dropped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::sweep::DatasetSpec;

/// File extensions taken as images (case-insensitive).
pub const IMAGE_EXTENSIONS: [&str; 9] = [
    "jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "jfif",
];

/// One image of the dataset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageEntry {
    /// Path relative to the dataset folder, `/`-separated: the image's id in the store.
    pub id: String,
    /// Absolute (or sweep-relative) path to read.
    pub path: PathBuf,
    /// Ground-truth class index, when the labels file has one.
    pub label: Option<i32>,
}

/// The images of a sweep.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// The dataset folder.
    pub root: PathBuf,
    /// Selected images, sorted by id.
    pub images: Vec<ImageEntry>,
    /// Images found before `limit` / `sample`.
    pub found: usize,
    /// Files skipped because their extension is not an image format.
    pub skipped_files: usize,
    /// Labels whose file is not among the found images.
    pub unmatched_labels: usize,
}

impl Dataset {
    /// Lists, labels and selects the images of `spec`.
    ///
    /// # Errors
    /// Fails, naming the file, when the folder is missing or has no images, or the labels file is
    /// unreadable or has a bad row (the error gives the line).
    pub fn load(spec: &DatasetSpec) -> Result<Dataset> {
        let root = &spec.images;
        if !root.is_dir() {
            return Err(Error::input(root, "images folder does not exist"));
        }
        let mut files: Vec<(String, PathBuf)> = Vec::new();
        let mut skipped_files = 0;
        let mut seen = std::collections::HashSet::new();
        walk(root, root, &mut files, &mut skipped_files, &mut seen)?;
        files.sort();
        if files.is_empty() {
            return Err(Error::input(
                root,
                format!(
                    "no images found (extensions: {})",
                    IMAGE_EXTENSIONS.join(", ")
                ),
            ));
        }
        let labels = match &spec.labels {
            Some(path) => read_labels(path)?,
            None => HashMap::new(),
        };
        let found = files.len();
        let mut matched = 0;
        let mut images: Vec<ImageEntry> = files
            .into_iter()
            .map(|(id, path)| {
                let label = canonical(&path).and_then(|p| labels.get(&p).copied());
                matched += usize::from(label.is_some());
                ImageEntry { id, path, label }
            })
            .collect();
        let unmatched_labels = labels.len() - matched;
        if let Some(n) = spec.limit {
            images.truncate(n);
        }
        if let Some(n) = spec.sample {
            images.sort_by_key(|img| {
                xxhash_rust::xxh3::xxh3_64_with_seed(img.id.as_bytes(), spec.seed)
            });
            images.truncate(n);
            images.sort_by(|a, b| a.id.cmp(&b.id));
        }
        Ok(Dataset {
            root: root.clone(),
            images,
            found,
            skipped_files,
            unmatched_labels,
        })
    }

    /// Images that have a label.
    pub fn labelled(&self) -> usize {
        self.images.iter().filter(|i| i.label.is_some()).count()
    }
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Lists image files under `dir`, following symbolic links to folders but entering each real
/// folder once (`seen`: canonical paths), so a link loop ends and no image is listed twice.
fn walk(
    root: &Path,
    dir: &Path,
    out: &mut Vec<(String, PathBuf)>,
    skipped: &mut usize,
    seen: &mut std::collections::HashSet<PathBuf>,
) -> Result<()> {
    let real = std::fs::canonicalize(dir).io("resolve", dir)?;
    if !seen.insert(real) {
        return Ok(());
    }
    let mut entries = std::fs::read_dir(dir)
        .io("list", dir)?
        .collect::<std::io::Result<Vec<_>>>()
        .io("list", dir)?;
    // Real entries before symbolic links, each in name order: a folder reached both ways is
    // listed under its real path, whatever order the file system lists it in.
    entries.sort_by_key(|e| (e.path().is_symlink(), e.file_name()));
    for entry in entries {
        let path = entry.path();
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            walk(root, &path, out, skipped, seen)?;
        } else if is_image(&path) {
            if let Ok(rel) = path.strip_prefix(root) {
                out.push((image_id(rel), path.clone()));
            }
        } else {
            *skipped += 1;
        }
    }
    Ok(())
}

/// An image's id: its path relative to the dataset folder, `/`-separated. Bytes of a name that are
/// not UTF-8 are written `\xNN`, so the id stays unique and the file is still read by its real
/// path.
fn image_id(rel: &Path) -> String {
    let mut id = String::new();
    for (i, component) in rel.components().enumerate() {
        if i > 0 {
            id.push('/');
        }
        for chunk in component.as_os_str().as_encoded_bytes().utf8_chunks() {
            id.push_str(chunk.valid());
            for b in chunk.invalid() {
                id.push_str(&format!("\\x{b:02X}"));
            }
        }
    }
    id
}

fn canonical(path: &Path) -> Option<PathBuf> {
    std::fs::canonicalize(path).ok()
}

/// Reads `file,class_index` rows (more columns allowed); `file` is relative to the CSV's folder.
fn read_labels(path: &Path) -> Result<HashMap<PathBuf, i32>> {
    let bad = |line: u64, message: String| Error::input(path, format!("line {line}: {message}"));
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(path)
        .map_err(|e| Error::input(path, format!("cannot read labels: {e}")))?;
    let headers = reader
        .headers()
        .map_err(|e| Error::input(path, format!("cannot read the header row: {e}")))?
        .clone();
    let column = |name: &str| {
        headers
            .iter()
            .position(|h| h.trim() == name)
            .ok_or_else(|| {
                Error::input(
                    path,
                    format!("the header row has no `{name}` column (need `file,class_index`)"),
                )
            })
    };
    let (file_col, class_col) = (column("file")?, column("class_index")?);
    let base = path.parent().unwrap_or(Path::new("."));
    let mut labels = HashMap::new();
    for record in reader.records() {
        let record = record.map_err(|e| Error::input(path, e.to_string()))?;
        let line = record.position().map_or(0, csv::Position::line);
        let file = record
            .get(file_col)
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .ok_or_else(|| bad(line, "missing file name".into()))?;
        let class = record
            .get(class_col)
            .map(str::trim)
            .ok_or_else(|| bad(line, "missing class_index".into()))?;
        let class: i32 = class.parse().ok().filter(|c| *c >= 0).ok_or_else(|| {
            bad(
                line,
                format!("class_index `{class}` is not a non-negative integer"),
            )
        })?;
        let file_path = base.join(file);
        // Labels for files that do not exist are allowed (a labels file may cover more images
        // than the folder holds) but cannot be matched.
        let key = canonical(&file_path).unwrap_or(file_path);
        if labels.insert(key, class).is_some() {
            return Err(bad(line, format!("`{file}` is labelled twice")));
        }
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dir: &Path) -> DatasetSpec {
        DatasetSpec {
            images: dir.join("imgs"),
            labels: Some(dir.join("labels.csv")),
            limit: None,
            sample: None,
            seed: 0,
        }
    }

    fn setup() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let imgs = dir.path().join("imgs");
        std::fs::create_dir_all(imgs.join("sub")).unwrap();
        for f in ["b.jpg", "a.PNG", "sub/c.jpeg", "notes.txt", ".hidden.jpg"] {
            std::fs::write(imgs.join(f), b"x").unwrap();
        }
        dir
    }

    #[test]
    fn lists_sorted_images_with_labels() {
        let dir = setup();
        std::fs::write(
            dir.path().join("labels.csv"),
            "file,class_index,name\nimgs/b.jpg,3,\"three, really\"\nimgs/sub/c.jpeg,0,zero\nimgs/gone.jpg,1,x\n",
        )
        .unwrap();
        let ds = Dataset::load(&spec(dir.path())).unwrap();
        let ids: Vec<_> = ds.images.iter().map(|i| (i.id.as_str(), i.label)).collect();
        assert_eq!(
            ids,
            vec![("a.PNG", None), ("b.jpg", Some(3)), ("sub/c.jpeg", Some(0))]
        );
        assert_eq!(ds.skipped_files, 1);
        assert_eq!(ds.unmatched_labels, 1);
        assert_eq!(ds.labelled(), 2);
    }

    #[test]
    fn a_name_that_is_not_utf8_gets_an_escaped_id_and_keeps_its_path() {
        use std::os::unix::ffi::OsStrExt;
        let dir = setup();
        let name = std::ffi::OsStr::from_bytes(b"caf\xe9.jpg");
        std::fs::write(dir.path().join("imgs").join(name), b"x").unwrap();
        let mut s = spec(dir.path());
        s.labels = None;
        let ds = Dataset::load(&s).unwrap();
        let img = ds.images.iter().find(|i| i.id.starts_with("caf")).unwrap();
        assert_eq!(img.id, "caf\\xE9.jpg");
        assert!(img.path.is_file(), "{}", img.path.display());
    }

    #[test]
    fn a_symlink_loop_ends_and_lists_each_image_once() {
        let dir = setup();
        let imgs = dir.path().join("imgs");
        std::os::unix::fs::symlink(&imgs, imgs.join("sub/loop")).unwrap();
        std::os::unix::fs::symlink(imgs.join("sub"), imgs.join("again")).unwrap();
        let mut s = spec(dir.path());
        s.labels = None;
        let ds = Dataset::load(&s).unwrap();
        let ids: Vec<_> = ds.images.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, vec!["a.PNG", "b.jpg", "sub/c.jpeg"]);
    }

    #[test]
    fn bad_label_rows_name_file_and_line() {
        let dir = setup();
        let labels = dir.path().join("labels.csv");
        for (body, needle) in [
            (
                "file,class_index\nimgs/b.jpg,three\n",
                "line 2: class_index `three`",
            ),
            ("file,class_index\nimgs/b.jpg,-1\n", "line 2"),
            (
                "file,class_index\nimgs/b.jpg,1\nimgs/b.jpg,2\n",
                "line 3: `imgs/b.jpg` is labelled twice",
            ),
            ("path,class\nimgs/b.jpg,1\n", "no `file` column"),
            ("file,class_index\n,1\n", "line 2: missing file name"),
        ] {
            std::fs::write(&labels, body).unwrap();
            let err = Dataset::load(&spec(dir.path())).unwrap_err().to_string();
            assert!(
                err.contains("labels.csv") && err.contains(needle),
                "{body}: {err}"
            );
        }
    }

    #[test]
    fn limit_and_sample_select_deterministically() {
        let dir = setup();
        let mut s = spec(dir.path());
        s.labels = None;
        s.limit = Some(2);
        let ids: Vec<_> = Dataset::load(&s)
            .unwrap()
            .images
            .into_iter()
            .map(|i| i.id)
            .collect();
        assert_eq!(ids, vec!["a.PNG", "b.jpg"]);
        s.limit = None;
        s.sample = Some(2);
        let a = Dataset::load(&s).unwrap().images;
        let b = Dataset::load(&s).unwrap().images;
        assert_eq!(a, b);
        assert_eq!(a.len(), 2);
        assert!(a[0].id < a[1].id);
    }

    #[test]
    fn missing_or_empty_folder_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec(dir.path());
        s.labels = None;
        assert!(
            Dataset::load(&s)
                .unwrap_err()
                .to_string()
                .contains("does not exist")
        );
        std::fs::create_dir_all(dir.path().join("imgs")).unwrap();
        assert!(
            Dataset::load(&s)
                .unwrap_err()
                .to_string()
                .contains("no images")
        );
    }
}
