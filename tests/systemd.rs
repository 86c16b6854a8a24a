//! netd under systemd's eyes: the watchdog pings (WATCHDOG=1 on
//! NOTIFY_SOCKET) that `WatchdogSec=` asks for, with the environment systemd
//! sets (WATCHDOG_USEC, WATCHDOG_PID), and the packaged unit's checks with
//! `systemd-analyze` when it is installed.
//!
//! The heartbeat's "stop pinging when the runtime or the registry wedges"
//! logic is unit-tested with an injected clock in daemon/notify.rs: the
//! product has no hook to wedge itself on purpose.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{NETD, Netd};
use netd::addr::ControlAddr;

const CONFIG: &str = r#"
[[listener]]
name = "echo"
kind = "tcp-echo"
listen = "127.0.0.1:0"
"#;

/// Long enough for several pings at the intervals used here (every 100 ms
/// for WATCHDOG_USEC=200000), short enough to keep the suite quick.
const QUIET_WINDOW: Duration = Duration::from_secs(2);

/// Start netd through `sh`, which sets WATCHDOG_PID to `pid` (`$$` is the
/// shell's pid, which `exec` hands to netd, the way systemd passes the
/// service's own pid) and WATCHDOG_USEC to `usec`.
fn start_via_shell(pid: &str, usec: &str) -> Netd {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("netd.toml");
    std::fs::write(&cfg, CONFIG).expect("write config");
    let control = ControlAddr::Unix(dir.path().join("netd.sock"));
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "WATCHDOG_PID={pid} WATCHDOG_USEC={usec} exec \"$0\" --config \"$1\""
        ))
        .arg(NETD)
        .arg(&cfg);
    Netd::spawn(cmd, dir, control)
}

#[test]
fn watchdog_pings_while_serving_and_stops_with_a_clean_exit() {
    let mut netd = Netd::start_with_env(CONFIG, &[("WATCHDOG_USEC", "500000")]);
    // Several pings, with the registry in use between them.
    for i in 0..4 {
        netd.wait_notify("WATCHDOG=1");
        netd.netctl_ok(&[
            "start",
            "tcp-echo",
            &format!("e{i}"),
            "--listen",
            "127.0.0.1:0",
        ]);
    }
    let log = netd.log();
    assert!(
        log.contains("systemd watchdog on") && log.contains("interval=500ms"),
        "no start line with the interval; log:\n{log}"
    );
    assert!(!log.contains("withholding"), "pings withheld; log:\n{log}");

    netd.signal(libc::SIGTERM);
    let status = netd.wait_exit();
    assert!(status.success(), "exit {status}; log:\n{}", netd.log());
    assert!(netd.log().contains("netd stopped"));
}

#[test]
fn no_watchdog_without_watchdog_usec() {
    let mut netd = Netd::start(CONFIG);
    assert_eq!(netd.count_notify_within("WATCHDOG=1", QUIET_WINDOW), 0);
    assert!(!netd.log().contains("watchdog"), "log:\n{}", netd.log());
}

#[test]
fn watchdog_pid_names_the_process_meant() {
    // Ours (as systemd sets it): on.
    let mut netd = start_via_shell("$$", "200000");
    for _ in 0..3 {
        netd.wait_notify("WATCHDOG=1");
    }
    drop(netd);

    // Another process's (a parent that exec'd us without clearing it): off.
    let mut netd = start_via_shell("1", "200000");
    assert_eq!(netd.count_notify_within("WATCHDOG=1", QUIET_WINDOW), 0);
    assert!(!netd.log().contains("watchdog on"), "log:\n{}", netd.log());
}

#[test]
fn a_bad_watchdog_usec_is_reported_and_netd_still_serves() {
    let mut netd = Netd::start_with_env(CONFIG, &[("WATCHDOG_USEC", "30s")]);
    assert_eq!(netd.count_notify_within("WATCHDOG=1", QUIET_WINDOW), 0);
    let log = netd.log();
    assert!(
        log.contains("watchdog off") && log.contains("not a number of microseconds"),
        "log:\n{log}"
    );
    netd.netctl_ok(&["list"]);
}
