//! systemd's file-descriptor store: under systemd (NOTIFY_SOCKET set),
//! every listening socket is kept in the service's fd store under its
//! listener's name (FDSTORE=1, FDNAME=...), and the control socket under
//! [`CONTROL_NAME`]. When netd restarts, systemd hands them to the new
//! process (LISTEN_FDS/LISTEN_FDNAMES), which adopts them by name — so a
//! `systemctl restart` closes no listening socket and refuses no client.
//!
//! Storing *replaces*: FDSTOREREMOVE=1 for the name, then FDSTORE=1, so a
//! listener whose socket changed (an update that rebinds, a restart after a
//! failure) leaves no stale socket behind in systemd. Shutdown removes
//! nothing: the store outlives the process by design (and systemd flushes
//! it on `systemctl stop`). The unit needs `FileDescriptorStoreMax=` (and
//! `NotifyAccess=all` for `--upgrade`, whose new process stores too).
//!
//! A listener with a group of sockets (SO_REUSEPORT, one per worker) keeps
//! each: the first under the listener's name, the others as `name@1`,
//! `name@2`, ... ([`member_name`]; listener names have no `@`), so the
//! group re-forms from LISTEN_FDNAMES. Each socket takes one place of
//! `FileDescriptorStoreMax=`.
//!
//! Only when systemd says the store is on (FDSTORE in the environment,
//! systemd 254+; see [`enabled`]). Messages are sent in order by one
//! background thread, so that callers on the async runtime never block on
//! the notify socket.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::OnceLock;
use std::sync::mpsc::{Sender, channel};

/// The fd-store name of the control socket. Listener names start with a
/// letter or a digit, so no listener can have it.
pub const CONTROL_NAME: &str = "-control";
/// The fd-store name of the metrics socket (hand-over only).
pub const METRICS_NAME: &str = "-metrics";
/// The plaintext health endpoint's socket (`[health] listen`).
pub const HEALTH_NAME: &str = "-health";
/// The Toxiproxy-compatible API's socket (`[toxiproxy_api] listen`).
pub const TOXIPROXY_API_NAME: &str = "-toxiproxy-api";

enum Op {
    Store(String, OwnedFd),
    Remove(String),
    /// Answered once everything queued before it was sent.
    Flush(Sender<()>),
}

/// Whether the service manager keeps descriptors for netd: NOTIFY_SOCKET
/// is set, and so is FDSTORE (systemd 254 and later set it to the unit's
/// `FileDescriptorStoreMax=` when that is not 0). Without FDSTORE nothing
/// is stored: a descriptor sent to a manager that does not keep it would
/// only hold the port open while the datagram waits to be read.
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        std::env::var_os("NOTIFY_SOCKET").is_some()
            && std::env::var("FDSTORE").is_ok_and(|v| v.trim().parse::<u64>().is_ok_and(|n| n > 0))
    })
}

/// Keep `fd` (duplicated) in the fd store as `name`, replacing what the
/// store held under that name. A no-op outside systemd.
pub fn store(name: &str, fd: std::os::fd::BorrowedFd<'_>) {
    if !enabled() {
        return;
    }
    match fd.try_clone_to_owned() {
        Ok(dup) => send(Op::Store(name.to_string(), dup)),
        Err(e) => tracing::warn!(name, error = %e, "cannot duplicate a socket for the fd store"),
    }
}

/// The name of member `i` of a listener's socket group, in the fd store
/// and the hand-over: the listener's name for the first, `name@i` after.
pub fn member_name(name: &str, i: usize) -> String {
    if i == 0 {
        name.to_string()
    } else {
        format!("{name}@{i}")
    }
}

/// A stored or handed-over name as (listener name, member index): the
/// inverse of [`member_name`].
pub fn split_member(name: &str) -> (&str, usize) {
    if let Some((base, digits)) = name.rsplit_once('@') {
        let canonical = !base.is_empty()
            && !digits.starts_with('0')
            && digits.bytes().all(|b| b.is_ascii_digit());
        if let (true, Ok(i)) = (canonical, digits.parse::<usize>()) {
            return (base, i);
        }
    }
    (name, 0)
}

/// How many members of each group the store holds (only under systemd),
/// so that a group that shrinks or goes leaves none behind.
fn stored() -> parking_lot::MutexGuard<'static, std::collections::HashMap<String, usize>> {
    static STORED: OnceLock<parking_lot::Mutex<std::collections::HashMap<String, usize>>> =
        OnceLock::new();
    STORED.get_or_init(Default::default).lock()
}

/// Record names the store held when this process started (LISTEN_FDNAMES,
/// or a predecessor's sockets), so that [`remove_group`] and
/// [`store_group`] also drop members this process does not use.
pub fn note_stored<'a>(names: impl IntoIterator<Item = &'a str>) {
    if !enabled() {
        return;
    }
    let mut map = stored();
    for name in names {
        let (base, i) = split_member(name);
        let n = map.entry(base.to_string()).or_insert(0);
        *n = (*n).max(i + 1);
    }
}

/// Keep a listener's sockets (duplicated) in the fd store: `fds[0]` as
/// `name`, the others as `name@1`, ...; members stored before beyond
/// these are dropped, and with no sockets at all, the group is. A no-op
/// outside systemd.
pub fn store_group(name: &str, fds: &[OwnedFd]) {
    if !enabled() {
        return;
    }
    let before = stored().insert(name.to_string(), fds.len()).unwrap_or(1);
    for (i, fd) in fds.iter().enumerate() {
        store(&member_name(name, i), fd.as_fd());
    }
    for i in fds.len()..before {
        remove(&member_name(name, i));
    }
    if fds.is_empty() {
        stored().remove(name);
    }
}

/// Drop a listener's sockets from the fd store (every member of its
/// group). A no-op outside systemd.
pub fn remove_group(name: &str) {
    if !enabled() {
        return;
    }
    let n = stored().remove(name).unwrap_or(1).max(1);
    for i in 0..n {
        remove(&member_name(name, i));
    }
}

/// Drop what the fd store holds as `name`. A no-op outside systemd.
pub fn remove(name: &str) {
    if enabled() {
        send(Op::Remove(name.to_string()));
    }
}

/// Wait (blocking, up to `timeout`) until the messages queued so far are
/// sent: at exit, so that the store is what the next process should get.
pub fn flush(timeout: std::time::Duration) {
    if !enabled() {
        return;
    }
    let (tx, rx) = channel();
    send(Op::Flush(tx));
    let _ = rx.recv_timeout(timeout);
}

/// [`flush`] from async code (off the runtime's workers).
pub async fn flushed() {
    if enabled() {
        let _ = tokio::task::spawn_blocking(|| flush(std::time::Duration::from_secs(1))).await;
    }
}

fn send(op: Op) {
    static QUEUE: OnceLock<Option<parking_lot::Mutex<Sender<Op>>>> = OnceLock::new();
    let q = QUEUE.get_or_init(|| {
        let (tx, rx) = channel::<Op>();
        let spawned = std::thread::Builder::new()
            .name("netd-fdstore".into())
            .spawn(move || {
                for op in rx {
                    deliver(op);
                }
            });
        match spawned {
            Ok(_) => Some(parking_lot::Mutex::new(tx)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the fd-store thread; sockets are not kept in systemd's fd store");
                None
            }
        }
    });
    if let Some(tx) = q {
        let _ = tx.lock().send(op);
    }
}

fn deliver(op: Op) {
    if let Op::Flush(done) = op {
        let _ = done.send(());
        return;
    }
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match connect(&path) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot reach NOTIFY_SOCKET for the fd store");
            return;
        }
    };
    let r = match &op {
        Op::Remove(name) => remove_msg(&sock, name),
        Op::Store(name, fd) => remove_msg(&sock, name).and_then(|()| {
            let msg = format!("FDSTORE=1\nFDNAME={name}\n");
            crate::sys::fdpass::send_with_fds(sock.as_fd(), msg.as_bytes(), &[fd.as_fd()])
                .map(|_| ())
        }),
        Op::Flush(_) => Ok(()),
    };
    let (what, name) = match &op {
        Op::Store(n, _) => ("store", n.as_str()),
        Op::Remove(n) => ("remove", n.as_str()),
        Op::Flush(_) => ("flush", ""),
    };
    match r {
        Ok(()) => tracing::debug!(name = %name, what, "fd store"),
        Err(e) => tracing::warn!(name = %name, what, error = %e, "fd store message failed"),
    }
}

fn remove_msg(sock: &std::os::unix::net::UnixDatagram, name: &str) -> std::io::Result<()> {
    let msg = format!("FDSTOREREMOVE=1\nFDNAME={name}\n");
    sock.send(msg.as_bytes()).map(|_| ())
}

/// A datagram socket connected to NOTIFY_SOCKET (a path, or `@name` in
/// the abstract namespace).
fn connect(path: &std::ffi::OsStr) -> std::io::Result<std::os::unix::net::UnixDatagram> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    let sock = std::os::unix::net::UnixDatagram::unbound()?;
    match path.as_bytes().strip_prefix(b"@") {
        Some(abstract_name) => {
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)?;
            sock.connect_addr(&addr)?;
        }
        None => sock.connect(path)?,
    }
    Ok(sock)
}
