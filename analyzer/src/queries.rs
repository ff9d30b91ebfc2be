//! Saved queries: SQL files read at run time, so users add their own without rebuilding.
//!
//! The files of the repository's `queries/` are also compiled in, so `deltann query --saved
//! NAME` works from anywhere; folders on disk are read over them, later ones replacing a query of
//! the same name: the user's `$XDG_CONFIG_HOME/deltann/queries` (or `~/.config/deltann/queries`),
//! then `./queries` in the working directory (a project's own), then each folder of
//! `$DELTANN_QUERIES` (colon-separated). Each file starts with comment lines saying what it
//! answers; `query --list` shows them with where each came from.

use std::fmt;
use std::path::{Path, PathBuf};

/// Where a saved query came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// Compiled into the binary from the repository's `queries/`.
    BuiltIn,
    /// Read from this file.
    File(PathBuf),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BuiltIn => f.write_str("built-in"),
            Self::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A saved query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Saved {
    /// The file name without `.sql`.
    pub name: String,
    /// The whole file.
    pub sql: String,
    pub source: Source,
    /// What it replaced, when a later folder redefined the name.
    pub replaces: Option<Source>,
}

impl Saved {
    /// The header comment, joined into one paragraph.
    pub fn description(&self) -> String {
        description(&self.sql)
    }
}

fn description(sql: &str) -> String {
    sql.lines()
        .take_while(|l| l.starts_with("--"))
        .map(|l| l.trim_start_matches("--").trim())
        .collect::<Vec<_>>()
        .join(" ")
}

macro_rules! built_in {
    ($($name:literal),* $(,)?) => {
        &[$(($name, include_str!(concat!("../../queries/", $name, ".sql")))),*]
    };
}

/// The queries compiled in: (name, SQL), alphabetically.
pub const BUILT_IN: &[(&str, &str)] = built_in![
    "accuracy_per_cell",
    "failed_cells",
    "flip_matrix",
    "flip_matrix_raw",
    "flips_by_class",
    "image_errors",
    "nondeterminism",
    "optimization_slowdowns",
    "precision_effect",
    "slowest_cells",
    "unstable_images",
];

/// The saved queries in effect, and what went wrong reading folders.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    queries: Vec<Saved>,
    /// One line per file or folder that could not be used (naming it and why).
    pub warnings: Vec<String>,
    /// The folders read, in order.
    pub folders: Vec<PathBuf>,
}

impl Catalog {
    /// The compiled-in queries only.
    pub fn built_in() -> Self {
        Self {
            queries: BUILT_IN
                .iter()
                .map(|(name, sql)| Saved {
                    name: (*name).to_string(),
                    sql: (*sql).to_string(),
                    source: Source::BuiltIn,
                    replaces: None,
                })
                .collect(),
            ..Self::default()
        }
    }

    /// The compiled-in queries with the default folders read over them (see the module header).
    pub fn load() -> Self {
        Self::with_folders(&default_folders(), &env_folders())
    }

    /// The compiled-in queries with `folders` read over them in order (skipped quietly when
    /// absent), then `required` (a warning when absent).
    pub fn with_folders(folders: &[PathBuf], required: &[PathBuf]) -> Self {
        let mut catalog = Self::built_in();
        for dir in folders {
            if dir.is_dir() {
                catalog.read_folder(dir);
            }
        }
        for dir in required {
            catalog.read_folder(dir);
        }
        catalog
    }

    fn read_folder(&mut self, dir: &Path) {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                self.warnings
                    .push(format!("{}: cannot read the folder: {e}", dir.display()));
                return;
            }
        };
        self.folders.push(dir.to_path_buf());
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "sql"))
            .collect();
        files.sort();
        for path in files {
            let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                self.warnings.push(format!(
                    "{}: skipped: a saved query's name is letters, digits, '_' and '-'",
                    path.display()
                ));
                continue;
            }
            let sql = match std::fs::read_to_string(&path) {
                Ok(s) if s.trim().is_empty() => {
                    self.warnings
                        .push(format!("{}: skipped: the file is empty", path.display()));
                    continue;
                }
                Ok(s) => s,
                Err(e) => {
                    self.warnings
                        .push(format!("{}: skipped: {e}", path.display()));
                    continue;
                }
            };
            let saved = Saved {
                name: name.to_string(),
                sql,
                source: Source::File(path.clone()),
                replaces: None,
            };
            match self.queries.iter_mut().find(|q| q.name == name) {
                Some(old) => {
                    // The same text as what it replaces (the repository's own folder over the
                    // compiled-in copy) is not news; a different text is.
                    let replaces = if old.sql == saved.sql {
                        old.replaces.clone()
                    } else {
                        Some(old.source.clone())
                    };
                    *old = Saved { replaces, ..saved };
                }
                None => self.queries.push(saved),
            }
        }
        self.queries.sort_by(|a, b| a.name.cmp(&b.name));
    }

    /// Every saved query, alphabetically.
    pub fn all(&self) -> &[Saved] {
        &self.queries
    }

    /// A saved query by name.
    pub fn get(&self, name: &str) -> Option<&Saved> {
        self.queries.iter().find(|q| q.name == name)
    }

    /// The names, for "no such query" messages.
    pub fn names(&self) -> Vec<&str> {
        self.queries.iter().map(|q| q.name.as_str()).collect()
    }
}

/// The user's folder, then `./queries`.
pub fn default_folders() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
    if let Some(config) = config {
        out.push(config.join("deltann").join("queries"));
    }
    out.push(PathBuf::from("queries"));
    out
}

/// The folders of `$DELTANN_QUERIES`.
pub fn env_folders() -> Vec<PathBuf> {
    std::env::var_os("DELTANN_QUERIES")
        .map(|v| {
            std::env::split_paths(&v)
                .filter(|p| !p.as_os_str().is_empty())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_in_queries_is_built_in_and_described() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../queries");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter_map(|f| f.strip_suffix(".sql").map(str::to_string))
            .collect();
        files.sort();
        let listed: Vec<&str> = BUILT_IN.iter().map(|q| q.0).collect();
        assert_eq!(files, listed);
        assert!(BUILT_IN.len() >= 8);
        for (name, sql) in BUILT_IN {
            assert!(description(sql).len() > 40, "{name} needs a header comment");
        }
    }

    #[test]
    fn folders_add_and_replace_queries_and_name_what_they_skip() {
        let user = tempfile::tempdir().unwrap();
        let project = tempfile::tempdir().unwrap();
        let write = |dir: &Path, name: &str, text: &[u8]| std::fs::write(dir.join(name), text);
        write(user.path(), "mine.sql", b"-- user's\nSELECT 1").unwrap();
        write(project.path(), "mine.sql", b"-- project's\nSELECT 2").unwrap();
        write(project.path(), "flip_matrix.sql", b"-- mine now\nSELECT 3").unwrap();
        write(project.path(), "bad name.sql", b"SELECT 4").unwrap();
        write(project.path(), "empty.sql", b"  \n").unwrap();
        write(project.path(), "latin1.sql", b"-- caf\xe9\nSELECT 5").unwrap();
        write(project.path(), "notes.txt", b"not a query").unwrap();
        let missing = project.path().join("missing");
        let c = Catalog::with_folders(
            &[user.path().to_path_buf(), missing.clone()],
            &[project.path().to_path_buf(), missing.clone()],
        );
        let mine = c.get("mine").unwrap();
        assert_eq!(mine.sql, "-- project's\nSELECT 2");
        assert_eq!(mine.source, Source::File(project.path().join("mine.sql")));
        assert_eq!(
            mine.replaces,
            Some(Source::File(user.path().join("mine.sql")))
        );
        let flip = c.get("flip_matrix").unwrap();
        assert_eq!(flip.description(), "mine now");
        assert_eq!(flip.replaces, Some(Source::BuiltIn));
        assert!(c.get("accuracy_per_cell").unwrap().source == Source::BuiltIn);
        assert_eq!(c.all().len(), BUILT_IN.len() + 1);
        let warnings = c.warnings.join("\n");
        for expected in [
            "bad name.sql",
            "empty.sql",
            "latin1.sql",
            "missing: cannot read",
        ] {
            assert!(warnings.contains(expected), "{expected}: {warnings}");
        }
        assert_eq!(c.warnings.len(), 4, "{warnings}");
        // The repository's folder over the compiled-in copies replaces nothing.
        let repo = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../queries"));
        let c = Catalog::with_folders(&[repo], &[]);
        assert!(c.all().iter().all(|q| q.replaces.is_none()));
        assert!(c.all().iter().all(|q| matches!(q.source, Source::File(_))));
    }
}
