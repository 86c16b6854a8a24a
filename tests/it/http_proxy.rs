//! The http-proxy kind's protocol handling with real clients and servers:
//! curl (HTTP/1.1, h2c, HTTPS with ALPN h2) through the proxy to netd's
//! own `http` kind; a Python server that echoes the request headers it
//! got as JSON (X-Forwarded-For, Forwarded, hop-by-hop headers, the
//! upstream keep-alive pool, a slow answer); a Python grpcio server and
//! client (unary, server streaming, a status with trailing metadata); a
//! WebSocket handshake and echo through the proxy; upstream TLS; dead
//! upstreams, retries and timeouts; the request limits; and the bytes in
//! the stats and the access log.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;

use serde_json::Value;

use crate::common::pki::Pki;
use crate::common::py_server::PyServer;
use crate::common::{DEADLINE, Netd, bound_addr, free_tcp_port, wait_until};

/// netd's `http` listener `name` (the JSON echo) as an upstream.
fn start_http(netd: &Netd, name: &str, extra: &[&str]) -> SocketAddr {
    let mut args = vec!["start", "http", name, "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    netd.netctl_ok(&args);
    bound_addr(netd, name)
}

/// An http-proxy listener `name` to `upstreams`.
fn start_proxy(netd: &Netd, name: &str, upstreams: &[SocketAddr], extra: &[&str]) -> SocketAddr {
    let ups: Vec<String> = upstreams.iter().map(ToString::to_string).collect();
    let mut args = vec!["start", "http-proxy", name, "--listen", "127.0.0.1:0"];
    for u in &ups {
        args.extend_from_slice(&["-u", u]);
    }
    args.extend_from_slice(extra);
    netd.netctl_ok(&args);
    bound_addr(netd, name)
}

/// A listener's stats as `netctl -o json status` shows them.
fn stats(netd: &Netd, name: &str) -> Value {
    netd.netctl_json(&["status", name])["stats"].clone()
}

/// curl with `args`: (status, body, HTTP version). Panics when curl fails.
fn curl(args: &[&str]) -> (u16, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--noproxy", "*", "--max-time", "20"])
        .args(["-w", "\n%{http_code} %{http_version}"])
        .args(args)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "curl {args:?}: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, tail) = text.rsplit_once('\n').unwrap();
    let (code, version) = tail.split_once(' ').unwrap();
    (code.parse().unwrap(), body.to_string(), version.to_string())
}

/// An HTTP/1.1 server answering every GET with the request's headers, the
/// number of connections it has accepted and of those open, as JSON;
/// `/slow` first sleeps 3 s.
const HEADER_ECHO: &str = r#"
import http.server, json, threading, time
conns = 0
active = 0
lock = threading.Lock()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    def setup(self):
        global conns, active
        with lock:
            conns += 1
            active += 1
        super().setup()
    def finish(self):
        global active
        super().finish()
        with lock:
            active -= 1
    def do_GET(self):
        if self.path.startswith('/slow'):
            time.sleep(3)
        body = json.dumps({'headers': {k.lower(): v for k, v in self.headers.items()},
                           'connections': conns, 'active': active}).encode()
        self.send_response(200)
        self.send_header('content-type', 'application/json')
        self.send_header('content-length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
s = http.server.ThreadingHTTPServer(('127.0.0.1', 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

/// One GET on a keep-alive HTTP/1.1 connection: (status, body); the
/// response must have a Content-Length.
fn get_on(c: &mut TcpStream, path: &str) -> (u16, Vec<u8>) {
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    c.write_all(format!("GET {path} HTTP/1.1\r\nHost: netd\r\n\r\n").as_bytes())
        .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(c.read(&mut b).unwrap(), 1, "closed: {head:?}");
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let code = head[9..12].parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .expect("content-length");
    let mut body = vec![0u8; len];
    c.read_exact(&mut body).unwrap();
    (code, body)
}

fn header_echo() -> PyServer {
    PyServer::start(std::path::Path::new("python3"), HEADER_ECHO)
}

/// The headers the echo saw for a GET through the proxy.
fn echoed(proxy: SocketAddr, path: &str, extra: &[&str]) -> Value {
    let url = format!("http://{proxy}{path}");
    let mut args = extra.to_vec();
    args.push(&url);
    let (code, body, _) = curl(&args);
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[test]
fn curl_over_http1_h2c_and_https_h2_with_the_bytes_counted() {
    let netd = Netd::start("");
    let up = start_http(&netd, "up", &[]);
    let proxy = start_proxy(&netd, "hp", &[up], &[]);

    let (code, body, version) = curl(&["--http1.1", &format!("http://{proxy}/a?x=1")]);
    assert_eq!((code, version.as_str()), (200, "1.1"), "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["path"], "/a");
    let (code, body, version) = curl(&["--http2-prior-knowledge", &format!("http://{proxy}/h2c")]);
    assert_eq!((code, version.as_str()), (200, "2"), "{body}");
    let s = stats(&netd, "hp");
    assert_eq!(s["http_proxy"]["requests"], 2, "{s}");
    assert_eq!(s["http_proxy"]["responses_2xx"], 2, "{s}");

    // A POST body in, the echoed JSON out: both counted (and the upstream
    // got as many body bytes as the proxy counted in).
    let payload = "{\"k\":\"".to_string() + &"v".repeat(3000) + "\"}";
    let (code, body, _) = curl(&[
        "--http1.1",
        "-H",
        "content-type: application/json",
        "--data-binary",
        &payload,
        &format!("http://{proxy}/post"),
    ]);
    assert!(code == 200 || code == 201, "{code} {body}");
    assert!(body.contains(&"v".repeat(3000)), "{body}");
    let s = stats(&netd, "hp");
    assert_eq!(s["bytes_in"], payload.len() as u64, "{s}");
    assert!(s["bytes_out"].as_u64().unwrap() > 3000, "{s}");

    // HTTPS to the proxy: curl --http2 gets HTTP/2 by ALPN.
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "t");
    let (cert, key) = pki.issue("hps", "localhost", &["localhost", "127.0.0.1"], false);
    let tls_proxy = start_proxy(
        &netd,
        "hps",
        &[up],
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let port = tls_proxy.port();
    let (code, body, version) = curl(&[
        "--http2",
        "--cacert",
        pki.ca_path("t").to_str().unwrap(),
        "--resolve",
        &format!("localhost:{port}:127.0.0.1"),
        &format!("https://localhost:{port}/tls"),
    ]);
    assert_eq!((code, version.as_str()), (200, "2"), "{body}");
    assert!(stats(&netd, "hps")["bytes_out"].as_u64().unwrap() > 0);
}

#[test]
fn chunked_head_expect_continue_and_an_h2_client_to_an_http1_upstream() {
    let netd = Netd::start("");
    let up = start_http(&netd, "up", &[]);
    let proxy = start_proxy(&netd, "hp", &[up], &["--upstream-protocol", "http1"]);
    // A chunked upload with Expect: 100-continue.
    let payload = format!("{{\"n\":\"{}\"}}", "z".repeat(20_000));
    let (code, body, _) = curl(&[
        "--http1.1",
        "-H",
        "transfer-encoding: chunked",
        "-H",
        "expect: 100-continue",
        "-H",
        "content-type: application/json",
        "--data-binary",
        &payload,
        &format!("http://{proxy}/chunked"),
    ]);
    assert!(code == 200 || code == 201, "{code} {body}");
    assert!(body.contains(&"z".repeat(20_000)), "{body}");
    assert_eq!(stats(&netd, "hp")["bytes_in"], payload.len() as u64);
    // HEAD: the headers, no body.
    let out = Command::new("curl")
        .args(["-sS", "--noproxy", "*", "--max-time", "20", "-I"])
        .arg(format!("http://{proxy}/head"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    // An h2c client, an HTTP/1.1 upstream.
    let (code, body, version) = curl(&[
        "--http2-prior-knowledge",
        &format!("http://{proxy}/from-h2"),
    ]);
    assert_eq!((code, version.as_str()), (200, "2"), "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["path"], "/from-h2", "{v}");
}

#[test]
fn forwarded_headers_hop_by_hop_and_a_non_101_upgrade_answer() {
    let netd = Netd::start("");
    let echo = header_echo();
    let xff = start_proxy(&netd, "xff", &[echo.addr], &[]);
    let fwd = start_proxy(&netd, "fwd", &[echo.addr], &["--forwarded", "forwarded"]);
    let none = start_proxy(&netd, "none", &[echo.addr], &["--forwarded", "none"]);

    let v = echoed(
        xff,
        "/",
        &[
            "--http1.1",
            "-H",
            "connection: keep-alive, x-secret",
            "-H",
            "x-secret: 1",
            "-H",
            "keep-alive: timeout=5",
            "-H",
            "proxy-authorization: Basic eA==",
            "-H",
            "x-kept: yes",
        ],
    );
    let h = &v["headers"];
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{v}");
    assert_eq!(h["x-forwarded-proto"], "http", "{v}");
    assert_eq!(h["x-kept"], "yes", "{v}");
    for gone in ["x-secret", "keep-alive", "proxy-authorization", "forwarded"] {
        assert!(h.get(gone).is_none(), "{gone} was forwarded: {v}");
    }
    // TE passes only as "trailers" (gRPC needs it).
    let v = echoed(xff, "/te", &["--http1.1", "-H", "te: trailers"]);
    assert_eq!(v["headers"]["te"], "trailers", "{v}");
    let v = echoed(xff, "/te", &["--http1.1", "-H", "te: gzip"]);
    assert!(v["headers"].get("te").is_none(), "{v}");
    let v = echoed(fwd, "/", &["--http1.1"]);
    let forwarded = v["headers"]["forwarded"].as_str().unwrap_or_default();
    assert!(
        forwarded.starts_with("for=127.0.0.1;proto=http"),
        "{forwarded}"
    );
    assert!(v["headers"].get("x-forwarded-for").is_none(), "{v}");
    // An HTTP/2 client to this HTTP/1.1 upstream: Host from :authority.
    let h1 = start_proxy(&netd, "h1", &[echo.addr], &["--upstream-protocol", "http1"]);
    let v = echoed(h1, "/h2", &["--http2-prior-knowledge"]);
    assert_eq!(v["headers"]["host"], h1.to_string(), "{v}");
    assert!(v["headers"].get("connection").is_none(), "{v}");
    let v = echoed(none, "/", &["--http1.1"]);
    assert!(v["headers"].get("x-forwarded-for").is_none(), "{v}");
    assert!(v["headers"].get("forwarded").is_none(), "{v}");

    // An upgrade request keeps Connection: upgrade and Upgrade; the
    // upstream's 200 (no 101) comes back as an ordinary answer.
    let v = echoed(
        xff,
        "/up",
        &[
            "--http1.1",
            "-H",
            "connection: upgrade",
            "-H",
            "upgrade: foo/1",
        ],
    );
    assert_eq!(v["headers"]["upgrade"], "foo/1", "{v}");
    assert_eq!(v["headers"]["connection"], "upgrade", "{v}");
    assert_eq!(stats(&netd, "xff")["http_proxy"]["upgrades"], 0);
}

#[test]
fn fifty_requests_on_one_connection_use_a_few_upstream_connections_closed_at_stop() {
    let netd = Netd::start("");
    let up = start_http(&netd, "up", &[]);
    let proxy = start_proxy(&netd, "hp", &[up], &["--max-idle-per-upstream", "2"]);
    // 50 GETs over one client connection.
    let mut c = TcpStream::connect(proxy).unwrap();
    let mut body_bytes = 0;
    for i in 0..50 {
        let (code, body) = get_on(&mut c, &format!("/k{i}"));
        assert_eq!(code, 200, "GET {i}");
        body_bytes += body.len() as u64;
    }
    let s = stats(&netd, "hp");
    assert_eq!(s["connections_total"], 1, "one client connection: {s}");
    let upstream_conns = stats(&netd, "up")["connections_total"].as_u64().unwrap();
    assert!(upstream_conns <= 2, "{upstream_conns} upstream connections");
    assert_eq!(s["bytes_out"], body_bytes, "response bytes counted: {s}");
    assert_eq!(stats(&netd, "up")["connections_active"], 1);
    // Stopping the proxy closes its pooled upstream connection.
    netd.netctl_ok(&["stop", "hp"]);
    wait_until("the pooled upstream connection closed", || {
        stats(&netd, "up")["connections_active"] == 0
    });

    // Six requests at once need six upstream connections; the pool then
    // keeps at most max_idle_per_upstream of them.
    let echo = header_echo();
    let proxy = start_proxy(
        &netd,
        "pool",
        &[echo.addr],
        &["--max-idle-per-upstream", "2"],
    );
    let slow: Vec<_> = (0..6)
        .map(|_| std::thread::spawn(move || echoed(proxy, "/slow", &["--http1.1"])))
        .collect();
    for t in slow {
        t.join().unwrap();
    }
    assert!(echoed(proxy, "/", &[])["connections"].as_u64().unwrap() >= 6);
    wait_until("at most 2 pooled upstream connections", || {
        echoed(proxy, "/", &[])["active"].as_u64().unwrap() <= 2
    });
}

/// A grpcio server with a generic handler (bytes in, bytes out).
const GRPC_SERVER: &str = r#"
import grpc
from concurrent import futures
def unary(req, ctx):
    return b'echo:' + req
def stream(req, ctx):
    for i in range(3):
        yield b'part%d' % i
def missing(req, ctx):
    ctx.set_trailing_metadata((('x-detail', 'gone'),))
    ctx.abort(grpc.StatusCode.NOT_FOUND, 'no such thing')
class H(grpc.GenericRpcHandler):
    def service(self, d):
        return {
            '/t.T/Unary': grpc.unary_unary_rpc_method_handler(unary),
            '/t.T/Stream': grpc.unary_stream_rpc_method_handler(stream),
            '/t.T/Missing': grpc.unary_unary_rpc_method_handler(missing),
        }.get(d.method)
server = grpc.server(futures.ThreadPoolExecutor(4), handlers=[H()])
port = server.add_insecure_port('127.0.0.1:0')
server.start()
print(port, flush=True)
server.wait_for_termination()
"#;

const GRPC_CLIENT: &str = r#"
import grpc, json, sys
ch = grpc.insecure_channel(sys.argv[1], options=[('grpc.enable_http_proxy', 0)])
out = {}
out['unary'] = ch.unary_unary('/t.T/Unary')(b'hi', timeout=15).decode()
out['stream'] = [m.decode() for m in ch.unary_stream('/t.T/Stream')(b'x', timeout=15)]
try:
    ch.unary_unary('/t.T/Missing')(b'x', timeout=15)
    out['missing'] = 'no error'
except grpc.RpcError as e:
    out['missing'] = {'code': e.code().name, 'details': e.details(),
                      'trailers': {k: v for k, v in e.trailing_metadata()}}
print(json.dumps(out))
"#;

#[test]
fn grpc_unary_streaming_and_a_status_with_trailers_pass_through() {
    let python = crate::grpc_interop::python();
    let server = PyServer::start(python, GRPC_SERVER);
    let netd = Netd::start("");
    let proxy = start_proxy(&netd, "hp", &[server.addr], &[]);
    let out = Command::new(python)
        .arg("-c")
        .arg(GRPC_CLIENT)
        .arg(proxy.to_string())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(v["unary"], "echo:hi", "{v}");
    assert_eq!(v["stream"], serde_json::json!(["part0", "part1", "part2"]));
    assert_eq!(v["missing"]["code"], "NOT_FOUND", "{v}");
    assert_eq!(v["missing"]["details"], "no such thing", "{v}");
    assert_eq!(v["missing"]["trailers"]["x-detail"], "gone", "{v}");
    let s = stats(&netd, "hp");
    assert_eq!(s["http_proxy"]["requests"], 3, "{s}");
    // gRPC framing: 5 bytes of header per message.
    assert_eq!(s["bytes_in"], 3 * 5 + 2 + 1 + 1, "{s}");
    assert!(
        s["bytes_out"].as_u64().unwrap() >= (5 + 7) + 3 * (5 + 5),
        "{s}"
    );
}

/// A WebSocket server (the RFC 6455 handshake by hand) echoing text
/// frames of up to 125 bytes.
const WS_SERVER: &str = r#"
import socket, hashlib, base64, threading
srv = socket.socket()
srv.bind(('127.0.0.1', 0))
srv.listen(8)
print(srv.getsockname()[1], flush=True)
def recv_more(c, buf):
    d = c.recv(4096)
    if not d:
        raise EOFError
    return buf + d
def serve(c):
    try:
        buf = b''
        while b'\r\n\r\n' not in buf:
            buf = recv_more(c, buf)
        head, buf = buf.split(b'\r\n\r\n', 1)
        key = [l.split(b':', 1)[1].strip() for l in head.split(b'\r\n')
               if l.lower().startswith(b'sec-websocket-key:')][0]
        accept = base64.b64encode(hashlib.sha1(key + b'258EAFA5-E914-47DA-95CA-C5AB0DC85B11').digest())
        c.sendall(b'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n'
                  b'Sec-WebSocket-Accept: ' + accept + b'\r\n\r\n')
        while True:
            while len(buf) < 6:
                buf = recv_more(c, buf)
            n = buf[1] & 0x7f
            while len(buf) < 6 + n:
                buf = recv_more(c, buf)
            op, mask, payload, buf = buf[0] & 0x0f, buf[2:6], buf[6:6 + n], buf[6 + n:]
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if op == 8:
                c.sendall(bytes([0x88, 0]))
                return
            c.sendall(bytes([0x81, len(data)]) + data)
    except EOFError:
        pass
    finally:
        c.close()
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// A masked client text frame.
fn ws_frame(op: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [1u8, 2, 3, 4];
    let mut f = vec![0x80 | op, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Open a WebSocket through `proxy`: the connection and the response head.
fn ws_open(proxy: SocketAddr) -> (TcpStream, String) {
    let mut c = TcpStream::connect(proxy).unwrap();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    c.write_all(
        b"GET /chat HTTP/1.1\r\nHost: example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(c.read(&mut b).unwrap(), 1, "closed: {head:?}");
        head.push(b[0]);
    }
    (c, String::from_utf8_lossy(&head).to_lowercase())
}

/// Whether the proxy closes `c` (EOF or reset) within the deadline.
fn closed_by_proxy(c: &mut TcpStream) -> bool {
    let mut b = [0u8; 16];
    matches!(c.read(&mut b), Ok(0) | Err(_)) && c.read(&mut b).map_or(true, |n| n == 0)
}

#[test]
fn a_websocket_upgrade_passes_through_and_echoes() {
    let ws = PyServer::start(std::path::Path::new("python3"), WS_SERVER);
    let netd = Netd::start("");
    let proxy = start_proxy(&netd, "hp", &[ws.addr], &[]);
    let (mut c, head) = ws_open(proxy);
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    // The accept value of RFC 6455's example key.
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    for msg in [&b"hello"[..], b"through the proxy"] {
        c.write_all(&ws_frame(1, msg)).unwrap();
        let mut got = vec![0u8; 2 + msg.len()];
        c.read_exact(&mut got).unwrap();
        assert_eq!(got[0], 0x81);
        assert_eq!(&got[2..], msg);
    }
    c.write_all(&ws_frame(8, b"")).unwrap();
    let mut close = [0u8; 2];
    c.read_exact(&mut close).unwrap();
    assert_eq!(close, [0x88, 0]);
    let s = stats(&netd, "hp");
    assert_eq!(s["http_proxy"]["upgrades"], 1, "{s}");
    assert_eq!(s["http_proxy"]["responses_1xx"], 1, "{s}");
    // The frames both ways (requests' headers are not body bytes).
    let sent = (6 + 5) + (6 + 17) + 6;
    wait_until("the tunnel's bytes counted", || {
        stats(&netd, "hp")["bytes_in"] == sent
    });
    assert!(stats(&netd, "hp")["bytes_out"].as_u64().unwrap() >= (2 + 5) + (2 + 17) + 2);

    // A tunnel with no traffic either way is closed after the idle
    // timeout; one that is busy stays until the listener stops.
    let idle = start_proxy(&netd, "idle", &[ws.addr], &["--idle-timeout", "1s"]);
    let (mut quiet, head) = ws_open(idle);
    assert!(head.starts_with("http/1.1 101"), "{head}");
    let opened = std::time::Instant::now();
    assert!(closed_by_proxy(&mut quiet), "the idle tunnel stayed open");
    assert!(opened.elapsed() >= std::time::Duration::from_millis(900));
    let (mut busy, head) = ws_open(proxy);
    assert!(head.starts_with("http/1.1 101"), "{head}");
    busy.write_all(&ws_frame(1, b"x")).unwrap();
    let mut got = [0u8; 3];
    busy.read_exact(&mut got).unwrap();
    netd.netctl_ok(&["stop", "hp"]);
    assert!(
        closed_by_proxy(&mut busy),
        "the tunnel outlived its listener"
    );
}

#[test]
fn upstream_tls_verifies_the_upstream_and_a_name_mismatch_is_a_502() {
    let netd = Netd::start("");
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "t");
    let (cert, key) = pki.issue("up", "localhost", &["localhost", "127.0.0.1"], false);
    let up = start_http(
        &netd,
        "up",
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let ca = pki.ca_path("t");
    let tls_args = ["--upstream-tls", "--upstream-ca", ca.to_str().unwrap()];
    let good = start_proxy(&netd, "good", &[up], &tls_args);
    let (code, body, _) = curl(&["--http1.1", &format!("http://{good}/over-tls")]);
    assert_eq!(code, 200, "{body}");
    let (code, body, _) = curl(&["--http2-prior-knowledge", &format!("http://{good}/h2")]);
    assert_eq!(code, 200, "{body}");
    let t = crate::tls::tls_stats(&netd, "good");
    let t = tokio::runtime::Runtime::new().unwrap().block_on(t);
    assert_eq!(t.upstream_handshakes, 2, "{t:?}");
    // The upstream served both: h2 was chosen by ALPN for the HTTP/2 client.
    let ut = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(crate::tls::tls_stats(&netd, "up"));
    assert_eq!(ut.handshakes, 2, "{ut:?}");
    assert_eq!(ut.last_alpn, "h2", "{ut:?}");

    // An upstream without h2: HTTP/2 clients are served over HTTP/1.1.
    let (cert1, key1) = pki.issue("up1", "localhost", &["localhost", "127.0.0.1"], false);
    let up1 = start_http(
        &netd,
        "up1",
        &[
            "--tls-cert",
            cert1.to_str().unwrap(),
            "--tls-key",
            key1.to_str().unwrap(),
            "--tls-alpn",
            "http/1.1",
        ],
    );
    let h1_only = start_proxy(&netd, "h1-only", &[up1], &tls_args);
    let (code, body, version) = curl(&[
        "--http2-prior-knowledge",
        &format!("http://{h1_only}/h2-to-h1"),
    ]);
    assert_eq!((code, version.as_str()), (200, "2"), "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["path"], "/h2-to-h1", "{v}");
    let ut = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(crate::tls::tls_stats(&netd, "up1"));
    assert_eq!(ut.last_alpn, "http/1.1", "{ut:?}");

    let mut bad_args = tls_args.to_vec();
    bad_args.extend_from_slice(&["--upstream-sni", "wrong.example"]);
    let bad = start_proxy(&netd, "bad", &[up], &bad_args);
    // A CA file that cannot be read is refused at start, naming the key.
    let err = netd.netctl_err(&[
        "start",
        "http-proxy",
        "nofile",
        "--listen",
        "127.0.0.1:0",
        "-u",
        &up.to_string(),
        "--upstream-tls",
        "--upstream-ca",
        "/nonexistent/ca.pem",
    ]);
    assert!(err.contains("upstream_ca"), "{err}");
    let (code, body, _) = curl(&["--http1.1", &format!("http://{bad}/x")]);
    assert_eq!(code, 502, "{body}");
    assert!(body.contains("TLS handshake failed"), "{body}");
    let s = stats(&netd, "bad");
    let u = &s["http_proxy"]["upstreams"][0];
    assert_eq!(u["healthy"], false, "{s}");
    let why = u["last_error"].as_str().unwrap();
    assert!(
        why.starts_with("TLS handshake failed") && why.contains("not valid for name"),
        "{why}"
    );
    let t = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(crate::tls::tls_stats(&netd, "bad"));
    assert_eq!(
        (t.upstream_handshakes, t.upstream_failures),
        (0, 1),
        "{t:?}"
    );
}

#[test]
fn dead_upstreams_retries_and_a_slow_upstream() {
    let netd = Netd::start("");
    let live = start_http(&netd, "up", &[]);
    let dead = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));

    let alone = start_proxy(&netd, "alone", &[dead], &[]);
    let (code, body, _) = curl(&[&format!("http://{alone}/")]);
    assert_eq!(code, 502, "{body}");
    let s = stats(&netd, "alone");
    let u = &s["http_proxy"]["upstreams"][0];
    assert_eq!(u["healthy"], false, "{s}");
    assert!(
        u["last_error"]
            .as_str()
            .unwrap()
            .starts_with("connect failed: "),
        "{s}"
    );
    // 502's JSON body went out and was counted.
    assert_eq!(s["bytes_out"], body.len() as u64, "{s}");

    // Dead first in the rotation: with one retry every GET gets a 200.
    let retried = start_proxy(&netd, "retried", &[dead, live], &["--retries", "1"]);
    for i in 0..6 {
        let (code, body, _) = curl(&[&format!("http://{retried}/r{i}")]);
        assert_eq!(code, 200, "GET {i}: {body}");
    }
    let s = stats(&netd, "retried");
    assert!(s["http_proxy"]["retries"].as_u64().unwrap() >= 1, "{s}");
    // Without retries the first request (to the dead one) fails.
    let once = start_proxy(&netd, "once", &[dead, live], &["--retries", "0"]);
    let (code, body, _) = curl(&[&format!("http://{once}/first")]);
    assert_eq!(code, 502, "{body}");

    // An upstream slower than the request timeout: 504.
    let echo = header_echo();
    let slow = start_proxy(&netd, "slow", &[echo.addr], &["--request-timeout", "1s"]);
    let (code, body, _) = curl(&[&format!("http://{slow}/slow")]);
    assert_eq!(code, 504, "{body}");
    assert_eq!(stats(&netd, "slow")["http_proxy"]["upstream_timeouts"], 1);
}

/// Answers every request with a Content-Length of 100000 and 10 bytes,
/// then closes.
const SHORT_BODY: &str = r#"
import socket
srv = socket.socket()
srv.bind(('127.0.0.1', 0))
srv.listen(8)
print(srv.getsockname()[1], flush=True)
while True:
    c, _ = srv.accept()
    buf = b''
    while b'\r\n\r\n' not in buf:
        d = c.recv(4096)
        if not d:
            break
        buf += d
    c.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n' + b'a' * 10)
    c.close()
"#;

#[test]
fn an_upstream_failing_mid_body_counts_an_error() {
    let short = PyServer::start(std::path::Path::new("python3"), SHORT_BODY);
    let netd = Netd::start("");
    let proxy = start_proxy(&netd, "hp", &[short.addr], &[]);
    let out = Command::new("curl")
        .args([
            "-sS",
            "--noproxy",
            "*",
            "--max-time",
            "20",
            "-o",
            "/dev/null",
        ])
        .arg(format!("http://{proxy}/cut"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "curl got the whole body");
    wait_until("the upstream error counted", || {
        stats(&netd, "hp")["http_proxy"]["upstream_errors"] == 1
    });
    let s = stats(&netd, "hp");
    assert_eq!(s["http_proxy"]["responses_2xx"], 1, "{s}");
    assert!(s["bytes_out"].as_u64().unwrap() <= 10, "{s}");
}

#[test]
fn limits_413_by_length_and_for_a_chunked_body_431_and_max_connections() {
    let netd = Netd::start("");
    let up = start_http(&netd, "up", &[]);
    let proxy = start_proxy(
        &netd,
        "hp",
        &[up],
        &["--max-body", "1000", "--max-header-bytes", "2048"],
    );
    let big = "x".repeat(5000);
    let url = format!("http://{proxy}/p");
    let (code, body, _) = curl(&["--http1.1", "--data-binary", &big, &url]);
    assert_eq!(code, 413, "{body}");
    // The same body chunked (no Content-Length): cut at the limit, 413.
    let (code, body, _) = curl(&[
        "--http1.1",
        "-H",
        "transfer-encoding: chunked",
        "--data-binary",
        &big,
        &url,
    ]);
    assert_eq!(code, 413, "{body}");
    // And over HTTP/2: the 413 is sent, then the stream is reset when the
    // client is still sending (RST_STREAM NO_ERROR), which curl may report
    // as a stream error instead of the 413.
    let out = Command::new("curl")
        .args([
            "-sS",
            "--noproxy",
            "*",
            "--max-time",
            "20",
            "-w",
            "\n%{http_code}",
        ])
        .args(["--http2-prior-knowledge", "--data-binary", &big, &url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.ends_with("\n413") || stderr.contains("(92)"),
        "{text} {stderr}"
    );
    let s = stats(&netd, "hp");
    assert_eq!(s["http_proxy"]["too_large"], 3, "{s}");
    // A small body still passes.
    let (code, body, _) = curl(&[
        "--http1.1",
        "-H",
        "content-type: application/json",
        "--data-binary",
        "{\"a\":1}",
        &url,
    ]);
    assert!(code == 200 || code == 201, "{code} {body}");

    let (code, body, _) = curl(&[
        "--http1.1",
        "-H",
        &format!("x-big: {}", "h".repeat(3000)),
        &url,
    ]);
    assert_eq!(code, 431, "{body}");

    // One client connection at a time: a second is refused while the
    // first is open.
    let proxy = start_proxy(&netd, "one", &[up], &["--max-connections", "1"]);
    let mut first = TcpStream::connect(proxy).unwrap();
    first
        .write_all(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    first.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut buf = [0u8; 12];
    first.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"HTTP/1.1 200");
    let out = Command::new("curl")
        .args([
            "-sS",
            "--noproxy",
            "*",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .arg(format!("http://{proxy}/second"))
        .output()
        .unwrap();
    assert_ne!(String::from_utf8_lossy(&out.stdout), "200");
    wait_until("the refusal counted", || {
        stats(&netd, "one")["connections_refused"]
            .as_u64()
            .unwrap_or(0)
            >= 1
    });
    drop(first);
}

#[test]
fn the_access_log_line_has_the_response_bytes() {
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("access.log");
    let netd = Netd::start(&format!("[access_log]\npath = \"{}\"\n", log.display()));
    let up = start_http(&netd, "up", &[]);
    let proxy = start_proxy(&netd, "hp", &[up], &[]);
    let (code, body, _) = curl(&["--http1.1", &format!("http://{proxy}/logged-path")]);
    assert_eq!(code, 200);
    let mut line = String::new();
    wait_until("the access-log line", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        match text
            .lines()
            .find(|l| l.contains("listener=hp") && l.contains("/logged-path"))
        {
            Some(l) => {
                line = l.to_string();
                true
            }
            None => false,
        }
    });
    assert!(
        line.contains(&format!(" bytes={} ", body.len())),
        "{line} (body {} bytes)",
        body.len()
    );
    // The route it was counted under and the upstream that answered.
    assert!(
        line.contains(" route=/ ") && line.ends_with(&format!(" upstream={up}")),
        "{line}"
    );
    // netd's own answer (a 431) names no upstream.
    let big = format!("x-big: {}", "a".repeat(20_000));
    let (code, _, _) = curl(&["--http1.1", "-H", &big, &format!("http://{proxy}/too-big")]);
    assert_eq!(code, 431);
    wait_until("the 431's access-log line", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines()
            .any(|l| l.contains("/too-big") && l.contains("status=431") && !l.contains("upstream="))
    });
}

/// An upgraded connection keeps its connection slot: with
/// `--max-connections 1`, a second client is refused while a WebSocket
/// tunnel is open, and served once it is closed.
#[test]
fn an_open_tunnel_counts_against_max_connections() {
    let ws = PyServer::start(std::path::Path::new("python3"), WS_SERVER);
    let netd = Netd::start("");
    let proxy = start_proxy(&netd, "hp", &[ws.addr], &["--max-connections", "1"]);
    let (mut tunnel, head) = ws_open(proxy);
    assert!(head.starts_with("http/1.1 101"), "{head}");
    // An echo through it: the tunnel is copying, so it holds its slot.
    tunnel.write_all(&ws_frame(1, b"held")).unwrap();
    let mut got = [0u8; 6];
    tunnel.read_exact(&mut got).unwrap();
    assert_eq!(&got[2..], b"held");
    let served = |path: &str| {
        Command::new("curl")
            .args([
                "-sS",
                "--noproxy",
                "*",
                "--max-time",
                "20",
                "-o",
                "/dev/null",
            ])
            .arg(format!("http://{proxy}{path}"))
            .status()
            .expect("curl")
            .success()
    };
    assert!(
        !served("/second"),
        "a second client was served beside the open tunnel"
    );
    assert!(stats(&netd, "hp")["connections_refused"].as_u64().unwrap() >= 1);
    tunnel.write_all(&ws_frame(8, b"")).unwrap();
    let mut close = [0u8; 2];
    tunnel.read_exact(&mut close).unwrap();
    drop(tunnel);
    wait_until("a client served once the tunnel closed", || {
        served("/third")
    });
}
