//! The real `deltann tui` in a real terminal: tmux runs it, keys are sent, the screen is
//! captured. Checks that the heatmap, an image's top-5 table and an SQL result appear, and that
//! quitting restores the terminal. Skips, saying so, where tmux is not installed (.ci/run
//! installs it).

use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::{self, text};

/// A tmux server of its own (killed on drop) with one session, `t`.
pub struct Tmux {
    socket: String,
}

impl Tmux {
    /// A server on a socket named after this process and `tag`, running `command` in a
    /// `width` x `height` window; `None` (saying so) where tmux is not installed.
    pub fn start(tag: &str, command: &str, width: u16, height: u16) -> Option<Self> {
        if Command::new("tmux").arg("-V").output().is_err() {
            eprintln!("SKIPPED: tmux is not installed (apt-get install tmux)");
            return None;
        }
        let tmux = Tmux {
            socket: format!("deltann-{tag}-{}", std::process::id()),
        };
        let (w, h) = (width.to_string(), height.to_string());
        let out = tmux.cmd(&["new-session", "-d", "-s", "t", "-x", &w, "-y", &h, command]);
        assert!(out.status.success(), "{}", text(&out));
        Some(tmux)
    }

    fn cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap()
    }

    pub fn capture(&self) -> String {
        String::from_utf8_lossy(&self.cmd(&["capture-pane", "-p", "-t", "t"]).stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "t"];
        args.extend_from_slice(keys);
        self.cmd(&args);
    }

    /// Waits until the screen shows `needle`, returning the screen.
    pub fn wait_for(&self, needle: &str) -> String {
        let started = Instant::now();
        loop {
            let screen = self.capture();
            if screen.contains(needle) {
                return screen;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "`{needle}` never appeared; screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

#[test]
fn tui_in_a_real_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s");
    let out = util::run(&["synth", "--small", store.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));

    let command = format!(
        "DELTANN_TUI_IMAGES=halfblocks {} tui {}; echo TUI-EXIT-$?; sleep 60",
        env!("CARGO_BIN_EXE_deltann"),
        store.display()
    );
    let Some(tmux) = Tmux::start("tui", &command, 120, 40) else {
        return;
    };

    // The overview: heatmap and the attribution table (which may be drawn a moment after the
    // heatmap, while the status line still says the analysis is loading: wait for both).
    tmux.wait_for("Flip rate: family0");
    let screen = tmux.wait_for("precision");
    assert!(
        screen.contains("What explains the flips") && screen.contains("precision"),
        "{screen}"
    );
    let heat_rows = screen
        .lines()
        .filter(|l| l.matches("██").count() >= 4)
        .count();
    assert!(heat_rows >= 5, "no heatmap rows:\n{screen}");
    // In colour: the pane holds foreground colour escapes.
    let styled =
        String::from_utf8_lossy(&tmux.cmd(&["capture-pane", "-e", "-p", "-t", "t"]).stdout)
            .into_owned();
    assert!(styled.contains("\u{1b}[3"), "no colours:\n{styled}");

    // Disagreements -> unstable images -> an image's top-5 in every cell.
    tmux.keys(&["Tab"]);
    tmux.wait_for("Deviation signatures");
    tmux.keys(&["Space", "Enter"]);
    // The header shows at once, the rows when the lookup in the derived tables returns.
    let screen = tmux.wait_for("Top-5 in every cell");
    assert!(screen.contains("vs reference"), "{screen}");
    for rank in ["top-1", "top-2", "top-3", "top-4", "top-5"] {
        assert!(screen.contains(rank), "no {rank} column:\n{screen}");
    }
    assert!(screen.contains("truth"), "{screen}");
    // The answers panel names the selected cell's five classes with their probabilities.
    let named = screen
        .lines()
        .filter(|l| l.contains("│.") || l.contains("│1.00"))
        .count();
    assert!(named >= 5, "{screen}");

    // Back, then the SQL screen: type a query, see its result.
    tmux.keys(&["Escape"]);
    tmux.wait_for("Deviation signatures");
    tmux.keys(&["BTab", "BTab"]);
    tmux.wait_for("SQL (e or Enter to edit)");
    tmux.keys(&["e"]);
    tmux.keys(&["C-u"]);
    tmux.keys(&["-l", "SELECT count(*) AS n FROM cells_latest"]);
    tmux.keys(&["Enter"]);
    let screen = tmux.wait_for("1 rows in");
    assert!(screen.contains("│n") && screen.contains("│37"), "{screen}");

    // An SQL error is shown in place.
    tmux.keys(&["e"]);
    tmux.keys(&["C-u"]);
    tmux.keys(&["-l", "SELEC 1"]);
    tmux.keys(&["Enter"]);
    tmux.wait_for("syntax error");

    // q quits and the shell's screen is back (the alternate screen is gone).
    tmux.keys(&["q"]);
    let screen = tmux.wait_for("TUI-EXIT-0");
    assert!(
        !screen.contains("syntax error") && !screen.contains("Overview"),
        "{screen}"
    );
}

#[test]
fn sql_shell_in_a_real_terminal_keeps_history() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s");
    let out = util::run(&["synth", "--small", store.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let state = dir.path().join("state");
    let command = format!(
        "XDG_STATE_HOME={} {} sql {}; echo SQL-EXIT-$?; sleep 60",
        state.display(),
        env!("CARGO_BIN_EXE_deltann"),
        store.display()
    );
    let Some(tmux) = Tmux::start("sql", &command, 120, 40) else {
        return;
    };
    tmux.wait_for("deltann>");
    // A statement over two lines: the prompt changes until the ';'.
    tmux.keys(&["-l", "SELECT count(*) AS n"]);
    tmux.keys(&["Enter"]);
    tmux.wait_for("->");
    tmux.keys(&["-l", "FROM cells WHERE status = 'failed'"]);
    // tmux reads an argument ending in ';' as a command separator: send it escaped.
    tmux.keys(&["\\;", "Enter"]);
    let screen = tmux.wait_for("1 row in");
    assert!(screen.contains("│ 1 │"), "{screen}");
    tmux.keys(&["-l", "\\d errors"]);
    tmux.keys(&["Enter"]);
    tmux.wait_for("stage");
    tmux.keys(&["-l", "\\q"]);
    tmux.keys(&["Enter"]);
    tmux.wait_for("SQL-EXIT-0");
    let history = std::fs::read_to_string(state.join("deltann/sql_history")).unwrap();
    assert!(
        history.contains("FROM cells WHERE status = 'failed';"),
        "{history}"
    );
}

#[test]
fn overview_of_a_collected_family_shows_its_whole_title_and_legend() {
    // Nine cells of one family with a long name, as `make demo` gives: the heatmap needs more
    // than its squares for its title and legend.
    util::ort_library("1.32.0");
    let dir = tempfile::tempdir().unwrap();
    let sweep = util::data_sweep(
        dir.path(),
        r#"
engine = ["ort", "tract"]
ort_library = ["1.32.0"]
ort_optimization = ["disabled", "basic", "extended", "all"]
tract_plan = ["optimized"]
threads = [1, 2]
exclude = [{ engine = "tract", threads = 2 }]
"#,
    );
    let out = util::run(&["collect", "--quiet", sweep.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let command = format!(
        "DELTANN_TUI_IMAGES=halfblocks {} tui {}; sleep 60",
        env!("CARGO_BIN_EXE_deltann"),
        dir.path().join("store").display()
    );
    let Some(tmux) = Tmux::start("fit", &command, 160, 48) else {
        return;
    };
    let screen = tmux.wait_for("more ██");
    assert!(
        screen.contains("Flip rate: efficientnet-lite0 (f: next family)"),
        "{screen}"
    );
    assert!(
        screen.contains("0 ██ ≤1% ██ ≤5% ██ ≤10% ██ more ██"),
        "{screen}"
    );
    // The cells table beside it still shows whole environments.
    assert!(screen.contains("fp32 ort:extended t2 b1"), "{screen}");
}
