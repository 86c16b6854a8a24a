//! `netctl top` and the sparklines of `netctl stats --watch`, driven through
//! a real terminal: tmux (`new-session -d -x W -y H`, `send-keys`,
//! `capture-pane -p`) against a real netd with real traffic on loopback.
//! Every wait polls the pane with a deadline; every tmux server has a
//! socket of its own (`-L`) and is killed when its test ends.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::{DEADLINE, NETCTL, Netd, bound_addr};

/// A tmux server of our own with one session.
struct Tmux {
    socket: String,
}

impl Tmux {
    /// A `width` x `height` session running `command` (through sh).
    fn start(width: u16, height: u16, command: &str) -> Tmux {
        static N: AtomicUsize = AtomicUsize::new(0);
        let socket = format!(
            "netd-top-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let t = Tmux { socket };
        let (w, h) = (width.to_string(), height.to_string());
        let ok = t
            .cmd(&["new-session", "-d", "-x", &w, "-y", &h, command])
            .status()
            .expect("run tmux (is it installed? .ci/run installs it)")
            .success();
        assert!(ok, "tmux new-session failed");
        t
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.socket, "-f", "/dev/null"]).args(args);
        c
    }

    fn capture(&self) -> String {
        let out = self
            .cmd(&["capture-pane", "-p", "-t", "0"])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A tmux format of the pane, e.g. `#{alternate_on}`.
    fn display(&self, format: &str) -> String {
        let out = self
            .cmd(&["display-message", "-p", "-t", "0", format])
            .output()
            .expect("tmux display-message");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "0"];
        args.extend_from_slice(keys);
        assert!(self.cmd(&args).status().expect("send-keys").success());
    }

    /// Poll the pane until `cond` holds; the last capture.
    fn wait_for(&self, what: &str, cond: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let screen = self.capture();
            if cond(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; the pane:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]).status();
    }
}

/// `netctl --control <netd> ARGS` as a shell command line.
fn netctl_line(netd: &Netd, args: &str) -> String {
    format!("{NETCTL} --control {} {args}", netd.control)
}

/// A client sending 4 KiB to `addr` and reading the echo every 20 ms, for
/// at most a minute or until dropped.
struct Traffic {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(addr: SocketAddr) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let Ok(mut s) = TcpStream::connect(addr) else {
                return;
            };
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let end = Instant::now() + Duration::from_secs(60);
            let mut buf = vec![0u8; 8192];
            while !flag.load(Ordering::Relaxed) && Instant::now() < end {
                if s.write_all(&[b'x'; 4096]).is_err() || s.read(&mut buf).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Traffic {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The table row of listener `name`: its cells split on whitespace.
fn row<'a>(screen: &'a str, name: &str) -> Option<Vec<&'a str>> {
    screen
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&name))
}

/// The order in which `names` appear on the screen.
fn order<'a>(screen: &str, names: &[&'a str]) -> Vec<&'a str> {
    let mut found: Vec<(usize, &str)> = names
        .iter()
        .filter_map(|n| {
            screen
                .lines()
                .position(|l| l.split_whitespace().next() == Some(*n))
                .map(|i| (i, *n))
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, n)| n).collect()
}

/// echo-busy (traffic through proxy-a), echo-idle, proxy-a (label
/// team=web, a latency fault).
fn three_listeners() -> (Netd, Traffic) {
    let netd = Netd::start("");
    netd.netctl_ok(&["start", "tcp-echo", "echo-busy", "--listen", "127.0.0.1:0"]);
    netd.netctl_ok(&["start", "tcp-echo", "echo-idle", "--listen", "127.0.0.1:0"]);
    let busy = bound_addr(&netd, "echo-busy").to_string();
    netd.netctl_ok(&[
        "start",
        "proxy",
        "proxy-a",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &busy,
        "--label",
        "team=web",
    ]);
    netd.netctl_ok(&[
        "fault",
        "add",
        "proxy-a",
        "slow",
        "--type",
        "latency",
        "--latency",
        "1ms",
    ]);
    let traffic = Traffic::start(bound_addr(&netd, "proxy-a"));
    (netd, traffic)
}

/// Rows and rates for real traffic; sorting by IN/s and reversing change
/// the order; the filter hides rows; the detail pane of the proxy shows
/// its upstream and its health.
#[test]
fn top_shows_rates_sorts_filters_and_details() {
    let (netd, _traffic) = three_listeners();
    let names = ["echo-busy", "echo-idle", "proxy-a"];
    let tmux = Tmux::start(200, 50, &netctl_line(&netd, "top"));
    let screen = tmux.wait_for("rows with a rate for proxy-a", |s| {
        row(s, "proxy-a").is_some_and(|r| r.get(3).is_some_and(|v| *v != "0"))
            && row(s, "echo-idle").is_some()
    });
    assert!(
        screen.contains("NAME▲"),
        "sorted by name at first:\n{screen}"
    );
    assert_eq!(order(&screen, &names), names, "{screen}");
    // GetCaller: root on the Unix socket is an admin, keys not greyed.
    assert!(screen.contains(" as admin"), "{screen}");
    assert!(!screen.contains("needs the admin role"), "{screen}");
    let busy = row(&screen, "proxy-a").expect("proxy-a");
    assert_eq!(&busy[1..3], ["proxy", "running"], "{screen}");
    tmux.wait_for("proxy-a's fault firing", |s| {
        row(s, "proxy-a").is_some_and(|r| r.get(8) == Some(&"firing"))
    });

    tmux.keys(&["4"]);
    let screen = tmux.wait_for("sorted by IN/s", |s| s.contains("IN/s▼"));
    assert_eq!(
        order(&screen, &names).last(),
        Some(&"echo-idle"),
        "the idle listener last by IN/s:\n{screen}"
    );
    tmux.keys(&["r"]);
    let screen = tmux.wait_for("reversed", |s| s.contains("IN/s▲"));
    assert_eq!(order(&screen, &names)[0], "echo-idle", "{screen}");

    tmux.keys(&["/", "team=web", "Enter"]);
    let screen = tmux.wait_for("echo rows filtered out", |s| {
        row(s, "echo-busy").is_none() && row(s, "echo-idle").is_none()
    });
    assert!(row(&screen, "proxy-a").is_some(), "{screen}");
    assert!(screen.contains("1 shown"), "{screen}");

    // proxy-a is the only row, so selected: its detail pane.
    let upstream = bound_addr(&netd, "echo-busy").to_string();
    let screen = tmux.wait_for("the proxy's upstream in the detail pane", |s| {
        s.contains(&format!("{upstream} healthy"))
    });
    assert!(screen.contains("upstreams"), "{screen}");
    assert!(screen.contains("proxy-a (proxy, running)"), "{screen}");

    // An admin's keys: the fault off and on again, then stop.
    let toxicity = || {
        let v = netd.netctl_json(&["fault", "ls", "proxy-a"]);
        v[0]["fault"]["toxicity"].clone()
    };
    assert!(toxicity().is_null(), "unset: 1");
    tmux.keys(&["f"]);
    tmux.wait_for("the confirmation", |s| s.contains("off or on? y/n"));
    tmux.keys(&["y"]);
    tmux.wait_for("the fault off", |s| s.contains("is off (toxicity 0)"));
    assert_eq!(toxicity(), serde_json::json!(0.0));
    tmux.keys(&["f"]);
    tmux.wait_for("the confirmation", |s| s.contains("off or on? y/n"));
    tmux.keys(&["y"]);
    tmux.wait_for("the fault on", |s| s.contains("of 'proxy-a' is on"));
    assert!(toxicity().is_null(), "back to 1");
    tmux.keys(&["x"]);
    tmux.wait_for("the confirmation", |s| s.contains("stop 'proxy-a'? y/n"));
    tmux.keys(&["y"]);
    tmux.wait_for("stopped", |s| {
        s.contains("stopped 'proxy-a'") && row(s, "proxy-a").is_none()
    });
    assert!(!netd.netctl(&["status", "proxy-a"]).status.success());
}

/// A viewer (uid 65534 on the Unix socket) sees the admin keys greyed out
/// with the reason, and the stop key is refused in the status line; the
/// listener keeps running.
#[test]
fn top_refuses_stop_to_a_viewer() {
    use std::os::unix::fs::PermissionsExt as _;
    let netd = Netd::start("");
    netd.netctl_ok(&["start", "tcp-echo", "keep", "--listen", "127.0.0.1:0"]);
    // netctl where uid 65534 may run it, and a socket it may reach.
    let bins = tempfile::tempdir().expect("tempdir");
    let netctl = bins.path().join("netctl");
    std::fs::copy(NETCTL, &netctl).expect("copy netctl");
    for p in [bins.path(), netctl.as_path()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let netd::util::addr::ControlAddr::Unix(sock) = &netd.control else {
        unreachable!("unix control socket")
    };
    std::fs::set_permissions(netd.dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod dir");
    std::fs::set_permissions(sock, std::fs::Permissions::from_mode(0o666)).expect("chmod sock");
    let line = format!(
        "setpriv --reuid 65534 --regid 65534 --clear-groups {} --control {} top",
        netctl.display(),
        netd.control
    );
    let tmux = Tmux::start(120, 30, &line);
    let screen = tmux.wait_for("the viewer's greyed admin keys", |s| {
        row(s, "keep").is_some() && s.contains("needs the admin role")
    });
    assert!(screen.contains("viewer"), "{screen}");
    tmux.keys(&["x"]);
    let screen = tmux.wait_for("the refusal", |s| s.contains("refused: stop"));
    assert!(
        !screen.contains("y/n"),
        "no confirmation for a viewer:\n{screen}"
    );
    tmux.keys(&["y"]);
    let status = netd.netctl_json(&["status", "keep"]);
    assert_eq!(status["state"], "running", "{status}");
}

/// `q` leaves the alternate screen, turns raw mode off (the shell's
/// terminal is canonical again) and shows the cursor; SIGTERM does too.
#[test]
fn top_restores_the_terminal_on_q_and_sigterm() {
    let netd = Netd::start("");
    netd.netctl_ok(&["start", "tcp-echo", "e", "--listen", "127.0.0.1:0"]);
    let tmux = Tmux::start(100, 30, "env PS1='top-test$ ' sh");
    tmux.wait_for("the shell prompt", |s| s.contains("top-test$"));
    let canonical = |tmux: &Tmux| {
        tmux.keys(&[
            "clear; stty -a | tr ' ' '\\n' | grep -x -- '-\\?icanon'",
            "Enter",
        ]);
        let s = tmux.wait_for("stty's answer", |s| {
            s.lines()
                .any(|l| l.trim() == "icanon" || l.trim() == "-icanon")
        });
        s.lines().any(|l| l.trim() == "icanon")
    };
    for how in ["q", "SIGTERM"] {
        tmux.keys(&["clear", "Enter"]);
        tmux.keys(&[&netctl_line(&netd, "top"), "Enter"]);
        tmux.wait_for("top", |s| {
            row(s, "e").is_some() && s.contains("netctl top:")
        });
        assert_eq!(
            tmux.display("#{alternate_on}"),
            "1",
            "top is on the alternate screen"
        );
        if how == "q" {
            tmux.keys(&["q"]);
        } else {
            let shell = tmux.display("#{pane_pid}");
            let children = std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children"))
                .expect("the shell's children");
            let pid: i32 = children
                .split_whitespace()
                .next()
                .and_then(|p| p.parse().ok())
                .expect("netctl's pid");
            // SAFETY: kill(2) on the netctl this test started.
            assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        }
        let screen = tmux.wait_for("the prompt again", |s| {
            !s.contains("netctl top:") && s.contains("top-test$")
        });
        assert_eq!(tmux.display("#{alternate_on}"), "0", "{how}: {screen}");
        assert_eq!(tmux.display("#{cursor_flag}"), "1", "{how}: cursor shown");
        assert!(canonical(&tmux), "{how}: raw mode is still on");
    }
}

/// When its terminal goes away (the tmux server is killed), top ends
/// rather than spin on a dead terminal.
#[test]
fn top_ends_when_its_terminal_goes_away() {
    let netd = Netd::start("");
    netd.netctl_ok(&["start", "tcp-echo", "e", "--listen", "127.0.0.1:0"]);
    // Not the session leader (the shell is): no SIGHUP for top.
    let tmux = Tmux::start(
        100,
        30,
        &format!("{}; sleep 600", netctl_line(&netd, "top")),
    );
    tmux.wait_for("top", |s| row(s, "e").is_some());
    let shell = tmux.display("#{pane_pid}");
    let pid = std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children"))
        .expect("the shell's children")
        .split_whitespace()
        .next()
        .expect("netctl's pid")
        .to_string();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).expect("netctl's comm");
    assert_eq!(comm.trim(), "netctl");
    let _ = tmux.cmd(&["kill-server"]).status();
    crate::common::wait_until("netctl top to end", || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(true)
    });
}

/// An 80x24 terminal: the header and rows render, no line is longer than
/// 80 columns (a long name is cut, the sparkline left out), and in fleet
/// mode a daemon that cannot be reached is a row saying so.
#[test]
fn top_fits_80x24_and_shows_an_unreachable_daemon() {
    let netd = Netd::start("");
    let long = "a-listener-with-a-name-longer-than-any-column-of-80-columns";
    netd.netctl_ok(&["start", "tcp-echo", long, "--listen", "127.0.0.1:0"]);
    netd.netctl_ok(&["start", "udp-echo", "u", "--listen", "127.0.0.1:0"]);
    let gone = tempfile::tempdir().expect("tempdir");
    let line = format!(
        "{NETCTL} --control {} --control unix:{}/none.sock top",
        netd.control,
        gone.path().display()
    );
    let tmux = Tmux::start(80, 24, &line);
    let screen = tmux.wait_for("rows and the unreachable daemon", |s| {
        s.contains("unreachable") && s.contains("udp-echo") && s.contains("a-listener-with")
    });
    assert!(
        screen.contains("HOST") && screen.contains("NAME"),
        "{screen}"
    );
    assert!(!screen.contains(long), "the long name is cut:\n{screen}");
    assert!(!screen.contains("LAST 1m"), "{screen}");
    assert_eq!(screen.lines().count(), 24, "{screen}");
    for l in screen.lines() {
        assert!(l.chars().count() <= 80, "a line wider than 80:\n{l}");
    }
    // No room for the detail pane at 80x24: Enter shows it under a few
    // rows of the table, Enter again hides it.
    assert!(!screen.contains(" detail "), "{screen}");
    tmux.keys(&["Enter"]);
    let screen = tmux.wait_for("the detail pane after Enter", |s| {
        s.contains(" detail ") && s.contains("│host ")
    });
    for l in screen.lines() {
        assert!(l.chars().count() <= 80, "a line wider than 80:\n{l}");
    }
    tmux.keys(&["Enter"]);
    tmux.wait_for("the detail pane hidden again", |s| !s.contains(" detail "));
}

/// With stdout not a terminal, top refuses (usage, exit 2) and says to use
/// `stats --watch`.
#[test]
fn top_refuses_without_a_terminal() {
    let netd = Netd::start("");
    let out = netd.netctl(&["top"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs a terminal"), "{err}");
    assert!(err.contains("netctl stats --watch"), "{err}");
    let out = netd.netctl(&["-o", "json", "top"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no JSON form"), "{err}");
}

/// `stats --watch` on a terminal has a LAST 1m column of blocks;
/// `--no-spark` leaves it out.
#[test]
fn stats_watch_shows_sparklines_unless_no_spark() {
    let (netd, _traffic) = three_listeners();
    let tmux = Tmux::start(
        220,
        20,
        &netctl_line(&netd, "stats --watch --interval 200ms"),
    );
    let screen = tmux.wait_for("a sparkline of proxy-a", |s| {
        s.contains("LAST 1m")
            && s.lines()
                .any(|l| l.starts_with("proxy-a") && l.contains('█'))
    });
    assert!(
        screen
            .lines()
            .any(|l| l.starts_with("echo-idle") && l.contains('▁')),
        "an idle listener's line is flat:\n{screen}"
    );
    drop(tmux);
    let tmux = Tmux::start(
        220,
        20,
        &netctl_line(&netd, "stats --watch --interval 200ms --no-spark"),
    );
    let screen = tmux.wait_for("the table", |s| row(s, "proxy-a").is_some());
    assert!(!screen.contains("LAST 1m"), "{screen}");
    assert!(!screen.contains('▁') && !screen.contains('█'), "{screen}");
}
