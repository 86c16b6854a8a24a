//! The files netd is pointed at, and what it says when they fail: a
//! config replaced by a FIFO fails a SIGHUP reload at once (and the next
//! SIGHUP works), a full state disk gets the truth (a start undone, a stop
//! live but unsaved), a state directory others may write to is warned
//! about and one owned by another user refused, a config of tens of
//! thousands of listeners is checked in linear time, `--upgrade` takes no
//! sockets from a netd run by another user, and an h2c connection that
//! sends the preface and nothing else is closed after the header timeout.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::h2raw::PREFACE;
use crate::common::{DEADLINE, NETD, Netd, bound_addr, output_within_deadline, wait_until};

const NOBODY: u32 = 65534;

fn names(netd: &Netd) -> Vec<String> {
    let v = netd.netctl_json(&["list"]);
    v["listeners"]
        .as_array()
        .expect("listeners")
        .iter()
        .map(|l| l["name"].as_str().expect("name").to_string())
        .collect()
}

fn mkfifo(path: &Path) {
    let st = Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("run mkfifo");
    assert!(st.success(), "mkfifo {}", path.display());
}

/// SIGHUP with the config path replaced by a FIFO nobody writes to: the
/// reload fails at once, saying why, netd keeps answering, and once a
/// good config is back the next SIGHUP reloads it.
#[test]
fn sighup_with_a_fifo_config_fails_and_the_next_reload_works() {
    let netd =
        Netd::start("[[listener]]\nname = \"a\"\nkind = \"tcp-echo\"\nlisten = \"127.0.0.1:0\"\n");
    let cfg = netd.dir.path().join("netd.toml");
    std::fs::remove_file(&cfg).expect("remove config");
    mkfifo(&cfg);
    netd.signal(libc::SIGHUP);
    wait_until("the failed reload in the log", || {
        netd.log()
            .lines()
            .any(|l| l.contains("reload failed") && l.contains("FIFO"))
    });
    // The runtime is not wedged: the control plane answers.
    assert_eq!(names(&netd), ["a"]);

    // A regular file again (removing the FIFO first: writing to it would
    // block this test), with one more listener.
    std::fs::remove_file(&cfg).expect("remove FIFO");
    netd.write_config(
        "[[listener]]\nname = \"a\"\nkind = \"tcp-echo\"\nlisten = \"127.0.0.1:0\"\n\
         [[listener]]\nname = \"b\"\nkind = \"tcp-echo\"\nlisten = \"127.0.0.1:0\"\n",
    );
    netd.signal(libc::SIGHUP);
    wait_until("the good config reloaded", || {
        netd.log().contains("config reloaded")
    });
    assert_eq!(names(&netd), ["a", "b"]);
}

/// A tmpfs mounted for one test, unmounted (lazily: netd may still hold
/// its directory open) when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(options: &str) -> Tmpfs {
        let dir = tempfile::tempdir().expect("tempdir");
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(st.success(), "mount tmpfs (tests run as root)");
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Write zeros to a new file in `dir` until the file system is full.
fn fill(dir: &Path) {
    let mut f = std::fs::File::create(dir.join("filler")).expect("create filler");
    let block = [0u8; 4096];
    // Bounded by the file system's size (a tmpfs of a few pages here).
    for _ in 0..1_000_000 {
        match f.write_all(&block) {
            Ok(()) => continue,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => return,
            Err(e) => panic!("filling the tmpfs: {e}"),
        }
    }
    panic!("the tmpfs never filled up");
}

/// With the state disk full, a start is rolled back and says so; a stop
/// stays done and says it is live but unsaved.
#[test]
fn a_full_state_disk_gets_truthful_errors() {
    let state = Tmpfs::mount("size=64k,mode=0700");
    let state_dir = state.path().to_str().expect("utf-8 path").to_string();
    let netd = Netd::start_with_env(
        "[[listener]]\nname = \"base\"\nkind = \"tcp-echo\"\nlisten = \"127.0.0.1:0\"\n",
        &[("NETD_STATE_DIR", &state_dir)],
    );
    fill(state.path());

    let e = netd.netctl_err(&["start", "tcp-echo", "extra", "--listen", "127.0.0.1:0"]);
    assert!(
        e.contains("was not started (the start was undone)"),
        "start: {e}"
    );
    assert!(e.contains("No space left on device"), "start: {e}");
    assert!(!e.contains("is live"), "start: {e}");
    assert_eq!(names(&netd), ["base"]);

    let e = netd.netctl_err(&["stop", "base"]);
    assert!(e.contains("the change is live but unsaved"), "stop: {e}");
    assert!(e.contains("No space left on device"), "stop: {e}");
    assert!(names(&netd).is_empty());
    drop(netd);
}

/// A state directory others may write to is warned about at start; one
/// owned by another user is refused.
#[test]
fn state_dir_owner_and_mode_are_checked() {
    // The harness gives every netd a state directory of mode 0777.
    let netd = Netd::start("");
    wait_until("the warning about the state directory", || {
        netd.log()
            .contains("the state directory is writable by other users")
    });
    drop(netd);

    let dir = tempfile::tempdir().expect("tempdir");
    let theirs = dir.path().join("state");
    std::fs::create_dir(&theirs).expect("mkdir");
    std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::os::unix::fs::chown(&theirs, Some(NOBODY), Some(NOBODY)).expect("chown");
    let mut cmd = Command::new(NETD);
    cmd.args(["--config", "/dev/null", "--state-dir"])
        .arg(&theirs)
        .env(
            "NETD_CONTROL",
            format!("unix:{}", dir.path().join("s").display()),
        )
        .env_remove("NOTIFY_SOCKET");
    let out = output_within_deadline(cmd).expect("netd exits by itself");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("owned by uid 65534"), "{err}");
}

/// `netd --check-config` reads a file of 50,000 listeners in linear time
/// (a second or two in a debug build; the quadratic reading took minutes).
/// The bound is generous: it catches the algorithm, not the machine.
#[test]
fn a_config_of_many_listeners_is_checked_in_linear_time() {
    const COUNT: usize = 50_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("many.toml");
    let mut text = String::from("max_listeners = 100000\n");
    for i in 0..COUNT {
        text.push_str(&format!(
            "\n[[listener]]\nname = \"l{i}\"\nkind = \"tcp-echo\"\nlisten = \"127.{}.{}.{}:{}\"\n",
            (i >> 16) & 255,
            (i >> 8) & 255,
            i & 255,
            10_000 + i % 50_000
        ));
    }
    std::fs::write(&path, text).expect("write config");
    let mut child = Command::new(NETD)
        .arg("--check-config")
        .arg("--config")
        .arg(&path)
        .env(
            "NETD_CONTROL",
            format!("unix:{}", dir.path().join("s").display()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn netd");
    let bound = Duration::from_secs(90);
    let began = Instant::now();
    while child.try_wait().expect("try_wait").is_none() {
        if began.elapsed() > bound {
            let _ = child.kill();
            let _ = child.wait();
            panic!("--check-config of {COUNT} listeners took more than {bound:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("ok ({COUNT} listeners)")),
        "{stdout}"
    );
}

/// A copy of a binary any user may run (the checkout may sit in a
/// directory other users cannot enter).
fn public_copy(bin: &str, dir: &Path) -> PathBuf {
    let to = dir.join(Path::new(bin).file_name().expect("file name"));
    std::fs::copy(bin, &to).expect("copy binary");
    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    to
}

/// `netd --upgrade` run as root against a netd run by another user (here
/// nobody, standing in for anything that bound the hand-over path first)
/// takes none of its sockets, says why, and leaves it running.
#[test]
fn upgrade_refuses_a_handover_socket_served_by_another_user() {
    let bins = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(bins.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let netd_bin = public_copy(NETD, bins.path());
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let control = netd::util::addr::ControlAddr::Unix(dir.path().join("impostor.sock"));
    let mut cmd = Command::new(&netd_bin);
    cmd.args(["--config", "/dev/null", "--control"])
        .arg(control.to_string())
        .uid(NOBODY)
        .gid(NOBODY);
    let mut impostor = Netd::spawn_as_is(cmd, dir, control.clone());

    let state = tempfile::tempdir().expect("tempdir");
    let mut upgrade = Command::new(NETD);
    upgrade
        .args(["--upgrade", "--config", "/dev/null"])
        .env("NETD_CONTROL", control.to_string())
        .env("NETD_STATE_DIR", state.path())
        .env_remove("NOTIFY_SOCKET");
    let out = output_within_deadline(upgrade)
        .expect("the upgrade gives up by itself instead of taking over");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("refusing the hand-over") && err.contains("uid 65534"),
        "{err}"
    );
    assert!(
        impostor.exited().is_none(),
        "the other user's netd carries on"
    );
}

/// An h2c connection that sends the preface and nothing else is closed
/// after header_read_timeout, not held for the whole idle_timeout (60 s by
/// default), so it cannot keep a connection slot.
#[test]
fn preface_only_h2c_connection_is_closed_after_the_header_timeout() {
    let netd = Netd::start(
        "[[listener]]\nname = \"web\"\nkind = \"http\"\nlisten = \"127.0.0.1:0\"\n\
         header_read_timeout = \"1s\"\n",
    );
    let addr = bound_addr(&netd, "web");
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(PREFACE).expect("preface");
    s.set_read_timeout(Some(DEADLINE)).expect("read timeout");
    let began = Instant::now();
    let mut buf = [0u8; 4096];
    // Bounded: each read returns data, EOF or an error (the timeout).
    let closed = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    assert!(
        closed,
        "a preface-only connection still open after {:?}",
        began.elapsed()
    );
    assert!(began.elapsed() < DEADLINE, "{:?}", began.elapsed());
}

/// CPU time (user + system) netd's process has used so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    // Fields after the command name (which may contain spaces): state is
    // field 3, utime and stime fields 14 and 15.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// A one-byte slicer without delay costs little CPU: slices due at the
/// same time are written together. It cost 1.1 s of CPU per 200 KB (a
/// write and a TCP segment per byte; 6 s for this test's 2 MB in a debug
/// build); the bound is generous (a debug build on a loaded machine).
#[test]
fn a_one_byte_slicer_costs_little_cpu() {
    const SIZE: usize = 1 << 20;
    let netd = Netd::start("");
    let up = crate::common::TestUpstream::echo(b"");
    let upstream = up.addr.to_string();
    netd.netctl_ok(&[
        "start",
        "proxy",
        "p",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &upstream,
    ]);
    netd.netctl_ok(&[
        "fault",
        "add",
        "p",
        "bytes",
        "--type",
        "slicer",
        "--average-size",
        "1",
        "--direction",
        "both",
    ]);
    let proxy = bound_addr(&netd, "p");
    let mut c = TcpStream::connect(proxy).expect("connect");
    c.set_read_timeout(Some(DEADLINE)).expect("read timeout");
    let before = cpu_time(netd.pid());
    let mut reader = c.try_clone().expect("clone");
    let writer = std::thread::spawn(move || {
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..SIZE / chunk.len() {
            c.write_all(&chunk).expect("write");
        }
    });
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    // Bounded: each read returns data, or fails at the read timeout.
    while got < SIZE {
        let n = reader.read(&mut buf).expect("read the echo");
        assert!(n > 0, "closed after {got} bytes");
        got += n;
    }
    writer.join().expect("writer");
    let used = cpu_time(netd.pid()) - before;
    assert!(
        used < Duration::from_millis(1500),
        "1 MB through a one-byte slicer cost {used:?} of CPU"
    );
}
