//! deploy/grafana/netd.json, the fleet's Grafana dashboard, checked two
//! ways:
//!
//! - offline: its structure (schemaVersion, the `datasource` variable used
//!   by every panel and query, no host written into it, unique panel ids,
//!   grid positions), that it names only metric families and labels netd
//!   exports (tests/it/metrics_families.txt), that its annotation covers
//!   the alerts of deploy/prometheus/netd.rules.yml, and that the
//!   Kubernetes ConfigMap for Grafana's sidecar carries the same JSON;
//! - against the real Prometheus of the fleet test (tests/it/fleet.rs):
//!   two netd daemons in network namespaces with a listener of every kind,
//!   real traffic through them, and a third scrape target that is down.
//!   Every query of the dashboard (panels, variables, annotations), with
//!   its variables substituted as Grafana does, runs without error, the
//!   panels the traffic feeds have data, and the variables list the
//!   test's hosts, kinds and listeners.
//!
//! Without the `prometheus` binary the second test is skipped with a note,
//! unless NETD_REQUIRE_PROMETHEUS is set (as .ci/run sets it).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use regex::Regex;
use serde_json::Value;

use crate::common::{DEADLINE, NetNs, wait_until};
use crate::fleet::{Node, Prometheus, encode, http_get, prometheus_available};

const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/netd.json");
const CONFIGMAP: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/kubernetes/grafana-dashboard.yaml"
);
const KUSTOMIZATION: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/kubernetes/kustomization.yaml"
);
const PROVIDER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/grafana/provisioning/dashboards/netd.yaml"
);
const DATASOURCE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/grafana/provisioning/datasources/prometheus.yaml"
);
const RULES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/prometheus/netd.rules.yml"
);
const FAMILIES: &str = include_str!("metrics_families.txt");

/// Labels the dashboard may use besides netd's own: Prometheus' target
/// labels and those of ALERTS.
const OTHER_LABELS: &[&str] = &["job", "instance", "alertname", "alertstate", "severity"];
/// Grafana's built-in variables the dashboard uses, and what the live test
/// gives them (the test's Prometheus scrapes every second).
const BUILTINS: &[(&str, &str)] = &[
    ("__rate_interval", "1m"),
    ("__interval", "15s"),
    ("__range", "5m"),
];

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

fn dashboard() -> Value {
    serde_json::from_str(&read(DASHBOARD)).expect("deploy/grafana/netd.json is JSON")
}

/// Every panel, rows' nested panels included.
fn all_panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        out.push(p);
        if let Some(nested) = p["panels"].as_array() {
            out.extend(nested);
        }
    }
    out
}

/// (panel title, expr) of every panel target.
fn panel_queries(d: &Value) -> Vec<(String, String)> {
    all_panels(d)
        .into_iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap_or("?").to_string();
            p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |t| (title.clone(), t["expr"].as_str().unwrap_or("").to_string()))
        })
        .collect()
}

/// The query variables: name and `label_values(...)` query.
fn variable_queries(d: &Value) -> Vec<(String, String)> {
    d["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .filter(|v| v["type"] == "query")
        .map(|v| {
            let q = v["query"]["query"].as_str().or(v["query"].as_str());
            (
                v["name"].as_str().expect("variable name").to_string(),
                q.expect("variable query").to_string(),
            )
        })
        .collect()
}

/// (name, expr) of the Prometheus annotations.
fn annotation_queries(d: &Value) -> Vec<(String, String)> {
    d["annotations"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["builtIn"] != 1)
        .map(|a| {
            (
                a["name"].as_str().unwrap_or("?").to_string(),
                a["expr"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Every PromQL text of the dashboard, with where it is.
fn every_query(d: &Value) -> Vec<(String, String)> {
    let mut all: Vec<(String, String)> = panel_queries(d)
        .into_iter()
        .map(|(t, e)| (format!("panel {t:?}"), e))
        .collect();
    all.extend(
        variable_queries(d)
            .into_iter()
            .map(|(n, q)| (format!("variable {n}"), q)),
    );
    all.extend(
        annotation_queries(d)
            .into_iter()
            .map(|(n, e)| (format!("annotation {n:?}"), e)),
    );
    all
}

/// Metric names and label names of tests/it/metrics_families.txt.
fn families() -> (BTreeSet<String>, BTreeSet<String>) {
    let label = Regex::new(r#"([a-z_]+)=""#).unwrap();
    let (mut names, mut labels) = (BTreeSet::new(), BTreeSet::new());
    for line in FAMILIES.lines().filter(|l| !l.starts_with('#')) {
        let name = line.split('{').next().unwrap();
        names.insert(name.to_string());
        for c in label.captures_iter(line) {
            labels.insert(c[1].to_string());
        }
    }
    (names, labels)
}

/// The alert names of deploy/prometheus/netd.rules.yml.
fn shipped_alerts() -> BTreeSet<String> {
    let re = Regex::new(r"(?m)^\s*- alert: (\w+)\s*$").unwrap();
    let alerts: BTreeSet<String> = re
        .captures_iter(&read(RULES))
        .map(|c| c[1].to_string())
        .collect();
    assert!(alerts.len() > 5, "no alerts found in {RULES}");
    alerts
}

#[test]
fn dashboard_json_is_well_formed_and_uses_the_datasource_variable() {
    let d = dashboard();
    let version = d["schemaVersion"].as_u64().expect("schemaVersion");
    assert!(
        version >= 36,
        "schemaVersion {version}: export from a current Grafana"
    );
    assert!(d["uid"].as_str().is_some_and(|u| !u.is_empty()), "uid");
    assert!(d["id"].is_null(), "id must be null (Grafana assigns it)");

    // The variables: a datasource variable over Prometheus, and hosts,
    // kinds and listeners each from the one before, multi-select with All.
    let vars = d["templating"]["list"].as_array().expect("templating.list");
    let by_name: BTreeMap<&str, &Value> = vars
        .iter()
        .map(|v| (v["name"].as_str().expect("variable name"), v))
        .collect();
    let ds = by_name.get("datasource").expect("a `datasource` variable");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    let queries: BTreeMap<String, String> = variable_queries(&d).into_iter().collect();
    for (name, label, needs) in [
        ("instance", "instance", &[][..]),
        ("kind", "kind", &["$instance"][..]),
        ("listener", "listener", &["$instance", "$kind"][..]),
    ] {
        let v = by_name
            .get(name)
            .unwrap_or_else(|| panic!("variable {name}"));
        assert_eq!(v["type"], "query", "{name}");
        assert_eq!(v["datasource"]["uid"], "${datasource}", "{name}");
        assert_eq!(v["multi"], true, "{name}: multi-select");
        assert_eq!(v["includeAll"], true, "{name}: All");
        let q = &queries[name];
        assert!(
            q.starts_with("label_values(netd_") && q.ends_with(&format!(", {label})")),
            "{name}: {q}"
        );
        for n in needs {
            assert!(
                q.contains(&format!("=~\"{n}\"")),
                "{name} not filtered by {n}: {q}"
            );
        }
    }

    // Panels: unique ids, a place on the 24-column grid, no two overlapping,
    // and every query through the datasource variable.
    let mut ids = BTreeSet::new();
    let mut cells = BTreeSet::new();
    let panels = all_panels(&d);
    assert!(panels.len() > 20, "{} panels", panels.len());
    for p in panels {
        let title = p["title"].as_str().expect("panel title");
        let id = p["id"].as_u64().unwrap_or_else(|| panic!("{title}: id"));
        assert!(ids.insert(id), "panel id {id} twice ({title})");
        let g = &p["gridPos"];
        let [h, w, x, y] = ["h", "w", "x", "y"].map(|k| {
            g[k].as_u64()
                .unwrap_or_else(|| panic!("{title}: gridPos.{k}"))
        });
        assert!(h > 0 && w > 0 && x + w <= 24, "{title}: gridPos {g}");
        for cell in (x..x + w).flat_map(|cx| (y..y + h).map(move |cy| (cx, cy))) {
            assert!(
                cells.insert(cell),
                "{title} overlaps another panel at {cell:?}"
            );
        }
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("{title}: targets"));
        assert!(!targets.is_empty(), "{title}: no targets");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}: {t}");
            assert!(
                t["expr"].as_str().is_some_and(|e| !e.trim().is_empty()),
                "{title}: a target without expr: {t}"
            );
        }
    }
    for a in d["annotations"]["list"].as_array().expect("annotations") {
        if a["builtIn"] != 1 {
            assert_eq!(a["datasource"]["uid"], "${datasource}", "{a}");
        }
    }
}

/// No host, address or fixed instance anywhere; every matcher on
/// `instance` is the variable; only families and labels netd exports.
#[test]
fn dashboard_names_no_host_and_only_what_netd_exports() {
    let text = read(DASHBOARD);
    let address = Regex::new(r"\b\d{1,3}(\.\d{1,3}){3}\b|localhost|\[::1?\]").unwrap();
    assert!(
        !address.is_match(&text),
        "netd.json names an address: {:?}",
        address.find(&text)
    );
    let d = dashboard();
    let (names, mut labels) = families();
    labels.extend(OTHER_LABELS.iter().map(|l| l.to_string()));
    let instance = Regex::new(r#"instance\s*(=~|!~|!=|=)\s*"([^"]*)""#).unwrap();
    let metric = Regex::new(r"\bnetd_[a-z0-9_]+\b").unwrap();
    let matcher = Regex::new(r#"([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*""#).unwrap();
    let grouping = Regex::new(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)").unwrap();
    let variable = Regex::new(r"\$\{?([a-zA-Z_][a-zA-Z0-9_]*)").unwrap();
    let defined: BTreeSet<String> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .chain(BUILTINS.iter().map(|(n, _)| n.to_string()))
        .collect();
    let queries = every_query(&d);
    for (at, q) in &queries {
        for c in instance.captures_iter(q) {
            assert_eq!((&c[1], &c[2]), ("=~", "$instance"), "{at}: {q}");
        }
        for m in metric.find_iter(q) {
            // Recording rules are not used: the dashboard works on the
            // raw families, whatever rules the Prometheus loads.
            assert!(
                names.contains(m.as_str()),
                "{at}: {} is not exported: {q}",
                m.as_str()
            );
        }
        let used = matcher.captures_iter(q).map(|c| c[1].to_string()).chain(
            grouping.captures_iter(q).flat_map(|c| {
                c[1].split(',')
                    .map(|l| l.trim().to_string())
                    .filter(|l| !l.is_empty())
                    .collect::<Vec<_>>()
            }),
        );
        for l in used {
            assert!(labels.contains(&l), "{at}: label {l} is not netd's: {q}");
        }
        for v in variable.captures_iter(q) {
            assert!(
                defined.contains(&v[1]),
                "{at}: ${} is not a variable: {q}",
                &v[1]
            );
        }
    }

    // Each topic of the dashboard reads the family it is about.
    let all: String = queries.iter().map(|(_, q)| q.as_str()).collect();
    for needle in [
        "netd_listener_up",
        "rate(netd_connections_total",
        "rate(netd_received_bytes_total",
        "netd_connections_active",
        "rate(netd_errors_total",
        "netd_proxy_upstream_healthy",
        "netd_http_proxy_upstream_healthy",
        "rate(netd_proxy_connect_failures_total",
        "rate(netd_proxy_pool_hits_total",
        "rate(netd_http_responses_total",
        "histogram_quantile(0.99, sum by (instance, listener, le) (rate(netd_http_proxy_request_duration_seconds_bucket",
        "sum by (instance, listener, reason) (rate(netd_udp_echo_drops_total",
        "rate(netd_sniffer_kernel_drops_total",
        "netd_fault_active",
        "rate(netd_fault_connections_affected_total",
    ] {
        assert!(all.contains(needle), "no query has {needle}");
    }

    // The annotation marks every alert of the shipped rules.
    let annotations = annotation_queries(&d);
    let alerts = Regex::new(r#"^ALERTS\{.*alertname=~"([A-Za-z0-9|]+)".*\}$"#).unwrap();
    let (_, expr) = annotations
        .iter()
        .find(|(_, e)| e.starts_with("ALERTS{"))
        .expect("an annotation on ALERTS");
    let names: BTreeSet<String> = alerts
        .captures(expr)
        .unwrap_or_else(|| panic!("annotation: {expr}"))[1]
        .split('|')
        .map(str::to_string)
        .collect();
    assert_eq!(names, shipped_alerts(), "annotation alertname=~ vs {RULES}");
    assert!(expr.contains("job=\"netd\""), "{expr}");
}

/// The ConfigMap holds netd.json byte for byte, carries the sidecar's
/// label and is in the kustomization; the provisioning example points
/// Grafana at a folder the docs install netd.json into.
#[test]
fn configmap_and_provisioning_carry_the_dashboard() {
    let cm = read(CONFIGMAP);
    assert!(cm.contains("\nkind: ConfigMap\n"), "{CONFIGMAP}");
    assert!(
        cm.contains("\n  labels:\n") && cm.contains("\n    grafana_dashboard: \"1\"\n"),
        "{CONFIGMAP}: no grafana_dashboard: \"1\" label"
    );
    let (_, body) = cm
        .split_once("\n  netd.json: |\n")
        .expect("a `  netd.json: |` key in the ConfigMap");
    let mut copy = String::new();
    for line in body.lines() {
        let json = line
            .strip_prefix("    ")
            .unwrap_or_else(|| panic!("{CONFIGMAP}: line not indented by 4: {line:?}"));
        copy.push_str(json);
        copy.push('\n');
    }
    assert!(
        copy == read(DASHBOARD),
        "{CONFIGMAP} differs from deploy/grafana/netd.json: regenerate it with the command in its header"
    );
    assert!(
        read(KUSTOMIZATION).contains("\n  - grafana-dashboard.yaml\n"),
        "kustomization.yaml does not list grafana-dashboard.yaml"
    );

    let provider = read(PROVIDER);
    assert!(provider.contains("\n    type: file\n"), "{provider}");
    let path = Regex::new(r"(?m)^\s+path: (/\S+)$")
        .unwrap()
        .captures(&provider)
        .expect("providers[0].options.path")[1]
        .to_string();
    for doc in ["deploy/grafana/README.md", "docs/fleet.md"] {
        let text = read(&format!("{}/{doc}", env!("CARGO_MANIFEST_DIR")));
        assert!(
            text.contains(&format!("{path}/netd.json")),
            "{doc} does not install netd.json where the provider looks ({path})"
        );
    }
    let datasource = read(DATASOURCE);
    assert!(
        datasource.contains("\n    type: prometheus\n"),
        "{datasource}"
    );
}

/// Listeners of every kind on each test daemon, two upstreams of each
/// proxy dead (ports nothing listens on), a latency fault on the proxy and
/// a loss fault that drops every datagram of the udp-proxy.
const LISTENERS: &str = "\
[[listener]]\nname = \"echo\"\nkind = \"tcp-echo\"\nlisten = \"127.0.0.1:7100\"\n\
[[listener]]\nname = \"tp\"\nkind = \"proxy\"\nlisten = \"127.0.0.1:7101\"\n\
upstreams = [\"127.0.0.1:7100\", \"127.0.0.1:7199\"]\nupstream_backoff = \"10m\"\n\
[[listener.faults]]\nname = \"late\"\ntype = \"latency\"\nlatency = \"1ms\"\n\
[[listener]]\nname = \"web\"\nkind = \"http\"\nlisten = \"127.0.0.1:7102\"\n\
[[listener]]\nname = \"hp\"\nkind = \"http-proxy\"\nlisten = \"127.0.0.1:7103\"\n\
upstreams = [\"127.0.0.1:7102\", \"127.0.0.1:7198\"]\nroutes = [\"/api\"]\nretries = 1\nupstream_backoff = \"10m\"\n\
[[listener]]\nname = \"ue\"\nkind = \"udp-echo\"\nlisten = \"127.0.0.1:7104\"\n\
[[listener]]\nname = \"up\"\nkind = \"udp-proxy\"\nlisten = \"127.0.0.1:7105\"\n\
upstream = \"127.0.0.1:7104\"\n\
faults = [{ name = \"lossy\", type = \"loss\", probability = 1.0 }]\n\
[[listener]]\nname = \"sn\"\nkind = \"sniffer\"\ninterface = \"lo\"\n";
const KINDS: &[&str] = &[
    "http",
    "http-proxy",
    "proxy",
    "sniffer",
    "tcp-echo",
    "udp-echo",
    "udp-proxy",
];
const NAMES: &[&str] = &["echo", "hp", "sn", "tp", "ue", "up", "web"];
/// A scrape target nothing answers on (in Prometheus' namespace): a host
/// that is down, so NetdDaemonDown fires (its `for:` shortened by the
/// fleet test's Prometheus).
const DEAD_TARGET: &str = "127.0.0.1:9";

/// Panels that must show a value above zero for the test's traffic (every
/// panel must have data).
const POSITIVE: &[&str] = &[
    "Daemons up",
    "Daemons down",
    "Listeners running",
    "netd alerts firing",
    "Listeners by state",
    "Connections/s by host and kind",
    "Bytes/s by host and kind",
    "Datagrams/s by host and kind",
    "Listener state",
    "Connections/s per listener",
    "Bytes/s per listener",
    "Datagrams/s per listener",
    "Healthy upstreams",
    "Unhealthy upstreams",
    "Upstream connect failures/s",
    "Upstream health",
    "HTTP proxy upstream requests/s",
    "http-proxy responses/s by class",
    "http-proxy latency",
    "http-proxy p99 latency by route",
    "http responses/s by class",
    "Sniffer packets/s by protocol",
    "Faults active",
    "Connections and requests affected/s",
    "Fault bytes/s",
    "Fault datagrams/s",
];

/// Traffic for every kind, from inside the daemon's namespace.
fn traffic(node: &Node) {
    node.ns.run(|| {
        for i in 0..6 {
            let mut s = TcpStream::connect("127.0.0.1:7101").expect("connect proxy");
            s.set_read_timeout(Some(DEADLINE)).unwrap();
            let msg = format!("hello {i}");
            s.write_all(msg.as_bytes()).unwrap();
            let mut back = vec![0; msg.len()];
            s.read_exact(&mut back).expect("echo through the proxy");
            assert_eq!(back, msg.as_bytes());
        }
        let requests = [
            (
                7103,
                "GET /api/items HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            ),
            (
                7103,
                "GET /other HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            ),
            (
                7103,
                "GET /api/x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            ),
            (
                7103,
                "DELETE /api/x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            ),
            (
                7102,
                "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            ),
            (
                7102,
                "PUT / HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            ),
        ];
        for (port, req) in requests.iter().cycle().take(12) {
            let mut s = TcpStream::connect(("127.0.0.1", *port)).expect("connect http");
            s.set_read_timeout(Some(DEADLINE)).unwrap();
            s.write_all(req.as_bytes()).unwrap();
            let mut resp = String::new();
            s.read_to_string(&mut resp).expect("http response");
            assert!(resp.starts_with("HTTP/1.1 "), "{req}: {resp}");
        }
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        udp.set_read_timeout(Some(DEADLINE)).unwrap();
        for i in 0..5u8 {
            udp.send_to(&[b'u', i], "127.0.0.1:7104").unwrap();
            let mut buf = [0u8; 16];
            let (n, _) = udp.recv_from(&mut buf).expect("udp echo reply");
            assert_eq!(&buf[..n], &[b'u', i]);
            udp.send_to(&[b'p', i], "127.0.0.1:7105").unwrap();
        }
    });
}

/// The values of a variable as Grafana substitutes them in a query: the
/// All value `.*` for none, otherwise `(a|b)` with each value's regex
/// characters escaped (Grafana's prometheusSpecialRegexEscape).
fn format_var(values: &[String]) -> String {
    if values.is_empty() {
        return ".*".to_string();
    }
    let esc = |v: &String| {
        v.chars().fold(String::new(), |mut s, c| {
            if "\\$^*{}[]'+?.()|".contains(c) {
                s.push_str("\\\\");
            }
            s.push(c);
            s
        })
    };
    format!("({})", values.iter().map(esc).collect::<Vec<_>>().join("|"))
}

/// `q` with the dashboard's and Grafana's variables replaced; no `$` may
/// be left.
fn interpolate(q: &str, vars: &[(&str, String)]) -> String {
    let mut q = q.to_string();
    let builtins = BUILTINS.iter().map(|(n, v)| (*n, v.to_string()));
    for (name, value) in builtins.chain(vars.iter().cloned()) {
        q = q
            .replace(&format!("${{{name}}}"), &value)
            .replace(&format!("${name}"), &value);
    }
    assert!(!q.contains('$'), "a variable left in {q}");
    q
}

/// `GET path` on Prometheus' HTTP API: `data`, or the error it answered.
fn api(prom: &NetNs, path: &str) -> Result<Value, String> {
    let (status, body) = http_get(prom, path).ok_or("Prometheus does not answer")?;
    let v: Value = serde_json::from_str(&body).map_err(|e| format!("{status}: {e}: {body}"))?;
    if status != 200 || v["status"] != "success" {
        return Err(format!("{status}: {body}"));
    }
    Ok(v["data"].clone())
}

/// An instant query: its series as (labels, value).
fn instant(prom: &NetNs, promql: &str) -> Result<Vec<(Value, f64)>, String> {
    let data = api(prom, &format!("/api/v1/query?query={}", encode(promql)))?;
    let sample = |v: &Value| -> f64 {
        let s = v[1].as_str().unwrap_or("NaN");
        s.parse().unwrap_or(f64::NAN)
    };
    Ok(match data["resultType"].as_str() {
        Some("vector") => data["result"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| (r["metric"].clone(), sample(&r["value"])))
            .collect(),
        Some("scalar") => vec![(Value::Null, sample(&data["result"]))],
        other => return Err(format!("{promql}: result type {other:?}")),
    })
}

/// A variable's `label_values(SELECTOR, LABEL)` as Grafana runs it:
/// `/api/v1/label/LABEL/values?match[]=SELECTOR`.
fn label_values(prom: &NetNs, query: &str) -> Result<Vec<String>, String> {
    let inner = query
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
        .ok_or_else(|| format!("not label_values(...): {query}"))?;
    let (selector, label) = inner
        .rsplit_once(',')
        .ok_or_else(|| format!("no label in {query}"))?;
    let path = format!(
        "/api/v1/label/{}/values?match[]={}",
        label.trim(),
        encode(selector.trim())
    );
    let data = api(prom, &path)?;
    Ok(data
        .as_array()
        .ok_or_else(|| format!("{query}: {data}"))?
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect())
}

/// Panel title -> its series (every target's), for `vars`.
fn run_panels(
    prom: &NetNs,
    d: &Value,
    vars: &[(&str, String)],
) -> BTreeMap<String, Vec<(Value, f64)>> {
    let mut out: BTreeMap<String, Vec<(Value, f64)>> = BTreeMap::new();
    for (title, expr) in panel_queries(d) {
        let q = interpolate(&expr, vars);
        let series =
            instant(prom, &q).unwrap_or_else(|e| panic!("panel {title:?}: {q}\nPrometheus: {e}"));
        out.entry(title).or_default().extend(series);
    }
    out
}

/// What the panels still lack: empty ones, and those of [`POSITIVE`]
/// without a value above zero.
fn missing(panels: &BTreeMap<String, Vec<(Value, f64)>>) -> Vec<String> {
    let mut out = Vec::new();
    for (title, series) in panels {
        if series.is_empty() {
            out.push(format!("{title}: no data"));
        } else if POSITIVE.contains(&title.as_str()) && !series.iter().any(|(_, v)| *v > 0.0) {
            out.push(format!("{title}: nothing above 0: {series:?}"));
        }
    }
    for p in POSITIVE {
        assert!(panels.contains_key(*p), "no panel {p:?} in the dashboard");
    }
    out
}

#[test]
fn every_query_runs_against_the_fleets_prometheus_with_data() {
    if !prometheus_available() {
        return;
    }
    let d = dashboard();
    let prom_ns = NetNs::new();
    let nodes: Vec<Node> = (0..2u8)
        .map(|i| Node::start_with(&prom_ns, i, LISTENERS))
        .collect();
    let mut targets: Vec<String> = nodes.iter().map(Node::target).collect();
    targets.sort();
    let mut scraped = targets.clone();
    scraped.push(DEAD_TARGET.to_string());
    let prom = Prometheus::start(&prom_ns, &scraped);
    wait_until("prometheus ready", || {
        matches!(http_get(&prom_ns, "/-/ready"), Some((200, _)))
    });
    // A few scrapes of every daemon before the traffic, so rate() sees
    // the counters rise.
    wait_until("3 scrapes of each daemon", || {
        let q = "min(count_over_time(netd_listener_up{job=\"netd\",listener=\"echo\"}[1m])) >= 3 \
                 and count(netd_listener_up{job=\"netd\",listener=\"echo\"}) == 2";
        instant(&prom_ns, q).is_ok_and(|r| !r.is_empty())
    });
    for node in &nodes {
        traffic(node);
    }

    // Everything on All: every query answers, and the panels have data
    // once Prometheus has scraped the traffic.
    let all = [
        ("datasource", "prometheus".to_string()),
        ("instance", format_var(&[])),
        ("kind", format_var(&[])),
        ("listener", format_var(&[])),
    ];
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let panels = run_panels(&prom_ns, &d, &all);
        let lacking = missing(&panels);
        if lacking.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "panels without the data the traffic made:\n{}\nprometheus log:\n{}",
            lacking.join("\n"),
            prom.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    for (name, expr) in annotation_queries(&d) {
        let q = interpolate(&expr, &all);
        let alerts =
            instant(&prom_ns, &q).unwrap_or_else(|e| panic!("annotation {name}: {q}: {e}"));
        assert!(
            alerts
                .iter()
                .any(|(m, _)| m["alertname"] == "NetdDaemonDown" && m["instance"] == DEAD_TARGET),
            "annotation {name}: {q}: {alerts:?}"
        );
    }

    // The variables list the test's hosts, kinds and listeners.
    let vars: BTreeMap<String, String> = variable_queries(&d).into_iter().collect();
    let values = |name: &str, with: &[(&str, String)]| -> Vec<String> {
        let q = interpolate(&vars[name], with);
        let mut v = label_values(&prom_ns, &q).unwrap_or_else(|e| panic!("variable {name}: {e}"));
        v.sort();
        v
    };
    assert_eq!(values("instance", &all), targets);
    assert_eq!(values("kind", &all), KINDS);
    assert_eq!(values("listener", &all), NAMES);
    let host = targets[0].clone();
    let one_host_proxies = [
        ("instance", format_var(std::slice::from_ref(&host))),
        ("kind", format_var(&["proxy".to_string()])),
    ];
    assert_eq!(values("kind", &one_host_proxies), KINDS);
    assert_eq!(values("listener", &one_host_proxies), ["tp"]);

    // One host and two listeners chosen: every query answers with only
    // their series.
    let picked = ["hp".to_string(), "tp".to_string()];
    let chosen = [
        ("datasource", "prometheus".to_string()),
        ("instance", format_var(std::slice::from_ref(&host))),
        ("kind", format_var(&[])),
        ("listener", format_var(&picked)),
    ];
    let panels = run_panels(&prom_ns, &d, &chosen);
    for (title, series) in &panels {
        for (m, _) in series {
            if let Some(i) = m["instance"].as_str() {
                assert_eq!(i, host, "{title}: {m}");
            }
            if let Some(l) = m["listener"].as_str() {
                assert!(picked.iter().any(|p| p == l), "{title}: {m}");
            }
        }
    }
    for title in [
        "Connections/s per listener",
        "http-proxy latency",
        "Upstream health",
    ] {
        assert!(
            !panels[title].is_empty(),
            "{title}: no data for {host} {picked:?}"
        );
    }
    for (at, q) in every_query(&d) {
        if at.starts_with("annotation") {
            let q = interpolate(&q, &chosen);
            instant(&prom_ns, &q).unwrap_or_else(|e| panic!("{at}: {q}: {e}"));
        }
    }
    // Dropped in reverse order: Prometheus, then each daemon before its
    // namespace.
}
