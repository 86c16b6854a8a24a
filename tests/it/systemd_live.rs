//! netd as a Debian package under a live systemd: systemd boots as PID 1
//! in a throw-away container over this machine's own /usr (systemd-nspawn
//! with tmpfs overlays on /usr, /etc and /var, a network namespace of its
//! own), the .deb built from the debug binaries of this build
//! (`deploy/debian/build-deb --profile dev`, cargo-deb) is bound in
//! read-only and installed with dpkg, and the test drives it with
//! systemctl and netctl from inside: start only after READY=1, who may use
//! netctl, `systemctl reload` with a good and a broken config, `systemctl
//! restart` and a package upgrade under a connect loop (fd store), the
//! watchdog, stop, the journal's audit lines, `systemd-analyze security`,
//! lintian, and purge.
//!
//! Needs root, systemd-nspawn (systemd-container), cargo-deb and lintian;
//! without them it says so and passes, unless NETD_REQUIRE_SYSTEMD is set
//! (.ci/run sets it), when it fails.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The unit's WatchdogSec=, TimeoutAbortSec= and RestartSec=
/// (deploy/netd.service).
const WATCHDOG: Duration = Duration::from_secs(30);
const TIMEOUT_ABORT: Duration = Duration::from_secs(5);
const RESTART: Duration = Duration::from_secs(2);
/// deploy/netd.toml's shutdown_grace.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// The most `systemd-analyze security` may say, as docs/systemd.md states it.
const MAX_EXPOSURE: f64 = 2.0;
/// How long anything inside the container gets (a command, a boot).
const SLOW: Duration = Duration::from_secs(120);

/// The listeners deploy/netd.toml boots with.
const ECHO: &str = "127.0.0.1:8080";

fn require() -> bool {
    std::env::var_os("NETD_REQUIRE_SYSTEMD").is_some()
}

/// Why this machine cannot run the test, if it cannot.
fn missing() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    for (tool, package) in [
        ("systemd-nspawn", "systemd-container"),
        ("lintian", "lintian"),
        ("dpkg-deb", "dpkg"),
    ] {
        if Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            return Some(format!("{tool} is missing (apt-get install {package})"));
        }
    }
    let deb = Command::new("cargo")
        .args(["deb", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !deb.is_ok_and(|s| s.success()) {
        return Some("cargo-deb is missing (cargo install cargo-deb --locked)".into());
    }
    None
}

/// Run `cmd` to completion within [`SLOW`] (killed then); its output.
fn run_bounded(mut cmd: Command) -> Output {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    // Read both pipes on threads so a chatty command cannot block.
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stdout.read_to_end(&mut b);
        b
    });
    let err_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stderr.read_to_end(&mut b);
        b
    });
    let deadline = Instant::now() + SLOW;
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} still running after {SLOW:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out_t.join().expect("stdout reader"),
        stderr: err_t.join().expect("stderr reader"),
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}\n{}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A booted container: systemd-nspawn and the container's PID 1.
struct Container {
    nspawn: Child,
    init: u32,
    console: PathBuf,
}

impl Container {
    /// Boot systemd over this machine's /usr with `debs` bound read-only at
    /// /netd-debs; returns once systemd says the boot is done.
    fn boot(debs: &Path, console: PathBuf) -> Container {
        let log = std::fs::File::create(&console).expect("console log");
        let name = format!("netd-live-{}", std::process::id());
        let nspawn = Command::new("systemd-nspawn")
            .args(["-D", "/", "--volatile=yes", "-b", "--register=no"])
            .args(["--keep-unit", "--private-network", "-M", &name])
            // Writable on top of the machine's own: dpkg installs into
            // /usr, adds the user in /etc, keeps its database in /var.
            .args(["--overlay=/usr::/usr", "--overlay=/etc::/etc"])
            .args(["--overlay=/var::/var"])
            .arg(format!("--bind-ro={}:/netd-debs", debs.display()))
            // Kernel command line for the container's systemd: no first
            // boot questions, and none of the machine's own services.
            .args(["--", "systemd.firstboot=off", "systemd.unit=basic.target"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup console log"))
            .stderr(log)
            .spawn()
            .expect("spawn systemd-nspawn");
        let pid = nspawn.id();
        let mut c = Container {
            nspawn,
            init: 0,
            console,
        };
        let deadline = Instant::now() + SLOW;
        // The container's PID 1 is nspawn's child.
        while c.init == 0 {
            assert!(
                Instant::now() < deadline,
                "no container init; console:\n{}",
                c.console()
            );
            if let Some(status) = c.nspawn.try_wait().expect("try_wait") {
                panic!(
                    "systemd-nspawn exited ({status}); console:\n{}",
                    c.console()
                );
            }
            c.init = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse().ok())
                .unwrap_or(0);
            std::thread::sleep(Duration::from_millis(50));
        }
        // Booted: `is-system-running --wait` returns once the boot job is
        // done (running or degraded).
        loop {
            assert!(
                Instant::now() < deadline,
                "the container did not finish booting; console:\n{}",
                c.console()
            );
            let o = c.sh_output("systemctl is-system-running --wait");
            let state = String::from_utf8_lossy(&o.stdout).trim().to_string();
            if state == "running" || state == "degraded" {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        c
    }

    fn console(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// `sh -c script` inside the container (all its namespaces).
    fn sh_output(&self, script: &str) -> Output {
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &self.init.to_string(), "-a", "/bin/sh", "-c", script]);
        run_bounded(cmd)
    }

    /// [`Container::sh_output`] that must succeed; its stdout.
    fn sh(&self, script: &str) -> String {
        let o = self.sh_output(script);
        assert!(
            o.status.success(),
            "in the container: {script}\n{}\njournal:\n{}",
            text(&o),
            self.journal()
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// [`Container::sh_output`] that must fail; stdout and stderr.
    fn sh_fails(&self, script: &str) -> String {
        let o = self.sh_output(script);
        assert!(
            !o.status.success(),
            "in the container, should have failed: {script}\n{}",
            text(&o)
        );
        text(&o)
    }

    fn journal(&self) -> String {
        let o = self.sh_output("journalctl -u netd.service --no-pager -o cat");
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn main_pid(&self) -> u32 {
        self.sh("systemctl show -p MainPID --value netd.service")
            .trim()
            .parse()
            .expect("MainPID")
    }

    fn is_active(&self) -> String {
        self.sh_output("systemctl is-active netd.service")
            .stdout
            .iter()
            .map(|&b| b as char)
            .collect::<String>()
            .trim()
            .to_string()
    }

    /// Wait (at most `limit`) until `cond` holds.
    fn wait(&self, what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
        let start = Instant::now();
        while !cond() {
            assert!(
                start.elapsed() < limit,
                "timed out ({limit:?}) waiting for {what}; journal:\n{}",
                self.journal()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        start.elapsed()
    }

    /// Connect to `addrs` in a loop from inside the container's network
    /// namespace, each connection sending a line and reading the echo,
    /// until the returned loop is stopped.
    fn connect_loop(&self, addrs: &[&str]) -> ConnectLoop {
        let ns = std::fs::File::open(format!("/proc/{}/ns/net", self.init)).expect("open netns");
        let stop = Arc::new(AtomicBool::new(false));
        let addrs: Vec<std::net::SocketAddr> =
            addrs.iter().map(|a| a.parse().expect("addr")).collect();
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            // SAFETY: setns on this thread only, with a namespace fd.
            let rc =
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            let (mut ok, mut failed) = (0u64, Vec::new());
            // Bounded: stopped by the test, or at the latest after SLOW.
            let deadline = Instant::now() + SLOW;
            // At least one round, however soon it is stopped.
            loop {
                for a in &addrs {
                    match echo_once(*a) {
                        Ok(()) => ok += 1,
                        Err(e) => failed.push(format!("{a}: {e}")),
                    }
                }
                if s.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
            }
            (ok, failed)
        });
        ConnectLoop { stop, thread }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // Killing a PID namespace's init ends every process in it.
        if self.init != 0 {
            // SAFETY: kill(2) on the container's init, which we started.
            unsafe { libc::kill(self.init as i32, libc::SIGKILL) };
        }
        let deadline = Instant::now() + SLOW;
        while self.nspawn.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = self.nspawn.kill();
                let _ = self.nspawn.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

struct ConnectLoop {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(u64, Vec<String>)>,
}

impl ConnectLoop {
    /// Stop; the connections served and the ones that failed.
    fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("connect loop")
    }
}

fn echo_once(addr: std::net::SocketAddr) -> std::io::Result<()> {
    let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    c.set_read_timeout(Some(Duration::from_secs(20)))?;
    c.write_all(b"ping\n")?;
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while !got.ends_with(b"\n") {
        let n = c.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::Error::other("closed before the echo"));
        }
        got.extend_from_slice(&buf[..n]);
    }
    Ok(())
}

/// Build the .deb of this build's debug binaries as version `version`
/// into `dir`; its path.
fn build_deb(dir: &Path, version: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = dir.join(format!("netd_{version}.deb"));
    let mut cmd = Command::new(root.join("deploy/debian/build-deb"));
    cmd.args(["--profile", "dev", "--fast", "--deb-version", version, "-o"])
        .arg(&out);
    let o = run_bounded(cmd);
    assert!(o.status.success(), "build-deb: {}", text(&o));
    out
}

// One scenario in one booted container (booting it is the expensive part):
// install, enable, netctl, reload, restart, upgrade, journal, sandbox and
// watchdog in order, each step on the state the previous one left.
#[allow(clippy::too_many_lines)]
#[test]
fn the_package_under_a_live_systemd() {
    if let Some(why) = missing() {
        assert!(
            !require(),
            "NETD_REQUIRE_SYSTEMD is set but the live systemd test cannot run: {why}"
        );
        eprintln!("live systemd test skipped: {why} (set NETD_REQUIRE_SYSTEMD to fail instead)");
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let debs = work.path().join("debs");
    std::fs::create_dir(&debs).expect("debs dir");
    let v1 = build_deb(&debs, "0.1.0-1");
    let v2 = build_deb(&debs, "0.1.0-2");

    // lintian: no errors (warnings are listed in docs/systemd.md).
    let o = run_bounded({
        let mut c = Command::new("lintian");
        c.arg(&v1);
        c
    });
    let report = text(&o);
    assert!(
        !report.lines().any(|l| l.starts_with("E:")),
        "lintian errors:\n{report}"
    );

    let c = Container::boot(&debs, work.path().join("console.log"));
    let deb = |p: &Path| {
        format!(
            "/netd-debs/{}",
            p.file_name().expect("name").to_string_lossy()
        )
    };

    // Install: the postinst creates the user, the directories, enables and
    // starts netd.
    // This machine's image (a Docker one) forbids maintainer scripts to
    // start services (policy-rc.d exits 101); a real Debian install has no
    // such file. Removed in the container's overlay only.
    c.sh("rm -f /usr/sbin/policy-rc.d");
    // A fresh install: the overlay shows the host's /, and a netd run as
    // root on the host (a test, a developer) may have left its state there.
    c.sh("rm -rf /var/lib/netd /etc/netd");
    c.sh(&format!("dpkg -i {}", deb(&v1)));
    assert_eq!(c.sh("systemctl is-enabled netd.service").trim(), "enabled");
    assert_eq!(c.is_active(), "active", "journal:\n{}", c.journal());
    c.sh("id netd && stat -c '%U:%G %a' /etc/netd/netd.toml | grep -x 'root:netd 640'");
    c.sh("test -s /usr/share/man/man1/netctl.1.gz && test -s /usr/share/man/man8/netd.8.gz");

    // enable --now (docs/systemd.md's words): active only after READY=1.
    c.sh("systemctl disable --now netd.service");
    c.sh("systemctl enable --now netd.service");
    assert_eq!(c.is_active(), "active");
    assert_eq!(
        c.sh("systemctl show -p Type --value netd.service").trim(),
        "notify"
    );
    let journal = c.journal();
    let ready = journal
        .rfind("netd ready")
        .expect("netd ready in the journal");
    let started = journal
        .rfind("Started netd.service")
        .unwrap_or_else(|| panic!("no 'Started netd.service' in the journal:\n{journal}"));
    assert!(ready < started, "active before READY=1:\n{journal}");
    let ready_line = journal[ready..]
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(ready_line.contains("listeners=2"), "{ready_line}");

    // netctl: root, a member of group netd, and not someone else.
    assert!(c.sh("netctl list").contains("echo"));
    c.sh("useradd -m -G netd alice && useradd -m bob");
    let as_user = |user: &str| {
        format!(
            "setpriv --reuid={user} --regid={user} --init-groups netctl --control unix:/run/netd/netd.sock list"
        )
    };
    assert!(c.sh(&as_user("alice")).contains("udp-echo"));
    let refused = c.sh_fails(&as_user("bob")).to_lowercase();
    assert!(
        refused.contains("permission denied") || refused.contains("not allowed"),
        "{refused}"
    );

    // systemctl reload: a config edit is applied when it returns.
    c.sh(
        "printf '\\n[[listener]]\\nname = \"added\"\\nkind = \"tcp-echo\"\\nlisten = \"127.0.0.1:8081\"\\n' >> /etc/netd/netd.toml",
    );
    c.sh("systemctl reload netd.service");
    assert!(c.sh("netctl status added").contains("127.0.0.1:8081"));
    // A broken config: the reload fails, the old listeners still serve.
    c.sh("cp /etc/netd/netd.toml /root/netd.toml.good && echo 'this is = = not toml' >> /etc/netd/netd.toml");
    let failed = c.sh_fails("systemctl reload netd.service");
    assert!(
        failed.contains("failed") || failed.contains("Job"),
        "{failed}"
    );
    assert_eq!(c.is_active(), "active");
    assert!(
        c.journal().contains("keeping the running one"),
        "{}",
        c.journal()
    );
    let conns = c.connect_loop(&[ECHO, "127.0.0.1:8081"]);
    let (served, failed) = conns.finish();
    assert!(
        failed.is_empty() && served > 0,
        "after a failed reload: {failed:?}"
    );
    c.sh("cp /root/netd.toml.good /etc/netd/netd.toml");

    // A runtime listener, then `systemctl restart` under a connect loop:
    // no connection refused (fd store), the runtime listener restored.
    c.sh("netctl start tcp-echo rt --listen 127.0.0.1:8090");
    let before = c.main_pid();
    let conns = c.connect_loop(&[ECHO, "127.0.0.1:8090"]);
    c.sh("systemctl restart netd.service");
    c.wait("a new netd serving", SLOW, || {
        c.main_pid() != before && c.sh_output("netctl status rt").status.success()
    });
    let (served, failed) = conns.finish();
    assert!(
        failed.is_empty(),
        "connections failed across restart: {failed:?}"
    );
    assert!(served > 0);
    eprintln!("restart: {served} connections served, none failed");
    let journal = c.journal();
    let last_ready = journal[journal.rfind("netd ready").expect("ready")..]
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    // echo, udp-echo, added (from the file), rt (restored).
    assert!(last_ready.contains("listeners=4"), "{last_ready}");
    let listed = c.sh("netctl -o json list");
    assert_eq!(listed.matches("\"name\"").count(), 4, "{listed}");

    // Upgrade to a newer build under the same connect loop.
    let before = c.main_pid();
    let conns = c.connect_loop(&[ECHO, "127.0.0.1:8090"]);
    c.sh(&format!("dpkg -i {}", deb(&v2)));
    c.wait("the upgraded netd serving", SLOW, || {
        c.main_pid() != before && c.sh_output("netctl status rt").status.success()
    });
    let (served, failed) = conns.finish();
    assert!(
        failed.is_empty(),
        "connections failed across upgrade: {failed:?}"
    );
    assert!(served > 0);
    assert!(
        c.sh("dpkg-query -W -f '${Version}' netd")
            .contains("0.1.0-2")
    );

    // Audit lines in the journal (netctl start, Reload).
    let journal = c.journal();
    assert!(
        journal.contains("audit: ok") && journal.contains("rpc=\"Reload\""),
        "{journal}"
    );

    // The sandbox, as systemd-analyze scores it on this systemd.
    let security = c.sh("systemd-analyze security --no-pager netd.service");
    let score: f64 = security
        .lines()
        .find_map(|l| l.split("Overall exposure level for netd.service:").nth(1))
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no overall exposure in:\n{security}"));
    assert!(score <= MAX_EXPOSURE, "exposure {score}:\n{security}");
    eprintln!("systemd-analyze security netd.service: {score}");

    // A hung netd: the watchdog kills it and systemd starts a new one.
    let hung = c.main_pid();
    c.sh(&format!("kill -STOP {hung}"));
    let took = c.wait(
        "the watchdog to replace the stopped netd",
        WATCHDOG + TIMEOUT_ABORT + RESTART + Duration::from_secs(15),
        || {
            let pid = c.main_pid();
            pid != 0 && pid != hung && c.is_active() == "active"
        },
    );
    eprintln!("watchdog: a stopped netd was replaced after {took:?}");
    assert!(
        c.journal().to_lowercase().contains("watchdog timeout"),
        "{}",
        c.journal()
    );
    c.wait(
        "the runtime listener after the watchdog restart",
        SLOW,
        || c.sh_output("netctl status rt").status.success(),
    );

    // Stop: within the shutdown grace, cleanly.
    let start = Instant::now();
    c.sh("systemctl stop netd.service");
    let took = start.elapsed();
    assert!(
        took < SHUTDOWN_GRACE + Duration::from_secs(10),
        "systemctl stop took {took:?}"
    );
    assert_eq!(
        c.sh("systemctl show -p Result --value netd.service").trim(),
        "success"
    );

    // Purge: the service goes, and with it the state.
    c.sh("systemctl start netd.service");
    c.sh("dpkg --purge netd");
    assert_ne!(c.is_active(), "active");
    c.sh("! test -e /usr/bin/netd && ! test -e /var/lib/netd && ! test -e /etc/netd/netd.toml");
    c.sh("! test -e /etc/systemd/system/multi-user.target.wants/netd.service");
}
