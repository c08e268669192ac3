//! Telling systemd where the proxy is (a `Type=notify` unit, see
//! packaging/portcullis.service): ready once every listener is bound, reloading while
//! a reload runs (SIGHUP or the control socket), stopping when the drain begins.
//! Started by anything else (no `NOTIFY_SOCKET`), each call does nothing.

use sd_notify::NotifyState;
use tracing::debug;

/// Every listener is bound and sessions are being accepted.
pub(crate) fn ready() {
    notify(&[NotifyState::Ready]);
}

/// A reload began; [`ready`] says it ended. systemd 253 and later want the monotonic
/// time with it.
pub(crate) fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[NotifyState::Reloading, now]),
        Err(_) => notify(&[NotifyState::Reloading]),
    }
}

/// No new connections: the proxy drains its sessions and exits.
pub(crate) fn stopping() {
    notify(&[NotifyState::Stopping]);
}

fn notify(state: &[NotifyState]) {
    if let Err(error) = sd_notify::notify(state) {
        debug!(%error, "systemd notification failed");
    }
}
