//! The TUI's slow work, off the UI thread: the analysis (from its cache when fresh), one image's
//! detail and picture, and SQL. [`Loader::handle`] turns a [`Request`] into the [`Action`] that
//! carries its result; [`spawn`] runs it on a background thread that reports through a channel,
//! so the UI never waits on a query. Tests and the benchmark call `handle` directly.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender};
use std::time::Instant;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Float32Type, Int32Type};
use deltann_analyzer::analysis::{self, Options};
use deltann_analyzer::cells;
use deltann_analyzer::context::Session;
use deltann_analyzer::detail::{Detail, DetailRow};
use deltann_store::Store;

use crate::app::{Action, Request, SQL_ROWS, SqlResult};

/// Does the work behind requests, keeping what is worth keeping (the detail index, the SQL
/// session) between them.
pub struct Loader {
    store: PathBuf,
    detail: Option<Detail>,
    session: Option<Session>,
    /// Cell id -> index in the current analysis, for the detail fallback.
    cells: HashMap<String, usize>,
    /// The deltann executable, to run `deltann localize` (none: localising is refused).
    program: Option<PathBuf>,
}

impl Loader {
    pub fn new(store: &Path) -> Self {
        Self {
            store: store.to_path_buf(),
            detail: None,
            session: None,
            cells: HashMap::new(),
            program: None,
        }
    }

    /// Lets the loader run `program localize ...` for [`Request::Localize`].
    #[must_use]
    pub fn with_program(mut self, program: PathBuf) -> Self {
        self.program = Some(program);
        self
    }

    /// Performs one request. `Analyze` also yields the image paths.
    pub fn handle(&mut self, request: Request) -> Vec<Action> {
        match request {
            Request::Analyze => {
                let result = Store::open(&self.store)
                    .map_err(|e| e.to_string())
                    .and_then(|store| {
                        let a = analysis::cached(&store, &Options::default(), true)
                            .map_err(|e| e.to_string())?;
                        self.detail = Detail::open(store.root(), &a).ok();
                        self.cells = a
                            .cells
                            .iter()
                            .enumerate()
                            .map(|(i, c)| (c.cell_id.clone(), i))
                            .collect();
                        Ok((a, deltann_analyzer::cells::image_paths(&store)))
                    });
                match result {
                    Ok((a, paths)) => {
                        vec![Action::ImagePaths(paths), Action::Analyzed(Ok(Arc::new(a)))]
                    }
                    Err(e) => vec![Action::Analyzed(Err(e))],
                }
            }
            Request::Image(id, path, localization) => {
                let rows = match &self.detail {
                    Some(d) => d.lookup(&id).map_err(|e| e.to_string()),
                    None => self.detail_by_sql(&id),
                };
                let picture = path
                    .as_deref()
                    .and_then(|p| deltann_analyzer::pictures::upright(p, PICTURE_MAX));
                let mut actions = vec![Action::ImageLoaded(id.clone(), rows, picture)];
                if let Some(localization) = localization {
                    let curve = Store::open(&self.store)
                        .map_err(|e| e.to_string())
                        .and_then(|store| {
                            cells::load_node_errors(&store, &localization)
                                .map_err(|e| e.to_string())
                        });
                    actions.push(Action::CurveLoaded(id, localization, curve));
                }
                actions
            }
            Request::Sql(sql) => vec![Action::SqlDone(self.sql(&sql))],
            Request::Localize {
                cell_a,
                cell_b,
                image_id,
            } => {
                let result = self.localize(&cell_a, &cell_b, &image_id);
                let ok = result.is_ok();
                let mut actions = vec![Action::Localized(result)];
                if ok {
                    // The store has the new rows: the analysis picks them up, and the image
                    // screen its curve.
                    actions.extend(self.handle(Request::Analyze));
                }
                actions
            }
        }
    }

    /// Runs `deltann localize STORE --pair A B --image ID --layers` and waits for it.
    fn localize(&self, cell_a: &str, cell_b: &str, image_id: &str) -> Result<(), String> {
        let program = self
            .program
            .as_ref()
            .ok_or("this TUI cannot start `deltann localize`; run it in a shell")?;
        let out = std::process::Command::new(program)
            .arg("localize")
            .arg(&self.store)
            .args(["--pair", cell_a, cell_b, "--image", image_id, "--layers"])
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
        if out.status.success() {
            let stdout = String::from_utf8_lossy(&out.stdout);
            if stdout.contains("stored in") {
                Ok(())
            } else {
                let last = stdout.lines().rev().find(|l| !l.trim().is_empty());
                Err(format!(
                    "deltann localize stored nothing: {}",
                    last.unwrap_or("no output")
                ))
            }
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
            Err(format!(
                "deltann localize failed: {}",
                last.unwrap_or("no message")
            ))
        }
    }

    fn session(&mut self) -> Result<&Session, String> {
        if self.session.is_none() {
            self.session = Some(Session::open(&self.store, false).map_err(|e| e.to_string())?);
        }
        self.session
            .as_ref()
            .ok_or_else(|| "no session".to_string())
    }

    fn sql(&mut self, sql: &str) -> Result<SqlResult, String> {
        let started = Instant::now();
        let session = self.session()?;
        let outputs = session.run_blocking(sql).map_err(|e| {
            let message = e.to_string();
            match deltann_analyzer::context::point_at(sql, &message) {
                Some(shown) => format!("{message}\n{shown}"),
                None => message,
            }
        })?;
        let last = outputs.into_iter().last().ok_or("no statement")?;
        let (header, rows) = deltann_analyzer::format::table_cells(&last.batches, SQL_ROWS)
            .map_err(|e| e.to_string())?;
        Ok(SqlResult {
            header,
            rows,
            total: last.batches.iter().map(|b| b.num_rows()).sum(),
            elapsed_ms: started.elapsed().as_secs_f64() * 1e3,
        })
    }

    /// Without the detail cache (a read-only store), read the image's rows from `outputs`.
    fn detail_by_sql(&mut self, id: &str) -> Result<Vec<DetailRow>, String> {
        let escaped = id.replace('\'', "''");
        let sql = format!(
            "SELECT cell_id, label, top5, top5_prob FROM outputs WHERE image_id = '{escaped}' AND repetition = 0"
        );
        let cells = self.cells.clone();
        let outputs = self
            .session()?
            .run_blocking(&sql)
            .map_err(|e| e.to_string())?;
        let mut rows = Vec::new();
        let unexpected = || format!("outputs for {id}: unexpected column types");
        for batch in outputs.iter().flat_map(|o| o.batches.iter()) {
            let (Some(ids), Some(labels), Some(top5), Some(probs)) = (
                batch.column(0).as_string_opt::<i32>(),
                batch.column(1).as_primitive_opt::<Int32Type>(),
                batch.column(2).as_list_opt::<i32>(),
                batch.column(3).as_list_opt::<i32>(),
            ) else {
                return Err(unexpected());
            };
            for i in 0..batch.num_rows() {
                let Some(&cell) = cells.get(ids.value(i)) else {
                    continue;
                };
                let (Some(top), Some(prob)) = (
                    top5.value(i).as_primitive_opt::<Int32Type>().cloned(),
                    probs.value(i).as_primitive_opt::<Float32Type>().cloned(),
                ) else {
                    return Err(unexpected());
                };
                rows.push(DetailRow {
                    cell,
                    label: labels.is_valid(i).then(|| labels.value(i)),
                    top5: top.values().to_vec(),
                    top5_prob: prob.values().to_vec(),
                    max_abs_ref: None,
                    mean_abs_ref: None,
                    kl_ref: None,
                    identical_ref: None,
                });
            }
        }
        rows.sort_by_key(|r| r.cell);
        Ok(rows)
    }
}

/// The largest picture side kept for display: more than any terminal shows, small enough that
/// encoding it for the terminal on the UI thread is quick.
const PICTURE_MAX: u32 = 512;

/// What the UI thread receives.
pub enum Event {
    /// A terminal event.
    Input(ratatui::crossterm::event::Event),
    /// A background result.
    Action(Action),
}

/// Starts the background thread; requests go in through the returned sender.
pub fn spawn(store: &Path, events: Sender<Event>) -> Sender<Request> {
    let (tx, rx): (Sender<Request>, Receiver<Request>) = std::sync::mpsc::channel();
    let mut loader = Loader::new(store);
    // The TUI runs inside the deltann binary, which also runs `deltann localize`.
    if let Ok(exe) = std::env::current_exe() {
        loader = loader.with_program(exe);
    }
    std::thread::spawn(move || {
        for request in rx {
            for action in loader.handle(request) {
                if events.send(Event::Action(action)).is_err() {
                    return;
                }
            }
        }
    });
    tx
}
