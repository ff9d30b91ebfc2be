//! Helpers shared by the integration tests: running the real binary, writing sweeps, and reading
//! a store back with arrow-rs's Parquet reader directly (walking the directory, not through
//! deltann's manifest reader), so the store is checked the way any outside reader sees it.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::concat_batches;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The shipped demo data.
pub fn data() -> PathBuf {
    root().join("data")
}

/// `../shared` (real models and 1000 ImageNet photos), when present. Tests that need it skip
/// with a visible message when it is absent, so the suite passes on a user's fresh clone.
pub fn shared() -> Option<PathBuf> {
    let dir = std::env::var_os("DELTANN_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared"));
    if dir.join("models").is_dir() && dir.join("images").is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "SKIPPED: {} not found (set DELTANN_SHARED to the folder with models/ and images/)",
            dir.display()
        );
        None
    }
}

/// Where scripts/fetch-onnxruntime.sh installs libraries.
pub fn ort_library(version: &str) -> PathBuf {
    let home = std::env::var_os("DELTANN_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|c| PathBuf::from(c).join("deltann")))
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/deltann"));
    let lib = home.join(format!("onnxruntime/{version}/libonnxruntime.so.{version}"));
    assert!(
        lib.is_file(),
        "ONNX Runtime {version} is not installed at {}: run scripts/fetch-onnxruntime.sh {version} \
         (the README's test command does)",
        lib.display()
    );
    lib
}

/// Installs a Python engine's environment (`deltann engines install`: pinned PyPI versions,
/// once per machine, then reused), as the README's test command expects to be able to.
pub fn python_engine(engine: &str) {
    let out = run(&["engines", "install", engine]);
    assert!(
        out.status.success(),
        "deltann engines install {engine} failed (needs PyPI): {}",
        text(&out)
    );
}

/// The `deltann` binary under test.
pub fn deltann() -> Command {
    Command::new(env!("CARGO_BIN_EXE_deltann"))
}

/// Starts `deltann collect --quiet --part-rows N SWEEP` in the background, its output discarded.
pub fn spawn_collect(sweep: &Path, part_rows: usize) -> std::process::Child {
    deltann()
        .args(["collect", "--quiet", "--part-rows", &part_rows.to_string()])
        .arg(sweep)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start deltann collect")
}

/// Runs `deltann` with `args`, returning its output.
pub fn run(args: &[&str]) -> Output {
    deltann().args(args).output().expect("run deltann")
}

/// The one value `deltann query STORE SQL` answers (its first row's first column, as CSV text).
pub fn query_value(store: &Path, sql: &str) -> String {
    let out = run(&["query", store.to_str().unwrap(), sql, "--format", "csv"]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let value = stdout.lines().nth(1).unwrap_or_default();
    value.split(',').next().unwrap_or_default().to_string()
}

/// The dimensions `deltann report --format json` attributes flips to, in its order.
pub fn attributed_dimensions(store: &Path) -> Vec<String> {
    let report = run(&["report", store.to_str().unwrap(), "--format", "json"]);
    assert!(report.status.success(), "{}", text(&report));
    let json: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    json["attribution"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["dimension"].as_str().unwrap().to_string())
        .collect()
}

/// stdout and stderr of an output, for assertion messages.
pub fn text(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Writes a sweep file into `dir`; `{data}` in `body` becomes the demo data folder.
pub fn write_sweep(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("sweep.toml");
    let body = body.replace("{data}", &data().display().to_string());
    std::fs::write(&path, body).unwrap();
    path
}

/// The demo model and photos with `environments` appended; results go to `store` in `dir`.
pub fn data_sweep(dir: &Path, environments: &str) -> PathBuf {
    write_sweep(
        dir,
        &format!(
            r#"
store = "store"
warmup = 1

[dataset]
images = "{{data}}/images"
labels = "{{data}}/labels.csv"

[[model]]
name = "efficientnet-lite0"
path = "{{data}}/efficientnet-lite0.onnx"
preset = "tf127"
classes = "{{data}}/imagenet_classes.txt"

[environments]
{environments}
"#
        ),
    )
}

/// One table of a store as read by arrow-rs from the files on disk: each part with its Hive
/// partition values.
pub struct TableRead {
    pub parts: Vec<(BTreeMap<String, String>, RecordBatch)>,
}

impl TableRead {
    /// All rows in one batch (partition columns not included).
    pub fn all(&self) -> Option<RecordBatch> {
        let first = self.parts.first()?;
        let schema = first.1.schema();
        Some(concat_batches(&schema, self.parts.iter().map(|(_, b)| b)).unwrap())
    }

    pub fn rows(&self) -> usize {
        self.parts.iter().map(|(_, b)| b.num_rows()).sum()
    }
}

/// Reads every `*.parquet` under `store/table` (skipping names that start with `_` or `.`, as
/// Hive readers do).
pub fn read_table(store: &Path, table: &str) -> TableRead {
    let mut files = Vec::new();
    collect(&store.join(table), &mut files);
    files.sort();
    let mut parts = Vec::new();
    for file in files {
        let mut partition = BTreeMap::new();
        for comp in file
            .strip_prefix(store.join(table))
            .unwrap()
            .parent()
            .unwrap()
            .components()
        {
            let s = comp.as_os_str().to_string_lossy();
            if let Some((k, v)) = s.split_once('=') {
                partition.insert(k.to_string(), v.to_string());
            }
        }
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&file).unwrap())
            .unwrap()
            .build()
            .unwrap();
        let batches: Vec<RecordBatch> = reader.map(|b| b.unwrap()).collect();
        if let Some(first) = batches.first() {
            let batch = concat_batches(&first.schema(), &batches).unwrap();
            parts.push((partition, batch));
        }
    }
    TableRead { parts }
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with('_') || name.starts_with('.') {
            continue;
        }
        let p = e.path();
        if p.is_dir() {
            collect(&p, out);
        } else if name.ends_with(".parquet") {
            out.push(p);
        }
    }
}

/// A string column as owned values (nulls as `None`).
pub fn strings(batch: &RecordBatch, name: &str) -> Vec<Option<String>> {
    let col = batch
        .column_by_name(name)
        .unwrap_or_else(|| panic!("no column {name}"));
    let col = col.as_string::<i32>();
    (0..col.len())
        .map(|i| col.is_valid(i).then(|| col.value(i).to_string()))
        .collect()
}

/// An Int32 column.
pub fn ints(batch: &RecordBatch, name: &str) -> Vec<Option<i32>> {
    let col = batch
        .column_by_name(name)
        .unwrap_or_else(|| panic!("no column {name}"));
    let col = col.as_primitive::<arrow::datatypes::Int32Type>();
    (0..col.len())
        .map(|i| col.is_valid(i).then(|| col.value(i)))
        .collect()
}

/// The manifest's entries (paths of committed parts).
pub fn manifest_paths(store: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(store.join("_manifest.jsonl")) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| v["path"].as_str().unwrap().to_string())
        .collect()
}

/// Starts a server process and waits for its first line, `listening on ADDRESS`; returns the
/// process and the address.
pub fn spawn_listening(mut command: Command) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let address = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("{command:?} said {line:?}"))
        .to_string();
    (child, address)
}
