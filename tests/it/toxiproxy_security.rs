//! The Toxiproxy-compatible API with least privilege (issue 22): a local
//! user (uid 65534, through `setpriv ... curl`) may read but not change
//! proxies; the [control.roles] rules make a user admin here too; and
//! whatever the role, the proxies the API makes are confined: loopback
//! listen addresses on unprivileged ports, no upstream that is netd itself,
//! at most `max_proxies`, ephemeral unless `persist`, and the config's and
//! netctl's listeners out of its reach.

use std::net::SocketAddr;
use std::process::Command;

use serde_json::{Value, json};

use crate::common::{Netd, TestUpstream, bound_addr};
use crate::toxiproxy_api::{api_addr, call, config, error};

const NOBODY: &str = "65534";

/// One HTTP call made by uid 65534 with curl: (status, JSON body or Null).
fn call_as_nobody(api: SocketAddr, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    call_as_nobody_with(api, method, path, body, &[])
}

/// [`call_as_nobody`] with extra request headers.
fn call_as_nobody_with(
    api: SocketAddr,
    method: &str,
    path: &str,
    body: Option<Value>,
    headers: &[&str],
) -> (u16, Value) {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid",
        NOBODY,
        "--regid",
        NOBODY,
        "--clear-groups",
        "curl",
        "-sS",
        "--max-time",
        "10",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        "-X",
        method,
    ]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    if let Some(b) = body {
        cmd.args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &b.to_string(),
        ]);
    }
    cmd.arg(format!("http://{api}{path}"));
    let out = crate::common::output_within_deadline(cmd)
        .unwrap_or_else(|| panic!("curl {method} {path} as uid {NOBODY}: still running"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl {method} {path}: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, code) = text.rsplit_once('\n').expect("curl's status line");
    let status = code.trim().parse().expect("an HTTP status");
    let body = body.trim();
    let v = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{method} {path}: {e}: {body}"))
    };
    (status, v)
}

/// The address of `/metrics`, from netd's log line.
fn metrics_addr(netd: &Netd) -> SocketAddr {
    let log = netd.log();
    let line = log
        .lines()
        .find(|l| l.contains("serving Prometheus metrics"))
        .unwrap_or_else(|| panic!("no metrics line in the log:\n{log}"));
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no addr= in {line}"))
}

fn exists(netd: &Netd, name: &str) -> bool {
    netd.netctl(&["status", name]).status.success()
}

#[test]
fn a_local_user_reads_but_cannot_change_proxies() {
    let upstream = TestUpstream::echo(b"up:");
    let up = upstream.addr.to_string();
    let netd = Netd::start(&config(upstream.addr));
    let api = api_addr(&netd);
    let (st, v) = call(
        api,
        "POST",
        "/proxies",
        Some(json!({"name": "mine", "upstream": up})),
    );
    assert_eq!(st, 201, "root (admin) creates: {v}");

    // The attacks of issue 22, as uid 65534: each refused with 403, and
    // nothing changed.
    for (method, path, body) in [
        (
            "POST",
            "/proxies",
            Some(json!({"name": "evil", "listen": "0.0.0.0:79", "upstream": up})),
        ),
        (
            "POST",
            "/proxies",
            Some(json!({"name": "evil", "listen": "127.0.0.1:0", "upstream": up})),
        ),
        (
            "POST",
            "/populate",
            Some(json!([{"name": "evil", "upstream": up}])),
        ),
        (
            "POST",
            "/proxies/mine",
            Some(json!({"upstream": "127.0.0.1:9"})),
        ),
        ("DELETE", "/proxies/mine", None),
        (
            "POST",
            "/proxies/mine/toxics",
            Some(json!({"type": "timeout"})),
        ),
        ("POST", "/reset", None),
    ] {
        let (st, v) = call_as_nobody(api, method, path, body);
        assert_eq!(st, 403, "{method} {path} as uid 65534: {v}");
        assert_eq!(v["status"], json!(403), "{v}");
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .contains("needs the admin role"),
            "{v}"
        );
    }
    assert!(!exists(&netd, "evil"));
    let status = netd.netctl_json(&["status", "mine"]);
    assert_eq!(status["spec"]["upstreams"], json!([up]), "{status}");
    let (_, v) = call(api, "GET", "/proxies/mine/toxics", None);
    assert_eq!(v, json!([]));

    // A viewer reads (the API's proxies only).
    let (st, v) = call_as_nobody(api, "GET", "/proxies", None);
    assert_eq!(st, 200, "{v}");
    let names: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(names, ["mine"], "{v}");

    // The refusals are audited with the caller's uid, not only an address.
    let log = netd.log();
    assert!(
        log.lines().any(|l| l.contains("audit: denied")
            && l.contains("caller=toxiproxy-api uid:65534")
            && l.contains("rpc=ToxiproxyProxyCreate")),
        "{log}"
    );
}

#[test]
fn control_roles_apply_to_the_api() {
    let upstream = TestUpstream::echo(b"up:");
    let up = upstream.addr.to_string();
    // uid 65534 made admin, as it would be on the control socket; and
    // reading restricted to admins (viewer = []).
    let netd = Netd::start(&format!(
        "[control.roles]\nadmin = [\"uid:0\", \"uid:65534\"]\nviewer = []\n{}",
        config(upstream.addr)
    ));
    let api = api_addr(&netd);
    let (st, v) = call_as_nobody(
        api,
        "POST",
        "/proxies",
        Some(json!({"name": "theirs", "upstream": up})),
    );
    assert_eq!(st, 201, "{v}");
    assert!(
        netd.log().lines().any(|l| l.contains("audit: ok")
            && l.contains("uid:65534")
            && l.contains("role=\"admin\"")),
        "{}",
        netd.log()
    );
    // Root stays admin: it is in the list.
    let (st, v) = call(api, "GET", "/proxies", None);
    assert_eq!(st, 200, "{v}");
    assert!(v.get("theirs").is_some(), "{v}");
}

#[test]
fn api_made_proxies_are_confined_whoever_asks() {
    let upstream = TestUpstream::echo(b"up:");
    let up = upstream.addr.to_string();
    let netd = Netd::start(&format!(
        "[metrics]\nlisten = \"127.0.0.1:0\"\n\
         [toxiproxy_api]\nlisten = \"127.0.0.1:0\"\n\
         [[listener]]\nname = \"cfg\"\nkind = \"proxy\"\nlisten = \"127.0.0.1:0\"\nupstreams = [\"{up}\"]\n"
    ));
    let api = api_addr(&netd);
    let metrics = metrics_addr(&netd);
    let cfg = bound_addr(&netd, "cfg");
    let create = |name: &str, listen: &str, upstream: &str| {
        call(
            api,
            "POST",
            "/proxies",
            Some(json!({"name": name, "listen": listen, "upstream": upstream})),
        )
    };

    // Listen: loopback only, unprivileged ports only.
    for listen in [
        "127.0.0.1:79",
        "0.0.0.0:0",
        "0.0.0.0:8081",
        "[::]:0",
        "[::1]:80",
    ] {
        let (st, v) = create("bad", listen, &up);
        assert_eq!(st, 403, "listen {listen}: {v}");
    }
    // Upstream: never netd itself (its metrics, this API, a listener).
    for target in [
        metrics.to_string(),
        api.to_string(),
        format!("localhost:{}", api.port()),
        format!("0.0.0.0:{}", api.port()),
        cfg.to_string(),
    ] {
        let (st, v) = create("bad", "127.0.0.1:0", &target);
        assert_eq!(st, 403, "upstream {target}: {v}");
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .contains("cannot forward to netd itself"),
            "{v}"
        );
    }
    assert!(!exists(&netd, "bad"));

    // The config's proxy is not the API's: 404 to read, re-point, move,
    // toxics or delete; /populate cannot replace it.
    let cfg_before = netd.netctl_json(&["status", "cfg"])["spec"].clone();
    for (method, path, body) in [
        ("GET", "/proxies/cfg", None),
        (
            "POST",
            "/proxies/cfg",
            Some(json!({"upstream": api.to_string()})),
        ),
        (
            "POST",
            "/proxies/cfg",
            Some(json!({"listen": "0.0.0.0:81"})),
        ),
        ("POST", "/proxies/cfg", Some(json!({"enabled": false}))),
        ("DELETE", "/proxies/cfg", None),
        ("GET", "/proxies/cfg/toxics", None),
        (
            "POST",
            "/proxies/cfg/toxics",
            Some(json!({"type": "timeout"})),
        ),
    ] {
        let (st, v) = call(api, method, path, body);
        assert_eq!(
            (st, v),
            (404, error(404, "proxy not found")),
            "{method} {path}"
        );
    }
    let (st, v) = call(
        api,
        "POST",
        "/populate",
        Some(json!([{"name": "cfg", "upstream": up, "listen": "0.0.0.0:81"}])),
    );
    assert_eq!(st, 409, "{v}");
    let (_, v) = call(api, "GET", "/proxies", None);
    assert!(v.get("cfg").is_none(), "{v}");
    assert_eq!(netd.netctl_json(&["status", "cfg"])["spec"], cfg_before);
    assert!(exists(&netd, "cfg"));

    // A proxy of its own cannot be moved or re-pointed out of bounds.
    let (st, v) = create("p1", "127.0.0.1:0", &up);
    assert_eq!(st, 201, "{v}");
    for body in [
        json!({"listen": "0.0.0.0:0"}),
        json!({"listen": "127.0.0.1:80"}),
        json!({"upstream": metrics.to_string()}),
    ] {
        let (st, v) = call(api, "POST", "/proxies/p1", Some(body.clone()));
        assert_eq!(st, 403, "{body}: {v}");
    }
    assert_eq!(bound_addr(&netd, "p1").ip().to_string(), "127.0.0.1");
    // Nor can another proxy forward to it (a relay or a loop).
    let p1 = bound_addr(&netd, "p1").to_string();
    let (st, v) = create("p2", "127.0.0.1:0", &p1);
    assert_eq!(st, 403, "{v}");
    assert!(!exists(&netd, "p2"));
}

#[test]
fn at_most_max_proxies_are_made_through_the_api() {
    let upstream = TestUpstream::echo(b"up:");
    let up = upstream.addr.to_string();
    // Room for 8 listeners: the config's 2, netctl's, the API's 3; the
    // API cannot take the rest from root.
    let netd = Netd::start(&format!(
        "max_listeners = 8\n{}",
        config(upstream.addr).replacen(
            "[toxiproxy_api]\n",
            "[toxiproxy_api]\nmax_proxies = 3\n",
            1
        )
    ));
    let api = api_addr(&netd);
    netd.netctl_ok(&["start", "tcp-echo", "e1", "--listen", "127.0.0.1:0"]);
    let create = |name: &str| {
        call(
            api,
            "POST",
            "/proxies",
            Some(json!({"name": name, "upstream": up})),
        )
    };
    for name in ["p1", "p2", "p3"] {
        let (st, v) = create(name);
        assert_eq!(st, 201, "{name}: {v}");
    }
    let (st, v) = create("p4");
    assert_eq!(st, 403, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("max_proxies is 3"),
        "{v}"
    );
    assert!(!exists(&netd, "p4"));
    netd.netctl_ok(&["start", "tcp-echo", "e2", "--listen", "127.0.0.1:0"]);
    // One deleted makes room.
    let (st, _) = call(api, "DELETE", "/proxies/p1", None);
    assert_eq!(st, 204);
    let (st, v) = create("p4");
    assert_eq!(st, 201, "{v}");
}

/// Whether netd's state file or its journal (protobufs) holds `name`.
fn state_has(netd: &Netd, name: &str) -> bool {
    [netd::state::FILE_NAME, netd::state::JOURNAL_NAME]
        .iter()
        .any(|file| {
            let bytes = std::fs::read(netd.dir.path().join("state").join(file)).unwrap_or_default();
            bytes.windows(name.len()).any(|w| w == name.as_bytes())
        })
}

#[test]
fn api_made_proxies_are_ephemeral_unless_persist() {
    let upstream = TestUpstream::echo(b"up:");
    let up = upstream.addr.to_string();
    for persist in [false, true] {
        let netd = Netd::start(&format!(
            "{}[toxiproxy_api]\nlisten = \"127.0.0.1:0\"\npersist = {persist}\n",
            "[[listener]]\nname = \"echo\"\nkind = \"tcp-echo\"\nlisten = \"127.0.0.1:0\"\n"
        ));
        let api = api_addr(&netd);
        let (st, v) = call(
            api,
            "POST",
            "/proxies",
            Some(json!({"name": "made", "upstream": up})),
        );
        assert_eq!(st, 201, "{v}");
        // A netctl start writes the state file either way.
        netd.netctl_ok(&["start", "tcp-echo", "marker", "--listen", "127.0.0.1:0"]);
        assert!(state_has(&netd, "marker"));
        assert_eq!(state_has(&netd, "made"), persist, "persist = {persist}");
        let l = netd.netctl_json(&["status", "made"]);
        assert_eq!(l["ephemeral"], json!(!persist), "{l}");
    }
}

#[test]
fn the_bearer_token_is_admin_and_confined() {
    let upstream = TestUpstream::echo(b"up:");
    let up = upstream.addr.to_string();
    let dir = tempfile::tempdir().unwrap();
    let token = "0123456789abcdef-test-token";
    let path = dir.path().join("toxiproxy.token");
    std::fs::write(&path, format!("{token}\n")).unwrap();
    let netd = Netd::start(&config(upstream.addr).replacen(
        "[toxiproxy_api]\n",
        &format!("[toxiproxy_api]\ntoken_file = \"{}\"\n", path.display()),
        1,
    ));
    let api = api_addr(&netd);
    let bearer = format!("Authorization: Bearer {token}");
    let create = |name: &str, listen: &str, headers: &[&str]| {
        call_as_nobody_with(
            api,
            "POST",
            "/proxies",
            Some(json!({"name": name, "listen": listen, "upstream": up})),
            headers,
        )
    };
    // Without it uid 65534 is a viewer; with a wrong one, 401.
    let (st, v) = create("t", "127.0.0.1:0", &[]);
    assert_eq!(st, 403, "{v}");
    let (st, v) = create(
        "t",
        "127.0.0.1:0",
        &["Authorization: Bearer 0123456789abcdef-wrong"],
    );
    assert_eq!((st, v), (401, error(401, "invalid bearer token")));
    // With it, admin, and still confined.
    let (st, v) = create("t", "0.0.0.0:0", &[&bearer]);
    assert_eq!(st, 403, "{v}");
    let (st, v) = create("t", "127.0.0.1:0", &[&bearer]);
    assert_eq!(st, 201, "{v}");
    let log = netd.log();
    assert!(
        log.lines().any(|l| l.contains("audit: ok")
            && l.contains("caller=toxiproxy-api token 127.0.0.1:")
            && l.contains("rpc=ToxiproxyProxyCreate")),
        "{log}"
    );
    assert!(!log.contains(token), "the token is logged:\n{log}");
}

/// Callers over IPv6 loopback are identified too (the kernel's tcp6
/// table).
#[test]
fn callers_over_ipv6_loopback_are_identified() {
    let upstream = TestUpstream::echo(b"up:");
    let up = upstream.addr.to_string();
    let netd = Netd::start(&config(upstream.addr).replacen(
        "[toxiproxy_api]\nlisten = \"127.0.0.1:0\"\n",
        "[toxiproxy_api]\nlisten = \"[::1]:0\"\n",
        1,
    ));
    let api = api_addr(&netd);
    assert!(api.is_ipv6(), "{api}");
    let body = json!({"name": "v6", "listen": "[::1]:0", "upstream": up});
    let (st, v) = call_as_nobody(api, "POST", "/proxies", Some(body.clone()));
    assert_eq!(st, 403, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("uid:65534"),
        "not identified: {v}"
    );
    let (st, v) = call(api, "POST", "/proxies", Some(body));
    assert_eq!(st, 201, "{v}");
}

/// Two proxies made through the API, each forwarding to the other: a
/// create whose upstream is a listener was refused, but a proxy could
/// still be made (or moved) to listen where another one forwards, and one
/// client connection then became `max_connections` connections on each,
/// round and round, taking the data plane's descriptors. Listening where
/// a config proxy forwards put the API's proxy between it and its
/// upstream. Now a listen address a netd proxy forwards to is 403.
#[test]
fn api_made_proxies_cannot_listen_where_netd_forwards() {
    let netd = Netd::start(
        "[toxiproxy_api]\nlisten = \"127.0.0.1:0\"\n\
         [[listener]]\nname = \"cfg\"\nkind = \"proxy\"\nlisten = \"127.0.0.1:0\"\nupstreams = [\"127.0.0.1:21102\"]\n",
    );
    let api = api_addr(&netd);
    let post = |path: &str, body: Value| call(api, "POST", path, Some(body));

    // a forwards to a free port, given by name.
    let (st, v) = post(
        "/proxies",
        json!({"name": "a", "listen": "127.0.0.1:21101", "upstream": "localhost:21103"}),
    );
    assert_eq!(st, 201, "{v}");
    // b may not be made there, nor moved there.
    let (st, v) = post(
        "/proxies",
        json!({"name": "b", "listen": "127.0.0.1:21103", "upstream": "127.0.0.1:21104"}),
    );
    assert_eq!(st, 403, "b on a's upstream: {v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("upstream of netd listener 'a'"),
        "{v}"
    );
    let (st, v) = post(
        "/proxies",
        json!({"name": "b", "listen": "127.0.0.1:21105", "upstream": "127.0.0.1:21101"}),
    );
    assert_eq!(st, 403, "b forwarding to a: {v}");
    let (st, v) = post(
        "/proxies",
        json!({"name": "b", "listen": "127.0.0.1:21105", "upstream": "127.0.0.1:21104"}),
    );
    assert_eq!(st, 201, "{v}");
    let (st, v) = post("/proxies/b", json!({"listen": "127.0.0.1:21103"}));
    assert_eq!(st, 403, "b moved onto a's upstream: {v}");
    let (st, v) = post("/proxies/a", json!({"listen": "127.0.0.1:21104"}));
    assert_eq!(st, 403, "a moved onto b's upstream: {v}");
    // Nor between the config's proxy and its upstream.
    let (st, v) = post(
        "/proxies",
        json!({"name": "c", "listen": "127.0.0.1:21102", "upstream": "127.0.0.1:21104"}),
    );
    assert_eq!(st, 403, "c on cfg's upstream: {v}");
    assert_eq!(bound_addr(&netd, "b").port(), 21105);
    assert_eq!(bound_addr(&netd, "a").port(), 21101);
    assert!(!exists(&netd, "c"));
}
