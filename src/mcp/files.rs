//! Where `load_file` takes its bytes from, and what it may read. Over
//! HTTP a path is read only under `NEXUS_MCP_ROOTS`, checked after every
//! symlink is resolved, and copied into upload storage (so that whichever
//! server claims the job can read it); inline content and an earlier
//! upload are stored the same way. Over stdio a path is loaded where it is.

use std::os::fd::AsRawFd;
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

    /// Opens the file `path` names if it lies under a root once symlinks
    /// and `..` are resolved; a message saying why not otherwise. The check
    /// is made on the file opened (its path as the kernel knows it), so a
    /// link swapped in between cannot lead outside.
    pub fn open(&self, path: &str) -> Result<std::fs::File, String> {
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
        let file = std::fs::File::open(given).map_err(|e| format!("{path}: {e}"))?;
        let real = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
            .map_err(|e| format!("{path}: {e}"))?;
        if !self.0.iter().any(|root| real.starts_with(root)) {
            return Err(format!(
                "{path} is outside the directories this server may read ({})",
                self.list()
            ));
        }
        if !file
            .metadata()
            .map_err(|e| format!("{path}: {e}"))?
            .is_file()
        {
            return Err(format!("{path} is not a regular file"));
        }
        Ok(file)
    }

    fn list(&self) -> String {
        self.0
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// An open file as a stream of chunks.
fn file_stream(file: std::fs::File) -> ByteStream<'static> {
    Box::pin(tokio_util::io::ReaderStream::new(
        tokio::fs::File::from_std(file),
    ))
}

fn stored_or_message(r: Result<Stored, UploadError>) -> Result<Stored, String> {
    r.map_err(|e| match e {
        UploadError::TooLarge(n) => format!("larger than {n} bytes"),
        other => other.to_string(),
    })
}

/// Copies an open file into storage; `name` is for messages.
pub async fn store_file(
    storage: &dyn Storage,
    file: std::fs::File,
    name: &str,
    limit: u64,
) -> Result<Stored, String> {
    stored_or_message(storage.put(file_stream(file), limit).await)
        .map_err(|e| format!("{name}: {e}"))
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
        assert!(roots.open(&s(&inside)).is_ok());
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
            assert!(roots.open(&bad).is_err(), "{bad} must be refused");
        }
        assert!(Roots::default().open(&s(&inside)).is_err());
        assert!(Roots::resolve(&[outside.path().join("missing")]).is_err());
    }
}
