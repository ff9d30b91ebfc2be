/*!
deltann's analyzer: what a reviewer asks of a store after an overnight sweep.

- [`context`] opens a store for SQL (DataFusion) through [`provider`], which serves exactly the
  committed parts; [`queries`] holds the saved queries of `queries/`; [`format`] prints results.
- [`analysis`] is the computed-once view of a store: [`disagreement`] streams `outputs` once to
  compare every pair of cells of a model family ([`metrics`]) and measure each cell's run-to-run
  floor; [`cells`] names the environment dimensions; [`stats`] gives bootstrap intervals for
  latency quantiles and contrasts.
- [`report`] renders an analysis, [`check`] turns it into a CI gate, [`diff`] compares two stores.
- [`synth`] writes realistic synthetic stores for tests and benchmarks.
*/

pub mod analysis;
pub mod cells;
pub mod check;
pub mod context;
pub mod detail;
pub mod diff;
pub mod disagreement;
pub mod error;
pub mod format;
pub mod metrics;
pub mod provider;
pub mod queries;
pub mod report;
pub mod stats;
pub mod synth;

pub use error::{Error, Result};
