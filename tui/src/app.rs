//! The TUI's state and the only place it changes: [`App::update`] takes an [`Action`] and returns
//! the background work it needs ([`Request`]). Rendering (in [`crate::ui`]) only reads the state,
//! and keys become actions in [`App::action_for`], so every behaviour can be tested by feeding
//! actions, without a terminal.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use deltann_analyzer::analysis::Analysis;
use deltann_analyzer::cells::{Dimension, Localization, NodePoint};
use deltann_analyzer::detail::DetailRow;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

/// The screens, in Tab order (the image screen is reached by drilling down).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Screen {
    Overview,
    Disagreements,
    Performance,
    Sql,
    Image,
}

impl Screen {
    /// Screens reachable with Tab.
    pub const TABS: [Screen; 4] = [
        Screen::Overview,
        Screen::Disagreements,
        Screen::Performance,
        Screen::Sql,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Screen::Overview => "Overview",
            Screen::Disagreements => "Disagreements",
            Screen::Performance => "Performance",
            Screen::Sql => "SQL",
            Screen::Image => "Image",
        }
    }
}

/// Which panel of a screen has the cursor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Focus {
    /// Overview: the flip-rate heatmap.
    Heatmap,
    /// Overview: the flipped images of the selected pair.
    PairImages,
    /// Disagreements: deviation-signature groups.
    Signatures,
    /// Disagreements: the most unstable images.
    Unstable,
    /// Disagreements: images of the selected signature.
    SignatureImages,
}

/// Filters of the disagreements screen; `f` cycles the family, `c` the class, `d` the
/// dimension, `x` the cell, `/` searches image ids and class names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub family: Option<usize>,
    pub class: Option<i32>,
    pub dimension: Option<Dimension>,
    pub cell: Option<usize>,
    pub search: String,
}

/// A result of the SQL screen.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SqlResult {
    pub header: Vec<String>,
    /// The first [`SQL_ROWS`] rows, as text.
    pub rows: Vec<Vec<String>>,
    /// Rows the query returned (more than `rows.len()` when capped).
    pub total: usize,
    pub elapsed_ms: f64,
}

/// Rows of a SQL result the screen keeps; `deltann query` has no cap.
pub const SQL_ROWS: usize = 10_000;

/// What the image screen shows.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageView {
    pub image_id: String,
    pub group: usize,
    /// Every cell's top-5 and distance to the reference; None while loading.
    pub rows: Option<Vec<DetailRow>>,
    /// Where the picture is, from the store's `images` table.
    pub path: Option<PathBuf>,
    pub error: Option<String>,
    /// The decoded picture (None while loading, or when the file is gone).
    pub picture: Option<image::DynamicImage>,
    pub cursor: usize,
    /// The latest layer localisation of this image (`deltann localize`), with its per-node
    /// error curve once loaded.
    pub curve: Option<(Localization, Vec<NodePoint>)>,
}

/// Work for the background thread.
#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    /// (Re)load the analysis.
    Analyze,
    /// One image's detail, its picture from this path, and the error curve of this
    /// localisation.
    Image(String, Option<PathBuf>, Option<String>),
    /// Run SQL.
    Sql(String),
    /// Run `deltann localize --layers` on one image for a pair of cells (ids), then re-analyse.
    Localize {
        cell_a: String,
        cell_b: String,
        image_id: String,
    },
}

/// Everything that can happen.
#[derive(Clone, Debug)]
pub enum Action {
    Quit,
    NextScreen,
    PrevScreen,
    Up,
    Down,
    Left,
    Right,
    PageUp,
    PageDown,
    Top,
    Bottom,
    Enter,
    Back,
    ToggleHelp,
    /// Switch panels within a screen.
    SwitchFocus,
    StartSearch,
    /// A character typed into the search or SQL line.
    Input(char),
    Backspace,
    /// Clear the search or SQL line (Ctrl-U).
    ClearInput,
    /// End typing (Enter in the search line).
    Submit,
    CycleFamily,
    CycleClass,
    CycleDimension,
    CycleCell,
    ClearFilters,
    /// Start editing the SQL line.
    EditSql,
    /// Localise the open image: the family's reference against the selected cell.
    Localize,
    /// `deltann localize` ended (its error output when it failed).
    Localized(Result<(), String>),
    /// The analysis arrived (or failed).
    Analyzed(Result<Arc<Analysis>, String>),
    /// Image paths from the store's `images` table.
    ImagePaths(HashMap<String, PathBuf>),
    /// An image's detail (and its picture, when the file could be read) arrived.
    ImageLoaded(
        String,
        Result<Vec<DetailRow>, String>,
        Option<image::DynamicImage>,
    ),
    /// A localisation's per-node error curve (from `node_errors`) arrived: image id,
    /// localisation id, the curve.
    CurveLoaded(String, String, Result<Vec<NodePoint>, String>),
    /// A SQL result arrived.
    SqlDone(Result<SqlResult, String>),
    /// The store has a new number of committed parts (a live `collect`).
    PartsChanged(usize),
    /// The terminal was resized.
    Resize,
}

/// The TUI's state.
pub struct App {
    pub store: PathBuf,
    pub screen: Screen,
    /// Screens to return to with Esc.
    pub back: Vec<Screen>,
    pub analysis: Option<Arc<Analysis>>,
    /// Lookups derived from the analysis for the disagreement filters.
    pub index: Index,
    /// What the background thread is doing, for the status line.
    pub busy: Option<String>,
    /// An analysis has been requested and has not arrived yet.
    pub analyzing: bool,
    pub error: Option<String>,
    pub help: bool,
    pub quit: bool,
    pub parts: usize,

    pub focus: Focus,
    /// Overview: the family whose heatmap is shown.
    pub family: usize,
    /// Overview: heatmap cursor (row, column) within the family's cells.
    pub heat: (usize, usize),
    /// Overview: cursor in the selected pair's flipped images.
    pub pair_cursor: usize,
    pub pair: Option<(usize, usize)>,

    pub filter: Filter,
    pub searching: bool,
    pub signature_cursor: usize,
    pub unstable_cursor: usize,
    pub signature_image_cursor: usize,

    pub image: Option<ImageView>,
    pub image_paths: HashMap<String, PathBuf>,
    /// How pictures are drawn (a graphics protocol, or half blocks).
    pub picker: ratatui_image::picker::Picker,
    /// A render cache for the picture (encoding it for the terminal is costly); not state.
    pub picture: RefCell<Option<(String, ratatui_image::protocol::StatefulProtocol)>>,

    pub perf_cursor: usize,
    pub contrast_cursor: usize,

    pub sql_input: String,
    pub sql_editing: bool,
    pub sql_result: Option<Result<SqlResult, String>>,
    pub sql_scroll: usize,
    pub sql_history: Vec<String>,
}

impl App {
    /// A new, empty app for `store`.
    pub fn new(store: PathBuf) -> Self {
        Self {
            store,
            screen: Screen::Overview,
            back: Vec::new(),
            analysis: None,
            index: Index::default(),
            busy: Some("loading the analysis".into()),
            analyzing: true,
            error: None,
            help: false,
            quit: false,
            parts: 0,
            focus: Focus::Heatmap,
            family: 0,
            heat: (0, 1),
            pair_cursor: 0,
            pair: None,
            filter: Filter::default(),
            searching: false,
            signature_cursor: 0,
            unstable_cursor: 0,
            signature_image_cursor: 0,
            image: None,
            image_paths: HashMap::new(),
            picker: ratatui_image::picker::Picker::halfblocks(),
            picture: RefCell::new(None),
            perf_cursor: 0,
            contrast_cursor: 0,
            sql_input:
                "SELECT tag, status, latency_p50_ms FROM cells_latest ORDER BY latency_p50_ms"
                    .into(),
            sql_editing: false,
            sql_result: None,
            sql_scroll: 0,
            sql_history: Vec::new(),
        }
    }

    /// The cells of the family shown in the overview.
    pub fn family_cells(&self) -> &[usize] {
        self.analysis
            .as_ref()
            .and_then(|a| a.groups.get(self.family))
            .map_or(&[], |g| g.cells.as_slice())
    }

    /// Maps a key to an action, given the current mode (typing captures characters).
    pub fn action_for(&self, key: KeyEvent) -> Option<Action> {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        if ctrl && key.code == KeyCode::Char('c') {
            return Some(Action::Quit);
        }
        if self.searching || (self.screen == Screen::Sql && self.sql_editing) {
            if ctrl && key.code == KeyCode::Char('u') {
                return Some(Action::ClearInput);
            }
            return match key.code {
                KeyCode::Enter => Some(Action::Submit),
                KeyCode::Esc => Some(Action::Back),
                KeyCode::Backspace => Some(Action::Backspace),
                KeyCode::Up if self.sql_editing => Some(Action::Up),
                KeyCode::Char(c) => Some(Action::Input(c)),
                _ => None,
            };
        }
        if self.help {
            return Some(Action::ToggleHelp);
        }
        Some(match key.code {
            KeyCode::Char('q') => Action::Quit,
            KeyCode::Tab => Action::NextScreen,
            KeyCode::BackTab => Action::PrevScreen,
            KeyCode::Up | KeyCode::Char('k') => Action::Up,
            KeyCode::Down | KeyCode::Char('j') => Action::Down,
            KeyCode::Left | KeyCode::Char('h') => Action::Left,
            KeyCode::Right | KeyCode::Char('l') => Action::Right,
            KeyCode::PageUp => Action::PageUp,
            KeyCode::PageDown => Action::PageDown,
            KeyCode::Home | KeyCode::Char('g') => Action::Top,
            KeyCode::End | KeyCode::Char('G') => Action::Bottom,
            KeyCode::Enter => Action::Enter,
            KeyCode::Esc | KeyCode::Backspace => Action::Back,
            KeyCode::Char('?') => Action::ToggleHelp,
            KeyCode::Char('/') => Action::StartSearch,
            KeyCode::Char(' ') => Action::SwitchFocus,
            KeyCode::Char('f') => Action::CycleFamily,
            KeyCode::Char('c') => Action::CycleClass,
            KeyCode::Char('d') => Action::CycleDimension,
            KeyCode::Char('x') => Action::CycleCell,
            KeyCode::Char('0') => Action::ClearFilters,
            KeyCode::Char('e') | KeyCode::Char('i') if self.screen == Screen::Sql => {
                Action::EditSql
            }
            KeyCode::Char('L') if self.screen == Screen::Image => Action::Localize,
            _ => return None,
        })
    }

    /// Applies an action; returns work for the background thread, if any.
    pub fn update(&mut self, action: Action) -> Option<Request> {
        match action {
            Action::Quit => self.quit = true,
            Action::ToggleHelp => self.help = !self.help,
            Action::NextScreen | Action::PrevScreen => {
                let current = Screen::TABS
                    .iter()
                    .position(|s| *s == self.screen)
                    .unwrap_or(0);
                let n = Screen::TABS.len();
                let next = if matches!(action, Action::NextScreen) {
                    (current + 1) % n
                } else {
                    (current + n - 1) % n
                };
                self.back.clear();
                self.screen = Screen::TABS[next];
                self.focus = match self.screen {
                    Screen::Disagreements => Focus::Signatures,
                    _ => Focus::Heatmap,
                };
            }
            Action::Back => return self.back_out(),
            Action::Analyzed(result) => {
                self.busy = None;
                self.analyzing = false;
                match result {
                    Ok(a) => {
                        self.parts = a.parts;
                        self.family = self.family.min(a.groups.len().saturating_sub(1));
                        self.index = Index::new(&a);
                        self.analysis = Some(a);
                        self.error = None;
                        self.clamp();
                        // A localisation may have arrived for the open image.
                        return self.refresh_curve();
                    }
                    Err(e) => self.error = Some(e),
                }
            }
            Action::Localize => return self.localize(),
            Action::Localized(result) => {
                self.busy = None;
                if let Err(e) = result {
                    self.error = Some(e);
                }
            }
            Action::ImagePaths(paths) => self.image_paths = paths,
            Action::ImageLoaded(id, result, picture) => {
                let members: Vec<usize> = self
                    .image
                    .as_ref()
                    .and_then(|v| self.analysis.as_ref()?.groups.get(v.group))
                    .map(|g| g.cells.clone())
                    .unwrap_or_default();
                if let Some(view) = self.image.as_mut().filter(|v| v.image_id == id) {
                    match result {
                        // The image's rows in this family only (others ran it too).
                        Ok(rows) => {
                            view.rows = Some(
                                rows.into_iter()
                                    .filter(|r| members.contains(&r.cell))
                                    .collect(),
                            )
                        }
                        Err(e) => view.error = Some(e),
                    }
                    view.picture = picture;
                }
            }
            Action::CurveLoaded(id, localization, result) => {
                if let Some(view) = self.image.as_mut().filter(|v| v.image_id == id)
                    && let Some((shown, points)) = view.curve.as_mut()
                    && shown.localization_id == localization
                {
                    match result {
                        Ok(p) => *points = p,
                        Err(e) => view.error = Some(format!("node errors: {e}")),
                    }
                }
            }
            Action::SqlDone(result) => {
                self.busy = None;
                self.sql_scroll = 0;
                self.sql_result = Some(result);
            }
            Action::PartsChanged(parts) => {
                if parts != self.parts && !self.analyzing {
                    self.parts = parts;
                    self.analyzing = true;
                    self.busy = Some(format!("store changed ({parts} parts): re-analysing"));
                    return Some(Request::Analyze);
                }
            }
            Action::StartSearch if self.screen == Screen::Disagreements => {
                self.searching = true;
            }
            Action::Input(c) => {
                if self.searching {
                    self.filter.search.push(c);
                    self.reset_disagreement_cursors();
                } else if self.sql_editing {
                    self.sql_input.push(c);
                }
            }
            Action::Backspace => {
                if self.searching {
                    self.filter.search.pop();
                    self.reset_disagreement_cursors();
                } else if self.sql_editing {
                    self.sql_input.pop();
                }
            }
            Action::ClearInput => {
                if self.searching {
                    self.filter.search.clear();
                    self.reset_disagreement_cursors();
                } else if self.sql_editing {
                    self.sql_input.clear();
                }
            }
            Action::Submit => {
                if self.searching {
                    self.searching = false;
                } else if self.sql_editing {
                    let sql = self.sql_input.trim().to_string();
                    if !sql.is_empty() {
                        self.sql_editing = false;
                        self.sql_history.push(sql.clone());
                        self.busy = Some("running SQL".into());
                        return Some(Request::Sql(sql));
                    }
                }
            }
            Action::EditSql => self.sql_editing = true,
            Action::CycleFamily => self.cycle_family(),
            Action::CycleClass => self.cycle_class(),
            Action::CycleDimension => {
                let dims = Dimension::ALL;
                self.filter.dimension = match self.filter.dimension {
                    None => Some(dims[0]),
                    Some(d) => dims
                        .iter()
                        .position(|x| *x == d)
                        .and_then(|i| dims.get(i + 1))
                        .copied(),
                };
                self.reset_disagreement_cursors();
            }
            Action::CycleCell => {
                let n = self.analysis.as_ref().map_or(0, |a| a.cells.len());
                self.filter.cell = match self.filter.cell {
                    None if n > 0 => Some(0),
                    Some(c) if c + 1 < n => Some(c + 1),
                    _ => None,
                };
                self.reset_disagreement_cursors();
            }
            Action::ClearFilters => {
                self.filter = Filter::default();
                self.reset_disagreement_cursors();
            }
            Action::SwitchFocus => {
                self.focus = match self.focus {
                    Focus::Signatures => Focus::Unstable,
                    Focus::Unstable => Focus::Signatures,
                    other => other,
                };
            }
            Action::Enter => return self.enter(),
            Action::Up
            | Action::Down
            | Action::Left
            | Action::Right
            | Action::PageUp
            | Action::PageDown
            | Action::Top
            | Action::Bottom => {
                if self.sql_editing && matches!(action, Action::Up) {
                    if let Some(last) = self.sql_history.last() {
                        self.sql_input = last.clone();
                    }
                } else {
                    self.navigate(&action);
                }
            }
            Action::Resize => {
                self.picture.borrow_mut().take();
            }
            Action::StartSearch => {}
        }
        None
    }

    fn back_out(&mut self) -> Option<Request> {
        if self.searching {
            self.searching = false;
            self.filter.search.clear();
            self.reset_disagreement_cursors();
        } else if self.sql_editing {
            self.sql_editing = false;
        } else if self.help {
            self.help = false;
        } else if self.screen == Screen::Image
            && let Some(previous) = self.back.pop()
        {
            self.screen = previous;
            self.image = None;
            self.picture.borrow_mut().take();
        } else if self.focus == Focus::PairImages {
            self.focus = Focus::Heatmap;
            self.pair = None;
        } else if self.focus == Focus::SignatureImages {
            self.focus = Focus::Signatures;
        } else if let Some(previous) = self.back.pop() {
            self.screen = previous;
            self.image = None;
            self.picture.borrow_mut().take();
        }
        None
    }

    /// The latest layer localisation of `image_id` between two cells of family `group`.
    fn localization_of(&self, image_id: &str, group: usize) -> Option<Localization> {
        let a = self.analysis.as_ref()?;
        let members = &a.groups.get(group)?.cells;
        let in_family = |id: &str| members.iter().any(|&c| a.cells[c].cell_id == id);
        a.localizations
            .iter()
            .rev()
            .find(|l| {
                l.kind == "layers"
                    && l.image_id.as_deref() == Some(image_id)
                    && in_family(&l.cell_a)
                    && in_family(&l.cell_b)
            })
            .cloned()
    }

    /// After a new analysis: when the open image has a newer localisation than the one shown,
    /// show it and load its curve.
    fn refresh_curve(&mut self) -> Option<Request> {
        let view = self.image.as_ref()?;
        let latest = self.localization_of(&view.image_id, view.group)?;
        if view
            .curve
            .as_ref()
            .is_some_and(|(l, _)| l.localization_id == latest.localization_id)
        {
            return None;
        }
        let request = Request::Image(
            view.image_id.clone(),
            view.path.clone(),
            Some(latest.localization_id.clone()),
        );
        if let Some(view) = self.image.as_mut() {
            view.curve = Some((latest, Vec::new()));
        }
        Some(request)
    }

    /// Asks for `deltann localize` on the open image: the family's reference cell (A) against
    /// the selected row's cell (B).
    fn localize(&mut self) -> Option<Request> {
        if let Some(busy) = &self.busy {
            self.error = Some(format!("busy ({busy}): try again when it is done"));
            return None;
        }
        let view = self.image.as_ref()?;
        let a = self.analysis.as_ref()?;
        let reference = *a.groups.get(view.group)?.cells.first()?;
        let selected = view.rows.as_ref()?.get(view.cursor)?.cell;
        if selected == reference {
            self.error = Some(format!(
                "#{} is the reference: select another cell to localise against it",
                reference + 1
            ));
            return None;
        }
        self.error = None;
        self.busy = Some(format!(
            "deltann localize: #{} vs #{} on this image (layers)",
            reference + 1,
            selected + 1
        ));
        Some(Request::Localize {
            cell_a: a.cells[reference].cell_id.clone(),
            cell_b: a.cells[selected].cell_id.clone(),
            image_id: view.image_id.clone(),
        })
    }

    /// Opens the image screen on `image_id` in family `group` (as Enter on an image does).
    pub fn open_image(&mut self, image_id: String, group: usize) -> Option<Request> {
        self.back.push(self.screen);
        self.screen = Screen::Image;
        self.picture.borrow_mut().take();
        let curve = self.localization_of(&image_id, group);
        let localization = curve.as_ref().map(|l| l.localization_id.clone());
        self.image = Some(ImageView {
            path: self.image_paths.get(&image_id).cloned(),
            image_id: image_id.clone(),
            group,
            rows: None,
            error: None,
            picture: None,
            cursor: 0,
            curve: curve.map(|l| (l, Vec::new())),
        });
        let path = self.image_paths.get(&image_id).cloned();
        Some(Request::Image(image_id, path, localization))
    }

    fn enter(&mut self) -> Option<Request> {
        match (self.screen, self.focus) {
            (Screen::Overview, Focus::Heatmap) => {
                let cells = self.family_cells();
                let (r, c) = self.heat;
                if let (Some(&a), Some(&b)) = (cells.get(r), cells.get(c))
                    && a != b
                {
                    self.pair = Some((a.min(b), a.max(b)));
                    self.pair_cursor = 0;
                    self.focus = Focus::PairImages;
                }
                None
            }
            (Screen::Overview, Focus::PairImages) => {
                let image = self.pair_images().get(self.pair_cursor).cloned()?;
                let family = self.family;
                self.open_image(image, family)
            }
            (Screen::Disagreements, Focus::Signatures) => {
                if !self.visible_signatures().is_empty() {
                    self.focus = Focus::SignatureImages;
                    self.signature_image_cursor = 0;
                }
                None
            }
            (Screen::Disagreements, Focus::SignatureImages) => {
                let sig = self
                    .visible_signatures()
                    .get(self.signature_cursor)
                    .copied()?;
                let a = self.analysis.clone()?;
                let s = &a.signatures[sig].signature;
                let image = s.examples.get(self.signature_image_cursor).cloned()?;
                self.open_image(image, s.group)
            }
            (Screen::Disagreements, Focus::Unstable) => {
                let u = self.visible_unstable().get(self.unstable_cursor).copied()?;
                let a = self.analysis.clone()?;
                let item = &a.disagreement.unstable[u];
                self.open_image(item.image_id.clone(), item.group)
            }
            (Screen::Sql, _) => {
                self.sql_editing = true;
                None
            }
            _ => None,
        }
    }

    /// The selected pair's flipped images (the first ones the analysis kept).
    pub fn pair_images(&self) -> Vec<String> {
        let (Some(a), Some((x, y))) = (&self.analysis, self.pair) else {
            return Vec::new();
        };
        a.disagreement
            .pairs
            .iter()
            .find(|p| (p.a == x && p.b == y) || (p.a == y && p.b == x))
            .map(|p| p.flipped.clone())
            .unwrap_or_default()
    }

    fn class_name(&self, group: usize, class: i32) -> String {
        self.analysis
            .as_ref()
            .and_then(|a| a.groups.get(group))
            .map_or_else(|| class.to_string(), |g| g.class_name(class))
    }

    /// Indices of the signatures that pass the filters.
    pub fn visible_signatures(&self) -> Vec<usize> {
        let Some(a) = &self.analysis else {
            return Vec::new();
        };
        let search = self.filter.search.to_lowercase();
        a.signatures
            .iter()
            .enumerate()
            .filter(|(i, s)| {
                let i = *i;
                let sig = &s.signature;
                self.filter.family.is_none_or(|f| sig.group == f)
                    && self.filter.cell.is_none_or(|c| sig.cells.contains(&c))
                    && self
                        .filter
                        .class
                        .is_none_or(|c| self.index.signature_classes[i].contains(&c))
                    && self
                        .filter
                        .dimension
                        .is_none_or(|d| Index::label_names(&s.label, d))
                    && (search.is_empty()
                        || sig
                            .examples
                            .iter()
                            .any(|e| e.to_lowercase().contains(&search))
                        || s.label.to_lowercase().contains(&search))
            })
            .map(|(i, _)| i)
            .collect()
    }

    /// Indices of the unstable images that pass the filters.
    pub fn visible_unstable(&self) -> Vec<usize> {
        let Some(a) = &self.analysis else {
            return Vec::new();
        };
        let search = self.filter.search.to_lowercase();
        a.disagreement
            .unstable
            .iter()
            .enumerate()
            .filter(|(i, u)| {
                let class = u.label.unwrap_or(u.majority);
                self.filter.family.is_none_or(|f| u.group == f)
                    && self.filter.class.is_none_or(|c| class == c)
                    && self.filter.cell.is_none_or(|c| u.deviating.contains(&c))
                    && self.filter.dimension.is_none_or(|d| {
                        self.index.unstable_signature[*i]
                            .is_some_and(|s| Index::label_names(&a.signatures[s].label, d))
                    })
                    && (search.is_empty()
                        || u.image_id.to_lowercase().contains(&search)
                        || self
                            .class_name(u.group, class)
                            .to_lowercase()
                            .contains(&search))
            })
            .map(|(i, _)| i)
            .collect()
    }

    fn cycle_family(&mut self) {
        let n = self.analysis.as_ref().map_or(0, |a| a.groups.len());
        if self.screen == Screen::Overview {
            if n > 0 {
                self.family = (self.family + 1) % n;
                self.heat = (0, 1);
                self.pair = None;
                self.focus = Focus::Heatmap;
            }
        } else {
            self.filter.family = match self.filter.family {
                None if n > 0 => Some(0),
                Some(f) if f + 1 < n => Some(f + 1),
                _ => None,
            };
            self.reset_disagreement_cursors();
        }
    }

    fn cycle_class(&mut self) {
        let Some(a) = &self.analysis else { return };
        let family = self.filter.family;
        let mut classes: Vec<i32> = a
            .disagreement
            .unstable
            .iter()
            .filter(|u| family.is_none_or(|f| u.group == f))
            .map(|u| u.label.unwrap_or(u.majority))
            .collect();
        classes.sort_unstable();
        classes.dedup();
        self.filter.class = match self.filter.class {
            None => classes.first().copied(),
            Some(c) => classes
                .iter()
                .position(|x| *x == c)
                .and_then(|i| classes.get(i + 1))
                .copied(),
        };
        self.reset_disagreement_cursors();
    }

    fn reset_disagreement_cursors(&mut self) {
        self.signature_cursor = 0;
        self.unstable_cursor = 0;
        self.signature_image_cursor = 0;
        if self.focus == Focus::SignatureImages {
            self.focus = Focus::Signatures;
        }
    }

    fn navigate(&mut self, action: &Action) {
        let step = |cursor: &mut usize, len: usize, action: &Action| {
            if len == 0 {
                *cursor = 0;
                return;
            }
            *cursor = match action {
                Action::Up => cursor.saturating_sub(1),
                Action::Down => (*cursor + 1).min(len - 1),
                Action::PageUp => cursor.saturating_sub(10),
                Action::PageDown => (*cursor + 10).min(len - 1),
                Action::Top => 0,
                Action::Bottom => len - 1,
                _ => *cursor,
            };
        };
        match (self.screen, self.focus) {
            (Screen::Overview, Focus::Heatmap) => {
                let n = self.family_cells().len();
                let (mut r, mut c) = self.heat;
                match action {
                    Action::Left => c = c.saturating_sub(1),
                    Action::Right => c = (c + 1).min(n.saturating_sub(1)),
                    _ => step(&mut r, n, action),
                }
                self.heat = (r, c);
            }
            (Screen::Overview, Focus::PairImages) => {
                let n = self.pair_images().len();
                step(&mut self.pair_cursor, n, action);
            }
            (Screen::Disagreements, Focus::Signatures) => {
                let n = self.visible_signatures().len();
                step(&mut self.signature_cursor, n, action);
            }
            (Screen::Disagreements, Focus::SignatureImages) => {
                let n = self
                    .visible_signatures()
                    .get(self.signature_cursor)
                    .and_then(|&i| {
                        self.analysis
                            .as_ref()
                            .map(|a| a.signatures[i].signature.examples.len())
                    })
                    .unwrap_or(0);
                step(&mut self.signature_image_cursor, n, action);
            }
            (Screen::Disagreements, Focus::Unstable) => {
                let n = self.visible_unstable().len();
                step(&mut self.unstable_cursor, n, action);
            }
            (Screen::Performance, _) => {
                let n = self.analysis.as_ref().map_or(0, |a| a.cells.len());
                if matches!(action, Action::Left | Action::Right) {
                    let m = self.analysis.as_ref().map_or(0, |a| a.contrasts.len());
                    let mut c = self.contrast_cursor;
                    step(
                        &mut c,
                        m,
                        if matches!(action, Action::Left) {
                            &Action::Up
                        } else {
                            &Action::Down
                        },
                    );
                    self.contrast_cursor = c;
                } else {
                    step(&mut self.perf_cursor, n, action);
                }
            }
            (Screen::Sql, _) => {
                let n = match &self.sql_result {
                    Some(Ok(r)) => r.rows.len(),
                    _ => 0,
                };
                step(&mut self.sql_scroll, n, action);
            }
            (Screen::Image, _) => {
                if let Some(view) = self.image.as_mut() {
                    let n = view.rows.as_ref().map_or(0, Vec::len);
                    step(&mut view.cursor, n, action);
                }
            }
            _ => {}
        }
    }

    /// Keeps cursors inside their lists after the data changed.
    fn clamp(&mut self) {
        let n = self.family_cells().len();
        self.heat = (
            self.heat.0.min(n.saturating_sub(1)),
            self.heat.1.min(n.saturating_sub(1)),
        );
        let signatures = self.visible_signatures().len();
        self.signature_cursor = self.signature_cursor.min(signatures.saturating_sub(1));
        let unstable = self.visible_unstable().len();
        self.unstable_cursor = self.unstable_cursor.min(unstable.saturating_sub(1));
    }
}

/// Lookups from the analysis that the disagreement filters need on every key press, built once
/// when an analysis arrives.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Index {
    /// For each unstable image, its deviation signature (index into `Analysis::signatures`).
    pub unstable_signature: Vec<Option<usize>>,
    /// For each signature, the classes (ground truth, else majority) of its images.
    pub signature_classes: Vec<Vec<i32>>,
}

impl Index {
    pub fn new(a: &Analysis) -> Self {
        let by_cells: HashMap<(usize, &[usize]), usize> = a
            .signatures
            .iter()
            .enumerate()
            .map(|(i, s)| ((s.signature.group, s.signature.cells.as_slice()), i))
            .collect();
        let mut signature_classes = vec![Vec::new(); a.signatures.len()];
        let unstable_signature = a
            .disagreement
            .unstable
            .iter()
            .map(|u| {
                let s = by_cells.get(&(u.group, u.deviating.as_slice())).copied();
                if let Some(s) = s {
                    let classes: &mut Vec<i32> = &mut signature_classes[s];
                    let class = u.label.unwrap_or(u.majority);
                    if !classes.contains(&class) {
                        classes.push(class);
                    }
                }
                s
            })
            .collect();
        Self {
            unstable_signature,
            signature_classes,
        }
    }

    /// Whether a signature's label names dimension `d` (its deviating cells share a value of it).
    pub fn label_names(label: &str, d: Dimension) -> bool {
        let key = format!("{}=", d.name());
        label.split(", ").any(|part| part.starts_with(&key))
    }
}
