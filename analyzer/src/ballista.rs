//! SQL over a store run on an Apache Ballista cluster, for stores whose queries outgrow one
//! machine.
//!
//! The statement is planned here and its plan sent to the scheduler, which splits it into stages
//! for the executors; the executors read the store's Parquet files themselves, so they must see
//! the store at the same path (a shared file system, or the same machine). The tables are the
//! local session's (see [`crate::context`]), but as plain Parquet listings that a plan can carry
//! to another process: each table's folder (`outputs` with its `model` and `engine`
//! partitions), the derived tables' folders, and `pairs` written as a Parquet file beside them.
//! A listing reads every file in a table's folder, as DuckDB or Spark would: what a crash can
//! leave there is removed by the next `collect` (or `store repair`), so read a store that no
//! collector is writing to, or accept the part a commit in flight may add.
//!
//! Executors must know deltann's SQL functions (`logits_values`): `deltann ballista executor`
//! is Ballista's executor with them registered.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ballista::prelude::{SessionConfigExt, SessionContextExt};
use datafusion::arrow::datatypes::DataType;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::execution::SessionStateBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use deltann_store::Table;

use crate::context::{Output, VIEWS};
use crate::derived::{self, DerivedTable};
use crate::error::{Error, Result};
use crate::provider::PairsTable;

/// Stack of the threads that plan, serialise and run Ballista plans: they recurse once per plan
/// node, and the saved queries' window functions and self-joins overflowed the default 2 MiB.
pub const STACK_BYTES: usize = 32 << 20;

/// The file `pairs` is written to for the executors, under the derived folder.
pub const PAIRS_FILE: &str = "ballista-pairs.parquet";

/// A SQL session whose statements run on a Ballista cluster.
pub struct BallistaSession {
    ctx: SessionContext,
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for BallistaSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BallistaSession").finish_non_exhaustive()
    }
}

/// The session state deltann's functions are registered in, for clients and executors alike.
pub fn session_state() -> datafusion::execution::SessionState {
    let state = SessionStateBuilder::new()
        .with_config(SessionConfig::new_with_ballista().with_information_schema(true))
        .with_default_features()
        .build();
    let ctx = SessionContext::new_with_state(state);
    crate::udf::register(&ctx);
    ctx.state()
}

impl BallistaSession {
    /// Connects to the scheduler at `url` (`df://HOST:PORT`) and registers the store's tables,
    /// after folding in what was committed since the last analysis.
    ///
    /// # Errors
    /// Fails when the store cannot be read or analysed, or the scheduler cannot be reached.
    pub fn open(root: &Path, url: &str) -> Result<Self> {
        let store = deltann_store::Store::open(root)?;
        let root = std::fs::canonicalize(root)
            .map_err(|e| Error::Io(format!("{}: cannot resolve the path: {e}", root.display())))?;
        derived::advance(&store, false, &mut |_| {})?;
        write_pairs(&root)?;
        let (ctx, runtime) = connect(url)?;
        for table in Table::ALL {
            let partitions: Vec<(String, DataType)> = table
                .partition_keys()
                .iter()
                .map(|k| (k.to_string(), DataType::Utf8))
                .collect();
            register(
                &ctx,
                table.name(),
                &root.join(table.name()),
                deltann_store::schema::schema(table),
                partitions,
            )?;
        }
        for table in DerivedTable::ALL {
            register(
                &ctx,
                table.name(),
                &root.join(derived::DIR).join(table.name()),
                table.schema(),
                Vec::new(),
            )?;
        }
        register(
            &ctx,
            PairsTable::NAME,
            &root.join(derived::DIR).join(PAIRS_FILE),
            PairsTable::table_schema(),
            Vec::new(),
        )?;
        for (name, sql) in VIEWS {
            runtime.block_on(ctx.sql(&format!("CREATE VIEW {name} AS {sql}")))?;
        }
        Ok(Self { ctx, runtime })
    }

    /// Runs every statement of `sql` on the cluster.
    ///
    /// # Errors
    /// Fails on the first statement that does not plan or run.
    pub fn run(&self, sql: &str) -> Result<Vec<Output>> {
        let mut out = Vec::new();
        for statement in crate::context::Session::parse(sql)? {
            let started = std::time::Instant::now();
            let batches = self.runtime.block_on(async {
                let frame = self.ctx.sql(&statement.to_string()).await?;
                let schema = Arc::new(frame.schema().as_arrow().clone());
                let mut batches = frame.collect().await?;
                // No rows still has columns (the local session returns one empty batch).
                if batches.is_empty() && !schema.fields().is_empty() {
                    batches.push(datafusion::arrow::array::RecordBatch::new_empty(schema));
                }
                Ok::<_, datafusion::error::DataFusionError>(batches)
            })?;
            out.push(Output {
                rows: batches.iter().map(|b| b.num_rows()).sum(),
                batches,
                elapsed: started.elapsed(),
            });
        }
        Ok(out)
    }
}

/// Rebuilds the store's derived tables on the cluster at `url` (see
/// [`crate::derived::distributed`]).
///
/// # Errors
/// Fails when the store cannot be read or written, the scheduler cannot be reached, or the
/// cluster fails the build's queries.
pub fn rebuild_derived(
    root: &Path,
    url: &str,
    progress: &mut dyn FnMut(derived::distributed::Received),
) -> Result<derived::Advance> {
    let root = std::fs::canonicalize(root)
        .map_err(|e| Error::Io(format!("{}: cannot resolve the path: {e}", root.display())))?;
    let store = deltann_store::Store::open(&root)?;
    let (ctx, runtime) = connect(url)?;
    derived::distributed::rebuild(&store, &ctx, &runtime, &register_files, progress)
}

/// A session on the cluster at `url`, with the runtime its calls block on.
fn connect(url: &str) -> Result<(SessionContext, tokio::runtime::Runtime)> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_stack_size(STACK_BYTES)
        .enable_all()
        .build()
        .map_err(|e| Error::Io(format!("cannot start the query runtime: {e}")))?;
    let ctx = runtime
        .block_on(SessionContext::remote_with_state(url, session_state()))
        .map_err(|e| Error::Io(format!("cannot reach the Ballista scheduler {url}: {e}")))?;
    // Ballista's session keeps only its own list of functions: deltann's go back in.
    crate::udf::register(&ctx);
    Ok((ctx, runtime))
}

/// Registers exactly the Parquet files `paths` as `name`.
fn register_files(
    ctx: &SessionContext,
    name: &str,
    paths: &[PathBuf],
    schema: datafusion::arrow::datatypes::SchemaRef,
) -> Result<()> {
    let urls = paths
        .iter()
        .map(|p| ListingTableUrl::parse(p.to_string_lossy()))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let options =
        ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
    let config = ListingTableConfig::new_with_multi_paths(urls)
        .with_listing_options(options)
        .with_schema(schema);
    ctx.register_table(name, Arc::new(ListingTable::try_new(config)?))?;
    Ok(())
}

/// Registers the Parquet files at `path` (a folder, or one file) as `name`.
fn register(
    ctx: &SessionContext,
    name: &str,
    path: &Path,
    schema: datafusion::arrow::datatypes::SchemaRef,
    partitions: Vec<(String, DataType)>,
) -> Result<()> {
    // An empty table still needs its folder for the listing.
    if path.extension().is_none() {
        std::fs::create_dir_all(path)
            .map_err(|e| Error::Io(format!("{}: cannot create: {e}", path.display())))?;
    }
    let mut text = path.to_string_lossy().into_owned();
    if path.is_dir() && !text.ends_with('/') {
        text.push('/');
    }
    let url = ListingTableUrl::parse(&text)?;
    let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
        .with_file_extension(".parquet")
        .with_table_partition_cols(partitions);
    let config = ListingTableConfig::new(url)
        .with_listing_options(options)
        .with_schema(schema);
    ctx.register_table(name, Arc::new(ListingTable::try_new(config)?))?;
    Ok(())
}

/// Writes `pairs` (from the derived state) as a Parquet file the executors can read: a
/// temporary file renamed into place.
fn write_pairs(root: &Path) -> Result<PathBuf> {
    let dir = root.join(derived::DIR);
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::Io(format!("{}: cannot create: {e}", dir.display())))?;
    let batch = PairsTable::new(root.to_path_buf(), Default::default()).snapshot()?;
    let path = dir.join(PAIRS_FILE);
    let tmp = dir.join(format!("{PAIRS_FILE}.tmp"));
    let file = std::fs::File::create(&tmp)
        .map_err(|e| Error::Io(format!("{}: cannot create: {e}", tmp.display())))?;
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None)
        .map_err(|e| Error::Io(format!("{}: {e}", tmp.display())))?;
    writer
        .write(&batch)
        .and_then(|()| writer.close().map(|_| ()))
        .map_err(|e| Error::Io(format!("{}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, &path)
        .map_err(|e| Error::Io(format!("{}: cannot rename: {e}", path.display())))?;
    Ok(path)
}
