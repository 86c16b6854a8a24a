//! `netd --upgrade`: a new netd takes the listening sockets of the running
//! one, HAProxy `-x` style, so an upgrade refuses no connection.
//!
//! Every netd serves a *hand-over socket*: `<control path>.handover` next
//! to a Unix control socket, or `<state_dir>/handover.sock` for a TCP
//! control address. It is a separate socket, not a call on the control
//! plane, because descriptors travel only over a Unix socket with
//! SCM_RIGHTS and the control plane may be TCP (and is gRPC either way).
//! The socket is mode 0600 and the peer's credentials are checked
//! (SO_PEERCRED) on both sides: only root or netd's own user may take its
//! sockets, and a new netd takes sockets only from a process of root or
//! its own user, served on a socket file one of them owns.
//!
//! It is SOCK_SEQPACKET so that each message, and the descriptors attached
//! to it, arrive as one unit. The conversation (text lines):
//!
//! ```text
//! new → old   NETD-HANDOVER/1
//! old → new   SOCKETS <more: 0|1>\n<name> <kind>\n...   (≤ 253 fds each)
//!             or ERR <why>
//! new → old   DONE  (or FAILED <why>, or the connection closes)
//! old → new   OK    (or RESUME: it gave up waiting and carries on)
//! ```
//!
//! Before sending, the old process waits for the mutating control calls in
//! flight, then refuses new ones (Unavailable, "retry") and stops writing
//! the state file, so the new one boots from a state file that is final.
//! The sockets are the listeners' (by listener name) and those of netd's
//! own endpoints (control, health, metrics, Toxiproxy API: the list in
//! `process::server::endpoints`, by their fd-store names such as
//! [`crate::sys::fdstore::CONTROL_NAME`]). The new
//! process adopts them by name, boots, serves, tells systemd it is ready
//! and the main process (`MAINPID`), and says DONE; the old one answers OK,
//! stops its control server and accept loops (the sockets stay open in the
//! new process), drains its connections for up to `shutdown_grace` and
//! exits 0, leaving the socket files to the new process. If the new
//! process fails, says FAILED, or is silent for [`DONE_TIMEOUT`], the old
//! one carries on as before. The OK matters: without it the new process
//! could not tell a DONE the old one acted on from one it gave up before.
//! A connection closed without OK or RESUME means the old process is gone
//! (e.g. it was stopped with SIGTERM meanwhile): the new one carries on.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use socket2::{Domain, SockAddr, Socket, Type};
use tokio_util::sync::CancellationToken;

use crate::supervisor::Supervisor;
use crate::sys::fdpass::{MAX_FDS_PER_MESSAGE, recv_with_fds, send_with_fds};
use crate::util::addr::ControlAddr;

const HELLO: &str = "NETD-HANDOVER/1";
/// How long a connected client has to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the new process waits for the sockets (the old one first lets
/// the control calls in flight finish, e.g. an apply).
const SOCKETS_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the old process waits for DONE (the new one boots meanwhile).
pub const DONE_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest socket name: a 63-character listener name and a group
/// member's suffix (`@12345`, see [`crate::sys::fdstore::member_name`]).
const MAX_NAME: usize = 80;
/// Largest message: 253 lines of an 80-character name and a kind.
const MAX_MESSAGE: usize = 64 * 1024;
/// Most sockets one hand-over may carry.
const MAX_SOCKETS: usize = 100_000;

/// Where the hand-over socket of a netd with this control address and
/// state directory is, if it has one.
pub fn socket_path(control: &ControlAddr, state_dir: Option<&Path>) -> Option<PathBuf> {
    match control {
        ControlAddr::Unix(p) => {
            let mut s = p.clone().into_os_string();
            s.push(".handover");
            Some(s.into())
        }
        ControlAddr::Tcp(_) => state_dir.map(|d| d.join("handover.sock")),
    }
}

/// Bind the hand-over socket at `path` (mode 0600), atomically replacing a
/// file there (a predecessor's or a stale one): bound under a temporary
/// name, then renamed. Blocking.
pub fn bind(path: &Path) -> io::Result<Socket> {
    use std::os::unix::fs::PermissionsExt;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let sock = Socket::new(Domain::UNIX, Type::SEQPACKET.cloexec(), None)?;
    sock.bind(&SockAddr::unix(&tmp)?)?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    sock.listen(8)?;
    sock.set_nonblocking(true)?;
    Ok(sock)
}

/// Serve hand-over requests on `listener` until `stop`. `extra` are the
/// sockets handed over besides the listeners' (netd's own endpoints), by
/// name. When a successor has taken over, `handed` is cancelled and this
/// returns.
pub async fn serve(
    listener: Socket,
    supervisor: Supervisor,
    extra: Vec<(String, OwnedFd)>,
    handed: CancellationToken,
    stop: CancellationToken,
) {
    let listener = match crate::sys::fdpass::register(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot serve the hand-over socket; netd --upgrade will not work");
            return;
        }
    };
    loop {
        let conn = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.readable() => {
                let mut ready = match r {
                    Ok(g) => g,
                    Err(e) => {
                        tracing::error!(error = %e, "hand-over socket failed");
                        return;
                    }
                };
                match ready.try_io(|l| l.get_ref().accept()) {
                    Ok(Ok((c, _))) => c,
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "hand-over accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    Err(_would_block) => continue,
                }
            }
        };
        match hand_over(conn, &supervisor, &extra).await {
            Ok(true) => {
                handed.cancel();
                return;
            }
            Ok(false) => {}
            Err(e) => {
                supervisor.abort_handover();
                tracing::warn!(error = %format!("{e:#}"), "hand-over to a new netd failed; carrying on");
            }
        }
    }
}

/// One request. Ok(true) once the successor has taken over; Ok(false) for
/// a request refused before anything changed; Err after the hand-over
/// began (the caller resumes).
async fn hand_over(
    conn: Socket,
    supervisor: &Supervisor,
    extra: &[(String, OwnedFd)],
) -> anyhow::Result<bool> {
    let (pid, uid) = crate::sys::fdpass::peer_cred(conn.as_fd()).context("peer credentials")?;
    if uid != 0 && uid != crate::sys::fdpass::euid() {
        tracing::warn!(
            pid,
            uid,
            "refused a hand-over request from a process of another user"
        );
        return Ok(false);
    }
    let conn = tokio::task::spawn_blocking(move || -> io::Result<Socket> {
        conn.set_nonblocking(false)?;
        conn.set_read_timeout(Some(HELLO_TIMEOUT))?;
        conn.set_write_timeout(Some(HELLO_TIMEOUT))?;
        let hello = recv_text(&conn)?.0;
        if hello.trim_end() != HELLO {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a hand-over request",
            ));
        }
        Ok(conn)
    })
    .await?;
    let conn = match conn {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(pid, error = %e, "ignored a bad hand-over request");
            return Ok(false);
        }
    };
    tracing::info!(pid, "a new netd asks for the listening sockets");
    if let Err(e) = supervisor.begin_handover().await {
        let why = e.to_string();
        let _ =
            tokio::task::spawn_blocking(move || send_text(&conn, &format!("ERR {why}"), &[])).await;
        tracing::warn!(pid, error = %e, "refused a hand-over request");
        return Ok(false);
    }
    let mut sockets: Vec<(String, OwnedFd)> = supervisor.listening_sockets();
    for (name, fd) in extra {
        sockets.push((
            name.clone(),
            fd.try_clone().context("duplicating a socket")?,
        ));
    }
    let count = sockets.len();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        send_sockets(&conn, &sockets)?;
        drop(sockets);
        let wait_done = || -> anyhow::Result<()> {
            conn.set_read_timeout(Some(DONE_TIMEOUT))?;
            let (reply, _) = recv_text(&conn).context("waiting for the new netd")?;
            let reply = reply.trim_end();
            if reply.is_empty() {
                bail!("the new netd (pid {pid}) went away before taking over");
            }
            if let Some(why) = reply.strip_prefix("FAILED") {
                bail!("the new netd (pid {pid}) failed: {}", why.trim());
            }
            if reply != "DONE" {
                bail!("unexpected reply from the new netd: {reply:?}");
            }
            Ok(())
        };
        if let Err(e) = wait_done() {
            // Tell a new netd that is still there that this one resumes.
            let _ = send_text(&conn, "RESUME", &[]);
            return Err(e);
        }
        send_text(&conn, "OK", &[]).context("acknowledging")?;
        Ok(())
    })
    .await??;
    tracing::info!(
        pid,
        sockets = count,
        "the new netd has taken over; draining and exiting"
    );
    Ok(true)
}

/// The new process's side of a hand-over in progress: say DONE once
/// serving, or drop it (or call [`Successor::failed`]) to let the old
/// process carry on.
pub struct Successor {
    conn: Socket,
}

impl Successor {
    /// Ask the netd at `path` for its sockets. Blocking.
    ///
    /// Only a netd of root or of this process's own user is trusted (the
    /// sockets it sends become this netd's listeners and control socket):
    /// the socket file's owner and the serving process's credentials
    /// (SO_PEERCRED) are checked before anything is sent or taken.
    pub fn request(path: &Path) -> anyhow::Result<(Successor, HashMap<String, OwnedFd>)> {
        use std::os::unix::fs::MetadataExt as _;
        let euid = crate::sys::fdpass::euid();
        let trusted = |uid: u32| uid == 0 || uid == euid;
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !trusted(meta.uid()) {
                bail!(
                    "refusing the hand-over socket {}: it belongs to uid {}, not to root or \
                     netd's user (uid {euid})",
                    path.display(),
                    meta.uid()
                );
            }
        }
        let conn = Socket::new(Domain::UNIX, Type::SEQPACKET.cloexec(), None)?;
        conn.connect(&SockAddr::unix(path)?).with_context(|| {
            format!(
                "no running netd answers on its hand-over socket {}",
                path.display()
            )
        })?;
        let (pid, uid) = crate::sys::fdpass::peer_cred(conn.as_fd())
            .context("reading the hand-over peer's credentials")?;
        if !trusted(uid) {
            bail!(
                "refusing the hand-over: the process serving {} (pid {pid}) runs as uid {uid}, \
                 not as root or netd's user (uid {euid}); its sockets are not taken",
                path.display()
            );
        }
        conn.set_write_timeout(Some(HELLO_TIMEOUT))?;
        conn.set_read_timeout(Some(SOCKETS_TIMEOUT))?;
        send_text(&conn, HELLO, &[])?;
        let mut sockets = HashMap::new();
        loop {
            let (text, fds) = recv_text(&conn).context("receiving the sockets")?;
            if text.is_empty() {
                bail!(
                    "the running netd closed the hand-over without sending its sockets (see its log)"
                );
            }
            if let Some(why) = text.strip_prefix("ERR ") {
                bail!("the running netd refused the hand-over: {}", why.trim_end());
            }
            let mut lines = text.lines();
            let more = match lines.next() {
                Some("SOCKETS 0") => false,
                Some("SOCKETS 1") => true,
                other => bail!("unexpected hand-over message {other:?}"),
            };
            let lines: Vec<&str> = lines.collect();
            if lines.len() != fds.len() {
                bail!("{} socket names for {} descriptors", lines.len(), fds.len());
            }
            for (line, fd) in lines.into_iter().zip(fds) {
                let (name, kind) = line.split_once(' ').unwrap_or((line, "?"));
                if name.is_empty() || name.len() > MAX_NAME {
                    bail!("bad socket name {name:?} in the hand-over");
                }
                tracing::debug!(name, kind, "received a socket");
                if sockets.insert(name.to_string(), fd).is_some() {
                    bail!("socket {name:?} handed over twice");
                }
            }
            if sockets.len() > MAX_SOCKETS {
                bail!("more than {MAX_SOCKETS} sockets in the hand-over");
            }
            if !more {
                break;
            }
        }
        Ok((Successor { conn }, sockets))
    }

    /// Tell the old process to stop and wait for its OK. Blocking. An error
    /// means the old process carries on (it said RESUME, or did not
    /// answer); if it is gone instead (it exited meanwhile, e.g. on
    /// SIGTERM), this one carries on alone.
    pub fn done(self) -> anyhow::Result<()> {
        self.conn.set_read_timeout(Some(HELLO_TIMEOUT))?;
        let reply = send_text(&self.conn, "DONE", &[])
            .and_then(|()| recv_text(&self.conn))
            .map(|(text, _)| text);
        match reply.as_ref().map(|t| t.trim_end()) {
            Ok("OK") => Ok(()),
            Ok("") => {
                tracing::warn!("the old netd went away during the hand-over; carrying on alone");
                Ok(())
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ) =>
            {
                tracing::warn!("the old netd went away during the hand-over; carrying on alone");
                Ok(())
            }
            Ok("RESUME") => bail!("the old netd gave up waiting and carries on (see its log)"),
            Ok(other) => bail!("unexpected reply from the old netd: {other:?}"),
            Err(e) => Err(anyhow::anyhow!("waiting for the old netd's OK: {e}")),
        }
    }

    /// Tell the old process this one failed (it carries on). Blocking.
    pub fn failed(self, why: &str) {
        let line: String = why.chars().filter(|c| !c.is_control()).take(1000).collect();
        let _ = send_text(&self.conn, &format!("FAILED {line}"), &[]);
    }
}

/// Send the sockets in batches of at most [`MAX_FDS_PER_MESSAGE`].
fn send_sockets(conn: &Socket, sockets: &[(String, OwnedFd)]) -> io::Result<()> {
    let batches: Vec<&[(String, OwnedFd)]> = if sockets.is_empty() {
        vec![&[]]
    } else {
        sockets.chunks(MAX_FDS_PER_MESSAGE).collect()
    };
    let last = batches.len() - 1;
    for (i, batch) in batches.into_iter().enumerate() {
        let mut text = format!("SOCKETS {}\n", u8::from(i != last));
        for (name, fd) in batch {
            text.push_str(&format!("{name} {}\n", kind(fd)));
        }
        let fds: Vec<_> = batch.iter().map(|(_, fd)| fd.as_fd()).collect();
        send_text(conn, &text, &fds)?;
    }
    Ok(())
}

/// What a socket is, for the record: tcp, udp, unix or other.
fn kind(fd: &OwnedFd) -> &'static str {
    let s = socket2::SockRef::from(fd);
    match (s.domain(), s.r#type()) {
        (Ok(Domain::UNIX), _) => "unix",
        (Ok(_), Ok(Type::STREAM)) => "tcp",
        (Ok(_), Ok(Type::DGRAM)) => "udp",
        _ => "other",
    }
}

fn send_text(conn: &Socket, text: &str, fds: &[std::os::fd::BorrowedFd<'_>]) -> io::Result<()> {
    let n = send_with_fds(conn.as_fd(), text.as_bytes(), fds)?;
    if n != text.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short hand-over message",
        ));
    }
    Ok(())
}

/// One message as text ("" at end of stream) with its descriptors.
fn recv_text(conn: &Socket) -> io::Result<(String, Vec<OwnedFd>)> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let (n, fds) = recv_with_fds(conn.as_fd(), &mut buf)?;
    let text = String::from_utf8(buf[..n].to_vec()).map_err(|_| {
        io::Error::new(io::ErrorKind::InvalidData, "hand-over message is not UTF-8")
    })?;
    Ok((text, fds))
}

/// Tell systemd this process is now the service's main process (the
/// successor of `--upgrade`; the unit needs `NotifyAccess=all` for systemd
/// to take it from a process other than the main one).
pub fn notify_main_pid() {
    let pid = std::process::id();
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::MainPid(pid)]) {
        tracing::warn!(error = %e, "sd_notify MAINPID failed");
    }
}
