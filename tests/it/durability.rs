//! Durability against the real binaries: runtime changes persisted across
//! kill -9, a damaged state file moved aside, declarative apply (plan,
//! dry run, export round trip, prune), live update of a proxy with an open
//! connection, drain, and SIGHUP reload (good and bad configs).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use crate::common::{Netd, TestUpstream, bound_addr, wait_until};
use netd::proto;
use serde_json::Value;

fn names(netd: &Netd) -> Vec<String> {
    let v = netd.netctl_json(&["list"]);
    v["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap().to_string())
        .collect()
}

fn listener(netd: &Netd, name: &str) -> Value {
    netd.netctl_json(&["status", name])
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s
}

/// Send `msg` on an open connection and read one reply chunk.
fn say(c: &mut TcpStream, msg: &[u8]) -> String {
    c.write_all(msg).unwrap();
    let mut buf = [0u8; 256];
    let n = c.read(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn http_status(addr: SocketAddr, token: Option<&str>) -> String {
    let mut c = connect(addr);
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        c,
        "GET /get HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    out.lines().next().unwrap_or_default().to_string()
}

const BASE: &str = r#"
[[listener]]
name = "base"
kind = "tcp-echo"
listen = "127.0.0.1:0"
prefix = "base: "
"#;

#[test]
fn runtime_changes_survive_kill_9_and_ephemeral_ones_do_not() {
    let netd = Netd::start(BASE);
    let up = TestUpstream::echo(b"up:");
    let upstream = up.addr.to_string();
    netd.netctl_ok(&[
        "start",
        "proxy",
        "p",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &upstream,
        "--idle-timeout",
        "90s",
        "--label",
        "team=net",
    ]);
    netd.netctl_ok(&[
        "start",
        "http",
        "h",
        "--listen",
        "127.0.0.1:0",
        "--token",
        "s3cret",
    ]);
    netd.netctl_ok(&[
        "start",
        "udp-echo",
        "u",
        "--listen",
        "127.0.0.1:0",
        "--prefix",
        "U: ",
        "--rate-limit",
        "50/s",
    ]);
    netd.netctl_ok(&[
        "start",
        "tcp-echo",
        "e",
        "--listen",
        "127.0.0.1:0",
        "--ephemeral",
    ]);
    netd.netctl_ok(&["stop", "base"]);
    let before: Vec<Value> = ["h", "p", "u"].iter().map(|n| listener(&netd, n)).collect();
    assert_eq!(listener(&netd, "e")["ephemeral"], true);

    let dir = netd.kill9();
    let netd = Netd::start_in(dir);
    // The config's "base" stays stopped, the ephemeral one is gone, the
    // rest is back with the same specs and labels.
    assert_eq!(names(&netd), ["h", "p", "u"]);
    for b in &before {
        let name = b["name"].as_str().unwrap();
        let now = listener(&netd, name);
        assert_eq!(now["spec"], b["spec"], "{name}");
        assert_eq!(now["labels"], b["labels"], "{name}");
        assert_eq!(now["ephemeral"], false);
    }
    // The token itself was kept (netd only ever shows it redacted).
    let h = bound_addr(&netd, "h");
    assert!(http_status(h, None).contains("401"));
    assert!(http_status(h, Some("s3cret")).contains("200"));
    // And the proxy forwards.
    let mut c = connect(bound_addr(&netd, "p"));
    assert_eq!(say(&mut c, b"x"), "up:x");
}

#[test]
fn a_damaged_state_file_is_moved_aside_and_reported() {
    let netd = Netd::start(BASE);
    netd.netctl_ok(&["start", "tcp-echo", "extra", "--listen", "127.0.0.1:0"]);
    let dir = netd.kill9();
    let state = dir.path().join("state/listeners.state");
    let mut bytes = std::fs::read(&state).expect("state file written");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&state, &bytes).unwrap();

    let netd = Netd::start_in(dir);
    assert_eq!(names(&netd), ["base"]);
    let log = netd.log();
    assert!(
        log.contains("the state file is unusable") && log.contains("moved aside to"),
        "{log}"
    );
    let aside: Vec<String> = std::fs::read_dir(netd.dir.path().join("state"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("listeners.state.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert!(!state_exists(&netd));
}

fn state_exists(netd: &Netd) -> bool {
    netd.dir.path().join("state/listeners.state").exists()
}

fn plan(v: &Value) -> Vec<(String, String, String)> {
    v["plan"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["action"].as_str().unwrap().to_string(),
                i["name"].as_str().unwrap().to_string(),
                i["detail"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn triple(a: &str, n: &str, d: &str) -> (String, String, String) {
    (a.into(), n.into(), d.into())
}

#[test]
fn apply_plans_applies_exports_round_trip_and_prunes() {
    let netd = Netd::start(BASE);
    netd.netctl_ok(&[
        "start",
        "udp-echo",
        "b",
        "--listen",
        "127.0.0.1:0",
        "--prefix",
        "x",
    ]);
    netd.netctl_ok(&[
        "start",
        "http",
        "c",
        "--listen",
        "127.0.0.1:0",
        "--token",
        "tok",
    ]);
    let file = netd.dir.path().join("apply.toml");
    std::fs::write(
        &file,
        r#"
[[listener]]
name = "a"
kind = "tcp-echo"
listen = "127.0.0.1:0"
prefix = "A: "

[[listener]]
name = "b"
kind = "udp-echo"
listen = "127.0.0.1:0"
"#,
    )
    .unwrap();
    let f = file.to_str().unwrap();

    // Dry run: the plan, and nothing changes.
    let v = netd.netctl_json(&["apply", "-f", f, "--dry-run"]);
    assert_eq!(v["applied"], false);
    assert_eq!(
        plan(&v),
        [triple("update", "b", "prefix"), triple("create", "a", "")]
    );
    assert_eq!(names(&netd), ["b", "base", "c"]);
    assert_eq!(listener(&netd, "b")["spec"]["prefix"], "x");
    let table = netd.netctl_ok(&["apply", "-f", f, "--dry-run"]);
    assert!(
        table.contains("ACTION") && table.contains("dry run: nothing changed"),
        "{table}"
    );

    // Apply.
    let v = netd.netctl_json(&["apply", "-f", f]);
    assert_eq!(v["applied"], true);
    assert_eq!(names(&netd), ["a", "b", "base", "c"]);
    assert_eq!(listener(&netd, "b")["spec"]["prefix"], "");
    let a = bound_addr(&netd, "a");
    assert_eq!(say(&mut connect(a), b"hi"), "A: hi");

    // Export, then apply the export: nothing to do (the HTTP token is
    // exported redacted and kept).
    let exported = netd.netctl_ok(&["export"]);
    let efile = netd.dir.path().join("export.toml");
    std::fs::write(&efile, &exported).unwrap();
    let v = netd.netctl_json(&["apply", "-f", efile.to_str().unwrap(), "--dry-run"]);
    let p = plan(&v);
    assert_eq!(p.len(), 4, "{exported}\n{p:?}");
    assert!(
        p.iter().all(|(a, ..)| a == "unchanged"),
        "{exported}\n{p:?}"
    );
    netd.netctl_ok(&["apply", "-f", efile.to_str().unwrap()]);
    let c = bound_addr(&netd, "c");
    assert!(http_status(c, Some("tok")).contains("200"));
    assert!(http_status(c, None).contains("401"));

    // A new address is a replace.
    std::fs::write(
        &file,
        std::fs::read_to_string(&file)
            .unwrap()
            .replacen("127.0.0.1:0", "127.0.0.2:0", 1),
    )
    .unwrap();
    // Prune: everything not in the file goes.
    let v = netd.netctl_json(&["apply", "-f", f, "--prune"]);
    assert_eq!(
        plan(&v),
        [
            triple("delete", "base", ""),
            triple("delete", "c", ""),
            triple("replace", "a", "listen"),
            triple("unchanged", "b", ""),
        ]
    );
    assert_eq!(names(&netd), ["a", "b"]);
    assert!(bound_addr(&netd, "a").to_string().starts_with("127.0.0.2:"));

    // An invalid entry changes nothing.
    std::fs::write(
        &file,
        "[[listener]]\nname = \"z\"\nkind = \"tcp-echo\"\nlisten = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"y\"\nkind = \"proxy\"\nlisten = \"127.0.0.1:0\"\nupstreams = []\n",
    )
    .unwrap();
    let err = netd.netctl_err(&["apply", "-f", f, "--prune"]);
    assert!(err.contains("upstream"), "{err}");
    assert_eq!(names(&netd), ["a", "b"]);
}

#[test]
fn updating_proxy_upstreams_keeps_open_connections() {
    let netd = Netd::start("");
    let one = TestUpstream::echo(b"one:");
    let two = TestUpstream::echo(b"two:");
    netd.netctl_ok(&[
        "start",
        "proxy",
        "p",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &one.addr.to_string(),
    ]);
    let addr = bound_addr(&netd, "p");
    let mut c1 = connect(addr);
    assert_eq!(say(&mut c1, b"a"), "one:a");

    let out = netd.netctl_ok(&["update", "p", "--upstream", &two.addr.to_string()]);
    assert!(
        out.contains("in place") && out.contains("upstreams"),
        "{out}"
    );
    assert_eq!(bound_addr(&netd, "p"), addr);
    let mut c2 = connect(addr);
    assert_eq!(say(&mut c2, b"b"), "two:b");
    // The open connection still goes to the old upstream.
    assert_eq!(say(&mut c1, b"c"), "one:c");

    // A new address: replaced; the open connections carry on.
    let v = netd.netctl_json(&["update", "p", "--listen", "127.0.0.2:0"]);
    assert_eq!(v["action"], "replaced");
    let moved = bound_addr(&netd, "p");
    assert!(moved.to_string().starts_with("127.0.0.2:"));
    assert!(
        TcpStream::connect(addr).is_err(),
        "old address still accepts"
    );
    assert_eq!(say(&mut connect(moved), b"d"), "two:d");
    assert_eq!(say(&mut c1, b"e"), "one:e");
    assert_eq!(say(&mut c2, b"f"), "two:f");
    let st = listener(&netd, "p");
    assert_eq!(st["stats"]["connections_total"], 3);

    // Nothing given that differs: unchanged. A flag the kind lacks: error.
    let out = netd.netctl_ok(&["update", "p", "--upstream", &two.addr.to_string()]);
    assert!(out.contains("unchanged"), "{out}");
    let err = netd.netctl_err(&["update", "p", "--prefix", "x"]);
    assert!(
        err.contains("--prefix does not apply to a proxy listener"),
        "{err}"
    );
    let err = netd.netctl_err(&["update", "nope", "--prefix", "x"]);
    assert!(err.contains("no listener named 'nope'"), "{err}");
}

#[test]
fn drain_lets_an_open_connection_finish_then_closes_at_the_timeout() {
    let netd = Netd::start("");
    netd.netctl_ok(&["start", "tcp-echo", "d", "--listen", "127.0.0.1:0"]);
    let addr = bound_addr(&netd, "d");
    let mut c = connect(addr);
    assert_eq!(say(&mut c, b"1"), "1");

    let drain = std::process::Command::new(crate::common::NETCTL)
        .args([
            "--control",
            &netd.control.to_string(),
            "drain",
            "d",
            "--timeout",
            "60s",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("draining in list", || {
        let v = listener(&netd, "d");
        v["state"] == "draining" && v["stats"]["connections_active"] == 1
    });
    let table = netd.netctl_ok(&["list"]);
    assert!(table.contains("draining (1 left)"), "{table}");
    // No new connections; the open one still works.
    assert!(TcpStream::connect(addr).is_err());
    assert_eq!(say(&mut c, b"2"), "2");
    c.shutdown(Shutdown::Write).unwrap();
    let out = drain.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("drained d") && text.contains("0 closed at the timeout"),
        "{text}"
    );
    assert!(names(&netd).is_empty());

    // With a connection that does not finish: closed at the timeout.
    netd.netctl_ok(&["start", "tcp-echo", "d2", "--listen", "127.0.0.1:0"]);
    let mut c = connect(bound_addr(&netd, "d2"));
    assert_eq!(say(&mut c, b"x"), "x");
    let v = netd.netctl_json(&["drain", "d2", "--timeout", "300ms"]);
    assert_eq!(v["connections_closed"], 1);
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
    assert!(names(&netd).is_empty());
}

/// The next RELOADED or RELOAD_FAILED event (other events are skipped).
async fn next_reload_outcome(events: &mut tonic::Streaming<proto::Event>) -> proto::Event {
    loop {
        let e = tokio::time::timeout(crate::common::DEADLINE, events.message())
            .await
            .expect("event in time")
            .unwrap()
            .unwrap();
        if e.kind() == proto::EventKind::Reloaded || e.kind() == proto::EventKind::ReloadFailed {
            return e;
        }
    }
}

const V1: &str = r#"
[[listener]]
name = "keep"
kind = "tcp-echo"
listen = "127.0.0.1:0"
prefix = "keep: "

[[listener]]
name = "gone"
kind = "udp-echo"
listen = "127.0.0.1:0"

[[listener]]
name = "changed"
kind = "tcp-echo"
listen = "127.0.0.1:0"
prefix = "1: "
"#;

const V2: &str = r#"
[[listener]]
name = "keep"
kind = "tcp-echo"
listen = "127.0.0.1:0"
prefix = "keep: "

[[listener]]
name = "changed"
kind = "tcp-echo"
listen = "127.0.0.1:0"
prefix = "2: "

[[listener]]
name = "new"
kind = "http"
listen = "127.0.0.1:0"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_exactly_what_changed() {
    let mut netd = Netd::start(V1);
    netd.netctl_ok(&["start", "tcp-echo", "runtime", "--listen", "127.0.0.1:0"]);
    netd.netctl_ok(&[
        "start",
        "tcp-echo",
        "eph",
        "--listen",
        "127.0.0.1:0",
        "--ephemeral",
    ]);
    let keep = bound_addr(&netd, "keep");
    let changed = bound_addr(&netd, "changed");
    let keep_started = listener(&netd, "keep")["started_at"].clone();
    let mut open = connect(keep);
    assert_eq!(say(&mut open, b"a"), "keep: a");
    let mut events = netd
        .client()
        .await
        .watch_events(proto::WatchEventsRequest::default())
        .await
        .unwrap()
        .into_inner();

    netd.write_config(V2);
    netd.signal(libc::SIGHUP);
    netd.wait_notify("RELOADING=1");
    netd.wait_notify("READY=1");
    let reloaded = next_reload_outcome(&mut events).await;
    assert_eq!(
        reloaded.kind(),
        proto::EventKind::Reloaded,
        "{}",
        reloaded.message
    );
    assert!(
        reloaded
            .message
            .contains("1 created, 1 updated, 0 replaced, 1 deleted"),
        "{}",
        reloaded.message
    );
    assert_eq!(names(&netd), ["changed", "eph", "keep", "new", "runtime"]);
    // Unchanged: same socket, same connection, same counters.
    assert_eq!(bound_addr(&netd, "keep"), keep);
    assert_eq!(say(&mut open, b"b"), "keep: b");
    let k = listener(&netd, "keep");
    assert_eq!(k["started_at"], keep_started);
    assert_eq!(k["stats"]["connections_total"], 1);
    assert_eq!(k["stats"]["bytes_in"], 2);
    // Changed in place on its socket.
    assert_eq!(bound_addr(&netd, "changed"), changed);
    assert_eq!(say(&mut connect(changed), b"c"), "2: c");

    // A config with errors: rejected as a whole, reported, nothing changes.
    netd.write_config("[[listener]]\nname = \"broken\"\nkind = \"tcp-echo\"\n");
    netd.signal(libc::SIGHUP);
    let failed = next_reload_outcome(&mut events).await;
    assert_eq!(failed.kind(), proto::EventKind::ReloadFailed);
    assert!(
        failed.message.contains("listen is required"),
        "{}",
        failed.message
    );
    assert_eq!(names(&netd), ["changed", "eph", "keep", "new", "runtime"]);
    assert_eq!(say(&mut open, b"c"), "keep: c");
    assert!(netd.log().contains("reload failed"));
}

/// A small pseudo-random generator (xorshift64*), seeded from the clock;
/// the seed is in every failure message.
struct Rng(u64);

impl Rng {
    fn from_clock() -> Rng {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        Rng(t | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// What runs, as the kill -9 test compares it: name → kind and the part
/// of the spec the changes touch (an echo's prefix, a proxy's faults).
type Model = std::collections::BTreeMap<String, String>;

fn observed(netd: &Netd) -> Model {
    let v = netd.netctl_json(&["list"]);
    v["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let spec = &l["spec"];
            let what = match l["kind"].as_str().unwrap() {
                "tcp-echo" => format!("echo {}", spec["prefix"].as_str().unwrap_or("")),
                "proxy" => {
                    let faults: Vec<String> = spec["faults"]
                        .as_array()
                        .map(|fs| {
                            fs.iter()
                                .map(|f| {
                                    format!("{}={}", f["name"].as_str().unwrap(), f["latency"])
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    format!("proxy {}", faults.join(","))
                }
                k => panic!("unexpected kind {k}"),
            };
            (l["name"].as_str().unwrap().to_string(), what)
        })
        .collect()
}

/// One change: netctl's arguments and what it does to the model.
struct Op {
    args: Vec<String>,
    name: String,
    after: Option<String>,
}

/// A change that makes sense against `model`; `i` makes values unique.
fn next_op(rng: &mut Rng, model: &Model, i: usize, upstream: &str) -> Op {
    const NAMES: [&str; 6] = ["base", "e1", "e2", "e3", "p1", "p2"];
    let name = NAMES[rng.below(NAMES.len() as u64) as usize].to_string();
    let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    let prefix = format!("v{i}: ");
    // Shown as written below a second.
    let latency = format!("{}ms", i % 900 + 1);
    let Some(now) = model.get(&name) else {
        return if name.starts_with('p') {
            Op {
                args: s(&[
                    "start",
                    "proxy",
                    &name,
                    "--listen",
                    "127.0.0.1:0",
                    "--upstream",
                    upstream,
                ]),
                name,
                after: Some("proxy ".into()),
            }
        } else {
            Op {
                args: s(&[
                    "start",
                    "tcp-echo",
                    &name,
                    "--listen",
                    "127.0.0.1:0",
                    "--prefix",
                    &prefix,
                ]),
                name,
                after: Some(format!("echo {prefix}")),
            }
        };
    };
    let stop = |name: String| Op {
        args: s(&["stop", &name]),
        name,
        after: None,
    };
    if now.starts_with("echo ") {
        if rng.below(3) == 0 {
            return stop(name);
        }
        return Op {
            args: s(&["update", &name, "--prefix", &prefix]),
            name,
            after: Some(format!("echo {prefix}")),
        };
    }
    let faults: Vec<&str> = now
        .strip_prefix("proxy ")
        .unwrap()
        .split(',')
        .filter(|f| !f.is_empty())
        .collect();
    match rng.below(4) {
        0 => stop(name),
        1 if !faults.is_empty() => {
            let gone = faults[0].split('=').next().unwrap();
            let rest: Vec<&str> = faults[1..].to_vec();
            Op {
                args: s(&["fault", "rm", &name, gone]),
                name,
                after: Some(format!("proxy {}", rest.join(","))),
            }
        }
        2 if !faults.is_empty() => {
            let (first, _) = faults[0].split_once('=').unwrap();
            let mut all: Vec<String> = faults.iter().map(|f| f.to_string()).collect();
            all[0] = format!("{first}=\"{latency}\"");
            Op {
                args: s(&["fault", "update", &name, first, "--latency", &latency]),
                name,
                after: Some(format!("proxy {}", all.join(","))),
            }
        }
        _ => {
            let f = format!("f{i}");
            let mut all: Vec<String> = faults.iter().map(|f| f.to_string()).collect();
            all.push(format!("{f}=\"{latency}\""));
            Op {
                args: s(&[
                    "fault",
                    "add",
                    &name,
                    &f,
                    "--type",
                    "latency",
                    "--latency",
                    &latency,
                ]),
                name,
                after: Some(format!("proxy {}", all.join(","))),
            }
        }
    }
}

fn applied(model: &Model, op: &Op) -> Model {
    let mut m = model.clone();
    match &op.after {
        Some(a) => m.insert(op.name.clone(), a.clone()),
        None => m.remove(&op.name),
    };
    m
}

/// The issue's durability test: changes (start, stop, update, faults) one
/// after another with netctl, netd killed with SIGKILL at random moments
/// and restarted on the same state directory. Every acknowledged change is
/// there after the restart; the one in flight at the kill is there or
/// not, whole.
#[test]
fn no_acknowledged_change_is_lost_to_kill_9_at_random_points() {
    const ROUNDS: usize = 6;
    const MAX_OPS: usize = 240;
    let mut rng = Rng::from_clock();
    let seed = rng.0;
    let up = TestUpstream::echo(b"up:");
    let upstream = up.addr.to_string();
    let mut netd = Netd::start(BASE);
    let mut model: Model = [("base".to_string(), "echo base: ".to_string())].into();
    assert_eq!(observed(&netd), model, "seed {seed}");
    let mut i = 0usize;
    for round in 0..ROUNDS {
        // The changes run in a thread until netctl fails (netd is gone) or
        // this round's share is done; the kill comes at a random moment.
        let control = netd.control.to_string();
        let (tx, rx) = std::sync::mpsc::channel::<(Op, bool, String)>();
        let start_model = model.clone();
        let upstream = upstream.clone();
        let mut op_rng = Rng(rng.below(u64::MAX) | 1);
        let first = i;
        let budget = MAX_OPS / ROUNDS;
        let worker = std::thread::spawn(move || {
            let mut m = start_model;
            for k in 0..budget {
                let op = next_op(&mut op_rng, &m, first + k, &upstream);
                let out = std::process::Command::new(crate::common::NETCTL)
                    .arg("--control")
                    .arg(&control)
                    .args(&op.args)
                    .output()
                    .expect("run netctl");
                let ok = out.status.success();
                if ok {
                    m = applied(&m, &op);
                }
                let err = String::from_utf8_lossy(&out.stderr).into_owned();
                let _ = tx.send((op, ok, err));
                if !ok {
                    return;
                }
            }
        });
        std::thread::sleep(Duration::from_millis(150 + rng.below(900)));
        let finished_first = worker.is_finished();
        let dir = netd.kill9();
        worker.join().unwrap();
        let mut in_flight = None;
        for (op, ok, err) in rx.try_iter() {
            i += 1;
            if ok {
                model = applied(&model, &op);
            } else {
                assert!(
                    !finished_first,
                    "seed {seed}: netctl {:?} failed with netd up: {err}",
                    op.args
                );
                in_flight = Some(op);
            }
        }
        netd = Netd::start_in(dir);
        let now = observed(&netd);
        let with = in_flight.as_ref().map(|op| applied(&model, op));
        assert!(
            now == model || Some(&now) == with.as_ref(),
            "seed {seed}, round {round}: after kill -9 netd runs\n{now:?}\nbut the acknowledged \
             changes say\n{model:?}\n(or, with the change in flight {:?}:\n{with:?})\nlog:\n{}",
            in_flight.as_ref().map(|o| &o.args),
            netd.log()
        );
        model = now;
    }
    assert!(i > ROUNDS, "seed {seed}: only {i} changes were made");
}

/// Byte ranges of the journal's records: after its header (a magic line,
/// the generation and its checksum: 32 bytes), each record is a length
/// (4 bytes, little endian), a checksum (8) and that many bytes.
fn journal_records(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = 32;
    while at + 12 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        out.push((at, at + 12 + len));
        at += 12 + len;
    }
    assert_eq!(at, bytes.len(), "the journal ends between records");
    out
}

/// A crash in the middle of an append leaves a partial or damaged last
/// record: netd starts, keeps every record before it and says so.
#[test]
fn a_torn_journal_tail_loses_only_the_last_record_and_is_reported() {
    let netd = Netd::start(BASE);
    for n in ["a", "b", "c"] {
        netd.netctl_ok(&["start", "tcp-echo", n, "--listen", "127.0.0.1:0"]);
    }
    let mut dir = netd.kill9();
    let journal = dir.path().join("state/listeners.journal");
    let full = std::fs::read(&journal).expect("the journal is written");
    // The first change after a start rewrites the state file; b and c are
    // records.
    let records = journal_records(&full);
    assert_eq!(records.len(), 2, "{records:?}");
    let (start, end) = records[1];
    let mut rng = Rng::from_clock();
    let seed = rng.0;
    let mut flipped = full.clone();
    flipped[start + rng.below((end - start) as u64) as usize] ^= 0x5a;
    let damaged = [
        full[..start + 1 + rng.below(11) as usize].to_vec(),
        full[..start + 12 + rng.below((end - start - 12) as u64) as usize].to_vec(),
        full[..end - 1].to_vec(),
        flipped,
    ];
    for bytes in damaged {
        std::fs::write(&journal, &bytes).unwrap();
        let netd = Netd::start_in(dir);
        assert_eq!(names(&netd), ["a", "b", "base"], "seed {seed}");
        let log = netd.log();
        assert!(
            log.contains("the state journal ends in a damaged or partial record")
                && log.contains("left out"),
            "seed {seed}: {log}"
        );
        dir = netd.kill9();
    }
}

/// What a restart must bring back: each listener's name, spec and labels.
fn desired_set(netd: &Netd) -> Vec<Value> {
    let v = netd.netctl_json(&["list"]);
    v["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| serde_json::json!([l["name"], l["spec"], l["labels"]]))
        .collect()
}

/// Many changes fold the journal into the state file once it outgrows it
/// (the journal stays shorter than the state file), and a restart after
/// kill -9, or after a clean stop (which folds it in too), brings back the
/// same set.
#[test]
fn many_changes_fold_the_journal_into_the_state_file() {
    let netd = Netd::start(BASE);
    // About 16 KiB of labels per listener: the journal passes its 256 KiB
    // bound in under 20 starts.
    for i in 0..24 {
        let name = format!("l{i:02}");
        let labels: Vec<String> = (0..60)
            .map(|j| format!("k{j}={i:03}{}", "x".repeat(240)))
            .collect();
        let mut args = vec!["start", "tcp-echo", &name, "--listen", "127.0.0.1:0"];
        for l in &labels {
            args.extend(["--label", l.as_str()]);
        }
        netd.netctl_ok(&args);
    }
    netd.netctl_ok(&["stop", "l03"]);
    netd.netctl_ok(&["stop", "base"]);
    netd.netctl_ok(&["update", "l05", "--prefix", "five: "]);
    let state = netd.dir.path().join("state/listeners.state");
    let journal = netd.dir.path().join("state/listeners.journal");
    let size = |p: &std::path::Path| std::fs::metadata(p).unwrap().len();
    assert!(size(&state) > 256 * 1024, "state file {}", size(&state));
    assert!(
        size(&journal) < size(&state),
        "journal {} state file {}",
        size(&journal),
        size(&state)
    );
    let before = desired_set(&netd);
    assert_eq!(before.len(), 23);

    let netd = Netd::start_in(netd.kill9());
    assert_eq!(desired_set(&netd), before);

    // A clean stop leaves an empty journal (its header alone).
    let mut netd = netd;
    // The first change after a start rewrites the state file; the second
    // is a record, folded in at the stop.
    netd.netctl_ok(&["update", "l06", "--prefix", "six: "]);
    netd.netctl_ok(&["update", "l07", "--prefix", "seven: "]);
    assert!(size(&netd.dir.path().join("state/listeners.journal")) > 32);
    let before = desired_set(&netd);
    netd.signal(libc::SIGTERM);
    assert!(netd.wait_exit().success());
    assert_eq!(size(&netd.dir.path().join("state/listeners.journal")), 32);
    let dir = std::mem::replace(&mut netd.dir, tempfile::tempdir().unwrap());
    let netd = Netd::start_in(dir);
    assert_eq!(desired_set(&netd), before);
}
