//! systemd `Type=notify` readiness and the watchdog, for both daemons.
//!
//! Without `$NOTIFY_SOCKET` (not under systemd) every call is a no-op.

use std::time::Duration;

/// Tells systemd the daemon is ready (`READY=1`) and, when the unit sets
/// `WatchdogSec=`, pings `WATCHDOG=1` at half the interval from a task on
/// the current runtime for as long as the runtime lives (so a wedged
/// runtime stops the pings and systemd restarts the daemon). Returns the
/// watchdog interval in force, if any.
pub fn notify_ready() -> std::io::Result<Option<Duration>> {
    sd_notify::notify(false, &[sd_notify::NotifyState::Ready])?;
    let mut usec = 0u64;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return Ok(None);
    }
    let interval = Duration::from_micros(usec);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(interval / 2);
        loop {
            every.tick().await;
            // A failed send changes nothing here: systemd acts on the silence.
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
        }
    });
    Ok(Some(interval))
}

/// Tells systemd the daemon is stopping (`STOPPING=1`).
pub fn notify_stopping() {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
}
