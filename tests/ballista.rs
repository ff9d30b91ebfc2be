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
}

impl Cluster {
    fn start(executors: usize) -> Cluster {
        let mut command = util::deltann();
        command.args(["ballista", "scheduler"]);
        let (scheduler, url) = util::spawn_listening(command);
        let mut processes = vec![scheduler];
        for _ in 0..executors {
            let mut executor = util::deltann()
                .args(["ballista", "executor", "--scheduler", &url])
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
        Cluster { processes, url }
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
