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

/// Tensors-stream column: the tensor's ONNX name (null on error).
pub const TENSOR_NAME: &str = "tensor_name";
/// Tensors-stream column: its values, flattened and widened to float32 (null on error).
pub const VALUES: &str = "values";

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

/// Schema of the results stream of a request that exposes tensors (`engine.expose`, for
/// `deltann localize`): one row per image and output tensor, the model's outputs first, in the
/// order the engine lists them; an image whose run failed has one row with the error and no name
/// or values. Each input batch is answered by one batch.
pub fn tensors_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(IMAGE_ID, DataType::Utf8, false),
        Field::new(TENSOR_NAME, DataType::Utf8, true),
        Field::new(VALUES, DataType::new_list(DataType::Float32, true), true),
        Field::new(ERROR, DataType::Utf8, true),
    ]))
}

/// The schema a worker answers `request` with.
pub fn results_schema_of(request: &Request) -> SchemaRef {
    if request.engine.expose.is_empty() {
        result_schema()
    } else {
        tensors_schema()
    }
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

/// The largest IPC message metadata accepted from a worker (a result batch's is a few KB).
pub const MAX_IPC_METADATA: usize = 1 << 20;
/// The largest result batch body accepted from a worker: one input batch's every repetition.
pub const MAX_IPC_BODY: u64 = 1 << 30;

/// A worker's Arrow IPC stream, checked message by message before the Arrow reader sees it.
/// The reader allocates what a message's framing declares before reading it, so eight garbage
/// bytes could make the collector reserve gigabytes; here each message's declared metadata and
/// body sizes are checked against [`MAX_IPC_METADATA`] and [`MAX_IPC_BODY`] first. Reads stop
/// exactly at the end-of-stream marker, so the `Done` line after it stays in the input.
struct IpcFrames<R> {
    inner: R,
    /// Bytes checked and not yet handed on (a message's prefix and metadata).
    pending: Vec<u8>,
    at: usize,
    /// Body bytes to pass through before the next message.
    body_left: u64,
    ended: bool,
}

impl<R: std::io::Read> IpcFrames<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            pending: Vec::new(),
            at: 0,
            body_left: 0,
            ended: false,
        }
    }

    /// Reads and checks the next message's prefix and metadata into `pending`.
    fn next_message(&mut self) -> std::io::Result<()> {
        let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
        let mut prefix = [0u8; 8];
        if let Err(e) = self.inner.read_exact(&mut prefix[..4]) {
            // A stream that ends between messages: the Arrow reader reports it.
            return if e.kind() == std::io::ErrorKind::UnexpectedEof {
                self.ended = true;
                Ok(())
            } else {
                Err(e)
            };
        }
        if prefix[..4] != [0xFF; 4] {
            return Err(bad(format!(
                "result stream message starts with {:02x?}, not the IPC continuation marker",
                &prefix[..4]
            )));
        }
        self.inner.read_exact(&mut prefix[4..])?;
        let len = u32::from_le_bytes([prefix[4], prefix[5], prefix[6], prefix[7]]) as usize;
        self.pending.clear();
        self.pending.extend_from_slice(&prefix);
        self.at = 0;
        if len == 0 {
            self.ended = true;
            return Ok(());
        }
        if len > MAX_IPC_METADATA {
            return Err(bad(format!(
                "result stream message metadata of {len} bytes (at most {MAX_IPC_METADATA})"
            )));
        }
        self.pending.resize(8 + len, 0);
        self.inner.read_exact(&mut self.pending[8..])?;
        let message = arrow::ipc::root_as_message(&self.pending[8..])
            .map_err(|e| bad(format!("result stream message metadata: {e}")))?;
        let body = u64::try_from(message.bodyLength())
            .map_err(|_| bad("negative result message body length".into()))?;
        if body > MAX_IPC_BODY {
            return Err(bad(format!(
                "a result batch of {body} bytes (at most {MAX_IPC_BODY}): lower batch_size or \
                 repetitions"
            )));
        }
        self.body_left = body;
        Ok(())
    }
}

impl<R: std::io::Read> std::io::Read for IpcFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.at < self.pending.len() {
            let n = buf.len().min(self.pending.len() - self.at);
            buf[..n].copy_from_slice(&self.pending[self.at..self.at + n]);
            self.at += n;
            return Ok(n);
        }
        if self.body_left > 0 {
            let want = buf
                .len()
                .min(usize::try_from(self.body_left).unwrap_or(usize::MAX));
            let n = self.inner.read(&mut buf[..want])?;
            self.body_left -= n as u64;
            return Ok(n);
        }
        if self.ended {
            return Ok(0);
        }
        self.next_message()?;
        self.read(buf)
    }
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
pub fn decode_output(
    mut input: impl BufRead,
    probe: bool,
    schema: &SchemaRef,
    mut emit: impl FnMut(Output) -> bool,
) {
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
        let reader = match StreamReader::try_new(IpcFrames::new(&mut input), None) {
            Ok(r) => r,
            Err(e) => {
                emit(Output::Broken(format!("protocol error in results: {e}")));
                return;
            }
        };
        if reader.schema() != *schema {
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

    /// The Ready line, then `stream`.
    fn output(stream: &[u8]) -> Vec<u8> {
        let ready = Ready {
            protocol: PROTOCOL_VERSION,
            ok: true,
            engine: "tract".into(),
            engine_version: "0".into(),
            load_ms: 0.0,
            error: None,
        };
        let mut out = serde_json::to_vec(&ready).unwrap();
        out.push(b'\n');
        out.extend_from_slice(stream);
        out
    }

    fn decode(bytes: &[u8]) -> Vec<String> {
        let mut seen = Vec::new();
        decode_output(bytes, false, &result_schema(), |o| {
            seen.push(match o {
                Output::Ready(_) => "ready".to_string(),
                Output::Results(b) => format!("results {}", b.num_rows()),
                Output::Done(d) => format!("done {}", d.batches),
                Output::Broken(why) => format!("broken: {why}"),
            });
            true
        });
        seen
    }

    #[test]
    fn a_result_stream_decodes_and_oversized_framing_is_refused_before_allocating() {
        use arrow::array::{
            ArrayRef, Float32Builder, Int32Array, Int64Array, ListBuilder, StringArray,
        };
        let mut logits = ListBuilder::new(Float32Builder::new());
        logits.values().append_slice(&[0.5, 1.5]);
        logits.append(true);
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec!["a.jpg"])),
            Arc::new(Int32Array::from(vec![0])),
            Arc::new(Int64Array::from(vec![0])),
            Arc::new(Int32Array::from(vec![1])),
            Arc::new(logits.finish()),
            Arc::new(Int64Array::from(vec![10])),
            Arc::new(Int64Array::from(vec![10])),
            Arc::new(StringArray::from(vec![None::<&str>])),
        ];
        let batch = RecordBatch::try_new(result_schema(), columns).unwrap();
        let mut stream = Vec::new();
        {
            let mut w =
                arrow::ipc::writer::StreamWriter::try_new(&mut stream, &result_schema()).unwrap();
            w.write(&batch).unwrap();
            w.write(&batch).unwrap();
            w.finish().unwrap();
        }
        let mut good = stream.clone();
        good.extend_from_slice(b"{\"batches\":2}\n");
        assert_eq!(
            decode(&output(&good)),
            ["ready", "results 1", "results 1", "done 2"]
        );

        // Garbage declaring 2 GB of metadata, or a legacy prefix without the marker.
        for garbage in [
            &[0xFF, 0xFF, 0xFF, 0xFF, 0xF0, 0xFF, 0xFF, 0x7F, 1, 2][..],
            &[0xFF, 0x00, 0x00, 0x0A, 0x30, 0x2C, 0x20][..],
        ] {
            let seen = decode(&output(garbage));
            assert_eq!(seen.len(), 2, "{seen:?}");
            assert!(
                seen[1].starts_with("broken: protocol error in results"),
                "{seen:?}"
            );
        }
        // A message whose metadata declares a body beyond the limit: the schema message is
        // fine, the batch's body length is patched to 2^40.
        let schema_len = 8 + u32::from_le_bytes(stream[4..8].try_into().unwrap()) as usize;
        let schema_len = schema_len
            + arrow::ipc::root_as_message(&stream[8..schema_len])
                .unwrap()
                .bodyLength() as usize;
        let meta_len =
            u32::from_le_bytes(stream[schema_len + 4..schema_len + 8].try_into().unwrap()) as usize;
        let meta = &stream[schema_len + 8..schema_len + 8 + meta_len];
        let body = arrow::ipc::root_as_message(meta).unwrap().bodyLength();
        let at = meta
            .windows(8)
            .position(|w| w == body.to_le_bytes())
            .unwrap();
        let mut huge = stream.clone();
        huge[schema_len + 8 + at..schema_len + 8 + at + 8]
            .copy_from_slice(&(1i64 << 40).to_le_bytes());
        let seen = decode(&output(&huge));
        assert!(
            seen.last().unwrap().contains("at most 1073741824"),
            "{seen:?}"
        );
    }

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
