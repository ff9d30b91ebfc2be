//! Rows of the small tables (`runs`, `models`, `images`, `cells`, `errors`) and their Arrow form.
//!
//! Each row type knows its table; [`commit`] turns a slice of rows into one committed part. The
//! large `outputs` table is streamed by [`crate::sink`] instead.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Float32Array, Float32Builder, Float64Array, Int32Array, Int64Array,
    ListBuilder, RecordBatch, StringArray, StringBuilder, TimestampMicrosecondArray,
};
use deltann_store::schema::{self, status};
use deltann_store::{PartMeta, PartWriter, Partition, StoreWriter, Table};

use crate::error::Result;
use crate::host::Host;
use crate::plan::{Cell, ModelPlan};
use crate::preprocess::ImageInfo;
use crate::stats::LatencySummary;

/// A row type of one of the small tables.
pub trait Record {
    /// The table the rows go to.
    const TABLE: Table;
    /// The rows as one batch of the table's schema.
    ///
    /// # Errors
    /// Fails only if the columns do not match the schema (a bug).
    fn batch(rows: &[Self], run_id: &str) -> Result<RecordBatch>
    where
        Self: Sized;
}

/// Commits `rows` as one part (nothing when empty).
///
/// # Errors
/// Fails when the store cannot be written.
pub fn commit<R: Record>(
    store: &StoreWriter,
    cell_id: Option<&str>,
    run_id: &str,
    rows: &[R],
) -> Result<()> {
    if let Some(part) = part(store, cell_id, run_id, rows)? {
        store.commit(part)?;
    }
    Ok(())
}

/// Writes `rows` into a part that is not yet committed (nothing when empty), for a caller that
/// commits it together with others ([`StoreWriter::commit_group`]).
///
/// # Errors
/// Fails when the part cannot be written.
pub fn part<R: Record>(
    store: &StoreWriter,
    cell_id: Option<&str>,
    run_id: &str,
    rows: &[R],
) -> Result<Option<PartWriter>> {
    if rows.is_empty() {
        return Ok(None);
    }
    let batch = R::batch(rows, run_id)?;
    let mut part = store.begin(
        R::TABLE,
        Partition::none(),
        PartMeta {
            cell_id: cell_id.map(str::to_string),
            run_id: Some(run_id.to_string()),
        },
    )?;
    part.write(&batch)?;
    Ok(Some(part))
}

fn text<'a>(values: impl IntoIterator<Item = &'a str>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(values))
}

fn opt_text<'a>(values: impl IntoIterator<Item = Option<&'a str>>) -> ArrayRef {
    Arc::new(values.into_iter().collect::<StringArray>())
}

fn int32(values: impl IntoIterator<Item = i32>) -> ArrayRef {
    Arc::new(Int32Array::from_iter_values(values))
}

fn opt_int32(values: impl IntoIterator<Item = Option<i32>>) -> ArrayRef {
    Arc::new(values.into_iter().collect::<Int32Array>())
}

fn int64(values: impl IntoIterator<Item = i64>) -> ArrayRef {
    Arc::new(Int64Array::from_iter_values(values))
}

fn opt_f64(values: impl IntoIterator<Item = Option<f64>>) -> ArrayRef {
    Arc::new(values.into_iter().collect::<Float64Array>())
}

fn timestamps(values: impl IntoIterator<Item = i64>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from_iter_values(values).with_timezone("UTC"))
}

fn f32_lists<'a>(values: impl IntoIterator<Item = &'a [f32]>) -> ArrayRef {
    let mut b = ListBuilder::new(Float32Builder::new());
    for v in values {
        b.values().append_slice(v);
        b.append(true);
    }
    Arc::new(b.finish())
}

fn saturating_i32(v: usize) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

fn host_columns(hosts: &[&Host]) -> Vec<ArrayRef> {
    vec![
        text(hosts.iter().map(|h| h.name.as_str())),
        text(hosts.iter().map(|h| h.cpu_model.as_str())),
        int32(hosts.iter().map(|h| saturating_i32(h.cores))),
        text(hosts.iter().map(|h| h.os.as_str())),
        opt_text(hosts.iter().map(|h| Some(h.cpu_flags.as_str()))),
        opt_text(hosts.iter().map(|h| h.gpu.as_deref())),
    ]
}

fn batch(table: Table, columns: Vec<ArrayRef>) -> Result<RecordBatch> {
    Ok(RecordBatch::try_new(schema::schema(table), columns)?)
}

/// A `collect` invocation.
#[derive(Clone, Debug)]
pub struct RunRow {
    pub started_at_us: i64,
    pub command: String,
    pub sweep_path: String,
    pub sweep_toml: String,
    pub parallel_cells: usize,
    pub host: Host,
}

impl Record for RunRow {
    const TABLE: Table = Table::Runs;
    fn batch(rows: &[Self], run_id: &str) -> Result<RecordBatch> {
        let hosts: Vec<&Host> = rows.iter().map(|r| &r.host).collect();
        let shas: Vec<String> = rows
            .iter()
            .map(|r| deltann_store::ids::sha256_hex(r.sweep_toml.as_bytes()))
            .collect();
        let mut columns = vec![
            text(rows.iter().map(|_| run_id)),
            timestamps(rows.iter().map(|r| r.started_at_us)),
            text(rows.iter().map(|_| env!("CARGO_PKG_VERSION"))),
            text(rows.iter().map(|r| r.command.as_str())),
            text(rows.iter().map(|r| r.sweep_path.as_str())),
            text(shas.iter().map(String::as_str)),
            text(rows.iter().map(|r| r.sweep_toml.as_str())),
            int32(rows.iter().map(|r| saturating_i32(r.parallel_cells))),
        ];
        columns.extend(host_columns(&hosts));
        batch(Table::Runs, columns)
    }
}

/// A model file (one per name and sha256).
#[derive(Clone, Debug)]
pub struct ModelRow(pub Arc<ModelPlan>);

impl Record for ModelRow {
    const TABLE: Table = Table::Models;
    fn batch(rows: &[Self], run_id: &str) -> Result<RecordBatch> {
        let m: Vec<&ModelPlan> = rows.iter().map(|r| r.0.as_ref()).collect();
        let paths: Vec<String> = m
            .iter()
            .map(|m| m.spec.path.display().to_string())
            .collect();
        let shapes: Vec<String> = m.iter().map(|m| m.info.input_shape()).collect();
        let keys: Vec<String> = m.iter().map(|m| m.preprocess.key()).collect();
        let mut names = ListBuilder::new(StringBuilder::new());
        for model in &m {
            match &model.class_names {
                Some(list) => {
                    for n in list {
                        names.values().append_value(n);
                    }
                    names.append(true);
                }
                None => names.append(false),
            }
        }
        let json = |v: serde_json::Value| v.as_str().unwrap_or_default().to_string();
        let filters: Vec<String> = m.iter().map(|m| m.preprocess.filter.to_string()).collect();
        let channels: Vec<String> = m
            .iter()
            .map(|m| json(serde_json::json!(m.preprocess.channels)))
            .collect();
        let layouts: Vec<String> = m
            .iter()
            .map(|m| json(serde_json::json!(m.preprocess.layout)))
            .collect();
        batch(
            Table::Models,
            vec![
                text(m.iter().map(|m| m.spec.name.as_str())),
                text(m.iter().map(|m| m.spec.family.as_str())),
                text(m.iter().map(|m| m.spec.precision.as_str())),
                text(paths.iter().map(String::as_str)),
                text(m.iter().map(|m| m.info.sha256.as_str())),
                int64(
                    m.iter()
                        .map(|m| i64::try_from(m.info.bytes).unwrap_or(i64::MAX)),
                ),
                text(m.iter().map(|m| m.info.input_name.as_str())),
                text(shapes.iter().map(String::as_str)),
                int32(
                    m.iter()
                        .map(|m| saturating_i32(m.num_classes().unwrap_or(0))),
                ),
                text(m.iter().map(|m| m.spec.output.name())),
                text(m.iter().map(|m| m.preprocess.preset.name())),
                text(keys.iter().map(String::as_str)),
                int32(m.iter().map(|m| saturating_i32(m.preprocess.size as usize))),
                int32(
                    m.iter()
                        .map(|m| saturating_i32(m.preprocess.resize_short() as usize)),
                ),
                Arc::new(Float64Array::from_iter_values(
                    m.iter().map(|m| m.preprocess.crop),
                )),
                text(filters.iter().map(String::as_str)),
                Arc::new(Float32Array::from_iter_values(
                    m.iter().map(|m| m.preprocess.pixel_scale),
                )),
                f32_lists(m.iter().map(|m| &m.preprocess.mean[..])),
                f32_lists(m.iter().map(|m| &m.preprocess.std[..])),
                text(channels.iter().map(String::as_str)),
                text(layouts.iter().map(String::as_str)),
                Arc::new(names.finish()),
                text(m.iter().map(|_| run_id)),
            ],
        )
    }
}

/// An image and what decoding found.
#[derive(Clone, Debug)]
pub struct ImageRow {
    pub id: String,
    pub dataset: String,
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
    pub label: Option<i32>,
    pub info: Option<ImageInfo>,
    pub error: Option<String>,
}

impl ImageRow {
    /// Builds the row from a decode result.
    pub fn new(
        id: &str,
        dataset: &Path,
        path: &Path,
        sha256: &str,
        bytes: u64,
        label: Option<i32>,
        decoded: &std::result::Result<ImageInfo, String>,
    ) -> Self {
        Self {
            id: id.to_string(),
            dataset: dataset.display().to_string(),
            path: path.display().to_string(),
            sha256: sha256.to_string(),
            bytes,
            label,
            info: decoded.as_ref().ok().cloned(),
            error: decoded.as_ref().err().cloned(),
        }
    }
}

impl Record for ImageRow {
    const TABLE: Table = Table::Images;
    fn batch(rows: &[Self], run_id: &str) -> Result<RecordBatch> {
        fn info(r: &ImageRow) -> Option<&ImageInfo> {
            r.info.as_ref()
        }
        batch(
            Table::Images,
            vec![
                text(rows.iter().map(|r| r.id.as_str())),
                text(rows.iter().map(|r| r.dataset.as_str())),
                text(rows.iter().map(|r| r.path.as_str())),
                text(rows.iter().map(|r| r.sha256.as_str())),
                int64(
                    rows.iter()
                        .map(|r| i64::try_from(r.bytes).unwrap_or(i64::MAX)),
                ),
                opt_text(
                    rows.iter()
                        .map(|r| info(r).and_then(|i| i.format.as_deref())),
                ),
                opt_int32(
                    rows.iter()
                        .map(|r| info(r).map(|i| saturating_i32(i.width as usize))),
                ),
                opt_int32(
                    rows.iter()
                        .map(|r| info(r).map(|i| saturating_i32(i.height as usize))),
                ),
                opt_text(rows.iter().map(|r| info(r).map(|i| i.color.as_str()))),
                opt_int32(
                    rows.iter()
                        .map(|r| info(r).and_then(|i| i.exif_orientation).map(i32::from)),
                ),
                opt_int32(rows.iter().map(|r| r.label)),
                text(rows.iter().map(|r| {
                    if r.error.is_some() {
                        status::FAILED
                    } else {
                        status::OK
                    }
                })),
                opt_text(rows.iter().map(|r| r.error.as_deref())),
                text(rows.iter().map(|_| run_id)),
            ],
        )
    }
}

/// A failure that is not a whole cell's.
#[derive(Clone, Debug)]
pub struct ErrorRow {
    pub cell_id: Option<String>,
    pub image_id: String,
    pub stage: &'static str,
    pub message: String,
    pub at_us: i64,
}

impl ErrorRow {
    /// A failure now.
    pub fn new(cell_id: Option<&str>, image_id: &str, stage: &'static str, message: &str) -> Self {
        Self {
            cell_id: cell_id.map(str::to_string),
            image_id: image_id.to_string(),
            stage,
            message: message.to_string(),
            at_us: deltann_store::now_micros(),
        }
    }
}

impl Record for ErrorRow {
    const TABLE: Table = Table::Errors;
    fn batch(rows: &[Self], run_id: &str) -> Result<RecordBatch> {
        batch(
            Table::Errors,
            vec![
                text(rows.iter().map(|_| run_id)),
                opt_text(rows.iter().map(|r| r.cell_id.as_deref())),
                text(rows.iter().map(|r| r.image_id.as_str())),
                text(rows.iter().map(|r| r.stage)),
                text(rows.iter().map(|r| r.message.as_str())),
                timestamps(rows.iter().map(|r| r.at_us)),
            ],
        )
    }
}

/// The outcome of one attempt at a cell.
#[derive(Clone, Debug)]
pub struct CellRow {
    pub cell: Cell,
    pub attempt: i32,
    pub warmup: u32,
    pub failure: Option<String>,
    /// Not run here, for the reason in `failure`.
    pub skipped: bool,
    pub images_planned: usize,
    pub images_ok: usize,
    pub images_failed: usize,
    pub load_ms: Option<f64>,
    pub latency: Option<LatencySummary>,
    pub wall_s: f64,
    pub worker_peak_rss_mb: Option<f64>,
    pub started_at_us: i64,
    pub finished_at_us: i64,
    pub parallel_cells: usize,
    pub host: Host,
}

impl Record for CellRow {
    const TABLE: Table = Table::Cells;
    fn batch(rows: &[Self], run_id: &str) -> Result<RecordBatch> {
        let c: Vec<&Cell> = rows.iter().map(|r| &r.cell).collect();
        let hosts: Vec<&Host> = rows.iter().map(|r| &r.host).collect();
        let libs: Vec<Option<String>> = c
            .iter()
            .map(|c| c.ort_library.as_ref().map(|l| l.path.display().to_string()))
            .collect();
        let filters: Vec<String> = c.iter().map(|c| c.preprocess.filter.to_string()).collect();
        let settings: Vec<Option<String>> = c.iter().map(|c| c.settings_text()).collect();
        let keys: Vec<String> = c.iter().map(|c| c.preprocess.key()).collect();
        let lat = |f: fn(&LatencySummary) -> f64| {
            opt_f64(rows.iter().map(move |r| r.latency.as_ref().map(f)))
        };
        let count = |f: fn(&CellRow) -> usize| {
            int64(
                rows.iter()
                    .map(move |r| i64::try_from(f(r)).unwrap_or(i64::MAX)),
            )
        };
        let mut columns = vec![
            text(c.iter().map(|c| c.id.as_str())),
            int32(rows.iter().map(|r| r.attempt)),
            text(rows.iter().map(|_| run_id)),
            text(c.iter().map(|c| c.tag.as_str())),
            text(c.iter().map(|c| c.model.spec.name.as_str())),
            text(c.iter().map(|c| c.model.spec.family.as_str())),
            text(c.iter().map(|c| c.model.spec.precision.as_str())),
            text(c.iter().map(|c| c.model.info.sha256.as_str())),
            text(c.iter().map(|c| c.engine.name())),
            text(c.iter().map(|c| c.engine_version.as_str())),
            opt_text(c.iter().map(|c| c.ort_optimization.map(|o| o.name()))),
            opt_text(c.iter().map(|c| c.tract_plan.map(|p| p.name()))),
            opt_text(libs.iter().map(Option::as_deref)),
            opt_text(c.iter().map(|c| Some(c.device.name()))),
            opt_text(settings.iter().map(Option::as_deref)),
            int32(c.iter().map(|c| saturating_i32(c.threads as usize))),
            int32(c.iter().map(|c| saturating_i32(c.batch_size as usize))),
            int32(c.iter().map(|c| saturating_i32(c.repetitions as usize))),
            int32(rows.iter().map(|r| saturating_i32(r.warmup as usize))),
            text(filters.iter().map(String::as_str)),
            opt_text(c.iter().map(|c| Some(c.preprocess.implementation.name()))),
            text(keys.iter().map(String::as_str)),
            text(rows.iter().map(|r| {
                if r.skipped {
                    status::SKIPPED
                } else if r.failure.is_some() {
                    status::FAILED
                } else {
                    status::OK
                }
            })),
            opt_text(rows.iter().map(|r| r.failure.as_deref())),
            count(|r| r.images_planned),
            count(|r| r.images_ok),
            count(|r| r.images_failed),
            opt_f64(rows.iter().map(|r| r.load_ms)),
            lat(|l| l.p50_ms),
            lat(|l| l.p90_ms),
            lat(|l| l.p99_ms),
            lat(|l| l.mean_ms),
            lat(|l| l.throughput_ips),
            Arc::new(Float64Array::from_iter_values(
                rows.iter().map(|r| r.wall_s),
            )),
            opt_f64(rows.iter().map(|r| r.worker_peak_rss_mb)),
            timestamps(rows.iter().map(|r| r.started_at_us)),
            timestamps(rows.iter().map(|r| r.finished_at_us)),
            int32(rows.iter().map(|r| saturating_i32(r.parallel_cells))),
        ];
        columns.extend(host_columns(&hosts));
        batch(Table::Cells, columns)
    }
}

/// One `deltann localize` result (see docs/STORE.md, `localizations`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LocalizationRow {
    pub localization_id: String,
    pub at_us: i64,
    /// `passes` or `layers` ([`schema::kind`]).
    pub kind: &'static str,
    pub cell_a: String,
    pub cell_b: String,
    pub image_id: Option<String>,
    pub images: usize,
    pub tolerance: f64,
    pub gain: Option<f64>,
    pub culprits: Option<String>,
    pub explained: Option<bool>,
    pub trials: Option<usize>,
    pub flips_before: Option<usize>,
    pub max_abs_before: Option<f64>,
    pub node: Option<String>,
    pub op: Option<String>,
    pub node_order: Option<usize>,
    pub rel_error: Option<f64>,
    pub amplification: Option<f64>,
    pub first_difference: Option<String>,
    pub nodes_compared: Option<usize>,
    pub seconds: f64,
}

impl Record for LocalizationRow {
    const TABLE: Table = Table::Localizations;
    fn batch(rows: &[Self], _run_id: &str) -> Result<RecordBatch> {
        let f64s = |f: fn(&Self) -> f64| -> ArrayRef {
            Arc::new(Float64Array::from_iter_values(rows.iter().map(f)))
        };
        let opt_count = |f: fn(&Self) -> Option<usize>| {
            opt_int32(rows.iter().map(move |r| f(r).map(saturating_i32)))
        };
        batch(
            Table::Localizations,
            vec![
                text(rows.iter().map(|r| r.localization_id.as_str())),
                timestamps(rows.iter().map(|r| r.at_us)),
                text(rows.iter().map(|_| env!("CARGO_PKG_VERSION"))),
                text(rows.iter().map(|r| r.kind)),
                text(rows.iter().map(|r| r.cell_a.as_str())),
                text(rows.iter().map(|r| r.cell_b.as_str())),
                opt_text(rows.iter().map(|r| r.image_id.as_deref())),
                int32(rows.iter().map(|r| saturating_i32(r.images))),
                f64s(|r| r.tolerance),
                opt_f64(rows.iter().map(|r| r.gain)),
                opt_text(rows.iter().map(|r| r.culprits.as_deref())),
                Arc::new(BooleanArray::from_iter(rows.iter().map(|r| r.explained))),
                opt_count(|r| r.trials),
                opt_count(|r| r.flips_before),
                opt_f64(rows.iter().map(|r| r.max_abs_before)),
                opt_text(rows.iter().map(|r| r.node.as_deref())),
                opt_text(rows.iter().map(|r| r.op.as_deref())),
                opt_count(|r| r.node_order),
                opt_f64(rows.iter().map(|r| r.rel_error)),
                opt_f64(rows.iter().map(|r| r.amplification)),
                opt_text(rows.iter().map(|r| r.first_difference.as_deref())),
                opt_count(|r| r.nodes_compared),
                f64s(|r| r.seconds),
            ],
        )
    }
}

/// One node of a layer localisation's error curve (see docs/STORE.md, `node_errors`).
#[derive(Clone, Debug, PartialEq)]
pub struct NodeErrorRow {
    pub localization_id: String,
    pub image_id: String,
    pub error: crate::localize::NodeError,
}

impl Record for NodeErrorRow {
    const TABLE: Table = Table::NodeErrors;
    fn batch(rows: &[Self], _run_id: &str) -> Result<RecordBatch> {
        let f64s = |f: fn(&crate::localize::NodeError) -> f64| -> ArrayRef {
            Arc::new(Float64Array::from_iter_values(
                rows.iter().map(|r| f(&r.error)),
            ))
        };
        batch(
            Table::NodeErrors,
            vec![
                text(rows.iter().map(|r| r.localization_id.as_str())),
                text(rows.iter().map(|r| r.image_id.as_str())),
                int32(rows.iter().map(|r| saturating_i32(r.error.order))),
                text(rows.iter().map(|r| r.error.node.as_str())),
                text(rows.iter().map(|r| r.error.op.as_str())),
                text(rows.iter().map(|r| r.error.tensor.as_str())),
                f64s(|e| e.error),
                f64s(|e| e.max_abs),
                f64s(|e| e.carried),
                f64s(|e| e.amplification),
            ],
        )
    }
}
