//! Command-line arguments and dispatch. Each subcommand's flags are a struct here; what it does
//! is in the module of the same name.

mod analyze;
mod ballista;
mod collect;
mod engines;
mod localize;
mod plan;
mod progress;
mod query;
mod report;
mod sql;
mod store;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Differential testing of image-recognition models across computational environments.
///
/// A sweep file lists models, images and environment dimensions (engine, ONNX Runtime
/// optimization level and version, tract plan, engine settings, device, threads, batch size,
/// repetitions, resize filter, and whose preprocessing: torchvision, pil-round, opencv, tf).
/// deltann runs every combination ("cell") on the same preprocessed images and stores every
/// output (full logits, top-5, per-image latency, provenance) as plain Parquet.
///
/// Start with `deltann plan SWEEP.toml`, then `deltann collect SWEEP.toml`; then ask questions
/// with `deltann report STORE`, `deltann query STORE "SELECT ..."` or `deltann sql STORE`.
#[derive(Debug, Parser)]
#[command(name = "deltann", version, about, long_about)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
    /// Read past damaged parts (deleted or cut short by hand, unreadable footer) instead of
    /// stopping at the first: each is named on stderr and left out, as if never committed. For
    /// commands that read a store; `deltann store repair` drops them for good.
    #[arg(long, global = true)]
    pub skip_damaged: bool,
}

impl Args {
    /// Whether the command analyses a store (reads it through the derived tables and SQL), as
    /// opposed to collecting into one, running an engine, or writing a synthetic store.
    pub fn analyses(&self) -> bool {
        matches!(
            self.command,
            Command::Query(_)
                | Command::Sql(_)
                | Command::Analyze(_)
                | Command::Report(_)
                | Command::Check(_)
                | Command::Diff(_)
                | Command::Tui(_)
        )
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the cells a sweep expands to, and which are already done in its store.
    Plan(PlanArgs),
    /// Run a sweep's cells into the result store; rerun to resume after a crash or Ctrl-C.
    Collect(CollectArgs),
    /// Run SQL over a store (or a saved query with --saved NAME; --list shows them).
    Query(QueryArgs),
    /// Interactive SQL shell over a store (batch mode with -f FILE or piped input).
    Sql(SqlArgs),
    /// Advance (or rebuild) a store's derived tables; with --follow, keep them up to date.
    Analyze(AnalyzeArgs),
    /// Disagreement, its root causes, and performance regressions of a store.
    Report(ReportArgs),
    /// Gate: exit 0 when flip rates and slowdowns are within bounds, 1 when not, 2 on error.
    Check(CheckArgs),
    /// Compare the same cells in two stores (e.g. before and after an engine upgrade); exit 1
    /// when the second regresses beyond noise.
    Diff(DiffArgs),
    /// Browse a store in the terminal: heatmap, disagreements, images, performance, SQL.
    Tui(TuiArgs),
    /// Localise a disagreement between two cells: the optimizer pass that causes it, and the
    /// first layer where the two part ways.
    Localize(LocalizeArgs),
    /// Check a store's parts against its manifest (verify), or drop the unreadable ones (repair).
    #[command(subcommand)]
    Store(StoreCommand),
    /// List the engines and their settings, or install a Python engine's environment.
    #[command(subcommand)]
    Engines(EnginesCommand),
    /// Run one cell for `collect` (speaks the worker protocol of docs/ENGINES.md on stdin/stdout).
    #[command(hide = true)]
    Worker,
    /// Write a synthetic store (for benchmarks and demos of the analyzer without a sweep).
    #[command(hide = true)]
    Synth(SynthArgs),
    /// Run an Apache Ballista scheduler or executor that knows deltann's SQL functions, for
    /// `deltann query STORE --ballista df://HOST:PORT` (see docs/SCALE.md).
    #[command(subcommand)]
    Ballista(BallistaCommand),
}

/// `deltann ballista ...`.
#[derive(Debug, Subcommand)]
pub enum BallistaCommand {
    /// Start a scheduler on a free port; prints `listening on df://localhost:PORT`.
    Scheduler,
    /// Start an executor that registers with a scheduler and runs its tasks until killed.
    Executor {
        /// The scheduler, df://HOST:PORT.
        #[arg(long, value_name = "URL")]
        scheduler: String,
        /// Tasks it runs at once.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
        tasks: u16,
    },
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
    /// The machine the cells are planned for (part of their ids; default: this host's name).
    #[arg(long, value_name = "NAME")]
    pub host: Option<String>,
    /// Show which of COUNT shards (`collect --shard INDEX/COUNT`) runs each cell.
    #[arg(long, value_name = "COUNT", value_parser = clap::value_parser!(u32).range(1..))]
    pub shards: Option<u32>,
}

/// Arguments of `deltann localize`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = LOCALIZE_HELP)]
pub struct LocalizeArgs {
    /// A result store (its cells are planned again from the sweeps its runs recorded, latest
    /// first; the results are stored in it), or a sweep file.
    pub target: PathBuf,
    /// The two cells, by id (or a unique prefix of one); the first is the reference.
    #[arg(long, num_args = 2, value_names = ["A", "B"], required = true)]
    pub pair: Vec<String>,
    /// The store holding the pair's comparisons, when TARGET is a sweep file (default: the
    /// sweep's `store`).
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// Images to run, by id (repeatable). Default: the images on which the pair's top-1
    /// answers differ, largest logit difference first, else those with the largest logit
    /// difference.
    #[arg(long = "image", value_name = "ID")]
    pub images: Vec<String>,
    /// How many images to take by default.
    #[arg(long, default_value_t = 10, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: u64,
    /// Only the pass bisection.
    #[arg(long, conflicts_with = "layers")]
    pub passes: bool,
    /// Only the layer localisation.
    #[arg(long)]
    pub layers: bool,
    /// Images to localise layers on (the first of the chosen images, by default one).
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub layer_images: u64,
    /// Bisection: largest |logit difference| that still counts as agreeing (top-1 must match
    /// too).
    #[arg(long, default_value_t = 1e-4, value_name = "X")]
    pub tolerance: f64,
    /// Bisection: the optimizer names to search, comma-separated (default: ONNX Runtime's).
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub candidates: Vec<String>,
    /// Layers: relative error (||b-a|| / ||a||) below which a node counts as agreeing.
    #[arg(long, default_value_t = 1e-3, value_name = "X")]
    pub node_tolerance: f64,
    /// Layers: how many times the error its inputs carried a node must exceed to be where the
    /// divergence starts.
    #[arg(long, default_value_t = 10.0, value_name = "X")]
    pub gain: f64,
    /// Layers: print every node's error, not only those around the first divergent one.
    #[arg(long)]
    pub all_nodes: bool,
    /// Kill a worker that sends nothing for this many seconds.
    #[arg(long, default_value_t = 600, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub stall_timeout: u64,
}

const LOCALIZE_HELP: &str = "\
Pass bisection (for two ONNX Runtime cells that differ in optimization level): runs the more
optimised cell with sets of ONNX Runtime's optimizer names disabled
(optimization.disable_specified_optimizers), delta-debugging to the smallest set whose disabling
makes it answer as the other cell does on the chosen images. Each trial is one worker run.

Layer localisation (ONNX Runtime and tract cells whose models share tensor names): runs both cells
with every intermediate tensor exposed, compares them node by node in graph order, and names the
first node whose relative error exceeds --node-tolerance and --gain times what its inputs carried
in. ONNX Runtime exposes the tensors that survive the cell's optimization level (at `disabled`,
all of them); tract keeps exposed tensors through its optimisation, so fusions across them do not
happen.

Each re-run is checked against the logits the store holds for it (bit for bit, or a warning).
Results go to the store's `localizations` and `node_errors` tables, to `deltann report` and to
the TUI's image screen (where `L` runs this for the selected cell). See docs/LOCALIZE.md.

Examples:
  deltann plan sweep.toml                          # cell ids
  deltann localize results/ --pair 3f2a 9c1d       # both, on the pair's flipped images
  deltann localize results/ --pair 3f2a 9c1d --layers --image n01440764/x.JPEG --all-nodes";

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
    /// Run failed cells again, and every image the engine rejected (an `inference` or `output`
    /// row in `errors`) in any cell, as a new attempt.
    #[arg(long)]
    pub retry_failed: bool,
    /// Commit an outputs part every this many rows...
    #[arg(long, default_value_t = 4096, value_name = "ROWS", value_parser = clap::value_parser!(u64).range(1..))]
    pub part_rows: u64,
    /// ...or every this many seconds: at most this much work is lost to a crash.
    #[arg(long, default_value_t = 60, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub part_seconds: u64,
    /// Keep the preprocessed-tensor caches (STORE/_cache/tensors) after the run. Without it, a
    /// run that completes removes them all, its own and those earlier runs kept.
    #[arg(long)]
    pub keep_tensors: bool,
    /// No progress bar (cell lines still go to stderr).
    #[arg(short, long)]
    pub quiet: bool,
    /// The machine's name, part of every cell's id and recorded with it (default: the host
    /// name). The same cell collected on two machines is two cells the analysis compares; give
    /// a stable name where host names change (containers).
    #[arg(long, value_name = "NAME")]
    pub host: Option<String>,
    /// Run only shard INDEX of COUNT: every COUNT-th cell of the plan from the INDEX-th (from
    /// 1), so COUNT machines running the same sweep file with 1/COUNT .. COUNT/COUNT split it
    /// between them. `deltann plan SWEEP --shards COUNT` shows who runs what.
    #[arg(long, value_name = "INDEX/COUNT")]
    pub shard: Option<deltann_collector::plan::Shard>,
    /// With a store on object storage (s3://...): the local store this run computes into and
    /// pushes from (default: DELTANN_HOME/spool/BUCKET/PREFIX/HOST[-shard-I-of-N]). Running
    /// again with the same one resumes.
    #[arg(long, value_name = "DIR")]
    pub spool: Option<PathBuf>,
}

/// Output formats of `query` and `sql`.
#[derive(Clone, Copy, Debug, Default, clap::ValueEnum)]
pub enum FormatArg {
    #[default]
    Table,
    Csv,
    Json,
    Markdown,
}

impl From<FormatArg> for deltann_analyzer::format::PrintFormat {
    fn from(f: FormatArg) -> Self {
        use deltann_analyzer::format::PrintFormat as P;
        match f {
            FormatArg::Table => P::Table,
            FormatArg::Csv => P::Csv,
            FormatArg::Json => P::Json,
            FormatArg::Markdown => P::Markdown,
        }
    }
}

/// Output formats of `report`.
#[derive(Clone, Copy, Debug, Default, clap::ValueEnum)]
pub enum ReportFormatArg {
    #[default]
    Table,
    Markdown,
    Json,
    /// One self-contained page with plots and an image gallery (give -o FILE).
    Html,
}

impl From<ReportFormatArg> for deltann_analyzer::report::ReportFormat {
    fn from(f: ReportFormatArg) -> Self {
        use deltann_analyzer::report::ReportFormat as R;
        match f {
            ReportFormatArg::Table => R::Table,
            ReportFormatArg::Markdown => R::Markdown,
            ReportFormatArg::Json => R::Json,
            // Rendered by deltann-html, not by the analyzer's text report.
            ReportFormatArg::Html => R::Table,
        }
    }
}

/// Arguments of `deltann query`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = QUERY_HELP)]
pub struct QueryArgs {
    /// The result store: a directory, or s3://BUCKET/PREFIX (read through a local mirror that
    /// fetches only what is new; see docs/SCALE.md).
    #[arg(value_parser = existing_store, required_unless_present = "list")]
    pub store: Option<PathBuf>,
    /// SQL to run (several statements separated by ';' run in order; may start with a `--`
    /// comment).
    #[arg(allow_hyphen_values = true)]
    pub sql: Option<String>,
    /// Run a saved query by name instead (see --list and below for where they are read).
    #[arg(long, value_name = "NAME")]
    pub saved: Option<String>,
    /// List the saved queries, what each answers and where each comes from.
    #[arg(long)]
    pub list: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = FormatArg::Table)]
    pub format: FormatArg,
    /// Print at most this many rows.
    #[arg(long, value_name = "N")]
    pub maxrows: Option<usize>,
    /// Print row count and time to stderr.
    #[arg(long)]
    pub timing: bool,
    /// Allow statements that write files (INSERT, COPY TO).
    #[arg(long)]
    pub allow_write: bool,
    /// Run the statement on an Apache Ballista cluster (its scheduler, df://HOST:PORT; see
    /// `deltann ballista`) instead of in this process. The executors read the store's files at
    /// the same path.
    #[arg(long, value_name = "URL", conflicts_with = "allow_write")]
    pub ballista: Option<String>,
}

const QUERY_HELP: &str = "\
Tables: runs, models, images, cells, outputs (partitioned by model and engine), errors; derived
(folded in first when named): comparisons (pair of cells x image), cell_images (cell x image),
pairs (the numbered pairs, with images and flips); views: cells_latest (each cell's latest
attempt) and predictions (outputs joined with their cell's environment). Columns are documented
in docs/STORE.md. Only committed parts are read.

Saved queries are read at run time: the built-in ones (the repository's queries/, compiled in),
then NAME.sql files in ~/.config/deltann/queries ($XDG_CONFIG_HOME), ./queries and the folders of
$DELTANN_QUERIES (colon-separated), a later folder replacing a query of the same name. A file's
first comment lines say what it answers.

Examples:
  deltann query results/demo \"SELECT tag, latency_p50_ms FROM cells_latest ORDER BY 2\"
  deltann query results/demo --saved flip_matrix --format csv > flips.csv";

/// Arguments of `deltann sql`.
#[derive(Debug, clap::Args)]
pub struct SqlArgs {
    /// The result store: a directory, or s3://BUCKET/PREFIX (read through a local mirror that
    /// fetches only what is new; see docs/SCALE.md).
    #[arg(value_parser = existing_store)]
    pub store: PathBuf,
    /// Run the statements of this file, then exit (stops at the first error, exit code 2).
    #[arg(short, long, value_name = "FILE", value_parser = existing_file)]
    pub file: Option<PathBuf>,
    /// Output format (\\format changes it in the shell).
    #[arg(long, value_enum, default_value_t = FormatArg::Table)]
    pub format: FormatArg,
    /// Print at most this many rows per result (\\maxrows changes it).
    #[arg(long, value_name = "N", default_value_t = 40)]
    pub maxrows: usize,
    /// Allow statements that write files (INSERT, COPY TO).
    #[arg(long)]
    pub allow_write: bool,
}

/// `deltann store ...`.
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Check every committed part: present, of its listed size, its bytes hashing to the
    /// manifest's checksum, its footer counting the listed rows; list stray files. Read-only;
    /// exit 0 when sound, 1 when a part is damaged.
    Verify(StorePathArgs),
    /// Recover the store (as the next `collect` would: unfinished files deleted, the part a
    /// crash can leave adopted, strays quarantined), then drop the manifest entries of damaged
    /// parts, moving their files to STORE/_quarantine/. Every readable part stays; a later
    /// `collect` re-runs the images whose rows were dropped.
    Repair(StorePathArgs),
    /// Rewrite a store of an older format for this deltann (format 1 kept logits as Parquet
    /// lists; format 2 keeps each row's float32s as one binary value, which decodes about 10x
    /// faster). Crash-safe: the old parts stay until the new ones are committed, and running it
    /// again after an interruption finishes the job. The derived analysis is rebuilt afterwards.
    Upgrade(StorePathArgs),
    /// Copy a store between a local directory and object storage (s3://BUCKET/PREFIX), either
    /// way. Only what the destination lacks is copied (parts are known by checksum), so an
    /// interrupted copy resumes when run again, and copying into a store other writers commit
    /// to at the same time is safe. Credentials and endpoint come from the AWS_* environment
    /// variables (AWS_ENDPOINT_URL, AWS_ALLOW_HTTP=true for a local server).
    Copy(StoreCopyArgs),
}

/// Arguments of `deltann store copy`.
#[derive(Debug, clap::Args)]
pub struct StoreCopyArgs {
    /// The store to copy: a directory or s3://BUCKET/PREFIX.
    pub src: String,
    /// Where to: a directory (created if missing) or s3://BUCKET/PREFIX (made a store if it is
    /// not one); the other kind than SRC.
    pub dst: String,
}

/// `deltann engines ...`.
#[derive(Debug, Subcommand)]
pub enum EnginesCommand {
    /// Every engine, the devices it runs on, its sweep settings, and whether it is installed.
    List,
    /// Create the Python environment of torch, openvino or tvm from pinned PyPI versions, under
    /// ~/.cache/deltann/python (or $DELTANN_HOME/python); once, then reused by every sweep.
    /// torch brings its CUDA libraries (several GB). `references` installs the libraries whose
    /// preprocessing the `preprocess` dimension reproduces (Pillow, OpenCV, TensorFlow), to check
    /// it with scripts/preprocess_reference.py.
    Install {
        /// Engines to install (torch, openvino, tvm), or references.
        #[arg(required = true, value_name = "ENGINE")]
        engines: Vec<String>,
    },
}

/// The store a `deltann store` command works on.
#[derive(Debug, clap::Args)]
pub struct StorePathArgs {
    /// The result store (a directory: a store on object storage is checked by copying it to
    /// one with `deltann store copy`).
    #[arg(value_parser = existing_local_store)]
    pub store: PathBuf,
}

/// Arguments of `deltann analyze`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = ANALYZE_HELP)]
pub struct AnalyzeArgs {
    /// The result store: a directory, or s3://BUCKET/PREFIX (read through a local mirror that
    /// fetches only what is new; see docs/SCALE.md).
    #[arg(value_parser = existing_store)]
    pub store: PathBuf,
    /// Discard the derived tables and recompute them from every committed part.
    #[arg(long)]
    pub rebuild: bool,
    /// Keep running, folding in each part as `collect` commits it (Ctrl-C to stop). Runs at the
    /// lowest CPU priority on one thread, so latencies measured next to it are disturbed least.
    #[arg(long)]
    pub follow: bool,
    /// With --follow: how often to look for new parts, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 1000, requires = "follow")]
    pub poll_ms: u64,
    /// With --follow: stop once nothing was committed for this many seconds (for scripts that
    /// follow one sweep to its end).
    #[arg(long, value_name = "S", requires = "follow")]
    pub idle_exit: Option<f64>,
    /// Threads for folding (default: every core; 1 with --follow).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Rebuild the derived tables from scratch on an Apache Ballista cluster (a scheduler from
    /// `deltann ballista scheduler`, executors from `deltann ballista executor`) instead of in
    /// this process. The executors must see the store at the same path; this process receives
    /// the rows and writes the derived state, which later advances extend as usual. The
    /// executors need about the size of the store's `outputs` free for shuffle files.
    #[arg(long, value_name = "df://HOST:PORT", conflicts_with = "follow")]
    pub ballista: Option<String>,
}

const ANALYZE_HELP: &str = "\
The analysis is state kept beside the data, in STORE/derived/: the `comparisons` table (one row
per pair of cells of a model family and image) and `cell_images` (one row per cell and image),
plus running sums per pair and cell. Each committed `outputs` part is folded in once, in time
proportional to the part; `report`, `check` and the TUI advance the state before reading, so
running `analyze` is never required, only useful: `--follow` next to a long `collect` keeps the
analysis current, and `--rebuild` recomputes everything. A state that folded parts the store no
longer lists (dropped by `store repair`, or left out by `--skip-damaged`) is rebuilt by itself.

Examples:
  deltann analyze results/demo
  deltann analyze results/night --follow --idle-exit 600 &
  deltann analyze /shared/night --ballista df://scheduler:50050     (see docs/SCALE.md)
  deltann query results/demo \"SELECT cell_a, cell_b, avg(CAST(flip AS INT)) FROM comparisons GROUP BY 1, 2\"";

/// Arguments of `deltann report`.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// The result store: a directory, or s3://BUCKET/PREFIX (read through a local mirror that
    /// fetches only what is new; see docs/SCALE.md).
    #[arg(value_parser = existing_store)]
    pub store: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ReportFormatArg::Table)]
    pub format: ReportFormatArg,
    /// Write the report to this file instead of standard output (written whole, then renamed
    /// into place).
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Images in the HTML report's gallery of unstable images.
    #[arg(long, default_value_t = 12, value_name = "N")]
    pub gallery: usize,
    /// Show every row of every section (JSON always has everything).
    #[arg(long)]
    pub all: bool,
    /// Flag slowdowns larger than this many times the cells' combined latency dispersion.
    #[arg(long, default_value_t = 1.0, value_name = "K")]
    pub noise_multiple: f64,
    /// Recompute the summary instead of using STORE/_cache/analysis-v3.json (it is refreshed
    /// automatically whenever parts were committed since).
    #[arg(long)]
    pub no_cache: bool,
    /// Which implementation computes the per-image findings and latencies from the derived
    /// tables: `polars` (lazy frames over the derived Parquet) or `native` (one hand-written
    /// pass). Both give the same report (the test suite checks it); they differ in speed only
    /// (BENCHMARKS.md). Use with --no-cache to time one.
    #[arg(long, value_enum, default_value_t = FramesArg::default())]
    pub frames: FramesArg,
}

/// The implementations of the analysis's frames (see `report --frames`).
#[derive(Clone, Copy, Debug, Default, clap::ValueEnum)]
pub enum FramesArg {
    Polars,
    #[default]
    Native,
}

impl From<FramesArg> for deltann_analyzer::frames::Engine {
    fn from(f: FramesArg) -> Self {
        match f {
            FramesArg::Polars => Self::Polars,
            FramesArg::Native => Self::Native,
        }
    }
}

/// Arguments of `deltann check`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = CHECK_HELP)]
pub struct CheckArgs {
    /// The result store: a directory, or s3://BUCKET/PREFIX (read through a local mirror that
    /// fetches only what is new; see docs/SCALE.md).
    #[arg(value_parser = existing_store)]
    pub store: PathBuf,
    /// Fail when two cells of a family disagree on more than this share of images (0.05 or 5%)
    /// beyond what their own noise explains: the mean of the two cells' run-to-run floors (each
    /// cell's top-1 flip rate between its repetitions; 0 for a cell run once).
    #[arg(long, value_name = "R", value_parser = fraction)]
    pub max_flip_rate: Option<f64>,
    /// Which value of a pair's flip rate is held to --max-flip-rate: the observed rate, or the
    /// lower or upper end of its 95% interval (lower: fail only what the images prove; upper:
    /// fail also what they cannot rule out).
    #[arg(long, value_enum, default_value_t = BoundArg::Point)]
    pub bound: BoundArg,
    /// Fail when a change meant to speed things up slows p50 latency by more than this
    /// (0.1 or 10%), by more than its noise floor (see --noise-multiple), and with an interval
    /// that excludes no change.
    #[arg(long, value_name = "S", value_parser = fraction)]
    pub max_slowdown: Option<f64>,
    /// Do not hold pairs that differ in this dimension to the flip bound (repeatable), e.g.
    /// precision for intended int8 variants.
    #[arg(long, value_name = "DIMENSION", value_parser = dimension)]
    pub skip: Vec<DimensionArg>,
    /// Flag slowdowns larger than this many times the cells' combined latency dispersion.
    #[arg(long, default_value_t = 1.0, value_name = "K")]
    pub noise_multiple: f64,
}

const CHECK_HELP: &str = "\
Exit status: 0 within bounds, 1 outside (each offending pair printed as FAIL ...), 2 on error.

In CI, after a sweep of the candidate build:
  deltann collect sweep.toml
  deltann check results --max-flip-rate 1% --bound lower --skip precision --max-slowdown 10%
fails the job only when some pair of environments disagrees on more than 1% of the images
beyond what each environment disagrees with itself (run the sweep with repetitions >= 2 so the
floor is measured), with 95% confidence, leaving intended int8/fp16 variants out; or when an
optimisation meant to speed things up slows p50 by more than 10% beyond its noise.";

/// Which value of a flip rate a gate compares (see `check --help`).
#[derive(Clone, Copy, Debug, Default, clap::ValueEnum)]
pub enum BoundArg {
    /// The observed rate.
    #[default]
    Point,
    /// The lower end of the 95% Wilson interval.
    Lower,
    /// The upper end of the 95% Wilson interval.
    Upper,
}

impl From<BoundArg> for deltann_analyzer::check::Bound {
    fn from(b: BoundArg) -> Self {
        match b {
            BoundArg::Point => Self::Point,
            BoundArg::Lower => Self::Lower,
            BoundArg::Upper => Self::Upper,
        }
    }
}

/// Arguments of `deltann diff`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = DIFF_HELP)]
pub struct DiffArgs {
    /// The first store (before).
    #[arg(value_parser = existing_store)]
    pub store_a: PathBuf,
    /// The second store (after).
    #[arg(value_parser = existing_store)]
    pub store_b: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Tolerate this share of flipped images per matched cell beyond the mean of both sides'
    /// run-to-run floors (default 0: any flip beyond that noise is a regression).
    #[arg(long, value_name = "R", value_parser = fraction, default_value = "0")]
    pub max_flip_rate: f64,
    /// Which value of the flip rate is held to --max-flip-rate (as in `check`).
    #[arg(long, value_enum, default_value_t = BoundArg::Point)]
    pub bound: BoundArg,
    /// Tolerate p50 slowdowns up to this (0.1 or 10%) even when beyond the noise (default 0:
    /// every flagged slowdown is a regression).
    #[arg(long, value_name = "S", value_parser = fraction, default_value = "0")]
    pub max_slowdown: f64,
    /// Flag slowdowns larger than this many times the cells' combined latency dispersion.
    #[arg(long, default_value_t = 1.0, value_name = "K")]
    pub noise_multiple: f64,
}

const DIFF_HELP: &str = "\
Exit status, like diff(1): 0 when B does not regress on A, 1 when it does (each regression
printed as REGRESSION ...), 2 on error. B regresses where a matched cell's top-1 flip rate
beyond the mean of both sides' run-to-run floors exceeds --max-flip-rate, or where its p50 is
flagged slower (beyond --noise-multiple times the cells' dispersion, 95% interval above zero)
by more than --max-slowdown.

Gating an engine upgrade in CI (the same sweep run with the old and the new library):
  deltann diff results-1.31 results-1.32 --max-flip-rate 0.5% --bound lower --max-slowdown 5%";

/// Arguments of `deltann tui`.
#[derive(Debug, clap::Args)]
#[command(
    after_long_help = "Keys: Tab/Shift-Tab screens, arrows or hjkl move, Enter opens, Esc goes back, \
/ searches, ? shows every key, q quits. Pointed at a store that a running `collect` is writing, \
it re-analyses as parts are committed. Pictures use the terminal's graphics protocol when it \
answers, half blocks otherwise (DELTANN_TUI_IMAGES=halfblocks forces them)."
)]
pub struct TuiArgs {
    /// The result store: a directory, or s3://BUCKET/PREFIX (read through a local mirror that
    /// fetches only what is new; see docs/SCALE.md).
    #[arg(value_parser = existing_store)]
    pub store: PathBuf,
}

/// Arguments of the hidden `deltann synth`.
#[derive(Debug, clap::Args)]
pub struct SynthArgs {
    /// Where to write the store (must not exist, or be empty).
    pub store: PathBuf,
    /// Images per family (the benchmark default gives 1,008,000 output rows).
    #[arg(long, default_value_t = 5250)]
    pub images: usize,
    /// Model families (48 cells each).
    #[arg(long, default_value_t = 4)]
    pub families: usize,
    /// Keep only top-5 and the logits hash.
    #[arg(long)]
    pub top5_only: bool,
    /// ONNX Runtime version to record (a second store with another one makes a `diff` demo).
    #[arg(long, default_value = "1.32.0")]
    pub ort_version: String,
    /// The small test store instead (2 families, 60 images, planted effects and failures).
    #[arg(long)]
    pub small: bool,
}

/// A dimension named on the command line.
#[derive(Clone, Copy, Debug)]
pub struct DimensionArg(pub deltann_analyzer::cells::Dimension);

fn dimension(s: &str) -> Result<DimensionArg, String> {
    deltann_analyzer::cells::Dimension::from_name(s)
        .map(DimensionArg)
        .ok_or_else(|| {
            let names: Vec<&str> = deltann_analyzer::cells::Dimension::ALL
                .iter()
                .map(|d| d.name())
                .collect();
            format!("dimensions are {}", names.join(", "))
        })
}

/// `0.05` or `5%` (a bare number must be at most 1; percentages go up to 1000%).
fn fraction(s: &str) -> Result<f64, String> {
    let (text, scale) = match s.strip_suffix('%') {
        Some(t) => (t, 100.0),
        None => (s, 1.0),
    };
    let v: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number or percentage"))?;
    if scale == 1.0 && v > 1.0 {
        // `5` almost certainly means 5%, not 500%: make the user say which.
        return Err(format!(
            "`{s}` is above 1: write a fraction (0.05) or a percentage (5%)"
        ));
    }
    let v = v / scale;
    if (0.0..=10.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("`{s}` is out of range (0 to 1000%)"))
    }
}

/// A store directory: verify, repair and upgrade work on the files themselves, which a store on
/// object storage only has in its mirror.
fn existing_local_store(s: &str) -> Result<PathBuf, String> {
    if deltann_remote::is_remote(s) {
        return Err(format!(
            "{s}: this command works on a store directory; `deltann store copy {s} DIR` makes one"
        ));
    }
    existing_store(s)
}

fn existing_store(s: &str) -> Result<PathBuf, String> {
    if deltann_remote::is_remote(s) {
        return mirror(s).map_err(|e| format!("{e:#}"));
    }
    let path = PathBuf::from(s);
    if path.join(deltann_store::layout::FORMAT_FILE).is_file() {
        Ok(path)
    } else if path.is_dir() {
        Err(format!(
            "{s} is not a deltann store (no {})",
            deltann_store::layout::FORMAT_FILE
        ))
    } else {
        Err(format!("{s} does not exist"))
    }
}

/// The name of this machine in cell ids and records, unless `--host` gives one.
fn default_host() -> String {
    deltann_collector::host::Host::current().name
}

/// A local folder for an object-storage location: `DELTANN_HOME/KIND/BUCKET/PREFIX` (characters
/// other than letters, digits, `.`, `_`, `-` and `/` replaced, no `..`).
fn local_dir_for(kind: &str, url: &str) -> PathBuf {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let mut dir = deltann_collector::sweep::deltann_home().join(kind);
    for part in rest
        .split('/')
        .filter(|p| !p.is_empty() && *p != "." && *p != "..")
    {
        let clean: String = part
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        dir.push(clean);
    }
    dir
}

/// Brings the local mirror of a store on object storage up to date (fetching only the commits
/// it lacks) and returns its folder: every reading command reads a remote store through it.
fn mirror(url: &str) -> anyhow::Result<PathBuf> {
    let remote = deltann_remote::Remote::open(url)?;
    remote.check()?;
    let dir = local_dir_for("mirrors", url);
    std::fs::create_dir_all(&dir)
        .map_err(|e| anyhow::anyhow!("cannot create the mirror {}: {e}", dir.display()))?;
    let writer = match deltann_store::StoreWriter::open(&dir) {
        Ok((writer, _)) => writer,
        // Another deltann is bringing it up to date (a TUI following the remote): read it as
        // it is.
        Err(deltann_store::Error::Locked { .. }) => {
            eprintln!(
                "deltann: {url}: its mirror {} is being updated by another deltann; reading it \
                 as it is",
                dir.display()
            );
            return Ok(dir);
        }
        Err(e) => return Err(e.into()),
    };
    let mut link = deltann_remote::sync::Link::open(&dir, remote.url(), &default_host())?;
    let started = std::time::Instant::now();
    let copied = deltann_remote::sync::pull(&remote, &writer, &mut link, &|_| true)?;
    if copied.parts > 0 {
        eprintln!(
            "deltann: {url}: {} new part(s), {:.1} MB, fetched into its local mirror {} in {:.1} s",
            copied.parts,
            copied.bytes as f64 / 1e6,
            dir.display(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(dir)
}

/// When `store` is the mirror of a store on object storage, keeps it up to date for as long as
/// the process lives: a thread fetches new commits every two seconds, so `tui` and
/// `analyze --follow` see a sweep that other machines are collecting as it lands. Failures are
/// retried quietly (a TUI owns the terminal).
fn follow_remote(store: &std::path::Path) {
    let Ok(bytes) = std::fs::read(store.join(deltann_remote::sync::LINK_FILE)) else {
        return;
    };
    let Ok(mut link) = serde_json::from_slice::<deltann_remote::sync::Link>(&bytes) else {
        return;
    };
    let store = store.to_path_buf();
    std::thread::spawn(move || {
        let Ok(remote) = deltann_remote::Remote::open(&link.url) else {
            return;
        };
        let Ok((writer, _)) = deltann_store::StoreWriter::open(&store) else {
            return;
        };
        loop {
            std::thread::sleep(std::time::Duration::from_secs(2));
            let _ = deltann_remote::sync::pull(&remote, &writer, &mut link, &|_| true);
        }
    });
}

const COLLECT_HELP: &str = "\
Each cell runs in its own worker process, so a crash, abort or hang fails that cell only (it is \
recorded with the reason) and the sweep goes on. Results are committed in parts; killing the \
collector loses at most the part being written, and running the same command again resumes.

Exit status: 0 when every cell is ok, 1 when the sweep finished but some cell failed, 2 on error.

Several machines: with --store s3://BUCKET/PREFIX (credentials and endpoint from the AWS_* \
variables) the cells run into a local spool and each commit is pushed as it lands; give each \
machine its --shard INDEX/COUNT of the same sweep file. Machines commit at once safely, and a \
killed collector resumes from its spool (or, without it, from the bucket, given the same \
--host). See docs/SCALE.md.

ONNX Runtime: cells with engine = \"ort\" load libonnxruntime at run time. List versions or paths \
in environments.ort_library, or set DELTANN_ORT_LIBRARY; `scripts/fetch-onnxruntime.sh VERSION` \
installs a version from PyPI's onnxruntime wheel under ~/.cache/deltann (or $DELTANN_HOME).

Python engines: cells with engine = \"torch\", \"openvino\" or \"tvm\" run in that engine's own \
environment, created once by `deltann engines install ENGINE` (pinned PyPI versions); a cell whose \
environment is missing fails with that command, and the rest of the sweep runs. CUDA cells on a \
machine without an NVIDIA GPU are recorded as skipped.";

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
    if args.skip_damaged {
        skip_damaged(&args.command)?;
    }
    match args.command {
        Command::Plan(a) => plan::run(&a),
        Command::Collect(a) => collect::run(&a),
        Command::Query(a) => query::run(&a),
        Command::Sql(a) => sql::run(&a),
        Command::Analyze(a) => analyze::run(&a),
        Command::Localize(a) => localize::run(&a),
        Command::Store(StoreCommand::Verify(a)) => store::verify(&a.store),
        Command::Store(StoreCommand::Repair(a)) => store::repair(&a.store),
        Command::Store(StoreCommand::Upgrade(a)) => store::upgrade(&a.store),
        Command::Store(StoreCommand::Copy(a)) => store::copy(&a.src, &a.dst),
        Command::Engines(EnginesCommand::List) => engines::list(),
        Command::Engines(EnginesCommand::Install { engines }) => engines::install(&engines),
        Command::Report(a) => report::report(&a),
        Command::Check(a) => report::check(&a),
        Command::Diff(a) => report::diff(&a),
        Command::Tui(a) => {
            if !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                anyhow::bail!("deltann tui needs a terminal (stdout is not one)");
            }
            follow_remote(&a.store);
            deltann_tui::run(&a.store)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Ballista(BallistaCommand::Scheduler) => ballista::scheduler(),
        Command::Ballista(BallistaCommand::Executor { scheduler, tasks }) => {
            ballista::executor(&scheduler, usize::from(tasks))
        }
        Command::Synth(a) => {
            let mut spec = if a.small {
                deltann_synth::Spec::small()
            } else {
                let mut s = deltann_synth::Spec::benchmark();
                s.images = a.images;
                s.families = a.families;
                s
            };
            spec.keep_logits = !a.top5_only;
            spec.ort_version = Box::leak(a.ort_version.clone().into_boxed_str());
            let started = std::time::Instant::now();
            deltann_synth::generate(&a.store, &spec)?;
            println!(
                "wrote {} output rows ({} cells) to {} in {:.1}s",
                spec.rows(),
                spec.families * spec.cells_per_family(),
                a.store.display(),
                started.elapsed().as_secs_f64()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Worker => {
            deltann_collector::worker::serve(std::io::stdin(), std::io::stdout())
                .map_err(|e| anyhow::anyhow!("worker: {e}"))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Makes every store snapshot of this process leave out damaged parts, and names those of the
/// command's stores on stderr; refused for commands that write a store.
fn skip_damaged(command: &Command) -> anyhow::Result<()> {
    let stores: Vec<&std::path::Path> = match command {
        Command::Query(a) => a.store.as_deref().into_iter().collect(),
        Command::Sql(a) => vec![&a.store],
        Command::Analyze(a) => vec![&a.store],
        Command::Report(a) => vec![&a.store],
        Command::Check(a) => vec![&a.store],
        Command::Tui(a) => vec![&a.store],
        Command::Diff(a) => vec![&a.store_a, &a.store_b],
        Command::Plan(_)
        | Command::Localize(_)
        | Command::Collect(_)
        | Command::Store(_)
        | Command::Synth(_)
        | Command::Engines(_) => {
            anyhow::bail!(
                "--skip-damaged is for commands that read a store; to write into a store with \
                 damaged parts, run `deltann store repair STORE` first"
            )
        }
        Command::Worker | Command::Ballista(_) => Vec::new(),
    };
    deltann_store::reader::skip_damaged(true);
    for store in stores {
        let (_, damaged) = deltann_store::Store::open_checked(store)?;
        for d in damaged {
            eprintln!(
                "deltann: warning: {}: skipping damaged part {} ({}): its {} rows are left out; \
                 `deltann store repair` drops it for good",
                store.display(),
                d.entry.path,
                d.problem,
                d.entry.rows
            );
        }
    }
    Ok(())
}

/// Before SQL that reads the derived tables (`comparisons`, `cell_images`, `pairs`), folds in
/// what was committed since they were last advanced. Other SQL runs at once, without touching
/// them.
fn refresh_derived(store: &std::path::Path, sql: &str) {
    let lower = sql.to_ascii_lowercase();
    let wanted = deltann_analyzer::derived::DerivedTable::ALL
        .iter()
        .any(|t| lower.contains(t.name()))
        || lower.contains(deltann_analyzer::provider::PairsTable::NAME);
    if !wanted {
        return;
    }
    let result = deltann_store::Store::open(store)
        .map_err(deltann_analyzer::Error::from)
        .and_then(|s| deltann_analyzer::derived::advance(&s, false, &mut |_| {}));
    if let Err(e) = result {
        eprintln!(
            "deltann: warning: the derived tables could not be brought up to date ({e}); \
             `comparisons`, `cell_images` and `pairs` show what they held"
        );
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
