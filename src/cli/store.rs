//! `deltann store verify` and `deltann store repair`: the store's health, for the damage no crash
//! leaves but people and disks do (see RELIABILITY.md); `deltann store upgrade`: an older format
//! rewritten for this deltann.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use deltann_store::StoreWriter;
use deltann_store::verify::{self, Damaged};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

fn print_damaged(damaged: &[Damaged]) {
    for d in damaged {
        println!("  {}: {}", d.entry.path, d.problem);
    }
}

pub fn verify(store: &Path) -> anyhow::Result<ExitCode> {
    let v = verify::verify(store)?;
    println!(
        "{}: {} parts, {} bytes checked{}",
        store.display(),
        v.parts,
        v.bytes,
        if v.without_checksum > 0 {
            format!(
                " ({} written before checksums: size and footer only)",
                v.without_checksum
            )
        } else {
            String::new()
        }
    );
    if !v.strays.is_empty() {
        println!(
            "{} file(s) no manifest entry lists (the next `collect` or `deltann store repair` \
             adopts the one a crash can leave and quarantines the others):",
            v.strays.len()
        );
        for s in &v.strays {
            println!("  {s}");
        }
    }
    if v.leftovers > 0 {
        println!(
            "{} unfinished file(s) in _tmp/ (deleted by the next writer)",
            v.leftovers
        );
    }
    if v.is_sound() {
        println!("sound: every committed part is readable and matches its manifest entry");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "DAMAGED: {} part(s); `deltann store repair {}` drops them (their images are re-run by \
         the next collect):",
        v.damaged.len(),
        store.display()
    );
    print_damaged(&v.damaged);
    Ok(ExitCode::from(1))
}

pub fn repair(store: &Path) -> anyhow::Result<ExitCode> {
    let (writer, recovery) = StoreWriter::open(store)?;
    if !recovery.is_clean() {
        println!(
            "recovered: {} part(s) adopted, {} file(s) quarantined, {} unfinished file(s) \
             deleted{}",
            recovery.adopted.len(),
            recovery.quarantined.len(),
            recovery.tmp_removed,
            if recovery.torn_manifest_line {
                ", a torn manifest line cut off"
            } else {
                ""
            }
        );
        for q in &recovery.quarantined {
            println!("  quarantined {q}");
        }
    }
    let dropped = writer.repair()?;
    if dropped.is_empty() {
        println!(
            "{}: every committed part is sound; nothing dropped",
            store.display()
        );
    } else {
        println!(
            "{}: dropped {} damaged part(s) from the manifest (files, where any, in _quarantine/):",
            store.display(),
            dropped.len()
        );
        print_damaged(&dropped);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn upgrade(store: &Path) -> anyhow::Result<ExitCode> {
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    if let Ok(style) =
        ProgressStyle::with_template("rewriting outputs parts {pos}/{len} [{bar:30}] ({eta})")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    let done = deltann_store::upgrade::upgrade(store, |n, of| {
        bar.set_length(of as u64);
        bar.set_position(n as u64);
    })?;
    bar.finish_and_clear();
    if done.already_current {
        println!(
            "{}: already format {}; nothing to do",
            store.display(),
            deltann_store::layout::FORMAT_VERSION
        );
        return Ok(ExitCode::SUCCESS);
    }
    for q in &done.quarantined {
        println!("  quarantined {q} (not in the manifest)");
    }
    println!(
        "{}: now format {}; {} outputs part(s) rewritten ({} rows, {:.1} MB -> {:.1} MB); the \
         derived analysis is rebuilt by the next `deltann analyze` or `report`",
        store.display(),
        deltann_store::layout::FORMAT_VERSION,
        done.parts,
        done.rows,
        done.bytes_before as f64 / 1e6,
        done.bytes_after as f64 / 1e6,
    );
    Ok(ExitCode::SUCCESS)
}

/// `deltann store copy SRC DST`: a store between a directory and object storage, copying only
/// what DST lacks.
pub fn copy(src: &str, dst: &str) -> anyhow::Result<ExitCode> {
    use deltann_remote::{Remote, is_remote, sync};
    let started = std::time::Instant::now();
    let (copied, what) = match (is_remote(src), is_remote(dst)) {
        (false, true) => {
            let local = super::existing_store(src).map_err(anyhow::Error::msg)?;
            let store = deltann_store::Store::open(&local)?;
            let remote = Remote::open(dst)?;
            remote.create_if_missing()?;
            // Pushes are idempotent by content, so any writer id will do: a new one per copy.
            let writer = sync::writer_id(&super::default_host());
            let scratch = tempfile::tempdir()?;
            let copied = sync::Pusher::new(&remote, &writer, scratch.path())?.push(&store)?;
            (
                copied,
                format!("{} commit(s) made in {dst}", copied.commits),
            )
        }
        (true, false) => {
            let remote = Remote::open(src)?;
            remote.check()?;
            let root = Path::new(dst);
            std::fs::create_dir_all(root)
                .map_err(|e| anyhow::anyhow!("cannot create {dst}: {e}"))?;
            let (writer, _) = StoreWriter::open(root)?;
            let mut link = sync::Link::open(root, remote.url(), &super::default_host())?;
            let copied = sync::pull(&remote, &writer, &mut link, &|_| true)?;
            (
                copied,
                format!("{} group(s) committed in {dst}", copied.commits),
            )
        }
        _ => anyhow::bail!(
            "store copy moves a store between a directory and object storage (s3://BUCKET/PREFIX); \
             `{src}` and `{dst}` are both {}",
            if is_remote(src) {
                "object storage"
            } else {
                "directories (use cp -r, or rsync)"
            }
        ),
    };
    println!(
        "copied {} part(s), {:.1} MB, in {:.1} s: {what}{}",
        copied.parts,
        copied.bytes as f64 / 1e6,
        started.elapsed().as_secs_f64(),
        if copied.covered > 0 {
            format!(
                " ({} models/images part(s) left out: the destination holds their rows)",
                copied.covered
            )
        } else {
            String::new()
        }
    );
    Ok(ExitCode::SUCCESS)
}
