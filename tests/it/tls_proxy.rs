//! TLS in the proxy: terminate (openssl s_client, Python ssl and rustls clients in
//! front of a plaintext upstream), client certificates (required,
//! requested, the subject in the access log), originate to a TLS upstream
//! (netd's own tcp-echo with a certificate: verified against a CA, a name
//! mismatch refused, an insecure upstream accepted), re-encrypt with ALPN
//! passed through, and a latency fault acting on the plaintext.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::pki::{Pki, tls_connector};
use crate::common::{Netd, TestUpstream, bound_addr, wait_until, wait_until_async};
use crate::tls::tls_stats;

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A proxy to `upstream`, serving a certificate for localhost and
/// 127.0.0.1 issued by `pki`, with `extra` flags.
fn tls_proxy(
    netd: &Netd,
    pki: &Pki,
    name: &str,
    upstream: SocketAddr,
    extra: &[&str],
) -> SocketAddr {
    let (cert, key) = pki.issue(name, "localhost", &["localhost", "127.0.0.1"], false);
    let up = upstream.to_string();
    let mut args = vec![
        "start",
        "proxy",
        name,
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &up,
        "--tls-cert",
        p(&cert),
        "--tls-key",
        p(&key),
    ];
    args.extend_from_slice(extra);
    netd.netctl_ok(&args);
    bound_addr(netd, name)
}

/// A plaintext proxy to `upstream` with `extra` flags.
fn plain_proxy(netd: &Netd, name: &str, upstream: SocketAddr, extra: &[&str]) -> SocketAddr {
    let up = upstream.to_string();
    let mut args = vec![
        "start",
        "proxy",
        name,
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &up,
    ];
    args.extend_from_slice(extra);
    netd.netctl_ok(&args);
    bound_addr(netd, name)
}

/// netd's tcp-echo serving `cert`/`key`, as a TLS upstream.
fn tls_echo(
    netd: &Netd,
    name: &str,
    (cert, key): &(std::path::PathBuf, std::path::PathBuf),
    extra: &[&str],
) -> SocketAddr {
    let mut args = vec![
        "start",
        "tcp-echo",
        name,
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        p(cert),
        "--tls-key",
        p(key),
    ];
    args.extend_from_slice(extra);
    netd.netctl_ok(&args);
    bound_addr(netd, name)
}

fn stats(netd: &Netd, name: &str) -> serde_json::Value {
    netd.netctl_json(&["status", name])["stats"].clone()
}

/// Send `msg` on a plain TCP connection, half-close, read all.
fn roundtrip(addr: SocketAddr, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut c = std::net::TcpStream::connect(addr)?;
    c.set_read_timeout(Some(Duration::from_secs(15)))?;
    c.write_all(msg)?;
    c.shutdown(std::net::Shutdown::Write)?;
    let mut out = Vec::new();
    c.read_to_end(&mut out)?;
    Ok(out)
}

/// A rustls client's exchange through `addr` (SNI localhost): sends
/// `msg`, reads `want` bytes back, and the ALPN protocol agreed.
async fn rustls_exchange(
    addr: SocketAddr,
    connector: &tokio_rustls::TlsConnector,
    msg: &[u8],
    want: usize,
) -> std::io::Result<(Vec<u8>, Option<Vec<u8>>)> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await?;
    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    tls.write_all(msg).await?;
    let mut back = vec![0u8; want];
    tokio::time::timeout(Duration::from_secs(15), tls.read_exact(&mut back))
        .await
        .map_err(|_| std::io::Error::other("no reply in 15 s"))??;
    let _ = tls.shutdown().await;
    Ok((back, alpn))
}

#[tokio::test]
async fn terminate_to_a_plaintext_upstream_with_openssl_and_rustls() {
    let netd = Netd::start("");
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "t");
    let up = TestUpstream::echo(b"up:");
    let addr = tls_proxy(&netd, &pki, "p", up.addr, &[]);

    // openssl s_client: SNI, the certificate verified against the CA.
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-quiet",
            "-no_ign_eof",
            "-verify_return_error",
            "-servername",
            "localhost",
            "-verify_hostname",
            "localhost",
        ])
        .arg("-connect")
        .arg(addr.to_string())
        .arg("-CAfile")
        .arg(pki.ca_path("t"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl");
    child.stdin.as_mut().unwrap().write_all(b"ping\n").unwrap();
    let mut got = vec![0u8; 8];
    child.stdout.as_mut().unwrap().read_exact(&mut got).unwrap();
    assert_eq!(got, b"up:ping\n");
    drop(child.stdin.take());
    let _ = child.wait();

    // rustls.
    let connector = tls_connector(&pki.ca_path("t"), &[], None);
    let (back, alpn) = rustls_exchange(addr, &connector, b"hello", 8)
        .await
        .unwrap();
    assert_eq!(back, b"up:hello");
    assert_eq!(alpn, None, "no ALPN unless tls_alpn is set");

    // Python's ssl module, verifying name and CA.
    let script = format!(
        "import socket, ssl\n\
         ctx = ssl.create_default_context(cafile={ca:?})\n\
         with socket.create_connection(('127.0.0.1', {port})) as s:\n\
         \x20   with ctx.wrap_socket(s, server_hostname='localhost') as t:\n\
         \x20       t.sendall(b'py')\n\
         \x20       b = b''\n\
         \x20       while len(b) < 5 and (c := t.recv(16)):\n\
         \x20           b += c\n\
         \x20       print(b.decode(), t.version())\n",
        ca = pki.ca_path("t").to_str().unwrap(),
        port = addr.port()
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        printed.trim(),
        "up:py TLSv1.3",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let s = tls_stats(&netd, "p").await;
    assert_eq!(s.handshakes, 3, "{s:?}");
    assert_eq!(s.last_version, "TLSv1.3");
    assert_eq!(s.certificate_subject, "CN=localhost");
    // bytes_in/out are the plaintext: 5 + 5 + 2 up, 8 + 8 + 5 down.
    wait_until("plaintext byte counts", || {
        let st = stats(&netd, "p");
        st["bytes_in"] == 12 && st["bytes_out"] == 21
    });
    // An update keeps the TLS counters.
    netd.netctl_ok(&["update", "p", "--idle-timeout", "1m"]);
    assert_eq!(tls_stats(&netd, "p").await.handshakes, 3);
}

#[tokio::test]
async fn client_certificates_required_or_requested_and_the_subject_logged() {
    let netd = Netd::start("");
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "t");
    let alice = pki.issue("alice", "alice", &[], false);
    let ca = pki.ca_path("t");
    let up = TestUpstream::echo(b"");
    let req = tls_proxy(&netd, &pki, "req", up.addr, &["--tls-client-ca", p(&ca)]);
    let opt = tls_proxy(
        &netd,
        &pki,
        "opt",
        up.addr,
        &["--tls-client-ca", p(&ca), "--tls-client-auth", "request"],
    );
    let anonymous = tls_connector(&ca, &[], None);
    let with_cert = tls_connector(&ca, &[], Some(&alice));

    // Required: without a certificate the connection is refused.
    let refused = rustls_exchange(req, &anonymous, b"hi", 2).await;
    assert!(refused.is_err(), "{refused:?}");
    wait_until_async("the refusal counted", || async {
        tls_stats(&netd, "req").await.failed_bad_certificate == 1
    })
    .await;
    assert_eq!(up.accepted(), 0, "no upstream for a refused client");
    let (back, _) = rustls_exchange(req, &with_cert, b"hi", 2).await.unwrap();
    assert_eq!(back, b"hi");
    let s = tls_stats(&netd, "req").await;
    assert_eq!(
        (s.handshakes, s.last_client_subject.as_str()),
        (1, "CN=alice")
    );
    wait_until("the access line with the client's subject", || {
        netd.log().lines().any(|l| {
            l.contains("listener=req")
                && l.contains("tls=TLSv1.3")
                && l.contains("tls_client=\"CN=alice\"")
        })
    });

    // Requested: both let in.
    assert_eq!(
        rustls_exchange(opt, &anonymous, b"a", 1).await.unwrap().0,
        b"a"
    );
    assert_eq!(
        rustls_exchange(opt, &with_cert, b"b", 1).await.unwrap().0,
        b"b"
    );
    wait_until("both access lines", || {
        let log = netd.log();
        let opt: Vec<&str> = log.lines().filter(|l| l.contains("listener=opt")).collect();
        opt.iter().any(|l| l.contains("tls_client=-"))
            && opt.iter().any(|l| l.contains("tls_client=\"CN=alice\""))
    });
}

#[tokio::test]
async fn originate_to_a_tls_upstream_verified_by_name_and_ca() {
    let netd = Netd::start("");
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "t");
    let ca = pki.ca_path("t");
    let cert = pki.issue("echo", "localhost", &["localhost", "127.0.0.1"], false);
    let echo = tls_echo(&netd, "echo", &cert, &["--prefix", "e:"]);

    // Verified against the CA, the upstream's address as the name.
    let ok = plain_proxy(
        &netd,
        "ok",
        echo,
        &["--upstream-tls", "--upstream-ca", p(&ca)],
    );
    assert_eq!(roundtrip(ok, b"hello").unwrap(), b"e:hello");
    // SNI given: localhost is on the certificate too.
    let sni = plain_proxy(
        &netd,
        "sni",
        echo,
        &[
            "--upstream-tls",
            "--upstream-ca",
            p(&ca),
            "--upstream-sni",
            "localhost",
        ],
    );
    assert_eq!(roundtrip(sni, b"x").unwrap(), b"e:x");
    assert_eq!(tls_stats(&netd, "echo").await.handshakes, 2);
    let s = tls_stats(&netd, "ok").await;
    assert_eq!(
        (s.upstream_handshakes, s.upstream_failures),
        (1, 0),
        "{s:?}"
    );

    // A name the certificate does not have: refused, counted, explained.
    let bad = plain_proxy(
        &netd,
        "bad",
        echo,
        &[
            "--upstream-tls",
            "--upstream-ca",
            p(&ca),
            "--upstream-sni",
            "other.example",
        ],
    );
    let got = roundtrip(bad, b"hello").unwrap_or_default();
    assert!(
        got.is_empty(),
        "nothing through a refused upstream: {got:?}"
    );
    let s = tls_stats(&netd, "bad").await;
    assert_eq!(
        (s.upstream_handshakes, s.upstream_failures),
        (0, 1),
        "{s:?}"
    );
    let last = stats(&netd, "bad")["proxy"]["upstreams"][0]["last_error"].clone();
    let last = last.as_str().unwrap().to_string();
    assert!(
        last.contains("TLS handshake failed") && last.contains("not valid for name"),
        "{last}"
    );

    // A self-signed upstream: refused against the CA, accepted insecure.
    let own = pki.self_signed("own", "lab");
    let lab = tls_echo(&netd, "lab", &own, &["--prefix", "lab:"]);
    let strict = plain_proxy(
        &netd,
        "strict",
        lab,
        &["--upstream-tls", "--upstream-ca", p(&ca)],
    );
    assert!(roundtrip(strict, b"x").unwrap_or_default().is_empty());
    let loose = plain_proxy(
        &netd,
        "loose",
        lab,
        &["--upstream-tls", "--upstream-insecure"],
    );
    assert_eq!(roundtrip(loose, b"x").unwrap(), b"lab:x");
    assert!(netd.log().contains("upstream_insecure is set"));
    let spec = netd.netctl_json(&["status", "loose"])["spec"].clone();
    assert_eq!(spec["upstream_tls"]["insecure"], true, "{spec}");
}

#[tokio::test]
async fn reencrypt_passes_the_clients_alpn_through() {
    let netd = Netd::start("");
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "t");
    let ca = pki.ca_path("t");
    let cert = pki.issue("echo", "localhost", &["localhost", "127.0.0.1"], false);
    let echo = tls_echo(&netd, "echo", &cert, &["--tls-alpn", "h2"]);
    let addr = tls_proxy(
        &netd,
        &pki,
        "re",
        echo,
        &["--upstream-tls", "--upstream-ca", p(&ca)],
    );
    let connector = tls_connector(&ca, &["h2", "http/1.1"], None);
    let (back, alpn) = rustls_exchange(addr, &connector, b"frames", 6)
        .await
        .unwrap();
    assert_eq!(back, b"frames");
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]), "the upstream's choice");
    assert_eq!(tls_stats(&netd, "echo").await.last_alpn, "h2");
    let s = tls_stats(&netd, "re").await;
    assert_eq!(
        (s.handshakes, s.upstream_handshakes, s.last_alpn.as_str()),
        (1, 1, "h2")
    );
}

#[tokio::test]
async fn a_latency_fault_acts_on_the_plaintext_of_a_tls_proxy() {
    let netd = Netd::start("");
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "t");
    let up = TestUpstream::echo(b"");
    let addr = tls_proxy(&netd, &pki, "slow", up.addr, &[]);
    netd.netctl_ok(&[
        "fault",
        "add",
        "slow",
        "lat",
        "--type",
        "latency",
        "--latency",
        "300ms",
    ]);
    let connector = tls_connector(&pki.ca_path("t"), &[], None);
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let began = Instant::now();
    tls.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    tls.read_exact(&mut back).await.unwrap();
    let took = began.elapsed();
    assert_eq!(&back, b"ping");
    assert!(took >= Duration::from_millis(300), "round trip {took:?}");
}

/// An upstream that requires a client certificate gets the proxy's
/// (`--upstream-cert/--upstream-key`); the warm pool holds TCP
/// connections and the TLS handshake is made when a client takes one.
#[tokio::test]
async fn originate_with_a_client_certificate_over_warm_connections() {
    let netd = Netd::start("");
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "t");
    let ca = pki.ca_path("t");
    let cert = pki.issue("echo", "localhost", &["localhost", "127.0.0.1"], false);
    let echo = tls_echo(&netd, "echo", &cert, &["--tls-client-ca", p(&ca)]);
    let (pc, pk) = pki.issue("proxy-client", "the proxy", &[], false);
    let without = plain_proxy(
        &netd,
        "without",
        echo,
        &["--upstream-tls", "--upstream-ca", p(&ca)],
    );
    assert!(roundtrip(without, b"x").unwrap_or_default().is_empty());
    let with = plain_proxy(
        &netd,
        "with",
        echo,
        &[
            "--upstream-tls",
            "--upstream-ca",
            p(&ca),
            "--upstream-cert",
            p(&pc),
            "--upstream-key",
            p(&pk),
            "--preconnect",
            "2",
        ],
    );
    wait_until("the pool warm", || {
        stats(&netd, "with")["proxy"]["upstreams"][0]["pool_idle"] == 2
    });
    let before = tls_stats(&netd, "echo").await.handshakes;
    assert_eq!(roundtrip(with, b"mutual").unwrap(), b"mutual");
    let s = stats(&netd, "with");
    assert_eq!(s["proxy"]["pool_hits"], 1, "{s}");
    let e = tls_stats(&netd, "echo").await;
    assert_eq!(e.handshakes, before + 1, "one handshake, made on use");
    assert_eq!(e.last_client_subject, "CN=the proxy");
}

/// Bulk data both ways through a re-encrypting proxy, on the plain copy
/// loop and then through a fault (the faulty path writes into TLS under
/// backpressure): every byte arrives, in order.
#[tokio::test]
async fn bulk_data_through_a_reencrypting_proxy_arrives_whole() {
    let netd = Netd::start("");
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "t");
    let ca = pki.ca_path("t");
    let cert = pki.issue("echo", "localhost", &["localhost", "127.0.0.1"], false);
    let echo = tls_echo(&netd, "echo", &cert, &[]);
    let addr = tls_proxy(
        &netd,
        &pki,
        "bulk",
        echo,
        &["--upstream-tls", "--upstream-ca", p(&ca)],
    );
    let connector = tls_connector(&ca, &[], None);
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    for round in 0..2 {
        if round == 1 {
            netd.netctl_ok(&[
                "fault",
                "add",
                "bulk",
                "lat",
                "--type",
                "latency",
                "--latency",
                "20ms",
            ]);
        }
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let tls = connector.connect(name, tcp).await.unwrap();
        let (mut r, mut w) = tokio::io::split(tls);
        let send = data.clone();
        let writer = tokio::spawn(async move {
            w.write_all(&send).await.unwrap();
            w
        });
        let mut got = vec![0u8; data.len()];
        tokio::time::timeout(Duration::from_secs(60), r.read_exact(&mut got))
            .await
            .expect("all the data back within 60 s")
            .unwrap();
        assert!(got == data, "round {round}: the data came back changed");
        drop(writer.await.unwrap());
    }
    // Decrypted by the proxy: the counts are the plaintext's.
    assert_eq!(tls_stats(&netd, "bulk").await.handshakes, 2);
    wait_until("plaintext byte counts", || {
        stats(&netd, "bulk")["bytes_in"] == 6_000_000
    });
}

/// The handshake deadline holds on the re-encrypting path too (where the
/// ClientHello is read before the upstream is connected): a client that
/// never finishes its ClientHello is closed and counted, and no upstream
/// is connected for it.
#[tokio::test]
async fn a_reencrypting_proxy_closes_a_tls_slow_loris_at_the_deadline() {
    let netd = Netd::start("");
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "t");
    let ca = pki.ca_path("t");
    let cert = pki.issue("echo", "localhost", &["localhost", "127.0.0.1"], false);
    let echo = tls_echo(&netd, "echo", &cert, &[]);
    let addr = tls_proxy(
        &netd,
        &pki,
        "re",
        echo,
        &[
            "--upstream-tls",
            "--upstream-ca",
            p(&ca),
            "--tls-handshake-timeout",
            "300ms",
        ],
    );
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(&[0x16, 0x03, 0x01]).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(
        s.read(&mut buf).unwrap_or(0),
        0,
        "netd should close, not answer"
    );
    wait_until_async("the timeout counted", || async {
        tls_stats(&netd, "re").await.failed_timeout == 1
    })
    .await;
    let s = tls_stats(&netd, "re").await;
    assert_eq!(s.upstream_handshakes, 0, "{s:?}");
    assert_eq!(
        stats(&netd, "re")["proxy"]["upstreams"][0]["connections"],
        0
    );
}
