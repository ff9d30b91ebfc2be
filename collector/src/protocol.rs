//! The worker protocol: how the collector talks to the process that runs one cell.
//!
//! Over the worker's stdin, the collector sends one JSON line ([`Request`]) and then an Arrow IPC
//! stream of input batches ([`input_schema`]: one row per image, the tensor as a fixed-size list
//! of float32). Over stdout, the worker answers one JSON line ([`Ready`]), then an Arrow IPC
//! stream of results ([`result_schema`]: one row per image and repetition), then one JSON line
//! ([`Done`]). Anything else the worker wants to say goes to stderr, which the collector keeps
//! (the tail of it ends up in the cell's error when the worker dies).
//!
//! The format is documented for other implementations in docs/ENGINES.md: any program that speaks
//! it (for example a Python script with pyarrow driving PyTorch on a GPU) can be a worker.

use std::io::{BufRead, Write};
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::reader::StreamReader;
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

use crate::engine::EngineConfig;

/// Version of this protocol; a worker refuses requests of another version.
pub const PROTOCOL_VERSION: u32 = 1;

/// Input column: image id.
pub const IMAGE_ID: &str = "image_id";
/// Input column: the preprocessed tensor of one image.
pub const TENSOR: &str = "tensor";
/// Result column: repetition index, from 0.
pub const REPETITION: &str = "repetition";
/// Result column: index of the engine call within the cell (0-based, counting every input batch).
pub const BATCH_INDEX: &str = "batch_index";
/// Result column: images in that engine call.
pub const BATCH_ROWS: &str = "batch_rows";
/// Result column: the image's output row (null on error).
pub const LOGITS: &str = "logits";
/// Result column: the engine call's duration divided by its rows.
pub const LATENCY_NS: &str = "latency_ns";
/// Result column: the engine call's duration.
pub const BATCH_LATENCY_NS: &str = "batch_latency_ns";
/// Result column: the engine's error for this call (null when it succeeded).
pub const ERROR: &str = "error";

/// What the collector asks of a worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Must equal [`PROTOCOL_VERSION`].
    pub protocol: u32,
    /// The cell being run (for the worker's own messages).
    pub cell_id: String,
    /// What to load and how.
    pub engine: EngineConfig,
    /// Untimed runs on the first batch before timing starts.
    pub warmup: u32,
    /// Timed runs of every batch.
    pub repetitions: u32,
    /// Report the engine's version and exit without loading the model or reading inputs.
    #[serde(default)]
    pub probe: bool,
}

/// The worker's first answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ready {
    /// Protocol version the worker speaks.
    pub protocol: u32,
    /// Whether the engine and model loaded. When false, `error` says why and the worker exits.
    pub ok: bool,
    /// Engine name, e.g. `ort`.
    pub engine: String,
    /// Engine version as the engine reports it (empty when unknown).
    pub engine_version: String,
    /// Time to load the model, in milliseconds.
    pub load_ms: f64,
    /// Why loading failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The worker's last answer, after the results stream.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Done {
    /// Input batches processed.
    pub batches: u64,
    /// Peak resident memory of the worker, in KiB, where the OS reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_kib: Option<u64>,
}

/// Schema of the input stream for tensors of `len` elements per image.
pub fn input_schema(len: usize) -> SchemaRef {
    let len = i32::try_from(len).unwrap_or(i32::MAX);
    Arc::new(Schema::new(vec![
        Field::new(IMAGE_ID, DataType::Utf8, false),
        Field::new(
            TENSOR,
            DataType::FixedSizeList(Arc::new(Field::new("item", DataType::Float32, false)), len),
            false,
        ),
    ]))
}

/// Schema of the results stream.
pub fn result_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(IMAGE_ID, DataType::Utf8, false),
        Field::new(REPETITION, DataType::Int32, false),
        Field::new(BATCH_INDEX, DataType::Int64, false),
        Field::new(BATCH_ROWS, DataType::Int32, false),
        Field::new(LOGITS, DataType::new_list(DataType::Float32, true), true),
        Field::new(LATENCY_NS, DataType::Int64, false),
        Field::new(BATCH_LATENCY_NS, DataType::Int64, false),
        Field::new(ERROR, DataType::Utf8, true),
    ]))
}

/// Writes one message as a JSON line and flushes.
///
/// # Errors
/// Fails when the pipe is closed.
pub fn write_line<T: Serialize>(out: &mut impl Write, message: &T) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(message).map_err(std::io::Error::other)?;
    line.push(b'\n');
    out.write_all(&line)?;
    out.flush()
}

/// The longest protocol line read (the messages are a few hundred bytes; this bounds what a
/// broken worker printing without newlines can make the collector hold).
pub const MAX_LINE: u64 = 1 << 20;

/// Reads one JSON-line message. `Ok(None)` at end of stream.
///
/// # Errors
/// Fails on I/O errors, on a line longer than [`MAX_LINE`], and on a line that is not the
/// expected message (the error quotes the line, which usually shows what a misbehaving library
/// printed to stdout).
pub fn read_line<T: for<'de> Deserialize<'de>>(
    input: &mut impl BufRead,
) -> std::io::Result<Option<T>> {
    let mut line = String::new();
    let read = std::io::Read::take(&mut *input, MAX_LINE).read_line(&mut line)?;
    if read == 0 {
        return Ok(None);
    }
    if !line.ends_with('\n') && read as u64 == MAX_LINE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("protocol message longer than {MAX_LINE} bytes"),
        ));
    }
    serde_json::from_str(line.trim_end())
        .map(Some)
        .map_err(|e| {
            let shown: String = line.chars().take(200).collect();
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("expected a protocol message, got {shown:?}: {e}"),
            )
        })
}

/// One thing decoded from a worker's standard output.
#[derive(Debug)]
pub enum Output {
    Ready(Ready),
    Results(RecordBatch),
    Done(Done),
    /// The stream ended or broke where it should not have; the reason (empty when the worker
    /// wrote nothing at all). Nothing follows it.
    Broken(String),
}

/// Decodes a worker's standard output in protocol order (Ready, result batches, Done), handing
/// each piece to `emit` as it arrives; stops when `emit` returns false, after `Broken`, or after
/// Ready alone for a `probe`. Whatever the bytes, it ends with a value, never a panic: the
/// collector reads this from a process it does not trust.
pub fn decode_output(mut input: impl BufRead, probe: bool, mut emit: impl FnMut(Output) -> bool) {
    let ready: Ready = match read_line(&mut input) {
        Ok(Some(r)) => r,
        Ok(None) => {
            emit(Output::Broken(String::new()));
            return;
        }
        Err(e) => {
            emit(Output::Broken(format!("protocol error: {e}")));
            return;
        }
    };
    let ok = ready.ok && ready.protocol == PROTOCOL_VERSION;
    let protocol = ready.protocol;
    if !emit(Output::Ready(ready)) || !ok {
        if protocol != PROTOCOL_VERSION {
            emit(Output::Broken(format!(
                "worker speaks protocol {protocol}, expected {PROTOCOL_VERSION}"
            )));
        }
        return;
    }
    // Probes end after Ready.
    if probe {
        emit(Output::Done(Done::default()));
        return;
    }
    {
        let reader = match StreamReader::try_new(&mut input, None) {
            Ok(r) => r,
            Err(e) => {
                emit(Output::Broken(format!("protocol error in results: {e}")));
                return;
            }
        };
        if reader.schema() != result_schema() {
            emit(Output::Broken(format!(
                "protocol error: result schema {:?} is not the protocol's",
                reader.schema()
            )));
            return;
        }
        for batch in reader {
            match batch {
                Ok(b) => {
                    if !emit(Output::Results(b)) {
                        return;
                    }
                }
                Err(e) => {
                    emit(Output::Broken(format!("results stream broke: {e}")));
                    return;
                }
            }
        }
    }
    match read_line::<Done>(&mut input) {
        Ok(Some(done)) => {
            emit(Output::Done(done));
        }
        Ok(None) => {
            emit(Output::Broken(
                "worker ended without its final message".into(),
            ));
        }
        Err(e) => {
            emit(Output::Broken(format!("protocol error: {e}")));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_without_end_is_refused_at_the_limit() {
        let done = serde_json::to_string(&Done::default()).unwrap();
        let mut ok = std::io::Cursor::new(format!("{done}\n"));
        assert!(read_line::<Done>(&mut ok).unwrap().is_some());
        assert!(read_line::<Done>(&mut ok).unwrap().is_none());
        // A library printing megabytes without a newline to the worker's stdout.
        let flood = vec![b'x'; 3 * MAX_LINE as usize];
        let mut input = std::io::Cursor::new(flood);
        let err = read_line::<Done>(&mut input).unwrap_err().to_string();
        assert!(err.contains("longer than"), "{err}");
        assert_eq!(input.position(), MAX_LINE, "read no further than the limit");
    }
}
