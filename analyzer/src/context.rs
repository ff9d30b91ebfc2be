//! The SQL session over a store: its tables, its views, and the read-only rule.
//!
//! Every store table is registered as a [`StoreTable`] (committed parts only, re-listed per
//! query), plus views for what people ask most: `cells_latest` (each cell's latest attempt) and
//! `predictions` (every output row with its cell's environment). Statements that could write or
//! delete files (INSERT, COPY TO) are refused unless the session was opened with `allow_write`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::{DFParser, Statement};
use deltann_store::Table;

use crate::derived::DerivedTable;
use crate::error::{Error, Result};
use crate::provider::{PairsTable, Pin, SharedPin, Source, StoreTable};

/// Views registered next to the tables. Kept here, in SQL, so `\d` shows what they are.
pub const VIEWS: [(&str, &str); 2] = [
    (
        "cells_latest",
        "SELECT * EXCLUDE (attempt_rank) FROM ( \
           SELECT *, row_number() OVER (PARTITION BY cell_id ORDER BY attempt DESC) AS attempt_rank \
           FROM cells) WHERE attempt_rank = 1",
    ),
    (
        "predictions",
        "SELECT o.cell_id, o.image_id, o.image_sha256, o.label, o.repetition, o.top1, o.top1_prob, \
           o.top5, o.top5_prob, o.logits_hash, o.latency_ns, o.batch_latency_ns, \
           c.tag, c.model, c.family, c.precision, c.engine, c.engine_version, c.ort_optimization, \
           c.tract_plan, c.threads, c.batch_size, c.resize_filter, c.status, c.device, \
           c.engine_settings, c.preprocess \
         FROM outputs o JOIN cells_latest c ON o.cell_id = c.cell_id",
    ),
];

/// Result of one statement.
#[derive(Debug)]
pub struct Output {
    pub batches: Vec<RecordBatch>,
    pub rows: usize,
    pub elapsed: Duration,
}

/// A SQL session over one store. It runs one statement at a time; all the tables a statement
/// reads see one snapshot of the store.
pub struct Session {
    ctx: SessionContext,
    root: PathBuf,
    allow_write: bool,
    pin: SharedPin,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

/// A tokio runtime for DataFusion; the analyzer's API is synchronous.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Io(format!("cannot start the query runtime: {e}")))
}

impl Session {
    /// Opens the store at `root` for SQL.
    ///
    /// # Errors
    /// Fails when `root` is not a deltann store.
    pub fn open(root: &Path, allow_write: bool) -> Result<Self> {
        deltann_store::Store::open(root)?;
        // DataFusion's local object store resolves file paths from `/`, so a relative store path
        // (`deltann query results ...`) must become absolute before parts are listed, and
        // without `..` (an object-store path keeps it as a literal `%2E%2E` folder).
        let root = &std::fs::canonicalize(root)
            .map_err(|e| Error::Io(format!("{}: cannot resolve the path: {e}", root.display())))?;
        // Parquet filter pushdown (late materialisation) stays off, DataFusion's default: on the
        // one-million-row benchmark store it made the flip matrix 25% slower, and point lookups
        // (one image in every cell) are pruned by row-group statistics either way.
        let config = SessionConfig::new().with_information_schema(true);
        let ctx = SessionContext::new_with_config(config);
        crate::udf::register(&ctx);
        let pin = SharedPin::default();
        let sources = Table::ALL
            .into_iter()
            .map(Source::Store)
            .chain(DerivedTable::ALL.into_iter().map(Source::Derived));
        for source in sources {
            ctx.register_table(
                source.name(),
                Arc::new(StoreTable::new(root.to_path_buf(), source, pin.clone())),
            )?;
        }
        ctx.register_table(
            PairsTable::NAME,
            Arc::new(PairsTable::new(root.to_path_buf(), pin.clone())),
        )?;
        let session = Self {
            ctx,
            root: root.to_path_buf(),
            allow_write,
            pin,
        };
        let rt = runtime()?;
        for (name, sql) in VIEWS {
            rt.block_on(session.ctx.sql(&format!("CREATE VIEW {name} AS {sql}")))?;
        }
        Ok(session)
    }

    /// The store directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The DataFusion context (for callers that build plans themselves).
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// Splits SQL text into statements (`;`-separated), reporting syntax errors with position.
    ///
    /// # Errors
    /// Returns the parser's message, which names the line and column.
    pub fn parse(sql: &str) -> Result<Vec<Statement>> {
        Ok(DFParser::parse_sql(sql)?.into_iter().collect())
    }

    /// Runs every statement of `sql`, returning each one's result.
    ///
    /// # Errors
    /// Fails on the first statement that does not parse, plan or run, or that would write files
    /// in a read-only session.
    pub async fn run(&self, sql: &str) -> Result<Vec<Output>> {
        let mut out = Vec::new();
        for statement in Self::parse(sql)? {
            Pin::begin(&self.pin, None);
            let result = self.run_statement(statement).await;
            Pin::end(&self.pin);
            out.push(result?);
        }
        Ok(out)
    }

    /// Runs every statement of `sql` on a given snapshot of the store (for example one taken
    /// earlier, or a view of some of its parts) instead of the manifest as it is now.
    ///
    /// # Errors
    /// As [`Session::run`].
    pub async fn run_on(&self, snapshot: &deltann_store::Store, sql: &str) -> Result<Vec<Output>> {
        let mut out = Vec::new();
        for statement in Self::parse(sql)? {
            Pin::begin(&self.pin, Some(snapshot.clone()));
            let result = self.run_statement(statement).await;
            Pin::end(&self.pin);
            out.push(result?);
        }
        Ok(out)
    }

    async fn run_statement(&self, statement: Statement) -> Result<Output> {
        let started = Instant::now();
        let state = self.ctx.state();
        let plan = state.statement_to_plan(statement).await?;
        let options = datafusion::execution::context::SQLOptions::new()
            .with_allow_ddl(true)
            .with_allow_dml(self.allow_write)
            .with_allow_statements(true);
        if let Err(e) = options.verify_plan(&plan) {
            return Err(Error::ReadOnly(format!(
                "{e}; the session is read-only: statements that write files (INSERT, COPY TO) \
                 need --allow-write"
            )));
        }
        // Views are the session's own; other DDL reads files outside the store (CREATE EXTERNAL
        // TABLE) or unregisters its tables (DROP TABLE outputs), which the TUI's screens use.
        if !self.allow_write
            && let datafusion::logical_expr::LogicalPlan::Ddl(ddl) = &plan
            && !matches!(
                ddl,
                datafusion::logical_expr::DdlStatement::CreateView(_)
                    | datafusion::logical_expr::DdlStatement::DropView(_)
            )
        {
            return Err(Error::ReadOnly(format!(
                "{} is refused in a read-only session (views are allowed); it needs \
                 --allow-write",
                ddl.name()
            )));
        }
        let df = self.ctx.execute_logical_plan(plan).await?;
        let schema = Arc::clone(df.schema().inner());
        let mut batches = df.collect().await?;
        // A query that returns no rows still has columns; DDL and statements have none.
        if batches.is_empty() && !schema.fields().is_empty() {
            batches.push(RecordBatch::new_empty(schema));
        }
        let rows = batches.iter().map(RecordBatch::num_rows).sum();
        Ok(Output {
            batches,
            rows,
            elapsed: started.elapsed(),
        })
    }

    /// Runs `sql` to completion on a private runtime.
    ///
    /// # Errors
    /// As [`Session::run`].
    pub fn run_blocking(&self, sql: &str) -> Result<Vec<Output>> {
        runtime()?.block_on(self.run(sql))
    }

    /// Names of tables and views.
    pub fn relations() -> Vec<&'static str> {
        let mut names: Vec<&str> = Table::ALL.iter().map(|t| t.name()).collect();
        names.extend(VIEWS.iter().map(|(n, _)| *n));
        names
    }
}

/// Finds `Line: L, Column: C` in an error message and draws a caret under that spot of `sql`.
pub fn point_at(sql: &str, message: &str) -> Option<String> {
    let at = message.find("Line: ")?;
    let rest = &message[at + 6..];
    let line: usize = rest.split(',').next()?.trim().parse().ok()?;
    let col_at = rest.find("Column: ")?;
    let column: usize = rest[col_at + 8..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()?;
    let text = sql.lines().nth(line.checked_sub(1)?)?;
    Some(format!("{text}\n{}^", " ".repeat(column.saturating_sub(1))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caret_points_at_the_error() {
        let sql = "SELECT *\nFRM cells";
        let shown = point_at(
            sql,
            "sql parser error: Expected: end of statement, found: cells at Line: 2, Column: 5",
        )
        .unwrap();
        assert_eq!(shown, "FRM cells\n    ^");
        assert!(point_at(sql, "no position here").is_none());
    }

    #[test]
    fn statements_split_and_syntax_errors_have_positions() {
        assert_eq!(Session::parse("SELECT 1; SELECT 2;").unwrap().len(), 2);
        let err = Session::parse("SELECT * FRM cells")
            .unwrap_err()
            .to_string();
        assert!(err.contains("Line: 1"), "{err}");
    }
}
