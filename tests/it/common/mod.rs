//! Test harness: start the real `netd` binary with a temporary config and a
//! Unix control socket in a temporary directory, wait for its sd_notify
//! READY=1 (the same signal systemd waits for), and drive it with `netctl`
//! and a tonic client. Everything stays on loopback.

#![allow(dead_code)]

pub mod h2raw;
pub mod pki;
pub mod py_server;
pub mod spoof;

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use netd::proto::control_client::ControlClient;
use netd::util::addr::ControlAddr;
use tonic::transport::Channel;

pub const NETD: &str = env!("CARGO_BIN_EXE_netd");
pub const NETCTL: &str = env!("CARGO_BIN_EXE_netctl");

/// Generous deadline for anything that should happen "soon".
pub const DEADLINE: Duration = Duration::from_secs(20);

pub struct Netd {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub control: ControlAddr,
    notify: UnixDatagram,
    /// systemd's fd store as this netd's FDSTORE=1 / FDSTOREREMOVE=1
    /// messages left it (names in arrival order).
    fd_store: Vec<(String, std::os::fd::OwnedFd)>,
}

impl Netd {
    /// Start netd with `config` (TOML, without a `control` key).
    pub fn start(config: &str) -> Netd {
        Netd::start_with_env(config, &[])
    }

    /// [`Netd::start`] with extra environment variables for netd (e.g. the
    /// WATCHDOG_USEC systemd would set).
    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Netd {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("netd.toml");
        std::fs::write(&cfg, config).expect("write config");
        let control = ControlAddr::Unix(dir.path().join("netd.sock"));
        let mut cmd = Command::new(NETD);
        cmd.arg("--config").arg(&cfg).envs(env.iter().copied());
        Netd::spawn(cmd, dir, control)
    }

    /// Start netd again in the directory of an earlier one (its config
    /// file, control socket path and state directory), e.g. after
    /// [`Netd::kill9`].
    pub fn start_in(dir: tempfile::TempDir) -> Netd {
        let cfg = dir.path().join("netd.toml");
        let control = ControlAddr::Unix(dir.path().join("netd.sock"));
        let mut cmd = Command::new(NETD);
        cmd.arg("--config").arg(&cfg);
        Netd::spawn(cmd, dir, control)
    }

    /// Kill netd with SIGKILL (no chance to clean up) and hand back its
    /// directory.
    pub fn kill9(mut self) -> tempfile::TempDir {
        self.signal(libc::SIGKILL);
        self.wait_exit();
        let dir = tempfile::tempdir().expect("tempdir");
        std::mem::replace(&mut self.dir, dir)
    }

    /// Replace the config file (e.g. before a SIGHUP).
    pub fn write_config(&self, config: &str) {
        std::fs::write(self.dir.path().join("netd.toml"), config).expect("write config");
    }

    /// Start netd with arbitrary arguments and the control address given
    /// through NETD_CONTROL.
    pub fn spawn(mut cmd: Command, dir: tempfile::TempDir, control: ControlAddr) -> Netd {
        cmd.env("NETD_CONTROL", control.to_string());
        Netd::spawn_as_is(cmd, dir, control)
    }

    /// Start netd with arbitrary arguments; `control` is where the test
    /// expects it to listen (the command must say so itself, or rely on
    /// the default). The notify socket is open to any user, so a netd run
    /// as another user (`CommandExt::uid`) can report readiness.
    pub fn spawn_as_is(cmd: Command, dir: tempfile::TempDir, control: ControlAddr) -> Netd {
        Netd::spawn_inner(cmd, dir, control, None)
    }

    /// [`Netd::spawn`] with netd's stderr going to `stderr` instead of
    /// `netd.log` (e.g. a pipe nobody reads, to stall writes to stderr).
    pub fn spawn_with_stderr(
        mut cmd: Command,
        dir: tempfile::TempDir,
        control: ControlAddr,
        stderr: Stdio,
    ) -> Netd {
        cmd.env("NETD_CONTROL", control.to_string());
        Netd::spawn_inner(cmd, dir, control, Some(stderr))
    }

    fn spawn_inner(
        mut cmd: Command,
        dir: tempfile::TempDir,
        control: ControlAddr,
        stderr: Option<Stdio>,
    ) -> Netd {
        use std::os::unix::fs::PermissionsExt;
        let notify_path = dir.path().join("notify.sock");
        let _ = std::fs::remove_file(&notify_path);
        let notify = UnixDatagram::bind(&notify_path).expect("bind notify socket");
        std::fs::set_permissions(&notify_path, std::fs::Permissions::from_mode(0o666))
            .expect("chmod notify socket");
        notify
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        // Never the machine's /var/lib/netd: a state directory per test,
        // writable by whichever user the test runs netd as.
        if !cmd.get_envs().any(|(k, _)| k == "NETD_STATE_DIR") {
            let state = dir.path().join("state");
            if !state.exists() {
                std::fs::create_dir(&state).expect("state dir");
                std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777))
                    .expect("chmod state dir");
            }
            cmd.env("NETD_STATE_DIR", &state);
        }
        let stderr = stderr.unwrap_or_else(|| {
            std::fs::File::create(dir.path().join("netd.log"))
                .expect("log file")
                .into()
        });
        cmd.env("NOTIFY_SOCKET", &notify_path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let child = cmd.spawn().expect("spawn netd");
        let mut netd = Netd {
            child: Some(child),
            dir,
            control,
            notify,
            fd_store: Vec::new(),
        };
        netd.wait_notify("READY=1");
        netd
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("netd.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("netd running").id()
    }

    /// Wait for an sd_notify datagram containing `what`; panics with the
    /// daemon's log if it exits or the deadline passes first.
    pub fn wait_notify(&mut self, what: &str) {
        let deadline = Instant::now() + DEADLINE;
        while Instant::now() < deadline {
            if let Some(msg) = self.recv_notify() {
                if msg.lines().any(|l| l == what) {
                    return;
                }
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("netd exited ({status}) before {what}; log:\n{}", self.log());
                }
            }
        }
        panic!(
            "no {what} from netd within {DEADLINE:?}; log:\n{}",
            self.log()
        );
    }

    /// How many sd_notify datagrams containing the line `what` arrive
    /// during `window` (for checks that something is *not* sent: a bounded
    /// wait, not a timing assertion).
    pub fn count_notify_within(&mut self, what: &str, window: Duration) -> usize {
        let end = Instant::now() + window;
        let mut seen = 0;
        while Instant::now() < end {
            if let Some(msg) = self.recv_notify() {
                seen += usize::from(msg.lines().any(|l| l == what));
            }
        }
        seen
    }

    /// One sd_notify datagram (within the socket's 200 ms read timeout),
    /// its descriptors kept in (or its removals applied to) the fd store as
    /// systemd does.
    fn recv_notify(&mut self) -> Option<String> {
        use std::os::fd::AsFd;
        let mut buf = [0u8; 4096];
        let (n, fds) = netd::sys::fdpass::recv_with_fds(self.notify.as_fd(), &mut buf).ok()?;
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        let name = msg
            .lines()
            .find_map(|l| l.strip_prefix("FDNAME="))
            .unwrap_or("stored")
            .to_string();
        if msg.lines().any(|l| l == "FDSTOREREMOVE=1") {
            self.fd_store.retain(|(n, _)| *n != name);
        }
        if msg.lines().any(|l| l == "FDSTORE=1") {
            self.fd_store
                .extend(fds.into_iter().map(|fd| (name.clone(), fd)));
        }
        Some(msg)
    }

    /// Read the sd_notify datagrams that arrived so far.
    pub fn pump_notify(&mut self) {
        while self.recv_notify().is_some() {}
    }

    /// Names in the emulated fd store, after reading what arrived.
    pub fn fd_store_names(&mut self) -> Vec<String> {
        self.pump_notify();
        self.fd_store.iter().map(|(n, _)| n.clone()).collect()
    }

    /// Take the emulated fd store's descriptors (what systemd would pass
    /// to the next process).
    pub fn take_fd_store(&mut self) -> Vec<(String, std::os::fd::OwnedFd)> {
        self.pump_notify();
        std::mem::take(&mut self.fd_store)
    }

    /// `netd --upgrade` for this netd: its config file (or `config`), its
    /// control address and state directory.
    pub fn upgrade_command(&self, config: Option<&std::path::Path>) -> Command {
        let own = self.dir.path().join("netd.toml");
        let mut cmd = Command::new(NETD);
        cmd.arg("--upgrade")
            .arg("--config")
            .arg(config.unwrap_or(&own))
            .env("NETD_CONTROL", self.control.to_string())
            .env("NETD_STATE_DIR", self.dir.path().join("state"));
        cmd
    }

    /// Run `netd --upgrade` for this netd and wait for its READY=1. The
    /// new process logs to (and gets its notify socket in) a directory of
    /// its own.
    pub fn upgrade(&self) -> Netd {
        let dir = tempfile::tempdir().expect("tempdir");
        Netd::spawn_as_is(self.upgrade_command(None), dir, self.control.clone())
    }

    /// Start netd in `dir` (as [`Netd::start_in`]) with `fds` passed the
    /// way systemd passes its fd store: at descriptors 3.., with
    /// LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID set in the child.
    /// `env` is set too.
    pub fn start_with_fds(
        dir: tempfile::TempDir,
        fds: Vec<(String, std::os::fd::OwnedFd)>,
        env: &[(&str, &str)],
    ) -> Netd {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        use std::os::unix::process::CommandExt;
        // Out of the way of 3.. first, so that placing one cannot clobber
        // another (close-on-exec: only the placed copies reach netd).
        let high: Vec<OwnedFd> = fds
            .iter()
            .map(|(_, fd)| {
                // SAFETY: fcntl(F_DUPFD_CLOEXEC) on a descriptor we own;
                // the new one is owned by the OwnedFd.
                let n = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 100) };
                assert!(n >= 0, "dup: {}", std::io::Error::last_os_error());
                unsafe { OwnedFd::from_raw_fd(n) }
            })
            .collect();
        let raw: Vec<i32> = high.iter().map(|f| f.as_raw_fd()).collect();
        let names: Vec<&str> = fds.iter().map(|(n, _)| n.as_str()).collect();
        let cfg = dir.path().join("netd.toml");
        let control = ControlAddr::Unix(dir.path().join("netd.sock"));
        // LISTEN_PID must be netd's pid: a shell sets it to its own and
        // execs netd, which keeps that pid (std passes the environment
        // built before fork, so pre_exec cannot set it).
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "LISTEN_PID=$$ exec \"$0\" \"$@\""])
            .arg(NETD)
            .arg("--config")
            .arg(&cfg)
            .env("LISTEN_FDS", fds.len().to_string())
            .env("LISTEN_FDNAMES", names.join(":"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        // SAFETY: runs in the child between fork and exec, and only calls
        // dup2 (async-signal-safe).
        unsafe {
            cmd.pre_exec(move || {
                for (i, fd) in raw.iter().enumerate() {
                    if libc::dup2(*fd, 3 + i as i32) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let netd = Netd::spawn(cmd, dir, control);
        drop(high);
        netd
    }

    pub fn netctl(&self, args: &[&str]) -> Output {
        Command::new(NETCTL)
            .arg("--control")
            .arg(self.control.to_string())
            .args(args)
            .output()
            .expect("run netctl")
    }

    /// Run netctl, assert success, return stdout.
    pub fn netctl_ok(&self, args: &[&str]) -> String {
        let out = self.netctl(args);
        assert!(
            out.status.success(),
            "netctl {args:?} failed: {}\nstdout: {}\nnetd log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout),
            self.log()
        );
        String::from_utf8(out.stdout).expect("utf8 stdout")
    }

    /// Run netctl with `-o json`, assert success, parse stdout.
    pub fn netctl_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["-o", "json"];
        all.extend_from_slice(args);
        let out = self.netctl_ok(&all);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("netctl {args:?}: bad JSON ({e}): {out}"))
    }

    /// Run netctl, assert it fails, return its stderr.
    pub fn netctl_err(&self, args: &[&str]) -> String {
        let out = self.netctl(args);
        assert!(
            !out.status.success(),
            "netctl {args:?} succeeded unexpectedly: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).expect("utf8 stderr")
    }

    pub async fn client(&self) -> ControlClient<Channel> {
        netd::control::client::control_client(&self.control)
            .await
            .expect("connect to netd")
    }

    /// A client on its own connection with small (64 KiB) HTTP/2 windows,
    /// for playing a slow reader: its window fills quickly.
    pub async fn small_window_client(&self) -> ControlClient<Channel> {
        let ControlAddr::Unix(path) = self.control.clone() else {
            panic!("unix control socket expected")
        };
        let channel = tonic::transport::Endpoint::from_static("http://netd.local")
            .initial_stream_window_size(65_535)
            .initial_connection_window_size(65_535)
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let path = path.clone();
                async move {
                    let s = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
                }
            }))
            .await
            .expect("connect to netd");
        ControlClient::new(channel)
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) with a pid we spawned and still own.
        let rc = unsafe { libc::kill(self.pid() as i32, sig) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Wait for netd to exit and return its status.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let child = self.child.as_mut().expect("netd running");
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "netd did not exit; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether netd has exited (without waiting).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().expect("try_wait"))
    }
}

impl Drop for Netd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Raise this process's soft limit on open files to the hard limit, for
/// tests that hold thousands of connections (netd's own routine).
pub fn raise_fd_limit() {
    netd::process::server::raise_fd_limit().expect("raising the open-file limit");
}

/// Poll `cond` until it holds or the deadline passes.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Async version of [`wait_until`].
pub async fn wait_until_async<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + DEADLINE;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Bound address of listener `name`, from `netctl -o json status`.
pub fn bound_addr(netd: &Netd, name: &str) -> std::net::SocketAddr {
    let v = netd.netctl_json(&["status", name]);
    v["bound_addr"]
        .as_str()
        .expect("bound_addr")
        .parse()
        .expect("socket addr")
}

/// Start udp-proxy `name` on 127.0.0.1:0 to `upstream` with the `netctl
/// start` flags `extra`; its bound address.
pub fn start_udp_proxy(
    netd: &Netd,
    name: &str,
    upstream: std::net::SocketAddr,
    extra: &[&str],
) -> std::net::SocketAddr {
    let up = upstream.to_string();
    let mut args = vec![
        "start",
        "udp-proxy",
        name,
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &up,
    ];
    args.extend_from_slice(extra);
    netd.netctl_ok(&args);
    bound_addr(netd, name)
}

/// Find netd's listening socket on `addr` and shut it down from outside via
/// pidfd_getfd(2): the real accept(2) in netd then fails with EINVAL, which
/// is exactly a listener failing under the supervisor.
pub fn break_listening_socket(pid: u32, addr: std::net::SocketAddr) {
    let port_hex = format!("{:04X}", addr.port());
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let inode = table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f[1].ends_with(&format!(":{port_hex}")) && f[3] == "0A")
        .map(|f| f[9].to_string())
        .expect("listening socket in /proc/net/tcp");
    let target = format!("socket:[{inode}]");
    let fd: i32 = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy() == target))
        .and_then(|e| e.file_name().to_str()?.parse().ok())
        .expect("netd's fd for the listening socket");
    // SAFETY: plain syscalls on descriptors this function owns.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) as i32;
        assert!(
            pidfd >= 0,
            "pidfd_open: {}",
            std::io::Error::last_os_error()
        );
        let dup = libc::syscall(libc::SYS_pidfd_getfd, pidfd, fd, 0) as i32;
        assert!(dup >= 0, "pidfd_getfd: {}", std::io::Error::last_os_error());
        assert_eq!(libc::shutdown(dup, libc::SHUT_RDWR), 0);
        libc::close(dup);
        libc::close(pidfd);
    }
}

/// An upstream server owned by the test, on loopback: echoes with a prefix
/// on every accepted connection and keeps a handle on each so the test can
/// close them from the server side.
pub struct TestUpstream {
    pub addr: std::net::SocketAddr,
    accepted: std::sync::Arc<parking_lot::Mutex<Vec<std::net::TcpStream>>>,
}

impl TestUpstream {
    pub fn echo(prefix: &'static [u8]) -> TestUpstream {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
        let list = accepted.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                list.lock().push(stream.try_clone().unwrap());
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    loop {
                        match stream.read(&mut buf) {
                            Ok(0) | Err(_) => {
                                let _ = stream.shutdown(std::net::Shutdown::Write);
                                return;
                            }
                            Ok(n) => {
                                let mut out = prefix.to_vec();
                                out.extend_from_slice(&buf[..n]);
                                if stream.write_all(&out).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        TestUpstream { addr, accepted }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.lock().len()
    }

    /// Close every connection accepted so far, from the server side.
    pub fn close_all(&self) {
        for s in self.accepted.lock().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// A network namespace the test creates (and deletes on drop), with its own
/// loopback up: sniffer tests capture there, so they see only their own
/// traffic. Needs root and iproute2.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new() -> NetNs {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let name = format!(
            "netd-t{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let ok = |args: &[&str]| {
            let out = Command::new("ip")
                .args(args)
                .output()
                .expect("run ip (iproute2)");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        ok(&["netns", "add", &name]);
        ok(&["-n", &name, "link", "set", "lo", "up"]);
        NetNs { name }
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Start netd inside the namespace with `config`.
    pub fn netd(&self, config: &str) -> Netd {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("netd.toml");
        std::fs::write(&cfg, config).expect("write config");
        let control = ControlAddr::Unix(dir.path().join("netd.sock"));
        let mut cmd = self.command(NETD);
        cmd.arg("--config").arg(&cfg);
        Netd::spawn(cmd, dir, control)
    }

    /// Run `f` on a thread that has entered the namespace: sockets it
    /// creates live there.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = std::fs::File::open(&path).expect("open netns");
                // SAFETY: setns on this thread only, with a namespace fd.
                let rc = unsafe {
                    libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET)
                };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("namespace thread")
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Resident set size of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// Run a command that should exit by itself (stdin closed, output
/// captured): its output, or `None` when it was still running after
/// [`DEADLINE`] (it is killed then), as a netd that wrongly starts would.
pub fn output_within_deadline(mut cmd: Command) -> Option<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + DEADLINE;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(child.wait_with_output().expect("output"))
}

/// `netd --config <config> ARGS` with a control socket in a temporary
/// directory, expected to exit by itself (a config error, --check-config):
/// what [`output_within_deadline`] gives, and the config file's path (for
/// messages that name it).
pub fn netd_exit(config: &str, args: &[&str]) -> (Option<Output>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("netd.toml");
    std::fs::write(&path, config).expect("write config");
    let mut cmd = Command::new(NETD);
    cmd.arg("--config")
        .arg(&path)
        .args(args)
        .env(
            "NETD_CONTROL",
            format!("unix:{}", dir.path().join("s").display()),
        )
        .env_remove("NOTIFY_SOCKET");
    (output_within_deadline(cmd), path.display().to_string())
}
