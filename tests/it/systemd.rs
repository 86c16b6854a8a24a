//! netd under systemd's eyes: the watchdog pings (WATCHDOG=1 on
//! NOTIFY_SOCKET) that `WatchdogSec=` asks for, with the environment systemd
//! sets (WATCHDOG_USEC, WATCHDOG_PID), and the packaged unit's checks with
//! `systemd-analyze` when it is installed.
//!
//! The heartbeat's "stop pinging when the runtime or the registry wedges"
//! logic is unit-tested with an injected clock in daemon/notify.rs: the
//! product has no hook to wedge itself on purpose.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::common::{NETCTL, NETD, Netd};
use netd::util::addr::ControlAddr;

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

// ---- The packaged unit, sysusers and tmpfiles files (deploy/) ----------
//
// These run systemd's own tools on the files when they are installed
// (.ci/run installs the `systemd` package for them; systemd need not be
// running) and say so on stderr when they are not.

/// The exposure `systemd-analyze security` gives deploy/netd.service, in
/// tenths, as docs/systemd.md and the unit's comment state it (1.6).
const EXPOSURE_TENTHS: u32 = 16;

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(file)
}

/// `tool args...` if the tool is installed; `None` (and a note) if not.
fn systemd_tool(tool: &str, args: &[&std::ffi::OsStr]) -> Option<Output> {
    match Command::new(tool).args(args).output() {
        Ok(out) => Some(out),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("{tool} is not installed: check skipped (apt-get install systemd)");
            None
        }
        Err(e) => panic!("running {tool}: {e}"),
    }
}

/// systemd's major version from `systemd-analyze --version`.
fn systemd_version() -> Option<u32> {
    let out = systemd_tool("systemd-analyze", &["--version".as_ref()])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text.split_whitespace().nth(1)?.parse().ok();
    assert!(v.is_some(), "unexpected systemd-analyze --version: {text}");
    v
}

#[test]
fn the_unit_keeps_its_security_exposure() {
    let unit = deploy("netd.service");
    let threshold = format!("--threshold={EXPOSURE_TENTHS}");
    let Some(out) = systemd_tool(
        "systemd-analyze",
        &[
            "security".as_ref(),
            "--offline=true".as_ref(),
            threshold.as_ref(),
            unit.as_os_str(),
        ],
    ) else {
        return;
    };
    assert!(
        out.status.success(),
        "deploy/netd.service is more exposed than {}.{} (docs/systemd.md): \
         tighten it or document why, and update the number\n{}{}",
        EXPOSURE_TENTHS / 10,
        EXPOSURE_TENTHS % 10,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_unit_verifies() {
    let Some(version) = systemd_version() else {
        return;
    };
    // verify wants the binaries to exist: point it at the ones built. The
    // same unit for every systemd from 247 on: no drop-in, whatever the
    // version.
    let unit = std::fs::read_to_string(deploy("netd.service"))
        .unwrap()
        .replace("ExecStart=/usr/bin/netd ", &format!("ExecStart={NETD} "))
        .replace(
            "ExecReload=/usr/bin/netctl ",
            &format!("ExecReload={NETCTL} "),
        );
    assert!(
        unit.contains("\nType=notify\n"),
        "Type=notify-reload needs systemd 253"
    );
    assert!(!unit.contains("notify-reload"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("netd.service");
    std::fs::write(&path, unit).unwrap();
    let out = systemd_tool(
        "systemd-analyze",
        &[
            "verify".as_ref(),
            // Documentation= names man pages the package installs, not
            // this machine (tests/it/systemd_live.rs checks them).
            "--man=no".as_ref(),
            path.as_os_str(),
        ],
    )
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify (systemd {version}): {stderr}"
    );
}

#[test]
fn sysusers_and_tmpfiles_create_the_user_and_the_config_directory() {
    // Into a scratch root, the way the install sequence does it on a host.
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    std::fs::create_dir_all(r.join("etc")).unwrap();
    for (file, dir) in [
        ("netd.sysusers", "sysusers.d"),
        ("netd.tmpfiles", "tmpfiles.d"),
    ] {
        let to = r.join("usr/lib").join(dir);
        std::fs::create_dir_all(&to).unwrap();
        std::fs::copy(deploy(file), to.join("netd.conf")).unwrap();
    }
    let root_arg = format!("--root={}", r.display());
    let Some(out) = systemd_tool(
        "systemd-sysusers",
        &[root_arg.as_ref(), "netd.conf".as_ref()],
    ) else {
        return;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let passwd = std::fs::read_to_string(r.join("etc/passwd")).unwrap();
    let user: Vec<&str> = passwd
        .lines()
        .find(|l| l.starts_with("netd:"))
        .unwrap_or_else(|| panic!("no netd user in {passwd}"))
        .split(':')
        .collect();
    let uid: u32 = user[2].parse().unwrap();
    let gid: u32 = user[3].parse().unwrap();
    assert!(uid > 0 && uid < 1000, "not a system uid: {uid}");
    assert_eq!(&user[5..], ["/var/lib/netd", "/usr/sbin/nologin"]);
    let group = std::fs::read_to_string(r.join("etc/group")).unwrap();
    assert!(
        group
            .lines()
            .any(|l| l.starts_with(&format!("netd:x:{gid}:"))),
        "no netd group with gid {gid} in {group}"
    );

    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: systemd-tmpfiles cannot chown; tmpfiles check skipped");
        return;
    }
    let out = systemd_tool(
        "systemd-tmpfiles",
        &[root_arg.as_ref(), "--create".as_ref(), "netd.conf".as_ref()],
    )
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(r.join("etc/netd")).unwrap();
    assert!(meta.is_dir());
    assert_eq!(
        (meta.mode() & 0o7777, meta.uid(), meta.gid()),
        (0o750, 0, gid)
    );
}
