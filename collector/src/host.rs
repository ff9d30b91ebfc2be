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
    /// The CPU's instruction-set extensions that select engines' kernels (ORT's int8 kernels
    /// differ with VNNI, bf16 paths with AMX), space-separated in [`ISA_FLAGS`] order.
    pub cpu_flags: String,
    /// NVIDIA GPUs and the driver, as the driver describes them (`NVIDIA H200 (driver
    /// 570.86.15)`), when there are any.
    pub gpu: Option<String>,
}

/// The instruction-set flags recorded, as Linux's `/proc/cpuinfo` names them (x86 `flags`, Arm
/// `Features`).
pub const ISA_FLAGS: &[&str] = &[
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "asimd",
    "asimddp",
    "sve",
    "i8mm",
    "bf16",
];

/// The [`ISA_FLAGS`] a `/proc/cpuinfo` text lists for its first processor.
pub fn isa_flags(cpuinfo: &str) -> String {
    let listed: std::collections::HashSet<&str> = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags") || l.starts_with("Features"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.split_whitespace().collect())
        .unwrap_or_default();
    ISA_FLAGS
        .iter()
        .filter(|f| listed.contains(*f))
        .copied()
        .collect::<Vec<_>>()
        .join(" ")
}

impl Host {
    /// Reads the current machine's description; fields the OS does not expose read "unknown".
    pub fn current() -> Self {
        let read = |p: &str| std::fs::read_to_string(p).ok();
        let cpu_flags = read("/proc/cpuinfo")
            .map(|text| isa_flags(&text))
            .unwrap_or_default();
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
            cpu_flags,
            gpu: gpus(),
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

/// The NVIDIA GPUs the driver lists (`/proc/driver/nvidia/gpus/*/information`), joined by `; `,
/// with the driver version (`/proc/driver/nvidia/version`).
fn gpus() -> Option<String> {
    let mut models: Vec<String> = std::fs::read_dir("/proc/driver/nvidia/gpus")
        .ok()?
        .filter_map(|gpu| {
            let text = std::fs::read_to_string(gpu.ok()?.path().join("information")).ok()?;
            gpu_model(&text)
        })
        .collect();
    if models.is_empty() {
        return None;
    }
    models.sort();
    let driver = std::fs::read_to_string("/proc/driver/nvidia/version")
        .ok()
        .and_then(|text| driver_version(&text));
    Some(match driver {
        Some(d) => format!("{} (driver {d})", models.join("; ")),
        None => models.join("; "),
    })
}

/// The `Model:` line of a GPU's `information` file.
fn gpu_model(information: &str) -> Option<String> {
    information
        .lines()
        .find_map(|l| l.strip_prefix("Model:"))
        .map(|m| m.trim().to_string())
}

/// The version in the driver's banner (`NVRM version: NVIDIA UNIX x86_64 Kernel Module  570.86.15  ...`).
fn driver_version(banner: &str) -> Option<String> {
    let line = banner.lines().find(|l| l.starts_with("NVRM version"))?;
    line.split_whitespace()
        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()) && w.contains('.'))
        .map(str::to_string)
}

/// Whether this machine has an NVIDIA GPU with its driver loaded (the driver lists each GPU under
/// `/proc/driver/nvidia/gpus`). CUDA cells are skipped where it has none.
pub fn cuda_available() -> bool {
    std::fs::read_dir("/proc/driver/nvidia/gpus").is_ok_and(|mut gpus| gpus.next().is_some())
}

#[cfg(test)]
mod tests {
    #[test]
    fn host_fields_are_filled() {
        let host = super::Host::current();
        assert!(host.cores >= 1);
        assert!(!host.cpu_model.is_empty());
        assert!(!host.os.is_empty());
        let flags = super::isa_flags(
            "processor : 0\nflags\t\t: fpu sse4_2 avx2 avx512f avx512_vnni amx_tile other\n",
        );
        assert_eq!(flags, "sse4_2 avx2 avx512f avx512_vnni amx_tile");
        assert_eq!(
            super::isa_flags("Features\t: fp asimd asimddp sve\n"),
            "asimd asimddp sve"
        );
        if cfg!(target_os = "linux") {
            assert!(super::peak_rss_kib().unwrap() > 0);
        }
    }
}
