//! `deltann sql`: an interactive SQL shell over a store, in the manner of datafusion-cli and
//! DuckDB: statements end with `;` and may span lines, history persists across sessions,
//! backslash commands describe and configure, and input that is not a terminal (a file given
//! with -f, or a pipe) runs as a batch that stops at the first error.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;

use deltann_analyzer::context::{self, Session};
use deltann_analyzer::format::{self, PrintFormat};
use deltann_analyzer::queries;
use rustyline::DefaultEditor;
use rustyline::error::ReadlineError;

use super::SqlArgs;

const HELP: &str = "\
Statements end with ';' and may span lines. Commands:
  \\d              list tables and views
  \\d NAME         describe a table or view
  \\saved          list saved queries;  \\saved NAME  runs one
  \\format F       output format: table, csv, json, markdown
  \\maxrows N      show at most N rows (0: all)
  \\timing         toggle query timing
  \\q              quit (also Ctrl-D)
Tables: runs, models, images, cells, outputs, errors. Views: cells_latest (latest attempt of each
cell), predictions (outputs with their cell's environment). Read-only unless --allow-write.";

struct Shell {
    session: Session,
    format: PrintFormat,
    max_rows: Option<usize>,
    timing: bool,
}

impl Shell {
    /// Runs SQL and prints results; returns false on error (after printing it).
    fn execute(&self, sql: &str) -> bool {
        super::refresh_derived(self.session.root(), sql);
        match self.session.run_blocking(sql) {
            Ok(outputs) => {
                for o in outputs {
                    if !o.batches.is_empty() {
                        match format::render(&o.batches, self.format, self.max_rows) {
                            Ok(text) => println!("{text}"),
                            Err(e) => {
                                eprintln!("error: {e}");
                                return false;
                            }
                        }
                    }
                    if self.timing {
                        println!(
                            "{} row{} in {:.3}s",
                            o.rows,
                            if o.rows == 1 { "" } else { "s" },
                            o.elapsed.as_secs_f64()
                        );
                    }
                }
                true
            }
            Err(e) => {
                let message = e.to_string();
                eprintln!("error: {message}");
                if let Some(shown) = context::point_at(sql, &message) {
                    eprintln!("{shown}");
                }
                false
            }
        }
    }

    /// Runs a backslash command; returns `None` to quit, else whether it succeeded.
    fn command(&mut self, line: &str) -> Option<bool> {
        let mut words = line.split_whitespace();
        let cmd = words.next().unwrap_or_default();
        let arg = words.next();
        let ok = match (cmd, arg) {
            ("\\q" | "\\quit", _) => return None,
            ("\\?" | "\\h" | "\\help", _) => {
                println!("{HELP}");
                true
            }
            ("\\d", None) => self.execute(
                "SELECT table_name AS name, table_type AS kind FROM information_schema.tables \
                 WHERE table_schema = 'public' ORDER BY table_type, table_name;",
            ),
            ("\\d", Some(name)) => {
                let exists = || {
                    self.session
                        .run_blocking(&format!(
                            "SELECT 1 FROM information_schema.tables WHERE table_name = '{name}'"
                        ))
                        .is_ok_and(|o| o.iter().any(|o| o.rows > 0))
                };
                if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    eprintln!("error: `{name}` is not a table name");
                    false
                } else if !exists() {
                    eprintln!("error: no table or view `{name}` (\\d lists them)");
                    false
                } else {
                    self.execute(&format!(
                        "SELECT column_name AS column, data_type AS type, is_nullable AS nullable \
                         FROM information_schema.columns WHERE table_name = '{name}' \
                         ORDER BY ordinal_position;"
                    ))
                }
            }
            ("\\saved", None) => {
                super::query::list(&queries::Catalog::load());
                true
            }
            ("\\saved", Some(name)) => match queries::Catalog::load().get(name) {
                Some(q) => self.execute(&q.sql),
                None => {
                    eprintln!("error: no saved query `{name}` (\\saved lists them)");
                    false
                }
            },
            ("\\format", Some(f)) => match PrintFormat::from_name(f) {
                Some(f) => {
                    self.format = f;
                    true
                }
                None => {
                    eprintln!("error: formats are table, csv, json, markdown");
                    false
                }
            },
            ("\\maxrows", Some(n)) => match n.parse::<usize>() {
                Ok(0) => {
                    self.max_rows = None;
                    true
                }
                Ok(n) => {
                    self.max_rows = Some(n);
                    true
                }
                Err(_) => {
                    eprintln!("error: \\maxrows takes a number");
                    false
                }
            },
            ("\\timing", _) => {
                self.timing = !self.timing;
                println!("timing {}", if self.timing { "on" } else { "off" });
                true
            }
            _ => {
                eprintln!("error: unknown command `{line}` (\\? lists commands)");
                false
            }
        };
        Some(ok)
    }
}

fn history_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))?;
    Some(base.join("deltann").join("sql_history"))
}

/// Whether buffered input holds a complete statement: its last token, ignoring comments
/// (`-- ...` and `/* ... */`), is a `;` outside quotes.
fn complete(buffer: &str) -> bool {
    let (mut single, mut double) = (false, false);
    let mut last = None;
    let mut chars = buffer.chars().peekable();
    while let Some(c) = chars.next() {
        let quoted = single || double;
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '-' if !quoted && chars.peek() == Some(&'-') => {
                // A line comment: skip to the end of the line.
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
                continue;
            }
            '/' if !quoted && chars.peek() == Some(&'*') => {
                chars.next();
                let mut star = false;
                for c in chars.by_ref() {
                    if star && c == '/' {
                        break;
                    }
                    star = c == '*';
                }
                continue;
            }
            _ => {}
        }
        if !c.is_whitespace() {
            last = Some((c, single || double));
        }
    }
    matches!(last, Some((';', false)))
}

pub fn run(args: &SqlArgs) -> anyhow::Result<ExitCode> {
    let session = Session::open(&args.store, args.allow_write)?;
    let mut shell = Shell {
        session,
        format: args.format.into(),
        max_rows: (args.maxrows > 0).then_some(args.maxrows),
        timing: true,
    };

    // Batch mode: a file, or input that is not a terminal.
    let batch_input = match &args.file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?,
        ),
        None if !std::io::stdin().is_terminal() => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text)?;
            Some(text)
        }
        None => None,
    };
    if let Some(text) = batch_input {
        shell.timing = false;
        let mut buffer = String::new();
        for line in text.lines() {
            if buffer.trim().is_empty() && line.trim_start().starts_with('\\') {
                match shell.command(line.trim()) {
                    None => break,
                    Some(false) => return Ok(ExitCode::from(2)),
                    Some(true) => continue,
                }
            }
            buffer.push_str(line);
            buffer.push('\n');
            if complete(&buffer) {
                if !shell.execute(&buffer) {
                    return Ok(ExitCode::from(2));
                }
                buffer.clear();
            }
        }
        if !buffer.trim().is_empty() && !shell.execute(&buffer) {
            return Ok(ExitCode::from(2));
        }
        return Ok(ExitCode::SUCCESS);
    }

    let mut editor = DefaultEditor::new()?;
    let history = history_path();
    if let Some(h) = &history {
        let _ = editor.load_history(h);
        if let Some(dir) = h.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
    }
    // History is saved after every entry, so a shell killed mid-query keeps what was typed.
    let remember = |editor: &mut DefaultEditor, entry: &str| {
        let _ = editor.add_history_entry(entry);
        if let Some(h) = &history {
            let _ = editor.save_history(h);
        }
    };
    println!(
        "deltann sql on {} ({}). End statements with ';'. \\? for help, \\q to quit.",
        args.store.display(),
        if args.allow_write {
            "read-write"
        } else {
            "read-only"
        }
    );
    let mut buffer = String::new();
    loop {
        let prompt = if buffer.is_empty() {
            "deltann> "
        } else {
            "      -> "
        };
        match editor.readline(prompt) {
            Ok(line) => {
                if buffer.is_empty() && line.trim_start().starts_with('\\') {
                    remember(&mut editor, line.trim());
                    if shell.command(line.trim()).is_none() {
                        break;
                    }
                    continue;
                }
                if buffer.is_empty() && line.trim().is_empty() {
                    continue;
                }
                buffer.push_str(&line);
                buffer.push('\n');
                if complete(&buffer) {
                    remember(&mut editor, buffer.trim());
                    shell.execute(&buffer);
                    buffer.clear();
                }
            }
            Err(ReadlineError::Interrupted) => {
                buffer.clear();
                println!("^C (statement discarded)");
            }
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::complete;

    #[test]
    fn statements_end_at_a_semicolon_outside_quotes() {
        assert!(complete("SELECT 1;"));
        assert!(complete("SELECT 1;  \n"));
        assert!(!complete("SELECT ';'"));
        assert!(complete("SELECT ';';"));
        assert!(!complete("SELECT 1"));
        assert!(!complete("SELECT \"a;\""));
    }

    #[test]
    fn comments_do_not_hide_or_fake_the_end() {
        assert!(complete("SELECT 1; -- done"));
        assert!(complete("-- don't stop here\nSELECT 1;"));
        assert!(!complete("SELECT 1 -- ;"));
        assert!(complete("SELECT /* it's ; */ 1;"));
        assert!(!complete("SELECT 1 /* ; */"));
        assert!(complete("SELECT '--';"));
    }
}
