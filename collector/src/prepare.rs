//! Decoding each image once and resizing it once per geometry, for every cell to share.
//!
//! The cache on disk holds the resized and cropped RGB pixels, one byte per input element (the
//! uint8 pixels are exact: normalisation comes after the resize, as in torchvision), per
//! geometry (size, crop, filter) and dataset: `STORE/_cache/tensors/<geometry>-<dataset>/`, in
//! chunks of [`CHUNK_IMAGES`] images, each an Arrow IPC file that appears under its final name
//! only when complete. A crash while preparing loses at most the chunk in progress; a resumed
//! run keeps every complete chunk. Cells stream from the chunks one at a time, normalised on the
//! way into the very schema workers read ([`crate::protocol::input_schema`]), so memory and open
//! files stay flat however many images there are, and all cells with one recipe see
//! bit-identical inputs.
//!
//! This is also where images enter the store: one `images` row each (size, colour type, EXIF
//! orientation, sha256, label, decode status) and one `errors` row per image that cannot be
//! decoded, which no cell will see.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayBuilder, AsArray, BooleanArray, FixedSizeBinaryBuilder, FixedSizeListArray, Float32Array,
    RecordBatch, StringBuilder,
};
use arrow::compute::{concat_batches, filter_record_batch};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::ipc::reader::FileReader;
use arrow::ipc::writer::FileWriter;
use deltann_store::schema::{col, stage, status};
use deltann_store::{StoreWriter, Table};
use rayon::prelude::*;

use crate::dataset::Dataset;
use crate::error::{Error, IoContext, Result};
use crate::preprocess::{self, ImageInfo, Preprocess};
use crate::protocol;
use crate::records::{ErrorRow, ImageRow};

/// Images decoded at once, in parallel (fewer when they are large: see [`Budget`]).
const DECODE_BATCH: usize = 16;
/// Memory for the pixels of the images being decoded at once.
const DECODE_BUDGET: u64 = 1 << 30;
/// Images per cache chunk: a crash while preparing loses at most this many images' work.
pub const CHUNK_IMAGES: usize = 256;
/// Footer key listing the image ids a cache chunk holds, in order.
const IDS_KEY: &str = "deltann.image_ids";

/// An image after hashing, with what the store knows of it.
#[derive(Clone, Debug)]
pub struct PreparedImage {
    pub id: String,
    /// Where the file is read from (its id may escape bytes of a name that is not UTF-8).
    pub path: PathBuf,
    pub sha256: String,
    pub label: Option<i32>,
}

/// The tensor caches' directory under the store's `_cache/`: one folder per pixel geometry and
/// dataset.
pub const TENSOR_CACHE_DIR: &str = "tensors";

/// The dataset, hashed and turned into tensor caches.
#[derive(Debug)]
pub struct Prepared {
    /// Every selected image, in dataset order.
    pub images: Vec<PreparedImage>,
    /// For each recipe key: the cache file and the ids it holds.
    pub caches: HashMap<String, TensorCache>,
    /// Images of this dataset that cannot be decoded.
    pub undecodable: usize,
    /// Images decoded in this call (0 when every cache was reused).
    pub decoded_now: usize,
}

/// One recipe's tensors: its geometry's cached pixels, normalised as they are read.
#[derive(Clone, Debug)]
pub struct TensorCache {
    /// The geometry's cache directory (shared by recipes of one geometry).
    pub dir: PathBuf,
    /// Its chunk files, in dataset order.
    pub chunks: Vec<PathBuf>,
    /// Images it holds (decodable, and large enough to crop).
    pub ids: HashSet<String>,
    pub tensor_len: usize,
    pub recipe: Preprocess,
}

/// Progress callbacks of [`prepare`].
pub trait PrepareProgress: Sync {
    /// `total` images will be read; `decoding` says whether they are decoded (else only hashed).
    fn started(&self, _total: usize, _decoding: bool) {}
    /// `n` more images are done.
    fn advanced(&self, _n: usize) {}
}

/// Hashes the dataset, records new images in the store, and makes sure a tensor cache exists
/// for every recipe in `recipes`.
///
/// # Errors
/// Fails on store or cache I/O errors, and when an image's content changed since the store
/// recorded it under the same id (mixing two versions of an image would corrupt comparisons).
pub fn prepare(
    store: &StoreWriter,
    dataset: &Dataset,
    recipes: &[Preprocess],
    run_id: &str,
    progress: &dyn PrepareProgress,
) -> Result<Prepared> {
    let hashed: Vec<(PreparedImage, Option<String>)> = dataset
        .images
        .par_iter()
        .map(|img| {
            let (sha256, read_error) = match deltann_store::ids::sha256_file(&img.path) {
                Ok((sha, _)) => (sha, None),
                Err(e) => (String::new(), Some(format!("cannot read file: {e}"))),
            };
            (
                PreparedImage {
                    id: img.id.clone(),
                    path: img.path.clone(),
                    sha256,
                    label: img.label,
                },
                read_error,
            )
        })
        .collect();

    let known = known_images(store)?;
    for (img, _) in &hashed {
        if let Some((old, _)) = known.get(&img.id)
            && !img.sha256.is_empty()
            && *old != img.sha256
        {
            return Err(Error::input(
                &img.path,
                format!(
                    "this image changed since the store recorded it (sha256 {}… then, {}… now); \
                     use a new store, or restore the file",
                    &old[..12.min(old.len())],
                    &img.sha256[..12]
                ),
            ));
        }
    }

    let mut fingerprint = String::new();
    for (img, _) in &hashed {
        fingerprint.push_str(&img.id);
        fingerprint.push('\t');
        fingerprint.push_str(&img.sha256);
        fingerprint.push('\n');
    }
    let fingerprint = &deltann_store::ids::sha256_hex(fingerprint.as_bytes())[..16];
    let cache_dir = store
        .root()
        .join(deltann_store::layout::CACHE_DIR)
        .join(TENSOR_CACHE_DIR);
    std::fs::create_dir_all(&cache_dir).io("create", &cache_dir)?;

    // One pixel cache per geometry; chunk i holds images [i * CHUNK_IMAGES, ...) of the dataset.
    let mut geometries: Vec<Preprocess> = Vec::new();
    for recipe in recipes {
        if !geometries
            .iter()
            .any(|g| g.pixel_key() == recipe.pixel_key())
        {
            geometries.push(recipe.clone());
        }
    }
    let geometry_dir = |g: &Preprocess| cache_dir.join(format!("{}-{fingerprint}", g.pixel_key()));
    for g in &geometries {
        let dir = geometry_dir(g);
        std::fs::create_dir_all(&dir).io("create", &dir)?;
        // A chunk being written when an earlier run died: never complete, never read. (This
        // process holds the store's lock, so no other writer is mid-chunk.)
        for entry in std::fs::read_dir(&dir).io("list", &dir)? {
            let path = entry.io("list", &dir)?.path();
            if path.to_string_lossy().ends_with(".arrow.tmp") {
                std::fs::remove_file(&path).io("remove", &path)?;
            }
        }
    }
    let chunk_path = |g: &Preprocess, i: usize| geometry_dir(g).join(format!("chunk-{i:06}.arrow"));
    let chunks = hashed.len().div_ceil(CHUNK_IMAGES);
    let mut ids: Vec<HashSet<String>> = vec![HashSet::new(); geometries.len()];
    let decoding = (0..chunks).any(|i| {
        geometries.iter().any(|g| !chunk_path(g, i).is_file())
            || hashed[i * CHUNK_IMAGES..]
                .iter()
                .take(CHUNK_IMAGES)
                .any(|(img, _)| !known.contains_key(&img.id))
    });
    progress.started(hashed.len(), decoding);

    let mut undecodable = 0;
    let mut decoded_now = 0;
    let budget = Budget::new(DECODE_BUDGET);
    for (chunk_index, chunk) in hashed.chunks(CHUNK_IMAGES).enumerate() {
        let missing: Vec<usize> = (0..geometries.len())
            .filter(
                |&g| match read_cache_ids(&chunk_path(&geometries[g], chunk_index)) {
                    Some(held) => {
                        ids[g].extend(held);
                        false
                    }
                    None => true,
                },
            )
            .collect();
        let new: Vec<bool> = chunk
            .iter()
            .map(|(img, _)| !known.contains_key(&img.id))
            .collect();
        if missing.is_empty() && !new.contains(&true) {
            undecodable += chunk
                .iter()
                .filter(|(img, _)| known.get(&img.id).is_some_and(|(_, s)| s != status::OK))
                .count();
            progress.advanced(chunk.len());
            continue;
        }
        let wanted: Vec<&Preprocess> = missing.iter().map(|&g| &geometries[g]).collect();
        let mut writers = missing
            .iter()
            .map(|&g| ChunkWriter::create(&chunk_path(&geometries[g], chunk_index), &geometries[g]))
            .collect::<Result<Vec<_>>>()?;
        let mut image_rows = Vec::new();
        let mut error_rows = Vec::new();
        for (batch_index, batch) in chunk.chunks(DECODE_BATCH).enumerate() {
            let results: Vec<Decoded> = batch
                .par_iter()
                .map(|(img, read_error)| {
                    let path = img.path.clone();
                    decode_one(&path, read_error.as_deref(), &wanted, &budget)
                })
                .collect();
            for (offset, ((img, _), result)) in batch.iter().zip(results).enumerate() {
                let is_new = new[batch_index * DECODE_BATCH + offset];
                decoded_now += 1;
                let error = result.info.as_ref().err().cloned();
                undecodable += usize::from(error.is_some());
                if is_new {
                    let path = img.path.clone();
                    image_rows.push(ImageRow::new(
                        &img.id,
                        &dataset.root,
                        &path,
                        &img.sha256,
                        result.bytes,
                        img.label,
                        &result.info,
                    ));
                    if let Some(e) = &error {
                        error_rows.push(ErrorRow::new(None, &img.id, stage::DECODE, e));
                    }
                }
                for (writer, pixels) in writers.iter_mut().zip(result.pixels) {
                    match pixels {
                        Some(Ok(p)) => writer.push(&img.id, &p)?,
                        Some(Err(e)) if is_new => error_rows.push(ErrorRow::new(
                            None,
                            &img.id,
                            stage::PREPROCESS,
                            &format!("geometry {}: {e}", writer.key),
                        )),
                        _ => {}
                    }
                }
            }
            for writer in &mut writers {
                writer.flush()?;
            }
            progress.advanced(batch.len());
        }
        // Rows first, chunks second: a crash in between re-decodes the chunk but records
        // nothing twice (its images are then known).
        crate::records::commit(store, None, run_id, &image_rows)?;
        crate::records::commit(store, None, run_id, &error_rows)?;
        for (writer, &g) in writers.into_iter().zip(&missing) {
            ids[g].extend(writer.finish()?);
        }
    }
    for g in &geometries {
        let dir = geometry_dir(g);
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .io("fsync", &dir)?;
    }
    let mut caches = HashMap::new();
    for recipe in recipes {
        let Some(g) = geometries
            .iter()
            .position(|g| g.pixel_key() == recipe.pixel_key())
        else {
            continue;
        };
        caches.insert(
            recipe.key(),
            TensorCache {
                dir: geometry_dir(&geometries[g]),
                chunks: (0..chunks).map(|i| chunk_path(&geometries[g], i)).collect(),
                ids: ids[g].clone(),
                tensor_len: recipe.tensor_len(),
                recipe: recipe.clone(),
            },
        );
    }

    Ok(Prepared {
        images: hashed.into_iter().map(|(img, _)| img).collect(),
        caches,
        undecodable,
        decoded_now,
    })
}

struct Decoded {
    info: std::result::Result<ImageInfo, String>,
    bytes: u64,
    /// Per geometry asked for: the cropped pixels, or why not.
    pixels: Vec<Option<std::result::Result<Vec<u8>, String>>>,
}

/// Memory shared by the decodes running at once: each waits until its estimated peak fits, so
/// that a batch of large photos decodes a few at a time instead of adding up. A decode larger
/// than the whole budget runs alone.
struct Budget {
    total: u64,
    used: std::sync::Mutex<u64>,
    freed: std::sync::Condvar,
}

/// Bytes of a [`Budget`] held until dropped.
struct Grant<'a> {
    budget: &'a Budget,
    bytes: u64,
}

impl Budget {
    fn new(total: u64) -> Self {
        Self {
            total,
            used: std::sync::Mutex::new(0),
            freed: std::sync::Condvar::new(),
        }
    }

    fn acquire(&self, bytes: u64) -> Grant<'_> {
        let mut used = self
            .used
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while *used > 0 && used.saturating_add(bytes) > self.total {
            used = self
                .freed
                .wait(used)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        *used += bytes;
        Grant {
            budget: self,
            bytes,
        }
    }
}

impl Drop for Grant<'_> {
    fn drop(&mut self) {
        let mut used = self
            .budget
            .used
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *used -= self.bytes;
        self.budget.freed.notify_all();
    }
}

fn decode_one(
    path: &Path,
    read_error: Option<&str>,
    recipes: &[&Preprocess],
    budget: &Budget,
) -> Decoded {
    let fail = |e: String, bytes| Decoded {
        info: Err(e),
        bytes,
        pixels: recipes.iter().map(|_| None).collect(),
    };
    if let Some(e) = read_error {
        return fail(e.to_string(), 0);
    }
    let limits = preprocess::DecodeLimits::default();
    match std::fs::metadata(path) {
        Ok(m) if m.len() > limits.max_file_bytes => {
            return fail(
                format!(
                    "file of {} bytes, more than the {} deltann reads for one image",
                    m.len(),
                    limits.max_file_bytes
                ),
                m.len(),
            );
        }
        Ok(_) => {}
        Err(e) => return fail(format!("cannot read file: {e}"), 0),
    }
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => return fail(format!("cannot read file: {e}"), 0),
    };
    let len = bytes.len() as u64;
    let decoded = preprocess::read_header(&bytes, &limits).and_then(|header| {
        let grant = budget.acquire(header.peak_bytes());
        header.decode().map(|d| (d, grant))
    });
    match decoded {
        Ok(((rgb, info), _grant)) => Decoded {
            info: Ok(info),
            bytes: len,
            pixels: recipes
                .iter()
                .map(|recipe| {
                    let mut out = Vec::new();
                    Some(preprocess::crop(&rgb, recipe, &mut out).map(|()| out))
                })
                .collect(),
        },
        Err(e) => fail(e, len),
    }
}

/// Image id -> (sha256, decode status) of the images the store already records.
fn known_images(store: &StoreWriter) -> Result<HashMap<String, (String, String)>> {
    let snapshot = store.snapshot();
    let mut known = HashMap::new();
    let columns = [col::IMAGE_ID, col::SHA256, col::STATUS];
    for batch in snapshot.scan_table(Table::Images, &columns) {
        let batch = batch?;
        let text = |name| {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_string_opt::<i32>())
        };
        let (Some(ids), Some(shas), Some(statuses)) =
            (text(col::IMAGE_ID), text(col::SHA256), text(col::STATUS))
        else {
            continue;
        };
        for ((id, sha), st) in ids.iter().zip(shas.iter()).zip(statuses.iter()) {
            if let (Some(id), Some(sha), Some(st)) = (id, sha, st) {
                known.insert(id.to_string(), (sha.to_string(), st.to_string()));
            }
        }
    }
    Ok(known)
}

fn read_cache_ids(path: &Path) -> Option<HashSet<String>> {
    let file = File::open(path).ok()?;
    let reader = FileReader::try_new(file, None).ok()?;
    let ids: Vec<String> = serde_json::from_str(reader.custom_metadata().get(IDS_KEY)?).ok()?;
    Some(ids.into_iter().collect())
}

fn pixels_schema(len: usize) -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new(protocol::IMAGE_ID, DataType::Utf8, false),
        Field::new(
            "pixels",
            DataType::FixedSizeBinary(i32::try_from(len).unwrap_or(i32::MAX)),
            false,
        ),
    ]))
}

/// Writes one chunk of one geometry's pixels.
struct ChunkWriter {
    key: String,
    tmp: PathBuf,
    path: PathBuf,
    len: usize,
    writer: FileWriter<BufWriter<File>>,
    ids: StringBuilder,
    pixels: FixedSizeBinaryBuilder,
    all_ids: Vec<String>,
}

impl ChunkWriter {
    fn create(path: &Path, geometry: &Preprocess) -> Result<Self> {
        let tmp = path.with_extension("arrow.tmp");
        let file = File::create(&tmp).io("create", &tmp)?;
        let len = geometry.pixels_len();
        let writer = FileWriter::try_new_buffered(file, &pixels_schema(len))?;
        Ok(Self {
            key: geometry.pixel_key(),
            tmp,
            path: path.to_path_buf(),
            len,
            writer,
            ids: StringBuilder::new(),
            pixels: FixedSizeBinaryBuilder::with_capacity(
                DECODE_BATCH,
                i32::try_from(len).unwrap_or(i32::MAX),
            ),
            all_ids: Vec::new(),
        })
    }

    fn push(&mut self, id: &str, pixels: &[u8]) -> Result<()> {
        if pixels.len() != self.len {
            return Err(Error::Engine(format!(
                "{} pixel bytes for a geometry of {}",
                pixels.len(),
                self.len
            )));
        }
        self.ids.append_value(id);
        self.pixels.append_value(pixels)?;
        self.all_ids.push(id.to_string());
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.ids.len() == 0 {
            return Ok(());
        }
        let batch = RecordBatch::try_new(
            pixels_schema(self.len),
            vec![Arc::new(self.ids.finish()), Arc::new(self.pixels.finish())],
        )?;
        self.writer.write(&batch)?;
        Ok(())
    }

    /// Completes the chunk (fsync, rename) and returns the ids it holds.
    fn finish(mut self) -> Result<Vec<String>> {
        self.flush()?;
        let ids = serde_json::to_string(&self.all_ids)
            .map_err(|e| Error::Engine(format!("cannot encode cache ids: {e}")))?;
        self.writer.write_metadata(IDS_KEY, ids);
        self.writer.finish()?;
        let file = self.writer.into_inner()?;
        file.into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all())
            .io("write", &self.tmp)?;
        std::fs::rename(&self.tmp, &self.path).io("rename", &self.path)?;
        Ok(self.all_ids)
    }
}

/// Normalises a batch of cached pixels into the worker protocol's input batch.
fn tensors(batch: &RecordBatch, recipe: &Preprocess) -> Result<RecordBatch> {
    let bad = || Error::Engine("tensor cache chunk has an unexpected schema".into());
    let ids = batch.column(0).as_string_opt::<i32>().ok_or_else(bad)?;
    let pixels = batch.column(1).as_fixed_size_binary_opt().ok_or_else(bad)?;
    let len = recipe.tensor_len();
    let mut values = vec![0.0f32; len * batch.num_rows()];
    for (i, out) in values.chunks_mut(len).enumerate() {
        preprocess::normalize(pixels.value(i), recipe, out);
    }
    let list = FixedSizeListArray::try_new(
        Arc::new(Field::new("item", DataType::Float32, false)),
        i32::try_from(len).unwrap_or(i32::MAX),
        Arc::new(Float32Array::from(values)),
        None,
    )?;
    Ok(RecordBatch::try_new(
        protocol::input_schema(len),
        vec![Arc::new(ids.clone()), Arc::new(list)],
    )?)
}

/// Streams the tensors of `wanted` images from a cache, `batch` rows at a time (the last batch
/// may be shorter), in cache order.
///
/// # Errors
/// Fails when the cache cannot be opened; read errors later arrive as `Err` items.
pub fn stream(
    cache: &TensorCache,
    wanted: HashSet<String>,
    batch: usize,
) -> Result<crate::runner::Inputs> {
    let schema = protocol::input_schema(cache.tensor_len);
    let recipe = cache.recipe.clone();
    let batch = batch.max(1);
    let mut pending: Vec<RecordBatch> = Vec::new();
    let mut pending_rows = 0usize;
    let mut chunks = cache.chunks.clone().into_iter();
    let mut reader: Option<FileReader<std::io::BufReader<File>>> = None;
    let iter = std::iter::from_fn(move || {
        loop {
            if pending_rows >= batch {
                return Some(take_rows(&schema, &mut pending, &mut pending_rows, batch));
            }
            // One chunk file open at a time.
            let next = match reader.as_mut().and_then(Iterator::next) {
                Some(b) => Some(b),
                None => match chunks.next() {
                    Some(path) => {
                        let opened = File::open(&path)
                            .io("open", &path)
                            .and_then(|f| Ok(FileReader::try_new_buffered(f, None)?));
                        match opened {
                            Ok(r) => reader = Some(r),
                            Err(e) => return Some(Err(e)),
                        }
                        continue;
                    }
                    None => None,
                },
            };
            match next {
                Some(Ok(b)) => {
                    let keep = match b.column(0).as_string_opt::<i32>() {
                        Some(ids) => BooleanArray::from(
                            ids.iter()
                                .map(|id| id.is_some_and(|id| wanted.contains(id)))
                                .collect::<Vec<_>>(),
                        ),
                        None => return Some(Err(Error::Engine("tensor cache has no ids".into()))),
                    };
                    let kept = if keep.true_count() == b.num_rows() {
                        Ok(b)
                    } else {
                        filter_record_batch(&b, &keep)
                    };
                    match kept.map_err(Error::from).and_then(|f| {
                        if f.num_rows() == 0 {
                            Ok(None)
                        } else {
                            tensors(&f, &recipe).map(Some)
                        }
                    }) {
                        Ok(Some(t)) => {
                            pending_rows += t.num_rows();
                            pending.push(t);
                        }
                        Ok(None) => {}
                        Err(e) => return Some(Err(e)),
                    }
                }
                Some(Err(e)) => return Some(Err(e.into())),
                None if pending_rows > 0 => {
                    let n = pending_rows;
                    return Some(take_rows(&schema, &mut pending, &mut pending_rows, n));
                }
                None => return None,
            }
        }
    });
    Ok(Box::new(iter))
}

fn take_rows(
    schema: &arrow::datatypes::SchemaRef,
    pending: &mut Vec<RecordBatch>,
    pending_rows: &mut usize,
    n: usize,
) -> Result<RecordBatch> {
    *pending_rows -= n;
    // Usually the first pending batch has enough rows: a zero-copy slice.
    if let Some(first) = pending.first()
        && first.num_rows() >= n
    {
        let out = first.slice(0, n);
        let rest = first.slice(n, first.num_rows() - n);
        if rest.num_rows() == 0 {
            pending.remove(0);
        } else {
            pending[0] = rest;
        }
        return Ok(out);
    }
    let all = concat_batches(schema, pending.iter())?;
    let out = all.slice(0, n);
    let rest = all.slice(n, all.num_rows() - n);
    pending.clear();
    if rest.num_rows() > 0 {
        pending.push(rest);
    }
    Ok(out)
}
