//! What an agent takes from its host before it serves: the exclusive lock on `data_dir`, enough
//! open-file descriptors, and the free space its cache's disk tier may claim.
//!
//! - [`DataDirLock`]: `flock` on `<data_dir>/lock`, held for the life of the process (the kernel
//!   drops it when the process dies, however it dies); the file records the holder's pid so a
//!   second agent on the same directory can say who holds it. Two agents on one WAL would replay
//!   each other's entries and fence each other's commits.
//! - [`ensure_open_files`]: raises RLIMIT_NOFILE's soft limit to the hard limit and checks it
//!   against what the configuration may open (connections, the cache's disk tier files, a margin).
//! - [`available_bytes`] / [`allocated_bytes`]: the filesystem's free space and the space files
//!   already hold, for sizing the disk tier (`agent/cache.rs`).
//!
//! It owns no policy beyond these checks; `server.rs` calls it first thing.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The lock file's name under `data_dir`.
pub const LOCK_FILE: &str = "lock";

/// Descriptors kept free for everything not counted (SQLite, WAL segments, objects being
/// written, sockets to the object store and the controller, the metrics listener, logs).
pub const OPEN_FILES_MARGIN: u64 = 256;

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("data_dir {dir} is in use by another sidestream process (pid {pid}, lock file {lock}); stop it or use another data_dir")]
    Locked { dir: PathBuf, pid: String, lock: PathBuf },
    #[error("cannot lock data_dir {dir}: {source}")]
    Lock { dir: PathBuf, source: std::io::Error },
    #[error(
        "too few open files allowed: the limit is {limit}, this configuration needs {need} \
         ({connections} connections [agent] max_connections + {cache_files} cache disk tier files + {margin} margin); \
         raise it (`ulimit -n {need}` in the shell, LimitNOFILE={need} in a systemd unit, \
         --ulimit nofile={need} for docker) or lower max_connections / [cache] disk_bytes"
    )]
    OpenFiles { limit: u64, need: u64, connections: u64, cache_files: u64, margin: u64 },
    #[error("cannot read the open-file limit: {0}")]
    Rlimit(std::io::Error),
}

/// The exclusive lock on a data directory; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// Takes the lock on `dir` without waiting, then records this process's pid in it. Fails at
    /// once, naming the holder's pid, if another process holds it.
    pub fn acquire(dir: &Path) -> Result<Self, HostError> {
        let path = dir.join(LOCK_FILE);
        let lock_err = |source| HostError::Lock { dir: dir.to_path_buf(), source };
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(lock_err)?;
        // SAFETY: flock on a descriptor this function owns; no memory is passed.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(lock_err(e));
            }
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = match pid.trim() {
                "" => "unknown".to_string(),
                p => p.to_string(),
            };
            return Err(HostError::Locked { dir: dir.to_path_buf(), pid, lock: path });
        }
        // The pid is information for the next process, not the lock itself: on a full disk it
        // may not be written, and the agent still starts.
        let record = file.set_len(0).and_then(|_| file.rewind()).and_then(|_| writeln!(file, "{}", std::process::id()));
        if let Err(e) = record {
            tracing::warn!(path = %path.display(), error = %e, "cannot record the pid in the data_dir lock file");
        }
        Ok(DataDirLock { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit, then checks that it covers
/// `connections` + `cache_files` + [`OPEN_FILES_MARGIN`]. Returns the limit in force.
pub fn ensure_open_files(connections: u64, cache_files: u64) -> Result<u64, HostError> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(HostError::Rlimit(std::io::Error::last_os_error()));
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: setrlimit reads the struct passed.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            tracing::debug!(from = lim.rlim_cur, to = lim.rlim_max, "raised the open-file limit to the hard limit");
            lim.rlim_cur = lim.rlim_max;
        } else {
            tracing::warn!(limit = lim.rlim_cur, hard = lim.rlim_max, error = %std::io::Error::last_os_error(),
                "cannot raise the open-file limit to the hard limit");
        }
    }
    let limit = lim.rlim_cur;
    let need = connections + cache_files + OPEN_FILES_MARGIN;
    if limit < need {
        return Err(HostError::OpenFiles { limit, need, connections, cache_files, margin: OPEN_FILES_MARGIN });
    }
    Ok(limit)
}

/// Bytes of the filesystem holding `path` that an unprivileged writer can still use.
pub fn available_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: a zeroed statvfs is a valid value; statvfs fills it from a NUL-terminated path.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((s.f_bavail as u64).saturating_mul(s.f_frsize as u64))
}

/// Disk space the regular files directly under `dir` hold (allocated blocks, not lengths); 0 if
/// `dir` does not exist.
pub fn allocated_bytes(dir: &Path) -> std::io::Result<u64> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut total = 0u64;
    for entry in entries {
        let meta = entry?.metadata()?;
        if meta.is_file() {
            total += meta.blocks() * 512;
        }
    }
    Ok(total)
}

/// Allocates the whole length of `file` on disk (`fallocate`), so later writes inside it never
/// need new space: they cannot fail with ENOSPC on a filesystem that allocates in place.
pub fn preallocate(file: &File, len: u64) -> std::io::Result<()> {
    // SAFETY: fallocate on a descriptor the caller owns; mode 0 only allocates.
    let r = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len as libc::off_t) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_dir_fails_and_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path()).unwrap();
        let pid = std::fs::read_to_string(first.path()).unwrap();
        assert_eq!(pid.trim(), std::process::id().to_string());
        match DataDirLock::acquire(dir.path()) {
            Err(HostError::Locked { pid, .. }) => assert_eq!(pid, std::process::id().to_string()),
            other => panic!("expected Locked, got {other:?}"),
        }
        drop(first);
        DataDirLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn open_files_check_names_the_numbers() {
        let limit = ensure_open_files(1, 1).unwrap();
        let e = ensure_open_files(limit, 10).unwrap_err().to_string();
        assert!(e.contains(&format!("the limit is {limit}")), "{e}");
        assert!(e.contains(&format!("needs {}", limit + 10 + OPEN_FILES_MARGIN)), "{e}");
        assert!(e.contains("ulimit -n"), "{e}");
    }

    #[test]
    fn preallocated_files_hold_their_space() {
        let dir = tempfile::tempdir().unwrap();
        let f = File::create(dir.path().join("a")).unwrap();
        f.set_len(1 << 20).unwrap();
        assert!(allocated_bytes(dir.path()).unwrap() < 1 << 20);
        preallocate(&f, 1 << 20).unwrap();
        assert!(allocated_bytes(dir.path()).unwrap() >= 1 << 20);
        assert!(available_bytes(dir.path()).unwrap() > 0);
        assert_eq!(allocated_bytes(&dir.path().join("missing")).unwrap(), 0);
    }
}
