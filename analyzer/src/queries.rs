//! The saved queries of `queries/`, compiled into the binary so `deltann query --saved NAME`
//! works from anywhere. Each file starts with comment lines saying what it answers; a test keeps
//! this list and the folder in step.

/// A saved query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Saved {
    /// The file name without `.sql`.
    pub name: &'static str,
    /// The whole file.
    pub sql: &'static str,
}

impl Saved {
    /// The header comment, joined into one paragraph.
    pub fn description(&self) -> String {
        self.sql
            .lines()
            .take_while(|l| l.starts_with("--"))
            .map(|l| l.trim_start_matches("--").trim())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

macro_rules! saved {
    ($($name:literal),* $(,)?) => {
        &[$(Saved { name: $name, sql: include_str!(concat!("../../queries/", $name, ".sql")) }),*]
    };
}

/// Every saved query, alphabetically.
pub const ALL: &[Saved] = saved![
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

/// A saved query by name.
pub fn get(name: &str) -> Option<&'static Saved> {
    ALL.iter().find(|q| q.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_in_queries_is_listed_and_described() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../queries");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter_map(|f| f.strip_suffix(".sql").map(str::to_string))
            .collect();
        files.sort();
        let listed: Vec<&str> = ALL.iter().map(|q| q.name).collect();
        assert_eq!(files, listed);
        assert!(ALL.len() >= 8);
        for q in ALL {
            assert!(
                q.description().len() > 40,
                "{} needs a header comment",
                q.name
            );
        }
    }
}
