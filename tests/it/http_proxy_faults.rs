//! HTTP faults on an http-proxy, seen by real clients: curl (HTTP/1.1 and
//! h2c), a keep-alive HTTP/1.1 client for counting, a Python grpcio
//! client; upstreams are a netd `http` listener or a small Python server
//! where the request the upstream saw must be observed. The control side:
//! `netctl fault add|update|ls`, export/apply, refused attributes, and
//! Envoy's x-envoy-fault-* headers on and off.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::common::py_server::PyServer;
use crate::common::{Netd, bound_addr};

/// netd with an `http` upstream `up` and an http-proxy `hp` in front of
/// it (`envoy_fault_headers` as given), and a second proxy `plain`
/// without Envoy headers.
fn netd_with_proxy(envoy: bool) -> (Netd, SocketAddr) {
    let netd =
        Netd::start("[[listener]]\nname = \"up\"\nkind = \"http\"\nlisten = \"127.0.0.1:0\"\n");
    let up = bound_addr(&netd, "up").to_string();
    let (netd, hp) = add_proxy(netd, "hp", &up, envoy);
    (netd, hp)
}

fn add_proxy(netd: Netd, name: &str, upstream: &str, envoy: bool) -> (Netd, SocketAddr) {
    add_proxy_with(netd, name, upstream, envoy, &[])
}

fn add_proxy_with(
    netd: Netd,
    name: &str,
    upstream: &str,
    envoy: bool,
    extra: &[&str],
) -> (Netd, SocketAddr) {
    let mut args = vec![
        "start",
        "http-proxy",
        name,
        "--listen",
        "127.0.0.1:0",
        "-u",
        upstream,
    ];
    if envoy {
        args.push("--envoy-fault-headers");
    }
    args.extend_from_slice(extra);
    netd.netctl_ok(&args);
    let addr = bound_addr(&netd, name);
    (netd, addr)
}

fn curl(args: &[&str]) -> Output {
    Command::new("curl")
        .args(["-s", "--max-time", "20"])
        .args(args)
        .output()
        .expect("run curl")
}

/// curl's status code and body for `url` (extra args first).
fn get(extra: &[&str], url: &str) -> (u16, String) {
    let mut args: Vec<&str> = extra.to_vec();
    args.extend(["-w", "\n%{http_code}", url]);
    let out = curl(&args);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn url(addr: SocketAddr, path: &str) -> String {
    format!("http://{addr}{path}")
}

/// The fault's counters as `netctl fault ls -o json` shows them.
fn fault_stats(netd: &Netd, listener: &str, fault: &str) -> serde_json::Value {
    let v = netd.netctl_json(&["fault", "ls", listener]);
    v.as_array()
        .expect("array")
        .iter()
        .find(|f| f["fault"]["name"] == fault)
        .map(|f| f["stats"].clone())
        .unwrap_or_else(|| panic!("no fault {fault}: {v}"))
}

/// `n` GETs of `path` on one keep-alive HTTP/1.1 connection: the statuses.
fn statuses(addr: SocketAddr, path: &str, n: usize) -> Vec<u16> {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        write!(w, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            r.read_line(&mut h).unwrap();
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap();
                }
            }
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body).unwrap();
        out.push(status);
    }
    out
}

/// A Python HTTP/1.1 upstream (see [`py_upstream`]): `/bytes/N` answers N bytes of 'x'; any
/// other path answers the request's headers, one "name: value" a line.
const PY_UPSTREAM: &str = r#"
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        if self.path.startswith("/bytes/"):
            body = b"x" * int(self.path[7:])
        else:
            body = "".join("%s: %s\n" % (k.lower(), v) for k, v in self.headers.items()).encode()
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("x-upstream", "py")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
s = ThreadingHTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

/// The Python upstream above.
fn py_upstream() -> PyServer {
    PyServer::start(std::path::Path::new("python3"), PY_UPSTREAM)
}

#[test]
fn abort_by_path_prefix_and_method_is_counted() {
    let (netd, hp) = netd_with_proxy(false);
    netd.netctl_ok(&[
        "fault",
        "add",
        "hp",
        "down503",
        "--type",
        "abort",
        "--http-status",
        "503",
        "--body",
        "orders are down",
        "--toxicity",
        "1",
        "--path-prefix",
        "/api",
    ]);
    assert_eq!(
        get(&[], &url(hp, "/api/orders")),
        (503, "orders are down".into())
    );
    assert_eq!(
        get(&["--http2-prior-knowledge"], &url(hp, "/api/orders")),
        (503, "orders are down".into())
    );
    let (code, body) = get(&[], &url(hp, "/other"));
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"path\":\"/other\""), "{body}");
    assert_eq!(fault_stats(&netd, "hp", "down503")["requests_affected"], 2);

    // Only POST from now on.
    netd.netctl_ok(&["fault", "update", "hp", "down503", "--method", "POST"]);
    assert_eq!(get(&[], &url(hp, "/api/orders")).0, 200);
    assert_eq!(get(&["-X", "POST"], &url(hp, "/api/orders")).0, 503);
    assert_eq!(fault_stats(&netd, "hp", "down503")["requests_affected"], 3);
}

#[test]
fn hot_update_reaches_the_next_request() {
    let (netd, hp) = netd_with_proxy(false);
    netd.netctl_ok(&[
        "fault",
        "add",
        "hp",
        "ab",
        "--type",
        "abort",
        "--http-status",
        "503",
    ]);
    let (code, body) = get(&[], &url(hp, "/x"));
    assert_eq!(code, 503);
    assert!(body.contains("fault"), "{body}");
    netd.netctl_ok(&["fault", "update", "hp", "ab", "--http-status", "500"]);
    assert_eq!(get(&[], &url(hp, "/x")).0, 500);
    netd.netctl_ok(&["fault", "rm", "hp", "ab"]);
    assert_eq!(get(&[], &url(hp, "/x")).0, 200);
}

#[test]
fn toxicity_is_a_per_request_percentage() {
    let (netd, hp) = netd_with_proxy(false);
    netd.netctl_ok(&[
        "fault",
        "add",
        "hp",
        "some",
        "--type",
        "abort",
        "--http-status",
        "503",
        "--toxicity",
        "0.3",
    ]);
    let got = statuses(hp, "/x", 400);
    let aborted = got.iter().filter(|s| **s == 503).count();
    let ok = got.iter().filter(|s| **s == 200).count();
    assert_eq!(aborted + ok, 400, "{got:?}");
    assert!((80..=160).contains(&aborted), "{aborted} of 400 aborted");
    assert_eq!(
        fault_stats(&netd, "hp", "some")["requests_affected"],
        aborted as u64
    );
}

#[test]
fn delays_hold_the_request_or_the_response() {
    let (netd, hp) = netd_with_proxy(false);
    for (name, phase, path) in [("req", "request", "/d1"), ("resp", "response", "/d2")] {
        netd.netctl_ok(&[
            "fault",
            "add",
            "hp",
            name,
            "--type",
            "delay",
            "--delay",
            "300ms",
            "--phase",
            phase,
            "--path-exact",
            path,
        ]);
    }
    for path in ["/d1", "/d2"] {
        for h2 in [false, true] {
            let began = Instant::now();
            let extra: &[&str] = if h2 {
                &["--http2-prior-knowledge"]
            } else {
                &[]
            };
            assert_eq!(get(extra, &url(hp, path)).0, 200);
            assert!(
                began.elapsed() >= Duration::from_millis(300),
                "{path}: {:?}",
                began.elapsed()
            );
        }
    }
    assert_eq!(fault_stats(&netd, "hp", "req")["requests_affected"], 2);
    assert_eq!(fault_stats(&netd, "hp", "resp")["requests_affected"], 2);
}

#[test]
fn header_faults_change_the_response_and_what_the_upstream_sees() {
    let py = py_upstream();
    let netd = Netd::start("");
    let (netd, hp) = add_proxy(netd, "hp", &py.addr.to_string(), false);
    netd.netctl_ok(&[
        "fault",
        "add",
        "hp",
        "resp",
        "--type",
        "header",
        "--set",
        "x-fault: on",
        "--add",
        "x-more: 1",
        "--remove",
        "x-upstream",
    ]);
    netd.netctl_ok(&[
        "fault",
        "add",
        "hp",
        "req",
        "--type",
        "header",
        "--phase",
        "request",
        "--set",
        "x-test: slow",
        "--remove",
        "x-secret",
    ]);
    let out = curl(&["-i", "-H", "x-secret: 1", &url(hp, "/echo")]);
    let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(text.contains("x-fault: on"), "{text}");
    assert!(text.contains("x-more: 1"), "{text}");
    assert!(!text.contains("x-upstream"), "{text}");
    // The upstream's body lists the headers it received.
    assert!(text.contains("\nx-test: slow\n"), "{text}");
    assert!(!text.contains("x-secret"), "{text}");
}

#[test]
fn bodies_are_replaced_slowed_and_cut() {
    let py = py_upstream();
    let netd = Netd::start("");
    // The Python upstream speaks HTTP/1.1 only.
    let (netd, hp) = add_proxy_with(
        netd,
        "hp",
        &py.addr.to_string(),
        false,
        &["--upstream-protocol", "http1"],
    );
    let add = |args: &[&str]| {
        let mut all = vec!["fault", "add", "hp"];
        all.extend_from_slice(args);
        netd.netctl_ok(&all);
    };
    add(&[
        "rb",
        "--type",
        "replace_body",
        "--body",
        "{\"fake\":true}",
        "--content-type",
        "application/json",
        "--path-prefix",
        "/bytes/5",
    ]);
    add(&[
        "slow",
        "--type",
        "slow_body",
        "--rate",
        "1KB/s",
        "--path-exact",
        "/bytes/2000",
    ]);
    add(&[
        "cut",
        "--type",
        "reset",
        "--after-bytes",
        "100",
        "--path-exact",
        "/bytes/3000",
    ]);

    let out = curl(&["-i", &url(hp, "/bytes/500")]);
    let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(text.ends_with("\r\n\r\n{\"fake\":true}"), "{text}");
    assert!(text.contains("content-length: 13\r\n"), "{text}");
    assert!(
        text.contains("content-type: application/json\r\n"),
        "{text}"
    );

    let began = Instant::now();
    let (code, body) = get(&[], &url(hp, "/bytes/2000"));
    assert_eq!((code, body.len()), (200, 2000));
    assert!(
        began.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        began.elapsed()
    );
    assert_eq!(fault_stats(&netd, "hp", "slow")["bytes_delayed"], 2000);

    // HTTP/1: the connection closes before the body is whole (curl 18,
    // partial file; 52 if not even the headers left); HTTP/2: the stream is
    // reset (curl 92). The bytes before the cut are given a moment to leave
    // first; on a loaded machine they may not all have, so only an upper
    // bound is checked.
    let bytes = |o: &Output| -> u64 {
        String::from_utf8_lossy(&o.stdout)
            .split(' ')
            .nth(1)
            .and_then(|b| b.parse().ok())
            .unwrap_or(u64::MAX)
    };
    let h1 = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{size_download}",
        &url(hp, "/bytes/3000"),
    ]);
    assert!(matches!(h1.status.code(), Some(18 | 52)), "{h1:?}");
    assert!(bytes(&h1) <= 100, "{h1:?}");
    let h2 = curl(&[
        "--http2-prior-knowledge",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{size_download}",
        &url(hp, "/bytes/3000"),
    ]);
    assert_eq!(h2.status.code(), Some(92), "{h2:?}");
    assert!(bytes(&h2) <= 100, "{h2:?}");
    assert_eq!(fault_stats(&netd, "hp", "cut")["connections_closed"], 2);
}

/// A generic gRPC server (bytes in, bytes out, no protoc) on its own
/// port, and a client that calls through the proxy.
const PY_GRPC_SERVER: &str = r#"
import grpc, sys
from concurrent import futures
def call(req, ctx):
    return b"pong:" + req
h = grpc.method_handlers_generic_handler("pkg.Svc", {
    "Call": grpc.unary_unary_rpc_method_handler(call),
    "Other": grpc.unary_unary_rpc_method_handler(call),
})
s = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
s.add_generic_rpc_handlers((h,))
port = s.add_insecure_port("127.0.0.1:0")
s.start()
print(port, flush=True)
s.wait_for_termination()
"#;

const PY_GRPC_CLIENT: &str = r#"
import grpc, sys
ch = grpc.insecure_channel(sys.argv[1])
for method in ("Call", "Other"):
    f = ch.unary_unary("/pkg.Svc/" + method)
    try:
        print(method, "OK", f(b"ping", timeout=10).decode())
    except grpc.RpcError as e:
        print(method, e.code().name, e.details())
"#;

#[test]
fn grpc_abort_answers_unavailable_to_the_matched_method() {
    let python = crate::grpc_interop::python();
    let server = PyServer::spawn(Command::new(python).args(["-c", PY_GRPC_SERVER]));
    let netd = Netd::start("");
    let (netd, hp) = add_proxy(netd, "hp", &server.addr.to_string(), false);
    netd.netctl_ok(&[
        "fault",
        "add",
        "hp",
        "unavail",
        "--type",
        "abort",
        "--grpc-status",
        "14",
        "--body",
        "injected",
        "--grpc-service",
        "pkg.Svc",
        "--grpc-method",
        "Call",
    ]);
    let out = Command::new(python)
        .args(["-c", PY_GRPC_CLIENT, &hp.to_string()])
        .output()
        .expect("run the gRPC client");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("Call UNAVAILABLE injected\n"), "{text}");
    assert!(text.contains("Other OK pong:ping\n"), "{text}");
    assert_eq!(fault_stats(&netd, "hp", "unavail")["requests_affected"], 1);
}

#[test]
fn envoy_fault_headers_only_when_enabled() {
    let (netd, hp) = netd_with_proxy(true);
    let up = bound_addr(&netd, "up").to_string();
    let (netd, plain) = add_proxy(netd, "plain", &up, false);
    let abort = [
        "-H",
        "x-envoy-fault-abort-request: 418",
        "-H",
        "x-envoy-fault-abort-request-percentage: 100",
    ];
    assert_eq!(get(&abort, &url(hp, "/e")).0, 418);
    assert_eq!(get(&abort, &url(plain, "/e")).0, 200);
    let none = [
        "-H",
        "x-envoy-fault-abort-request: 418",
        "-H",
        "x-envoy-fault-abort-request-percentage: 0",
    ];
    assert_eq!(get(&none, &url(hp, "/e")).0, 200);
    let began = Instant::now();
    assert_eq!(
        get(&["-H", "x-envoy-fault-delay-request: 300"], &url(hp, "/e")).0,
        200
    );
    assert!(began.elapsed() >= Duration::from_millis(300));
    // gRPC status: HTTP 200 with grpc-status in the headers.
    let out = curl(&[
        "--http2-prior-knowledge",
        "-D",
        "-",
        "-o",
        "/dev/null",
        "-H",
        "x-envoy-fault-abort-grpc-request: 14",
        &url(hp, "/pkg.Svc/Call"),
    ]);
    let head = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(head.starts_with("http/2 200"), "{head}");
    assert!(head.contains("grpc-status: 14"), "{head}");
    let stats = netd.netctl_json(&["stats", "hp"]);
    let text = stats.to_string();
    assert!(text.contains("\"envoy_header_faults\":3"), "{text}");
}

#[test]
fn http_faults_export_apply_and_bad_attributes_are_named() {
    let (netd, _hp) = netd_with_proxy(false);
    netd.netctl_ok(&[
        "fault",
        "add",
        "hp",
        "slowapi",
        "--type",
        "delay",
        "--delay",
        "50ms",
        "--method",
        "GET",
        "--method",
        "POST",
        "--header",
        "x-test: slow",
        "--path-regex",
        "^/o/[0-9]+$",
    ]);
    netd.netctl_ok(&[
        "fault", "add", "hp", "hdr", "--type", "header", "--set", "x-a: 1", "--set", "x-b: 2",
    ]);
    let exported = netd.netctl_ok(&["export"]);
    assert!(
        exported.contains("methods = [\"GET\", \"POST\"]"),
        "{exported}"
    );
    assert!(
        exported.contains("set = [\"x-a: 1\", \"x-b: 2\"]"),
        "{exported}"
    );
    let file = netd.dir.path().join("export.toml");
    std::fs::write(&file, &exported).unwrap();
    let plan = netd.netctl_json(&["apply", "--dry-run", "-f", file.to_str().unwrap()]);
    for item in plan["plan"].as_array().unwrap() {
        assert_eq!(item["action"], "unchanged", "{plan}");
    }
    let ls = netd.netctl_json(&["fault", "ls", "hp"]);
    assert_eq!(ls[0]["fault"]["headers"][0], "x-test: slow", "{ls}");
    assert_eq!(ls[0]["fault"]["path_regex"], "^/o/[0-9]+$", "{ls}");

    let refused = |args: &[&str], want: &str| {
        let mut all = vec!["fault", "add", "hp", "bad"];
        all.extend_from_slice(args);
        let e = netd.netctl_err(&all);
        assert!(e.contains(want), "{args:?}: {e}");
    };
    refused(
        &["--type", "abort", "--http-status", "99"],
        "http_status is 99",
    );
    refused(
        &[
            "--type",
            "abort",
            "--http-status",
            "503",
            "--grpc-status",
            "14",
        ],
        "not both",
    );
    refused(
        &[
            "--type",
            "abort",
            "--http-status",
            "503",
            "--path-regex",
            "^/o/[0-9+$",
        ],
        "path_regex: '^/o/[0-9+$' is not a regular expression",
    );
    refused(
        &["--type", "header", "--set", "no colon"],
        "set: 'no colon'",
    );
    // UDP impairments are not for an http-proxy (its TCP toxics are).
    refused(
        &["--type", "loss", "--probability", "0.5"],
        "type loss is for a udp-proxy listener",
    );
    // HTTP types are not for a TCP proxy, and say which kind takes them.
    netd.netctl_ok(&[
        "start",
        "proxy",
        "tcp",
        "--listen",
        "127.0.0.1:0",
        "-u",
        "127.0.0.1:9",
    ]);
    let e = netd.netctl_err(&[
        "fault",
        "add",
        "tcp",
        "x",
        "--type",
        "abort",
        "--http-status",
        "503",
    ]);
    assert!(
        e.contains("type abort is for an http-proxy listener"),
        "{e}"
    );
    let e = netd.netctl_err(&[
        "fault",
        "add",
        "tcp",
        "x",
        "--type",
        "latency",
        "--latency",
        "1s",
        "--path-prefix",
        "/api",
    ]);
    assert!(e.contains("conditions of HTTP faults"), "{e}");
}

/// TCP toxics act beneath HTTP on the client connections accepted while
/// the listener has one: latency delays each answer (HTTP/1.1 and h2c),
/// `down` resets new connections, and HTTP faults still act on the
/// requests above them; removed, connections are served again.
#[test]
fn tcp_toxics_act_beneath_http_on_new_connections() {
    let (netd, hp) = netd_with_proxy(false);
    netd.netctl_ok(&[
        "fault",
        "add",
        "hp",
        "slow",
        "--type",
        "latency",
        "--latency",
        "300ms",
    ]);
    for extra in [&["--http1.1"][..], &["--http2-prior-knowledge"][..]] {
        let began = Instant::now();
        let (code, body) = get(extra, &url(hp, "/through"));
        assert_eq!(code, 200, "{extra:?}: {body}");
        assert!(body.contains("/through"), "{body}");
        assert!(
            began.elapsed() >= Duration::from_millis(300),
            "{extra:?}: answered in {:?} despite 300ms of latency",
            began.elapsed()
        );
    }
    assert!(
        fault_stats(&netd, "hp", "slow")["bytes_delayed"]
            .as_u64()
            .unwrap_or(0)
            > 0
    );
    // An HTTP fault above the toxic still answers its requests.
    netd.netctl_ok(&[
        "fault",
        "add",
        "hp",
        "teapot",
        "--type",
        "abort",
        "--http-status",
        "418",
        "--path-prefix",
        "/tea",
    ]);
    assert_eq!(get(&[], &url(hp, "/tea")).0, 418);
    assert_eq!(get(&[], &url(hp, "/coffee")).0, 200);
    // down: a new connection is reset before any HTTP.
    netd.netctl_ok(&["fault", "add", "hp", "gone", "--type", "down"]);
    let out = curl(&["-w", "%{http_code}", &url(hp, "/down")]);
    assert!(
        !out.status.success(),
        "curl got through a down fault: {out:?}"
    );
    assert!(
        fault_stats(&netd, "hp", "gone")["connections_closed"]
            .as_u64()
            .unwrap_or(0)
            >= 1
    );
    netd.netctl_ok(&["fault", "rm", "hp", "--all"]);
    assert_eq!(get(&[], &url(hp, "/direct")).0, 200);
}
