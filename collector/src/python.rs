//! The engines that live in Python (torch, openvino, tvm): their environments and their worker.
//!
//! Each engine has a requirements file of pinned PyPI versions (`workers/python/ENGINE.txt`) and
//! all share one worker script (`workers/python/deltann_worker.py`, speaking the protocol of
//! docs/ENGINES.md); both are compiled into the binary. `deltann engines install ENGINE` creates a
//! virtual environment from the requirements in `DELTANN_HOME/python/ENGINE-HASH/`, HASH being the
//! requirements' own: a changed pin is a new environment, an unchanged one is reused by every
//! sweep. The collector finds the environment there without configuration, writes the script
//! beside it when it differs, and runs the script with the environment's Python. Where the
//! environment is missing, the engine's cells fail with the command that installs it.
//!
//! One more environment is not an engine's: `references` holds the libraries whose
//! preprocessing deltann reproduces (Pillow, OpenCV, TensorFlow), for the test that checks each
//! [`crate::preprocess::Implementation`] against the real one and for anyone who wants to
//! repeat that check (`scripts/preprocess_reference.py`).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::engine::EngineKind;
use crate::error::{Error, Result};
use crate::runner::WorkerCommand;

/// The worker script every Python engine runs.
pub const WORKER: &str = include_str!("../../workers/python/deltann_worker.py");

/// The version an engine is given in cell ids when its environment is not installed.
pub const NOT_INSTALLED: &str = "not installed";

/// Marks an environment whose installation finished.
const READY: &str = ".deltann-ready";

/// A Python environment deltann creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PythonEnv {
    /// An engine's (built-in engines have none).
    Engine(EngineKind),
    /// The preprocessing libraries deltann's implementations are checked against.
    References,
}

impl From<EngineKind> for PythonEnv {
    fn from(engine: EngineKind) -> Self {
        PythonEnv::Engine(engine)
    }
}

impl PythonEnv {
    /// Every environment that can be installed.
    pub fn all() -> impl Iterator<Item = PythonEnv> {
        EngineKind::ALL
            .into_iter()
            .filter(|e| e.is_python())
            .map(PythonEnv::Engine)
            .chain([PythonEnv::References])
    }

    /// Its name on the command line and in its directory's name.
    pub fn name(self) -> &'static str {
        match self {
            PythonEnv::Engine(engine) => engine.name(),
            PythonEnv::References => "references",
        }
    }

    /// The environment by name.
    pub fn from_name(name: &str) -> Option<PythonEnv> {
        PythonEnv::all().find(|e| e.name() == name)
    }
}

impl std::fmt::Display for PythonEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The pinned requirements of an environment (`None` for the built-in engines).
pub fn requirements(env: impl Into<PythonEnv>) -> Option<&'static str> {
    match env.into() {
        PythonEnv::Engine(EngineKind::Torch) => {
            Some(include_str!("../../workers/python/torch.txt"))
        }
        PythonEnv::Engine(EngineKind::Openvino) => {
            Some(include_str!("../../workers/python/openvino.txt"))
        }
        PythonEnv::Engine(EngineKind::Tvm) => Some(include_str!("../../workers/python/tvm.txt")),
        PythonEnv::Engine(EngineKind::Ort | EngineKind::Tract) => None,
        PythonEnv::References => Some(include_str!("../../workers/python/references.txt")),
    }
}

/// Where the environment lives (whether or not it is installed).
pub fn env_dir(env: impl Into<PythonEnv>) -> Option<PathBuf> {
    let env = env.into();
    let reqs = requirements(env)?;
    let hash = &deltann_store::ids::sha256_hex(reqs.as_bytes())[..12];
    Some(
        crate::sweep::deltann_home()
            .join("python")
            .join(format!("{}-{hash}", env.name())),
    )
}

/// The Python of the environment, when it is installed.
pub fn python(env: impl Into<PythonEnv>) -> Option<PathBuf> {
    let dir = env_dir(env)?;
    let python = dir.join("bin").join("python");
    (dir.join(READY).is_file() && python.exists()).then_some(python)
}

/// What to run to install the engine's environment.
pub fn install_hint(engine: EngineKind) -> String {
    format!(
        "{engine}'s Python environment is not installed: run `deltann engines install {engine}` \
         (pinned PyPI versions, installed once into {})",
        env_dir(engine).map_or_else(String::new, |d| d.display().to_string())
    )
}

/// How to start the engine's worker: its environment's Python on the worker script (written
/// into the environment when missing or different).
///
/// # Errors
/// Fails with [`install_hint`] when the environment is not installed, and when the script cannot
/// be written.
pub fn worker_command(engine: EngineKind) -> Result<WorkerCommand> {
    let python = python(engine).ok_or_else(|| Error::Engine(install_hint(engine)))?;
    let dir = env_dir(engine).ok_or_else(|| Error::Engine(format!("{engine} is built in")))?;
    let script = dir.join("deltann_worker.py");
    if std::fs::read_to_string(&script).ok().as_deref() != Some(WORKER) {
        // Written whole and renamed: two collectors starting at once never run half a script.
        let tmp = dir.join(format!("deltann_worker.py.{}.tmp", std::process::id()));
        std::fs::write(&tmp, WORKER)
            .and_then(|()| std::fs::rename(&tmp, &script))
            .map_err(|e| Error::Engine(format!("{}: cannot write: {e}", script.display())))?;
    }
    Ok(WorkerCommand {
        program: python,
        args: vec!["-u".into(), script.into_os_string()],
    })
}

/// Creates the environment from its pinned requirements (`python3 -m venv`, then pip),
/// reporting each step to `say`; an installed one is left as it is. The Python that creates it is
/// `$DELTANN_PYTHON`, else `python3`.
///
/// # Errors
/// Fails, with pip's last words, when the environment cannot be created or a package cannot be
/// installed; a half-made environment is removed by the next attempt.
pub fn install(env: impl Into<PythonEnv>, say: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    let engine = env.into();
    let (Some(reqs), Some(dir)) = (requirements(engine), env_dir(engine)) else {
        return Err(Error::Engine(format!(
            "{engine} is built into deltann: nothing to install"
        )));
    };
    let io = |what: &str, path: &Path, e: std::io::Error| {
        Error::Engine(format!("{what} {}: {e}", path.display()))
    };
    let parent = dir.parent().unwrap_or(&dir).to_path_buf();
    std::fs::create_dir_all(&parent).map_err(|e| io("cannot create", &parent, e))?;
    // One installer per environment at a time (tests and scripts may race to install it).
    let lock_path = parent.join(format!("{}.lock", engine.name()));
    let lock = std::fs::File::create(&lock_path).map_err(|e| io("cannot create", &lock_path, e))?;
    lock.lock().map_err(|e| io("cannot lock", &lock_path, e))?;
    if let Some(python) = python(engine) {
        say(&format!("{engine}: installed in {}", dir.display()));
        return Ok(python);
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| io("cannot remove", &dir, e))?;
    }
    let base = std::env::var_os("DELTANN_PYTHON").unwrap_or_else(|| "python3".into());
    say(&format!("{engine}: creating {}", dir.display()));
    run(
        Command::new(&base).arg("-m").arg("venv").arg(&dir),
        "python -m venv",
    )?;
    let req_path = dir.join("requirements.txt");
    std::fs::write(&req_path, reqs).map_err(|e| io("cannot write", &req_path, e))?;
    let python = dir.join("bin").join("python");
    let pins: Vec<&str> = reqs
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    say(&format!("{engine}: pip install {}", pins.join(" ")));
    run(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
            ])
            .arg(&req_path),
        "pip install",
    )?;
    std::fs::write(dir.join(READY), b"").map_err(|e| io("cannot write", &dir, e))?;
    say(&format!("{engine}: ready"));
    Ok(python)
}

/// Runs a command to completion, failing with the tail of its output.
fn run(command: &mut Command, what: &str) -> Result<()> {
    let out = command
        .output()
        .map_err(|e| Error::Engine(format!("{what}: cannot start: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = text.lines().rev().take(12).collect();
    Err(Error::Engine(format!(
        "{what} failed ({}): {}",
        out.status,
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_python_engine_has_pinned_requirements() {
        for engine in EngineKind::ALL {
            match requirements(engine) {
                Some(reqs) => {
                    assert!(engine.is_python());
                    for line in reqs
                        .lines()
                        .filter(|l| !l.starts_with('#') && !l.is_empty())
                    {
                        assert!(line.contains("=="), "{engine}: `{line}` is not pinned");
                    }
                }
                None => assert!(!engine.is_python()),
            }
        }
        assert!(WORKER.contains("def serve("));
        let references = requirements(PythonEnv::References).unwrap_or_default();
        assert!(references.contains("opencv-python-headless=="));
        assert_eq!(
            PythonEnv::from_name("references"),
            Some(PythonEnv::References)
        );
        assert_eq!(PythonEnv::from_name("ort"), None);
    }
}
