//! The analyzer's commands through the real binary: query (one-shot and saved), the SQL shell in
//! batch mode, report, check (exit codes) and diff, on synthetic stores with planted effects; and
//! the report on a real sweep of MobileNetV2 with its fp16 and int8 variants (needs ../shared).

use std::io::Write;
use std::process::Stdio;

use crate::util::{self, text};

fn synth(dir: &std::path::Path, name: &str, extra: &[&str]) -> std::path::PathBuf {
    let store = dir.join(name);
    let mut args = vec!["synth", "--small", store.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = util::run(&args);
    assert!(out.status.success(), "{}", text(&out));
    store
}

#[test]
fn query_runs_sql_and_saved_queries_in_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let store = synth(dir.path(), "s", &[]);
    let s = store.to_str().unwrap();

    let out = util::run(&[
        "query",
        s,
        "SELECT count(*) AS n FROM cells_latest",
        "--format",
        "csv",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "n\n37");

    // A store named by a relative path (the usual `deltann query results ...`).
    let out = util::deltann()
        .current_dir(dir.path())
        .args([
            "query",
            "s",
            "SELECT count(*) AS n FROM outputs",
            "--format",
            "csv",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let absolute = util::run(&[
        "query",
        s,
        "SELECT count(*) AS n FROM outputs",
        "--format",
        "csv",
    ]);
    assert!(String::from_utf8_lossy(&absolute.stdout).starts_with("n\n"));
    assert_eq!(out.stdout, absolute.stdout, "{}", text(&out));

    // SQL pasted from a file keeps its header comment.
    let out = util::run(&[
        "query",
        s,
        "-- how many cells\nSELECT count(*) AS n FROM cells_latest",
        "--format",
        "csv",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "n\n37",
        "{}",
        text(&out)
    );

    let out = util::run(&["query", s, "--saved", "flip_matrix", "--format", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(rows.as_array().unwrap().len() > 100);
    assert!(rows[0]["flip_rate"].as_f64().unwrap() > 0.1);

    let out = util::run(&[
        "query",
        s,
        "--saved",
        "failed_cells",
        "--format",
        "markdown",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("| failed | 1"),
        "{}",
        text(&out)
    );

    let out = util::run(&[
        "query",
        s,
        "SELECT image_id FROM images ORDER BY 1",
        "--maxrows",
        "3",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("img-00002.jpg") && !stdout.contains("img-00003.jpg"),
        "{stdout}"
    );
    assert!(stdout.contains("(3 of 60 rows shown"), "{stdout}");

    let out = util::run(&["query", "--list"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.lines().count() >= 8 && listed.contains("flip_matrix"),
        "{listed}"
    );
}

#[test]
fn query_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let store = synth(dir.path(), "s", &[]);
    let s = store.to_str().unwrap();
    // A syntax error, with a caret under its position.
    let out = util::run(&["query", s, "SELECT *\nFRM cells"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("syntax error: Expected: end of statement, found: FRM at Line: 2"),
        "{stderr}"
    );
    assert!(stderr.contains("FRM cells\n^"), "{stderr}");
    // An unknown table names it.
    let out = util::run(&["query", s, "SELECT * FROM nosuch"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nosuch"),
        "{}",
        text(&out)
    );
    // Writes are refused without --allow-write.
    let target = dir.path().join("x.csv");
    let copy = format!("COPY (SELECT 1) TO '{}' STORED AS CSV", target.display());
    let out = util::run(&["query", s, &copy]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--allow-write"));
    assert!(!target.exists());
    // Not a store.
    let out = util::run(&["query", dir.path().to_str().unwrap(), "SELECT 1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a deltann store"));
    let out = util::run(&["query", s, "--saved", "nope"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no saved query `nope`"));
}

#[test]
fn sql_shell_in_batch_mode_from_a_file_and_from_a_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let store = synth(dir.path(), "s", &[]);
    let script = dir.path().join("q.sql");
    std::fs::write(
        &script,
        "\\d outputs\n\\format csv\nSELECT count(*)\n  AS n\n  FROM errors;\n\\saved image_errors\n",
    )
    .unwrap();
    let out = util::run(&[
        "sql",
        store.to_str().unwrap(),
        "-f",
        script.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("logits_hash") && stdout.contains("UInt64"),
        "{stdout}"
    );
    assert!(stdout.contains("n\n1"), "{stdout}");
    assert!(stdout.contains("truncated JPEG"), "{stdout}");

    let mut child = util::deltann()
        .args(["sql", store.to_str().unwrap(), "--format", "csv"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            b"SELECT count(*) AS c FROM cells WHERE status = 'failed';\nSELEC oops;\nSELECT 1;\n",
        )
        .unwrap();
    let out = child.wait_with_output().unwrap();
    // The batch stops at the first error, with exit code 2.
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("c\n1"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("SELEC"));
}

#[test]
fn report_check_and_diff() {
    let dir = tempfile::tempdir().unwrap();
    let a = synth(dir.path(), "a", &[]);
    let b = synth(dir.path(), "b", &["--ort-version", "1.31.1"]);
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());

    let out = util::run(&["report", a, "--format", "markdown"]);
    assert!(out.status.success(), "{}", text(&out));
    let md = String::from_utf8_lossy(&out.stdout);
    for section in [
        "## Cells",
        "## Which dimension explains",
        "## Most disagreeing pairs",
        "## Deviation signatures",
        "## Classes that flip most",
        "## Near ties",
        "## Performance contrasts",
    ] {
        assert!(md.contains(section), "{section}");
    }
    assert!(md.contains("FLAG"));
    let out = util::run(&["report", a, "--format", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["attribution"][0]["dimension"], "precision");

    // check: 0 within bounds, 1 outside (naming pairs), 2 on error.
    let out = util::run(&["check", a, "--max-flip-rate", "50%"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = util::run(&["check", a, "--max-flip-rate", "0.01"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAIL flip rate"));
    let out = util::run(&["check", a, "--max-slowdown", "10%"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ort basic -> ort extended"));
    let out = util::run(&[
        "check",
        dir.path().join("missing").to_str().unwrap(),
        "--max-flip-rate",
        "1%",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let out = util::run(&["check", a, "--max-flip-rate", "lots"]);
    assert_eq!(out.status.code(), Some(2));

    // diff: the same environments, another ONNX Runtime version, matched despite new ids.
    let out = util::run(&["diff", a, b]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("1.32.0 -> 1.31.1"), "{stdout}");
    assert!(!stdout.contains("only in"), "{stdout}");
}

#[test]
fn slow_shared_report_finds_int8_as_the_dominant_cause() {
    let Some(shared) = util::shared() else { return };
    util::ort_library("1.32.0");
    let dir = tempfile::tempdir().unwrap();
    let sweep = util::write_sweep(
        dir.path(),
        &format!(
            r#"
store = "store"
logits = "full"
warmup = 1
[dataset]
images = "{s}/images/imagenet-sample"
labels = "{s}/images/labels.csv"
limit = 150
[[model]]
name = "mobilenetv2"
path = "{s}/models/mobilenetv2.onnx"
preset = "torchvision"
classes = "{s}/images/imagenet_classes.txt"
variants = [
  {{ name = "mobilenetv2-fp16", path = "{s}/models/mobilenetv2-fp16.onnx", precision = "fp16" }},
  {{ name = "mobilenetv2-int8", path = "{s}/models/mobilenetv2-int8.onnx", precision = "int8" }},
]
[environments]
engine = ["ort", "tract"]
ort_library = ["1.32.0"]
ort_optimization = ["basic", "all"]
exclude = [{{ engine = "tract", precision = "fp16" }}, {{ engine = "tract", precision = "int8" }}]
"#,
            s = shared.display()
        ),
    );
    let out = util::run(&["collect", "--quiet", sweep.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let store = dir.path().join("store");
    let out = util::run(&["report", store.to_str().unwrap(), "--format", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let attribution = json["attribution"].as_array().unwrap();
    let summary: Vec<String> = attribution
        .iter()
        .map(|r| format!("{} {:.4}", r["dimension"], r["flip_rate"].as_f64().unwrap()))
        .collect();
    println!("attribution: {summary:?}");
    assert_eq!(attribution[0]["dimension"], "precision", "{summary:?}");
    // The flips come from the int8 file: the largest deviation signature says so.
    let top = &json["signatures"][0];
    println!(
        "top signature: {} ({} images)",
        top["label"], top["signature"]["images"]
    );
    assert!(
        top["label"].as_str().unwrap().contains("precision=int8"),
        "{top}"
    );
    // And the table report renders the same store.
    let out = util::run(&["report", store.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("precision"));
}

/// A two-cell store (`a` ort/all, `b` ort/basic) of 20 labelled images over 10 classes: `b`
/// flips `flips` images against `a`; `noise` gives both cells a second repetition that flips
/// that many images against their first (a run-to-run floor of noise/20 each); `b_ms` is `b`'s
/// latency (`a`'s is 10 ms).
fn gate_store(root: &std::path::Path, flips: usize, noise: usize, b_ms: f64) {
    use deltann_synth::HandCell;
    let logits = |top: usize| -> Vec<f32> {
        (0..10)
            .map(|c| match c {
                c if c == top => 5.0,
                c if c == (top + 1) % 10 => 3.0,
                c => c as f32 * 0.1,
            })
            .collect()
    };
    const IDS: [&str; 20] = [
        "i00", "i01", "i02", "i03", "i04", "i05", "i06", "i07", "i08", "i09", "i10", "i11", "i12",
        "i13", "i14", "i15", "i16", "i17", "i18", "i19",
    ];
    let cell = |id, optimization, shift: usize, ms: f64| HandCell {
        id,
        model: "family0",
        precision: "fp32",
        engine: "ort",
        optimization,
        threads: 1,
        rows: (0..20)
            .map(|i| {
                let top = if i < shift { (i + 1) % 10 } else { i % 10 };
                (IDS[i], Some((i % 10) as i32), logits(top), ms)
            })
            .collect(),
        // The noise flips the last images, away from the planted flips.
        second: (noise > 0).then(|| {
            (0..20)
                .map(|i| {
                    let top = if i < shift { (i + 1) % 10 } else { i % 10 };
                    logits(if i >= 20 - noise { (top + 2) % 10 } else { top })
                })
                .collect()
        }),
    };
    deltann_synth::write_hand(
        root,
        &[
            cell("aaaaaaaaaaaaaaaa", "all", 0, 10.0),
            cell("bbbbbbbbbbbbbbbb", "basic", flips, b_ms),
        ],
    )
    .unwrap();
}

#[test]
fn check_and_diff_gate_beyond_the_run_to_run_floor() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    // 3 of 20 images flip between the cells (15%, 95% interval [5.2%, 36%]).
    gate_store(&dir.path().join("flips"), 3, 0, 10.0);
    // The same flips, but each cell also flips 4 of 20 against itself (floors 20% + 20%).
    gate_store(&dir.path().join("noisy"), 3, 4, 10.0);
    let code = |args: &[&str]| {
        let out = util::run(args);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };

    let (status, stdout) = code(&["check", &path("flips"), "--max-flip-rate", "10%"]);
    assert_eq!(status, Some(1), "{stdout}");
    assert!(
        stdout.contains("FAIL flip rate beyond floor 15.00% > 10.00%"),
        "{stdout}"
    );
    // Planted noise: the same 15% is within what the cells disagree with themselves.
    let (status, stdout) = code(&["check", &path("noisy"), "--max-flip-rate", "10%"]);
    assert_eq!(status, Some(0), "{stdout}");
    // Noise explains the mean of the floors, not their sum: 8 of 20 flips (40%) against floors of
    // 20% each leave 20% beyond noise.
    gate_store(&dir.path().join("noisy-flips"), 8, 4, 10.0);
    let (status, stdout) = code(&["check", &path("noisy-flips"), "--max-flip-rate", "15%"]);
    assert_eq!(status, Some(1), "{stdout}");
    assert!(stdout.contains("beyond floor 20.00% > 15.00%"), "{stdout}");
    // On the interval's bounds: 3 of 20 does not prove more than 10% (lower 5.2%), nor rule it
    // out (upper 36%).
    let (status, stdout) = code(&[
        "check",
        &path("flips"),
        "--max-flip-rate",
        "10%",
        "--bound",
        "lower",
    ]);
    assert_eq!(status, Some(0), "{stdout}");
    let (status, stdout) = code(&[
        "check",
        &path("flips"),
        "--max-flip-rate",
        "30%",
        "--bound",
        "upper",
    ]);
    assert_eq!(status, Some(1), "{stdout}");
    assert!(stdout.contains("upper 95% bound"), "{stdout}");

    // diff: B's cell `b` flips 3 images against A's and is twice as slow.
    gate_store(&dir.path().join("before"), 0, 0, 10.0);
    gate_store(&dir.path().join("same"), 0, 0, 10.0);
    gate_store(&dir.path().join("after-noisy"), 3, 8, 10.0);
    gate_store(&dir.path().join("after-slow"), 0, 0, 20.0);
    let (status, stdout) = code(&["diff", &path("before"), &path("same")]);
    assert_eq!(status, Some(0), "{stdout}");
    assert!(
        stdout.contains("no regression: 2 matched cells"),
        "{stdout}"
    );
    let (status, stdout) = code(&["diff", &path("before"), &path("flips")]);
    assert_eq!(status, Some(1), "{stdout}");
    assert!(
        stdout.contains("REGRESSION bbbbbbbbbbbbbbbb") && stdout.contains("3 of 20 images flip"),
        "{stdout}"
    );
    let (status, stdout) = code(&[
        "diff",
        &path("before"),
        &path("flips"),
        "--max-flip-rate",
        "20%",
    ]);
    assert_eq!(status, Some(0), "{stdout}");
    // Planted noise on B's side: its floor (40%; the mean with A's 0% is 20%) covers the 15%.
    let (status, stdout) = code(&["diff", &path("before"), &path("after-noisy")]);
    assert_eq!(status, Some(0), "{stdout}");
    let (status, stdout) = code(&["diff", &path("before"), &path("after-slow")]);
    assert_eq!(status, Some(1), "{stdout}");
    assert!(stdout.contains("p50 +100.0%"), "{stdout}");
    let (status, stdout) = code(&[
        "diff",
        &path("before"),
        &path("after-slow"),
        "--max-slowdown",
        "150%",
    ]);
    assert_eq!(status, Some(0), "{stdout}");
    // --json keeps the exit status and lists the regressions.
    let (status, stdout) = code(&["diff", &path("before"), &path("after-slow"), "--json"]);
    assert_eq!(status, Some(1));
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["regressions"].as_array().unwrap().len(), 1, "{stdout}");
}

#[test]
fn saved_queries_are_read_from_folders_at_run_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = synth(dir.path(), "s", &[]);
    let home = dir.path().join("home");
    let user = home.join(".config/deltann/queries");
    let extra = dir.path().join("extra");
    std::fs::create_dir_all(&user).unwrap();
    std::fs::create_dir_all(&extra).unwrap();
    std::fs::write(
        user.join("cell_count.sql"),
        "-- How many cells the store holds (the user's own query)\nSELECT count(*) AS n FROM cells_latest",
    )
    .unwrap();
    std::fs::write(
        extra.join("slowest_cells.sql"),
        "-- Replaced: the one slowest cell\nSELECT cell_id FROM cells_latest ORDER BY latency_p50_ms DESC LIMIT 1",
    )
    .unwrap();
    std::fs::write(extra.join("bad name.sql"), "SELECT 1").unwrap();
    let run = |args: &[&str]| {
        util::deltann()
            .current_dir(dir.path())
            .env("HOME", &home)
            .env_remove("XDG_CONFIG_HOME")
            .env("DELTANN_QUERIES", &extra)
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["query", "--list"]);
    assert!(out.status.success(), "{}", text(&out));
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains("How many cells the store holds"),
        "{listing}"
    );
    assert!(
        listing.contains(&format!("from {}", user.join("cell_count.sql").display())),
        "{listing}"
    );
    assert!(
        listing.contains(&format!(
            "from {} (replaces built-in)",
            extra.join("slowest_cells.sql").display()
        )),
        "{listing}"
    );
    assert!(listing.contains("flip_matrix") && listing.contains("from built-in"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad name.sql: skipped"));

    let s = store.to_str().unwrap();
    let out = run(&["query", s, "--saved", "cell_count", "--format", "csv"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "n\n37");
    let out = run(&["query", s, "--saved", "slowest_cells", "--format", "csv"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
    // A store named through `..` (as `scripts/study.sh` names one relative to the repository).
    let dotted = home.join("..").join("s");
    let out = run(&[
        "query",
        dotted.to_str().unwrap(),
        "--saved",
        "cell_count",
        "--format",
        "csv",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "n\n37");
    let out = run(&["query", s, "--saved", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cell_count"),
        "{}",
        text(&out)
    );
}
