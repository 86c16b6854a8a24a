//! The control plane end to end: netctl and a tonic client against the real
//! daemon — lifecycle of listeners, every class of bad input, health,
//! reflection, and the control socket itself.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::time::Duration;

use crate::common::{Netd, bound_addr, wait_until};
use netd::proto::{self, listener_spec::Kind};
use tonic::Code;

fn tcp_spec(listen: &str, prefix: &str) -> proto::ListenerSpec {
    proto::ListenerSpec {
        kind: Some(Kind::TcpEcho(proto::TcpEchoSpec {
            listen: listen.into(),
            prefix: prefix.into(),
            ..Default::default()
        })),
    }
}

fn start_req(name: &str, spec: proto::ListenerSpec) -> proto::StartListenerRequest {
    proto::StartListenerRequest {
        name: name.into(),
        spec: Some(spec),
        labels: HashMap::new(),
        ephemeral: false,
    }
}

fn tcp_roundtrip(addr: SocketAddr, msg: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(msg).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    out
}

#[test]
fn netctl_start_list_status_stop_both_kinds() {
    let netd = Netd::start("");
    assert!(netd.netctl_ok(&["list"]).contains("no listeners"));

    let out = netd.netctl_ok(&[
        "start",
        "tcp-echo",
        "e2",
        "--listen",
        "127.0.0.1:0",
        "--prefix",
        "Echo: ",
        "--label",
        "team=net",
    ]);
    assert!(
        out.starts_with("started e2 (tcp-echo) on 127.0.0.1:"),
        "{out}"
    );
    let started = netd.netctl_json(&[
        "start",
        "udp-echo",
        "u1",
        "--listen",
        "127.0.0.1:0",
        "--prefix",
        "ACK: ",
    ]);
    assert_eq!(started["kind"], "udp-echo");
    assert_eq!(started["state"], "running");

    let status = netd.netctl_json(&["status", "e2"]);
    assert_eq!(status["name"], "e2");
    assert_eq!(status["kind"], "tcp-echo");
    assert_eq!(status["state"], "running");
    assert_eq!(status["labels"]["team"], "net");
    assert_eq!(status["spec"]["prefix"], "Echo: ");
    assert_eq!(status["restarts"], 0);
    let e2: SocketAddr = status["bound_addr"].as_str().unwrap().parse().unwrap();
    assert_ne!(e2.port(), 0, "bound_addr must show the real port");

    let list = netd.netctl_json(&["list"]);
    let names: Vec<&str> = list["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["e2", "u1"]);
    let table = netd.netctl_ok(&["list"]);
    assert!(table.contains(&e2.to_string()), "{table}");

    // Both services answer, through netctl probe and through plain sockets.
    assert_eq!(tcp_roundtrip(e2, b"hi\n"), b"Echo: hi\n");
    assert_eq!(
        netd.netctl_ok(&["probe", "tcp", &e2.to_string(), "--message", "yo\n"]),
        "Echo: yo\n"
    );
    let u1 = bound_addr(&netd, "u1");
    let probe = netd.netctl_json(&["probe", "udp", &u1.to_string(), "--message", "ping"]);
    assert_eq!(probe["reply"], "ACK: ping");

    // Stop closes the port before returning and frees the name.
    let stopped = netd.netctl_json(&["stop", "e2"]);
    assert_eq!(stopped["state"], "stopped");
    assert_eq!(stopped["stats"]["connections_total"], 2);
    let err = TcpStream::connect(e2).expect_err("port must be closed after stop");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    netd.netctl_ok(&["stop", "u1"]);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.connect(u1).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    sock.send(b"anyone?").unwrap();
    let mut buf = [0u8; 64];
    let err = sock
        .recv(&mut buf)
        .expect_err("udp port must be closed after stop");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(netd.netctl_ok(&["list"]).contains("no listeners"));
    netd.netctl_ok(&["start", "tcp-echo", "e2", "--listen", "127.0.0.1:0"]);
}

#[test]
fn bad_input_gets_clear_errors_and_daemon_keeps_serving() {
    let netd = Netd::start("");
    netd.netctl_ok(&["start", "tcp-echo", "a", "--listen", "127.0.0.1:0"]);
    let a = bound_addr(&netd, "a");

    let e = netd.netctl_err(&["start", "tcp-echo", "a", "--listen", "127.0.0.1:0"]);
    assert_eq!(
        e,
        "netctl: cannot start 'a': a listener named 'a' already exists\n"
    );
    let e = netd.netctl_err(&["start", "tcp-echo", "b", "--listen", &a.to_string()]);
    assert_eq!(
        e,
        format!("netctl: cannot start 'b': {a} is already in use\n")
    );
    let e = netd.netctl_err(&["start", "udp-echo", "c", "--listen", "localhost"]);
    assert!(
        e.starts_with(
            "netctl: cannot start 'c': listen: invalid address 'localhost': expected host:port"
        ),
        "{e}"
    );
    let e = netd.netctl_err(&["stop", "nope"]);
    assert_eq!(e, "netctl: cannot stop 'nope': no listener named 'nope'\n");
    let e = netd.netctl_err(&["status", "nope"]);
    assert!(e.contains("no listener named 'nope'"), "{e}");
    let e = netd.netctl_err(&["start", "tcp-echo", "bad/name", "--listen", "127.0.0.1:0"]);
    assert!(e.contains("contains '/'"), "{e}");
    let e = netd.netctl_err(&[
        "start",
        "tcp-echo",
        "z",
        "--listen",
        "127.0.0.1:0",
        "--idle-timeout",
        "0s",
    ]);
    assert!(e.contains("idle_timeout must be greater than zero"), "{e}");

    // The listener that was there is untouched and still echoes.
    assert_eq!(tcp_roundtrip(a, b"still here"), b"still here");
    let list = netd.netctl_json(&["list"]);
    assert_eq!(list["listeners"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_status_codes() {
    let netd = Netd::start("");
    let mut c = netd.client().await;
    let l = c
        .start_listener(start_req("a", tcp_spec("127.0.0.1:0", "")))
        .await
        .unwrap()
        .into_inner()
        .listener
        .unwrap();
    assert_eq!(l.state(), proto::ListenerState::Running);
    assert_eq!(l.kind(), proto::ListenerKind::TcpEcho);

    let code = |r: Result<tonic::Response<_>, tonic::Status>| {
        r.map(|_: tonic::Response<proto::StartListenerResponse>| ())
            .unwrap_err()
            .code()
    };
    assert_eq!(
        code(
            c.start_listener(start_req("a", tcp_spec("127.0.0.1:0", "")))
                .await
        ),
        Code::AlreadyExists
    );
    assert_eq!(
        code(
            c.start_listener(start_req("b", tcp_spec(&l.bound_addr, "")))
                .await
        ),
        Code::FailedPrecondition
    );
    assert_eq!(
        code(
            c.start_listener(start_req("b", tcp_spec("127.0.0.1:http", "")))
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(c.start_listener(start_req("b", tcp_spec("", ""))).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            c.start_listener(start_req("", tcp_spec("127.0.0.1:0", "")))
                .await
        ),
        Code::InvalidArgument
    );
    let no_spec = proto::StartListenerRequest {
        name: "b".into(),
        spec: None,
        labels: HashMap::new(),
        ephemeral: false,
    };
    assert_eq!(code(c.start_listener(no_spec).await), Code::InvalidArgument);
    let empty_spec = start_req("b", proto::ListenerSpec { kind: None });
    assert_eq!(
        code(c.start_listener(empty_spec).await),
        Code::InvalidArgument
    );

    let err = c
        .get_listener(proto::GetListenerRequest { name: "zz".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = c
        .stop_listener(proto::StopListenerRequest { name: "zz".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let got = c
        .get_listener(proto::GetListenerRequest { name: "a".into() })
        .await
        .unwrap()
        .into_inner()
        .listener
        .unwrap();
    assert_eq!(got.bound_addr, l.bound_addr);
    let all = c
        .list_listeners(proto::ListListenersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .listeners;
    assert_eq!(all.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_answer() {
    use tokio_stream::StreamExt;
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };

    let netd = Netd::start("");
    let channel = netd::control::client::connect(&netd.control).await.unwrap();

    let mut health = HealthClient::new(channel.clone());
    for service in ["", "netd.v1.Control"] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status(), ServingStatus::Serving, "service {service:?}");
    }

    let mut refl = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = refl
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected {resp:?}")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in ["netd.v1.Control", "grpc.health.v1.Health"] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
}

#[test]
fn control_socket_is_0660_replaces_stale_file_and_is_removed_on_exit() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("netd.sock");
    // A socket file left behind by a crashed daemon: bound, then abandoned.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());

    let control = netd::util::addr::ControlAddr::Unix(sock.clone());
    let mut cmd = std::process::Command::new(crate::common::NETD);
    cmd.args(["--config", "/dev/null"]);
    let mut netd = Netd::spawn(cmd, dir, control);
    let meta = std::fs::metadata(&sock).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    netd.netctl_ok(&["list"]);

    // A second daemon on the same socket is refused, and the first keeps it.
    let out = std::process::Command::new(crate::common::NETD)
        .args([
            "--config",
            "/dev/null",
            "--control",
            &format!("unix:{}", sock.display()),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another netd is running"), "{err}");
    netd.netctl_ok(&["list"]);

    netd.signal(libc::SIGTERM);
    assert!(netd.wait_exit().success());
    assert!(!sock.exists(), "socket file must be removed on exit");
}

#[test]
fn control_over_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let port = crate::common::free_tcp_port();
    let control: netd::util::addr::ControlAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut cmd = std::process::Command::new(crate::common::NETD);
    // Plain TCP only with the explicit opt-out (loopback only).
    cmd.args(["--config", "/dev/null", "--control-insecure"]);
    let netd = Netd::spawn(cmd, dir, control);
    assert!(netd.log().contains("WITHOUT TLS"), "{}", netd.log());
    netd.netctl_ok(&["start", "udp-echo", "u", "--listen", "127.0.0.1:0"]);
    let list = netd.netctl_json(&["list"]);
    assert_eq!(list["listeners"][0]["name"], "u");
}

#[test]
fn stop_waits_for_connections_to_close() {
    let netd = Netd::start("");
    netd.netctl_ok(&["start", "tcp-echo", "s", "--listen", "127.0.0.1:0"]);
    let addr = bound_addr(&netd, "s");
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    conn.read_exact(&mut b).unwrap();
    wait_until("one active connection", || {
        netd.netctl_json(&["status", "s"])["stats"]["connections_active"] == 1
    });
    let stopped = netd.netctl_json(&["stop", "s"]);
    assert_eq!(stopped["stats"]["connections_active"], 0);
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let n = conn.read(&mut b).unwrap_or(0);
    assert_eq!(n, 0, "the open connection must be closed by stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_starts_of_one_name_let_exactly_one_win() {
    // Binding happens off the registry lock, so starts of one name can
    // overlap: the name is checked again at insert and the losers get
    // AlreadyExists (their sockets closed), never a second listener.
    let netd = Netd::start("");
    let c = netd.client().await;
    let starts = (0..8).map(|_| {
        let mut c = c.clone();
        tokio::spawn(async move {
            c.start_listener(start_req("race", tcp_spec("127.0.0.1:0", "")))
                .await
        })
    });
    let mut won = 0;
    for s in starts.collect::<Vec<_>>() {
        match s.await.unwrap() {
            Ok(_) => won += 1,
            Err(e) => assert_eq!(e.code(), Code::AlreadyExists, "{}", e.message()),
        }
    }
    assert_eq!(won, 1);
    let list = netd.netctl_json(&["list"]);
    assert_eq!(list["listeners"].as_array().unwrap().len(), 1, "{list}");
    let race = bound_addr(&netd, "race");
    assert_eq!(tcp_roundtrip(race, b"x"), b"x");
}
