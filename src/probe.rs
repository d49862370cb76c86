//! Readiness probes of an idle agent: a cheap object store call and a cheap controller call
//! every `[metrics] health_probe_interval_ms`, and the data directory's free space as gauges.
//!
//! The upload path sets the `object_store` and `controller` checks, but only while it has data
//! to upload; an idle agent would stay "ready" through an outage. The probe sets checks of its
//! own (`object_store_reachable`, `controller_reachable`), so a probe that succeeds never hides
//! an upload that fails (readiness is the AND of all checks). Each call ends within the
//! wrappers' own deadlines (`retry_deadline_ms`, `call_timeout_ms`); a change is logged once by
//! [`crate::health::set`], never once per probe.
//!
//! Both checks start false ("not probed yet") and the first probe runs at once.
//!
//! Must not touch: anything the data path owns; it only reads (a HEAD, a WAL mark).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::agent::client::ControllerClient;
use crate::object::ObjectStore;

/// The key the object store probe asks for: a HEAD of it answers "not found" (fine) or an error.
pub const PROBE_KEY: &str = "sidestream-health-probe";

/// What the probe calls, and how often.
pub struct Probe {
    pub store: Arc<dyn ObjectStore>,
    pub controller: Arc<dyn ControllerClient>,
    /// This agent's WAL log id: its mark is what the controller is asked for (a read).
    pub wal_log_id: String,
    pub interval: Duration,
}

impl Probe {
    /// Probes once at once, then every interval, until `shutdown`.
    pub fn spawn(self, shutdown: CancellationToken) {
        // Not ready until the first answers: nothing was proven reachable yet.
        crate::health::set("object_store_reachable", false, "not probed yet");
        crate::health::set("controller_reachable", false, "not probed yet");
        tokio::spawn(async move {
            loop {
                self.once().await;
                tokio::select! {
                    _ = tokio::time::sleep(self.interval) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        });
    }

    async fn once(&self) {
        let (store, controller) = tokio::join!(self.store.head(PROBE_KEY), self.controller.wal_mark(self.wal_log_id.clone()));
        match store {
            Ok(_) => crate::health::set("object_store_reachable", true, "the probe's HEAD answered"),
            Err(e) => crate::health::set("object_store_reachable", false, format!("the probe's HEAD failed: {e}")),
        }
        match controller {
            Ok(_) => crate::health::set("controller_reachable", true, "the probe's call answered"),
            Err(e) => crate::health::set("controller_reachable", false, format!("the probe's call failed: {e}")),
        }
    }
}

/// Registers `sidestream_data_dir_free_bytes` and `sidestream_data_dir_size_bytes`: the space
/// left for (and the size of) the filesystem holding `dir` (the WAL and the cache), read at
/// every scrape.
pub fn register_disk_gauges(dir: PathBuf) {
    let (free_dir, size_dir) = (dir.clone(), dir);
    crate::metrics::gauges(
        "sidestream_data_dir_free_bytes",
        "Bytes available to the agent on the filesystem of its data dir.",
        move || fs_space(&free_dir).map(|(free, _)| vec![(Vec::new(), free)]).unwrap_or_default(),
    );
    crate::metrics::gauges("sidestream_data_dir_size_bytes", "Size in bytes of the filesystem of the agent's data dir.", move || {
        fs_space(&size_dir).map(|(_, size)| vec![(Vec::new(), size)]).unwrap_or_default()
    });
}

/// (available bytes, total bytes) of the filesystem holding `dir`.
fn fs_space(dir: &std::path::Path) -> Option<(i64, i64)> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a valid NUL-terminated string and `st` points to writable memory of the
    // right type; statvfs only writes it, and we read it only when it returned 0.
    let st = unsafe {
        if libc::statvfs(path.as_ptr(), st.as_mut_ptr()) != 0 {
            return None;
        }
        st.assume_init()
    };
    let unit = st.f_frsize as i64;
    Some((st.f_bavail as i64 * unit, st.f_blocks as i64 * unit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_space_of_a_real_directory() {
        let dir = tempfile::tempdir().unwrap();
        let (free, size) = fs_space(dir.path()).unwrap();
        assert!(size > 0 && free >= 0 && free <= size, "free {free} size {size}");
        assert!(fs_space(&dir.path().join("missing")).is_none());
    }
}
