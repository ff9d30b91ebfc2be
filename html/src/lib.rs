//! `deltann report --format html`: an analysis as one self-contained page, for people who would
//! rather look than read. Everything is inside the file (SVG plots, thumbnails as data URIs, a
//! little script); it opens offline and can be mailed or archived beside a store.
//!
//! The page shows, per model family, the pairwise flip-rate heatmap; then attribution by
//! dimension with intervals, latency distributions per cell with slowdown flags, the classes
//! that flip most, near ties, and a gallery of the least stable images with every cell's top-5.
//! [`plots`] draws the charts (plotters to SVG; the heatmap by hand, since each square carries
//! its own tooltip); [`gallery`] makes the thumbnails. The script only checks itself (it records
//! script errors and empty plots in `<body data-...>`, which the browser test reads) and sorts
//! tables on a header click: the page reads the same without it.

mod gallery;
mod plots;

use std::collections::HashMap;
use std::fmt::Write;
use std::path::PathBuf;

use deltann_analyzer::analysis::Analysis;
use deltann_analyzer::cells::{self, CellInfo};
use deltann_analyzer::detail::Detail;

/// An error while drawing the page.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A chart could not be drawn.
    #[error("drawing the {chart} chart: {reason}")]
    Plot { chart: &'static str, reason: String },
    /// The per-image detail could not be read.
    #[error(transparent)]
    Analyzer(#[from] deltann_analyzer::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// What the page shows beyond the analysis.
#[derive(Clone, Debug)]
pub struct Options {
    /// Images in the gallery (the least stable first).
    pub gallery: usize,
    /// Longest thumbnail side in pixels.
    pub thumbnail: u32,
    /// Rows per table section.
    pub rows: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            gallery: 12,
            thumbnail: 160,
            rows: 20,
        }
    }
}

/// Escapes text for HTML (and SVG) content and attributes.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

pub(crate) fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

fn cell_label(i: usize, c: &CellInfo) -> String {
    format!("#{} {}", i + 1, c.env())
}

const STYLE: &str = r#"
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1280px; color: #222; padding: 0 16px; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 36px; border-bottom: 1px solid #ddd; }
h3 { font-size: 15px; margin-bottom: 4px; }
p.note { color: #555; margin-top: 2px; max-width: 900px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; cursor: pointer; user-select: none; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.flag td { background: #fde8e8; } span.flag { color: #b00; font-weight: 600; }
figure { margin: 8px 0 20px; } figcaption { color: #555; font-size: 12px; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 16px; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 10px; }
.card img { float: left; margin: 0 10px 6px 0; border-radius: 4px; }
.card table { clear: both; width: 100%; font-size: 12px; }
.missing { float: left; width: 120px; height: 90px; margin: 0 10px 6px 0; background: #eee; color: #777; font-size: 11px; padding: 4px; }
td.deviates { background: #fff1d6; }
"#;

/// Records script errors and empty plots on `<body>` (the browser test reads them), and sorts a
/// table by the clicked column.
const SCRIPT: &str = r#"
window.addEventListener("error", function (e) {
  var b = document.body; b.dataset.errors = (b.dataset.errors ? b.dataset.errors + " | " : "") + e.message;
});
document.addEventListener("DOMContentLoaded", function () {
  var plots = document.querySelectorAll("figure[data-marks]");
  var empty = 0;
  plots.forEach(function (figure) {
    var svg = figure.querySelector("svg");
    if (!svg || svg.querySelectorAll(figure.dataset.marks).length === 0) { empty += 1; }
  });
  document.querySelectorAll("table.sortable th").forEach(function (th, _) {
    th.addEventListener("click", function () {
      var table = th.closest("table"), body = table.tBodies[0];
      var col = Array.prototype.indexOf.call(th.parentNode.children, th);
      var dir = th.dataset.dir === "asc" ? -1 : 1; th.dataset.dir = dir === 1 ? "asc" : "desc";
      var rows = Array.prototype.slice.call(body.rows);
      var key = function (r) { var t = r.cells[col].dataset.v || r.cells[col].textContent; var n = parseFloat(t); return isNaN(n) ? t : n; };
      rows.sort(function (a, b) { var x = key(a), y = key(b); return (x > y ? 1 : x < y ? -1 : 0) * dir; });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
  document.body.dataset.plots = String(plots.length);
  document.body.dataset.emptyPlots = String(empty);
  document.body.dataset.images = String(document.querySelectorAll(".gallery img").length);
  document.body.dataset.ready = "1";
});
"#;

struct Page {
    out: String,
}

impl Page {
    fn section(&mut self, id: &str, title: &str, note: &str) {
        let _ = write!(
            self.out,
            "<h2 id=\"{id}\">{}</h2>\n<p class=\"note\">{}</p>\n",
            esc(title),
            esc(note)
        );
    }

    fn table(&mut self, header: &[&str], rows: &[Vec<Td>], flagged: &[bool]) {
        self.out.push_str("<table class=\"sortable\"><thead><tr>");
        for h in header {
            let _ = write!(self.out, "<th>{}</th>", esc(h));
        }
        self.out.push_str("</tr></thead><tbody>\n");
        for (i, row) in rows.iter().enumerate() {
            if flagged.get(i).copied().unwrap_or(false) {
                self.out.push_str("<tr class=\"flag\">");
            } else {
                self.out.push_str("<tr>");
            }
            for td in row {
                td.write(&mut self.out);
            }
            self.out.push_str("</tr>\n");
        }
        self.out.push_str("</tbody></table>\n");
    }

    /// A plot; `marks` is the CSS selector of its data marks (bars, boxes, squares), which the
    /// page's script counts to tell a drawn plot from an empty frame.
    fn figure(&mut self, svg: &str, marks: &str, caption: &str) {
        let _ = writeln!(
            self.out,
            "<figure data-marks=\"{}\">{svg}<figcaption>{}</figcaption></figure>",
            esc(marks),
            esc(caption)
        );
    }
}

/// A table cell: text, or a number (right-aligned, sorted by its value).
enum Td {
    Text(String),
    Num(String, f64),
}

impl Td {
    fn write(&self, out: &mut String) {
        match self {
            Self::Text(t) => {
                let _ = write!(out, "<td>{}</td>", esc(t));
            }
            Self::Num(t, v) => {
                let _ = write!(out, "<td class=\"num\" data-v=\"{v}\">{}</td>", esc(t));
            }
        }
    }
}

fn text(s: impl Into<String>) -> Td {
    Td::Text(s.into())
}

fn num(s: impl Into<String>, v: f64) -> Td {
    Td::Num(s.into(), v)
}

/// Renders `a` as a page. `detail` (the store's derived tables) and `paths` (image id -> file)
/// feed the gallery (see [`gallery_inputs`]).
///
/// # Errors
/// Fails when a chart cannot be drawn or an image's detail cannot be read.
pub fn render(
    a: &Analysis,
    detail: &Detail,
    paths: &HashMap<String, PathBuf>,
    options: &Options,
) -> Result<String> {
    let mut page = Page { out: String::new() };
    let failed = a.cells.iter().filter(|c| c.status == "failed").count();
    let running = a
        .cells
        .iter()
        .filter(|c| c.status == deltann_analyzer::analysis::RUNNING)
        .count();
    let title = format!("deltann report: {}", a.store);
    let _ = write!(
        page.out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><style>{STYLE}</style><script>{SCRIPT}</script></head><body>\n\
         <h1>{}</h1>\n<p class=\"note\">{} cells ({} failed, {} still running), {} images, {} \
         cell pairs compared, {} committed parts. Made by deltann {}.</p>\n",
        esc(&title),
        esc(&title),
        a.cells.len(),
        failed,
        running,
        a.disagreement.images,
        a.disagreement.pairs.len(),
        a.parts,
        env!("CARGO_PKG_VERSION"),
    );
    page.out.push_str(
        "<p class=\"note\">Sections: <a href=\"#cells\">cells</a> · <a href=\"#heatmaps\">flip \
         rates</a> · <a href=\"#attribution\">attribution</a> · <a href=\"#latency\">latency</a> \
         · <a href=\"#classes\">flipping classes</a> · <a href=\"#ties\">near ties</a> · <a \
         href=\"#gallery\">unstable images</a></p>\n",
    );

    cells_section(&mut page, a);
    heatmaps(&mut page, a)?;
    attribution(&mut page, a)?;
    latency(&mut page, a, options)?;
    classes(&mut page, a, options)?;
    near_ties(&mut page, a, options);
    gallery::section(&mut page, a, detail, paths, options)?;
    page.out.push_str("</body></html>\n");
    Ok(page.out)
}

fn cells_section(page: &mut Page, a: &Analysis) {
    page.section(
        "cells",
        "Cells",
        "One row per cell (model x environment). Top-1 on labelled images (first repetition); \
         p50 latency with its 95% bootstrap interval; floor = the cell's top-1 flips between its \
         own repetitions.",
    );
    let rows: Vec<Vec<Td>> = a
        .cells
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let floor = &a.disagreement.floors[i];
            let acc = (floor.labelled > 0).then(|| floor.correct as f64 / floor.labelled as f64);
            let p50 = a.performance.get(i).and_then(|p| p.p50_ms);
            vec![
                num(format!("#{}", i + 1), (i + 1) as f64),
                text(&c.model),
                text(c.env()),
                text(match &c.error {
                    Some(e) if c.status != "ok" => format!("{}: {e}", c.status),
                    _ => c.status.clone(),
                }),
                acc.map_or_else(|| num("-", -1.0), |v| num(pct(v), v)),
                p50.map_or_else(
                    || num("-", -1.0),
                    |e| {
                        num(
                            format!("{:.2} [{:.2}, {:.2}]", e.value, e.lo, e.hi),
                            e.value,
                        )
                    },
                ),
                if floor.compared > 0 {
                    num(pct(floor.flip_rate), floor.flip_rate)
                } else {
                    num("-", -1.0)
                },
            ]
        })
        .collect();
    let failed: Vec<bool> = a.cells.iter().map(|c| c.status != "ok").collect();
    page.table(
        &[
            "#",
            "model",
            "environment",
            "status",
            "top-1",
            "p50 ms [95% CI]",
            "floor",
        ],
        &rows,
        &failed,
    );
}

fn heatmaps(page: &mut Page, a: &Analysis) -> Result<()> {
    page.section(
        "heatmaps",
        "Flip rate between cells",
        "Per model family: the share of images whose top-1 differs between two cells (hover a \
         square for the rate, its 95% interval and the image count). Rows and columns are the \
         cells' numbers in the table above.",
    );
    for g in &a.groups {
        let _ = writeln!(
            page.out,
            "<h3>{} ({} cells)</h3>",
            esc(&g.family),
            g.cells.len()
        );
        let svg = plots::heatmap(a, &g.cells);
        page.figure(
            &svg,
            plots::HEATMAP_MARKS,
            &format!(
                "{}: pairwise top-1 flip rate in percent; the outlined diagonal is each cell's \
                 run-to-run floor.",
                g.family
            ),
        );
    }
    Ok(())
}

fn attribution(page: &mut Page, a: &Analysis) -> Result<()> {
    page.section(
        "attribution",
        "Which dimension explains the disagreement",
        "Pairs of cells that differ in one environment dimension only, pooled per dimension: \
         the flip rate with its 95% Wilson interval.",
    );
    if a.attribution.is_empty() {
        page.out
            .push_str("<p>No pairs of cells differ in exactly one dimension.</p>\n");
        return Ok(());
    }
    let svg = plots::attribution(&a.attribution)?;
    page.figure(
        &svg,
        plots::BAR_MARKS,
        "Flip rate per dimension (bars) with 95% intervals (whiskers).",
    );
    let rows: Vec<Vec<Td>> = a
        .attribution
        .iter()
        .map(|r| {
            vec![
                text(r.dimension.name()),
                num(r.pairs.to_string(), r.pairs as f64),
                num(r.images.to_string(), r.images as f64),
                num(
                    format!(
                        "{} [{}, {}]",
                        pct(r.flip_rate),
                        pct(r.flip_ci.0),
                        pct(r.flip_ci.1)
                    ),
                    r.flip_rate,
                ),
                num(pct(r.max_pair_flip_rate), r.max_pair_flip_rate),
            ]
        })
        .collect();
    page.table(
        &[
            "dimension",
            "pairs",
            "images",
            "flip rate [95% CI]",
            "worst pair",
        ],
        &rows,
        &[],
    );
    Ok(())
}

fn latency(page: &mut Page, a: &Analysis, options: &Options) -> Result<()> {
    page.section(
        "latency",
        "Latency",
        "Per cell: the distribution of per-image latency (box: quartiles; whiskers: 1.5 IQR; \
         dot: p99). Red boxes are cells that a change meant to speed things up made slower \
         beyond the cells' noise, with an interval that excludes no change.",
    );
    let slower: Vec<usize> = a
        .contrasts
        .iter()
        .filter(|c| c.meant_faster && c.change.value > c.noise && c.change.lo > 0.0)
        .map(|c| c.to)
        .collect();
    let sorted = a.disagreement.sorted_latencies_ms();
    for g in &a.groups {
        let members: Vec<usize> = g
            .cells
            .iter()
            .copied()
            .filter(|&c| sorted.get(c).is_some_and(|l| !l.is_empty()))
            .collect();
        if members.is_empty() {
            continue;
        }
        let svg = plots::latency(a, &members, &sorted, &slower)?;
        page.figure(
            &svg,
            plots::BOX_MARKS,
            &format!("{}: latency per image, milliseconds.", g.family),
        );
    }
    // The flagged first, then the largest changes either way, up to the section's rows.
    let mut shown: Vec<&deltann_analyzer::analysis::Contrast> = a.contrasts.iter().collect();
    let flag = |c: &deltann_analyzer::analysis::Contrast| {
        c.meant_faster && c.change.value > c.noise && c.change.lo > 0.0
    };
    shown.sort_by(|x, y| {
        flag(y)
            .cmp(&flag(x))
            .then(y.change.value.abs().total_cmp(&x.change.value.abs()))
    });
    let hidden = shown.len().saturating_sub(options.rows);
    shown.truncate(options.rows);
    let rows: Vec<Vec<Td>> = shown
        .iter()
        .map(|c| {
            vec![
                text(c.dimension.name()),
                text(format!("{} -> {}", c.from_value, c.to_value)),
                text(cell_label(c.from, &a.cells[c.from])),
                text(cell_label(c.to, &a.cells[c.to])),
                num(
                    format!(
                        "{:+.1}% [{:+.1}%, {:+.1}%]",
                        100.0 * c.change.value,
                        100.0 * c.change.lo,
                        100.0 * c.change.hi
                    ),
                    c.change.value,
                ),
                num(pct(c.noise), c.noise),
                text(if flag(c) { "SLOWER" } else { "" }),
            ]
        })
        .collect();
    let flagged: Vec<bool> = shown.iter().map(|c| flag(c)).collect();
    if !rows.is_empty() {
        let _ = writeln!(
            page.out,
            "<h3>One-dimension contrasts</h3><p class=\"note\">Relative change of p50 between \
             two cells that differ in one dimension (positive = slower), with its bootstrap \
             interval and the noise it is held against; flagged slowdowns first, then the \
             largest changes{}.</p>",
            if hidden > 0 {
                format!(" ({hidden} more in `deltann report --all`)")
            } else {
                String::new()
            }
        );
        page.table(
            &[
                "dimension",
                "change",
                "from",
                "to",
                "p50 change [95% CI]",
                "noise",
                "flag",
            ],
            &rows,
            &flagged,
        );
    }
    Ok(())
}

fn classes(page: &mut Page, a: &Analysis, options: &Options) -> Result<()> {
    page.section(
        "classes",
        "Classes that flip most",
        "Per family, by ground truth where known (else the majority answer): the share of the \
         class's images whose top-1 is not the same in every cell.",
    );
    for (gi, g) in a.groups.iter().enumerate() {
        let mut rows: Vec<_> = a
            .disagreement
            .classes
            .iter()
            .filter(|c| c.group == gi && c.flipped > 0)
            .collect();
        rows.sort_by(|x, y| {
            y.flipped
                .cmp(&x.flipped)
                .then((y.flipped * x.images).cmp(&(x.flipped * y.images)))
                .then(x.class.cmp(&y.class))
        });
        rows.truncate(options.rows);
        if rows.is_empty() {
            let _ = writeln!(page.out, "<p>{}: no image flips.</p>", esc(&g.family));
            continue;
        }
        let bars: Vec<(String, f64, u64, u64)> = rows
            .iter()
            .map(|c| {
                (
                    g.class_name(c.class),
                    c.flipped as f64 / c.images.max(1) as f64,
                    c.flipped,
                    c.images,
                )
            })
            .collect();
        let svg = plots::classes(&bars)?;
        page.figure(
            &svg,
            plots::BAR_MARKS,
            &format!(
                "{}: flipped images per class (bar length: share of the class's images; label: \
                 flipped/images).",
                g.family
            ),
        );
    }
    Ok(())
}

fn near_ties(page: &mut Page, a: &Analysis, options: &Options) {
    page.section(
        "ties",
        "Near ties",
        "Images whose top-1 and top-2 probabilities are within a few percent in their family's \
         reference cell: the answers most likely to change with the environment.",
    );
    let rows: Vec<Vec<Td>> = a
        .disagreement
        .near_ties
        .iter()
        .take(options.rows)
        .map(|t| {
            let g = &a.groups[t.group];
            vec![
                text(&g.family),
                text(&t.image_id),
                num(format!("{:.4}", t.margin), f64::from(t.margin)),
                text(g.class_name(t.top1)),
                text(g.class_name(t.top2)),
                text(if t.flipped { "yes" } else { "no" }),
            ]
        })
        .collect();
    if rows.is_empty() {
        page.out.push_str("<p>No near ties.</p>\n");
        return;
    }
    let flagged: Vec<bool> = a
        .disagreement
        .near_ties
        .iter()
        .take(options.rows)
        .map(|t| t.flipped)
        .collect();
    page.table(
        &["family", "image", "margin", "top-1", "top-2", "flips"],
        &rows,
        &flagged,
    );
}

/// The image paths and derived tables a gallery needs, for callers holding a store.
///
/// # Errors
/// Fails when the derived state cannot be read (an analysis just ran, so it is there).
pub fn gallery_inputs(
    store: &deltann_store::Store,
    a: &Analysis,
) -> Result<(Detail, HashMap<String, PathBuf>)> {
    Ok((Detail::open(store.root(), a)?, cells::image_paths(store)))
}
