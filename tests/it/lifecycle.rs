//! The daemon's lifecycle: boot from config (and the embedded default),
//! config errors, sd_notify, SIGTERM draining, and the supervisor restarting
//! a listener whose socket fails under it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use crate::common::{NETD, Netd, bound_addr, break_listening_socket, raise_fd_limit, wait_until};

fn netd_with_config(config: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, config).unwrap();
    Command::new(NETD)
        .arg("--config")
        .arg(&path)
        .env(
            "NETD_CONTROL",
            format!("unix:{}", dir.path().join("s.sock").display()),
        )
        .output()
        .unwrap()
}

#[test]
fn config_errors_name_file_line_and_problem() {
    let cases = [
        (
            "[[listener]]\nname = \"a\"\nkind = \"tcp-echo\"\nlisten = \"127.0.0.1:70000\"\n",
            "bad.toml:4: listener 'a': listen:",
        ),
        (
            "[[listener]]\nname = \"a\"\nkind = \"tcp_echo\"\nlisten = \"127.0.0.1:0\"\n",
            "bad.toml:3:8: unknown variant `tcp_echo`",
        ),
        ("shutdown_grace = \"soon\"\n", "bad.toml:1:"),
        (
            "[log]\nlevel = \"info\"\ncolour = \"red\"\n",
            "unknown field `colour`",
        ),
        (
            "[[listener]]\nname = \"a\"\nkind = \"udp-echo\"\nlisten = \"127.0.0.1:0\"\nmax_connections = 3\n",
            "bad.toml:5: max_connections does not apply",
        ),
        ("this is not toml", "bad.toml:1:"),
    ];
    for (config, want) in cases {
        let out = netd_with_config(config);
        assert!(!out.status.success(), "netd accepted:\n{config}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.starts_with("netd: ") && err.contains("bad.toml") && err.contains(want),
            "for\n{config}\ngot: {err}"
        );
        // One line, like every config error.
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }

    let out = Command::new(NETD)
        .args(["--config", "/nonexistent/netd.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot read config /nonexistent/netd.toml")
    );
}

#[test]
fn boot_listener_on_a_port_in_use_fails_startup_clearly() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let config = format!("[[listener]]\nname = \"e\"\nkind = \"tcp-echo\"\nlisten = \"{addr}\"\n");
    let out = netd_with_config(&config);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml:2: listener 'e'")
            && err.contains(&format!("{addr} is already in use")),
        "{err}"
    );
}

#[test]
fn boot_listeners_from_config() {
    let netd = Netd::start(
        "shutdown_grace = \"2s\"\n\
         [[listener]]\nname = \"t\"\nkind = \"tcp-echo\"\nlisten = \"127.0.0.1:0\"\nprefix = \"T:\"\nmax_connections = 5\nidle_timeout = \"1m\"\nlabels = { env = \"test\" }\n\
         [[listener]]\nname = \"u\"\nkind = \"udp-echo\"\nlisten = \"127.0.0.1:0\"\n",
    );
    let t = netd.netctl_json(&["status", "t"]);
    assert_eq!(t["spec"]["max_connections"], 5);
    assert_eq!(t["spec"]["idle_timeout"], "1m");
    assert_eq!(t["labels"]["env"], "test");
    let reply = netd.netctl_ok(&["probe", "tcp", t["bound_addr"].as_str().unwrap(), "-m", "x"]);
    assert_eq!(reply, "T:x\n");
    assert_eq!(netd.netctl_json(&["status", "u"])["state"], "running");
}

/// The embedded default serves the classic demo. When 8080 and 9090 are free
/// it runs for real with nothing but the control address overridden;
/// otherwise (a developer's own netd, say) it checks the config parses into
/// the two demo listeners.
#[test]
fn embedded_default_serves_the_demo() {
    let out = Command::new(NETD).arg("--check-config").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "<embedded default config>: ok (2 listeners)\n"
    );
    let printed = Command::new(NETD)
        .arg("--print-default-config")
        .output()
        .unwrap();
    assert_eq!(printed.stdout, std::fs::read("deploy/netd.toml").unwrap());

    let tcp_free = std::net::TcpListener::bind("127.0.0.1:8080").is_ok();
    let udp_free = std::net::UdpSocket::bind("127.0.0.1:9090").is_ok();
    if !(tcp_free && udp_free) {
        eprintln!("127.0.0.1:8080 or :9090 is taken; checked the embedded config only");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let control = netd::util::addr::ControlAddr::Unix(dir.path().join("netd.sock"));
    let netd = Netd::spawn(Command::new(NETD), dir, control);
    let list = netd.netctl_json(&["list"]);
    let got: Vec<(String, String)> = list["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["name"].as_str().unwrap().into(),
                l["bound_addr"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("echo".into(), "127.0.0.1:8080".into()),
            ("udp-echo".into(), "127.0.0.1:9090".into())
        ]
    );
    assert_eq!(
        netd.netctl_ok(&["probe", "tcp", "127.0.0.1:8080", "-m", "hi\n"]),
        "Echo: hi\n"
    );
    assert_eq!(
        netd.netctl_ok(&["probe", "udp", "127.0.0.1:9090", "-m", "hi"]),
        "ACK: hi\n"
    );
}

#[test]
fn sigterm_drains_open_connections_then_exits_zero() {
    let mut netd = Netd::start("shutdown_grace = \"30s\"\n");
    netd.netctl_ok(&["start", "tcp-echo", "d", "--listen", "127.0.0.1:0"]);
    let addr = bound_addr(&netd, "d");
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(b"before").unwrap();
    let mut buf = [0u8; 6];
    conn.read_exact(&mut buf).unwrap();

    netd.signal(libc::SIGTERM);
    netd.wait_notify("STOPPING=1");
    // No new connections once draining has begun...
    wait_until("listening socket closed", || {
        TcpStream::connect(addr).is_err()
    });
    // ...but the open one is still served, and netd waits for it.
    conn.write_all(b"during").unwrap();
    conn.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"during");
    assert!(
        netd.exited().is_none(),
        "netd must wait for the open connection"
    );

    drop(conn);
    let status = netd.wait_exit();
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        netd.log()
    );
}

#[test]
fn sigterm_closes_what_is_left_after_the_grace_period() {
    let mut netd = Netd::start("shutdown_grace = \"200ms\"\n");
    netd.netctl_ok(&["start", "tcp-echo", "d", "--listen", "127.0.0.1:0"]);
    let mut conn = TcpStream::connect(bound_addr(&netd, "d")).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // Make sure netd has accepted it (an echo round trip) before signalling.
    let mut buf = [0u8; 1];
    conn.write_all(b"x").unwrap();
    conn.read_exact(&mut buf).unwrap();
    netd.signal(libc::SIGINT);
    assert_eq!(
        conn.read(&mut buf).unwrap(),
        0,
        "netd must close the connection after the grace period"
    );
    let status = netd.wait_exit();
    assert!(status.success(), "exit status {status}");
    assert!(netd.log().contains("grace period over"), "{}", netd.log());
}

#[test]
fn failed_listener_is_restarted_on_the_same_address() {
    let netd = Netd::start("");
    netd.netctl_ok(&[
        "start",
        "tcp-echo",
        "r",
        "--listen",
        "127.0.0.1:0",
        "--prefix",
        "R:",
    ]);
    let addr = bound_addr(&netd, "r");
    break_listening_socket(netd.pid(), addr);

    wait_until("restart recorded", || {
        netd.netctl_json(&["status", "r"])["restarts"] == 1
    });
    let status = netd.netctl_json(&["status", "r"]);
    assert_eq!(status["state"], "running");
    assert_eq!(status["bound_addr"], addr.to_string());
    let err = status["last_error"].as_str().unwrap();
    assert!(
        err.contains("accepting connections failed"),
        "last_error: {err}"
    );
    assert_eq!(
        netd.netctl_ok(&["probe", "tcp", &addr.to_string(), "-m", "back"]),
        "R:back\n"
    );
    assert!(netd.log().contains("listener restarted"), "{}", netd.log());
}

/// netd's resident memory in kB.
fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// After a burst of connections closes, the memory they used goes back to
/// the OS (the heap trimmer) instead of staying at the peak.
#[test]
fn heap_goes_back_to_the_os_after_a_connection_burst() {
    const N: usize = 5000;
    raise_fd_limit();
    let netd = Netd::start("");
    netd.netctl_ok(&[
        "start",
        "tcp-echo",
        "e",
        "--listen",
        "127.0.0.1:0",
        "--max-connections",
        "6000",
    ]);
    let addr = bound_addr(&netd, "e");
    let before = rss_kb(netd.pid());
    let mut conns: Vec<TcpStream> = (0..N)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(&[7u8; 64]).unwrap();
            s
        })
        .collect();
    for s in &mut conns {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut back = [0u8; 64];
        s.read_exact(&mut back).unwrap();
    }
    let peak = rss_kb(netd.pid());
    // Idle echo connections hold no buffer (~1.5 KB each in release), so
    // 5,000 of them add several MB: enough that what the allocator and
    // tokio keep after they close (well under 1 MB) is small beside it.
    assert!(
        peak > before + 4096,
        "{N} connections should grow netd by megabytes: {before} kB -> {peak} kB"
    );
    drop(conns);
    let mut now = peak;
    // At least a third of the growth goes back (measured: a half to nine
    // tenths; what stays is the allocator's and tokio's bookkeeping).
    wait_until("netd's memory to go back down", || {
        now = rss_kb(netd.pid());
        now < peak - (peak - before) / 3
    });
    eprintln!("RSS: {before} kB before, {peak} kB with {N} connections, {now} kB after");
}

/// netd lifts its soft open-file limit to the hard one, so a soft limit of
/// 1024 from the shell does not cap it at ~500 proxied clients.
#[test]
fn netd_raises_its_open_file_limit() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let control = netd::util::addr::ControlAddr::Unix(dir.path().join("netd.sock"));
    let mut cmd = Command::new(NETD);
    cmd.args(["--config", "/dev/null"]);
    // SAFETY: only async-signal-safe getrlimit/setrlimit between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            lim.rlim_cur = 256;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let netd = Netd::spawn(cmd, dir, control);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", netd.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files in /proc/PID/limits");
    let fields: Vec<&str> = line.split_whitespace().collect();
    // "Max open files <soft> <hard> files"
    let (soft, hard) = (fields[3], fields[4]);
    assert_ne!(soft, "256", "{line}");
    assert_eq!(soft, hard, "{line}");
}

/// A second SIGINT during the shutdown grace period ends netd at once:
/// the open connection is closed, the control socket removed, the exit
/// status is non-zero and the log says why (issue 23, item 7).
#[test]
fn a_second_signal_during_the_grace_period_exits_now() {
    // The default grace period: 10s.
    let mut netd = Netd::start("");
    netd.netctl_ok(&["start", "tcp-echo", "d", "--listen", "127.0.0.1:0"]);
    let mut conn = TcpStream::connect(bound_addr(&netd, "d")).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = [0u8; 1];
    conn.write_all(b"x").unwrap();
    conn.read_exact(&mut buf).unwrap();
    let netd::util::addr::ControlAddr::Unix(socket) = netd.control.clone() else {
        panic!("unix control socket expected")
    };
    assert!(socket.exists());

    netd.signal(libc::SIGINT);
    // The first signal has been taken (two at once would be one).
    netd.wait_notify("STOPPING=1");
    let second = std::time::Instant::now();
    netd.signal(libc::SIGINT);
    let status = netd.wait_exit();
    let took = second.elapsed();
    let log = netd.log();
    assert!(
        took < Duration::from_secs(5),
        "netd took {took:?} after the second signal; log:\n{log}"
    );
    assert!(!status.success(), "exit status {status}; log:\n{log}");
    assert!(log.contains("second signal; exiting now"), "{log}");
    assert!(!socket.exists(), "the control socket is left behind");
    match conn.read(&mut buf) {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("{n} bytes from a connection netd should have closed"),
    }
}

/// The embedded default (no --config, no --state-dir) keeps nothing: a
/// change made with netctl is not in the next run, no state file appears
/// in the default state directory, the ready line says so, and the
/// control socket's directory netd created is gone after it (issue 23,
/// item 6). Run in a network namespace of its own, so the demo's fixed
/// ports cannot clash with anything.
#[test]
fn the_embedded_default_persists_nothing_without_state_dir() {
    let ns = crate::common::NetNs::new();
    let work = tempfile::tempdir().unwrap();
    let default_state = work.path().join("default-state");
    let run = |extra_state_dir: Option<&std::path::Path>| {
        let dir = tempfile::tempdir().unwrap();
        // A directory that does not exist yet, as /run/netd on a fresh
        // machine.
        let control = netd::util::addr::ControlAddr::Unix(dir.path().join("run/netd.sock"));
        let mut cmd = ns.command(NETD);
        cmd.env("NETD_TEST_DEFAULT_STATE_DIR", &default_state);
        match extra_state_dir {
            Some(d) => cmd.env("NETD_STATE_DIR", d),
            // Not the harness's per-test state directory either: the
            // default is what this is about.
            None => cmd.env_remove("NETD_STATE_DIR"),
        };
        Netd::spawn(cmd, dir, control)
    };
    let names = |netd: &Netd| -> Vec<String> {
        netd.netctl_json(&["list"])["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["name"].as_str().unwrap().to_string())
            .collect()
    };

    let mut netd = run(None);
    let log = netd.log();
    assert!(
        log.contains("state=none (embedded default; use --state-dir to keep changes)"),
        "{log}"
    );
    netd.netctl_ok(&["start", "tcp-echo", "x", "--listen", "127.0.0.1:0"]);
    netd.netctl_ok(&["stop", "echo"]);
    assert_eq!(names(&netd), ["udp-echo", "x"]);
    let run_dir = netd.dir.path().join("run");
    netd.signal(libc::SIGTERM);
    assert!(netd.wait_exit().success(), "{}", netd.log());
    assert!(
        !default_state.exists(),
        "the embedded default wrote {}",
        default_state.display()
    );
    assert!(!run_dir.exists(), "{} left behind", run_dir.display());

    // The next demo run starts from the demo again.
    let mut netd = run(None);
    assert_eq!(names(&netd), ["echo", "udp-echo"]);
    netd.signal(libc::SIGTERM);
    assert!(netd.wait_exit().success());

    // With --state-dir (here NETD_STATE_DIR), changes are kept.
    let kept = work.path().join("kept");
    std::fs::create_dir(&kept).unwrap();
    let mut netd = run(Some(&kept));
    assert!(
        netd.log()
            .contains(&format!("state={}", kept.join("listeners.state").display())),
        "{}",
        netd.log()
    );
    netd.netctl_ok(&["start", "tcp-echo", "x", "--listen", "127.0.0.1:0"]);
    netd.signal(libc::SIGTERM);
    assert!(netd.wait_exit().success());
    let netd = run(Some(&kept));
    assert_eq!(names(&netd), ["echo", "udp-echo", "x"]);
    assert!(!default_state.exists());
}
