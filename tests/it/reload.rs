//! `netctl reload` (the Reload RPC, the systemd unit's ExecReload=): the
//! config file is re-read on SIGHUP's code path and the call returns when
//! the change is applied, or fails with the reason while the running config
//! keeps serving. Also: `netd ready … listeners=N` counts every listener,
//! restored ones included.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;

use crate::common::{Netd, bound_addr};

const ONE: &str = "\
[[listener]]\nname = \"a\"\nkind = \"tcp-echo\"\nlisten = \"127.0.0.1:0\"\nprefix = \"A: \"\n";

const TWO: &str = "\
[[listener]]\nname = \"a\"\nkind = \"tcp-echo\"\nlisten = \"127.0.0.1:0\"\nprefix = \"A: \"\n\
[[listener]]\nname = \"b\"\nkind = \"udp-echo\"\nlisten = \"127.0.0.1:0\"\n";

fn echo(addr: std::net::SocketAddr) -> String {
    let mut c = TcpStream::connect(addr).expect("connect to the echo");
    c.set_read_timeout(Some(crate::common::DEADLINE))
        .expect("read timeout");
    c.write_all(b"hi\n").expect("write");
    let mut buf = [0u8; 16];
    let mut got = Vec::new();
    while !got.ends_with(b"\n") {
        let n = c.read(&mut buf).expect("read");
        assert!(n > 0, "echo closed early");
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn netctl_reload_applies_the_change_prints_it_and_is_audited() {
    let netd = Netd::start(ONE);
    netd.write_config(TWO);
    let out = netd.netctl_ok(&["reload"]);
    assert!(
        out.lines()
            .any(|l| l.starts_with("create") && l.contains(" b ") && l.contains("udp-echo")),
        "{out}"
    );
    assert!(out.contains("1 created"), "{out}");
    // Applied when the call returned: no waiting.
    let list = netd.netctl_json(&["list"]);
    let names: Vec<&str> = list["listeners"]
        .as_array()
        .expect("listeners")
        .iter()
        .filter_map(|l| l["name"].as_str())
        .collect();
    assert_eq!(names, ["a", "b"]);
    let log = netd.log();
    assert!(
        log.lines()
            .any(|l| l.contains("rpc=\"Reload\"") && l.contains("audit: ok")),
        "no audit line for Reload; log:\n{log}"
    );

    // Nothing changed: still a success, and JSON says so.
    let json = netd.netctl_json(&["reload"]);
    assert_eq!(
        json["summary"],
        "0 created, 0 updated, 0 replaced, 0 deleted, 2 unchanged"
    );
}

#[test]
fn netctl_reload_with_a_broken_config_fails_and_keeps_the_old_one_serving() {
    let netd = Netd::start(ONE);
    let addr = bound_addr(&netd, "a");
    netd.write_config("[[listener]]\nname = \"a\"\nkind = \"no-such-kind\"\n");
    let err = netd.netctl_err(&["reload"]);
    assert!(
        err.contains("reload failed") && err.contains("keeping the running one"),
        "{err}"
    );
    let status = netd.netctl(&["reload"]).status;
    assert_eq!(status.code(), Some(1), "exit code of a failed reload");
    assert_eq!(echo(addr), "A: hi\n");
    let log = netd.log();
    assert!(
        log.lines()
            .any(|l| l.contains("rpc=\"Reload\"") && l.contains("audit: refused")),
        "log:\n{log}"
    );
}

#[test]
fn sighup_still_reloads() {
    let mut netd = Netd::start(ONE);
    netd.write_config(TWO);
    netd.signal(libc::SIGHUP);
    crate::common::wait_until("listener b from the SIGHUP reload", || {
        netd.log().contains("config reloaded") || netd.log().contains("reload failed")
    });
    assert!(
        netd.netctl(&["status", "b"]).status.success(),
        "log:\n{}",
        netd.log()
    );
    assert!(netd.exited().is_none());
}

#[test]
fn ready_counts_listeners_restored_from_the_state_file() {
    let netd = Netd::start(ONE);
    netd.netctl_ok(&["start", "tcp-echo", "extra1", "--listen", "127.0.0.1:0"]);
    netd.netctl_ok(&["start", "udp-echo", "extra2", "--listen", "127.0.0.1:0"]);
    let dir = netd.kill9();
    let netd = Netd::start_in(dir);
    let rows = netd.netctl_json(&["list"])["listeners"]
        .as_array()
        .expect("listeners")
        .len();
    assert_eq!(rows, 3);
    let log = netd.log();
    let ready = log
        .lines()
        .find(|l| l.contains("netd ready"))
        .unwrap_or_else(|| panic!("no ready line; log:\n{log}"));
    assert!(
        ready.contains("listeners=3") && ready.contains("running=3"),
        "{ready}"
    );
}

#[test]
fn reload_needs_the_admin_role() {
    use std::os::unix::fs::PermissionsExt as _;
    use std::os::unix::process::CommandExt as _;
    const NOBODY: u32 = 65534;
    // netctl where nobody may run it, and a socket nobody may reach (as a
    // member of the socket's group could): nobody is a viewer.
    let bins = tempfile::tempdir().expect("tempdir");
    let netctl = bins.path().join("netctl");
    std::fs::copy(crate::common::NETCTL, &netctl).expect("copy netctl");
    for (p, mode) in [(bins.path(), 0o755), (netctl.as_path(), 0o755)] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
    let netd = Netd::start(ONE);
    let netd::util::addr::ControlAddr::Unix(sock) = &netd.control else {
        unreachable!("unix control socket")
    };
    std::fs::set_permissions(netd.dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod dir");
    std::fs::set_permissions(sock, std::fs::Permissions::from_mode(0o666)).expect("chmod sock");
    netd.write_config(TWO);
    let mut cmd = std::process::Command::new(&netctl);
    cmd.arg("--control")
        .arg(netd.control.to_string())
        .arg("reload")
        .env_remove("NETD_CONTROL")
        .uid(NOBODY)
        .gid(NOBODY);
    let out = crate::common::output_within_deadline(cmd).expect("netctl reload as nobody");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a viewer reloaded: {err}");
    assert!(err.contains("needs the admin role"), "{err}");
    // Nothing was reloaded.
    assert!(!netd.netctl(&["status", "b"]).status.success());
}
