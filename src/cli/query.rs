//! `deltann query`: one-shot SQL over a store, or a saved query by name.

use std::process::ExitCode;

use deltann_analyzer::context::{self, Session};
use deltann_analyzer::format;
use deltann_analyzer::queries;

use super::QueryArgs;

pub fn run(args: &QueryArgs) -> anyhow::Result<ExitCode> {
    if args.list {
        for q in queries::ALL {
            println!("{:<24} {}", q.name, q.description());
        }
        return Ok(ExitCode::SUCCESS);
    }
    let Some(store) = &args.store else {
        anyhow::bail!("give a store directory (or --list to see the saved queries)");
    };
    let sql = match (&args.saved, &args.sql) {
        (Some(name), None) => match queries::get(name) {
            Some(q) => q.sql.to_string(),
            None => {
                let names: Vec<&str> = queries::ALL.iter().map(|q| q.name).collect();
                anyhow::bail!(
                    "no saved query `{name}`; saved queries: {}",
                    names.join(", ")
                );
            }
        },
        (None, Some(sql)) => sql.clone(),
        (Some(_), Some(_)) => anyhow::bail!("give either SQL or --saved NAME, not both"),
        (None, None) => anyhow::bail!("give SQL to run, or --saved NAME (see --list)"),
    };
    super::refresh_derived(store, &sql);
    let session = Session::open(store, args.allow_write)?;
    let outputs = match session.run_blocking(&sql) {
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
