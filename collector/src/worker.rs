//! The worker: the process that runs one cell (see [`crate::protocol`] for what it speaks).
//!
//! It reads a request, loads the model, answers `Ready`, then for every input batch runs the
//! engine `repetitions` times (after `warmup` untimed runs on the first batch) and streams one
//! result batch back per input batch, so each image's repetitions arrive together. Input is read
//! on a separate thread into a small bounded queue, so decoding the next batch overlaps with
//! inference and the engine never waits on the pipe.
//!
//! A crash, an abort or a hang here fails only this cell: the collector sees the process end
//! (or go quiet) and records it. For tests, `DELTANN_FAULT` injects such failures on purpose
//! (documented in docs/ENGINES.md).

use std::io::{BufReader, BufWriter, Read, Write};
use std::sync::Arc;
use std::sync::mpsc::sync_channel;
use std::time::{Duration, Instant};

use arrow::array::{
    ArrayRef, AsArray, Int32Builder, Int64Builder, ListBuilder, StringArray, StringBuilder,
};
use arrow::datatypes::Float32Type;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use arrow::record_batch::RecordBatch;

use crate::engine::{self, Engine};
use crate::protocol::{self, Done, PROTOCOL_VERSION, Ready, Request};

/// Environment variable that injects failures, for testing isolation and timeouts:
/// `abort-after=N`, `exit-after=N`, `hang-after=N` (after N batches), `fail-image=ID` (with
/// `fail-rep=R`: only its repetition R), `orphan-after=N` (start a process that keeps the
/// worker's stdout and stderr open, write its pid to the file `orphan-pidfile=PATH`, then hang),
/// `stray-id-after=N` (batch N's results name images the collector never sent).
pub const FAULT_ENV: &str = "DELTANN_FAULT";

#[derive(Debug, Default)]
struct Faults {
    abort_after: Option<u64>,
    exit_after: Option<u64>,
    hang_after: Option<u64>,
    fail_image: Option<String>,
    fail_rep: Option<usize>,
    orphan_after: Option<u64>,
    orphan_pidfile: Option<String>,
    stray_id_after: Option<u64>,
}

impl Faults {
    fn from_env() -> Self {
        let mut faults = Faults::default();
        let Ok(spec) = std::env::var(FAULT_ENV) else {
            return faults;
        };
        for item in spec.split(',') {
            let (key, value) = item.split_once('=').unwrap_or((item, ""));
            match key.trim() {
                "abort-after" => faults.abort_after = value.parse().ok(),
                "exit-after" => faults.exit_after = value.parse().ok(),
                "hang-after" => faults.hang_after = value.parse().ok(),
                "fail-image" => faults.fail_image = Some(value.to_string()),
                "fail-rep" => faults.fail_rep = value.parse().ok(),
                "orphan-after" => faults.orphan_after = value.parse().ok(),
                "orphan-pidfile" => faults.orphan_pidfile = Some(value.to_string()),
                "stray-id-after" => faults.stray_id_after = value.parse().ok(),
                _ => {}
            }
        }
        faults
    }

    fn before_batch(&self, done: u64) {
        if self.abort_after == Some(done) {
            eprintln!("deltann worker: injected abort after {done} batches");
            std::process::abort();
        }
        if self.exit_after == Some(done) {
            eprintln!("deltann worker: injected exit after {done} batches");
            std::process::exit(3);
        }
        if self.orphan_after == Some(done) {
            // A process the engine started (a compiler, a helper server) that outlives the
            // worker with its output pipes open.
            eprintln!("deltann worker: injected orphan after {done} batches");
            if let Ok(child) = std::process::Command::new("sleep")
                .arg("600")
                .stdin(std::process::Stdio::null())
                .spawn()
                && let Some(path) = &self.orphan_pidfile
            {
                let _ = std::fs::write(path, child.id().to_string());
            }
        }
        if self.hang_after == Some(done) || self.orphan_after == Some(done) {
            eprintln!("deltann worker: injected hang after {done} batches");
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
    }
}

/// Serves one request from `input`, answering on `output`.
///
/// # Errors
/// Returns a message when the protocol is broken (bad request, closed pipe, wrong input schema).
/// Engine failures are not errors: they are answered as `Ready { ok: false }` or as error rows.
pub fn serve<R: Read + Send + 'static, W: Write>(input: R, output: W) -> Result<(), String> {
    let mut input = BufReader::new(input);
    let mut out = BufWriter::new(output);
    let request: Request = protocol::read_line(&mut input)
        .map_err(|e| format!("reading request: {e}"))?
        .ok_or("no request on stdin")?;
    let kind = request.engine.engine;
    let refuse = |out: &mut BufWriter<W>, error: String| {
        let ready = Ready {
            protocol: PROTOCOL_VERSION,
            ok: false,
            engine: kind.name().into(),
            engine_version: String::new(),
            load_ms: 0.0,
            error: Some(error),
        };
        protocol::write_line(out, &ready).map_err(|e| format!("writing answer: {e}"))
    };
    if request.protocol != PROTOCOL_VERSION {
        return refuse(
            &mut out,
            format!(
                "protocol version {} requested, this worker speaks {PROTOCOL_VERSION}",
                request.protocol
            ),
        );
    }
    if request.probe {
        return match engine::version(kind, request.engine.ort_library.as_deref()) {
            Ok(version) => {
                let ready = Ready {
                    protocol: PROTOCOL_VERSION,
                    ok: true,
                    engine: kind.name().into(),
                    engine_version: version,
                    load_ms: 0.0,
                    error: None,
                };
                protocol::write_line(&mut out, &ready).map_err(|e| format!("writing answer: {e}"))
            }
            Err(e) => refuse(&mut out, e),
        };
    }

    let started = Instant::now();
    let mut engine = match engine::load(&request.engine) {
        Ok(engine) => engine,
        Err(e) => return refuse(&mut out, e),
    };
    let ready = Ready {
        protocol: PROTOCOL_VERSION,
        ok: true,
        engine: kind.name().into(),
        engine_version: engine.version().to_string(),
        load_ms: started.elapsed().as_secs_f64() * 1e3,
        error: None,
    };
    protocol::write_line(&mut out, &ready).map_err(|e| format!("writing ready: {e}"))?;

    // Read ahead on another thread: two batches in flight hide the pipe behind inference.
    let (tx, rx) = sync_channel::<Result<RecordBatch, String>>(2);
    std::thread::spawn(move || {
        let reader = match StreamReader::try_new(input, None) {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.send(Err(format!("reading input stream: {e}")));
                return;
            }
        };
        for batch in reader {
            if tx.send(batch.map_err(|e| e.to_string())).is_err() {
                return;
            }
        }
    });

    let faults = Faults::from_env();
    let expected_len = request.engine.input_shape.iter().product::<usize>();
    let mut writer = StreamWriter::try_new(out, &protocol::results_schema_of(&request))
        .map_err(|e| format!("starting result stream: {e}"))?;
    let mut batches = 0u64;
    for batch in rx {
        let batch = batch?;
        faults.before_batch(batches);
        if !request.engine.expose.is_empty() {
            let tensors = expose_batch(engine.as_mut(), &batch, expected_len)?;
            writer
                .write(&tensors)
                .and_then(|()| writer.flush())
                .map_err(|e| format!("writing tensors: {e}"))?;
            batches += 1;
            continue;
        }
        let results = run_batch(
            engine.as_mut(),
            &request,
            &batch,
            expected_len,
            batches,
            batches == 0,
            &faults,
        )?;
        let results = if faults.stray_id_after == Some(batches) {
            stray_ids(&results)?
        } else {
            results
        };
        writer
            .write(&results)
            .and_then(|()| writer.flush())
            .map_err(|e| format!("writing results: {e}"))?;
        batches += 1;
    }
    writer
        .finish()
        .map_err(|e| format!("ending result stream: {e}"))?;
    let mut out = writer
        .into_inner()
        .map_err(|e| format!("ending result stream: {e}"))?;
    let done = Done {
        batches,
        peak_rss_kib: crate::host::peak_rss_kib(),
    };
    protocol::write_line(&mut out, &done).map_err(|e| format!("writing done: {e}"))
}

/// The same results under image ids that were never sent (an injected protocol violation).
fn stray_ids(results: &RecordBatch) -> Result<RecordBatch, String> {
    let index = results
        .schema()
        .index_of(protocol::IMAGE_ID)
        .map_err(|e| e.to_string())?;
    let ids = results.column(index).as_string::<i32>();
    let renamed: arrow::array::StringArray = ids
        .iter()
        .map(|id| id.map(|id| format!("never-sent/{id}")))
        .collect();
    let mut columns = results.columns().to_vec();
    columns[index] = std::sync::Arc::new(renamed);
    RecordBatch::try_new(results.schema(), columns).map_err(|e| e.to_string())
}

/// The image ids and the flat float32 tensors of an input batch, checked against the protocol.
fn input_of(batch: &RecordBatch, expected_len: usize) -> Result<(&StringArray, &[f32]), String> {
    let schema_error = || {
        format!(
            "input batch does not match the protocol (expected {}: utf8, {}: \
             fixed_size_list<float32, {expected_len}>)",
            protocol::IMAGE_ID,
            protocol::TENSOR
        )
    };
    let ids = batch
        .column_by_name(protocol::IMAGE_ID)
        .and_then(|c| c.as_string_opt::<i32>())
        .ok_or_else(schema_error)?;
    let tensors = batch
        .column_by_name(protocol::TENSOR)
        .and_then(|c| c.as_fixed_size_list_opt())
        .ok_or_else(schema_error)?;
    if tensors.value_length() as usize != expected_len {
        return Err(schema_error());
    }
    let rows = batch.num_rows();
    let values = tensors
        .values()
        .as_primitive_opt::<Float32Type>()
        .ok_or_else(schema_error)?
        .values();
    let start = tensors.value_offset(0) as usize;
    let input = values
        .get(start..start + rows * expected_len)
        .ok_or_else(schema_error)?;
    Ok((ids, input))
}

/// Runs each image of `batch` alone with every exposed tensor returned: one row per image and
/// tensor (see [`protocol::tensors_schema`]). An engine error is one row with the error.
fn expose_batch(
    engine: &mut dyn Engine,
    batch: &RecordBatch,
    expected_len: usize,
) -> Result<RecordBatch, String> {
    let (ids, input) = input_of(batch, expected_len)?;
    let mut image_id = StringBuilder::new();
    let mut name = StringBuilder::new();
    let mut values = ListBuilder::new(arrow::array::Float32Builder::new());
    let mut error = StringBuilder::new();
    for (row, id) in ids.iter().enumerate() {
        let id = id.unwrap_or_default();
        let one = &input[row * expected_len..(row + 1) * expected_len];
        match engine.run_exposed(one, 1) {
            Ok(tensors) => {
                for tensor in tensors {
                    image_id.append_value(id);
                    name.append_value(&tensor.name);
                    values.values().append_slice(&tensor.values);
                    values.append(true);
                    error.append_null();
                }
            }
            Err(e) => {
                image_id.append_value(id);
                name.append_null();
                values.append(false);
                error.append_value(e);
            }
        }
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(image_id.finish()),
        Arc::new(name.finish()),
        Arc::new(values.finish()),
        Arc::new(error.finish()),
    ];
    RecordBatch::try_new(protocol::tensors_schema(), columns).map_err(|e| e.to_string())
}

fn run_batch(
    engine: &mut dyn Engine,
    request: &Request,
    batch: &RecordBatch,
    expected_len: usize,
    batch_index: u64,
    warm_up: bool,
    faults: &Faults,
) -> Result<RecordBatch, String> {
    let (ids, input) = input_of(batch, expected_len)?;
    let rows = batch.num_rows();

    let injected = faults
        .fail_image
        .as_deref()
        .filter(|bad| ids.iter().any(|id| id == Some(*bad)))
        .map(|bad| format!("injected failure for image {bad}"));

    if warm_up && injected.is_none() {
        for _ in 0..request.warmup {
            // A warm-up failure shows up again, and is recorded, in the timed runs.
            let _ = engine.run(input, rows);
        }
    }

    let reps = request.repetitions.max(1) as usize;
    let mut out = ResultBuilder::with_capacity(rows * reps);
    for rep in 0..reps {
        let result = match &injected {
            Some(e) if faults.fail_rep.is_none_or(|r| r == rep) => Err(e.clone()),
            _ => engine.run(input, rows),
        };
        let rep = i32::try_from(rep).unwrap_or(i32::MAX);
        match result {
            Ok(output)
                if rows > 0
                    && output.values.len() % rows == 0
                    && output.shape.first().is_none_or(|&n| n == rows) =>
            {
                let nanos = i64::try_from(output.elapsed.as_nanos()).unwrap_or(i64::MAX);
                let per_row = output.values.len() / rows;
                for (r, id) in ids.iter().enumerate() {
                    let logits = &output.values[r * per_row..(r + 1) * per_row];
                    out.push(
                        id.unwrap_or_default(),
                        rep,
                        batch_index,
                        rows,
                        nanos,
                        Ok(logits),
                    );
                }
            }
            Ok(output) => {
                let e = format!(
                    "output shape {:?} does not split into the {rows} rows sent",
                    output.shape
                );
                for id in ids.iter() {
                    out.push(id.unwrap_or_default(), rep, batch_index, rows, 0, Err(&e));
                }
            }
            Err(e) => {
                for id in ids.iter() {
                    out.push(id.unwrap_or_default(), rep, batch_index, rows, 0, Err(&e));
                }
            }
        }
    }
    out.finish()
}

/// Builds a result batch row by row.
pub(crate) struct ResultBuilder {
    image_id: StringBuilder,
    repetition: Int32Builder,
    batch_index: Int64Builder,
    batch_rows: Int32Builder,
    logits: ListBuilder<arrow::array::Float32Builder>,
    latency: Int64Builder,
    batch_latency: Int64Builder,
    error: StringBuilder,
}

impl ResultBuilder {
    pub(crate) fn with_capacity(rows: usize) -> Self {
        Self {
            image_id: StringBuilder::with_capacity(rows, rows * 16),
            repetition: Int32Builder::with_capacity(rows),
            batch_index: Int64Builder::with_capacity(rows),
            batch_rows: Int32Builder::with_capacity(rows),
            logits: ListBuilder::with_capacity(arrow::array::Float32Builder::new(), rows),
            latency: Int64Builder::with_capacity(rows),
            batch_latency: Int64Builder::with_capacity(rows),
            error: StringBuilder::new(),
        }
    }

    pub(crate) fn push(
        &mut self,
        image_id: &str,
        repetition: i32,
        batch_index: u64,
        batch_rows: usize,
        batch_latency_ns: i64,
        logits: Result<&[f32], &str>,
    ) {
        let rows = i64::try_from(batch_rows.max(1)).unwrap_or(1);
        self.image_id.append_value(image_id);
        self.repetition.append_value(repetition);
        self.batch_index
            .append_value(i64::try_from(batch_index).unwrap_or(i64::MAX));
        self.batch_rows
            .append_value(i32::try_from(batch_rows).unwrap_or(i32::MAX));
        self.latency.append_value(batch_latency_ns / rows);
        self.batch_latency.append_value(batch_latency_ns);
        match logits {
            Ok(values) => {
                self.logits.values().append_slice(values);
                self.logits.append(true);
                self.error.append_null();
            }
            Err(e) => {
                self.logits.append(false);
                self.error.append_value(e);
            }
        }
    }

    pub(crate) fn finish(mut self) -> Result<RecordBatch, String> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.image_id.finish()),
            Arc::new(self.repetition.finish()),
            Arc::new(self.batch_index.finish()),
            Arc::new(self.batch_rows.finish()),
            Arc::new(self.logits.finish()),
            Arc::new(self.latency.finish()),
            Arc::new(self.batch_latency.finish()),
            Arc::new(self.error.finish()),
        ];
        RecordBatch::try_new(protocol::result_schema(), columns).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::Array;

    use super::*;

    #[test]
    fn result_rows_share_the_batch_latency() {
        let mut b = ResultBuilder::with_capacity(2);
        b.push("a", 0, 7, 2, 1000, Ok(&[1.0, 2.0]));
        b.push("b", 0, 7, 2, 1000, Err("boom"));
        let batch = b.finish().unwrap();
        assert_eq!(batch.num_rows(), 2);
        let latency = batch
            .column(5)
            .as_primitive::<arrow::datatypes::Int64Type>();
        assert_eq!(latency.value(0), 500);
        let logits = batch.column(4).as_list::<i32>();
        assert!(logits.is_valid(0) && logits.is_null(1));
        assert_eq!(batch.column(7).as_string::<i32>().value(1), "boom");
    }
}
