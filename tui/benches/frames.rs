//! TUI responsiveness on a large store: time to first frame, and key-press to frame for moving
//! through the disagreement list and for opening an image.
//!
//! Guards the interactive path against regressions: a key press must not wait on the store.
//! Frames are drawn into ratatui's TestBackend (160x48), so the figures include state update,
//! background work done inline (the detail lookup, decoding the picture and encoding it as half
//! blocks) and layout and rendering, but not the terminal's own drawing. A synthetic store has
//! no picture files, so each image is pointed at one of `data/images`' photos.
//!
//! ```sh
//! CARGO_TARGET_DIR=target-bench cargo bench -p deltann-tui --bench frames
//! ```
//! Environment: `DELTANN_BENCH_STORE` (default target-bench/stores/synth-5250, made by
//! scripts/bench-analyzer.py or `deltann synth`).

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use deltann_tui::app::{Action, App, Focus, Request};
use deltann_tui::data::Loader;
use ratatui::Terminal;
use ratatui::backend::TestBackend;

fn draw(terminal: &mut Terminal<TestBackend>, app: &App) {
    terminal.draw(|f| deltann_tui::ui::draw(f, app)).unwrap();
}

fn stats(name: &str, mut v: Vec<Duration>) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{name:<44} median {:>7.2} ms  p90 {:>7.2} ms  max {:>7.2} ms  (n={})",
        ms(v[v.len() / 2]),
        ms(v[v.len() * 9 / 10]),
        ms(v[v.len() - 1]),
        v.len()
    );
}

fn main() {
    let store = std::env::var("DELTANN_BENCH_STORE").map_or_else(
        |_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target-bench/stores/synth-5250"),
        PathBuf::from,
    );
    assert!(
        store.join("deltann-store.json").is_file(),
        "no store at {}",
        store.display()
    );
    let rows: u64 = deltann_store::Store::open(&store)
        .unwrap()
        .parts(deltann_store::Table::Outputs)
        .map(|p| p.rows)
        .sum();
    println!(
        "store {} ({rows} output rows), frames 160x48",
        store.display()
    );

    // Make sure the analysis cache is fresh (the first `deltann report` or TUI start does this).
    let started = Instant::now();
    Loader::new(&store).handle(Request::Analyze);
    println!(
        "{:<44} {:>7.2} s (once per store change)",
        "analysis when the cache is stale",
        started.elapsed().as_secs_f64()
    );

    let mut terminal = Terminal::new(TestBackend::new(160, 48)).unwrap();
    let mut first = Vec::new();
    let mut loading = Vec::new();
    for _ in 0..5 {
        let t0 = Instant::now();
        let mut app = App::new(store.clone());
        draw(&mut terminal, &app);
        loading.push(t0.elapsed());
        let mut loader = Loader::new(&store);
        for action in loader.handle(Request::Analyze) {
            app.update(action);
        }
        draw(&mut terminal, &app);
        first.push(t0.elapsed());
    }
    stats("first frame (loading message)", loading);
    stats("first frame with the analysis (cached)", first);

    let mut app = App::new(store.clone());
    let mut loader = Loader::new(&store);
    for action in loader.handle(Request::Analyze) {
        app.update(action);
    }
    let photos: Vec<PathBuf> =
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../data/images"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "jpg" || x == "jpeg"))
            .collect();
    assert!(!photos.is_empty());
    let paths = app
        .analysis
        .as_ref()
        .unwrap()
        .disagreement
        .unstable
        .iter()
        .enumerate()
        .map(|(i, u)| (u.image_id.clone(), photos[i % photos.len()].clone()))
        .collect();
    app.update(Action::ImagePaths(paths));
    app.update(Action::NextScreen);
    app.update(Action::SwitchFocus);
    assert_eq!(app.focus, Focus::Unstable);
    draw(&mut terminal, &app);
    let mut moves = Vec::new();
    for _ in 0..200 {
        let t0 = Instant::now();
        assert!(app.update(Action::Down).is_none());
        draw(&mut terminal, &app);
        moves.push(t0.elapsed());
    }
    stats("key press to frame: move in the list", moves);

    let mut opens = Vec::new();
    app.update(Action::Top);
    let images = app.visible_unstable().len().min(150);
    for _ in 0..images / 3 {
        for _ in 0..3 {
            app.update(Action::Down);
        }
        let t0 = Instant::now();
        let request = app.update(Action::Enter).unwrap();
        for action in loader.handle(request) {
            app.update(action);
        }
        draw(&mut terminal, &app);
        opens.push(t0.elapsed());
        assert!(
            app.image
                .as_ref()
                .unwrap()
                .rows
                .as_ref()
                .is_some_and(|r| !r.is_empty())
        );
        app.update(Action::Back);
    }
    stats("key press to frame: open an image", opens);
}
