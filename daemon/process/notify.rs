//! systemd notification (sd_notify protocol): readiness for Type=notify,
//! and the watchdog (`WatchdogSec=`). A no-op when NOTIFY_SOCKET is unset,
//! i.e. outside systemd; the watchdog is off when WATCHDOG_USEC is unset.

use std::ffi::OsStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::supervisor::Supervisor;

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

/// The systemd watchdog (`WatchdogSec=` in the unit): `WATCHDOG=1` sent to
/// `NOTIFY_SOCKET` at half the interval systemd asked for, but only while a
/// heartbeat proves that the tokio runtime still runs tasks and that the
/// listener registry's lock can still be taken. A wedged runtime or a
/// registry lock held forever stops the pings, and systemd restarts netd.
///
/// Two parts, on purpose on two sides of the runtime: a tokio task ticks
/// every quarter interval, takes and releases the registry lock
/// ([`Supervisor::heartbeat`]) and stamps the time; a plain OS thread
/// wakes every half interval and pings only if the stamp is younger than
/// half the interval. The thread cannot be starved by the runtime it
/// watches, and the task cannot ping on its own. From the moment the
/// runtime or the lock wedges, systemd restarts netd within about 1.5×
/// `WatchdogSec`.
///
/// Dropping the value stops both (at the end of [`crate::process::server::run`],
/// after the drain, so a long drain is still watched).
pub struct Watchdog {
    stop_task: CancellationToken,
    /// Dropped to wake and stop the thread.
    stop_thread: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A ping must not wait on a full notify socket queue for longer than
/// this, so that shutdown never hangs on the watchdog thread.
const PING_SEND_TIMEOUT: Duration = Duration::from_secs(1);
/// No timer in the watchdog fires more often than this, whatever
/// WATCHDOG_USEC says.
const MIN_PERIOD: Duration = Duration::from_millis(1);
/// WATCHDOG_USEC beyond this is treated as this (pinging more often than
/// asked is always safe; it keeps timer arithmetic far from overflow).
const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);

impl Watchdog {
    /// Start the watchdog if systemd asked for one (WATCHDOG_USEC set and
    /// WATCHDOG_PID unset or ours, see sd_watchdog_enabled(3)) and there is
    /// a NOTIFY_SOCKET to ping; `None` otherwise. Must be called within a
    /// tokio runtime.
    pub fn start(supervisor: &Supervisor) -> Option<Watchdog> {
        let usec = std::env::var("WATCHDOG_USEC").ok();
        let pid = std::env::var("WATCHDOG_PID").ok();
        let interval = match watchdog_interval(usec.as_deref(), pid.as_deref(), std::process::id())
        {
            Ok(Some(i)) => i,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!("watchdog off: {e}");
                return None;
            }
        };
        let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
            tracing::warn!("watchdog off: WATCHDOG_USEC is set but NOTIFY_SOCKET is not");
            return None;
        };
        let beat_every = (interval / 4).max(MIN_PERIOD);
        let ping_every = (interval / 2).max(MIN_PERIOD);
        let heartbeat = Arc::new(Heartbeat::new(Instant::now()));

        let stop_task = CancellationToken::new();
        tokio::spawn(beat(
            supervisor.clone(),
            heartbeat.clone(),
            beat_every,
            stop_task.clone(),
        ));
        let (stop_thread, stopped) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("netd-watchdog".into())
            .spawn(move || ping_loop(&socket, &heartbeat, ping_every, &stopped));
        let thread = match thread {
            Ok(t) => t,
            Err(e) => {
                stop_task.cancel();
                tracing::warn!(error = %e, "watchdog off: cannot start its thread");
                return None;
            }
        };
        tracing::info!(
            interval = %humantime::format_duration(interval),
            ping_every = %humantime::format_duration(ping_every),
            "systemd watchdog on: WATCHDOG=1 while the runtime and the listener registry respond"
        );
        Some(Watchdog {
            stop_task,
            stop_thread: Some(stop_thread),
            thread: Some(thread),
        })
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop_task.cancel();
        drop(self.stop_thread.take());
        // The thread wakes at once on the closed channel; a ping in flight
        // waits at most PING_SEND_TIMEOUT.
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The interval systemd wants pings within, from WATCHDOG_USEC and
/// WATCHDOG_PID as sd_watchdog_enabled(3) reads them: unset USEC means off;
/// a PID that is set and not `my_pid` means the watchdog is meant for
/// another process (off); a USEC or PID that is not a number, or a USEC of
/// 0, is an error.
fn watchdog_interval(
    usec: Option<&str>,
    pid: Option<&str>,
    my_pid: u32,
) -> Result<Option<Duration>, String> {
    let Some(usec) = usec else {
        return Ok(None);
    };
    let usec: u64 = usec
        .trim()
        .parse()
        .map_err(|_| format!("WATCHDOG_USEC={usec:?} is not a number of microseconds"))?;
    if usec == 0 {
        return Err("WATCHDOG_USEC=0 is not an interval".into());
    }
    if let Some(pid) = pid {
        let pid: u32 = pid
            .trim()
            .parse()
            .map_err(|_| format!("WATCHDOG_PID={pid:?} is not a process id"))?;
        if pid != my_pid {
            return Ok(None);
        }
    }
    Ok(Some(Duration::from_micros(usec).min(MAX_INTERVAL)))
}

/// The runtime side: every `every`, take the registry lock and stamp the
/// heartbeat. If the registry lock is held forever this task blocks its
/// worker thread on it; that is the wedge the watchdog exists to report.
async fn beat(
    supervisor: Supervisor,
    heartbeat: Arc<Heartbeat>,
    every: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                supervisor.heartbeat();
                heartbeat.beat_at(Instant::now());
            }
        }
    }
}

/// The OS-thread side: every `every`, ping if the heartbeat is fresh;
/// returns when `stop` closes. Logs once when pings are withheld (or fail)
/// and once when they resume, not every period.
fn ping_loop(socket: &OsStr, heartbeat: &Heartbeat, every: Duration, stop: &mpsc::Receiver<()>) {
    let mut withheld = false;
    let mut failing = false;
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(every) {
        if heartbeat.fresh_at(Instant::now(), every) {
            if withheld {
                tracing::info!("heartbeat back; watchdog pings resume");
                withheld = false;
            }
            match send_to(socket, b"WATCHDOG=1\n") {
                Ok(()) if failing => {
                    tracing::info!("watchdog pings reach NOTIFY_SOCKET again");
                    failing = false;
                }
                Ok(()) => {}
                Err(e) if !failing => {
                    tracing::warn!(error = %e, "watchdog ping failed (logged once until one succeeds)");
                    failing = true;
                }
                Err(_) => {}
            }
        } else if !withheld {
            tracing::error!(
                max_age = %humantime::format_duration(every),
                "no heartbeat from the runtime or the listener registry; withholding \
                 watchdog pings so that systemd restarts netd"
            );
            withheld = true;
        }
    }
}

/// One datagram to NOTIFY_SOCKET (a path, or `@name` for an abstract
/// socket), bounded by PING_SEND_TIMEOUT: sd_notify's own sender blocks
/// without bound on a full queue.
fn send_to(socket: &OsStr, msg: &[u8]) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};

    let sock = UnixDatagram::unbound()?;
    sock.set_write_timeout(Some(PING_SEND_TIMEOUT))?;
    let bytes = socket.as_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(socket)?,
    };
    sock.send_to_addr(msg, &addr)?;
    Ok(())
}

/// When the runtime last proved itself alive: nanoseconds since `origin`,
/// plus one (0 means never), in an atomic the watchdog thread reads
/// without a lock. Times are passed in so tests can drive the clock.
struct Heartbeat {
    origin: Instant,
    last: AtomicU64,
}

impl Heartbeat {
    fn new(origin: Instant) -> Self {
        Heartbeat {
            origin,
            last: AtomicU64::new(0),
        }
    }

    fn beat_at(&self, now: Instant) {
        let since = now.saturating_duration_since(self.origin).as_nanos();
        let stamp = u64::try_from(since).unwrap_or(u64::MAX - 1) + 1;
        self.last.store(stamp, Ordering::Release);
    }

    /// Whether a beat happened within `max_age` before `now`.
    fn fresh_at(&self, now: Instant, max_age: Duration) -> bool {
        let stamp = self.last.load(Ordering::Acquire);
        if stamp == 0 {
            return false;
        }
        let beat = self.origin + Duration::from_nanos(stamp - 1);
        now.saturating_duration_since(beat) <= max_age
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn no_beat_yet_is_stale() {
        let t0 = Instant::now();
        let h = Heartbeat::new(t0);
        assert!(!h.fresh_at(t0, S));
        assert!(!h.fresh_at(t0 + 10 * S, S));
    }

    #[test]
    fn a_beat_is_fresh_for_max_age_then_stale() {
        let t0 = Instant::now();
        let h = Heartbeat::new(t0);
        h.beat_at(t0 + 5 * S);
        assert!(h.fresh_at(t0 + 5 * S, S));
        assert!(h.fresh_at(t0 + 6 * S, S));
        assert!(!h.fresh_at(t0 + 6 * S + Duration::from_millis(1), S));
        // A clock read taken before the beat landed is not "stale".
        assert!(h.fresh_at(t0 + 4 * S, S));
    }

    #[test]
    fn a_runtime_that_stops_beating_goes_stale_and_a_new_beat_revives_it() {
        let t0 = Instant::now();
        let h = Heartbeat::new(t0);
        let beat = S / 4;
        let max_age = S / 2;
        let mut now = t0;
        for _ in 0..8 {
            h.beat_at(now);
            now += beat;
            assert!(h.fresh_at(now, max_age));
        }
        // Wedged: time passes, no beats.
        now += max_age;
        assert!(!h.fresh_at(now, max_age));
        h.beat_at(now);
        assert!(h.fresh_at(now + beat, max_age));
    }

    #[test]
    fn interval_follows_sd_watchdog_enabled() {
        let me = 4242;
        let half = Some(Duration::from_millis(500));
        assert_eq!(watchdog_interval(None, None, me), Ok(None));
        assert_eq!(watchdog_interval(None, Some("4242"), me), Ok(None));
        assert_eq!(watchdog_interval(Some("500000"), None, me), Ok(half));
        assert_eq!(
            watchdog_interval(Some("500000"), Some("4242"), me),
            Ok(half)
        );
        // Meant for another process (e.g. a parent that exec'd us).
        assert_eq!(watchdog_interval(Some("500000"), Some("1"), me), Ok(None));
        assert!(watchdog_interval(Some("0"), None, me).is_err());
        assert!(watchdog_interval(Some("30s"), None, me).is_err());
        assert!(watchdog_interval(Some("-1"), None, me).is_err());
        assert!(watchdog_interval(Some("500000"), Some("me"), me).is_err());
        assert_eq!(
            watchdog_interval(Some("18446744073709551615"), None, me),
            Ok(Some(MAX_INTERVAL))
        );
    }

    #[test]
    fn send_to_reaches_a_path_and_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::{SocketAddr, UnixDatagram};

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let rx = UnixDatagram::bind(&path).unwrap();
        send_to(path.as_os_str(), b"WATCHDOG=1\n").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1\n");

        let name = format!("netd-notify-test-{}", std::process::id());
        let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
        send_to(OsStr::new(&format!("@{name}")), b"WATCHDOG=1\n").unwrap();
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1\n");
    }
}
