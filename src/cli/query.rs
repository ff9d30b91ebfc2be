//! `deltann query`: one-shot SQL over a store, or a saved query by name.

use std::process::ExitCode;

use deltann_analyzer::context::{self, Session};
use deltann_analyzer::format;
use deltann_analyzer::queries;

use super::QueryArgs;

fn folders(catalog: &queries::Catalog) -> String {
    if catalog.folders.is_empty() {
        "none, only the built-in ones".into()
    } else {
        catalog
            .folders
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Prints every saved query with what it answers and where it comes from, then any file that
/// could not be used.
pub fn list(catalog: &queries::Catalog) {
    for q in catalog.all() {
        let source = match &q.replaces {
            Some(old) => format!("{} (replaces {old})", q.source),
            None => q.source.to_string(),
        };
        println!(
            "{:<24} {}\n{:<24} from {source}",
            q.name,
            q.description(),
            ""
        );
    }
    // On stderr: stdout is the list, one query per pair of lines (name first).
    eprintln!(
        "\nFolders read (later ones replace a query of the same name): {}. Add a query by \
         saving NAME.sql, its first comment lines saying what it answers, in \
         ~/.config/deltann/queries, ./queries or a folder of $DELTANN_QUERIES.",
        folders(catalog)
    );
    for w in &catalog.warnings {
        eprintln!("warning: {w}");
    }
}

pub fn run(args: &QueryArgs) -> anyhow::Result<ExitCode> {
    let catalog = queries::Catalog::load();
    if args.list {
        list(&catalog);
        return Ok(ExitCode::SUCCESS);
    }
    let Some(store) = &args.store else {
        anyhow::bail!("give a store directory (or --list to see the saved queries)");
    };
    if args.saved.is_some() {
        // A folder named in $DELTANN_QUERIES that is missing, or a file in it that does not
        // read, would otherwise go unnoticed behind a built-in query.
        for w in &catalog.warnings {
            eprintln!("warning: {w}");
        }
    }
    let sql = match (&args.saved, &args.sql) {
        (Some(name), None) => match catalog.get(name) {
            Some(q) => q.sql.clone(),
            None => {
                anyhow::bail!(
                    "no saved query `{name}`; saved queries: {} (folders read: {})",
                    catalog.names().join(", "),
                    folders(&catalog)
                );
            }
        },
        (None, Some(sql)) => sql.clone(),
        (Some(_), Some(_)) => anyhow::bail!("give either SQL or --saved NAME, not both"),
        (None, None) => anyhow::bail!("give SQL to run, or --saved NAME (see --list)"),
    };
    let ran = match &args.ballista {
        Some(url) => deltann_analyzer::ballista::BallistaSession::open(store, url)
            .and_then(|session| session.run(&sql)),
        None => {
            super::refresh_derived(store, &sql);
            Session::open(store, args.allow_write).and_then(|s| s.run_blocking(&sql))
        }
    };
    let outputs = match ran {
        Ok(o) => o,
        Err(e) => {
            let message = e.to_string();
            if let Some(shown) = context::point_at(&sql, &message) {
                anyhow::bail!("{message}\n{shown}");
            }
            return Err(e.into());
        }
    };
    for output in outputs {
        if output.batches.is_empty() {
            continue; // DDL: nothing to print
        }
        println!(
            "{}",
            format::render(&output.batches, args.format.into(), args.maxrows)?
        );
        if args.timing {
            eprintln!(
                "{} rows in {:.3}s",
                output.rows,
                output.elapsed.as_secs_f64()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
