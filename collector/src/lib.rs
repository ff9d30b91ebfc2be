/*!
deltann's collector: runs every cell of a sweep and streams what it sees into the result store.

An image's path through the collector, one module per step:

1. [`sweep`] parses the sweep file; [`dataset`] lists the images and their labels.
2. [`plan`] inspects each model ([`model`]), asks each engine for its version, and expands the
   environments into cells with deterministic ids.
3. [`prepare`] decodes each image once and preprocesses it once per preprocessing preset
   ([`preprocess`]) into a tensor cache on disk that every cell using the preset reads.
4. [`runner`] starts a worker process per cell ([`worker`], speaking [`protocol`]) that loads the
   model in one of the [`engine`]s and streams logits and latencies back.
5. [`sink`] turns results into `outputs` rows (top-5, hash: `deltann_store::outputs`) and commits them to
   the store in parts; [`collect`] ties the steps together, resumes, and writes `cells` rows.
6. [`summary`] reads the store back for the per-cell summary printed at the end.
*/

pub mod collect;
pub mod dataset;
pub mod engine;
pub mod error;
pub mod host;
pub mod localize;
pub mod model;
pub mod plan;
pub mod prepare;
pub mod preprocess;
pub mod protocol;
pub mod python;
pub mod records;
pub mod runner;
pub mod sink;
pub mod stats;
pub mod summary;
pub mod sweep;
pub mod worker;

pub use error::{Error, Result};
