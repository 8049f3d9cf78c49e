//! Where uploads are kept until their job has run. One small interface, so
//! that a shared object store can stand in for the local directory when
//! several servers share the work; [`LocalStorage`] is the default, under
//! `$NEXUS_DATA_DIR/uploads`. Names are generated: a client's filename never
//! becomes a path.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;

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
    fn remove(&self, key: &str) -> BoxFuture<'_, io::Result<()>>;
}

pub struct LocalStorage {
    dir: PathBuf,
}

impl LocalStorage {
    pub fn new(dir: PathBuf) -> io::Result<LocalStorage> {
        std::fs::create_dir_all(&dir)?;
        Ok(LocalStorage { dir })
    }
}

impl Storage for LocalStorage {
    fn put<'a>(
        &'a self,
        mut body: ByteStream<'a>,
        limit: u64,
    ) -> BoxFuture<'a, Result<Stored, UploadError>> {
        Box::pin(async move {
            let key = uuid::Uuid::new_v4().to_string();
            let partial = self.dir.join(format!("{key}.part"));
            let mut file = tokio::fs::File::create(&partial)
                .await
                .map_err(UploadError::Storage)?;
            let mut hasher = Sha256::new();
            let mut size = 0u64;
            let result = async {
                while let Some(chunk) = body.next().await {
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
        Box::pin(async move { tokio::fs::remove_file(path).await })
    }
}
