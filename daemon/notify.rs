//! systemd readiness notification (sd_notify protocol, for Type=notify).
//! A no-op when NOTIFY_SOCKET is unset, i.e. outside systemd.

use sd_notify::NotifyState;

/// Tell systemd the control plane and boot listeners are up.
pub fn ready() {
    send(&[NotifyState::Ready, NotifyState::Status("serving")]);
}

/// Tell systemd a reload has begun (Type=notify-reload); `ready` ends it.
pub fn reloading() {
    let mut states = vec![NotifyState::Reloading, NotifyState::Status("reloading")];
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    send(&states);
}

/// Tell systemd shutdown has begun.
pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("draining connections"),
    ]);
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}
