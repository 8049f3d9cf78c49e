//! Where uploads are kept until their job has run. One small interface, so
//! that a shared object store can stand in for the local directory when
//! several servers share the work; [`LocalStorage`] is the default, under
//! `$NEXUS_DATA_DIR/uploads`. Names are generated: a client's filename never
//! becomes a path.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{Stream, StreamExt};
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
    /// A local file with the upload's bytes, for the pipeline to read.
    fn local_path(&self, key: &str) -> PathBuf;
    /// Removes a stored upload; one already gone is not an error.
    fn remove(&self, key: &str) -> BoxFuture<'_, io::Result<()>>;
    /// Removes what uploads cut off mid-way left behind: partial files
    /// untouched for `idle` (a live upload writes all the time). Returns how
    /// many went.
    fn sweep_partial(&self, idle: Duration) -> BoxFuture<'_, io::Result<usize>>;
    /// The keys of stored uploads untouched for `age`.
    fn older_than(&self, age: Duration) -> BoxFuture<'_, io::Result<Vec<String>>>;
}

/// An upload that sends nothing for this long is abandoned.
pub const UPLOAD_IDLE: Duration = Duration::from_secs(60);

/// A partial upload's name: its key and this suffix.
const PARTIAL: &str = ".part";

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
        mut body: ByteStream<'a>,
        limit: u64,
    ) -> BoxFuture<'a, Result<Stored, UploadError>> {
        Box::pin(async move {
            let key = uuid::Uuid::new_v4().to_string();
            let partial = self.dir.join(format!("{key}{PARTIAL}"));
            let mut file = tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&partial)
                .await
                .map_err(UploadError::Storage)?;
            let mut hasher = Sha256::new();
            let mut size = 0u64;
            let result = async {
                loop {
                    // A client that stops sending is not waited for forever.
                    let next = tokio::time::timeout(UPLOAD_IDLE, body.next())
                        .await
                        .map_err(|_| {
                            UploadError::Body(io::Error::new(
                                io::ErrorKind::TimedOut,
                                format!("no data for {}s", UPLOAD_IDLE.as_secs()),
                            ))
                        })?;
                    let Some(chunk) = next else { break };
                    let chunk = chunk.map_err(UploadError::Body)?;
                    size += chunk.len() as u64;
                    if size > limit {
                        return Err(UploadError::TooLarge(limit));
                    }
                    hasher.update(&chunk);
                    file.write_all(&chunk).await.map_err(UploadError::Storage)?;
                }
                file.sync_all().await.map_err(UploadError::Storage)?;
                Ok(())
            }
            .await;
            drop(file);
            if let Err(e) = result {
                let _ = tokio::fs::remove_file(&partial).await;
                return Err(e);
            }
            tokio::fs::rename(&partial, self.local_path(&key))
                .await
                .map_err(UploadError::Storage)?;
            let digest = hasher.finalize();
            let sha256 = digest.iter().map(|b| format!("{b:02x}")).collect();
            Ok(Stored { key, size, sha256 })
        })
    }

    fn local_path(&self, key: &str) -> PathBuf {
        // Keys are UUIDs we made; anything else cannot name a file here.
        let safe: String = key
            .chars()
            .filter(|c| c.is_ascii_hexdigit() || *c == '-')
            .collect();
        self.dir.join(safe)
    }

    fn remove(&self, key: &str) -> BoxFuture<'_, io::Result<()>> {
        let path = self.local_path(key);
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
