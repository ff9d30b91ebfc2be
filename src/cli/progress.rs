//! Progress of a collection on the terminal: one bar for image preparation, then one bar over all
//! image runs of all cells (images/s, ETA) with the current cell as its message, and a line per
//! finished cell. Without a terminal (CI logs, `--quiet`) only the lines are printed.

use std::sync::Mutex;
use std::time::Duration;

use deltann_collector::collect::{CellOutcome, Observer};
use deltann_collector::plan::{Cell, Plan};
use deltann_collector::prepare::PrepareProgress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    bar: Mutex<Option<ProgressBar>>,
    quiet: bool,
    cells_total: Mutex<usize>,
    cells_done: Mutex<usize>,
}

impl Progress {
    pub fn new(quiet: bool) -> Self {
        Self {
            bar: Mutex::new(None),
            quiet,
            cells_total: Mutex::new(0),
            cells_done: Mutex::new(0),
        }
    }

    fn new_bar(&self, len: u64, template: &str) -> ProgressBar {
        let target = if self.quiet {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        let bar = ProgressBar::with_draw_target(Some(len), target);
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    }

    fn replace(&self, bar: Option<ProgressBar>) {
        if let Ok(mut slot) = self.bar.lock() {
            if let Some(old) = slot.take() {
                old.finish_and_clear();
            }
            *slot = bar;
        }
    }

    fn with_bar(&self, f: impl FnOnce(&ProgressBar)) {
        if let Ok(slot) = self.bar.lock()
            && let Some(bar) = slot.as_ref()
        {
            f(bar);
        }
    }

    /// Prints a line above the bar (or plainly when there is no visible bar).
    pub fn line(&self, text: &str) {
        let mut printed = false;
        self.with_bar(|bar| {
            if !bar.is_hidden() {
                bar.println(text);
                printed = true;
            }
        });
        if !printed {
            eprintln!("{text}");
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.replace(None);
    }
}

impl PrepareProgress for Progress {
    fn started(&self, total: usize, decoding: bool) {
        let what = if decoding {
            "decoding images"
        } else {
            "hashing images"
        };
        let bar = self.new_bar(
            total as u64,
            &format!("{what:>16} [{{bar:30}}] {{pos}}/{{len}} {{per_sec}} eta {{eta}}"),
        );
        self.replace(Some(bar));
    }

    fn advanced(&self, n: usize) {
        self.with_bar(|bar| bar.inc(n as u64));
    }
}

impl Observer for Progress {
    fn planned(&self, plan: &Plan, todo: usize, images: usize) {
        if let Ok(mut t) = self.cells_total.lock() {
            *t = todo;
        }
        let done = plan.cells.len().saturating_sub(todo);
        if todo == 0 {
            self.line(&format!(
                "all {} cells are already in the store",
                plan.cells.len()
            ));
            return;
        }
        self.line(&format!(
            "{todo} of {} cells to run ({done} already done), {images} image runs",
            plan.cells.len()
        ));
        let bar = self.new_bar(
            images as u64,
            "{prefix:>16} [{bar:30}] {pos}/{len} images {per_sec} eta {eta} {msg}",
        );
        self.replace(Some(bar));
    }

    fn cell_started(&self, cell: &Cell, _images: usize) {
        let total = self.cells_total.lock().map_or(0, |t| *t);
        let done = self.cells_done.lock().map_or(0, |d| *d);
        self.with_bar(|bar| {
            bar.set_prefix(format!("cell {}/{total}", done + 1));
            bar.set_message(cell.label());
        });
    }

    fn cell_advanced(&self, cell: &Cell, n: usize) {
        self.with_bar(|bar| bar.inc((n * cell.repetitions as usize) as u64));
    }

    fn cell_finished(&self, cell: &Cell, outcome: &CellOutcome) {
        let n = {
            let mut d = self.cells_done.lock().map_or(0, |d| *d);
            d += 1;
            if let Ok(mut slot) = self.cells_done.lock() {
                *slot = d;
            }
            d
        };
        let total = self.cells_total.lock().map_or(0, |t| *t);
        let latency = outcome
            .latency
            .map(|l| format!(", p50 {:.2} ms", l.p50_ms))
            .unwrap_or_default();
        let errors = if outcome.images_failed > 0 {
            format!(", {} image errors", outcome.images_failed)
        } else {
            String::new()
        };
        let text = match &outcome.failure {
            Some(why) if outcome.skipped => {
                format!("[{n}/{total}] skipped {}: {why}", cell.label())
            }
            None => format!(
                "[{n}/{total}] ok      {} ({} images{latency}{errors})",
                cell.label(),
                outcome.images_ok
            ),
            Some(why) => format!("[{n}/{total}] FAILED  {}: {why}", cell.label()),
        };
        self.line(&text);
    }

    fn note(&self, text: &str) {
        self.line(&format!("note: {text}"));
    }
}
