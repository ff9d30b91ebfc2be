//! The collector's side of a worker: start the process, feed it tensors, receive its results,
//! and turn every way it can end (done, crash, abort, hang, garbage) into a cell outcome.
//!
//! Four threads per cell: a feeder writes the request and the input stream to the worker's stdin;
//! a reader parses its stdout; a third keeps the tail of its stderr; the caller's thread receives
//! parsed messages with a timeout, so a worker that goes quiet for too long is killed and the
//! cell recorded as timed out. Nothing here panics on a misbehaving worker.

use std::ffi::OsString;
use std::io::{BufReader, BufWriter, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use arrow::ipc::writer::StreamWriter;
use arrow::record_batch::RecordBatch;

use crate::engine::{EngineConfig, EngineKind};
use crate::error::{Error, Result};
use crate::protocol::{self, Done, PROTOCOL_VERSION, Ready, Request};

/// How to start a worker process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerCommand {
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
}

impl WorkerCommand {
    /// This very executable in worker mode (`<exe> worker`).
    ///
    /// # Errors
    /// Fails when the OS cannot tell the path of the running executable.
    pub fn current_exe() -> std::io::Result<Self> {
        Ok(Self {
            program: std::env::current_exe()?,
            args: vec!["worker".into()],
        })
    }

    fn spawn(&self) -> std::io::Result<Child> {
        Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
    }
}

/// How long to wait for a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// A worker that sends nothing for this long (loading, warming up or computing one batch)
    /// is taken to hang, killed, and its cell failed.
    pub stall: Duration,
    /// Optional limit on a whole cell.
    pub cell: Option<Duration>,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            stall: Duration::from_secs(600),
            cell: None,
        }
    }
}

/// How a worker run ended.
#[derive(Debug, Default)]
pub struct WorkerRun {
    /// The worker's `Ready`, if it got that far.
    pub ready: Option<Ready>,
    /// The worker's `Done`, if it finished cleanly.
    pub done: Option<Done>,
    /// Why the cell failed, when it did (load failure, crash, timeout, protocol error).
    pub failure: Option<String>,
}

enum Msg {
    Ready(Ready),
    Results(RecordBatch),
    Done(Done),
    Broken(String),
}

/// Asks a worker for an engine's version (for ORT: loads the library, no model).
///
/// # Errors
/// Fails when the worker cannot start, or the engine refuses (for example an incompatible
/// ONNX Runtime library), with the engine's message.
pub fn probe(
    worker: &WorkerCommand,
    engine: EngineKind,
    ort_library: Option<&Path>,
) -> Result<String> {
    let request = Request {
        protocol: PROTOCOL_VERSION,
        cell_id: String::new(),
        engine: EngineConfig {
            engine,
            model_path: PathBuf::new(),
            input_shape: Vec::new(),
            batch_size: 1,
            threads: 1,
            ort_optimization: None,
            ort_library: ort_library.map(Path::to_path_buf),
            tract_plan: None,
            device: None,
            settings: Default::default(),
            expose: Vec::new(),
        },
        warmup: 0,
        repetitions: 0,
        probe: true,
    };
    let run = run(
        worker,
        &request,
        Box::new(std::iter::empty()),
        Timeouts {
            stall: Duration::from_secs(60),
            cell: None,
        },
        &mut |_| Ok(()),
    )?;
    match run.ready {
        Some(Ready {
            ok: true,
            engine_version,
            ..
        }) => Ok(engine_version),
        Some(Ready { error, .. }) => Err(Error::Engine(format!(
            "{engine}{}: {}",
            ort_library.map_or(String::new(), |l| format!(" ({})", l.display())),
            error.unwrap_or_default()
        ))),
        None => Err(Error::Worker(run.failure.unwrap_or_default())),
    }
}

/// Input batches for a worker; an `Err` stops the cell (the input could not be read).
pub type Inputs = Box<dyn Iterator<Item = Result<RecordBatch>> + Send>;

/// Result batches read from a worker but not yet taken by the sink.
const RESULTS_IN_FLIGHT: usize = 4;

/// Runs one request on a fresh worker. `on_message` sees `Ready` first, then each result batch;
/// if it fails, the worker is killed and the error returned (that is a collector failure, such as
/// the store becoming unwritable, not a cell failure).
///
/// # Errors
/// Fails when the worker cannot be started, or `on_message` fails.
pub fn run(
    worker: &WorkerCommand,
    request: &Request,
    inputs: Inputs,
    timeouts: Timeouts,
    on_message: &mut dyn FnMut(Event<'_>) -> Result<()>,
) -> Result<WorkerRun> {
    let mut child = worker
        .spawn()
        .map_err(|e| Error::Worker(format!("cannot start {}: {e}", worker.program.display())))?;
    let (stdin, stdout, stderr) =
        match (child.stdin.take(), child.stdout.take(), child.stderr.take()) {
            (Some(i), Some(o), Some(e)) => (i, o, e),
            _ => {
                let _ = child.kill();
                return Err(Error::Worker("worker pipes were not set up".into()));
            }
        };

    // Bounded: a worker that outruns the sink (which commits to disk) waits for it, rather than
    // piling result batches up in memory.
    let (tx, rx) = mpsc::sync_channel::<Msg>(RESULTS_IN_FLIGHT);
    let request_for_feeder = request.clone();
    let feed_tx = tx.clone();
    let feeder = std::thread::spawn(move || feed(stdin, &request_for_feeder, inputs, &feed_tx));
    let probe = request.probe;
    let schema = protocol::results_schema_of(request);
    let reader = std::thread::spawn(move || read_stdout(stdout, &tx, probe, &schema));
    let stderr_tail = std::thread::spawn(move || tail(stderr, 8 * 1024));

    let started = Instant::now();
    let mut out = WorkerRun::default();
    let mut callback_error = None;
    loop {
        let wait = match timeouts.cell {
            Some(limit) => match limit.checked_sub(started.elapsed()) {
                Some(left) => left.min(timeouts.stall),
                None => Duration::ZERO,
            },
            None => timeouts.stall,
        };
        match rx.recv_timeout(wait) {
            Ok(Msg::Ready(ready)) => {
                let ok = ready.ok;
                if !ok {
                    out.failure = Some(format!(
                        "{} could not load the model: {}",
                        ready.engine,
                        ready.error.clone().unwrap_or_default()
                    ));
                }
                if let Err(e) = on_message(Event::Ready(&ready)) {
                    callback_error = Some(e);
                }
                out.ready = Some(ready);
                if !ok || callback_error.is_some() {
                    break;
                }
            }
            Ok(Msg::Results(batch)) => {
                if let Err(e) = on_message(Event::Results(&batch)) {
                    callback_error = Some(e);
                    break;
                }
            }
            Ok(Msg::Done(done)) => {
                out.done = Some(done);
                break;
            }
            Ok(Msg::Broken(why)) => {
                out.failure = Some(why);
                break;
            }
            Err(RecvTimeoutError::Timeout) => {
                out.failure = Some(match timeouts.cell {
                    Some(limit) if started.elapsed() >= limit => {
                        format!("timed out: cell exceeded {}s", limit.as_secs())
                    }
                    _ => format!(
                        "timed out: the worker sent nothing for {}s (hung?)",
                        timeouts.stall.as_secs()
                    ),
                });
                break;
            }
            Err(RecvTimeoutError::Disconnected) => {
                out.failure
                    .get_or_insert_with(|| "worker closed its output".into());
                break;
            }
        }
    }

    // Nothing more is received: threads still sending get an error instead of waiting forever.
    drop(rx);
    // A clean end is followed by exit; anything else gets the worker killed now.
    let status = if out.done.is_some() || (out.ready.as_ref().is_some_and(|r| !r.ok)) {
        wait_with_timeout(&mut child, Duration::from_secs(10))
    } else {
        let _ = child.kill();
        child.wait().ok()
    };
    // The pipes close when the worker dies, unless a process it started still holds them: then
    // the threads reading them are left to end when that process does.
    let deadline = Instant::now() + THREAD_GRACE;
    let _ = join_until(feeder, deadline);
    let _ = join_until(reader, deadline);
    let stderr_text = join_until(stderr_tail, deadline).unwrap_or_default();

    if let Some(e) = callback_error {
        return Err(e);
    }
    if out.done.is_some() && out.failure.is_none() {
        if let Some(status) = status.filter(|s| !s.success()) {
            out.failure = Some(format!("worker {} after finishing", describe(status)));
        }
    } else if out.failure.is_some() || out.ready.is_none() || out.done.is_none() {
        // Say how the process ended, unless it was our kill after a timeout.
        let mut why = out.failure.take().unwrap_or_default();
        if let Some(status) = status
            && !why.starts_with("timed out")
            && !status.success()
        {
            why = if why.is_empty() || why == "worker closed its output" {
                format!("worker {}", describe(status))
            } else {
                format!("{why} (worker {})", describe(status))
            };
        }
        if why.is_empty() {
            why = "worker ended without finishing".into();
        }
        let stderr_text = stderr_text.trim();
        if !stderr_text.is_empty() && out.ready.as_ref().is_none_or(|r| r.ok) {
            why = format!("{why}; stderr: {stderr_text}");
        }
        out.failure = Some(why);
    }
    Ok(out)
}

/// How long [`run`] waits for its pipe threads once the worker has ended.
const THREAD_GRACE: Duration = Duration::from_secs(5);

/// Joins `handle` if the thread ends by `deadline`; otherwise leaves it running detached (it
/// owns nothing but its pipe) and returns `None`.
fn join_until<T>(handle: std::thread::JoinHandle<T>, deadline: Instant) -> Option<T> {
    while !handle.is_finished() {
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    handle.join().ok()
}

/// What a worker says, as seen by [`run`]'s callback.
#[derive(Debug)]
pub enum Event<'a> {
    /// The model is loaded (or failed to).
    Ready(&'a Ready),
    /// One input batch's results.
    Results(&'a RecordBatch),
}

fn feed(
    stdin: std::process::ChildStdin,
    request: &Request,
    inputs: Inputs,
    tx: &mpsc::SyncSender<Msg>,
) {
    let mut out = BufWriter::with_capacity(1 << 20, stdin);
    if protocol::write_line(&mut out, request).is_err() || request.probe {
        return;
    }
    let schema = protocol::input_schema(request.engine.input_shape.iter().product());
    let Ok(mut writer) = StreamWriter::try_new(out, &schema) else {
        return;
    };
    for batch in inputs {
        match batch {
            Ok(batch) => {
                // A write error means the worker died; the reader reports how.
                if writer.write(&batch).and_then(|()| writer.flush()).is_err() {
                    return;
                }
            }
            Err(e) => {
                let _ = tx.send(Msg::Broken(format!("reading input tensors: {e}")));
                return;
            }
        }
    }
    let _ = writer.finish();
}

fn read_stdout(
    stdout: std::process::ChildStdout,
    tx: &mpsc::SyncSender<Msg>,
    probe: bool,
    schema: &arrow::datatypes::SchemaRef,
) {
    protocol::decode_output(
        BufReader::with_capacity(1 << 20, stdout),
        probe,
        schema,
        |message| {
            let msg = match message {
                protocol::Output::Ready(r) => Msg::Ready(r),
                protocol::Output::Results(b) => Msg::Results(b),
                protocol::Output::Done(d) => Msg::Done(d),
                protocol::Output::Broken(why) => Msg::Broken(why),
            };
            tx.send(msg).is_ok()
        },
    );
}

fn tail(mut stderr: impl Read, keep: usize) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(n) = stderr.read(&mut chunk) {
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 2 * keep {
            buf.drain(..buf.len() - keep);
        }
    }
    let start = buf.len().saturating_sub(keep);
    String::from_utf8_lossy(&buf[start..]).into_owned()
}

fn wait_with_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if started.elapsed() < limit => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                return child.wait().ok();
            }
        }
    }
}

/// "exited with code 3", "was killed by signal 6 (SIGABRT)".
fn describe(status: ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            let name = match signal {
                4 => " (SIGILL)",
                6 => " (SIGABRT)",
                7 => " (SIGBUS)",
                8 => " (SIGFPE)",
                9 => " (SIGKILL)",
                11 => " (SIGSEGV)",
                15 => " (SIGTERM)",
                _ => "",
            };
            return format!("was killed by signal {signal}{name}");
        }
    }
    match status.code() {
        Some(code) => format!("exited with code {code}"),
        None => "ended abnormally".into(),
    }
}
