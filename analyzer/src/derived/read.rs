//! Reading the derived tables back: every cell's answer per image (for the per-image findings
//! and latencies of a report) and one image's rows (for the TUI's image screen).

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float32Type, Int32Type, Int64Type, UInt64Type};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::metadata::ParquetMetaDataReader;
use parquet::file::statistics::Statistics;
use rayon::prelude::*;

use super::{DerivedPart, DerivedTable, State};
use crate::disagreement::Answer;
use crate::error::{Error, Result};

/// Every image's answers, in image-id order, and every cell's latencies.
#[derive(Debug, Default)]
pub struct PerImage {
    pub images: Vec<(String, Vec<Answer>)>,
    /// Per cell (by the caller's index), every output row's latency in nanoseconds.
    pub latencies: Vec<Vec<i64>>,
}

/// Which row groups of a part [`read`] reads.
#[derive(Clone, Copy, Debug)]
enum Groups<'a> {
    /// Those whose image-id range may hold this image (the TUI's one-image lookups).
    Holding(&'a str),
    /// These, by index: a share of a part read beside the others.
    Range(usize, usize),
}

/// Reads `columns` of a derived part, only the row groups `groups` selects, batch by batch:
/// collecting a whole `cell_images` part first (half a million rows each on the 1M-row store)
/// took a report's peak memory from 167 to 228 MB.
fn read(
    root: &Path,
    part: &DerivedPart,
    columns: &[&str],
    groups: Groups<'_>,
) -> Result<impl Iterator<Item = Result<RecordBatch>>> {
    let path = root.join(&part.path);
    let file = File::open(&path).map_err(|e| Error::file(&path, e))?;
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| Error::parquet(&path, e))?;
    let indices = columns
        .iter()
        .map(|c| builder.schema().index_of(c))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
    let mask = ProjectionMask::roots(builder.parquet_schema(), indices);
    let mut builder = builder.with_projection(mask).with_batch_size(8192);
    match groups {
        Groups::Range(from, to) => {
            // The count came from an earlier open: a rebuild may have replaced the part since.
            let n = builder.metadata().num_row_groups();
            if to > n {
                return Err(Error::Invalid(format!(
                    "{}: changed while being read (row groups {from}..{to} of {n})",
                    path.display()
                )));
            }
            builder = builder.with_row_groups((from..to).collect());
        }
        Groups::Holding(image) => {
            let id_col = builder
                .schema()
                .index_of("image_id")
                .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
            let groups: Vec<usize> = builder
                .metadata()
                .row_groups()
                .iter()
                .enumerate()
                .filter(|(_, rg)| match rg.column(id_col).statistics() {
                    Some(Statistics::ByteArray(s)) => match (s.min_opt(), s.max_opt()) {
                        (Some(lo), Some(hi)) => {
                            lo.data() <= image.as_bytes() && image.as_bytes() <= hi.data()
                        }
                        _ => true,
                    },
                    _ => true,
                })
                .map(|(i, _)| i)
                .collect();
            builder = builder.with_row_groups(groups);
        }
    }
    let reader = builder.build().map_err(|e| Error::parquet(&path, e))?;
    Ok(reader.map(move |b| b.map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))))
}

/// A part's number of row groups, from its footer.
fn row_groups(root: &Path, part: &DerivedPart) -> Result<usize> {
    let path = root.join(&part.path);
    let file = File::open(&path).map_err(|e| Error::file(&path, e))?;
    let metadata = ParquetMetaDataReader::new()
        .parse_and_finish(&file)
        .map_err(|e| Error::parquet(&path, e))?;
    Ok(metadata.num_row_groups())
}

/// A batch's columns by name, with errors that name the table and column.
struct Cols<'a>(&'a RecordBatch, DerivedTable);

impl<'a> Cols<'a> {
    fn get(&self, name: &str) -> Result<&'a arrow::array::ArrayRef> {
        self.0
            .column_by_name(name)
            .ok_or_else(|| missing(self.1, name))
    }

    fn string(&self, name: &str) -> Result<&'a arrow::array::StringArray> {
        self.get(name)?
            .as_string_opt::<i32>()
            .ok_or_else(|| missing(self.1, name))
    }

    fn int(&self, name: &str) -> Result<&'a arrow::array::Int32Array> {
        self.get(name)?
            .as_primitive_opt::<Int32Type>()
            .ok_or_else(|| missing(self.1, name))
    }

    fn list(&self, name: &str) -> Result<&'a arrow::array::ListArray> {
        self.get(name)?
            .as_list_opt::<i32>()
            .ok_or_else(|| missing(self.1, name))
    }
}

fn missing(table: DerivedTable, column: &str) -> Error {
    Error::Invalid(format!(
        "derived table {}: no usable column `{column}`",
        table.name()
    ))
}

/// Every cell's answer per image and its latencies, from `cell_images`; `index` maps cell ids to
/// the caller's cell indices (rows of other cells are skipped).
///
/// # Errors
/// Fails when a derived part cannot be read.
pub fn answers(
    root: &Path,
    state: &State,
    index: &HashMap<String, usize>,
    cells: usize,
) -> Result<PerImage> {
    answers_in_shares(root, state, index, cells, GROUPS_PER_SHARE)
}

fn answers_in_shares(
    root: &Path,
    state: &State,
    index: &HashMap<String, usize>,
    cells: usize,
    groups_per_share: usize,
) -> Result<PerImage> {
    debug_assert!(groups_per_share > 0);
    // Shares of row groups are decoded in parallel (decoding is most of a report's time) and
    // put together in part and row order, so every image's answers and every cell's latencies
    // come in the order one sequential read gives.
    let mut shares = Vec::new();
    for part in state.parts_of(DerivedTable::CellImages) {
        let n = row_groups(root, part)?;
        for from in (0..n).step_by(groups_per_share) {
            shares.push((part, from, from.saturating_add(groups_per_share).min(n)));
        }
    }
    let mut by_image: HashMap<String, Vec<Answer>> = HashMap::new();
    let mut latencies = vec![Vec::new(); cells];
    // A few shares per thread at a time, so that what is held besides the result stays small.
    for some in shares.chunks(2 * rayon::current_num_threads()) {
        let read: Vec<Share> = some
            .par_iter()
            .map(|&(part, from, to)| answers_of(root, part, Groups::Range(from, to), index, cells))
            .collect::<Result<_>>()?;
        for share in read {
            for (image, answers) in share.runs {
                match by_image.get_mut(&image) {
                    Some(v) => v.extend(answers),
                    None => {
                        by_image.insert(image, answers);
                    }
                }
            }
            for (all, some) in latencies.iter_mut().zip(share.latencies) {
                all.extend(some);
            }
        }
    }
    let mut images: Vec<(String, Vec<Answer>)> = by_image.into_iter().collect();
    images.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(PerImage { images, latencies })
}

/// Row groups of `cell_images` decoded as one task by [`answers`] (16,384 rows each).
const GROUPS_PER_SHARE: usize = 4;

/// What [`answers`] reads from a share of a part: its rows' answers as runs of one image (rows
/// are sorted by image within a part), and its latencies per cell.
struct Share {
    runs: Vec<(String, Vec<Answer>)>,
    latencies: Vec<Vec<i64>>,
}

fn answers_of(
    root: &Path,
    part: &DerivedPart,
    groups: Groups<'_>,
    index: &HashMap<String, usize>,
    cells: usize,
) -> Result<Share> {
    const T: DerivedTable = DerivedTable::CellImages;
    let mut share = Share {
        runs: Vec::new(),
        latencies: vec![Vec::new(); cells],
    };
    let columns = [
        "cell_id",
        "image_id",
        "label",
        "top1",
        "top5",
        "top5_prob",
        "latency_ns",
    ];
    for batch in read(root, part, &columns, groups)? {
        let batch = batch?;
        let c = Cols(&batch, T);
        let ids = c.string("cell_id")?;
        let images = c.string("image_id")?;
        let labels = c.int("label")?;
        let top1 = c.int("top1")?;
        let top5 = c.list("top5")?;
        let probs = c.list("top5_prob")?;
        let lat = c.list("latency_ns")?;
        for i in 0..batch.num_rows() {
            let Some(&cell) = index.get(ids.value(i)) else {
                continue;
            };
            let t5 = top5.value(i);
            let t5 = t5.as_primitive::<Int32Type>();
            let p5 = probs.value(i);
            let p5 = p5.as_primitive::<Float32Type>();
            let answer = Answer {
                cell,
                label: labels.is_valid(i).then(|| labels.value(i)),
                top1: top1.value(i),
                top2: if t5.len() > 1 { t5.value(1) } else { -1 },
                p1: if !p5.is_empty() { p5.value(0) } else { 0.0 },
                p2: if p5.len() > 1 { p5.value(1) } else { 0.0 },
            };
            match share.runs.last_mut() {
                Some((image, run)) if image == images.value(i) => run.push(answer),
                _ => share.runs.push((images.value(i).to_string(), vec![answer])),
            }
            let l = lat.value(i);
            share.latencies[cell].extend_from_slice(l.as_primitive::<Int64Type>().values());
        }
    }
    Ok(share)
}

/// One cell's row of one image, from `cell_images`.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageRow {
    pub cell_id: String,
    pub label: Option<i32>,
    pub top5: Vec<i32>,
    pub top5_prob: Vec<f32>,
    pub logits_hash: u64,
}

/// One pair's comparison on one image, from `comparisons`.
#[derive(Clone, Debug, PartialEq)]
pub struct PairRow {
    pub cell_a: String,
    pub cell_b: String,
    pub identical: bool,
    pub max_abs_logit: Option<f64>,
    pub mean_abs_logit: Option<f64>,
    pub kl_ab: Option<f64>,
    pub kl_ba: Option<f64>,
}

fn may_hold(part: &DerivedPart, image: &str) -> bool {
    part.range
        .as_ref()
        .is_none_or(|(lo, hi)| lo.as_str() <= image && image <= hi.as_str())
}

/// Every cell's row and every comparison of one image: only the parts, and within them the row
/// groups, whose image range holds it are read.
///
/// # Errors
/// Fails when a derived part cannot be read.
pub fn image(root: &Path, state: &State, image: &str) -> Result<(Vec<ImageRow>, Vec<PairRow>)> {
    let mut rows = Vec::new();
    const C: DerivedTable = DerivedTable::CellImages;
    for part in state.parts_of(C).filter(|p| may_hold(p, image)) {
        let columns = [
            "image_id",
            "cell_id",
            "label",
            "top5",
            "top5_prob",
            "logits_hash",
        ];
        for batch in read(root, part, &columns, Groups::Holding(image))? {
            let batch = batch?;
            let c = Cols(&batch, C);
            let ids = c.string("image_id")?;
            let cells = c.string("cell_id")?;
            let labels = c.int("label")?;
            let top5 = c.list("top5")?;
            let probs = c.list("top5_prob")?;
            let hash = c
                .get("logits_hash")?
                .as_primitive_opt::<UInt64Type>()
                .ok_or_else(|| missing(C, "logits_hash"))?;
            for i in (0..batch.num_rows()).filter(|&i| ids.value(i) == image) {
                rows.push(ImageRow {
                    cell_id: cells.value(i).to_string(),
                    label: labels.is_valid(i).then(|| labels.value(i)),
                    top5: top5.value(i).as_primitive::<Int32Type>().values().to_vec(),
                    top5_prob: probs
                        .value(i)
                        .as_primitive::<Float32Type>()
                        .values()
                        .to_vec(),
                    logits_hash: hash.value(i),
                });
            }
        }
    }
    let mut pairs = Vec::new();
    const P: DerivedTable = DerivedTable::Comparisons;
    for part in state.parts_of(P).filter(|p| may_hold(p, image)) {
        let columns = [
            "image_id",
            "pair",
            "identical",
            "max_abs_logit",
            "mean_abs_logit",
            "kl_ab",
            "kl_ba",
        ];
        for batch in read(root, part, &columns, Groups::Holding(image))? {
            let batch = batch?;
            let c = Cols(&batch, P);
            let ids = c.string("image_id")?;
            let numbers = c.int("pair")?;
            let identical = c
                .get("identical")?
                .as_boolean_opt()
                .ok_or_else(|| missing(P, "identical"))?;
            let f = |name: &str, i: usize| -> Option<f64> {
                let col = batch
                    .column_by_name(name)?
                    .as_primitive_opt::<Float32Type>()?;
                col.is_valid(i).then(|| f64::from(col.value(i)))
            };
            for i in (0..batch.num_rows()).filter(|&i| ids.value(i) == image) {
                let pair = state.pair(numbers.value(i), &part.path)?;
                pairs.push(PairRow {
                    cell_a: pair.cell_a.clone(),
                    cell_b: pair.cell_b.clone(),
                    identical: identical.value(i),
                    max_abs_logit: f("max_abs_logit", i),
                    mean_abs_logit: f("mean_abs_logit", i),
                    kl_ab: f("kl_ab", i),
                    kl_ba: f("kl_ba", i),
                });
            }
        }
    }
    Ok((rows, pairs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::derived::tables::{CellImage, CellImagesBuilder};
    use parquet::arrow::ArrowWriter;
    use parquet::file::properties::WriterProperties;

    /// Read in shares of row groups, in parallel, the answers and latencies come in the order
    /// of one sequential read, whatever the share size: row groups of 7 rows cut images' runs
    /// of 3 rows, and the second part repeats images of the first.
    #[test]
    fn answers_read_in_shares_keep_the_order_of_one_read() {
        let dir = tempfile::tempdir().unwrap();
        let cells = ["c0", "c1", "c2", "elsewhere"];
        let index: HashMap<String, usize> = cells[..3]
            .iter()
            .enumerate()
            .map(|(i, c)| (c.to_string(), i))
            .collect();
        let mut expected: HashMap<String, Vec<Answer>> = HashMap::new();
        let mut latencies = vec![Vec::new(); 3];
        let mut state = State::default();
        for (p, images) in [(0, 0..40), (1, 30..55)].into_iter() {
            let mut rows = CellImagesBuilder::default();
            for i in images {
                let image_id = format!("img{i:03}");
                for (c, cell_id) in cells.iter().enumerate() {
                    let n = (p * 1000 + i * 10 + c) as i32;
                    let lat = [i64::from(n), i64::from(n) + 1];
                    let top5 = [n % 7, n % 5, 1, 2, 3];
                    let prob = [0.5 + n as f32 / 1e5, 0.25, 0.1, 0.1, 0.05];
                    rows.push(&CellImage {
                        cell_id,
                        image_id: &image_id,
                        family: "f",
                        model: "m",
                        label: (i % 3 != 0).then_some(i as i32),
                        top5: &top5,
                        top5_prob: &prob,
                        hash: n as u64,
                        floor: crate::merge::RepFloor::default(),
                        latencies: &lat,
                    });
                    if c < 3 {
                        expected.entry(image_id.clone()).or_default().push(Answer {
                            cell: c,
                            label: (i % 3 != 0).then_some(i as i32),
                            top1: top5[0],
                            top2: top5[1],
                            p1: prob[0],
                            p2: prob[1],
                        });
                        latencies[c].extend(lat);
                    }
                }
            }
            let path = format!("part-{p}.parquet");
            let file = File::create(dir.path().join(&path)).unwrap();
            let props = WriterProperties::builder()
                .set_max_row_group_row_count(Some(7))
                .build();
            let mut writer =
                ArrowWriter::try_new(file, DerivedTable::CellImages.schema(), Some(props)).unwrap();
            writer.write(&rows.finish().unwrap()).unwrap();
            writer.close().unwrap();
            state.parts.push(DerivedPart {
                table: DerivedTable::CellImages,
                path,
                rows: 0,
                bytes: 0,
                range: None,
            });
        }
        let mut expected: Vec<(String, Vec<Answer>)> = expected.into_iter().collect();
        expected.sort_by(|a, b| a.0.cmp(&b.0));
        for share in [1, 2, 3, usize::MAX] {
            let got = answers_in_shares(dir.path(), &state, &index, 3, share).unwrap();
            assert_eq!(got.images, expected, "{share} row groups per share");
            assert_eq!(got.latencies, latencies, "{share} row groups per share");
        }
        // A share past the part's row groups (the part replaced by a rebuild since its groups
        // were counted) is an error naming the file, not a panic in the Parquet reader.
        let err = read(
            dir.path(),
            &state.parts[1],
            &["cell_id"],
            Groups::Range(4, 40),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            err.contains("part-1.parquet") && err.contains("changed while being read"),
            "{err}"
        );
    }
}
