//! The TUI driven by actions on a fixture store (the analyzer's small synthetic store, with real
//! picture files), and every screen rendered to ratatui's TestBackend at 80x24 and 160x48 and
//! compared with insta snapshots.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use deltann_synth::{self as synth, Spec};
use deltann_tui::app::{Action, App, Focus, Request, Screen};
use deltann_tui::data::Loader;
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

struct Fixture {
    _dir: tempfile::TempDir,
    store: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let pictures = dir.path().join("pictures");
    std::fs::create_dir_all(&pictures).unwrap();
    let spec = Spec {
        image_dir: Some(pictures.clone()),
        ..Spec::small()
    };
    for i in 0..spec.images {
        // A small deterministic picture per image (PNG bytes; the decoder sniffs the format).
        let img = image::RgbImage::from_fn(120, 90, |x, y| {
            image::Rgb([(x * 2) as u8, (y * 2) as u8, (i * 4) as u8])
        });
        img.save_with_format(
            pictures.join(format!("img-{i:05}.jpg")),
            image::ImageFormat::Png,
        )
        .unwrap();
    }
    let store = dir.path().join("store");
    synth::generate(&store, &spec).unwrap();
    Fixture { _dir: dir, store }
}

/// An app loaded as the event loop would load it, with its background work done inline.
fn loaded(store: &Path) -> (App, Loader) {
    let mut loader = Loader::new(store);
    // Snapshots must not show the temporary path.
    let mut app = App::new(PathBuf::from("fixture-store"));
    for action in loader.handle(Request::Analyze) {
        assert!(app.update(action).is_none());
    }
    (app, loader)
}

/// Applies an action and performs the background work it asks for.
fn act(app: &mut App, loader: &mut Loader, action: Action) {
    if let Some(request) = app.update(action) {
        for result in loader.handle(request) {
            app.update(result);
        }
    }
}

fn key(app: &mut App, loader: &mut Loader, code: KeyCode) {
    let action = app.action_for(KeyEvent::new(code, KeyModifiers::NONE));
    if let Some(action) = action {
        act(app, loader, action);
    }
}

fn ctrl(app: &mut App, loader: &mut Loader, c: char) {
    let action = app.action_for(KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL));
    if let Some(action) = action {
        act(app, loader, action);
    }
}

fn typed(app: &mut App, loader: &mut Loader, text: &str) {
    for c in text.chars() {
        key(app, loader, KeyCode::Char(c));
    }
}

fn render(app: &App, width: u16, height: u16) -> String {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal.draw(|f| deltann_tui::ui::draw(f, app)).unwrap();
    format!("{}", terminal.backend())
}

#[test]
fn tabs_cycle_and_escape_goes_back() {
    let fx = fixture();
    let (mut app, mut loader) = loaded(&fx.store);
    assert!(app.analysis.is_some() && app.busy.is_none());
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(app.screen);
        key(&mut app, &mut loader, KeyCode::Tab);
    }
    assert_eq!(seen, Screen::TABS.to_vec());
    assert_eq!(app.screen, Screen::Overview);
    key(&mut app, &mut loader, KeyCode::BackTab);
    assert_eq!(app.screen, Screen::Sql);
    key(&mut app, &mut loader, KeyCode::Char('?'));
    assert!(app.help);
    key(&mut app, &mut loader, KeyCode::Char('x'));
    assert!(!app.help, "any key closes help");
    key(&mut app, &mut loader, KeyCode::Char('q'));
    assert!(app.quit);
}

#[test]
fn heatmap_pair_to_flipped_image_and_back() {
    let fx = fixture();
    let (mut app, mut loader) = loaded(&fx.store);
    let cells = app.family_cells().to_vec();
    // Find a pair with flips: fp32 reference against an int8 cell.
    let a = app.analysis.clone().unwrap();
    let column = cells
        .iter()
        .position(|&c| a.cells[c].precision == "int8")
        .unwrap();
    while app.heat.1 < column {
        key(&mut app, &mut loader, KeyCode::Char('l'));
    }
    assert_eq!(app.heat, (0, column));
    key(&mut app, &mut loader, KeyCode::Enter);
    assert_eq!(app.focus, Focus::PairImages);
    assert!(!app.pair_images().is_empty());
    let first = app.pair_images()[0].clone();
    key(&mut app, &mut loader, KeyCode::Enter);
    assert_eq!(app.screen, Screen::Image);
    let view = app.image.as_ref().unwrap();
    assert_eq!(view.image_id, first);
    let rows = view.rows.as_ref().unwrap();
    // One row per cell of this family that ran the image, and the picture decoded.
    assert_eq!(
        rows.len(),
        cells.iter().filter(|&&c| a.cells[c].status == "ok").count()
    );
    assert!(rows.iter().all(|r| cells.contains(&r.cell)));
    assert!(view.path.is_some(), "no path recorded");
    assert!(view.picture.is_some(), "{:?} not decoded", view.path);
    key(&mut app, &mut loader, KeyCode::Esc);
    assert_eq!(
        (app.screen, app.focus),
        (Screen::Overview, Focus::PairImages)
    );
    key(&mut app, &mut loader, KeyCode::Esc);
    assert_eq!(app.focus, Focus::Heatmap);
}

#[test]
fn disagreement_filters_and_search() {
    let fx = fixture();
    let (mut app, mut loader) = loaded(&fx.store);
    key(&mut app, &mut loader, KeyCode::Tab);
    assert_eq!(app.screen, Screen::Disagreements);
    let all = app.visible_unstable().len();
    assert!(all > 2);
    key(&mut app, &mut loader, KeyCode::Char('f'));
    assert_eq!(app.filter.family, Some(0));
    let a = app.analysis.clone().unwrap();
    assert!(
        app.visible_unstable()
            .iter()
            .all(|&i| a.disagreement.unstable[i].group == 0)
    );
    assert!(
        app.visible_signatures()
            .iter()
            .all(|&i| a.signatures[i].signature.group == 0)
    );
    key(&mut app, &mut loader, KeyCode::Char('0'));
    assert_eq!(app.visible_unstable().len(), all);
    // Class filter, for every class in turn: unstable images of that class, and exactly the
    // signatures holding such an image; some class must narrow the signatures to a strict subset.
    let mut narrowed = false;
    key(&mut app, &mut loader, KeyCode::Char('c'));
    while let Some(class) = app.filter.class {
        let unstable = app.visible_unstable();
        assert!(!unstable.is_empty() && unstable.len() < all);
        for &i in &unstable {
            let u = &a.disagreement.unstable[i];
            assert_eq!(u.label.unwrap_or(u.majority), class);
        }
        let signatures = app.visible_signatures();
        assert!(!signatures.is_empty());
        for s in 0..a.signatures.len() {
            let holds = a.disagreement.unstable.iter().any(|u| {
                u.label.unwrap_or(u.majority) == class
                    && u.group == a.signatures[s].signature.group
                    && u.deviating == a.signatures[s].signature.cells
            });
            assert_eq!(
                signatures.contains(&s),
                holds,
                "signature {s}, class {class}"
            );
        }
        narrowed |= signatures.len() < a.signatures.len();
        key(&mut app, &mut loader, KeyCode::Char('c'));
    }
    assert!(narrowed, "no class narrowed the signature list");
    key(&mut app, &mut loader, KeyCode::Char('0'));
    // Cell filter: images and signatures where that cell deviates (the int8 cell of family 0).
    let int8 = a
        .cells
        .iter()
        .position(|c| c.precision == "int8" && c.family == "family0")
        .unwrap();
    while app.filter.cell != Some(int8) {
        key(&mut app, &mut loader, KeyCode::Char('x'));
    }
    let unstable = app.visible_unstable();
    assert!(!unstable.is_empty() && unstable.len() < all);
    assert!(
        unstable
            .iter()
            .all(|&i| a.disagreement.unstable[i].deviating.contains(&int8))
    );
    assert!(
        app.visible_signatures()
            .iter()
            .all(|&i| a.signatures[i].signature.cells.contains(&int8))
    );
    key(&mut app, &mut loader, KeyCode::Char('0'));
    // Dimension filter, for every dimension in turn: exactly the unstable images whose signature
    // is labelled with that dimension (the fixture's are all "precision=int8": every image for
    // precision, none for the others).
    let mut sizes = Vec::new();
    key(&mut app, &mut loader, KeyCode::Char('d'));
    while let Some(d) = app.filter.dimension {
        let expected: Vec<usize> = (0..all)
            .filter(|&i| {
                let u = &a.disagreement.unstable[i];
                a.signatures.iter().any(|s| {
                    s.signature.group == u.group
                        && s.signature.cells == u.deviating
                        && s.label.contains(&format!("{}=", d.name()))
                })
            })
            .collect();
        assert_eq!(app.visible_unstable(), expected, "{d:?}");
        sizes.push(expected.len());
        key(&mut app, &mut loader, KeyCode::Char('d'));
    }
    assert!(
        sizes.contains(&all) && sizes.iter().any(|&n| n < all),
        "{sizes:?}"
    );
    key(&mut app, &mut loader, KeyCode::Char('0'));
    assert_eq!(app.visible_unstable().len(), all);
    // Search: typed characters go to the search line, even 'q'.
    key(&mut app, &mut loader, KeyCode::Char('/'));
    for c in "img-00012".chars() {
        key(&mut app, &mut loader, KeyCode::Char(c));
    }
    assert!(!app.quit);
    assert!(
        app.visible_unstable()
            .iter()
            .all(|&i| a.disagreement.unstable[i].image_id == "img-00012.jpg")
    );
    assert!(!app.visible_unstable().is_empty());
    key(&mut app, &mut loader, KeyCode::Enter);
    assert!(!app.searching && app.filter.search == "img-00012");
    // Dimension filter keeps signatures labelled with it.
    key(&mut app, &mut loader, KeyCode::Char('d'));
    assert!(
        app.visible_signatures()
            .iter()
            .all(|&i| a.signatures[i].label.contains("precision="))
    );
    // Space switches lists, Enter on an unstable image opens it.
    key(&mut app, &mut loader, KeyCode::Char(' '));
    assert_eq!(app.focus, Focus::Unstable);
    key(&mut app, &mut loader, KeyCode::Enter);
    assert_eq!(app.screen, Screen::Image);
    assert_eq!(app.image.as_ref().unwrap().image_id, "img-00012.jpg");
}

#[test]
fn sql_runs_off_the_ui_state_and_errors_show_in_place() {
    let fx = fixture();
    let (mut app, mut loader) = loaded(&fx.store);
    key(&mut app, &mut loader, KeyCode::BackTab);
    assert_eq!(app.screen, Screen::Sql);
    key(&mut app, &mut loader, KeyCode::Char('e'));
    assert!(app.sql_editing);
    ctrl(&mut app, &mut loader, 'u');
    assert!(app.sql_input.is_empty());
    typed(
        &mut app,
        &mut loader,
        "SELECT count(*) AS n FROM cells_latest",
    );
    // Enter asks the background for the query; the result lands in state.
    let request = app.update(Action::Submit);
    assert_eq!(
        request,
        Some(Request::Sql(
            "SELECT count(*) AS n FROM cells_latest".into()
        ))
    );
    for result in loader.handle(request.unwrap()) {
        app.update(result);
    }
    let result = app.sql_result.clone().unwrap().unwrap();
    assert_eq!(
        (result.header, result.rows),
        (vec!["n".to_string()], vec![vec!["37".to_string()]])
    );
    key(&mut app, &mut loader, KeyCode::Char('e'));
    ctrl(&mut app, &mut loader, 'u');
    typed(&mut app, &mut loader, "SELEC 1");
    key(&mut app, &mut loader, KeyCode::Enter);
    assert!(matches!(&app.sql_result, Some(Err(e)) if e.contains("syntax error")));
}

#[test]
fn a_growing_store_is_reanalysed() {
    let fx = fixture();
    let (mut app, mut loader) = loaded(&fx.store);
    let parts = app.parts;
    assert_eq!(app.update(Action::PartsChanged(parts)), None);
    assert_eq!(
        app.update(Action::PartsChanged(parts + 1)),
        Some(Request::Analyze)
    );
    assert!(app.busy.is_some());
    // A commit while that analysis runs is not analysed twice at once...
    assert_eq!(app.update(Action::PartsChanged(parts + 2)), None);
    // ...and not lost: the analysis reports the parts it saw, and the watcher's next report of
    // the (unchanged) count starts another.
    for action in loader.handle(Request::Analyze) {
        assert!(app.update(action).is_none());
    }
    assert_eq!(app.parts, parts);
    assert!(app.busy.is_none());
    assert_eq!(
        app.update(Action::PartsChanged(parts + 2)),
        Some(Request::Analyze)
    );
}

#[test]
fn screens_snapshot() {
    let fx = fixture();
    for (w, h) in [(80u16, 24u16), (160, 48)] {
        let (mut app, mut loader) = loaded(&fx.store);
        let name = |screen: &str| format!("{screen}@{w}x{h}");
        insta::assert_snapshot!(name("overview"), render(&app, w, h));
        key(&mut app, &mut loader, KeyCode::Char('l'));
        let a = app.analysis.clone().unwrap();
        let column = app
            .family_cells()
            .iter()
            .position(|&c| a.cells[c].precision == "int8")
            .unwrap();
        while app.heat.1 < column {
            key(&mut app, &mut loader, KeyCode::Char('l'));
        }
        key(&mut app, &mut loader, KeyCode::Enter);
        insta::assert_snapshot!(name("overview-pair"), render(&app, w, h));
        key(&mut app, &mut loader, KeyCode::Enter);
        insta::assert_snapshot!(name("image"), render(&app, w, h));
        key(&mut app, &mut loader, KeyCode::Esc);
        key(&mut app, &mut loader, KeyCode::Esc);
        key(&mut app, &mut loader, KeyCode::Tab);
        insta::assert_snapshot!(name("disagreements"), render(&app, w, h));
        key(&mut app, &mut loader, KeyCode::Tab);
        insta::assert_snapshot!(name("performance"), render(&app, w, h));
        key(&mut app, &mut loader, KeyCode::Tab);
        key(&mut app, &mut loader, KeyCode::Enter);
        act(&mut app, &mut loader, Action::Submit);
        // Timing varies run to run: blank it for the snapshot.
        if let Some(Ok(r)) = app.sql_result.as_mut() {
            r.elapsed_ms = 0.0;
        }
        insta::assert_snapshot!(name("sql"), render(&app, w, h));
        key(&mut app, &mut loader, KeyCode::Char('e'));
        ctrl(&mut app, &mut loader, 'u');
        typed(&mut app, &mut loader, "SELECT nosuch FROM cells");
        key(&mut app, &mut loader, KeyCode::Enter);
        insta::assert_snapshot!(name("sql-error"), render(&app, w, h));
        key(&mut app, &mut loader, KeyCode::Char('?'));
        insta::assert_snapshot!(name("help"), render(&app, w, h));
        key(&mut app, &mut loader, KeyCode::Char('?'));
        // Disagreements while searching, with a class filter.
        key(&mut app, &mut loader, KeyCode::Tab);
        key(&mut app, &mut loader, KeyCode::Tab);
        key(&mut app, &mut loader, KeyCode::Char('c'));
        key(&mut app, &mut loader, KeyCode::Char('/'));
        typed(&mut app, &mut loader, "img-000");
        insta::assert_snapshot!(name("disagreements-search"), render(&app, w, h));
        // Before the analysis arrives, and when it fails.
        let mut waiting = App::new(PathBuf::from("fixture-store"));
        insta::assert_snapshot!(name("loading"), render(&waiting, w, h));
        waiting.update(Action::Analyzed(Err(
            "fixture-store: no deltann-store.json".into(),
        )));
        insta::assert_snapshot!(name("failed"), render(&waiting, w, h));
    }
}

/// Opens the first flipped image of the reference cell against the first int8 cell, from the
/// overview's heatmap.
fn open_int8_flip(app: &mut App, loader: &mut Loader) {
    let a = app.analysis.clone().unwrap();
    let column = app
        .family_cells()
        .iter()
        .position(|&c| a.cells[c].precision == "int8")
        .unwrap();
    while app.heat.1 < column {
        key(app, loader, KeyCode::Char('l'));
    }
    key(app, loader, KeyCode::Enter);
    key(app, loader, KeyCode::Enter);
    assert_eq!(app.screen, Screen::Image);
}

#[test]
fn a_localised_image_shows_its_node_error_curve() {
    use deltann_collector::localize::NodeError;
    use deltann_collector::records::{self, LocalizationRow, NodeErrorRow};

    let fx = fixture();
    let (mut app, mut loader) = loaded(&fx.store);
    open_int8_flip(&mut app, &mut loader);
    let view = app.image.clone().unwrap();
    assert!(view.curve.is_none(), "no localisation yet");
    let a = app.analysis.clone().unwrap();
    let group = &a.groups[view.group].cells;
    let reference = a.cells[group[0]].cell_id.clone();
    let int8 = group
        .iter()
        .map(|&c| &a.cells[c])
        .find(|c| c.precision == "int8")
        .unwrap()
        .cell_id
        .clone();

    // A curve as `deltann localize` stores it: errors growing with depth, a jump at node 12.
    let id = "20261201T000000Z-1-1".to_string();
    let errors: Vec<NodeError> = (0..30)
        .map(|i| {
            let error = if i < 12 {
                1e-7 * f64::from(i + 1)
            } else {
                0.05
            };
            NodeError {
                order: 2 * i as usize,
                node: format!("conv{i}"),
                op: "Conv".into(),
                tensor: format!("t{i}"),
                error,
                max_abs: error,
                carried: 1e-7,
                amplification: error / 1e-7,
                inputs_compared: true,
            }
        })
        .collect();
    let row = LocalizationRow {
        localization_id: id.clone(),
        kind: "layers",
        cell_a: reference,
        cell_b: int8,
        image_id: Some(view.image_id.clone()),
        images: 1,
        tolerance: 1e-3,
        gain: Some(10.0),
        node: Some("conv12".into()),
        op: Some("Conv".into()),
        node_order: Some(24),
        rel_error: Some(0.05),
        amplification: Some(5e5),
        first_difference: Some("conv0".into()),
        nodes_compared: Some(30),
        seconds: 1.0,
        ..LocalizationRow::default()
    };
    let curve: Vec<NodeErrorRow> = errors
        .into_iter()
        .map(|error| NodeErrorRow {
            localization_id: id.clone(),
            image_id: view.image_id.clone(),
            error,
        })
        .collect();
    {
        let (writer, _) = deltann_store::StoreWriter::open(&fx.store).unwrap();
        let parts = [
            records::part(&writer, None, "t", &[row]).unwrap(),
            records::part(&writer, None, "t", &curve).unwrap(),
        ];
        writer
            .commit_group(parts.into_iter().flatten().collect())
            .unwrap();
    }

    let (mut app, mut loader) = loaded(&fx.store);
    open_int8_flip(&mut app, &mut loader);
    let view = app.image.clone().unwrap();
    let (localization, points) = view.curve.expect("the image's localisation");
    assert_eq!(localization.node.as_deref(), Some("conv12"));
    assert_eq!(points.len(), 30);
    assert!(points.windows(2).all(|w| w[0].order < w[1].order));
    insta::assert_snapshot!("image-curve@160x48", render(&app, 160, 48));
    // Too short for the chart: the table keeps the room.
    let short = render(&app, 80, 14);
    assert!(!short.contains("Node error"), "{short}");
}

#[test]
fn narrow_and_tiny_terminals_do_not_panic() {
    let fx = fixture();
    let (mut app, mut loader) = loaded(&fx.store);
    for _ in 0..4 {
        for (w, h) in [(40u16, 12u16), (20, 6), (1, 1), (79, 23)] {
            render(&app, w, h);
        }
        if app.screen == Screen::Disagreements {
            key(&mut app, &mut loader, KeyCode::Char(' '));
            key(&mut app, &mut loader, KeyCode::Enter);
            assert_eq!(app.screen, Screen::Image);
            for (w, h) in [(40u16, 12u16), (20, 6), (1, 1)] {
                render(&app, w, h);
            }
            key(&mut app, &mut loader, KeyCode::Esc);
        }
        key(&mut app, &mut loader, KeyCode::Tab);
    }
}
