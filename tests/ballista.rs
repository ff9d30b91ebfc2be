//! Queries on Apache Ballista: a scheduler and two executors (`deltann ballista`, each its own
//! process, gRPC and Arrow Flight on loopback) answer every saved query with the rows the local
//! session gives, on a synthetic store and on a store the collector wrote.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::util::{self, data_sweep, text};

/// A scheduler and its executors, killed when dropped.
struct Cluster {
    processes: Vec<Child>,
    url: String,
    /// The executors' temporary folder (their shuffle files), removed with the cluster.
    _work: tempfile::TempDir,
}

impl Cluster {
    fn start(executors: usize) -> Cluster {
        let mut command = util::deltann();
        command.args(["ballista", "scheduler"]);
        let (scheduler, url) = util::spawn_listening(command);
        let mut processes = vec![scheduler];
        let work = tempfile::tempdir().unwrap();
        for _ in 0..executors {
            let mut executor = util::deltann()
                .args(["ballista", "executor", "--scheduler", &url])
                .env("TMPDIR", work.path())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut line = String::new();
            BufReader::new(executor.stdout.take().unwrap())
                .read_line(&mut line)
                .unwrap();
            assert!(line.starts_with("executor running"), "{line:?}");
            processes.push(executor);
        }
        // Executors register with their first poll.
        std::thread::sleep(Duration::from_millis(500));
        Cluster {
            processes,
            url,
            _work: work,
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in &mut self.processes {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

/// The built-in saved queries' names (`query --list` prints each name at the start of a line).
fn saved_queries() -> Vec<String> {
    let out = util::run(&["query", "--list"]);
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with(' ') && !l.is_empty())
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// `query STORE --saved NAME --format csv [--ballista URL]`: the header, then the rows sorted
/// (tied rows may come in any order from either engine).
fn answer(store: &Path, name: &str, ballista: Option<&str>) -> Vec<String> {
    let mut args = vec!["query", store.to_str().unwrap(), "--saved", name];
    args.extend(["--format", "csv"]);
    if let Some(url) = ballista {
        args.extend(["--ballista", url]);
    }
    let out = util::run(&args);
    assert!(out.status.success(), "{name} {ballista:?}: {}", text(&out));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let mut lines: Vec<String> = stdout.lines().map(str::to_string).collect();
    if lines.len() > 1 {
        lines[1..].sort();
    }
    lines
}

#[test]
fn saved_queries_on_ballista_equal_the_local_answers() {
    util::ort_library("1.32.0");
    let dir = tempfile::tempdir().unwrap();
    let synth = dir.path().join("synth");
    let out = util::run(&["synth", "--small", synth.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let sweep = data_sweep(
        dir.path(),
        r#"
engine = ["ort", "tract"]
ort_library = ["1.32.0"]
ort_optimization = ["disabled", "all"]
repetitions = [2]
"#,
    );
    let out = util::run(&["collect", "--quiet", sweep.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let collected = dir.path().join("store");

    let cluster = Cluster::start(2);
    let names = saved_queries();
    assert!(names.len() >= 10, "{names:?}");
    for store in [&synth, &collected] {
        for name in &names {
            let here = answer(store, name, None);
            let there = answer(store, name, Some(&cluster.url));
            assert_eq!(there, here, "{name} on {}", store.display());
        }
    }
    // Plain SQL too, across the derived tables and a view.
    let sql = "SELECT p.family, count(*) AS n, sum(CASE WHEN c.flip THEN 1 ELSE 0 END) AS flips \
               FROM comparisons c JOIN pairs p ON p.pair = c.pair GROUP BY p.family ORDER BY 1";
    let run = |ballista: Option<&str>| {
        let mut args = vec!["query", collected.to_str().unwrap(), sql, "--format", "csv"];
        if let Some(url) = ballista {
            args.extend(["--ballista", url]);
        }
        let out = util::run(&args);
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(run(Some(&cluster.url)), run(None));
}

/// A store's derived tables as sorted CSV: `comparisons` with its pair's names, `cell_images`,
/// and the running sums of `pairs` (pair numbers depend on the order pairs were met, so they
/// are left out).
fn derived(store: &Path) -> Vec<String> {
    [
        "SELECT family, cell_a, cell_b, image_id, label, top1_a, top1_b, flip, identical, \
         jaccard_top5, rbo_top5, kendall_tau, max_abs_logit, mean_abs_logit, kl_ab, kl_ba \
         FROM comparisons ORDER BY cell_a, cell_b, image_id",
        "SELECT * FROM cell_images ORDER BY cell_id, image_id",
        "SELECT * EXCLUDE (pair) FROM pairs ORDER BY cell_a, cell_b",
    ]
    .iter()
    .map(|sql| {
        let out = util::run(&["query", store.to_str().unwrap(), sql, "--format", "csv"]);
        assert!(out.status.success(), "{sql}: {}", text(&out));
        String::from_utf8(out.stdout).unwrap()
    })
    .collect()
}

/// `report` without its first line (which names the store).
fn report(store: &Path) -> String {
    let out = util::run(&["report", store.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    text.split_once('\n').map(|(_, r)| r.to_string()).unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// `analyze STORE --ballista URL`, asserting it rebuilt.
fn build_on(cluster: &Cluster, store: &Path) {
    let out = util::run(&[
        "analyze",
        store.to_str().unwrap(),
        "--ballista",
        &cluster.url,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("rebuilt: folded"), "{}", text(&out));
}

#[test]
fn derived_tables_built_on_ballista_equal_the_local_fold() {
    util::ort_library("1.32.0");
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(2);

    // A synthetic store: one copy folded here, the other built on the cluster.
    let synth = dir.path().join("synth");
    let out = util::run(&["synth", "--small", synth.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let local = dir.path().join("synth-local");
    copy_dir(&synth, &local);
    let out = util::run(&["analyze", "--rebuild", local.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    build_on(&cluster, &synth);
    let (there, here) = (derived(&synth), derived(&local));
    assert!(here[0].lines().count() > 1000, "{}", here[0]);
    assert_eq!(there, here);
    assert_eq!(report(&synth), report(&local));

    // A store the collector wrote, built on the cluster half-way through its sweep: the local
    // advances that fold in the rest extend the cluster's state.
    let sweep = r#"
engine = ["ort"]
ort_library = ["1.32.0"]
ort_optimization = ["disabled", "all"]
repetitions = [2]
"#;
    let first = data_sweep(dir.path(), sweep);
    let out = util::run(&["collect", "--quiet", first.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let store = dir.path().join("store");
    build_on(&cluster, &store);
    let built = derived(&store);
    assert!(built[0].lines().count() > 1, "{}", built[0]);
    let sweep = sweep.replace(r#"["ort"]"#, r#"["ort", "tract"]"#);
    let second = data_sweep(dir.path(), &sweep);
    let out = util::run(&["collect", "--quiet", second.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let out = util::run(&["analyze", store.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !text(&out).contains("rebuilt") && text(&out).contains("folded"),
        "{}",
        text(&out)
    );
    let local = dir.path().join("store-local");
    copy_dir(&store, &local);
    let out = util::run(&["analyze", "--rebuild", local.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let (there, here) = (derived(&store), derived(&local));
    assert!(here[0].lines().count() > built[0].lines().count());
    assert_eq!(there, here);
    assert_eq!(report(&store), report(&local));
}
