/*!
deltann: differential testing of image-recognition models across engines, settings and machines.

This binary is a thin front end: argument parsing and dispatch live here, each subcommand in its
own module under `cli/`, and the work in the library crates (`deltann-collector` writes the
result store, `deltann-store` defines it).

Exit codes: 0 success; 1 the command ran but found a problem it reports (a failed cell); 2 error.
*/

mod cli;

/// glibc's malloc raises its mmap threshold after large frees, so the collector's many
/// short-lived image buffers end up fragmenting the heap and peak memory grows with the dataset
/// (measured: 87 MiB for 100 images, 152 MiB for 1000). mimalloc keeps it flat.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use clap::Parser;

/// mimalloc's `mi_option_purge_delay` (mimalloc.h, `mi_option_e`; the same position in its v2
/// and v3, and absent from libmimalloc-sys's constants).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed memory for reuse instead of returning it to the OS 10 ms later (mimalloc's
/// default): the analysis reads Parquet pages of about 1 MB into fresh buffers, and with purging
/// the kernel faulted in and zeroed every one of them again (BENCHMARKS.md, "Fewer bytes and less
/// work per comparison"). The collector and its workers keep the default, which holds their
/// memory flat.
#[allow(unsafe_code)]
fn keep_freed_memory() {
    // SAFETY: mi_option_set only stores an integer option; -1 is documented as "no purging".
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    keep_freed_c_memory();
}

/// The same for what C libraries allocate through glibc's malloc: the Parquet reader makes a
/// zstd codec for every column chunk it reads, and its decompression context (about 95 KB) was
/// allocated at the top of the heap and given back (`brk`) when freed, so the kernel faulted in
/// and zeroed fresh pages for the next one: 4,400 `brk` calls and a fifth of a report's time on
/// the 1M-row store (BENCHMARKS.md, "A report's C allocations"). Trimming only above 1 GiB
/// keeps that memory in the heap for the next context. Setting the trim threshold turns off
/// glibc's adaptive mmap threshold, which would leave every block of 128 KiB or more to its own
/// mmap and munmap: blocks up to 32 MiB are kept in the heap too.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn keep_freed_c_memory() {
    // SAFETY: mallopt only sets allocator parameters (byte counts here); a refusal (0) leaves
    // glibc's defaults, which are correct, only slower.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_c_memory() {}

fn main() -> ExitCode {
    let args = cli::Args::parse();
    if args.analyses() {
        keep_freed_memory();
    }
    match cli::run(args) {
        Ok(code) => code,
        Err(err) => {
            if is_broken_pipe(&err) {
                return ExitCode::SUCCESS;
            }
            eprintln!("deltann: {}", message(&err));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes, each said once: library errors name their file and include their
/// cause's words, which the cause then repeats (a full disk read "No space left on device"
/// three times), so a cause already said is left out.
fn message(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn each_cause_is_said_once() {
        let os = std::io::Error::from_raw_os_error(28);
        let said = os.to_string();
        let parquet = std::io::Error::other(format!("External: {said}"));
        let err = anyhow::Error::new(os)
            .context(parquet.to_string())
            .context(format!("parquet /s/_tmp/p.tmp: {parquet}"))
            .context("collecting cell abc");
        let text = super::message(&err);
        assert_eq!(text.matches(&said).count(), 1, "{text}");
        assert!(
            text.starts_with("collecting cell abc: parquet /s/_tmp/p.tmp: External: "),
            "{text}"
        );
    }
}
