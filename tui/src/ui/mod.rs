//! Drawing: a pure function of [`App`] (the only mutation is the picture's render cache).
//!
//! Every screen has a tab line on top and a status line at the bottom; the body is drawn by the
//! screen's module. Layouts adapt from 80x24 up.

mod disagreements;
mod image;
mod overview;
mod performance;
mod sql;

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Wrap};

use crate::app::{App, Screen};

/// Draws the whole UI.
pub fn draw(frame: &mut Frame<'_>, app: &App) {
    let [tabs, body, status] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    draw_tabs(frame, tabs, app);
    match (&app.analysis, app.screen) {
        (_, Screen::Sql) => sql::draw(frame, body, app),
        (None, _) => {
            let text = match (&app.error, &app.busy) {
                (Some(e), _) => format!("Could not analyse {}:\n{e}", app.store.display()),
                (None, Some(b)) => format!("{b}…"),
                (None, None) => "no analysis".into(),
            };
            frame.render_widget(
                Paragraph::new(text)
                    .wrap(Wrap { trim: false })
                    .block(block("deltann")),
                body,
            );
        }
        (Some(a), Screen::Overview) => overview::draw(frame, body, app, a),
        (Some(a), Screen::Disagreements) => disagreements::draw(frame, body, app, a),
        (Some(a), Screen::Performance) => performance::draw(frame, body, app, a),
        (Some(a), Screen::Image) => image::draw(frame, body, app, a),
    }
    draw_status(frame, status, app);
    if app.help {
        draw_help(frame, frame.area());
    }
}

/// A bordered block with a title; `focused` ones stand out.
pub(crate) fn block(title: &str) -> Block<'_> {
    Block::default().borders(Borders::ALL).title(Span::styled(
        title,
        Style::default().add_modifier(Modifier::BOLD),
    ))
}

pub(crate) fn focused_block(title: &str, focused: bool) -> Block<'_> {
    let b = block(title);
    if focused {
        b.border_style(Style::default().fg(Color::Cyan))
    } else {
        b
    }
}

/// The selected row's style.
pub(crate) fn selected() -> Style {
    Style::default().add_modifier(Modifier::REVERSED)
}

/// The colour of a flip rate: grey for none, then green, yellow, magenta, red.
pub(crate) fn flip_color(rate: f64) -> Color {
    if rate <= 0.0 {
        Color::DarkGray
    } else if rate <= 0.01 {
        Color::Green
    } else if rate <= 0.05 {
        Color::Yellow
    } else if rate <= 0.10 {
        Color::Magenta
    } else {
        Color::Red
    }
}

/// The first `rows` items around `cursor`: the index of the first visible one.
pub(crate) fn window(cursor: usize, len: usize, rows: usize) -> usize {
    if rows == 0 || len <= rows {
        0
    } else {
        cursor.saturating_sub(rows / 2).min(len - rows)
    }
}

pub(crate) fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

fn draw_tabs(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let mut spans = vec![Span::styled(
        " deltann ",
        Style::default().add_modifier(Modifier::BOLD),
    )];
    for s in Screen::TABS.iter().chain(std::iter::once(&Screen::Image)) {
        if *s == Screen::Image && app.screen != Screen::Image {
            continue;
        }
        let style = if *s == app.screen {
            Style::default().add_modifier(Modifier::REVERSED | Modifier::BOLD)
        } else {
            Style::default()
        };
        spans.push(Span::raw(" "));
        spans.push(Span::styled(format!(" {} ", s.title()), style));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn draw_status(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let left = match (&app.error, &app.busy) {
        (Some(e), _) => Span::styled(format!(" error: {e} "), Style::default().fg(Color::Red)),
        (None, Some(b)) => Span::styled(format!(" {b}… "), Style::default().fg(Color::Yellow)),
        (None, None) => Span::raw(format!(" {} · {} parts ", app.store.display(), app.parts)),
    };
    let width = area.width as usize;
    let used = left.content.chars().count();
    // The full hints where they fit, else the short ones (help and quit always show).
    let (full, short) = if app.searching {
        (
            "type to search · Ctrl-U clear · Enter done · Esc cancel",
            "Enter done · Esc cancel",
        )
    } else if app.sql_editing {
        (
            "type SQL · Enter run · Ctrl-U clear · ↑ last query · Esc stop editing",
            "Enter run · Esc stop",
        )
    } else {
        (
            "Tab screens · ↑↓←→ hjkl move · Enter open · Esc back · ? help · q quit",
            "Tab · Enter · Esc · ? help · q quit",
        )
    };
    let hints = if used + full.chars().count() < width {
        full
    } else {
        short
    };
    let hints: String = hints.chars().take(width.saturating_sub(used + 1)).collect();
    let pad = width.saturating_sub(used + hints.chars().count());
    frame.render_widget(
        Paragraph::new(Line::from(vec![
            left,
            Span::raw(" ".repeat(pad)),
            Span::styled(hints, Style::default().fg(Color::DarkGray)),
        ])),
        area,
    );
}

const HELP: &str = "\
Tab / Shift-Tab   next / previous screen
↑↓ or j k         move;  PgUp PgDn  Home End (g G)
← → or h l        heatmap columns; contrasts (Performance)
Enter             open: a heatmap pair's flipped images, an image
Esc               back
Space             switch list (Disagreements)
f                 next model family (filter on Disagreements)
c / d / x         filter by class / dimension / cell;  0 clears
unstable list     labels: distinct top-1s; agree: share with majority
/                 search image ids and class names (Ctrl-U clears)
e                 edit the SQL line (SQL screen), Enter runs it, Ctrl-U clears
L                 localise the image: reference vs selected cell
?                 this help;  q quit";

fn draw_help(frame: &mut Frame<'_>, area: Rect) {
    let w = 72.min(area.width);
    let h = 15.min(area.height);
    let popup = Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    );
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(HELP).block(block("Keys (any key closes)")),
        popup,
    );
}
