//! `netctl update` keeps what belongs to the listener (issue 23): each
//! kind's own counters, per-upstream counters and health, pool and client
//! table totals survive an update in place (same socket) and a replace (a
//! new address), so counters never go backwards, in `netctl -o json
//! status`/`stats` and on `/metrics`; a `down` upstream stays down.
//!
//! Each test first makes the counters it cares about non-zero, so that
//! counters reset by an update (as they were before) fail it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};

use serde_json::Value;

use crate::common::{DEADLINE, NetNs, Netd, TestUpstream, bound_addr, free_tcp_port, wait_until};

/// Keys that are gauges (may go down) or not counters at all.
const NOT_COUNTERS: &[&str] = &[
    "connections_active",
    "clients_active",
    "sources_tracked",
    "flows_active",
    "top_flows",
    "pool_idle",
    "healthy",
    "last_error",
    "addr",
    "active",
];

/// Every integer counter in `v`, by its JSON path.
fn counters(v: &Value, path: &str, out: &mut Vec<(String, u64)>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if !NOT_COUNTERS.contains(&k.as_str()) {
                    counters(x, &format!("{path}.{k}"), out);
                }
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                counters(x, &format!("{path}[{i}]"), out);
            }
        }
        other => {
            if let Some(n) = other.as_u64() {
                out.push((path.to_string(), n));
            }
        }
    }
}

/// Every counter of `before` is in `after`, at least as large.
fn assert_not_backwards(what: &str, before: &Value, after: &Value) {
    let (mut b, mut a) = (Vec::new(), Vec::new());
    counters(before, "", &mut b);
    counters(after, "", &mut a);
    for (path, was) in &b {
        let now = a.iter().find(|(p, _)| p == path).map(|(_, n)| *n);
        assert!(
            now.is_some_and(|n| n >= *was),
            "{what}: {path} went from {was} to {now:?}\nbefore: {before}\nafter: {after}"
        );
    }
}

/// The listener's stats as `netctl -o json status` shows them.
fn stats(netd: &Netd, name: &str) -> Value {
    netd.netctl_json(&["status", name])["stats"].clone()
}

/// `netctl -o json update NAME ARGS...`: the stats in the reply, right
/// after the update, and its action.
fn update(netd: &Netd, name: &str, args: &[&str]) -> (Value, String) {
    let mut all = vec!["update", name];
    all.extend_from_slice(args);
    let v = netd.netctl_json(&all);
    let action = v["action"].as_str().unwrap_or_default().to_string();
    (v["listener"]["stats"].clone(), action)
}

/// Update with `args`, expect `action`, and check that no counter went
/// back: in the update's reply and in `status` afterwards.
fn update_keeps_counters(netd: &Netd, name: &str, args: &[&str], action: &str) -> Value {
    let before = stats(netd, name);
    let (reply, how) = update(netd, name, args);
    assert_eq!(how, action, "netctl update {name} {args:?}");
    assert_not_backwards(&format!("{name} {action}: reply"), &before, &reply);
    let after = stats(netd, name);
    assert_not_backwards(&format!("{name} {action}: status"), &before, &after);
    after
}

/// GET / on the HTTP listener at `addr`, one connection per request.
fn http_get(addr: SocketAddr) {
    let mut s = TcpStream::connect(addr).expect("connect to the http listener");
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read the response");
    assert!(
        out.starts_with(b"HTTP/1.1 "),
        "{:?}",
        String::from_utf8_lossy(&out)
    );
}

/// GET /metrics on loopback `port`, as text.
fn metrics(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to /metrics");
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read /metrics");
    out
}

/// The counter series (`*_total`) of `listener` in a scrape, with values.
fn counter_series(scrape: &str, listener: &str) -> Vec<(String, f64)> {
    let label = format!("listener=\"{listener}\"");
    scrape
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains(&label))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let name = series.split('{').next()?;
            name.ends_with("_total")
                .then(|| Some((series.to_string(), value.parse().ok()?)))?
        })
        .collect()
}

fn assert_metrics_not_backwards(what: &str, before: &[(String, f64)], after: &[(String, f64)]) {
    for (series, was) in before {
        let now = after.iter().find(|(s, _)| s == series).map(|(_, v)| *v);
        assert!(
            now.is_some_and(|v| v >= *was),
            "{what}: /metrics {series} went from {was} to {now:?}"
        );
    }
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

#[test]
fn http_counters_survive_updates_in_stats_and_metrics() {
    let port = free_tcp_port();
    let netd = Netd::start(&format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"));
    netd.netctl_ok(&["start", "http", "api", "--listen", "127.0.0.1:0"]);
    let addr = bound_addr(&netd, "api");
    for _ in 0..5 {
        http_get(addr);
    }
    let before = stats(&netd, "api");
    assert!(n(&before["http"]["requests"]) >= 5, "{before}");
    let scrape = counter_series(&metrics(port), "api");
    let requests = |s: &[(String, f64)]| {
        s.iter()
            .find(|(k, _)| k.starts_with("netd_http_requests_total{"))
            .map_or(0.0, |(_, v)| *v)
    };
    assert!(requests(&scrape) >= 5.0, "{scrape:?}");

    // In place: the same socket, a new generation.
    update_keeps_counters(&netd, "api", &["--max-body", "2000000"], "in_place");
    let json = netd.netctl_json(&["stats", "api"]);
    assert_not_backwards(
        "api in place: netctl stats",
        &before,
        &json["listeners"][0]["totals"],
    );
    let after = counter_series(&metrics(port), "api");
    assert_metrics_not_backwards("api in place", &scrape, &after);

    // Counting goes on in the new generation, then a replace.
    http_get(addr);
    let after = update_keeps_counters(&netd, "api", &["--listen", "127.0.0.2:0"], "replaced");
    assert!(n(&after["http"]["requests"]) >= 6, "{after}");
    http_get(bound_addr(&netd, "api"));
    let last = counter_series(&metrics(port), "api");
    assert_metrics_not_backwards("api replaced", &scrape, &last);
    assert!(requests(&last) >= 7.0, "{last:?}");
}

/// A proxy's connect failures, pool hits/misses and per-upstream counters
/// and health survive updates.
#[test]
fn proxy_counters_and_upstream_health_survive_updates() {
    let netd = Netd::start("");
    let live = TestUpstream::echo(b"");
    let dead = format!("127.0.0.1:{}", free_tcp_port());
    let live_s = live.addr.to_string();
    netd.netctl_ok(&[
        "start",
        "proxy",
        "p",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &dead,
        "--upstream",
        &live_s,
        "--preconnect",
        "1",
        // Long enough that nothing but the carried state keeps it down.
        "--upstream-backoff",
        "10m",
    ]);
    let roundtrips = |addr: SocketAddr, k: usize| {
        for _ in 0..k {
            let mut c = TcpStream::connect(addr).expect("connect to the proxy");
            c.set_read_timeout(Some(DEADLINE)).unwrap();
            c.write_all(b"hi").unwrap();
            let mut got = [0u8; 2];
            c.read_exact(&mut got).expect("echo through the proxy");
        }
    };
    roundtrips(bound_addr(&netd, "p"), 4);
    let before = stats(&netd, "p");
    let p = &before["proxy"];
    assert!(n(&p["connect_failures"]) >= 1, "{before}");
    assert!(n(&p["pool_misses"]) >= 1, "{before}");
    assert_eq!(p["upstreams"][0]["healthy"], false, "{before}");
    assert!(n(&p["upstreams"][1]["connections"]) >= 2, "{before}");

    for (args, action) in [
        (&["--idle-timeout", "2m"][..], "in_place"),
        (&["--listen", "127.0.0.2:0"][..], "replaced"),
    ] {
        let after = update_keeps_counters(&netd, "p", args, action);
        assert_eq!(
            after["proxy"]["upstreams"][0]["healthy"], false,
            "the dead upstream is back in rotation after {action}: {after}"
        );
        roundtrips(bound_addr(&netd, "p"), 2);
    }
}

/// The case on its own: an upstream marked down (connection
/// refused) is still down right after an unrelated update, and the
/// update's own reply says so.
#[test]
fn a_down_upstream_stays_down_across_an_unrelated_update() {
    let netd = Netd::start("");
    let dead = format!("127.0.0.1:{}", free_tcp_port());
    netd.netctl_ok(&[
        "start",
        "proxy",
        "p",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &dead,
        "--upstream-backoff",
        "10m",
    ]);
    // The client is closed at once: no upstream took it.
    let mut c = TcpStream::connect(bound_addr(&netd, "p")).expect("connect");
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    let _ = c.read(&mut [0u8; 1]);
    let before = stats(&netd, "p");
    assert_eq!(
        before["proxy"]["upstreams"][0]["healthy"], false,
        "{before}"
    );
    let (reply, how) = update(&netd, "p", &["--idle-timeout", "2m"]);
    assert_eq!(how, "in_place");
    assert_eq!(reply["proxy"]["upstreams"][0]["healthy"], false, "{reply}");
    let status = netd.netctl_ok(&["status", "p"]);
    assert!(
        status
            .lines()
            .any(|l| l.contains(&dead) && l.contains("down")),
        "{status}"
    );
    // An upstream that left the spec takes its state with it: the one
    // that replaces it starts healthy.
    let live = TestUpstream::echo(b"");
    let (reply, _) = update(&netd, "p", &["--upstream", &live.addr.to_string()]);
    assert_eq!(reply["proxy"]["upstreams"][0]["healthy"], true, "{reply}");
    assert_eq!(
        reply["proxy"]["upstreams"][0]["connect_failures"], 0,
        "{reply}"
    );
    assert!(n(&reply["proxy"]["connect_failures"]) >= 1, "{reply}");
}

/// A udp-proxy's clients_total and upstream_errors survive updates.
#[test]
fn udp_proxy_counters_survive_updates() {
    let netd = Netd::start("");
    // Nothing listens there: each datagram draws ICMP port unreachable,
    // an upstream error.
    let dead = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    netd.netctl_ok(&[
        "start",
        "udp-proxy",
        "u",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &dead.to_string(),
    ]);
    let send = |k: usize| {
        let to = bound_addr(&netd, "u");
        for _ in 0..k {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.send_to(b"x", to).unwrap();
            s.send_to(b"y", to).unwrap();
        }
    };
    send(3);
    wait_until(
        "the udp-proxy counted the clients and upstream errors",
        || {
            let u = &stats(&netd, "u")["udp_proxy"];
            n(&u["clients_total"]) >= 3 && n(&u["upstream_errors"]) >= 1
        },
    );
    for (args, action) in [
        (&["--idle-timeout", "2m"][..], "in_place"),
        (&["--listen", "127.0.0.2:0"][..], "replaced"),
    ] {
        let after = update_keeps_counters(&netd, "u", args, action);
        assert!(n(&after["udp_proxy"]["clients_total"]) >= 3, "{after}");
        send(1);
    }
}

/// A UDP echo's drop counters survive updates (and a TCP echo's counters,
/// which are all the listener's base counters, too).
#[test]
fn echo_counters_survive_updates() {
    let netd = Netd::start("");
    netd.netctl_ok(&["start", "udp-echo", "e", "--listen", "127.0.0.1:0"]);
    // A source on a privileged port may answer back: dropped and counted.
    let privileged = (600..1000)
        .find_map(|p| UdpSocket::bind(("127.0.0.1", p)).ok())
        .expect("a free privileged UDP port on 127.0.0.1 (tests run as root)");
    privileged.send_to(b"x", bound_addr(&netd, "e")).unwrap();
    wait_until("the udp-echo counted the reflector source", || {
        n(&stats(&netd, "e")["udp_echo"]["reflector_source_drops"]) >= 1
    });
    for (args, action) in [
        (&["--prefix", "> "][..], "in_place"),
        (&["--listen", "127.0.0.2:0"][..], "replaced"),
    ] {
        let after = update_keeps_counters(&netd, "e", args, action);
        assert!(
            n(&after["udp_echo"]["reflector_source_drops"]) >= 1,
            "{after}"
        );
        assert!(n(&after["datagrams_in"]) >= 1, "{after}");
    }

    netd.netctl_ok(&["start", "tcp-echo", "t", "--listen", "127.0.0.1:0"]);
    let mut c = TcpStream::connect(bound_addr(&netd, "t")).unwrap();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    c.write_all(b"hi").unwrap();
    c.read_exact(&mut [0u8; 2]).unwrap();
    drop(c);
    update_keeps_counters(&netd, "t", &["--prefix", "> "], "in_place");
    let after = update_keeps_counters(&netd, "t", &["--listen", "127.0.0.2:0"], "replaced");
    assert!(n(&after["connections_total"]) >= 1, "{after}");
}

/// A sniffer's packet counters survive an update (a sniffer's update
/// always opens a new capture). In a namespace of its own, on its `lo`.
#[test]
fn sniffer_counters_survive_updates() {
    let ns = NetNs::new();
    let netd = ns.netd("");
    netd.netctl_ok(&["start", "sniffer", "s", "--interface", "lo"]);
    let strays = |k: usize| {
        ns.run(|| {
            let closed = UdpSocket::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap();
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            for _ in 0..k {
                s.send_to(b"nobody", closed).unwrap();
            }
        })
    };
    strays(5);
    wait_until("the sniffer counted the datagrams", || {
        n(&stats(&netd, "s")["sniffer"]["udp"]["packets"]) >= 5
    });
    let after = update_keeps_counters(&netd, "s", &["--max-flows", "5000"], "replaced");
    assert!(n(&after["sniffer"]["udp"]["packets"]) >= 5, "{after}");
    strays(1);
    wait_until("the new capture counts on", || {
        n(&stats(&netd, "s")["sniffer"]["udp"]["packets"]) >= 6
    });
}
