//! A store on object storage: a real S3-compatible server on loopback (examples/s3_loopback.rs,
//! s3s over s3s-fs, its own process, speaking HTTP with SigV4), two collectors sharding one
//! sweep into it at once, one of them SIGKILLed and resumed. The store must then hold exactly
//! the rows an unsharded local run of the same sweep writes, and analyse the same.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{self, data_sweep, text};

/// The S3 server, killed when dropped.
struct Server {
    child: Child,
    endpoint: String,
}

impl Server {
    fn start(root: &Path) -> Server {
        let exe = Path::new(env!("CARGO_BIN_EXE_deltann"))
            .parent()
            .unwrap()
            .join("examples/s3_loopback");
        assert!(
            exe.is_file(),
            "{} is missing: `cargo build --example s3_loopback` (the test command builds it)",
            exe.display()
        );
        let mut command = Command::new(exe);
        command
            .args(["--root", root.to_str().unwrap(), "--bucket", "sweeps"])
            .args(["--port", "0"]);
        let (child, endpoint) = util::spawn_listening(command);
        Server { child, endpoint }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `deltann` with the server's endpoint and credentials, and a DELTANN_HOME of its own (for the
/// mirrors) that still finds the installed ONNX Runtime.
fn deltann(server: &Server, home: &Path) -> Command {
    let mut cmd = util::deltann();
    cmd.env("AWS_ENDPOINT_URL", &server.endpoint)
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "deltann")
        .env("AWS_SECRET_ACCESS_KEY", "deltann-secret")
        .env("DELTANN_HOME", home);
    cmd
}

/// `collect --shard SHARD` into `url`, through the spool `home/spool-SHARD` unless `spool`.
/// A DELTANN_HOME of the test's own (mirrors, spools) in which the installed ONNX Runtime
/// library `ort` is found.
fn home_with(ort: &Path, dir: &Path) -> PathBuf {
    let home = dir.join("home");
    let lib = home.join("onnxruntime/1.32.0");
    std::fs::create_dir_all(&lib).unwrap();
    std::os::unix::fs::symlink(ort, lib.join(ort.file_name().unwrap())).unwrap();
    home
}

fn collect(
    server: &Server,
    home: &Path,
    sweep: &Path,
    url: &str,
    shard: &str,
    spool: Option<&Path>,
) -> Command {
    let mut cmd = deltann(server, home);
    let own = home.join(format!("spool-{}", shard.replace('/', "-of-")));
    cmd.args(["collect", "--quiet", "--part-rows", "2"])
        .arg(sweep)
        .args(["--store", url, "--shard", shard, "--spool"])
        .arg(spool.unwrap_or(&own));
    cmd
}

/// `deltann query STORE SQL --format csv`, stdout.
fn query(cmd: &mut Command, store: &str, sql: &[&str]) -> String {
    let out = cmd
        .arg("query")
        .arg(store)
        .args(sql)
        .args(["--format", "csv"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn two_sharded_collectors_one_killed_fill_an_s3_store_like_one_local_run() {
    let ort = util::ort_library("1.32.0");
    let dir = tempfile::tempdir().unwrap();
    // ORT's two levels are quick; tract's decluttered plan is slow, which leaves time to kill.
    let sweep = data_sweep(
        dir.path(),
        r#"
engine = ["ort", "tract"]
ort_library = ["1.32.0"]
ort_optimization = ["disabled", "all"]
tract_plan = ["decluttered", "optimized"]
repetitions = [2]
"#,
    );
    let local = dir.path().join("local");
    let out = util::deltann()
        .args(["collect", "--quiet", "--part-rows", "2"])
        .arg(&sweep)
        .arg("--store")
        .arg(&local)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));

    let server = Server::start(&dir.path().join("s3"));
    let home = home_with(&ort, dir.path());
    let url = "s3://sweeps/nightly";

    // Shard 1 runs ORT `disabled` then tract `decluttered`; shard 2 the other two. Both start
    // at once; shard 1 is killed once ORT's cell is done and tract's is under way.
    let mut one = collect(&server, &home, &sweep, url, "1/2", None)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let two = collect(&server, &home, &sweep, url, "2/2", None)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let spool: PathBuf = home.join("spool-1-of-2");
    let started = Instant::now();
    let mut killed = false;
    while started.elapsed() < Duration::from_secs(300) {
        let parts = util::manifest_paths(&spool);
        let outputs = parts.iter().filter(|p| p.starts_with("outputs/")).count();
        if outputs >= 10 {
            let cells = parts.iter().filter(|p| p.starts_with("cells/")).count();
            assert_eq!(cells, 1, "the kill should fall inside the second cell");
            one.kill().unwrap(); // SIGKILL
            killed = true;
            break;
        }
        assert!(
            one.try_wait().unwrap().is_none(),
            "shard 1 ended before the kill"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = one.wait();
    assert!(killed, "shard 1 never got far enough to kill");
    let resumed = collect(&server, &home, &sweep, url, "1/2", None)
        .output()
        .unwrap();
    assert!(resumed.status.success(), "{}", text(&resumed));
    let resumed_text = String::from_utf8_lossy(&resumed.stdout);
    assert!(
        resumed_text.contains("pushed to s3://sweeps/nightly"),
        "{resumed_text}"
    );
    let two = two.wait_with_output().unwrap();
    assert!(two.status.success(), "{}", text(&two));

    // The bucket, read as files on the server's disk: every committed part once, at its size.
    let bucket = dir.path().join("s3/sweeps/nightly");
    let mut seen = std::collections::HashSet::new();
    let mut commits = 0;
    for log in std::fs::read_dir(bucket.join("_log")).unwrap() {
        let commit: serde_json::Value =
            serde_json::from_slice(&std::fs::read(log.unwrap().path()).unwrap()).unwrap();
        commits += 1;
        for entry in commit["entries"].as_array().unwrap() {
            let hash = entry["xxh3"].as_str().unwrap().to_string();
            assert!(seen.insert(hash.clone()), "part {hash} committed twice");
            let file = bucket.join(entry["path"].as_str().unwrap());
            assert_eq!(
                std::fs::metadata(&file).unwrap().len(),
                entry["bytes"].as_u64().unwrap(),
                "{}",
                file.display()
            );
        }
    }
    assert!(commits > 10, "{commits} commits");

    // A shard whose spool is lost resumes from the bucket: nothing left to run.
    let lost = dir.path().join("lost-spool");
    let fresh = collect(&server, &home, &sweep, url, "1/2", Some(&lost))
        .output()
        .unwrap();
    assert!(fresh.status.success(), "{}", text(&fresh));
    let said = text(&fresh);
    assert!(said.contains("0 cells run now, 2 already done"), "{said}");
    assert!(said.contains("fetched from it to resume"), "{said}");

    // The same rows as the local run: ids, images, repetitions, logits hashes; the same cells
    // ending ok with the same images; each model and image recorded once.
    let remote = |sql: &[&str]| query(&mut deltann(&server, &home), url, sql);
    let here = |sql: &[&str]| query(&mut util::deltann(), local.to_str().unwrap(), sql);
    for sql in [
        "SELECT cell_id, image_id, repetition, logits_hash, top1 FROM outputs \
         ORDER BY cell_id, image_id, repetition",
        "SELECT cell_id, status, images_ok, host_name FROM cells_latest ORDER BY cell_id",
        "SELECT image_id, sha256 FROM images ORDER BY image_id",
        "SELECT model, sha256 FROM models ORDER BY model",
    ] {
        let (r, l) = (remote(&[sql]), here(&[sql]));
        assert!(l.lines().count() > 1, "{sql}: no rows locally");
        assert_eq!(r, l, "{sql}");
    }
    assert_eq!(
        remote(&["SELECT count(*) FROM outputs"]).lines().nth(1),
        Some("64"),
        "4 cells x 8 images x 2 repetitions"
    );
    // The analysis agrees: every pair's flips, each cell's accuracy.
    for saved in ["flip_matrix", "accuracy_per_cell"] {
        assert_eq!(
            remote(&["--saved", saved]),
            here(&["--saved", saved]),
            "{saved}"
        );
    }

    // Copied out to a directory, it is a sound local store with the same rows; copied back in
    // under another prefix and out again, still the same.
    let copied = dir.path().join("copied");
    let out = deltann(&server, &home)
        .args(["store", "copy", url])
        .arg(&copied)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let verify = util::run(&["store", "verify", copied.to_str().unwrap()]);
    assert!(verify.status.success(), "{}", text(&verify));
    let rows = "SELECT cell_id, image_id, repetition, logits_hash FROM outputs \
                ORDER BY cell_id, image_id, repetition";
    let from_copy = query(&mut util::deltann(), copied.to_str().unwrap(), &[rows]);
    assert_eq!(from_copy, here(&[rows]));
    let out = deltann(&server, &home)
        .args(["store", "copy"])
        .arg(&local)
        .arg("s3://sweeps/copy")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        query(&mut deltann(&server, &home), "s3://sweeps/copy", &[rows]),
        here(&[rows])
    );
    // Copying again copies nothing.
    let again = deltann(&server, &home)
        .args(["store", "copy"])
        .arg(&local)
        .arg("s3://sweeps/copy")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&again.stdout).starts_with("copied 0 part(s)"),
        "{}",
        text(&again)
    );
}

#[test]
fn the_same_sweep_on_two_machines_is_two_cells_compared_along_host() {
    util::ort_library("1.32.0");
    let dir = tempfile::tempdir().unwrap();
    let sweep = data_sweep(
        dir.path(),
        r#"
engine = ["ort"]
ort_library = ["1.32.0"]
ort_optimization = ["all"]
"#,
    );
    let store = dir.path().join("store");
    for host in ["alpha", "beta"] {
        let out = util::run(&[
            "collect",
            "--quiet",
            sweep.to_str().unwrap(),
            "--host",
            host,
        ]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let hosts = query(
        &mut util::deltann(),
        store.to_str().unwrap(),
        &["SELECT host_name, count(DISTINCT cell_id) FROM cells GROUP BY 1 ORDER BY 1"],
    );
    assert_eq!(
        hosts,
        "host_name,count(DISTINCT cells.cell_id)\nalpha,1\nbeta,1\n"
    );
    // Each host's plan finds its own cell done; a third host's is pending.
    for (host, state) in [("alpha", "1 ok"), ("gamma", "1 pending")] {
        let out = util::run(&["plan", sweep.to_str().unwrap(), "--host", host]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(text(&out).contains(state), "{host}: {}", text(&out));
    }
    assert!(util::attributed_dimensions(&store).contains(&"host".to_string()));
    let report = util::run(&["report", store.to_str().unwrap()]);
    assert!(report.status.success(), "{}", text(&report));
    let report = String::from_utf8_lossy(&report.stdout);
    assert!(
        report.contains("@alpha") && report.contains("@beta"),
        "{report}"
    );
}

#[test]
fn a_follower_of_an_s3_store_folds_in_what_other_machines_push() {
    let ort = util::ort_library("1.32.0");
    let dir = tempfile::tempdir().unwrap();
    let sweep = data_sweep(
        dir.path(),
        r#"
engine = ["ort"]
ort_library = ["1.32.0"]
ort_optimization = ["disabled", "all"]
"#,
    );
    let server = Server::start(&dir.path().join("s3"));
    let home = home_with(&ort, dir.path());
    let url = "s3://sweeps/live";
    let first = collect(&server, &home, &sweep, url, "1/2", None)
        .output()
        .unwrap();
    assert!(first.status.success(), "{}", text(&first));
    let follower = deltann(&server, &home)
        .args([
            "analyze",
            url,
            "--follow",
            "--poll-ms",
            "200",
            "--idle-exit",
            "10",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The follower has folded the first machine's cell before the second machine pushes.
    std::thread::sleep(Duration::from_secs(3));
    let second = collect(&server, &home, &sweep, url, "2/2", None)
        .output()
        .unwrap();
    assert!(second.status.success(), "{}", text(&second));
    let out = follower.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = said.lines().filter(|l| l.contains("folded")).collect();
    assert!(
        lines
            .first()
            .is_some_and(|l| l.ends_with("0 comparisons, 8 cell-images")),
        "{said}"
    );
    assert!(
        lines
            .last()
            .is_some_and(|l| l.ends_with("8 comparisons, 16 cell-images")),
        "{said}"
    );
}
