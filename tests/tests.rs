//! deltann's integration tests: one binary, one module per area (ripgrep's layout). They run the
//! real `deltann` binary on real models and images and read the store back with arrow-rs.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

mod analysis_collected;
mod analyzer_cli;
mod bad_inputs;
mod ballista;
mod concurrent;
mod e2e;
mod float16;
mod html_report;
mod isolation;
mod localize;
mod object_store;
mod ort_versions;
mod preprocess_reference;
mod python_engines;
mod reference;
mod resume;
mod store_health;
mod study;
mod tui_tmux;
mod upgrade;
mod util;
