//! The Toxiproxy-compatible API (`[toxiproxy_api]`): a real Toxiproxy
//! client library (toxiproxy-python from PyPI, run by
//! tests/py/toxiproxy_client.py from the venv of tests/it/grpc_interop.rs)
//! drives netd as it would drive Toxiproxy, and netd's own view (netctl,
//! ListFaults) shows the same proxies and faults; raw HTTP checks pin the
//! JSON shapes, status codes and error bodies; the API is off by default
//! and loopback-only unless asked. Who may call it and what its proxies may
//! do is tested in toxiproxy_security.rs; these tests run as root, which
//! is admin.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{DEADLINE, Netd, TestUpstream, bound_addr, wait_until};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/toxiproxy_client.py");

/// A config with the API on an ephemeral loopback port, a config proxy
/// `cfg` to `upstream` (not made through the API: never listed) and a TCP
/// echo (not a proxy: never listed either).
pub(crate) fn config(upstream: SocketAddr) -> String {
    format!(
        "[toxiproxy_api]\nlisten = \"127.0.0.1:0\"\n\
         [[listener]]\nname = \"cfg\"\nkind = \"proxy\"\nlisten = \"127.0.0.1:0\"\nupstreams = [\"{upstream}\"]\n\
         [[listener]]\nname = \"echo\"\nkind = \"tcp-echo\"\nlisten = \"127.0.0.1:0\"\n"
    )
}

/// The API's address, from netd's log line (logged before READY=1).
pub(crate) fn api_addr(netd: &Netd) -> SocketAddr {
    let log = netd.log();
    let line = log
        .lines()
        .find(|l| l.contains("serving the Toxiproxy-compatible API"))
        .unwrap_or_else(|| panic!("no Toxiproxy API line in the log:\n{log}"));
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .unwrap_or_else(|| panic!("no addr= in {line}"));
    addr.parse().expect("socket address")
}

/// Send `text` through the proxy at `addr` and read the echo (with the
/// upstream's prefix) within the deadline.
fn echo_through(addr: SocketAddr, text: &[u8], prefix: &[u8]) {
    let mut s = TcpStream::connect(addr).expect("connect to the proxy");
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(text).unwrap();
    let want = [prefix, text].concat();
    let mut got = vec![0u8; want.len()];
    s.read_exact(&mut got).expect("echo through the proxy");
    assert_eq!(got, want);
}

/// The ListFaults view: (listener, fault) pairs.
async fn list_faults(netd: &Netd) -> Vec<(String, netd::proto::Fault)> {
    let mut c = netd.client().await;
    c.list_faults(netd::proto::ListFaultsRequest::default())
        .await
        .expect("ListFaults")
        .into_inner()
        .faults
        .into_iter()
        .map(|s| (s.listener, s.fault.expect("fault")))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_toxiproxy_client_library_drives_netd() {
    let upstream = TestUpstream::echo(b"up:");
    let netd = Netd::start(&config(upstream.addr));
    let api = api_addr(&netd);

    let python = crate::grpc_interop::python();
    let out_path = netd.dir.path().join("toxiproxy-client.out");
    let out = std::fs::File::create(&out_path).unwrap();
    let mut child = Command::new(python)
        .arg(SCRIPT)
        .arg(api.port().to_string())
        .arg(upstream.addr.to_string())
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("run python");
    // Each HTTP call in the script has its own deadline; this one only
    // keeps a wedged interpreter from hanging the test.
    let status = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + DEADLINE * 6;
        loop {
            if let Some(s) = child.try_wait().expect("try_wait") {
                return Some(s);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap();
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    assert!(
        status.is_some_and(|s| s.success()),
        "toxiproxy_client.py failed ({status:?}):\n{output}\nnetd log:\n{}",
        netd.log()
    );

    // netctl sees the proxies the library made (ephemeral, labelled), and
    // the config's, and not the one it destroyed.
    let list = netd.netctl_json(&["list"]);
    let by_name = |n: &str| {
        list["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == n)
            .cloned()
    };
    for name in ["py_main", "py_pop"] {
        let l = by_name(name).unwrap_or_else(|| panic!("{name} not in netctl list: {list}"));
        assert_eq!(l["kind"], "proxy", "{l}");
        assert_eq!(l["ephemeral"], true, "{l}");
        assert_eq!(l["labels"]["created-by"], "toxiproxy-api", "{l}");
    }
    assert!(by_name("py_tmp").is_none(), "py_tmp survived: {list}");
    assert!(by_name("cfg").is_some());

    // ListFaults shows the toxic with netd's units, and `enabled: false`
    // as the down fault.
    let faults = list_faults(&netd).await;
    let names: Vec<(&str, &str)> = faults
        .iter()
        .map(|(l, f)| (l.as_str(), f.name.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("py_main", "final_latency"),
            ("py_pop", "toxiproxy.disabled")
        ],
        "{faults:?}"
    );
    let f = &faults[0].1;
    assert_eq!(f.direction(), netd::proto::FaultDirection::Upstream);
    assert_eq!(f.toxicity, Some(0.25));
    let Some(netd::proto::fault::Kind::Latency(l)) = &f.kind else {
        panic!("not a latency fault: {f:?}")
    };
    assert_eq!(
        (l.latency, l.jitter),
        (
            Some(prost_types::Duration {
                seconds: 0,
                nanos: 42_000_000
            }),
            Some(prost_types::Duration {
                seconds: 0,
                nanos: 3_000_000
            })
        )
    );
    assert!(matches!(
        faults[1].1.kind,
        Some(netd::proto::fault::Kind::Down(_))
    ));

    // A proxy made through the API forwards plain traffic (the latency
    // toxic's timing is not asserted here; see a_latency_toxic_delays_traffic below).
    let listen: SocketAddr = output
        .lines()
        .find_map(|l| l.strip_prefix("listen="))
        .expect("listen= line")
        .parse()
        .unwrap();
    assert_eq!(bound_addr(&netd, "py_main"), listen);
    echo_through(listen, b"hello", b"up:");

    // Each mutating call left an audit line naming the API, the caller's
    // uid (whoever runs the tests: root, or netd's own user) and its peer.
    let log = netd.log();
    let uid = format!("caller=toxiproxy-api uid:{}", netd::sys::euid());
    assert!(
        log.lines().any(|l| l.contains("audit: ok")
            && l.contains(&uid)
            && l.contains(" 127.0.0.1:")
            && l.contains("role=\"admin\"")
            && l.contains("ToxiproxyToxicCreate")),
        "no audit line for the toxic create:\n{log}"
    );
}

/// Raw HTTP/1.1 on a fresh connection: (status, content type, body).
fn http(api: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, String, String) {
    http_with(api, method, path, body, &[])
}

fn http_with(
    api: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[&str],
) -> (u16, String, String) {
    let mut s = TcpStream::connect(api).expect("connect to the API");
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body.unwrap_or(""));
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the response");
    let text = String::from_utf8(raw).expect("utf8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete response");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let ctype = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    (status, ctype, body.to_string())
}

/// A JSON call: status and parsed body (Null when empty).
pub(crate) fn call(api: SocketAddr, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let text = body.map(|b| b.to_string());
    let (status, ctype, body) = http(api, method, path, text.as_deref());
    if body.is_empty() {
        return (status, Value::Null);
    }
    assert_eq!(ctype, "application/json", "{method} {path}: {body}");
    (
        status,
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{method} {path}: {e}: {body}")),
    )
}

pub(crate) fn error(status: u16, message: &str) -> Value {
    json!({"error": message, "status": status})
}

// One scenario: a walk through the API against one netd, each call
// checked against Toxiproxy's JSON shape, status code and error text.
#[allow(clippy::too_many_lines)]
#[tokio::test(flavor = "multi_thread")]
async fn json_shapes_status_codes_and_errors_are_toxiproxys() {
    let upstream = TestUpstream::echo(b"up:");
    let netd = Netd::start(&config(upstream.addr));
    let api = api_addr(&netd);
    let up = upstream.addr.to_string();

    // Create: 201 with the proxy, the bound address in place of port 0.
    let (st, v) = call(
        api,
        "POST",
        "/proxies",
        Some(json!({"name": "redis", "listen": "127.0.0.1:0", "upstream": up})),
    );
    assert_eq!(st, 201, "{v}");
    let listen = bound_addr(&netd, "redis").to_string();
    assert_eq!(
        v,
        json!({"name": "redis", "listen": listen, "upstream": up, "enabled": true, "toxics": []})
    );
    // The JSON keys come in Toxiproxy's order.
    let (_, _, raw) = http(api, "GET", "/proxies/redis", None);
    assert_eq!(
        raw,
        format!(
            "{{\"name\":\"redis\",\"listen\":\"{listen}\",\"upstream\":\"{up}\",\"enabled\":true,\"toxics\":[]}}\n"
        )
    );

    // Errors: 409, 404, 400, each with Toxiproxy's body.
    let (st, v) = call(
        api,
        "POST",
        "/proxies",
        Some(json!({"name": "redis", "upstream": up})),
    );
    assert_eq!((st, v), (409, error(409, "proxy already exists")));
    // A listener of another kind holds the name too.
    let (st, v) = call(
        api,
        "POST",
        "/proxies",
        Some(json!({"name": "echo", "upstream": up})),
    );
    assert_eq!((st, v), (409, error(409, "proxy already exists")));
    for path in ["/proxies/nope", "/proxies/echo", "/proxies/nope/toxics"] {
        let (st, v) = call(api, "GET", path, None);
        assert_eq!((st, v), (404, error(404, "proxy not found")), "{path}");
    }
    let (st, v) = call(
        api,
        "POST",
        "/proxies",
        Some(json!({"upstream": up, "listen": "127.0.0.1:0"})),
    );
    assert_eq!((st, v), (400, error(400, "missing required field: name")));
    let (st, v) = call(api, "POST", "/proxies", Some(json!({"name": "x"})));
    assert_eq!(
        (st, v),
        (400, error(400, "missing required field: upstream"))
    );
    let (st, _, body) = http(api, "POST", "/proxies", Some("{\"name\": \"x\","));
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((st, v["status"].clone()), (400, json!(400)), "{body}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .starts_with("bad request body: "),
        "{v}"
    );
    let (st, v) = call(
        api,
        "POST",
        "/proxies",
        Some(json!({"name": "bad name!", "upstream": up})),
    );
    assert_eq!(st, 400, "{v}");

    // Toxics: create (200, Toxiproxy's default name, stream and toxicity).
    let (st, v) = call(
        api,
        "POST",
        "/proxies/redis/toxics",
        Some(json!({"type": "latency", "attributes": {"latency": 100}})),
    );
    assert_eq!(st, 200, "{v}");
    let lat = json!({"attributes": {"latency": 100, "jitter": 0}, "name": "latency_downstream",
        "type": "latency", "stream": "downstream", "toxicity": 1.0});
    assert_eq!(v, lat);
    let (st, v) = call(
        api,
        "POST",
        "/proxies/redis/toxics",
        Some(json!({"type": "latency"})),
    );
    assert_eq!((st, v), (409, error(409, "toxic already exists")));
    let (st, v) = call(
        api,
        "POST",
        "/proxies/redis/toxics",
        Some(json!({"type": "nonsense"})),
    );
    assert_eq!((st, v), (400, error(400, "invalid toxic type")));
    let (st, v) = call(
        api,
        "POST",
        "/proxies/redis/toxics",
        Some(json!({"type": "latency", "stream": "sideways"})),
    );
    assert_eq!(
        (st, v),
        (
            400,
            error(
                400,
                "stream was invalid, can be either upstream or downstream"
            )
        )
    );
    // Bad attributes: negative, not a number, out of netd's range.
    for attrs in [
        json!({"latency": -5}),
        json!({"latency": "5"}),
        json!({"latency": 90_000_000}),
    ] {
        let (st, v) = call(
            api,
            "POST",
            "/proxies/redis/toxics",
            Some(json!({"type": "latency", "name": "l2", "attributes": attrs})),
        );
        assert_eq!((st, v["status"].clone()), (400, json!(400)), "{attrs}: {v}");
    }
    let (st, v) = call(
        api,
        "POST",
        "/proxies/redis/toxics",
        Some(json!({"type": "latency", "name": "l2", "toxicity": 1.5})),
    );
    assert_eq!(st, 400, "{v}");

    // Every Toxiproxy type, with its attributes in Toxiproxy's units.
    for (ty, attrs) in [
        ("bandwidth", json!({"rate": 100})),
        ("slow_close", json!({"delay": 250})),
        ("timeout", json!({"timeout": 3000})),
        ("reset_peer", json!({"timeout": 10})),
        (
            "slicer",
            json!({"average_size": 64, "size_variation": 8, "delay": 250}),
        ),
        ("limit_data", json!({"bytes": 4096})),
    ] {
        let (st, v) = call(
            api,
            "POST",
            "/proxies/redis/toxics",
            Some(json!({"type": ty, "stream": "upstream", "attributes": attrs})),
        );
        assert_eq!(st, 200, "{ty}: {v}");
        assert_eq!(v["attributes"], attrs, "{ty}");
        assert_eq!(v["name"], format!("{ty}_upstream"));
    }
    // netd's units: 100 KB/s is 100000 B/s, a slicer delay is in µs.
    let faults = list_faults(&netd).await;
    let fault = |name: &str| {
        faults
            .iter()
            .find(|(_, f)| f.name == name)
            .and_then(|(_, f)| f.kind.as_ref().cloned())
            .unwrap()
    };
    use netd::proto::fault::Kind;
    assert!(
        matches!(fault("bandwidth_upstream"), Kind::Bandwidth(b) if b.rate_bytes_per_sec == 100_000)
    );
    assert!(
        matches!(fault("slicer_upstream"), Kind::Slicer(s) if s.delay == Some(prost_types::Duration { seconds: 0, nanos: 250_000 }))
    );
    // Listed upstream first, then downstream, as Toxiproxy's chains.
    let (_, v) = call(api, "GET", "/proxies/redis/toxics", None);
    let order: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(order.last(), Some(&"latency_downstream"), "{v}");
    assert_eq!(order.len(), 7);

    // Update merges attributes (PATCH too) and keeps the rest.
    let (st, v) = call(
        api,
        "PATCH",
        "/proxies/redis/toxics/latency_downstream",
        Some(json!({"attributes": {"jitter": 7}, "toxicity": 0.5})),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["attributes"], json!({"latency": 100, "jitter": 7}));
    assert_eq!(v["toxicity"], json!(0.5));
    let (st, v) = call(api, "GET", "/proxies/redis/toxics/latency_downstream", None);
    assert_eq!((st, v["attributes"]["jitter"].clone()), (200, json!(7)));
    let (st, v) = call(
        api,
        "POST",
        "/proxies/redis/toxics/nope",
        Some(json!({"attributes": {}})),
    );
    assert_eq!((st, v), (404, error(404, "toxic not found")));
    let (st, v) = call(api, "GET", "/proxies/redis/toxics/nope", None);
    assert_eq!((st, v), (404, error(404, "toxic not found")));
    let (st, v) = call(
        api,
        "DELETE",
        "/proxies/redis/toxics/limit_data_upstream",
        None,
    );
    assert_eq!((st, v), (204, Value::Null));
    let (st, v) = call(
        api,
        "DELETE",
        "/proxies/redis/toxics/limit_data_upstream",
        None,
    );
    assert_eq!((st, v), (404, error(404, "toxic not found")));

    // Disable: the proxy says so, the stand-in fault is no toxic, and a
    // client cannot touch it by name.
    let (st, v) = call(
        api,
        "POST",
        "/proxies/redis",
        Some(json!({"enabled": false})),
    );
    assert_eq!((st, v["enabled"].clone()), (200, json!(false)), "{v}");
    let (_, v) = call(api, "GET", "/proxies/redis/toxics", None);
    assert_eq!(v.as_array().unwrap().len(), 6, "{v}");
    for method in ["GET", "DELETE"] {
        let (st, _) = call(
            api,
            method,
            "/proxies/redis/toxics/toxiproxy.disabled",
            None,
        );
        assert_eq!(st, 404);
    }

    // /reset: every proxy enabled, every toxic gone. The config's proxy
    // is not this API's: not listed, its faults not touched.
    let (st, _) = call(
        api,
        "POST",
        "/proxies/cfg/toxics",
        Some(json!({"type": "timeout"})),
    );
    assert_eq!(st, 404);
    netd.netctl_ok(&[
        "fault",
        "add",
        "cfg",
        "mine",
        "--type",
        "latency",
        "--latency",
        "10ms",
    ]);
    let (st, v) = call(api, "POST", "/reset", None);
    assert_eq!((st, v), (204, Value::Null));
    let (_, v) = call(api, "GET", "/proxies", None);
    let names: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(names, ["redis"], "only the API's proxies are listed: {v}");
    for p in v.as_object().unwrap().values() {
        assert_eq!(
            (p["enabled"].clone(), p["toxics"].clone()),
            (json!(true), json!([]))
        );
    }
    let left: Vec<(String, String)> = list_faults(&netd)
        .await
        .into_iter()
        .map(|(l, f)| (l, f.name))
        .collect();
    assert_eq!(left, [("cfg".to_string(), "mine".to_string())]);
    netd.netctl_ok(&["fault", "rm", "cfg", "mine"]);

    // Update a proxy's upstream: netd's spec follows.
    let (st, v) = call(
        api,
        "POST",
        "/proxies/redis",
        Some(json!({"upstream": "127.0.0.1:9"})),
    );
    assert_eq!(
        (st, v["upstream"].clone()),
        (200, json!("127.0.0.1:9")),
        "{v}"
    );
    let status = netd.netctl_json(&["status", "redis"]);
    assert_eq!(
        status["spec"]["upstreams"],
        json!(["127.0.0.1:9"]),
        "{status}"
    );

    // Move it to another port: the listener is replaced there.
    let port = crate::common::free_tcp_port();
    let (st, v) = call(
        api,
        "POST",
        "/proxies/redis",
        Some(json!({"listen": format!("127.0.0.1:{port}")})),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["listen"], json!(format!("127.0.0.1:{port}")));
    assert_eq!(bound_addr(&netd, "redis").port(), port);

    // /populate: 201 {"proxies": [...]}; a bad entry changes nothing.
    let (st, v) = call(
        api,
        "POST",
        "/populate",
        Some(json!([{"name": "p1", "upstream": up}, {"upstream": up}])),
    );
    assert_eq!(
        (st, v),
        (400, error(400, "missing required field: name at proxy 2"))
    );
    assert!(netd.netctl(&["status", "p1"]).status.code() != Some(0));
    let (st, v) = call(
        api,
        "POST",
        "/populate",
        Some(
            json!([{"name": "p1", "upstream": up}, {"name": "p2", "upstream": up, "enabled": false}]),
        ),
    );
    assert_eq!(st, 201, "{v}");
    let got: Vec<(Value, Value)> = v["proxies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].clone(), p["enabled"].clone()))
        .collect();
    assert_eq!(
        got,
        [(json!("p1"), json!(true)), (json!("p2"), json!(false))]
    );

    // Delete: 204, then 404.
    let (st, v) = call(api, "DELETE", "/proxies/p1", None);
    assert_eq!((st, v), (204, Value::Null));
    let (st, v) = call(api, "DELETE", "/proxies/p1", None);
    assert_eq!((st, v), (404, error(404, "proxy not found")));
    assert!(netd.netctl(&["status", "p1"]).status.code() != Some(0));

    // /version is JSON, as Toxiproxy 2.x answers it.
    let (st, v) = call(api, "GET", "/version", None);
    assert_eq!(st, 200);
    assert!(v["version"].as_str().unwrap().starts_with("2."), "{v}");

    // Browsers are refused (a web page must not drive netd); unknown
    // paths are 404, known ones with the wrong method 405.
    let (st, _, _) = http_with(
        api,
        "GET",
        "/proxies",
        None,
        &["User-Agent: Mozilla/5.0 (X11; Linux x86_64)"],
    );
    assert_eq!(st, 403);
    assert_eq!(http(api, "GET", "/nope", None).0, 404);
    assert_eq!(http(api, "PUT", "/proxies", None).0, 405);

    // A body beyond 1 MiB is refused before it is read in full.
    let big = format!("{{\"name\": \"{}\"}}", "a".repeat(1 << 20));
    let (st, _, body) = http(api, "POST", "/proxies", Some(&big));
    assert_eq!(st, 413, "{body}");

    // Refused calls are audited too.
    let log = netd.log();
    assert!(
        log.lines().any(|l| l.contains("caller=toxiproxy-api uid:")
            && l.contains(" 127.0.0.1:")
            && l.contains("rpc=ToxiproxyProxyCreate")
            && l.contains("listener=\"redis\"")
            && l.contains("audit: refused")
            && l.contains("status=409")),
        "{log}"
    );
}

#[test]
fn the_api_socket_is_handed_over_on_upgrade() {
    let upstream = TestUpstream::echo(b"up:");
    let mut old = Netd::start(&config(upstream.addr));
    let api = api_addr(&old);
    let new = old.upgrade();
    assert_eq!(api_addr(&new), api, "the new netd serves elsewhere");
    wait_until("the old netd to hand over", || {
        old.log().contains("has taken over")
    });
    let status = old.wait_exit();
    assert!(status.success(), "old netd: {status}\n{}", old.log());
    // Only the new process is left to answer, on the same socket.
    // (The config's proxy is not listed: it was not made through the API.)
    let (st, v) = call(api, "GET", "/proxies", None);
    assert_eq!((st, v), (200, json!({})));
}

/// The listening TCP sockets of process `pid` (from /proc).
fn listening_tcp_ports(pid: u32) -> Vec<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for f in text
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
        {
            if f.len() > 9 && f[3] == "0A" && inodes.iter().any(|i| i == f[9]) {
                let port = f[1].rsplit(':').next().unwrap();
                ports.push(u16::from_str_radix(port, 16).unwrap());
            }
        }
    }
    ports
}

#[test]
fn off_by_default() {
    let netd = Netd::start(
        "[[listener]]\nname = \"echo\"\nkind = \"tcp-echo\"\nlisten = \"127.0.0.1:0\"\n",
    );
    let echo = bound_addr(&netd, "echo").port();
    // netd's only listening TCP socket is the echo's: no API port.
    assert_eq!(listening_tcp_ports(netd.pid()), [echo]);
    assert!(!netd.log().contains("Toxiproxy"));
}

#[test]
fn non_loopback_listen_needs_allow_remote() {
    let text = "[toxiproxy_api]\nlisten = \"0.0.0.0:8474\"\n";
    for args in [&["--check-config"][..], &[]] {
        let (out, path) = crate::common::netd_exit(text, args);
        let out = out.expect("netd exits");
        let err = String::from_utf8_lossy(&out.stderr).replace(&path, "netd.toml");
        assert!(!out.status.success(), "netd {args:?} accepted 0.0.0.0");
        assert!(
            err.contains(
                "netd.toml:2: toxiproxy_api.listen: 0.0.0.0:8474 is not a loopback address"
            ) && err.contains("allow_remote = true"),
            "{err}"
        );
    }
    let (out, _) =
        crate::common::netd_exit(&format!("{text}allow_remote = true\n"), &["--check-config"]);
    assert!(out.expect("netd exits").status.success());
}

/// Needs the toxics engine (h13-toxics): a latency toxic set through the
/// API delays the echo by at least its latency.
#[tokio::test(flavor = "multi_thread")]
async fn a_latency_toxic_delays_traffic() {
    let upstream = TestUpstream::echo(b"up:");
    let netd = Netd::start(&config(upstream.addr));
    let api = api_addr(&netd);
    let (st, v) = call(
        api,
        "POST",
        "/proxies",
        Some(json!({"name": "slow", "upstream": upstream.addr.to_string()})),
    );
    assert_eq!(st, 201, "{v}");
    let addr = bound_addr(&netd, "slow");
    echo_through(addr, b"warm", b"up:");
    let (st, v) = call(
        api,
        "POST",
        "/proxies/slow/toxics",
        Some(json!({"type": "latency", "attributes": {"latency": 300}})),
    );
    assert_eq!(st, 200, "{v}");
    let start = Instant::now();
    echo_through(addr, b"hello", b"up:");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(300),
        "no delay added: {took:?}"
    );
    assert!(took < DEADLINE, "{took:?}");
}

/// Needs the toxics engine (h13-toxics): a disabled proxy (a `down`
/// fault) resets new clients instead of forwarding; enabled again, it
/// forwards.
#[tokio::test(flavor = "multi_thread")]
async fn a_disabled_proxy_forwards_nothing() {
    let upstream = TestUpstream::echo(b"up:");
    let netd = Netd::start(&config(upstream.addr));
    let api = api_addr(&netd);
    let (st, _) = call(
        api,
        "POST",
        "/proxies",
        Some(json!({"name": "p", "upstream": upstream.addr.to_string()})),
    );
    assert_eq!(st, 201);
    let addr = bound_addr(&netd, "p");
    echo_through(addr, b"before", b"up:");
    let (st, _) = call(api, "POST", "/proxies/p", Some(json!({"enabled": false})));
    assert_eq!(st, 200);
    let before = upstream.accepted();
    wait_until("a disabled proxy forwards nothing", || {
        let Ok(mut s) = TcpStream::connect(addr) else {
            return true;
        };
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        let _ = s.write_all(b"x");
        let mut buf = [0u8; 8];
        matches!(s.read(&mut buf), Ok(0) | Err(_))
    });
    assert_eq!(upstream.accepted(), before);
    let (st, _) = call(api, "POST", "/proxies/p", Some(json!({"enabled": true})));
    assert_eq!(st, 200);
    echo_through(addr, b"after", b"up:");
}
