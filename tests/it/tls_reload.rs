//! Certificates of a TLS tcp-echo replaced while clients keep coming: by
//! SIGHUP (with `netctl reload`'s report), by the files changing on disk,
//! and by `netctl update`. New handshakes get the new certificate, none
//! fails, a connection opened before keeps echoing under the old one; a
//! bad new certificate (wrong key, expired, garbage) is refused with the
//! reason and the old one keeps serving. Also what people and Prometheus
//! see of it: `netctl status`/`stats` and the `netd_tls_*` families.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::pki::{Pki, tls_connector};
use crate::common::{Netd, bound_addr, free_tcp_port, wait_until_async};
use crate::tls::tls_stats;
use netd::proto;

type Client = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// Handshakes the client loop makes at most (it stops earlier when told).
const MAX_LOOP: usize = 5_000;

/// A PKI and the two files the listener serves (`live.pem`,
/// `live-key.pem`), first with a certificate for CN=old.
struct Files {
    dir: tempfile::TempDir,
    pki: Pki,
    cert: PathBuf,
    key: PathBuf,
}

impl Files {
    fn new() -> Files {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path(), "t");
        let (cert, key) = pki.issue("live", "old", &["localhost"], false);
        Files {
            dir,
            pki,
            cert,
            key,
        }
    }

    /// The config of netd with the listener `tls` serving the files.
    fn config(&self, extra: &str) -> String {
        format!(
            "{extra}[[listener]]\nname = \"tls\"\nkind = \"tcp-echo\"\nlisten = \"127.0.0.1:0\"\n\
             tls_cert = \"{}\"\ntls_key = \"{}\"\n",
            self.cert.display(),
            self.key.display()
        )
    }

    /// Put `cert` and `key` in place of the served files the way
    /// certificate tools do: written beside them, then renamed over.
    fn replace_with(&self, cert: &Path, key: &Path) {
        std::fs::rename(key, &self.key).unwrap();
        std::fs::rename(cert, &self.cert).unwrap();
    }

    /// A new certificate for `cn`, renamed over the served files.
    fn rotate(&self, cn: &str) {
        let (c, k) = self
            .pki
            .issue(&format!("next-{cn}"), cn, &["localhost"], false);
        self.replace_with(&c, &k);
    }
}

/// Handshake with `addr` trusting the test CA; the common name the server
/// presented.
async fn connect(ca: &Path, addr: std::net::SocketAddr) -> std::io::Result<(Client, String)> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tls_connector(ca, &[], None).connect(name, tcp).await?;
    let cn = subject(&tls);
    Ok((tls, cn))
}

fn subject(tls: &Client) -> String {
    let der = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
    cert.subject().to_string()
}

async fn echo(tls: &mut Client, msg: &[u8]) -> std::io::Result<()> {
    tls.write_all(msg).await?;
    let mut back = vec![0u8; msg.len()];
    tls.read_exact(&mut back).await?;
    assert_eq!(back, msg);
    Ok(())
}

/// New connections in a loop until `stop` (at most [`MAX_LOOP`]): each
/// handshakes, echoes and closes. Returns the subjects seen, in order of
/// first sight, and the errors.
fn client_loop(
    ca: PathBuf,
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(Vec<String>, Vec<String>)> {
    tokio::spawn(async move {
        let mut seen: Vec<String> = Vec::new();
        let mut errors = Vec::new();
        for _ in 0..MAX_LOOP {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            match connect(&ca, addr).await {
                Ok((mut tls, cn)) => {
                    if let Err(e) = echo(&mut tls, b"loop").await {
                        errors.push(format!("echo: {e}"));
                    }
                    let _ = tls.shutdown().await;
                    if !seen.contains(&cn) {
                        seen.push(cn);
                    }
                }
                Err(e) => errors.push(format!("handshake: {e}")),
            }
        }
        (seen, errors)
    })
}

/// Run `rotate` while clients keep connecting: it must bring CN=new to new
/// handshakes with none failing, while a connection opened before keeps
/// echoing under CN=old.
async fn rotation_under_load(netd: &Netd, files: &Files, rotate: impl FnOnce()) {
    let addr = bound_addr(netd, "tls");
    let ca = files.pki.ca_path("t");
    let (mut held, cn) = connect(&ca, addr).await.unwrap();
    assert_eq!(cn, "CN=old");
    echo(&mut held, b"before").await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let clients = client_loop(ca.clone(), addr, stop.clone());
    // Some connections under the old certificate first.
    wait_until_async("handshakes under the old certificate", || async {
        tls_stats(netd, "tls").await.handshakes > 5
    })
    .await;
    rotate();
    wait_until_async("a handshake with the new certificate", || async {
        connect(&ca, addr).await.unwrap().1 == "CN=new"
    })
    .await;
    // And some under the new one.
    let after = tls_stats(netd, "tls").await.handshakes;
    wait_until_async("handshakes under the new certificate", || async {
        tls_stats(netd, "tls").await.handshakes > after + 5
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let (seen, errors) = clients.await.unwrap();
    assert!(errors.is_empty(), "client loop errors: {errors:?}");
    assert_eq!(seen, ["CN=old", "CN=new"]);
    // The connection from before the change still echoes, under CN=old.
    echo(&mut held, b"after").await.unwrap();
    assert_eq!(subject(&held), "CN=old");
    let s = tls_stats(netd, "tls").await;
    assert_eq!(s.certificate_subject, "CN=new");
    assert!(s.reloads >= 1, "{s:?}");
    let failed = s.failed_no_shared_cipher
        + s.failed_unknown_ca
        + s.failed_bad_certificate
        + s.failed_protocol_version
        + s.failed_timeout
        + s.failed_other;
    assert_eq!(failed, 0, "{s:?}");
}

/// The file watch out of the way (an hour), so that only the trigger
/// under test reloads.
const NO_WATCH: [(&str, &str); 1] = [("NETD_TLS_WATCH_INTERVAL", "1h")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_netctl_reload_rotate_the_certificate_under_load() {
    let files = Files::new();
    let netd = Netd::start_with_env(&files.config(""), &NO_WATCH);
    rotation_under_load(&netd, &files, || {
        files.rotate("new");
        netd.signal(libc::SIGHUP);
    })
    .await;
    // netctl reload re-reads it too, and says so.
    let json = netd.netctl_json(&["reload"]);
    assert_eq!(json["tls_reloaded"], 1, "{json}");
    assert_eq!(json["tls_refused"], serde_json::json!([]), "{json}");
    let out = netd.netctl_ok(&["reload"]);
    assert!(out.contains("TLS certificates re-read: 1"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_changed_on_disk_is_picked_up_and_a_bad_one_refused_once() {
    let files = Files::new();
    let netd = Netd::start_with_env(&files.config(""), &[("NETD_TLS_WATCH_INTERVAL", "100ms")]);
    rotation_under_load(&netd, &files, || files.rotate("new")).await;

    // Garbage in place of the certificate: refused, logged once however
    // many polls see it, shown in status; CN=new keeps serving.
    let refusals = |log: &str| {
        log.lines()
            .filter(|l| l.contains("changed on disk but cannot be used"))
            .count()
    };
    // (A poll between the two renames of the rotation may have refused
    // the new key with the old certificate already.)
    let failures = tls_stats(&netd, "tls").await.reload_failures;
    let logged = refusals(&netd.log());
    let mut events = netd
        .client()
        .await
        .watch_events(proto::WatchEventsRequest { name: "tls".into() })
        .await
        .unwrap()
        .into_inner();
    std::fs::write(files.cert.with_extension("tmp"), "not a certificate\n").unwrap();
    std::fs::rename(files.cert.with_extension("tmp"), &files.cert).unwrap();
    wait_until_async("the garbage refused", || async {
        tls_stats(&netd, "tls").await.reload_failures == failures + 1
    })
    .await;
    // Ten more polls at least: the same files are not tried again.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(tls_stats(&netd, "tls").await.reload_failures, failures + 1);
    assert_eq!(refusals(&netd.log()), logged + 1, "{}", netd.log());
    let status = netd.netctl_ok(&["status", "tls"]);
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("tls_refused:") && l.contains("tls_cert")),
        "{status}"
    );
    let (_, cn) = connect(&files.pki.ca_path("t"), bound_addr(&netd, "tls"))
        .await
        .unwrap();
    assert_eq!(cn, "CN=new");
    // And the refusal was an event of the listener.
    let event = tokio::time::timeout(crate::common::DEADLINE, async {
        loop {
            let e = events.message().await.unwrap().expect("event stream ended");
            if e.kind() == proto::EventKind::ReloadFailed {
                return e;
            }
        }
    })
    .await
    .expect("no reload_failed event");
    assert_eq!(event.listener, "tls");
    assert!(event.message.contains("tls_cert"), "{event:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netctl_update_with_new_files_keeps_connections_and_counters() {
    let files = Files::new();
    let netd = Netd::start_with_env(&files.config(""), &NO_WATCH);
    let (cert, key) = files.pki.issue("other", "new", &["localhost"], false);
    rotation_under_load(&netd, &files, || {
        netd.netctl_ok(&[
            "update",
            "tls",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ]);
    })
    .await;
    // The counters went on from the old generation's: netctl shows them.
    let json = netd.netctl_json(&["status", "tls"]);
    let tls = &json["stats"]["tls"];
    assert!(tls["handshakes"].as_u64().unwrap() > 10, "{json}");
    assert_eq!(tls["reloads"], 1, "{json}");
    assert_eq!(tls["certificate_subject"], "CN=new", "{json}");

    // An expired certificate is refused, naming the key; CN=new serves on.
    let (old_cert, old_key) = files.pki.issue("expired", "gone", &["localhost"], true);
    let err = netd.netctl_err(&[
        "update",
        "tls",
        "--tls-cert",
        old_cert.to_str().unwrap(),
        "--tls-key",
        old_key.to_str().unwrap(),
    ]);
    assert!(err.contains("tls_cert") && err.contains("expired"), "{err}");
    let (_, cn) = connect(&files.pki.ca_path("t"), bound_addr(&netd, "tls"))
        .await
        .unwrap();
    assert_eq!(cn, "CN=new");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_new_certificate_is_refused_by_reload_and_the_old_one_serves() {
    let files = Files::new();
    let netd = Netd::start_with_env(&files.config(""), &NO_WATCH);
    let addr = bound_addr(&netd, "tls");
    let ca = files.pki.ca_path("t");
    let (a_cert, _) = files.pki.issue("a", "a", &["localhost"], false);
    let (_, b_key) = files.pki.issue("b", "b", &["localhost"], false);
    let (x_cert, x_key) = files.pki.issue("x", "x", &["localhost"], true);
    let (g_cert, g_key) = files.pki.issue("g", "g", &["localhost"], false);
    std::fs::write(&g_cert, "garbage\n").unwrap();
    for (cert, key, why) in [
        (&a_cert, &b_key, "do not make a usable pair"),
        (&x_cert, &x_key, "expired"),
        (&g_cert, &g_key, "no certificate in the file"),
    ] {
        files.replace_with(cert, key);
        let out = netd.netctl(&["reload"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        // The config names the files, so its check fails too (nothing
        // of it changes); the certificate is refused on the listener.
        assert!(
            err.contains("TLS certificate refused, the old one keeps serving: tls: ")
                && err.contains(why),
            "{err}"
        );
        let (mut tls, cn) = connect(&ca, addr).await.unwrap();
        assert_eq!(cn, "CN=old", "after {why}");
        echo(&mut tls, b"still").await.unwrap();
    }
    let s = tls_stats(&netd, "tls").await;
    assert_eq!((s.reloads, s.reload_failures), (0, 3), "{s:?}");
    assert!(s.last_reload_error.contains("no certificate"), "{s:?}");
}

async fn scrape(port: u16) -> String {
    reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the series starting with `series` (labels included).
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_in_metrics_status_and_stats() {
    let files = Files::new();
    let port = free_tcp_port();
    let netd = Netd::start_with_env(
        &files.config(&format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n")),
        &NO_WATCH,
    );
    let addr = bound_addr(&netd, "tls");
    let (mut tls, _) = connect(&files.pki.ca_path("t"), addr).await.unwrap();
    echo(&mut tls, b"hi").await.unwrap();
    // A client that does not trust the certificate.
    let other = Pki::new(files.dir.path(), "other");
    assert!(connect(&other.ca_path("other"), addr).await.is_err());
    wait_until_async("the refusal counted", || async {
        tls_stats(&netd, "tls").await.failed_unknown_ca == 1
    })
    .await;

    let text = scrape(port).await;
    let l = "listener=\"tls\",kind=\"tcp-echo\"";
    assert_eq!(
        value(&text, &format!("netd_tls_handshakes_total{{{l}}}")),
        1.0
    );
    assert_eq!(
        value(
            &text,
            &format!("netd_tls_handshake_failures_total{{{l},reason=\"unknown_ca\"}}")
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            &format!("netd_tls_handshake_failures_total{{{l},reason=\"timeout\"}}")
        ),
        0.0
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as f64;
    let expiry = value(
        &text,
        &format!("netd_tls_certificate_expiry_seconds{{{l}}}"),
    );
    assert!(expiry > now, "expiry {expiry} is not after now {now}");
    assert_eq!(
        value(
            &text,
            &format!("netd_tls_reloads_total{{{l},result=\"ok\"}}")
        ),
        0.0
    );
    // tcp-echo originates no TLS: no upstream series.
    assert!(
        !text.contains("netd_tls_upstream_handshakes_total{"),
        "{text}"
    );

    // netctl status: the TLS lines.
    let status = netd.netctl_ok(&["status", "tls"]);
    assert!(
        status.lines().any(|l| l.starts_with("tls:")
            && l.contains("1 handshakes, 1 failed (unknown_ca 1), 0 reloads, 0 refused")),
        "{status}"
    );
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("tls_cert:") && l.contains("CN=old, expires 4096-01-01T")),
        "{status}"
    );
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("tls_last:") && l.contains("TLSv1.3 TLS13_")),
        "{status}"
    );
    // netctl stats: the DETAIL cell.
    let stats = netd.netctl_ok(&["stats", "tls"]);
    assert!(stats.contains("tls 1 hs, 1 fail"), "{stats}");
    // JSON: failures by reason under stats.tls.
    let json = netd.netctl_json(&["status", "tls"]);
    assert_eq!(json["stats"]["tls"]["failed"]["unknown_ca"], 1, "{json}");
}
