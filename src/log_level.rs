//! The process's log filter, changeable while it runs: [`init`] installs the tracing subscriber
//! with a reloadable filter (`main` does, once); [`set`] replaces the filter (the broker config
//! `sidestream.log.level` and the BROKER_LOGGER resource, through Kafka's config APIs);
//! [`current`] is the filter in force. The subscriber is process-wide, so this is too.
//!
//! Must not touch: what is logged where (the modules' own `tracing` calls).

use std::sync::{Mutex, OnceLock};

use tracing_subscriber::prelude::*;
use tracing_subscriber::{EnvFilter, Registry, fmt, reload};

/// The installed filter: its text and how to replace it.
struct Control {
    /// The filter given at start (`RUST_LOG`, else `[log] level`), or by the configuration read
    /// again on SIGHUP ([`set_initial`]).
    initial: Mutex<String>,
    current: Mutex<String>,
    handle: reload::Handle<EnvFilter, Registry>,
}

static CONTROL: OnceLock<Control> = OnceLock::new();

/// Installs the subscriber: `RUST_LOG` if set and valid, else `level`, else `info`; JSON lines or
/// text on stderr. A second call does nothing.
pub fn init(level: &str, json: bool) {
    let (filter, text) = match std::env::var("RUST_LOG").ok().and_then(|v| EnvFilter::try_new(&v).ok().map(|f| (f, v))) {
        Some(found) => found,
        None => match EnvFilter::try_new(level) {
            Ok(f) => (f, level.to_string()),
            Err(_) => (EnvFilter::new("info"), "info".to_string()),
        },
    };
    let (filter, handle) = reload::Layer::new(filter);
    let layer = fmt::layer().with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).with_writer(std::io::stderr);
    let installed = if json {
        tracing_subscriber::registry().with(filter).with(layer.json()).try_init()
    } else {
        tracing_subscriber::registry().with(filter).with(layer).try_init()
    };
    if installed.is_ok() {
        let _ = CONTROL.set(Control { initial: Mutex::new(text.clone()), current: Mutex::new(text), handle });
    }
}

/// The filter in force; `None` when [`init`] did not install one (tests, embedded use).
pub fn current() -> Option<String> {
    CONTROL.get().map(|c| c.current.lock().unwrap_or_else(|p| p.into_inner()).clone())
}

/// The filter given at start, or by the configuration read again ([`set_initial`]).
pub fn initial() -> Option<String> {
    CONTROL.get().map(|c| c.initial.lock().unwrap_or_else(|p| p.into_inner()).clone())
}

/// SIGHUP: `filter`, the configuration's `[log] level` read again, becomes the filter "given at
/// start" ([`initial`]). It does not put it in force (a filter set at run time may hold; see
/// `agent::broker_config`). Fails on a bad filter, or when no reloadable filter is installed.
pub fn set_initial(filter: &str) -> Result<(), String> {
    let control = CONTROL.get().ok_or("the log filter of this process cannot change while it runs")?;
    check(filter)?;
    *control.initial.lock().unwrap_or_else(|p| p.into_inner()) = filter.to_string();
    Ok(())
}

/// Checks a filter's syntax (tracing's `EnvFilter` directives, e.g. `info,sidestream::agent=debug`).
pub fn check(filter: &str) -> Result<(), String> {
    EnvFilter::try_new(filter).map(|_| ()).map_err(|e| e.to_string())
}

/// Replaces the filter. Fails on a bad filter, or when no reloadable filter is installed.
pub fn set(filter: &str) -> Result<(), String> {
    let control = CONTROL.get().ok_or("the log filter of this process cannot change while it runs")?;
    let parsed = EnvFilter::try_new(filter).map_err(|e| e.to_string())?;
    let mut current = control.current.lock().unwrap_or_else(|p| p.into_inner());
    control.handle.reload(parsed).map_err(|e| e.to_string())?;
    *current = filter.to_string();
    tracing::info!(filter, "log filter changed");
    Ok(())
}
