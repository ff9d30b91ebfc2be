/*!
deltann's terminal UI: from the whole sweep (flip-rate heatmap, what explains the flips) down
to one image in every environment.

- [`app`]: the state, the actions that change it, and the key map. Nothing else mutates state.
- [`ui`]: rendering, a function of the state.
- [`data`]: the slow work (analysis, image detail, SQL) on a background thread that reports
  through a channel.
- [`run`]: the event loop, which owns the terminal and restores it on exit, on error and on
  panic (ratatui's `init` installs the panic hook; a drop guard covers errors).
*/

pub mod app;
pub mod data;
pub mod ui;

use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use ratatui::crossterm::event::{self, Event as TermEvent, KeyEventKind};

use crate::app::{Action, App, Request};
use crate::data::Event;

/// How often a live store is checked for new parts.
const REFRESH: Duration = Duration::from_secs(1);

struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// Committed parts of a store, read from its manifest (cheap: no Parquet is opened).
fn committed_parts(store: &Path) -> Option<usize> {
    deltann_store::Store::open(store)
        .ok()
        .map(|s| s.entries().len())
}

/// Runs the TUI on `store` until the user quits.
///
/// # Errors
/// Fails when the terminal cannot be drawn on.
pub fn run(store: &Path) -> std::io::Result<()> {
    let mut terminal = ratatui::init();
    let _restore = Restore;
    let mut app = App::new(store.to_path_buf());
    let (tx, rx) = mpsc::channel::<Event>();
    let requests = data::spawn(store, tx.clone());
    let _ = requests.send(Request::Analyze);
    terminal.draw(|frame| ui::draw(frame, &app))?;

    // A graphics protocol if the terminal answers the query, else half blocks; the environment
    // can force half blocks (tmux sessions, tests). Asked after the first frame, before the
    // input thread starts reading stdin: a terminal that does not answer delays only pictures.
    if std::env::var("DELTANN_TUI_IMAGES").as_deref() != Ok("halfblocks")
        && let Ok(picker) = ratatui_image::picker::Picker::from_query_stdio()
    {
        app.picker = picker;
    }

    let input = tx.clone();
    std::thread::spawn(move || {
        loop {
            match event::poll(Duration::from_millis(100)) {
                Ok(true) => match event::read() {
                    Ok(e) => {
                        if input.send(Event::Input(e)).is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                },
                Ok(false) => {}
                Err(_) => return,
            }
        }
    });
    // A live store: a watcher reads the manifest now and then and reports the committed part
    // count every time; the app compares it with what it analysed, so a commit made while an
    // analysis runs is picked up by the next report instead of lost.
    let watched = store.to_path_buf();
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(REFRESH);
            if let Some(parts) = committed_parts(&watched)
                && tx.send(Event::Action(Action::PartsChanged(parts))).is_err()
            {
                return;
            }
        }
    });

    loop {
        terminal.draw(|frame| ui::draw(frame, &app))?;
        let action = match rx.recv_timeout(Duration::from_millis(250)) {
            Ok(Event::Input(TermEvent::Key(key))) if key.kind != KeyEventKind::Release => {
                app.action_for(key)
            }
            Ok(Event::Input(TermEvent::Resize(_, _))) => Some(Action::Resize),
            Ok(Event::Input(_)) => None,
            Ok(Event::Action(action)) => Some(action),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        if let Some(action) = action
            && let Some(request) = app.update(action)
        {
            let _ = requests.send(request);
        }
        if app.quit {
            break;
        }
    }
    Ok(())
}
