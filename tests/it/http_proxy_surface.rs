//! The http-proxy as a user sees it around its traffic: started by netctl
//! and by a config file with every key, real requests (curl, HTTP/1.1 and
//! h2) through to a netd `http` upstream, its counts in `netctl stats`,
//! `netctl status` (routes, upstreams) and on `/metrics` (a Prometheus
//! histogram per route that promtool reads), counters kept by `netctl
//! update`, an export read back unchanged by `apply --dry-run`, bad values
//! refused with the key named, and its access-log lines.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::common::{Netd, bound_addr, free_tcp_port, netd_exit, wait_until};

/// `curl -s` with `args`; (status code, body).
fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    let code = code
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("curl {args:?}: no status in {text:?}"));
    (code, body.to_string())
}

/// A GET through the proxy at `addr` that the upstream answers 200.
fn get_ok(addr: SocketAddr, path: &str) {
    let (code, body) = curl(&[&format!("http://{addr}{path}")]);
    assert_eq!(code, 200, "GET {path}: {body}");
    assert!(body.contains(&format!("\"path\":\"{path}\"")), "{body}");
}

fn scrape(port: u16) -> String {
    let (code, text) = curl(&[&format!("http://127.0.0.1:{port}/metrics")]);
    assert_eq!(code, 200, "{text}");
    text
}

/// The value of the series that is exactly `series` (name and labels).
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split(' ').next()?.parse().ok())
}

/// A listener's http-proxy stats, from `netctl -o json status`.
fn proxy_stats(netd: &Netd, name: &str) -> Value {
    netd.netctl_json(&["status", name])["stats"]["http_proxy"].clone()
}

/// The stats of route `route` in `stats`.
fn route<'a>(stats: &'a Value, route: &str) -> &'a Value {
    stats["routes"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["route"] == route))
        .unwrap_or_else(|| panic!("no route {route} in {stats}"))
}

/// The words of the line of `text` whose first word is `first`.
fn row(text: &str, first: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>())
        .find(|w| w.first().is_some_and(|w| w == first))
        .unwrap_or_else(|| panic!("no row {first} in:\n{text}"))
}

/// The histogram of `route` on a `/metrics` page: its buckets (le, count)
/// in page order, its `_count` and `_sum`.
fn histogram(text: &str, listener: &str, route: &str) -> (Vec<(String, f64)>, f64, f64) {
    let name = "netd_http_proxy_request_duration_seconds";
    let labels = format!("listener=\"{listener}\",kind=\"http-proxy\",route=\"{route}\"");
    let buckets: Vec<(String, f64)> = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&format!("{name}_bucket{{le=\""))?;
            let (le, rest) = rest.split_once('"')?;
            let v = rest.strip_prefix(&format!(",{labels}}} "))?;
            Some((le.to_string(), v.parse().ok()?))
        })
        .collect();
    let count = metric(text, &format!("{name}_count{{{labels}}}"))
        .unwrap_or_else(|| panic!("no _count of {route} in:\n{text}"));
    let sum = metric(text, &format!("{name}_sum{{{labels}}}"))
        .unwrap_or_else(|| panic!("no _sum of {route} in:\n{text}"));
    (buckets, count, sum)
}

/// promtool reads the page: no parse error, and nothing to say about the
/// http-proxy's families but what it says of every netd counter (its
/// Prometheus-format lint looks for HELP under the `_total` name, where
/// OpenMetrics puts it under the family's).
fn promtool_reads(text: &str) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool (.ci/run installs prometheus)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let ours: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("netd_http_proxy") || l.contains("error"))
        .filter(|l| {
            let help = l
                .strip_suffix("_total no help text")
                .map(|family| format!("# HELP {family} "));
            !help.is_some_and(|h| text.contains(&h))
        })
        .collect();
    assert!(
        ours.is_empty(),
        "promtool check metrics:\n{said}\n--- page:\n{text}"
    );
}

/// `/metrics` after the requests of
/// [`requests_are_counted_by_route_and_upstream_in_stats_status_and_metrics`]:
/// the counters, and a histogram per route that promtool reads.
fn metrics_of_hp(port: u16, up: &str) {
    let text = scrape(port);
    let base = "listener=\"hp\",kind=\"http-proxy\"";
    assert_eq!(
        metric(&text, &format!("netd_http_proxy_requests_total{{{base}}}")),
        Some(6.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            &format!(
                "netd_http_proxy_responses_total{{{base},route=\"/api/orders\",class=\"4xx\"}}"
            )
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            &format!("netd_http_proxy_upstream_healthy{{{base},upstream=\"{up}\"}}")
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            &format!("netd_http_proxy_upstream_requests_total{{{base},upstream=\"{up}\"}}")
        ),
        Some(6.0),
        "{text}"
    );
    assert!(
        text.contains("# TYPE netd_http_proxy_request_duration_seconds histogram\n"),
        "{text}"
    );
    let (buckets, count, sum) = histogram(&text, "hp", "/api");
    let les: Vec<&str> = buckets.iter().map(|(le, _)| le.as_str()).collect();
    assert_eq!(
        les,
        [
            "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "5.0", "10.0",
            "+Inf"
        ],
        "{text}"
    );
    assert!(
        buckets.windows(2).all(|w| w[0].1 <= w[1].1),
        "not cumulative: {buckets:?}"
    );
    assert_eq!((buckets[buckets.len() - 1].1, count), (3.0, 3.0), "{text}");
    assert!(sum > 0.0, "{text}");
    let (_, count, _) = histogram(&text, "hp", "/api/orders");
    assert_eq!(count, 2.0);
    promtool_reads(&text);
}

#[test]
fn requests_are_counted_by_route_and_upstream_in_stats_status_and_metrics() {
    let port = free_tcp_port();
    let netd = Netd::start(&format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"));
    netd.netctl_ok(&["start", "http", "up", "--listen", "127.0.0.1:0"]);
    let up = bound_addr(&netd, "up").to_string();
    netd.netctl_ok(&[
        "start",
        "http-proxy",
        "hp",
        "--listen",
        "127.0.0.1:0",
        "-u",
        &up,
        "--route",
        "/api",
        "--route",
        "/api/orders",
    ]);
    let hp = bound_addr(&netd, "hp");

    for _ in 0..3 {
        get_ok(hp, "/api/x");
    }
    let (code, body) = curl(&["--http2-prior-knowledge", &format!("http://{hp}/other")]);
    assert_eq!(code, 200, "{body}");
    let (code, body) = curl(&[
        "-X",
        "POST",
        "--data",
        "{\"n\":1}",
        &format!("http://{hp}/api/orders/7"),
    ]);
    assert_eq!(code, 201, "{body}");
    let (code, _) = curl(&["-X", "PUT", &format!("http://{hp}/api/orders/7")]);
    assert_eq!(code, 405);

    wait_until("6 requests counted", || {
        proxy_stats(&netd, "hp")["requests"] == 6
    });
    let s = proxy_stats(&netd, "hp");
    assert_eq!(
        (s["responses_2xx"].as_u64(), s["responses_4xx"].as_u64()),
        (Some(5), Some(1)),
        "{s}"
    );
    let api = route(&s, "/api");
    assert_eq!(
        (api["requests"].as_u64(), api["responses_2xx"].as_u64()),
        (Some(3), Some(3)),
        "{s}"
    );
    let orders = route(&s, "/api/orders");
    assert_eq!(
        (
            orders["requests"].as_u64(),
            orders["responses_4xx"].as_u64()
        ),
        (Some(2), Some(1)),
        "{s}"
    );
    assert_eq!(route(&s, "/")["requests"], 1, "{s}");
    assert_eq!(s["upstreams"][0]["addr"], up.as_str(), "{s}");
    assert_eq!(s["upstreams"][0]["connections"], 6, "{s}");
    assert_eq!(s["upstreams"][0]["healthy"], true, "{s}");

    // netctl status: the counts by class, the routes and upstreams tables.
    let status = netd.netctl_ok(&["status", "hp"]);
    assert!(
        status.contains("requests:    6 (1xx 0, 2xx 5, 3xx 0, 4xx 1, 5xx 0)"),
        "{status}"
    );
    assert!(
        status.contains("limits:      0 too large (413, 431)"),
        "{status}"
    );
    // ROUTE REQUESTS 1XX 2XX 3XX 4XX 5XX P50 P99
    assert_eq!(
        row(&status, "ROUTE")[..7],
        ["ROUTE", "REQUESTS", "1XX", "2XX", "3XX", "4XX", "5XX"]
    );
    assert_eq!(
        row(&status, "/api/orders")[1..7],
        ["2", "0", "1", "0", "1", "0"],
        "{status}"
    );
    assert_eq!(
        row(&status, &up)[1..5],
        ["healthy", "6", "0", "-"],
        "{status}"
    );
    // netctl stats: the DETAIL cell.
    let stats = netd.netctl_ok(&["stats", "hp"]);
    assert!(stats.contains("6 req, 1/1 up"), "{stats}");
    let watch = netd.netctl_ok(&[
        "stats",
        "hp",
        "--watch",
        "--interval",
        "100ms",
        "--count",
        "2",
    ]);
    assert_eq!(
        watch
            .lines()
            .filter(|l| l.contains("\t6 req, 1/1 up"))
            .count(),
        2,
        "{watch}"
    );
    let json = netd.netctl_json(&["stats", "hp"]);
    assert_eq!(
        json["listeners"][0]["totals"]["http_proxy"]["requests"], 6,
        "{json}"
    );

    metrics_of_hp(port, &up);
}

/// A config file with every key of an http-proxy (over two listeners: one
/// serving HTTPS that takes traffic, one that originates TLS).
fn every_key_config(metrics: u16, up: u16, pki: &Path, log: &Path) -> String {
    let p = crate::common::pki::Pki::new(pki, "hp");
    let (cert, key) = p.issue("hp", "localhost", &["localhost"], false);
    let ca = p.ca_path("hp");
    format!(
        r#"[metrics]
listen = "127.0.0.1:{metrics}"
[access_log]
path = "{log}"

[[listener]]
name = "up"
kind = "http"
listen = "127.0.0.1:{up}"

[[listener]]
name = "hp"
kind = "http-proxy"
listen = "127.0.0.1:0"
upstreams = ["127.0.0.1:{up}"]
connect_timeout = "2s"
upstream_backoff = "3s"
max_connections = 100
max_idle_per_upstream = 4
upstream_protocol = "http1"
forwarded = "both"
routes = ["/api", "/static"]
retries = 1
max_body_bytes = 65536
header_read_timeout = "5s"
request_timeout = "10s"
idle_timeout = "30s"
max_streams = 50
max_header_bytes = 8192
access_log = true
envoy_fault_headers = true
tls_cert = "{cert}"
tls_key = "{key}"
tls_alpn = "h2,http/1.1"
tls_handshake_timeout = "5s"

[[listener]]
name = "hp2"
kind = "http-proxy"
listen = "127.0.0.1:0"
upstreams = ["localhost:{up}"]
tls_cert = "{cert}"
tls_key = "{key}"
tls_client_ca = "{ca}"
tls_client_auth = "request"
upstream_tls = true
upstream_sni = "localhost"
upstream_ca = "{ca}"
upstream_cert = "{cert}"
upstream_key = "{key}"
access_log = false
"#,
        log = log.display(),
        cert = cert.display(),
        key = key.display(),
        ca = ca.display(),
    )
}

#[test]
fn a_config_file_with_every_key_serves_logs_and_exports_back_unchanged() {
    let (metrics, up) = (free_tcp_port(), free_tcp_port());
    let files = tempfile::tempdir().unwrap();
    let log = files.path().join("access.log");
    let netd = Netd::start(&every_key_config(metrics, up, files.path(), &log));
    let hp = bound_addr(&netd, "hp");
    let ca = files.path().join("hp-ca.pem");
    let url = format!("https://localhost:{}/api/x?secret=1", hp.port());
    let resolve = format!("localhost:{}:127.0.0.1", hp.port());
    for version in ["--http1.1", "--http2"] {
        let (code, body) = curl(&[
            version,
            "--cacert",
            ca.to_str().unwrap(),
            "--resolve",
            &resolve,
            &url,
        ]);
        assert_eq!(code, 200, "{version}: {body}");
        assert!(body.contains("\"path\":\"/api/x\""), "{body}");
    }

    // The spec as given, and the requests counted.
    let v = netd.netctl_json(&["status", "hp"]);
    assert_eq!(
        v["spec"]["routes"],
        serde_json::json!(["/api", "/static"]),
        "{v}"
    );
    assert_eq!(v["spec"]["upstream_protocol"], "http1", "{v}");
    assert_eq!(v["spec"]["forwarded"], "both", "{v}");
    assert_eq!(v["spec"]["envoy_fault_headers"], true, "{v}");
    wait_until("2 requests counted", || {
        proxy_stats(&netd, "hp")["requests"] == 2
    });
    let status = netd.netctl_ok(&["status", "hp"]);
    assert_eq!(
        row(&status, "/api")[1..7],
        ["2", "0", "2", "0", "0", "0"],
        "{status}"
    );
    assert_eq!(
        row(&status, "/static")[1..7],
        ["0", "0", "0", "0", "0", "0"],
        "{status}"
    );
    assert!(
        status.contains("limits:      0 too large (413, 431)"),
        "{status}"
    );
    let text = scrape(metrics);
    assert_eq!(histogram(&text, "hp", "/api").1, 2.0);
    assert_eq!(histogram(&text, "hp", "/static").1, 0.0);

    // One access line per request, without the query string.
    wait_until("two access lines of hp", || {
        std::fs::read_to_string(&log)
            .is_ok_and(|t| t.lines().filter(|l| l.contains("listener=hp ")).count() == 2)
    });
    let lines = std::fs::read_to_string(&log).unwrap();
    for l in lines.lines().filter(|l| l.contains("listener=hp ")) {
        assert!(l.contains(" method=GET path=/api/x status=200 "), "{l}");
        assert!(l.contains(" duration_us="), "{l}");
        assert!(!l.contains("secret"), "{l}");
    }
    assert!(!lines.contains("listener=hp2"), "{lines}");

    // Export, then apply the export: nothing to change.
    let exported = netd.netctl_ok(&["export"]);
    assert!(
        exported.contains("routes = [\"/api\", \"/static\"]"),
        "{exported}"
    );
    let file = netd.dir.path().join("export.toml");
    std::fs::write(&file, &exported).unwrap();
    let plan = netd.netctl_json(&["apply", "--dry-run", "-f", file.to_str().unwrap()]);
    let items = plan["plan"].as_array().expect("plan");
    assert_eq!(items.len(), 3, "{plan}");
    for item in items {
        assert_eq!(item["action"], "unchanged", "{exported}\n{plan}");
    }
}

#[test]
fn update_keeps_the_counters_and_the_routes_that_stay() {
    let port = free_tcp_port();
    let netd = Netd::start(&format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"));
    netd.netctl_ok(&["start", "http", "up", "--listen", "127.0.0.1:0"]);
    let up = bound_addr(&netd, "up").to_string();
    netd.netctl_ok(&[
        "start",
        "http-proxy",
        "hp",
        "--listen",
        "127.0.0.1:0",
        "-u",
        &up,
        // Refuses: marked down by the second request, which is retried.
        "-u",
        "127.0.0.1:9",
        "--retries",
        "1",
        "--upstream-backoff",
        "1h",
        "--route",
        "/api",
        "--route",
        "/old",
    ]);
    let hp = bound_addr(&netd, "hp");
    get_ok(hp, "/api/a");
    get_ok(hp, "/api/b");
    get_ok(hp, "/old/x");
    get_ok(hp, "/z");
    wait_until("4 requests counted", || {
        proxy_stats(&netd, "hp")["requests"] == 4
    });

    let out = netd.netctl_ok(&["update", "hp", "--route", "/api", "--route", "/new"]);
    assert!(out.starts_with("updated hp ("), "{out}");
    let s = proxy_stats(&netd, "hp");
    assert_eq!(s["requests"], 4, "{s}");
    assert_eq!(s["responses_2xx"], 4, "{s}");
    assert_eq!(route(&s, "/api")["requests"], 2, "{s}");
    assert_eq!(route(&s, "/")["requests"], 1, "{s}");
    assert_eq!(route(&s, "/new")["requests"], 0, "{s}");
    assert!(
        !s["routes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["route"] == "/old"),
        "{s}"
    );
    assert_eq!(s["upstreams"][0]["connections"], 4, "{s}");
    assert_eq!(s["retries"], 1, "{s}");
    let down = &s["upstreams"][1];
    assert_eq!(down["addr"], "127.0.0.1:9", "{s}");
    assert_eq!(
        (down["healthy"].as_bool(), down["connect_failures"].as_u64()),
        (Some(false), Some(1)),
        "the down upstream stays down: {s}"
    );

    // Counting goes on from there, on /metrics too.
    let hp = bound_addr(&netd, "hp");
    get_ok(hp, "/api/c");
    get_ok(hp, "/new/y");
    wait_until("6 requests counted", || {
        proxy_stats(&netd, "hp")["requests"] == 6
    });
    let text = scrape(port);
    let base = "listener=\"hp\",kind=\"http-proxy\"";
    assert_eq!(
        metric(&text, &format!("netd_http_proxy_requests_total{{{base}}}")),
        Some(6.0),
        "{text}"
    );
    assert_eq!(histogram(&text, "hp", "/api").1, 3.0, "{text}");
    assert_eq!(histogram(&text, "hp", "/new").1, 1.0, "{text}");
    assert!(!text.contains("route=\"/old\""), "{text}");
}

#[test]
fn bad_values_are_refused_with_the_key_named() {
    let netd = Netd::start("");
    let many: Vec<String> = (0..65)
        .flat_map(|i| ["--route".to_string(), format!("/r{i}")])
        .collect();
    let many_line = format!(
        "routes = [{}]",
        (0..65)
            .map(|i| format!("\"/r{i}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let cases: Vec<(Vec<String>, &str, &str)> = vec![
        (
            vec!["--upstream-protocol".into(), "spdy".into()],
            "upstream_protocol = \"spdy\"",
            "upstream_protocol 'spdy': expected auto, http1 or h2c",
        ),
        (
            vec!["--forwarded".into(), "x".into()],
            "forwarded = \"x\"",
            "forwarded 'x': expected x-forwarded-for, forwarded, both or none",
        ),
        (
            vec!["--route".into(), "api".into()],
            "routes = [\"api\"]",
            "routes: 'api' is not a path prefix: it must start with '/'",
        ),
        (many, &many_line, "routes has 65 prefixes; at most 64"),
        (
            vec!["--retries".into(), "9".into()],
            "retries = 9",
            "retries is 9; at most 8",
        ),
        (
            vec!["--max-idle-per-upstream".into(), "2000".into()],
            "max_idle_per_upstream = 2000",
            "max_idle_per_upstream is 2000; it must be 1 to 1024",
        ),
    ];
    for (flags, line, want) in &cases {
        let mut args = vec![
            "start",
            "http-proxy",
            "bad",
            "--listen",
            "127.0.0.1:0",
            "-u",
            "127.0.0.1:9",
        ];
        args.extend(flags.iter().map(String::as_str));
        let e = netd.netctl_err(&args);
        assert!(
            e.contains(&format!("netctl: cannot start 'bad': {want}")),
            "{flags:?}: {e}"
        );

        let config = format!(
            "[[listener]]\nname = \"bad\"\nkind = \"http-proxy\"\nlisten = \"127.0.0.1:0\"\n\
             upstreams = [\"127.0.0.1:9\"]\n{line}\n"
        );
        let (out, path) = netd_exit(&config, &["--check-config"]);
        let out = out.expect("netd --check-config ended");
        let err = String::from_utf8_lossy(&out.stderr).replace(&path, "netd.toml");
        assert!(!out.status.success(), "{line} accepted");
        assert!(
            err.contains(&format!("netd.toml:6: listener 'bad': {want}")),
            "{line}: {err}"
        );
    }
    let list = netd.netctl_ok(&["list"]);
    assert!(!list.contains("bad"), "{list}");
}
