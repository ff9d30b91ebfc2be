//! The outputs sink: worker results in, committed `outputs` parts out.
//!
//! Rows accumulate in Arrow builders and go to the open part in batches; the part is committed
//! when it holds `part_rows` rows or has been open `part_age`, always on a boundary between input
//! batches, so all repetitions of an image commit together and a resumed cell can skip exactly
//! the images it finds. Per-image engine errors go to `errors`, in a part committed together
//! with the outputs part they belong with (one group: both visible or neither), so a crash
//! cannot keep the good repetitions of an image and lose the failed one, or the reverse. Memory is bounded by one part's row groups, whatever the dataset size.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float32Type, Int32Type, Int64Type};
use deltann_store::outputs::{self, OutputRow, OutputsBuilder};
use deltann_store::schema::stage;
use deltann_store::{PartMeta, PartWriter, Partition, StoreWriter, Table};

use crate::error::{Error, Result};
use crate::plan::Cell;
use crate::protocol;
use crate::records::{self, ErrorRow};

/// When to commit a part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SinkConfig {
    /// Commit once a part holds this many rows.
    pub part_rows: usize,
    /// Commit once a part has been open this long (bounds what a crash can lose).
    pub part_age: Duration,
    /// Keep full logits (else top-5 and hash only).
    pub keep_logits: bool,
}

impl Default for SinkConfig {
    fn default() -> Self {
        Self {
            part_rows: 4096,
            part_age: Duration::from_secs(60),
            keep_logits: true,
        }
    }
}

/// What an image contributes to each of its output rows besides the engine's values.
#[derive(Clone, Debug)]
pub struct ImageFacts {
    pub sha256: String,
    pub label: Option<i32>,
}

/// Counts of what a sink has committed.
#[derive(Clone, Debug, Default)]
pub struct SinkStats {
    /// Images with at least one output row.
    pub images_ok: usize,
    /// Images with an engine error (and no output row).
    pub images_failed: usize,
    /// Output rows committed.
    pub rows: u64,
    /// The first engine error seen, if any.
    pub first_error: Option<String>,
}

/// Streams one cell's results into the store.
pub struct OutputSink<'a> {
    store: &'a StoreWriter,
    cell: &'a Cell,
    run_id: &'a str,
    images: &'a HashMap<String, ImageFacts>,
    config: SinkConfig,
    partition: Partition,
    part: Option<PartWriter>,
    part_opened: Instant,
    rows: OutputsBuilder,
    errors: Vec<ErrorRow>,
    ok: HashSet<String>,
    failed: HashSet<String>,
    committed_rows: u64,
    first_error: Option<String>,
}

impl<'a> OutputSink<'a> {
    /// A sink for `cell`.
    ///
    /// # Errors
    /// Fails when the cell's model name cannot be a partition value.
    pub fn new(
        store: &'a StoreWriter,
        cell: &'a Cell,
        run_id: &'a str,
        images: &'a HashMap<String, ImageFacts>,
        config: SinkConfig,
    ) -> Result<Self> {
        let partition =
            Partition::for_table(Table::Outputs, &[&cell.model.spec.name, cell.engine.name()])?;
        Ok(Self {
            store,
            cell,
            run_id,
            images,
            config,
            partition,
            part: None,
            part_opened: Instant::now(),
            rows: OutputsBuilder::default(),
            errors: Vec::new(),
            ok: HashSet::new(),
            failed: HashSet::new(),
            committed_rows: 0,
            first_error: None,
        })
    }

    /// Takes one result batch from the worker. Returns how many distinct images it completed.
    ///
    /// # Errors
    /// Fails on a malformed batch (protocol violation) or a store error.
    pub fn push(&mut self, batch: &RecordBatch) -> Result<usize> {
        let bad = |what: &str| Error::Worker(format!("result batch has no valid `{what}` column"));
        let ids = batch
            .column_by_name(protocol::IMAGE_ID)
            .and_then(|c| c.as_string_opt::<i32>())
            .ok_or_else(|| bad(protocol::IMAGE_ID))?;
        let reps = batch
            .column_by_name(protocol::REPETITION)
            .and_then(|c| c.as_primitive_opt::<Int32Type>())
            .ok_or_else(|| bad(protocol::REPETITION))?;
        let batch_index = batch
            .column_by_name(protocol::BATCH_INDEX)
            .and_then(|c| c.as_primitive_opt::<Int64Type>())
            .ok_or_else(|| bad(protocol::BATCH_INDEX))?;
        let batch_rows = batch
            .column_by_name(protocol::BATCH_ROWS)
            .and_then(|c| c.as_primitive_opt::<Int32Type>())
            .ok_or_else(|| bad(protocol::BATCH_ROWS))?;
        let logits = batch
            .column_by_name(protocol::LOGITS)
            .and_then(|c| c.as_list_opt::<i32>())
            .ok_or_else(|| bad(protocol::LOGITS))?;
        let latency = batch
            .column_by_name(protocol::LATENCY_NS)
            .and_then(|c| c.as_primitive_opt::<Int64Type>())
            .ok_or_else(|| bad(protocol::LATENCY_NS))?;
        let batch_latency = batch
            .column_by_name(protocol::BATCH_LATENCY_NS)
            .and_then(|c| c.as_primitive_opt::<Int64Type>())
            .ok_or_else(|| bad(protocol::BATCH_LATENCY_NS))?;
        let errors = batch
            .column_by_name(protocol::ERROR)
            .and_then(|c| c.as_string_opt::<i32>())
            .ok_or_else(|| bad(protocol::ERROR))?;

        // Checked before any row is taken: a batch is every repetition of its images, and it is
        // stored whole or not at all.
        if let Some(id) = (0..batch.num_rows())
            .map(|row| ids.value(row))
            .find(|id| !self.images.contains_key(*id))
        {
            return Err(Error::Worker(format!("result for unknown image `{id}`")));
        }
        let mut completed = HashSet::new();
        let multi_rep = self.cell.repetitions > 1;
        for row in 0..batch.num_rows() {
            let id = ids.value(row);
            let Some(facts) = self.images.get(id) else {
                continue;
            };
            completed.insert(id);
            if logits.is_null(row) {
                let message = if errors.is_null(row) {
                    "no output"
                } else {
                    errors.value(row)
                };
                let rep = multi_rep.then(|| reps.value(row));
                self.fail_image(id, rep, stage::INFERENCE, message.to_string());
                continue;
            }
            let values = logits.value(row);
            let values = values
                .as_primitive_opt::<Float32Type>()
                .ok_or_else(|| bad(protocol::LOGITS))?;
            let values = values.values();
            if let Some(problem) = unusable(values, self.cell.model.num_classes()) {
                let rep = multi_rep.then(|| reps.value(row));
                self.fail_image(id, rep, stage::OUTPUT, problem);
                continue;
            }
            let ranked = outputs::rank(values, self.cell.model.spec.output.into());
            self.rows.push(&OutputRow {
                cell_id: &self.cell.id,
                image_id: id,
                image_sha256: &facts.sha256,
                label: facts.label,
                repetition: reps.value(row),
                batch_index: batch_index.value(row),
                batch_rows: batch_rows.value(row),
                ranked: &ranked,
                logits: self.config.keep_logits.then_some(values),
                latency_ns: latency.value(row),
                batch_latency_ns: batch_latency.value(row),
            });
            self.ok.insert(id.to_string());
        }
        self.failed.retain(|id| !self.ok.contains(id));

        if !self.rows.is_empty() {
            let batch = self.rows.finish()?;
            if self.part.is_none() {
                self.part = Some(self.store.begin(
                    Table::Outputs,
                    self.partition.clone(),
                    PartMeta {
                        cell_id: Some(self.cell.id.clone()),
                        run_id: Some(self.run_id.to_string()),
                    },
                )?);
                self.part_opened = Instant::now();
            }
            if let Some(part) = self.part.as_mut() {
                part.write(&batch)?;
            }
        }
        let full = self
            .part
            .as_ref()
            .is_some_and(|p| p.rows() as usize >= self.config.part_rows);
        if full || self.part_opened.elapsed() >= self.config.part_age {
            self.commit()?;
        }
        Ok(completed.len())
    }

    /// Records that one image (one repetition of it, in a cell with several) failed at `stage`.
    fn fail_image(&mut self, id: &str, rep: Option<i32>, stage: &'static str, message: String) {
        let message = match rep {
            Some(rep) => format!("repetition {rep}: {message}"),
            None => message,
        };
        self.errors
            .push(ErrorRow::new(Some(&self.cell.id), id, stage, &message));
        self.failed.insert(id.to_string());
        self.first_error.get_or_insert(message);
    }

    /// Commits what is pending, the errors and the outputs part as one group.
    ///
    /// # Errors
    /// Fails when the store cannot be written.
    pub fn commit(&mut self) -> Result<()> {
        let errors = std::mem::take(&mut self.errors);
        let mut parts = Vec::with_capacity(2);
        parts.extend(records::part(
            self.store,
            Some(&self.cell.id),
            self.run_id,
            &errors,
        )?);
        let rows = self.part.as_ref().map_or(0, PartWriter::rows);
        parts.extend(self.part.take());
        self.store.commit_group(parts)?;
        self.committed_rows += rows;
        self.part_opened = Instant::now();
        Ok(())
    }

    /// Commits the rest and reports what this sink wrote.
    ///
    /// # Errors
    /// Fails when the store cannot be written.
    pub fn finish(mut self) -> Result<SinkStats> {
        self.commit()?;
        Ok(SinkStats {
            images_ok: self.ok.len(),
            images_failed: self.failed.len(),
            rows: self.committed_rows,
            first_error: self.first_error,
        })
    }
}

/// Why an output row cannot be stored as a prediction: NaN or infinite scores have no ranking
/// that two CPUs agree on (a NaN's place depends on the comparison the code happens to use), and
/// a row of the wrong length is not the model's answer.
fn unusable(values: &[f32], classes: Option<usize>) -> Option<String> {
    if let Some(n) = classes
        && values.len() != n
    {
        return Some(format!(
            "output row of {} values, but the model declares {n} classes",
            values.len()
        ));
    }
    let nan = values.iter().filter(|v| v.is_nan()).count();
    let inf = values.iter().filter(|v| v.is_infinite()).count();
    (nan + inf > 0).then(|| {
        format!(
            "non-finite output: {nan} NaN and {inf} infinite of {} scores",
            values.len()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::unusable;

    #[test]
    fn only_finite_rows_of_the_declared_length_are_predictions() {
        assert_eq!(unusable(&[0.1, 2.0, -3.0], Some(3)), None);
        assert_eq!(unusable(&[0.1, 2.0, -3.0], None), None);
        let short = unusable(&[0.1, 2.0], Some(1000)).unwrap();
        assert!(
            short.contains("2 values") && short.contains("1000 classes"),
            "{short}"
        );
        let odd = unusable(&[f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1.0], Some(4)).unwrap();
        assert!(odd.contains("1 NaN and 2 infinite of 4"), "{odd}");
    }
}
