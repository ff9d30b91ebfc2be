//! Disagreements: deviation-signature groups (which cells deviate together, and what they
//! share) and the most unstable images, with filters and search.

use deltann_analyzer::analysis::Analysis;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Paragraph, Row, Table, TableState};

use super::{focused_block, pct, selected, window};
use crate::app::{App, Focus};

pub fn draw(frame: &mut Frame<'_>, area: Rect, app: &App, a: &Analysis) {
    let [filters, body] = Layout::vertical([Constraint::Length(1), Constraint::Min(3)]).areas(area);
    draw_filters(frame, filters, app, a);
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)]).areas(body);
    if app.focus == Focus::SignatureImages {
        draw_signature_images(frame, left, app, a);
    } else {
        draw_signatures(frame, left, app, a);
    }
    draw_unstable(frame, right, app, a);
}

fn draw_filters(frame: &mut Frame<'_>, area: Rect, app: &App, a: &Analysis) {
    let f = &app.filter;
    let family = f
        .family
        .and_then(|g| a.groups.get(g))
        .map_or("all".to_string(), |g| g.family.clone());
    let class = f.class.map_or("all".to_string(), |c| {
        // Class names come from a family's model; without a family filter, the first family's.
        let g = f.family.unwrap_or(0);
        a.groups
            .get(g)
            .map_or(c.to_string(), |g| format!("{c} {}", g.class_name(c)))
    });
    let dim = f.dimension.map_or("all", |d| d.name());
    let cell = f.cell.map_or("all".to_string(), |c| format!("#{}", c + 1));
    let search = if app.searching {
        Span::styled(
            format!("/{}▏", f.search),
            Style::default().fg(Color::Yellow),
        )
    } else if f.search.is_empty() {
        Span::raw("")
    } else {
        Span::styled(format!("/{}", f.search), Style::default().fg(Color::Yellow))
    };
    // The search first, so it stays in sight on narrow terminals; shorter hints there.
    let filters = if area.width >= 120 {
        format!(
            "family={family} (f)  class={class} (c)  dimension={dim} (d)  cell={cell} (x)  0 clears"
        )
    } else {
        format!("f:{family} c:{class} d:{dim} x:{cell} 0:clear")
    };
    let gap = if search.content.is_empty() { "" } else { " " };
    let line = Line::from(vec![
        Span::styled(" filters ", Style::default().add_modifier(Modifier::BOLD)),
        search,
        Span::raw(gap),
        Span::raw(filters),
    ]);
    frame.render_widget(Paragraph::new(line), area);
}

fn draw_signatures(frame: &mut Frame<'_>, area: Rect, app: &App, a: &Analysis) {
    let visible = app.visible_signatures();
    let rows_fit = area.height.saturating_sub(3) as usize;
    let first = window(app.signature_cursor, visible.len(), rows_fit);
    let rows: Vec<Row<'_>> = visible
        .iter()
        .skip(first)
        .take(rows_fit)
        .map(|&i| {
            let s = &a.signatures[i];
            let cells: Vec<String> = s
                .signature
                .cells
                .iter()
                .map(|c| format!("#{}", c + 1))
                .collect();
            Row::new(vec![
                Cell::from(s.signature.images.to_string()),
                Cell::from(a.groups[s.signature.group].family.clone()),
                Cell::from(s.label.clone()).style(Style::default().fg(Color::Yellow)),
                Cell::from(cells.join(" ")),
            ])
        })
        .collect();
    let mut state = TableState::default()
        .with_selected((!visible.is_empty()).then(|| app.signature_cursor - first));
    let title = format!(
        "Deviation signatures ({}) · Enter: images · Space: unstable list",
        visible.len()
    );
    let table = Table::new(
        rows,
        [
            Constraint::Length(6),
            Constraint::Length(14),
            Constraint::Min(16),
            Constraint::Min(10),
        ],
    )
    .header(
        Row::new(vec!["images", "family", "deviating cells share", "cells"])
            .style(Style::default().add_modifier(Modifier::BOLD)),
    )
    .row_highlight_style(selected())
    .block(focused_block(&title, app.focus == Focus::Signatures));
    frame.render_stateful_widget(table, area, &mut state);
}

fn draw_signature_images(frame: &mut Frame<'_>, area: Rect, app: &App, a: &Analysis) {
    let visible = app.visible_signatures();
    let Some(&i) = visible.get(app.signature_cursor) else {
        return;
    };
    let s = &a.signatures[i];
    let rows: Vec<Row<'_>> = s
        .signature
        .examples
        .iter()
        .map(|e| Row::new(vec![Cell::from(e.as_str())]))
        .collect();
    let mut state = TableState::default().with_selected(Some(app.signature_image_cursor));
    let title = format!(
        "{}: {} images (examples) · Enter opens · Esc back",
        s.label, s.signature.images
    );
    let table = Table::new(rows, [Constraint::Min(10)])
        .row_highlight_style(selected())
        .block(focused_block(&title, true));
    frame.render_stateful_widget(table, area, &mut state);
}

fn draw_unstable(frame: &mut Frame<'_>, area: Rect, app: &App, a: &Analysis) {
    let visible = app.visible_unstable();
    // Narrow: the family column goes; the title then says how many families the list mixes
    // (an image appears once per family), and the family filter, `f`, tells them apart.
    let wide = area.width >= 50;
    let rows_fit = area.height.saturating_sub(3) as usize;
    let first = window(app.unstable_cursor, visible.len(), rows_fit);
    let rows: Vec<Row<'_>> = visible
        .iter()
        .skip(first)
        .take(rows_fit)
        .map(|&i| {
            let u = &a.disagreement.unstable[i];
            let g = &a.groups[u.group];
            let class = u.label.unwrap_or(u.majority);
            let mut cells = vec![Cell::from(u.image_id.clone())];
            if wide {
                cells.push(Cell::from(g.family.clone()));
            }
            cells.extend([
                Cell::from(u.distinct.to_string()),
                Cell::from(pct(u.majority_share)),
                Cell::from(g.class_name(class)),
            ]);
            Row::new(cells)
        })
        .collect();
    let mut state = TableState::default()
        .with_selected((!visible.is_empty()).then(|| app.unstable_cursor - first));
    let families = a.groups.len();
    let title = if wide {
        format!("Most unstable images ({})", visible.len())
    } else if app.filter.family.is_none() && families > 1 {
        format!("Unstable images ({}, {families} families)", visible.len())
    } else {
        format!("Unstable images ({})", visible.len())
    };
    let (widths, header) = if wide {
        (
            vec![
                Constraint::Min(13),
                Constraint::Length(8),
                Constraint::Length(6),
                Constraint::Length(6),
                Constraint::Min(6),
            ],
            vec!["image", "family", "labels", "agree", "class"],
        )
    } else {
        (
            vec![
                Constraint::Min(13),
                Constraint::Length(6),
                // An unstable image's majority share is below 100%: "99.9%" at most.
                Constraint::Length(5),
                Constraint::Min(6),
            ],
            vec!["image", "labels", "agree", "class"],
        )
    };
    let table = Table::new(rows, widths)
        .header(Row::new(header).style(Style::default().add_modifier(Modifier::BOLD)))
        .row_highlight_style(selected())
        .block(focused_block(&title, app.focus == Focus::Unstable));
    frame.render_stateful_widget(table, area, &mut state);
}
