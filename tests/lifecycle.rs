//! The daemon's lifecycle: boot from config (and the embedded default),
//! config errors, sd_notify, SIGTERM draining, and the supervisor restarting
//! a listener whose socket fails under it.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::{NETD, Netd, bound_addr, break_listening_socket, wait_until};

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
            "line 3",
        ),
        ("shutdown_grace = \"soon\"\n", "line 1"),
        (
            "[log]\nlevel = \"info\"\ncolour = \"red\"\n",
            "unknown field `colour`",
        ),
        (
            "[[listener]]\nname = \"a\"\nkind = \"udp-echo\"\nlisten = \"127.0.0.1:0\"\nmax_connections = 3\n",
            "bad.toml:5: max_connections does not apply",
        ),
        ("this is not toml", "line 1"),
    ];
    for (config, want) in cases {
        let out = netd_with_config(config);
        assert!(!out.status.success(), "netd accepted:\n{config}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.starts_with("netd: ") && err.contains("bad.toml") && err.contains(want),
            "for\n{config}\ngot: {err}"
        );
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
    let control = netd::addr::ControlAddr::Unix(dir.path().join("netd.sock"));
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
