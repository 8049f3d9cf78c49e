//! Files named by URL for `nexus load`: `s3://bucket/key` (through the same
//! client as the upload storage) and `https://…` (or `http://`). Each is
//! streamed into the spool, hashed on the way by the upload storage's own
//! intake, so a remote file is loaded, resumed and skipped exactly like a
//! local one, with memory bounded whatever its size.

use std::io;
use std::path::{Path, PathBuf};

use futures_util::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;

use crate::jobs::storage::{self, ByteStream, LocalStorage, Storage, UploadError};

/// A file argument that is a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Remote {
    S3 { bucket: String, key: String },
    Http(String),
}

impl Remote {
    /// `None`: a local path.
    pub fn of(file: &Path) -> Option<Result<Remote, String>> {
        let text = file.to_str()?;
        if let Some(rest) = text.strip_prefix("s3://") {
            return Some(match rest.split_once('/') {
                Some((bucket, key)) if !bucket.is_empty() && !key.is_empty() => Ok(Remote::S3 {
                    bucket: bucket.to_string(),
                    key: key.to_string(),
                }),
                _ => Err(format!("`{text}` names no object (s3://bucket/key)")),
            });
        }
        (text.starts_with("https://") || text.starts_with("http://"))
            .then(|| Ok(Remote::Http(text.to_string())))
    }

    /// The name the format is told by: a URL's path, without its query; a
    /// local path as it is.
    pub fn name(file: &Path) -> String {
        let text = file.to_string_lossy();
        if Remote::of(file).is_none() {
            return text.into_owned();
        }
        text.split(['?', '#'])
            .next()
            .unwrap_or_default()
            .to_string()
    }

    /// Streams the file into `spool`; returns where it lies and its SHA-256.
    pub async fn fetch(&self, spool: &Path) -> Result<(PathBuf, String), String> {
        let body: ByteStream<'static> = match self {
            Remote::S3 { bucket, key } => {
                let store = storage::s3_bucket(bucket).map_err(|e| e.to_string())?;
                let got = store
                    .get(&ObjectPath::from(key.as_str()))
                    .await
                    .map_err(|e| match e {
                        object_store::Error::NotFound { .. } => format!(
                            "not found: bucket `{bucket}` has no object `{key}` (or there is no such bucket)"
                        ),
                        e => e.to_string(),
                    })?;
                Box::pin(got.into_stream().map_err(io::Error::other))
            }
            Remote::Http(url) => {
                let response = reqwest::Client::new()
                    .get(url)
                    .send()
                    .await
                    .and_then(|r| r.error_for_status())
                    .map_err(|e| e.to_string())?;
                Box::pin(response.bytes_stream().map(|c| c.map_err(io::Error::other)))
            }
        };
        let spool = LocalStorage::new(spool.to_path_buf()).map_err(|e| e.to_string())?;
        let stored = spool.put(body, u64::MAX).await.map_err(|e| match e {
            UploadError::Body(e) => format!("reading it failed: {e}"),
            e => e.to_string(),
        })?;
        let copy = spool.fetch(&stored.key).await.map_err(|e| e.to_string())?;
        Ok((copy.path().to_path_buf(), stored.sha256))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_told_from_paths() {
        let of = |s: &str| Remote::of(Path::new(s));
        assert_eq!(of("data/x.csv"), None);
        assert_eq!(of("-"), None);
        assert_eq!(
            of("s3://b/in/x.parquet"),
            Some(Ok(Remote::S3 {
                bucket: "b".into(),
                key: "in/x.parquet".into()
            }))
        );
        assert!(matches!(of("s3://b"), Some(Err(_))));
        assert!(matches!(of("s3:///k"), Some(Err(_))));
        assert_eq!(
            of("https://h/x.ndjson?sig=1"),
            Some(Ok(Remote::Http("https://h/x.ndjson?sig=1".into())))
        );
        assert_eq!(
            Remote::name(Path::new("https://h/x.ndjson?sig=1")),
            "https://h/x.ndjson"
        );
        assert_eq!(Remote::name(Path::new("odd?.csv")), "odd?.csv");
    }
}
