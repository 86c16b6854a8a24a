//! The Prometheus endpoint is bounded like every other socket of netd: a
//! connection cap, a header timeout, an idle keep-alive timeout, and
//! loopback only unless asked otherwise. Idle clients must not be able to
//! take descriptors from the listeners and the control plane.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::common::{DEADLINE, Netd, bound_addr, free_tcp_port};

/// A config with the metrics endpoint on `port` (plus `extra` lines in
/// `[metrics]`) and a TCP echo listener `echo`.
fn config(port: u16, extra: &str) -> String {
    format!(
        "[metrics]\nlisten = \"127.0.0.1:{port}\"\n{extra}\n\
         [[listener]]\nname = \"echo\"\nkind = \"tcp-echo\"\nlisten = \"127.0.0.1:0\"\n"
    )
}

/// Read until netd closes `s` (EOF or reset), within the deadline; returns
/// what was read before the close.
fn wait_closed(s: &mut TcpStream, what: &str) -> Vec<u8> {
    let deadline = Instant::now() + DEADLINE;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "{what}: not closed by netd within {DEADLINE:?}"
        );
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return got,
            // EINTR: a signal for another test (they share the process).
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(e) => panic!("{what}: read: {e}"),
        }
    }
}

/// True while netd keeps `s` open (nothing to read, no EOF), checked
/// without waiting.
fn still_open(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 1];
    let open = matches!(s.peek(&mut buf), Err(e) if e.kind() == ErrorKind::WouldBlock);
    s.set_nonblocking(false).unwrap();
    open
}

/// One HTTP/1.1 request on `s`, keeping the connection; returns the status
/// line and the body (read by Content-Length).
fn http_get(s: &mut TcpStream, path: &str) -> (String, String) {
    write!(s, "GET {path} HTTP/1.1\r\nHost: netd\r\n\r\n").unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut buf).expect("read response head");
        assert!(n > 0, "connection closed before the response head");
        got.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&got[..head_end]).to_string();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("no content-length in {head}"));
    while got.len() < head_end + len {
        let n = s.read(&mut buf).expect("read response body");
        assert!(n > 0, "connection closed inside the response body");
        got.extend_from_slice(&buf[..n]);
    }
    let status = head.lines().next().unwrap_or_default().to_string();
    let body = String::from_utf8_lossy(&got[head_end..head_end + len]).to_string();
    (status, body)
}

async fn scrape(port: u16) -> reqwest::Result<String> {
    reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await?
        .error_for_status()?
        .text()
        .await
}

#[test]
fn idle_connections_are_closed_after_the_header_timeout() {
    let port = free_tcp_port();
    let netd = Netd::start(&config(port, "header_timeout = \"500ms\""));
    let mut silent: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    // Started a request but never finishes its headers.
    let mut partial = TcpStream::connect(("127.0.0.1", port)).unwrap();
    partial.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();

    for (i, s) in silent.iter_mut().enumerate() {
        let got = wait_closed(s, &format!("silent connection {i}"));
        assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    }
    wait_closed(&mut partial, "connection with partial headers");

    // A client that sends its request in time is served.
    let mut ok = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (status, body) = http_get(&mut ok, "/metrics");
    assert!(status.contains(" 200 "), "{status}");
    assert!(
        body.contains("netd_connections_total{listener=\"echo\""),
        "{body}"
    );
    drop(netd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_max_connections_are_closed_at_once() {
    const MAX: usize = 4;
    let port = free_tcp_port();
    // A long header timeout: the held connections stay until we drop them.
    let netd = Netd::start(&config(
        port,
        &format!("max_connections = {MAX}\nheader_timeout = \"1h\""),
    ));
    let echo = bound_addr(&netd, "echo");

    // One source (this test's uid, as every loopback peer is told apart
    // by its user) may hold a quarter of the slots: here one. The cap on
    // all sources together is the same gate's (unit-tested in
    // netd::control::admission).
    let held: Vec<TcpStream> = (0..MAX / 4)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    // netd accepts in arrival order, so by the time it takes these, it
    // holds the first.
    let mut extra: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    for (i, s) in extra.iter_mut().enumerate() {
        let got = wait_closed(s, &format!("connection {} over the limit", MAX / 4 + i + 1));
        assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    }
    for (i, s) in held.iter().enumerate() {
        assert!(still_open(s), "held connection {i} was closed");
    }

    // Meanwhile the rest of netd works: echo and the control plane.
    let reply = netd.netctl_ok(&["probe", "tcp", &echo.to_string(), "--message", "hi"]);
    assert_eq!(reply, "hi\n");
    let list = netd.netctl_ok(&["list"]);
    assert!(list.contains("echo"), "{list}");
    // And a scrape is turned away, not queued.
    assert!(scrape(port).await.is_err(), "scrape served over the limit");

    drop(held);
    // netd frees the slots as it sees the closes; then scrapes work.
    let deadline = Instant::now() + DEADLINE;
    let text = loop {
        match scrape(port).await {
            Ok(text) => break text,
            Err(e) => assert!(Instant::now() < deadline, "no scrape after the close: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        text.contains("netd_listener_up{listener=\"echo\""),
        "{text}"
    );
    let refused: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("netd_metrics_connections_refused_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no refused counter in:\n{text}"));
    assert!(refused >= 4, "refused = {refused}");
    assert!(
        text.contains(
            "netd_endpoint_connections_refused_total{endpoint=\"metrics\",reason=\"per_source\"}"
        ),
        "{text}"
    );
}

#[test]
fn idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let port = free_tcp_port();
    // The header timeout is long: only the idle timeout can close it.
    let netd = Netd::start(&config(
        port,
        "header_timeout = \"1h\"\nidle_timeout = \"500ms\"",
    ));
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (status, body) = http_get(&mut s, "/metrics");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(body.contains("netd_connections_total"), "{body}");
    let rest = wait_closed(&mut s, "idle keep-alive connection");
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    drop(netd);
}

/// Run `netd --config <text> [args]` with a deadline; (success, stderr).
fn run_netd(config: &str, args: &[&str]) -> (bool, String) {
    let (out, path) = crate::common::netd_exit(config, args);
    let out = out.unwrap_or_else(|| {
        panic!("netd {args:?} still running after {DEADLINE:?} with:\n{config}")
    });
    let err = String::from_utf8_lossy(&out.stderr);
    (out.status.success(), err.replace(&path, "netd.toml"))
}

#[test]
fn non_loopback_metrics_listen_is_refused_at_start() {
    let port = free_tcp_port();
    let text = format!("shutdown_grace = \"1s\"\n[metrics]\nlisten = \"0.0.0.0:{port}\"\n");
    for args in [&["--check-config"][..], &[]] {
        let (ok, err) = run_netd(&text, args);
        assert!(!ok, "netd {args:?} accepted a non-loopback metrics address");
        assert!(
            err.contains("netd.toml:3: metrics.listen:")
                && err.contains("not a loopback address")
                && err.contains("allow_remote = true"),
            "{err}"
        );
    }

    // Asked for explicitly, it is allowed; loopback needs nothing.
    let (ok, err) = run_netd(&format!("{text}allow_remote = true\n"), &["--check-config"]);
    assert!(ok, "{err}");
    for listen in ["127.0.0.2:9464", "[::1]:9464", "localhost:9464"] {
        let text = format!("[metrics]\nlisten = \"{listen}\"\n");
        let (ok, err) = run_netd(&text, &["--check-config"]);
        assert!(ok, "{listen}: {err}");
    }
}

#[test]
fn metrics_limits_out_of_range_are_config_errors() {
    for (line, want) in [
        (
            "max_connections = 0",
            "metrics.max_connections: 0 is out of range",
        ),
        (
            "max_connections = 100000",
            "metrics.max_connections: 100000 is out of range",
        ),
        (
            "header_timeout = \"10ms\"",
            "metrics.header_timeout: 10ms is out of range",
        ),
        (
            "header_timeout = \"forever\"",
            "metrics.header_timeout: 'forever' is not a duration",
        ),
        (
            "idle_timeout = \"2h\"",
            "metrics.idle_timeout: 2h is out of range",
        ),
        (
            "idle_timeout = \"0s\"",
            "metrics.idle_timeout: 0s is out of range",
        ),
    ] {
        let text = format!("[metrics]\nlisten = \"127.0.0.1:9464\"\n{line}\n");
        let (ok, err) = run_netd(&text, &["--check-config"]);
        assert!(!ok, "{line} accepted");
        assert!(
            err.contains(&format!("netd.toml:3: {want}")),
            "{line}: {err}"
        );
    }
    let text = "[metrics]\nlisten = \"127.0.0.1:9464\"\nmax_connections = 1\n\
                header_timeout = \"100ms\"\nidle_timeout = \"1h\"\n";
    let (ok, err) = run_netd(text, &["--check-config"]);
    assert!(ok, "{err}");
}

/// The families, types, help texts and label sets `/metrics` exports for a
/// daemon with one listener of every kind (and a fault on each proxy):
/// exactly those of `metrics_families.txt`, which alert rules and
/// dashboards are written against. Values are left out, and the lines are
/// sorted (Prometheus does not care about the order of families).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_exports_the_same_families() {
    let port = free_tcp_port();
    let config = format!(
        "[metrics]\nlisten = \"127.0.0.1:{port}\"\n\
         [[listener]]\nname = \"te\"\nkind = \"tcp-echo\"\nlisten = \"127.0.0.1:0\"\n\
         [[listener]]\nname = \"ue\"\nkind = \"udp-echo\"\nlisten = \"127.0.0.1:0\"\n\
         [[listener]]\nname = \"web\"\nkind = \"http\"\nlisten = \"127.0.0.1:0\"\n\
         [[listener]]\nname = \"sn\"\nkind = \"sniffer\"\ninterface = \"lo\"\n\
         [[listener]]\nname = \"up\"\nkind = \"udp-proxy\"\nlisten = \"127.0.0.1:0\"\n\
         upstream = \"127.0.0.1:53\"\n\
         faults = [{{ name = \"lossy\", type = \"loss\", probability = 0.25 }}]\n\
         [[listener]]\nname = \"tp\"\nkind = \"proxy\"\nlisten = \"127.0.0.1:0\"\n\
         upstreams = [\"127.0.0.1:9\"]\n\
         [[listener.faults]]\nname = \"late\"\ntype = \"latency\"\nlatency = \"5ms\"\n\
         [[listener]]\nname = \"hp\"\nkind = \"http-proxy\"\nlisten = \"127.0.0.1:0\"\n\
         upstreams = [\"127.0.0.1:9\"]\nroutes = [\"/api\"]\n"
    );
    // And a listener serving TLS: the netd_tls_* families.
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = crate::common::pki::Pki::new(pki_dir.path(), "m");
    let (cert, key) = pki.issue("tte", "tte", &["localhost"], false);
    let config = format!(
        "{config}[[listener]]\nname = \"tte\"\nkind = \"tcp-echo\"\nlisten = \"127.0.0.1:0\"\n\
         tls_cert = \"{}\"\ntls_key = \"{}\"\n",
        cert.display(),
        key.display()
    );
    let netd = Netd::start(&config);
    let text = scrape(port).await.expect("scrape");
    let mut got: Vec<String> = text
        .lines()
        .filter(|l| !l.is_empty() && *l != "# EOF")
        .map(|l| {
            if l.starts_with('#') {
                l.to_string()
            } else {
                // Drop the value (and a timestamp, if any).
                let end = l
                    .rfind('}')
                    .map_or_else(|| l.find(' ').unwrap_or(l.len()), |i| i + 1);
                l[..end].to_string()
            }
        })
        .collect();
    got.sort();
    let got = got.join("\n") + "\n";
    let want = include_str!("metrics_families.txt");
    assert!(
        got == want,
        "/metrics families differ from tests/it/metrics_families.txt; got:\n{got}"
    );
    drop(netd);
}
