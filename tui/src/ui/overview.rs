//! Overview: the pairwise top-1 flip-rate heatmap of a model family, the cells, and which
//! dimension explains the disagreement; Enter on a heatmap square lists that pair's flipped
//! images.

use deltann_analyzer::analysis::Analysis;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, List, ListItem, ListState, Paragraph, Row, Table, Wrap};

use super::{flip_color, focused_block, pct, selected, window};
use crate::app::{App, Focus};

pub fn draw(frame: &mut Frame<'_>, area: Rect, app: &App, a: &Analysis) {
    let heat_width = heat_width(app, a, area.width);
    let [left, right] =
        Layout::horizontal([Constraint::Length(heat_width), Constraint::Min(20)]).areas(area);
    draw_heatmap(frame, left, app, a);
    let [top, bottom] =
        Layout::vertical([Constraint::Percentage(55), Constraint::Percentage(45)]).areas(right);
    draw_cells(frame, top, app, a);
    if app.focus == Focus::PairImages {
        draw_pair_images(frame, bottom, app, a);
    } else {
        draw_attribution(frame, bottom, a);
    }
}

fn pair_rate(a: &Analysis, x: usize, y: usize) -> Option<(f64, u64)> {
    a.disagreement
        .pairs
        .iter()
        .find(|p| (p.a == x && p.b == y) || (p.a == y && p.b == x))
        .map(|p| (p.flip_rate, p.images))
}

fn heat_title(app: &App, a: &Analysis) -> String {
    let family = a.groups.get(app.family).map_or("", |g| g.family.as_str());
    format!("Flip rate: {family} (f: next family)")
}

/// The colour legend under the heatmap, and its width in columns.
fn legend() -> (Line<'static>, u16) {
    let line = Line::from(vec![
        Span::raw("0 "),
        Span::styled("██", Style::default().fg(Color::DarkGray)),
        Span::raw(" ≤1% "),
        Span::styled("██", Style::default().fg(Color::Green)),
        Span::raw(" ≤5% "),
        Span::styled("██", Style::default().fg(Color::Yellow)),
        Span::raw(" ≤10% "),
        Span::styled("██", Style::default().fg(Color::Magenta)),
        Span::raw(" more "),
        Span::styled("██", Style::default().fg(Color::Red)),
    ]);
    let width = line.width() as u16;
    (line, width)
}

/// What the heatmap needs: its squares, its title and its legend whole (the pair line, e.g.
/// "#12 vs #13: 12.5% flips of 1000", fits in that), up to half a narrow screen and three fifths
/// of a wide one; the cells table takes the rest.
fn heat_width(app: &App, a: &Analysis, width: u16) -> u16 {
    let squares = app.family_cells().len() as u16 * 2 + 7;
    let title = heat_title(app, a).chars().count() as u16 + 4;
    let needed = squares.max(title).max(legend().1 + 2).max(34);
    let share = if width >= 120 {
        width * 3 / 5
    } else {
        width / 2
    };
    needed.min(share.max(30))
}

fn draw_heatmap(frame: &mut Frame<'_>, area: Rect, app: &App, a: &Analysis) {
    let cells = app.family_cells();
    let title = heat_title(app, a);
    let block = focused_block(&title, app.focus == Focus::Heatmap);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    if cells.is_empty() || inner.height < 4 {
        return;
    }
    let rows_fit = inner.height.saturating_sub(4) as usize;
    let cols_fit = (inner.width.saturating_sub(5) / 2) as usize;
    let (r0, c0) = (
        window(app.heat.0, cells.len(), rows_fit),
        window(app.heat.1, cells.len(), cols_fit),
    );
    let mut lines = Vec::new();
    let mut header = vec![Span::raw("     ")];
    for cell in cells.iter().skip(c0).take(cols_fit) {
        // The last digit of each cell's number: the row labels give the whole number.
        header.push(Span::raw(format!("{:>2}", (cell + 1) % 10)));
    }
    lines.push(Line::from(header));
    for r in r0..(r0 + rows_fit).min(cells.len()) {
        let mut spans = vec![Span::raw(format!("#{:<3} ", cells[r] + 1))];
        for c in c0..(c0 + cols_fit).min(cells.len()) {
            let cursor = (r, c) == app.heat;
            let (text, style) = if r == c {
                ("··".to_string(), Style::default().fg(Color::DarkGray))
            } else {
                match pair_rate(a, cells[r], cells[c]) {
                    Some((rate, n)) if n > 0 => {
                        ("██".to_string(), Style::default().fg(flip_color(rate)))
                    }
                    _ => ("  ".to_string(), Style::default()),
                }
            };
            let style = if cursor {
                style.add_modifier(Modifier::REVERSED).bg(Color::White)
            } else {
                style
            };
            spans.push(Span::styled(
                if cursor { "[]".to_string() } else { text },
                style,
            ));
        }
        lines.push(Line::from(spans));
    }
    let (r, c) = app.heat;
    let info = match (cells.get(r), cells.get(c)) {
        (Some(&x), Some(&y)) if x != y => match pair_rate(a, x, y) {
            Some((rate, n)) => format!("#{} vs #{}: {} flips of {n}", x + 1, y + 1, pct(rate)),
            None => format!("#{} vs #{}: no images in common", x + 1, y + 1),
        },
        _ => "move off the diagonal to pick a pair".into(),
    };
    lines.push(Line::from(Span::styled(
        info,
        Style::default().add_modifier(Modifier::BOLD),
    )));
    lines.push(legend().0);
    // On a narrow screen the pair line and the legend wrap rather than lose their ends (the
    // squares' rows are cut to fit, so they never wrap).
    frame.render_widget(Paragraph::new(lines).wrap(Wrap { trim: false }), inner);
}

fn draw_cells(frame: &mut Frame<'_>, area: Rect, app: &App, a: &Analysis) {
    let cells = app.family_cells();
    let highlight: Vec<usize> = [app.heat.0, app.heat.1]
        .iter()
        .filter_map(|&i| cells.get(i).copied())
        .collect();
    let rows_fit = area.height.saturating_sub(3) as usize;
    let first = window(
        cells
            .iter()
            .position(|&c| Some(c) == highlight.first().copied())
            .unwrap_or(0),
        cells.len(),
        rows_fit,
    );
    let rows: Vec<Row<'_>> = cells
        .iter()
        .skip(first)
        .take(rows_fit)
        .map(|&i| {
            let c = &a.cells[i];
            let floor = &a.disagreement.floors[i];
            let acc =
                (floor.labelled > 0).then(|| pct(floor.correct as f64 / floor.labelled as f64));
            let p50 = a.performance[i]
                .p50_ms
                .map_or_else(|| "-".into(), |e| format!("{:.2}", e.value));
            let style = if highlight.contains(&i) {
                Style::default().fg(Color::Cyan)
            } else {
                Style::default()
            };
            let status = if c.status == "ok" {
                Cell::from("ok")
            } else {
                Cell::from("FAIL").style(Style::default().fg(Color::Red))
            };
            Row::new(vec![
                Cell::from(format!("#{}", i + 1)),
                Cell::from(c.env()),
                status,
                Cell::from(acc.unwrap_or_else(|| "-".into())),
                Cell::from(p50),
            ])
            .style(style)
        })
        .collect();
    let table = Table::new(
        rows,
        [
            Constraint::Length(4),
            Constraint::Min(14),
            Constraint::Length(4),
            Constraint::Length(6),
            Constraint::Length(7),
        ],
    )
    .header(
        Row::new(vec!["#", "environment", "run", "top-1", "p50 ms"])
            .style(Style::default().add_modifier(Modifier::BOLD)),
    )
    .block(focused_block("Cells", false));
    frame.render_widget(table, area);
}

fn draw_attribution(frame: &mut Frame<'_>, area: Rect, a: &Analysis) {
    // Narrow: the KL column goes, so names and intervals stay whole.
    let wide = area.width >= 54;
    let rows: Vec<Row<'_>> = a
        .attribution
        .iter()
        .map(|r| {
            let mut cells = vec![
                Cell::from(r.dimension.name()),
                Cell::from(r.pairs.to_string()),
                Cell::from(format!(
                    "{} [{}, {}]",
                    pct(r.flip_rate),
                    pct(r.flip_ci.0),
                    pct(r.flip_ci.1)
                ))
                .style(Style::default().fg(flip_color(r.flip_rate))),
            ];
            if wide {
                cells.push(Cell::from(
                    r.kl.map_or_else(|| "-".into(), |k| format!("{k:.1e}")),
                ));
            }
            Row::new(cells)
        })
        .collect();
    let mut widths = vec![
        Constraint::Length(14),
        Constraint::Length(5),
        Constraint::Min(18),
    ];
    let mut header = vec!["dimension", "pairs", "flip rate [95% CI]"];
    if wide {
        widths.push(Constraint::Length(7));
        header.push("KL");
    }
    let table = Table::new(rows, widths)
        .header(Row::new(header).style(Style::default().add_modifier(Modifier::BOLD)))
        .block(focused_block(
            "What explains the flips (one-dimension pairs)",
            false,
        ));
    frame.render_widget(table, area);
}

fn draw_pair_images(frame: &mut Frame<'_>, area: Rect, app: &App, a: &Analysis) {
    let images = app.pair_images();
    let (x, y) = app.pair.unwrap_or_default();
    let total = a
        .disagreement
        .pairs
        .iter()
        .find(|p| (p.a == x && p.b == y) || (p.a == y && p.b == x))
        .map_or(0, |p| p.flips);
    let title = format!(
        "#{} vs #{}: {} flipped (first {}); Enter opens",
        x + 1,
        y + 1,
        total,
        images.len()
    );
    let items: Vec<ListItem<'_>> = images.iter().map(|i| ListItem::new(i.as_str())).collect();
    let mut state = ListState::default().with_selected(Some(app.pair_cursor));
    let list = List::new(items)
        .highlight_style(selected())
        .block(focused_block(&title, true));
    frame.render_stateful_widget(list, area, &mut state);
}
