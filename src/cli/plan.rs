//! `deltann plan`: the cells a sweep expands to, with what the store already holds of each.

use std::process::ExitCode;

use anyhow::Context;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use deltann_collector::collect;
use deltann_collector::dataset::Dataset;
use deltann_collector::plan::{Plan, Shard};
use deltann_collector::runner::WorkerCommand;
use deltann_store::Store;

use super::PlanArgs;

pub fn run(args: &PlanArgs) -> anyhow::Result<ExitCode> {
    let (sweep, store_path) = super::load_sweep(&args.sweep, args.store.as_deref())?;
    let dataset = Dataset::load(&sweep.dataset)?;
    let worker = WorkerCommand::current_exe().context("cannot locate the deltann executable")?;
    let host = args.host.clone().unwrap_or_else(super::default_host);
    let plan = Plan::build(&sweep, &host, &|engine, lib| {
        deltann_collector::collect::probe_version(&worker, engine, lib)
    })?;
    let remote = store_path.to_str().is_some_and(deltann_remote::is_remote);
    let store = if remote {
        // Read through its local mirror (brought up to date), as every reader does.
        let mirror = super::mirror(&store_path.to_string_lossy())?;
        Some(Store::open(&mirror)?)
    } else if store_path
        .join(deltann_store::layout::FORMAT_FILE)
        .is_file()
    {
        Some(Store::open(&store_path)?)
    } else {
        None
    };
    let statuses = match &store {
        Some(s) => collect::status(s, &plan)?,
        None => Default::default(),
    };

    warn_filters_that_change_nothing(&sweep, &plan, &dataset);
    let planned = dataset.images.len();
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    let mut header = vec![
        "#",
        "cell",
        "model",
        "precision",
        "environment",
        "state",
        "done",
    ];
    if args.shards.is_some() {
        header.push("shard");
    }
    t.set_header(header);
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for (i, cell) in plan.cells.iter().enumerate() {
        let st = statuses.get(&cell.id).cloned().unwrap_or_default();
        let state = st.state(planned);
        *counts.entry(state).or_default() += 1;
        let mut row = vec![
            (i + 1).to_string(),
            cell.id.clone(),
            cell.model.spec.name.clone(),
            cell.model.spec.precision.clone(),
            cell.tag.clone(),
            state.to_string(),
            format!("{}/{planned}", st.done.len()),
        ];
        if let Some(count) = args.shards {
            let index = (1..=count)
                .find(|&index| Shard { index, count }.runs(i))
                .unwrap_or(1);
            row.push(format!("{index}/{count}"));
        }
        t.add_row(row);
    }
    println!("{t}");
    let states: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
    println!(
        "{} cells ({}) from {} models; {} images in {}{}{}",
        plan.cells.len(),
        states.join(", "),
        plan.models.len(),
        planned,
        dataset.root.display(),
        if plan.excluded > 0 {
            format!("; {} combinations excluded", plan.excluded)
        } else {
            String::new()
        },
        if dataset.skipped_files > 0 {
            format!("; {} non-image files skipped", dataset.skipped_files)
        } else {
            String::new()
        },
    );
    if let Some(count) = args.shards {
        println!(
            "shards: run `deltann collect {} --shard I/{count}` on each of {count} machines (I = \
             1..{count}); cells are planned for host {host} (give each machine's --host to see its \
             ids)",
            args.sweep.display()
        );
    }
    println!(
        "store {}{}",
        store_path.display(),
        if store.is_some() {
            ""
        } else {
            " (not created yet)"
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// Warns when the sweep lists several resize filters but no image is ever resized (every one is
/// already at its model's resize size, as in pre-resized datasets): the filters cannot change a
/// tensor, and their cells will agree bit for bit.
fn warn_filters_that_change_nothing(
    sweep: &deltann_collector::sweep::Sweep,
    plan: &Plan,
    dataset: &Dataset,
) {
    let Some(filters) = &sweep.environments.resize_filter else {
        return;
    };
    if filters.len() < 2 {
        return;
    }
    let sizes: Vec<(u32, u32)> = dataset
        .images
        .iter()
        .filter_map(|i| deltann_collector::preprocess::header_size(&i.path))
        .collect();
    let recipes = plan.presets();
    let resized = sizes.iter().any(|&(w, h)| {
        recipes
            .iter()
            .any(|p| deltann_collector::preprocess::is_resized(w, h, p))
    });
    if !sizes.is_empty() && !resized {
        eprintln!(
            "deltann: warning: resize_filter lists {} filters, but none of the {} images is \
             resized (each is already at its model's resize size): the filters cannot change a \
             tensor, and their cells will agree bit for bit",
            filters.len(),
            sizes.len()
        );
    }
}
