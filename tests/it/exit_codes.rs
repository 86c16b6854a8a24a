//! netctl's contract with scripts: exit codes by class (0 ok, 1 refused by
//! netd, 2 usage, 3 netd unreachable), a quiet exit 0 when its output
//! pipe is closed (`netctl events | head -1`), and help that tells the
//! command's options from the global ones.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::common::{NETCTL, Netd, wait_until};

fn code(out: &std::process::Output) -> i32 {
    out.status.code().expect("netctl exited by a signal")
}

#[test]
fn exit_codes_by_class() {
    let netd = Netd::start("");
    // 0
    let out = netd.netctl(&["list"]);
    assert_eq!(code(&out), 0);
    // 1: netd refused (unknown name, port in use).
    let out = netd.netctl(&["stop", "nope"]);
    assert_eq!(code(&out), 1, "{}", String::from_utf8_lossy(&out.stderr));
    netd.netctl_ok(&["start", "tcp-echo", "e", "--listen", "127.0.0.1:0"]);
    let taken = crate::common::bound_addr(&netd, "e").to_string();
    let out = netd.netctl(&["start", "tcp-echo", "f", "--listen", &taken]);
    assert_eq!(code(&out), 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("already in use"));
    // 2: usage, found before anything is sent.
    let out = netd.netctl(&["start", "tcp-echo"]);
    assert_eq!(code(&out), 2);
    let out = netd.netctl(&["probe", "tcp", "not-an-address"]);
    assert_eq!(code(&out), 2, "{}", String::from_utf8_lossy(&out.stderr));
    let out = netd.netctl(&["update", "e", "--upstream", "127.0.0.1:1"]);
    assert_eq!(code(&out), 2, "{}", String::from_utf8_lossy(&out.stderr));
    let out = netd.netctl(&["apply", "-f", "/nonexistent/apply.toml"]);
    assert_eq!(code(&out), 2);
    // 3: nobody there.
    let gone = netd.dir.path().join("nobody.sock");
    let out = Command::new(NETCTL)
        .args(["--control", &format!("unix:{}", gone.display()), "list"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 3, "{}", String::from_utf8_lossy(&out.stderr));
    let port = crate::common::free_tcp_port();
    let out = Command::new(NETCTL)
        .args([
            "--control",
            &format!("127.0.0.1:{port}"),
            "--connect-timeout",
            "2s",
            "list",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&out), 3, "{}", String::from_utf8_lossy(&out.stderr));
    // The codes are documented in --help.
    let help = Command::new(NETCTL).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("3 netd unreachable"), "{help}");
}

#[test]
fn a_closed_output_pipe_ends_netctl_quietly_with_0() {
    let netd = Netd::start("");
    let mut events = Command::new(NETCTL)
        .args(["--control", &netd.control.to_string(), "events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    read_one_event_then_close(&netd, events.stdout.take().unwrap());
    // More events now meet a closed pipe.
    for i in 0..3 {
        netd.netctl_ok(&[
            "start",
            "tcp-echo",
            &format!("late{i}"),
            "--listen",
            "127.0.0.1:0",
        ]);
    }
    let deadline = std::time::Instant::now() + crate::common::DEADLINE;
    let status = loop {
        if let Some(s) = events.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "netctl events kept running"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut events.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(0), "stderr: {err}");
    assert!(err.is_empty(), "{err}");
}

/// `netctl events | head -1`: once the reader has its line and is gone,
/// netctl ends at once with 0, without waiting for an event that would
/// meet the closed pipe (none comes here).
#[test]
fn events_ends_when_its_reader_goes_without_another_event() {
    let netd = Netd::start("");
    let mut events = Command::new(NETCTL)
        .args(["--control", &netd.control.to_string(), "events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    read_one_event_then_close(&netd, events.stdout.take().unwrap());
    // No further event: netctl must notice the closed pipe by itself.
    let mut status = None;
    wait_until("netctl events to exit after its reader left", || {
        status = events.try_wait().unwrap();
        status.is_some()
    });
    let mut err = String::new();
    std::io::Read::read_to_string(&mut events.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(0), "stderr: {err}");
    assert!(err.is_empty(), "{err}");
}

/// `export` writes the TOML `apply -f` reads; asked for JSON it says so
/// (exit 2) instead of printing TOML under `-o json`.
#[test]
fn json_export_is_refused_with_a_pointer_to_list() {
    let netd = Netd::start("");
    let out = netd.netctl(&["-o", "json", "export"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code(&out), 2, "{err}");
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(err.contains("netctl -o json list"), "{err}");
    // Without -o json, export is unchanged.
    let toml = netd.netctl_ok(&["export"]);
    assert!(!toml.trim_start().starts_with('{'), "{toml}");
}

/// `netctl start KIND --help`: the options every command takes have a
/// heading of their own, and the proxy's upstream connect timeout is not
/// spelled like netctl's own --connect-timeout.
#[test]
fn start_help_lists_global_options_apart() {
    let out = Command::new(NETCTL)
        .args(["start", "proxy", "--help"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0);
    let help = String::from_utf8_lossy(&out.stdout);
    let (own, global) = help
        .split_once("Global options:")
        .unwrap_or_else(|| panic!("no 'Global options:' heading:\n{help}"));
    for flag in ["--control", "--cacert", "--cert", "--key", "--output"] {
        assert!(
            !own.contains(flag),
            "{flag} among the kind's options:\n{help}"
        );
        assert!(
            global.contains(flag),
            "{flag} not under Global options:\n{help}"
        );
    }
    assert!(own.contains("--upstream-connect-timeout"), "{help}");
    assert!(!help.contains("    --connect-timeout"), "{help}");
}

/// Read the first line of `netctl events` from `stdout`, then close the
/// pipe, as `| head -1` does. Events only flow once the watch is open, so
/// listeners are started until the line arrives.
fn read_one_event_then_close(netd: &Netd, stdout: std::process::ChildStdout) {
    let reader = std::thread::spawn(move || {
        let mut first = String::new();
        BufReader::new(stdout).read_line(&mut first).unwrap();
        first
        // The pipe's read end is dropped here, as head's is at exit.
    });
    let mut n = 0;
    wait_until("the first event line", || {
        n += 1;
        netd.netctl_ok(&[
            "start",
            "tcp-echo",
            &format!("e{n}"),
            "--listen",
            "127.0.0.1:0",
        ]);
        reader.is_finished()
    });
    let first = reader.join().unwrap();
    assert!(first.contains("started"), "{first}");
}
