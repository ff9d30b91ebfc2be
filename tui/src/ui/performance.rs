//! Performance: each cell's latency with its bootstrap interval as a whisker plot, and the
//! one-dimension contrasts with the slowdowns the analyzer flags.

use deltann_analyzer::analysis::Analysis;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::widgets::{Cell, Row, Table, TableState};

use super::{focused_block, pct, selected, window};
use crate::app::App;

/// A whisker bar: `─` up to p90, `═` over p50's interval, `●` at p50, `┤` at p99.
fn whisker(p50: (f64, f64, f64), p90: f64, p99: f64, max: f64, width: usize) -> String {
    if width == 0 || max <= 0.0 {
        return String::new();
    }
    let at = |v: f64| {
        ((v / max) * (width - 1) as f64)
            .round()
            .clamp(0.0, (width - 1) as f64) as usize
    };
    let mut bar: Vec<char> = vec![' '; width];
    for ch in bar.iter_mut().take(at(p90) + 1).skip(at(p50.0)) {
        *ch = '─';
    }
    for ch in bar.iter_mut().take(at(p50.2) + 1).skip(at(p50.1)) {
        *ch = '═';
    }
    bar[at(p99)] = '┤';
    bar[at(p50.0)] = '●';
    bar.into_iter().collect()
}

pub fn draw(frame: &mut Frame<'_>, area: Rect, app: &App, a: &Analysis) {
    let [top, bottom] =
        Layout::vertical([Constraint::Percentage(60), Constraint::Percentage(40)]).areas(area);
    let max = a
        .performance
        .iter()
        .filter_map(|p| p.p99_ms.map(|e| e.value))
        .fold(0.0, f64::max);
    let bar_width = (top.width as usize)
        .saturating_sub(4 + 28 + 20 + 10)
        .clamp(10, 60);
    let rows_fit = top.height.saturating_sub(3) as usize;
    let first = window(app.perf_cursor, a.cells.len(), rows_fit);
    let rows: Vec<Row<'_>> = a
        .performance
        .iter()
        .enumerate()
        .skip(first)
        .take(rows_fit)
        .map(|(i, p)| {
            let c = &a.cells[i];
            let (p50, bar) = match (p.p50_ms, p.p90_ms, p.p99_ms) {
                (Some(m), Some(p90), Some(p99)) => (
                    format!("{:.2} [{:.2}, {:.2}]", m.value, m.lo, m.hi),
                    whisker((m.value, m.lo, m.hi), p90.value, p99.value, max, bar_width),
                ),
                _ => ("-".into(), String::new()),
            };
            let flagged = a.contrasts.iter().any(|x| x.flagged && x.to == i);
            let row = Row::new(vec![
                Cell::from(format!("#{}", i + 1)),
                Cell::from(c.env()),
                Cell::from(p50),
                Cell::from(bar),
            ]);
            if flagged {
                row.style(Style::default().fg(Color::Red))
            } else {
                row
            }
        })
        .collect();
    let mut state =
        TableState::default().with_selected(Some(app.perf_cursor.saturating_sub(first)));
    let title = format!(
        "Latency per cell, p50 [95% CI] ms · bar: ● p50, ═ CI, ─ to p90, ┤ p99 (0..{max:.1} ms)"
    );
    let table = Table::new(
        rows,
        [
            Constraint::Length(4),
            Constraint::Length(28),
            Constraint::Length(22),
            Constraint::Min(10),
        ],
    )
    .header(
        Row::new(vec!["#", "environment", "p50 [95% CI]", "latency"])
            .style(Style::default().add_modifier(Modifier::BOLD)),
    )
    .row_highlight_style(selected())
    .block(focused_block(&title, true));
    frame.render_stateful_widget(table, top, &mut state);

    let rows_fit = bottom.height.saturating_sub(3) as usize;
    let first = window(app.contrast_cursor, a.contrasts.len(), rows_fit);
    let rows: Vec<Row<'_>> = a
        .contrasts
        .iter()
        .skip(first)
        .take(rows_fit)
        .map(|c| {
            let change = format!(
                "{:+.1}% [{:+.1}, {:+.1}]",
                100.0 * c.change.value,
                100.0 * c.change.lo,
                100.0 * c.change.hi
            );
            let row = Row::new(vec![
                Cell::from(c.dimension.name()),
                Cell::from(format!("{} → {}", c.from_value, c.to_value)),
                Cell::from(format!("#{}→#{}", c.from + 1, c.to + 1)),
                Cell::from(change),
                Cell::from(pct(c.noise)),
                Cell::from(if c.flagged { "SLOWER" } else { "" }),
            ]);
            if c.flagged {
                row.style(Style::default().fg(Color::Red).add_modifier(Modifier::BOLD))
            } else {
                row
            }
        })
        .collect();
    let flagged = a.contrasts.iter().filter(|c| c.flagged).count();
    let title = format!(
        "Contrasts ({} flagged of {}) · ←→ scroll",
        flagged,
        a.contrasts.len()
    );
    let mut state =
        TableState::default().with_selected(Some(app.contrast_cursor.saturating_sub(first)));
    let table = Table::new(
        rows,
        [
            Constraint::Length(13),
            Constraint::Min(18),
            Constraint::Length(9),
            Constraint::Length(24),
            Constraint::Length(6),
            Constraint::Length(7),
        ],
    )
    .header(
        Row::new(vec![
            "dimension",
            "change",
            "cells",
            "p50 change [95% CI]",
            "noise",
            "flag",
        ])
        .style(Style::default().add_modifier(Modifier::BOLD)),
    )
    .row_highlight_style(Style::default().add_modifier(Modifier::UNDERLINED))
    .block(focused_block(&title, false));
    frame.render_stateful_widget(table, bottom, &mut state);
}

#[cfg(test)]
mod tests {
    #[test]
    fn whisker_marks_land_where_they_should() {
        let bar = super::whisker((5.0, 4.0, 6.0), 8.0, 10.0, 10.0, 11);
        assert_eq!(bar, "    ═●═── ┤");
    }
}
