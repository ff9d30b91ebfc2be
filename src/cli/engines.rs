//! `deltann engines`: which engines this machine can run, and installing the Python ones
//! (torch, openvino, tvm) into their own environments from pinned PyPI versions.

use std::process::ExitCode;

use deltann_collector::engine::{self, EngineKind};
use deltann_collector::python;

/// Lists every engine: built in, or its environment and whether it is installed.
pub fn list() -> anyhow::Result<ExitCode> {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::NOTHING);
    table.set_header(["engine", "devices", "settings", "status"]);
    for kind in EngineKind::ALL {
        let settings: Vec<&str> = engine::settings_of(kind).map(|s| s.key).collect();
        let status = if !kind.is_python() {
            "built in".to_string()
        } else {
            match (python::python(kind), python::env_dir(kind)) {
                (Some(_), Some(dir)) => format!("installed ({})", dir.display()),
                _ => format!("not installed: deltann engines install {kind}"),
            }
        };
        table.add_row([
            kind.name().to_string(),
            kind.devices().join(", "),
            if settings.is_empty() {
                "-".to_string()
            } else {
                settings.join(", ")
            },
            status,
        ]);
    }
    println!("{table}");
    Ok(ExitCode::SUCCESS)
}

/// Installs the named environments (each once; an installed one is kept).
pub fn install(names: &[String]) -> anyhow::Result<ExitCode> {
    for name in names {
        let env = python::PythonEnv::from_name(name).ok_or_else(|| {
            let known: Vec<&str> = python::PythonEnv::all().map(|e| e.name()).collect();
            let what = if EngineKind::ALL.iter().any(|k| k.name() == name) {
                format!("{name} is built into deltann: nothing to install")
            } else {
                format!("no engine `{name}`")
            };
            anyhow::anyhow!("{what}: the installable ones are {}", known.join(", "))
        })?;
        python::install(env, &mut |line| eprintln!("{line}"))?;
    }
    Ok(ExitCode::SUCCESS)
}
