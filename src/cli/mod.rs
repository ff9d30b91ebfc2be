//! Command-line arguments and dispatch. Each subcommand's flags are a struct here; what it does
//! is in the module of the same name.

mod collect;
mod plan;
mod progress;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Differential testing of image-recognition models across computational environments.
///
/// A sweep file lists models, images and environment dimensions (engine, ONNX Runtime
/// optimization level and version, tract plan, threads, batch size, repetitions, resize filter).
/// deltann runs every combination ("cell") on the same preprocessed images and stores every
/// output (full logits, top-5, per-image latency, provenance) as plain Parquet.
///
/// Start with `deltann plan SWEEP.toml`, then `deltann collect SWEEP.toml`.
#[derive(Debug, Parser)]
#[command(name = "deltann", version, about, long_about)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the cells a sweep expands to, and which are already done in its store.
    Plan(PlanArgs),
    /// Run a sweep's cells into the result store; rerun to resume after a crash or Ctrl-C.
    Collect(CollectArgs),
    /// Run one cell for `collect` (speaks the worker protocol of docs/ENGINES.md on stdin/stdout).
    #[command(hide = true)]
    Worker,
}

/// Arguments of `deltann plan`.
#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// The sweep file (TOML).
    #[arg(value_parser = existing_file)]
    pub sweep: PathBuf,
    /// Result store to compare against (default: the sweep's `store`).
    #[arg(long)]
    pub store: Option<PathBuf>,
}

/// Arguments of `deltann collect`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = COLLECT_HELP)]
pub struct CollectArgs {
    /// The sweep file (TOML).
    #[arg(value_parser = existing_file)]
    pub sweep: PathBuf,
    /// Result store directory (default: the sweep's `store`).
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// Cells computing at the same time. Latencies of parallel cells disturb each other; the
    /// count is recorded with each cell.
    #[arg(short = 'j', long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub parallel_cells: u16,
    /// Kill a worker that sends nothing for this many seconds (a hang) and fail its cell.
    #[arg(long, default_value_t = 600, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub stall_timeout: u64,
    /// Fail a cell that takes longer than this many seconds in all.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub cell_timeout: Option<u64>,
    /// Run the remaining images of failed cells again, as a new attempt.
    #[arg(long)]
    pub retry_failed: bool,
    /// Commit an outputs part every this many rows...
    #[arg(long, default_value_t = 4096, value_name = "ROWS", value_parser = clap::value_parser!(u64).range(1..))]
    pub part_rows: u64,
    /// ...or every this many seconds: at most this much work is lost to a crash.
    #[arg(long, default_value_t = 60, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub part_seconds: u64,
    /// Keep the preprocessed-tensor cache (STORE/_cache) after the run.
    #[arg(long)]
    pub keep_tensors: bool,
    /// No progress bar (cell lines still go to stderr).
    #[arg(short, long)]
    pub quiet: bool,
}

const COLLECT_HELP: &str = "\
Each cell runs in its own worker process, so a crash, abort or hang fails that cell only (it is \
recorded with the reason) and the sweep goes on. Results are committed in parts; killing the \
collector loses at most the part being written, and running the same command again resumes.

Exit status: 0 when every cell is ok, 1 when the sweep finished but some cell failed, 2 on error.

ONNX Runtime: cells with engine = \"ort\" load libonnxruntime at run time. List versions or paths \
in environments.ort_library, or set DELTANN_ORT_LIBRARY; `scripts/fetch-onnxruntime.sh VERSION` \
installs a version from PyPI's onnxruntime wheel under ~/.cache/deltann (or $DELTANN_HOME).";

fn existing_file(s: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(s);
    if path.is_file() {
        Ok(path)
    } else if path.exists() {
        Err(format!("{s} is not a file"))
    } else {
        Err(format!("{s} does not exist"))
    }
}

/// Runs the parsed command.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Plan(a) => plan::run(&a),
        Command::Collect(a) => collect::run(&a),
        Command::Worker => {
            deltann_collector::worker::serve(std::io::stdin(), std::io::stdout())
                .map_err(|e| anyhow::anyhow!("worker: {e}"))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Loads a sweep and decides its store directory (`--store` first, then the sweep's `store`).
fn load_sweep(
    path: &std::path::Path,
    store: Option<&std::path::Path>,
) -> anyhow::Result<(deltann_collector::sweep::Sweep, PathBuf)> {
    let sweep = deltann_collector::sweep::Sweep::load(path)?;
    let store = match (store, &sweep.store) {
        (Some(s), _) => s.to_path_buf(),
        (None, Some(s)) => s.clone(),
        (None, None) => anyhow::bail!(
            "{}: no `store` in the sweep file; add one or pass --store DIR",
            path.display()
        ),
    };
    Ok((sweep, store))
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        super::Args::command().debug_assert();
    }
}
