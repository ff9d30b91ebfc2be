//! SQL: a query line and its result table, scrollable; errors are shown in place.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Paragraph, Row, Table, Wrap};

use super::{focused_block, window};
use crate::app::App;

pub fn draw(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let [input, result] = Layout::vertical([Constraint::Length(3), Constraint::Min(3)]).areas(area);
    let cursor = if app.sql_editing { "▏" } else { "" };
    // A long query scrolls sideways so its end, where typing happens, stays visible.
    let room = usize::from(input.width.saturating_sub(3));
    let chars = app.sql_input.chars().count();
    let shown: String = if chars > room {
        let tail: String = app.sql_input.chars().skip(chars - room + 1).collect();
        format!("…{tail}")
    } else {
        app.sql_input.clone()
    };
    let line = Line::from(vec![
        Span::raw(shown),
        Span::styled(cursor, Style::default().fg(Color::Yellow)),
    ]);
    let title = if app.sql_editing {
        "SQL (Enter runs, Ctrl-U clears, ↑ last query, Esc stops editing)"
    } else {
        "SQL (e or Enter to edit)"
    };
    frame.render_widget(
        Paragraph::new(line).block(focused_block(title, app.sql_editing)),
        input,
    );
    match &app.sql_result {
        None => frame.render_widget(
            Paragraph::new(
                "Tables: runs models images cells outputs errors · views: cells_latest predictions",
            )
            .block(focused_block("Result", false)),
            result,
        ),
        Some(Err(e)) => frame.render_widget(
            Paragraph::new(e.as_str())
                .style(Style::default().fg(Color::Red))
                .wrap(Wrap { trim: false })
                .block(focused_block("Error", false)),
            result,
        ),
        Some(Ok(r)) => {
            let rows_fit = result.height.saturating_sub(3) as usize;
            let first = window(app.sql_scroll, r.rows.len(), rows_fit)
                .max(app.sql_scroll.min(r.rows.len().saturating_sub(rows_fit)));
            let rows: Vec<Row<'_>> = r
                .rows
                .iter()
                .skip(first)
                .take(rows_fit)
                .map(|row| Row::new(row.iter().map(|v| Cell::from(v.as_str()))))
                .collect();
            let widths: Vec<Constraint> = r
                .header
                .iter()
                .enumerate()
                .map(|(i, h)| {
                    let longest = r
                        .rows
                        .iter()
                        .take(200)
                        .map(|row| row.get(i).map_or(0, |v| v.chars().count()))
                        .max()
                        .unwrap_or(0);
                    Constraint::Length((longest.max(h.chars().count()) as u16).clamp(3, 40))
                })
                .collect();
            let shown = if r.total > r.rows.len() {
                format!(" (first {} shown)", r.rows.len())
            } else {
                String::new()
            };
            let title = format!(
                "{} rows{shown} in {:.0} ms · rows {}-{} · ↑↓ PgUp PgDn scroll",
                r.total,
                r.elapsed_ms,
                (first + 1).min(r.rows.len()),
                (first + rows_fit).min(r.rows.len())
            );
            let table = Table::new(rows, widths)
                .header(
                    Row::new(r.header.iter().map(|h| Cell::from(h.as_str())))
                        .style(Style::default().add_modifier(Modifier::BOLD)),
                )
                .block(focused_block(&title, !app.sql_editing));
            frame.render_widget(table, result);
        }
    }
}
