//! A local-directory object store (`file:///path`): the default backend of `sidestream serve`.
//!
//! Real and persistent: a put writes a temporary file, fsyncs it, renames it into place and
//! fsyncs the directory, so an object is either absent or whole after a crash, like S3's PUT.
//! Blocking file I/O runs on tokio's blocking pool.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;

use super::store::{ObjectError, ObjectMeta, ObjectStore, check_key};

#[derive(Debug)]
pub struct LocalStore {
    root: PathBuf,
    tmp_seq: AtomicU64,
}

impl LocalStore {
    /// Opens (creating if needed) the directory `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, ObjectError> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(|e| io_error(&root, e))?;
        Ok(Self { root, tmp_seq: AtomicU64::new(0) })
    }

    /// Writes a temporary file, fsyncs it, then moves it into place: a rename (replacing), or a
    /// hard link when `only_if_absent` (which fails atomically if the key exists). Returns
    /// whether the object was written.
    async fn write(&self, key: &str, body: Bytes, only_if_absent: bool) -> Result<bool, ObjectError> {
        let path = self.path(key)?;
        let tmp = path.with_extension(format!("tmp{}", self.tmp_seq.fetch_add(1, Ordering::Relaxed)));
        blocking(move || {
            let dir = path.parent().unwrap_or(Path::new("."));
            fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
            let write = || -> std::io::Result<bool> {
                let mut f = File::create(&tmp)?;
                f.write_all(&body)?;
                f.sync_all()?;
                let written = if only_if_absent {
                    let linked = match fs::hard_link(&tmp, &path) {
                        Ok(()) => true,
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
                        Err(e) => return Err(e),
                    };
                    fs::remove_file(&tmp)?;
                    linked
                } else {
                    fs::rename(&tmp, &path)?;
                    true
                };
                File::open(dir)?.sync_all()?;
                Ok(written)
            };
            write().map_err(|e| {
                let _ = fs::remove_file(&tmp);
                io_error(&path, e)
            })
        })
        .await
    }

    fn path(&self, key: &str) -> Result<PathBuf, ObjectError> {
        check_key(key)?;
        Ok(self.root.join(key))
    }
}

fn io_error(path: &Path, e: std::io::Error) -> ObjectError {
    use std::io::ErrorKind::*;
    match e.kind() {
        NotFound => ObjectError::NotFound(path.display().to_string()),
        PermissionDenied | InvalidInput | InvalidData => ObjectError::Permanent(format!("{}: {e}", path.display())),
        _ => ObjectError::Transient(format!("{}: {e}", path.display())),
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, ObjectError> + Send + 'static) -> Result<T, ObjectError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ObjectError::Transient(format!("blocking task failed: {e}")))?
}

#[async_trait]
impl ObjectStore for LocalStore {
    async fn put(&self, key: &str, body: Bytes) -> Result<(), ObjectError> {
        self.write(key, body, false).await.map(|_| ())
    }

    async fn put_if_absent(&self, key: &str, body: Bytes) -> Result<bool, ObjectError> {
        self.write(key, body, true).await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, ObjectError> {
        let path = self.path(key)?;
        blocking(move || {
            let mut f = File::open(&path).map_err(|e| io_error(&path, e))?;
            let size = f.metadata().map_err(|e| io_error(&path, e))?.len();
            if range.start > range.end || range.end > size {
                return Err(ObjectError::NotFound(format!("{} range {range:?} beyond {size} bytes", path.display())));
            }
            let mut buf = vec![0u8; (range.end - range.start) as usize];
            f.seek(SeekFrom::Start(range.start)).map_err(|e| io_error(&path, e))?;
            f.read_exact(&mut buf).map_err(|e| io_error(&path, e))?;
            Ok(Bytes::from(buf))
        })
        .await
    }

    async fn get(&self, key: &str) -> Result<Bytes, ObjectError> {
        let path = self.path(key)?;
        blocking(move || fs::read(&path).map(Bytes::from).map_err(|e| io_error(&path, e))).await
    }

    async fn head(&self, key: &str) -> Result<Option<u64>, ObjectError> {
        let path = self.path(key)?;
        blocking(move || match fs::metadata(&path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error(&path, e)),
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<(), ObjectError> {
        let path = self.path(key)?;
        blocking(move || match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error(&path, e)),
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, ObjectError> {
        let root = self.root.clone();
        let prefix = prefix.to_string();
        blocking(move || {
            let mut out = Vec::new();
            // Walk only the folder the prefix names (`ab/agent/` -> root/ab/agent), not the tree.
            let start = match prefix.rfind('/') {
                Some(i) if check_key(&prefix[..i]).is_ok() => root.join(&prefix[..i]),
                _ => root.clone(),
            };
            let mut stack = vec![start];
            while let Some(dir) = stack.pop() {
                let entries = match fs::read_dir(&dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_error(&dir, e)),
                };
                for entry in entries {
                    let entry = entry.map_err(|e| io_error(&dir, e))?;
                    let path = entry.path();
                    let meta = entry.metadata().map_err(|e| io_error(&path, e))?;
                    if meta.is_dir() {
                        stack.push(path);
                        continue;
                    }
                    let Ok(rel) = path.strip_prefix(&root) else { continue };
                    let key = rel.to_string_lossy().replace('\\', "/");
                    if key.starts_with(&prefix) && check_key(&key).is_ok() && !key.contains(".tmp") {
                        out.push(ObjectMeta { key, size_bytes: meta.len() });
                    }
                }
            }
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_get_range_list_delete() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::open(dir.path()).unwrap();
        s.put("ab/agent/x.sso", Bytes::from_static(b"hello world")).await.unwrap();
        assert_eq!(s.get_range("ab/agent/x.sso", 6..11).await.unwrap(), "world");
        assert_eq!(s.head("ab/agent/x.sso").await.unwrap(), Some(11));
        assert!(matches!(s.get_range("ab/agent/x.sso", 6..12).await, Err(ObjectError::NotFound(_))));
        assert_eq!(s.list("ab/").await.unwrap().len(), 1);
        assert!(s.list("cd/").await.unwrap().is_empty());
        assert!(matches!(s.put("../escape", Bytes::new()).await, Err(ObjectError::Permanent(_))));
        assert!(!s.put_if_absent("ab/agent/x.sso", Bytes::from_static(b"other")).await.unwrap());
        assert_eq!(s.get("ab/agent/x.sso").await.unwrap(), "hello world");
        assert!(s.put_if_absent("ab/agent/y.sso", Bytes::from_static(b"y")).await.unwrap());
        let page = s.list_page("ab/", Some("ab/agent/x.sso"), 10).await.unwrap();
        assert_eq!(page.iter().map(|m| m.key.as_str()).collect::<Vec<_>>(), ["ab/agent/y.sso"]);
        s.delete("ab/agent/y.sso").await.unwrap();
        s.delete("ab/agent/x.sso").await.unwrap();
        assert_eq!(s.head("ab/agent/x.sso").await.unwrap(), None);
        assert!(matches!(s.get("ab/agent/x.sso").await, Err(ObjectError::NotFound(_))));
    }
}
