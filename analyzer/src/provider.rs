//! A DataFusion table over a store table's committed parts.
//!
//! The file list comes from the manifest: a statement sees exactly the parts committed when it
//! starts, never a file still being written, and a query run next to a live `collect` sees its
//! progress. Every table of one statement reads one snapshot of the manifest (see [`Pin`]): a join
//! of `cells_latest` and `outputs` cannot see a cell finished without its last part. Partition
//! values (`model`, `engine` for `outputs`) come from the part paths; equality and IN filters on
//! them prune files before anything is opened, and every other filter is left to DataFusion's
//! Parquet pushdown (row-group statistics, page index; the derived tables keep statistics only for
//! the columns listed in `DerivedTable::statistics_columns`). The derived tables (`comparisons`,
//! `cell_images`) are served the same way from the derived state's list of parts, and `pairs` (the
//! numbered pairs of cells, with their running counts) from the derived state itself.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::Session;
use datafusion::common::{DataFusionError, Result as DfResult, ScalarValue};
use datafusion::datasource::MemTable;
use datafusion::datasource::TableProvider;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::object_store::ObjectStoreUrl;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder};
use datafusion::datasource::table_schema::TableSchema;
use datafusion::logical_expr::{Expr, Operator, TableProviderFilterPushDown, TableType};
use datafusion::physical_expr::{PhysicalExpr, ScalarFunctionExpr, expressions::Column};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::projection::ProjectionExec;
use deltann_store::{Store, Table};

use crate::derived::{DerivedTable, tables};

/// Where a table's files come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A table of the store, from its manifest.
    Store(Table),
    /// A derived table, from `derived/state.json`.
    Derived(DerivedTable),
}

impl Source {
    /// The table's SQL name.
    pub fn name(self) -> &'static str {
        match self {
            Source::Store(t) => t.name(),
            Source::Derived(t) => t.name(),
        }
    }
}

/// The snapshot of the store's manifest (and of the derived state) that the tables of one
/// statement share, taken when the first of them is scanned. Outside a statement (`active`
/// false) every scan reads the manifest afresh.
#[derive(Debug, Default)]
pub struct Pin {
    active: bool,
    store: Option<Store>,
    derived: Option<crate::derived::State>,
}

/// A session's [`Pin`], shared by its tables.
pub type SharedPin = Arc<Mutex<Pin>>;

impl Pin {
    /// Starts a statement: its first scan takes the snapshot, or `store` when given.
    pub fn begin(pin: &SharedPin, store: Option<Store>) {
        let mut p = pin.lock().unwrap_or_else(PoisonError::into_inner);
        *p = Pin {
            active: true,
            store,
            derived: None,
        };
    }

    /// Ends a statement.
    pub fn end(pin: &SharedPin) {
        *pin.lock().unwrap_or_else(PoisonError::into_inner) = Pin::default();
    }

    fn store(pin: &SharedPin, root: &Path) -> DfResult<Store> {
        let mut p = pin.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = &p.store {
            return Ok(s.clone());
        }
        let store = Store::open(root).map_err(|e| DataFusionError::External(Box::new(e)))?;
        if p.active {
            p.store = Some(store.clone());
        }
        Ok(store)
    }

    fn derived(pin: &SharedPin, root: &Path) -> DfResult<crate::derived::State> {
        let mut p = pin.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = &p.derived {
            return Ok(s.clone());
        }
        let state = crate::derived::State::load(root)
            .map_err(|e| DataFusionError::External(Box::new(e)))?
            .unwrap_or_default();
        if p.active {
            p.derived = Some(state.clone());
        }
        Ok(state)
    }
}

/// One table of a store, as DataFusion sees it.
#[derive(Debug)]
pub struct StoreTable {
    root: PathBuf,
    table: Source,
    file_schema: SchemaRef,
    schema: SchemaRef,
    partition_keys: Vec<String>,
    pin: SharedPin,
}

impl StoreTable {
    /// The table `table` of the store at `root`, reading the snapshot `pin` holds.
    pub fn new(root: PathBuf, table: Source, pin: SharedPin) -> Self {
        let (file_schema, keys) = match table {
            Source::Store(t) => (deltann_store::schema::schema(t), t.partition_keys()),
            Source::Derived(t) => (t.schema(), &[][..]),
        };
        let partition_keys: Vec<String> = keys.iter().map(|k| (*k).to_string()).collect();
        let sql_schema = match table {
            Source::Derived(DerivedTable::Comparisons) => tables::comparisons_sql_schema(),
            _ => file_schema.clone(),
        };
        let mut fields: Vec<Field> = sql_schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.extend(
            partition_keys
                .iter()
                .map(|k| Field::new(k, DataType::Utf8, false)),
        );
        Self {
            root,
            table,
            file_schema,
            schema: Arc::new(Schema::new(fields)),
            partition_keys,
            pin,
        }
    }

    /// Committed files with their partition values, pruned by partition filters.
    fn files(&self, filters: &[Expr]) -> DfResult<Vec<PartitionedFile>> {
        let table = match self.table {
            Source::Store(t) => t,
            Source::Derived(t) => {
                let state = Pin::derived(&self.pin, &self.root)?;
                return Ok(state
                    .parts_of(t)
                    .map(|p| {
                        PartitionedFile::new(self.root.join(&p.path).display().to_string(), p.bytes)
                    })
                    .collect());
            }
        };
        let store = Pin::store(&self.pin, &self.root)?;
        let wanted = partition_constraints(filters, &self.partition_keys);
        let mut out = Vec::new();
        for part in store.parts(table) {
            let values = partition_values(&part.path, &self.partition_keys);
            let keep = wanted.iter().all(|(key, allowed)| {
                values
                    .get(key.as_str())
                    .is_some_and(|v| allowed.contains(v))
            });
            if !keep {
                continue;
            }
            let path = store.part_path(part);
            let file = PartitionedFile::new(path.display().to_string(), part.bytes)
                .with_partition_values(
                    self.partition_keys
                        .iter()
                        .map(|k| ScalarValue::Utf8(values.get(k.as_str()).cloned()))
                        .collect(),
                );
            out.push(file);
        }
        Ok(out)
    }
}

/// `key=value` directory components of a part path.
fn partition_values(path: &str, keys: &[String]) -> HashMap<String, String> {
    path.split('/')
        .filter_map(|c| c.split_once('='))
        .filter(|(k, _)| keys.iter().any(|key| key == k))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// From filters of the form `key = 'v'`, `'v' = key` or `key IN ('a', 'b')` on partition keys:
/// the allowed values per key.
fn partition_constraints(filters: &[Expr], keys: &[String]) -> Vec<(String, Vec<String>)> {
    let column = |e: &Expr| match e {
        Expr::Column(c) if keys.contains(&c.name) => Some(c.name.clone()),
        _ => None,
    };
    let literal = |e: &Expr| match e {
        Expr::Literal(
            ScalarValue::Utf8(Some(s))
            | ScalarValue::LargeUtf8(Some(s))
            | ScalarValue::Utf8View(Some(s)),
            _,
        ) => Some(s.clone()),
        _ => None,
    };
    let mut out = Vec::new();
    for f in filters {
        match f {
            Expr::BinaryExpr(b) if b.op == Operator::Eq => {
                if let (Some(k), Some(v)) = (column(&b.left), literal(&b.right)) {
                    out.push((k, vec![v]));
                } else if let (Some(v), Some(k)) = (literal(&b.left), column(&b.right)) {
                    out.push((k, vec![v]));
                }
            }
            Expr::InList(l) if !l.negated => {
                if let Some(k) = column(&l.expr) {
                    let values: Option<Vec<String>> = l.list.iter().map(literal).collect();
                    if let Some(values) = values {
                        out.push((k, values));
                    }
                }
            }
            _ => {}
        }
    }
    out
}

#[async_trait]
impl TableProvider for StoreTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        // Partition pruning is a file-level shortcut, not an exact filter: DataFusion still
        // applies every filter, and pushes what it can into the Parquet scan.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if self.table == Source::Derived(DerivedTable::Comparisons) {
            return self.scan_comparisons(state, projection, limit).await;
        }
        let files = self.files(filters)?;
        if files.is_empty() {
            let schema = match projection {
                Some(p) => Arc::new(self.schema.project(p)?),
                None => self.schema.clone(),
            };
            return Ok(Arc::new(EmptyExec::new(schema)));
        }
        self.scan_files(state, files, projection.cloned(), limit)
            .await
    }
}

impl StoreTable {
    /// `comparisons`: its files, with the pair's family and cells added from the derived state
    /// the statement pinned when a query asks for them (the files hold the pair's number only).
    async fn scan_comparisons(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let derived = Pin::derived(&self.pin, &self.root)?;
        let wanted: Vec<usize> = projection
            .cloned()
            .unwrap_or_else(|| (0..self.schema.fields().len()).collect());
        let fields: Vec<Field> = wanted
            .iter()
            .map(|&i| self.schema.field(i).clone())
            .collect();
        let is_name = |f: &Field| tables::PAIR_NAME_COLUMNS.contains(&f.name().as_str());
        let mut columns: Vec<usize> = fields
            .iter()
            .filter(|f| !is_name(f))
            .map(|f| self.file_schema.index_of(f.name()))
            .collect::<Result<_, _>>()?;
        let names = fields.iter().any(is_name);
        let pair = self.file_schema.index_of("pair")?;
        if names && !columns.contains(&pair) {
            columns.push(pair);
        }
        let files: Vec<PartitionedFile> = derived
            .parts_of(DerivedTable::Comparisons)
            .map(|p| PartitionedFile::new(self.root.join(&p.path).display().to_string(), p.bytes))
            .collect();
        if files.is_empty() {
            return Ok(Arc::new(EmptyExec::new(Arc::new(Schema::new(fields)))));
        }
        let scan = self
            .scan_files(state, files, Some(columns.clone()), limit)
            .await?;
        if !names {
            return Ok(scan);
        }
        // The scan yields the asked-for file columns in the asked-for order, then `pair` when
        // only the names need it.
        let pair_position = columns
            .iter()
            .position(|&c| c == pair)
            .unwrap_or(columns.len() - 1);
        let pair_column: Arc<dyn PhysicalExpr> = Arc::new(Column::new("pair", pair_position));
        let config = Arc::new(state.config_options().clone());
        let mut exprs: Vec<(Arc<dyn PhysicalExpr>, String)> = Vec::with_capacity(fields.len());
        let mut next_file_column = 0;
        for f in &fields {
            let name = f.name().clone();
            let expr: Arc<dyn PhysicalExpr> = if is_name(f) {
                let of_pair = |p: &crate::derived::PairAcc| match name.as_str() {
                    "family" => p.family.clone(),
                    "cell_a" => p.cell_a.clone(),
                    _ => p.cell_b.clone(),
                };
                let values: ArrayRef = Arc::new(StringArray::from_iter_values(
                    derived.pairs.iter().map(of_pair),
                ));
                Arc::new(ScalarFunctionExpr::new(
                    &name,
                    Arc::new(crate::udf::pair_names(&name, values)),
                    vec![pair_column.clone()],
                    Arc::new(f.clone()),
                    config.clone(),
                ))
            } else {
                next_file_column += 1;
                Arc::new(Column::new(&name, next_file_column - 1))
            };
            exprs.push((expr, name));
        }
        Ok(Arc::new(ProjectionExec::try_new(exprs, scan)?))
    }

    /// A Parquet scan of `files`, `projection` indexing the file columns then the partition
    /// values.
    async fn scan_files(
        &self,
        state: &dyn Session,
        files: Vec<PartitionedFile>,
        projection: Option<Vec<usize>>,
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        // Spread files over the session's partitions, largest first, for parallel scans.
        let groups_n = state.config().target_partitions().max(1).min(files.len());
        let mut files = files;
        files.sort_by_key(|f| std::cmp::Reverse(f.object_meta.size));
        let mut groups: Vec<(u64, Vec<PartitionedFile>)> =
            (0..groups_n).map(|_| (0, Vec::new())).collect();
        for f in files {
            if let Some(g) = groups.iter_mut().min_by_key(|(size, _)| *size) {
                g.0 += f.object_meta.size;
                g.1.push(f);
            }
        }
        let partition_fields: Vec<Arc<Field>> = self
            .partition_keys
            .iter()
            .map(|k| Arc::new(Field::new(k, DataType::Utf8, false)))
            .collect();
        let table_schema = TableSchema::builder(self.file_schema.clone())
            .with_table_partition_cols(partition_fields)
            .build();
        let format = ParquetFormat::default().with_options(state.table_options().parquet.clone());
        let source = format.file_source(table_schema);
        let config = FileScanConfigBuilder::new(ObjectStoreUrl::local_filesystem(), source)
            .with_file_groups(groups.into_iter().map(|(_, g)| FileGroup::new(g)).collect())
            .with_projection_indices(projection)?
            .with_limit(limit)
            .build();
        format.create_physical_plan(state, config).await
    }
}

/// `pairs`: one row per pair of cells compared, numbered as in `comparisons.pair`, with the
/// running counts the fold keeps (read from `derived/state.json` at every scan).
#[derive(Debug)]
pub struct PairsTable {
    root: PathBuf,
    pin: SharedPin,
}

impl PairsTable {
    /// The SQL name.
    pub const NAME: &'static str = "pairs";

    /// The `pairs` table of the store at `root`, reading the snapshot `pin` holds.
    pub fn new(root: PathBuf, pin: SharedPin) -> Self {
        Self { root, pin }
    }

    /// Its columns.
    pub fn table_schema() -> SchemaRef {
        let f = |n: &str, t: DataType| Field::new(n, t, false);
        Arc::new(Schema::new(vec![
            f("pair", DataType::Int32),
            f("family", DataType::Utf8),
            f("cell_a", DataType::Utf8),
            f("cell_b", DataType::Utf8),
            f("images", DataType::Int64),
            f("flips", DataType::Int64),
        ]))
    }

    /// The table's rows, from the derived state as it is now.
    ///
    /// # Errors
    /// Fails when the derived state cannot be read.
    pub fn snapshot(&self) -> DfResult<RecordBatch> {
        self.batch()
    }

    fn batch(&self) -> DfResult<RecordBatch> {
        use datafusion::arrow::array::{Int32Array, Int64Array, StringArray};
        let state = Pin::derived(&self.pin, &self.root)?;
        let p = &state.pairs;
        let count = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let numbers = (0..p.len())
            .map(|i| i32::try_from(i).map_err(|e| DataFusionError::External(Box::new(e))))
            .collect::<DfResult<Vec<i32>>>()?;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int32Array::from(numbers)),
            Arc::new(StringArray::from_iter_values(p.iter().map(|x| &x.family))),
            Arc::new(StringArray::from_iter_values(p.iter().map(|x| &x.cell_a))),
            Arc::new(StringArray::from_iter_values(p.iter().map(|x| &x.cell_b))),
            Arc::new(Int64Array::from_iter_values(
                p.iter().map(|x| count(x.images)),
            )),
            Arc::new(Int64Array::from_iter_values(
                p.iter().map(|x| count(x.flips)),
            )),
        ];
        Ok(RecordBatch::try_new(Self::table_schema(), columns)?)
    }
}

#[async_trait]
impl TableProvider for PairsTable {
    fn schema(&self) -> SchemaRef {
        Self::table_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let table = MemTable::try_new(Self::table_schema(), vec![vec![self.batch()?]])?;
        table.scan(state, projection, filters, limit).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::logical_expr::{col, lit};

    #[test]
    fn partition_filters_are_understood() {
        let keys = vec!["model".to_string(), "engine".to_string()];
        let filters = vec![
            col("model").eq(lit("m1")),
            lit("ort").eq(col("engine")),
            col("top1").eq(lit(3)),
            col("model").in_list(vec![lit("a"), lit("b")], false),
        ];
        let c = partition_constraints(&filters, &keys);
        assert_eq!(
            c,
            vec![
                ("model".to_string(), vec!["m1".to_string()]),
                ("engine".to_string(), vec!["ort".to_string()]),
                ("model".to_string(), vec!["a".to_string(), "b".to_string()]),
            ]
        );
        let v = partition_values("outputs/model=m1/engine=ort/part-000001-x.parquet", &keys);
        assert_eq!(v.get("model").map(String::as_str), Some("m1"));
        assert_eq!(v.get("engine").map(String::as_str), Some("ort"));
    }
}
