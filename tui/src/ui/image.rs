//! Image: the picture, its ground truth, and every cell's top-5 with probabilities side by side;
//! cells whose top-1 differs from the family's majority are highlighted, with each cell's logit
//! distance to the reference cell.

use deltann_analyzer::analysis::Analysis;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Paragraph, Row, Table, TableState, Wrap};
use ratatui_image::StatefulImage;

use super::{block, focused_block, selected, window};
use crate::app::App;

pub fn draw(frame: &mut Frame<'_>, area: Rect, app: &App, a: &Analysis) {
    let Some(view) = &app.image else { return };
    let group = a.groups.get(view.group);
    let name = |class: i32| group.map_or_else(|| class.to_string(), |g| g.class_name(class));
    let picture_width = if area.width >= 120 {
        area.width / 3
    } else {
        area.width * 2 / 5
    };
    let [left, right] =
        Layout::horizontal([Constraint::Length(picture_width), Constraint::Min(30)]).areas(area);
    let [picture_area, facts_area] =
        Layout::vertical([Constraint::Min(4), Constraint::Length(5)]).areas(left);

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
    let facts = vec![
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
    frame.render_widget(Paragraph::new(facts).block(block("Answers")), facts_area);

    // Every cell's top-5.
    let ref_cell = group.and_then(|g| g.cells.first()).copied();
    let rows_fit = right.height.saturating_sub(3) as usize;
    let first = window(view.cursor, rows.len(), rows_fit);
    let width = right.width as usize;
    let show = if width >= 110 {
        5
    } else if width >= 80 {
        3
    } else if width >= 60 {
        2
    } else {
        1
    };
    let table_rows: Vec<Row<'_>> = rows
        .iter()
        .skip(first)
        .take(rows_fit)
        .map(|r| {
            let c = &a.cells[r.cell];
            let deviates = r.top5.first().copied() != majority;
            let top: Vec<String> = r
                .top5
                .iter()
                .zip(&r.top5_prob)
                .take(show)
                .map(|(class, p)| format!("{} {:.2}", name(*class), p))
                .collect();
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
            let mut row = Row::new(vec![
                Cell::from(format!("#{}", r.cell + 1)),
                Cell::from(c.env()),
                Cell::from(top.join(" | ")),
                Cell::from(distance),
            ]);
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
            "Top-{show} in every cell (red: not the majority) · max|Δlogit| KL vs #{}",
            ref_cell.map_or(0, |c| c + 1)
        ),
    };
    let mut state =
        TableState::default().with_selected((!rows.is_empty()).then(|| view.cursor - first));
    let table = Table::new(
        table_rows,
        [
            Constraint::Length(4),
            Constraint::Length(22.min(right.width / 3)),
            Constraint::Min(12),
            Constraint::Length(15),
        ],
    )
    .header(
        Row::new(vec![
            "#",
            "environment",
            "top classes (probability)",
            "vs reference",
        ])
        .style(Style::default().add_modifier(Modifier::BOLD)),
    )
    .row_highlight_style(selected())
    .block(focused_block(&title, true));
    frame.render_stateful_widget(table, right, &mut state);
}
