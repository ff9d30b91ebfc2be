//! `deltann store verify` and `deltann store repair`: the store's health, for the damage no crash
//! leaves but people and disks do (see RELIABILITY.md).

use std::path::Path;
use std::process::ExitCode;

use deltann_store::StoreWriter;
use deltann_store::verify::{self, Damaged};

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
