//! `collect`: plan, prepare, run every cell that is not done yet, record everything.
//!
//! Resuming is not a mode: every run reads the store first and does only what is missing. A cell
//! whose `cells` row says `ok` and whose images all have results is skipped; a cell with some
//! committed results (a crash or Ctrl-C interrupted it) runs only its remaining images; a `failed`
//! cell is left alone unless `--retry-failed`, which runs its remaining images as a new attempt.
//! Every failure of a cell (load error, crash, timeout) is recorded in its row and the sweep goes
//! on; only configuration and storage errors stop it.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Int32Type, Int64Type};
use deltann_store::schema::{col, stage, status};
use deltann_store::{Recovery, Store, StoreWriter, Table};

use crate::dataset::Dataset;
use crate::error::{Error, Result};
use crate::host::Host;
use crate::plan::{Cell, Plan};
use crate::prepare::{self, PrepareProgress, Prepared};
use crate::protocol::{PROTOCOL_VERSION, Request};
use crate::python;
use crate::records::{self, CellRow, ModelRow, RunRow};
use crate::runner::{self, Event, Timeouts, WorkerCommand};
use crate::sink::{ImageFacts, OutputSink, SinkConfig};
use crate::stats::{self, LatencySummary};
use crate::sweep::{Device, LogitsMode, Sweep};

/// Runtime settings of a collection (the sweep file says what to run; these say how).
#[derive(Clone, Debug)]
pub struct CollectOptions {
    /// The store directory.
    pub store: PathBuf,
    /// How to start workers.
    pub worker: WorkerCommand,
    /// Cells computing at once. Above 1, latencies are no longer comparable (recorded per cell).
    pub parallel_cells: usize,
    /// Worker timeouts.
    pub timeouts: Timeouts,
    /// Run the remaining images of failed cells again, as a new attempt.
    pub retry_failed: bool,
    /// Part sizing (logits retention comes from the sweep).
    pub sink: SinkConfig,
    /// Keep the tensor cache after a complete run.
    pub keep_tensors: bool,
    /// The command line, for provenance.
    pub command_line: String,
    /// The machine's name in cell ids and records (default: its host name; see
    /// [`Plan::build`]).
    pub host: String,
    /// Run only this share of the sweep's cells.
    pub shard: Option<crate::plan::Shard>,
}

/// What is known about a cell from the store.
#[derive(Clone, Debug, Default)]
pub struct CellStatus {
    /// Latest attempt number (0: never finished an attempt).
    pub attempt: i32,
    /// Latest attempt's status (`ok` or `failed`), if any attempt finished.
    pub status: Option<String>,
    /// Latest attempt's error.
    pub error: Option<String>,
    /// Images with committed results or committed engine errors.
    pub done: HashSet<String>,
    /// Images with committed results (`--retry-failed` runs the others again).
    pub with_results: HashSet<String>,
}

impl CellStatus {
    /// A one-word state for listings: pending, partial, ok, failed.
    pub fn state(&self, planned: usize) -> &'static str {
        match self.status.as_deref() {
            Some(s) if s == status::FAILED => "failed",
            Some(s) if s == status::SKIPPED => "skipped",
            Some(_) if self.done.len() >= planned => "ok",
            _ if self.done.is_empty() => "pending",
            _ => "partial",
        }
    }
}

/// Reads every plan cell's status from the store.
///
/// # Errors
/// Fails when a committed part cannot be read.
pub fn status(store: &Store, plan: &Plan) -> Result<HashMap<String, CellStatus>> {
    let ids: HashSet<&str> = plan.cells.iter().map(|c| c.id.as_str()).collect();
    let mine = |table: Table| {
        store
            .parts(table)
            .filter(|p| p.cell_id.as_deref().is_some_and(|c| ids.contains(c)))
            .collect::<Vec<_>>()
    };
    let mut out: HashMap<String, CellStatus> = plan
        .cells
        .iter()
        .map(|c| (c.id.clone(), CellStatus::default()))
        .collect();

    let columns = [col::CELL_ID, col::ATTEMPT, col::STATUS, col::ERROR];
    for batch in store.scan(mine(Table::Cells), &columns, 8192) {
        let batch = batch?;
        let (Some(cell), Some(attempt), Some(st), Some(err)) = (
            batch
                .column_by_name(col::CELL_ID)
                .and_then(|c| c.as_string_opt::<i32>()),
            batch
                .column_by_name(col::ATTEMPT)
                .and_then(|c| c.as_primitive_opt::<Int32Type>()),
            batch
                .column_by_name(col::STATUS)
                .and_then(|c| c.as_string_opt::<i32>()),
            batch
                .column_by_name(col::ERROR)
                .and_then(|c| c.as_string_opt::<i32>()),
        ) else {
            continue;
        };
        for row in 0..batch.num_rows() {
            if let Some(s) = out.get_mut(cell.value(row))
                && attempt.value(row) >= s.attempt
            {
                s.attempt = attempt.value(row);
                s.status = Some(st.value(row).to_string());
                s.error = err.is_valid(row).then(|| err.value(row).to_string());
            }
        }
    }
    let columns = [col::CELL_ID, col::IMAGE_ID];
    for batch in store.scan(mine(Table::Outputs), &columns, 8192) {
        add_done(&batch?, &mut out, None);
    }
    let columns = [col::CELL_ID, col::IMAGE_ID, col::STAGE];
    for batch in store.scan(mine(Table::Errors), &columns, 8192) {
        add_done(&batch?, &mut out, Some(&[stage::INFERENCE, stage::OUTPUT]));
    }
    Ok(out)
}

fn add_done(
    batch: &arrow::record_batch::RecordBatch,
    out: &mut HashMap<String, CellStatus>,
    only_stages: Option<&[&str]>,
) {
    let (Some(cells), Some(images)) = (
        batch
            .column_by_name(col::CELL_ID)
            .and_then(|c| c.as_string_opt::<i32>()),
        batch
            .column_by_name(col::IMAGE_ID)
            .and_then(|c| c.as_string_opt::<i32>()),
    ) else {
        return;
    };
    let stages = batch
        .column_by_name(col::STAGE)
        .and_then(|c| c.as_string_opt::<i32>());
    for row in 0..batch.num_rows() {
        if let (Some(want), Some(stages)) = (only_stages, stages)
            && !want.contains(&stages.value(row))
        {
            continue;
        }
        if cells.is_valid(row)
            && let Some(s) = out.get_mut(cells.value(row))
        {
            s.done.insert(images.value(row).to_string());
            // Rows of `outputs` (no stage filter) are results; `errors` rows are not.
            if only_stages.is_none() {
                s.with_results.insert(images.value(row).to_string());
            }
        }
    }
}

/// Progress callbacks of a collection; every method has a silent default.
pub trait Observer: PrepareProgress + Sync {
    /// The plan is known: `todo` cells will run, the rest are done (or failed and not retried).
    fn planned(&self, _plan: &Plan, _todo: usize, _images: usize) {}
    /// A cell starts with `images` images to run.
    fn cell_started(&self, _cell: &Cell, _images: usize) {}
    /// `n` more images of a cell are done.
    fn cell_advanced(&self, _cell: &Cell, _n: usize) {}
    /// A cell ended.
    fn cell_finished(&self, _cell: &Cell, _outcome: &CellOutcome) {}
    /// Something worth telling the user (recovery, skipped work).
    fn note(&self, _text: &str) {}
}

/// An observer that says nothing.
#[derive(Debug, Default)]
pub struct Silent;
impl PrepareProgress for Silent {}
impl Observer for Silent {}

/// How one cell's attempt ended.
#[derive(Clone, Debug)]
pub struct CellOutcome {
    pub cell_id: String,
    pub attempt: i32,
    pub failure: Option<String>,
    /// Not run on this machine, for the reason in `failure`.
    pub skipped: bool,
    pub images_ok: usize,
    pub images_failed: usize,
    pub latency: Option<LatencySummary>,
    /// The worker's peak resident memory, MiB.
    pub worker_peak_rss_mb: Option<f64>,
}

/// What a collection did.
#[derive(Debug)]
pub struct CollectReport {
    pub run_id: String,
    pub plan: Plan,
    pub recovery: Recovery,
    /// Outcomes of the cells run now, in plan order.
    pub outcomes: Vec<CellOutcome>,
    /// Cells skipped because they were complete.
    pub skipped_done: usize,
    /// Failed cells skipped (no `--retry-failed`).
    pub skipped_failed: usize,
    /// Images that cannot be decoded.
    pub undecodable: usize,
    /// Peak resident memory of the collector process, KiB.
    pub peak_rss_kib: Option<u64>,
}

/// An engine's version for cell ids: built-in engines are asked through `worker`, Python ones
/// through their environment's worker. A Python engine whose environment is missing gets the
/// version [`python::NOT_INSTALLED`]: its cells are planned and fail with the command that
/// installs it, and the rest of the sweep runs.
///
/// # Errors
/// Fails when a built-in engine cannot tell its version (an ONNX Runtime library that does not
/// load).
pub fn probe_version(
    worker: &WorkerCommand,
    engine: crate::engine::EngineKind,
    lib: Option<&std::path::Path>,
) -> Result<String> {
    if engine.is_python() {
        return Ok(match python::worker_command(engine) {
            Ok(worker) => {
                runner::probe(&worker, engine, None).unwrap_or_else(|e| format!("unavailable: {e}"))
            }
            Err(_) => python::NOT_INSTALLED.to_string(),
        });
    }
    runner::probe(worker, engine, lib)
}

struct Todo<'a> {
    cell: &'a Cell,
    attempt: i32,
    remaining: HashSet<String>,
    planned: usize,
}

/// Runs a sweep into the store in `options`.
///
/// # Errors
/// Fails before any work for bad configuration (naming the file), and at any point when the
/// store cannot be written. Cell failures are not errors.
pub fn collect(
    sweep: &Sweep,
    options: &CollectOptions,
    observer: &dyn Observer,
) -> Result<CollectReport> {
    let dataset = Dataset::load(&sweep.dataset)?;
    let mut plan = Plan::build(sweep, &options.host, &|engine, lib| {
        probe_version(&options.worker, engine, lib)
    })?;
    if let Some(shard) = options.shard {
        plan = plan.shard(shard);
    }
    check_labels(sweep, &dataset, &plan)?;

    let (store, recovery) = StoreWriter::open(&options.store)?;
    if !recovery.is_clean() {
        observer.note(&format!(
            "recovered the store after an interruption: {} part(s) adopted, {} unfinished \
             temporary file(s) removed{}{}",
            recovery.adopted.len(),
            recovery.tmp_removed,
            if recovery.quarantined.is_empty() {
                String::new()
            } else {
                format!(
                    ", {} damaged file(s) moved to _quarantine/",
                    recovery.quarantined.len()
                )
            },
            if recovery.missing.is_empty() {
                String::new()
            } else {
                format!(", {} committed file(s) missing", recovery.missing.len())
            },
        ));
    }
    let snapshot = store.snapshot();
    let new_models = new_models(&snapshot, &plan)?;
    let statuses = status(&snapshot, &plan)?;

    let run_id = run_id();
    let host = Host {
        name: options.host.clone(),
        ..Host::current()
    };
    records::commit(
        &store,
        None,
        &run_id,
        &[RunRow {
            started_at_us: deltann_store::now_micros(),
            command: options.command_line.clone(),
            sweep_path: sweep.path.display().to_string(),
            sweep_toml: sweep.text.clone(),
            parallel_cells: options.parallel_cells,
            host: host.clone(),
        }],
    )?;
    records::commit(&store, None, &run_id, &new_models)?;

    // Decide from the store what remains; images it knows to be undecodable are nobody's work.
    let undecodable_known = undecodable_images(&snapshot)?;
    let (mut skipped_done, mut skipped_failed) = (0, 0);
    let mut todo = Vec::new();
    for cell in &plan.cells {
        let st = &statuses[&cell.id];
        // With --retry-failed, images whose only record is an engine error run again too.
        let done = if options.retry_failed {
            &st.with_results
        } else {
            &st.done
        };
        let remaining: HashSet<String> = dataset
            .images
            .iter()
            .map(|i| &i.id)
            .filter(|id| !done.contains(*id) && !undecodable_known.contains(*id))
            .cloned()
            .collect();
        let failed = st.status.as_deref() == Some(status::FAILED);
        if remaining.is_empty() && st.status.is_some() {
            skipped_done += 1;
        } else if failed && !options.retry_failed {
            skipped_failed += 1;
        } else {
            todo.push(Todo {
                cell,
                attempt: st.attempt + 1,
                remaining,
                planned: 0,
            });
        }
    }

    // Hash, decode and preprocess only for the cells that will run.
    let mut recipes: Vec<_> = Vec::new();
    for t in &todo {
        if !recipes
            .iter()
            .any(|r: &crate::preprocess::Preprocess| r.key() == t.cell.preprocess.key())
        {
            recipes.push(t.cell.preprocess.clone());
        }
    }
    let prepared = if todo.is_empty() {
        None
    } else {
        Some(prepare::prepare(
            &store, &dataset, &recipes, &run_id, observer,
        )?)
    };
    let mut facts: HashMap<String, ImageFacts> = HashMap::new();
    if let Some(prepared) = &prepared {
        facts = prepared
            .images
            .iter()
            .map(|i| {
                (
                    i.id.clone(),
                    ImageFacts {
                        sha256: i.sha256.clone(),
                        label: i.label,
                    },
                )
            })
            .collect();
        for t in &mut todo {
            if let Some(cache) = prepared.caches.get(&t.cell.preprocess.key()) {
                t.remaining.retain(|id| cache.ids.contains(id));
                t.planned = cache.ids.len();
            }
        }
    }
    let images_todo: usize = todo
        .iter()
        .map(|t| t.remaining.len() * t.cell.repetitions as usize)
        .sum();
    observer.planned(&plan, todo.len(), images_todo);
    if skipped_failed > 0 {
        observer.note(&format!(
            "{skipped_failed} failed cell(s) not retried (use --retry-failed to run them again)"
        ));
    }

    let mut outcomes = Vec::new();
    if let Some(prepared) = &prepared {
        let ctx = CellContext {
            store: &store,
            sweep,
            options,
            run_id: &run_id,
            prepared,
            facts: &facts,
            host: &host,
            observer,
        };
        outcomes = run_cells(&ctx, &todo)?;
    }
    // The run is complete: its caches, and those earlier runs kept (other recipes, datasets),
    // go unless asked to stay. An interrupted run never gets here and keeps them for its resume.
    if !options.keep_tensors {
        let tensors = store
            .root()
            .join(deltann_store::layout::CACHE_DIR)
            .join(crate::prepare::TENSOR_CACHE_DIR);
        let _ = std::fs::remove_dir_all(&tensors);
    }
    let undecodable = match &prepared {
        Some(p) => p.undecodable,
        None => dataset
            .images
            .iter()
            .filter(|i| undecodable_known.contains(&i.id))
            .count(),
    };
    Ok(CollectReport {
        run_id,
        plan: plan.clone(),
        recovery,
        outcomes,
        skipped_done,
        skipped_failed,
        undecodable,
        peak_rss_kib: crate::host::peak_rss_kib(),
    })
}

struct CellContext<'a> {
    store: &'a StoreWriter,
    sweep: &'a Sweep,
    options: &'a CollectOptions,
    run_id: &'a str,
    prepared: &'a Prepared,
    facts: &'a HashMap<String, ImageFacts>,
    host: &'a Host,
    observer: &'a dyn Observer,
}

/// Runs the cells, `parallel_cells` at a time, stopping at the first storage error.
fn run_cells(ctx: &CellContext<'_>, todo: &[Todo<'_>]) -> Result<Vec<CellOutcome>> {
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let threads = ctx.options.parallel_cells.clamp(1, todo.len().max(1));
    let results: Vec<Result<Vec<(usize, CellOutcome)>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = Vec::new();
                    while !stop.load(Ordering::SeqCst) {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        let Some(item) = todo.get(i) else { break };
                        match run_cell(ctx, item) {
                            Ok(outcome) => mine.push((i, outcome)),
                            Err(e) => {
                                stop.store(true, Ordering::SeqCst);
                                return Err(e);
                            }
                        }
                    }
                    Ok(mine)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Worker("a cell thread panicked".into())))
            })
            .collect()
    });
    let mut outcomes = Vec::new();
    for r in results {
        outcomes.extend(r?);
    }
    outcomes.sort_by_key(|(i, _)| *i);
    Ok(outcomes.into_iter().map(|(_, o)| o).collect())
}

fn run_cell(ctx: &CellContext<'_>, todo: &Todo<'_>) -> Result<CellOutcome> {
    let cell = todo.cell;
    if cell.device == Device::Cuda && !crate::host::cuda_available() {
        return skip_cell(
            ctx,
            todo,
            "skipped: no CUDA device on this machine (no GPU under /proc/driver/nvidia/gpus)",
        );
    }
    let cache = ctx
        .prepared
        .caches
        .get(&cell.preprocess.key())
        .ok_or_else(|| Error::Worker(format!("no tensors prepared for cell {}", cell.id)))?;
    ctx.observer.cell_started(cell, todo.remaining.len());
    let started_at_us = deltann_store::now_micros();
    let clock = Instant::now();
    let inputs = prepare::stream(cache, todo.remaining.clone(), cell.batch_size as usize)?;
    let request = Request {
        protocol: PROTOCOL_VERSION,
        cell_id: cell.id.clone(),
        engine: cell.engine_config(),
        warmup: ctx.sweep.warmup,
        repetitions: cell.repetitions,
        probe: false,
    };
    let sink_config = SinkConfig {
        keep_logits: ctx.sweep.logits == LogitsMode::Full,
        ..ctx.options.sink
    };
    let mut sink = OutputSink::new(ctx.store, cell, ctx.run_id, ctx.facts, sink_config)?;
    let mut load_ms = None;
    let mut mismatch = None;
    // A worker that breaks the protocol (a result for an image it was not sent, a malformed
    // batch) fails its cell; the sweep goes on. Store errors still stop the sweep.
    let mut protocol_error = None;
    let worker = if cell.engine.is_python() {
        python::worker_command(cell.engine)
    } else {
        Ok(ctx.options.worker.clone())
    };
    let run = worker.and_then(|worker| {
        runner::run(
        &worker,
        &request,
        inputs,
        ctx.options.timeouts,
        &mut |event| {
            match event {
                Event::Ready(ready) => {
                    load_ms = ready.ok.then_some(ready.load_ms);
                    if ready.ok && ready.engine_version != cell.engine_version {
                        mismatch = Some(format!(
                            "engine version changed under the sweep: planned {}, worker loaded {}",
                            cell.engine_version, ready.engine_version
                        ));
                    }
                }
                Event::Results(batch) => match sink.push(batch) {
                    Ok(n) => ctx.observer.cell_advanced(cell, n),
                    Err(Error::Worker(e)) => {
                        protocol_error = Some(format!("worker protocol error: {e}"));
                        return Err(Error::Worker(e));
                    }
                    Err(e) => return Err(e),
                },
            }
            Ok(())
        },
    )
    });
    let run = match run {
        Ok(run) => run,
        Err(_) if protocol_error.is_some() => runner::WorkerRun::default(),
        // The engine's environment is missing or cannot be used: the cell fails saying so.
        Err(Error::Engine(why)) => runner::WorkerRun {
            failure: Some(why),
            ..runner::WorkerRun::default()
        },
        Err(e) => return Err(e),
    };
    let written = sink.finish()?;

    // The summary covers everything committed for the cell, earlier attempts included.
    let (latencies, images_ok) = committed_latencies(ctx.store, &cell.id)?;
    let images_failed = committed_failures(ctx.store, &cell.id)?
        .difference(&images_ok)
        .count();
    let latency = stats::summarize(&latencies);
    let failure = mismatch.or(protocol_error).or(run.failure).or_else(|| {
        // A cell whose every image failed did not run, whatever the worker's exit.
        (images_ok.is_empty() && images_failed > 0).then(|| {
            format!(
                "every image failed ({images_failed}); first error: {}",
                written.first_error.as_deref().unwrap_or("?")
            )
        })
    });
    let worker_peak_rss_mb = run
        .done
        .as_ref()
        .and_then(|d| d.peak_rss_kib)
        .map(|k| k as f64 / 1024.0);
    record_cell(
        ctx,
        todo,
        CellEnd {
            failure,
            skipped: false,
            images_ok: images_ok.len(),
            images_failed,
            load_ms,
            latency,
            wall_s: clock.elapsed().as_secs_f64(),
            worker_peak_rss_mb,
            started_at_us,
        },
    )
}

/// Records a cell as not run on this machine (status `skipped`, the reason as its error): it
/// is planned and reported, not failed, and a later `collect` where it can run runs it.
fn skip_cell(ctx: &CellContext<'_>, todo: &Todo<'_>, why: &str) -> Result<CellOutcome> {
    ctx.observer.cell_started(todo.cell, todo.remaining.len());
    record_cell(
        ctx,
        todo,
        CellEnd {
            failure: Some(why.to_string()),
            skipped: true,
            images_ok: 0,
            images_failed: 0,
            load_ms: None,
            latency: None,
            wall_s: 0.0,
            worker_peak_rss_mb: None,
            started_at_us: deltann_store::now_micros(),
        },
    )
}

/// How an attempt at a cell ended, as its `cells` row and its outcome say.
struct CellEnd {
    failure: Option<String>,
    skipped: bool,
    images_ok: usize,
    images_failed: usize,
    load_ms: Option<f64>,
    latency: Option<LatencySummary>,
    wall_s: f64,
    worker_peak_rss_mb: Option<f64>,
    started_at_us: i64,
}

/// Commits the cell's `cells` row for this attempt and reports its outcome to the observer.
fn record_cell(ctx: &CellContext<'_>, todo: &Todo<'_>, end: CellEnd) -> Result<CellOutcome> {
    let cell = todo.cell;
    let row = CellRow {
        cell: cell.clone(),
        attempt: todo.attempt,
        warmup: ctx.sweep.warmup,
        failure: end.failure.clone(),
        skipped: end.skipped,
        images_planned: todo.planned,
        images_ok: end.images_ok,
        images_failed: end.images_failed,
        load_ms: end.load_ms,
        latency: end.latency,
        wall_s: end.wall_s,
        worker_peak_rss_mb: end.worker_peak_rss_mb,
        started_at_us: end.started_at_us,
        finished_at_us: deltann_store::now_micros(),
        parallel_cells: ctx.options.parallel_cells,
        host: ctx.host.clone(),
    };
    records::commit(ctx.store, Some(&cell.id), ctx.run_id, &[row])?;
    let outcome = CellOutcome {
        cell_id: cell.id.clone(),
        attempt: todo.attempt,
        failure: end.failure,
        skipped: end.skipped,
        images_ok: end.images_ok,
        images_failed: end.images_failed,
        latency: end.latency,
        worker_peak_rss_mb: end.worker_peak_rss_mb,
    };
    ctx.observer.cell_finished(cell, &outcome);
    Ok(outcome)
}

/// Ids of images the store records as undecodable.
fn undecodable_images(store: &Store) -> Result<HashSet<String>> {
    let mut out = HashSet::new();
    for batch in store.scan_table(Table::Images, &[col::IMAGE_ID, col::STATUS]) {
        let batch = batch?;
        if let (Some(ids), Some(st)) = (
            batch
                .column_by_name(col::IMAGE_ID)
                .and_then(|c| c.as_string_opt::<i32>()),
            batch
                .column_by_name(col::STATUS)
                .and_then(|c| c.as_string_opt::<i32>()),
        ) {
            for (id, s) in ids.iter().zip(st.iter()) {
                if let (Some(id), Some(s)) = (id, s)
                    && s != status::OK
                {
                    out.insert(id.to_string());
                }
            }
        }
    }
    Ok(out)
}

fn committed_latencies(store: &StoreWriter, cell_id: &str) -> Result<(Vec<i64>, HashSet<String>)> {
    let snapshot = store.snapshot();
    let parts = snapshot
        .parts(Table::Outputs)
        .filter(|p| p.cell_id.as_deref() == Some(cell_id));
    let mut latencies = Vec::new();
    let mut images = HashSet::new();
    for batch in snapshot.scan(parts, &[col::IMAGE_ID, col::LATENCY_NS], 8192) {
        let batch = batch?;
        if let (Some(ids), Some(lat)) = (
            batch
                .column_by_name(col::IMAGE_ID)
                .and_then(|c| c.as_string_opt::<i32>()),
            batch
                .column_by_name(col::LATENCY_NS)
                .and_then(|c| c.as_primitive_opt::<Int64Type>()),
        ) {
            latencies.extend(lat.values().iter().copied());
            images.extend(ids.iter().flatten().map(str::to_string));
        }
    }
    Ok((latencies, images))
}

fn committed_failures(store: &StoreWriter, cell_id: &str) -> Result<HashSet<String>> {
    let snapshot = store.snapshot();
    let parts = snapshot
        .parts(Table::Errors)
        .filter(|p| p.cell_id.as_deref() == Some(cell_id));
    let mut images = HashSet::new();
    for batch in snapshot.scan(parts, &[col::IMAGE_ID], 8192) {
        if let Some(ids) = batch?
            .column_by_name(col::IMAGE_ID)
            .and_then(|c| c.as_string_opt::<i32>())
        {
            images.extend(ids.iter().flatten().map(str::to_string));
        }
    }
    Ok(images)
}

/// Models to record: those the store does not know yet. A name the store knows with another
/// file is an error, since results under one name must come from one file.
fn new_models(store: &Store, plan: &Plan) -> Result<Vec<ModelRow>> {
    let mut known: HashMap<String, String> = HashMap::new();
    for batch in store.scan_table(Table::Models, &[col::MODEL, col::SHA256]) {
        let batch = batch?;
        if let (Some(names), Some(shas)) = (
            batch
                .column_by_name(col::MODEL)
                .and_then(|c| c.as_string_opt::<i32>()),
            batch
                .column_by_name(col::SHA256)
                .and_then(|c| c.as_string_opt::<i32>()),
        ) {
            for (n, s) in names.iter().zip(shas.iter()) {
                if let (Some(n), Some(s)) = (n, s) {
                    known.insert(n.to_string(), s.to_string());
                }
            }
        }
    }
    let mut rows = Vec::new();
    for model in &plan.models {
        match known.get(&model.spec.name) {
            Some(sha) if *sha == model.info.sha256 => {}
            Some(sha) => {
                return Err(Error::input(
                    &model.spec.path,
                    format!(
                        "the store already has a model named `{}` from another file \
                         (sha256 {}…); give this one another name or use another store",
                        model.spec.name,
                        &sha[..12.min(sha.len())]
                    ),
                ));
            }
            None => rows.push(ModelRow(model.clone())),
        }
    }
    Ok(rows)
}

fn check_labels(sweep: &Sweep, dataset: &Dataset, plan: &Plan) -> Result<()> {
    let Some(labels_path) = &sweep.dataset.labels else {
        return Ok(());
    };
    for model in &plan.models {
        let Some(n) = model.num_classes() else {
            continue;
        };
        if let Some(img) = dataset
            .images
            .iter()
            .find(|i| i.label.is_some_and(|l| l as usize >= n))
        {
            return Err(Error::input(
                labels_path,
                format!(
                    "`{}` has class {} but model {} has {n} classes (0..{})",
                    img.id,
                    img.label.unwrap_or_default(),
                    model.spec.name,
                    n - 1
                ),
            ));
        }
    }
    Ok(())
}

/// A sortable, readable run id: `20261126T142233Z-<pid>` (also the prefix of `deltann
/// localize`'s ids).
pub fn run_id() -> String {
    let secs = deltann_store::now_micros() / 1_000_000;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z-{}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        std::process::id()
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_418), (2025, 11, 26));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
