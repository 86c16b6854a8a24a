//! The control plane against hostile callers: TCP without TLS, mTLS with
//! good, missing, self-signed and expired certificates, roles for
//! certificates and Unix peers, the audit log, bounded connections and
//! streams, names and labels, netctl's checks on the socket it dials and
//! its timeouts. Each test is a finding of the security review; each fails
//! on the code before the fix.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::common::h2raw::{PREFACE, frame, handshake, hpack, read_frame};
pub(crate) use crate::common::pki::Pki;
use crate::common::{DEADLINE, NETCTL, NETD, Netd, rss_kib, wait_until};
use netd::proto::{self, listener_spec::Kind};
use netd::util::addr::ControlAddr;

const NOBODY: u32 = 65534;

fn run(cmd: Command, what: &str) -> Output {
    crate::common::output_within_deadline(cmd)
        .unwrap_or_else(|| panic!("{what}: still running after {DEADLINE:?}"))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn tcp_control_without_tls_is_refused_at_start() {
    let port = crate::common::free_tcp_port();
    let mut cmd = Command::new(NETD);
    cmd.args([
        "--config",
        "/dev/null",
        "--control",
        &format!("127.0.0.1:{port}"),
    ])
    .env_remove("NETD_CONTROL");
    let out = run(cmd, "netd on plain TCP");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("without TLS") && err.contains("--control-insecure"),
        "{err}"
    );

    // The opt-out is for loopback only.
    let mut cmd = Command::new(NETD);
    cmd.args([
        "--config",
        "/dev/null",
        "--control-insecure",
        "--control",
        &format!("0.0.0.0:{port}"),
    ])
    .env_remove("NETD_CONTROL");
    let out = run(cmd, "netd on 0.0.0.0 with --control-insecure");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("loopback"), "{}", stderr(&out));
}

/// netctl over TLS: `--cacert ca` plus an optional client certificate.
pub(crate) fn netctl_tls(
    control: &str,
    ca: &Path,
    client: Option<&(PathBuf, PathBuf)>,
    args: &[&str],
) -> Output {
    let mut cmd = Command::new(NETCTL);
    cmd.arg("--control")
        .arg(control)
        .arg("--cacert")
        .arg(ca)
        .env_remove("NETD_CONTROL");
    if let Some((c, k)) = client {
        cmd.arg("--cert").arg(c).arg("--key").arg(k);
    }
    cmd.args(args);
    run(cmd, "netctl over TLS")
}

fn assert_refused(out: &Output, what: &str, needle: &str) {
    let err = stderr(out);
    assert!(!out.status.success(), "{what}: succeeded unexpectedly");
    assert_eq!(err.lines().count(), 1, "{what}: one line expected: {err}");
    assert!(err.starts_with("netctl: "), "{what}: {err}");
    assert!(
        err.to_lowercase().contains(&needle.to_lowercase()),
        "{what}: expected {needle:?} in: {err}"
    );
}

/// netd with its control plane on a loopback TCP port with mTLS: `server`
/// as its certificate, clients signed by `ca`, `ops-laptop` an admin.
/// Returns netd and the control address.
pub(crate) fn mtls_netd(server: &(PathBuf, PathBuf), ca: &Path) -> (Netd, String) {
    let port = crate::common::free_tcp_port();
    let control = format!("127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("netd.toml");
    std::fs::write(
        &cfg,
        format!(
            "[control]\nlisten = \"{control}\"\n[control.tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n[control.roles]\nadmin = [\"ops-laptop\"]\n",
            server.0, server.1, ca
        ),
    )
    .unwrap();
    let mut cmd = Command::new(NETD);
    cmd.arg("--config").arg(&cfg).env_remove("NETD_CONTROL");
    let netd = Netd::spawn_as_is(cmd, dir, control.parse::<ControlAddr>().unwrap());
    (netd, control)
}

#[test]
fn mtls_certificates_and_roles() {
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(pki_dir.path(), "netd");
    let other = Pki::new(pki_dir.path(), "other");
    let server = pki.issue("server", "netd", &["localhost", "127.0.0.1"], false);
    let admin = pki.issue("admin", "ops-laptop", &[], false);
    let viewer = pki.issue("viewer", "grafana", &[], false);
    let stranger = pki.issue("stranger", "someone", &["someone.example"], false);
    let expired = pki.issue("expired", "ops-laptop", &[], true);
    let forged = pki.self_signed("forged", "ops-laptop");
    let foreign = other.issue("foreign", "ops-laptop", &[], false);
    let ca = pki_dir.path().join("netd-ca.pem");

    let (netd, control) = mtls_netd(&server, &ca);

    // The admin certificate drives netd, and the audit log names it.
    let out = netctl_tls(
        &control,
        &ca,
        Some(&admin),
        &["start", "udp-echo", "u", "--listen", "127.0.0.1:0"],
    );
    assert!(out.status.success(), "admin start: {}", stderr(&out));
    wait_until("audit line for the start", || {
        netd.log().lines().any(|l| {
            l.contains("audit:")
                && l.contains("cert:ops-laptop")
                && l.contains("StartListener")
                && l.contains("\"u\"")
        })
    });

    // No certificate, a self-signed one, an expired one, one from another
    // CA: no access at all.
    for (what, client, needle) in [
        ("no client certificate", None, "certificate"),
        ("self-signed certificate", Some(&forged), "certificate"),
        ("expired certificate", Some(&expired), "expired"),
        ("certificate from another CA", Some(&foreign), "certificate"),
    ] {
        let out = netctl_tls(&control, &ca, client, &["list"]);
        assert_refused(&out, what, needle);
    }
    // netctl checks netd's certificate too.
    let out = netctl_tls(
        &control,
        &pki_dir.path().join("other-ca.pem"),
        Some(&admin),
        &["list"],
    );
    assert_refused(&out, "wrong --cacert", "cacert");
    // Plain HTTP/2 to the TLS port gets nowhere.
    let mut cmd = Command::new(NETCTL);
    cmd.args(["--control", &control, "list"])
        .env_remove("NETD_CONTROL");
    assert!(!run(cmd, "plain netctl").status.success());

    // A viewer (listed or merely signed by the CA) reads but cannot change.
    for (who, cert) in [("grafana", &viewer), ("someone", &stranger)] {
        let out = netctl_tls(&control, &ca, Some(cert), &["-o", "json", "list"]);
        assert!(out.status.success(), "{who} list: {}", stderr(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["listeners"][0]["name"], "u", "{who}");
        let out = netctl_tls(&control, &ca, Some(cert), &["stop", "u"]);
        assert_refused(&out, who, "needs the admin role");
        assert!(stderr(&out).contains("viewer"), "{}", stderr(&out));
        let out = netctl_tls(
            &control,
            &ca,
            Some(cert),
            &["start", "tcp-echo", "x", "--listen", "127.0.0.1:0"],
        );
        assert_refused(&out, who, "needs the admin role");
    }
    let out = netctl_tls(&control, &ca, Some(&admin), &["-o", "json", "list"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["listeners"].as_array().map(Vec::len), Some(1), "{v}");
    assert!(
        netd.log()
            .lines()
            .any(|l| l.contains("audit:") && l.contains("cert:grafana") && l.contains("denied")),
        "{}",
        netd.log()
    );
}

/// Copy a binary where any user may run it (the checkout may sit in a
/// directory other users cannot enter).
fn public_copy(bin: &str, dir: &Path) -> PathBuf {
    let name = Path::new(bin).file_name().unwrap();
    let to = dir.join(name);
    std::fs::copy(bin, &to).unwrap();
    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).unwrap();
    to
}

fn open_dir(dir: &Path) {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn netctl_as_nobody(bins: &Path, control: &ControlAddr, args: &[&str]) -> Output {
    let mut cmd = Command::new(bins.join("netctl"));
    cmd.arg("--control")
        .arg(control.to_string())
        .args(args)
        .env_remove("NETD_CONTROL")
        .uid(NOBODY)
        .gid(NOBODY);
    run(cmd, "netctl as nobody")
}

#[test]
fn unix_peer_outside_the_admin_group_is_a_viewer() {
    let bins = tempfile::tempdir().unwrap();
    open_dir(bins.path());
    public_copy(NETCTL, bins.path());

    let netd = Netd::start("");
    let ControlAddr::Unix(sock) = &netd.control else {
        unreachable!()
    };
    // Let another user reach the socket, as group membership would.
    open_dir(netd.dir.path());
    std::fs::set_permissions(sock, std::fs::Permissions::from_mode(0o666)).unwrap();

    let out = netctl_as_nobody(bins.path(), &netd.control, &["-o", "json", "list"]);
    assert!(out.status.success(), "viewer list: {}", stderr(&out));
    let out = netctl_as_nobody(
        bins.path(),
        &netd.control,
        &["start", "udp-echo", "x", "--listen", "127.0.0.1:0"],
    );
    assert_refused(&out, "nobody start", "needs the admin role");
    assert!(stderr(&out).contains("uid:65534"), "{}", stderr(&out));
    assert!(stderr(&out).contains("viewer"), "{}", stderr(&out));
    netd.netctl_ok(&["start", "udp-echo", "x", "--listen", "127.0.0.1:0"]);
    wait_until("audit of root's start", || {
        netd.log()
            .lines()
            .any(|l| l.contains("audit:") && l.contains("uid:0") && l.contains("StartListener"))
    });

    // A group listed as admin makes its members admins.
    let netd = Netd::start("[control.roles]\nadmin = [\"uid:0\", \"group:65534\"]\n");
    let ControlAddr::Unix(sock) = &netd.control else {
        unreachable!()
    };
    open_dir(netd.dir.path());
    std::fs::set_permissions(sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = netctl_as_nobody(
        bins.path(),
        &netd.control,
        &["start", "udp-echo", "y", "--listen", "127.0.0.1:0"],
    );
    assert!(out.status.success(), "group admin start: {}", stderr(&out));
    wait_until("audit of nobody's start", || {
        netd.log()
            .lines()
            .any(|l| l.contains("audit:") && l.contains("uid:65534") && l.contains("admin"))
    });
}

#[test]
fn netctl_refuses_a_socket_served_by_another_user() {
    let bins = tempfile::tempdir().unwrap();
    open_dir(bins.path());
    let netd_bin = public_copy(NETD, bins.path());
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let sock = dir.path().join("impostor.sock");
    let control = ControlAddr::Unix(sock.clone());
    // Another user's process answers on the socket (here a real netd run
    // as nobody, standing in for anything that bound the path first).
    let mut cmd = Command::new(netd_bin);
    cmd.args(["--config", "/dev/null", "--control"])
        .arg(control.to_string())
        .uid(NOBODY)
        .gid(NOBODY);
    let impostor = Netd::spawn_as_is(cmd, dir, control.clone());
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = impostor.netctl(&["list"]);
    assert_refused(
        &out,
        "root's netctl to nobody's socket",
        "served by uid 65534",
    );
    let out = impostor.netctl(&[
        "start",
        "http",
        "h",
        "--listen",
        "127.0.0.1:0",
        "--token",
        "secret",
    ]);
    assert_refused(&out, "token to an impostor", "served by uid 65534");
}

#[test]
fn per_user_socket_lives_in_a_private_directory() {
    let bins = tempfile::tempdir().unwrap();
    open_dir(bins.path());
    let netd_bin = public_copy(NETD, bins.path());
    let netctl_bin = public_copy(NETCTL, bins.path());
    // A TMPDIR shared by everyone, like /tmp.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let private = tmp.path().join(format!("netd-{NOBODY}"));

    let as_nobody = |bin: &Path| {
        let mut cmd = Command::new(bin);
        cmd.env_remove("NETD_CONTROL")
            .env_remove("XDG_RUNTIME_DIR")
            .env("TMPDIR", tmp.path())
            .uid(NOBODY)
            .gid(NOBODY);
        cmd
    };

    // Someone else (root here) made the directory first: netd refuses it,
    // and so does netctl.
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut cmd = as_nobody(&netd_bin);
    cmd.args(["--config", "/dev/null"]);
    let out = run(cmd, "netd with a foreign private dir");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("belongs to uid 0"),
        "{}",
        stderr(&out)
    );
    if !Path::new(netd::util::addr::SYSTEM_CONTROL_SOCKET).exists() {
        let mut cmd = as_nobody(&netctl_bin);
        cmd.arg("list");
        let out = run(cmd, "netctl with a foreign private dir");
        assert_refused(
            &out,
            "netctl with a foreign private dir",
            "belongs to uid 0",
        );
    }
    std::fs::remove_dir(&private).unwrap();

    // Left to itself, netd makes the directory, private to its user.
    let state = tempfile::tempdir().unwrap();
    let mut cmd = as_nobody(&netd_bin);
    cmd.args(["--config", "/dev/null"]);
    let control = ControlAddr::Unix(private.join("netd.sock"));
    open_dir(state.path());
    let netd = Netd::spawn_as_is(cmd, state, control);
    let meta = std::fs::symlink_metadata(&private).unwrap();
    assert!(meta.is_dir());
    assert_eq!(meta.uid(), NOBODY);
    assert_eq!(meta.mode() & 0o777, 0o700);
    assert!(private.join("netd.sock").exists());
    drop(netd);
}

/// `count` WatchEvents calls on streams 1, 3, 5, ...: HEADERS, then the
/// empty request message with END_STREAM. The server keeps each open.
fn watch_events_calls(out: &mut Vec<u8>, count: u32) {
    let mut block = Vec::new();
    hpack(&mut block, ":method", "POST");
    hpack(&mut block, ":scheme", "http");
    hpack(&mut block, ":path", "/netd.v1.Control/WatchEvents");
    hpack(&mut block, ":authority", "localhost");
    hpack(&mut block, "content-type", "application/grpc");
    hpack(&mut block, "te", "trailers");
    for i in 0..count {
        frame(out, 0x1, 0x4, 1 + 2 * i, &block);
        frame(out, 0x0, 0x1, 1 + 2 * i, &[0, 0, 0, 0, 0]);
    }
}

#[test]
fn streams_per_connection_are_capped() {
    let netd = Netd::start("");
    let ControlAddr::Unix(sock) = &netd.control else {
        unreachable!()
    };
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    // netd announces the limit in its SETTINGS ...
    let max_streams = handshake(&mut s);
    assert_eq!(max_streams, Some(100), "SETTINGS_MAX_CONCURRENT_STREAMS");

    // ... and enforces it on a client that ignores it: 101 WatchEvents
    // streams, each kept open by the server; the 101st is refused.
    let mut out = Vec::new();
    frame(&mut out, 0x4, 0x1, 0, &[]);
    watch_events_calls(&mut out, 101);
    s.write_all(&out).unwrap();
    let last = 1 + 2 * 100;
    loop {
        let (kind, _, stream, payload) =
            read_frame(&mut s).unwrap_or_else(|e| panic!("no RST_STREAM for stream {last}: {e}"));
        if kind == 0x3 && stream == last {
            let code = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
            assert_eq!(code, 0x7, "REFUSED_STREAM");
            break;
        }
        if kind == 0x7 {
            panic!("GOAWAY instead of a refused stream: {payload:?}");
        }
        if kind == 0x3 {
            panic!("stream {stream} reset; only the 101st should be");
        }
    }
    // The daemon is fine.
    netd.netctl_ok(&["list"]);
}

#[test]
fn control_connections_are_capped_and_idle_ones_closed() {
    let netd = Netd::start("[control]\nmax_connections = 4\nidle_timeout = \"1s\"\n");
    let ControlAddr::Unix(sock) = &netd.control else {
        unreachable!()
    };
    let idle: Vec<UnixStream> = (0..4).map(|_| UnixStream::connect(sock).unwrap()).collect();
    // Accepted in order, the four take every slot: a fifth is closed at
    // once (read sees EOF, not the deadline).
    let closed_at_once = |what: &str| {
        let mut s = UnixStream::connect(sock).unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut b = [0u8; 64];
        match s.read(&mut b) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("{what}: expected the connection closed, got {other:?}"),
        }
    };
    closed_at_once("fifth connection");
    // The silent four are closed after the idle timeout.
    for (i, mut s) in idle.into_iter().enumerate() {
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut b = [0u8; 256];
        loop {
            match s.read(&mut b) {
                Ok(0) => break,
                Ok(_) => continue, // the server's SETTINGS preface
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("idle connection {i} not closed: {e}"),
            }
        }
    }
    // Slots are free again.
    wait_until("netctl works again", || {
        netd.netctl(&["list"]).status.success()
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_labels_and_request_sizes_are_bounded() {
    let netd = Netd::start("max_listeners = 2\n");
    for bad in [".", "..", "-x", ".hidden", &"n".repeat(64)] {
        let err = netd.netctl_err(&["start", "udp-echo", "--listen", "127.0.0.1:0", "--", bad]);
        assert!(err.contains("listener name"), "{bad}: {err}");
    }
    let long_value = format!("k={}", "v".repeat(256));
    let long_key = format!("{}=v", "k".repeat(64));
    for bad in [
        long_value.as_str(),
        long_key.as_str(),
        "k=a\u{1b}[2Jb",
        "k=\u{202e}gnp.exe",
    ] {
        let err = netd.netctl_err(&[
            "start",
            "udp-echo",
            "l",
            "--listen",
            "127.0.0.1:0",
            "--label",
            bad,
        ]);
        assert!(err.contains("label"), "{err}");
    }
    let mut many: Vec<String> = Vec::new();
    for i in 0..65 {
        many.push("--label".into());
        many.push(format!("k{i}=v"));
    }
    let mut args: Vec<&str> = vec!["start", "udp-echo", "l", "--listen", "127.0.0.1:0"];
    args.extend(many.iter().map(String::as_str));
    let err = netd.netctl_err(&args);
    assert!(err.contains("at most 64"), "{err}");

    // 3.5 MB of labels in one request: refused by size, and everyone can
    // still list.
    let mut c = netd.client().await;
    let labels: HashMap<String, String> = (0..14_000)
        .map(|i| (format!("k{i}"), "v".repeat(250)))
        .collect();
    let e = c
        .start_listener(proto::StartListenerRequest {
            name: "big".into(),
            spec: Some(proto::ListenerSpec {
                kind: Some(Kind::UdpEcho(proto::UdpEchoSpec {
                    listen: "127.0.0.1:0".into(),
                    prefix: String::new(),
                    ..Default::default()
                })),
            }),
            labels,
            ephemeral: false,
        })
        .await
        .expect_err("a 3.5 MB request is refused");
    assert!(
        matches!(
            e.code(),
            tonic::Code::ResourceExhausted | tonic::Code::OutOfRange | tonic::Code::InvalidArgument
        ),
        "{e:?}"
    );
    netd.netctl_ok(&["list"]);

    // max_listeners.
    netd.netctl_ok(&["start", "udp-echo", "a", "--listen", "127.0.0.1:0"]);
    netd.netctl_ok(&["start", "udp-echo", "b", "--listen", "127.0.0.1:0"]);
    let err = netd.netctl_err(&["start", "udp-echo", "c", "--listen", "127.0.0.1:0"]);
    assert!(err.contains("max_listeners"), "{err}");
}

#[test]
fn netctl_gives_up_on_a_daemon_that_does_not_answer() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("silent.sock");
    // Accepts connections, never answers (like a netd out of descriptors
    // or stopped in a debugger).
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        listener.set_nonblocking(true).unwrap();
        let until = Instant::now() + DEADLINE;
        while Instant::now() < until {
            if let Ok((c, _)) = listener.accept() {
                conns.push(c);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    let mut cmd = Command::new(NETCTL);
    cmd.args([
        "--control",
        &format!("unix:{}", sock.display()),
        "--timeout",
        "500ms",
        "list",
    ])
    .env_remove("NETD_CONTROL");
    let out = run(cmd, "netctl against a silent daemon");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("in time") || err.contains("timed out"),
        "{err}"
    );
    drop(held);
}

/// Open `streams` WatchEvents calls on one raw connection, ignoring the
/// server's limit; return once the server has answered each (response
/// headers for the admitted ones, RST_STREAM for the rest).
fn open_watch_streams(sock: &Path, streams: u32) -> UnixStream {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut out = PREFACE.to_vec();
    frame(&mut out, 0x4, 0, 0, &[]);
    frame(&mut out, 0x4, 0x1, 0, &[]);
    watch_events_calls(&mut out, streams);
    s.write_all(&out).unwrap();
    let mut answered = std::collections::HashSet::new();
    while answered.len() < streams as usize {
        let (kind, _, stream, _) = read_frame(&mut s).expect("answers to every stream");
        if (kind == 0x1 || kind == 0x3) && stream != 0 {
            answered.insert(stream);
        }
    }
    s
}

#[test]
fn memory_of_many_watch_streams_is_bounded_and_returned() {
    let netd = Netd::start("[control]\nmax_connections = 48\n");
    let ControlAddr::Unix(sock) = &netd.control else {
        unreachable!()
    };
    let before = rss_kib(netd.pid());
    // Twice what the limits admit: 48 connections × 100 streams are open,
    // the rest refused.
    let conns: Vec<UnixStream> = (0..48).map(|_| open_watch_streams(sock, 200)).collect();
    let peak = rss_kib(netd.pid());
    assert!(
        peak < before + 256 * 1024,
        "4,800 open watch streams took RSS from {before} KiB to {peak} KiB"
    );
    drop(conns);
    // Closing them gives the heap back (the trim tick is 5 s).
    wait_until("RSS back near its start after the streams closed", || {
        rss_kib(netd.pid()) < before + 16 * 1024
    });
    netd.netctl_ok(&["list"]);
}

/// `--control-insecure` used to make whoever reached the loopback port an
/// admin. Callers are now told apart as on the Unix socket: the user
/// owning the peer's socket gets its role from `[control.roles]` (root an
/// admin, another local user a viewer).
#[test]
fn insecure_loopback_tcp_callers_are_identified_by_uid() {
    let bins = tempfile::tempdir().unwrap();
    open_dir(bins.path());
    public_copy(NETCTL, bins.path());
    let port = crate::common::free_tcp_port();
    let control = format!("127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(NETD);
    cmd.args([
        "--config",
        "/dev/null",
        "--control-insecure",
        "--control",
        &control,
    ])
    .env_remove("NETD_CONTROL");
    let addr: ControlAddr = control.parse().unwrap();
    let netd = Netd::spawn_as_is(cmd, dir, addr.clone());

    netd.netctl_ok(&["start", "udp-echo", "x", "--listen", "127.0.0.1:0"]);
    let out = netctl_as_nobody(bins.path(), &addr, &["-o", "json", "list"]);
    assert!(out.status.success(), "viewer list: {}", stderr(&out));
    let out = netctl_as_nobody(
        bins.path(),
        &addr,
        &["start", "udp-echo", "y", "--listen", "127.0.0.1:0"],
    );
    assert_refused(
        &out,
        "nobody start over insecure TCP",
        "needs the admin role",
    );
    assert!(stderr(&out).contains("uid:65534"), "{}", stderr(&out));
    let out = netctl_as_nobody(bins.path(), &addr, &["stop", "x"]);
    assert_refused(
        &out,
        "nobody stop over insecure TCP",
        "needs the admin role",
    );
    wait_until("audit of root's start naming uid 0", || {
        netd.log().lines().any(|l| {
            l.contains("audit:") && l.contains("insecure-tcp:uid:0") && l.contains("StartListener")
        })
    });
}

/// netctl over TLS to an IPv6 literal (`[::1]:PORT`): the bracketed host
/// was handed to TLS as a DNS name and every call failed with "invalid dns
/// name"; the address is checked against the certificate's IP names.
#[test]
fn tls_control_on_an_ipv6_literal() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        return; // no IPv6 here
    }
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(pki_dir.path(), "netd");
    let server = pki.issue("server", "netd", &["::1"], false);
    let admin = pki.issue("admin", "ops-laptop", &[], false);
    let ca = pki_dir.path().join("netd-ca.pem");
    let port = {
        let l = std::net::TcpListener::bind("[::1]:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let control = format!("[::1]:{port}");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("netd.toml");
    std::fs::write(
        &cfg,
        format!(
            "[control]\nlisten = \"{control}\"\n[control.tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n[control.roles]\nadmin = [\"ops-laptop\"]\n",
            server.0, server.1, ca
        ),
    )
    .unwrap();
    let mut cmd = Command::new(NETD);
    cmd.arg("--config").arg(&cfg).env_remove("NETD_CONTROL");
    let _netd = Netd::spawn_as_is(cmd, dir, control.parse().unwrap());
    let out = netctl_tls(&control, &ca, Some(&admin), &["list"]);
    assert!(
        out.status.success(),
        "netctl list over TLS to {control}: {out:?}"
    );
}
