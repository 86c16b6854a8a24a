//! `netctl update` takes the options `netctl start` takes for the
//! listener's kind, and they take effect (issue 23, item 3). That no start
//! option is missing from update is checked by a unit test in
//! ctl/cmd/update.rs, which enumerates both commands' options; these tests
//! show that the options added for it reach the running listener.

use std::net::UdpSocket;
use std::time::Duration;

use crate::common::{NetNs, Netd, TestUpstream, bound_addr, wait_until};

fn spec(netd: &Netd, name: &str) -> serde_json::Value {
    netd.netctl_json(&["status", name])["spec"].clone()
}

#[test]
fn update_sets_the_options_it_lacked_for_proxy_http_and_udp_echo() {
    let netd = Netd::start("");
    let up = TestUpstream::echo(b"");
    netd.netctl_ok(&[
        "start",
        "proxy",
        "p",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &up.addr.to_string(),
    ]);
    let v = netd.netctl_json(&["update", "p", "--resolve-interval", "7s"]);
    assert_eq!(v["action"], "in_place", "{v}");
    assert_eq!(spec(&netd, "p")["resolve_interval"], "7s");
    // The upstream's connect timeout under its own name, and under the
    // old one scripts may still use after the command.
    let out = netd.netctl(&["update", "p", "--upstream-connect-timeout", "4s"]);
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(spec(&netd, "p")["connect_timeout"], "4s");
    // The old spelling works, with a note that it is not netctl's own.
    let out = netd.netctl(&[
        "--connect-timeout",
        "2s",
        "update",
        "p",
        "--connect-timeout",
        "6s",
    ]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--upstream-connect-timeout"), "{err}");
    assert_eq!(spec(&netd, "p")["connect_timeout"], "6s");

    netd.netctl_ok(&["start", "http", "h", "--listen", "127.0.0.1:0"]);
    let v = netd.netctl_json(&["update", "h", "--rate-limit-ipv6-prefix", "48"]);
    assert_eq!(v["action"], "in_place", "{v}");
    assert_eq!(spec(&netd, "h")["rate_limit_ipv6_prefix"], 48);

    // udp-echo: a source on a privileged port is answered once allowed.
    netd.netctl_ok(&["start", "udp-echo", "u", "--listen", "127.0.0.1:0"]);
    let u = bound_addr(&netd, "u");
    netd.netctl_ok(&["update", "u", "--allow-privileged-sources"]);
    assert_eq!(spec(&netd, "u")["allow_privileged_sources"], true);
    let s = (1000..1024)
        .find_map(|p| UdpSocket::bind(("127.0.0.1", p)).ok())
        .expect("a free privileged UDP port (tests run as root)");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.send_to(b"hi", u).unwrap();
    let mut buf = [0u8; 64];
    let (n, _) = s
        .recv_from(&mut buf)
        .expect("an answer to a privileged port");
    assert_eq!(&buf[..n], b"hi");
    netd.netctl_ok(&["update", "u", "--allow-privileged-sources", "false"]);
    assert_eq!(spec(&netd, "u")["allow_privileged_sources"], false);

    // An option of another kind is still a usage error.
    let out = netd.netctl(&["update", "u", "--resolve-interval", "7s"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("--resolve-interval does not apply to a udp-echo listener"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn update_moves_a_sniffer_to_another_interface_and_starts_its_pcap() {
    let ns = NetNs::new();
    let work = tempfile::tempdir().unwrap();
    for args in [
        &["link", "add", "d0", "type", "veth", "peer", "name", "d1"][..],
        &["link", "set", "d0", "up"],
        &["link", "set", "d1", "up"],
    ] {
        let out = ns.command("ip").args(args).output().expect("ip link");
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let netd = ns.netd(&format!(
        "capture_dir = {:?}\n",
        work.path().to_str().expect("utf-8 temp path")
    ));
    netd.netctl_ok(&["start", "udp-echo", "u", "--listen", "127.0.0.1:0"]);
    let u = bound_addr(&netd, "u");
    netd.netctl_ok(&["start", "sniffer", "s", "--interface", "lo"]);

    let v = netd.netctl_json(&["update", "s", "--interface", "d0"]);
    assert_ne!(v["action"], "unchanged", "{v}");
    assert_eq!(spec(&netd, "s")["interface"], "d0");

    let v = netd.netctl_json(&[
        "update",
        "s",
        "--interface",
        "lo",
        "--pcap",
        "cap.pcap",
        "--pcap-max-bytes",
        "1000000",
        "--pcap-max-files",
        "2",
    ]);
    assert_ne!(v["action"], "unchanged", "{v}");
    let s = spec(&netd, "s");
    assert_eq!(s["interface"], "lo");
    assert_eq!(s["pcap_max_files"], 2, "{s}");
    assert_eq!(s["pcap_max_bytes"], 1_000_000, "{s}");
    let export = netd.netctl_ok(&["export"]);
    assert!(export.contains("pcap_max_bytes = 1000000"), "{export}");
    ns.run(|| {
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.send_to(b"capture me", u).unwrap();
        let mut buf = [0u8; 64];
        c.recv_from(&mut buf).expect("echo answer");
    });
    wait_until("packets in the pcap", || {
        netd.netctl_json(&["status", "s"])["stats"]["sniffer"]["pcap_packets"]
            .as_u64()
            .unwrap_or(0)
            >= 2
    });
    let file = work.path().join("cap.pcap");
    assert!(file.exists(), "no {}", file.display());
}

/// The status line of a GET with `token` as the bearer (None: without).
fn get_status(addr: std::net::SocketAddr, token: Option<&str>) -> String {
    use std::io::{Read as _, Write as _};
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        c,
        "GET /get HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    let _ = c.read_to_string(&mut reply);
    reply.lines().next().unwrap_or_default().to_string()
}

/// Update goes through the kind's flat form (the current spec written,
/// the options set, read back): what it is not given is kept, a secret
/// netd shows only as a placeholder too; --token-file replaces a token;
/// a flag the kind's key table lacks is a usage error (exit 2) in the
/// config's words, and so is one of start for another kind.
#[test]
fn update_keeps_what_it_is_not_given_and_refuses_flags_of_other_kinds() {
    let netd = Netd::start("");
    netd.netctl_ok(&[
        "start",
        "http",
        "h",
        "--listen",
        "127.0.0.1:0",
        "--token",
        "first",
        "--max-streams",
        "9",
    ]);
    let h = bound_addr(&netd, "h");
    assert!(get_status(h, Some("first")).contains(" 200"));
    let v = netd.netctl_json(&["update", "h", "--max-header-bytes", "4096"]);
    assert_eq!(v["action"], "in_place", "{v}");
    let s = spec(&netd, "h");
    assert_eq!(s["max_header_bytes"], 4096, "{s}");
    assert_eq!(s["max_streams"], 9, "{s}");
    wait_until("the new generation serves", || {
        get_status(h, Some("first")).contains(" 200")
    });
    assert!(get_status(h, None).contains(" 401"));

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "second\n").unwrap();
    netd.netctl_ok(&["update", "h", "--token-file", file.to_str().unwrap()]);
    wait_until("the token from the file", || {
        get_status(h, Some("second")).contains(" 200")
    });
    assert!(get_status(h, Some("first")).contains(" 401"));
    let export = netd.netctl_ok(&["export"]);
    assert!(export.contains("token = \"<redacted>\""), "{export}");
    assert!(export.contains("max_streams = 9"), "{export}");

    let out = netd.netctl(&["update", "h", "--interface", "lo"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot update 'h': --interface does not apply to a http listener"),
        "{err}"
    );
    let out = netd.netctl(&[
        "start",
        "tcp-echo",
        "t",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        "127.0.0.1:9",
    ]);
    assert_eq!(out.status.code(), Some(2));
}
