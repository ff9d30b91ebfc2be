//! Facts about the machine and the process, recorded with every run and cell.

/// The machine a run happened on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// Host name.
    pub name: String,
    /// CPU model as the OS names it.
    pub cpu_model: String,
    /// Logical CPUs available to this process.
    pub cores: usize,
    /// Operating system and version.
    pub os: String,
}

impl Host {
    /// Reads the current machine's description; fields the OS does not expose read "unknown".
    pub fn current() -> Self {
        let read = |p: &str| std::fs::read_to_string(p).ok();
        let cpu_model = read("/proc/cpuinfo")
            .and_then(|text| {
                text.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| format!("unknown ({})", std::env::consts::ARCH));
        let os = read("/etc/os-release")
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                    .map(|v| v.trim_matches('"').to_string())
            })
            .map_or_else(
                || std::env::consts::OS.to_string(),
                |pretty| format!("{} ({pretty})", std::env::consts::OS),
            );
        let name = read("/proc/sys/kernel/hostname")
            .or_else(|| read("/etc/hostname"))
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "unknown".into());
        Self {
            name,
            cpu_model,
            cores: std::thread::available_parallelism().map_or(1, usize::from),
            os,
        }
    }
}

/// Peak resident set size of this process in KiB (Linux `VmHWM`), if known.
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
mod tests {
    #[test]
    fn host_fields_are_filled() {
        let host = super::Host::current();
        assert!(host.cores >= 1);
        assert!(!host.cpu_model.is_empty());
        assert!(!host.os.is_empty());
        if cfg!(target_os = "linux") {
            assert!(super::peak_rss_kib().unwrap() > 0);
        }
    }
}

/// Whether this machine has an NVIDIA GPU with its driver loaded (the driver lists each GPU under
/// `/proc/driver/nvidia/gpus`). CUDA cells are skipped where it has none.
pub fn cuda_available() -> bool {
    std::fs::read_dir("/proc/driver/nvidia/gpus").is_ok_and(|mut gpus| gpus.next().is_some())
}
