//! Where uploads are kept until their job has run. One small interface, so
//! that a shared object store can stand in for the local directory when
//! several servers share the work: [`LocalStorage`] is the default, under
//! `$NEXUS_DATA_DIR/uploads`; [`S3Storage`] keeps them in an S3 bucket
//! (`NEXUS_STORAGE=s3://bucket/prefix`), where whichever server claims a job
//! finds its file. Names are generated: a client's filename never becomes a
//! path or an object key.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{Stream, StreamExt};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

pub type ByteStream<'a> = Pin<Box<dyn Stream<Item = Result<Bytes, io::Error>> + Send + 'a>>;

/// A stored upload.
#[derive(Debug, Clone)]
pub struct Stored {
    pub key: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("the upload is larger than the limit of {0} bytes")]
    TooLarge(u64),
    #[error("reading the upload failed: {0}")]
    Body(io::Error),
    #[error("storing the upload failed: {0}")]
    Storage(io::Error),
}

pub trait Storage: Send + Sync {
    /// Stores the stream (hashing it on the way), durable when it returns.
    fn put<'a>(
        &'a self,
        body: ByteStream<'a>,
        limit: u64,
    ) -> BoxFuture<'a, Result<Stored, UploadError>>;
    /// The upload's bytes as a local file, for the pipeline to read.
    fn fetch(&self, key: &str) -> BoxFuture<'_, io::Result<LocalCopy>>;
    /// Removes a stored upload; one already gone is not an error.
    fn remove(&self, key: &str) -> BoxFuture<'_, io::Result<()>>;
    /// Removes what uploads cut off mid-way left behind: partial files
    /// untouched for `idle` (a live upload writes all the time). Returns how
    /// many went.
    fn sweep_partial(&self, idle: Duration) -> BoxFuture<'_, io::Result<usize>>;
    /// The keys of stored uploads untouched for `age`.
    fn older_than(&self, age: Duration) -> BoxFuture<'_, io::Result<Vec<String>>>;
}

/// Where `NEXUS_STORAGE` keeps uploads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageLocation {
    Directory(PathBuf),
    S3 { bucket: String, prefix: String },
}

impl StorageLocation {
    /// `s3://bucket[/prefix]`, or a directory.
    pub fn parse(value: &str) -> Result<StorageLocation, String> {
        let Some(rest) = value.strip_prefix("s3://") else {
            if value.contains("://") {
                return Err(format!(
                    "`{value}` is neither a directory nor an s3://bucket/prefix URL"
                ));
            }
            return Ok(StorageLocation::Directory(PathBuf::from(value)));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!("`{value}` names no bucket (s3://bucket/prefix)"));
        }
        Ok(StorageLocation::S3 {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
        })
    }

    /// The storage this names; an object store's fetched copies go under
    /// `data_dir`.
    pub fn open(&self, data_dir: &Path) -> io::Result<Arc<dyn Storage>> {
        Ok(match self {
            StorageLocation::Directory(dir) => Arc::new(LocalStorage::new(dir.clone())?),
            StorageLocation::S3 { bucket, prefix } => {
                Arc::new(S3Storage::new(bucket, prefix, &data_dir.join("fetched"))?)
            }
        })
    }
}

impl std::fmt::Display for StorageLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StorageLocation::Directory(dir) => write!(f, "{}", dir.display()),
            StorageLocation::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

/// A stored upload as a local file: the stored file itself, or a copy
/// fetched from an object store, removed when this is dropped. A copy is
/// held under a shared lock while it lives, so that the sweep can tell the
/// copies of a process that died (nobody holds them) from those in use.
#[derive(Debug)]
pub struct LocalCopy {
    path: PathBuf,
    temporary: bool,
    _held: Option<std::fs::File>,
}

impl LocalCopy {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for LocalCopy {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// An upload that sends nothing for this long is abandoned.
pub const UPLOAD_IDLE: Duration = Duration::from_secs(60);

/// A partial upload's name: its key and this suffix.
const PARTIAL: &str = ".part";

/// An upload's body as it is stored: chunk by chunk, each waited for at
/// most [`UPLOAD_IDLE`], counted against the limit and hashed.
struct Intake<'a> {
    body: ByteStream<'a>,
    limit: u64,
    size: u64,
    hasher: Sha256,
}

impl<'a> Intake<'a> {
    fn new(body: ByteStream<'a>, limit: u64) -> Intake<'a> {
        Intake {
            body,
            limit,
            size: 0,
            hasher: Sha256::new(),
        }
    }

    async fn next(&mut self) -> Result<Option<Bytes>, UploadError> {
        // A client that stops sending is not waited for forever.
        let next = tokio::time::timeout(UPLOAD_IDLE, self.body.next())
            .await
            .map_err(|_| {
                UploadError::Body(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no data for {}s", UPLOAD_IDLE.as_secs()),
                ))
            })?;
        let Some(chunk) = next else { return Ok(None) };
        let chunk = chunk.map_err(UploadError::Body)?;
        self.size += chunk.len() as u64;
        if self.size > self.limit {
            return Err(UploadError::TooLarge(self.limit));
        }
        self.hasher.update(&chunk);
        Ok(Some(chunk))
    }

    fn stored(self, key: String) -> Stored {
        let digest = self.hasher.finalize();
        Stored {
            key,
            size: self.size,
            sha256: digest.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }
}

/// Keys are UUIDs we made; anything else cannot name a file or an object.
fn safe_key(key: &str) -> String {
    key.chars()
        .filter(|c| c.is_ascii_hexdigit() || *c == '-')
        .collect()
}

/// Creates a file only this server may read.
async fn private_file(path: &Path) -> io::Result<tokio::fs::File> {
    tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .await
}

pub struct LocalStorage {
    dir: PathBuf,
}

impl LocalStorage {
    /// Uploads are the users' data: the directory is the server's alone
    /// (0700) and each file in it 0600.
    pub fn new(dir: PathBuf) -> io::Result<LocalStorage> {
        private_dir(&dir)?;
        Ok(LocalStorage { dir })
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(safe_key(key))
    }

    /// Files directly in the directory, with their age since last written.
    async fn entries(&self) -> io::Result<Vec<(String, Duration)>> {
        let mut out = Vec::new();
        let mut dir = tokio::fs::read_dir(&self.dir).await?;
        let now = SystemTime::now();
        while let Some(e) = dir.next_entry().await? {
            let meta = match e.metadata().await {
                Ok(m) if m.is_file() => m,
                _ => continue,
            };
            let age = meta
                .modified()
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .unwrap_or_default();
            if let Some(name) = e.file_name().to_str() {
                out.push((name.to_string(), age));
            }
        }
        Ok(out)
    }
}

/// Creates `dir` (and its parents) with mode 0700, and makes it 0700 if it
/// exists.
pub fn private_dir(dir: &std::path::Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

impl Storage for LocalStorage {
    fn put<'a>(
        &'a self,
        body: ByteStream<'a>,
        limit: u64,
    ) -> BoxFuture<'a, Result<Stored, UploadError>> {
        Box::pin(async move {
            let key = uuid::Uuid::new_v4().to_string();
            let partial = self.dir.join(format!("{key}{PARTIAL}"));
            let mut file = private_file(&partial).await.map_err(UploadError::Storage)?;
            let mut intake = Intake::new(body, limit);
            let result = async {
                while let Some(chunk) = intake.next().await? {
                    file.write_all(&chunk).await.map_err(UploadError::Storage)?;
                }
                file.sync_all().await.map_err(UploadError::Storage)
            }
            .await;
            drop(file);
            if let Err(e) = result {
                let _ = tokio::fs::remove_file(&partial).await;
                return Err(e);
            }
            tokio::fs::rename(&partial, self.path(&key))
                .await
                .map_err(UploadError::Storage)?;
            Ok(intake.stored(key))
        })
    }

    fn fetch(&self, key: &str) -> BoxFuture<'_, io::Result<LocalCopy>> {
        let path = self.path(key);
        Box::pin(async move {
            tokio::fs::metadata(&path).await?;
            Ok(LocalCopy {
                path,
                temporary: false,
                _held: None,
            })
        })
    }

    fn remove(&self, key: &str) -> BoxFuture<'_, io::Result<()>> {
        let path = self.path(key);
        Box::pin(async move {
            match tokio::fs::remove_file(path).await {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        })
    }

    fn sweep_partial(&self, idle: Duration) -> BoxFuture<'_, io::Result<usize>> {
        Box::pin(async move {
            let mut swept = 0;
            for (name, age) in self.entries().await? {
                if name.ends_with(PARTIAL) && age >= idle {
                    match tokio::fs::remove_file(self.dir.join(&name)).await {
                        Ok(()) => swept += 1,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            Ok(swept)
        })
    }

    fn older_than(&self, age: Duration) -> BoxFuture<'_, io::Result<Vec<String>>> {
        Box::pin(async move {
            Ok(self
                .entries()
                .await?
                .into_iter()
                .filter(|(name, a)| !name.ends_with(PARTIAL) && *a >= age)
                .map(|(name, _)| name)
                .collect())
        })
    }
}

/// Uploads as objects `prefix/key` in an S3 bucket (AWS or any S3 API:
/// endpoint, region and credentials from the usual `AWS_*` variables). A
/// body is written as a multipart upload while it is hashed, so memory
/// holds a few parts, not the file; a job's server fetches the object into
/// its own data directory for the run.
pub struct S3Storage {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    fetched: PathBuf,
}

/// The size of a multipart upload's parts (S3 wants at least 5 MiB but for
/// the last), and how many go at once.
const PART_BYTES: usize = 8 << 20;
const PARTS_IN_FLIGHT: usize = 4;

impl S3Storage {
    /// The bucket's client; copies of its objects go to `fetched`.
    pub fn new(bucket: &str, prefix: &str, fetched: &Path) -> io::Result<S3Storage> {
        let store = s3_bucket(bucket)?;
        private_dir(fetched)?;
        Ok(S3Storage {
            store,
            prefix: prefix.to_string(),
            fetched: fetched.to_path_buf(),
        })
    }

    fn object(&self, key: &str) -> ObjectPath {
        let key = safe_key(key);
        if self.prefix.is_empty() {
            ObjectPath::from(key)
        } else {
            ObjectPath::from(format!("{}/{key}", self.prefix))
        }
    }
}

/// A client of `bucket`, set up from the usual `AWS_*` variables
/// (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, …).
pub fn s3_bucket(bucket: &str) -> io::Result<Arc<dyn ObjectStore>> {
    let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
    // An endpoint given as http:// (a local S3 API server) is meant as
    // written.
    if builder
        .get_config_value(&AmazonS3ConfigKey::Endpoint)
        .is_some_and(|e| e.starts_with("http://"))
    {
        builder = builder.with_allow_http(true);
    }
    Ok(Arc::new(builder.build().map_err(io::Error::other)?))
}

/// An object store's error as I/O: a missing object is `NotFound`.
fn object_error(e: object_store::Error) -> io::Error {
    match e {
        object_store::Error::NotFound { .. } => io::Error::new(io::ErrorKind::NotFound, e),
        e => io::Error::other(e),
    }
}

impl Storage for S3Storage {
    fn put<'a>(
        &'a self,
        body: ByteStream<'a>,
        limit: u64,
    ) -> BoxFuture<'a, Result<Stored, UploadError>> {
        Box::pin(async move {
            let key = uuid::Uuid::new_v4().to_string();
            let upload = self
                .store
                .put_multipart(&self.object(&key))
                .await
                .map_err(|e| UploadError::Storage(object_error(e)))?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
            let mut intake = Intake::new(body, limit);
            let written = async {
                while let Some(chunk) = intake.next().await? {
                    writer
                        .wait_for_capacity(PARTS_IN_FLIGHT)
                        .await
                        .map_err(|e| UploadError::Storage(object_error(e)))?;
                    writer.write(&chunk);
                }
                Ok(())
            }
            .await;
            if let Err(e) = written {
                // Its parts are dropped by the store, not kept and billed.
                let _ = writer.abort().await;
                return Err(e);
            }
            writer
                .finish()
                .await
                .map_err(|e| UploadError::Storage(object_error(e)))?;
            Ok(intake.stored(key))
        })
    }

    fn fetch(&self, key: &str) -> BoxFuture<'_, io::Result<LocalCopy>> {
        let object = self.object(key);
        let path = self
            .fetched
            .join(format!("{}-{}", safe_key(key), uuid::Uuid::new_v4()));
        Box::pin(async move {
            let mut stream = self
                .store
                .get(&object)
                .await
                .map_err(object_error)?
                .into_stream();
            let held = private_file(&path).await?.into_std().await;
            let mut copy = LocalCopy {
                path,
                temporary: true,
                _held: None,
            };
            held.lock_shared()?;
            let mut file = tokio::fs::File::from_std(held.try_clone()?);
            copy._held = Some(held);
            while let Some(chunk) = stream.next().await {
                file.write_all(&chunk.map_err(object_error)?).await?;
            }
            file.flush().await?;
            Ok(copy)
        })
    }

    fn remove(&self, key: &str) -> BoxFuture<'_, io::Result<()>> {
        let object = self.object(key);
        Box::pin(async move {
            match self.store.delete(&object).await {
                Err(object_store::Error::NotFound { .. }) | Ok(()) => Ok(()),
                Err(e) => Err(object_error(e)),
            }
        })
    }

    /// An upload cut off here is aborted at once (its parts dropped); one
    /// cut off by a crash is left to the bucket's lifecycle rule for
    /// incomplete multipart uploads (deploy/README.md). What goes here are
    /// the fetched copies of processes that died mid-job: nobody holds
    /// their lock.
    fn sweep_partial(&self, idle: Duration) -> BoxFuture<'_, io::Result<usize>> {
        let dir = self.fetched.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut swept = 0;
                for entry in std::fs::read_dir(&dir)? {
                    let path = entry?.path();
                    let Ok(file) = std::fs::File::open(&path) else {
                        continue;
                    };
                    let idle_for = file
                        .metadata()
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| SystemTime::now().duration_since(t).ok())
                        .unwrap_or_default();
                    if idle_for >= idle
                        && file.try_lock().is_ok()
                        && std::fs::remove_file(&path).is_ok()
                    {
                        swept += 1;
                    }
                }
                Ok(swept)
            })
            .await
            .map_err(io::Error::other)?
        })
    }

    fn older_than(&self, age: Duration) -> BoxFuture<'_, io::Result<Vec<String>>> {
        Box::pin(async move {
            let prefix = (!self.prefix.is_empty()).then(|| ObjectPath::from(self.prefix.as_str()));
            let mut listed = self.store.list(prefix.as_ref());
            let now = chrono::Utc::now();
            let mut keys = Vec::new();
            while let Some(meta) = listed.next().await {
                let meta = meta.map_err(object_error)?;
                let untouched = (now - meta.last_modified).to_std().unwrap_or_default();
                if untouched >= age
                    && let Some(name) = meta.location.filename()
                {
                    keys.push(name.to_string());
                }
            }
            Ok(keys)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client that stops sending mid-upload is given up on, and its
    /// partial file removed.
    #[tokio::test(start_paused = true)]
    async fn a_stalled_upload_times_out_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let storage = LocalStorage::new(dir.path().join("uploads")).unwrap();
        let first = futures_util::stream::once(async { Ok(Bytes::from_static(b"id\n1\n")) });
        let body: ByteStream = Box::pin(first.chain(futures_util::stream::pending()));
        let started = tokio::time::Instant::now();
        match storage.put(body, 1 << 20).await {
            Err(UploadError::Body(e)) => assert_eq!(e.kind(), io::ErrorKind::TimedOut),
            other => panic!("expected a timeout, got {:?}", other.map(|s| s.key)),
        }
        assert!(started.elapsed() >= UPLOAD_IDLE);
        let left = std::fs::read_dir(dir.path().join("uploads"))
            .unwrap()
            .count();
        assert_eq!(left, 0);
    }
}
