/*!
deltann's analyzer: what a reviewer asks of a store after an overnight sweep.

- [`context`] opens a store for SQL (DataFusion) through [`provider`], which serves exactly the
  committed parts; [`queries`] holds the saved queries of `queries/`; [`format`] prints results.
- [`derived`] is the analysis kept as state beside the data: each committed `outputs` part is
  folded in once ([`merge`] reads parts by image), comparing every pair of cells of a model
  family on each image ([`metrics`]) into the `comparisons` table and each cell's answers and
  run-to-run floor into `cell_images`, with running sums per pair and cell.
- [`analysis`] summarises the derived tables: [`disagreement`] for pairs, floors and per-image
  findings (computed either by one hand-written pass or by [`frames`], lazy Polars frames over
  the derived Parquet; the suite checks they agree), [`cells`] for the environment dimensions,
  [`stats`] for bootstrap intervals of latency quantiles and contrasts; [`detail`] looks one
  image up.
- [`udf`] adds `logits_values()`, the logits' bytes as floats in SQL, and the fold's measures as
  SQL functions, with which [`derived::distributed`] builds the derived tables on a Ballista
  cluster ([`ballista`] also runs any SQL there).
- [`report`] renders an analysis, [`check`] turns it into a CI gate, [`diff`] compares two stores.
*/

pub mod analysis;
pub mod ballista;
pub mod cells;
pub mod check;
pub mod context;
pub mod derived;
pub mod detail;
pub mod diff;
pub mod disagreement;
pub mod error;
pub mod format;
pub mod frames;
pub mod merge;
pub mod metrics;
pub mod pictures;
pub mod provider;
pub mod queries;
pub mod report;
pub mod stats;
pub mod udf;

pub use error::{Error, Result};
