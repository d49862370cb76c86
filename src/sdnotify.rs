//! systemd's readiness protocol (sd_notify) without libsystemd: datagrams to `$NOTIFY_SOCKET`.
//!
//! `READY=1` once the agent serves (listener open, WAL replayed), `STOPPING=1` when SIGTERM
//! arrives, `WATCHDOG=1` every half of `$WATCHDOG_USEC` when the unit sets `WatchdogSec=`.
//! Without `$NOTIFY_SOCKET` (not under systemd with `Type=notify`) every call does nothing.
//! A failed send is logged at debug and otherwise ignored: systemd's own timeouts report it.
//!
//! Must not touch: anything else; it only writes to the socket systemd gave.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Sends `state` (newline-separated `KEY=value` lines) to `$NOTIFY_SOCKET`, if set. Returns
/// whether it was sent.
pub fn notify(state: &str) -> bool {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return false };
    match send(&path, state) {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(error = %e, socket = ?path, state, "sd_notify failed");
            false
        }
    }
}

fn send(path: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let socket = UnixDatagram::unbound()?;
    let bytes = path.as_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        // An abstract socket address (systemd uses these for some services).
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        socket.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        socket.send_to(state.as_bytes(), path)?;
    }
    Ok(())
}

/// The watchdog interval systemd asks for (`$WATCHDOG_USEC`, for this process per
/// `$WATCHDOG_PID`), halved as sd_watchdog_enabled(3) advises; None when it asks for none.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// Sends `WATCHDOG=1` every [`watchdog_interval`] while the runtime runs (nothing without one).
pub fn spawn_watchdog() {
    let Some(every) = watchdog_interval() else { return };
    tokio::spawn(async move {
        loop {
            notify("WATCHDOG=1");
            tokio::time::sleep(every).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datagram_reaches_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        send(path.as_os_str(), "READY=1\nSTATUS=serving").unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=serving");
        assert!(send(dir.path().join("missing").as_os_str(), "READY=1").is_err());
    }
}
