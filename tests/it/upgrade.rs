//! Restart and upgrade without refusing connections, against the real
//! binaries: `netd --upgrade` under a client loop (no connection refused,
//! the same listeners, an open connection drained by the old process,
//! UDP answered throughout); a failed upgrade leaves the old process in
//! charge; a hand-over in progress refuses changes; and systemd's fd store,
//! emulated by the test (FDSTORE=1 messages in, LISTEN_FDS out), carries
//! the sockets across a SIGTERM and a new start.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::common::{Netd, bound_addr, wait_until};
use serde_json::Value;

const CONFIG: &str = r#"
shutdown_grace = "60s"

[[listener]]
name = "echo"
kind = "tcp-echo"
listen = "127.0.0.1:0"
prefix = "echo: "

[[listener]]
name = "uecho"
kind = "udp-echo"
listen = "127.0.0.1:0"
prefix = "u: "
"#;

/// Listeners as (name, spec, bound address), sorted by name.
fn listeners(netd: &Netd) -> Vec<(String, Value, String)> {
    let v = netd.netctl_json(&["list"]);
    v["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["name"].as_str().unwrap().to_string(),
                l["spec"].clone(),
                l["bound_addr"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn round_trip(c: &mut TcpStream, msg: &str) -> String {
    c.write_all(msg.as_bytes()).unwrap();
    let mut buf = [0u8; 256];
    let n = c.read(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// What a client loop saw.
#[derive(Debug, Default)]
struct Outcome {
    ok: u64,
    failed: Vec<String>,
    udp_ok: u64,
    udp_failed: u64,
}

/// A client connecting to `tcp` 50 times a second (one message and its
/// echo per connection) and, when given, sending a datagram to `udp` each
/// time, until `stop` or 30 s. `started` counts finished connections.
fn client_loop(
    tcp: SocketAddr,
    udp: Option<SocketAddr>,
    stop: Arc<AtomicBool>,
    started: Arc<AtomicU64>,
) -> std::thread::JoinHandle<Outcome> {
    std::thread::spawn(move || {
        let mut out = Outcome::default();
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        u.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let end = Instant::now() + Duration::from_secs(30);
        let mut i = 0u64;
        // Ends early after 20 failures: the test fails anyway.
        while !stop.load(Ordering::Relaxed)
            && Instant::now() < end
            && i < 1500
            && out.failed.len() as u64 + out.udp_failed < 20
        {
            let tick = Instant::now();
            let msg = format!("ping {i}\n");
            let r = (|| -> std::io::Result<()> {
                let mut c = TcpStream::connect_timeout(&tcp, Duration::from_secs(5))?;
                c.set_read_timeout(Some(Duration::from_secs(10)))?;
                c.write_all(msg.as_bytes())?;
                let want = format!("echo: {msg}");
                let mut got = vec![0u8; want.len()];
                c.read_exact(&mut got)?;
                if got != want.as_bytes() {
                    return Err(std::io::Error::other(format!(
                        "got {:?}",
                        String::from_utf8_lossy(&got)
                    )));
                }
                Ok(())
            })();
            match r {
                Ok(()) => out.ok += 1,
                Err(e) => out.failed.push(format!("connection {i}: {e}")),
            }
            if let Some(udp) = udp {
                // A datagram may be read by either process; each gets an
                // answer. Up to 3 tries: loss is not refusal, but on
                // loopback there should be none.
                let answered = (0..3).any(|_| {
                    let mut buf = [0u8; 64];
                    u.send_to(b"d", udp).is_ok()
                        && u.recv_from(&mut buf)
                            .is_ok_and(|(n, _)| &buf[..n] == b"u: d")
                });
                if answered {
                    out.udp_ok += 1;
                } else {
                    out.udp_failed += 1;
                }
            }
            started.fetch_add(1, Ordering::Relaxed);
            i += 1;
            if let Some(rest) = Duration::from_millis(20).checked_sub(tick.elapsed()) {
                std::thread::sleep(rest);
            }
        }
        out
    })
}

/// Whether the state file (a protobuf) holds `name`.
fn has(state: &[u8], name: &str) -> bool {
    state.windows(name.len()).any(|w| w == name.as_bytes())
}

fn udp_addr(netd: &Netd, name: &str) -> SocketAddr {
    bound_addr(netd, name)
}

#[test]
fn upgrade_refuses_nothing_keeps_the_listeners_and_drains_the_old_process() {
    let mut old = Netd::start(CONFIG);
    old.netctl_ok(&["start", "tcp-echo", "rt", "--listen", "127.0.0.1:0"]);
    let before = listeners(&old);
    assert_eq!(before.len(), 3, "{before:?}");
    let echo = bound_addr(&old, "echo");
    let uecho = udp_addr(&old, "uecho");
    let mut open = TcpStream::connect(echo).unwrap();
    open.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    assert_eq!(round_trip(&mut open, "before\n"), "echo: before\n");

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let clients = client_loop(echo, Some(uecho), stop.clone(), done.clone());
    wait_until("the client loop to run", || {
        done.load(Ordering::Relaxed) >= 20
    });

    let new = old.upgrade();
    assert_ne!(new.pid(), old.pid());
    // The old process hands over and stops taking control calls; it stays
    // up while the connection opened to it is open.
    wait_until("the old netd to hand over", || {
        old.log().contains("has taken over")
    });
    let mark = done.load(Ordering::Relaxed);
    wait_until("the client loop to run after the upgrade", || {
        done.load(Ordering::Relaxed) >= mark + 50 || clients.is_finished()
    });
    stop.store(true, Ordering::Relaxed);
    let outcome = clients.join().unwrap();
    eprintln!("upgrade: {outcome:?}");
    assert!(
        outcome.failed.is_empty(),
        "{} of {} connections failed: {:?}\nold log:\n{}\nnew log:\n{}",
        outcome.failed.len(),
        outcome.ok + outcome.failed.len() as u64,
        outcome.failed,
        old.log(),
        new.log()
    );
    assert_eq!(outcome.udp_failed, 0, "{outcome:?}");
    assert!(outcome.ok >= 70 && outcome.udp_ok >= 70, "{outcome:?}");

    // Same listeners, specs and addresses, from the new process.
    assert_eq!(listeners(&new), before);
    assert!(
        new.log().contains("took over from the old netd"),
        "{}",
        new.log()
    );

    // The connection opened before the upgrade is served by the old
    // process until it closes; then the old process exits 0.
    assert!(
        old.exited().is_none(),
        "old netd exited with a connection open"
    );
    assert_eq!(round_trip(&mut open, "after\n"), "echo: after\n");
    drop(open);
    let status = old.wait_exit();
    assert!(status.success(), "old netd: {status}\n{}", old.log());

    // The new process is in charge: changes are accepted and saved; the
    // control socket file is still there, and the hand-over socket is the
    // new process's (a second upgrade would find it).
    new.netctl_ok(&["start", "tcp-echo", "later", "--listen", "127.0.0.1:0"]);
    let netd::util::addr::ControlAddr::Unix(control) = &new.control else {
        unreachable!()
    };
    assert!(std::path::Path::new(&format!("{}.handover", control.display())).exists());
    let state = std::fs::read(old.dir.path().join("state/listeners.state")).unwrap();
    assert!(has(&state, "later") && has(&state, "rt"));
    let mut c = TcpStream::connect(bound_addr(&new, "rt")).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    assert_eq!(round_trip(&mut c, "x"), "x");
}

#[test]
fn a_failed_upgrade_leaves_the_old_process_in_charge() {
    let old = Netd::start(CONFIG);
    let echo = bound_addr(&old, "echo");
    // The new config has a listener on a port the test holds: its boot
    // fails after it received the sockets, before it says DONE.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let bad = old.dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!(
            "{CONFIG}\n[[listener]]\nname = \"blocked\"\nkind = \"tcp-echo\"\nlisten = \"{}\"\n",
            taken.local_addr().unwrap()
        ),
    )
    .unwrap();
    let mut cmd = old.upgrade_command(Some(&bad));
    cmd.env_remove("NOTIFY_SOCKET");
    let out = crate::common::output_within_deadline(cmd).expect("the failing upgrade to exit");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("blocked"), "{err}");

    // The old one carries on: changes are accepted (once it has seen the
    // new process go) and saved; its listeners answer.
    wait_until("the old netd to accept changes again", || {
        let o = old.netctl(&["start", "tcp-echo", "later", "--listen", "127.0.0.1:0"]);
        if !o.status.success() {
            let e = String::from_utf8_lossy(&o.stderr);
            assert!(e.contains("handing over"), "{e}");
        }
        o.status.success()
    });
    assert!(old.log().contains("carrying on"), "{}", old.log());
    let state = std::fs::read(old.dir.path().join("state/listeners.state")).unwrap();
    assert!(has(&state, "later"));
    let mut c = TcpStream::connect(echo).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    assert_eq!(round_trip(&mut c, "still\n"), "echo: still\n");
}

#[test]
fn a_hand_over_in_progress_refuses_changes_and_a_vanished_successor_is_survived() {
    use std::os::fd::AsFd;
    let old = Netd::start(CONFIG);
    let netd::util::addr::ControlAddr::Unix(control) = &old.control else {
        unreachable!()
    };
    let path = format!("{}.handover", control.display());
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o600
    );
    // Play the new process: ask, take the sockets, then vanish.
    let s = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::SEQPACKET, None).unwrap();
    s.connect(&socket2::SockAddr::unix(&path).unwrap()).unwrap();
    netd::sys::fdpass::send_with_fds(s.as_fd(), b"NETD-HANDOVER/1", &[]).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let (n, fds) = netd::sys::fdpass::recv_with_fds(s.as_fd(), &mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    let mut lines: Vec<&str> = text.lines().skip(1).collect();
    lines.sort();
    // The udp-echo is a group: a socket per worker (udp_workers.rs).
    let mut want = vec!["-control unix".to_string(), "echo tcp".to_string()];
    want.extend(crate::udp_workers::group_names("uecho").map(|n| format!("{n} udp")));
    want.sort();
    assert_eq!(lines, want, "{text}");
    assert_eq!(fds.len(), want.len());
    let err = old.netctl_err(&["start", "tcp-echo", "x", "--listen", "127.0.0.1:0"]);
    assert!(err.contains("handing over"), "{err}");
    // Reads still work.
    old.netctl_ok(&["list"]);
    drop(s);
    drop(fds);
    wait_until("the old netd to accept changes again", || {
        old.netctl(&["start", "tcp-echo", "x", "--listen", "127.0.0.1:0"])
            .status
            .success()
    });
}

#[test]
fn the_fd_store_carries_the_sockets_across_a_restart() {
    // As under systemd 254+ with FileDescriptorStoreMax=64.
    let env = [("FDSTORE", "64")];
    let mut cmd = std::process::Command::new(crate::common::NETD);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("netd.toml"), CONFIG).unwrap();
    cmd.arg("--config").arg(dir.path().join("netd.toml"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let control = netd::util::addr::ControlAddr::Unix(dir.path().join("netd.sock"));
    let mut first = Netd::spawn(cmd, dir, control);
    let echo = bound_addr(&first, "echo");
    let uecho = bound_addr(&first, "uecho");
    wait_until("the sockets in the fd store", || {
        let mut names = first.fd_store_names();
        names.sort();
        let mut want = vec!["-control".to_string(), "echo".to_string()];
        want.extend(crate::udp_workers::group_names("uecho"));
        want.sort();
        names == want
    });

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let clients = client_loop(echo, Some(uecho), stop.clone(), done.clone());
    wait_until("the client loop to run", || {
        done.load(Ordering::Relaxed) >= 20
    });

    // systemctl restart: SIGTERM, wait, start with the store's sockets.
    first.signal(libc::SIGTERM);
    assert!(first.wait_exit().success(), "{}", first.log());
    let stored = first.take_fd_store();
    let dir = std::mem::replace(&mut first.dir, tempfile::tempdir().unwrap());
    let mut second = Netd::start_with_fds(dir, stored, &env);
    let mark = done.load(Ordering::Relaxed);
    wait_until("the client loop to run after the restart", || {
        done.load(Ordering::Relaxed) >= mark + 50 || clients.is_finished()
    });
    stop.store(true, Ordering::Relaxed);
    let outcome = clients.join().unwrap();
    eprintln!("restart: {outcome:?}");
    assert!(
        outcome.failed.is_empty(),
        "{} connections failed: {:?}\nlog:\n{}",
        outcome.failed.len(),
        outcome.failed,
        second.log()
    );
    assert_eq!(outcome.udp_failed, 0, "{outcome:?}");
    assert_eq!(bound_addr(&second, "echo"), echo);
    assert_eq!(bound_addr(&second, "uecho"), uecho);
    let log = second.log();
    assert!(
        log.contains("taking the sockets kept in systemd's fd store")
            && !log.contains("not using the control socket"),
        "{log}"
    );

    // The new process stores its sockets; a stopped listener leaves the
    // store.
    wait_until("the second netd's sockets in the fd store", || {
        second.fd_store_names().contains(&"echo".to_string())
    });
    second.netctl_ok(&["stop", "echo"]);
    wait_until("FDSTOREREMOVE for the stopped listener", || {
        !second.fd_store_names().contains(&"echo".to_string())
    });
    assert!(second.fd_store_names().contains(&"uecho".to_string()));
}

/// A proxy's SO_REUSEPORT group (one socket per worker) crosses a restart
/// through the fd store (every member stored, as `p`, `p@1`, ...) and a
/// `netd --upgrade` whole: the same sockets, every one held by the new
/// process, no connection refused through either.
#[test]
fn the_fd_store_and_an_upgrade_carry_every_socket_of_a_group() {
    use crate::reuseport::{group_size, listening_inodes, socket_inodes_of};
    let n = group_size();
    let up = crate::common::TestUpstream::echo(b"echo: ");
    let config = format!(
        "shutdown_grace = \"60s\"\n\n[[listener]]\nname = \"p\"\nkind = \"proxy\"\n\
         listen = \"127.0.0.1:0\"\nupstreams = [\"{}\"]\n",
        up.addr
    );
    let env = [("FDSTORE", "64")];
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("netd.toml"), &config).unwrap();
    let mut cmd = std::process::Command::new(crate::common::NETD);
    cmd.arg("--config").arg(dir.path().join("netd.toml"));
    cmd.envs(env);
    let control = netd::util::addr::ControlAddr::Unix(dir.path().join("netd.sock"));
    let mut first = Netd::spawn(cmd, dir, control);
    let p = bound_addr(&first, "p");
    let group = listening_inodes(p.port());
    assert_eq!(group.len(), n, "sockets listening on {p}");
    let mut want: Vec<String> = (0..n)
        .map(|i| match i {
            0 => "p".to_string(),
            i => format!("p@{i}"),
        })
        .chain(["-control".to_string()])
        .collect();
    want.sort();
    wait_until("every socket of the group in the fd store", || {
        let mut names = first.fd_store_names();
        names.sort();
        names == want
    });

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let clients = client_loop(p, None, stop.clone(), done.clone());
    wait_until("the client loop to run", || {
        done.load(Ordering::Relaxed) >= 20
    });

    // systemctl restart with the store's sockets: the same group.
    first.signal(libc::SIGTERM);
    assert!(first.wait_exit().success(), "{}", first.log());
    let stored = first.take_fd_store();
    let dir = std::mem::replace(&mut first.dir, tempfile::tempdir().unwrap());
    let second = Netd::start_with_fds(dir, stored, &env);
    assert_eq!(listening_inodes(p.port()), group);
    assert!(group.is_subset(&socket_inodes_of(second.pid())));
    let mark = done.load(Ordering::Relaxed);
    wait_until("the client loop to run after the restart", || {
        done.load(Ordering::Relaxed) >= mark + 20 || clients.is_finished()
    });

    // netd --upgrade: the same group again, in the new process.
    let mut second = second;
    let third = second.upgrade();
    wait_until("the old netd to hand over", || {
        second.log().contains("has taken over")
    });
    let mark = done.load(Ordering::Relaxed);
    wait_until("the client loop to run after the upgrade", || {
        done.load(Ordering::Relaxed) >= mark + 20 || clients.is_finished()
    });
    stop.store(true, Ordering::Relaxed);
    let outcome = clients.join().unwrap();
    eprintln!("group: {outcome:?}");
    assert!(
        outcome.failed.is_empty(),
        "{} connections failed: {:?}\nsecond log:\n{}\nthird log:\n{}",
        outcome.failed.len(),
        outcome.failed,
        second.log(),
        third.log()
    );
    assert_eq!(listening_inodes(p.port()), group);
    assert!(group.is_subset(&socket_inodes_of(third.pid())));
    assert!(second.wait_exit().success(), "{}", second.log());
    assert_eq!(listening_inodes(p.port()), group);
    // The connections made after the hand-over reached the new netd.
    let stats = third.netctl_json(&["status", "p"])["stats"].clone();
    assert!(
        stats["connections_total"].as_u64().is_some_and(|n| n > 0),
        "{stats}"
    );
}
