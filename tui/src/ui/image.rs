//! Image: the picture, its ground truth, and every cell's top-5 with probabilities side by side;
//! cells whose top-1 differs from the family's majority are highlighted, with each cell's logit
//! distance to the reference cell. When `deltann localize` localised this image, its per-node
//! error curve is drawn under the table.

use deltann_analyzer::analysis::Analysis;
use deltann_analyzer::cells::{Localization, NodePoint};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Paragraph, Row, Sparkline, Table, TableState, Wrap};
use ratatui_image::StatefulImage;

use super::{block, focused_block, selected, window};
use crate::app::App;

/// Width of the environment column.
const ENV_WIDTH: usize = 22;

/// A probability in three or four characters: `.93`, `1.00`.
fn prob(p: f32) -> String {
    let text = format!("{p:.2}");
    match text.strip_prefix('0') {
        Some(rest) => rest.to_string(),
        None => text,
    }
}

/// `text` cut to `width` characters, with `…` when cut.
fn clip(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_string()
    } else {
        let mut out: String = text.chars().take(width.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

/// The per-node relative error of a layer localisation, in graph order, on a log scale from 1e-8
/// (empty) to 1 (full), each column the largest error of the nodes it covers.
fn draw_curve(
    frame: &mut Frame<'_>,
    area: Rect,
    (localization, points): &(Localization, Vec<NodePoint>),
    a: &Analysis,
) {
    let number = |id: &str| {
        a.cells
            .iter()
            .position(|c| c.cell_id == id)
            .map_or_else(|| "?".to_string(), |i| format!("#{}", i + 1))
    };
    let found = match (&localization.node, localization.rel_error) {
        (Some(node), Some(e)) => format!(
            "first divergent: {} ({}) {e:.1e}",
            node,
            localization.op.as_deref().unwrap_or("?")
        ),
        _ => "no node diverges".into(),
    };
    let title = format!(
        "Node error {} vs {} (log, 1e-8..1) · {found}",
        number(&localization.cell_a),
        number(&localization.cell_b)
    );
    let block = block(&title);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    if points.is_empty() {
        frame.render_widget(Paragraph::new("loading…"), inner);
        return;
    }
    // Nodes share columns when there are more than the width, and spread over several when fewer.
    let width = usize::from(inner.width.max(1));
    let per = points.len().div_ceil(width);
    let repeat = (width / points.len()).max(1);
    let data: Vec<u64> = points
        .chunks(per)
        .flat_map(|c| {
            let e = c.iter().map(|p| p.rel_error).fold(0.0, f64::max);
            // 0 at 1e-8 and below, 80 at 1.
            let level = ((e.max(1e-8).log10() + 8.0) * 10.0)
                .round()
                .clamp(0.0, 80.0) as u64;
            std::iter::repeat_n(level, repeat)
        })
        .collect();
    let spark = Sparkline::default()
        .data(&data)
        .max(80)
        .style(Style::default().fg(Color::Yellow));
    frame.render_widget(spark, inner);
}

pub fn draw(frame: &mut Frame<'_>, area: Rect, app: &App, a: &Analysis) {
    let Some(view) = &app.image else { return };
    let group = a.groups.get(view.group);
    let name = |class: i32| group.map_or_else(|| class.to_string(), |g| g.class_name(class));
    let picture_width = if area.width >= 140 {
        area.width / 4
    } else {
        area.width * 2 / 5
    };
    let [left, right] =
        Layout::horizontal([Constraint::Length(picture_width), Constraint::Min(30)]).areas(area);
    // The answers panel lists the selected cell's top-5 by name when there is room.
    let facts_height = if left.height >= 22 { 11 } else { 5 };
    let [picture_area, facts_area] =
        Layout::vertical([Constraint::Min(4), Constraint::Length(facts_height)]).areas(left);

    // The picture, encoded for the terminal once per image and size.
    let picture_block = block(&view.image_id);
    let inner = picture_block.inner(picture_area);
    frame.render_widget(picture_block, picture_area);
    match &view.picture {
        Some(img) => {
            let mut cache = app.picture.borrow_mut();
            if cache.as_ref().is_none_or(|(id, _)| *id != view.image_id) {
                *cache = Some((
                    view.image_id.clone(),
                    app.picker.new_resize_protocol(img.clone()),
                ));
            }
            if let Some((_, protocol)) = cache.as_mut() {
                frame.render_stateful_widget(StatefulImage::default(), inner, protocol);
            }
        }
        None => {
            let text = match (&view.path, &view.rows) {
                (None, _) => "(no file recorded for this image)".to_string(),
                (Some(_), None) => "loading…".to_string(),
                (Some(p), Some(_)) => format!("(cannot read {})", p.display()),
            };
            frame.render_widget(Paragraph::new(text).wrap(Wrap { trim: true }), inner);
        }
    }

    let rows = view.rows.as_deref().unwrap_or(&[]);
    let label = rows.iter().find_map(|r| r.label);
    let mut counts: Vec<(i32, usize)> = Vec::new();
    for r in rows {
        let t = r.top5.first().copied().unwrap_or(-1);
        match counts.iter_mut().find(|(c, _)| *c == t) {
            Some((_, n)) => *n += 1,
            None => counts.push((t, 1)),
        }
    }
    counts.sort_by(|x, y| y.1.cmp(&x.1).then(x.0.cmp(&y.0)));
    let majority = counts.first().map(|(c, _)| *c);
    let mut facts = vec![
        Line::from(vec![
            Span::styled("truth ", Style::default().add_modifier(Modifier::BOLD)),
            Span::raw(label.map_or_else(|| "unlabelled".into(), |l| format!("{l} {}", name(l)))),
        ]),
        Line::from(vec![
            Span::styled("majority ", Style::default().add_modifier(Modifier::BOLD)),
            Span::raw(majority.map_or_else(|| "-".into(), |m| format!("{m} {}", name(m)))),
        ]),
        Line::from(format!(
            "{} distinct top-1 over {} cells",
            counts.len(),
            rows.len()
        )),
    ];
    if facts_height > 5
        && let Some(r) = rows.get(view.cursor)
    {
        facts.push(Line::from(vec![
            Span::styled(
                format!("#{} ", r.cell + 1),
                Style::default().add_modifier(Modifier::BOLD),
            ),
            Span::raw(a.cells[r.cell].env()),
        ]));
        for (class, p) in r.top5.iter().zip(&r.top5_prob) {
            facts.push(Line::from(format!("{} {class} {}", prob(*p), name(*class))));
        }
    }
    frame.render_widget(Paragraph::new(facts).block(block("Answers")), facts_area);

    // The layer localisation's error curve under the table, when `deltann localize` made one.
    let right = match &view.curve {
        Some(curve) if right.height >= 16 => {
            let [table, chart] =
                Layout::vertical([Constraint::Min(6), Constraint::Length(7)]).areas(right);
            draw_curve(frame, chart, curve, a);
            table
        }
        _ => right,
    };

    // Every cell's top-5, one column per rank. Narrow tables drop the environment and distance
    // columns first, then class names (the answers panel names the selected cell's classes).
    let ref_cell = group.and_then(|g| g.cells.first()).copied();
    let rows_fit = right.height.saturating_sub(3) as usize;
    let first = window(view.cursor, rows.len(), rows_fit);
    let inner = usize::from(right.width.saturating_sub(2));
    let show_env = inner >= 100;
    let show_distance = inner >= 70;
    let fixed = 5 + if show_env { ENV_WIDTH + 1 } else { 0 } + if show_distance { 16 } else { 0 };
    let rank_width = (inner.saturating_sub(fixed) / 5).saturating_sub(1).max(7);
    let names = rank_width >= 12;
    let table_rows: Vec<Row<'_>> = rows
        .iter()
        .skip(first)
        .take(rows_fit)
        .map(|r| {
            let c = &a.cells[r.cell];
            let deviates = r.top5.first().copied() != majority;
            let top = r.top5.iter().zip(&r.top5_prob).map(|(class, p)| {
                Cell::from(if names {
                    format!("{} {}", clip(&name(*class), rank_width - 4), prob(*p))
                } else {
                    format!("{class} {}", prob(*p))
                })
            });
            let distance = if Some(r.cell) == ref_cell {
                "reference".to_string()
            } else if r.identical_ref == Some(true) {
                "identical".to_string()
            } else {
                match (r.max_abs_ref, r.kl_ref) {
                    (Some(m), Some(k)) => format!("{m:.1e} {k:.1e}"),
                    _ => "-".into(),
                }
            };
            let mut cells = vec![Cell::from(format!("#{}", r.cell + 1))];
            if show_env {
                cells.push(Cell::from(c.env()));
            }
            cells.extend(top);
            if show_distance {
                cells.push(Cell::from(distance));
            }
            let mut row = Row::new(cells);
            if deviates {
                row = row.style(Style::default().fg(Color::Red).add_modifier(Modifier::BOLD));
            } else if label.is_some() && r.top5.first().copied() == label {
                row = row.style(Style::default().fg(Color::Green));
            }
            row
        })
        .collect();
    let title = match (&view.error, &view.rows) {
        (Some(e), _) => format!("error: {e}"),
        (None, None) => "loading…".into(),
        (None, Some(_)) => format!(
            "Top-5 in every cell{} (red: not the majority){}",
            if names {
                ""
            } else {
                " (class index, probability)"
            },
            if show_distance {
                format!(" · max|Δlogit| KL vs #{}", ref_cell.map_or(0, |c| c + 1))
            } else {
                String::new()
            }
        ),
    };
    let mut state =
        TableState::default().with_selected((!rows.is_empty()).then(|| view.cursor - first));
    let rank = u16::try_from(rank_width).unwrap_or(u16::MAX);
    let mut widths = vec![Constraint::Length(4)];
    let mut header = vec!["#".to_string()];
    if show_env {
        widths.push(Constraint::Length(ENV_WIDTH as u16));
        header.push("environment".into());
    }
    for i in 1..=5 {
        widths.push(Constraint::Length(rank));
        header.push(format!("top-{i}"));
    }
    if show_distance {
        widths.push(Constraint::Length(15));
        header.push("vs reference".into());
    }
    let table = Table::new(table_rows, widths)
        .header(Row::new(header).style(Style::default().add_modifier(Modifier::BOLD)))
        .row_highlight_style(selected())
        .block(focused_block(&title, true));
    frame.render_stateful_widget(table, right, &mut state);
}
