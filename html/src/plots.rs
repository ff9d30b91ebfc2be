//! The page's charts as SVG text. Bars, whiskers and box plots are drawn with plotters' SVG
//! backend (axes, ticks and labels come with it; the browser renders the text, so no font files
//! are needed). The heatmap is written by hand: each square carries a `<title>` tooltip with its
//! pair's rate, interval and image count, which plotters' elements cannot hold.

use std::fmt::Write;

use deltann_analyzer::analysis::{Analysis, Attribution};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::{Error, Result, esc, pct};

/// The flip-rate bins (upper bounds) and their colours, darker for more (the TUI's bins, with
/// its last split at 25%).
const BINS: [(f64, &str, &str); 6] = [
    (0.0, "#eeeeee", "0"),
    (0.01, "#fee8c8", "≤1%"),
    (0.05, "#fdbb84", "≤5%"),
    (0.10, "#fc8d59", "≤10%"),
    (0.25, "#e34a33", "≤25%"),
    (f64::INFINITY, "#b30000", "more"),
];

fn bin_colour(rate: f64) -> &'static str {
    BINS.iter()
        .find(|(hi, _, _)| rate <= *hi)
        .map_or(BINS[5].1, |b| b.1)
}

/// The pairwise flip-rate heatmap of one family's cells (indices into the analysis); the
/// outlined diagonal shows each cell's run-to-run floor, white when the cell ran once.
pub fn heatmap(a: &Analysis, cells: &[usize]) -> String {
    let n = cells.len();
    let size = (560 / n.max(1)).clamp(12, 44);
    let label_w = 230;
    let top = 28;
    let grid = size * n;
    let legend_y = top + grid + 18;
    let width = label_w + grid + 20;
    let height = legend_y + 30;
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         viewBox=\"0 0 {width} {height}\" font-family=\"sans-serif\" font-size=\"11\">"
    );
    let rate = |x: usize, y: usize| {
        a.disagreement
            .pairs
            .iter()
            .find(|p| (p.a == x && p.b == y) || (p.a == y && p.b == x))
    };
    for (col, &c) in cells.iter().enumerate() {
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">#{}</text>",
            label_w + col * size + size / 2,
            top - 8,
            c + 1
        );
    }
    for (row, &r) in cells.iter().enumerate() {
        let y = top + row * size;
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\" dominant-baseline=\"middle\">{}</text>",
            label_w - 6,
            y + size / 2,
            esc(&format!("#{} {}", r + 1, a.cells[r].env()))
        );
        for (col, &c) in cells.iter().enumerate() {
            let x = label_w + col * size;
            let (fill, tip, value) = if r == c {
                let f = &a.disagreement.floors[r];
                if f.compared > 0 {
                    (
                        bin_colour(f.flip_rate),
                        format!(
                            "#{}: run-to-run floor {} ({} flips in {} repeated runs)",
                            r + 1,
                            pct(f.flip_rate),
                            f.flips,
                            f.compared
                        ),
                        Some(f.flip_rate),
                    )
                } else {
                    (
                        "#ffffff",
                        format!("#{}: one repetition, no floor measured", r + 1),
                        None,
                    )
                }
            } else {
                match rate(r, c) {
                    Some(p) if p.images > 0 => (
                        bin_colour(p.flip_rate),
                        format!(
                            "#{} vs #{}: {} flips ({} of {} images), 95% CI [{}, {}]",
                            r + 1,
                            c + 1,
                            pct(p.flip_rate),
                            p.flips,
                            p.images,
                            pct(p.flip_ci.0),
                            pct(p.flip_ci.1)
                        ),
                        Some(p.flip_rate),
                    ),
                    _ => (
                        "#ffffff",
                        format!("#{} vs #{}: no images in common", r + 1, c + 1),
                        None,
                    ),
                }
            };
            let stroke = if r == c { "#888" } else { "#fff" };
            let _ = write!(
                s,
                "<rect class=\"mark\" x=\"{x}\" y=\"{y}\" width=\"{size}\" height=\"{size}\" \
                 fill=\"{fill}\" stroke=\"{stroke}\"><title>{}</title></rect>",
                esc(&tip)
            );
            if let Some(v) = value.filter(|_| size >= 30) {
                let dark = v > 0.10;
                let _ = write!(
                    s,
                    "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" dominant-baseline=\"middle\" \
                     font-size=\"9\" fill=\"{}\" pointer-events=\"none\">{}</text>",
                    x + size / 2,
                    y + size / 2,
                    if dark { "#fff" } else { "#333" },
                    if v == 0.0 {
                        "0".to_string()
                    } else {
                        format!("{:.1}", 100.0 * v)
                    }
                );
            }
        }
    }
    let mut lx = label_w;
    let _ = write!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">flip rate</text>",
        lx - 6,
        legend_y + 11
    );
    for (_, colour, label) in BINS {
        let _ = write!(
            s,
            "<rect x=\"{lx}\" y=\"{legend_y}\" width=\"16\" height=\"14\" fill=\"{colour}\" \
             stroke=\"#999\"/><text x=\"{}\" y=\"{}\">{}</text>",
            lx + 20,
            legend_y + 11,
            esc(label)
        );
        lx += 30 + 7 * label.chars().count();
    }
    s.push_str("</svg>");
    s
}

/// Pixels for the y-axis labels: about 8 per character of the longest (8 to 48 characters).
fn label_width<'a>(labels: impl Iterator<Item = &'a str>) -> u32 {
    labels
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(8)
        .clamp(8, 48) as u32
        * 8
        + 10
}

fn plot_error(chart: &'static str) -> impl Fn(String) -> Error {
    move |reason| Error::Plot { chart, reason }
}

/// Draws into a fresh SVG of `width` x `height` with `draw`, returning the SVG text.
fn svg(
    chart: &'static str,
    width: u32,
    height: u32,
    draw: impl FnOnce(&DrawingArea<SVGBackend<'_>, Shift>) -> std::result::Result<(), String>,
) -> Result<String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (width, height)).into_drawing_area();
        root.fill(&WHITE)
            .map_err(|e| e.to_string())
            .map_err(plot_error(chart))?;
        draw(&root).map_err(plot_error(chart))?;
        root.present()
            .map_err(|e| e.to_string())
            .map_err(plot_error(chart))?;
    }
    Ok(out)
}

/// Horizontal bars with labels on the left: `(label, value in 0..=1)`, plus, when given, a 95%
/// interval per bar drawn as whiskers. Values are shares, shown as percentages.
fn share_bars(
    chart: &'static str,
    bars: &[(String, f64)],
    intervals: Option<&[(f64, f64)]>,
    x_desc: &str,
) -> Result<String> {
    let n = bars.len();
    let height = 110 + 26 * n as u32;
    // Segments count from the bottom: the first bar goes on top.
    let at = |i: usize| n.saturating_sub(1 + i);
    let max = bars
        .iter()
        .map(|b| b.1)
        .chain(intervals.into_iter().flatten().map(|i| i.1))
        .fold(0.0f64, f64::max);
    let x_max = (max * 1.1).max(0.01);
    let label_w = label_width(bars.iter().map(|b| b.0.as_str()));
    svg(chart, 860, height, |root| {
        let mut c = ChartBuilder::on(root)
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(label_w)
            .build_cartesian_2d(0f64..x_max, (0..n).into_segmented())
            .map_err(|e| e.to_string())?;
        let names: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
        c.configure_mesh()
            .disable_y_mesh()
            .y_labels(n)
            .y_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) if *i < n => names[at(*i)].clone(),
                _ => String::new(),
            })
            .x_label_formatter(&|x| format!("{:.1}%", 100.0 * x))
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 13))
            .x_desc(x_desc)
            .draw()
            .map_err(|e| e.to_string())?;
        c.draw_series(bars.iter().enumerate().map(|(i, (_, v))| {
            let mut r = Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(at(i))),
                    (*v, SegmentValue::Exact(at(i) + 1)),
                ],
                BAR_COLOUR.filled(),
            );
            r.set_margin(5, 5, 0, 0);
            r
        }))
        .map_err(|e| e.to_string())?;
        if let Some(intervals) = intervals {
            c.draw_series(
                bars.iter()
                    .zip(intervals)
                    .enumerate()
                    .map(|(i, ((_, v), (lo, hi)))| {
                        ErrorBar::new_horizontal(
                            SegmentValue::CenterOf(at(i)),
                            *lo,
                            *v,
                            *hi,
                            BLACK.stroke_width(1),
                            10,
                        )
                    }),
            )
            .map_err(|e| e.to_string())?;
        }
        Ok(())
    })
}

/// Flip rate per dimension with its 95% interval.
pub fn attribution(rows: &[Attribution]) -> Result<String> {
    let bars: Vec<(String, f64)> = rows
        .iter()
        .map(|r| {
            (
                format!("{} ({} pairs)", r.dimension.name(), r.pairs),
                r.flip_rate,
            )
        })
        .collect();
    let intervals: Vec<(f64, f64)> = rows.iter().map(|r| r.flip_ci).collect();
    share_bars(
        "attribution",
        &bars,
        Some(&intervals),
        "top-1 flip rate between cells differing in this dimension only",
    )
}

/// Flipped share per class: `(class name, share, flipped, images)`.
pub fn classes(rows: &[(String, f64, u64, u64)]) -> Result<String> {
    let bars: Vec<(String, f64)> = rows
        .iter()
        .map(|(name, share, flipped, images)| (format!("{name} ({flipped}/{images})"), *share))
        .collect();
    share_bars(
        "flipping classes",
        &bars,
        None,
        "share of the class's images that flip somewhere",
    )
}

/// A cell's latency box: quartiles, and whiskers at the most extreme data within 1.5 IQR of the
/// box (Tukey's), all from the one quantile definition of the store.
struct LatencyBox {
    lo: f64,
    q1: f64,
    median: f64,
    q3: f64,
    hi: f64,
    p99: f64,
}

impl LatencyBox {
    fn of(sorted: &[f64]) -> Option<Self> {
        let q = |p| deltann_store::stats::quantile_sorted(sorted, p);
        let (q1, median, q3, p99) = (q(0.25)?, q(0.5)?, q(0.75)?, q(0.99)?);
        let reach = 1.5 * (q3 - q1);
        let lo = sorted.iter().copied().find(|&v| v >= q1 - reach)?;
        let hi = sorted.iter().rev().copied().find(|&v| v <= q3 + reach)?;
        Some(Self {
            lo,
            q1,
            median,
            q3,
            hi,
            p99,
        })
    }
}

const BAR_COLOUR: RGBColor = RGBColor(0x4c, 0x78, 0xa8);
const BOX_COLOUR: RGBColor = RGBColor(0x30, 0x50, 0x90);
const SLOWER_COLOUR: RGBColor = RGBColor(0xc0, 0x10, 0x10);

/// The data marks of each kind of plot, as CSS selectors (see `Page::figure`).
pub const HEATMAP_MARKS: &str = "rect.mark";
pub const BAR_MARKS: &str = "rect[fill=\"#4c78a8\" i]";
pub const BOX_MARKS: &str = "rect[stroke=\"#305090\" i], rect[stroke=\"#c01010\" i]";

/// Box plots of per-image latency (ms) for `cells`; `slower` cells are drawn red.
pub fn latency(
    a: &Analysis,
    cells: &[usize],
    sorted_ms: &[Vec<f64>],
    slower: &[usize],
) -> Result<String> {
    let boxes: Vec<(usize, LatencyBox)> = cells
        .iter()
        .filter_map(|&c| Some((c, LatencyBox::of(sorted_ms.get(c)?)?)))
        .collect();
    let n = boxes.len();
    let height = 110 + 24 * n as u32;
    let at = |i: usize| n.saturating_sub(1 + i);
    let x_max = boxes
        .iter()
        .map(|(_, b)| b.hi.max(b.p99))
        .fold(0.0f64, f64::max)
        * 1.08;
    let labels: Vec<String> = boxes
        .iter()
        .map(|(c, _)| format!("#{} {}", c + 1, a.cells[*c].env()))
        .collect();
    let label_w = label_width(labels.iter().map(String::as_str));
    svg("latency", 860, height, |root| {
        let mut c = ChartBuilder::on(root)
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(label_w)
            .build_cartesian_2d(0f64..x_max.max(0.001), (0..n).into_segmented())
            .map_err(|e| e.to_string())?;
        c.configure_mesh()
            .disable_y_mesh()
            .y_labels(n)
            .y_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) if *i < n => labels[at(*i)].clone(),
                _ => String::new(),
            })
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 13))
            .x_desc("latency per image, ms")
            .draw()
            .map_err(|e| e.to_string())?;
        let colour = |cell: &usize| {
            if slower.contains(cell) {
                SLOWER_COLOUR
            } else {
                BOX_COLOUR
            }
        };
        // A vertical stroke at x across row `row`, inset by `inset` pixels top and bottom.
        let tick = |x: f64, row: usize, inset: u32, style: ShapeStyle| {
            let mut r = Rectangle::new(
                [
                    (x, SegmentValue::Exact(row)),
                    (x, SegmentValue::Exact(row + 1)),
                ],
                style,
            );
            r.set_margin(inset, inset, 0, 0);
            r
        };
        for (i, (cell, b)) in boxes.iter().enumerate() {
            let row = at(i);
            let col = colour(cell);
            let stroke = col.stroke_width(2);
            c.draw_series([(b.lo, b.q1), (b.q3, b.hi)].into_iter().map(|(x0, x1)| {
                PathElement::new(
                    vec![
                        (x0, SegmentValue::CenterOf(row)),
                        (x1, SegmentValue::CenterOf(row)),
                    ],
                    col.stroke_width(1),
                )
            }))
            .map_err(|e| e.to_string())?;
            let mut body = Rectangle::new(
                [
                    (b.q1, SegmentValue::Exact(row)),
                    (b.q3, SegmentValue::Exact(row + 1)),
                ],
                stroke,
            );
            body.set_margin(5, 5, 0, 0);
            c.draw_series([
                body,
                tick(b.median, row, 5, stroke),
                tick(b.lo, row, 8, col.stroke_width(1)),
                tick(b.hi, row, 8, col.stroke_width(1)),
            ])
            .map_err(|e| e.to_string())?;
            c.draw_series([Circle::new(
                (b.p99, SegmentValue::CenterOf(row)),
                3,
                BLACK.filled(),
            )])
            .map_err(|e| e.to_string())?;
        }
        Ok(())
    })
}
