//! Where `load_file` takes its bytes from, and what it may read. Over
//! HTTP a path is read only under `NEXUS_MCP_ROOTS`, checked after every
//! symlink is resolved, and copied into upload storage (so that whichever
//! server claims the job can read it); inline content and an earlier
//! upload are stored the same way. Over stdio a path is loaded where it is.

use std::path::{Path, PathBuf};

use crate::jobs::storage::{ByteStream, Storage, Stored, UploadError};

/// Largest inline `content` a `load_file` call may carry.
pub const INLINE_MAX: u64 = 1 << 20;

/// The directories HTTP callers may load from, resolved once.
#[derive(Debug, Clone, Default)]
pub struct Roots(Vec<PathBuf>);

impl Roots {
    /// Resolves each configured directory; one that is not a directory is a
    /// configuration error.
    pub fn resolve(dirs: &[PathBuf]) -> Result<Roots, String> {
        dirs.iter()
            .map(|d| match std::fs::canonicalize(d) {
                Ok(p) if p.is_dir() => Ok(p),
                Ok(_) => Err(format!(
                    "NEXUS_MCP_ROOTS: {} is not a directory",
                    d.display()
                )),
                Err(e) => Err(format!("NEXUS_MCP_ROOTS: {}: {e}", d.display())),
            })
            .collect::<Result<_, _>>()
            .map(Roots)
    }

    /// The file `path` names, if it lies under a root once symlinks and
    /// `..` are resolved; a message saying why not otherwise.
    pub fn confine(&self, path: &str) -> Result<PathBuf, String> {
        if self.0.is_empty() {
            return Err(
                "this server reads no files for MCP (NEXUS_MCP_ROOTS is not set): \
                 pass the data as `content`, or upload the file (POST /api/v2/jobs) and pass \
                 its job id as `from_job`"
                    .into(),
            );
        }
        let given = Path::new(path);
        if !given.is_absolute() {
            return Err(format!(
                "`{path}` is not an absolute path; files are read under {}",
                self.list()
            ));
        }
        let real = std::fs::canonicalize(given).map_err(|e| format!("{path}: {e}"))?;
        if !self.0.iter().any(|root| real.starts_with(root)) {
            return Err(format!(
                "{path} is outside the directories this server may read ({})",
                self.list()
            ));
        }
        if !real.is_file() {
            return Err(format!("{path} is not a regular file"));
        }
        Ok(real)
    }

    fn list(&self) -> String {
        self.0
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A local file as a stream of chunks.
async fn file_stream(path: &Path) -> std::io::Result<ByteStream<'static>> {
    let file = tokio::fs::File::open(path).await?;
    Ok(Box::pin(tokio_util::io::ReaderStream::new(file)))
}

fn stored_or_message(r: Result<Stored, UploadError>) -> Result<Stored, String> {
    r.map_err(|e| match e {
        UploadError::TooLarge(n) => format!("larger than {n} bytes"),
        other => other.to_string(),
    })
}

/// Copies a local file into storage.
pub async fn store_file(storage: &dyn Storage, path: &Path, limit: u64) -> Result<Stored, String> {
    let stream = file_stream(path)
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    stored_or_message(storage.put(stream, limit).await)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Stores inline content.
pub async fn store_content(storage: &dyn Storage, content: String) -> Result<Stored, String> {
    if content.len() as u64 > INLINE_MAX {
        return Err(format!(
            "`content` holds {} bytes, more than the {INLINE_MAX} a call may carry: \
             upload the file (POST /api/v2/jobs) and pass its job id as `from_job`",
            content.len()
        ));
    }
    let stream: ByteStream<'static> = Box::pin(futures_util::stream::once(async move {
        Ok(bytes::Bytes::from(content))
    }));
    stored_or_message(storage.put(stream, INLINE_MAX).await)
        .map_err(|e| format!("storing `content`: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_confined_after_symlinks_and_dots() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let inside = root.path().join("ok.csv");
        std::fs::write(&inside, "a\n").unwrap();
        let secret = outside.path().join("secret.csv");
        std::fs::write(&secret, "b\n").unwrap();
        std::os::unix::fs::symlink(&secret, root.path().join("link.csv")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("dir")).unwrap();
        let roots = Roots::resolve(&[root.path().to_path_buf()]).unwrap();
        let s = |p: &Path| p.to_str().unwrap().to_string();
        assert!(roots.confine(&s(&inside)).is_ok());
        for bad in [
            s(&secret),
            s(&root.path().join("link.csv")),
            s(&root.path().join("dir/secret.csv")),
            format!(
                "{}/../{}/secret.csv",
                s(root.path()),
                outside.path().file_name().unwrap().to_str().unwrap()
            ),
            "ok.csv".to_string(),
            s(root.path()),
        ] {
            assert!(roots.confine(&bad).is_err(), "{bad} must be refused");
        }
        assert!(Roots::default().confine(&s(&inside)).is_err());
        assert!(Roots::resolve(&[outside.path().join("missing")]).is_err());
    }
}
