//! `deltann collect`: run a sweep, then print the per-cell summary read back from the store.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use deltann_collector::collect::{self, CollectOptions};
use deltann_collector::runner::{Timeouts, WorkerCommand};
use deltann_collector::sink::SinkConfig;
use deltann_collector::summary::{self, CellSummary};
use deltann_store::Store;

use super::CollectArgs;
use super::progress::Progress;

pub fn run(args: &CollectArgs) -> anyhow::Result<ExitCode> {
    let (sweep, store) = super::load_sweep(&args.sweep, args.store.as_deref())?;
    let host = args.host.clone().unwrap_or_else(super::default_host);
    let remote = match store.to_str().filter(|s| deltann_remote::is_remote(s)) {
        Some(url) => Some(deltann_remote::Remote::open(url)?),
        None => None,
    };
    // With a store on object storage, the cells run into a local store (the spool), which is
    // pushed there as it commits.
    let local = match (&remote, &args.spool) {
        (None, _) => store.clone(),
        (Some(_), Some(spool)) => spool.clone(),
        (Some(r), None) => {
            let mut name = host.clone();
            if let Some(shard) = args.shard {
                name.push_str(&format!("-shard-{}-of-{}", shard.index, shard.count));
            }
            super::local_dir_for("spool", r.url()).join(name)
        }
    };
    if remote.is_none() {
        warn_network_file_system(&store);
    }
    let worker = WorkerCommand::current_exe().context("cannot locate the deltann executable")?;
    if let Some(remote) = &remote {
        prepare_spool(remote, &local, &sweep, &host, args, &worker)?;
    }
    let options = CollectOptions {
        store: local.clone(),
        worker,
        parallel_cells: usize::from(args.parallel_cells),
        timeouts: Timeouts {
            stall: Duration::from_secs(args.stall_timeout),
            cell: args.cell_timeout.map(Duration::from_secs),
        },
        retry_failed: args.retry_failed,
        sink: SinkConfig {
            part_rows: usize::try_from(args.part_rows).unwrap_or(usize::MAX),
            part_age: Duration::from_secs(args.part_seconds),
            keep_logits: true,
        },
        keep_tensors: args.keep_tensors,
        command_line: std::env::args().collect::<Vec<_>>().join(" "),
        host: host.clone(),
        shard: args.shard,
    };
    let progress = Progress::new(args.quiet);
    let (report, pushed) = match &remote {
        None => (collect::collect(&sweep, &options, &progress), None),
        Some(remote) => {
            let (report, pushed) =
                collect_and_push(remote, &local, &host, &sweep, &options, &progress);
            (report, Some(pushed))
        }
    };
    progress.finish();
    let report = report?;
    let pushed = pushed.transpose()?;

    let snapshot = Store::open(&local)?;
    let lines = summary::summarize(&snapshot, &report.plan)?;
    println!("{}", table(&lines));
    for line in lines.iter().filter(|l| l.status == "failed") {
        println!(
            "failed {} {} {}: {}",
            &line.cell_id,
            line.model,
            line.tag,
            line.error.as_deref().unwrap_or("?")
        );
    }
    let rows: u64 = snapshot
        .parts(deltann_store::Table::Outputs)
        .map(|p| p.rows)
        .sum();
    println!(
        "store {} ({rows} output rows); run {}; {} cells run now, {} already done{}{}",
        local.display(),
        report.run_id,
        report.outcomes.len(),
        report.skipped_done,
        if report.undecodable > 0 {
            format!(
                "; {} undecodable images (see the errors table)",
                report.undecodable
            )
        } else {
            String::new()
        },
        report
            .peak_rss_kib
            .map(|k| format!("; collector peak memory {:.0} MiB", k as f64 / 1024.0))
            .unwrap_or_default(),
    );
    if let (Some(remote), Some(pushed)) = (&remote, pushed) {
        println!(
            "pushed to {}: {} commit(s), {} part(s), {:.1} MB{}; every part of this store is there",
            remote.url(),
            pushed.commits,
            pushed.parts,
            pushed.bytes as f64 / 1e6,
            if pushed.conflicts > 0 {
                format!(
                    " ({} commit number(s) taken by other writers first)",
                    pushed.conflicts
                )
            } else {
                String::new()
            }
        );
    }
    let worker_peak = report
        .outcomes
        .iter()
        .filter_map(|o| o.worker_peak_rss_mb)
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
    if let Some(peak) = worker_peak {
        println!("worker peak memory {peak:.0} MiB (largest cell of this run)");
    }
    disagreement(&lines);
    next_steps(&store);
    let any_failed = lines.iter().any(|l| l.status == "failed");
    Ok(if any_failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn warn_network_file_system(store: &std::path::Path) {
    // The store may not exist yet: ask about its nearest existing ancestor.
    let absolute = std::path::absolute(store).unwrap_or_else(|_| store.to_path_buf());
    let existing = absolute.ancestors().find(|p| p.exists());
    if let Some(kind) = existing.and_then(deltann_store::layout::network_file_system) {
        eprintln!(
            "deltann: warning: the store {} is on a network file system ({kind}): its lock and \
             crash safety assume a local disk (see RELIABILITY.md); collect to a local disk and \
             copy the store",
            store.display()
        );
    }
}

/// Makes the remote a store if it is not one, and brings into the spool what this run needs to
/// resume from the remote alone (a new machine, a lost spool): the run, model and image records,
/// and every committed part of this shard's cells. Other cells' results stay remote.
fn prepare_spool(
    remote: &deltann_remote::Remote,
    spool: &std::path::Path,
    sweep: &deltann_collector::sweep::Sweep,
    host: &str,
    args: &CollectArgs,
    worker: &WorkerCommand,
) -> anyhow::Result<()> {
    remote.create_if_missing()?;
    std::fs::create_dir_all(spool)
        .with_context(|| format!("cannot create the spool {}", spool.display()))?;
    // The store first: its writer refuses a non-empty folder that is not a store yet.
    let (writer, recovery) = deltann_store::StoreWriter::open(spool)?;
    if !recovery.is_clean() {
        eprintln!(
            "deltann: recovered the spool {} after an interruption: {} part(s) adopted, {} \
             unfinished temporary file(s) removed, {} damaged file(s) quarantined",
            spool.display(),
            recovery.adopted.len(),
            recovery.tmp_removed,
            recovery.quarantined.len()
        );
    }
    let mut link = deltann_remote::sync::Link::open(spool, remote.url(), host)?;
    let mut plan = deltann_collector::plan::Plan::build(sweep, host, &|engine, lib| {
        collect::probe_version(worker, engine, lib)
    })?;
    if let Some(shard) = args.shard {
        plan = plan.shard(shard);
    }
    let mine: std::collections::HashSet<&str> = plan.cells.iter().map(|c| c.id.as_str()).collect();
    let pulled = deltann_remote::sync::pull(remote, &writer, &mut link, &|commit| {
        commit
            .entries
            .iter()
            .all(|e| e.cell_id.as_deref().is_none_or(|id| mine.contains(id)))
    })?;
    eprintln!(
        "deltann: collecting into {} through the local store {}{}",
        remote.url(),
        spool.display(),
        if pulled.parts > 0 {
            format!(" ({} part(s) fetched from it to resume)", pulled.parts)
        } else {
            String::new()
        }
    );
    Ok(())
}

/// Runs the collection while a thread pushes the spool's new commits every two seconds; then
/// pushes what is left. A failed push during the run is a warning (the next one retries); the
/// final one's result is returned.
fn collect_and_push(
    remote: &deltann_remote::Remote,
    spool: &std::path::Path,
    host: &str,
    sweep: &deltann_collector::sweep::Sweep,
    options: &CollectOptions,
    progress: &Progress,
) -> (
    deltann_collector::Result<collect::CollectReport>,
    anyhow::Result<deltann_remote::sync::Copied>,
) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let pusher = s.spawn(|| -> anyhow::Result<deltann_remote::sync::Copied> {
            let link = deltann_remote::sync::Link::open(spool, remote.url(), host)?;
            let writer = link.writer.unwrap_or_else(|| host.to_string());
            let scratch = tempfile::tempdir()?;
            // Made on the first push that can reach the remote: a remote that is slow to answer
            // at the start delays pushes, it does not stop them.
            let mut pusher: Option<deltann_remote::sync::Pusher<'_>> = None;
            let push = |pusher: &mut Option<_>| push_once(pusher, remote, &writer, &scratch, spool);
            let mut total = deltann_remote::sync::Copied::default();
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let due = std::time::Instant::now();
                match push(&mut pusher) {
                    Ok(c) => total += c,
                    Err(e) => eprintln!(
                        "deltann: warning: push to {} failed (retrying): {e:#}",
                        remote.url()
                    ),
                }
                while due.elapsed() < Duration::from_secs(2) && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            total += push(&mut pusher)?;
            Ok(total)
        });
        let report = collect::collect(sweep, options, progress);
        stop.store(true, Ordering::Relaxed);
        let pushed = pusher
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the push thread panicked")));
        (report, pushed)
    })
}

/// One push of the spool's new commits, making the pusher first if there is none yet.
fn push_once<'r>(
    pusher: &mut Option<deltann_remote::sync::Pusher<'r>>,
    remote: &'r deltann_remote::Remote,
    writer: &str,
    scratch: &tempfile::TempDir,
    spool: &std::path::Path,
) -> anyhow::Result<deltann_remote::sync::Copied> {
    let pusher = match pusher {
        Some(p) => p,
        None => pusher.insert(deltann_remote::sync::Pusher::new(
            remote,
            writer,
            scratch.path(),
        )?),
    };
    Ok(pusher.push(&Store::open(spool)?)?)
}

/// One line on what the sweep is for: which cells answer differently from their family's
/// reference.
fn disagreement(lines: &[CellSummary]) {
    let mut differing: Vec<&CellSummary> = lines
        .iter()
        .filter(|l| l.reference.is_some() && l.agreement.is_some_and(|(a, n)| a < n))
        .collect();
    let compared = lines
        .iter()
        .filter(|l| l.reference.is_some() && l.agreement.is_some_and(|(_, n)| n > 0))
        .count();
    if differing.is_empty() {
        println!(
            "disagreement: none; all {compared} cells compared give their family's reference's \
             top-1 on every image"
        );
        return;
    }
    differing.sort_by(|x, y| {
        let share = |l: &CellSummary| l.agreement.map_or(1.0, |(a, n)| a as f64 / n as f64);
        share(x).total_cmp(&share(y))
    });
    let worst: Vec<String> = differing
        .iter()
        .take(3)
        .map(|l| {
            let (a, n) = l.agreement.unwrap_or((0, 0));
            format!("{} {} ({} of {n} images differ)", l.model, l.tag, n - a)
        })
        .collect();
    println!(
        "disagreement: {} of {compared} cells give another top-1 than their family's reference \
         on some image; most: {}",
        differing.len(),
        worst.join("; ")
    );
}

/// The commands that look at what was collected, ready to paste into a shell.
fn next_steps(store: &std::path::Path) {
    let me = std::env::args()
        .next()
        .unwrap_or_else(|| "deltann".to_string());
    let s = if deltann_remote::is_remote(&store.to_string_lossy()) {
        store.to_string_lossy().into_owned()
    } else {
        tidy(store).display().to_string()
    };
    // Quoted for the shell where it needs it.
    let s = if s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+,:@".contains(c))
    {
        s
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    };
    println!(
        "\nnext:\n  # tables in the terminal\n  {me} report {s}\n  # plots and an image gallery, \
         to open in a browser\n  {me} report {s} --format html -o report.html\n  # browse the \
         disagreements, down to one image's top-5 in every cell\n  {me} tui {s}"
    );
}

/// `data/../results/demo` as `results/demo`: `..` after a named folder cancels it (the sweep
/// file's folder joined with its relative `store`).
fn tidy(path: &std::path::Path) -> std::path::PathBuf {
    use std::path::Component;
    let mut out: Vec<Component<'_>> = Vec::new();
    for c in path.components() {
        match (c, out.last()) {
            (Component::CurDir, _) => {}
            (Component::ParentDir, Some(Component::Normal(_))) => {
                out.pop();
            }
            _ => out.push(c),
        }
    }
    if out.is_empty() {
        return std::path::PathBuf::from(".");
    }
    out.iter().collect()
}

/// The summary as a table: one row per cell.
fn table(lines: &[CellSummary]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec![
        "cell",
        "model",
        "environment",
        "status",
        "top-1",
        "p50 ms",
        "agree w/ ref",
    ]);
    for l in lines {
        let accuracy = l.accuracy.map_or_else(
            || "-".to_string(),
            |(c, n)| format!("{:.1}% ({c}/{n})", 100.0 * c as f64 / n as f64),
        );
        let agreement = match (&l.reference, l.agreement) {
            (None, _) => "(ref)".to_string(),
            (Some(_), Some((_, 0)) | None) => "-".to_string(),
            (Some(_), Some((a, n))) => format!("{:.1}% ({a}/{n})", 100.0 * a as f64 / n as f64),
        };
        let status = if l.images_failed > 0 {
            format!("{} ({} img err)", l.status, l.images_failed)
        } else {
            l.status.clone()
        };
        t.add_row(vec![
            l.cell_id.clone(),
            l.model.clone(),
            l.tag.clone(),
            status,
            accuracy,
            l.latency_p50_ms
                .map_or_else(|| "-".into(), |p| format!("{p:.2}")),
            agreement,
        ]);
    }
    t
}
