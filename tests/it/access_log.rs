//! The access log: lines for HTTP requests and proxied connections land in
//! the configured file with their fields, a listener with
//! `access_log = false` writes none, SIGUSR1 after logrotate's rename opens
//! a new file, and when the output stalls lines are dropped and counted
//! while requests keep being served.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{DEADLINE, NETD, Netd, TestUpstream, bound_addr, free_tcp_port, wait_until};

/// One GET on a keep-alive connection; returns the status code.
fn get(s: &mut TcpStream, path: &str) -> u16 {
    // One write: pieces would meet Nagle and delayed ACKs (40 ms each).
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: netd\r\n\r\n").as_bytes())
        .unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut buf).expect("read the response head");
        assert!(n > 0, "closed before the response head");
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
        .unwrap_or(0);
    while got.len() < head_end + len {
        let n = s.read(&mut buf).expect("read the response body");
        assert!(n > 0, "closed inside the response body");
        got.extend_from_slice(&buf[..n]);
    }
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head}"))
}

fn get_once(addr: SocketAddr, path: &str) -> u16 {
    get(&mut TcpStream::connect(addr).unwrap(), path)
}

/// The value of an unlabelled series in a `/metrics` scrape.
fn metric(port: u16, name: &str) -> Option<u64> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: netd\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    s.set_read_timeout(Some(DEADLINE)).ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The lines of the file at `path` (none if it does not exist yet).
fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

/// The first line of `path` containing `needle`, waiting for it.
fn wait_line(path: &Path, needle: &str) -> String {
    let mut found = None;
    wait_until(
        &format!("a line with {needle} in {}", path.display()),
        || {
            found = lines(path).into_iter().find(|l| l.contains(needle));
            found.is_some()
        },
    );
    found.unwrap()
}

/// logfmt `key=value` pairs of a line (values unquoted; enough for these
/// lines, whose quoted values hold no `"`).
fn fields(line: &str) -> std::collections::HashMap<String, String> {
    let mut out = std::collections::HashMap::new();
    let mut rest = line.trim();
    while let Some((k, v)) = rest.split_once('=') {
        let (value, tail) = if let Some(q) = v.strip_prefix('"') {
            let end = q.find('"').expect("closing quote");
            (&q[..end], &q[end + 1..])
        } else {
            v.split_once(' ').unwrap_or((v, ""))
        };
        out.insert(k.trim().to_string(), value.to_string());
        rest = tail.trim_start();
    }
    out
}

/// Set the `access_log` field of HTTP listener `name` (UpdateListener).
fn set_access_log(netd: &Netd, name: &str, on: bool) {
    use netd::proto::{self, listener_spec::Kind};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = netd.client().await;
        let l = c
            .get_listener(proto::GetListenerRequest { name: name.into() })
            .await
            .unwrap()
            .into_inner()
            .listener
            .unwrap();
        let mut spec = l.spec.unwrap();
        match spec.kind.as_mut() {
            Some(Kind::Http(h)) => h.access_log = Some(on),
            other => panic!("not an HTTP listener: {other:?}"),
        }
        c.update_listener(proto::UpdateListenerRequest {
            name: name.into(),
            spec: Some(spec),
            set_labels: false,
            labels: Default::default(),
        })
        .await
        .unwrap();
    });
}

struct Setup {
    netd: Netd,
    _logs: tempfile::TempDir,
    log: PathBuf,
    metrics: u16,
    _upstream: TestUpstream,
}

/// netd with the access log in a file, `/metrics`, HTTP listeners `web`
/// (logged) and `quiet` (`access_log = false`) and a proxy `p` to an echo
/// upstream.
fn setup() -> Setup {
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("netd").join("access.log");
    let metrics = free_tcp_port();
    let upstream = TestUpstream::echo(b"");
    let netd = Netd::start(&format!(
        "[access_log]\npath = \"{}\"\n\
         [metrics]\nlisten = \"127.0.0.1:{metrics}\"\n\
         [[listener]]\nname = \"web\"\nkind = \"http\"\nlisten = \"127.0.0.1:0\"\n\
         [[listener]]\nname = \"quiet\"\nkind = \"http\"\nlisten = \"127.0.0.1:0\"\naccess_log = false\n\
         [[listener]]\nname = \"p\"\nkind = \"proxy\"\nlisten = \"127.0.0.1:0\"\nupstreams = [\"{}\"]\n",
        log.display(),
        upstream.addr
    ));
    Setup {
        netd,
        _logs: logs,
        log,
        metrics,
        _upstream: upstream,
    }
}

#[test]
fn http_and_proxy_lines_have_their_fields_and_a_listener_can_opt_out() {
    let s = setup();
    let web = bound_addr(&s.netd, "web");
    let quiet = bound_addr(&s.netd, "quiet");
    let proxy = bound_addr(&s.netd, "p");

    // The quiet listener's request comes first: lines are written in the
    // order they are made, so once web's line is there, quiet's would be.
    assert_eq!(get_once(quiet, "/from-quiet"), 200);
    let mut c = TcpStream::connect(web).unwrap();
    let client = c.local_addr().unwrap();
    assert_eq!(get(&mut c, "/from-web"), 200);
    assert_eq!(get(&mut c, "/missing?x=1"), 200);

    let line = wait_line(&s.log, "/from-web");
    let f = fields(&line);
    assert_eq!(f["listener"], "web", "{line}");
    assert_eq!(f["client"], client.to_string(), "{line}");
    assert_eq!(f["method"], "GET", "{line}");
    assert_eq!(f["path"], "/from-web", "{line}");
    assert_eq!(f["status"], "200", "{line}");
    assert!(f["bytes"].parse::<u64>().unwrap() > 0, "{line}");
    assert!(f["duration_us"].parse::<u64>().is_ok(), "{line}");
    assert!(f["ts"].ends_with('Z'), "{line}");
    // The query is not logged (it may carry secrets); the path is.
    let second = wait_line(&s.log, "/missing");
    assert!(!second.contains("x=1"), "{second}");
    assert!(
        !lines(&s.log).iter().any(|l| l.contains("quiet")),
        "access_log = false: {:?}",
        lines(&s.log)
    );

    // One proxied exchange, closed by the client.
    {
        let mut p = TcpStream::connect(proxy).unwrap();
        p.write_all(b"hello").unwrap();
        let mut buf = [0u8; 5];
        p.set_read_timeout(Some(DEADLINE)).unwrap();
        p.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");
    }
    let line = wait_line(&s.log, "listener=p ");
    let f = fields(&line);
    assert_eq!(f["upstream"], s._upstream.addr.to_string(), "{line}");
    assert_eq!(f["bytes_up"], "5", "{line}");
    assert_eq!(f["bytes_down"], "5", "{line}");
    assert_eq!(f["end"], "closed", "{line}");
    assert!(f.contains_key("duration_ms"), "{line}");

    // Turned off and on at run time (UpdateListener: `netctl update` of an
    // HTTP listener trips over netctl's global --connect-timeout).
    set_access_log(&s.netd, "web", false);
    let v = s.netd.netctl_json(&["status", "web"]);
    assert_eq!(v["spec"]["access_log"], false, "{v}");
    let web = bound_addr(&s.netd, "web");
    assert_eq!(get_once(web, "/after-update"), 200);
    assert_eq!(get_once(quiet, "/marker"), 200);
    set_access_log(&s.netd, "quiet", true);
    let quiet = bound_addr(&s.netd, "quiet");
    assert_eq!(get_once(quiet, "/now-logged"), 200);
    wait_line(&s.log, "/now-logged");
    assert!(
        !lines(&s.log).iter().any(|l| l.contains("/after-update")),
        "web after --access-log false: {:?}",
        lines(&s.log)
    );

    // The counters are on /metrics; nothing was dropped.
    assert_eq!(metric(s.metrics, "netd_access_log_dropped_total"), Some(0));
    assert!(metric(s.metrics, "netd_access_log_written_total").is_some_and(|n| n >= 3));
}

#[test]
fn sigusr1_reopens_the_file_after_a_rename() {
    let s = setup();
    let web = bound_addr(&s.netd, "web");
    assert_eq!(get_once(web, "/before-rotate"), 200);
    wait_line(&s.log, "/before-rotate");

    // What logrotate does: move the file, then signal.
    let rotated = s.log.with_extension("log.1");
    std::fs::rename(&s.log, &rotated).unwrap();
    s.netd.signal(libc::SIGUSR1);
    wait_until("the access log opened again", || s.log.exists());
    assert_eq!(get_once(web, "/after-rotate"), 200);
    wait_line(&s.log, "/after-rotate");
    let old = lines(&rotated);
    assert!(old.iter().any(|l| l.contains("/before-rotate")), "{old:?}");
    assert!(!old.iter().any(|l| l.contains("/after-rotate")), "{old:?}");
    assert!(
        !lines(&s.log).iter().any(|l| l.contains("/before-rotate")),
        "the new file starts empty"
    );
}

#[test]
fn the_access_log_refuses_a_symbolic_link() {
    let logs = tempfile::tempdir().unwrap();
    let target = logs.path().join("elsewhere");
    std::fs::write(&target, "keep").unwrap();
    let link = logs.path().join("access.log");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let (out, _) = crate::common::netd_exit(
        &format!("[access_log]\npath = \"{}\"\n", link.display()),
        &[],
    );
    let out = out.expect("netd exits");
    assert!(!out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("symbolic link"), "{log}");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
}

/// With stderr a pipe nobody reads, the writer blocks once the pipe is
/// full; then the buffer fills and lines are dropped and counted, while
/// every request is still answered.
#[test]
fn a_stalled_output_drops_and_counts_lines_but_never_blocks_requests() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = free_tcp_port();
    let cfg = dir.path().join("netd.toml");
    std::fs::write(
        &cfg,
        format!(
            "[access_log]\nbuffer_bytes = 65536\n\
             [metrics]\nlisten = \"127.0.0.1:{metrics}\"\n\
             [[listener]]\nname = \"web\"\nkind = \"http\"\nlisten = \"127.0.0.1:0\"\n"
        ),
    )
    .unwrap();
    let control = netd::util::addr::ControlAddr::Unix(dir.path().join("netd.sock"));
    let mut cmd = Command::new(NETD);
    cmd.arg("--config").arg(&cfg);
    // The read end stays in the Child, unread.
    let netd = Netd::spawn_with_stderr(cmd, dir, control, Stdio::piped());
    let web = bound_addr(&netd, "web");

    // A pipe holds 64 KiB and the buffer 64 KiB: with lines of ~130 bytes,
    // about 1,000 requests fill both. Bounded: 20,000 requests or 60 s.
    let began = Instant::now();
    let mut c = TcpStream::connect(web).unwrap();
    let mut served = 0u64;
    let mut dropped = 0;
    while served < 20_000 && began.elapsed() < Duration::from_secs(60) {
        assert_eq!(get(&mut c, "/fill"), 200);
        served += 1;
        if served % 250 == 0 {
            dropped = metric(metrics, "netd_access_log_dropped_total").unwrap_or(0);
            if dropped > 0 {
                break;
            }
        }
    }
    assert!(dropped > 0, "nothing dropped after {served} requests");
    // Still serving, on the same connection and on a new one, and the
    // lines of later requests are dropped too. The buffer is split in
    // shards, one per runtime thread: a request served on another thread
    // than the ones that filled theirs still finds room (at most 4 x 16 KiB,
    // some 500 lines), so keep going past that, bounded.
    let mut after = dropped;
    for i in 1..=2_000 {
        assert_eq!(get(&mut c, "/more"), 200);
        if i % 100 == 0 {
            after = metric(metrics, "netd_access_log_dropped_total").unwrap();
            if after >= dropped + 90 {
                break;
            }
        }
    }
    assert_eq!(get_once(web, "/new-connection"), 200);
    assert!(after >= dropped + 90, "{after} < {dropped} + 90");
}

#[test]
fn with_json_logs_each_line_is_a_json_object() {
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("access.log");
    let netd = Netd::start(&format!(
        "[log]\nformat = \"json\"\n[access_log]\npath = \"{}\"\n\
         [[listener]]\nname = \"web\"\nkind = \"http\"\nlisten = \"127.0.0.1:0\"\n",
        log.display()
    ));
    let web = bound_addr(&netd, "web");
    assert_eq!(get_once(web, "/say%20%22hi%22"), 200);
    let line = wait_line(&log, "/say");
    let v: serde_json::Value = serde_json::from_str(&line).expect(&line);
    assert_eq!(v["listener"], "web", "{line}");
    assert_eq!(v["method"], "GET", "{line}");
    assert_eq!(v["path"], "/say%20%22hi%22", "{line}");
    assert_eq!(v["status"], 200, "{line}");
    assert!(v["duration_us"].is_u64(), "{line}");
}
