//! The tables' columns and Arrow schemas.
//!
//! Column names are constants so that the collector, the analyzer's SQL and the tests cannot drift
//! apart silently. docs/STORE.md documents every column; a test there checks the two agree.
//!
//! Lists (`top5`, `mean`, ...) are variable-length Arrow lists. The logits are the exception: one
//! binary value per row holding the row's float32s little-endian (see [`crate::outputs::logits`]),
//! because a Parquet list of a thousand floats costs a definition and a repetition level per
//! float to decode, which made decoding logits most of the analysis's time (store format 2; format
//! 1 stores held them as lists and `deltann store upgrade` rewrites them). The logits of one model
//! always have that model's class count (`models.num_classes`), but a store can hold models with
//! different class counts, and a single table schema must fit them all.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::layout::Table;

/// Column names, grouped by the table that owns them (shared names appear once).
pub mod col {
    // Shared.
    pub const RUN_ID: &str = "run_id";
    pub const CELL_ID: &str = "cell_id";
    pub const IMAGE_ID: &str = "image_id";
    pub const MODEL: &str = "model";
    pub const LABEL: &str = "label";
    pub const STATUS: &str = "status";
    pub const ERROR: &str = "error";
    pub const SHA256: &str = "sha256";
    pub const HOST_NAME: &str = "host_name";
    pub const CPU_MODEL: &str = "cpu_model";
    pub const CPU_CORES: &str = "cpu_cores";
    pub const OS: &str = "os";
    pub const CPU_FLAGS: &str = "cpu_flags";
    pub const GPU: &str = "gpu";
    pub const PARALLEL_CELLS: &str = "parallel_cells";

    // runs
    pub const STARTED_AT: &str = "started_at";
    pub const DELTANN_VERSION: &str = "deltann_version";
    pub const COMMAND: &str = "command";
    pub const SWEEP_PATH: &str = "sweep_path";
    pub const SWEEP_SHA256: &str = "sweep_sha256";
    pub const SWEEP_TOML: &str = "sweep_toml";

    // models
    pub const FAMILY: &str = "family";
    pub const PRECISION: &str = "precision";
    pub const PATH: &str = "path";
    pub const BYTES: &str = "bytes";
    pub const INPUT_NAME: &str = "input_name";
    pub const INPUT_SHAPE: &str = "input_shape";
    pub const NUM_CLASSES: &str = "num_classes";
    pub const OUTPUT_KIND: &str = "output_kind";
    pub const PRESET: &str = "preset";
    pub const PRESET_KEY: &str = "preset_key";
    pub const INPUT_SIZE: &str = "input_size";
    pub const RESIZE_SHORT: &str = "resize_short";
    pub const CROP_RATIO: &str = "crop_ratio";
    pub const RESIZE_FILTER: &str = "resize_filter";
    pub const PIXEL_SCALE: &str = "pixel_scale";
    pub const MEAN: &str = "mean";
    pub const STD: &str = "std";
    pub const CHANNELS: &str = "channels";
    pub const LAYOUT: &str = "layout";
    pub const CLASS_NAMES: &str = "class_names";

    // images
    pub const DATASET: &str = "dataset";
    pub const FORMAT: &str = "format";
    pub const WIDTH: &str = "width";
    pub const HEIGHT: &str = "height";
    pub const COLOR: &str = "color";
    pub const EXIF_ORIENTATION: &str = "exif_orientation";

    // cells
    pub const ATTEMPT: &str = "attempt";
    pub const TAG: &str = "tag";
    pub const MODEL_SHA256: &str = "model_sha256";
    pub const ENGINE: &str = "engine";
    pub const ENGINE_VERSION: &str = "engine_version";
    pub const ORT_OPTIMIZATION: &str = "ort_optimization";
    pub const TRACT_PLAN: &str = "tract_plan";
    pub const ORT_LIBRARY: &str = "ort_library";
    pub const DEVICE: &str = "device";
    pub const PREPROCESS: &str = "preprocess";
    pub const ENGINE_SETTINGS: &str = "engine_settings";
    pub const THREADS: &str = "threads";
    pub const BATCH_SIZE: &str = "batch_size";
    pub const REPETITIONS: &str = "repetitions";
    pub const WARMUP: &str = "warmup";
    pub const IMAGES_PLANNED: &str = "images_planned";
    pub const IMAGES_OK: &str = "images_ok";
    pub const IMAGES_FAILED: &str = "images_failed";
    pub const LOAD_MS: &str = "load_ms";
    pub const LATENCY_P50_MS: &str = "latency_p50_ms";
    pub const LATENCY_P90_MS: &str = "latency_p90_ms";
    pub const LATENCY_P99_MS: &str = "latency_p99_ms";
    pub const LATENCY_MEAN_MS: &str = "latency_mean_ms";
    pub const THROUGHPUT_IPS: &str = "throughput_ips";
    pub const WALL_S: &str = "wall_s";
    pub const WORKER_PEAK_RSS_MB: &str = "worker_peak_rss_mb";
    pub const FINISHED_AT: &str = "finished_at";

    // outputs
    pub const IMAGE_SHA256: &str = "image_sha256";
    pub const REPETITION: &str = "repetition";
    pub const BATCH_INDEX: &str = "batch_index";
    pub const BATCH_ROWS: &str = "batch_rows";
    pub const TOP1: &str = "top1";
    pub const TOP1_PROB: &str = "top1_prob";
    pub const TOP5: &str = "top5";
    pub const TOP5_PROB: &str = "top5_prob";
    pub const LOGITS: &str = "logits";
    pub const LOGITS_HASH: &str = "logits_hash";
    pub const LATENCY_NS: &str = "latency_ns";
    pub const BATCH_LATENCY_NS: &str = "batch_latency_ns";

    // errors
    pub const STAGE: &str = "stage";
    pub const MESSAGE: &str = "message";
    pub const AT: &str = "at";

    // localizations, node_errors
    pub const LOCALIZATION_ID: &str = "localization_id";
    pub const KIND: &str = "kind";
    pub const CELL_A: &str = "cell_a";
    pub const CELL_B: &str = "cell_b";
    pub const IMAGES: &str = "images";
    pub const TOLERANCE: &str = "tolerance";
    pub const GAIN: &str = "gain";
    pub const CULPRITS: &str = "culprits";
    pub const EXPLAINED: &str = "explained";
    pub const TRIALS: &str = "trials";
    pub const FLIPS_BEFORE: &str = "flips_before";
    pub const MAX_ABS_BEFORE: &str = "max_abs_before";
    pub const NODE: &str = "node";
    pub const OP: &str = "op";
    pub const NODE_ORDER: &str = "node_order";
    pub const TENSOR: &str = "tensor";
    pub const REL_ERROR: &str = "rel_error";
    pub const MAX_ABS: &str = "max_abs";
    pub const CARRIED: &str = "carried";
    pub const AMPLIFICATION: &str = "amplification";
    pub const FIRST_DIFFERENCE: &str = "first_difference";
    pub const NODES_COMPARED: &str = "nodes_compared";
    pub const SECONDS: &str = "seconds";
}

/// Values of `localizations.kind`.
pub mod kind {
    /// A pass bisection over an engine's optimizer names.
    pub const PASSES: &str = "passes";
    /// One image's layer localisation.
    pub const LAYERS: &str = "layers";
}

/// Values of `cells.status`.
pub mod status {
    /// The cell ran; some images may still have per-image errors (see `images_failed`).
    pub const OK: &str = "ok";
    /// The cell could not run to the end: model load failure, worker crash, timeout.
    pub const FAILED: &str = "failed";
    /// The cell was not run on this machine, for the reason in `error` (a CUDA cell where there
    /// is no GPU); the next `collect` on a machine that can run it does.
    pub const SKIPPED: &str = "skipped";
}

/// Values of `errors.stage`.
pub mod stage {
    /// The image could not be read or decoded; no cell saw it.
    pub const DECODE: &str = "decode";
    /// The image decoded but one preprocessing recipe failed on it.
    pub const PREPROCESS: &str = "preprocess";
    /// The engine failed on this image (the cell went on with the others).
    pub const INFERENCE: &str = "inference";
    /// The engine answered, but not with a usable output row: NaN or infinite scores (whose
    /// ranking would differ between CPUs), or a row of the wrong length. Not in `outputs`.
    pub const OUTPUT: &str = "output";
}

/// The Arrow type of every timestamp column: microseconds, UTC.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// A list of `item`, the shape Arrow's `ListBuilder` produces by default.
pub fn list_of(item: DataType) -> DataType {
    DataType::new_list(item, true)
}

fn utf8(name: &str, nullable: bool) -> Field {
    Field::new(name, DataType::Utf8, nullable)
}

fn host_fields() -> Vec<Field> {
    vec![
        utf8(col::HOST_NAME, false),
        utf8(col::CPU_MODEL, false),
        Field::new(col::CPU_CORES, DataType::Int32, false),
        utf8(col::OS, false),
        utf8(col::CPU_FLAGS, true),
        utf8(col::GPU, true),
    ]
}

/// The schema of a table's Parquet files (partition columns excluded).
pub fn schema(table: Table) -> SchemaRef {
    use DataType::{Binary, Float32, Float64, Int32, Int64, UInt64};
    let fields: Vec<Field> = match table {
        Table::Runs => [
            vec![
                utf8(col::RUN_ID, false),
                Field::new(col::STARTED_AT, timestamp_type(), false),
                utf8(col::DELTANN_VERSION, false),
                utf8(col::COMMAND, false),
                utf8(col::SWEEP_PATH, false),
                utf8(col::SWEEP_SHA256, false),
                utf8(col::SWEEP_TOML, false),
                Field::new(col::PARALLEL_CELLS, Int32, false),
            ],
            host_fields(),
        ]
        .concat(),
        Table::Models => vec![
            utf8(col::MODEL, false),
            utf8(col::FAMILY, false),
            utf8(col::PRECISION, false),
            utf8(col::PATH, false),
            utf8(col::SHA256, false),
            Field::new(col::BYTES, Int64, false),
            utf8(col::INPUT_NAME, false),
            utf8(col::INPUT_SHAPE, false),
            Field::new(col::NUM_CLASSES, Int32, false),
            utf8(col::OUTPUT_KIND, false),
            utf8(col::PRESET, false),
            utf8(col::PRESET_KEY, false),
            Field::new(col::INPUT_SIZE, Int32, false),
            Field::new(col::RESIZE_SHORT, Int32, false),
            Field::new(col::CROP_RATIO, Float64, false),
            utf8(col::RESIZE_FILTER, false),
            Field::new(col::PIXEL_SCALE, Float32, false),
            Field::new(col::MEAN, list_of(Float32), false),
            Field::new(col::STD, list_of(Float32), false),
            utf8(col::CHANNELS, false),
            utf8(col::LAYOUT, false),
            Field::new(col::CLASS_NAMES, list_of(DataType::Utf8), true),
            utf8(col::RUN_ID, false),
        ],
        Table::Images => vec![
            utf8(col::IMAGE_ID, false),
            utf8(col::DATASET, false),
            utf8(col::PATH, false),
            utf8(col::SHA256, false),
            Field::new(col::BYTES, Int64, false),
            utf8(col::FORMAT, true),
            Field::new(col::WIDTH, Int32, true),
            Field::new(col::HEIGHT, Int32, true),
            utf8(col::COLOR, true),
            Field::new(col::EXIF_ORIENTATION, Int32, true),
            Field::new(col::LABEL, Int32, true),
            utf8(col::STATUS, false),
            utf8(col::ERROR, true),
            utf8(col::RUN_ID, false),
        ],
        Table::Cells => [
            vec![
                utf8(col::CELL_ID, false),
                Field::new(col::ATTEMPT, Int32, false),
                utf8(col::RUN_ID, false),
                utf8(col::TAG, false),
                utf8(col::MODEL, false),
                utf8(col::FAMILY, false),
                utf8(col::PRECISION, false),
                utf8(col::MODEL_SHA256, false),
                utf8(col::ENGINE, false),
                utf8(col::ENGINE_VERSION, false),
                utf8(col::ORT_OPTIMIZATION, true),
                utf8(col::TRACT_PLAN, true),
                utf8(col::ORT_LIBRARY, true),
                utf8(col::DEVICE, true),
                utf8(col::ENGINE_SETTINGS, true),
                Field::new(col::THREADS, Int32, false),
                Field::new(col::BATCH_SIZE, Int32, false),
                Field::new(col::REPETITIONS, Int32, false),
                Field::new(col::WARMUP, Int32, false),
                utf8(col::RESIZE_FILTER, false),
                utf8(col::PREPROCESS, true),
                utf8(col::PRESET_KEY, false),
                utf8(col::STATUS, false),
                utf8(col::ERROR, true),
                Field::new(col::IMAGES_PLANNED, Int64, false),
                Field::new(col::IMAGES_OK, Int64, false),
                Field::new(col::IMAGES_FAILED, Int64, false),
                Field::new(col::LOAD_MS, Float64, true),
                Field::new(col::LATENCY_P50_MS, Float64, true),
                Field::new(col::LATENCY_P90_MS, Float64, true),
                Field::new(col::LATENCY_P99_MS, Float64, true),
                Field::new(col::LATENCY_MEAN_MS, Float64, true),
                Field::new(col::THROUGHPUT_IPS, Float64, true),
                Field::new(col::WALL_S, Float64, false),
                Field::new(col::WORKER_PEAK_RSS_MB, Float64, true),
                Field::new(col::STARTED_AT, timestamp_type(), false),
                Field::new(col::FINISHED_AT, timestamp_type(), false),
                Field::new(col::PARALLEL_CELLS, Int32, false),
            ],
            host_fields(),
        ]
        .concat(),
        Table::Outputs => vec![
            utf8(col::CELL_ID, false),
            utf8(col::IMAGE_ID, false),
            utf8(col::IMAGE_SHA256, false),
            Field::new(col::LABEL, Int32, true),
            Field::new(col::REPETITION, Int32, false),
            Field::new(col::BATCH_INDEX, Int64, false),
            Field::new(col::BATCH_ROWS, Int32, false),
            Field::new(col::TOP1, Int32, false),
            Field::new(col::TOP1_PROB, Float32, false),
            Field::new(col::TOP5, list_of(Int32), false),
            Field::new(col::TOP5_PROB, list_of(Float32), false),
            Field::new(col::LOGITS, Binary, true),
            Field::new(col::LOGITS_HASH, UInt64, false),
            Field::new(col::LATENCY_NS, Int64, false),
            Field::new(col::BATCH_LATENCY_NS, Int64, false),
        ],
        Table::Errors => vec![
            utf8(col::RUN_ID, false),
            utf8(col::CELL_ID, true),
            utf8(col::IMAGE_ID, false),
            utf8(col::STAGE, false),
            utf8(col::MESSAGE, false),
            Field::new(col::AT, timestamp_type(), false),
        ],
        Table::Localizations => vec![
            utf8(col::LOCALIZATION_ID, false),
            Field::new(col::AT, timestamp_type(), false),
            utf8(col::DELTANN_VERSION, false),
            utf8(col::KIND, false),
            utf8(col::CELL_A, false),
            utf8(col::CELL_B, false),
            utf8(col::IMAGE_ID, true),
            Field::new(col::IMAGES, Int32, false),
            Field::new(col::TOLERANCE, Float64, false),
            Field::new(col::GAIN, Float64, true),
            utf8(col::CULPRITS, true),
            Field::new(col::EXPLAINED, DataType::Boolean, true),
            Field::new(col::TRIALS, Int32, true),
            Field::new(col::FLIPS_BEFORE, Int32, true),
            Field::new(col::MAX_ABS_BEFORE, Float64, true),
            utf8(col::NODE, true),
            utf8(col::OP, true),
            Field::new(col::NODE_ORDER, Int32, true),
            Field::new(col::REL_ERROR, Float64, true),
            Field::new(col::AMPLIFICATION, Float64, true),
            utf8(col::FIRST_DIFFERENCE, true),
            Field::new(col::NODES_COMPARED, Int32, true),
            Field::new(col::SECONDS, Float64, false),
        ],
        Table::NodeErrors => vec![
            utf8(col::LOCALIZATION_ID, false),
            utf8(col::IMAGE_ID, false),
            Field::new(col::NODE_ORDER, Int32, false),
            utf8(col::NODE, false),
            utf8(col::OP, false),
            utf8(col::TENSOR, false),
            Field::new(col::REL_ERROR, Float64, false),
            Field::new(col::MAX_ABS, Float64, false),
            Field::new(col::CARRIED, Float64, false),
            Field::new(col::AMPLIFICATION, Float64, false),
        ],
    };
    Arc::new(Schema::new(fields))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_keys_are_not_file_columns() {
        // A Hive reader adds partition columns itself; a file column of the same name would clash.
        for table in Table::ALL {
            let schema = schema(table);
            for key in table.partition_keys() {
                assert!(schema.field_with_name(key).is_err(), "{table}.{key}");
            }
        }
    }

    #[test]
    fn store_md_documents_every_column() {
        let doc = include_str!("../../docs/STORE.md");
        for table in Table::ALL {
            let heading = format!("### `{table}`");
            let start = doc
                .find(&heading)
                .unwrap_or_else(|| panic!("no section {heading}"));
            let section = &doc[start..];
            let end = section[4..].find("\n### ").map_or(section.len(), |e| e + 4);
            let section = &section[..end];
            for field in schema(table).fields() {
                let quoted = format!("`{}`", field.name());
                assert!(
                    section.contains(&quoted),
                    "docs/STORE.md {heading} lacks {quoted}"
                );
            }
        }
    }

    #[test]
    fn column_names_are_unique_per_table() {
        for table in Table::ALL {
            let schema = schema(table);
            let mut names: Vec<_> = schema.fields().iter().map(|f| f.name().clone()).collect();
            names.sort();
            let before = names.len();
            names.dedup();
            assert_eq!(before, names.len(), "{table}");
        }
    }
}
