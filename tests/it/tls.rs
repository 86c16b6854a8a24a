//! TLS served by a TCP echo (`--tls-cert/--tls-key`): real clients
//! (openssl s_client, rustls) handshake and get their plaintext back; the
//! negotiated parameters and failures by reason are in the stats; bad key
//! files are refused at start; a client that never finishes its handshake
//! is closed at the deadline.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::pki::{Pki, tls_connector};
use crate::common::{Netd, bound_addr};
use netd::proto;

/// The listener's TLS counters, from GetStats.
pub(crate) async fn tls_stats(netd: &Netd, name: &str) -> proto::TlsStats {
    let mut c = netd.client().await;
    let s = c
        .get_stats(proto::GetStatsRequest {
            name: name.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    s.listeners
        .into_iter()
        .find(|l| l.name == name)
        .and_then(|l| l.totals)
        .and_then(|t| t.tls)
        .unwrap_or_else(|| panic!("{name} has no TLS stats"))
}

fn start_tls_echo(netd: &Netd, pki: &Pki, name: &str, extra: &[&str]) -> std::net::SocketAddr {
    let (cert, key) = pki.issue(name, "localhost", &["localhost", "127.0.0.1"], false);
    let mut args = vec![
        "start",
        "tcp-echo",
        name,
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    netd.netctl_ok(&args);
    bound_addr(netd, name)
}

#[tokio::test]
async fn tcp_echo_serves_tls_to_openssl_and_rustls() {
    let netd = Netd::start("");
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "t");
    let addr = start_tls_echo(&netd, &pki, "tls-echo", &["--tls-alpn", "echo/1"]);

    // openssl s_client, verifying against the CA with the name.
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-quiet",
            "-no_ign_eof",
            "-verify_return_error",
            "-servername",
            "localhost",
        ])
        .arg("-connect")
        .arg(addr.to_string())
        .arg("-CAfile")
        .arg(pki.ca_path("t"))
        .args(["-alpn", "echo/1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl");
    child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"ping over openssl\n")
        .unwrap();
    let mut got = vec![0u8; 18];
    child.stdout.as_mut().unwrap().read_exact(&mut got).unwrap();
    assert_eq!(got, b"ping over openssl\n");
    drop(child.stdin.take());
    let _ = child.wait();

    // rustls, with ALPN.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let connector = tls_connector(&pki.ca_path("t"), &["echo/1"], None);
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"echo/1"[..]));
    tls.write_all(b"ping over rustls").await.unwrap();
    let mut back = [0u8; 16];
    tls.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"ping over rustls");
    tls.shutdown().await.unwrap();

    let s = tls_stats(&netd, "tls-echo").await;
    assert_eq!(s.handshakes, 2, "{s:?}");
    assert_eq!(s.last_version, "TLSv1.3");
    assert_eq!(s.last_alpn, "echo/1");
    assert!(s.last_cipher.starts_with("TLS13_"), "{s:?}");
    assert_eq!(s.certificate_subject, "CN=localhost");
    assert!(s.certificate_not_after > 0);
}

#[tokio::test]
async fn a_client_that_distrusts_the_certificate_is_counted_as_unknown_ca() {
    let netd = Netd::start("");
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "t");
    let other = Pki::new(dir.path(), "other");
    let addr = start_tls_echo(&netd, &pki, "e", &[]);
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let connector = tls_connector(&other.ca_path("other"), &[], None);
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let err = connector.connect(name, tcp).await.unwrap_err();
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    let mut s = tls_stats(&netd, "e").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.failed_unknown_ca == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        s = tls_stats(&netd, "e").await;
    }
    assert_eq!((s.failed_unknown_ca, s.handshakes), (1, 0), "{s:?}");
}

#[test]
fn bad_key_files_are_refused_with_the_reason() {
    let netd = Netd::start("");
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "t");
    let (cert, key) = pki.issue("srv", "localhost", &["localhost"], false);
    let start = |key: &std::path::Path| {
        netd.netctl_err(&[
            "start",
            "tcp-echo",
            "x",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ])
    };
    // Open to others.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = start(&key);
    assert!(e.contains("open to others"), "{e}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    // A link out of its directory.
    let elsewhere = tempfile::tempdir().unwrap();
    let link = elsewhere.path().join("key.pem");
    std::os::unix::fs::symlink(&key, &link).unwrap();
    let e = start(&link);
    assert!(e.contains("outside its directory"), "{e}");
    // The key of another certificate.
    let (_, other_key) = pki.issue("other", "other", &["other"], false);
    let e = start(&other_key);
    assert!(e.contains("do not make a usable pair"), "{e}");
    // Missing, and expired.
    let e = start(&dir.path().join("missing.pem"));
    assert!(e.contains("tls_key: cannot read"), "{e}");
    let (old, old_key) = pki.issue("old", "localhost", &["localhost"], true);
    let e = netd.netctl_err(&[
        "start",
        "tcp-echo",
        "x",
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        old.to_str().unwrap(),
        "--tls-key",
        old_key.to_str().unwrap(),
    ]);
    assert!(e.contains("expired"), "{e}");
    // The key's bytes never appear in an error or the log.
    let pem = std::fs::read_to_string(&key).unwrap();
    let body = pem.lines().nth(1).unwrap();
    assert!(!netd.log().contains(body));
}

#[tokio::test]
async fn a_client_that_never_finishes_its_handshake_is_closed_at_the_deadline() {
    let netd = Netd::start("");
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "t");
    let addr = start_tls_echo(&netd, &pki, "slow", &["--tls-handshake-timeout", "300ms"]);
    // Half a ClientHello's record header, then silence (a TLS slow-loris).
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(&[0x16, 0x03, 0x01]).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let began = Instant::now();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "netd should close, not answer");
    assert!(began.elapsed() < Duration::from_secs(9));
    let st = tls_stats(&netd, "slow").await;
    assert_eq!(st.failed_timeout, 1, "{st:?}");
}

/// Certificate paths on netctl's command line are the caller's: a relative one is
/// made absolute where it was typed (netd's own working directory is
/// not the caller's, and netd refuses relative paths).
#[test]
fn relative_certificate_paths_are_the_callers() {
    let netd = Netd::start("");
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "t");
    pki.issue("srv", "localhost", &["localhost"], false);
    let out = Command::new(crate::common::NETCTL)
        .current_dir(dir.path())
        .arg("--control")
        .arg(netd.control.to_string())
        .args(["start", "tcp-echo", "rel", "--listen", "127.0.0.1:0"])
        .args(["--tls-cert", "srv.pem", "--tls-key", "./srv-key.pem"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j = netd.netctl_json(&["status", "rel"]);
    let want = dir.path().join("srv-key.pem");
    assert_eq!(j["spec"]["tls"]["key"], want.to_str().unwrap(), "{j}");
}

/// The TLS echo's buffer starts small and grows at the first full read:
/// a large message comes back whole, in order, after small ones.
#[tokio::test]
async fn the_tls_echo_returns_large_messages_whole() {
    let netd = Netd::start("");
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "t");
    let addr = start_tls_echo(&netd, &pki, "big", &["--prefix", ">"]);
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let connector = tls_connector(&pki.ca_path("t"), &[], None);
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let (mut r, mut w) = tokio::io::split(tls);
    let msg: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let sent = msg.clone();
    let writer = tokio::spawn(async move {
        w.write_all(b"hi").await.unwrap();
        w.write_all(&sent).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), r.read_to_end(&mut back))
        .await
        .expect("the echo within 30 s")
        .unwrap();
    writer.await.unwrap();
    // Each chunk read comes back behind the prefix: strip them.
    let payload: Vec<u8> = back.iter().copied().filter(|&b| b != b'>').collect();
    let mut want = b"hi".to_vec();
    want.extend(msg.iter().copied().filter(|&b| b != b'>'));
    assert_eq!(payload.len(), want.len());
    assert!(payload == want, "the echo differs from what was sent");
}
