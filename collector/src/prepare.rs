//! Decoding each image once and preprocessing it once per recipe, for every cell to share.
//!
//! Tensors go to a cache on disk, one Arrow IPC file per preprocessing recipe and dataset
//! (`STORE/_cache/tensors/<recipe>-<dataset>.arrow`), in the very schema workers read
//! ([`crate::protocol::input_schema`]). Cells stream from it, so memory stays flat however many
//! images there are, and all cells with one recipe see bit-identical inputs. A cache file appears
//! under its final name only when complete, and is reused by a resumed run.
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
    ArrayBuilder, AsArray, BooleanArray, FixedSizeListBuilder, Float32Builder, RecordBatch,
    StringBuilder,
};
use arrow::compute::{concat_batches, filter_record_batch};
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

/// Images decoded per parallel chunk: bounds memory to chunk x recipes x tensor size.
const CHUNK: usize = 16;
/// Footer key listing the image ids a cache file holds, in order.
const IDS_KEY: &str = "deltann.image_ids";

/// An image after hashing, with what the store knows of it.
#[derive(Clone, Debug)]
pub struct PreparedImage {
    pub id: String,
    pub sha256: String,
    pub label: Option<i32>,
}

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

/// One recipe's tensors.
#[derive(Clone, Debug)]
pub struct TensorCache {
    pub path: PathBuf,
    pub ids: HashSet<String>,
    pub tensor_len: usize,
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
                &dataset.root.join(&img.id),
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
        .join("tensors");
    std::fs::create_dir_all(&cache_dir).io("create", &cache_dir)?;

    let mut caches = HashMap::new();
    let mut missing: Vec<&Preprocess> = Vec::new();
    for recipe in recipes {
        let key = recipe.key();
        if caches.contains_key(&key) || missing.iter().any(|m| m.key() == key) {
            continue;
        }
        let path = cache_dir.join(format!("{key}-{fingerprint}.arrow"));
        match read_cache_ids(&path) {
            Some(ids) => {
                caches.insert(
                    key,
                    TensorCache {
                        path,
                        ids,
                        tensor_len: recipe.tensor_len(),
                    },
                );
            }
            None => missing.push(recipe),
        }
    }
    let new_images: Vec<usize> = (0..hashed.len())
        .filter(|&i| !known.contains_key(&hashed[i].0.id))
        .collect();
    let decoding = !missing.is_empty() || !new_images.is_empty();
    progress.started(hashed.len(), decoding);

    let mut undecodable = 0;
    let mut decoded_now = 0;
    if decoding {
        let mut writers = missing
            .iter()
            .map(|recipe| CacheWriter::create(&cache_dir, recipe, fingerprint))
            .collect::<Result<Vec<_>>>()?;
        let mut image_rows = Vec::new();
        let mut error_rows = Vec::new();
        let new: HashSet<usize> = new_images.into_iter().collect();
        for (chunk_index, chunk) in hashed.chunks(CHUNK).enumerate() {
            let results: Vec<Decoded> = chunk
                .par_iter()
                .map(|(img, read_error)| {
                    let path = dataset.root.join(&img.id);
                    decode_one(&path, read_error.as_deref(), &missing)
                })
                .collect();
            for (offset, ((img, _), result)) in chunk.iter().zip(results).enumerate() {
                let index = chunk_index * CHUNK + offset;
                decoded_now += 1;
                let error = result.info.as_ref().err().cloned();
                undecodable += usize::from(error.is_some());
                if new.contains(&index) {
                    let path = dataset.root.join(&img.id);
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
                for (writer, tensor) in writers.iter_mut().zip(result.tensors) {
                    match tensor {
                        Some(Ok(t)) => writer.push(&img.id, &t)?,
                        Some(Err(e)) if new.contains(&index) => error_rows.push(ErrorRow::new(
                            None,
                            &img.id,
                            stage::PREPROCESS,
                            &format!("recipe {}: {e}", writer.key),
                        )),
                        _ => {}
                    }
                }
            }
            for writer in &mut writers {
                writer.flush()?;
            }
            progress.advanced(chunk.len());
        }
        // Rows first, caches second: a crash in between re-decodes but records nothing twice.
        crate::records::commit(store, None, run_id, &image_rows)?;
        crate::records::commit(store, None, run_id, &error_rows)?;
        for writer in writers {
            let (key, cache) = writer.finish()?;
            caches.insert(key, cache);
        }
    } else {
        progress.advanced(hashed.len());
        undecodable = hashed
            .iter()
            .filter(|(img, _)| known.get(&img.id).is_some_and(|(_, s)| s != status::OK))
            .count();
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
    tensors: Vec<Option<std::result::Result<Vec<f32>, String>>>,
}

fn decode_one(path: &Path, read_error: Option<&str>, recipes: &[&Preprocess]) -> Decoded {
    let fail = |e: String, bytes| Decoded {
        info: Err(e),
        bytes,
        tensors: recipes.iter().map(|_| None).collect(),
    };
    if let Some(e) = read_error {
        return fail(e.to_string(), 0);
    }
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => return fail(format!("cannot read file: {e}"), 0),
    };
    let len = bytes.len() as u64;
    match preprocess::decode(&bytes) {
        Ok((rgb, info)) => Decoded {
            info: Ok(info),
            bytes: len,
            tensors: recipes
                .iter()
                .map(|recipe| {
                    let mut out = Vec::new();
                    Some(preprocess::preprocess(&rgb, recipe, &mut out).map(|()| out))
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

struct CacheWriter {
    key: String,
    tmp: PathBuf,
    path: PathBuf,
    len: usize,
    writer: FileWriter<BufWriter<File>>,
    ids: StringBuilder,
    tensors: FixedSizeListBuilder<Float32Builder>,
    all_ids: Vec<String>,
}

impl CacheWriter {
    fn create(dir: &Path, recipe: &Preprocess, fingerprint: &str) -> Result<Self> {
        let key = recipe.key();
        let path = dir.join(format!("{key}-{fingerprint}.arrow"));
        let tmp = dir.join(format!("{key}-{fingerprint}.arrow.tmp"));
        let file = File::create(&tmp).io("create", &tmp)?;
        let len = recipe.tensor_len();
        let schema = protocol::input_schema(len);
        let writer = FileWriter::try_new_buffered(file, &schema)?;
        let list_len = i32::try_from(len).unwrap_or(i32::MAX);
        Ok(Self {
            key,
            tmp,
            path,
            len,
            writer,
            ids: StringBuilder::new(),
            tensors: FixedSizeListBuilder::new(
                Float32Builder::with_capacity(len * CHUNK),
                list_len,
            )
            .with_field(Arc::new(arrow::datatypes::Field::new(
                "item",
                arrow::datatypes::DataType::Float32,
                false,
            ))),
            all_ids: Vec::new(),
        })
    }

    fn push(&mut self, id: &str, tensor: &[f32]) -> Result<()> {
        if tensor.len() != self.len {
            return Err(Error::Engine(format!(
                "tensor of {} values for a recipe of {}",
                tensor.len(),
                self.len
            )));
        }
        self.ids.append_value(id);
        self.tensors.values().append_slice(tensor);
        self.tensors.append(true);
        self.all_ids.push(id.to_string());
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.ids.len() == 0 {
            return Ok(());
        }
        let batch = RecordBatch::try_new(
            protocol::input_schema(self.len),
            vec![Arc::new(self.ids.finish()), Arc::new(self.tensors.finish())],
        )?;
        self.writer.write(&batch)?;
        Ok(())
    }

    fn finish(mut self) -> Result<(String, TensorCache)> {
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
        Ok((
            self.key,
            TensorCache {
                path: self.path,
                ids: self.all_ids.into_iter().collect(),
                tensor_len: self.len,
            },
        ))
    }
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
    let file = File::open(&cache.path).io("open", &cache.path)?;
    let reader = FileReader::try_new_buffered(file, None)?;
    let schema = reader.schema();
    let batch = batch.max(1);
    let mut pending: Vec<RecordBatch> = Vec::new();
    let mut pending_rows = 0usize;
    let mut reader = reader.fuse();
    let iter = std::iter::from_fn(move || {
        loop {
            if pending_rows >= batch {
                return Some(take_rows(&schema, &mut pending, &mut pending_rows, batch));
            }
            match reader.next() {
                Some(Ok(b)) => {
                    let keep = match b.column(0).as_string_opt::<i32>() {
                        Some(ids) => BooleanArray::from(
                            ids.iter()
                                .map(|id| id.is_some_and(|id| wanted.contains(id)))
                                .collect::<Vec<_>>(),
                        ),
                        None => return Some(Err(Error::Engine("tensor cache has no ids".into()))),
                    };
                    // Tensors are large: pass whole batches through uncopied when possible.
                    let kept = if keep.true_count() == b.num_rows() {
                        Ok(b)
                    } else {
                        filter_record_batch(&b, &keep)
                    };
                    match kept {
                        Ok(f) if f.num_rows() > 0 => {
                            pending_rows += f.num_rows();
                            pending.push(f);
                        }
                        Ok(_) => {}
                        Err(e) => return Some(Err(e.into())),
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
