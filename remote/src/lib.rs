/*!
A deltann store on object storage (`s3://bucket/prefix`), for sweeps that several machines
collect into at once.

Object storage has no rename, no `flock` and no append, which the local commit protocol
([`deltann_store::writer`]) is built on. What it has is a conditional put: create an object only
if no object has that name (S3's `If-None-Match: *`, object_store's `PutMode::Create`). A store
there is the same Parquet layout as a local one plus a commit log, as Delta Lake keeps on S3:

```text
s3://bucket/prefix/
  deltann-store.json                      format marker (as in a local store)
  _log/00000000000000000001.json          one commit: the writer and its parts' manifest entries
  _log/00000000000000000002.json
  outputs/model=M/engine=E/part-WRITER-000042-CELL.parquet
  ...
```

A writer uploads its part files under names no other writer uses (the writer's id is in them),
then creates the log object with the next number. Creating it fails when another writer took
that number first; the writer then reads the new commits and tries the next number. So every
commit appears exactly once, in one order all readers see, however many collectors commit at
once; a part is visible only once its commit exists (until then its file is an orphan that
deltann's readers never list).

Each machine computes locally, as before: `collect` writes a local store (its *spool*, crash-safe
as every local store), and [`sync::Pusher`] copies each committed group to the remote as one
commit. Readers fetch the remote's commits into a local *mirror* ([`sync::pull`]) and analyse
that. Both directions are idempotent by content: a part is identified by the xxh3 checksum of its
bytes, which both manifests hold, so a push or pull interrupted at any point and run again copies
exactly what is missing.
*/

pub mod sync;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use deltann_store::PartEntry;
use futures::TryStreamExt;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

/// Errors of object-storage stores.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object store answered with an error.
    #[error("{url}: {action}: {source}")]
    ObjectStore {
        url: String,
        action: String,
        #[source]
        source: object_store::Error,
    },
    /// A local file could not be read or written.
    #[error("{}: {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The local store refused.
    #[error(transparent)]
    Store(#[from] deltann_store::Error),
    /// Not a location deltann can use, or not a deltann store.
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The commit log's folder under the store's prefix.
pub const LOG_DIR: &str = "_log";

/// Whether a store argument names object storage rather than a local directory.
pub fn is_remote(location: &str) -> bool {
    location.starts_with("s3://")
}

/// One commit of the log: the parts of one group, as the writer's manifest listed them, with
/// `path` their name in the remote store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    /// Its number in the log (the object's name), not stored inside it.
    #[serde(skip)]
    pub number: u64,
    /// Who committed it ([`sync::writer_id`]).
    pub writer: String,
    /// The parts, in their group's order; `seq` is the writer's own sequence number.
    pub entries: Vec<PartEntry>,
}

/// An open object-storage location. Blocking: it runs its own small async runtime, so the
/// collector's threads call it like a file system.
pub struct Remote {
    url: String,
    prefix: Key,
    store: Arc<dyn ObjectStore>,
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Remote {
    /// Opens `s3://bucket/prefix` with credentials, region and endpoint from the usual `AWS_*`
    /// environment variables (`AWS_ENDPOINT_URL` and `AWS_ALLOW_HTTP=true` for a server such as
    /// MinIO). Nothing is contacted yet.
    ///
    /// # Errors
    /// Fails for a location that is not `s3://BUCKET[/PREFIX]` or a client that cannot be built.
    pub fn open(url: &str) -> Result<Self> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| Error::Invalid(format!("{url}: not an s3:// location")))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(Error::Invalid(format!(
                "{url}: no bucket (write s3://BUCKET/PREFIX)"
            )));
        }
        let store = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .build()
            .map_err(|source| Error::ObjectStore {
                url: url.to_string(),
                action: "configure the S3 client".into(),
                source,
            })?;
        Self::with_store(url, prefix, Arc::new(store))
    }

    /// A store at `prefix` of any object store (tests use object_store's in-memory one).
    ///
    /// # Errors
    /// Fails when the async runtime cannot start.
    pub fn with_store(url: &str, prefix: &str, store: Arc<dyn ObjectStore>) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| Error::Io {
                path: PathBuf::from(url),
                action: "start the async runtime",
                source,
            })?;
        Ok(Self {
            url: url.trim_end_matches('/').to_string(),
            prefix: Key::from(prefix.trim_matches('/')),
            store,
            runtime,
        })
    }

    /// The location as given (without a trailing `/`).
    pub fn url(&self) -> &str {
        &self.url
    }

    fn key(&self, rel: &str) -> Key {
        rel.split('/')
            .filter(|p| !p.is_empty())
            .fold(self.prefix.clone(), |k, part| k.clone().join(part))
    }

    fn failed(&self, action: impl Into<String>) -> impl FnOnce(object_store::Error) -> Error + '_ {
        let mut action = action.into();
        // Without credentials in the environment the client asks the cloud's instance metadata
        // service, whose refusal says nothing useful off a cloud machine.
        if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
            action.push_str(
                " (no AWS_ACCESS_KEY_ID in the environment: set it and AWS_SECRET_ACCESS_KEY, \
                 AWS_REGION, and AWS_ENDPOINT_URL with AWS_ALLOW_HTTP=true for a local server)",
            );
        }
        move |source| Error::ObjectStore {
            url: self.url.clone(),
            action,
            source,
        }
    }

    /// Makes the location a store if it is not one yet (the format marker, created only if
    /// absent); checks that it is one otherwise.
    ///
    /// # Errors
    /// Fails when the location cannot be reached or holds another format's marker.
    pub fn create_if_missing(&self) -> Result<()> {
        let marker = serde_json::json!({
            "format": "deltann-store",
            "version": deltann_store::layout::FORMAT_VERSION,
        })
        .to_string();
        let key = self.key(deltann_store::layout::FORMAT_FILE);
        let put = self.runtime.block_on(self.store.put_opts(
            &key,
            PutPayload::from(marker.into_bytes()),
            PutOptions::from(PutMode::Create),
        ));
        match put {
            Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => self.check(),
            Err(e) => Err(self.failed("create the store's format marker")(e)),
        }
    }

    /// Checks that the location is a deltann store of this version.
    ///
    /// # Errors
    /// Fails when it cannot be reached, has no marker, or has another format version.
    pub fn check(&self) -> Result<()> {
        let key = self.key(deltann_store::layout::FORMAT_FILE);
        let bytes = match self
            .runtime
            .block_on(async { self.store.get(&key).await?.bytes().await })
        {
            Ok(b) => b,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(Error::Invalid(format!(
                    "{} is not a deltann store (no {})",
                    self.url,
                    deltann_store::layout::FORMAT_FILE
                )));
            }
            Err(e) => return Err(self.failed("read the format marker")(e)),
        };
        let version = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("version").and_then(serde_json::Value::as_u64));
        if version != Some(u64::from(deltann_store::layout::FORMAT_VERSION)) {
            return Err(Error::Invalid(format!(
                "{}: store format version {version:?}, this deltann reads {}",
                self.url,
                deltann_store::layout::FORMAT_VERSION
            )));
        }
        Ok(())
    }

    /// The commits numbered above `after`, in order.
    ///
    /// # Errors
    /// Fails when the log cannot be listed or a commit cannot be read or parsed.
    pub fn commits_after(&self, after: u64) -> Result<Vec<Commit>> {
        let dir = self.key(LOG_DIR);
        let offset = dir.clone().join(log_name(after));
        let mut listed: Vec<(u64, Key)> = self
            .runtime
            .block_on(
                self.store
                    .list_with_offset(Some(&dir), &offset)
                    .try_collect::<Vec<_>>(),
            )
            .map_err(self.failed("list the commit log"))?
            .into_iter()
            .filter_map(|meta| {
                let number = meta
                    .location
                    .filename()?
                    .strip_suffix(".json")?
                    .parse::<u64>()
                    .ok()?;
                (number > after).then_some((number, meta.location))
            })
            .collect();
        listed.sort_by_key(|(n, _)| *n);
        let mut out = Vec::with_capacity(listed.len());
        for (number, key) in listed {
            let bytes = self
                .runtime
                .block_on(async { self.store.get(&key).await?.bytes().await })
                .map_err(self.failed(format!("read {key}")))?;
            let mut commit: Commit = serde_json::from_slice(&bytes)
                .map_err(|e| Error::Invalid(format!("{}/{key}: {e}", self.url)))?;
            commit.number = number;
            out.push(commit);
        }
        Ok(out)
    }

    /// Creates commit `number` if no commit has that number yet: `false` when another writer
    /// took it first.
    ///
    /// # Errors
    /// Fails when the object store fails otherwise.
    pub fn try_commit(&self, number: u64, commit: &Commit) -> Result<bool> {
        let key = self.key(LOG_DIR).join(log_name(number));
        let body = serde_json::to_vec(commit).map_err(|e| Error::Invalid(e.to_string()))?;
        match self.runtime.block_on(self.store.put_opts(
            &key,
            PutPayload::from(body),
            PutOptions::from(PutMode::Create),
        )) {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(self.failed(format!("create commit {number}"))(e)),
        }
    }

    /// Uploads a local file to `rel` (overwriting: part names are the writer's own).
    ///
    /// # Errors
    /// Fails when the file cannot be read or the upload fails.
    pub fn upload(&self, file: &Path, rel: &str) -> Result<u64> {
        let bytes = std::fs::read(file).map_err(|source| Error::Io {
            path: file.to_path_buf(),
            action: "read",
            source,
        })?;
        let len = bytes.len() as u64;
        self.runtime
            .block_on(self.store.put(&self.key(rel), PutPayload::from(bytes)))
            .map_err(self.failed(format!("upload {rel}")))?;
        Ok(len)
    }

    /// Downloads `rel` to a local file (created or truncated).
    ///
    /// # Errors
    /// Fails when the object cannot be read or the file written.
    pub fn download(&self, rel: &str, file: &Path) -> Result<u64> {
        let bytes = self
            .runtime
            .block_on(async { self.store.get(&self.key(rel)).await?.bytes().await })
            .map_err(self.failed(format!("download {rel}")))?;
        std::fs::write(file, &bytes).map_err(|source| Error::Io {
            path: file.to_path_buf(),
            action: "write",
            source,
        })?;
        Ok(bytes.len() as u64)
    }
}

/// A commit's object name: its number, zero-padded so that names sort as numbers.
fn log_name(number: u64) -> String {
    format!("{number:020}.json")
}
