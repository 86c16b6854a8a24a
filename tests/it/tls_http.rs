//! HTTPS on the http kind (`--tls-cert/--tls-key`): real clients (curl
//! over HTTP/1.1 and h2, Python's ssl module, rustls) get the same JSON as
//! on plaintext; ALPN picks the protocol; bearer token, rate limit and the
//! body limit hold inside TLS; a plaintext client gets a 400, is closed
//! and counted;
//! client certificates are required when asked for, and the verified one
//! is named in the access log.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::pki::{Pki, tls_connector};
use crate::common::{Netd, bound_addr, wait_until_async};
use crate::tls::tls_stats;

/// Start an https listener with a certificate for localhost/127.0.0.1.
fn start_https(netd: &Netd, pki: &Pki, name: &str, extra: &[&str]) -> SocketAddr {
    let (cert, key) = pki.issue(name, "localhost", &["localhost", "127.0.0.1"], false);
    let mut args = vec![
        "start",
        "http",
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

/// curl against `https://localhost:PORT{path}` trusting `ca`, with extra
/// arguments; its output is the body, then a line with the status and the
/// HTTP version. None when curl failed.
fn curl(addr: SocketAddr, ca: &Path, path: &str, extra: &[&str]) -> Option<(String, u16, String)> {
    let port = addr.port();
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "15", "--cacert"])
        .arg(ca)
        .arg("--resolve")
        .arg(format!("localhost:{port}:127.0.0.1"))
        .args(["-w", "\n%{http_code} %{http_version}"])
        .args(extra)
        .arg(format!("https://localhost:{port}{path}"))
        .output()
        .expect("curl");
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, tail) = text.rsplit_once('\n').unwrap();
    let (code, version) = tail.split_once(' ').unwrap();
    Some((body.to_string(), code.parse().unwrap(), version.to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_over_http1_and_h2_and_python_get_the_json_echo() {
    let netd = Netd::start("");
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "t");
    let addr = start_https(&netd, &pki, "web", &[]);
    let ca = pki.ca_path("t");

    let (body, code, version) = curl(addr, &ca, "/a/b?k=v1&k=v2", &["--http1.1"]).unwrap();
    assert_eq!((code, version.as_str()), (200, "1.1"));
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/a/b");
    assert_eq!(v["query_params"]["k"], serde_json::json!(["v1", "v2"]));
    assert_eq!(tls_stats(&netd, "web").await.last_alpn, "http/1.1");

    let (body, code, version) = curl(
        addr,
        &ca,
        "/h2",
        &[
            "--http2",
            "-H",
            "content-type: application/json",
            "-d",
            "{\"a\":1}",
        ],
    )
    .unwrap();
    assert_eq!((code, version.as_str()), (201, "2"), "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["received"]["a"], 1);
    let s = tls_stats(&netd, "web").await;
    assert_eq!(s.last_alpn, "h2", "{s:?}");
    assert_eq!(s.last_version, "TLSv1.3");

    // Python's ssl module verifying against the CA, HTTP/1.1.
    let script = "import http.client, ssl, sys\n\
        ctx = ssl.create_default_context(cafile=sys.argv[1])\n\
        c = http.client.HTTPSConnection('localhost', int(sys.argv[2]), context=ctx, timeout=15)\n\
        c.request('GET', '/py?x=1')\n\
        r = c.getresponse()\n\
        print(r.status)\n\
        print(r.read().decode())\n";
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&ca)
        .arg(addr.port().to_string())
        .output()
        .expect("python3");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, body) = text.split_once('\n').unwrap();
    assert_eq!(status, "200");
    let v: Value = serde_json::from_str(body.trim()).unwrap();
    assert_eq!(v["path"], "/py");
    assert_eq!(v["query_params"]["x"], serde_json::json!(["1"]));

    let s = tls_stats(&netd, "web").await;
    assert_eq!(s.handshakes, 3, "{s:?}");
    let http = &netd.netctl_json(&["status", "web"])["stats"]["http"];
    assert_eq!(http["requests"], 3, "{http}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_and_rate_limit_hold_over_tls() {
    let netd = Netd::start("");
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "t");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret\n").unwrap();
    // Three requests an hour: the fourth is refused however slow the run.
    let addr = start_https(
        &netd,
        &pki,
        "web",
        &[
            "--token-file",
            token_file.to_str().unwrap(),
            "--rate-limit",
            "3/h",
        ],
    );
    let ca = pki.ca_path("t");
    let auth = ["-H", "Authorization: Bearer s3cret"];
    let code = |extra: &[&str]| curl(addr, &ca, "/", extra).unwrap().1;
    assert_eq!(code(&[]), 401);
    assert_eq!(code(&auth), 200);
    assert_eq!(code(&["--http2", auth[0], auth[1]]), 200);
    assert_eq!(code(&auth), 429);
    let http = &netd.netctl_json(&["status", "web"])["stats"]["http"];
    assert_eq!(
        (http["unauthorized"].as_u64(), http["rate_limited"].as_u64()),
        (Some(1), Some(1)),
        "{http}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_http_to_the_tls_port_gets_400_is_closed_and_counted() {
    let netd = Netd::start("");
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "t");
    let addr = start_https(&netd, &pki, "web", &[]);
    let reply = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        conn.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        // Until netd closes (EOF or reset); a read timeout is a hang.
        loop {
            match conn.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("netd did not close the connection: {e}"),
            }
        }
        got
    })
    .await
    .unwrap();
    // A 400 that says what is wrong, not TLS alert bytes (which curl
    // reads as "HTTP/0.9").
    let reply = String::from_utf8(reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 400 "), "{reply}");
    assert!(
        reply.contains("plain HTTP sent to an HTTPS listener"),
        "{reply}"
    );
    wait_until_async("failed_other counted", || async {
        tls_stats(&netd, "web").await.failed_other == 1
    })
    .await;
    let s = tls_stats(&netd, "web").await;
    assert_eq!(s.handshakes, 0, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_required_when_a_client_ca_is_set() {
    let netd = Netd::start("");
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "t");
    let clients = Pki::new(dir.path(), "clients");
    let (cert, key): (PathBuf, PathBuf) = clients.issue("alice", "alice", &["alice"], false);
    let client_ca = clients.ca_path("clients");
    let addr = start_https(
        &netd,
        &pki,
        "web",
        &["--tls-client-ca", client_ca.to_str().unwrap()],
    );
    let ca = pki.ca_path("t");
    assert!(
        curl(addr, &ca, "/", &[]).is_none(),
        "served without a client certificate"
    );
    wait_until_async("the refused handshake counted", || async {
        tls_stats(&netd, "web").await.failed_bad_certificate == 1
    })
    .await;
    let (_, code, _) = curl(
        addr,
        &ca,
        "/",
        &[
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
    )
    .expect("served with a client certificate");
    assert_eq!(code, 200);
    let s = tls_stats(&netd, "web").await;
    assert_eq!(s.last_client_subject, "CN=alice", "{s:?}");
    assert_eq!(s.handshakes, 1, "{s:?}");
    // The access-log line names the verified client.
    wait_until_async("the access-log line", || async {
        netd.log()
            .lines()
            .any(|l| l.contains("listener=web") && l.contains("tls_client=\"CN=alice\""))
    })
    .await;
}

/// As on plaintext: a client that sends its whole oversized body before it
/// reads still gets the 413 (the lingering close drains under TLS too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_body_gets_its_413_over_tls() {
    let netd = Netd::start("");
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "t");
    let addr = start_https(&netd, &pki, "web", &["--max-body", "1024"]);
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let connector = tls_connector(&pki.ca_path("t"), &["http/1.1"], None);
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let body = vec![b'x'; 8 * 1024 * 1024];
    let head = format!(
        "POST /up HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let reply = tokio::time::timeout(Duration::from_secs(30), async {
        tls.write_all(head.as_bytes()).await.unwrap();
        tls.write_all(&body)
            .await
            .expect("netd reset the connection");
        tls.flush().await.unwrap();
        let mut reply = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match tls.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => reply.extend_from_slice(&buf[..n]),
                // A close without close_notify after the reply is fine.
                Err(e) if !reply.is_empty() => {
                    eprintln!("after the reply: {e}");
                    break;
                }
                Err(e) => panic!("no reply: {e}"),
            }
        }
        String::from_utf8(reply).unwrap()
    })
    .await
    .expect("netd answered within 30s");
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(reply.contains("body larger than 1024 bytes"), "{reply}");
}

/// A client that connects and sends nothing holds its slot only until the
/// handshake deadline, and is counted as a timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_closed_at_the_handshake_deadline() {
    let netd = Netd::start("");
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "t");
    let addr = start_https(&netd, &pki, "web", &["--tls-handshake-timeout", "300ms"]);
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut conn = std::net::TcpStream::connect(addr).unwrap();
        // Far beyond the deadline, well within the 10s header timeout.
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 64];
        match conn.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("netd should close a silent client: {other:?}"),
        }
    })
    .await
    .unwrap();
    wait_until_async("failed_timeout counted", || async {
        tls_stats(&netd, "web").await.failed_timeout == 1
    })
    .await;
}

/// An update starts a new generation of the listener: its TLS counters
/// go on from the old one's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_counters_carry_over_an_update() {
    let netd = Netd::start("");
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "t");
    let addr = start_https(&netd, &pki, "web", &[]);
    let ca = pki.ca_path("t");
    assert_eq!(curl(addr, &ca, "/", &[]).unwrap().1, 200);
    netd.netctl_ok(&["update", "web", "--max-body", "2048"]);
    assert_eq!(
        netd.netctl_json(&["status", "web"])["spec"]["max_body_bytes"],
        2048
    );
    assert_eq!(curl(addr, &ca, "/", &[]).unwrap().1, 200);
    let s = tls_stats(&netd, "web").await;
    assert_eq!(s.handshakes, 2, "{s:?}");
}
