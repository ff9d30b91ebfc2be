//! `deltann localize`: which optimizer pass causes a pair's disagreement, and at which node the
//! two cells part ways. The cells are planned again from the sweeps their store recorded, so they
//! run with the sweep's model, library, settings and preprocessing (one image at a time; each
//! re-run is checked against the stored logits); the algorithms are in
//! `deltann_collector::localize`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use arrow::array::{Array, AsArray};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use deltann_analyzer::context::Session;
use deltann_collector::engine::{EngineKind, OrtOptimization};
use deltann_collector::localize::{self, Images, NodeError};
use deltann_collector::plan::{Cell, Plan};
use deltann_collector::preprocess;
use deltann_collector::records::{self, LocalizationRow, NodeErrorRow};
use deltann_collector::runner::{Timeouts, WorkerCommand};
use deltann_collector::sweep::Sweep;
use deltann_store::StoreWriter;
use deltann_store::schema::kind;

use super::LocalizeArgs;

pub fn run(args: &LocalizeArgs) -> anyhow::Result<ExitCode> {
    let worker = WorkerCommand::current_exe().context("cannot locate the deltann executable")?;
    let (sweeps, store) = sweeps_and_store(args)?;
    let (sweep, a, b) = find_pair(&sweeps, &args.pair, &worker)?;
    let ids = if args.images.is_empty() {
        let Some(store) = &store else {
            bail!("no store to choose images from: give --image ID (or --store DIR)");
        };
        default_images(store, &a, &b, args.limit)?
    } else {
        args.images.clone()
    };
    let workers = Workers {
        command: worker,
        timeouts: Timeouts {
            stall: Duration::from_secs(args.stall_timeout),
            cell: None,
        },
        store: store.clone(),
    };
    println!("reference A: {} {}", a.id, a.label());
    println!("other     B: {} {}", b.id, b.label());
    if a.batch_size > 1 || b.batch_size > 1 {
        eprintln!(
            "deltann: note: localize runs one image at a time; the sweep ran batches of {} and \
             {}, whose kernels can round differently",
            a.batch_size, b.batch_size
        );
    }
    // Hold the store's lock from here: results are not computed only to find it taken.
    let writer = match &store {
        Some(store) => Some(
            StoreWriter::open(store)
                .with_context(|| {
                    format!(
                        "cannot store results in {} (is a collector writing to it?)",
                        store.display()
                    )
                })?
                .0,
        ),
        None => None,
    };
    let passes = !args.layers;
    let layers = !args.passes;
    let mut found = Found {
        prefix: deltann_collector::collect::run_id(),
        ..Found::default()
    };
    if passes {
        match optimization_pair(&a, &b) {
            Ok((reference, optimised)) => {
                let images = load_images(&sweep, optimised, &ids)?;
                bisect(args, &workers, reference, optimised, &images, &mut found)?;
                // Kept even if the layer localisation then fails.
                save(writer.as_ref(), &mut found)?;
            }
            Err(why) if args.passes => bail!("no pass bisection: {why}"),
            Err(why) => println!("\npasses: skipped ({why})"),
        }
    }
    if layers {
        let supported = |c: &Cell| matches!(c.engine, EngineKind::Ort | EngineKind::Tract);
        if !supported(&a) || !supported(&b) {
            bail!(
                "layer localisation runs ONNX Runtime and tract cells (A is {}, B is {}); the \
                 Python engines do not expose intermediate tensors yet",
                a.engine,
                b.engine
            );
        }
        let take = ids
            .len()
            .min(usize::try_from(args.layer_images).unwrap_or(usize::MAX));
        layer(args, &workers, &sweep, &a, &b, &ids[..take], &mut found)?;
    }
    save(writer.as_ref(), &mut found)?;
    match (&store, found.saved) {
        (Some(store), 0) => println!("\nnothing stored in {}", store.display()),
        (Some(store), n) => println!(
            "\nstored in {}: {n} row{} in `localizations`, curves in `node_errors` (ids {}-*)",
            store.display(),
            if n == 1 { "" } else { "s" },
            found.prefix
        ),
        (None, _) => println!("\nnot stored: no store (give --store DIR to keep the results)"),
    }
    Ok(ExitCode::SUCCESS)
}

/// How the cells run (worker processes, as in a sweep), and the store they ran into, whose
/// logits the re-runs are checked against.
struct Workers {
    command: WorkerCommand,
    timeouts: Timeouts,
    store: Option<PathBuf>,
}

/// What one invocation found, as rows of the store's `localizations` and `node_errors`.
#[derive(Default)]
struct Found {
    prefix: String,
    localizations: Vec<LocalizationRow>,
    node_errors: Vec<NodeErrorRow>,
    /// `localizations` rows already committed.
    saved: usize,
}

impl Found {
    /// A row with the next id and the fields every kind shares.
    fn row(&self, kind: &'static str, a: &Cell, b: &Cell, started: Instant) -> LocalizationRow {
        LocalizationRow {
            localization_id: format!(
                "{}-{}",
                self.prefix,
                self.saved + self.localizations.len() + 1
            ),
            at_us: deltann_store::now_micros(),
            kind,
            cell_a: a.id.clone(),
            cell_b: b.id.clone(),
            seconds: started.elapsed().as_secs_f64(),
            ..LocalizationRow::default()
        }
    }
}

/// Commits the rows found since the last call (both tables in one group) and forgets them; rows
/// are numbered on across calls.
fn save(writer: Option<&StoreWriter>, found: &mut Found) -> anyhow::Result<()> {
    let Some(writer) = writer else {
        return Ok(());
    };
    let parts = [
        records::part(writer, None, &found.prefix, &found.localizations)?,
        records::part(writer, None, &found.prefix, &found.node_errors)?,
    ];
    writer.commit_group(parts.into_iter().flatten().collect())?;
    found.saved += found.localizations.len();
    found.localizations.clear();
    found.node_errors.clear();
    Ok(())
}

/// A sweep as a run recorded it, with the host it ran on (part of its cells' ids).
type Recorded = (Sweep, String);

/// The sweeps that may have planned the pair (a store's recorded runs, latest first; or the one
/// sweep file given), and the store to pick images from.
fn sweeps_and_store(args: &LocalizeArgs) -> anyhow::Result<(Vec<Recorded>, Option<PathBuf>)> {
    if args.target.is_dir() {
        let store = args.target.clone();
        let session = Session::open(&store, false)?;
        let outputs = session.run_blocking(
            "SELECT sweep_path, sweep_toml, host_name FROM runs ORDER BY started_at DESC",
        )?;
        let mut sweeps = Vec::new();
        for batch in outputs.iter().flat_map(|o| &o.batches) {
            let paths = batch.column(0).as_string_opt::<i32>();
            let texts = batch.column(1).as_string_opt::<i32>();
            let hosts = batch.column(2).as_string_opt::<i32>();
            let (Some(paths), Some(texts), Some(hosts)) = (paths, texts, hosts) else {
                continue;
            };
            for row in 0..batch.num_rows() {
                let path = Path::new(paths.value(row));
                match Sweep::parse(path, texts.value(row)) {
                    // Planned for the machine that ran it: the host is part of the cell ids.
                    Ok(sweep) => sweeps.push((sweep, hosts.value(row).to_string())),
                    Err(e) => eprintln!(
                        "deltann: warning: the sweep recorded from {} no longer parses: {e}",
                        path.display()
                    ),
                }
            }
        }
        if sweeps.is_empty() {
            bail!(
                "{}: the store records no run to plan cells from",
                store.display()
            );
        }
        Ok((sweeps, Some(store)))
    } else {
        let (sweep, store) = super::load_sweep(&args.target, args.store.as_deref())?;
        let store = store
            .join(deltann_store::layout::FORMAT_FILE)
            .is_file()
            .then_some(store);
        Ok((vec![(sweep, super::default_host())], store))
    }
}

/// The first sweep whose plan holds both cells, with them.
fn find_pair(
    sweeps: &[Recorded],
    pair: &[String],
    worker: &WorkerCommand,
) -> anyhow::Result<(Sweep, Cell, Cell)> {
    let [a, b] = pair else {
        bail!("--pair takes two cell ids");
    };
    let mut last = None;
    for (sweep, host) in sweeps {
        // A recorded sweep whose files moved or whose engines are gone cannot plan: the next
        // (older) one may.
        let plan = match Plan::build(sweep, host, &|engine, lib| {
            deltann_collector::collect::probe_version(worker, engine, lib)
        }) {
            Ok(plan) => plan,
            Err(e) => {
                last = Some(anyhow::Error::from(e).context("cannot plan a recorded sweep"));
                continue;
            }
        };
        match (cell(&plan, a), cell(&plan, b)) {
            (Ok(x), Ok(y)) => return Ok((sweep.clone(), x, y)),
            (Err(e), _) | (_, Err(e)) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no sweep to plan the cells from")))
}

/// The cell whose id is `id` or starts with it (when only one does).
fn cell(plan: &Plan, id: &str) -> anyhow::Result<Cell> {
    if let Some(c) = plan.cells.iter().find(|c| c.id == id) {
        return Ok(c.clone());
    }
    let matching: Vec<&Cell> = plan.cells.iter().filter(|c| c.id.starts_with(id)).collect();
    match matching.as_slice() {
        [one] => Ok((*one).clone()),
        [] => bail!("no cell `{id}` in the sweep (see `deltann plan`)"),
        many => bail!(
            "`{id}` names {} cells ({}...): give more of the id",
            many.len(),
            many.iter()
                .take(3)
                .map(|c| c.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The pair's images where their top-1 differs, largest logit difference first; else those with
/// the largest logit difference.
fn default_images(store: &Path, a: &Cell, b: &Cell, limit: u64) -> anyhow::Result<Vec<String>> {
    let quote = |s: &str| s.replace('\'', "''");
    let sql = format!(
        "SELECT image_id FROM comparisons \
         WHERE (cell_a = '{a}' AND cell_b = '{b}') OR (cell_a = '{b}' AND cell_b = '{a}') \
         ORDER BY flip DESC, max_abs_logit DESC NULLS LAST, image_id LIMIT {limit}",
        a = quote(&a.id),
        b = quote(&b.id),
    );
    super::refresh_derived(store, &sql);
    let session = Session::open(store, false)?;
    let mut ids = Vec::new();
    for output in session.run_blocking(&sql)? {
        for batch in &output.batches {
            let column = batch.column(0);
            let column = arrow::compute::cast(column, &arrow::datatypes::DataType::Utf8)?;
            let strings = column.as_string::<i32>();
            ids.extend((0..strings.len()).map(|i| strings.value(i).to_string()));
        }
    }
    if ids.is_empty() {
        bail!(
            "{}: no comparisons of {} and {} (both must have run on the same images): give \
             --image ID",
            store.display(),
            a.id,
            b.id
        );
    }
    Ok(ids)
}

/// The images, read from the sweep's dataset and preprocessed as `cell` does.
fn load_images(sweep: &Sweep, cell: &Cell, ids: &[String]) -> anyhow::Result<Images> {
    let len = cell.preprocess.tensor_len();
    let mut tensors = Vec::with_capacity(ids.len());
    for id in ids {
        let path = sweep.dataset.images.join(id);
        let bytes = std::fs::read(&path)
            .with_context(|| format!("cannot read image {}", path.display()))?;
        let (image, _) =
            preprocess::decode(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let mut tensor = Vec::with_capacity(len);
        preprocess::preprocess(&image, &cell.preprocess, &mut tensor)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        tensors.push(tensor);
    }
    Ok(Images {
        ids: ids.to_vec(),
        tensors,
        len,
    })
}

fn level(c: &Cell) -> OrtOptimization {
    c.ort_optimization.unwrap_or(OrtOptimization::All)
}

/// (reference, optimised) when the cells are ONNX Runtime runs of one model that differ in
/// optimization level only (the optimizers they disable aside); else why a bisection over
/// optimizer names cannot explain their difference.
fn optimization_pair<'c>(a: &'c Cell, b: &'c Cell) -> Result<(&'c Cell, &'c Cell), String> {
    if a.engine != EngineKind::Ort || b.engine != EngineKind::Ort {
        return Err("A and B are not both ONNX Runtime cells".into());
    }
    if a.model.info.sha256 != b.model.info.sha256 {
        return Err("A and B run different model files".into());
    }
    if level(a) == level(b) {
        return Err("A and B run at the same optimization level".into());
    }
    let settings = |c: &Cell| {
        let mut s = c.settings.clone();
        s.remove("ort_disabled_optimizers");
        s
    };
    let library = |c: &Cell| c.ort_library.as_ref().map(|l| l.path.clone());
    let others: Vec<&str> = [
        (library(a) != library(b), "ONNX Runtime library"),
        (a.threads != b.threads, "threads"),
        (a.batch_size != b.batch_size, "batch size"),
        (a.preprocess.key() != b.preprocess.key(), "preprocessing"),
        (settings(a) != settings(b), "session settings"),
    ]
    .into_iter()
    .filter_map(|(differs, what)| differs.then_some(what))
    .collect();
    if !others.is_empty() {
        return Err(format!(
            "A and B also differ in {}, which disabling optimizers cannot undo",
            others.join(", ")
        ));
    }
    Ok(if level(a) < level(b) { (a, b) } else { (b, a) })
}

fn bisect(
    args: &LocalizeArgs,
    workers: &Workers,
    reference: &Cell,
    optimised: &Cell,
    images: &Images,
    out: &mut Found,
) -> anyhow::Result<()> {
    println!(
        "\npasses: which of ONNX Runtime's optimizers make {} (opt={}) answer differently from \
         {} (opt={}) on {} images",
        optimised.id,
        level(optimised).name(),
        reference.id,
        level(reference).name(),
        images.ids.len()
    );
    let started = Instant::now();
    let expected = localize::logits(
        &workers.command,
        &reference.engine_config(),
        images,
        workers.timeouts,
    )
    .context("running the reference cell")?;
    reproduces(workers, reference, &images.ids, &expected);
    let candidates: Vec<String> = if args.candidates.is_empty() {
        localize::ORT_OPTIMIZERS
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else {
        let names: Vec<String> = args
            .candidates
            .iter()
            .map(|c| c.trim().to_string())
            .filter(|c| !c.is_empty())
            .collect();
        // ONNX Runtime ignores names it does not know: a misspelt one would look like a pass
        // that changes nothing.
        for name in names
            .iter()
            .filter(|n| !localize::ORT_OPTIMIZERS.contains(&n.as_str()))
        {
            eprintln!(
                "deltann: warning: `{name}` is not among the optimizer names deltann knows; \
                 ONNX Runtime ignores names it does not know"
            );
        }
        names
    };
    let base = optimised.engine_config();
    let already = base
        .settings
        .get("ort_disabled_optimizers")
        .cloned()
        .unwrap_or_default();
    let mut number = 0usize;
    let mut trial = |set: &[String]| -> deltann_collector::Result<localize::Trial> {
        let mut config = base.clone();
        let mut names: Vec<&str> = already.split('+').filter(|s| !s.is_empty()).collect();
        names.extend(set.iter().map(String::as_str));
        if !names.is_empty() {
            config
                .settings
                .insert("ort_disabled_optimizers".into(), names.join("+"));
        }
        number += 1;
        // A set of disabled passes that leaves a graph ONNX Runtime cannot run does not remove
        // the divergence: the trial counts as disagreeing, and the search goes on.
        let (agrees, max_abs, flips, outcome) =
            match localize::logits(&workers.command, &config, images, workers.timeouts) {
                Ok(logits) => {
                    if set.is_empty() {
                        reproduces(workers, optimised, &images.ids, &logits);
                    }
                    let (agrees, max_abs, flips) =
                        localize::agreement(&expected, &logits, args.tolerance);
                    let outcome = if agrees { "agrees" } else { "differs" };
                    (
                        agrees,
                        max_abs,
                        flips,
                        format!("{outcome} (max |dlogit| {max_abs:.3e}, {flips} flips)"),
                    )
                }
                // The cell as the sweep ran it must run: that is no trial.
                Err(e) if set.is_empty() => return Err(e),
                Err(e) => (false, f64::NAN, 0, format!("failed: {e}")),
            };
        eprintln!(
            "  trial {number:>3}, {:>2} disabled: {:<60} {outcome}",
            set.len(),
            abbreviate(set),
        );
        Ok(localize::Trial {
            disabled: set.to_vec(),
            agrees,
            max_abs,
            flips,
        })
    };
    let found = localize::bisect(&candidates, &mut trial).context("pass bisection")?;
    let first = &found.trials[0];
    println!(
        "  run again with nothing disabled: max |dlogit| {:.3e}, {} of {} top-1 answers differ",
        first.max_abs,
        first.flips,
        images.ids.len()
    );
    let row = LocalizationRow {
        image_id: None,
        images: images.ids.len(),
        tolerance: args.tolerance,
        culprits: found.explained.then(|| found.culprits.join("+")),
        explained: Some(found.explained),
        trials: Some(found.trials.len()),
        flips_before: Some(first.flips),
        max_abs_before: Some(first.max_abs),
        ..out.row(kind::PASSES, reference, optimised, started)
    };
    out.localizations.push(row);
    if found.explained {
        println!(
            "  culprit{}: {}  (disabling {} removes the divergence on these images; {} trials, \
             {:.1}s)",
            if found.culprits.len() == 1 { "" } else { "s" },
            found.culprits.join(", "),
            if found.culprits.len() == 1 {
                "it"
            } else {
                "them"
            },
            found.trials.len(),
            started.elapsed().as_secs_f64()
        );
    } else {
        let all = &found.trials[1];
        println!(
            "  not a pass: with all {} candidates disabled the answers still differ (max \
             |dlogit| {:.3e}, {} flips); the difference lies in what the levels share or in \
             names not searched ({:.1}s)",
            candidates.len(),
            all.max_abs,
            all.flips,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// Says whether re-running `cell` gave the logits its sweep stored for `ids` (first repetition),
/// bit for bit: when not, what is localised is not quite what the sweep saw.
fn reproduces(workers: &Workers, cell: &Cell, ids: &[String], logits: &[Vec<f32>]) {
    let Some(store) = &workers.store else {
        return;
    };
    let sql = format!(
        "SELECT image_id, logits_hash FROM outputs WHERE cell_id = '{}' AND repetition = 0",
        cell.id.replace('\'', "''")
    );
    let stored: std::collections::HashMap<String, u64> =
        match Session::open(store, false).and_then(|s| s.run_blocking(&sql)) {
            Ok(outputs) => outputs
                .iter()
                .flat_map(|o| &o.batches)
                .flat_map(|batch| {
                    let ids = batch.column(0).as_string_opt::<i32>();
                    let hashes = batch
                        .column(1)
                        .as_primitive_opt::<arrow::datatypes::UInt64Type>();
                    match (ids, hashes) {
                        (Some(ids), Some(hashes)) => (0..batch.num_rows())
                            .map(|i| (ids.value(i).to_string(), hashes.value(i)))
                            .collect::<Vec<_>>(),
                        _ => Vec::new(),
                    }
                })
                .collect(),
            Err(e) => {
                eprintln!(
                    "deltann: warning: cannot read {}'s stored logits: {e}",
                    cell.id
                );
                return;
            }
        };
    let known: Vec<(&String, &Vec<f32>)> = ids
        .iter()
        .zip(logits)
        .filter(|(id, _)| stored.contains_key(*id))
        .collect();
    if known.is_empty() {
        return;
    }
    let same = known
        .iter()
        .filter(|(id, l)| stored[*id] == deltann_store::outputs::hash_logits(l))
        .count();
    if same == known.len() {
        println!(
            "  {}: the re-run gives the stored logits bit for bit on {same} of {} images",
            cell.id,
            known.len()
        );
    } else {
        println!(
            "  {}: warning: the re-run differs from the stored logits on {} of {} images (one \
             image at a time, or fewer fusions with tensors exposed): what is localised is close \
             to, not exactly, what the sweep saw",
            cell.id,
            known.len() - same,
            known.len()
        );
    }
}

fn abbreviate(set: &[String]) -> String {
    let text = if set.is_empty() {
        "(none)".to_string()
    } else {
        set.join(",")
    };
    if text.len() > 60 {
        format!("{}...", &text[..text.floor_char_boundary(57)])
    } else {
        text
    }
}

fn layer(
    args: &LocalizeArgs,
    workers: &Workers,
    sweep: &Sweep,
    a: &Cell,
    b: &Cell,
    ids: &[String],
    out: &mut Found,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let nodes = localize::graph(&a.model.spec.path)?;
    let nodes_b = localize::graph(&b.model.spec.path)?;
    let images_a = load_images(sweep, a, ids)?;
    let images_b = load_images(sweep, b, ids)?;
    let expose = localize::exposable(&nodes);
    let mut tensors_a = localize::capture(
        &workers.command,
        &a.engine_config(),
        &expose,
        &images_a,
        workers.timeouts,
    )
    .context("running cell A with its tensors exposed")?;
    let expose = localize::exposable(&nodes_b);
    let mut tensors_b = localize::capture(
        &workers.command,
        &b.engine_config(),
        &expose,
        &images_b,
        workers.timeouts,
    )
    .context("running cell B with its tensors exposed")?;
    // The model's own output in the exposed runs, against the sweep's logits.
    for (cell, tensors) in [(a, &tensors_a), (b, &tensors_b)] {
        let outputs: Option<Vec<Vec<f32>>> = tensors
            .iter()
            .map(|t| t.get(&cell.model.info.output_name).cloned())
            .collect();
        if let Some(outputs) = outputs {
            reproduces(workers, cell, ids, &outputs);
        }
    }
    let capture_s = started.elapsed().as_secs_f64();
    for (i, id) in ids.iter().enumerate() {
        let image_started = Instant::now();
        let (exposed_a, exposed_b) = (tensors_a[i].len(), tensors_b[i].len());
        // The graph's input as each side fed it (a quantised graph's first layer then sees it
        // after its QuantizeLinear/DequantizeLinear pair), so input quantisation counts as error
        // carried into the first nodes rather than as theirs.
        let input = a.model.info.input_name.clone();
        tensors_a[i].insert(input.clone(), images_a.tensors[i].clone());
        tensors_b[i].insert(b.model.info.input_name.clone(), images_b.tensors[i].clone());
        let (one, other) = (&mut tensors_a[i], &mut tensors_b[i]);
        localize::as_the_next_layer_sees(&nodes, one, &nodes_b, other);
        let errors = localize::node_errors(&nodes, &tensors_a[i], &tensors_b[i]);
        println!(
            "\nlayers: image {id}: {} of {} nodes compared ({exposed_a} tensors exposed by A, \
             {exposed_b} by B)",
            errors.len(),
            nodes.len(),
        );
        if let (Some(x), Some(y)) = (tensors_a[i].get(&input), tensors_b[i].get(&input))
            && x.len() == y.len()
            && x != y
        {
            let e = localize::NodeError::between(x, y);
            println!(
                "  the input already differs as the first layers receive it: relative error \
                 {:.3e}, max |d| {:.3e}",
                e.0, e.1
            );
        }
        if errors.is_empty() {
            println!(
                "  no tensor name in common: the two cells' graphs share no intermediate names"
            );
            continue;
        }
        let differs = errors.iter().find(|e| e.error > 0.0 && e.carried == 0.0);
        if let Some(e) = differs {
            println!(
                "  first node that differs at all: {} ({}, #{}): relative error {:.3e}, max |d| \
                 {:.3e}, from inputs that agree{}",
                e.node,
                e.op,
                e.order,
                e.error,
                e.max_abs,
                unobserved(e)
            );
        }
        let first = localize::first_divergent(&errors, args.node_tolerance, args.gain);
        match first {
            Some(e) => println!(
                "  first divergent node: {} ({}, #{} in graph order): relative error {:.3e}, \
                 {:.0}x what its inputs carried in ({:.3e}){}",
                e.node,
                e.op,
                e.order,
                e.error,
                e.amplification,
                e.carried,
                unobserved(e)
            ),
            None => println!(
                "  no node diverges (relative error above {:.0e} and {}x its inputs'); largest \
                 error {:.3e}",
                args.node_tolerance,
                args.gain,
                errors.iter().map(|e| e.error).fold(0.0, f64::max)
            ),
        }
        let after = first.map_or(0, |f| f.order + 1);
        if let Some(e) = errors
            .iter()
            .filter(|e| e.order >= after && e.error > args.node_tolerance)
            .max_by(|x, y| x.amplification.total_cmp(&y.amplification))
        {
            println!(
                "  largest amplification{}: {} ({}, #{}): {:.1}x, to a relative error of {:.3e}",
                if first.is_some() { " after it" } else { "" },
                e.node,
                e.op,
                e.order,
                e.amplification,
                e.error
            );
        }
        print_curve(&errors, first, args.all_nodes);
        let row = LocalizationRow {
            image_id: Some(id.clone()),
            images: 1,
            tolerance: args.node_tolerance,
            gain: Some(args.gain),
            node: first.map(|e| e.node.clone()),
            op: first.map(|e| e.op.clone()),
            node_order: first.map(|e| e.order),
            rel_error: first.map(|e| e.error),
            amplification: first.map(|e| e.amplification),
            first_difference: differs.map(|e| e.node.clone()),
            nodes_compared: Some(errors.len()),
            // Its share of the two captures, and its own comparison.
            seconds: capture_s / ids.len().max(1) as f64 + image_started.elapsed().as_secs_f64(),
            ..out.row(kind::LAYERS, a, b, image_started)
        };
        out.node_errors.extend(errors.iter().map(|e| NodeErrorRow {
            localization_id: row.localization_id.clone(),
            image_id: id.clone(),
            error: e.clone(),
        }));
        out.localizations.push(row);
    }
    println!("({:.1}s)", started.elapsed().as_secs_f64());
    Ok(())
}

/// When some inputs of `e` went uncompared (one side's optimised graph does not compute them),
/// the divergence may start before it: says so.
fn unobserved(e: &NodeError) -> String {
    if e.inputs_compared {
        String::new()
    } else {
        " (some of its inputs were not compared, one side not computing them: it may start \
         before)"
            .into()
    }
}

/// The per-node error curve: every node with --all-nodes, else a window around the first
/// divergent node and the last node.
fn print_curve(errors: &[NodeError], first: Option<&NodeError>, all: bool) {
    let at = first.map_or(0, |f| {
        errors.iter().position(|e| e.order == f.order).unwrap_or(0)
    });
    let shown: Vec<usize> = if all {
        (0..errors.len()).collect()
    } else {
        let mut v: Vec<usize> = (at.saturating_sub(3)..(at + 6).min(errors.len())).collect();
        if v.last() != Some(&(errors.len() - 1)) {
            v.push(errors.len() - 1);
        }
        v
    };
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec![
        "#",
        "node",
        "op",
        "rel. error",
        "carried in",
        "gain",
        "max |d|",
        "",
    ]);
    let top = errors.iter().map(|e| e.error).fold(0.0, f64::max);
    for &i in &shown {
        let e = &errors[i];
        t.add_row(vec![
            e.order.to_string(),
            e.node.clone(),
            e.op.clone(),
            format!("{:.3e}", e.error),
            format!("{:.3e}", e.carried),
            format!("{:.1}", e.amplification),
            format!("{:.3e}", e.max_abs),
            bar(e.error, top),
        ]);
    }
    println!("{t}");
}

/// A bar on a log scale from 1e-8 to the largest error.
fn bar(error: f64, top: f64) -> String {
    if error <= 0.0 || top <= 0.0 {
        return String::new();
    }
    let floor = 1e-8f64;
    let span = (top.max(floor * 10.0) / floor).log10();
    let filled = ((error.max(floor) / floor).log10() / span * 20.0).round();
    "█".repeat(filled.clamp(0.0, 20.0) as usize)
}
